//! The benchmark's own logic, on a small run: every task completes and the
//! report adds up. (Its figures are measured by `kira bench queue`, not here.)

use std::sync::Arc;

use kira_core::clock::SystemClock;
use kira_store::sqlite::SqliteStore;
use kira_store::testdb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_run_completes_every_task() {
    let dir = tempfile::tempdir().expect("dir");
    let url = testdb::fresh_sqlite(dir.path()).await;
    let store = Arc::new(SqliteStore::open(&url).await.expect("sqlite"));
    let engine = kira_engine::bench::engine(store, Arc::new(SystemClock), true);
    let r = kira_engine::bench::run_single(&engine, 3, 60, true)
        .await
        .expect("bench");
    assert_eq!((r.tasks, r.completed), (60, 60));
    assert_eq!(r.wait_by_priority.len(), 5);
    assert!(r.claim.p50_ms > 0.0 && r.claim.p99_ms >= r.claim.p50_ms);
    let admin = kira_core::auth::Principal::system().admin().expect("admin");
    assert!(
        engine
            .store()
            .verify_ledger(&admin)
            .await
            .expect("verify")
            .ok
    );
}
