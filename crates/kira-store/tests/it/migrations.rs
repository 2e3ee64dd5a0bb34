//! Migrations that carry data forward, checked from a database left at the
//! version before them: 0028 adds up the all-time series rows an earlier
//! kira rolled up into `metric_totals`, so `/metrics` keeps its counters
//! across the upgrade.

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
fn before_0028(mut m: Migrator) -> Migrator {
    let kept: Vec<_> = m
        .migrations
        .iter()
        .filter(|x| x.version < 28)
        .cloned()
        .collect();
    m.migrations = Cow::Owned(kept);
    m
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
