//! Run traces, reviews and primary sessions on SQLite. Every statement binds
//! the scope's company; writes take the process's one writer turn, so a
//! review's read of the task and its change cannot interleave with another.
//! The flows are `flow::agents`'s; the set inserts of a run's records (one
//! command for all of them) are here.

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use kira_core::CompanyId;
use kira_core::audit::AuditRecord;
use kira_core::auth::CompanyScope;
use kira_core::task::{Task, TaskId};
use sqlx::SqliteConnection;

use super::{SqliteStore, to_json, ts};
use crate::agents::*;
use crate::flow::agents as flow;
use crate::flow::companies::load_company;
use crate::flow::tasks::load_task;
use crate::work::RunRecords;
use crate::{DeletedRows, Result, StoreError};

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
        flow::trace(&mut self.pool.acquire().await?, scope.company(), id).await
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
        let mut tx = self.write().await?;
        let task = load_task(&mut tx, scope.company(), id, false).await?;
        let task = flow::review(&mut tx, &task, input, max_requeues, now, audit).await?;
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
        let mut tx = self.write().await?;
        let task = load_task(&mut tx, scope.company(), id, false).await?;
        let review = flow::rate(&mut tx, &task, rating, reviewer, now, audit).await?;
        tx.commit().await?;
        Ok(review)
    }

    async fn task_reviews(&self, scope: &CompanyScope, id: &TaskId) -> Result<Vec<Review>> {
        flow::reviews(&mut self.pool.acquire().await?, scope.company(), id).await
    }

    async fn load_session(&self, scope: &CompanyScope) -> Result<Session> {
        flow::load_session(&mut self.pool.acquire().await?, scope.company()).await
    }

    async fn save_session(
        &self,
        scope: &CompanyScope,
        session: &Session,
        now: DateTime<Utc>,
    ) -> Result<Session> {
        check_session(session)?;
        let mut tx = self.write().await?;
        load_company(&mut tx, scope.company(), false).await?;
        let saved = flow::save_session(&mut tx, scope.company(), session, now).await?;
        tx.commit().await?;
        Ok(saved)
    }
}
