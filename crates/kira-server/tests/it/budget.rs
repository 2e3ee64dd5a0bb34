//! Issue 19 through the API, on both backends: usage the provider reported
//! above what the company had shows as its overdraft in `GET /v1/budget`
//! (a negative remaining), in its own audit log, and the ledger replays.

use kira_core::CompanyId;
use kira_core::auth::{Access, Principal};
use kira_core::budget::BudgetConfig;
use kira_core::clock::{Clock, SystemClock};
use kira_core::task::TaskId;
use kira_store::work::ClaimOutcome;
use reqwest::{Method, StatusCode};

use crate::support::{Backend, Server};

async fn an_overdraft_shows_in_the_budget_api(backend: Backend) {
    let s = Server::start(backend).await;
    s.company("acme").await;
    s.company("beta").await;
    let (_, viewer) = s.key("viewer", Some("acme")).await;
    let id = TaskId::parse(&s.task("acme").await).expect("id");
    let scope = Principal::system()
        .scope(&CompanyId::parse("acme").expect("id"), Access::Write)
        .expect("scope");
    let now = SystemClock.now();
    let cfg = BudgetConfig::default();
    let ClaimOutcome::Claimed { reservation, .. } = s
        .store
        .claim(
            &scope,
            &id,
            "w",
            now + chrono::TimeDelta::minutes(5),
            &cfg,
            now,
        )
        .await
        .expect("claim")
    else {
        panic!("claimed")
    };
    let before = s.admin_ok(Method::GET, "/v1/budget", None).await;
    let allocation = before["companies"][0]["allocation"]
        .as_i64()
        .expect("allocation");
    // The provider reports 500 tokens more than the whole allocation.
    s.store
        .settle(
            &scope,
            &reservation.reservation_id,
            allocation + 400,
            100,
            0.0,
            now,
        )
        .await
        .expect("settle");
    let (status, v) = s.call(Method::GET, "/v1/budget", Some(&viewer), None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let line = &v["companies"][0];
    assert_eq!(line["company_id"], "acme", "{v}");
    assert_eq!(line["spent"], allocation + 500, "{v}");
    assert_eq!(line["overdraft"], 500, "{v}");
    assert_eq!(line["remaining"], -500, "{v}");
    let admin = s.admin_ok(Method::GET, "/v1/budget", None).await;
    let base = admin["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .find(|p| p["pool"] == "base")
        .expect("base")
        .clone();
    assert_eq!(base["spent"], allocation + 500, "{admin}");
    let verify = s.admin_ok(Method::GET, "/v1/budget/verify", None).await;
    assert_eq!(verify["ok"], true, "{verify}");
    let audit = s
        .admin_ok(Method::GET, "/v1/audit?company=acme", None)
        .await;
    let text = audit.to_string();
    assert!(text.contains("budget.overdraft"), "{audit}");
    assert!(!text.contains("beta"), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_an_overdraft_shows_in_the_budget_api() {
    an_overdraft_shows_in_the_budget_api(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_overdraft_shows_in_the_budget_api() {
    an_overdraft_shows_in_the_budget_api(Backend::Postgres).await;
}

/// Deleting a company gives its share of the base pool back to the others
/// at once, as creating, changing and archiving one move the shares.
async fn deleting_a_company_gives_its_share_back(backend: Backend) {
    let s = Server::start(backend).await;
    s.company("acme").await;
    s.company("beta").await;
    let allocation_of_acme = |v: &serde_json::Value| {
        v["companies"]
            .as_array()
            .expect("companies")
            .iter()
            .find(|c| c["company_id"] == "acme")
            .and_then(|c| c["allocation"].as_i64())
            .expect("acme's allocation")
    };
    let before = s.admin_ok(Method::GET, "/v1/budget", None).await;
    let base = before["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .find(|p| p["pool"] == "base")
        .and_then(|p| p["capacity"].as_i64())
        .expect("base capacity");
    assert!(allocation_of_acme(&before) < base, "{before}");
    s.admin_ok(Method::DELETE, "/v1/companies/beta?force=true", None)
        .await;
    let after = s.admin_ok(Method::GET, "/v1/budget", None).await;
    assert_eq!(allocation_of_acme(&after), base, "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_deleting_a_company_gives_its_share_back() {
    deleting_a_company_gives_its_share_back(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_deleting_a_company_gives_its_share_back() {
    deleting_a_company_gives_its_share_back(Backend::Postgres).await;
}
