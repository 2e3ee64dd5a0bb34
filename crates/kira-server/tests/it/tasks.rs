//! Tasks through the API: bad input, idempotency, cancel, events.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Backend, Server};

async fn bad_input_writes_nothing(backend: Backend) {
    let s = Server::start(backend).await;
    s.company("acme").await;
    let good = json!({"task": "Review the lease", "type": "document_review", "priority": "high"});
    let with = |k: &str, v: Value| {
        let mut b = good.clone();
        b[k] = v;
        b
    };
    let cases = [
        (
            "unknown priority",
            with("priority", json!("whenever")),
            400,
            "priority",
        ),
        (
            "unknown type",
            with("type", json!("astrology")),
            422,
            "type",
        ),
        (
            "deadline in the past",
            with("deadline", json!("2020-01-01T00:00:00Z")),
            422,
            "deadline",
        ),
        (
            "deadline not a time",
            with("deadline", json!("tomorrow")),
            400,
            "deadline",
        ),
        (
            "oversize parameters",
            with("parameters", json!({"doc": "x".repeat(300 * 1024)})),
            422,
            "parameters",
        ),
        (
            "parameters not an object",
            with("parameters", json!([1])),
            422,
            "parameters",
        ),
        ("empty task", with("task", json!("  ")), 422, "task"),
        (
            "unknown specialist",
            with("specialist", json!("astrologer")),
            422,
            "specialist",
        ),
        ("unknown field", with("colour", json!("red")), 400, "colour"),
        ("missing type", json!({"task": "x"}), 400, "type"),
    ];
    for (what, body, status, field) in cases {
        let (got, v) = s
            .call(
                Method::POST,
                "/v1/companies/acme/tasks",
                Some(&s.admin),
                Some(body),
            )
            .await;
        assert_eq!(got.as_u16(), status, "{what}: {v}");
        assert_eq!(v["error"]["field"], field, "{what}: {v}");
    }
    let (got, v) = s
        .call(
            Method::GET,
            "/v1/companies/acme/tasks?status=sleeping",
            Some(&s.admin),
            None,
        )
        .await;
    assert_eq!(
        (got, v["error"]["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("status"))
    );
    let list = s
        .admin_ok(Method::GET, "/v1/companies/acme/tasks", None)
        .await;
    assert_eq!(list["tasks"], json!([]), "nothing was written");
    let audit = s.audit().await;
    let rejected = audit
        .iter()
        .filter(|e| e["action"] == "task.submit" && e["outcome"] == "rejected")
        .count();
    assert_eq!(rejected, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_bad_task_input_writes_nothing() {
    bad_input_writes_nothing(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bad_task_input_writes_nothing() {
    bad_input_writes_nothing(Backend::Postgres).await;
}

async fn post_with_key(s: &Server, key: &str, body: Value) -> (StatusCode, Value) {
    let res = reqwest::Client::new()
        .post(format!("{}/v1/companies/acme/tasks", s.base))
        .bearer_auth(&s.admin)
        .header("Idempotency-Key", key)
        .json(&body)
        .send()
        .await
        .expect("send");
    let status = res.status();
    (status, res.json().await.expect("json"))
}

#[tokio::test]
async fn idempotency_keys_make_retries_safe() {
    let s = Server::start(Backend::Sqlite).await;
    s.company("acme").await;
    let body =
        json!({"task": "Draft the NDA", "type": "complex_legal_analysis", "priority": "urgent"});
    let (s1, t1) = post_with_key(&s, "req-1", body.clone()).await;
    let (s2, t2) = post_with_key(&s, "req-1", body.clone()).await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::OK));
    assert_eq!(t1["task_id"], t2["task_id"]);
    assert_eq!(t1["task_id"], "acme_legal_001");
    let (s3, v) = post_with_key(
        &s,
        "req-1",
        json!({"task": "Draft another NDA", "type": "complex_legal_analysis"}),
    )
    .await;
    assert_eq!(s3, StatusCode::CONFLICT, "{v}");
    let list = s
        .admin_ok(Method::GET, "/v1/companies/acme/tasks", None)
        .await;
    assert_eq!(list["tasks"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn a_queued_task_is_cancelled_and_its_events_say_so() {
    let s = Server::start(Backend::Sqlite).await;
    s.company("acme").await;
    s.company("beta").await;
    let id = s.task("acme").await;
    let t = s
        .admin_ok(Method::GET, &format!("/v1/companies/acme/tasks/{id}"), None)
        .await;
    assert_eq!(
        (
            t["status"].clone(),
            t["company_context"]["jurisdiction"].clone()
        ),
        (json!("queued"), json!("US-DE"))
    );
    let (status, _) = s
        .call(
            Method::GET,
            &format!("/v1/companies/beta/tasks/{id}"),
            Some(&s.admin),
            None,
        )
        .await;
    assert_eq!(status, 404, "a task is found only under its own company");
    let t = s
        .admin_ok(
            Method::POST,
            &format!("/v1/companies/acme/tasks/{id}/cancel"),
            None,
        )
        .await;
    assert_eq!(t["status"], "cancelled");
    let (status, v) = s
        .call(
            Method::POST,
            &format!("/v1/companies/acme/tasks/{id}/cancel"),
            Some(&s.admin),
            None,
        )
        .await;
    assert_eq!(status, 409, "{v}");
    let ev = s
        .admin_ok(
            Method::GET,
            &format!("/v1/companies/acme/tasks/{id}/events"),
            None,
        )
        .await;
    let statuses: Vec<_> = ev["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["to_status"].clone())
        .collect();
    assert_eq!(statuses, [json!("queued"), json!("cancelled")]);
    let text = reqwest::Client::new()
        .get(format!("{}/v1/companies/acme/tasks/{id}/watch", s.base))
        .bearer_auth(&s.admin)
        .send()
        .await
        .expect("watch")
        .text()
        .await
        .expect("stream ends after the final state");
    assert_eq!(text.matches("event: status").count(), 2, "{text}");
    assert!(text.contains("\"to_status\":\"cancelled\""), "{text}");
    let budget = s.admin_ok(Method::GET, "/v1/budget", None).await;
    assert_eq!(
        budget["pools"].as_array().map(Vec::len),
        Some(3),
        "{budget}"
    );
    assert_eq!(
        budget["companies"].as_array().map(Vec::len),
        Some(2),
        "{budget}"
    );
    let verify = s.admin_ok(Method::GET, "/v1/budget/verify", None).await;
    assert_eq!(verify["ok"], true, "{verify}");
}
