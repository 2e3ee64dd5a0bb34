//! What SQLite writes its own way for agents: the steps' insert
//! ([`StepSql`]) and a run's records, one command for all of them. The
//! store and its flows are `flow::agents`'s.

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use kira_core::CompanyId;
use kira_core::audit::AuditRecord;
use kira_core::task::TaskId;
use sqlx::{Sqlite, SqliteConnection};

use super::{to_json, ts};
use crate::agents::Step;
use crate::flow::agents::{StepSql, check_step_tasks};
use crate::work::RunRecords;
use crate::{Result, StoreError};

#[async_trait]
impl StepSql for Sqlite {
    async fn insert_steps(
        c: &mut SqliteConnection,
        company: &CompanyId,
        steps: &[Step],
    ) -> Result<()> {
        let rows = steps
            .iter()
            .map(|s| step_row(company, s))
            .collect::<Result<Vec<_>>>()?;
        let mut script = super::Script::default();
        push_step_rows(&mut script, &rows)?;
        script.run(c).await.map_err(records_error)?;
        Ok(())
    }
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
         FROM jsonb_each(?) ORDER BY key;",
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
             SELECT value ->> 0, '', json(value -> 1), value ->> 2, 1, ? FROM jsonb_each(?) \
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
