//! Tasks, the queue and budgets on SQLite. Every write runs in a
//! `BEGIN IMMEDIATE` transaction, so SQLite's one writer makes each
//! conditional update see the latest balances.

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
use sqlx::{Row, SqliteConnection};

use super::{
    SqliteStore, append, company_id, json, load_company, parse_opt_ts, parse_ts, to_json, ts,
};
use crate::flow::budget::*;
pub(super) use crate::flow::tasks::{TASK_COLUMNS, event, load_task, set_status, task_from_row};
use crate::work::*;
use crate::{Result, StoreError};

pub(super) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// The period containing `now`, made with its pools and allocations if new.
async fn ensure_period_tx(
    tx: &mut SqliteConnection,
    cfg: &BudgetConfig,
    now: DateTime<Utc>,
) -> Result<String> {
    let p = period_of(now);
    let made = sqlx::query(
        "INSERT INTO budget_periods (period_id, starts_at, ends_at, total_tokens, created_at) VALUES (?, ?, ?, ?, ?) \
         ON CONFLICT (period_id) DO NOTHING",
    )
    .bind(&p.id)
    .bind(ts(p.start))
    .bind(ts(p.end))
    .bind(cfg.total_tokens)
    .bind(ts(now))
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
            sqlx::query("INSERT INTO budget_pools (period_id, pool, capacity) VALUES (?, ?, ?)")
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
        refresh_tx(tx, &p.id, now).await?;
    }
    Ok(p.id)
}

/// Recomputes every company's base allocation in `period`.
async fn refresh_tx(tx: &mut SqliteConnection, period: &str, now: DateTime<Utc>) -> Result<()> {
    let base: i64 = sqlx::query_scalar(
        "SELECT capacity - spent FROM budget_pools WHERE period_id = ? AND pool = 'base'",
    )
    .bind(period)
    .fetch_one(&mut *tx)
    .await?;
    let rows = sqlx::query(
        "SELECT c.company_id, c.revenue_usd, c.complexity_score, c.activity_score, c.archived_at, \
                a.tokens, a.reserved, a.spent \
         FROM companies c LEFT JOIN budget_allocations a ON a.company_id = c.company_id AND a.period_id = ? \
         ORDER BY c.company_id",
    )
    .bind(period)
    .fetch_all(&mut *tx)
    .await?;
    let mut inputs = Vec::with_capacity(rows.len());
    let mut old = Vec::with_capacity(rows.len());
    for r in &rows {
        let factor = allocation_factor(&CompanyFactors {
            revenue_usd: r.try_get("revenue_usd")?,
            complexity_score: r.try_get("complexity_score")?,
            activity_score: r.try_get("activity_score")?,
        });
        let archived: Option<String> = r.try_get("archived_at")?;
        let tokens: Option<i64> = r.try_get("tokens")?;
        let committed = committed(
            tokens,
            r.try_get::<Option<i64>, _>("reserved")?.unwrap_or(0),
            r.try_get::<Option<i64>, _>("spent")?.unwrap_or(0),
        );
        inputs.push(AllocationInput {
            company: company_id(r.try_get("company_id")?)?,
            factor,
            active: archived.is_none(),
            committed,
        });
        old.push(tokens);
    }
    for (a, old) in allocate(base, &inputs).into_iter().zip(old) {
        let delta = a.tokens - old.unwrap_or(0);
        sqlx::query(
            "INSERT INTO budget_allocations (period_id, company_id, factor, share, tokens) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (period_id, company_id) DO UPDATE SET factor = excluded.factor, share = excluded.share, \
             tokens = excluded.tokens",
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
    Ok(())
}

/// Reserves from the first pool `priority` may use that has room, in the
/// period containing `now` (made if new).
async fn reserve_tx(
    tx: &mut SqliteConnection,
    company: &CompanyId,
    task: &TaskId,
    priority: Priority,
    amount: i64,
    cfg: &BudgetConfig,
    now: DateTime<Utc>,
) -> Result<Option<Reservation>> {
    let period = ensure_period_tx(tx, cfg, now).await?;
    reserve_in(tx, &period, company, task, priority, amount, cfg, now).await
}

/// Removes every task-related row of a company, releasing what it holds
/// first so the pools stay right. The ledger keeps its lines.
pub(super) async fn delete_company_work(
    tx: &mut SqliteConnection,
    company: &CompanyId,
    now: DateTime<Utc>,
    deleted: &mut crate::DeletedRows,
) -> Result<()> {
    release_company(tx, company, now, "company deleted").await?;
    // What it spent of the base pool stays spent: it moves to the pool row.
    sqlx::query(
        "UPDATE budget_pools SET spent = spent + COALESCE((SELECT a.spent FROM budget_allocations a \
         WHERE a.period_id = budget_pools.period_id AND a.company_id = ?), 0) WHERE pool = 'base'",
    )
    .bind(company.as_str())
    .execute(&mut *tx)
    .await?;
    crate::flow::company::delete_rows(tx, company, crate::flow::company::WORK_ROWS, deleted)
        .await?;
    Ok(())
}

/// What both of the queue snapshot's statements start from: what runs and
/// the tasks that could start at ?3, given the agents' slots (?1, a JSON
/// object; NULL: every task) and the company limit (?2).
const STARTABLE: &str = "WITH running AS MATERIALIZED (SELECT agent, company_id FROM task_queue WHERE status = 'running'), \
     open_agents(agent) AS (SELECT j.key FROM json_each(?1) j \
       WHERE j.value > (SELECT count(*) FROM running r WHERE r.agent = j.key)), \
     full_companies(company_id) AS (SELECT company_id FROM running GROUP BY company_id HAVING count(*) >= ?2), \
     startable AS NOT MATERIALIZED (SELECT * FROM task_queue \
       WHERE status IN ('queued', 'waiting_budget') AND not_before <= ?3 \
       AND (?1 IS NULL OR (agent IN open_agents AND company_id NOT IN full_companies))) ";

/// A queue entry as JSON, for `json_group_array`.
const ENTRY: &str = "json_array(task_id, company_id, agent, status, priority, multiplier, \
     deadline, waiting_since, estimated_tokens, attempts)";

/// The queue snapshot (see `queue_snapshot`): the ?4 startable tasks
/// waiting longest, and what runs.
static OLDEST_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{STARTABLE} SELECT (SELECT json_group_array({ENTRY} ORDER BY waiting_since, task_id) \
           FROM (SELECT * FROM startable ORDER BY waiting_since, task_id LIMIT ?4)) AS runnable, \
         (SELECT json_group_array(json_array(agent, company_id)) FROM running) AS running"
    )
});

/// Read only when the first window is full: of each priority level the
/// first ?4 startable tasks by multiplier then waiting time, and the ?4
/// nearest deadlines, so a task that outranks the oldest is never hidden
/// behind them. (A statement of its own: SQLite evaluates a subquery
/// under a CASE that does not need it.)
static WINDOWS_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let windows = Priority::ALL
        .iter()
        .map(|p| {
            format!(
                "SELECT * FROM (SELECT * FROM startable WHERE priority = '{}' \
                 ORDER BY multiplier DESC, waiting_since, task_id LIMIT ?4)",
                p.as_str()
            )
        })
        .chain(std::iter::once(
            "SELECT * FROM (SELECT * FROM startable WHERE deadline IS NOT NULL \
             ORDER BY deadline, task_id LIMIT ?4)"
                .to_owned(),
        ))
        .collect::<Vec<_>>()
        .join(" UNION ");
    format!("{STARTABLE} SELECT json_group_array({ENTRY}) AS urgent FROM ({windows})")
});

/// Queue entries from a JSON array of [`ENTRY`]s.
fn queue_entries(text: &str) -> Result<Vec<QueueEntry>> {
    type Entry = (
        String,
        String,
        String,
        String,
        String,
        f64,
        Option<String>,
        String,
        i64,
        i32,
    );
    let entries: Vec<Entry> = json(text)?;
    entries
        .into_iter()
        .map(
            |(
                task,
                company,
                agent,
                status,
                priority,
                multiplier,
                deadline,
                since,
                est,
                attempts,
            )| {
                Ok(QueueEntry {
                    task_id: TaskId::parse(&task).map_err(|e| corrupt("task id", e))?,
                    company_id: company_id(&company)?,
                    agent,
                    status: TaskStatus::parse(&status).map_err(|e| corrupt("status", e))?,
                    priority: Priority::parse(&priority).map_err(|e| corrupt("priority", e))?,
                    multiplier,
                    deadline: parse_opt_ts(deadline)?,
                    waiting_since: parse_ts(&since)?,
                    estimated_tokens: est,
                    attempts,
                })
            },
        )
        .collect()
}

#[async_trait]
impl TaskStore for SqliteStore {
    async fn submit_task(
        &self,
        scope: &CompanyScope,
        new: &NewTask,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Submitted> {
        let now = now.trunc_subsecs(6);
        let company = scope.company();
        let mut tx = self.write().await?;
        if let Some(idem) = &new.idempotency {
            let seen = sqlx::query("SELECT task_id, request_hash FROM tasks WHERE company_id = ? AND idempotency_key = ?")
                .bind(company.as_str())
                .bind(&idem.key)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(row) = seen {
                let hash: Option<String> = row.try_get("request_hash")?;
                if hash.as_deref() != Some(idem.request_hash.as_str()) {
                    return Err(StoreError::Conflict(
                        "this Idempotency-Key was used with a different request".into(),
                    ));
                }
                let id: String = row.try_get("task_id")?;
                let id = TaskId::parse(&id).map_err(|e| corrupt("task id", e))?;
                let task = load_task(&mut tx, company, &id, false).await?;
                return Ok(Submitted {
                    task,
                    created: false,
                });
            }
        }
        load_company(&mut tx, company, false).await?;
        if let Some(limit) = new.open_limit {
            let open: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM task_queue WHERE company_id = ? AND priority = ?",
            )
            .bind(company.as_str())
            .bind(new.priority.as_str())
            .fetch_one(&mut *tx)
            .await?;
            crate::work::check_open_limit(new, open, limit)?;
        }
        let seq: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) + 1 FROM tasks WHERE company_id = ?")
                .bind(company.as_str())
                .fetch_one(&mut *tx)
                .await?;
        let id = TaskId::new(company, &new.label, seq);
        sqlx::query(
            "INSERT INTO tasks (task_id, company_id, seq, task_type, specialist, agent, priority, task, parameters, \
             company_context, deadline, idempotency_key, request_hash, status, status_reason, max_attempts, \
             estimated_tokens, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', 'submitted', ?, ?, ?, ?)",
        )
        .bind(id.as_str())
        .bind(company.as_str())
        .bind(seq)
        .bind(&new.task_type)
        .bind(&new.specialist)
        .bind(&new.agent)
        .bind(new.priority.as_str())
        .bind(&new.task)
        .bind(to_json(&new.parameters)?)
        .bind(to_json(&new.company_context)?)
        .bind(new.deadline.map(|d| ts(d.trunc_subsecs(6))))
        .bind(new.idempotency.as_ref().map(|i| i.key.as_str()))
        .bind(new.idempotency.as_ref().map(|i| i.request_hash.as_str()))
        .bind(new.max_attempts)
        .bind(new.estimated_tokens)
        .bind(ts(now))
        .bind(ts(now))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO task_queue (task_id, company_id, agent, status, priority, multiplier, deadline, waiting_since, \
             not_before, estimated_tokens, attempts) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, 0)",
        )
        .bind(id.as_str())
        .bind(company.as_str())
        .bind(&new.agent)
        .bind(new.priority.as_str())
        .bind(new.multiplier)
        .bind(new.deadline.map(|d| ts(d.trunc_subsecs(6))))
        .bind(ts(now))
        .bind(ts(now))
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
        let audit = AuditRecord {
            target: format!("task:{id}"),
            ..audit
        };
        append(&mut tx, audit).await?;
        let task = load_task(&mut tx, company, &id, false).await?;
        tx.commit().await?;
        Ok(Submitted {
            task,
            created: true,
        })
    }

    async fn get_task(&self, scope: &CompanyScope, id: &TaskId) -> Result<Task> {
        let mut conn = self.pool.acquire().await?;
        load_task(&mut conn, scope.company(), id, false).await
    }

    async fn list_tasks(&self, scope: &CompanyScope, f: &TaskFilter) -> Result<Vec<Task>> {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE company_id = ? \
             AND (? IS NULL OR status = ?) AND (? IS NULL OR priority = ?) AND (? IS NULL OR task_type = ?) \
             AND (? IS NULL OR created_at >= ?) AND (? IS NULL OR created_at < ?) AND (? IS NULL OR seq < ?) \
             ORDER BY seq DESC LIMIT ?"
        );
        let status = f.status.map(TaskStatus::as_str);
        let priority = f.priority.map(Priority::as_str);
        let after = f.created_after.map(ts);
        let before = f.created_before.map(ts);
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(scope.company().as_str())
            .bind(status)
            .bind(status)
            .bind(priority)
            .bind(priority)
            .bind(&f.task_type)
            .bind(&f.task_type)
            .bind(&after)
            .bind(&after)
            .bind(&before)
            .bind(&before)
            .bind(f.before_seq)
            .bind(f.before_seq)
            .bind(i64::from(f.limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(task_from_row).collect()
    }

    async fn task_events(
        &self,
        scope: &CompanyScope,
        id: &TaskId,
        after_event: i64,
    ) -> Result<Vec<TaskEvent>> {
        let mut conn = self.pool.acquire().await?;
        load_task(&mut conn, scope.company(), id, false).await?;
        let rows = sqlx::query(
            "SELECT event_id, task_id, at, from_status, to_status, reason FROM task_events \
             WHERE company_id = ? AND task_id = ? AND event_id > ? ORDER BY event_id",
        )
        .bind(scope.company().as_str())
        .bind(id.as_str())
        .bind(after_event)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|r| {
                let from: Option<String> = r.try_get("from_status")?;
                let to: String = r.try_get("to_status")?;
                Ok(TaskEvent {
                    event_id: r.try_get("event_id")?,
                    task_id: id.clone(),
                    at: parse_ts(r.try_get("at")?)?,
                    from_status: from
                        .as_deref()
                        .map(TaskStatus::parse)
                        .transpose()
                        .map_err(|e| corrupt("status", e))?,
                    to_status: TaskStatus::parse(&to).map_err(|e| corrupt("status", e))?,
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
        let mut tx = self.write().await?;
        let task = load_task(&mut tx, company, id, false).await?;
        if task.status.is_final() {
            return Err(StoreError::Conflict(format!(
                "task {id} already ended: {}",
                task.status.as_str()
            )));
        }
        if task.status == TaskStatus::Running {
            sqlx::query("UPDATE task_queue SET cancel_requested = 1 WHERE task_id = ?")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        } else {
            release_all(&mut tx, company, id, now, "task cancelled").await?;
            sqlx::query(
                "UPDATE emergency_requests SET status = 'rejected', decided_at = ?, decision = 'task cancelled' \
                 WHERE company_id = ? AND task_id = ? AND status = 'pending'",
            )
            .bind(ts(now))
            .bind(company.as_str())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM task_queue WHERE task_id = ?")
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
        append(&mut tx, audit).await?;
        let task = load_task(&mut tx, company, id, false).await?;
        tx.commit().await?;
        Ok(task)
    }

    async fn queue_snapshot(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        capacity: Option<&Capacity>,
    ) -> Result<QueueSnapshot> {
        // One row of JSON arrays: a pass reads hundreds of entries, and each
        // row sqlx hands over is a message between threads. The statements
        // are built once from constants (the priority names).
        let agents = capacity.map(|c| to_json(&c.agents)).transpose()?;
        let per_company = capacity.map(|c| i64::from(c.per_company));
        let row = sqlx::query(sqlx::AssertSqlSafe(OLDEST_SQL.as_str()))
            .bind(agents.as_deref())
            .bind(per_company)
            .bind(ts(now))
            .bind(i64::from(limit))
            .fetch_one(&self.pool)
            .await?;
        let mut runnable = queue_entries(row.try_get("runnable")?)?;
        if runnable.len() >= limit as usize {
            let windows: String = sqlx::query_scalar(sqlx::AssertSqlSafe(WINDOWS_SQL.as_str()))
                .bind(agents.as_deref())
                .bind(per_company)
                .bind(ts(now))
                .bind(i64::from(level_window(limit)))
                .fetch_one(&self.pool)
                .await?;
            add_windows(&mut runnable, queue_entries(&windows)?);
        }
        let running: Vec<(String, String)> = json(row.try_get("running")?)?;
        let running = running
            .into_iter()
            .map(|(agent, company)| Ok((agent, company_id(&company)?)))
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
        let mut tx = self.write().await?;
        let n = sqlx::query(
            "UPDATE task_queue SET status = 'running', lease_owner = ?, lease_expires_at = ?, attempts = attempts + 1 \
             WHERE task_id = ? AND company_id = ? AND status IN ('queued', 'waiting_budget') AND not_before <= ?",
        )
        .bind(worker)
        .bind(ts(lease_until))
        .bind(id.as_str())
        .bind(company.as_str())
        .bind(ts(now))
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
            return self.wait_for_budget(tx, task, budget, now).await;
        };
        let reason = format!(
            "claimed by {worker}; {} tokens reserved from {}",
            reservation.amount,
            reservation.pool.as_str()
        );
        check_transition(task.status, TaskStatus::Running)
            .map_err(|e| StoreError::Conflict(e.to_string()))?;
        // One statement moves it to running and reads it back.
        let sql = format!(
            "UPDATE tasks SET status = 'running', status_reason = ?, updated_at = ?, attempts = attempts + 1, \
             started_at = COALESCE(started_at, ?) WHERE company_id = ? AND task_id = ? RETURNING {TASK_COLUMNS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&reason)
            .bind(ts(now))
            .bind(ts(now))
            .bind(company.as_str())
            .bind(id.as_str())
            .fetch_one(&mut *tx)
            .await?;
        event(
            &mut tx,
            company,
            id,
            Some(task.status),
            TaskStatus::Running,
            &reason,
            now,
        )
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
        let mut tx = self.write().await?;
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
        let mut tx = self.write().await?;
        let n = sqlx::query(
            "UPDATE task_queue SET lease_expires_at = ? WHERE task_id = ? AND lease_owner = ? AND status = 'running' \
             AND lease_expires_at >= ?",
        )
        .bind(ts(lease_until))
        .bind(id.as_str())
        .bind(worker)
        .bind(ts(now))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let cancel: Option<bool> =
            sqlx::query_scalar("SELECT cancel_requested FROM task_queue WHERE task_id = ?")
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
        let mut tx = self.write().await?;
        let mut audits = Vec::new();
        super::agents::write_run_records(&mut tx, scope.company(), records, now, &mut audits)
            .await?;
        super::append_many(&mut tx, audits).await?;
        tx.commit().await
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
        let mut tx = self.write().await?;
        let ours: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM task_queue WHERE task_id = ? AND company_id = ? AND lease_owner = ? AND status = 'running'",
        )
        .bind(id.as_str())
        .bind(company.as_str())
        .bind(worker)
        .fetch_optional(&mut *tx)
        .await?;
        if ours.is_none() {
            return Err(StoreError::Conflict(format!(
                "worker {worker} no longer holds the lease on {id}"
            )));
        }
        // A running lease of ours means the task is running.
        check_transition(TaskStatus::Running, f.status)
            .map_err(|e| StoreError::Conflict(e.to_string()))?;
        release_all(&mut tx, company, id, now, "run ended").await?;
        if f.status == TaskStatus::Queued {
            sqlx::query(
                "UPDATE task_queue SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL, not_before = ? WHERE task_id = ?",
            )
            .bind(ts(f.retry_at.unwrap_or(now)))
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        } else if f.status == TaskStatus::WaitingBudget {
            // The run never reached the model: the claim's attempt is given back.
            sqlx::query(
                "UPDATE task_queue SET status = 'waiting_budget', lease_owner = NULL, lease_expires_at = NULL, \
                 not_before = ?, attempts = MAX(attempts - 1, 0) WHERE task_id = ?",
            )
            .bind(ts(f.retry_at.unwrap_or(now)))
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE tasks SET attempts = MAX(attempts - 1, 0) WHERE company_id = ? AND task_id = ?",
            )
            .bind(company.as_str())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query("DELETE FROM task_queue WHERE task_id = ?")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        // One statement records the end and reads the task back.
        let finished = f.status.is_final() || f.status == TaskStatus::NeedsReview;
        let sql = format!(
            "UPDATE tasks SET result = ?, confidence = ?, requires_human_review = ?, last_error = COALESCE(?, last_error), \
             status = ?, status_reason = ?, updated_at = ?, finished_at = CASE WHEN ? THEN ? ELSE finished_at END \
             WHERE company_id = ? AND task_id = ? RETURNING {TASK_COLUMNS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(f.result.as_ref().map(to_json).transpose()?)
            .bind(f.confidence)
            .bind(f.requires_human_review)
            .bind(&f.error)
            .bind(f.status.as_str())
            .bind(&f.reason)
            .bind(ts(now))
            .bind(finished)
            .bind(ts(now))
            .bind(company.as_str())
            .bind(id.as_str())
            .fetch_one(&mut *tx)
            .await?;
        event(
            &mut tx,
            company,
            id,
            Some(TaskStatus::Running),
            f.status,
            &f.reason,
            now,
        )
        .await?;
        let task = task_from_row(&row)?;
        tx.commit().await?;
        Ok(task)
    }

    async fn reap_expired(&self, now: DateTime<Utc>, backoff: TimeDelta) -> Result<Vec<TaskId>> {
        let now = now.trunc_subsecs(6);
        let expired = sqlx::query(
            "SELECT task_id, company_id, lease_owner FROM task_queue WHERE status = 'running' AND lease_expires_at < ?",
        )
        .bind(ts(now))
        .fetch_all(&self.pool)
        .await?;
        let mut reaped = Vec::new();
        for row in expired {
            let id: String = row.try_get("task_id")?;
            let id = TaskId::parse(&id).map_err(|e| corrupt("task id", e))?;
            let company = company_id(row.try_get("company_id")?)?;
            let owner: Option<String> = row.try_get("lease_owner")?;
            let mut tx = self.write().await?;
            let still: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM task_queue WHERE task_id = ? AND status = 'running' AND lease_expires_at < ?",
            )
            .bind(id.as_str())
            .bind(ts(now))
            .fetch_optional(&mut *tx)
            .await?;
            if still.is_none() {
                continue;
            }
            let task = load_task(&mut tx, &company, &id, false).await?;
            let owner = owner.unwrap_or_default();
            release_all(&mut tx, &company, &id, now, "lease expired").await?;
            if task.attempts >= task.max_attempts {
                sqlx::query("DELETE FROM task_queue WHERE task_id = ?")
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
                let reason = format!(
                    "the lease of worker {owner} expired on attempt {} of {}",
                    task.attempts, task.max_attempts
                );
                sqlx::query("UPDATE tasks SET last_error = ? WHERE company_id = ? AND task_id = ?")
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
                    "UPDATE task_queue SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL, not_before = ? WHERE task_id = ?",
                )
                .bind(ts(now + wait))
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
                let reason = format!(
                    "the lease of worker {owner} expired; retry {} of {}",
                    task.attempts + 1,
                    task.max_attempts
                );
                set_status(&mut tx, &task, TaskStatus::Queued, &reason, now).await?;
            }
            tx.commit().await?;
            reaped.push(id);
        }
        Ok(reaped)
    }
}

impl SqliteStore {
    /// No pool had room: the task waits for budget, or for a human to grant
    /// emergency tokens if its level may ask.
    async fn wait_for_budget(
        &self,
        mut tx: super::Tx,
        task: Task,
        cfg: &BudgetConfig,
        now: DateTime<Utc>,
    ) -> Result<ClaimOutcome> {
        let (company, id) = (&task.company_id, &task.task_id);
        // The claim counted an attempt that did not happen.
        sqlx::query("UPDATE task_queue SET lease_owner = NULL, lease_expires_at = NULL, attempts = attempts - 1 WHERE task_id = ?")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        let outcome = if may_request_emergency(task.priority, cfg) {
            let period = ensure_period_tx(&mut tx, cfg, now).await?;
            let request_id = new_reservation_id();
            let reason = format!(
                "base and burst cannot hold {} tokens for this {} task",
                task.estimated_tokens,
                task.priority.as_str()
            );
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO emergency_requests ({REQUEST_COLUMNS}) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, NULL, NULL, NULL)"
            )))
            .bind(&request_id)
            .bind(company.as_str())
            .bind(id.as_str())
            .bind(&period)
            .bind(task.estimated_tokens)
            .bind(&reason)
            .bind(ts(now))
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE task_queue SET status = 'awaiting_approval' WHERE task_id = ?")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
            if task.status != TaskStatus::AwaitingApproval {
                set_status(
                    &mut tx,
                    &task,
                    TaskStatus::AwaitingApproval,
                    &format!("emergency request {request_id}: {reason}"),
                    now,
                )
                .await?;
            }
            ClaimOutcome::AwaitingApproval { request_id }
        } else {
            let reason = format!(
                "no pool a {} task may use has {} tokens free",
                task.priority.as_str(),
                task.estimated_tokens
            );
            sqlx::query(
                "UPDATE task_queue SET status = 'waiting_budget', not_before = ? WHERE task_id = ?",
            )
            .bind(ts(now + crate::work::WAITING_BUDGET_RECHECK))
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
            if task.status != TaskStatus::WaitingBudget {
                set_status(&mut tx, &task, TaskStatus::WaitingBudget, &reason, now).await?;
            }
            ClaimOutcome::WaitingBudget { reason }
        };
        tx.commit().await?;
        Ok(outcome)
    }
}

async fn pools_of(tx: &mut SqliteConnection, period: &str) -> Result<Vec<PoolState>> {
    let sql = format!(
        "SELECT pool, capacity, reserved, spent FROM ({POOL_BALANCES}) WHERE period_id = ? ORDER BY pool"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(period)
        .fetch_all(&mut *tx)
        .await?;
    rows.iter()
        .map(|r| {
            let pool: String = r.try_get("pool")?;
            let capacity = r.try_get("capacity")?;
            let reserved = r.try_get("reserved")?;
            let spent = r.try_get("spent")?;
            Ok(PoolState {
                pool: Pool::parse(&pool).map_err(|e| corrupt("pool", e))?,
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
    tx: &mut SqliteConnection,
    period: &str,
    company: Option<&CompanyId>,
) -> Result<Vec<CompanyBudget>> {
    let c = company.map(CompanyId::as_str);
    let rows = sqlx::query(
        "SELECT a.company_id, a.factor, a.share, a.tokens, a.reserved, a.spent, \
           (SELECT COALESCE(SUM(r.spent), 0) FROM reservations r \
             WHERE r.company_id = a.company_id AND r.period_id = a.period_id AND r.state = 'settled') AS spent_all, \
           (SELECT TOTAL(t.cost_usd) FROM tasks t WHERE t.company_id = a.company_id) AS cost \
         FROM budget_allocations a WHERE a.period_id = ? AND (? IS NULL OR a.company_id = ?) ORDER BY a.company_id",
    )
    .bind(period)
    .bind(c)
    .bind(c)
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
    tx: &mut SqliteConnection,
    company: Option<&CompanyId>,
    pending_only: bool,
) -> Result<Vec<EmergencyRequest>> {
    let c = company.map(CompanyId::as_str);
    let sql = format!(
        "SELECT {REQUEST_COLUMNS} FROM emergency_requests WHERE (? IS NULL OR company_id = ?) \
         AND (NOT ? OR status = 'pending') ORDER BY requested_at, request_id"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(c)
        .bind(c)
        .bind(pending_only)
        .fetch_all(&mut *tx)
        .await?;
    rows.iter().map(request_from_row).collect()
}

async fn state_of(
    tx: &mut SqliteConnection,
    cfg: &BudgetConfig,
    now: DateTime<Utc>,
    company: Option<&CompanyId>,
) -> Result<BudgetState> {
    let period = ensure_period_tx(tx, cfg, now).await?;
    let row = sqlx::query(
        "SELECT starts_at, ends_at, total_tokens FROM budget_periods WHERE period_id = ?",
    )
    .bind(&period)
    .fetch_one(&mut *tx)
    .await?;
    Ok(BudgetState {
        starts_at: parse_ts(row.try_get("starts_at")?)?,
        ends_at: parse_ts(row.try_get("ends_at")?)?,
        total_tokens: row.try_get("total_tokens")?,
        pools: pools_of(tx, &period).await?,
        companies: budget_lines(tx, &period, company).await?,
        pending_requests: requests(tx, company, true).await?,
        period_id: period,
    })
}

#[async_trait]
impl BudgetStore for SqliteStore {
    async fn ensure_period(&self, cfg: &BudgetConfig, now: DateTime<Utc>) -> Result<String> {
        let mut tx = self.write().await?;
        let p = ensure_period_tx(&mut tx, cfg, now.trunc_subsecs(6)).await?;
        tx.commit().await?;
        Ok(p)
    }

    async fn refresh_allocations(&self, cfg: &BudgetConfig, now: DateTime<Utc>) -> Result<()> {
        let now = now.trunc_subsecs(6);
        let mut tx = self.write().await?;
        let p = ensure_period_tx(&mut tx, cfg, now).await?;
        refresh_tx(&mut tx, &p, now).await?;
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
        let mut tx = self.write().await?;
        let task = load_task(&mut tx, scope.company(), id, false).await?;
        if task.status != TaskStatus::Running {
            return Err(StoreError::Conflict(format!("task {id} is not running")));
        }
        let outcome = match reserve_tx(
            &mut tx,
            scope.company(),
            id,
            task.priority,
            amount,
            cfg,
            now,
        )
        .await?
        {
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
        let mut tx = self.write().await?;
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
        let mut tx = self.write().await?;
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
        let mut tx = self.write().await?;
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
        let mut tx = self.write().await?;
        let s = state_of(&mut tx, cfg, now.trunc_subsecs(6), None).await?;
        tx.commit().await?;
        Ok(s)
    }

    async fn company_budget(
        &self,
        scope: &CompanyScope,
        cfg: &BudgetConfig,
        now: DateTime<Utc>,
    ) -> Result<BudgetState> {
        let mut tx = self.write().await?;
        let s = state_of(&mut tx, cfg, now.trunc_subsecs(6), Some(scope.company())).await?;
        tx.commit().await?;
        Ok(s)
    }

    async fn emergency_requests(
        &self,
        _admin: &AdminScope,
        pending_only: bool,
    ) -> Result<Vec<EmergencyRequest>> {
        let mut conn = self.pool.acquire().await?;
        requests(&mut conn, None, pending_only).await
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
        let mut tx = self.write().await?;
        let req = load_request(&mut tx, request_id, false).await?;
        let decider = admin.actor().to_string();
        decide_request(&mut tx, &req, approve, note, &decider, now).await?;
        append(&mut tx, audit).await?;
        let decided = load_request(&mut tx, request_id, false).await?;
        tx.commit().await?;
        Ok(decided)
    }

    async fn verify_ledger(&self, _admin: &AdminScope) -> Result<LedgerReport> {
        // One transaction: the balances cannot move while they are compared.
        let mut tx = self.write().await?;
        let report = replay_ledger(&mut tx).await?;
        tx.commit().await?;
        Ok(report)
    }
}

/// A candidate a batch claim takes from its company's base allocation.
struct FastClaim<'a> {
    c: &'a Candidate,
    from: TaskStatus,
    amount: i64,
    reservation_id: String,
}

#[async_trait]
impl crate::flow::batch::FastPaths for SqliteStore {
    #[allow(clippy::too_many_arguments)]
    async fn claim_fast(
        &self,
        cands: &[Candidate],
        admission: &mut dyn Admission,
        worker: &str,
        lease_until: DateTime<Utc>,
        budget: &BudgetConfig,
        now: DateTime<Utc>,
        out: &mut Vec<(TaskId, ClaimOutcome)>,
    ) -> Result<usize> {
        let mut tx = self.write().await?;
        let ids: Vec<&str> = cands.iter().map(|c| c.entry.task_id.as_str()).collect();
        let ids = to_json(&ids)?;
        // What each candidate is now (the write lock keeps it so until commit).
        // The unary `+` keeps SQLite on the primary key: the status index
        // would scan every queued task for each batch.
        let rows = sqlx::query(
            "SELECT q.task_id, q.company_id, q.status, q.estimated_tokens, \
               EXISTS (SELECT 1 FROM reservations r WHERE r.task_id = q.task_id AND r.state = 'held') AS granted \
             FROM task_queue q WHERE q.task_id IN (SELECT value FROM json_each(?)) \
             AND +q.status IN ('queued', 'waiting_budget') AND +q.not_before <= ?",
        )
        .bind(&ids)
        .bind(ts(now))
        .fetch_all(&mut *tx)
        .await?;
        let mut now_claimable = std::collections::HashMap::with_capacity(rows.len());
        for r in &rows {
            let status: String = r.try_get("status")?;
            now_claimable.insert(
                r.try_get::<String, _>("task_id")?,
                (
                    r.try_get::<String, _>("company_id")?,
                    TaskStatus::parse(&status).map_err(|e| corrupt("status", e))?,
                    r.try_get::<i64, _>("estimated_tokens")?,
                    r.try_get::<bool, _>("granted")?,
                ),
            );
        }
        let period = ensure_period_tx(&mut tx, budget, now).await?;
        let companies: Vec<&str> = cands.iter().map(|c| c.scope.company().as_str()).collect();
        // A forecast only: the conditional update below decides.
        let mut free: std::collections::HashMap<String, i64> = sqlx::query(
            "SELECT company_id, tokens - reserved - spent AS free FROM budget_allocations \
             WHERE period_id = ? AND company_id IN (SELECT value FROM json_each(?))",
        )
        .bind(&period)
        .bind(to_json(&companies)?)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("company_id")?, r.try_get("free")?)))
        .collect::<Result<_>>()?;
        let mut fast = Vec::new();
        let mut gone = Vec::new();
        let mut done = 0;
        for c in cands {
            if !admission.free(&c.entry) {
                done += 1;
                continue;
            }
            let company = c.scope.company().as_str();
            let Some((owner, from, amount, granted)) = now_claimable.get(c.entry.task_id.as_str())
            else {
                gone.push((fast.len(), c.entry.task_id.clone()));
                done += 1;
                continue;
            };
            let left = free.get_mut(company);
            let fits = matches!(&left, Some(l) if **l >= *amount);
            if owner != company
                || *granted
                || !fits
                || check_transition(*from, TaskStatus::Running).is_err()
            {
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
        let mut claimed = if fast.is_empty() {
            BTreeMap::new()
        } else {
            claim_set(&mut tx, &fast, &period, worker, lease_until, now).await?
        };
        tx.commit().await?;
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
    /// reservation) in one transaction; returns the indices of the others.
    async fn finish_fast(
        &self,
        worker: &str,
        cs: &[Completion],
        now: DateTime<Utc>,
        out: &mut [Option<Completed>],
    ) -> Result<Vec<usize>> {
        let mut tx = self.write().await?;
        let ids: Vec<&str> = cs.iter().map(|c| c.task_id.as_str()).collect();
        let ids = to_json(&ids)?;
        // One read: which of them are still ours, what they hold, and the
        // audit chain's head (the writer turn keeps all three until commit).
        let row = sqlx::query(
            "SELECT (SELECT json_group_array(json_array(task_id, company_id)) FROM task_queue \
               WHERE task_id IN (SELECT value FROM json_each(?1)) AND +lease_owner = ?2 AND +status = 'running') AS ours, \
             (SELECT json_group_array(json_array(reservation_id, task_id, company_id, period_id, pool, amount) \
               ORDER BY created_at, reservation_id) FROM reservations \
               WHERE task_id IN (SELECT value FROM json_each(?1)) AND state = 'held') AS held, \
             (SELECT json_array(seq, hash) FROM audit_head WHERE id = 1) AS head",
        )
        .bind(&ids)
        .bind(worker)
        .fetch_one(&mut *tx)
        .await?;
        let ours: std::collections::HashMap<String, String> =
            json::<Vec<(String, String)>>(row.try_get("ours")?)?
                .into_iter()
                .collect();
        type Held = (String, String, String, String, String, i64);
        let mut held: std::collections::HashMap<String, Vec<Reservation>> = Default::default();
        for (rid, task, company, period, pool, amount) in json::<Vec<Held>>(row.try_get("held")?)? {
            let r = Reservation {
                reservation_id: rid,
                task_id: TaskId::parse(&task).map_err(|e| corrupt("task id", e))?,
                company_id: company_id(&company)?,
                period_id: period,
                pool: Pool::parse(&pool).map_err(|e| corrupt("pool", e))?,
                amount,
            };
            held.entry(task).or_default().push(r);
        }
        let head: (i64, String) = json(row.try_get("head")?)?;
        let mut slow = Vec::new();
        let mut plan = FinishPlan::default();
        for (i, c) in cs.iter().enumerate() {
            let company = c.scope.company();
            let mine = ours.get(c.task_id.as_str()) == Some(&company.as_str().to_owned());
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
        // The rest is one command: the ends, the runs' records and the
        // audit entries of their memories.
        let mut script = super::Script::default();
        if !plan.tasks.is_empty() {
            plan.push(&mut script, now)?;
        }
        let runs: Vec<super::agents::RunWrite<'_>> = plan
            .tasks
            .iter()
            .map(|(i, _)| &cs[*i])
            .filter(|c| !c.records.is_empty())
            .map(|c| super::agents::RunWrite {
                company: c.scope.company(),
                task: Some(&c.task_id),
                records: &c.records,
            })
            .collect();
        let mut audits = Vec::new();
        super::agents::push_run_records(&mut script, &runs, now, &mut audits)?;
        super::push_audits(&mut script, head, audits)?;
        script.run(&mut tx).await?;
        tx.commit().await?;
        for (i, _) in &plan.tasks {
            out[*i] = Some(Completed::Recorded);
        }
        Ok(slow)
    }
}

/// Writes the fast claims: queue rows, base allocations, reservations,
/// ledger, task rows and events, one statement each. Returns the tasks as
/// claimed, by id.
async fn claim_set(
    tx: &mut SqliteConnection,
    fast: &[FastClaim<'_>],
    period: &str,
    worker: &str,
    lease_until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<BTreeMap<String, Task>> {
    let rows: Vec<serde_json::Value> = fast
        .iter()
        .map(|f| {
            serde_json::json!({
                "id": f.c.entry.task_id.as_str(),
                "company": f.c.scope.company().as_str(),
                "amount": f.amount,
                "rid": f.reservation_id,
                "from": f.from.as_str(),
                "reason": format!("claimed by {worker}; {} tokens reserved from base", f.amount),
            })
        })
        .collect();
    let rows = to_json(&rows)?;
    let companies = fast
        .iter()
        .map(|f| f.c.scope.company())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    // One command; a count that is off fails the claim and the caller's
    // transaction rolls back, so nothing of it is claimed.
    let mut script = super::Script::default();
    script.push(
        "UPDATE task_queue SET status = 'running', lease_owner = ?, lease_expires_at = ?, attempts = attempts + 1 \
         WHERE (task_id, company_id) IN (SELECT value ->> 'id', value ->> 'company' FROM json_each(?)) \
         AND +status IN ('queued', 'waiting_budget') AND +not_before <= ?;",
        [worker.to_owned(), ts(lease_until), rows.clone(), ts(now)],
        Some((fast.len() as u64, "a batch claim found other claimable tasks")),
    );
    // The reservation: one conditional update per company, for the sum.
    script.push(
        "UPDATE budget_allocations SET reserved = budget_allocations.reserved + j.amount \
         FROM (SELECT value ->> 'company' AS company, SUM(value ->> 'amount') AS amount \
               FROM json_each(?) GROUP BY 1) AS j \
         WHERE budget_allocations.period_id = ? AND budget_allocations.company_id = j.company \
         AND budget_allocations.reserved + budget_allocations.spent + j.amount <= budget_allocations.tokens;",
        [rows.clone(), period.to_owned()],
        Some((companies as u64, "a batch claim found other allocations with room")),
    );
    script.push(
        "INSERT INTO reservations (reservation_id, company_id, task_id, period_id, pool, amount, state, created_at) \
         SELECT value ->> 'rid', value ->> 'company', value ->> 'id', ?, 'base', value ->> 'amount', 'held', ? \
         FROM json_each(?) ORDER BY key;",
        [period.to_owned(), ts(now), rows.clone()],
        None,
    );
    script.push(
        "INSERT INTO budget_ledger (at, period_id, company_id, task_id, reservation_id, pool, kind, amount, detail) \
         SELECT ?, ?, value ->> 'company', value ->> 'id', value ->> 'rid', 'base', 'reserve', value ->> 'amount', '' \
         FROM json_each(?) ORDER BY key;",
        [ts(now), period.to_owned(), rows.clone()],
        None,
    );
    let claim_tasks = format!(
        "UPDATE tasks SET status = 'running', status_reason = j.reason, updated_at = ?, attempts = attempts + 1, \
         started_at = COALESCE(started_at, ?) \
         FROM (SELECT value ->> 'id' AS id, value ->> 'company' AS company, value ->> 'reason' AS reason \
               FROM json_each(?)) AS j \
         WHERE tasks.company_id = j.company AND tasks.task_id = j.id RETURNING {TASK_COLUMNS};"
    );
    script.push(
        &claim_tasks,
        [ts(now), ts(now), rows.clone()],
        Some((fast.len() as u64, "a batch claim found other task rows")),
    );
    script.push(
        "INSERT INTO task_events (company_id, task_id, at, from_status, to_status, reason) \
         SELECT value ->> 'company', value ->> 'id', ?, value ->> 'from', 'running', value ->> 'reason' \
         FROM json_each(?) ORDER BY key;",
        [ts(now), rows],
        None,
    );
    let mut returned = script.run(tx).await?;
    let tasks = returned
        .get_mut(4)
        .map(std::mem::take)
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let t = task_from_row(r)?;
            Ok((t.task_id.as_str().to_owned(), t))
        })
        .collect::<Result<BTreeMap<_, _>>>()?;
    Ok(tasks)
}

/// The rows a set of plain completions writes.
#[derive(Default)]
struct FinishPlan {
    /// (index in the batch, the task's row changes).
    tasks: Vec<(usize, serde_json::Value)>,
    /// Reservations closed: settled or released.
    closed: Vec<serde_json::Value>,
    /// Balance deltas of closed reservations, in ledger order.
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
        let result = match f.result.as_ref().map(serde_json::to_string).transpose() {
            Ok(r) => r,
            Err(_) => return false,
        };
        let mut line = |r: &Reservation, kind: &str, amount: i64, detail: &str| {
            self.ledger.push(serde_json::json!({
                "period": r.period_id, "company": r.company_id.as_str(), "id": r.task_id.as_str(),
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
            "not_before": f.retry_at.map(|t| ts(t.trunc_subsecs(6))),
        });
        if f.status == TaskStatus::Queued {
            self.requeued.push(queue);
        } else {
            self.ended.push(queue);
        }
        self.tasks.push((
            i,
            serde_json::json!({
                "id": c.task_id.as_str(), "company": company.as_str(), "result": result,
                "confidence": f.confidence, "review": f.requires_human_review, "error": f.error,
                "status": f.status.as_str(), "reason": f.reason,
                "finished": f.status.is_final() || f.status == TaskStatus::NeedsReview,
                "p": p, "c": k, "cost": cost,
            }),
        ));
        true
    }

    /// One statement per table, whatever the number of completions, added
    /// to `script`: the statements are independent of each other's
    /// results, only their row counts are checked.
    fn push(&self, script: &mut super::Script, now: DateTime<Utc>) -> Result<()> {
        if !self.closed.is_empty() {
            let closed = to_json(&self.closed)?;
            script.push(
                "UPDATE reservations SET state = j.state, spent = j.spent, closed_at = ? \
                 FROM (SELECT value ->> 'rid' AS rid, value ->> 'state' AS state, value ->> 'spent' AS spent \
                       FROM json_each(?)) AS j \
                 WHERE reservations.reservation_id = j.rid AND reservations.state = 'held';",
                [ts(now), closed.clone()],
                Some((
                    self.closed.len() as u64,
                    "a reservation changed during a batch finish",
                )),
            );
            // The balances: base on the companies' allocations, the others on
            // their pool rows, as move_tokens does one by one.
            script.push(
                "UPDATE budget_allocations SET reserved = budget_allocations.reserved - j.amount, spent = budget_allocations.spent + j.spent \
                 FROM (SELECT value ->> 'period' AS period, value ->> 'company' AS company, \
                         SUM(value ->> 'amount') AS amount, SUM(value ->> 'spent') AS spent \
                       FROM json_each(?) WHERE value ->> 'pool' = 'base' GROUP BY 1, 2) AS j \
                 WHERE budget_allocations.period_id = j.period AND budget_allocations.company_id = j.company;",
                [closed.clone()],
                None,
            );
            script.push(
                "UPDATE budget_pools SET reserved = budget_pools.reserved - j.amount, spent = budget_pools.spent + j.spent \
                 FROM (SELECT value ->> 'period' AS period, value ->> 'pool' AS pool, \
                         SUM(value ->> 'amount') AS amount, SUM(value ->> 'spent') AS spent \
                       FROM json_each(?) WHERE value ->> 'pool' <> 'base' GROUP BY 1, 2) AS j \
                 WHERE budget_pools.period_id = j.period AND budget_pools.pool = j.pool;",
                [closed],
                None,
            );
            script.push(
                "INSERT INTO budget_ledger (at, period_id, company_id, task_id, reservation_id, pool, kind, amount, detail) \
                 SELECT ?, value ->> 'period', value ->> 'company', value ->> 'id', value ->> 'rid', value ->> 'pool', \
                   value ->> 'kind', value ->> 'amount', value ->> 'detail' FROM json_each(?) ORDER BY key;",
                [ts(now), to_json(&self.ledger)?],
                None,
            );
        }
        if !self.ended.is_empty() {
            script.push(
                "DELETE FROM task_queue \
                 WHERE (task_id, company_id) IN (SELECT value ->> 'id', value ->> 'company' FROM json_each(?));",
                [to_json(&self.ended)?],
                None,
            );
        }
        if !self.requeued.is_empty() {
            script.push(
                "UPDATE task_queue SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL, \
                   not_before = COALESCE(j.not_before, ?) \
                 FROM (SELECT value ->> 'id' AS id, value ->> 'company' AS company, value ->> 'not_before' AS not_before \
                       FROM json_each(?)) AS j \
                 WHERE task_queue.task_id = j.id AND task_queue.company_id = j.company;",
                [ts(now), to_json(&self.requeued)?],
                None,
            );
        }
        let tasks: Vec<&serde_json::Value> = self.tasks.iter().map(|(_, t)| t).collect();
        let tasks = to_json(&tasks)?;
        script.push(
            "UPDATE tasks SET result = j.result, confidence = j.confidence, requires_human_review = j.review, \
               last_error = COALESCE(j.error, last_error), status = j.status, status_reason = j.reason, \
               updated_at = ?, finished_at = CASE WHEN j.finished THEN ? ELSE finished_at END, \
               prompt_tokens = prompt_tokens + j.p, completion_tokens = completion_tokens + j.c, \
               cost_usd = cost_usd + j.cost \
             FROM (SELECT value ->> 'id' AS id, value ->> 'company' AS company, value ->> 'result' AS result, \
                     value ->> 'confidence' AS confidence, value ->> 'review' AS review, value ->> 'error' AS error, \
                     value ->> 'status' AS status, value ->> 'reason' AS reason, value ->> 'finished' AS finished, \
                     value ->> 'p' AS p, value ->> 'c' AS c, value ->> 'cost' AS cost FROM json_each(?)) AS j \
             WHERE tasks.company_id = j.company AND tasks.task_id = j.id;",
            [ts(now), ts(now), tasks.clone()],
            Some((
                self.tasks.len() as u64,
                "a task row was missing in a batch finish",
            )),
        );
        script.push(
            "INSERT INTO task_events (company_id, task_id, at, from_status, to_status, reason) \
             SELECT value ->> 'company', value ->> 'id', ?, 'running', value ->> 'status', value ->> 'reason' \
             FROM json_each(?) ORDER BY key;",
            [ts(now), tasks],
            None,
        );
        Ok(())
    }
}
