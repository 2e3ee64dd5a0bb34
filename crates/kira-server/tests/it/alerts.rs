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
