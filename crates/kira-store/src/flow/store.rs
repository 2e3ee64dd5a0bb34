//! The task and budget stores, written once: [`TaskStore`] and
//! [`BudgetStore`] for every backend that says how it opens its
//! transactions ([`Db`]). What differs for real stays with the backend:
//! the queue snapshot's statements, the set-based fast paths
//! ([`FastPaths`]), how a run's records are written, and the allocation
//! refresh ([`Conn::refresh_allocations`]).
//!
//! On PostgreSQL the statements below take their row locks in the order
//! `postgres/work.rs` documents (company, queue row, request and
//! reservations, allocations, pools, task row, audit head); SQLite's one
//! writer runs each writing transaction alone, so the locks are left out
//! there.

use std::ops::DerefMut;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use kira_core::CompanyId;
use kira_core::audit::AuditRecord;
use kira_core::auth::{AdminScope, CompanyScope};
use kira_core::budget::{BudgetConfig, Pool, may_request_emergency, period_of};
use kira_core::task::{Priority, Task, TaskEvent, TaskId, TaskStatus, check_transition};

use crate::flow::agents::StepSql;
use crate::flow::batch::FastPaths;
use crate::flow::budget::*;
use crate::flow::knowledge::KnowledgeSql;
use crate::flow::memory::MemorySql;
use crate::flow::tasks::{TASK_COLUMNS, event, load_task, set_status, task_from_row};
use crate::sql::{Columns, Conn, Dialect, Lock, q};
use crate::work::*;
use crate::{Result, StoreError};

/// The connection of `D`'s dialect, which each of its transactions is.
pub(crate) type RawConn<D> = <<D as Db>::Sql as sqlx::Database>::Connection;

/// How a backend opens the transactions the shared stores run in.
#[async_trait]
pub(crate) trait Db: FastPaths + Send + Sync {
    /// The backend's dialect: statements built from filters, and those it
    /// writes its own way (memory's batch insert, search and vectors;
    /// steps' insert; the knowledge search's match).
    type Sql: Dialect + MemorySql + StepSql + KnowledgeSql;
    /// A writing transaction.
    type Tx: Conn + Send + DerefMut<Target = RawConn<Self>>;
    /// A read outside any writing transaction.
    type Read: Conn + Send + DerefMut<Target = RawConn<Self>>;
    /// A connection outside any transaction, for one statement on a table
    /// no company owns.
    type Plain: Conn + Send + DerefMut<Target = RawConn<Self>>;
    /// A write of one statement on a table no company owns (the embedding
    /// queue): SQLite's writer turn; on PostgreSQL a pooled connection
    /// outside any transaction.
    type PlainWrite: Conn + Send;

    /// A writing transaction over `company`'s rows: SQLite's writer turn;
    /// on PostgreSQL the company named for row-level security.
    async fn write_for(&self, company: &CompanyId) -> Result<Self::Tx>;

    /// A writing transaction of the system's, naming no company (periods,
    /// allocations, decisions that find their company as they go).
    async fn write_system(&self) -> Result<Self::Tx>;

    /// A writing transaction on the scheduler's own connections.
    async fn write_queue(&self) -> Result<Self::Tx>;

    /// One consistent view across statements, of `company` or (None) of
    /// every company: the budget views and the ledger check.
    async fn snapshot(&self, company: Option<&CompanyId>) -> Result<Self::Tx>;

    async fn commit(tx: Self::Tx) -> Result<()>;

    /// Ends a transaction that must change nothing, at once.
    async fn rollback(tx: Self::Tx) -> Result<()>;

    /// A read of `company`'s rows.
    async fn read_for(&self, company: &CompanyId) -> Result<Self::Read>;

    /// A read across companies: the admin's, or the scheduler's (`queue`).
    async fn read_all(&self, queue: bool) -> Result<Self::Read>;

    async fn end_read(r: Self::Read) -> Result<()>;

    async fn plain(&self) -> Result<Self::Plain>;

    /// See [`Db::PlainWrite`].
    async fn write_plain(&self) -> Result<Self::PlainWrite>;

    /// Ends a [`Db::PlainWrite`]: SQLite commits.
    async fn end_plain_write(c: Self::PlainWrite) -> Result<()>;

    /// True when `e` is a unique constraint's violation.
    fn unique_violation(_e: &StoreError) -> bool {
        false
    }

    /// True when a submit lost a race for its idempotency key and a second
    /// try will find the task the winner stored.
    fn lost_submit_race(_e: &StoreError) -> bool {
        false
    }

    /// See [`TaskStore::queue_snapshot`].
    async fn read_queue(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        capacity: Option<&Capacity>,
    ) -> Result<QueueSnapshot>;

    /// See [`TaskStore::record_run`]; the records are checked.
    async fn write_run(
        &self,
        company: &CompanyId,
        records: &RunRecords,
        now: DateTime<Utc>,
    ) -> Result<()>;
}

/// The PostgreSQL channel that wakes schedulers; see `PgStore::listen_tasks`.
const TASKS_CHANNEL: &str = crate::postgres::TASKS_CHANNEL;

/// Commits `tx` when `done` is Ok; otherwise rolls it back at once, not
/// when the pool gets round to the dropped transaction (until then a lock
/// it took would stand in a claim's or a cancel's way), and returns the
/// error.
pub(crate) async fn commit_or_roll_back<D: Db + ?Sized, T>(
    tx: D::Tx,
    done: Result<T>,
) -> Result<T> {
    match done {
        Ok(v) => {
            D::commit(tx).await?;
            Ok(v)
        }
        Err(e) => {
            // The error to report is the one that made us roll back; a
            // rollback that fails closes the connection, which ends the
            // transaction all the same.
            let _ = D::rollback(tx).await;
            Err(e)
        }
    }
}

/// Wakes schedulers listening for task changes (PostgreSQL, on commit).
pub(crate) async fn notify(c: &mut dyn Conn, id: &TaskId) -> Result<()> {
    c.exec(
        q("SELECT pg_notify($1, $2)")
            .arg(TASKS_CHANNEL)
            .arg(id.as_str())
            .pg_only(),
    )
    .await?;
    Ok(())
}

/// Holds the company row against a forced delete until commit (step 1 of
/// PostgreSQL's lock order); false when the company is gone. SQLite's
/// writer turn already keeps a delete out.
pub(crate) async fn lock_company(c: &mut dyn Conn, company: &CompanyId) -> Result<bool> {
    if !c.is_pg() {
        return Ok(true);
    }
    let s = q("SELECT 1 FROM companies WHERE company_id = $1")
        .arg(company.as_str())
        .locked(Lock::KeyShare);
    Ok(c.opt(s).await?.is_some())
}

/// Lets PostgreSQL's row-level policies admit every company's rows for
/// reading, or stops them, until the transaction ends.
pub(crate) async fn admin_read(c: &mut dyn Conn, on: bool) -> Result<()> {
    let s = q("SELECT set_config('app.admin_read', $1, true)").arg(if on { "on" } else { "off" });
    c.exec(s.pg_only()).await?;
    Ok(())
}

/// Names `company` for PostgreSQL's row-level policies.
async fn name_company(c: &mut dyn Conn, company: &CompanyId) -> Result<()> {
    let s = q("SELECT set_config('app.current_company_id', $1, true)").arg(company.as_str());
    c.exec(s.pg_only()).await?;
    Ok(())
}

fn not_running(worker: &str, id: &TaskId) -> StoreError {
    StoreError::Conflict(format!("worker {worker} no longer holds the lease on {id}"))
}

fn positive(amount: i64) -> Result<()> {
    if amount <= 0 {
        return Err(kira_core::ValidationError::new("amount", "must be positive").into());
    }
    Ok(())
}

/// The period containing `now`, made with its pools and allocations if new.
/// Of transactions racing at a new period, the one whose insert lands makes
/// the rest; the others wait on its row and then find it. `company` is the
/// one the transaction named, named again after a refresh.
pub(crate) async fn ensure_period(
    c: &mut dyn Conn,
    cfg: &BudgetConfig,
    now: DateTime<Utc>,
    company: Option<&CompanyId>,
) -> Result<String> {
    let p = period_of(now);
    // The common case reads only, so claims do not queue on this row.
    let exists = q("SELECT 1 FROM budget_periods WHERE period_id = $1").arg(&p.id);
    if c.opt(exists).await?.is_some() {
        return Ok(p.id);
    }
    let made = c
        .exec(
            q("INSERT INTO budget_periods (period_id, starts_at, ends_at, total_tokens, created_at) \
               VALUES ($1, $2, $3, $4, $5) ON CONFLICT (period_id) DO NOTHING")
            .arg(&p.id)
            .arg(p.start)
            .arg(p.end)
            .arg(cfg.total_tokens)
            .arg(now),
        )
        .await?;
    if made == 1 {
        let caps = cfg.capacities();
        for (pool, capacity) in [
            (Pool::Base, caps.base),
            (Pool::Burst, caps.burst),
            (Pool::Emergency, caps.emergency),
        ] {
            let s = q("INSERT INTO budget_pools (period_id, pool, capacity) VALUES ($1, $2, $3)");
            c.exec(s.arg(&p.id).arg(pool.as_str()).arg(capacity))
                .await?;
            let (what, detail) = ("rollover", "new period");
            ledger(
                c,
                now,
                &p.id,
                None,
                None,
                None,
                Some(pool),
                what,
                capacity,
                detail,
            )
            .await?;
        }
        c.refresh_allocations(&p.id, now, company).await?;
    }
    Ok(p.id)
}

/// Reserves from the first pool `priority` may use that has room, in the
/// period containing `now` (made if new). The transaction named `company`.
async fn reserve_tx(
    c: &mut dyn Conn,
    company: &CompanyId,
    task: &TaskId,
    priority: Priority,
    amount: i64,
    cfg: &BudgetConfig,
    now: DateTime<Utc>,
) -> Result<Option<Reservation>> {
    let period = ensure_period(c, cfg, now, Some(company)).await?;
    reserve_in(c, &period, company, task, priority, amount, cfg, now).await
}

async fn submit_once<D: Db + ?Sized>(
    d: &D,
    company: &CompanyId,
    new: &NewTask,
    now: DateTime<Utc>,
    audit: AuditRecord,
) -> Result<Submitted> {
    let mut tx = d.write_for(company).await?;
    let c: &mut dyn Conn = &mut tx;
    // One submit per company at a time: the next sequence number and the
    // idempotency check below see every submit committed before.
    let me = q("SELECT 1 FROM companies WHERE company_id = $1").arg(company.as_str());
    if c.opt(me.locked(Lock::NoKeyUpdate)).await?.is_none() {
        return Err(StoreError::NotFound);
    }
    if let Some(idem) = &new.idempotency {
        let seen = q(
            "SELECT task_id, request_hash FROM tasks WHERE company_id = $1 AND idempotency_key = $2",
        );
        if let Some(row) = c.opt(seen.arg(company.as_str()).arg(&idem.key)).await? {
            if row.opt_text("request_hash")?.as_deref() != Some(idem.request_hash.as_str()) {
                return Err(StoreError::Conflict(
                    "this Idempotency-Key was used with a different request".into(),
                ));
            }
            let id = TaskId::parse(&row.text("task_id")?)
                .map_err(|e| StoreError::Corrupt(format!("task id: {e}")))?;
            let task = load_task(c, company, &id, false).await?;
            return Ok(Submitted {
                task,
                created: false,
            });
        }
    }
    if let Some(limit) = new.open_limit {
        let open = q("SELECT COUNT(*) FROM task_queue WHERE company_id = $1 AND priority = $2");
        let open = c.int(open.arg(company.as_str()).arg(new.priority.as_str()));
        check_open_limit(new, open.await?.unwrap_or(0), limit)?;
    }
    let seq = q("SELECT COALESCE(MAX(seq), 0) + 1 FROM tasks WHERE company_id = $1");
    let seq = c.int(seq.arg(company.as_str())).await?.unwrap_or(1);
    let id = TaskId::new(company, &new.label, seq);
    let deadline = new.deadline.map(|d| d.trunc_subsecs(6));
    let idem = new.idempotency.as_ref();
    c.exec(
        q("INSERT INTO tasks (task_id, company_id, seq, task_type, specialist, agent, priority, task, \
           parameters, company_context, deadline, idempotency_key, request_hash, status, status_reason, \
           max_attempts, estimated_tokens, created_at, updated_at) \
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'queued', 'submitted', \
           $14, $15, $16, $16)")
        .arg(id.as_str())
        .arg(company.as_str())
        .arg(seq)
        .arg(&new.task_type)
        .arg(new.specialist.as_deref())
        .arg(&new.agent)
        .arg(new.priority.as_str())
        .arg(&new.task)
        .arg(&new.parameters)
        .arg(&new.company_context)
        .arg(deadline)
        .arg(idem.map(|i| i.key.as_str()))
        .arg(idem.map(|i| i.request_hash.as_str()))
        .arg(i64::from(new.max_attempts))
        .arg(new.estimated_tokens)
        .arg(now),
    )
    .await?;
    c.exec(
        q("INSERT INTO task_queue (task_id, company_id, agent, status, priority, multiplier, deadline, \
           waiting_since, not_before, estimated_tokens, attempts) \
           VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $7, $8, 0)")
        .arg(id.as_str())
        .arg(company.as_str())
        .arg(&new.agent)
        .arg(new.priority.as_str())
        .arg(new.multiplier)
        .arg(deadline)
        .arg(now)
        .arg(new.estimated_tokens),
    )
    .await?;
    event(c, company, &id, None, TaskStatus::Queued, "submitted", now).await?;
    notify(c, &id).await?;
    // Read before the audit append, which names the record's company.
    let task = load_task(c, company, &id, false).await?;
    let target = format!("task:{id}");
    c.audit(AuditRecord { target, ..audit }).await?;
    D::commit(tx).await?;
    Ok(Submitted {
        task,
        created: true,
    })
}

/// No pool had room: the task waits for budget, or for a human to grant
/// emergency tokens if its level may ask. The caller commits.
async fn wait_for_budget(
    c: &mut dyn Conn,
    task: Task,
    cfg: &BudgetConfig,
    now: DateTime<Utc>,
) -> Result<ClaimOutcome> {
    let (company, id) = (&task.company_id, &task.task_id);
    // The claim counted an attempt that did not happen.
    c.exec(
        q("UPDATE task_queue SET lease_owner = NULL, lease_expires_at = NULL, attempts = attempts - 1 \
           WHERE task_id = $1")
        .arg(id.as_str()),
    )
    .await?;
    if !may_request_emergency(task.priority, cfg) {
        let reason = format!(
            "no pool a {} task may use has {} tokens free",
            task.priority.as_str(),
            task.estimated_tokens
        );
        let s = q(
            "UPDATE task_queue SET status = 'waiting_budget', not_before = $1 WHERE task_id = $2",
        );
        c.exec(s.arg(now + WAITING_BUDGET_RECHECK).arg(id.as_str()))
            .await?;
        if task.status != TaskStatus::WaitingBudget {
            set_status(c, &task, TaskStatus::WaitingBudget, &reason, now).await?;
        }
        return Ok(ClaimOutcome::WaitingBudget { reason });
    }
    let period = ensure_period(c, cfg, now, Some(company)).await?;
    let request_id = new_reservation_id();
    let reason = format!(
        "base and burst cannot hold {} tokens for this {} task",
        task.estimated_tokens,
        task.priority.as_str()
    );
    static INSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "INSERT INTO emergency_requests ({REQUEST_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, NULL, NULL, NULL)"
        )
    });
    c.exec(
        q(INSERT.as_str())
            .arg(&request_id)
            .arg(company.as_str())
            .arg(id.as_str())
            .arg(&period)
            .arg(task.estimated_tokens)
            .arg(&reason)
            .arg(now),
    )
    .await?;
    let s = q("UPDATE task_queue SET status = 'awaiting_approval' WHERE task_id = $1");
    c.exec(s.arg(id.as_str())).await?;
    if task.status != TaskStatus::AwaitingApproval {
        let why = format!("emergency request {request_id}: {reason}");
        set_status(c, &task, TaskStatus::AwaitingApproval, &why, now).await?;
    }
    Ok(ClaimOutcome::AwaitingApproval { request_id })
}

/// Moves a claimed task to running and reads it back, with its event.
async fn start(c: &mut dyn Conn, task: &Task, reason: &str, now: DateTime<Utc>) -> Result<Task> {
    check_transition(task.status, TaskStatus::Running)
        .map_err(|e| StoreError::Conflict(e.to_string()))?;
    let (company, id) = (task.company_id.as_str(), task.task_id.as_str());
    if c.is_pg() {
        // One round trip moves it, records the event and reads it back:
        // the pool row locked by the reservation is held that much shorter.
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "WITH t AS (UPDATE tasks SET status = 'running', status_reason = $1, updated_at = $2, \
                   attempts = attempts + 1, started_at = COALESCE(started_at, $2) \
                   WHERE company_id = $3 AND task_id = $4 RETURNING {TASK_COLUMNS}), \
                 e AS (INSERT INTO task_events (company_id, task_id, at, from_status, to_status, reason) \
                   SELECT company_id, task_id, $2, $5, 'running', $1 FROM t) \
                 SELECT * FROM t"
            )
        });
        let s = q(SQL.as_str()).arg(reason).arg(now).arg(company).arg(id);
        return task_from_row(&c.one(s.arg(task.status.as_str())).await?);
    }
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "UPDATE tasks SET status = 'running', status_reason = $1, updated_at = $2, \
             attempts = attempts + 1, started_at = COALESCE(started_at, $2) \
             WHERE company_id = $3 AND task_id = $4 RETURNING {TASK_COLUMNS}"
        )
    });
    let row = c
        .one(q(SQL.as_str()).arg(reason).arg(now).arg(company).arg(id))
        .await?;
    let running = TaskStatus::Running;
    event(
        c,
        &task.company_id,
        &task.task_id,
        Some(task.status),
        running,
        reason,
        now,
    )
    .await?;
    task_from_row(&row)
}

/// The claim's transaction; `None` when the task is not to be had.
#[allow(clippy::too_many_arguments)]
async fn claim_tx(
    c: &mut dyn Conn,
    company: &CompanyId,
    id: &TaskId,
    worker: &str,
    lease_until: DateTime<Utc>,
    budget: &BudgetConfig,
    now: DateTime<Utc>,
) -> Result<Option<ClaimOutcome>> {
    if !lock_company(c, company).await? {
        return Ok(None);
    }
    // Of claimers racing for one task (PostgreSQL), the first to lock the
    // row wins; the others skip it at once rather than queue behind the
    // winner, and move on to their next candidate.
    if c.is_pg() {
        let free = q(
            "SELECT 1 FROM task_queue WHERE task_id = $1 AND company_id = $2 \
                      AND status IN ('queued', 'waiting_budget') AND not_before <= $3",
        )
        .arg(id.as_str())
        .arg(company.as_str())
        .arg(now);
        if c.opt(free.locked(Lock::UpdateSkipLocked)).await?.is_none() {
            return Ok(None);
        }
    }
    let n = c
        .exec(
            q("UPDATE task_queue SET status = 'running', lease_owner = $1, lease_expires_at = $2, \
               attempts = attempts + 1 WHERE task_id = $3 AND company_id = $4 \
               AND status IN ('queued', 'waiting_budget') AND not_before <= $5")
            .arg(worker)
            .arg(lease_until)
            .arg(id.as_str())
            .arg(company.as_str())
            .arg(now),
        )
        .await?;
    if n == 0 {
        return Ok(None);
    }
    let task = load_task(c, company, id, false).await?;
    // A grant approved by a human is already held for the task.
    let granted = held_reservations(c, company, id).await?.into_iter().next();
    let reservation = match granted {
        Some(r) => Some(r),
        None => {
            let (p, est) = (task.priority, task.estimated_tokens);
            reserve_tx(c, company, id, p, est, budget, now).await?
        }
    };
    let Some(reservation) = reservation else {
        return wait_for_budget(c, task, budget, now).await.map(Some);
    };
    let reason = format!(
        "claimed by {worker}; {} tokens reserved from {}",
        reservation.amount,
        reservation.pool.as_str()
    );
    let task = start(c, &task, &reason, now).await?;
    Ok(Some(ClaimOutcome::Claimed {
        task: Box::new(task),
        reservation,
    }))
}

/// The end's transaction (see [`TaskStore::finish`]).
async fn finish_tx(
    c: &mut dyn Conn,
    company: &CompanyId,
    id: &TaskId,
    worker: &str,
    f: Finish,
    now: DateTime<Utc>,
) -> Result<Task> {
    if !lock_company(c, company).await? {
        return Err(not_running(worker, id));
    }
    let ours = q(
        "SELECT 1 FROM task_queue WHERE task_id = $1 AND company_id = $2 \
                  AND lease_owner = $3 AND status = 'running'",
    )
    .arg(id.as_str())
    .arg(company.as_str())
    .arg(worker);
    if c.opt(ours.for_update()).await?.is_none() {
        return Err(not_running(worker, id));
    }
    let task = load_task(c, company, id, false).await?;
    check_transition(task.status, f.status).map_err(|e| StoreError::Conflict(e.to_string()))?;
    release_all(c, company, id, now, "run ended").await?;
    c.exec(
        q(
            "UPDATE tasks SET result = $1, confidence = $2, requires_human_review = $3, \
           last_error = COALESCE($4, last_error) WHERE company_id = $5 AND task_id = $6",
        )
        .arg(f.result.as_ref())
        .arg(f.confidence)
        .arg(f.requires_human_review)
        .arg(f.error.as_deref())
        .arg(company.as_str())
        .arg(id.as_str()),
    )
    .await?;
    let retry_at = f.retry_at.unwrap_or(now).trunc_subsecs(6);
    if f.status == TaskStatus::Queued {
        let s = q(
            "UPDATE task_queue SET status = 'queued', lease_owner = NULL, \
                   lease_expires_at = NULL, not_before = $1 WHERE task_id = $2",
        );
        c.exec(s.arg(retry_at).arg(id.as_str())).await?;
        notify(c, id).await?;
    } else if f.status == TaskStatus::WaitingBudget {
        // The run never reached the model: the claim's attempt is given back.
        let s = q(
            "UPDATE task_queue SET status = 'waiting_budget', lease_owner = NULL, \
                   lease_expires_at = NULL, not_before = $1, \
                   attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END WHERE task_id = $2",
        );
        c.exec(s.arg(retry_at).arg(id.as_str())).await?;
        let s = q(
            "UPDATE tasks SET attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END \
                   WHERE company_id = $1 AND task_id = $2",
        );
        c.exec(s.arg(company.as_str()).arg(id.as_str())).await?;
    } else {
        let s = q("DELETE FROM task_queue WHERE task_id = $1");
        c.exec(s.arg(id.as_str())).await?;
    }
    set_status(c, &task, f.status, &f.reason, now).await?;
    load_task(c, company, id, false).await
}

/// Puts back or fails one running task whose lease expired; false when it
/// was no longer expired (finished, or reaped by another) once locked.
async fn reap_tx(
    c: &mut dyn Conn,
    company: &CompanyId,
    id: &TaskId,
    owner: &str,
    now: DateTime<Utc>,
    backoff: TimeDelta,
) -> Result<bool> {
    if !lock_company(c, company).await? {
        return Ok(false);
    }
    let still = q(
        "SELECT 1 FROM task_queue WHERE task_id = $1 AND status = 'running' \
                   AND lease_expires_at < $2",
    )
    .arg(id.as_str())
    .arg(now);
    if c.opt(still.for_update()).await?.is_none() {
        return Ok(false);
    }
    let task = load_task(c, company, id, false).await?;
    release_all(c, company, id, now, "lease expired").await?;
    if task.attempts >= task.max_attempts {
        c.exec(q("DELETE FROM task_queue WHERE task_id = $1").arg(id.as_str()))
            .await?;
        let reason = format!(
            "the lease of worker {owner} expired on attempt {} of {}",
            task.attempts, task.max_attempts
        );
        let s = q("UPDATE tasks SET last_error = $1 WHERE company_id = $2 AND task_id = $3");
        c.exec(s.arg(&reason).arg(company.as_str()).arg(id.as_str()))
            .await?;
        set_status(c, &task, TaskStatus::Failed, &reason, now).await?;
    } else {
        let exp = u32::try_from(task.attempts.max(1) - 1).unwrap_or(0).min(16);
        let wait = backoff * 2_i32.pow(exp);
        let s = q(
            "UPDATE task_queue SET status = 'queued', lease_owner = NULL, \
                   lease_expires_at = NULL, not_before = $1 WHERE task_id = $2",
        );
        c.exec(s.arg((now + wait).trunc_subsecs(6)).arg(id.as_str()))
            .await?;
        let reason = format!(
            "the lease of worker {owner} expired; retry {} of {}",
            task.attempts + 1,
            task.max_attempts
        );
        set_status(c, &task, TaskStatus::Queued, &reason, now).await?;
        notify(c, id).await?;
    }
    Ok(true)
}

async fn cancel_tx(
    c: &mut dyn Conn,
    company: &CompanyId,
    id: &TaskId,
    now: DateTime<Utc>,
    audit: AuditRecord,
) -> Result<Task> {
    if !lock_company(c, company).await? {
        return Err(StoreError::NotFound);
    }
    let queued = q("SELECT 1 FROM task_queue WHERE task_id = $1 AND company_id = $2")
        .arg(id.as_str())
        .arg(company.as_str());
    let queued = c.opt(queued.for_update()).await?.is_some();
    // A task out of the queue (in review, or ended) has no queue row to
    // hold: hold its own.
    let task = load_task(c, company, id, !queued).await?;
    if task.status.is_final() {
        return Err(StoreError::Conflict(format!(
            "task {id} already ended: {}",
            task.status.as_str()
        )));
    }
    if task.status == TaskStatus::Running {
        let s = q("UPDATE task_queue SET cancel_requested = $1 WHERE task_id = $2");
        c.exec(s.arg(true).arg(id.as_str())).await?;
    } else {
        release_all(c, company, id, now, "task cancelled").await?;
        c.exec(
            q("UPDATE emergency_requests SET status = 'rejected', decided_at = $1, \
               decision = 'task cancelled' WHERE company_id = $2 AND task_id = $3 AND status = 'pending'")
            .arg(now)
            .arg(company.as_str())
            .arg(id.as_str()),
        )
        .await?;
        c.exec(q("DELETE FROM task_queue WHERE task_id = $1").arg(id.as_str()))
            .await?;
        set_status(c, &task, TaskStatus::Cancelled, "cancelled by request", now).await?;
    }
    notify(c, id).await?;
    // Read before the audit append, which names the record's company.
    let task = load_task(c, company, id, false).await?;
    c.audit(audit).await?;
    Ok(task)
}

async fn task_events_of(
    c: &mut dyn Conn,
    company: &CompanyId,
    id: &TaskId,
    after_event: i64,
) -> Result<Vec<TaskEvent>> {
    load_task(c, company, id, false).await?;
    let rows = c
        .all(
            q(
                "SELECT event_id, at, from_status, to_status, reason FROM task_events \
               WHERE company_id = $1 AND task_id = $2 AND event_id > $3 ORDER BY event_id",
            )
            .arg(company.as_str())
            .arg(id.as_str())
            .arg(after_event),
        )
        .await?;
    let status =
        |s: &str| TaskStatus::parse(s).map_err(|e| StoreError::Corrupt(format!("status: {e}")));
    rows.iter()
        .map(|r| {
            Ok(TaskEvent {
                event_id: r.int("event_id")?,
                task_id: id.clone(),
                at: r.time("at")?,
                from_status: r
                    .opt_text("from_status")?
                    .as_deref()
                    .map(status)
                    .transpose()?,
                to_status: status(&r.text("to_status")?)?,
                reason: r.text("reason")?,
            })
        })
        .collect()
}

async fn tasks_of(c: &mut dyn Conn, company: &CompanyId, f: &TaskFilter) -> Result<Vec<Task>> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE company_id = $1 \
             AND ($2 IS NULL OR status = $2) AND ($3 IS NULL OR priority = $3) \
             AND ($4 IS NULL OR task_type = $4) \
             AND ($5 IS NULL OR created_at >= $5) AND ($6 IS NULL OR created_at < $6) \
             AND ($7 IS NULL OR seq < $7) ORDER BY seq DESC LIMIT $8"
        )
    });
    let rows = c
        .all(
            q(SQL.as_str())
                .arg(company.as_str())
                .arg(f.status.map(TaskStatus::as_str))
                .arg(f.priority.map(Priority::as_str))
                .arg(f.task_type.as_deref())
                .arg(f.created_after.map(|t| t.trunc_subsecs(6)))
                .arg(f.created_before.map(|t| t.trunc_subsecs(6)))
                .arg(f.before_seq)
                .arg(i64::from(f.limit)),
        )
        .await?;
    rows.iter().map(task_from_row).collect()
}

#[async_trait]
impl<D: Db> TaskStore for D {
    async fn submit_task(
        &self,
        scope: &CompanyScope,
        new: &NewTask,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Submitted> {
        let now = now.trunc_subsecs(6);
        match submit_once(self, scope.company(), new, now, audit.clone()).await {
            // Another submit with the key committed between our check and
            // our insert (the company lock makes this all but impossible):
            // a second try finds its task.
            Err(e) if new.idempotency.is_some() && D::lost_submit_race(&e) => {
                submit_once(self, scope.company(), new, now, audit).await
            }
            r => r,
        }
    }

    async fn get_task(&self, scope: &CompanyScope, id: &TaskId) -> Result<Task> {
        let mut r = self.read_for(scope.company()).await?;
        let task = load_task(&mut r, scope.company(), id, false).await?;
        D::end_read(r).await?;
        Ok(task)
    }

    async fn list_tasks(&self, scope: &CompanyScope, f: &TaskFilter) -> Result<Vec<Task>> {
        let mut r = self.read_for(scope.company()).await?;
        let tasks = tasks_of(&mut r, scope.company(), f).await?;
        D::end_read(r).await?;
        Ok(tasks)
    }

    async fn task_events(
        &self,
        scope: &CompanyScope,
        id: &TaskId,
        after_event: i64,
    ) -> Result<Vec<TaskEvent>> {
        let mut r = self.read_for(scope.company()).await?;
        let events = task_events_of(&mut r, scope.company(), id, after_event).await?;
        D::end_read(r).await?;
        Ok(events)
    }

    async fn cancel_task(
        &self,
        scope: &CompanyScope,
        id: &TaskId,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Task> {
        let mut tx = self.write_for(scope.company()).await?;
        let now = now.trunc_subsecs(6);
        let task = cancel_tx(&mut tx, scope.company(), id, now, audit).await?;
        D::commit(tx).await?;
        Ok(task)
    }

    async fn queue_snapshot(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        capacity: Option<&Capacity>,
    ) -> Result<QueueSnapshot> {
        self.read_queue(now.trunc_subsecs(6), limit, capacity).await
    }

    async fn claim(
        &self,
        scope: &CompanyScope,
        id: &TaskId,
        worker: &str,
        lease_until: DateTime<Utc>,
        budget: &BudgetConfig,
        now: DateTime<Utc>,
    ) -> Result<ClaimOutcome> {
        let (now, lease_until) = (now.trunc_subsecs(6), lease_until.trunc_subsecs(6));
        let company = scope.company();
        let mut tx = self.write_for(company).await?;
        let claimed = claim_tx(&mut tx, company, id, worker, lease_until, budget, now).await?;
        match claimed {
            Some(outcome) => {
                D::commit(tx).await?;
                Ok(outcome)
            }
            None => {
                D::rollback(tx).await?;
                Ok(ClaimOutcome::Gone)
            }
        }
    }

    async fn claim_batch(
        &self,
        candidates: &[Candidate],
        admission: &mut dyn Admission,
        worker: &str,
        lease_until: DateTime<Utc>,
        budget: &BudgetConfig,
        now: DateTime<Utc>,
    ) -> Result<Vec<(TaskId, ClaimOutcome)>> {
        let (w, l) = (worker, lease_until);
        crate::flow::batch::claim_batch(self, candidates, admission, w, l, budget, now).await
    }

    async fn finish_batch(
        &self,
        worker: &str,
        completions: Vec<Completion>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Completed>> {
        crate::flow::batch::finish_batch(self, worker, completions, now).await
    }

    async fn raise_estimate(
        &self,
        scope: &CompanyScope,
        id: &TaskId,
        worker: &str,
        tokens: i64,
    ) -> Result<()> {
        let mut tx = self.write_for(scope.company()).await?;
        if !lock_company(&mut tx, scope.company()).await? {
            return Err(StoreError::NotFound);
        }
        crate::flow::tasks::raise_estimate(&mut tx, scope.company(), id, worker, tokens).await?;
        D::commit(tx).await
    }

    async fn heartbeat(
        &self,
        id: &TaskId,
        worker: &str,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Lease> {
        // The queue row carries no company content: no company to name.
        let mut tx = self.write_queue().await?;
        let c: &mut dyn Conn = &mut tx;
        let n = c
            .exec(
                q(
                    "UPDATE task_queue SET lease_expires_at = $1 WHERE task_id = $2 \
                   AND lease_owner = $3 AND status = 'running' AND lease_expires_at >= $4",
                )
                .arg(lease_until.trunc_subsecs(6))
                .arg(id.as_str())
                .arg(worker)
                .arg(now.trunc_subsecs(6)),
            )
            .await?;
        let s = q("SELECT cancel_requested FROM task_queue WHERE task_id = $1").arg(id.as_str());
        let cancel = match c.opt(s).await? {
            Some(r) => r.bool("cancel_requested")?,
            None => false,
        };
        D::commit(tx).await?;
        Ok(Lease {
            held: n == 1,
            cancel_requested: cancel,
        })
    }

    async fn record_run(
        &self,
        scope: &CompanyScope,
        records: &RunRecords,
        now: DateTime<Utc>,
    ) -> Result<()> {
        records.check(scope.company())?;
        self.write_run(scope.company(), records, now).await
    }

    async fn finish(
        &self,
        scope: &CompanyScope,
        id: &TaskId,
        worker: &str,
        f: Finish,
        now: DateTime<Utc>,
    ) -> Result<Task> {
        let mut tx = self.write_for(scope.company()).await?;
        let now = now.trunc_subsecs(6);
        let task = finish_tx(&mut tx, scope.company(), id, worker, f, now).await?;
        D::commit(tx).await?;
        Ok(task)
    }

    async fn reap_expired(&self, now: DateTime<Utc>, backoff: TimeDelta) -> Result<Vec<TaskId>> {
        let now = now.trunc_subsecs(6);
        let mut r = self.read_all(true).await?;
        let expired = r
            .all(
                q("SELECT task_id, company_id, lease_owner FROM task_queue \
                   WHERE lease_owner IS NOT NULL AND status = 'running' AND lease_expires_at < $1 \
                   ORDER BY task_id")
                .arg(now),
            )
            .await?;
        D::end_read(r).await?;
        let mut reaped = Vec::new();
        for row in expired {
            let id = TaskId::parse(&row.text("task_id")?)
                .map_err(|e| StoreError::Corrupt(format!("task id: {e}")))?;
            let company = CompanyId::parse(&row.text("company_id")?)
                .map_err(|e| StoreError::Corrupt(format!("company id: {e}")))?;
            let owner = row.opt_text("lease_owner")?.unwrap_or_default();
            let mut tx = self.write_for(&company).await?;
            if reap_tx(&mut tx, &company, &id, &owner, now, backoff).await? {
                D::commit(tx).await?;
                reaped.push(id);
            } else {
                D::rollback(tx).await?;
            }
        }
        Ok(reaped)
    }
}

async fn pools_of(c: &mut dyn Conn, period: &str) -> Result<Vec<PoolState>> {
    // The pools' totals are no company's content: a company's own view
    // reads them through the admin read (PostgreSQL), for this one
    // statement, then sets it back as it was.
    let was = q("SELECT current_setting('app.admin_read', true) AS was").pg_only();
    let was = match c.opt(was).await? {
        Some(r) => r.opt_text("was")?.as_deref() == Some("on"),
        None => false,
    };
    admin_read(c, true).await?;
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT pool, capacity, reserved, spent FROM ({POOL_BALANCES}) b \
             WHERE period_id = $1 ORDER BY pool"
        )
    });
    let rows = c.all(q(SQL.as_str()).arg(period)).await;
    admin_read(c, was).await?;
    rows?
        .iter()
        .map(|r| {
            let (capacity, reserved, spent) =
                (r.int("capacity")?, r.int("reserved")?, r.int("spent")?);
            let pool = r.text("pool")?;
            Ok(PoolState {
                pool: Pool::parse(&pool).map_err(|e| StoreError::Corrupt(format!("pool: {e}")))?,
                capacity,
                reserved,
                spent,
                overdraft: overdraft_of(capacity, reserved, spent),
            })
        })
        .collect()
}

/// The budget lines of the period, for one company or (None) all.
async fn budget_lines(
    c: &mut dyn Conn,
    period: &str,
    company: Option<&CompanyId>,
) -> Result<Vec<CompanyBudget>> {
    let rows = c
        .all(
            q(
                // Each line's sums over its own reservations of the period,
                // found by the company's index: a sum over the period's rows
                // of every company would read all reservations ever made.
                "SELECT a.company_id, a.factor, a.share, a.tokens, a.reserved, a.spent, \
                 (SELECT CAST(COALESCE(SUM(r.spent), 0) AS BIGINT) FROM reservations r \
                   WHERE r.company_id = a.company_id AND r.period_id = a.period_id \
                   AND r.state = 'settled') AS spent_all, \
                 (SELECT CAST(COALESCE(SUM(r.cost_usd), 0) AS DOUBLE PRECISION) FROM reservations r \
                   WHERE r.company_id = a.company_id AND r.period_id = a.period_id \
                   AND r.state = 'settled') AS cost \
               FROM budget_allocations a WHERE a.period_id = $1 \
               AND ($2 IS NULL OR a.company_id = $2) ORDER BY a.company_id",
            )
            .arg(period)
            .arg(company.map(CompanyId::as_str)),
        )
        .await?;
    rows.iter()
        .map(|r| {
            let (allocation, reserved, spent) =
                (r.int("tokens")?, r.int("reserved")?, r.int("spent")?);
            let company = r.text("company_id")?;
            Ok(CompanyBudget {
                company_id: CompanyId::parse(&company)
                    .map_err(|e| StoreError::Corrupt(format!("company id: {e}")))?,
                factor: r.real("factor")?,
                share: r.real("share")?,
                allocation,
                reserved,
                spent,
                overdraft: overdraft_of(allocation, reserved, spent),
                spent_all_pools: r.int("spent_all")?,
                cost_usd: r.real("cost")?,
            })
        })
        .collect()
}

async fn requests(
    c: &mut dyn Conn,
    company: Option<&CompanyId>,
    pending_only: bool,
) -> Result<Vec<EmergencyRequest>> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT {REQUEST_COLUMNS} FROM emergency_requests WHERE ($1 IS NULL OR company_id = $1) \
             AND (NOT $2 OR status = 'pending') ORDER BY requested_at, request_id"
        )
    });
    let s = q(SQL.as_str()).arg(company.map(CompanyId::as_str));
    let rows = c.all(s.arg(pending_only)).await?;
    rows.iter().map(request_from_row).collect()
}

/// The period's state as one snapshot sees it; the period exists.
async fn state_of(
    c: &mut dyn Conn,
    period: String,
    company: Option<&CompanyId>,
) -> Result<BudgetState> {
    let s = q("SELECT starts_at, ends_at, total_tokens FROM budget_periods WHERE period_id = $1");
    let row = c.one(s.arg(&period)).await?;
    Ok(BudgetState {
        starts_at: row.time("starts_at")?,
        ends_at: row.time("ends_at")?,
        total_tokens: row.int("total_tokens")?,
        pools: pools_of(c, &period).await?,
        companies: budget_lines(c, &period, company).await?,
        pending_requests: requests(c, company, true).await?,
        period_id: period,
    })
}

/// A decision on an emergency request (see [`BudgetStore::decide_emergency`]).
async fn decide_tx(
    c: &mut dyn Conn,
    admin: &AdminScope,
    request_id: &str,
    approve: bool,
    note: &str,
    now: DateTime<Utc>,
) -> Result<EmergencyRequest> {
    // Which company the request belongs to: an admin read. From there on
    // the transaction works as that company.
    admin_read(c, true).await?;
    let seen = load_request(c, request_id, false).await?;
    admin_read(c, false).await?;
    name_company(c, &seen.company_id).await?;
    if !lock_company(c, &seen.company_id).await? {
        return Err(StoreError::NotFound);
    }
    let queue = q("SELECT 1 FROM task_queue WHERE task_id = $1").arg(seen.task_id.as_str());
    c.exec(queue.for_update().pg_only()).await?;
    // Read again under the locks: a cancel or another decision may have
    // come first.
    let req = load_request(c, request_id, true).await?;
    let decider = admin.actor().to_string();
    decide_request(c, &req, approve, note, &decider, now).await?;
    if approve {
        notify(c, &req.task_id).await?;
    }
    load_request(c, request_id, false).await
}

#[async_trait]
impl<D: Db> BudgetStore for D {
    async fn ensure_period(&self, cfg: &BudgetConfig, now: DateTime<Utc>) -> Result<String> {
        // The common case reads only: the budget views (a scrape, a
        // dashboard) must not wait for SQLite's writer turn behind the queue.
        let id = period_of(now).id;
        let mut r = self.read_all(false).await?;
        let found = r
            .opt(q("SELECT 1 FROM budget_periods WHERE period_id = $1").arg(&id))
            .await;
        D::end_read(r).await?;
        if found?.is_some() {
            return Ok(id);
        }
        let mut tx = self.write_system().await?;
        let p = ensure_period(&mut tx, cfg, now.trunc_subsecs(6), None).await?;
        D::commit(tx).await?;
        Ok(p)
    }

    async fn refresh_allocations(&self, cfg: &BudgetConfig, now: DateTime<Utc>) -> Result<()> {
        let now = now.trunc_subsecs(6);
        let mut tx = self.write_system().await?;
        let p = ensure_period(&mut tx, cfg, now, None).await?;
        tx.refresh_allocations(&p, now, None).await?;
        D::commit(tx).await
    }

    async fn reserve(
        &self,
        scope: &CompanyScope,
        id: &TaskId,
        amount: i64,
        cfg: &BudgetConfig,
        now: DateTime<Utc>,
    ) -> Result<ReserveOutcome> {
        positive(amount)?;
        let now = now.trunc_subsecs(6);
        let company = scope.company();
        let mut tx = self.write_for(company).await?;
        let c: &mut dyn Conn = &mut tx;
        if !lock_company(c, company).await? {
            return Err(StoreError::NotFound);
        }
        // Shared: calls of one run may reserve side by side, but the run
        // cannot end (and release everything it holds) until they commit.
        let queue = q("SELECT 1 FROM task_queue WHERE task_id = $1 AND company_id = $2")
            .arg(id.as_str())
            .arg(company.as_str());
        c.exec(queue.locked(Lock::Share).pg_only()).await?;
        let task = load_task(c, company, id, false).await?;
        if task.status != TaskStatus::Running {
            return Err(StoreError::Conflict(format!("task {id} is not running")));
        }
        let outcome = match reserve_tx(c, company, id, task.priority, amount, cfg, now).await? {
            Some(r) => ReserveOutcome::Reserved(r),
            None => ReserveOutcome::Denied {
                reason: format!(
                    "no pool a {} task may use has {amount} tokens free",
                    task.priority.as_str()
                ),
            },
        };
        D::commit(tx).await?;
        Ok(outcome)
    }

    async fn settle(
        &self,
        scope: &CompanyScope,
        reservation_id: &str,
        prompt_tokens: i64,
        completion_tokens: i64,
        cost_usd: f64,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let usage = Usage {
            prompt_tokens,
            completion_tokens,
            cost_usd,
        };
        let mut tx = self.write_for(scope.company()).await?;
        if !lock_company(&mut tx, scope.company()).await? {
            return Err(StoreError::NotFound);
        }
        let now = now.trunc_subsecs(6);
        settle(&mut tx, scope.company(), reservation_id, &usage, now).await?;
        D::commit(tx).await
    }

    async fn resize_reservation(
        &self,
        scope: &CompanyScope,
        reservation_id: &str,
        amount: i64,
        now: DateTime<Utc>,
    ) -> Result<ReserveOutcome> {
        positive(amount)?;
        let mut tx = self.write_for(scope.company()).await?;
        if !lock_company(&mut tx, scope.company()).await? {
            return Err(StoreError::NotFound);
        }
        let now = now.trunc_subsecs(6);
        let outcome = resize(&mut tx, scope.company(), reservation_id, amount, now).await?;
        D::commit(tx).await?;
        Ok(outcome)
    }

    async fn release(
        &self,
        scope: &CompanyScope,
        reservation_id: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.write_for(scope.company()).await?;
        if !lock_company(&mut tx, scope.company()).await? {
            return Err(StoreError::NotFound);
        }
        release(
            &mut tx,
            scope.company(),
            reservation_id,
            now.trunc_subsecs(6),
        )
        .await?;
        D::commit(tx).await
    }

    async fn budget_state(
        &self,
        _admin: &AdminScope,
        cfg: &BudgetConfig,
        now: DateTime<Utc>,
    ) -> Result<BudgetState> {
        // Made first, in its own transaction: the snapshot that reads the
        // state cannot write without risking a serialization failure.
        let period = BudgetStore::ensure_period(self, cfg, now).await?;
        let mut tx = self.snapshot(None).await?;
        let s = state_of(&mut tx, period, None).await?;
        D::commit(tx).await?;
        Ok(s)
    }

    async fn company_budget(
        &self,
        scope: &CompanyScope,
        cfg: &BudgetConfig,
        now: DateTime<Utc>,
    ) -> Result<BudgetState> {
        let period = BudgetStore::ensure_period(self, cfg, now).await?;
        let mut tx = self.snapshot(Some(scope.company())).await?;
        let s = state_of(&mut tx, period, Some(scope.company())).await?;
        D::commit(tx).await?;
        Ok(s)
    }

    async fn emergency_requests(
        &self,
        _admin: &AdminScope,
        pending_only: bool,
    ) -> Result<Vec<EmergencyRequest>> {
        let mut r = self.read_all(false).await?;
        let found = requests(&mut r, None, pending_only).await?;
        D::end_read(r).await?;
        Ok(found)
    }

    async fn decide_emergency(
        &self,
        admin: &AdminScope,
        request_id: &str,
        approve: bool,
        note: &str,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<EmergencyRequest> {
        let now = now.trunc_subsecs(6);
        let mut tx = self.write_system().await?;
        match decide_tx(&mut tx, admin, request_id, approve, note, now).await {
            Ok(decided) => {
                tx.audit(audit).await?;
                D::commit(tx).await?;
                Ok(decided)
            }
            Err(e) => {
                // Rolled back now, not when the pool gets to the dropped
                // transaction: until then its lock on the queue row would
                // make a claim skip the task as taken.
                D::rollback(tx).await?;
                Err(e)
            }
        }
    }

    async fn verify_ledger(&self, _admin: &AdminScope) -> Result<LedgerReport> {
        // One snapshot: the balances cannot move while they are compared.
        let mut tx = self.snapshot(None).await?;
        let report = replay_ledger(&mut tx).await?;
        D::commit(tx).await?;
        Ok(report)
    }
}
