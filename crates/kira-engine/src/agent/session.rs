//! The primary agent's persistent session with its company: every task
//! (answered inline or by a specialist) adds a turn; when the summary and
//! turns pass `primary.session_max_tokens`, the older turns are summarised
//! into the summary by the engine's summariser, keeping the last
//! `primary.session_keep_turns` verbatim.

use kira_core::auth::CompanyScope;
use kira_core::memory::{EventType, Memory, Workstream};
use kira_core::task::Task;
use kira_store::StoreError;
use kira_store::agents::Session;
use serde_json::json;

use crate::memory::pack::count_tokens;
use crate::{Engine, EngineError};

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

/// Adds the task and its outcome to the company's session, compacting it
/// when it grew past the threshold. Optimistic: a concurrent save makes
/// this one reload and try again.
pub async fn record_turn(
    engine: &Engine,
    scope: &CompanyScope,
    task: &Task,
    summary: &str,
    status: &str,
) -> Result<(), EngineError> {
    let cfg = &engine.config().primary;
    let now = engine.clock().now();
    let mut last = None;
    for _ in 0..SAVE_TRIES {
        let mut s = engine.store().load_session(scope).await?;
        s.turns.push(json!({
            "role": "user", "task_id": task.task_id, "content": cut(&task.task), "at": now,
        }));
        s.turns.push(json!({
            "role": task.agent, "task_id": task.task_id,
            "content": format!("({status}) {}", cut(summary)), "at": now,
        }));
        s.tokens = tokens(&s);
        if s.tokens > cfg.session_max_tokens && s.turns.len() > cfg.session_keep_turns {
            compact(engine, scope, &mut s, cfg.session_keep_turns).await?;
        }
        match engine.store().save_session(scope, &s, now).await {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict(m)) => last = Some(m),
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Conflict(last.unwrap_or_default()).into())
}

/// Folds every turn but the last `keep` into the summary.
async fn compact(
    engine: &Engine,
    scope: &CompanyScope,
    s: &mut Session,
    keep: usize,
) -> Result<(), EngineError> {
    let cut_at = s.turns.len() - keep;
    let old: Vec<serde_json::Value> = s.turns.drain(..cut_at).collect();
    let now = engine.clock().now();
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
    s.summary = engine
        .summarizer()
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
