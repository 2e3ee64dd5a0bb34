//! Task rows and their state changes, written once for both backends.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use kira_core::CompanyId;
use kira_core::task::{Priority, Task, TaskId, TaskStatus, check_transition};

use crate::sql::{Columns, Conn, q};
use crate::{Result, StoreError};

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// The columns [`task_from_row`] reads.
pub(crate) const TASK_COLUMNS: &str = "task_id, company_id, seq, task_type, specialist, agent, priority, task, parameters, \
     company_context, deadline, status, status_reason, attempts, max_attempts, estimated_tokens, result, \
     confidence, requires_human_review, last_error, prompt_tokens, completion_tokens, cost_usd, created_at, \
     updated_at, started_at, finished_at";

pub(crate) fn task_from_row<R: Columns + ?Sized>(r: &R) -> Result<Task> {
    let task_id = r.text("task_id")?;
    let company = r.text("company_id")?;
    let priority = r.text("priority")?;
    let status = r.text("status")?;
    Ok(Task {
        task_id: TaskId::parse(&task_id).map_err(|e| corrupt("task id", e))?,
        company_id: CompanyId::parse(&company).map_err(|e| corrupt("company id", e))?,
        company_context: r.json("company_context")?,
        task: r.text("task")?,
        task_type: r.text("task_type")?,
        priority: Priority::parse(&priority).map_err(|e| corrupt("priority", e))?,
        deadline: r.opt_time("deadline")?,
        parameters: r.json("parameters")?,
        specialist: r.opt_text("specialist")?,
        agent: r.text("agent")?,
        status: TaskStatus::parse(&status).map_err(|e| corrupt("status", e))?,
        status_reason: r.text("status_reason")?,
        attempts: r.int32("attempts")?,
        max_attempts: r.int32("max_attempts")?,
        estimated_tokens: r.int("estimated_tokens")?,
        result: r.opt_json("result")?,
        confidence: r.opt_real("confidence")?,
        requires_human_review: r.bool("requires_human_review")?,
        last_error: r.opt_text("last_error")?,
        prompt_tokens: r.int("prompt_tokens")?,
        completion_tokens: r.int("completion_tokens")?,
        cost_usd: r.real("cost_usd")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
        started_at: r.opt_time("started_at")?,
        finished_at: r.opt_time("finished_at")?,
    })
}

/// The task; `lock` takes its row on PostgreSQL (`FOR NO KEY UPDATE`,
/// which leaves the share locks of inserts referring to it alone) when no
/// queue row stands in front of it.
pub(crate) async fn load_task(
    c: &mut dyn Conn,
    company: &CompanyId,
    id: &TaskId,
    lock: bool,
) -> Result<Task> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!("SELECT {TASK_COLUMNS} FROM tasks WHERE company_id = $1 AND task_id = $2")
    });
    let row = c
        .one(
            q(SQL.as_str())
                .arg(company.as_str())
                .arg(id.as_str())
                .for_no_key_update(lock),
        )
        .await?;
    task_from_row(&row)
}

/// Moves a task to `to` (checked against the state machine) and records
/// the event. The caller holds the task's queue row (or SQLite's writer
/// turn), so `task.status` is current.
pub(crate) async fn set_status(
    c: &mut dyn Conn,
    task: &Task,
    to: TaskStatus,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    check_transition(task.status, to).map_err(|e| StoreError::Conflict(e.to_string()))?;
    let finished = to.is_final() || to == TaskStatus::NeedsReview;
    c.exec(
        q("UPDATE tasks SET status = $1, status_reason = $2, updated_at = $3, \
           finished_at = CASE WHEN $4 THEN $3 ELSE finished_at END WHERE company_id = $5 AND task_id = $6")
        .arg(to.as_str())
        .arg(reason)
        .arg(now)
        .arg(finished)
        .arg(task.company_id.as_str())
        .arg(task.task_id.as_str()),
    )
    .await?;
    event(
        c,
        &task.company_id,
        &task.task_id,
        Some(task.status),
        to,
        reason,
        now,
    )
    .await
}

/// Records a task's move from `from` (none when it is new) to `to`.
pub(crate) async fn event(
    c: &mut dyn Conn,
    company: &CompanyId,
    id: &TaskId,
    from: Option<TaskStatus>,
    to: TaskStatus,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    c.exec(
        q(
            "INSERT INTO task_events (company_id, task_id, at, from_status, to_status, reason) \
           VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .arg(company.as_str())
        .arg(id.as_str())
        .arg(now)
        .arg(from.map(TaskStatus::as_str))
        .arg(to.as_str())
        .arg(reason),
    )
    .await?;
    Ok(())
}

/// Raises a running task's estimate to at least `tokens` (what its first
/// call needed), so its next claim holds that much; a conflict when
/// `worker` no longer holds its lease.
pub(crate) async fn raise_estimate(
    c: &mut dyn Conn,
    company: &CompanyId,
    id: &TaskId,
    worker: &str,
    tokens: i64,
) -> Result<()> {
    let n = c
        .exec(
            q("UPDATE task_queue SET estimated_tokens = \
               CASE WHEN estimated_tokens < $1 THEN $1 ELSE estimated_tokens END \
               WHERE task_id = $2 AND company_id = $3 AND lease_owner = $4 AND status = 'running'")
            .arg(tokens)
            .arg(id.as_str())
            .arg(company.as_str())
            .arg(worker),
        )
        .await?;
    if n == 0 {
        return Err(StoreError::Conflict(format!(
            "worker {worker} no longer holds the lease on {id}"
        )));
    }
    c.exec(
        q("UPDATE tasks SET estimated_tokens = \
           CASE WHEN estimated_tokens < $1 THEN $1 ELSE estimated_tokens END \
           WHERE company_id = $2 AND task_id = $3")
        .arg(tokens)
        .arg(company.as_str())
        .arg(id.as_str()),
    )
    .await?;
    Ok(())
}
