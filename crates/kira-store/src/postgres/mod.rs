//! The PostgreSQL backend: many processes, one database, and row-level
//! security as a second wall behind the typed scopes. The server works as
//! [`APP_ROLE`], which owns nothing and cannot bypass the policies of
//! `migrations/postgres`; each company-scoped transaction names its company
//! with `set_config(.., true)` (transaction-local, so a pooled connection
//! never carries it into the next transaction) and every statement binds the
//! company again. The audit chain is kept one line by locking `audit_head`,
//! always as the last step of a transaction so locks are taken in one order.
//!
//! Tasks and budgets live in `work`; [`PgStore::listen_tasks`] and
//! [`PgStore::try_job_lock`] are what many nodes sharing the database need
//! beyond the traits.

use async_trait::async_trait;
use kira_core::CompanyId;
use kira_core::audit::{AuditEntry, AuditRecord};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor, PgConnection, PgPool, Row, Transaction};

mod agents;
mod knowledge;
mod memory;
pub(crate) mod work;

use crate::{Backend, Result, Store, StoreError};

/// The role the server works as: no login, no BYPASSRLS, owns no table.
/// The migration creates it; an app login given to [`PgStore::open`] must be
/// a member of it.
pub const APP_ROLE: &str = "kira_app";

/// The channel notified with a task id when the task becomes runnable
/// (submitted, queued again for a retry or after an emergency grant) or is
/// cancelled. See [`PgStore::listen_tasks`].
pub const TASKS_CHANNEL: &str = "kira_tasks";

pub struct PgStore {
    pool: PgPool,
    /// The scheduler's own connections (queue snapshots, batch claims and
    /// ends, heartbeats, the reaper): a burst of submissions, which queue on
    /// their company's row, holds every request connection, and must not
    /// stop the tasks already stored from being claimed and finished.
    queue: PgPool,
    set_based: SetBasedCounts,
}

/// Connections per process for requests; with [`QUEUE_CONNECTIONS`], what
/// each `kira serve` may hold of the server's `max_connections` (100 by
/// default: several processes fit).
const REQUEST_CONNECTIONS: u32 = 10;
/// Connections per process for the scheduler: a claim and a group of run
/// ends at once, plus heartbeats and the reaper.
const QUEUE_CONNECTIONS: u32 = 4;

/// How much work went through the set-based batch paths (`claim_batch`,
/// `finish_batch`) rather than one task at a time: tests assert on it, so
/// a batch that silently falls back to the loop is caught.
#[derive(Debug, Default)]
struct SetBasedCounts {
    claim_batches: std::sync::atomic::AtomicU64,
    claimed: std::sync::atomic::AtomicU64,
    finish_batches: std::sync::atomic::AtomicU64,
    finished: std::sync::atomic::AtomicU64,
}

/// A reading of [`PgStore::set_based`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetBased {
    /// Set-based claim transactions that took at least one task.
    pub claim_batches: u64,
    /// Tasks claimed by them.
    pub claimed: u64,
    /// Set-based finish transactions that recorded at least one end.
    pub finish_batches: u64,
    /// Run ends recorded by them.
    pub finished: u64,
}

type Tx = Transaction<'static, sqlx::Postgres>;

impl PgStore {
    /// Migrates the database as the owner (`owner_url`), then opens the
    /// working pool: with `app_url` when given, else with `owner_url`
    /// switched to [`APP_ROLE`] on every connection.
    pub async fn open(owner_url: &str, app_url: Option<&str>) -> Result<Self> {
        let owner = PgPoolOptions::new()
            .max_connections(1)
            .connect(owner_url)
            .await?;
        // sqlx takes an advisory lock around the run, so servers starting
        // together migrate once.
        let migrated = sqlx::migrate!("migrations/postgres").run(&owner).await;
        owner.close().await;
        migrated?;

        let options = |max: u32| -> PgPoolOptions {
            let o = PgPoolOptions::new().max_connections(max);
            if app_url.is_some() {
                return o;
            }
            o.after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute("SET ROLE kira_app").await?;
                    Ok(())
                })
            })
        };
        let url = app_url.unwrap_or(owner_url);
        let pool = options(REQUEST_CONNECTIONS).connect(url).await?;
        let queue = options(QUEUE_CONNECTIONS).connect(url).await?;
        Ok(Self {
            pool,
            queue,
            set_based: SetBasedCounts::default(),
        })
    }

    /// What this store has done set-based since it was opened.
    pub fn set_based(&self) -> SetBased {
        let c = &self.set_based;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        SetBased {
            claim_batches: get(&c.claim_batches),
            claimed: get(&c.claimed),
            finish_batches: get(&c.finish_batches),
            finished: get(&c.finished),
        }
    }

    /// The working pool (tests inspect it: its connections act as the app role).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A listener on [`TASKS_CHANNEL`], on a connection of its own: each
    /// notification's payload is a task id. Notifications are sent on commit
    /// and are lost while the listener reconnects, so a scheduler still
    /// polls now and then; this only saves it from waiting for the poll.
    pub async fn listen_tasks(&self) -> Result<sqlx::postgres::PgListener> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen(TASKS_CHANNEL).await?;
        Ok(listener)
    }

    /// Takes the cluster-wide lock for periodic job `job` (the reaper, the
    /// allocation refresh) if no node holds it: `Some` connection holding
    /// it, else `None`.
    ///
    /// The lock is a session-level advisory lock, so it lives as long as the
    /// connection's session. The returned connection is marked to close when
    /// dropped instead of going back to the pool, and closing the session
    /// releases the lock: hold the connection while the job runs and drop it
    /// to let another node take a turn. A node that dies releases it the same
    /// way, when the server sees its connection close.
    pub async fn try_job_lock(
        &self,
        job: i64,
    ) -> Result<Option<sqlx::pool::PoolConnection<sqlx::Postgres>>> {
        let mut conn = self.pool.acquire().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(job)
            .fetch_one(&mut *conn)
            .await?;
        if !locked {
            return Ok(None);
        }
        conn.close_on_drop();
        Ok(Some(conn))
    }

    /// A transaction that sees and writes only `company`'s rows.
    async fn scoped(&self, company: &CompanyId) -> Result<Tx> {
        let mut tx = self.pool.begin().await?;
        set_company(&mut tx, company.as_str()).await?;
        Ok(tx)
    }

    /// A transaction that may read every company's rows: the admin path.
    async fn admin_read(&self) -> Result<Tx> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT set_config('app.admin_read', 'on', true)")
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }
}

/// Names the company the row-level policies admit, until the transaction ends.
pub(super) async fn set_company(tx: &mut PgConnection, company: &str) -> Result<()> {
    sqlx::query("SELECT set_config('app.current_company_id', $1, true)")
        .bind(company)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

fn company_id(s: &str) -> Result<CompanyId> {
    CompanyId::parse(s).map_err(|e| StoreError::Corrupt(format!("company id {s:?}: {e}")))
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(d) => d.code().map(|c| c.into_owned()),
        _ => None,
    }
}

const UNIQUE_VIOLATION: &str = "23505";
const FOREIGN_KEY_VIOLATION: &str = "23503";

/// Appends `record` at the end of the chain inside `tx`; the caller's last
/// step. The lock on the head row keeps the chain one line across
/// transactions and processes until `tx` ends.
pub(crate) async fn append(tx: &mut PgConnection, record: AuditRecord) -> Result<AuditEntry> {
    // The insert policy checks the record's company, which on the admin path
    // need not be the one the transaction worked on. An entry with no
    // company passes `system_insert` whatever the setting.
    set_company(tx, record.company_id.as_ref().map_or("", CompanyId::as_str)).await?;
    let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE")
        .fetch_one(&mut *tx)
        .await?;
    let entry = record.chain(head.try_get("seq")?, head.try_get::<&str, _>("hash")?);
    // No RETURNING: the new row may be one the select policies hide.
    sqlx::query(
        "INSERT INTO audit_log (seq, at, request_id, actor, company_id, action, target, outcome, detail, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(entry.seq)
    .bind(entry.at)
    .bind(&entry.request_id)
    .bind(&entry.actor)
    .bind(entry.company_id.as_ref().map(CompanyId::as_str))
    .bind(&entry.action)
    .bind(&entry.target)
    .bind(entry.outcome.as_str())
    .bind(&entry.detail)
    .bind(&entry.prev_hash)
    .bind(&entry.hash)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
        .bind(entry.seq)
        .bind(&entry.hash)
        .execute(&mut *tx)
        .await?;
    Ok(entry)
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn watch_tasks(
        &self,
        wake: std::sync::Arc<tokio::sync::Notify>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let pool = self.pool.clone();
        Some(tokio::spawn(async move {
            // Reconnects after a lost connection; a wake-up missed meanwhile is
            // covered by the scheduler's poll interval.
            loop {
                let listener = async {
                    let mut l = sqlx::postgres::PgListener::connect_with(&pool).await?;
                    l.listen(TASKS_CHANNEL).await?;
                    Ok::<_, sqlx::Error>(l)
                };
                match listener.await {
                    Ok(mut l) => loop {
                        match l.recv().await {
                            Ok(_) => wake.notify_one(),
                            Err(e) => {
                                tracing::warn!(error = %e, "task notifications interrupted");
                                break;
                            }
                        }
                    },
                    Err(e) => tracing::warn!(error = %e, "cannot listen for task notifications"),
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }))
    }

    async fn job_lock(&self, job: i64) -> Result<Option<crate::JobLock>> {
        Ok(self.try_job_lock(job).await?.map(|mut conn| {
            crate::JobLock::with_release(async move {
                // Unlocked on its own session before that closes: the
                // job can be taken again as soon as this returns. Should
                // the unlock fail, the session's close gives it back.
                let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(job)
                    .execute(&mut *conn)
                    .await;
                if let Err(e) = unlocked {
                    tracing::warn!(job, error = %e, "could not unlock a job; its session's close will");
                }
            })
        }))
    }
}
