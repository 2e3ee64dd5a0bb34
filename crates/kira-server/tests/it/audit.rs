//! The audit chain through the API: tampering is found, and concurrent
//! requests (and several servers on one PostgreSQL) keep one chain.

use std::sync::Arc;

use reqwest::Method;
use serde_json::json;
use sqlx::Connection;

use crate::support::{Backend, Server, serve};

async fn tamper(s: &Server, backend: Backend, seq: i64) {
    match backend {
        Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&s.db_url)
                .await
                .expect("connect");
            sqlx::raw_sql("DROP TRIGGER audit_log_no_update")
                .execute(&mut c)
                .await
                .expect("drop trigger");
            sqlx::query("UPDATE audit_log SET outcome = 'denied' WHERE seq = ?")
                .bind(seq)
                .execute(&mut c)
                .await
                .expect("tamper");
        }
        Backend::Postgres => {
            // The owner (a superuser here) can; the app role cannot.
            let mut c = sqlx::PgConnection::connect(&s.db_url)
                .await
                .expect("connect");
            sqlx::query("UPDATE audit_log SET outcome = 'denied' WHERE seq = $1")
                .bind(seq)
                .execute(&mut c)
                .await
                .expect("tamper");
        }
    }
}

async fn tampering_is_found(backend: Backend) {
    let s = Server::start(backend).await;
    s.company("acme").await;
    s.admin_ok(
        Method::PATCH,
        "/v1/companies/acme",
        Some(json!({"revenue_usd": 9})),
    )
    .await;
    s.admin_ok(Method::POST, "/v1/companies/acme/archive", None)
        .await;
    let v = s.admin_ok(Method::GET, "/v1/audit/verify", None).await;
    assert_eq!(v["ok"], true, "{v}");
    tamper(&s, backend, 3).await;
    let v = s.admin_ok(Method::GET, "/v1/audit/verify", None).await;
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["first_broken"]["seq"], 3, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_tampering_is_found() {
    tampering_is_found(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tampering_is_found() {
    tampering_is_found(Backend::Postgres).await;
}

async fn concurrent_requests_keep_one_chain(backend: Backend) {
    // Every refusal written: no per-address limit within this test.
    let s = Arc::new(
        Server::start_with(
            backend,
            kira_server::ServerConfig {
                unauthenticated_audit_per_minute: 10_000,
                ..Default::default()
            },
        )
        .await,
    );
    s.company("acme").await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            s.admin_ok(
                Method::PATCH,
                "/v1/companies/acme",
                Some(json!({"revenue_usd": i})),
            )
            .await;
            // A refused request writes an entry too.
            s.call(Method::GET, "/v1/whoami", Some("kira_nope"), None)
                .await;
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let v = s.admin_ok(Method::GET, "/v1/audit/verify", None).await;
    assert_eq!(v["ok"], true, "{v}");
    // bootstrap + create + 40 updates + 40 refusals
    assert_eq!(v["entries"], 1 + 1 + 80, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrent_requests_keep_one_chain() {
    concurrent_requests_keep_one_chain(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_requests_keep_one_chain() {
    concurrent_requests_keep_one_chain(Backend::Postgres).await;
}

/// Two servers, each with its own connection pool, on one database: to
/// PostgreSQL they are two processes. (The CLI tests also run real ones.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_servers_keep_one_chain() {
    let s = Server::start(Backend::Postgres).await;
    s.company("acme").await;
    let second = kira_store::postgres::PgStore::open(&s.db_url, None)
        .await
        .expect("second pool");
    let (base2, _task) = serve(Arc::new(second), kira_server::ServerConfig::default()).await;
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..30 {
        let base = if i % 2 == 0 {
            s.base.clone()
        } else {
            base2.clone()
        };
        let (http, token) = (http.clone(), s.admin.clone());
        tasks.push(tokio::spawn(async move {
            let res = http
                .patch(format!("{base}/v1/companies/acme"))
                .bearer_auth(token)
                .json(&json!({"activity_score": f64::from(i) / 30.0}))
                .send()
                .await
                .expect("send");
            assert!(res.status().is_success());
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let v = s.admin_ok(Method::GET, "/v1/audit/verify", None).await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["entries"], 2 + 30, "{v}");
}

#[tokio::test]
async fn forced_delete_keeps_the_audit_trail_verifiable() {
    let s = Server::start(Backend::Sqlite).await;
    s.company("acme").await;
    let (_, op) = s.key("operator", Some("acme")).await;
    s.call(
        Method::PATCH,
        "/v1/companies/acme",
        Some(&op),
        Some(json!({"revenue_usd": 1})),
    )
    .await;
    let v = s
        .admin_ok(Method::DELETE, "/v1/companies/acme?force=true", None)
        .await;
    assert_eq!(
        (
            v["rows"]["api_keys"].clone(),
            v["rows"]["companies"].clone()
        ),
        (json!(1), json!(1)),
        "{v}"
    );
    let (status, _) = s
        .call(Method::GET, "/v1/companies/acme", Some(&s.admin), None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = s.call(Method::GET, "/v1/whoami", Some(&op), None).await;
    assert_eq!(status, 401, "the company's keys went with it");
    let entries = s
        .admin_ok(Method::GET, "/v1/audit?company=acme", None)
        .await;
    let actions: Vec<_> = entries["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["action"].clone())
        .collect();
    assert!(
        actions.contains(&json!("company.create")) && actions.contains(&json!("company.delete")),
        "{actions:?}"
    );
    let v = s.admin_ok(Method::GET, "/v1/audit/verify", None).await;
    assert_eq!(v["ok"], true, "{v}");
}
