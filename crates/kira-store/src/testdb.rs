//! Fresh, empty databases for tests, in this crate and the crates above it.
//! PostgreSQL tests never skip: a missing server fails them with how to
//! start one.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::{Connection, Executor, PgConnection};

/// The cluster tests create their databases in, unless `KIRA_TEST_PG_URL`
/// names another.
pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

const PREFIX: &str = "kira_t_";

/// Test databases older than this are dropped by the next test run.
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// Held (in the maintenance database) by the one process sweeping: "kirasweep".
const SWEEP_LOCK: i64 = 0x6b69_7261_7377_6570;

/// Creates an empty database `kira_t_<uuid v7>` in the test cluster and
/// returns its URL, with the same user (a superuser, as the owner URL of
/// [`crate::postgres::PgStore::open`]). The first call in a process also
/// drops test databases left by runs over an hour ago.
///
/// # Panics
/// When the cluster cannot be reached or refuses to create the database.
pub async fn fresh_postgres() -> String {
    let base = std::env::var("KIRA_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned());
    let mut conn = PgConnection::connect(&base).await.unwrap_or_else(|e| {
        panic!(
            "cannot reach the test PostgreSQL at {base}: {e}\n\
             Start it with `pg_ctlcluster --skip-systemctl-redirect 15 main start`, \
             or set KIRA_TEST_PG_URL to a cluster where this user may create databases."
        )
    });
    static SWEPT: AtomicBool = AtomicBool::new(false);
    if !SWEPT.swap(true, Ordering::Relaxed) {
        drop_stale(&mut conn).await;
    }
    // A uuid's simple form is hex: safe to put in the statement.
    let name = format!("{PREFIX}{}", uuid::Uuid::now_v7().simple());
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .unwrap_or_else(|e| panic!("cannot create test database {name} at {base}: {e}"));
    // Closing is a courtesy; the database exists either way.
    let _ = conn.close().await;
    with_database(&base, &name)
}

/// Tests leave their databases behind (their pools may still be open when
/// they end), so each run clears what earlier runs left. The uuid v7 in the
/// name says when a database was made. Best effort: one still in use, or
/// dropped by a concurrent run, is left alone.
async fn drop_stale(conn: &mut PgConnection) {
    // Each drop waits for a checkpoint: one process sweeps, the rest go on.
    let sweeper: Result<bool, _> = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(SWEEP_LOCK)
        .fetch_one(&mut *conn)
        .await;
    if !matches!(sweeper, Ok(true)) {
        return;
    }
    let Ok(names) = sqlx::query_scalar::<_, String>(
        "SELECT datname::text FROM pg_database WHERE starts_with(datname, 'kira_t_')",
    )
    .fetch_all(&mut *conn)
    .await
    else {
        return;
    };
    // The databases' own age is wall-clock time; nothing here is a rule under test.
    #[allow(clippy::disallowed_methods)]
    let now = SystemTime::now();
    for name in names {
        let Some(made) = created_at(&name) else {
            continue;
        };
        if now.duration_since(made).is_ok_and(|age| age > STALE_AFTER) {
            let _ = conn
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name}"
                )))
                .await;
        }
    }
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(SWEEP_LOCK)
        .execute(&mut *conn)
        .await;
}

/// When a test database was made, if `name` is one of ours: the prefix and a
/// uuid v7 in simple form, so nothing else can reach the DROP statement.
fn created_at(name: &str) -> Option<SystemTime> {
    let hex = name.strip_prefix(PREFIX)?;
    if hex.len() != 32
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let (secs, nanos) = uuid::Uuid::parse_str(hex).ok()?.get_timestamp()?.to_unix();
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// The URL of a new SQLite database file in `dir` (created on open).
pub async fn fresh_sqlite(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("kira.db").display())
}

/// `url` with its database name replaced by `name`; user, host, port and
/// query parameters kept.
fn with_database(url: &str, name: &str) -> String {
    let (url, query) = match url.split_once('?') {
        Some((u, q)) => (u, Some(q)),
        None => (url, None),
    };
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[authority_start..]
        .find('/')
        .map_or(url.len(), |i| authority_start + i);
    let mut out = format!("{}/{name}", &url[..authority_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_names_have_an_age() {
        let id = uuid::Uuid::now_v7();
        let made = created_at(&format!("kira_t_{}", id.simple())).expect("ours");
        #[allow(clippy::disallowed_methods)] // compared with a uuid v7 made from the wall clock
        let age = SystemTime::now().duration_since(made).expect("in the past");
        assert!(age < Duration::from_secs(60), "{age:?}");
        for other in [
            "postgres",
            "kira_t_",
            "kira_t_x; DROP TABLE y",
            &format!("kira_t_{}", id.hyphenated()),
            &format!("kira_t_{}", id.simple()).to_uppercase(),
            &format!("kira_x_{}", id.simple()),
        ] {
            assert_eq!(created_at(other), None, "{other}");
        }
    }

    #[test]
    fn only_the_database_name_changes() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "kira_t_1"),
            "postgres://postgres@127.0.0.1:5432/kira_t_1"
        );
        assert_eq!(
            with_database("postgresql://u:p@h/db?sslmode=disable", "x"),
            "postgresql://u:p@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h:1", "x"), "postgres://u@h:1/x");
        assert_eq!(
            with_database("postgres://u@h?a=b", "x"),
            "postgres://u@h/x?a=b"
        );
    }
}
