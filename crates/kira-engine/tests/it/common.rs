//! What every engine test file starts from: the two backends, a fresh
//! migrated store of either, and the tests' fixed start time.

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use kira_store::postgres::PgStore;
use kira_store::sqlite::SqliteStore;
use kira_store::{Store, testdb};

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The tests' start: 1 June 2026, 09:00 UTC.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 9, 0, 0)
        .single()
        .expect("time")
}

/// A fresh, migrated store; for SQLite, with the folder holding its file
/// (keep it alive as long as the store).
pub async fn fresh_store(backend: Backend) -> (Arc<dyn Store>, Option<tempfile::TempDir>) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("dir");
            let url = testdb::fresh_sqlite(dir.path()).await;
            (
                Arc::new(SqliteStore::open(&url).await.expect("sqlite")),
                Some(dir),
            )
        }
        Backend::Postgres => {
            let url = testdb::fresh_postgres().await;
            (Arc::new(PgStore::open(&url, None).await.expect("pg")), None)
        }
    }
}

/// [`fresh_store`], and its URL, for a test that reaches around the store
/// (tampering with what it wrote).
pub async fn fresh_store_url(
    backend: Backend,
) -> (Arc<dyn Store>, Option<tempfile::TempDir>, String) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("dir");
            let url = testdb::fresh_sqlite(dir.path()).await;
            (
                Arc::new(SqliteStore::open(&url).await.expect("sqlite")),
                Some(dir),
                url,
            )
        }
        Backend::Postgres => {
            let url = testdb::fresh_postgres().await;
            (
                Arc::new(PgStore::open(&url, None).await.expect("pg")),
                None,
                url,
            )
        }
    }
}
