//! Tasks, the queue and budgets on PostgreSQL: the SQLite implementation
//! (`sqlite/work.rs`) ported statement for statement, with what SQLite's one
//! writer gave for free made explicit.
//!
//! Transactions run at READ COMMITTED. A reservation stays safe because it is
//! a conditional update (`reserved + spent + n <= capacity` in the WHERE):
//! an UPDATE that waited for a row lock re-checks its WHERE against the row
//! as the other transaction left it. No balance is read and then written.
//!
//! Every other read-then-write holds a row lock, and locks are taken in one
//! order so two transactions never wait on each other in a circle:
//!
//! 1. the company row: `FOR KEY SHARE` for work on its tasks and budget
//!    (a forced delete, which takes `FOR UPDATE`, waits for that work and
//!    that work waits for it), `FOR NO KEY UPDATE` for a submit (one at a
//!    time per company, for the sequence number);
//! 2. the task's queue row: every status change holds it, so one task
//!    changes state once at a time;
//! 3. the task's emergency request, then its reservations;
//! 4. allocations (several only in a refresh, then in company order);
//! 5. pools;
//! 6. the task row (its counters and status are written last);
//! 7. the audit head.
//!
//! Row-level security binds every company table. A transaction for one
//! company names it once; the system paths read across companies with
//! `app.admin_read` and name each row's company before writing it.
//!
//! Batches (`claim_batch`, `finish_batch`) are set-based: one transaction of
//! two calls to the SECURITY INVOKER functions of `0004_queue_batching.sql`,
//! a first that locks and reads, a second that writes what the store planned
//! from it, one statement per table and company. The functions name each
//! company before touching its rows and keep the order above, by class
//! first and then by company, so a batch and a single claim or finish never
//! wait on each other in a circle.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use kira_core::CompanyId;
use kira_core::audit::AuditRecord;
use kira_core::auth::{AdminScope, CompanyScope};
use kira_core::budget::{
    AllocationInput, BudgetConfig, CompanyFactors, Pool, allocate, allocation_factor,
    may_request_emergency, period_of,
};
use kira_core::task::{Priority, Task, TaskEvent, TaskId, TaskStatus, check_transition};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgConnection, Row};

use super::{PgStore, TASKS_CHANNEL, Tx, UNIQUE_VIOLATION, append, company_id, set_company};
use crate::flow::budget::*;
pub(super) use crate::flow::tasks::{TASK_COLUMNS, event, load_task, set_status, task_from_row};
use crate::work::*;
use crate::{DeletedRows, Result, StoreError};

/// Serialises allocation refreshes (within a transaction): two refreshes
/// would both see a new company without an allocation and both log its
/// first one. "kiraallo" in ASCII.
const REFRESH_LOCK: i64 = 0x6b69_7261_616c_6c6f;

pub(super) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

pub(super) fn task_id(s: &str) -> Result<TaskId> {
    TaskId::parse(s).map_err(|e| corrupt("task id", e))
}

/// Lets the row-level policies admit every company's rows for reading, or
/// stops them, until the transaction ends.
async fn set_admin_read(tx: &mut PgConnection, on: bool) -> Result<()> {
    sqlx::query("SELECT set_config('app.admin_read', $1, true)")
        .bind(if on { "on" } else { "off" })
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Locks the company row against a forced delete for the rest of the
/// transaction (step 1 of the lock order). False when it does not exist.
pub(super) async fn lock_company(tx: &mut PgConnection, company: &CompanyId) -> Result<bool> {
    let found: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM companies WHERE company_id = $1 FOR KEY SHARE")
            .bind(company.as_str())
            .fetch_optional(&mut *tx)
            .await?;
    Ok(found.is_some())
}

/// Wakes schedulers listening on [`TASKS_CHANNEL`]; delivered on commit,
/// and not at all if the transaction rolls back.
pub(super) async fn notify(tx: &mut PgConnection, id: &TaskId) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(TASKS_CHANNEL)
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The period containing `now`, made with its pools and allocations if new.
/// Of transactions racing at a new period, the one whose insert lands makes
/// the rest; the others wait on its row and then find it. `company` is the
/// one the transaction had named, put back after a refresh.
async fn ensure_period_tx(
    tx: &mut PgConnection,
    cfg: &BudgetConfig,
    now: DateTime<Utc>,
    company: Option<&CompanyId>,
) -> Result<String> {
    let p = period_of(now);
    // The common case reads only, so claims do not queue on this row.
    let exists: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM budget_periods WHERE period_id = $1")
            .bind(&p.id)
            .fetch_optional(&mut *tx)
            .await?;
    if exists.is_some() {
        return Ok(p.id);
    }
    let made = sqlx::query(
        "INSERT INTO budget_periods (period_id, starts_at, ends_at, total_tokens, created_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (period_id) DO NOTHING",
    )
    .bind(&p.id)
    .bind(p.start)
    .bind(p.end)
    .bind(cfg.total_tokens)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if made == 1 {
        let caps = cfg.capacities();
        for (pool, capacity) in [
            (Pool::Base, caps.base),
            (Pool::Burst, caps.burst),
            (Pool::Emergency, caps.emergency),
        ] {
            sqlx::query("INSERT INTO budget_pools (period_id, pool, capacity) VALUES ($1, $2, $3)")
                .bind(&p.id)
                .bind(pool.as_str())
                .bind(capacity)
                .execute(&mut *tx)
                .await?;
            ledger(
                tx,
                now,
                &p.id,
                None,
                None,
                None,
                Some(pool),
                "rollover",
                capacity,
                "new period",
            )
            .await?;
        }
        refresh_tx(tx, &p.id, now, company).await?;
    }
    Ok(p.id)
}

/// Recomputes every company's base allocation in `period`, then names
/// `company` again (or none) for the rest of the transaction.
///
/// Each allocation is locked before its spent and reserved tokens are read,
/// so a reservation cannot slip in between and leave the new allocation
/// below what the company holds.
async fn refresh_tx(
    tx: &mut PgConnection,
    period: &str,
    now: DateTime<Utc>,
    company: Option<&CompanyId>,
) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(REFRESH_LOCK)
        .execute(&mut *tx)
        .await?;
    let base: i64 = sqlx::query_scalar(
        "SELECT capacity - spent FROM budget_pools WHERE period_id = $1 AND pool = 'base'",
    )
    .bind(period)
    .fetch_one(&mut *tx)
    .await?;
    set_admin_read(tx, true).await?;
    let companies = sqlx::query(
        "SELECT company_id, revenue_usd, complexity_score, activity_score, archived_at \
         FROM companies ORDER BY company_id",
    )
    .fetch_all(&mut *tx)
    .await?;
    set_admin_read(tx, false).await?;
    let mut inputs = Vec::with_capacity(companies.len());
    let mut old = Vec::with_capacity(companies.len());
    for r in &companies {
        let id = company_id(r.try_get("company_id")?)?;
        set_company(tx, id.as_str()).await?;
        // A company deleted since the read above is skipped: its delete
        // held the row, and the lock returns nothing once it committed.
        if !lock_company(tx, &id).await? {
            continue;
        }
        let held: Option<(i64, i64, i64)> = sqlx::query_as(
            "SELECT tokens, reserved, spent FROM budget_allocations \
             WHERE period_id = $1 AND company_id = $2 FOR UPDATE",
        )
        .bind(period)
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let archived: Option<DateTime<Utc>> = r.try_get("archived_at")?;
        inputs.push(AllocationInput {
            company: id,
            factor: allocation_factor(&CompanyFactors {
                revenue_usd: r.try_get("revenue_usd")?,
                complexity_score: r.try_get("complexity_score")?,
                activity_score: r.try_get("activity_score")?,
            }),
            active: archived.is_none(),
            committed: held.map_or(0, |(tokens, reserved, spent)| {
                committed(Some(tokens), reserved, spent)
            }),
        });
        old.push(held.map(|(tokens, _, _)| tokens));
    }
    for (a, old) in allocate(base, &inputs).into_iter().zip(old) {
        let delta = a.tokens - old.unwrap_or(0);
        set_company(tx, a.company.as_str()).await?;
        sqlx::query(
            "INSERT INTO budget_allocations (period_id, company_id, factor, share, tokens) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (period_id, company_id) DO UPDATE SET factor = excluded.factor, \
             share = excluded.share, tokens = excluded.tokens",
        )
        .bind(period)
        .bind(a.company.as_str())
        .bind(a.factor)
        .bind(a.share)
        .bind(a.tokens)
        .execute(&mut *tx)
        .await?;
        if delta != 0 || old.is_none() {
            ledger(
                tx,
                now,
                period,
                Some(&a.company),
                None,
                None,
                Some(Pool::Base),
                "allocate",
                delta,
                "",
            )
            .await?;
        }
    }
    set_company(tx, company.map_or("", CompanyId::as_str)).await
}

/// Reserves from the first pool `priority` may use that has room, in the
/// period containing `now` (made if new). The transaction has named
/// `company`.
async fn reserve_tx(
    tx: &mut PgConnection,
    company: &CompanyId,
    task: &TaskId,
    priority: Priority,
    amount: i64,
    cfg: &BudgetConfig,
    now: DateTime<Utc>,
) -> Result<Option<Reservation>> {
    let period = ensure_period_tx(tx, cfg, now, Some(company)).await?;
    reserve_in(tx, &period, company, task, priority, amount, cfg, now).await
}

/// Removes every task-related row of a company, releasing what it holds
/// first so the pools stay right. The ledger keeps its lines. The caller
/// has named the company and holds its row `FOR UPDATE`, so no work of the
/// company runs meanwhile.
pub(super) async fn delete_company_work(
    tx: &mut PgConnection,
    company: &CompanyId,
    now: DateTime<Utc>,
    deleted: &mut DeletedRows,
) -> Result<()> {
    let now = now.trunc_subsecs(6);
    release_company(tx, company, now, "company deleted").await?;
    // What it spent of the base pool stays spent: it moves to the pool row.
    sqlx::query(
        "UPDATE budget_pools p SET spent = p.spent + a.spent FROM budget_allocations a \
         WHERE p.pool = 'base' AND a.period_id = p.period_id AND a.company_id = $1",
    )
    .bind(company.as_str())
    .execute(&mut *tx)
    .await?;
    crate::flow::company::delete_rows(tx, company, crate::flow::company::WORK_ROWS, deleted)
        .await?;
    Ok(())
}

fn queue_from_row(r: &PgRow) -> Result<QueueEntry> {
    let status: &str = r.try_get("status")?;
    let priority: &str = r.try_get("priority")?;
    Ok(QueueEntry {
        task_id: task_id(r.try_get("task_id")?)?,
        company_id: company_id(r.try_get("company_id")?)?,
        agent: r.try_get("agent")?,
        status: TaskStatus::parse(status).map_err(|e| corrupt("status", e))?,
        priority: Priority::parse(priority).map_err(|e| corrupt("priority", e))?,
        multiplier: r.try_get("multiplier")?,
        deadline: r.try_get("deadline")?,
        waiting_since: r.try_get("waiting_since")?,
        estimated_tokens: r.try_get("estimated_tokens")?,
        attempts: r.try_get("attempts")?,
    })
}

/// True when `e` is the unique violation of one company's idempotency key.
fn is_idempotency_race(e: &StoreError) -> bool {
    match e {
        StoreError::Database(sqlx::Error::Database(d)) => {
            d.code().as_deref() == Some(UNIQUE_VIOLATION)
                && d.constraint() == Some("tasks_company_idempotency_key")
        }
        _ => false,
    }
}

impl PgStore {
    async fn submit_once(
        &self,
        scope: &CompanyScope,
        new: &NewTask,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Submitted> {
        let company = scope.company();
        let mut tx = self.scoped(company).await?;
        // One submit per company at a time: the next sequence number and
        // the idempotency check below see every submit committed before.
        let found: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM companies WHERE company_id = $1 FOR NO KEY UPDATE")
                .bind(company.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        if found.is_none() {
            return Err(StoreError::NotFound);
        }
        if let Some(idem) = &new.idempotency {
            let seen = sqlx::query(
                "SELECT task_id, request_hash FROM tasks WHERE company_id = $1 AND idempotency_key = $2",
            )
            .bind(company.as_str())
            .bind(&idem.key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = seen {
                let hash: Option<&str> = row.try_get("request_hash")?;
                if hash != Some(idem.request_hash.as_str()) {
                    return Err(StoreError::Conflict(
                        "this Idempotency-Key was used with a different request".into(),
                    ));
                }
                let id = task_id(row.try_get("task_id")?)?;
                let task = load_task(&mut tx, company, &id, false).await?;
                return Ok(Submitted {
                    task,
                    created: false,
                });
            }
        }
        if let Some(limit) = new.open_limit {
            let open: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM task_queue WHERE company_id = $1 AND priority = $2",
            )
            .bind(company.as_str())
            .bind(new.priority.as_str())
            .fetch_one(&mut *tx)
            .await?;
            crate::work::check_open_limit(new, open, limit)?;
        }
        let seq: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) + 1 FROM tasks WHERE company_id = $1")
                .bind(company.as_str())
                .fetch_one(&mut *tx)
                .await?;
        let id = TaskId::new(company, &new.label, seq);
        let deadline = new.deadline.map(|d| d.trunc_subsecs(6));
        sqlx::query(
            "INSERT INTO tasks (task_id, company_id, seq, task_type, specialist, agent, priority, task, parameters, \
             company_context, deadline, idempotency_key, request_hash, status, status_reason, max_attempts, \
             estimated_tokens, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'queued', 'submitted', $14, $15, $16, $16)",
        )
        .bind(id.as_str())
        .bind(company.as_str())
        .bind(seq)
        .bind(&new.task_type)
        .bind(&new.specialist)
        .bind(&new.agent)
        .bind(new.priority.as_str())
        .bind(&new.task)
        .bind(Json(&new.parameters))
        .bind(Json(&new.company_context))
        .bind(deadline)
        .bind(new.idempotency.as_ref().map(|i| i.key.as_str()))
        .bind(new.idempotency.as_ref().map(|i| i.request_hash.as_str()))
        .bind(new.max_attempts)
        .bind(new.estimated_tokens)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO task_queue (task_id, company_id, agent, status, priority, multiplier, deadline, \
             waiting_since, not_before, estimated_tokens, attempts) \
             VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $7, $8, 0)",
        )
        .bind(id.as_str())
        .bind(company.as_str())
        .bind(&new.agent)
        .bind(new.priority.as_str())
        .bind(new.multiplier)
        .bind(deadline)
        .bind(now)
        .bind(new.estimated_tokens)
        .execute(&mut *tx)
        .await?;
        event(
            &mut tx,
            company,
            &id,
            None,
            TaskStatus::Queued,
            "submitted",
            now,
        )
        .await?;
        notify(&mut tx, &id).await?;
        let task = load_task(&mut tx, company, &id, false).await?;
        let audit = AuditRecord {
            target: format!("task:{id}"),
            ..audit
        };
        append(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(Submitted {
            task,
            created: true,
        })
    }

    /// No pool had room: the task waits for budget, or for a human to grant
    /// emergency tokens if its level may ask. The caller commits.
    async fn wait_for_budget(
        tx: &mut PgConnection,
        task: Task,
        cfg: &BudgetConfig,
        now: DateTime<Utc>,
    ) -> Result<ClaimOutcome> {
        let (company, id) = (&task.company_id, &task.task_id);
        // The claim counted an attempt that did not happen.
        sqlx::query(
            "UPDATE task_queue SET lease_owner = NULL, lease_expires_at = NULL, attempts = attempts - 1 \
             WHERE task_id = $1",
        )
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
        if may_request_emergency(task.priority, cfg) {
            let period = ensure_period_tx(tx, cfg, now, Some(company)).await?;
            let request_id = new_reservation_id();
            let reason = format!(
                "base and burst cannot hold {} tokens for this {} task",
                task.estimated_tokens,
                task.priority.as_str()
            );
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO emergency_requests ({REQUEST_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, NULL, NULL, NULL)"
            )))
            .bind(&request_id)
            .bind(company.as_str())
            .bind(id.as_str())
            .bind(&period)
            .bind(task.estimated_tokens)
            .bind(&reason)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE task_queue SET status = 'awaiting_approval' WHERE task_id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
            if task.status != TaskStatus::AwaitingApproval {
                set_status(
                    tx,
                    &task,
                    TaskStatus::AwaitingApproval,
                    &format!("emergency request {request_id}: {reason}"),
                    now,
                )
                .await?;
            }
            Ok(ClaimOutcome::AwaitingApproval { request_id })
        } else {
            let reason = format!(
                "no pool a {} task may use has {} tokens free",
                task.priority.as_str(),
                task.estimated_tokens
            );
            sqlx::query(
                "UPDATE task_queue SET status = 'waiting_budget', not_before = $1 WHERE task_id = $2",
            )
            .bind(now + crate::work::WAITING_BUDGET_RECHECK)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
            if task.status != TaskStatus::WaitingBudget {
                set_status(tx, &task, TaskStatus::WaitingBudget, &reason, now).await?;
            }
            Ok(ClaimOutcome::WaitingBudget { reason })
        }
    }

    /// A read-only snapshot: several statements see one moment, as the
    /// ledger check and the budget views need.
    async fn snapshot(&self) -> Result<Tx> {
        Ok(self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?)
    }
}

/// What both of the queue snapshot's statements start from: the tasks that
/// could start at $1, given the agents and their slots ($3, $4; NULL: every
/// task) and the company limit ($5).
const STARTABLE: &str = "WITH running AS MATERIALIZED (SELECT agent, company_id FROM task_queue WHERE status = 'running'), \
     open_agents AS (SELECT c.agent FROM unnest($3::text[], $4::bigint[]) AS c(agent, slots) \
       WHERE c.slots > (SELECT count(*) FROM running r WHERE r.agent = c.agent)), \
     full_companies AS (SELECT company_id FROM running GROUP BY company_id HAVING count(*) >= $5), \
     startable AS NOT MATERIALIZED (SELECT * FROM task_queue \
       WHERE status IN ('queued', 'waiting_budget') AND not_before <= $1 \
       AND ($3::text[] IS NULL OR (agent IN (SELECT agent FROM open_agents) \
            AND company_id NOT IN (SELECT company_id FROM full_companies)))) ";

const QUEUE_COLUMNS: &str = "task_id, company_id, agent, status, priority, multiplier, deadline, \
     waiting_since, estimated_tokens, attempts";

/// The queue snapshot (see `queue_snapshot`): the $2 startable tasks
/// waiting longest.
static OLDEST_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{STARTABLE} SELECT {QUEUE_COLUMNS} FROM startable ORDER BY waiting_since, task_id LIMIT $2"
    )
});

/// Read only when the first window is full: of each priority level the
/// first $2 startable tasks by multiplier then waiting time, and the $2
/// nearest deadlines, so a task that outranks the oldest is never hidden
/// behind them.
static WINDOWS_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let windows = Priority::ALL
        .iter()
        .map(|p| {
            format!(
                "(SELECT {QUEUE_COLUMNS} FROM startable WHERE priority = '{}' \
                 ORDER BY multiplier DESC, waiting_since, task_id LIMIT $2)",
                p.as_str()
            )
        })
        .chain(std::iter::once(format!(
            "(SELECT {QUEUE_COLUMNS} FROM startable WHERE deadline IS NOT NULL \
             ORDER BY deadline, task_id LIMIT $2)"
        )))
        .collect::<Vec<_>>()
        .join(" UNION ");
    format!("{STARTABLE} {windows}")
});

#[async_trait]
impl TaskStore for PgStore {
    async fn submit_task(
        &self,
        scope: &CompanyScope,
        new: &NewTask,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Submitted> {
        let now = now.trunc_subsecs(6);
        match self.submit_once(scope, new, now, audit.clone()).await {
            // Another submit with the key committed between our check and
            // our insert (the company lock makes this all but impossible):
            // a second try finds its task.
            Err(e) if new.idempotency.is_some() && is_idempotency_race(&e) => {
                self.submit_once(scope, new, now, audit).await
            }
            r => r,
        }
    }

    async fn get_task(&self, scope: &CompanyScope, id: &TaskId) -> Result<Task> {
        let mut tx = self.scoped(scope.company()).await?;
        let task = load_task(&mut tx, scope.company(), id, false).await?;
        tx.commit().await?;
        Ok(task)
    }

    async fn list_tasks(&self, scope: &CompanyScope, f: &TaskFilter) -> Result<Vec<Task>> {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE company_id = $1 \
             AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR priority = $3) \
             AND ($4::text IS NULL OR task_type = $4) \
             AND ($5::timestamptz IS NULL OR created_at >= $5) AND ($6::timestamptz IS NULL OR created_at < $6) \
             AND ($7::bigint IS NULL OR seq < $7) \
             ORDER BY seq DESC LIMIT $8"
        );
        let mut tx = self.scoped(scope.company()).await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(scope.company().as_str())
            .bind(f.status.map(TaskStatus::as_str))
            .bind(f.priority.map(Priority::as_str))
            .bind(&f.task_type)
            .bind(f.created_after.map(|t| t.trunc_subsecs(6)))
            .bind(f.created_before.map(|t| t.trunc_subsecs(6)))
            .bind(f.before_seq)
            .bind(i64::from(f.limit))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter().map(task_from_row).collect()
    }

    async fn task_events(
        &self,
        scope: &CompanyScope,
        id: &TaskId,
        after_event: i64,
    ) -> Result<Vec<TaskEvent>> {
        let mut tx = self.scoped(scope.company()).await?;
        load_task(&mut tx, scope.company(), id, false).await?;
        let rows = sqlx::query(
            "SELECT event_id, task_id, at, from_status, to_status, reason FROM task_events \
             WHERE company_id = $1 AND task_id = $2 AND event_id > $3 ORDER BY event_id",
        )
        .bind(scope.company().as_str())
        .bind(id.as_str())
        .bind(after_event)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                let from: Option<&str> = r.try_get("from_status")?;
                let to: &str = r.try_get("to_status")?;
                Ok(TaskEvent {
                    event_id: r.try_get("event_id")?,
                    task_id: id.clone(),
                    at: r.try_get("at")?,
                    from_status: from
                        .map(TaskStatus::parse)
                        .transpose()
                        .map_err(|e| corrupt("status", e))?,
                    to_status: TaskStatus::parse(to).map_err(|e| corrupt("status", e))?,
                    reason: r.try_get("reason")?,
                })
            })
            .collect()
    }

    async fn cancel_task(
        &self,
        scope: &CompanyScope,
        id: &TaskId,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Task> {
        let now = now.trunc_subsecs(6);
        let company = scope.company();
        let mut tx = self.scoped(company).await?;
        if !lock_company(&mut tx, company).await? {
            return Err(StoreError::NotFound);
        }
        let queued: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM task_queue WHERE task_id = $1 AND company_id = $2 FOR UPDATE",
        )
        .bind(id.as_str())
        .bind(company.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        // A task out of the queue (in review, or ended) has no queue row to
        // hold: hold its own.
        let task = load_task(&mut tx, company, id, queued.is_none()).await?;
        if task.status.is_final() {
            return Err(StoreError::Conflict(format!(
                "task {id} already ended: {}",
                task.status.as_str()
            )));
        }
        if task.status == TaskStatus::Running {
            sqlx::query("UPDATE task_queue SET cancel_requested = true WHERE task_id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        } else {
            release_all(&mut tx, company, id, now, "task cancelled").await?;
            sqlx::query(
                "UPDATE emergency_requests SET status = 'rejected', decided_at = $1, decision = 'task cancelled' \
                 WHERE company_id = $2 AND task_id = $3 AND status = 'pending'",
            )
            .bind(now)
            .bind(company.as_str())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM task_queue WHERE task_id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
            set_status(
                &mut tx,
                &task,
                TaskStatus::Cancelled,
                "cancelled by request",
                now,
            )
            .await?;
        }
        notify(&mut tx, id).await?;
        let task = load_task(&mut tx, company, id, false).await?;
        append(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(task)
    }

    async fn queue_snapshot(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        capacity: Option<&Capacity>,
    ) -> Result<QueueSnapshot> {
        // With a capacity ($3, $4: the agents and their slots; $5: a
        // company's), agents whose slots are all taken and companies at
        // their limit are left out.
        let (agents, slots): (Option<Vec<&str>>, Option<Vec<i64>>) = capacity
            .map(|c| {
                c.agents
                    .iter()
                    .map(|(a, n)| (a.as_str(), i64::from(*n)))
                    .unzip()
            })
            .unzip();
        // Built once from constants (the priority names).
        let read = |sql: &'static str, limit: u32| {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(now.trunc_subsecs(6))
                .bind(i64::from(limit))
                .bind(agents.clone())
                .bind(slots.clone())
                .bind(capacity.map(|c| i64::from(c.per_company)))
                .fetch_all(&self.queue)
        };
        let mut runnable = read(OLDEST_SQL.as_str(), limit)
            .await?
            .iter()
            .map(queue_from_row)
            .collect::<Result<Vec<_>>>()?;
        if runnable.len() >= limit as usize {
            let windows = read(WINDOWS_SQL.as_str(), level_window(limit))
                .await?
                .iter()
                .map(queue_from_row)
                .collect::<Result<Vec<_>>>()?;
            add_windows(&mut runnable, windows);
        }
        let running =
            sqlx::query("SELECT agent, company_id FROM task_queue WHERE status = 'running'")
                .fetch_all(&self.queue)
                .await?
                .iter()
                .map(|r| Ok((r.try_get("agent")?, company_id(r.try_get("company_id")?)?)))
                .collect::<Result<Vec<_>>>()?;
        Ok(QueueSnapshot { runnable, running })
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
        let now = now.trunc_subsecs(6);
        let company = scope.company();
        let mut tx = self.scoped(company).await?;
        if !lock_company(&mut tx, company).await? {
            return Ok(ClaimOutcome::Gone);
        }
        // Of claimers racing for one task, the first to lock the row wins;
        // the others skip it at once rather than queue behind the winner,
        // and move on to their next candidate.
        let free: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM task_queue WHERE task_id = $1 AND company_id = $2 \
             AND status IN ('queued', 'waiting_budget') AND not_before <= $3 FOR UPDATE SKIP LOCKED",
        )
        .bind(id.as_str())
        .bind(company.as_str())
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        if free.is_none() {
            return Ok(ClaimOutcome::Gone);
        }
        let n = sqlx::query(
            "UPDATE task_queue SET status = 'running', lease_owner = $1, lease_expires_at = $2, \
             attempts = attempts + 1 \
             WHERE task_id = $3 AND company_id = $4 AND status IN ('queued', 'waiting_budget') \
             AND not_before <= $5",
        )
        .bind(worker)
        .bind(lease_until.trunc_subsecs(6))
        .bind(id.as_str())
        .bind(company.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(ClaimOutcome::Gone);
        }
        let task = load_task(&mut tx, company, id, false).await?;
        // A grant approved by a human is already held for the task.
        let granted = held_reservations(&mut tx, company, id)
            .await?
            .into_iter()
            .next();
        let reservation = match granted {
            Some(r) => Some(r),
            None => {
                reserve_tx(
                    &mut tx,
                    company,
                    id,
                    task.priority,
                    task.estimated_tokens,
                    budget,
                    now,
                )
                .await?
            }
        };
        let Some(reservation) = reservation else {
            let outcome = Self::wait_for_budget(&mut tx, task, budget, now).await?;
            tx.commit().await?;
            return Ok(outcome);
        };
        let reason = format!(
            "claimed by {worker}; {} tokens reserved from {}",
            reservation.amount,
            reservation.pool.as_str()
        );
        check_transition(task.status, TaskStatus::Running)
            .map_err(|e| StoreError::Conflict(e.to_string()))?;
        // One round trip moves it to running, records the event and reads it
        // back: the pool row locked by the reservation is held that much shorter.
        let sql = format!(
            "WITH t AS (UPDATE tasks SET status = 'running', status_reason = $1, updated_at = $2, \
               attempts = attempts + 1, started_at = COALESCE(started_at, $2) \
               WHERE company_id = $3 AND task_id = $4 RETURNING {TASK_COLUMNS}), \
             e AS (INSERT INTO task_events (company_id, task_id, at, from_status, to_status, reason) \
               SELECT company_id, task_id, $2, $5, 'running', $1 FROM t) \
             SELECT * FROM t"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&reason)
            .bind(now)
            .bind(company.as_str())
            .bind(id.as_str())
            .bind(task.status.as_str())
            .fetch_one(&mut *tx)
            .await?;
        let task = task_from_row(&row)?;
        tx.commit().await?;
        Ok(ClaimOutcome::Claimed {
            task: Box::new(task),
            reservation,
        })
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
        crate::flow::batch::claim_batch(
            self,
            candidates,
            admission,
            worker,
            lease_until,
            budget,
            now,
        )
        .await
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
        let mut tx = self.scoped(scope.company()).await?;
        if !lock_company(&mut tx, scope.company()).await? {
            return Err(StoreError::NotFound);
        }
        crate::flow::tasks::raise_estimate(&mut tx, scope.company(), id, worker, tokens).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn heartbeat(
        &self,
        id: &TaskId,
        worker: &str,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Lease> {
        // The queue row carries no company content: no company to name.
        let mut tx = self.queue.begin().await?;
        let n = sqlx::query(
            "UPDATE task_queue SET lease_expires_at = $1 WHERE task_id = $2 AND lease_owner = $3 \
             AND status = 'running' AND lease_expires_at >= $4",
        )
        .bind(lease_until.trunc_subsecs(6))
        .bind(id.as_str())
        .bind(worker)
        .bind(now.trunc_subsecs(6))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let cancel: Option<bool> =
            sqlx::query_scalar("SELECT cancel_requested FROM task_queue WHERE task_id = $1")
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(Lease {
            held: n == 1,
            cancel_requested: cancel.unwrap_or(false),
        })
    }

    async fn record_run(
        &self,
        scope: &CompanyScope,
        records: &RunRecords,
        now: DateTime<Utc>,
    ) -> Result<()> {
        records.check(scope.company())?;
        let company = scope.company();
        let tx = self.scoped(company).await?;
        super::agents::commit_or_roll_back(tx, async |tx| {
            super::agents::write_run_records(tx, company, records, now).await?;
            super::agents::write_run_memory(tx, company, records).await
        })
        .await
    }

    async fn finish(
        &self,
        scope: &CompanyScope,
        id: &TaskId,
        worker: &str,
        f: Finish,
        now: DateTime<Utc>,
    ) -> Result<Task> {
        let now = now.trunc_subsecs(6);
        let company = scope.company();
        let lost =
            || StoreError::Conflict(format!("worker {worker} no longer holds the lease on {id}"));
        let mut tx = self.scoped(company).await?;
        if !lock_company(&mut tx, company).await? {
            return Err(lost());
        }
        let ours: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM task_queue WHERE task_id = $1 AND company_id = $2 AND lease_owner = $3 \
             AND status = 'running' FOR UPDATE",
        )
        .bind(id.as_str())
        .bind(company.as_str())
        .bind(worker)
        .fetch_optional(&mut *tx)
        .await?;
        if ours.is_none() {
            return Err(lost());
        }
        let task = load_task(&mut tx, company, id, false).await?;
        check_transition(task.status, f.status).map_err(|e| StoreError::Conflict(e.to_string()))?;
        release_all(&mut tx, company, id, now, "run ended").await?;
        sqlx::query(
            "UPDATE tasks SET result = $1, confidence = $2, requires_human_review = $3, \
             last_error = COALESCE($4, last_error) WHERE company_id = $5 AND task_id = $6",
        )
        .bind(f.result.as_ref().map(Json))
        .bind(f.confidence)
        .bind(f.requires_human_review)
        .bind(&f.error)
        .bind(company.as_str())
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?;
        if f.status == TaskStatus::Queued {
            sqlx::query(
                "UPDATE task_queue SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL, \
                 not_before = $1 WHERE task_id = $2",
            )
            .bind(f.retry_at.unwrap_or(now).trunc_subsecs(6))
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
            notify(&mut tx, id).await?;
        } else if f.status == TaskStatus::WaitingBudget {
            // The run never reached the model: the claim's attempt is given back.
            sqlx::query(
                "UPDATE task_queue SET status = 'waiting_budget', lease_owner = NULL, lease_expires_at = NULL, \
                 not_before = $1, attempts = GREATEST(attempts - 1, 0) WHERE task_id = $2",
            )
            .bind(f.retry_at.unwrap_or(now).trunc_subsecs(6))
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE tasks SET attempts = GREATEST(attempts - 1, 0) WHERE company_id = $1 AND task_id = $2",
            )
            .bind(company.as_str())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query("DELETE FROM task_queue WHERE task_id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        set_status(&mut tx, &task, f.status, &f.reason, now).await?;
        let task = load_task(&mut tx, company, id, false).await?;
        tx.commit().await?;
        Ok(task)
    }

    async fn reap_expired(&self, now: DateTime<Utc>, backoff: TimeDelta) -> Result<Vec<TaskId>> {
        let now = now.trunc_subsecs(6);
        let expired = sqlx::query(
            "SELECT task_id, company_id, lease_owner FROM task_queue \
             WHERE status = 'running' AND lease_expires_at < $1 ORDER BY task_id",
        )
        .bind(now)
        .fetch_all(&self.queue)
        .await?;
        let mut reaped = Vec::new();
        for row in expired {
            let id = task_id(row.try_get("task_id")?)?;
            let company = company_id(row.try_get("company_id")?)?;
            let owner: Option<String> = row.try_get("lease_owner")?;
            let mut tx = self.scoped(&company).await?;
            if !lock_company(&mut tx, &company).await? {
                continue;
            }
            // The worker may have finished, or another reaper got here first.
            let still: Option<i32> = sqlx::query_scalar(
                "SELECT 1 FROM task_queue WHERE task_id = $1 AND status = 'running' \
                 AND lease_expires_at < $2 FOR UPDATE",
            )
            .bind(id.as_str())
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            if still.is_none() {
                continue;
            }
            let task = load_task(&mut tx, &company, &id, false).await?;
            let owner = owner.unwrap_or_default();
            release_all(&mut tx, &company, &id, now, "lease expired").await?;
            if task.attempts >= task.max_attempts {
                sqlx::query("DELETE FROM task_queue WHERE task_id = $1")
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
                let reason = format!(
                    "the lease of worker {owner} expired on attempt {} of {}",
                    task.attempts, task.max_attempts
                );
                sqlx::query(
                    "UPDATE tasks SET last_error = $1 WHERE company_id = $2 AND task_id = $3",
                )
                .bind(&reason)
                .bind(company.as_str())
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
                set_status(&mut tx, &task, TaskStatus::Failed, &reason, now).await?;
            } else {
                let exp = u32::try_from(task.attempts.max(1) - 1).unwrap_or(0).min(16);
                let wait = backoff * 2_i32.pow(exp);
                sqlx::query(
                    "UPDATE task_queue SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL, \
                     not_before = $1 WHERE task_id = $2",
                )
                .bind((now + wait).trunc_subsecs(6))
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
                let reason = format!(
                    "the lease of worker {owner} expired; retry {} of {}",
                    task.attempts + 1,
                    task.max_attempts
                );
                set_status(&mut tx, &task, TaskStatus::Queued, &reason, now).await?;
                notify(&mut tx, &id).await?;
            }
            tx.commit().await?;
            reaped.push(id);
        }
        Ok(reaped)
    }
}

/// The pools of `period`. Their totals are no company's content, so a
/// company's own view reads them through the admin read, for this one
/// statement, and then sets it back as it was.
async fn pools_of(tx: &mut PgConnection, period: &str) -> Result<Vec<PoolState>> {
    let was: Option<String> = sqlx::query_scalar("SELECT current_setting('app.admin_read', true)")
        .fetch_one(&mut *tx)
        .await?;
    set_admin_read(tx, true).await?;
    let sql = format!(
        "SELECT pool, capacity, reserved, spent \
         FROM ({POOL_BALANCES}) b WHERE period_id = $1 ORDER BY pool"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(period)
        .fetch_all(&mut *tx)
        .await;
    set_admin_read(tx, was.as_deref() == Some("on")).await?;
    let rows = rows?;
    rows.iter()
        .map(|r| {
            let pool: &str = r.try_get("pool")?;
            let capacity = r.try_get("capacity")?;
            let reserved = r.try_get("reserved")?;
            let spent = r.try_get("spent")?;
            Ok(PoolState {
                pool: Pool::parse(pool).map_err(|e| corrupt("pool", e))?,
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
    tx: &mut PgConnection,
    period: &str,
    company: Option<&CompanyId>,
) -> Result<Vec<CompanyBudget>> {
    let rows = sqlx::query(
        "SELECT a.company_id, a.factor, a.share, a.tokens, a.reserved, a.spent, \
           (SELECT COALESCE(SUM(r.spent), 0)::bigint FROM reservations r \
             WHERE r.company_id = a.company_id AND r.period_id = a.period_id AND r.state = 'settled') AS spent_all, \
           (SELECT COALESCE(SUM(t.cost_usd), 0) FROM tasks t WHERE t.company_id = a.company_id) AS cost \
         FROM budget_allocations a WHERE a.period_id = $1 AND ($2::text IS NULL OR a.company_id = $2) \
         ORDER BY a.company_id",
    )
    .bind(period)
    .bind(company.map(CompanyId::as_str))
    .fetch_all(&mut *tx)
    .await?;
    rows.iter()
        .map(|r| {
            let allocation = r.try_get("tokens")?;
            let reserved = r.try_get("reserved")?;
            let spent = r.try_get("spent")?;
            Ok(CompanyBudget {
                company_id: company_id(r.try_get("company_id")?)?,
                factor: r.try_get("factor")?,
                share: r.try_get("share")?,
                allocation,
                reserved,
                spent,
                overdraft: overdraft_of(allocation, reserved, spent),
                spent_all_pools: r.try_get("spent_all")?,
                cost_usd: r.try_get("cost")?,
            })
        })
        .collect()
}

async fn requests(
    tx: &mut PgConnection,
    company: Option<&CompanyId>,
    pending_only: bool,
) -> Result<Vec<EmergencyRequest>> {
    let sql = format!(
        "SELECT {REQUEST_COLUMNS} FROM emergency_requests WHERE ($1::text IS NULL OR company_id = $1) \
         AND (NOT $2 OR status = 'pending') ORDER BY requested_at, request_id"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(company.map(CompanyId::as_str))
        .bind(pending_only)
        .fetch_all(&mut *tx)
        .await?;
    rows.iter().map(request_from_row).collect()
}

/// The period's state as one snapshot sees it; the period exists.
async fn state_of(
    tx: &mut PgConnection,
    period: String,
    company: Option<&CompanyId>,
) -> Result<BudgetState> {
    let row = sqlx::query(
        "SELECT starts_at, ends_at, total_tokens FROM budget_periods WHERE period_id = $1",
    )
    .bind(&period)
    .fetch_one(&mut *tx)
    .await?;
    Ok(BudgetState {
        starts_at: row.try_get("starts_at")?,
        ends_at: row.try_get("ends_at")?,
        total_tokens: row.try_get("total_tokens")?,
        pools: pools_of(tx, &period).await?,
        companies: budget_lines(tx, &period, company).await?,
        pending_requests: requests(tx, company, true).await?,
        period_id: period,
    })
}

#[async_trait]
impl BudgetStore for PgStore {
    async fn ensure_period(&self, cfg: &BudgetConfig, now: DateTime<Utc>) -> Result<String> {
        let mut tx = self.pool.begin().await?;
        let p = ensure_period_tx(&mut tx, cfg, now.trunc_subsecs(6), None).await?;
        tx.commit().await?;
        Ok(p)
    }

    async fn refresh_allocations(&self, cfg: &BudgetConfig, now: DateTime<Utc>) -> Result<()> {
        let now = now.trunc_subsecs(6);
        let mut tx = self.pool.begin().await?;
        let p = ensure_period_tx(&mut tx, cfg, now, None).await?;
        refresh_tx(&mut tx, &p, now, None).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn reserve(
        &self,
        scope: &CompanyScope,
        id: &TaskId,
        amount: i64,
        cfg: &BudgetConfig,
        now: DateTime<Utc>,
    ) -> Result<ReserveOutcome> {
        if amount <= 0 {
            return Err(kira_core::ValidationError::new("amount", "must be positive").into());
        }
        let now = now.trunc_subsecs(6);
        let company = scope.company();
        let mut tx = self.scoped(company).await?;
        if !lock_company(&mut tx, company).await? {
            return Err(StoreError::NotFound);
        }
        // Shared: calls of one run may reserve side by side, but the run
        // cannot end (and release everything it holds) until they commit.
        sqlx::query("SELECT 1 FROM task_queue WHERE task_id = $1 AND company_id = $2 FOR SHARE")
            .bind(id.as_str())
            .bind(company.as_str())
            .execute(&mut *tx)
            .await?;
        let task = load_task(&mut tx, company, id, false).await?;
        if task.status != TaskStatus::Running {
            return Err(StoreError::Conflict(format!("task {id} is not running")));
        }
        let outcome =
            match reserve_tx(&mut tx, company, id, task.priority, amount, cfg, now).await? {
                Some(r) => ReserveOutcome::Reserved(r),
                None => ReserveOutcome::Denied {
                    reason: format!(
                        "no pool a {} task may use has {amount} tokens free",
                        task.priority.as_str()
                    ),
                },
            };
        tx.commit().await?;
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
        let now = now.trunc_subsecs(6);
        let usage = Usage {
            prompt_tokens,
            completion_tokens,
            cost_usd,
        };
        let mut tx = self.scoped(scope.company()).await?;
        if !lock_company(&mut tx, scope.company()).await? {
            return Err(StoreError::NotFound);
        }
        settle(&mut tx, scope.company(), reservation_id, &usage, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn resize_reservation(
        &self,
        scope: &CompanyScope,
        reservation_id: &str,
        amount: i64,
        now: DateTime<Utc>,
    ) -> Result<ReserveOutcome> {
        if amount <= 0 {
            return Err(kira_core::ValidationError::new("amount", "must be positive").into());
        }
        let now = now.trunc_subsecs(6);
        let mut tx = self.scoped(scope.company()).await?;
        if !lock_company(&mut tx, scope.company()).await? {
            return Err(StoreError::NotFound);
        }
        let outcome = resize(&mut tx, scope.company(), reservation_id, amount, now).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    async fn release(
        &self,
        scope: &CompanyScope,
        reservation_id: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let now = now.trunc_subsecs(6);
        let mut tx = self.scoped(scope.company()).await?;
        if !lock_company(&mut tx, scope.company()).await? {
            return Err(StoreError::NotFound);
        }
        release(&mut tx, scope.company(), reservation_id, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn budget_state(
        &self,
        _admin: &AdminScope,
        cfg: &BudgetConfig,
        now: DateTime<Utc>,
    ) -> Result<BudgetState> {
        // Made first, in its own transaction: the snapshot that reads the
        // state cannot write without risking a serialization failure.
        let period = self.ensure_period(cfg, now).await?;
        let mut tx = self.snapshot().await?;
        set_admin_read(&mut tx, true).await?;
        let s = state_of(&mut tx, period, None).await?;
        tx.commit().await?;
        Ok(s)
    }

    async fn company_budget(
        &self,
        scope: &CompanyScope,
        cfg: &BudgetConfig,
        now: DateTime<Utc>,
    ) -> Result<BudgetState> {
        let period = self.ensure_period(cfg, now).await?;
        let mut tx = self.snapshot().await?;
        set_company(&mut tx, scope.company().as_str()).await?;
        let s = state_of(&mut tx, period, Some(scope.company())).await?;
        tx.commit().await?;
        Ok(s)
    }

    async fn emergency_requests(
        &self,
        _admin: &AdminScope,
        pending_only: bool,
    ) -> Result<Vec<EmergencyRequest>> {
        let mut tx = self.admin_read().await?;
        let r = requests(&mut tx, None, pending_only).await?;
        tx.commit().await?;
        Ok(r)
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
        // Which company the request belongs to: an admin read. From there
        // on the transaction works as that company.
        let mut tx = self.admin_read().await?;
        let seen = load_request(&mut tx, request_id, false).await?;
        set_admin_read(&mut tx, false).await?;
        set_company(&mut tx, seen.company_id.as_str()).await?;
        if !lock_company(&mut tx, &seen.company_id).await? {
            return Err(StoreError::NotFound);
        }
        sqlx::query("SELECT 1 FROM task_queue WHERE task_id = $1 FOR UPDATE")
            .bind(seen.task_id.as_str())
            .execute(&mut *tx)
            .await?;
        // Read again under the locks: a cancel or another decision may have
        // come first.
        let req = load_request(&mut tx, request_id, true).await?;
        let decider = admin.actor().to_string();
        if let Err(e) = decide_request(&mut tx, &req, approve, note, &decider, now).await {
            // Rolled back now, not when the pool gets to the dropped
            // transaction: until then its lock on the queue row would make
            // a claim skip the task as taken.
            tx.rollback().await?;
            return Err(e);
        }
        if approve {
            notify(&mut tx, &req.task_id).await?;
        }
        // Read before the audit append, which names the record's company.
        let decided = load_request(&mut tx, request_id, false).await?;
        append(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(decided)
    }

    async fn verify_ledger(&self, _admin: &AdminScope) -> Result<LedgerReport> {
        let mut tx = self.snapshot().await?;
        set_admin_read(&mut tx, true).await?;
        let report = replay_ledger(&mut tx).await?;
        tx.commit().await?;
        Ok(report)
    }
}

/// The SQLSTATE the batch functions of `0004_queue_batching.sql` raise when
/// a row is not as their first phase found and locked it (which the locks
/// make a bug, not a race): the batch is rolled back.
const BATCH_CHANGED: &str = "KR001";

/// A batch function's refusal as a Conflict; other errors as they are.
fn batch_error(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.code().as_deref() == Some(BATCH_CHANGED) => {
            StoreError::Conflict(format!("{}; nothing was recorded", d.message()))
        }
        _ => e.into(),
    }
}

/// A time as the batch functions read it from JSON.
fn json_ts(t: DateTime<Utc>) -> String {
    t.trunc_subsecs(6)
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A candidate a batch claim takes from its company's base allocation.
struct FastClaim<'a> {
    c: &'a Candidate,
    from: TaskStatus,
    amount: i64,
    reservation_id: String,
}

#[async_trait]
impl crate::flow::batch::FastPaths for PgStore {
    /// One transaction, two calls: `kira_claim_prepare` locks the company
    /// rows, the claimable queue rows and the allocations and says what it
    /// found; the plan is made here (the admission is the caller's); then
    /// `kira_claim_write` writes it. An allocation of a period not yet made
    /// is missing, so nothing fits and the single claim makes the period.
    async fn claim_fast(
        &self,
        cands: &[Candidate],
        admission: &mut dyn Admission,
        worker: &str,
        lease_until: DateTime<Utc>,
        _budget: &BudgetConfig,
        now: DateTime<Utc>,
        out: &mut Vec<(TaskId, ClaimOutcome)>,
    ) -> Result<usize> {
        let period = period_of(now).id;
        let ids: Vec<&str> = cands.iter().map(|c| c.entry.task_id.as_str()).collect();
        let companies: Vec<&str> = cands.iter().map(|c| c.scope.company().as_str()).collect();
        let mut tx = self.queue.begin().await?;
        let rows = sqlx::query(
            "SELECT id, company, from_status, tokens, granted, free \
             FROM kira_claim_prepare($1, $2, $3, $4)",
        )
        .bind(&ids)
        .bind(&companies)
        .bind(&period)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        // Claimable now and the company's, by id; the locks keep it so.
        let mut claimable = std::collections::HashMap::with_capacity(rows.len());
        // A forecast only: the conditional update in the write decides.
        let mut free: std::collections::HashMap<String, i64> = Default::default();
        for r in &rows {
            let status: &str = r.try_get("from_status")?;
            let company: String = r.try_get("company")?;
            if let Some(f) = r.try_get::<Option<i64>, _>("free")? {
                free.insert(company, f);
            }
            claimable.insert(
                r.try_get::<String, _>("id")?,
                (
                    TaskStatus::parse(status).map_err(|e| corrupt("status", e))?,
                    r.try_get::<i64, _>("tokens")?,
                    r.try_get::<bool, _>("granted")?,
                ),
            );
        }
        let mut fast = Vec::new();
        let mut gone = Vec::new();
        let mut done = 0;
        for c in cands {
            if !admission.free(&c.entry) {
                done += 1;
                continue;
            }
            let Some((from, amount, granted)) = claimable.get(c.entry.task_id.as_str()) else {
                gone.push((fast.len(), c.entry.task_id.clone()));
                done += 1;
                continue;
            };
            let left = free.get_mut(c.scope.company().as_str());
            let fits = matches!(&left, Some(l) if **l >= *amount);
            if *granted || !fits || check_transition(*from, TaskStatus::Running).is_err() {
                break;
            }
            if let Some(l) = left {
                *l -= amount;
            }
            admission.take(&c.entry);
            fast.push(FastClaim {
                c,
                from: *from,
                amount: *amount,
                reservation_id: new_reservation_id(),
            });
            done += 1;
        }
        let mut claimed = BTreeMap::new();
        if !fast.is_empty() {
            let rows: Vec<serde_json::Value> = fast
                .iter()
                .enumerate()
                .map(|(n, f)| {
                    serde_json::json!({
                        "n": n,
                        "id": f.c.entry.task_id.as_str(),
                        "company": f.c.scope.company().as_str(),
                        "amount": f.amount,
                        "rid": f.reservation_id,
                        "from": f.from.as_str(),
                        "reason": format!("claimed by {worker}; {} tokens reserved from base", f.amount),
                    })
                })
                .collect();
            for r in sqlx::query("SELECT * FROM kira_claim_write($1, $2, $3, $4, $5)")
                .bind(Json(&rows))
                .bind(&period)
                .bind(worker)
                .bind(lease_until)
                .bind(now)
                .fetch_all(&mut *tx)
                .await
                .map_err(batch_error)?
            {
                let t = task_from_row(&r)?;
                claimed.insert(t.task_id.as_str().to_owned(), t);
            }
            if claimed.len() != fast.len() {
                return Err(StoreError::Conflict(format!(
                    "a batch claim wrote {} task rows where it expected {}; nothing was claimed",
                    claimed.len(),
                    fast.len()
                )));
            }
        }
        tx.commit().await?;
        if !fast.is_empty() {
            let c = &self.set_based;
            c.claim_batches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            c.claimed
                .fetch_add(fast.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        // The outcomes in rank order: each gone one where it was met.
        let mut gone = gone.into_iter().peekable();
        for (i, f) in fast.iter().enumerate() {
            while let Some((_, id)) = gone.next_if(|(at, _)| *at == i) {
                out.push((id, ClaimOutcome::Gone));
            }
            let task = claimed
                .remove(f.c.entry.task_id.as_str())
                .ok_or_else(|| corrupt("batch claim", "a claimed task was not returned"))?;
            out.push((
                f.c.entry.task_id.clone(),
                ClaimOutcome::Claimed {
                    task: Box::new(task),
                    reservation: Reservation {
                        reservation_id: f.reservation_id.clone(),
                        task_id: f.c.entry.task_id.clone(),
                        company_id: f.c.scope.company().clone(),
                        period_id: period.clone(),
                        pool: Pool::Base,
                        amount: f.amount,
                    },
                },
            ));
        }
        out.extend(gone.map(|(_, id)| (id, ClaimOutcome::Gone)));
        Ok(done)
    }

    /// Records the plain completions (lease held, settlement within its
    /// reservation) in one transaction of two calls (`kira_finish_prepare`
    /// locks and reads, `kira_finish_write` writes); returns the indices of
    /// the others.
    async fn finish_fast(
        &self,
        worker: &str,
        cs: &[Completion],
        now: DateTime<Utc>,
        out: &mut [Option<Completed>],
    ) -> Result<Vec<usize>> {
        let ids: Vec<&str> = cs.iter().map(|c| c.task_id.as_str()).collect();
        let companies: Vec<&str> = cs.iter().map(|c| c.scope.company().as_str()).collect();
        let mut tx = self.queue.begin().await?;
        let rows = sqlx::query(
            "SELECT id, company, reservation_id, period_id, pool, amount \
             FROM kira_finish_prepare($1, $2, $3)",
        )
        .bind(worker)
        .bind(&ids)
        .bind(&companies)
        .fetch_all(&mut *tx)
        .await?;
        // The tasks the worker still runs, each with its company, and what they hold.
        let mut ours: std::collections::HashMap<String, String> = Default::default();
        let mut held: std::collections::HashMap<String, Vec<Reservation>> = Default::default();
        for r in &rows {
            let id: String = r.try_get("id")?;
            let company: String = r.try_get("company")?;
            if let Some(rid) = r.try_get::<Option<String>, _>("reservation_id")? {
                let pool: &str = r.try_get("pool")?;
                held.entry(id.clone()).or_default().push(Reservation {
                    reservation_id: rid,
                    task_id: task_id(&id)?,
                    company_id: super::company_id(&company)?,
                    period_id: r.try_get("period_id")?,
                    pool: Pool::parse(pool).map_err(|e| corrupt("pool", e))?,
                    amount: r.try_get("amount")?,
                });
            }
            ours.insert(id, company);
        }
        let mut slow = Vec::new();
        let mut plan = FinishPlan::default();
        for (i, c) in cs.iter().enumerate() {
            let mine = ours
                .get(c.task_id.as_str())
                .is_some_and(|co| co == c.scope.company().as_str());
            if !mine && c.settle.is_none() {
                out[i] = Some(Completed::NotFinished(StoreError::Conflict(format!(
                    "worker {worker} no longer holds the lease on {}",
                    c.task_id
                ))));
                continue;
            }
            let task_held = held.get(c.task_id.as_str()).map_or(&[][..], Vec::as_slice);
            if !mine || !plan.add(i, c, task_held) {
                slow.push(i);
            }
        }
        if !plan.tasks.is_empty() {
            plan.write(&mut tx, now).await?;
        }
        // What the runs left behind, by company: sessions, then the audit
        // head (see `agents::write_run_records`).
        let mut recorded: Vec<&Completion> = plan
            .tasks
            .iter()
            .map(|(i, _)| &cs[*i])
            .filter(|c| !c.records.is_empty())
            .collect();
        recorded.sort_by(|a, b| a.scope.company().cmp(b.scope.company()));
        for c in &recorded {
            super::agents::write_run_records(&mut tx, c.scope.company(), &c.records, now).await?;
        }
        for c in &recorded {
            super::agents::write_run_memory(&mut tx, c.scope.company(), &c.records).await?;
        }
        tx.commit().await?;
        if !plan.tasks.is_empty() {
            let c = &self.set_based;
            c.finish_batches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            c.finished.fetch_add(
                plan.tasks.len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        for (i, _) in &plan.tasks {
            out[*i] = Some(Completed::Recorded);
        }
        Ok(slow)
    }
}

/// The rows a set of plain completions writes, as `kira_finish_write` reads them.
#[derive(Default)]
struct FinishPlan {
    /// (index in the batch, the task's row changes).
    tasks: Vec<(usize, serde_json::Value)>,
    /// Reservations closed: settled or released.
    closed: Vec<serde_json::Value>,
    /// Balance movements of closed reservations, in ledger order.
    ledger: Vec<serde_json::Value>,
    /// Requeued (retry) and ended tasks' queue rows.
    requeued: Vec<serde_json::Value>,
    ended: Vec<serde_json::Value>,
}

impl FinishPlan {
    /// Adds `c` if it is plain: a legal end, and a settlement (if any) of a
    /// reservation the task holds, within its amount. False otherwise.
    fn add(&mut self, i: usize, c: &Completion, held: &[Reservation]) -> bool {
        let f = &c.finish;
        // Back to waiting for budget gives the attempt back: the slow way.
        if f.status == TaskStatus::WaitingBudget
            || check_transition(TaskStatus::Running, f.status).is_err()
        {
            return false;
        }
        let company = c.scope.company();
        let (mut p, mut k, mut cost) = (0, 0, 0.0);
        let mut settled = None;
        if let Some(s) = &c.settle {
            let Some(r) = held.iter().find(|r| r.reservation_id == s.reservation_id) else {
                return false;
            };
            (p, k, cost) = (
                s.prompt_tokens.max(0),
                s.completion_tokens.max(0),
                s.cost_usd.max(0.0),
            );
            if &r.company_id != company || p + k > r.amount || !cost.is_finite() {
                return false;
            }
            settled = Some((r, p + k));
        }
        let ledger = &mut self.ledger;
        let mut line = |r: &Reservation, kind: &str, amount: i64, detail: &str| {
            let n = ledger.len();
            ledger.push(serde_json::json!({
                "n": n, "period": r.period_id, "company": r.company_id.as_str(), "id": r.task_id.as_str(),
                "rid": r.reservation_id, "pool": r.pool.as_str(), "kind": kind, "amount": amount,
                "detail": detail,
            }));
        };
        if let Some((r, used)) = settled {
            line(r, "settle", used, "");
            if r.amount > used {
                line(r, "release", r.amount - used, "unused");
            }
        }
        for r in held {
            if settled.is_some_and(|(s, _)| s.reservation_id == r.reservation_id) {
                continue;
            }
            line(r, "release", r.amount, "run ended");
        }
        for r in held {
            let (state, spent) = match settled {
                Some((s, used)) if s.reservation_id == r.reservation_id => ("settled", used),
                _ => ("released", 0),
            };
            self.closed.push(serde_json::json!({
                "rid": r.reservation_id, "state": state, "spent": spent, "period": r.period_id,
                "company": r.company_id.as_str(), "pool": r.pool.as_str(), "amount": r.amount,
            }));
        }
        let queue = serde_json::json!({
            "id": c.task_id.as_str(), "company": company.as_str(),
            "not_before": f.retry_at.map(json_ts),
        });
        if f.status == TaskStatus::Queued {
            self.requeued.push(queue);
        } else {
            self.ended.push(queue);
        }
        let n = self.tasks.len();
        self.tasks.push((
            i,
            serde_json::json!({
                "n": n, "id": c.task_id.as_str(), "company": company.as_str(), "result": f.result,
                "confidence": f.confidence, "review": f.requires_human_review, "error": f.error,
                "status": f.status.as_str(), "reason": f.reason,
                "finished": f.status.is_final() || f.status == TaskStatus::NeedsReview,
                "p": p, "c": k, "cost": cost,
            }),
        ));
        true
    }

    /// One call, whatever the number of completions.
    async fn write(&self, tx: &mut PgConnection, now: DateTime<Utc>) -> Result<()> {
        let tasks: Vec<&serde_json::Value> = self.tasks.iter().map(|(_, t)| t).collect();
        let n: i64 = sqlx::query_scalar("SELECT kira_finish_write($1, $2, $3, $4, $5, $6)")
            .bind(now)
            .bind(Json(&self.closed))
            .bind(Json(&self.ledger))
            .bind(Json(&self.ended))
            .bind(Json(&self.requeued))
            .bind(Json(&tasks))
            .fetch_one(&mut *tx)
            .await
            .map_err(batch_error)?;
        if n != tasks.len() as i64 {
            return Err(StoreError::Conflict(format!(
                "a batch finish wrote {n} task rows where it expected {}; nothing was recorded",
                tasks.len()
            )));
        }
        Ok(())
    }
}
