//! The SQLite backend: the embedded default, one process. Isolation is the
//! typed scope: every company-scoped statement binds `scope.company()`.
//! Writes take `BEGIN IMMEDIATE` so concurrent writers queue on the lock
//! instead of failing to upgrade a read lock.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kira_core::CompanyId;
use kira_core::audit::{AuditEntry, AuditRecord};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection, SqlitePool, Transaction};

mod agents;
mod checkpoint;
mod json_row;
mod knowledge;
mod memory;
pub(crate) mod work;

use crate::{Backend, Result, Store, StoreError};

pub struct SqliteStore {
    /// Connections for reads.
    pool: SqlitePool,
    /// The one connection every write transaction runs on, so its page
    /// cache stays valid from one write to the next: a write on whichever
    /// pooled connection came up first found its cache stale (the last
    /// write was another connection's) and read its pages back from the
    /// file, which cost the queue a third of its time. The same pool as
    /// `pool` for an in-memory database.
    writer_pool: SqlitePool,
    /// Writers queue here rather than in SQLite's busy handler, which
    /// sleeps between retries: one process owns an SQLite database.
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Checkpoints a file database's WAL in the background.
    _checkpointer: Option<checkpoint::Checkpointer>,
}

/// A write transaction holding the process's writer turn until it ends.
/// The writer connection's page cache (SQLite's `cache_size`, negative:
/// KiB): the queue's, tasks' and ledger's hot pages stay in it.
const WRITER_CACHE_KIB: &str = "-65536";

pub(crate) struct Tx {
    tx: Transaction<'static, sqlx::Sqlite>,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl Tx {
    pub(crate) async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn rollback(self) -> Result<()> {
        self.tx.rollback().await?;
        Ok(())
    }
}

impl std::ops::Deref for Tx {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }
}

impl SqliteStore {
    /// Opens (creating if missing) and migrates the database at `url`
    /// (`sqlite://path/to/kira.db`, or `sqlite::memory:`).
    pub async fn open(url: &str) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        // An in-memory database exists per connection: keep exactly one.
        let memory = url.contains(":memory:");
        let max = if memory { 1 } else { 8 };
        let opts = if memory {
            opts
        } else {
            opts.pragma("wal_autocheckpoint", checkpoint::BACKSTOP_PAGES.to_string())
        };
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            // An embedded database does not drop connections: a ping before
            // every statement would only double its round trips.
            .test_before_acquire(false)
            .connect_with(opts.clone())
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        let writer_pool = if memory {
            pool.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .test_before_acquire(false)
                .connect_with(opts.clone().pragma("cache_size", WRITER_CACHE_KIB))
                .await?
        };
        let checkpointer = if memory {
            None
        } else {
            Some(checkpoint::Checkpointer::start(&opts, checkpoint::EVERY).await?)
        };
        Ok(Self {
            pool,
            writer_pool,
            writer: std::sync::Arc::new(tokio::sync::Mutex::new(())),
            _checkpointer: checkpointer,
        })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes every connection (the readers' and the writer's), waiting
    /// for each to finish, so the file is free for another process.
    pub async fn close(&self) {
        self.pool.close().await;
        self.writer_pool.close().await;
    }

    pub(crate) async fn write(&self) -> Result<Tx> {
        let turn = self.writer.clone().lock_owned().await;
        Ok(Tx {
            tx: self.writer_pool.begin_with("BEGIN IMMEDIATE").await?,
            _turn: turn,
        })
    }
}

pub(crate) fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

pub(crate) fn parse_ts(s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("timestamp {s:?}: {e}")))
}

pub(crate) fn parse_opt_ts(s: Option<String>) -> Result<Option<DateTime<Utc>>> {
    s.as_deref().map(parse_ts).transpose()
}

pub(crate) fn company_id(s: &str) -> Result<CompanyId> {
    CompanyId::parse(s).map_err(|e| StoreError::Corrupt(format!("company id {s:?}: {e}")))
}

pub(crate) fn json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("json {s:?}: {e}")))
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Appends `record` at the end of the chain inside `tx`. Callers holding a
/// `BEGIN IMMEDIATE` transaction hold the database's write lock, which is
/// what keeps the chain one line.
pub(crate) async fn append(tx: &mut SqliteConnection, record: AuditRecord) -> Result<AuditEntry> {
    append_many(tx, vec![record])
        .await?
        .pop()
        .ok_or_else(|| StoreError::Corrupt("an append wrote no entry".into()))
}

/// Appends `records` in order: one read of the head, then one command
/// that inserts them and moves the head.
pub(crate) async fn append_many(
    tx: &mut SqliteConnection,
    records: Vec<AuditRecord>,
) -> Result<Vec<AuditEntry>> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let head = audit_head(tx).await?;
    let mut script = Script::default();
    let entries = push_audits(&mut script, head, records)?;
    script.run(tx).await?;
    Ok(entries)
}

/// The audit chain's head: (seq, hash) of its last entry.
pub(crate) async fn audit_head(tx: &mut SqliteConnection) -> Result<(i64, String)> {
    let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_one(&mut *tx)
        .await?;
    Ok((head.try_get("seq")?, head.try_get("hash")?))
}

/// Chains `records` after `head` and adds to `script` the statements that
/// insert them and move the head (which must still be `head` when the
/// script runs: its caller holds the writer turn since reading it).
pub(crate) fn push_audits(
    script: &mut Script,
    head: (i64, String),
    records: Vec<AuditRecord>,
) -> Result<Vec<AuditEntry>> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let (mut seq, mut hash) = head;
    let (old_seq, old_hash) = (seq, hash.clone());
    let mut entries = Vec::with_capacity(records.len());
    for r in records {
        let e = r.chain(seq, &hash);
        seq = e.seq;
        hash.clone_from(&e.hash);
        entries.push(e);
    }
    let rows: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| {
            serde_json::json!([
                e.seq,
                ts(e.at),
                e.request_id,
                e.actor,
                e.company_id.as_ref().map(CompanyId::as_str),
                e.action,
                e.target,
                e.outcome.as_str(),
                e.detail,
                e.prev_hash,
                e.hash,
            ])
        })
        .collect();
    script.push(
        "INSERT INTO audit_log (seq, at, request_id, actor, company_id, action, target, outcome, \
         detail, prev_hash, hash) \
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, \
           value ->> 6, value ->> 7, value ->> 8, value ->> 9, value ->> 10 \
         FROM jsonb_each(?) ORDER BY key;",
        [to_json(&rows)?],
        Some((entries.len() as u64, "audit entries were not all written")),
    );
    script.push(
        "UPDATE audit_head SET seq = CAST(? AS INTEGER), hash = ? \
         WHERE id = 1 AND seq = CAST(? AS INTEGER) AND hash = ?;",
        [seq.to_string(), hash, old_seq.to_string(), old_hash],
        Some((1, "the audit chain moved while it was appended to")),
    );
    Ok(entries)
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn watch_tasks(
        &self,
        _wake: std::sync::Arc<tokio::sync::Notify>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        None
    }

    async fn job_lock(&self, _job: i64) -> Result<Option<crate::JobLock>> {
        Ok(Some(crate::JobLock::uncontended()))
    }
}

/// Statements sent to the connection's thread as one command: through
/// sqlx every statement is a round trip between threads, which costs more
/// than SQLite's work for a small write. Each statement is constant SQL
/// ending in `;`, its values bound in order (all text here); after the
/// script runs, each statement's changed rows are checked against what it
/// expected, and a mismatch is a conflict (the caller's transaction then
/// rolls back, so nothing of it stays).
#[derive(Default)]
pub(crate) struct Script {
    sql: String,
    binds: Vec<String>,
    /// Per statement: the rows it must change, and what to say otherwise.
    expect: Vec<Option<(u64, &'static str)>>,
}

impl Script {
    /// Adds `sql` (one statement) with its values; `expect` the rows it
    /// must change.
    pub(crate) fn push(
        &mut self,
        sql: &str,
        binds: impl IntoIterator<Item = String>,
        expect: Option<(u64, &'static str)>,
    ) {
        debug_assert!(sql.trim_end().ends_with(';') && sql.matches(';').count() == 1);
        self.sql.push_str(sql);
        self.sql.push('\n');
        self.binds.extend(binds);
        self.expect.push(expect);
    }

    /// Runs every statement in `tx`; the rows a statement returns are
    /// handed back per statement, in order.
    pub(crate) async fn run(self, tx: &mut SqliteConnection) -> Result<Vec<Vec<SqliteRow>>> {
        use futures_util::TryStreamExt;
        if self.expect.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = sqlx::query(sqlx::AssertSqlSafe(self.sql));
        for b in self.binds {
            q = q.bind(b);
        }
        let mut rows: Vec<Vec<SqliteRow>> = vec![Vec::new()];
        let mut changed = Vec::with_capacity(self.expect.len());
        // sqlx 0.9 deprecates several statements in one prepared query
        // (launchbadge/sqlx#3108) but keeps them within 0.9; should a later
        // version drop them, this is the one place that sends them, and
        // running each statement alone keeps every caller correct.
        #[allow(deprecated)]
        let mut stream = q.fetch_many(&mut *tx);
        while let Some(step) = stream.try_next().await? {
            match step {
                sqlx::Either::Left(done) => {
                    changed.push(done.rows_affected());
                    rows.push(Vec::new());
                }
                sqlx::Either::Right(row) => {
                    if let Some(last) = rows.last_mut() {
                        last.push(row);
                    }
                }
            }
        }
        rows.pop();
        if changed.len() != self.expect.len() {
            return Err(StoreError::Corrupt(format!(
                "a script of {} statements reported {}",
                self.expect.len(),
                changed.len()
            )));
        }
        for (n, want) in changed.iter().zip(&self.expect) {
            if let Some((want, what)) = want
                && n != want
            {
                return Err(StoreError::Conflict(format!(
                    "{what}: {n} rows where {want} were expected; nothing was recorded"
                )));
            }
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> SqliteStore {
        let s = SqliteStore::open("sqlite::memory:").await.expect("open");
        sqlx::query("CREATE TABLE script_t (v TEXT NOT NULL)")
            .execute(s.pool())
            .await
            .expect("table");
        s
    }

    async fn values(s: &SqliteStore) -> Vec<String> {
        sqlx::query_scalar("SELECT v FROM script_t ORDER BY v")
            .fetch_all(s.pool())
            .await
            .expect("read")
    }

    #[tokio::test]
    async fn a_script_hands_back_each_statements_rows_in_order() {
        let s = store().await;
        let mut tx = s.write().await.expect("tx");
        let mut script = Script::default();
        script.push(
            "INSERT INTO script_t (v) VALUES (?), (?) RETURNING v;",
            ["a".to_owned(), "b".to_owned()],
            Some((2, "two rows")),
        );
        script.push(
            "UPDATE script_t SET v = ? WHERE v = ?;",
            ["c".to_owned(), "b".to_owned()],
            Some((1, "one row")),
        );
        script.push("SELECT v FROM script_t ORDER BY v;", [], None);
        let rows = script.run(&mut tx).await.expect("run");
        tx.commit().await.expect("commit");
        let text = |rs: &[SqliteRow]| -> Vec<String> {
            rs.iter().map(|r| r.try_get("v").expect("v")).collect()
        };
        assert_eq!(rows.len(), 3, "one entry per statement");
        assert_eq!(text(&rows[0]), ["a", "b"]);
        assert!(rows[1].is_empty());
        assert_eq!(text(&rows[2]), ["a", "c"]);
        assert_eq!(values(&s).await, ["a", "c"]);
    }

    #[tokio::test]
    async fn a_count_that_is_off_is_a_conflict_and_nothing_stays() {
        let s = store().await;
        let mut tx = s.write().await.expect("tx");
        let mut script = Script::default();
        script.push(
            "INSERT INTO script_t (v) VALUES (?);",
            ["a".to_owned()],
            None,
        );
        script.push(
            "UPDATE script_t SET v = ? WHERE v = ?;",
            ["c".to_owned(), "missing".to_owned()],
            Some((1, "the row to change")),
        );
        match script.run(&mut tx).await {
            Err(StoreError::Conflict(m)) => assert!(m.starts_with("the row to change"), "{m}"),
            other => panic!("expected a conflict, got {:?}", other.map(|r| r.len())),
        }
        drop(tx);
        assert!(values(&s).await.is_empty(), "the transaction rolled back");
        assert!(
            Script::default()
                .run(&mut s.pool().acquire().await.expect("conn"))
                .await
                .expect("empty")
                .is_empty()
        );
    }
}
