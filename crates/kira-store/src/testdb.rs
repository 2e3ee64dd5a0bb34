//! Fresh, empty databases for tests, in this crate and the crates above it.
//! PostgreSQL tests never skip: a missing server fails them with how to
//! start one.

use std::path::Path;

use sqlx::{Connection, Executor, PgConnection};

/// The cluster tests create their databases in, unless `KIRA_TEST_PG_URL`
/// names another.
pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Creates an empty database `kira_t_<uuid>` in the test cluster and
/// returns its URL, with the same user (a superuser, as the owner URL of
/// [`crate::postgres::PgStore::open`]).
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
    // A uuid's simple form is hex: safe to put in the statement.
    let name = format!("kira_t_{}", uuid::Uuid::now_v7().simple());
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .unwrap_or_else(|e| panic!("cannot create test database {name} at {base}: {e}"));
    // Closing is a courtesy; the database exists either way.
    let _ = conn.close().await;
    with_database(&base, &name)
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
    use super::with_database;

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
        assert_eq!(with_database("postgres://u@h?a=b", "x"), "postgres://u@h/x?a=b");
    }
}
