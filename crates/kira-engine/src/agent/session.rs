//! The primary agent's persistent session with its company: every task
//! (answered inline or by a specialist) adds two turns, appended with the
//! run's end; when the summary and turns pass
//! `primary.session_max_tokens`, the older turns are summarised into the
//! summary by the engine's summariser, keeping the last
//! `primary.session_keep_turns` verbatim.

use chrono::{DateTime, Utc};
use kira_core::auth::CompanyScope;
use kira_core::memory::{EventType, Memory, Workstream};
use kira_core::task::Task;
use kira_store::StoreError;
use kira_store::agents::Session;
use serde_json::{Value, json};

use crate::memory::pack::count_tokens;
use crate::memory::summarize::Summarizer;
use crate::{Ctx, EngineError};

/// Characters of a task or a summary a turn keeps.
const TURN_CHARS: usize = 600;
/// Saves retried after a concurrent one won.
const SAVE_TRIES: usize = 3;

/// What the primary agent is shown of its session.
pub fn render(s: &Session) -> String {
    let mut out = String::new();
    if !s.summary.trim().is_empty() {
        out.push_str("Earlier: ");
        out.push_str(s.summary.trim());
        out.push('\n');
    }
    for t in &s.turns {
        out.push_str(&turn_line(t));
        out.push('\n');
    }
    out
}

fn turn_line(t: &serde_json::Value) -> String {
    format!(
        "[{}] {}: {}",
        t.get("task_id").and_then(|v| v.as_str()).unwrap_or(""),
        t.get("role").and_then(|v| v.as_str()).unwrap_or(""),
        t.get("content").and_then(|v| v.as_str()).unwrap_or("")
    )
}

fn cut(s: &str) -> String {
    s.chars().take(TURN_CHARS).collect()
}

fn tokens(s: &Session) -> i64 {
    i64::try_from(count_tokens(&render(s))).unwrap_or(i64::MAX)
}

/// The two turns a task adds to its company's session (the task, then
/// its outcome), and their tokens: written with the run's end, in its
/// transaction, so concurrent runs of a company never lose a turn.
pub fn turns(task: &Task, summary: &str, status: &str, now: DateTime<Utc>) -> (Vec<Value>, i64) {
    let turns = vec![
        json!({
            "role": "user", "task_id": task.task_id, "content": cut(&task.task), "at": now,
        }),
        json!({
            "role": task.agent, "task_id": task.task_id,
            "content": format!("({status}) {}", cut(summary)), "at": now,
        }),
    ];
    let tokens = turns
        .iter()
        .map(|t| count_tokens(&turn_line(t)) + 1)
        .sum::<usize>();
    (turns, i64::try_from(tokens).unwrap_or(i64::MAX))
}

/// Summarises the company's session when it has grown past
/// `primary.session_max_tokens`, keeping the last
/// `primary.session_keep_turns` turns verbatim. Optimistic: when a run
/// appends turns meanwhile, the save is refused and tried again on the
/// session as it now is (a few times; after that the next run's end does
/// it). Returns whether it compacted.
pub(crate) async fn compact_if_needed(
    ctx: &Ctx,
    summarizer: &dyn Summarizer,
    scope: &CompanyScope,
) -> Result<bool, EngineError> {
    let cfg = &ctx.config.primary;
    for _ in 0..SAVE_TRIES {
        let mut s = ctx.store.load_session(scope).await?;
        if s.tokens <= cfg.session_max_tokens || s.turns.len() <= cfg.session_keep_turns {
            return Ok(false);
        }
        let now = ctx.clock.now();
        compact(summarizer, scope, &mut s, cfg.session_keep_turns, now).await?;
        match ctx.store.save_session(scope, &s, ctx.clock.now()).await {
            Ok(_) => return Ok(true),
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(false)
}

/// Folds every turn but the last `keep` into the summary.
async fn compact(
    summarizer: &dyn Summarizer,
    scope: &CompanyScope,
    s: &mut Session,
    keep: usize,
    now: DateTime<Utc>,
) -> Result<(), EngineError> {
    let cut_at = s.turns.len() - keep;
    let old: Vec<serde_json::Value> = s.turns.drain(..cut_at).collect();
    // The summariser works on memories: the old summary and each turn
    // stand in as notes, oldest first.
    let mut notes = Vec::with_capacity(old.len() + 1);
    let note = |text: String| Memory {
        id: uuid::Uuid::now_v7(),
        company_id: scope.company().clone(),
        occurred_at: now,
        event_type: EventType::Note,
        workstream: Workstream::default(),
        category: "session".into(),
        content: json!({"text": text}),
        importance: 5,
        indexed_terms: Vec::new(),
        source: None,
        created_at: now,
        archived_at: None,
        compacted_from: Vec::new(),
        supersedes: None,
    };
    if !s.summary.trim().is_empty() {
        notes.push(note(s.summary.clone()));
    }
    notes.extend(old.iter().map(|t| note(turn_line(t))));
    s.summary = summarizer
        .summarize(&notes)
        .await
        .map_err(EngineError::Summarize)?;
    s.tokens = tokens(s);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_shows_the_summary_then_the_turns() {
        let s = Session {
            summary: "Board approved the budget.".into(),
            turns: vec![
                json!({"role": "user", "task_id": "acme_q_001", "content": "Status?"}),
                json!({"role": "primary", "task_id": "acme_q_001", "content": "(completed) On track."}),
            ],
            ..Session::default()
        };
        assert_eq!(
            render(&s),
            "Earlier: Board approved the budget.\n[acme_q_001] user: Status?\n[acme_q_001] primary: (completed) On track.\n"
        );
        assert_eq!(render(&Session::default()), "");
    }
}
