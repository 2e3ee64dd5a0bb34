//! The queue and agents benchmarks on a small run: every task completes
//! (the queue's through the scheduler's own loop, as `kira serve` runs it)
//! and the report adds up.

use std::sync::Arc;

use kira_core::clock::SystemClock;
use kira_store::sqlite::SqliteStore;
use kira_store::testdb;
use kira_store::work::BudgetStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_run_completes_every_task() {
    let dir = tempfile::tempdir().expect("dir");
    let url = testdb::fresh_sqlite(dir.path()).await;
    let store = Arc::new(SqliteStore::open(&url).await.expect("sqlite"));
    let engine = kira_bench::queue::engine(store.clone(), Arc::new(SystemClock), true);
    let r = kira_bench::queue::run_single(&engine, store.as_ref(), 3, 60, true)
        .await
        .expect("bench");
    assert_eq!((r.tasks, r.completed), (60, 60));
    assert_eq!(r.wait_by_priority.len(), 5);
    assert!(r.run.p50_ms > 0.0 && r.run.p99_ms >= r.run.p50_ms);
    let admin = kira_core::auth::Principal::system().admin().expect("admin");
    assert!(store.verify_ledger(&admin).await.expect("verify").ok);
}

/// `kira bench agents` on a small run: every task completes through the
/// scheduler's own loop, and kira's time per task is at least its time
/// before the first call and at least its time after the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_agents_run_completes_every_task() {
    let dir = tempfile::tempdir().expect("dir");
    let url = testdb::fresh_sqlite(dir.path()).await;
    let store = Arc::new(SqliteStore::open(&url).await.expect("sqlite"));
    let r = kira_bench::agents::run(
        store,
        Arc::new(SystemClock),
        4,
        24,
        std::time::Duration::from_millis(1),
        2,
    )
    .await
    .expect("bench");
    assert_eq!((r.tasks, r.completed), (24, 24));
    assert!(r.tasks_per_second > 0.0);
    assert!(r.overhead.p50_ms > 0.0);
    assert!(r.overhead.p99_ms >= r.overhead.p50_ms);
    assert!(r.overhead.p99_ms + 0.1 >= r.before_call.p99_ms.max(r.after_call.p99_ms));
    assert!((r.within_sla - 1.0).abs() < f64::EPSILON);
}

/// `kira bench metrics` on a small run: every run is in the exposition
/// once, and both reads are timed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_metrics_run_counts_every_task_once() {
    let dir = tempfile::tempdir().expect("dir");
    let url = testdb::fresh_sqlite(dir.path()).await;
    let store = Arc::new(SqliteStore::open(&url).await.expect("sqlite"));
    let r = kira_bench::metrics::run(store, 3, 2).await.expect("bench");
    assert_eq!(r.tasks, 18);
    assert_eq!(r.completed_in_exposition, 18);
    assert!(r.scrape.p50_ms > 0.0 && r.company_week.p99_ms > 0.0);
    assert!(r.exposition_lines > 18);
}
