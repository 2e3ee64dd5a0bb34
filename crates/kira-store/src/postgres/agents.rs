//! What PostgreSQL writes its own way for agents: the steps' insert over
//! `unnest` ([`StepSql`]) and a run's records in the lock order. The store
//! and its flows are `flow::agents`'s.

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use kira_core::CompanyId;
use sqlx::types::Json;
use sqlx::{PgConnection, Postgres};

use super::{UNIQUE_VIOLATION, append, sqlstate};
use crate::agents::Step;
use crate::flow::agents::{StepSql, check_step_tasks};
use crate::work::RunRecords;
use crate::{Result, StoreError};

#[async_trait]
impl StepSql for Postgres {
    /// One statement over `unnest`; the company named for the policies.
    async fn insert_steps(
        tx: &mut PgConnection,
        company: &CompanyId,
        steps: &[Step],
    ) -> Result<()> {
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
        check_step_tasks(&mut *tx, company, &r.steps).await?;
        <Postgres as StepSql>::insert_steps(&mut *tx, company, &r.steps).await?;
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
