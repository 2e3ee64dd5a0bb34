//! Issue 17, from the attacker's side: only company `acme`'s operator or
//! viewer key, against `beta`, on both backends. Profile facts that decide
//! across companies are the admin's; acme's audit log never names beta;
//! hostile bytes are refused and audited; refusals without a key cannot
//! grow the log; a revoked key's stream ends; acme's budget view is its
//! own; every answer carries the security headers.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Backend, Server};

/// Each admin-only field with a value an admin could set.
fn admin_only_values() -> Vec<(&'static str, Value)> {
    vec![
        ("industry", json!("banking")),
        ("jurisdiction", json!("GB")),
        ("sharing_consent", json!(["process_templates"])),
        ("revenue_usd", json!(9_000_000_000_000_i64)),
        ("complexity_score", json!(1.0)),
        ("activity_score", json!(1.0)),
        ("priority_multiplier", json!(3.0)),
        ("sla_response_seconds", json!(1)),
    ]
}

/// beta's base allocation, as the admin sees it.
async fn allocation(s: &Server, company: &str) -> i64 {
    let v = s.admin_ok(Method::GET, "/v1/budget", None).await;
    v["companies"]
        .as_array()
        .expect("companies")
        .iter()
        .find(|c| c["company_id"] == company)
        .and_then(|c| c["allocation"].as_i64())
        .unwrap_or_else(|| panic!("{company} has an allocation: {v}"))
}

async fn two_companies(backend: Backend) -> (Server, String, String) {
    let s = Server::start(backend).await;
    s.company("acme").await;
    s.company("beta").await;
    // acme starts small (factor 0.2 to beta's 0.8), so anything of acme's
    // that grew its factor would cut beta's allocation.
    s.admin_ok(
        Method::PATCH,
        "/v1/companies/acme",
        Some(json!({"revenue_usd": 0, "complexity_score": 0.0, "activity_score": 0.0})),
    )
    .await;
    let (_, operator) = s.key("operator", Some("acme")).await;
    let (_, viewer) = s.key("viewer", Some("acme")).await;
    (s, operator, viewer)
}

async fn operators_may_not_set_cross_company_facts(backend: Backend) {
    let (s, operator, _) = two_companies(backend).await;
    let profile = s.admin_ok(Method::GET, "/v1/companies/acme", None).await;
    let beta_before = allocation(&s, "beta").await;
    for (field, value) in admin_only_values() {
        // Alone, and beside a field the operator may change.
        for body in [
            json!({ field: value }),
            json!({ field: value, "name": "Acme 2" }),
        ] {
            let (status, v) = s
                .call(
                    Method::PATCH,
                    "/v1/companies/acme",
                    Some(&operator),
                    Some(body.clone()),
                )
                .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{backend:?} {body}: {v}");
            assert_eq!(v["error"]["field"], field, "{backend:?}: {v}");
            assert_eq!(v["error"]["code"], "forbidden", "{backend:?}: {v}");
        }
    }
    let after = s.admin_ok(Method::GET, "/v1/companies/acme", None).await;
    assert_eq!(after, profile, "{backend:?}: nothing changed");
    assert_eq!(allocation(&s, "beta").await, beta_before, "{backend:?}");
    // Each refusal is audited, naming the field.
    let audit = s.audit().await;
    for (field, _) in admin_only_values() {
        assert!(
            audit.iter().any(|e| e["action"] == "company.update"
                && e["outcome"] == "denied"
                && e["company_id"] == "acme"
                && e["detail"] == format!("forbidden ({field})")),
            "{backend:?}: the refusal of {field} is audited"
        );
    }
    // What the operator may change, it changes.
    let (status, v) = s
        .call(
            Method::PATCH,
            "/v1/companies/acme",
            Some(&operator),
            Some(json!({"name": "Acme Two", "contacts": []})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{backend:?}: {v}");
    assert_eq!(v["name"], "Acme Two");
    // The admin may change everything.
    let mut all = serde_json::Map::new();
    for (field, value) in admin_only_values() {
        all.insert(field.to_owned(), value);
    }
    let v = s
        .admin_ok(
            Method::PATCH,
            "/v1/companies/acme",
            Some(Value::Object(all)),
        )
        .await;
    assert_eq!(v["jurisdiction"], "GB", "{backend:?}");
    let beta_after = allocation(&s, "beta").await;
    assert!(
        beta_after < beta_before,
        "{backend:?}: {beta_before} -> {beta_after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_operators_may_not_set_cross_company_facts() {
    operators_may_not_set_cross_company_facts(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_operators_may_not_set_cross_company_facts() {
    operators_may_not_set_cross_company_facts(Backend::Postgres).await;
}

async fn emergency_from_a_company_key_is_limited(backend: Backend) {
    let (s, operator, _) = two_companies(backend).await;
    let task = json!({"task": "The regulator called", "type": "quick_question_answer", "priority": "emergency"});
    let submit = |token: String| {
        let s = &s;
        let task = task.clone();
        async move {
            s.call(
                Method::POST,
                "/v1/companies/acme/tasks",
                Some(&token),
                Some(task),
            )
            .await
        }
    };
    let (status, v) = submit(operator.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{backend:?}: the first: {v}");
    // `[tasks] max_emergency_open_per_company` is 1 by default.
    let (status, v) = submit(operator.clone()).await;
    assert!(status.is_client_error(), "{backend:?}: {status} {v}");
    assert_eq!(v["error"]["field"], "priority", "{backend:?}: {v}");
    // An admin is not limited; a lower level is not either.
    let (status, _) = submit(s.admin.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{backend:?}");
    let (status, v) = s
        .call(
            Method::POST,
            "/v1/companies/acme/tasks",
            Some(&operator),
            Some(json!({"task": "x", "type": "quick_question_answer", "priority": "high"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{backend:?}: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_emergency_from_a_company_key_is_limited() {
    emergency_from_a_company_key_is_limited(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_emergency_from_a_company_key_is_limited() {
    emergency_from_a_company_key_is_limited(Backend::Postgres).await;
}

async fn acmes_audit_never_names_beta(backend: Backend) {
    let (s, operator, viewer) = two_companies(backend).await;
    let note = |text: &str| {
        json!({
            "occurred_at": "2026-01-05T10:00:00Z",
            "event_type": "note",
            "workstream": "general",
            "content": {"text": text, "counterparties": ["Initech"]}
        })
    };
    // beta's write first, then acme's: the scan from each side.
    s.admin_ok(
        Method::POST,
        "/v1/companies/beta/memory",
        Some(note("Renewal talks")),
    )
    .await;
    let (status, v) = s
        .call(
            Method::POST,
            "/v1/companies/acme/memory",
            Some(&operator),
            Some(note("Supply talks")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{backend:?}: {v}");
    let conflicts = s.admin_ok(Method::GET, "/v1/conflicts", None).await;
    let flag = conflicts["conflicts"][0].clone();
    assert_eq!(flag["counterparty"], "initech", "{backend:?}: {conflicts}");
    let flag_id = flag["id"].as_str().expect("flag id").to_owned();
    let beta_memory = s
        .admin_ok(Method::GET, "/v1/companies/beta/memory", None)
        .await["memories"][0]["id"]
        .as_str()
        .expect("beta's memory")
        .to_owned();
    // A later write of beta's grows the flag: acme hears of it, nothing more.
    s.admin_ok(
        Method::POST,
        "/v1/companies/beta/memory",
        Some(note("Initech again")),
    )
    .await;

    let (status, v) = s
        .call(Method::GET, "/v1/audit?limit=1000", Some(&viewer), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{backend:?}: {v}");
    let entries = v["entries"].as_array().expect("entries");
    for e in entries {
        let text = e.to_string().to_lowercase();
        for word in ["beta", "initech", &beta_memory] {
            assert!(
                !text.contains(word),
                "{backend:?}: acme's viewer reads '{word}' in {e}"
            );
        }
    }
    // acme is told of the flag, by its id alone.
    assert!(
        entries
            .iter()
            .any(|e| e["target"] == format!("conflict:{flag_id}")
                && e["detail"] == "conflict flag raised"),
        "{backend:?}: {v}"
    );
    // The admin keeps the whole story.
    let audit = s.audit().await;
    assert!(
        audit.iter().any(|e| e["action"] == "memory.conflict_scan"
            && e["company_id"].is_null()
            && e["detail"]
                .as_str()
                .is_some_and(|d| d.contains("company:beta") && d.contains("initech"))),
        "{backend:?}: the admin sees which company matched"
    );
    assert!(
        audit.iter().any(|e| e["action"] == "conflict.flag"
            && e["company_id"].is_null()
            && e["detail"]
                .as_str()
                .is_some_and(|d| d.contains("beta") && d.contains("initech"))),
        "{backend:?}"
    );
    let v = s.admin_ok(Method::GET, "/v1/audit/verify", None).await;
    assert_eq!(v["ok"], true, "{backend:?}: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_acmes_audit_never_names_beta() {
    acmes_audit_never_names_beta(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_acmes_audit_never_names_beta() {
    acmes_audit_never_names_beta(Backend::Postgres).await;
}

async fn nul_and_far_dates_are_refused_and_audited(backend: Backend) {
    let (s, operator, viewer) = two_companies(backend).await;
    let review = s.needs_review("acme").await;
    let rejected = s.needs_review("acme").await;
    let memory = json!({
        "occurred_at": "2026-01-05T10:00:00Z", "event_type": "note", "workstream": "general",
        "content": {"text": "a\u{0}b"}
    });
    // (method, path, token, body, the field named)
    let cases: Vec<(Method, String, &str, Option<Value>, &str)> = vec![
        (
            Method::POST,
            "/v1/companies/acme/memory".into(),
            &operator,
            Some(memory),
            "content.text",
        ),
        (
            Method::POST,
            "/v1/companies/acme/tasks".into(),
            &operator,
            Some(
                json!({"task": "x", "type": "quick_question_answer", "parameters": {"doc": ["ok", "\u{0}"]}}),
            ),
            "parameters.doc.1",
        ),
        (
            Method::POST,
            format!("/v1/companies/acme/tasks/{rejected}/review"),
            &operator,
            Some(json!({"decision": "reject", "feedback": "redo\u{0}"})),
            "feedback",
        ),
        (
            Method::POST,
            format!("/v1/companies/acme/tasks/{review}/review"),
            &operator,
            Some(json!({"decision": "approve", "result": {"answer": "\u{0}"}})),
            "result.answer",
        ),
        (
            Method::GET,
            "/v1/companies/acme/memory?term=a%00b".into(),
            &viewer,
            None,
            "term",
        ),
        (
            Method::GET,
            "/v1/companies/acme/tasks?type=a%00".into(),
            &viewer,
            None,
            "type",
        ),
        (
            Method::GET,
            "/v1/knowledge?tag=%00".into(),
            &viewer,
            None,
            "tag",
        ),
        (
            Method::GET,
            "/v1/companies/acme/tasks?since=-262143-01-01T00:00:00Z".into(),
            &viewer,
            None,
            "since",
        ),
        (
            Method::GET,
            "/v1/companies/acme/memory?from=%2B262142-01-01T00:00:00Z".into(),
            &viewer,
            None,
            "from",
        ),
        (
            Method::POST,
            "/v1/companies/acme/tasks".into(),
            &operator,
            Some(
                json!({"task": "x", "type": "quick_question_answer", "deadline": "-262143-01-01T00:00:00Z"}),
            ),
            "deadline",
        ),
    ];
    for (method, path, token, body, field) in cases {
        let (status, v) = s.call(method.clone(), &path, Some(token), body).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{backend:?} {method} {path}: {v}"
        );
        assert_eq!(v["error"]["field"], field, "{backend:?} {path}: {v}");
    }
    // A write's refusal is audited, naming the field.
    let audit = s.audit().await;
    for (action, field) in [
        ("memory.add", "content.text"),
        ("task.submit", "parameters.doc.1"),
        ("review.decide", "feedback"),
    ] {
        assert!(
            audit.iter().any(|e| e["outcome"] == "rejected"
                && e["company_id"] == "acme"
                && e["detail"] == format!("bad_request ({field})")),
            "{backend:?}: {action} refusal audited"
        );
    }
    // A NUL in the path is refused and still audited, made printable.
    let (status, v) = s
        .call(
            Method::POST,
            "/v1/companies/a%00b/tasks",
            Some(&operator),
            Some(json!({"task": "x", "type": "quick_question_answer"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{backend:?}: {v}");
    let audit = s.audit().await;
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "task.submit" && e["target"] == "company:a\u{fffd}b"),
        "{backend:?}: the refusal is audited"
    );
    // Nothing was stored, and the chain holds.
    let (_, tasks) = s
        .call(Method::GET, "/v1/companies/acme/tasks", Some(&viewer), None)
        .await;
    assert!(
        tasks["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .all(|t| t["status"] == "needs_review"),
        "{backend:?}: {tasks}"
    );
    let v = s.admin_ok(Method::GET, "/v1/audit/verify", None).await;
    assert_eq!(v["ok"], true, "{backend:?}: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_nul_and_far_dates_are_refused_and_audited() {
    nul_and_far_dates_are_refused_and_audited(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_nul_and_far_dates_are_refused_and_audited() {
    nul_and_far_dates_are_refused_and_audited(Backend::Postgres).await;
}

async fn refusals_without_a_key_cannot_grow_the_log(backend: Backend) {
    let s = Server::start(backend).await;
    let before = s.audit().await.len();
    let long = format!("/v1/companies/{}", "x".repeat(8_000));
    for i in 0..100 {
        let path = if i % 2 == 0 {
            long.as_str()
        } else {
            "/v1/whoami"
        };
        let (status, _) = s.call(Method::GET, path, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let audit = s.audit().await;
    let anonymous: Vec<&Value> = audit[before..]
        .iter()
        .filter(|e| e["actor"] == "anonymous")
        .collect();
    let limit = kira_server::DEFAULT_UNAUTHENTICATED_AUDIT_PER_MINUTE as usize;
    assert!(
        !anonymous.is_empty() && anonymous.len() <= limit + 1,
        "{backend:?}: {} entries",
        anonymous.len()
    );
    for e in anonymous {
        let target = e["target"].as_str().expect("target");
        assert!(
            target.len() <= kira_server::extract::MAX_AUDITED_PATH + 20,
            "{backend:?}: {} bytes",
            target.len()
        );
        assert!(e["detail"].as_str().expect("detail").contains("127.0.0.1"));
    }
    assert!(
        audit.iter().any(|e| e["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("GET /v1/companies/xxx") && t.ends_with("bytes]"))),
        "{backend:?}: a long path is kept cut and marked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_refusals_without_a_key_cannot_grow_the_log() {
    refusals_without_a_key_cannot_grow_the_log(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refusals_without_a_key_cannot_grow_the_log() {
    refusals_without_a_key_cannot_grow_the_log(Backend::Postgres).await;
}

/// The count of refusals past the limit is written once the address's
/// minute has passed, at its next refusal: time moved by the test's clock.
async fn counted_refusals_are_summarised_when_the_minute_ends(backend: Backend) {
    use kira_core::clock::{Clock, ManualClock};
    let clock = std::sync::Arc::new(ManualClock::new(kira_core::clock::SystemClock.now()));
    let s = Server::start_at(
        backend,
        kira_server::ServerConfig {
            unauthenticated_audit_per_minute: 3,
            ..Default::default()
        },
        clock.clone(),
    )
    .await;
    let before = s.audit().await.len();
    for _ in 0..10 {
        s.call(Method::GET, "/v1/whoami", None, None).await;
    }
    let anonymous = |audit: &[Value]| -> Vec<Value> {
        audit[before..]
            .iter()
            .filter(|e| e["actor"] == "anonymous")
            .cloned()
            .collect()
    };
    assert_eq!(anonymous(&s.audit().await).len(), 3, "{backend:?}");
    clock.advance(chrono::TimeDelta::seconds(61));
    s.call(Method::GET, "/v1/whoami", None, None).await;
    let entries = anonymous(&s.audit().await);
    assert_eq!(entries.len(), 5, "{backend:?}: {entries:?}");
    assert_eq!(
        entries[3]["detail"], "7 further unauthenticated refusals from 127.0.0.1",
        "{backend:?}"
    );
    assert_eq!(entries[4]["target"], "GET /v1/whoami", "{backend:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_counted_refusals_are_summarised_when_the_minute_ends() {
    counted_refusals_are_summarised_when_the_minute_ends(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_counted_refusals_are_summarised_when_the_minute_ends() {
    counted_refusals_are_summarised_when_the_minute_ends(Backend::Postgres).await;
}

async fn a_revoked_keys_stream_ends(backend: Backend) {
    let (s, _, _) = two_companies(backend).await;
    let (key_id, viewer) = s.key("viewer", Some("acme")).await;
    let task = s.task("acme").await;
    let mut res = reqwest::Client::new()
        .get(format!("{}/v1/companies/acme/tasks/{task}/watch", s.base))
        .bearer_auth(&viewer)
        .send()
        .await
        .expect("watch");
    assert_eq!(res.status(), StatusCode::OK);
    let first = tokio::time::timeout(Duration::from_secs(10), res.chunk())
        .await
        .expect("the first event comes")
        .expect("chunk")
        .expect("not the end");
    assert!(
        String::from_utf8_lossy(&first).contains("queued"),
        "{first:?}"
    );
    s.admin_ok(Method::POST, &format!("/v1/keys/{key_id}/revoke"), None)
        .await;
    // The stream ends (the task is still queued: nothing else would end it).
    let ended = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match res.chunk().await {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "{backend:?}: the stream outlived its key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_revoked_keys_stream_ends() {
    a_revoked_keys_stream_ends(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_revoked_keys_stream_ends() {
    a_revoked_keys_stream_ends(Backend::Postgres).await;
}

async fn a_company_key_sees_only_its_own_budget(backend: Backend) {
    let (s, operator, viewer) = two_companies(backend).await;
    for token in [&operator, &viewer] {
        let (status, v) = s.call(Method::GET, "/v1/budget", Some(token), None).await;
        assert_eq!(status, StatusCode::OK, "{backend:?}: {v}");
        let ids: Vec<&Value> = v["companies"]
            .as_array()
            .expect("companies")
            .iter()
            .map(|c| &c["company_id"])
            .collect();
        assert_eq!(ids, [&json!("acme")], "{backend:?}: {v}");
        assert_eq!(v["pools"], json!([]), "{backend:?}: no pool totals: {v}");
        assert!(!v.to_string().contains("beta"), "{backend:?}: {v}");
    }
    let v = s.admin_ok(Method::GET, "/v1/budget", None).await;
    assert_eq!(v["companies"].as_array().expect("companies").len(), 2);
    assert_eq!(v["pools"].as_array().expect("pools").len(), 3, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_company_key_sees_only_its_own_budget() {
    a_company_key_sees_only_its_own_budget(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_company_key_sees_only_its_own_budget() {
    a_company_key_sees_only_its_own_budget(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_the_security_headers() {
    let s = Server::start(Backend::Sqlite).await;
    s.company("acme").await;
    let (_, viewer) = s.key("viewer", Some("acme")).await;
    let http = reqwest::Client::new();
    for (path, token, status) in [
        ("/healthz", None, 200),
        ("/v1/openapi.json", None, 200),
        ("/v1/companies/acme", Some(viewer.as_str()), 200),
        ("/v1/companies/beta", Some(viewer.as_str()), 404),
        ("/v1/companies/acme", None, 401),
        ("/v1/nowhere", Some(viewer.as_str()), 404),
    ] {
        let mut req = http.get(format!("{}{path}", s.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.expect("request");
        assert_eq!(res.status().as_u16(), status, "{path}");
        let h = res.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["cache-control"], "no-store", "{path}");
    }
}

mod property {
    //! Whatever acme's operator sends as a profile change, beta's allocation
    //! and acme's admin-only facts stay as they were.

    use proptest::prelude::*;
    use reqwest::Method;
    use serde_json::{Value, json};

    use super::{admin_only_values, allocation, two_companies};
    use crate::support::Backend;

    fn field_value() -> impl Strategy<Value = (String, Value)> {
        let admin_only: Vec<(&'static str, Value)> = admin_only_values();
        prop_oneof![
            (0..admin_only.len()).prop_map(move |i| {
                let (f, v) = admin_only[i].clone();
                (f.to_owned(), v)
            }),
            prop_oneof![
                Just(json!(0)),
                Just(json!(-1)),
                Just(json!(1e300)),
                Just(json!("US-DE")),
                Just(json!(null)),
                Just(json!([])),
                "[a-z ]{0,12}".prop_map(Value::from),
            ]
            .prop_flat_map(|v| {
                prop_oneof![
                    Just("industry"),
                    Just("revenue_usd"),
                    Just("priority_multiplier"),
                    Just("sharing_consent"),
                    Just("name"),
                    Just("contacts"),
                    Just("id"),
                    Just("REVENUE_USD"),
                ]
                .prop_map(move |f| (f.to_owned(), v.clone()))
            }),
        ]
    }

    fn bodies() -> impl Strategy<Value = Vec<Vec<(String, Value)>>> {
        prop::collection::vec(prop::collection::vec(field_value(), 1..4), 1..6)
    }

    fn run(backend: Backend, cases: u32) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (s, operator, _) = rt.block_on(two_companies(backend));
        let cfg = ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        };
        let facts = |v: &Value| -> Vec<Value> {
            admin_only_values()
                .iter()
                .map(|(f, _)| v[*f].clone())
                .collect()
        };
        proptest!(cfg, |(patches in bodies())| {
            rt.block_on(async {
                let beta = allocation(&s, "beta").await;
                let before = s.admin_ok(Method::GET, "/v1/companies/acme", None).await;
                for patch in &patches {
                    let body: serde_json::Map<String, Value> = patch.iter().cloned().collect();
                    s.call(Method::PATCH, "/v1/companies/acme", Some(&operator), Some(Value::Object(body))).await;
                }
                let after = s.admin_ok(Method::GET, "/v1/companies/acme", None).await;
                assert_eq!(facts(&after), facts(&before), "{backend:?}: {patches:?}");
                assert_eq!(allocation(&s, "beta").await, beta, "{backend:?}: {patches:?}");
            });
        });
    }

    #[test]
    fn sqlite_no_operator_patch_moves_cross_company_facts() {
        run(Backend::Sqlite, 48);
    }

    #[test]
    fn postgres_no_operator_patch_moves_cross_company_facts() {
        run(Backend::Postgres, 24);
    }
}
