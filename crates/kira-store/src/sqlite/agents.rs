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
    for (table, sql) in [
        ("task_steps", "DELETE FROM task_steps WHERE company_id = ?"),
        (
            "task_reviews",
            "DELETE FROM task_reviews WHERE company_id = ?",
        ),
        (
            "agent_sessions",
            "DELETE FROM agent_sessions WHERE company_id = ?",
        ),
    ] {
        let n = sqlx::query(sql)
            .bind(company.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        deleted.tables.push((table.to_owned(), n));
    }
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
    let mut checked: Vec<&TaskId> = Vec::new();
    for s in steps {
        if !checked.contains(&&s.task_id) {
            load_task(&mut *tx, company, &s.task_id).await?;
            checked.push(&s.task_id);
        }
    }
    insert_step_rows(tx, company, steps).await
}

/// The insert of [`insert_steps`], for steps whose tasks are known to be
/// the company's.
async fn insert_step_rows(
    tx: &mut SqliteConnection,
    company: &CompanyId,
    steps: &[Step],
) -> Result<()> {
    // One statement for all of them.
    let mut rows = Vec::with_capacity(steps.len());
    for s in steps {
        rows.push((s, to_json(&s.detail)?, ts(s.at.trunc_subsecs(6))));
    }
    let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
        "INSERT INTO task_steps (company_id, task_id, attempt, seq, agent, kind, prompt_tokens, \
         completion_tokens, latency_ms, detail, at) ",
    );
    qb.push_values(rows, |mut b, (s, detail, at)| {
        b.push_bind(company.as_str().to_owned())
            .push_bind(s.task_id.as_str().to_owned())
            .push_bind(s.attempt)
            .push_bind(s.seq)
            .push_bind(s.agent.clone())
            .push_bind(s.kind.as_str())
            .push_bind(s.prompt_tokens)
            .push_bind(s.completion_tokens)
            .push_bind(s.latency_ms)
            .push_bind(detail)
            .push_bind(at);
    });
    qb.build().execute(&mut *tx).await.map_err(|e| match e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict(
            "a step with this task, attempt and seq is already recorded".into(),
        ),
        e => e.into(),
    })?;
    Ok(())
}

/// Writes what a run left behind for `company` inside `tx`: its steps,
/// its turns appended to the primary session (made if missing), and the
/// memory of its result with its audit entry.
///
/// `run_task`: the run's task, when the caller already knows it is the
/// company's (its lease was checked): every step must then be of it, and
/// the task is not read again. The memory's audit entry is pushed to
/// `audits`, for the caller to append with the others of its transaction
/// in one go ([`super::append_many`]).
pub(super) async fn write_run_records(
    tx: &mut SqliteConnection,
    company: &CompanyId,
    run_task: Option<&TaskId>,
    r: &RunRecords,
    now: DateTime<Utc>,
    audits: &mut Vec<AuditRecord>,
) -> Result<()> {
    r.check(company)?;
    if !r.steps.is_empty() {
        match run_task {
            Some(task) => {
                if let Some(s) = r.steps.iter().find(|s| &s.task_id != task) {
                    return Err(StoreError::Conflict(format!(
                        "a step of task {} in the run of task {task}",
                        s.task_id
                    )));
                }
                insert_step_rows(&mut *tx, company, &r.steps).await?;
            }
            None => insert_steps(&mut *tx, company, &r.steps).await?,
        }
    }
    if !r.session_turns.is_empty() {
        // One upsert: json_insert applies its edits left to right, so each
        // '$[#]' appends after the one before.
        let appends = vec!["'$[#]', json(?)"; r.session_turns.len()].join(", ");
        let sql = format!(
            "INSERT INTO agent_sessions (company_id, summary, turns, tokens, version, updated_at) \
             VALUES (?, '', json(?), ?, 1, ?) ON CONFLICT (company_id) DO UPDATE SET \
             turns = json_insert(agent_sessions.turns, {appends}), \
             tokens = agent_sessions.tokens + excluded.tokens, \
             version = agent_sessions.version + 1, updated_at = excluded.updated_at"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(company.as_str())
            .bind(to_json(&r.session_turns)?)
            .bind(r.session_tokens)
            .bind(ts(now.trunc_subsecs(6)));
        for t in &r.session_turns {
            q = q.bind(to_json(t)?);
        }
        q.execute(&mut *tx).await?;
    }
    if let Some((m, audit)) = &r.memory {
        super::memory::insert_rows(&mut *tx, company, std::slice::from_ref(m)).await?;
        audits.push(audit.clone());
    }
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
        load_task(&mut conn, scope.company(), id).await?;
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
        let task = load_task(&mut tx, company, id).await?;
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
        let task = load_task(&mut tx, company, id).await?;
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
        let task = load_task(&mut tx, company, id).await?;
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
        load_task(&mut conn, scope.company(), id).await?;
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
        load_company(&mut tx, company).await?;
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
