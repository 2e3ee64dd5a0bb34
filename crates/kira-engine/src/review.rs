//! Human review of results: the review queue, a reviewer's decision (its
//! fields checked against the decision) applied through the store (with
//! the configured `[review] max_requeues`), ratings, and an accepted
//! result remembered as the company's `task_result` memory, so later work
//! for the company can find it.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use kira_core::audit::{AuditRecord, Outcome};
use kira_core::auth::CompanyScope;
use kira_core::memory::{EventType, NewMemory, Workstream};
use kira_core::task::{Priority, Task, TaskId, TaskStatus};
use kira_store::agents::{Decision, MAX_FEEDBACK_CHARS, Review, ReviewInput};
use kira_store::memory::{Archived, MemoryFilter};
use kira_store::work::TaskFilter;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::config::EngineConfig;
use crate::memory::Memories;
use crate::{Ctx, EngineError};

/// The category every result memory is filed under.
pub const RESULT_CATEGORY: &str = "task_results";

/// A result memory's text is cut to this many characters: enough for a
/// summary and a short answer; the whole result stays on the task.
pub const MAX_RESULT_TEXT_CHARS: usize = 4_000;

/// What a reviewer decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReviewDecision {
    Approve,
    Reject,
}

/// A reviewer's decision on a task in `needs_review`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewRequest {
    /// approve: the task completes; reject: it runs again with the
    /// feedback, or fails when it was already rejected `[review]
    /// max_requeues` times.
    pub decision: ReviewDecision,
    /// approve only: the result to keep instead of the agent's (a JSON
    /// object).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// reject only, and required there: what to change.
    #[serde(default)]
    pub feedback: Option<String>,
    /// 1 (poor) to 5 (excellent).
    #[serde(default)]
    pub rating: Option<u8>,
}

impl ReviewRequest {
    /// The decision as the store takes it; a field that does not belong
    /// with the decision is refused rather than ignored.
    fn into_input(self, reviewer: String) -> Result<ReviewInput, EngineError> {
        check_rating(self.rating)?;
        let decision = match self.decision {
            ReviewDecision::Approve => {
                if self.feedback.is_some() {
                    return Err(parameter(
                        "feedback",
                        "only a rejection carries feedback; to change the result, send it as result",
                    ));
                }
                if let Some(r) = &self.result
                    && !r.is_object()
                {
                    return Err(parameter("result", "must be a JSON object"));
                }
                Decision::Approve {
                    result: self.result,
                }
            }
            ReviewDecision::Reject => {
                if self.result.is_some() {
                    return Err(parameter(
                        "result",
                        "a rejection carries no result; say what to change in feedback",
                    ));
                }
                let feedback = self.feedback.unwrap_or_default();
                let feedback = feedback.trim();
                if feedback.is_empty() {
                    return Err(parameter("feedback", "a rejection must say what to change"));
                }
                if feedback.chars().count() > MAX_FEEDBACK_CHARS {
                    return Err(parameter(
                        "feedback",
                        format!("must be at most {MAX_FEEDBACK_CHARS} characters"),
                    ));
                }
                Decision::Reject {
                    feedback: feedback.to_owned(),
                }
            }
        };
        Ok(ReviewInput {
            decision,
            rating: self.rating,
            reviewer,
        })
    }
}

fn parameter(field: &str, message: impl Into<String>) -> EngineError {
    EngineError::Parameter(kira_core::ValidationError::new(field, message))
}

/// Human review. No state of its own; an approved result is remembered
/// through memory, so it is embedded and checked for conflicts like any
/// memory.
pub struct Reviews {
    ctx: Arc<Ctx>,
    memory: Arc<Memories>,
}

impl Reviews {
    pub(crate) fn new(ctx: Arc<Ctx>, memory: Arc<Memories>) -> Self {
        Self { ctx, memory }
    }

    /// One page of the scope's company's tasks waiting for a reviewer
    /// (`needs_review`), newest first; `before` is the cursor.
    pub async fn queue(
        &self,
        scope: &CompanyScope,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Task>, EngineError> {
        let filter = TaskFilter {
            status: Some(TaskStatus::NeedsReview),
            before_seq: before,
            limit,
            ..TaskFilter::default()
        };
        Ok(self.ctx.store.list_tasks(scope, &filter).await?)
    }

    /// Applies `reviewer`'s decision now (see [`Reviews::apply`]), once its
    /// fields fit the decision.
    pub async fn decide(
        &self,
        scope: &CompanyScope,
        id: &TaskId,
        req: ReviewRequest,
        reviewer: String,
        audit: AuditRecord,
    ) -> Result<Task, EngineError> {
        let input = req.into_input(reviewer)?;
        self.apply(scope, id, input, self.ctx.clock.now(), audit)
            .await
    }

    /// Applies a reviewer's decision to a task in `needs_review` (see
    /// [`kira_store::agents::AgentStore::review_task`]). A rejected task that
    /// goes back to the queue wakes the scheduler; an approved one's result is
    /// recorded as a memory. The review is stored by then, so a failure to
    /// record the memory is logged, not returned ([`Reviews::remember_result`] may
    /// be run again: it adds the memory once).
    pub async fn apply(
        &self,
        scope: &CompanyScope,
        id: &TaskId,
        input: ReviewInput,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Task, EngineError> {
        let task = self
            .ctx
            .store
            .review_task(
                scope,
                id,
                &input,
                self.ctx.config.review.max_requeues,
                now,
                audit,
            )
            .await?;
        match task.status {
            TaskStatus::Queued => self.ctx.wake_scheduler(),
            TaskStatus::Completed => {
                if let Err(e) = self.remember_result(scope, &task).await {
                    tracing::error!(task = %task.task_id, error = %e, "could not record the approved result as a memory");
                }
            }
            _ => {}
        }
        Ok(task)
    }

    /// Rates a completed task, or one in review, 1 to 5; each rating is
    /// kept. `Store(Conflict)` for a task in any other status.
    pub async fn rate(
        &self,
        scope: &CompanyScope,
        id: &TaskId,
        rating: u8,
        reviewer: &str,
        audit: AuditRecord,
    ) -> Result<Review, EngineError> {
        check_rating(Some(rating))?;
        Ok(self
            .ctx
            .store
            .rate_task(scope, id, rating, reviewer, self.ctx.clock.now(), audit)
            .await?)
    }

    /// A task's decisions and ratings, oldest first.
    pub async fn list(
        &self,
        scope: &CompanyScope,
        id: &TaskId,
    ) -> Result<Vec<Review>, EngineError> {
        Ok(self.ctx.store.task_reviews(scope, id).await?)
    }

    /// Records a completed task's result as the company's episodic memory: a
    /// `task_result` event in the task type's workstream, category
    /// `task_results`, whose text is the result's summary and answer, with the
    /// task as its source. Added through [`Memories::add`], so it is
    /// embedded and checked for conflicts like any memory.
    ///
    /// Idempotent: a task's result memory occurs at the task's `finished_at`
    /// (a completed task's never changes), so the memories of that instant are
    /// looked through for one whose source is the task; if there is one
    /// (archived included), nothing is added. A task without a result, or not
    /// completed, adds nothing.
    pub async fn remember_result(
        &self,
        scope: &CompanyScope,
        task: &Task,
    ) -> Result<(), EngineError> {
        if task.status != TaskStatus::Completed {
            return Ok(());
        }
        let occurred_at = task.finished_at.unwrap_or(task.updated_at);
        let Some(memory) = result_new_memory(&self.ctx.config, task, occurred_at) else {
            return Ok(());
        };
        let source = task.task_id.as_str();
        let same_instant = MemoryFilter {
            event_type: Some(EventType::TaskResult),
            from: Some(occurred_at),
            until: Some(occurred_at + TimeDelta::microseconds(1)),
            archived: Archived::Include,
            ..MemoryFilter::default()
        };
        let seen = self
            .ctx
            .store
            .list_memories(scope, &same_instant, None, 1_000)
            .await?;
        if seen.iter().any(|m| m.source.as_deref() == Some(source)) {
            return Ok(());
        }
        let audit = result_audit(scope, task, self.ctx.clock.now());
        self.memory.add(scope, vec![memory], false, audit).await?;
        Ok(())
    }
}

/// A rating, when given, is 1 (poor) to 5 (excellent).
pub fn check_rating(rating: Option<u8>) -> Result<(), EngineError> {
    match rating {
        Some(r) if !(1..=5).contains(&r) => Err(parameter("rating", "must be between 1 and 5")),
        _ => Ok(()),
    }
}

/// The memory of a completed task's result, occurring at `occurred_at`
/// (see [`Reviews::remember_result`]); None when the result has no text.
pub(crate) fn result_new_memory(
    cfg: &EngineConfig,
    task: &Task,
    occurred_at: DateTime<Utc>,
) -> Option<NewMemory> {
    let text = task.result.as_ref().and_then(result_text)?;
    let workstream = crate::memory::workstream_of(cfg, &task.task_type)
        .ok()
        .or_else(|| Workstream::parse(&task.agent).ok())
        .unwrap_or(Workstream::General);
    Some(NewMemory {
        occurred_at,
        event_type: EventType::TaskResult,
        workstream,
        category: RESULT_CATEGORY.to_owned(),
        content: json!({
            "text": text,
            "task_id": task.task_id,
            "task_type": task.task_type,
            "confidence": task.confidence,
        }),
        importance: result_importance(task.priority, &task.agent),
        indexed_terms: Vec::new(),
        source: Some(task.task_id.as_str().to_owned()),
    })
}

/// The audit entry of a result memory.
pub(crate) fn result_audit(scope: &CompanyScope, task: &Task, now: DateTime<Utc>) -> AuditRecord {
    AuditRecord {
        at: now,
        request_id: format!("task_result-{}", task.task_id),
        actor: scope.actor().to_string(),
        company_id: Some(scope.company().clone()),
        action: "memory.add".into(),
        target: format!("task:{}", task.task_id),
        outcome: Outcome::Ok,
        detail: "task_result".into(),
    }
}

/// How much a result matters: by the task's priority (emergency 9, urgent
/// 8, high 7, medium 5, low 3), one more when a specialist did the work.
pub fn result_importance(priority: Priority, agent: &str) -> i16 {
    let base = match priority {
        Priority::Emergency => 9,
        Priority::Urgent => 8,
        Priority::High => 7,
        Priority::Medium => 5,
        Priority::Low => 3,
    };
    let specialist = i16::from(agent != "primary");
    (base + specialist).min(10)
}

/// The words of a result worth remembering: its `summary` and `answer`
/// (strings), else the result as text; cut to [`MAX_RESULT_TEXT_CHARS`],
/// with control characters a memory may not hold made spaces. None when
/// nothing is left.
pub fn result_text(result: &Value) -> Option<String> {
    let field = |k: &str| {
        result
            .get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let mut parts: Vec<&str> = Vec::new();
    for p in [field("summary"), field("answer")].into_iter().flatten() {
        if !parts.contains(&p) {
            parts.push(p);
        }
    }
    let raw = if !parts.is_empty() {
        parts.join("\n\n")
    } else {
        match result {
            Value::Null => return None,
            Value::String(s) => s.clone(),
            // Keys sorted, so the text is the same whichever database
            // kept the result (JSONB reorders keys; SQLite keeps them).
            v => {
                let mut v = v.clone();
                v.sort_all_objects();
                v.to_string()
            }
        }
    };
    let clean: String = raw
        .replace("\r\n", "\n")
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                ' '
            } else {
                c
            }
        })
        .collect();
    let clean = clean.trim();
    if clean.is_empty() {
        return None;
    }
    if clean.chars().count() <= MAX_RESULT_TEXT_CHARS {
        return Some(clean.to_owned());
    }
    let cut: String = clean.chars().take(MAX_RESULT_TEXT_CHARS - 1).collect();
    Some(format!("{}…", cut.trim_end()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn importance_follows_priority_and_the_specialist() {
        let got: Vec<i16> = Priority::ALL
            .iter()
            .map(|p| result_importance(*p, "primary"))
            .collect();
        assert_eq!(got, [9, 8, 7, 5, 3]);
        let got: Vec<i16> = Priority::ALL
            .iter()
            .map(|p| result_importance(*p, "legal"))
            .collect();
        assert_eq!(got, [10, 9, 8, 6, 4]);
    }

    #[test]
    fn the_text_is_the_summary_and_the_answer() {
        assert_eq!(
            result_text(&json!({"summary": " NDA reviewed ", "answer": "Sign it.", "x": 1})),
            Some("NDA reviewed\n\nSign it.".into())
        );
        assert_eq!(
            result_text(&json!({"answer": "Only this"})),
            Some("Only this".into())
        );
        assert_eq!(
            result_text(&json!({"summary": "Same", "answer": "Same"})),
            Some("Same".into())
        );
        assert_eq!(
            result_text(&json!("plain\r\ntext")),
            Some("plain\ntext".into())
        );
        assert_eq!(
            result_text(&json!({"figures": [1, 2]})),
            Some(r#"{"figures":[1,2]}"#.into())
        );
        assert_eq!(
            result_text(&json!({"summary": "bell\u{7}here"})),
            Some("bell here".into())
        );
        assert_eq!(result_text(&json!(null)), None);
        assert_eq!(result_text(&json!("  ")), None);
        // Empty fields leave the result's JSON to remember.
        assert_eq!(
            result_text(&json!({"summary": " ", "answer": ""})),
            Some(r#"{"answer":"","summary":" "}"#.into())
        );
    }

    #[test]
    fn long_results_are_cut() {
        let text =
            result_text(&json!({"answer": "é".repeat(MAX_RESULT_TEXT_CHARS * 2)})).expect("text");
        assert_eq!(text.chars().count(), MAX_RESULT_TEXT_CHARS);
        assert!(text.ends_with('…'));
        let exact = "a".repeat(MAX_RESULT_TEXT_CHARS);
        assert_eq!(result_text(&json!(exact.clone())), Some(exact));
    }
}
