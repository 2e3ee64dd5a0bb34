//! Tasks and budgets on PostgreSQL only: row-level security on the work
//! tables, checked with raw SQL as the app role; claims racing from many
//! tokio tasks; the job lock and the task notifications.

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use kira_core::auth::Principal;
use kira_core::budget::{BudgetConfig, Pool};
use kira_core::task::{Priority, TaskId};
use kira_store::postgres::{PgStore, SetBased, TASKS_CHANNEL};
use kira_store::testdb::fresh_postgres;
use kira_store::work::{
    BudgetStore, ClaimOutcome, Completed, Completion, Finish, Settlement, TaskStore,
};
use sqlx::{Connection, Executor, PgConnection};

use crate::support::{create, record, scope, t0};
use crate::work::{Slots, candidates, new_task, submit};

const A: &str = "comp-a";
const B: &str = "comp-b";

/// The work tables holding company data, each under row-level security.
const WORK_TABLES: [&str; 6] = [
    "tasks",
    "task_events",
    "reservations",
    "budget_allocations",
    "budget_ledger",
    "emergency_requests",
];

/// 1,000 tokens: base 500, no burst, emergency 500. Medium tasks use base
/// only and never ask for emergency tokens.
fn tight_budget() -> BudgetConfig {
    BudgetConfig {
        total_tokens: 1_000,
        base_percent: 50,
        burst_percent: 0,
        emergency_percent: 50,
        ..BudgetConfig::default()
    }
}

fn admin() -> kira_core::auth::AdminScope {
    Principal::system().admin().expect("admin")
}

async fn open() -> (Arc<PgStore>, String) {
    let url = fresh_postgres().await;
    let store = PgStore::open(&url, None).await.expect("open store");
    (Arc::new(store), url)
}

async fn app_connection(url: &str) -> PgConnection {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    conn.execute("SET ROLE kira_app").await.expect("set role");
    conn
}

async fn name_company(conn: &mut PgConnection, company: &str) {
    sqlx::query("SELECT set_config('app.current_company_id', $1, false)")
        .bind(company)
        .execute(conn)
        .await
        .expect("set company");
}

async fn companies_in(conn: &mut PgConnection, table: &str) -> Vec<Option<String>> {
    // `table` is one of this file's constants.
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT company_id FROM {table}"
    )))
    .fetch_all(conn)
    .await
    .expect("select")
}

/// Asserts the statement failed with SQLSTATE 42501 and `needle` in its message.
#[track_caller]
fn assert_refused(r: Result<sqlx::postgres::PgQueryResult, sqlx::Error>, needle: &str) {
    match r {
        Err(sqlx::Error::Database(e)) => {
            assert_eq!(e.code().as_deref(), Some("42501"), "{e}");
            assert!(e.message().contains(needle), "expected {needle:?}, got {e}");
        }
        other => panic!("expected a refusal ({needle}), got {other:?}"),
    }
}

/// Companies A and B, each with a running task (a reservation), an urgent
/// one waiting for a human (an emergency request), events, an allocation
/// and ledger lines; plus the pool-level rollover lines, which name no
/// company.
async fn two_companies_at_work(store: &PgStore) {
    let cfg = tight_budget();
    for c in [A, B] {
        create(store, c).await;
    }
    for c in [A, B] {
        let run = submit(store, c, &new_task("legal", Priority::Medium, 100)).await;
        let claimed = store
            .claim(
                &scope(c),
                &run,
                "w1",
                t0() + TimeDelta::minutes(1),
                &cfg,
                t0(),
            )
            .await
            .expect("claim");
        assert!(
            matches!(claimed, ClaimOutcome::Claimed { .. }),
            "{claimed:?}"
        );
        let urgent = submit(store, c, &new_task("legal", Priority::Urgent, 600)).await;
        let asked = store
            .claim(
                &scope(c),
                &urgent,
                "w1",
                t0() + TimeDelta::minutes(1),
                &cfg,
                t0(),
            )
            .await
            .expect("claim");
        assert!(
            matches!(asked, ClaimOutcome::AwaitingApproval { .. }),
            "{asked:?}"
        );
    }
}

#[tokio::test]
async fn work_tables_show_the_app_role_one_company_only() {
    let (store, url) = open().await;
    two_companies_at_work(&store).await;

    // The superuser bypasses the policies: both companies' rows are there
    // to be hidden, and the ledger's pool lines name none.
    let mut su = PgConnection::connect(&url).await.expect("connect");
    for table in WORK_TABLES {
        let seen = companies_in(&mut su, table).await;
        for c in [A, B] {
            assert!(
                seen.iter().any(|s| s.as_deref() == Some(c)),
                "{table} holds {c}'s rows"
            );
        }
    }
    assert!(companies_in(&mut su, "budget_ledger").await.contains(&None));

    let mut app = app_connection(&url).await;
    for table in WORK_TABLES {
        let seen = companies_in(&mut app, table).await;
        assert!(seen.is_empty(), "{table} with no company named: {seen:?}");
    }
    name_company(&mut app, A).await;
    for table in WORK_TABLES {
        let seen = companies_in(&mut app, table).await;
        assert!(!seen.is_empty(), "{table}: {A} sees its own rows");
        assert!(
            seen.iter().all(|c| c.as_deref() == Some(A)),
            "{table}: {A} sees {seen:?}"
        );
    }
    name_company(&mut app, "nobody").await;
    for table in WORK_TABLES {
        assert!(
            companies_in(&mut app, table).await.is_empty(),
            "{table} for an unknown company"
        );
    }
    // The queue, periods and pools hold no company's content: no policy.
    let queue: i64 = sqlx::query_scalar("SELECT count(*) FROM task_queue")
        .fetch_one(&mut app)
        .await
        .expect("queue");
    assert_eq!(queue, 4);
}

#[tokio::test]
async fn the_app_role_cannot_rewrite_the_ledger_or_write_another_company() {
    let (store, url) = open().await;
    two_companies_at_work(&store).await;
    let mut app = app_connection(&url).await;
    name_company(&mut app, A).await;

    for sql in [
        "UPDATE budget_ledger SET amount = 0",
        "DELETE FROM budget_ledger",
        "TRUNCATE budget_ledger",
    ] {
        assert_refused(app.execute(sql).await, "permission denied");
    }
    // Naming B does not help: no privilege at all.
    name_company(&mut app, B).await;
    assert_refused(
        app.execute("DELETE FROM budget_ledger WHERE company_id = 'comp-b'")
            .await,
        "permission denied",
    );

    name_company(&mut app, A).await;
    let forged = sqlx::query(
        "INSERT INTO budget_ledger (at, period_id, company_id, pool, kind, amount) \
         VALUES (now(), '2026-03', $1, 'base', 'allocate', 1000000)",
    )
    .bind(B)
    .execute(&mut app)
    .await;
    assert_refused(forged, "violates row-level security policy");
    let moved = sqlx::query("UPDATE budget_allocations SET company_id = $1")
        .bind(B)
        .execute(&mut app)
        .await;
    assert_refused(moved, "violates row-level security policy");
    // B's reservations are invisible to A, so A's update touches none.
    let released = sqlx::query("UPDATE reservations SET state = 'released' WHERE company_id = $1")
        .bind(B)
        .execute(&mut app)
        .await
        .expect("update");
    assert_eq!(released.rows_affected(), 0);

    let report = store.verify_ledger(&admin()).await.expect("verify");
    assert!(report.ok, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_claims_never_reserve_more_than_the_allocation() {
    let (store, _url) = open().await;
    create(store.as_ref(), A).await;
    let cfg = tight_budget();
    let mut ids = Vec::new();
    for _ in 0..16 {
        ids.push(submit(store.as_ref(), A, &new_task("legal", Priority::Medium, 100)).await);
    }
    // No period exists yet: the claims also race to make it.
    let barrier = Arc::new(tokio::sync::Barrier::new(ids.len()));
    let claims: Vec<_> = ids
        .into_iter()
        .enumerate()
        .map(|(i, id)| {
            let (store, cfg, barrier) = (store.clone(), cfg.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let worker = format!("w{i}");
                store
                    .claim(
                        &scope(A),
                        &id,
                        &worker,
                        t0() + TimeDelta::minutes(1),
                        &cfg,
                        t0(),
                    )
                    .await
                    .expect("claim")
            })
        })
        .collect();
    let mut claimed = 0;
    let mut waiting = 0;
    for c in claims {
        match c.await.expect("join") {
            ClaimOutcome::Claimed { reservation, .. } => {
                assert_eq!((reservation.pool, reservation.amount), (Pool::Base, 100));
                claimed += 1;
            }
            ClaimOutcome::WaitingBudget { .. } => waiting += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((claimed, waiting), (5, 11));

    let state = store
        .budget_state(&admin(), &cfg, t0())
        .await
        .expect("state");
    for p in &state.pools {
        assert!(p.reserved + p.spent <= p.capacity, "{p:?}");
    }
    let base = state
        .pools
        .iter()
        .find(|p| p.pool == Pool::Base)
        .expect("base");
    assert_eq!((base.capacity, base.reserved), (500, 500));
    assert_eq!(
        (state.companies[0].allocation, state.companies[0].reserved),
        (500, 500)
    );
    let report = store.verify_ledger(&admin()).await.expect("verify");
    assert!(report.ok, "{report:?}");
    assert_eq!(
        store
            .queue_snapshot(t0(), 100, None)
            .await
            .expect("snapshot")
            .running
            .len(),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_task_claimed_at_once_by_many_goes_to_one() {
    let (store, _url) = open().await;
    create(store.as_ref(), A).await;
    let cfg = tight_budget();
    store.ensure_period(&cfg, t0()).await.expect("period");
    let id = submit(store.as_ref(), A, &new_task("legal", Priority::Medium, 100)).await;
    let claims: Vec<_> = (0..8)
        .map(|i| {
            let (store, cfg, id) = (store.clone(), cfg.clone(), id.clone());
            tokio::spawn(async move {
                store
                    .claim(
                        &scope(A),
                        &id,
                        &format!("w{i}"),
                        t0() + TimeDelta::minutes(1),
                        &cfg,
                        t0(),
                    )
                    .await
                    .expect("claim")
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for c in claims {
        outcomes.push(c.await.expect("join"));
    }
    let won = outcomes
        .iter()
        .filter(|o| matches!(o, ClaimOutcome::Claimed { .. }))
        .count();
    let gone = outcomes
        .iter()
        .filter(|o| **o == ClaimOutcome::Gone)
        .count();
    assert_eq!((won, gone), (1, 7), "{outcomes:?}");
    let task = store.get_task(&scope(A), &id).await.expect("get");
    assert_eq!(task.attempts, 1);
    let report = store.verify_ledger(&admin()).await.expect("verify");
    assert!(report.ok, "{report:?}");
}

#[tokio::test]
async fn a_job_lock_is_held_by_one_connection_until_it_is_dropped() {
    let (store, _url) = open().await;
    const JOB: i64 = 42;
    let held = store
        .try_job_lock(JOB)
        .await
        .expect("try")
        .expect("free at first");
    assert!(
        store.try_job_lock(JOB).await.expect("try").is_none(),
        "taken"
    );
    assert!(
        store.try_job_lock(JOB + 1).await.expect("try").is_some(),
        "another job is free"
    );
    drop(held);
    // The connection closes in the background; the lock goes with it.
    let mut again = None;
    for _ in 0..50 {
        again = store.try_job_lock(JOB).await.expect("try");
        if again.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again.is_some(), "released when the holder was dropped");
}

#[tokio::test]
async fn listeners_hear_of_new_and_requeued_tasks() {
    let (store, _url) = open().await;
    create(store.as_ref(), A).await;
    let mut listener = store.listen_tasks().await.expect("listen");
    let id = submit(store.as_ref(), A, &new_task("legal", Priority::Medium, 100)).await;
    let heard = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("in time")
        .expect("notification");
    assert_eq!(heard.channel(), TASKS_CHANNEL);
    assert_eq!(TaskId::parse(heard.payload()).expect("task id"), id);

    store
        .cancel_task(&scope(A), &id, t0(), record(Some(A), "task.cancel"))
        .await
        .expect("cancel");
    let heard = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("in time")
        .expect("notification");
    assert_eq!(heard.payload(), id.as_str());
}

/// Through the `Store` trait, as the engine uses it: a second process's
/// submission wakes this one, and a job lock is one node's at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_trait_wakes_other_processes_and_shares_job_locks() {
    let (first, url) = open().await;
    let second = PgStore::open(&url, None).await.expect("second process");
    let wake = Arc::new(tokio::sync::Notify::new());
    let listener =
        kira_store::Store::watch_tasks(first.as_ref(), wake.clone()).expect("postgres listens");
    crate::support::create(&second, "acme").await;
    // The listener connects in the background; submit until it hears one.
    let heard = async {
        loop {
            crate::work::submit(
                &second,
                "acme",
                &crate::work::new_task("legal", kira_core::task::Priority::High, 10),
            )
            .await;
            if tokio::time::timeout(std::time::Duration::from_millis(200), wake.notified())
                .await
                .is_ok()
            {
                return;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), heard)
        .await
        .expect("a wake-up within 10 s");
    listener.abort();

    let held = kira_store::Store::job_lock(first.as_ref(), 42)
        .await
        .expect("lock")
        .expect("free");
    assert!(
        kira_store::Store::job_lock(&second, 42)
            .await
            .expect("lock")
            .is_none(),
        "one node at a time"
    );
    held.release().await;
    let again = kira_store::Store::job_lock(&second, 42)
        .await
        .expect("lock")
        .expect("free as soon as it is released");
    drop(again);
    let mut again = None;
    for _ in 0..50 {
        again = kira_store::Store::job_lock(&second, 42)
            .await
            .expect("lock");
        if again.is_some() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(again.is_some(), "released when the holder is dropped");
}

fn completed() -> Finish {
    Finish {
        status: kira_core::task::TaskStatus::Completed,
        reason: "done".into(),
        result: Some(serde_json::json!({"answer": 42})),
        confidence: Some(0.9),
        requires_human_review: false,
        error: None,
        retry_at: None,
    }
}

/// A batch of several companies' tasks is claimed in one set-based
/// transaction and their ends recorded in another: the counters say so, so
/// a batch quietly falling back to one task at a time fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_claimed_and_finished_set_based() {
    let (store, url) = open().await;
    let cfg = BudgetConfig::default();
    let companies = ["comp-a", "comp-b", "comp-c"];
    for c in companies {
        create(store.as_ref(), c).await;
    }
    store.ensure_period(&cfg, t0()).await.expect("period");
    let mut ids = Vec::new();
    for i in 0..12 {
        let c = companies[i % companies.len()];
        ids.push(submit(store.as_ref(), c, &new_task("legal", Priority::Medium, 100)).await);
    }
    let cands = candidates(store.as_ref(), &ids.iter().collect::<Vec<_>>()).await;
    let out = store
        .claim_batch(
            &cands,
            &mut Slots(100),
            "w1",
            t0() + TimeDelta::minutes(1),
            &cfg,
            t0(),
        )
        .await
        .expect("claim batch");
    let mut completions = Vec::new();
    for (id, o) in &out {
        let ClaimOutcome::Claimed { task, reservation } = o else {
            panic!("{id}: {o:?}");
        };
        completions.push(Completion {
            scope: scope(task.company_id.as_str()),
            task_id: id.clone(),
            finish: completed(),
            settle: Some(Settlement {
                reservation_id: reservation.reservation_id.clone(),
                prompt_tokens: 60,
                completion_tokens: 20,
                cost_usd: 0.01,
            }),
            records: Default::default(),
        });
    }
    assert_eq!(completions.len(), 12);
    assert_eq!(
        store.set_based(),
        SetBased {
            claim_batches: 1,
            claimed: 12,
            ..SetBased::default()
        }
    );
    let ends = store
        .finish_batch("w1", completions, t0())
        .await
        .expect("finish batch");
    assert!(
        ends.iter().all(|e| matches!(e, Completed::Recorded)),
        "{ends:?}"
    );
    assert_eq!(
        store.set_based(),
        SetBased {
            claim_batches: 1,
            claimed: 12,
            finish_batches: 1,
            finished: 12,
        }
    );
    for (i, id) in ids.iter().enumerate() {
        let t = store
            .get_task(&scope(companies[i % companies.len()]), id)
            .await
            .expect("task");
        assert_eq!(
            (t.status, t.prompt_tokens, t.completion_tokens),
            (kira_core::task::TaskStatus::Completed, 60, 20)
        );
    }
    let state = store
        .budget_state(&admin(), &cfg, t0())
        .await
        .expect("state");
    for line in &state.companies {
        assert_eq!((line.reserved, line.spent), (0, 4 * 80), "{line:?}");
    }
    let report = store.verify_ledger(&admin()).await.expect("verify");
    assert!(report.ok, "{report:?}");
    assert!(
        store
            .queue_snapshot(t0(), 100, None)
            .await
            .expect("snapshot")
            .running
            .is_empty()
    );
    // The functions ran as the app role, under the policies: a company the
    // transaction does not name sees none of it.
    let mut conn = app_connection(&url).await;
    name_company(&mut conn, "comp-a").await;
    let seen = companies_in(&mut conn, "reservations").await;
    assert_eq!(seen.len(), 4);
    assert!(seen.iter().all(|c| c.as_deref() == Some("comp-a")));
}

/// Four stores (as four processes) claim one queue in batches at once:
/// every task that fits its company's allocation is claimed exactly once,
/// the rest wait, and no allocation holds more than it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_batch_claims_take_what_fits_once() {
    let url = fresh_postgres().await;
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(Arc::new(PgStore::open(&url, None).await.expect("open")));
    }
    let first = stores[0].clone();
    // Base 6,000: 3,000 for each of two like companies, 30 tasks of 100.
    let cfg = BudgetConfig {
        total_tokens: 10_000,
        ..BudgetConfig::default()
    };
    for c in [A, B] {
        create(first.as_ref(), c).await;
    }
    first.ensure_period(&cfg, t0()).await.expect("period");
    let mut ids = Vec::new();
    for i in 0..80 {
        let c = if i % 2 == 0 { A } else { B };
        ids.push(submit(first.as_ref(), c, &new_task("legal", Priority::Medium, 100)).await);
    }
    let cands = Arc::new(candidates(first.as_ref(), &ids.iter().collect::<Vec<_>>()).await);
    let barrier = Arc::new(tokio::sync::Barrier::new(stores.len()));
    let racers: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(w, store)| {
            let (store, cfg, cands, barrier) =
                (store.clone(), cfg.clone(), cands.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let mut out = Vec::new();
                // In batches of 16, as the scheduler sends them.
                for chunk in cands.chunks(16) {
                    out.extend(
                        store
                            .claim_batch(
                                chunk,
                                &mut Slots(1000),
                                &format!("w{w}"),
                                t0() + TimeDelta::minutes(1),
                                &cfg,
                                t0(),
                            )
                            .await
                            .expect("claim batch"),
                    );
                }
                out
            })
        })
        .collect();
    let mut claimed = std::collections::BTreeMap::new();
    let mut waiting = std::collections::BTreeSet::new();
    for r in racers {
        for (id, o) in r.await.expect("join") {
            match o {
                ClaimOutcome::Claimed { reservation, .. } => {
                    assert_eq!((reservation.pool, reservation.amount), (Pool::Base, 100));
                    assert!(
                        claimed.insert(id.clone(), ()).is_none(),
                        "{id} claimed twice"
                    );
                }
                ClaimOutcome::WaitingBudget { .. } => {
                    waiting.insert(id);
                }
                ClaimOutcome::Gone => {}
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!((claimed.len(), waiting.len()), (60, 20));
    let set_based: u64 = stores.iter().map(|s| s.set_based().claimed).sum();
    assert!(set_based > 0, "no claim was set-based");
    let state = first
        .budget_state(&admin(), &cfg, t0())
        .await
        .expect("state");
    for line in &state.companies {
        assert_eq!((line.allocation, line.reserved), (3000, 3000), "{line:?}");
    }
    let report = first.verify_ledger(&admin()).await.expect("verify");
    assert!(report.ok, "{report:?}");
    let snap = first
        .queue_snapshot(t0(), 100, None)
        .await
        .expect("snapshot");
    assert_eq!(snap.running.len(), 60);
}

/// The shared buffers the second of two calls of `call` reads (the first
/// plans the function's statements), as the app role, in a transaction
/// rolled back: a measure of the rows it reads that no clock moves.
async fn buffers_read(
    conn: &mut PgConnection,
    call: &str,
    ids: &[String],
    companies: &[String],
) -> i64 {
    let mut tx = conn.begin().await.expect("begin");
    let mut hits = 0;
    for _ in 0..2 {
        let plan: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, FORMAT JSON) SELECT * FROM {call}"
        )))
        .bind(ids)
        .bind(companies)
        .fetch_one(&mut *tx)
        .await
        .expect("explain");
        let top = &plan[0]["Plan"];
        assert_eq!(top["Actual Rows"], ids.len(), "{call}: one row per task");
        hits = top["Shared Hit Blocks"].as_i64().expect("hits")
            + top["Shared Read Blocks"].as_i64().expect("reads");
    }
    tx.rollback().await.expect("rollback");
    hits
}

/// A batch claim and a batch finish lock their queue rows by key: they
/// read the rows of the tasks they were given, not every claimable (or
/// running) row of those tasks' companies. The statistics here are older
/// than the queue (gathered while no row was claimable, or none running,
/// then 1,000 were), as after a burst of tasks before autovacuum
/// analyzes again. By key, each call reads about 30 buffers; the join of
/// 0004 read 96 for the finish and 1,248 for the claim (every claimable
/// row, through the partial index the statistics said was empty).
#[tokio::test]
async fn batch_claims_and_finishes_read_only_their_own_queue_rows() {
    let (store, url) = open().await;
    create(store.as_ref(), A).await;
    let mut four = Vec::new();
    for _ in 0..4 {
        let id = submit(store.as_ref(), A, &new_task("legal", Priority::Medium, 100)).await;
        four.push(id.as_str().to_owned());
    }
    let companies = vec![A.to_owned(); four.len()];
    let mut owner = PgConnection::connect(&url).await.expect("connect");
    // 2,000 more queue rows, copies of the first task's (without task
    // rows: foreign keys are not checked for this one statement's role).
    owner
        .execute(
            "SET session_replication_role = replica; \
             INSERT INTO task_queue SELECT (jsonb_populate_record(q, \
                 jsonb_build_object('task_id', q.task_id || '.f' || n))).* \
               FROM task_queue q, generate_series(1, 2000) AS n; \
             SET session_replication_role = DEFAULT",
        )
        .await
        .expect("fill the queue");
    let mut conn = app_connection(&url).await;
    let mut check = async |owner: &mut PgConnection, set: &str, call: &str| {
        // Statistics of the queue as it is, then the four and every other
        // filler (1,000 rows) changed by `set`.
        owner
            .execute("VACUUM ANALYZE task_queue")
            .await
            .expect("analyze");
        owner
            .execute(sqlx::AssertSqlSafe(format!(
                "UPDATE task_queue SET {set} \
                  WHERE task_id NOT LIKE '%.f%' \
                     OR right(task_id, 1) IN ('0', '2', '4', '6', '8')"
            )))
            .await
            .expect("update");
        let read = buffers_read(&mut conn, call, &four, &companies).await;
        assert!(read < 64, "{call} for 4 tasks read {read} buffers");
    };
    // Analyzed with no row running; then 1,004 run.
    check(
        &mut owner,
        "status = 'running', lease_owner = 'w'",
        "kira_finish_prepare('w', $1, $2)",
    )
    .await;
    // Analyzed with every row running; then 1,004 wait.
    owner
        .execute("UPDATE task_queue SET status = 'running'")
        .await
        .expect("running");
    check(
        &mut owner,
        "status = 'queued', lease_owner = NULL",
        "kira_claim_prepare($1, $2, 'no-period', now() + interval '1 day')",
    )
    .await;
}
