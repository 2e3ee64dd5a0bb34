//! Migrations that carry data forward, checked from a database left at the
//! version before them: 0028 adds up the all-time series rows an earlier
//! kira rolled up into `metric_totals`, so `/metrics` keeps its counters
//! across the upgrade; 0029 admits `metrics` keys and keeps every key and
//! dashboard session (SQLite rebuilds `api_keys`); 0037 gives each task's
//! recorded cost to its last settled reservation.

use std::borrow::Cow;

use kira_store::metrics::{MetricRow, MetricsStore};
use kira_store::postgres::PgStore;
use kira_store::sqlite::SqliteStore;
use kira_store::testdb;
use sqlx::migrate::Migrator;

/// The all-time rows an earlier roll-up wrote (company, agent, level,
/// completed, prompt tokens, response bucket r3), and a minute row, which
/// is not all-time and must not be counted.
const ROWS: &[(&str, &str, &str, &str, i64, i64, i64)] = &[
    ("acme", "legal", "high", "total", 2, 30, 1),
    ("acme", "primary", "high", "total", 1, 5, 1),
    ("acme", "legal", "low", "total", 4, 11, 0),
    ("beta", "legal", "low", "total", 7, 70, 3),
    ("beta", "legal", "low", "minute", 100, 1000, 100),
];

const INSERT: &str = "INSERT INTO metric_rollups \
    (company_id, agent, priority, resolution, bucket, completed, prompt_tokens, r3) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// `m` with only the migrations before 0028.
fn before_0028(m: Migrator) -> Migrator {
    before(m, 28)
}

/// `m` with only the migrations before `version`.
fn before(mut m: Migrator, version: i64) -> Migrator {
    let kept: Vec<_> = m
        .migrations
        .iter()
        .filter(|x| x.version < version)
        .cloned()
        .collect();
    m.migrations = Cow::Owned(kept);
    m
}

/// A new SQLite database (foreign keys on) migrated up to, not including,
/// `version`: its folder, URL, options and an open pool.
async fn sqlite_before(
    version: i64,
) -> (
    tempfile::TempDir,
    String,
    sqlx::sqlite::SqliteConnectOptions,
    sqlx::SqlitePool,
) {
    let dir = tempfile::tempdir().expect("dir");
    let url = testdb::fresh_sqlite(dir.path()).await;
    let opts: sqlx::sqlite::SqliteConnectOptions = url
        .parse::<sqlx::sqlite::SqliteConnectOptions>()
        .expect("url")
        .create_if_missing(true)
        .foreign_keys(true);
    let pool = sqlx::SqlitePool::connect_with(opts.clone())
        .await
        .expect("open");
    before(sqlx::migrate!("migrations/sqlite"), version)
        .run(&pool)
        .await
        .expect("migrate");
    (dir, url, opts, pool)
}

fn figures(rows: &[MetricRow], key: fn(&MetricRow) -> &str) -> Vec<(String, i64, i64, i64)> {
    rows.iter()
        .map(|r| {
            (
                key(r).to_owned(),
                r.sums.completed,
                r.sums.prompt_tokens,
                r.sums.response.0[3],
            )
        })
        .collect()
}

async fn check(store: &dyn MetricsStore) {
    let admin = kira_core::auth::Principal::system().admin().expect("admin");
    let t = store.metric_totals(&admin).await.expect("totals");
    assert_eq!(
        figures(&t.by_company, |r| &r.key.company_id),
        [("acme".into(), 7, 46, 2), ("beta".into(), 7, 70, 3)]
    );
    assert_eq!(
        figures(&t.by_agent, |r| &r.key.agent),
        [("legal".into(), 13, 111, 4), ("primary".into(), 1, 5, 1)]
    );
    assert_eq!(
        figures(&t.by_level, |r| &r.key.priority),
        [("high".into(), 3, 35, 2), ("low".into(), 11, 81, 3)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_0028_adds_up_the_totals_rolled_up_before_it() {
    let dir = tempfile::tempdir().expect("dir");
    let url = testdb::fresh_sqlite(dir.path()).await;
    let opts: sqlx::sqlite::SqliteConnectOptions = url
        .parse::<sqlx::sqlite::SqliteConnectOptions>()
        .expect("url")
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(opts).await.expect("open");
    before_0028(sqlx::migrate!("migrations/sqlite"))
        .run(&pool)
        .await
        .expect("migrate to 0027");
    for (company, agent, level, resolution, completed, prompt, r3) in ROWS {
        sqlx::query(INSERT)
            .bind(company)
            .bind(agent)
            .bind(level)
            .bind(resolution)
            .bind("1970-01-01T00:00:00.000000Z")
            .bind(completed)
            .bind(prompt)
            .bind(r3)
            .execute(&pool)
            .await
            .expect("insert");
    }
    pool.close().await;
    let store = SqliteStore::open(&url).await.expect("open, migrating");
    check(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_0028_adds_up_the_totals_rolled_up_before_it() {
    let url = testdb::fresh_postgres().await;
    let pool = sqlx::PgPool::connect(&url).await.expect("open");
    before_0028(sqlx::migrate!("migrations/postgres"))
        .run(&pool)
        .await
        .expect("migrate to 0027");
    for (company, agent, level, resolution, completed, prompt, r3) in ROWS {
        sqlx::query(INSERT)
            .bind(company)
            .bind(agent)
            .bind(level)
            .bind(resolution)
            .bind(chrono::DateTime::<chrono::Utc>::UNIX_EPOCH)
            .bind(completed)
            .bind(prompt)
            .bind(r3)
            .execute(&pool)
            .await
            .expect("insert");
    }
    pool.close().await;
    let store = PgStore::open(&url, None).await.expect("open, migrating");
    check(&store).await;
}

/// The rows an earlier kira left: a company, an admin key, the company's
/// operator key and a dashboard session of it. `$1` is a timestamp, `$2`
/// (when the flag says so) a hash.
const KEYS_BEFORE_0029: &[(&str, bool)] = &[
    (
        "INSERT INTO companies (company_id, name, industry, jurisdiction, revenue_usd, \
           complexity_score, activity_score, priority_multiplier, sla_response_seconds, \
           contacts, sharing_consent, created_at, updated_at) \
         VALUES ('acme', 'Acme', 'legal', 'US', 1, 0.5, 0.5, 1.0, 30, '[]', '[]', $1, $1)",
        false,
    ),
    (
        "INSERT INTO api_keys (key_id, name, role, company_id, token_sha256, created_at) \
         VALUES ('aaaaaaaaaaaa', 'root', 'admin', NULL, $2, $1)",
        true,
    ),
    (
        "INSERT INTO api_keys (key_id, name, role, company_id, token_sha256, created_at) \
         VALUES ('bbbbbbbbbbbb', 'ops', 'operator', 'acme', $2, $1)",
        true,
    ),
    (
        "INSERT INTO ui_sessions (session_id, key_id, secret_sha256, csrf, created_at, expires_at) \
         VALUES ('s1', 'bbbbbbbbbbbb', $2, 'c', $1, $1)",
        true,
    ),
];

const METRICS_KEY: &str = "INSERT INTO api_keys (key_id, name, role, company_id, token_sha256, \
     created_at) VALUES ($1, 'scraper', 'metrics', $2, $3, $4)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_0029_admits_metrics_keys_and_keeps_keys_and_sessions() {
    let (_dir, url, opts, pool) = sqlite_before(29).await;
    let t = "2026-01-01T00:00:00.000000Z";
    for (stmt, hash) in KEYS_BEFORE_0029 {
        let q = sqlx::query(*stmt).bind(t);
        let q = if *hash { q.bind(vec![7u8; 32]) } else { q };
        q.execute(&pool).await.expect("insert");
    }
    pool.close().await;
    drop(SqliteStore::open(&url).await.expect("open, migrating"));
    let pool = sqlx::SqlitePool::connect_with(opts).await.expect("open");
    let count = |table: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM {table}"
            )))
            .fetch_one(&pool)
            .await
            .expect("count")
        }
    };
    assert_eq!(count("api_keys").await, 2);
    assert_eq!(
        count("ui_sessions").await,
        1,
        "the session outlived the rebuild"
    );
    let fk: Vec<(String,)> = sqlx::query_as("SELECT \"table\" FROM pragma_foreign_key_check")
        .fetch_all(&pool)
        .await
        .expect("check");
    assert!(fk.is_empty(), "{fk:?}");
    let insert = |id: &'static str, company: Option<&'static str>| {
        sqlx::query(METRICS_KEY)
            .bind(id)
            .bind(company)
            .bind(vec![8u8; 32])
            .bind(t)
            .execute(&pool)
    };
    insert("cccccccccccc", None).await.expect("a metrics key");
    insert("dddddddddddd", Some("acme"))
        .await
        .expect_err("a metrics key names no company");
    // Deleting a key still takes its sessions with it.
    sqlx::query("DELETE FROM api_keys WHERE key_id = 'bbbbbbbbbbbb'")
        .execute(&pool)
        .await
        .expect("delete");
    assert_eq!(count("ui_sessions").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_0029_admits_metrics_keys_and_keeps_keys_and_sessions() {
    let url = testdb::fresh_postgres().await;
    let pool = sqlx::PgPool::connect(&url).await.expect("open");
    before(sqlx::migrate!("migrations/postgres"), 29)
        .run(&pool)
        .await
        .expect("migrate to 0028");
    let t = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH;
    for (stmt, hash) in KEYS_BEFORE_0029 {
        let q = sqlx::query(*stmt).bind(t);
        let q = if *hash { q.bind(vec![7u8; 32]) } else { q };
        q.execute(&pool).await.expect("insert");
    }
    pool.close().await;
    drop(PgStore::open(&url, None).await.expect("open, migrating"));
    let pool = sqlx::PgPool::connect(&url).await.expect("open");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM ui_sessions")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(n, 1);
    let insert = |id: &'static str, company: Option<&'static str>| {
        sqlx::query(METRICS_KEY)
            .bind(id)
            .bind(company)
            .bind(vec![8u8; 32])
            .bind(t)
            .execute(&pool)
    };
    insert("cccccccccccc", None).await.expect("a metrics key");
    insert("dddddddddddd", Some("acme"))
        .await
        .expect_err("a metrics key names no company");
}

/// A company's tasks and reservations before 0037: `$1` is a time, `$2` a
/// later one. t1 settled twice (its cost goes to the later, r2), t2 was
/// released once and settled once (to r4, whatever the later close), t3
/// cost nothing.
const COSTS_BEFORE_0037: &[&str] = &[
    "INSERT INTO budget_periods (period_id, starts_at, ends_at, total_tokens, created_at) \
     VALUES ('2026-01', $1, $2, 1000, $1)",
    "INSERT INTO tasks (task_id, company_id, seq, task_type, agent, priority, task, parameters, \
       company_context, status, max_attempts, estimated_tokens, cost_usd, created_at, updated_at) \
     VALUES ('t1', 'acme', 1, 'q', 'legal', 'low', 'x', '{}', '{}', 'completed', 3, 100, 0.75, $1, $2), \
            ('t2', 'acme', 2, 'q', 'legal', 'low', 'x', '{}', '{}', 'completed', 3, 100, 0.5, $1, $2), \
            ('t3', 'acme', 3, 'q', 'legal', 'low', 'x', '{}', '{}', 'completed', 3, 100, 0, $1, $2)",
    "INSERT INTO reservations (reservation_id, company_id, task_id, period_id, pool, amount, state, \
       spent, created_at, closed_at) \
     VALUES ('r1', 'acme', 't1', '2026-01', 'base', 100, 'settled', 50, $1, $1), \
            ('r2', 'acme', 't1', '2026-01', 'base', 100, 'settled', 60, $1, $2), \
            ('r3', 'acme', 't2', '2026-01', 'base', 100, 'released', 0, $1, $2), \
            ('r4', 'acme', 't2', '2026-01', 'base', 100, 'settled', 70, $1, $1), \
            ('r5', 'acme', 't3', '2026-01', 'base', 100, 'settled', 10, $1, $2)",
];

const COSTS_AFTER_0037: &str =
    "SELECT reservation_id, cost_usd FROM reservations ORDER BY reservation_id";

fn costs_carried(rows: &[(String, f64)]) {
    let want = [
        ("r1", 0.0),
        ("r2", 0.75),
        ("r3", 0.0),
        ("r4", 0.5),
        ("r5", 0.0),
    ];
    assert_eq!(rows.len(), want.len(), "{rows:?}");
    for ((id, cost), (want_id, want_cost)) in rows.iter().zip(want) {
        assert_eq!(id, want_id);
        assert!((cost - want_cost).abs() < 1e-12, "{rows:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_0037_gives_each_tasks_cost_to_its_last_settled_reservation() {
    let (_dir, url, opts, pool) = sqlite_before(37).await;
    let (t1, t2) = ("2026-01-01T00:00:00.000000Z", "2026-01-02T00:00:00.000000Z");
    sqlx::query(KEYS_BEFORE_0029[0].0)
        .bind(t1)
        .execute(&pool)
        .await
        .expect("company");
    for stmt in COSTS_BEFORE_0037 {
        sqlx::query(*stmt)
            .bind(t1)
            .bind(t2)
            .execute(&pool)
            .await
            .expect("insert");
    }
    pool.close().await;
    drop(SqliteStore::open(&url).await.expect("open, migrating"));
    let pool = sqlx::SqlitePool::connect_with(opts).await.expect("open");
    let rows: Vec<(String, f64)> = sqlx::query_as(COSTS_AFTER_0037)
        .fetch_all(&pool)
        .await
        .expect("read");
    costs_carried(&rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_0037_gives_each_tasks_cost_to_its_last_settled_reservation() {
    let url = testdb::fresh_postgres().await;
    let pool = sqlx::PgPool::connect(&url).await.expect("open");
    before(sqlx::migrate!("migrations/postgres"), 37)
        .run(&pool)
        .await
        .expect("migrate to 0036");
    let t1 = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH;
    let t2 = t1 + chrono::TimeDelta::days(1);
    sqlx::query(KEYS_BEFORE_0029[0].0)
        .bind(t1)
        .execute(&pool)
        .await
        .expect("company");
    for stmt in COSTS_BEFORE_0037 {
        sqlx::query(*stmt)
            .bind(t1)
            .bind(t2)
            .execute(&pool)
            .await
            .expect("insert");
    }
    pool.close().await;
    drop(PgStore::open(&url, None).await.expect("open, migrating"));
    let pool = sqlx::PgPool::connect(&url).await.expect("open");
    let rows: Vec<(String, f64)> = sqlx::query_as(COSTS_AFTER_0037)
        .fetch_all(&pool)
        .await
        .expect("read");
    costs_carried(&rows);
}
