//! Bad memory and context input: each gets its 4xx naming the field, and
//! nothing is written but the audit entry that records the refusal.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Backend, Server};

fn good() -> Value {
    json!({
        "occurred_at": "2026-01-05T10:00:00Z",
        "event_type": "decision",
        "workstream": "legal",
        "category": "key_decisions",
        "content": {"text": "Chose Delaware.", "counterparties": ["Initech"]},
        "importance": 7
    })
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

async fn table(backend: Backend) {
    let s = Server::start(backend).await;
    s.company("acme").await;
    let before = s.audit().await.len();
    let mut batch: Vec<Value> = (0..5).map(|_| good()).collect();
    batch[2] = with(good(), "importance", json!(11));
    let too_many: Vec<Value> = (0..1_001).map(|_| good()).collect();
    let posts: Vec<(&str, Value, u16, &str)> = vec![
        (
            "unknown event type",
            with(good(), "event_type", json!("gossip")),
            400,
            "event_type",
        ),
        (
            "unknown workstream",
            with(good(), "workstream", json!("astrology")),
            400,
            "workstream",
        ),
        (
            "importance above 10",
            with(good(), "importance", json!(11)),
            422,
            "importance",
        ),
        (
            "importance not a number",
            with(good(), "importance", json!("high")),
            400,
            "importance",
        ),
        (
            "no text",
            with(good(), "content", json!({"people": []})),
            422,
            "content.text",
        ),
        (
            "blank text",
            with(good(), "content", json!({"text": "  "})),
            422,
            "content.text",
        ),
        (
            "far future",
            with(good(), "occurred_at", json!("2999-01-01T00:00:00Z")),
            422,
            "occurred_at",
        ),
        (
            "bad time",
            with(good(), "occurred_at", json!("yesterday")),
            400,
            "occurred_at",
        ),
        (
            "unknown field",
            with(good(), "colour", json!("red")),
            400,
            "colour",
        ),
        (
            "bad category",
            with(good(), "category", json!("Key Decisions!")),
            422,
            "category",
        ),
        (
            "one bad in a batch",
            json!({"memories": batch}),
            422,
            "memories.2.importance",
        ),
        ("empty batch", json!({"memories": []}), 422, "memories"),
        (
            "batch over 1000",
            json!({"memories": too_many}),
            422,
            "memories",
        ),
        ("not an object", json!(["a"]), 400, "body"),
    ];
    let n = posts.len();
    for (what, body, status, field) in posts {
        let (got, v) = s
            .call(
                Method::POST,
                "/v1/companies/acme/memory",
                Some(&s.admin),
                Some(body),
            )
            .await;
        assert_eq!(got.as_u16(), status, "{what}: {v}");
        assert_eq!(v["error"]["field"], field, "{what}: {v}");
    }
    for (path, status, field) in [
        ("/v1/companies/acme/memory/search", 400, "q"),
        ("/v1/companies/acme/memory/search?q=%20", 400, "q"),
        ("/v1/companies/acme/memory/search?q=a&limit=0", 400, "limit"),
        (
            "/v1/companies/acme/memory/search?q=a&archived=maybe",
            400,
            "archived",
        ),
        (
            "/v1/companies/acme/memory?min_importance=0",
            400,
            "min_importance",
        ),
        ("/v1/companies/acme/memory?cursor=garbage", 400, "cursor"),
        (
            "/v1/companies/acme/memory?event_type=gossip",
            400,
            "event_type",
        ),
        (
            "/v1/companies/acme/memory?from=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z",
            400,
            "until",
        ),
        ("/v1/companies/acme/context?budget=100000000", 422, "budget"),
        (
            "/v1/companies/acme/context?task_type=astrology",
            422,
            "task_type",
        ),
        ("/v1/companies/acme/context?budget=lots", 400, "budget"),
    ] {
        let (got, v) = s.call(Method::GET, path, Some(&s.admin), None).await;
        assert_eq!(got.as_u16(), status, "{path}: {v}");
        assert_eq!(v["error"]["field"], field, "{path}: {v}");
    }
    let (got, _) = s
        .call(
            Method::POST,
            "/v1/companies/acme/memory/0190f3a0-0000-7000-8000-000000000000/archive",
            Some(&s.admin),
            None,
        )
        .await;
    assert_eq!(got.as_u16(), 404);

    // Nothing was written...
    let list = s
        .admin_ok(
            Method::GET,
            "/v1/companies/acme/memory?archived=include",
            None,
        )
        .await;
    assert_eq!(list["memories"], json!([]), "{list}");
    // ...but each refused write is audited as rejected.
    let audit = s.audit().await;
    let rejected = audit[before..]
        .iter()
        .filter(|e| e["action"] == "memory.add" && e["outcome"] == "rejected")
        .count();
    assert_eq!(rejected, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_bad_memory_input_is_refused_and_writes_nothing() {
    table(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bad_memory_input_is_refused_and_writes_nothing() {
    table(Backend::Postgres).await;
}
