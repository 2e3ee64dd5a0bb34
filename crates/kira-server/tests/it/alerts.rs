//! Alerts from the attacker's side, on both backends: a company key sees
//! and changes its own company's alerts only; another company's alert
//! answers 404 to every route, stays as it was, and each attempt is in the
//! audit log under the attacker's own company. The admin sees all, and
//! silences are the admin's.

use reqwest::Method;
use serde_json::json;

use crate::auth_matrix::firing_alert;
use crate::support::{Backend, Server};

async fn a_company_key_reaches_only_its_own_alerts(backend: Backend) {
    let s = Server::start(backend).await;
    s.company("acme").await;
    s.company("other").await;
    let (_, operator) = s.key("operator", Some("acme")).await;
    let mine = firing_alert(&s, "acme").await;
    let theirs = firing_alert(&s, "other").await;

    let (status, list) = s
        .call(Method::GET, "/v1/alerts", Some(&operator), None)
        .await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .filter_map(|a| a["id"].as_str())
        .collect();
    assert_eq!(ids, [mine.as_str()]);
    assert!(!list.to_string().contains("other"), "{list}");

    for (method, path) in [
        (Method::GET, format!("/v1/alerts/{theirs}")),
        (Method::POST, format!("/v1/alerts/{theirs}/ack")),
        (Method::POST, format!("/v1/alerts/{theirs}/resolve")),
    ] {
        let (status, v) = s.call(method, &path, Some(&operator), None).await;
        assert_eq!(status, 404, "{path}: {v}");
        assert!(!v.to_string().contains("other"), "{v}");
    }
    let (_, v) = s
        .call(
            Method::GET,
            &format!("/v1/alerts/{theirs}"),
            Some(&s.admin),
            None,
        )
        .await;
    assert_eq!(v["alert"]["state"], "firing", "their alert untouched: {v}");
    let audit = s.audit().await;
    let denied = audit
        .iter()
        .filter(|e| {
            e["outcome"] == "denied"
                && e["company_id"] == "acme"
                && e["target"] == format!("alert:{theirs}")
        })
        .count();
    assert_eq!(denied, 3, "every attempt audited under acme");

    // Its own: acknowledged, audited in its log; twice is a conflict.
    let (status, v) = s
        .call(
            Method::POST,
            &format!("/v1/alerts/{mine}/ack"),
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "acknowledged");
    let (status, _) = s
        .call(
            Method::POST,
            &format!("/v1/alerts/{mine}/ack"),
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(status, 409);
    let (status, v) = s
        .call(
            Method::POST,
            &format!("/v1/alerts/{mine}/resolve"),
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "resolved");
    let audit = s.audit().await;
    for action in ["alert.ack", "alert.resolve"] {
        assert!(
            audit.iter().any(|e| e["action"] == action
                && e["outcome"] == "ok"
                && e["company_id"] == "acme"),
            "{action} audited"
        );
    }
    // Silences: the admin's; a bad one names its field.
    let (status, _) = s
        .call(Method::GET, "/v1/alerts/silences", Some(&operator), None)
        .await;
    assert_eq!(status, 403);
    let (status, v) = s
        .call(
            Method::POST,
            "/v1/alerts/silences",
            Some(&s.admin),
            Some(json!({"matchers": [], "ends_at": "2030-01-01T00:00:00Z", "comment": "x"})),
        )
        .await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["error"]["field"], "matchers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_company_key_reaches_only_its_own_alerts() {
    a_company_key_reaches_only_its_own_alerts(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_company_key_reaches_only_its_own_alerts() {
    a_company_key_reaches_only_its_own_alerts(Backend::Postgres).await;
}

/// Refused requests through the real API reach the evaluator: a burst of
/// bad tokens naming one key id, from one address, opens an alert for
/// the key and one for the address (the default rule's `for` is 0); a
/// company key sees neither (they are no company's). A few failures, with
/// the clock moved past the window, open nothing more.
async fn auth_failures_through_the_api_open_security_alerts(backend: Backend) {
    use kira_core::clock::ManualClock;
    let clock = std::sync::Arc::new(ManualClock::new(
        chrono::DateTime::parse_from_rfc3339("2026-06-01T09:00:00Z")
            .expect("time")
            .to_utc(),
    ));
    let mut cfg = kira_engine::EngineConfig::default();
    cfg.alerts
        .rules
        .retain(|r| r.name == "auth_failures" || r.name == "denied_reads");
    let s = Server::start_engine(backend, Default::default(), clock.clone(), cfg).await;
    s.company("acme").await;
    let (_, viewer) = s.key("viewer", Some("acme")).await;
    let forged = format!("kira_k3v9x2m4q8ab_{}", "x".repeat(40));
    for _ in 0..21 {
        let (status, _) = s.call(Method::GET, "/v1/whoami", Some(&forged), None).await;
        assert_eq!(status, 401);
    }
    let evaluate = || async {
        // Another test's evaluator may hold the lock for a moment.
        for _ in 0..500 {
            if s.engine
                .alerts()
                .evaluate()
                .await
                .expect("evaluate")
                .is_some()
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the evaluator's lock stays taken");
    };
    evaluate().await;
    let (status, list) = s
        .call(Method::GET, "/v1/alerts", Some(&s.admin), None)
        .await;
    assert_eq!(status, 200, "{list}");
    let mut got: Vec<(String, String, String)> = list["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .map(|a| {
            (
                a["subject"].as_str().unwrap_or_default().to_owned(),
                a["state"].as_str().unwrap_or_default().to_owned(),
                a["severity"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    got.sort();
    let firing = |s: &str| (s.to_owned(), "firing".to_owned(), "critical".to_owned());
    assert_eq!(
        got,
        [firing("address:127.0.0.1"), firing("key:k3v9x2m4q8ab")]
    );
    assert!(!list.to_string().contains(&forged), "no token in an alert");
    let (_, own) = s.call(Method::GET, "/v1/alerts", Some(&viewer), None).await;
    assert_eq!(own["alerts"], json!([]), "{own}");

    // Past the window: the burst is over and both resolve.
    clock.advance(chrono::TimeDelta::minutes(6));
    for _ in 0..2 {
        s.call(Method::GET, "/v1/whoami", Some(&forged), None).await;
    }
    evaluate().await;
    let (_, list) = s
        .call(Method::GET, "/v1/alerts?open=true", Some(&s.admin), None)
        .await;
    assert_eq!(list["alerts"], json!([]), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_auth_failures_through_the_api_open_security_alerts() {
    auth_failures_through_the_api_open_security_alerts(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_auth_failures_through_the_api_open_security_alerts() {
    auth_failures_through_the_api_open_security_alerts(Backend::Postgres).await;
}
