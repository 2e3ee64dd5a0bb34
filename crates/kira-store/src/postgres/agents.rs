//! Run traces, reviews and primary sessions on PostgreSQL: the SQLite
//! implementation (`sqlite/agents.rs`) with its one writer made explicit.
//! Each transaction names its company for the row-level policies and every
//! statement binds it again.
//!
//! A review keeps `work`'s lock order: the company row (`FOR KEY SHARE`),
//! then the task's queue row if it has one, else the task row (`FOR NO KEY
//! UPDATE`: a task in review is out of the queue), then the audit head
//! last. A transaction that fails after taking a lock is rolled back at
//! once, not when the pool gets round to the dropped connection: until
//! then its lock would stand in a claim's or a cancel's way.

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use kira_core::CompanyId;
use kira_core::audit::AuditRecord;
use kira_core::auth::CompanyScope;
use kira_core::task::{Task, TaskId, TaskStatus};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgConnection, Row};

use super::work::{corrupt, load_task, lock_company, notify, set_status, task_id};
use super::{PgStore, Tx, UNIQUE_VIOLATION, append, sqlstate};
use crate::agents::*;
use crate::work::RunRecords;
use crate::{DeletedRows, Result, StoreError};

const STEP_COLUMNS: &str = "task_id, attempt, seq, agent, kind, prompt_tokens, completion_tokens, \
     latency_ms, detail, at";

const REVIEW_COLUMNS: &str =
    "review_id, task_id, decision, feedback, edited_result, rating, reviewer, at";

fn step_from_row(r: &PgRow) -> Result<Step> {
    let kind: &str = r.try_get("kind")?;
    let detail: Json<serde_json::Value> = r.try_get("detail")?;
    Ok(Step {
        task_id: task_id(r.try_get("task_id")?)?,
        attempt: r.try_get("attempt")?,
        seq: r.try_get("seq")?,
        agent: r.try_get("agent")?,
        kind: StepKind::parse(kind)
            .ok_or_else(|| StoreError::Corrupt(format!("step kind {kind:?}")))?,
        prompt_tokens: r.try_get("prompt_tokens")?,
        completion_tokens: r.try_get("completion_tokens")?,
        latency_ms: r.try_get("latency_ms")?,
        detail: detail.0,
        at: r.try_get("at")?,
    })
}

fn review_from_row(r: &PgRow) -> Result<Review> {
    let edited: Option<Json<serde_json::Value>> = r.try_get("edited_result")?;
    let rating: Option<i16> = r.try_get("rating")?;
    Ok(Review {
        review_id: r.try_get("review_id")?,
        task_id: task_id(r.try_get("task_id")?)?,
        decision: r.try_get("decision")?,
        feedback: r.try_get("feedback")?,
        edited_result: edited.map(|j| j.0),
        rating: rating
            .map(u8::try_from)
            .transpose()
            .map_err(|e| corrupt("rating", e))?,
        reviewer: r.try_get("reviewer")?,
        at: r.try_get("at")?,
    })
}

/// Removes the company's steps, reviews and session (before its tasks).
/// The caller has named the company.
pub(super) async fn delete_company_agents(
    tx: &mut PgConnection,
    company: &CompanyId,
    deleted: &mut DeletedRows,
) -> Result<()> {
    crate::flow::company::delete_rows(tx, company, crate::flow::company::AGENT_ROWS, deleted)
        .await?;
    Ok(())
}

/// Commits what `work` did in `tx`, or rolls it back now when it failed.
pub(super) async fn commit_or_roll_back<T>(
    mut tx: Tx,
    work: impl AsyncFnOnce(&mut PgConnection) -> Result<T>,
) -> Result<T> {
    match work(&mut tx).await {
        Ok(v) => {
            tx.commit().await?;
            Ok(v)
        }
        Err(e) => {
            // The error to report is the one that made us roll back; a
            // rollback that fails closes the connection, which ends the
            // transaction all the same.
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn insert_review(
    tx: &mut PgConnection,
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
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {REVIEW_COLUMNS}"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(company.as_str())
        .bind(id.as_str())
        .bind(decision)
        .bind(feedback)
        .bind(edited_result.map(Json))
        .bind(rating.map(i16::from))
        .bind(reviewer)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
    review_from_row(&row)
}

/// Locks the task for a change that does not go through the queue: its
/// queue row if it has one, else its own row (the lock order of `work`).
/// NotFound when the company or the task is not there.
async fn lock_task(tx: &mut PgConnection, company: &CompanyId, id: &TaskId) -> Result<Task> {
    if !lock_company(tx, company).await? {
        return Err(StoreError::NotFound);
    }
    let queued: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM task_queue WHERE task_id = $1 AND company_id = $2 FOR UPDATE",
    )
    .bind(id.as_str())
    .bind(company.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    load_task(tx, company, id, queued.is_none()).await
}

async fn review_tx(
    tx: &mut PgConnection,
    company: &CompanyId,
    id: &TaskId,
    input: &ReviewInput,
    max_requeues: u32,
    now: DateTime<Utc>,
    audit: AuditRecord,
) -> Result<Task> {
    let task = lock_task(tx, company, id).await?;
    if task.status != TaskStatus::NeedsReview {
        return Err(StoreError::Conflict(format!(
            "task {id} is {}, not needs_review",
            task.status
        )));
    }
    let rejections: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM task_reviews WHERE company_id = $1 AND task_id = $2 AND decision = 'rejected'",
    )
    .bind(company.as_str())
    .bind(id.as_str())
    .fetch_one(&mut *tx)
    .await?;
    let rejections = u64::try_from(rejections).unwrap_or(0);
    let to = review_outcome(&input.decision, rejections, max_requeues);
    let reason = review_reason(input, to, rejections, max_requeues);
    set_status(tx, &task, to, &reason, now).await?;
    match (&input.decision, to) {
        (Decision::Approve { result }, _) => {
            sqlx::query(
                "UPDATE tasks SET result = COALESCE($1, result), requires_human_review = false \
                 WHERE company_id = $2 AND task_id = $3",
            )
            .bind(result.as_ref().map(Json))
            .bind(company.as_str())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        }
        (Decision::Reject { .. }, TaskStatus::Queued) => {
            // Runnable again: a queue row as a submission makes, with the
            // company's multiplier as it is now; finished_at goes, since the
            // task is not finished.
            sqlx::query(
                "UPDATE tasks SET max_attempts = $1, finished_at = NULL WHERE company_id = $2 AND task_id = $3",
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
                 t.deadline, $1, $1, t.estimated_tokens, t.attempts \
                 FROM tasks t JOIN companies c ON c.company_id = t.company_id \
                 WHERE t.company_id = $2 AND t.task_id = $3",
            )
            .bind(now)
            .bind(company.as_str())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
            notify(tx, id).await?;
        }
        (Decision::Reject { .. }, _) => {
            sqlx::query("UPDATE tasks SET last_error = $1 WHERE company_id = $2 AND task_id = $3")
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
        tx,
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
    let task = load_task(tx, company, id, false).await?;
    append(tx, audit).await?;
    Ok(task)
}

/// Inserts steps of `company`'s tasks (checked by the caller; the company
/// named for the policies). NotFound if a task is not the company's;
/// Conflict on a step already recorded.
async fn insert_steps(tx: &mut PgConnection, company: &CompanyId, steps: &[Step]) -> Result<()> {
    let mut ids: Vec<&str> = steps.iter().map(|s| s.task_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    // FOR KEY SHARE: the tasks stay while their steps go in.
    let found: Vec<String> = sqlx::query_scalar(
        "SELECT task_id FROM tasks WHERE company_id = $1 AND task_id = ANY ($2) FOR KEY SHARE",
    )
    .bind(company.as_str())
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    if found.len() != ids.len() {
        return Err(StoreError::NotFound);
    }
    let n = steps.len();
    let mut tasks = Vec::with_capacity(n);
    let mut attempts = Vec::with_capacity(n);
    let mut seqs = Vec::with_capacity(n);
    let mut agents = Vec::with_capacity(n);
    let mut kinds = Vec::with_capacity(n);
    let mut prompt = Vec::with_capacity(n);
    let mut completion = Vec::with_capacity(n);
    let mut latency = Vec::with_capacity(n);
    let mut details = Vec::with_capacity(n);
    let mut ats = Vec::with_capacity(n);
    for s in steps {
        tasks.push(s.task_id.as_str());
        attempts.push(s.attempt);
        seqs.push(s.seq);
        agents.push(s.agent.as_str());
        kinds.push(s.kind.as_str());
        prompt.push(s.prompt_tokens);
        completion.push(s.completion_tokens);
        latency.push(s.latency_ms);
        details.push(
            serde_json::to_string(&s.detail).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        );
        ats.push(s.at.trunc_subsecs(6));
    }
    sqlx::query(
        "INSERT INTO task_steps (company_id, task_id, attempt, seq, agent, kind, prompt_tokens, \
         completion_tokens, latency_ms, detail, at) \
         SELECT $1, r.task_id, r.attempt, r.seq, r.agent, r.kind, r.prompt_tokens, \
         r.completion_tokens, r.latency_ms, r.detail::jsonb, r.at \
         FROM unnest($2::text[], $3::int4[], $4::int4[], $5::text[], $6::text[], $7::int8[], \
                     $8::int8[], $9::int8[], $10::text[], $11::timestamptz[]) \
             AS r(task_id, attempt, seq, agent, kind, prompt_tokens, completion_tokens, \
                  latency_ms, detail, at)",
    )
    .bind(company.as_str())
    .bind(tasks)
    .bind(attempts)
    .bind(seqs)
    .bind(agents)
    .bind(kinds)
    .bind(prompt)
    .bind(completion)
    .bind(latency)
    .bind(details)
    .bind(ats)
    .execute(&mut *tx)
    .await
    .map_err(|e| match sqlstate(&e).as_deref() {
        Some(UNIQUE_VIOLATION) => StoreError::Conflict(
            "a step with this task, attempt and seq is already recorded".into(),
        ),
        _ => e.into(),
    })?;
    Ok(())
}

/// Steps and session turns of a run of `company` inside `tx` (the company
/// named here for the policies): the first half of what a run leaves
/// behind. Callers holding several companies' runs write every first half
/// in company order, then every [`write_run_memory`], so the session rows
/// and then the audit head are locked in one order.
pub(super) async fn write_run_records(
    tx: &mut PgConnection,
    company: &CompanyId,
    r: &RunRecords,
    now: DateTime<Utc>,
) -> Result<()> {
    r.check(company)?;
    super::set_company(&mut *tx, company.as_str()).await?;
    if !r.steps.is_empty() {
        insert_steps(&mut *tx, company, &r.steps).await?;
    }
    if !r.session_turns.is_empty() {
        sqlx::query(
            "INSERT INTO agent_sessions (company_id, summary, turns, tokens, version, updated_at) \
             VALUES ($1, '', $2, $3, 1, $4) ON CONFLICT (company_id) DO UPDATE SET \
             turns = agent_sessions.turns || EXCLUDED.turns, \
             tokens = agent_sessions.tokens + EXCLUDED.tokens, \
             version = agent_sessions.version + 1, updated_at = EXCLUDED.updated_at",
        )
        .bind(company.as_str())
        .bind(Json(&r.session_turns))
        .bind(r.session_tokens)
        .bind(now.trunc_subsecs(6))
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// The memory of a run's result and its audit entry: the second half of
/// what a run leaves behind (see [`write_run_records`]).
pub(super) async fn write_run_memory(
    tx: &mut PgConnection,
    company: &CompanyId,
    r: &RunRecords,
) -> Result<()> {
    if let Some((m, audit)) = &r.memory {
        super::set_company(&mut *tx, company.as_str()).await?;
        super::memory::insert_rows(&mut *tx, company, std::slice::from_ref(m)).await?;
        append(&mut *tx, audit.clone()).await?;
    }
    Ok(())
}

#[async_trait]
impl AgentStore for PgStore {
    async fn record_steps(&self, scope: &CompanyScope, steps: &[Step]) -> Result<()> {
        check_steps(steps)?;
        if steps.is_empty() {
            return Ok(());
        }
        let company = scope.company();
        let tx = self.scoped(company).await?;
        commit_or_roll_back(tx, async |tx| insert_steps(tx, company, steps).await).await
    }

    async fn task_trace(&self, scope: &CompanyScope, id: &TaskId) -> Result<Vec<Step>> {
        let company = scope.company();
        let tx = self.scoped(company).await?;
        commit_or_roll_back(tx, async |tx| {
            load_task(tx, company, id, false).await?;
            let sql = format!(
                "SELECT {STEP_COLUMNS} FROM task_steps WHERE company_id = $1 AND task_id = $2 \
                 ORDER BY attempt, seq"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(company.as_str())
                .bind(id.as_str())
                .fetch_all(&mut *tx)
                .await?;
            rows.iter().map(step_from_row).collect()
        })
        .await
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
        let tx = self.scoped(company).await?;
        commit_or_roll_back(tx, async |tx| {
            review_tx(tx, company, id, input, max_requeues, now, audit).await
        })
        .await
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
        let tx = self.scoped(company).await?;
        commit_or_roll_back(tx, async |tx| {
            let task = lock_task(tx, company, id).await?;
            if !matches!(task.status, TaskStatus::Completed | TaskStatus::NeedsReview) {
                return Err(StoreError::Conflict(format!(
                    "task {id} is {}; only a completed task or one in needs_review is rated",
                    task.status
                )));
            }
            let review = insert_review(
                tx,
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
            append(tx, audit).await?;
            Ok(review)
        })
        .await
    }

    async fn task_reviews(&self, scope: &CompanyScope, id: &TaskId) -> Result<Vec<Review>> {
        let company = scope.company();
        let tx = self.scoped(company).await?;
        commit_or_roll_back(tx, async |tx| {
            load_task(tx, company, id, false).await?;
            let sql = format!(
                "SELECT {REVIEW_COLUMNS} FROM task_reviews WHERE company_id = $1 AND task_id = $2 \
                 ORDER BY review_id"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(company.as_str())
                .bind(id.as_str())
                .fetch_all(&mut *tx)
                .await?;
            rows.iter().map(review_from_row).collect()
        })
        .await
    }

    async fn load_session(&self, scope: &CompanyScope) -> Result<Session> {
        let company = scope.company();
        let tx = self.scoped(company).await?;
        commit_or_roll_back(tx, async |tx| {
            let row = sqlx::query(
                "SELECT summary, turns, tokens, version, updated_at FROM agent_sessions \
                 WHERE company_id = $1",
            )
            .bind(company.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            let Some(r) = row else {
                return Ok(Session::default());
            };
            let turns: Json<Vec<serde_json::Value>> = r.try_get("turns")?;
            Ok(Session {
                summary: r.try_get("summary")?,
                turns: turns.0,
                tokens: r.try_get("tokens")?,
                version: r.try_get("version")?,
                updated_at: r.try_get("updated_at")?,
            })
        })
        .await
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
        let tx = self.scoped(company).await?;
        commit_or_roll_back(tx, async |tx| {
            if !lock_company(tx, company).await? {
                return Err(StoreError::NotFound);
            }
            // A first save inserts; two racing first saves meet on the
            // primary key, and the one that waited inserts nothing.
            let n = if session.version == 0 {
                sqlx::query(
                    "INSERT INTO agent_sessions (company_id, summary, turns, tokens, version, updated_at) \
                     VALUES ($1, $2, $3, $4, 1, $5) ON CONFLICT (company_id) DO NOTHING",
                )
                .bind(company.as_str())
                .bind(&session.summary)
                .bind(Json(&session.turns))
                .bind(session.tokens)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected()
            } else {
                sqlx::query(
                    "UPDATE agent_sessions SET summary = $1, turns = $2, tokens = $3, \
                     version = version + 1, updated_at = $4 WHERE company_id = $5 AND version = $6",
                )
                .bind(&session.summary)
                .bind(Json(&session.turns))
                .bind(session.tokens)
                .bind(now)
                .bind(company.as_str())
                .bind(session.version)
                .execute(&mut *tx)
                .await?
                .rows_affected()
            };
            if n == 0 {
                return Err(stale_session(company, session.version));
            }
            Ok(Session {
                version: session.version + 1,
                updated_at: Some(now),
                ..session.clone()
            })
        })
        .await
    }
}
