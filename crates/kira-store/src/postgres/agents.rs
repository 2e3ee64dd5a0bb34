//! Run traces, reviews and primary sessions on PostgreSQL. Each transaction
//! names its company for the row-level policies and every statement binds
//! it again. The flows are `flow::agents`'s; the set inserts of a run's
//! steps and turns (`unnest`) and the locks are here.
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
use sqlx::PgConnection;
use sqlx::types::Json;

use super::work::{lock_company, notify};
use super::{PgStore, Tx, UNIQUE_VIOLATION, append, sqlstate};
use crate::agents::*;
use crate::flow::agents as flow;
use crate::flow::tasks::load_task;
use crate::work::RunRecords;
use crate::{DeletedRows, Result, StoreError};

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
        commit_or_roll_back(tx, async |tx| flow::trace(tx, company, id).await).await
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
        let tx = self.scoped(company).await?;
        commit_or_roll_back(tx, async |tx| {
            let task = lock_task(tx, company, id).await?;
            let task = flow::review(tx, &task, input, max_requeues, now, audit).await?;
            if task.status == TaskStatus::Queued {
                // Requeued: wake the schedulers on commit.
                notify(tx, id).await?;
            }
            Ok(task)
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
        let company = scope.company();
        let tx = self.scoped(company).await?;
        commit_or_roll_back(tx, async |tx| {
            let task = lock_task(tx, company, id).await?;
            flow::rate(tx, &task, rating, reviewer, now, audit).await
        })
        .await
    }

    async fn task_reviews(&self, scope: &CompanyScope, id: &TaskId) -> Result<Vec<Review>> {
        let company = scope.company();
        let tx = self.scoped(company).await?;
        commit_or_roll_back(tx, async |tx| flow::reviews(tx, company, id).await).await
    }

    async fn load_session(&self, scope: &CompanyScope) -> Result<Session> {
        let company = scope.company();
        let tx = self.scoped(company).await?;
        commit_or_roll_back(tx, async |tx| flow::load_session(tx, company).await).await
    }

    async fn save_session(
        &self,
        scope: &CompanyScope,
        session: &Session,
        now: DateTime<Utc>,
    ) -> Result<Session> {
        check_session(session)?;
        let company = scope.company();
        let tx = self.scoped(company).await?;
        commit_or_roll_back(tx, async |tx| {
            if !lock_company(tx, company).await? {
                return Err(StoreError::NotFound);
            }
            flow::save_session(tx, company, session, now).await
        })
        .await
    }
}
