//! Run traces, reviews and primary sessions, written once for both
//! backends: [`AgentStore`] for every [`Db`]. The transaction takes what
//! it locks first (on PostgreSQL the company's row, then the task's queue
//! row or its own row; SQLite's writer turn holds them all) and a review
//! or rating is given the task so taken. A transaction that fails after
//! taking a lock is rolled back at once. The set insert of steps stays
//! with each dialect ([`StepSql`]: SQLite's one command, PostgreSQL's
//! `unnest`).

use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use kira_core::CompanyId;
use kira_core::audit::AuditRecord;
use kira_core::auth::CompanyScope;
use kira_core::task::{Task, TaskId, TaskStatus};

use crate::agents::*;
use crate::flow::store::{Db, commit_or_roll_back, lock_company, notify};
use crate::flow::tasks::{load_task, set_status};
use crate::sql::{Columns, Conn, Dialect, Lock, q, q_each};
use crate::{DeletedRows, Result, StoreError};

/// What each dialect writes its own way for agents.
#[async_trait]
pub(crate) trait StepSql: Dialect {
    /// Inserts steps of `company`'s tasks (checked by the caller with
    /// [`check_step_tasks`]), in one statement. Conflict on a step already
    /// recorded.
    async fn insert_steps(
        c: &mut Self::Connection,
        company: &CompanyId,
        steps: &[Step],
    ) -> Result<()>;
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn task_id(s: &str) -> Result<TaskId> {
    TaskId::parse(s).map_err(|e| corrupt("task id", e))
}

/// The columns [`step_from_row`] reads.
const STEP_COLUMNS: &str = "task_id, attempt, seq, agent, kind, prompt_tokens, completion_tokens, \
     latency_ms, detail, at";

/// The columns [`review_from_row`] reads.
const REVIEW_COLUMNS: &str =
    "review_id, task_id, decision, feedback, edited_result, rating, reviewer, at";

fn step_from_row<R: Columns + ?Sized>(r: &R) -> Result<Step> {
    let kind = r.text("kind")?;
    Ok(Step {
        task_id: task_id(&r.text("task_id")?)?,
        attempt: r.int32("attempt")?,
        seq: r.int32("seq")?,
        agent: r.text("agent")?,
        kind: StepKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("step kind {kind:?}")))?,
        prompt_tokens: r.int("prompt_tokens")?,
        completion_tokens: r.int("completion_tokens")?,
        latency_ms: r.int("latency_ms")?,
        detail: r.json("detail")?,
        at: r.time("at")?,
    })
}

fn review_from_row<R: Columns + ?Sized>(r: &R) -> Result<Review> {
    Ok(Review {
        review_id: r.int("review_id")?,
        task_id: task_id(&r.text("task_id")?)?,
        decision: r.text("decision")?,
        feedback: r.opt_text("feedback")?,
        edited_result: r.opt_json("edited_result")?,
        rating: r
            .opt_int("rating")?
            .map(u8::try_from)
            .transpose()
            .map_err(|e| corrupt("rating", e))?,
        reviewer: r.text("reviewer")?,
        at: r.time("at")?,
    })
}

#[allow(clippy::too_many_arguments)]
async fn insert_review(
    c: &mut dyn Conn,
    company: &CompanyId,
    id: &TaskId,
    decision: &str,
    feedback: Option<&str>,
    edited_result: Option<&serde_json::Value>,
    rating: Option<u8>,
    reviewer: &str,
    now: DateTime<Utc>,
) -> Result<Review> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "INSERT INTO task_reviews (company_id, task_id, decision, feedback, edited_result, \
             rating, reviewer, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {REVIEW_COLUMNS}"
        )
    });
    let row = c
        .one(
            q(SQL.as_str())
                .arg(company.as_str())
                .arg(id.as_str())
                .arg(decision)
                .arg(feedback)
                .arg(edited_result)
                .arg(rating.map(i64::from))
                .arg(reviewer)
                .arg(now),
        )
        .await?;
    review_from_row(&row)
}

/// Records the review of `task` (read, and on PostgreSQL locked, by the
/// caller in this transaction): its state change, its result or requeue,
/// the review row and the audit entry. The task as it now is.
pub(crate) async fn review(
    c: &mut dyn Conn,
    task: &Task,
    input: &ReviewInput,
    max_requeues: u32,
    now: DateTime<Utc>,
    audit: AuditRecord,
) -> Result<Task> {
    let now = now.trunc_subsecs(6);
    let (company, id) = (&task.company_id, &task.task_id);
    if task.status != TaskStatus::NeedsReview {
        return Err(StoreError::Conflict(format!(
            "task {id} is {}, not needs_review",
            task.status
        )));
    }
    let rejections = c
        .int(
            q(
                "SELECT count(*) FROM task_reviews WHERE company_id = $1 AND task_id = $2 \
               AND decision = 'rejected'",
            )
            .arg(company.as_str())
            .arg(id.as_str()),
        )
        .await?
        .unwrap_or(0);
    let rejections = u64::try_from(rejections).unwrap_or(0);
    let to = review_outcome(&input.decision, rejections, max_requeues);
    let reason = review_reason(input, to, rejections, max_requeues);
    // Checked here too: the state machine is the one list of what may happen.
    set_status(c, task, to, &reason, now).await?;
    match (&input.decision, to) {
        (Decision::Approve { result }, _) => {
            c.exec(
                q(
                    "UPDATE tasks SET result = COALESCE($1, result), requires_human_review = false \
                   WHERE company_id = $2 AND task_id = $3",
                )
                .arg(result.as_ref())
                .arg(company.as_str())
                .arg(id.as_str()),
            )
            .await?;
        }
        (Decision::Reject { .. }, TaskStatus::Queued) => {
            // Runnable again: a queue row as a submission makes, with the
            // company's multiplier as it is now; finished_at goes, since the
            // task is not finished.
            c.exec(
                q("UPDATE tasks SET max_attempts = $1, finished_at = NULL \
                   WHERE company_id = $2 AND task_id = $3")
                .arg(i64::from(requeued_max_attempts(
                    task.attempts,
                    task.max_attempts,
                )))
                .arg(company.as_str())
                .arg(id.as_str()),
            )
            .await?;
            c.exec(
                q("INSERT INTO task_queue (task_id, company_id, agent, status, priority, multiplier, \
                   deadline, waiting_since, not_before, estimated_tokens, attempts) \
                   SELECT t.task_id, t.company_id, t.agent, 'queued', t.priority, c.priority_multiplier, \
                   t.deadline, $1, $1, t.estimated_tokens, t.attempts \
                   FROM tasks t JOIN companies c ON c.company_id = t.company_id \
                   WHERE t.company_id = $2 AND t.task_id = $3")
                .arg(now)
                .arg(company.as_str())
                .arg(id.as_str()),
            )
            .await?;
        }
        (Decision::Reject { .. }, _) => {
            c.exec(
                q("UPDATE tasks SET last_error = $1 WHERE company_id = $2 AND task_id = $3")
                    .arg(reason.as_str())
                    .arg(company.as_str())
                    .arg(id.as_str()),
            )
            .await?;
        }
    }
    let (feedback, edited) = match &input.decision {
        Decision::Approve { result } => (None, result.as_ref()),
        Decision::Reject { feedback } => (Some(feedback.trim()), None),
    };
    insert_review(
        c,
        company,
        id,
        input.decision.recorded_as(),
        feedback,
        edited,
        input.rating,
        &input.reviewer,
        now,
    )
    .await?;
    let task = load_task(c, company, id, false).await?;
    c.audit(audit).await?;
    Ok(task)
}

/// Records a rating of `task` (read, and on PostgreSQL locked, by the
/// caller): only a completed task or one in review is rated.
pub(crate) async fn rate(
    c: &mut dyn Conn,
    task: &Task,
    rating: u8,
    reviewer: &str,
    now: DateTime<Utc>,
    audit: AuditRecord,
) -> Result<Review> {
    let now = now.trunc_subsecs(6);
    if !matches!(task.status, TaskStatus::Completed | TaskStatus::NeedsReview) {
        return Err(StoreError::Conflict(format!(
            "task {} is {}; only a completed task or one in needs_review is rated",
            task.task_id, task.status
        )));
    }
    let review = insert_review(
        c,
        &task.company_id,
        &task.task_id,
        "rated",
        None,
        None,
        Some(rating),
        reviewer,
        now,
    )
    .await?;
    c.audit(audit).await?;
    Ok(review)
}

/// The steps of the company's task, in order; NotFound when the task is
/// not the company's.
pub(crate) async fn trace(c: &mut dyn Conn, company: &CompanyId, id: &TaskId) -> Result<Vec<Step>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {STEP_COLUMNS} FROM task_steps WHERE company_id = $1 AND task_id = $2 \
             ORDER BY attempt, seq"
        )
    });
    load_task(c, company, id, false).await?;
    let rows = c
        .all(q(SQL.as_str()).arg(company.as_str()).arg(id.as_str()))
        .await?;
    rows.iter().map(step_from_row).collect()
}

/// The reviews of the company's task, oldest first; NotFound when the task
/// is not the company's.
pub(crate) async fn reviews(
    c: &mut dyn Conn,
    company: &CompanyId,
    id: &TaskId,
) -> Result<Vec<Review>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {REVIEW_COLUMNS} FROM task_reviews WHERE company_id = $1 AND task_id = $2 \
             ORDER BY review_id"
        )
    });
    load_task(c, company, id, false).await?;
    let rows = c
        .all(q(SQL.as_str()).arg(company.as_str()).arg(id.as_str()))
        .await?;
    rows.iter().map(review_from_row).collect()
}

/// The company's primary session; an empty one when it has none yet.
pub(crate) async fn load_session(c: &mut dyn Conn, company: &CompanyId) -> Result<Session> {
    let row = c
        .opt(
            q(
                "SELECT summary, turns, tokens, version, updated_at FROM agent_sessions \
               WHERE company_id = $1",
            )
            .arg(company.as_str()),
        )
        .await?;
    let Some(r) = row else {
        return Ok(Session::default());
    };
    Ok(Session {
        summary: r.text("summary")?,
        turns: serde_json::from_value(r.json("turns")?).map_err(|e| corrupt("turns", e))?,
        tokens: r.int("tokens")?,
        version: r.int("version")?,
        updated_at: r.opt_time("updated_at")?,
    })
}

/// Saves the company's session over `session.version` (the caller has
/// checked the company is there): a first save inserts, and of two racing
/// first saves the one that waited inserts nothing; a stale version is a
/// conflict.
pub(crate) async fn save_session(
    c: &mut dyn Conn,
    company: &CompanyId,
    session: &Session,
    now: DateTime<Utc>,
) -> Result<Session> {
    let now = now.trunc_subsecs(6);
    let n = if session.version == 0 {
        c.exec(
            q("INSERT INTO agent_sessions (company_id, summary, turns, tokens, version, updated_at) \
               VALUES ($1, $2, $3, $4, 1, $5) ON CONFLICT (company_id) DO NOTHING")
            .arg(company.as_str())
            .arg(session.summary.as_str())
            .arg(session.turns.as_slice())
            .arg(session.tokens)
            .arg(now),
        )
        .await?
    } else {
        c.exec(
            q(
                "UPDATE agent_sessions SET summary = $1, turns = $2, tokens = $3, \
               version = version + 1, updated_at = $4 WHERE company_id = $5 AND version = $6",
            )
            .arg(session.summary.as_str())
            .arg(session.turns.as_slice())
            .arg(session.tokens)
            .arg(now)
            .arg(company.as_str())
            .arg(session.version),
        )
        .await?
    };
    if n == 0 {
        return Err(stale_session(company, session.version));
    }
    Ok(Session {
        version: session.version + 1,
        updated_at: Some(now),
        ..session.clone()
    })
}

/// Removes the company's steps, reviews and session (before its tasks).
pub(crate) async fn delete_company_agents(
    c: &mut dyn Conn,
    company: &CompanyId,
    deleted: &mut DeletedRows,
) -> Result<()> {
    crate::flow::company::delete_rows(c, company, crate::flow::company::AGENT_ROWS, deleted).await
}

/// NotFound unless every step's task is `company`'s; on PostgreSQL the
/// tasks are held (`FOR KEY SHARE`) while their steps go in.
pub(crate) async fn check_step_tasks(
    c: &mut dyn Conn,
    company: &CompanyId,
    steps: &[Step],
) -> Result<()> {
    let mut ids: Vec<String> = steps
        .iter()
        .map(|s| s.task_id.as_str().to_owned())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Ok(());
    }
    let found = q_each(
        "SELECT task_id FROM tasks WHERE company_id = $1 \
         AND task_id IN (SELECT value FROM json_each($2))",
        "SELECT task_id FROM tasks WHERE company_id = $1 AND task_id = ANY ($2)",
    )
    .arg(company.as_str())
    .arg(ids.as_slice())
    .locked(Lock::KeyShare);
    if c.all(found).await?.len() != ids.len() {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// Locks the task for a change that does not go through the queue (on
/// PostgreSQL; SQLite's writer turn already keeps others out): the
/// company's row, then the task's queue row if it has one, else its own
/// row, in `postgres/work.rs`'s lock order. NotFound when the company or
/// the task is not there.
async fn lock_task(c: &mut dyn Conn, company: &CompanyId, id: &TaskId) -> Result<Task> {
    if !lock_company(c, company).await? {
        return Err(StoreError::NotFound);
    }
    let queued = q("SELECT 1 FROM task_queue WHERE task_id = $1 AND company_id = $2")
        .arg(id.as_str())
        .arg(company.as_str())
        .for_update()
        .pg_only();
    let queued = c.opt(queued).await?.is_some();
    load_task(c, company, id, !queued).await
}

#[async_trait]
impl<D: Db> AgentStore for D {
    async fn record_steps(&self, scope: &CompanyScope, steps: &[Step]) -> Result<()> {
        check_steps(steps)?;
        if steps.is_empty() {
            return Ok(());
        }
        let company = scope.company();
        let mut tx = self.write_for(company).await?;
        let done = async {
            check_step_tasks(&mut tx, company, steps).await?;
            D::Sql::insert_steps(&mut tx, company, steps).await
        }
        .await;
        commit_or_roll_back::<D, _>(tx, done).await
    }

    async fn task_trace(&self, scope: &CompanyScope, id: &TaskId) -> Result<Vec<Step>> {
        let mut r = self.read_for(scope.company()).await?;
        let steps = trace(&mut r, scope.company(), id).await?;
        D::end_read(r).await?;
        Ok(steps)
    }

    async fn review_task(
        &self,
        scope: &CompanyScope,
        id: &TaskId,
        input: &ReviewInput,
        max_requeues: u32,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Task> {
        check_review(input)?;
        let company = scope.company();
        let mut tx = self.write_for(company).await?;
        let done = async {
            let task = lock_task(&mut tx, company, id).await?;
            let task = review(&mut tx, &task, input, max_requeues, now, audit).await?;
            if task.status == TaskStatus::Queued {
                // Requeued: wake the schedulers on commit.
                notify(&mut tx, id).await?;
            }
            Ok(task)
        }
        .await;
        commit_or_roll_back::<D, _>(tx, done).await
    }

    async fn rate_task(
        &self,
        scope: &CompanyScope,
        id: &TaskId,
        rating: u8,
        reviewer: &str,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Review> {
        check_rating(rating)?;
        let company = scope.company();
        let mut tx = self.write_for(company).await?;
        let done = async {
            let task = lock_task(&mut tx, company, id).await?;
            rate(&mut tx, &task, rating, reviewer, now, audit).await
        }
        .await;
        commit_or_roll_back::<D, _>(tx, done).await
    }

    async fn task_reviews(&self, scope: &CompanyScope, id: &TaskId) -> Result<Vec<Review>> {
        let mut r = self.read_for(scope.company()).await?;
        let found = reviews(&mut r, scope.company(), id).await?;
        D::end_read(r).await?;
        Ok(found)
    }

    async fn load_session(&self, scope: &CompanyScope) -> Result<Session> {
        let mut r = self.read_for(scope.company()).await?;
        let session = load_session(&mut r, scope.company()).await?;
        D::end_read(r).await?;
        Ok(session)
    }

    async fn save_session(
        &self,
        scope: &CompanyScope,
        session: &Session,
        now: DateTime<Utc>,
    ) -> Result<Session> {
        check_session(session)?;
        let company = scope.company();
        let mut tx = self.write_for(company).await?;
        let done = async {
            // The company's row, held against a forced delete (PostgreSQL).
            let me = q("SELECT 1 FROM companies WHERE company_id = $1").arg(company.as_str());
            if tx.opt(me.locked(Lock::KeyShare)).await?.is_none() {
                return Err(StoreError::NotFound);
            }
            save_session(&mut tx, company, session, now).await
        }
        .await;
        commit_or_roll_back::<D, _>(tx, done).await
    }
}
