//! Opening fresh stores and making the values the suites need.

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use kira_core::CompanyId;
use kira_core::audit::{AuditRecord, Outcome};
use kira_core::auth::{Access, CompanyScope, Principal};
use kira_core::company::NewCompany;
use kira_store::postgres::PgStore;
use kira_store::sqlite::SqliteStore;
use kira_store::{Store, testdb};

/// A fresh store; the temp dir (SQLite) lives as long as the handle.
pub struct Fresh {
    pub store: Arc<dyn Store>,

    _dir: Option<tempfile::TempDir>,
}

pub async fn sqlite() -> Fresh {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = testdb::fresh_sqlite(dir.path()).await;
    let store = SqliteStore::open(&url).await.expect("open sqlite");
    Fresh {
        store: Arc::new(store),
        _dir: Some(dir),
    }
}

pub async fn postgres() -> Fresh {
    let url = testdb::fresh_postgres().await;
    let store = PgStore::open(&url, None).await.expect("open postgres");
    Fresh {
        store: Arc::new(store),
        _dir: None,
    }
}

/// Opens a fresh store: `|| Box::pin(sqlite())` or `|| Box::pin(postgres())`.
pub type Open = fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Fresh>>>;

/// Checks a property on one fresh store shared by all cases: `cases`
/// inputs from `strategy`, each checked by `check` on a runtime of two
/// workers (no failure files: a failure prints its minimal input). Panics
/// naming `what` when the property fails.
pub fn property<S, F, Fut>(what: &str, open: Open, cases: u32, strategy: S, check: F)
where
    S: proptest::strategy::Strategy,
    F: Fn(Arc<dyn Store>, S::Value) -> Fut,
    Fut: std::future::Future<Output = Result<(), proptest::test_runner::TestCaseError>>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let fresh = rt.block_on(open());
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    });
    let result = runner.run(&strategy, |v| rt.block_on(check(fresh.store.clone(), v)));
    if let Err(e) = result {
        panic!("{what} property failed: {e}");
    }
}

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 9, 30, 0)
        .single()
        .expect("valid")
        + chrono::TimeDelta::nanoseconds(123_456_789)
}

pub fn cid(s: &str) -> CompanyId {
    CompanyId::parse(s).expect("valid id")
}

pub fn scope(s: &str) -> CompanyScope {
    Principal::system()
        .scope(&cid(s), Access::Write)
        .expect("system may")
}

pub fn record(company: Option<&str>, action: &str) -> AuditRecord {
    AuditRecord {
        at: t0(),
        request_id: "req".into(),
        actor: "system".into(),
        company_id: company.map(cid),
        action: action.into(),
        target: company.map_or("-".into(), |c| format!("company:{c}")),
        outcome: Outcome::Ok,
        detail: String::new(),
    }
}

pub fn new_company(id: &str) -> NewCompany {
    serde_json::from_value(serde_json::json!({
        "id": id,
        "name": format!("{id} Inc"),
        "industry": "fintech",
        "jurisdiction": "US-DE",
        "revenue_usd": 4_200_000,
        "complexity_score": 0.7,
        "activity_score": 0.3,
        "contacts": [{"name": "Jane Roe", "email": "jane@example.com", "webhook": "https://hooks.example.com/x"}],
        "sharing_consent": ["process_templates"]
    }))
    .expect("valid new company")
}

/// Creates company `id` through the store.
pub async fn create(store: &dyn Store, id: &str) -> kira_core::company::Company {
    let (cid, profile) = new_company(id).validate().expect("valid");
    store
        .create_company(
            &scope(cid.as_str()),
            &profile,
            t0(),
            record(Some(id), "company.create"),
        )
        .await
        .expect("create")
}
