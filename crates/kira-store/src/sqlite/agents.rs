//! Run traces, reviews and primary sessions on SQLite. Every statement binds
//! the scope's company; writes take the process's one writer turn, so a
//! review's read of the task and its change cannot interleave with another.

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use kira_core::CompanyId;
use kira_core::audit::AuditRecord;
use kira_core::auth::CompanyScope;
use kira_core::task::{Task, TaskId, TaskStatus};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};

use super::work::{corrupt, load_task, set_status};
use super::{SqliteStore, append, json, load_company, parse_opt_ts, parse_ts, to_json, ts};
use crate::agents::*;
use crate::work::RunRecords;
use crate::{DeletedRows, Result, StoreError};

const STEP_COLUMNS: &str = "task_id, attempt, seq, agent, kind, prompt_tokens, completion_tokens, \
     latency_ms, detail, at";

const REVIEW_COLUMNS: &str =
    "review_id, task_id, decision, feedback, edited_result, rating, reviewer, at";

fn step_from_row(r: &SqliteRow) -> Result<Step> {
    let task: String = r.try_get("task_id")?;
    let kind: String = r.try_get("kind")?;
    Ok(Step {
        task_id: TaskId::parse(&task).map_err(|e| corrupt("task id", e))?,
        attempt: r.try_get("attempt")?,
        seq: r.try_get("seq")?,
        agent: r.try_get("agent")?,
        kind: StepKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("step kind {kind:?}")))?,
        prompt_tokens: r.try_get("prompt_tokens")?,
        completion_tokens: r.try_get("completion_tokens")?,
        latency_ms: r.try_get("latency_ms")?,
        detail: json(r.try_get("detail")?)?,
        at: parse_ts(r.try_get("at")?)?,
    })
}

fn review_from_row(r: &SqliteRow) -> Result<Review> {
    let task: String = r.try_get("task_id")?;
    let edited: Option<String> = r.try_get("edited_result")?;
    let rating: Option<i64> = r.try_get("rating")?;
    Ok(Review {
        review_id: r.try_get("review_id")?,
        task_id: TaskId::parse(&task).map_err(|e| corrupt("task id", e))?,
        decision: r.try_get("decision")?,
        feedback: r.try_get("feedback")?,
        edited_result: edited.as_deref().map(json).transpose()?,
        rating: rating
            .map(u8::try_from)
            .transpose()
            .map_err(|e| corrupt("rating", e))?,
        reviewer: r.try_get("reviewer")?,
        at: parse_ts(r.try_get("at")?)?,
    })
}

/// Removes the company's steps, reviews and session (before its tasks).
pub(super) async fn delete_company_agents(
    tx: &mut SqliteConnection,
    company: &CompanyId,
    deleted: &mut DeletedRows,
) -> Result<()> {
    crate::flow::company::delete_rows(tx, company, crate::flow::company::AGENT_ROWS, deleted)
        .await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn insert_review(
    tx: &mut SqliteConnection,
    company: &CompanyId,
    id: &TaskId,
    decision: &str,
    feedback: Option<&str>,
    edited_result: Option<&serde_json::Value>,
    rating: Option<u8>,
    reviewer: &str,
    now: DateTime<Utc>,
) -> Result<Review> {
    let sql = format!(
        "INSERT INTO task_reviews (company_id, task_id, decision, feedback, edited_result, rating, reviewer, at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING {REVIEW_COLUMNS}"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(company.as_str())
        .bind(id.as_str())
        .bind(decision)
        .bind(feedback)
        .bind(edited_result.map(to_json).transpose()?)
        .bind(rating.map(i64::from))
        .bind(reviewer)
        .bind(ts(now))
        .fetch_one(&mut *tx)
        .await?;
    review_from_row(&row)
}

/// Inserts steps of `company`'s tasks (checked by the caller). NotFound if
/// a task is not the company's; Conflict on a step already recorded.
async fn insert_steps(
    tx: &mut SqliteConnection,
    company: &CompanyId,
    steps: &[Step],
) -> Result<()> {
    check_step_tasks(tx, company, steps).await?;
    insert_step_rows(tx, company, steps).await
}

/// NotFound unless every step's task is `company`'s.
async fn check_step_tasks(
    tx: &mut SqliteConnection,
    company: &CompanyId,
    steps: &[Step],
) -> Result<()> {
    let mut checked: Vec<&TaskId> = Vec::new();
    for s in steps {
        if !checked.contains(&&s.task_id) {
            load_task(&mut *tx, company, &s.task_id, false).await?;
            checked.push(&s.task_id);
        }
    }
    Ok(())
}

/// The insert of [`insert_steps`], for steps whose tasks are known to be
/// the company's.
async fn insert_step_rows(
    tx: &mut SqliteConnection,
    company: &CompanyId,
    steps: &[Step],
) -> Result<()> {
    let rows = steps
        .iter()
        .map(|s| step_row(company, s))
        .collect::<Result<Vec<_>>>()?;
    let mut script = super::Script::default();
    push_step_rows(&mut script, &rows)?;
    script.run(tx).await.map_err(records_error)?;
    Ok(())
}

/// What a failed write of run records means: a step or a memory already
/// recorded (Conflict, naming which), or a missing company (NotFound).
fn records_error(e: StoreError) -> StoreError {
    match e {
        StoreError::Database(sqlx::Error::Database(d))
            if d.is_unique_violation() && d.message().contains("task_steps.") =>
        {
            StoreError::Conflict(
                "a step with this task, attempt and seq is already recorded".into(),
            )
        }
        e => super::memory::insert_error(e),
    }
}

/// A step as [`push_step_rows`] takes it.
fn step_row(company: &CompanyId, s: &Step) -> Result<serde_json::Value> {
    Ok(serde_json::json!([
        company.as_str(),
        s.task_id.as_str(),
        s.attempt,
        s.seq,
        s.agent,
        s.kind.as_str(),
        s.prompt_tokens,
        s.completion_tokens,
        s.latency_ms,
        to_json(&s.detail)?,
        ts(s.at.trunc_subsecs(6)),
    ]))
}

/// One statement for all the steps, of any companies.
fn push_step_rows(script: &mut super::Script, rows: &[serde_json::Value]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    script.push(
        "INSERT INTO task_steps (company_id, task_id, attempt, seq, agent, kind, prompt_tokens, \
         completion_tokens, latency_ms, detail, at) \
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, \
           value ->> 6, value ->> 7, value ->> 8, value ->> 9, value ->> 10 \
         FROM json_each(?) ORDER BY key;",
        [to_json(&rows)?],
        Some((rows.len() as u64, "steps were not all recorded")),
    );
    Ok(())
}

/// Writes what a run left behind for `company` inside `tx`: its steps,
/// its turns appended to the primary session (made if missing), and the
/// memory of its result with its audit entry.
///
/// The steps' tasks are checked to be the company's, then everything is
/// checked before anything is written (`push_run_records`). The memory's
/// audit entry is pushed to `audits`, for the caller to append with the
/// others of its transaction in one go ([`super::append_many`]).
pub(super) async fn write_run_records(
    tx: &mut SqliteConnection,
    company: &CompanyId,
    r: &RunRecords,
    now: DateTime<Utc>,
    audits: &mut Vec<AuditRecord>,
) -> Result<()> {
    check_step_tasks(tx, company, &r.steps).await?;
    let mut script = super::Script::default();
    push_run_records(
        &mut script,
        &[RunWrite {
            company,
            task: None,
            records: r,
        }],
        now,
        audits,
    )?;
    script.run(tx).await.map_err(records_error)?;
    Ok(())
}

/// One run's records to write.
pub(super) struct RunWrite<'a> {
    pub company: &'a CompanyId,
    /// The run's task, when the caller knows it is the company's (its
    /// lease was checked): every step must then be of it. Otherwise the
    /// caller has checked the steps' tasks.
    pub task: Option<&'a TaskId>,
    pub records: &'a RunRecords,
}

/// Adds to `script` the statements that write `runs`' records: one per
/// table whatever the number of runs (steps; session turns, appended in
/// order, so two runs of one company keep theirs in turn; result memories
/// with their embedding queue places and names). The memories' audit
/// entries go to `audits`. Checks everything before adding anything.
pub(super) fn push_run_records(
    script: &mut super::Script,
    runs: &[RunWrite<'_>],
    now: DateTime<Utc>,
    audits: &mut Vec<AuditRecord>,
) -> Result<()> {
    let mut steps = Vec::new();
    let mut sessions = Vec::new();
    let mut memories = Vec::new();
    for run in runs {
        let r = run.records;
        r.check(run.company)?;
        if let Some(task) = run.task
            && let Some(s) = r.steps.iter().find(|s| &s.task_id != task)
        {
            return Err(StoreError::Conflict(format!(
                "a step of task {} in the run of task {task}",
                s.task_id
            )));
        }
        for s in &r.steps {
            steps.push(step_row(run.company, s)?);
        }
        if !r.session_turns.is_empty() {
            sessions.push(serde_json::json!([
                run.company.as_str(),
                r.session_turns,
                r.session_tokens
            ]));
        }
        if let Some((m, audit)) = &r.memory {
            memories.push((run.company, m));
            audits.push(audit.clone());
        }
    }
    push_step_rows(script, &steps)?;
    if !sessions.is_empty() {
        // The turns are appended as text: a session's turns are stored as
        // json() writes them (no spaces), so its array without the closing
        // bracket, a comma and the new array without its opening one is
        // the two arrays' concatenation; json() checks the result. Rows
        // go in order, so a later run of a company appends after an
        // earlier one (WHERE true: an upsert's SELECT needs one).
        script.push(
            "INSERT INTO agent_sessions (company_id, summary, turns, tokens, version, updated_at) \
             SELECT value ->> 0, '', json(value -> 1), value ->> 2, 1, ? FROM json_each(?) \
             WHERE true ORDER BY key \
             ON CONFLICT (company_id) DO UPDATE SET \
             turns = json(substr(json(agent_sessions.turns), 1, length(json(agent_sessions.turns)) - 1) \
               || CASE WHEN json_array_length(agent_sessions.turns) = 0 THEN '' ELSE ',' END \
               || substr(excluded.turns, 2)), \
             tokens = agent_sessions.tokens + excluded.tokens, \
             version = agent_sessions.version + 1, updated_at = excluded.updated_at;",
            [ts(now.trunc_subsecs(6)), to_json(&sessions)?],
            Some((sessions.len() as u64, "session turns were not all appended")),
        );
    }
    super::memory::push_rows(script, &memories)?;
    Ok(())
}

#[async_trait]
impl AgentStore for SqliteStore {
    async fn record_steps(&self, scope: &CompanyScope, steps: &[Step]) -> Result<()> {
        check_steps(steps)?;
        if steps.is_empty() {
            return Ok(());
        }
        let mut tx = self.write().await?;
        insert_steps(&mut tx, scope.company(), steps).await?;
        tx.commit().await
    }

    async fn task_trace(&self, scope: &CompanyScope, id: &TaskId) -> Result<Vec<Step>> {
        let mut conn = self.pool.acquire().await?;
        load_task(&mut conn, scope.company(), id, false).await?;
        let sql = format!(
            "SELECT {STEP_COLUMNS} FROM task_steps WHERE company_id = ? AND task_id = ? \
             ORDER BY attempt, seq"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(scope.company().as_str())
            .bind(id.as_str())
            .fetch_all(&mut *conn)
            .await?;
        rows.iter().map(step_from_row).collect()
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
        let now = now.trunc_subsecs(6);
        let company = scope.company();
        let mut tx = self.write().await?;
        let task = load_task(&mut tx, company, id, false).await?;
        if task.status != TaskStatus::NeedsReview {
            return Err(StoreError::Conflict(format!(
                "task {id} is {}, not needs_review",
                task.status
            )));
        }
        let rejections: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM task_reviews WHERE company_id = ? AND task_id = ? AND decision = 'rejected'",
        )
        .bind(company.as_str())
        .bind(id.as_str())
        .fetch_one(&mut *tx)
        .await?;
        let rejections = u64::try_from(rejections).unwrap_or(0);
        let to = review_outcome(&input.decision, rejections, max_requeues);
        let reason = review_reason(input, to, rejections, max_requeues);
        // Checked here too: the state machine is the one list of what may happen.
        set_status(&mut tx, &task, to, &reason, now).await?;
        match (&input.decision, to) {
            (Decision::Approve { result }, _) => {
                sqlx::query(
                    "UPDATE tasks SET result = COALESCE(?, result), requires_human_review = 0 \
                     WHERE company_id = ? AND task_id = ?",
                )
                .bind(result.as_ref().map(to_json).transpose()?)
                .bind(company.as_str())
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
            }
            (Decision::Reject { .. }, TaskStatus::Queued) => {
                // Runnable again: a queue row as a submission makes, with
                // the company's multiplier as it is now; finished_at goes,
                // since the task is not finished.
                sqlx::query(
                    "UPDATE tasks SET max_attempts = ?, finished_at = NULL WHERE company_id = ? AND task_id = ?",
                )
                .bind(requeued_max_attempts(task.attempts, task.max_attempts))
                .bind(company.as_str())
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO task_queue (task_id, company_id, agent, status, priority, multiplier, deadline, \
                     waiting_since, not_before, estimated_tokens, attempts) \
                     SELECT t.task_id, t.company_id, t.agent, 'queued', t.priority, c.priority_multiplier, \
                     t.deadline, ?, ?, t.estimated_tokens, t.attempts \
                     FROM tasks t JOIN companies c ON c.company_id = t.company_id \
                     WHERE t.company_id = ? AND t.task_id = ?",
                )
                .bind(ts(now))
                .bind(ts(now))
                .bind(company.as_str())
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
            }
            (Decision::Reject { .. }, _) => {
                sqlx::query("UPDATE tasks SET last_error = ? WHERE company_id = ? AND task_id = ?")
                    .bind(&reason)
                    .bind(company.as_str())
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let (feedback, edited) = match &input.decision {
            Decision::Approve { result } => (None, result.as_ref()),
            Decision::Reject { feedback } => (Some(feedback.trim()), None),
        };
        insert_review(
            &mut tx,
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
        append(&mut tx, audit).await?;
        let task = load_task(&mut tx, company, id, false).await?;
        tx.commit().await?;
        Ok(task)
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
        let now = now.trunc_subsecs(6);
        let company = scope.company();
        let mut tx = self.write().await?;
        let task = load_task(&mut tx, company, id, false).await?;
        if !matches!(task.status, TaskStatus::Completed | TaskStatus::NeedsReview) {
            return Err(StoreError::Conflict(format!(
                "task {id} is {}; only a completed task or one in needs_review is rated",
                task.status
            )));
        }
        let review = insert_review(
            &mut tx,
            company,
            id,
            "rated",
            None,
            None,
            Some(rating),
            reviewer,
            now,
        )
        .await?;
        append(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(review)
    }

    async fn task_reviews(&self, scope: &CompanyScope, id: &TaskId) -> Result<Vec<Review>> {
        let mut conn = self.pool.acquire().await?;
        load_task(&mut conn, scope.company(), id, false).await?;
        let sql = format!(
            "SELECT {REVIEW_COLUMNS} FROM task_reviews WHERE company_id = ? AND task_id = ? ORDER BY review_id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(scope.company().as_str())
            .bind(id.as_str())
            .fetch_all(&mut *conn)
            .await?;
        rows.iter().map(review_from_row).collect()
    }

    async fn load_session(&self, scope: &CompanyScope) -> Result<Session> {
        let row = sqlx::query(
            "SELECT summary, turns, tokens, version, updated_at FROM agent_sessions WHERE company_id = ?",
        )
        .bind(scope.company().as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else {
            return Ok(Session::default());
        };
        Ok(Session {
            summary: r.try_get("summary")?,
            turns: json(r.try_get("turns")?)?,
            tokens: r.try_get("tokens")?,
            version: r.try_get("version")?,
            updated_at: parse_opt_ts(r.try_get("updated_at")?)?,
        })
    }

    async fn save_session(
        &self,
        scope: &CompanyScope,
        session: &Session,
        now: DateTime<Utc>,
    ) -> Result<Session> {
        check_session(session)?;
        let now = now.trunc_subsecs(6);
        let company = scope.company();
        let turns = to_json(&session.turns)?;
        let mut tx = self.write().await?;
        load_company(&mut tx, company, false).await?;
        let n = if session.version == 0 {
            sqlx::query(
                "INSERT INTO agent_sessions (company_id, summary, turns, tokens, version, updated_at) \
                 VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT (company_id) DO NOTHING",
            )
            .bind(company.as_str())
            .bind(&session.summary)
            .bind(&turns)
            .bind(session.tokens)
            .bind(ts(now))
            .execute(&mut *tx)
            .await?
            .rows_affected()
        } else {
            sqlx::query(
                "UPDATE agent_sessions SET summary = ?, turns = ?, tokens = ?, version = version + 1, \
                 updated_at = ? WHERE company_id = ? AND version = ?",
            )
            .bind(&session.summary)
            .bind(&turns)
            .bind(session.tokens)
            .bind(ts(now))
            .bind(company.as_str())
            .bind(session.version)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        };
        if n == 0 {
            return Err(stale_session(company, session.version));
        }
        tx.commit().await?;
        Ok(Session {
            version: session.version + 1,
            updated_at: Some(now),
            ..session.clone()
        })
    }
}
