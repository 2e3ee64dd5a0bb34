//! Bad input: each gets its 4xx naming the field, and nothing is written
//! but the audit entry that records the refusal.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Backend, Server, company_body};

fn with(mut body: Value, key: &str, value: Value) -> Value {
    body[key] = value;
    body
}

async fn table(backend: Backend) {
    let s = Server::start_with(
        backend,
        kira_server::ServerConfig {
            max_body_bytes: 64 * 1024,
            ..Default::default()
        },
    )
    .await;
    s.company("acme").await;
    let before = s.audit().await.len();

    let good = company_body("fresh");
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "invalid slug",
            with(good.clone(), "id", json!("Not_A_Slug"))
                .to_string()
                .into(),
            422,
            "id",
        ),
        (
            "slug too short",
            with(good.clone(), "id", json!("a")).to_string().into(),
            422,
            "id",
        ),
        (
            "complexity out of range",
            with(good.clone(), "complexity_score", json!(1.5))
                .to_string()
                .into(),
            422,
            "complexity_score",
        ),
        (
            "activity below zero",
            with(good.clone(), "activity_score", json!(-0.1))
                .to_string()
                .into(),
            422,
            "activity_score",
        ),
        (
            "multiplier out of range",
            with(good.clone(), "priority_multiplier", json!(3.5))
                .to_string()
                .into(),
            422,
            "priority_multiplier",
        ),
        (
            "negative revenue",
            with(good.clone(), "revenue_usd", json!(-5))
                .to_string()
                .into(),
            422,
            "revenue_usd",
        ),
        (
            "bad jurisdiction",
            with(good.clone(), "jurisdiction", json!("Delaware"))
                .to_string()
                .into(),
            422,
            "jurisdiction",
        ),
        (
            "bad contact email",
            with(
                good.clone(),
                "contacts",
                json!([{"name": "A", "email": "nope"}]),
            )
            .to_string()
            .into(),
            422,
            "contacts.0.email",
        ),
        (
            "unknown field",
            with(good.clone(), "colour", json!("red"))
                .to_string()
                .into(),
            400,
            "colour",
        ),
        (
            "unknown nested field",
            with(
                good.clone(),
                "contacts",
                json!([{"name": "A", "phone": "1"}]),
            )
            .to_string()
            .into(),
            400,
            "contacts.0.phone",
        ),
        (
            "wrong type",
            with(good.clone(), "revenue_usd", json!("lots"))
                .to_string()
                .into(),
            400,
            "revenue_usd",
        ),
        (
            "wrong type for a score",
            with(good.clone(), "complexity_score", json!(true))
                .to_string()
                .into(),
            400,
            "complexity_score",
        ),
        (
            "missing field",
            json!({"id": "fresh", "name": "x"}).to_string().into(),
            400,
            "industry",
        ),
        (
            "malformed JSON",
            b"{\"id\": \"fresh\",".to_vec(),
            400,
            "body",
        ),
        ("not an object", b"[1, 2]".to_vec(), 400, "body"),
        ("empty body", Vec::new(), 400, "body"),
        (
            "oversize body",
            {
                let mut b = good.clone();
                b["name"] = json!("x".repeat(100 * 1024));
                b.to_string().into()
            },
            413,
            "body",
        ),
    ];
    let n = cases.len();
    for (what, body, status, field) in cases {
        let (got, v) = s.raw(Method::POST, "/v1/companies", &s.admin, body).await;
        assert_eq!(got.as_u16(), status, "{what}: {v}");
        assert_eq!(v["error"]["field"], field, "{what}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {v}"
        );
    }

    // Updates too.
    let patches: Vec<(&str, Value, u16, &str)> = vec![
        ("empty patch", json!({}), 422, "body"),
        ("id is not patchable", json!({"id": "renamed"}), 400, "id"),
        (
            "score out of range",
            json!({"complexity_score": 7}),
            422,
            "complexity_score",
        ),
        (
            "sla zero",
            json!({"sla_response_seconds": 0}),
            422,
            "sla_response_seconds",
        ),
        (
            "bad webhook",
            json!({"contacts": [{"name": "A", "webhook": "ftp://x"}]}),
            422,
            "contacts.0.webhook",
        ),
    ];
    let m = patches.len();
    let acme_before = s.admin_ok(Method::GET, "/v1/companies/acme", None).await;
    for (what, body, status, field) in patches {
        let (got, v) = s
            .call(
                Method::PATCH,
                "/v1/companies/acme",
                Some(&s.admin),
                Some(body),
            )
            .await;
        assert_eq!(got.as_u16(), status, "{what}: {v}");
        assert_eq!(v["error"]["field"], field, "{what}: {v}");
    }
    let (got, v) = s
        .call(Method::DELETE, "/v1/companies/acme", Some(&s.admin), None)
        .await;
    assert_eq!(
        (got, v["error"]["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("force"))
    );
    let (got, v) = s
        .call(Method::GET, "/v1/audit?limit=0", Some(&s.admin), None)
        .await;
    assert_eq!(
        (got, v["error"]["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("limit"))
    );
    let (got, v) = s
        .call(
            Method::GET,
            "/v1/companies?colour=red",
            Some(&s.admin),
            None,
        )
        .await;
    assert_eq!(
        (got, v["error"]["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("colour"))
    );
    let (got, v) = s
        .call(
            Method::POST,
            "/v1/keys",
            Some(&s.admin),
            Some(json!({"name": "k", "role": "root"})),
        )
        .await;
    assert_eq!(
        (got, v["error"]["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("role")),
        "{v}"
    );
    let (got, v) = s
        .call(
            Method::POST,
            "/v1/keys",
            Some(&s.admin),
            Some(json!({"name": "k", "role": "viewer"})),
        )
        .await;
    assert_eq!(
        (got, v["error"]["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("company_id")),
        "{v}"
    );
    let (got, v) = s
        .call(
            Method::POST,
            "/v1/keys",
            Some(&s.admin),
            Some(json!({"name": "k", "role": "viewer", "company_id": "ghost"})),
        )
        .await;
    assert_eq!(
        (got, v["error"]["field"].clone()),
        (StatusCode::NOT_FOUND, json!("company_id")),
        "{v}"
    );

    // Nothing was written...
    let list = s
        .admin_ok(Method::GET, "/v1/companies?include_archived=true", None)
        .await;
    let ids: Vec<_> = list["companies"]
        .as_array()
        .expect("list")
        .iter()
        .map(|c| c["id"].clone())
        .collect();
    assert_eq!(ids, [json!("acme")]);
    assert_eq!(
        s.admin_ok(Method::GET, "/v1/companies/acme", None).await,
        acme_before
    );
    let keys = s.admin_ok(Method::GET, "/v1/keys", None).await;
    assert_eq!(
        keys["keys"].as_array().expect("keys").len(),
        1,
        "only the bootstrap key"
    );

    // ...but each refused change is audited as rejected.
    let audit = s.audit().await;
    let new: Vec<_> = audit[before..].iter().collect();
    let rejected_creates = new
        .iter()
        .filter(|e| e["action"] == "company.create" && e["outcome"] == "rejected")
        .count();
    assert_eq!(rejected_creates, n);
    let rejected_updates = new
        .iter()
        .filter(|e| e["action"] == "company.update" && e["outcome"] == "rejected")
        .count();
    assert_eq!(rejected_updates, m);
    assert!(
        new.iter().all(|e| e["outcome"] != "ok"
            || e["action"]
                .as_str()
                .is_some_and(|a| a.ends_with(".list") || a == "company.list")),
        "no successful change among the bad inputs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_bad_input_is_refused_and_writes_nothing() {
    table(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bad_input_is_refused_and_writes_nothing() {
    table(Backend::Postgres).await;
}

/// Reviews and ratings: each bad body is refused naming the field, the
/// task stays in review with no review recorded, and each refusal is
/// audited.
async fn review_table(backend: Backend) {
    let s = Server::start(backend).await;
    s.company("acme").await;
    let id = s.needs_review("acme").await;
    let review = format!("/v1/companies/acme/tasks/{id}/review");
    let rating = format!("/v1/companies/acme/tasks/{id}/rating");
    let long = "x".repeat(kira_store::agents::MAX_FEEDBACK_CHARS + 1);
    let cases: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        (
            "approve with feedback",
            &review,
            json!({"decision": "approve", "feedback": "nice"})
                .to_string()
                .into(),
            "feedback",
        ),
        (
            "reject without feedback",
            &review,
            json!({"decision": "reject"}).to_string().into(),
            "feedback",
        ),
        (
            "reject with blank feedback",
            &review,
            json!({"decision": "reject", "feedback": " \n "})
                .to_string()
                .into(),
            "feedback",
        ),
        (
            "reject with overlong feedback",
            &review,
            json!({"decision": "reject", "feedback": long})
                .to_string()
                .into(),
            "feedback",
        ),
        (
            "reject with a result",
            &review,
            json!({"decision": "reject", "feedback": "redo", "result": {"a": 1}})
                .to_string()
                .into(),
            "result",
        ),
        (
            "result not an object",
            &review,
            json!({"decision": "approve", "result": [1]})
                .to_string()
                .into(),
            "result",
        ),
        (
            "result a string",
            &review,
            json!({"decision": "approve", "result": "fine"})
                .to_string()
                .into(),
            "result",
        ),
        (
            "rating zero",
            &review,
            json!({"decision": "approve", "rating": 0})
                .to_string()
                .into(),
            "rating",
        ),
        (
            "rating six",
            &review,
            json!({"decision": "approve", "rating": 6})
                .to_string()
                .into(),
            "rating",
        ),
        (
            "rating not a number",
            &review,
            json!({"decision": "approve", "rating": "five"})
                .to_string()
                .into(),
            "rating",
        ),
        (
            "rating out of u8",
            &review,
            json!({"decision": "approve", "rating": 300})
                .to_string()
                .into(),
            "rating",
        ),
        (
            "unknown decision",
            &review,
            json!({"decision": "maybe"}).to_string().into(),
            "decision",
        ),
        (
            "no decision",
            &review,
            json!({"rating": 3}).to_string().into(),
            "decision",
        ),
        (
            "unknown field",
            &review,
            json!({"decision": "approve", "colour": "red"})
                .to_string()
                .into(),
            "colour",
        ),
        (
            "malformed JSON",
            &review,
            b"{\"decision\": ".to_vec(),
            "body",
        ),
        ("empty body", &review, Vec::new(), "body"),
        (
            "rating below range",
            &rating,
            json!({"rating": 0}).to_string().into(),
            "rating",
        ),
        (
            "rating above range",
            &rating,
            json!({"rating": 9}).to_string().into(),
            "rating",
        ),
        (
            "rating missing",
            &rating,
            json!({}).to_string().into(),
            "rating",
        ),
        (
            "rating a string",
            &rating,
            json!({"rating": "5"}).to_string().into(),
            "rating",
        ),
        (
            "rating with an extra field",
            &rating,
            json!({"rating": 5, "note": "x"}).to_string().into(),
            "note",
        ),
    ];
    let n = cases.len();
    for (what, path, body, field) in cases {
        let (got, v) = s.raw(Method::POST, path, &s.admin, body).await;
        assert_eq!(got.as_u16(), 400, "{what}: {v}");
        assert_eq!(v["error"]["field"], field, "{what}: {v}");
    }
    for (q, field) in [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("colour=red", "colour"),
        ("before=x", "before"),
    ] {
        let (got, v) = s
            .call(
                Method::GET,
                &format!("/v1/companies/acme/reviews?{q}"),
                Some(&s.admin),
                None,
            )
            .await;
        assert_eq!(got.as_u16(), 400, "{q}: {v}");
        assert_eq!(v["error"]["field"], field, "{q}: {v}");
    }

    // Nothing changed...
    let task = s
        .admin_ok(Method::GET, &format!("/v1/companies/acme/tasks/{id}"), None)
        .await;
    assert_eq!(task["status"], "needs_review");
    let reviews = s
        .admin_ok(
            Method::GET,
            &format!("/v1/companies/acme/tasks/{id}/reviews"),
            None,
        )
        .await;
    assert_eq!(reviews["reviews"], json!([]));
    // ...and every refusal is in the audit log.
    let audit = s.audit().await;
    let rejected = audit
        .iter()
        .filter(|e| {
            (e["action"] == "task.review" || e["action"] == "task.rate")
                && e["outcome"] == "rejected"
        })
        .count();
    assert_eq!(rejected, n);
    assert!(
        audit.iter().all(
            |e| !(e["action"] == "task.review" || e["action"] == "task.rate")
                || e["outcome"] != "ok"
        ),
        "no review or rating went through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_bad_review_input_is_refused_and_writes_nothing() {
    review_table(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bad_review_input_is_refused_and_writes_nothing() {
    review_table(Backend::Postgres).await;
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let s = Server::start(Backend::Sqlite).await;
    let (got, v) = s
        .call(Method::GET, "/v1/nothing", Some(&s.admin), None)
        .await;
    assert_eq!(
        (got, v["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("not_found"))
    );
    let (got, v) = s
        .call(Method::PUT, "/v1/companies", Some(&s.admin), None)
        .await;
    assert_eq!(
        (got, v["error"]["code"].clone()),
        (StatusCode::METHOD_NOT_ALLOWED, json!("method_not_allowed"))
    );
}
