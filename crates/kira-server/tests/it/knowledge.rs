//! The shared knowledge base over the API: batches, updates by key, lists
//! and search as any company's key, deletes, and bad input naming the field.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Backend, Server};

/// A valid entry body.
pub fn entry(domain: &str, key: &str) -> Value {
    json!({
        "domain": domain,
        "key": key,
        "title": format!("Delaware corporations ({key})"),
        "body": "Directors owe fiduciary duties of care and loyalty to the corporation.",
        "tags": ["corporate"],
        "jurisdiction": "US-DE"
    })
}

async fn round_trip(backend: Backend) {
    let s = Server::start(backend).await;
    s.company("acme").await;
    let (_, viewer) = s.key("viewer", Some("acme")).await;
    let batch = json!({"entries": [
        entry("legal_frameworks", "delaware_corp"),
        {"domain": "business_patterns", "key": "saas_metrics", "title": "SaaS metrics",
         "body": "Net revenue retention, churn and CAC payback.", "tags": ["SaaS", "metrics"],
         "industry": "SaaS"},
        {"domain": "industry_standards", "key": "pci_dss", "title": "PCI DSS",
         "body": "Cardholder data is encrypted at rest and in transit."},
    ]});
    let (st, v) = s
        .call(Method::POST, "/v1/knowledge", Some(&s.admin), Some(batch))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let made = v["entries"].as_array().expect("entries").clone();
    assert_eq!(made.len(), 3);
    assert_eq!(made[1]["tags"], json!(["saas", "metrics"]));
    assert_eq!(made[1]["industry"], "saas");
    let delaware = made[0]["id"].as_str().expect("id").to_owned();

    // A viewer of any company reads, pages and searches.
    let (st, v) = s
        .call(Method::GET, "/v1/knowledge?limit=2", Some(&viewer), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let keys = |v: &Value| -> Vec<String> {
        v["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| e["key"].as_str().expect("key").to_owned())
            .collect()
    };
    assert_eq!(keys(&v), ["saas_metrics", "pci_dss"]);
    let after = v["next_after"].as_str().expect("a next page").to_owned();
    let (_, v) = s
        .call(
            Method::GET,
            &format!("/v1/knowledge?limit=2&after={after}"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(keys(&v), ["delaware_corp"]);
    assert_eq!(v["next_after"], Value::Null);
    let (_, v) = s
        .call(
            Method::GET,
            "/v1/knowledge?domain=legal_frameworks&jurisdiction=US-DE&tag=corporate",
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(keys(&v), ["delaware_corp"]);

    let (st, v) = s
        .call(
            Method::GET,
            "/v1/knowledge/search?q=fiduciary%20OR%20churn&limit=5",
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let mut found: Vec<_> = v["hits"]
        .as_array()
        .expect("hits")
        .iter()
        .map(|h| h["entry"]["key"].as_str().expect("key").to_owned())
        .collect();
    found.sort();
    assert_eq!(found, ["delaware_corp", "saas_metrics"]);

    let (st, v) = s
        .call(
            Method::GET,
            &format!("/v1/knowledge/{delaware}"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(
        (st, v["key"].clone()),
        (StatusCode::OK, json!("delaware_corp"))
    );

    // Writing the same (domain, key) updates in place.
    let mut again = entry("legal_frameworks", "delaware_corp");
    again["body"] = json!("The business judgment rule protects directors.");
    let (st, v) = s
        .call(Method::POST, "/v1/knowledge", Some(&s.admin), Some(again))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["entries"][0]["id"], json!(delaware));
    assert_eq!(v["entries"][0]["created_at"], made[0]["created_at"]);

    // A viewer may not write or delete.
    let (st, _) = s
        .call(
            Method::POST,
            "/v1/knowledge",
            Some(&viewer),
            Some(entry("legal_frameworks", "x")),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = s
        .call(
            Method::DELETE,
            &format!("/v1/knowledge/{delaware}"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = s
        .call(
            Method::DELETE,
            &format!("/v1/knowledge/{delaware}"),
            Some(&s.admin),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = s
        .call(
            Method::GET,
            &format!("/v1/knowledge/{delaware}"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    let audit = s.audit().await;
    let writes: Vec<_> = audit
        .iter()
        .filter(|e| e["action"] == "knowledge.upsert" || e["action"] == "knowledge.delete")
        .map(|e| {
            (
                e["action"].as_str().unwrap_or_default().to_owned(),
                e["outcome"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let pair = |a: &str, o: &str| (a.to_owned(), o.to_owned());
    assert_eq!(
        writes,
        [
            pair("knowledge.upsert", "ok"),
            pair("knowledge.upsert", "ok"),
            pair("knowledge.upsert", "denied"),
            pair("knowledge.delete", "denied"),
            pair("knowledge.delete", "ok"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_knowledge_round_trip() {
    round_trip(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_knowledge_round_trip() {
    round_trip(Backend::Postgres).await;
}

fn with(mut body: Value, key: &str, value: Value) -> Value {
    body[key] = value;
    body
}

async fn bad_input(backend: Backend) {
    let s = Server::start(backend).await;
    let good = entry("legal_frameworks", "delaware_corp");
    let posts: Vec<(&str, Value, u16, &str)> = vec![
        (
            "unconfigured domain",
            with(good.clone(), "domain", json!("recipes")),
            422,
            "domain",
        ),
        (
            "bad key",
            with(good.clone(), "key", json!("Has Space")),
            422,
            "key",
        ),
        (
            "empty title",
            with(good.clone(), "title", json!(" ")),
            422,
            "title",
        ),
        (
            "body too large",
            with(good.clone(), "body", json!("b".repeat(40_000))),
            422,
            "body",
        ),
        (
            "bad jurisdiction",
            with(good.clone(), "jurisdiction", json!("Delaware")),
            422,
            "jurisdiction",
        ),
        (
            "empty tag",
            with(good.clone(), "tags", json!(["ok", ""])),
            422,
            "tags.1",
        ),
        (
            "tags not a list",
            with(good.clone(), "tags", json!("x")),
            400,
            "tags",
        ),
        (
            "unknown field",
            with(good.clone(), "colour", json!(1)),
            400,
            "colour",
        ),
        (
            "missing body",
            json!({"domain": "legal_frameworks", "key": "k", "title": "T"}),
            400,
            "body",
        ),
        (
            "batch: second entry invalid",
            json!({"entries": [good.clone(), with(good.clone(), "title", json!(""))]}),
            422,
            "entries.1.title",
        ),
        (
            "batch: unknown field in an entry",
            json!({"entries": [with(good.clone(), "colour", json!(1))]}),
            400,
            "entries.0.colour",
        ),
        (
            "batch: one pair twice",
            json!({"entries": [good.clone(), good.clone()]}),
            422,
            "entries.1.key",
        ),
        ("batch: empty", json!({"entries": []}), 422, "entries"),
    ];
    let n = posts.len();
    for (what, body, status, field) in posts {
        let (got, v) = s
            .call(Method::POST, "/v1/knowledge", Some(&s.admin), Some(body))
            .await;
        assert_eq!(got.as_u16(), status, "{what}: {v}");
        assert_eq!(v["error"]["field"], field, "{what}: {v}");
    }
    let gets: Vec<(&str, u16, Option<&str>)> = vec![
        ("/v1/knowledge?limit=0", 400, Some("limit")),
        ("/v1/knowledge?after=garbage", 400, Some("after")),
        ("/v1/knowledge?colour=red", 400, Some("colour")),
        ("/v1/knowledge/search", 400, Some("q")),
        ("/v1/knowledge/search?q=%20", 400, Some("q")),
        ("/v1/knowledge/search?q=x&limit=101", 400, Some("limit")),
        ("/v1/knowledge/not-a-uuid", 404, None),
        (
            "/v1/knowledge/0190f3a0-0000-7000-8000-000000000000",
            404,
            None,
        ),
    ];
    for (path, status, field) in gets {
        let (got, v) = s.call(Method::GET, path, Some(&s.admin), None).await;
        assert_eq!(got.as_u16(), status, "{path}: {v}");
        assert_eq!(v["error"]["field"].as_str(), field, "{path}: {v}");
    }
    let (got, _) = s
        .call(
            Method::DELETE,
            "/v1/knowledge/0190f3a0-0000-7000-8000-000000000000",
            Some(&s.admin),
            None,
        )
        .await;
    assert_eq!(got, StatusCode::NOT_FOUND);

    // Nothing was written, and each refused write is audited as rejected.
    let list = s.admin_ok(Method::GET, "/v1/knowledge", None).await;
    assert_eq!(list["entries"], json!([]));
    let audit = s.audit().await;
    let rejected = audit
        .iter()
        .filter(|e| e["action"] == "knowledge.upsert" && e["outcome"] == "rejected")
        .count();
    assert_eq!(rejected, n);
    assert!(
        !audit.iter().any(|e| e["action"]
            .as_str()
            .is_some_and(|a| a.starts_with("knowledge."))
            && e["outcome"] == "ok"
            && e["action"] != "knowledge.list"),
        "no successful knowledge write"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_knowledge_bad_input_names_the_field() {
    bad_input(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_knowledge_bad_input_names_the_field() {
    bad_input(Backend::Postgres).await;
}
