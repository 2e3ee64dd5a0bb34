//! kira's storage: one trait per concern and two implementations, SQLite
//! (embedded, the default) and PostgreSQL (row-level security, many
//! processes). Both pass the conformance suite in `tests/it/conformance.rs`.
//!
//! Architecture invariant: every method that touches one company's rows
//! takes a [`CompanyScope`] and binds its company in every statement; every
//! cross-company read takes an [`AdminScope`] and an [`AuditRecord`], which
//! the store appends in the same transaction.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kira_core::audit::{AuditEntry, AuditRecord, ChainReport};
use kira_core::auth::{AdminScope, ApiKey, CompanyScope, StoredKey};
use kira_core::company::{Company, CompanyPatch, CompanyProfile};
use kira_core::ids::KeyId;
use kira_core::{CompanyId, ValidationError};

pub mod agents;
pub mod alerts;
pub mod conflicts;
pub mod counts;
pub mod dashboard;
mod flow;
pub mod knowledge;
pub mod ledger;
pub mod memory;
pub mod metrics;
pub mod nodes;
pub mod postgres;
pub mod sessions;
pub mod sharing;
mod sql;
pub mod sqlite;
#[cfg(any(test, feature = "test-support"))]
pub mod testdb;
pub mod tools;
pub mod work;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is malformed: {0}")]
    Corrupt(String),
    #[error("configuration: {0}")]
    Config(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Rows removed by a forced company delete, per table.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeletedRows {
    pub tables: Vec<(String, u64)>,
}

impl DeletedRows {
    pub fn total(&self) -> u64 {
        self.tables.iter().map(|(_, n)| n).sum()
    }
}

/// A page of the audit log: entries after `after_seq`, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditPage {
    pub after_seq: i64,
    pub limit: u32,
}

#[async_trait]
pub trait CompanyStore: Send + Sync {
    /// Conflict when the id is taken (archived companies included).
    async fn create_company(
        &self,
        scope: &CompanyScope,
        profile: &CompanyProfile,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Company>;

    async fn get_company(&self, scope: &CompanyScope) -> Result<Company>;

    /// Every company (admin path; `audit` records the read).
    async fn list_companies(
        &self,
        admin: &AdminScope,
        include_archived: bool,
        audit: AuditRecord,
    ) -> Result<Vec<Company>>;

    /// Every active company, read without an audit entry of its own: for
    /// the engine's sharing decisions, which audit the listing with the
    /// reads it leads to (in one batch, see `append_audits`).
    async fn company_directory(&self, admin: &AdminScope) -> Result<Vec<Company>>;

    /// A number every change to any company (made, changed, archived,
    /// deleted) increases: a kept [`CompanyStore::company_directory`] is
    /// current while this is unchanged.
    async fn directory_version(&self) -> Result<i64>;

    /// Applies the patch, validated by the core rule. Conflict if archived.
    async fn update_company(
        &self,
        scope: &CompanyScope,
        patch: CompanyPatch,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Company>;

    /// Conflict if already archived.
    async fn archive_company(
        &self,
        scope: &CompanyScope,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Company>;

    /// Removes every row of the company in one transaction, its keys
    /// included; the audit log keeps its entries.
    async fn delete_company(&self, scope: &CompanyScope, audit: AuditRecord)
    -> Result<DeletedRows>;
}

#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Stores `key` only if no key exists at all. True when it was stored.
    async fn bootstrap_admin_key(&self, key: &StoredKey, audit: AuditRecord) -> Result<bool>;

    /// NotFound when the key names a company that does not exist.
    async fn insert_key(
        &self,
        admin: &AdminScope,
        key: &StoredKey,
        audit: AuditRecord,
    ) -> Result<ApiKey>;

    /// The authentication lookup: deliberately unscoped, since no company
    /// is known before the caller is.
    async fn find_key(&self, id: &KeyId) -> Result<Option<StoredKey>>;

    async fn list_keys(&self, admin: &AdminScope, audit: AuditRecord) -> Result<Vec<ApiKey>>;

    /// Conflict if already revoked.
    async fn revoke_key(
        &self,
        admin: &AdminScope,
        id: &KeyId,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<ApiKey>;
}

#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends one entry at the end of the chain; safe under concurrency
    /// and across processes sharing the database.
    async fn append_audit(&self, record: AuditRecord) -> Result<AuditEntry>;

    /// Appends `records` in order, in one transaction: all or none.
    async fn append_audits(&self, records: Vec<AuditRecord>) -> Result<Vec<AuditEntry>>;

    /// One company's entries.
    async fn list_company_audit(
        &self,
        scope: &CompanyScope,
        page: AuditPage,
    ) -> Result<Vec<AuditEntry>>;

    /// Every entry, or one company's (admin path).
    async fn list_all_audit(
        &self,
        admin: &AdminScope,
        company: Option<&CompanyId>,
        page: AuditPage,
        audit: AuditRecord,
    ) -> Result<Vec<AuditEntry>>;

    /// Walks the whole chain (admin path).
    async fn verify_audit(&self, admin: &AdminScope, audit: AuditRecord) -> Result<ChainReport>;

    /// The scheduled check (admin path; the alerts' verification job):
    /// walks the entries appended since the last checkpoint (the last
    /// (seq, hash) it verified, kept in the database) up to the head, and
    /// the next `sweep` entries before the checkpoint from where the last
    /// run's slice ended (round and round, so an old entry altered later
    /// is found in turn); when both verify, the checkpoint moves to the
    /// head. Its cost is what was appended plus `sweep`, not the chain.
    async fn verify_audit_scheduled(
        &self,
        admin: &AdminScope,
        sweep: i64,
        audit: AuditRecord,
    ) -> Result<ChainReport>;
}

#[async_trait]
pub trait Store:
    CompanyStore
    + KeyStore
    + AuditStore
    + work::TaskStore
    + work::BudgetStore
    + memory::MemoryStore
    + sharing::SharingStore
    + knowledge::KnowledgeStore
    + conflicts::ConflictStore
    + agents::AgentStore
    + metrics::MetricsStore
    + alerts::AlertStore
    + tools::ToolStore
    + sessions::SessionStore
    + dashboard::DashboardStore
    + nodes::NodeStore
    + counts::CountStore
{
    fn backend(&self) -> Backend;

    /// The database answers.
    async fn ping(&self) -> Result<()>;

    /// Rings `wake` whenever another process queues work (PostgreSQL
    /// LISTEN/NOTIFY), from a task this spawns. None where one process is
    /// all there is (SQLite): that process wakes itself.
    fn watch_tasks(
        &self,
        wake: std::sync::Arc<tokio::sync::Notify>,
    ) -> Option<tokio::task::JoinHandle<()>>;

    /// The lock of a periodic job, if no other node holds it; the job runs
    /// while the returned guard lives. SQLite: always granted.
    async fn job_lock(&self, job: i64) -> Result<Option<JobLock>>;
}

/// Holds a periodic job's lock until released, or dropped.
///
/// [`JobLock::release`] gives it back before returning, so the job can be
/// taken again at once, here or on another node. Dropped instead (an
/// error, a panic), it is given back when its holder's session ends,
/// which on PostgreSQL comes a moment after the drop.
pub struct JobLock {
    /// Gives the lock back; owns what holds it.
    release: Option<futures_util::future::BoxFuture<'static, ()>>,
}

impl JobLock {
    /// A lock nothing else can take (SQLite: one process).
    pub fn uncontended() -> Self {
        Self { release: None }
    }

    /// A lock that `release` gives back; dropping `release` unawaited
    /// must give it back too, later.
    pub fn with_release(release: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        Self {
            release: Some(Box::pin(release)),
        }
    }

    /// Gives the lock back now.
    pub async fn release(mut self) {
        if let Some(release) = self.release.take() {
            release.await;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Where the store lives, as configured.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `sqlite://PATH` or `postgres://...`: the owner, who runs migrations.
    pub database_url: String,
    /// PostgreSQL only: the URL the server uses for its work. Its login must
    /// be a member of [`postgres::APP_ROLE`] (`GRANT kira_app TO <login>`),
    /// not a superuser, and own no table, or the policies do not bind it.
    /// When unset, the server connects with `database_url` and runs
    /// `SET ROLE kira_app` on each connection: that binds every query kira
    /// makes, but a connection could `RESET ROLE`, so a separate login is
    /// the stronger setup for production.
    pub app_database_url: Option<String>,
}

/// Opens the store the URL names, migrating it first.
pub async fn open(cfg: &StoreConfig) -> Result<std::sync::Arc<dyn Store>> {
    let url = cfg.database_url.as_str();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(
            postgres::PgStore::open(url, cfg.app_database_url.as_deref()).await?,
        ))
    } else if url.starts_with("sqlite:") {
        if cfg.app_database_url.is_some() {
            return Err(StoreError::Config(
                "app_database_url applies to PostgreSQL only".into(),
            ));
        }
        Ok(std::sync::Arc::new(sqlite::SqliteStore::open(url).await?))
    } else {
        Err(StoreError::Config(
            "database_url must start with sqlite:, postgres:// or postgresql://".into(),
        ))
    }
}
