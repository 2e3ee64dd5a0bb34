//! The SQLite backend: the embedded default, one process. Isolation is the
//! typed scope: every company-scoped statement binds `scope.company()`.
//! Writes take `BEGIN IMMEDIATE` so concurrent writers queue on the lock
//! instead of failing to upgrade a read lock.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use kira_core::CompanyId;
use kira_core::audit::{AuditEntry, AuditRecord, ChainReport, ChainVerifier};
use kira_core::auth::{AdminScope, ApiKey, CompanyScope, StoredKey};
use kira_core::company::{Company, CompanyPatch, CompanyProfile};
use kira_core::ids::KeyId;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection, SqlitePool, Transaction};

mod agents;
mod checkpoint;
mod knowledge;
mod memory;
mod sharing;
pub(crate) mod work;

pub(crate) use crate::flow::companies::{
    AUDIT_COLUMNS, COMPANY_COLUMNS, audit_from_row, company_from_row, load_company,
};
use crate::flow::keys::{KEY_COLUMNS, insert_key_row, key_from_row, load_key};
use crate::{
    AuditPage, AuditStore, Backend, CompanyStore, DeletedRows, KeyStore, Result, Store, StoreError,
};

pub struct SqliteStore {
    pool: SqlitePool,
    /// Writers queue here rather than in SQLite's busy handler, which
    /// sleeps between retries: one process owns an SQLite database.
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Checkpoints a file database's WAL in the background.
    _checkpointer: Option<checkpoint::Checkpointer>,
}

/// A write transaction holding the process's writer turn until it ends.
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
        let checkpointer = if memory {
            None
        } else {
            Some(checkpoint::Checkpointer::start(&opts, checkpoint::EVERY).await?)
        };
        Ok(Self {
            pool,
            writer: std::sync::Arc::new(tokio::sync::Mutex::new(())),
            _checkpointer: checkpointer,
        })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub(crate) async fn write(&self) -> Result<Tx> {
        let turn = self.writer.clone().lock_owned().await;
        Ok(Tx {
            tx: self.pool.begin_with("BEGIN IMMEDIATE").await?,
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
         FROM json_each(?) ORDER BY key;",
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

async fn write_profile(
    tx: &mut SqliteConnection,
    id: &CompanyId,
    p: &CompanyProfile,
    updated_at: DateTime<Utc>,
    archived_at: Option<DateTime<Utc>>,
) -> Result<()> {
    sqlx::query(
        "UPDATE companies SET name = ?, industry = ?, jurisdiction = ?, revenue_usd = ?, \
         complexity_score = ?, activity_score = ?, priority_multiplier = ?, sla_response_seconds = ?, \
         contacts = ?, sharing_consent = ?, updated_at = ?, archived_at = ? WHERE company_id = ?",
    )
    .bind(&p.name)
    .bind(&p.industry)
    .bind(&p.jurisdiction)
    .bind(p.revenue_usd)
    .bind(p.complexity_score)
    .bind(p.activity_score)
    .bind(p.priority_multiplier)
    .bind(p.sla_response_seconds)
    .bind(to_json(&p.contacts)?)
    .bind(to_json(&p.sharing_consent)?)
    .bind(ts(updated_at))
    .bind(archived_at.map(ts))
    .bind(id.as_str())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[async_trait]
impl CompanyStore for SqliteStore {
    async fn create_company(
        &self,
        scope: &CompanyScope,
        profile: &CompanyProfile,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Company> {
        let now = now.trunc_subsecs(6);
        let id = scope.company();
        let mut tx = self.write().await?;
        let taken = sqlx::query("SELECT 1 FROM companies WHERE company_id = ?")
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if taken.is_some() {
            return Err(StoreError::Conflict(format!(
                "company '{id}' already exists"
            )));
        }
        let sql = format!(
            "INSERT INTO companies ({COMPANY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)"
        );
        let p = profile;
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.as_str())
            .bind(&p.name)
            .bind(&p.industry)
            .bind(&p.jurisdiction)
            .bind(p.revenue_usd)
            .bind(p.complexity_score)
            .bind(p.activity_score)
            .bind(p.priority_multiplier)
            .bind(p.sla_response_seconds)
            .bind(to_json(&p.contacts)?)
            .bind(to_json(&p.sharing_consent)?)
            .bind(ts(now))
            .bind(ts(now))
            .execute(&mut *tx)
            .await?;
        let company = load_company(&mut tx, id, false).await?;
        append(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(company)
    }

    async fn get_company(&self, scope: &CompanyScope) -> Result<Company> {
        let mut conn = self.pool.acquire().await?;
        load_company(&mut conn, scope.company(), false).await
    }

    async fn list_companies(
        &self,
        _admin: &AdminScope,
        include_archived: bool,
        audit: AuditRecord,
    ) -> Result<Vec<Company>> {
        let sql = format!(
            "SELECT {COMPANY_COLUMNS} FROM companies WHERE (? OR archived_at IS NULL) ORDER BY company_id"
        );
        let mut tx = self.write().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(include_archived)
            .fetch_all(&mut *tx)
            .await?;
        let companies = rows
            .iter()
            .map(company_from_row)
            .collect::<Result<Vec<_>>>()?;
        append(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(companies)
    }

    async fn company_directory(&self, _admin: &AdminScope) -> Result<Vec<Company>> {
        let sql = format!(
            "SELECT {COMPANY_COLUMNS} FROM companies WHERE archived_at IS NULL ORDER BY company_id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(company_from_row).collect()
    }

    async fn directory_version(&self) -> Result<i64> {
        let v: i64 = sqlx::query_scalar("SELECT version FROM directory_version WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(v)
    }

    async fn update_company(
        &self,
        scope: &CompanyScope,
        patch: CompanyPatch,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Company> {
        let now = now.trunc_subsecs(6);
        let id = scope.company();
        let mut tx = self.write().await?;
        let current = load_company(&mut tx, id, false).await?;
        if current.is_archived() {
            return Err(StoreError::Conflict(format!("company '{id}' is archived")));
        }
        let profile = current.profile.apply(patch)?;
        write_profile(&mut tx, id, &profile, now, None).await?;
        let company = load_company(&mut tx, id, false).await?;
        append(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(company)
    }

    async fn archive_company(
        &self,
        scope: &CompanyScope,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Company> {
        let now = now.trunc_subsecs(6);
        let id = scope.company();
        let mut tx = self.write().await?;
        let current = load_company(&mut tx, id, false).await?;
        if current.is_archived() {
            return Err(StoreError::Conflict(format!(
                "company '{id}' is already archived"
            )));
        }
        write_profile(&mut tx, id, &current.profile, now, Some(now)).await?;
        let company = load_company(&mut tx, id, false).await?;
        append(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(company)
    }

    async fn delete_company(
        &self,
        scope: &CompanyScope,
        audit: AuditRecord,
    ) -> Result<DeletedRows> {
        let mut tx = self.write().await?;
        load_company(&mut tx, scope.company(), false).await?;
        let mut deleted = DeletedRows::default();
        // Before memories, whose deletion would take the items with it.
        sharing::delete_company_sharing(&mut tx, scope.company(), &mut deleted).await?;
        memory::delete_company_memory(&mut tx, scope.company(), &mut deleted).await?;
        agents::delete_company_agents(&mut tx, scope.company(), &mut deleted).await?;
        work::delete_company_work(&mut tx, scope.company(), audit.at, &mut deleted).await?;
        crate::flow::company::delete_rows(
            &mut tx,
            scope.company(),
            crate::flow::company::COMPANY_ROWS,
            &mut deleted,
        )
        .await?;
        append(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(deleted)
    }
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn bootstrap_admin_key(&self, key: &StoredKey, audit: AuditRecord) -> Result<bool> {
        let mut tx = self.write().await?;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys")
            .fetch_one(&mut *tx)
            .await?;
        if n > 0 {
            return Ok(false);
        }
        insert_key_row(&mut tx, key).await?;
        append(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn insert_key(
        &self,
        _admin: &AdminScope,
        key: &StoredKey,
        audit: AuditRecord,
    ) -> Result<ApiKey> {
        let mut tx = self.write().await?;
        if let Some(c) = &key.key.company_id {
            load_company(&mut tx, c, false).await?;
        }
        insert_key_row(&mut tx, key).await?;
        append(&mut tx, audit).await?;
        tx.commit().await?;
        let mut k = key.key.clone();
        k.created_at = k.created_at.trunc_subsecs(6);
        Ok(k)
    }

    async fn find_key(&self, id: &KeyId) -> Result<Option<StoredKey>> {
        let mut conn = self.pool.acquire().await?;
        load_key(&mut conn, id, false).await
    }

    async fn list_keys(&self, _admin: &AdminScope, audit: AuditRecord) -> Result<Vec<ApiKey>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, key_id");
        let mut tx = self.write().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut *tx)
            .await?;
        let keys = rows
            .iter()
            .map(|r| key_from_row(r).map(|k| k.key))
            .collect::<Result<Vec<_>>>()?;
        append(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(keys)
    }

    async fn revoke_key(
        &self,
        _admin: &AdminScope,
        id: &KeyId,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<ApiKey> {
        let now = now.trunc_subsecs(6);
        let mut tx = self.write().await?;
        let mut key = load_key(&mut tx, id, false)
            .await?
            .ok_or(StoreError::NotFound)?
            .key;
        if key.revoked_at.is_some() {
            return Err(StoreError::Conflict(format!(
                "key '{id}' is already revoked"
            )));
        }
        sqlx::query("UPDATE api_keys SET revoked_at = ? WHERE key_id = ?")
            .bind(ts(now))
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        append(&mut tx, audit).await?;
        tx.commit().await?;
        key.revoked_at = Some(now);
        Ok(key)
    }
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn append_audit(&self, record: AuditRecord) -> Result<AuditEntry> {
        let mut tx = self.write().await?;
        let e = append(&mut tx, record).await?;
        tx.commit().await?;
        Ok(e)
    }

    async fn append_audits(&self, records: Vec<AuditRecord>) -> Result<Vec<AuditEntry>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.write().await?;
        let out = append_many(&mut tx, records).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn list_company_audit(
        &self,
        scope: &CompanyScope,
        page: AuditPage,
    ) -> Result<Vec<AuditEntry>> {
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE company_id = ? AND seq > ? ORDER BY seq LIMIT ?"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(scope.company().as_str())
            .bind(page.after_seq)
            .bind(i64::from(page.limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn list_all_audit(
        &self,
        _admin: &AdminScope,
        company: Option<&CompanyId>,
        page: AuditPage,
        audit: AuditRecord,
    ) -> Result<Vec<AuditEntry>> {
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE (? IS NULL OR company_id = ?) AND seq > ? \
             ORDER BY seq LIMIT ?"
        );
        let c = company.map(CompanyId::as_str);
        let mut tx = self.write().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(c)
            .bind(c)
            .bind(page.after_seq)
            .bind(i64::from(page.limit))
            .fetch_all(&mut *tx)
            .await?;
        let entries = rows
            .iter()
            .map(audit_from_row)
            .collect::<Result<Vec<_>>>()?;
        append(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(entries)
    }

    async fn verify_audit(&self, _admin: &AdminScope, audit: AuditRecord) -> Result<ChainReport> {
        let sql =
            format!("SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq > ? ORDER BY seq LIMIT 1000");
        // One write transaction: the chain cannot grow while it is walked.
        let mut tx = self.write().await?;
        let mut v = ChainVerifier::default();
        let mut after = 0i64;
        loop {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(after)
                .fetch_all(&mut *tx)
                .await?;
            let Some(last) = rows.last() else { break };
            after = last.try_get("seq")?;
            for r in &rows {
                match audit_from_row(r) {
                    Ok(e) => v.push(&e),
                    Err(e) => v.malformed(r.try_get("seq")?, &e.to_string()),
                }
            }
        }
        let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let report = v.finish(Some((head.try_get("seq")?, head.try_get("hash")?)));
        append(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(report)
    }
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
        Ok(Some(crate::JobLock::new(())))
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
