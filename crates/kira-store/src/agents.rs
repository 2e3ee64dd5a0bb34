//! What agents leave behind: the trace of each run (every LLM call, tool
//! call and the messages between the primary agent and a specialist), human
//! review of results, and the primary agent's persistent session per
//! company. All of it is company data: scoped, row-level security on
//! PostgreSQL.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kira_core::ValidationError;
use kira_core::audit::AuditRecord;
use kira_core::auth::CompanyScope;
use kira_core::task::{Task, TaskId, TaskStatus};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Result;

/// The most steps one [`AgentStore::record_steps`] call takes (one
/// transaction): a run records its steps as it goes, a few at a time.
pub const MAX_STEPS_PER_CALL: usize = 1_000;

/// The longest feedback a rejection carries, in characters.
pub const MAX_FEEDBACK_CHARS: usize = 4_000;

/// What one step of a run was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// One call to a model: `detail` = {model, finish_reason, content,
    /// tool_calls: [{id, name, arguments}]}.
    Llm,
    /// One tool call executed by kira: `detail` = {call_id, name,
    /// arguments, result | error}.
    Tool,
    /// SEED 1's task message from the primary agent to a specialist:
    /// `detail` = the message.
    TaskMessage,
    /// SEED 1's response message from the specialist: `detail` = the message.
    ResponseMessage,
    /// The run ended: `detail` = {status, reason, limit?}.
    End,
}

impl StepKind {
    pub const ALL: [StepKind; 5] = [
        StepKind::Llm,
        StepKind::Tool,
        StepKind::TaskMessage,
        StepKind::ResponseMessage,
        StepKind::End,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Llm => "llm",
            StepKind::Tool => "tool",
            StepKind::TaskMessage => "task_message",
            StepKind::ResponseMessage => "response_message",
            StepKind::End => "end",
        }
    }

    pub fn parse(s: &str) -> Option<StepKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One recorded step of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Step {
    pub task_id: TaskId,
    /// The task's attempt this step belongs to (1 for the first run).
    pub attempt: i32,
    /// Order within the attempt, from 0.
    pub seq: i32,
    /// The agent that took the step (`primary`, `legal`, ...).
    pub agent: String,
    pub kind: StepKind,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub latency_ms: i64,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    pub at: DateTime<Utc>,
}

/// A reviewer's decision on a task in `needs_review`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// The task completes, with `result` instead of the agent's when given.
    Approve {
        #[serde(default)]
        #[schema(value_type = Option<Object>)]
        result: Option<serde_json::Value>,
    },
    /// The task goes back to the queue with the feedback (once; a task
    /// already rejected `max_requeues` times fails instead).
    Reject { feedback: String },
}

/// What a reviewer sends.
#[derive(Debug, Clone, PartialEq)]
pub struct ReviewInput {
    pub decision: Decision,
    /// 1 to 5, the satisfaction score; checked by the caller.
    pub rating: Option<u8>,
    /// Who decided (the key id).
    pub reviewer: String,
}

/// A recorded review (decisions and ratings alike).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Review {
    pub review_id: i64,
    pub task_id: TaskId,
    /// `approved`, `rejected` or `rated` (a rating without a decision).
    pub decision: String,
    pub feedback: Option<String>,
    /// The approved result, when the reviewer edited it.
    #[schema(value_type = Option<Object>)]
    pub edited_result: Option<serde_json::Value>,
    pub rating: Option<u8>,
    pub reviewer: String,
    pub at: DateTime<Utc>,
}

/// The primary agent's persistent session with one company: a summary of
/// older turns and the recent ones.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct Session {
    /// The summary of turns compacted away ("" at first).
    pub summary: String,
    /// Recent turns, oldest first: [{role, content, task_id, at}].
    #[schema(value_type = Vec<Object>)]
    pub turns: Vec<serde_json::Value>,
    /// Tokens of summary + turns, as last counted.
    pub tokens: i64,
    /// Bumped by every save; a save with a stale version is a Conflict.
    pub version: i64,
    pub updated_at: Option<DateTime<Utc>>,
}

#[async_trait]
pub trait AgentStore: Send + Sync {
    /// Appends steps of one task's run (all of `scope`'s company). NotFound
    /// if a task is not the company's.
    async fn record_steps(&self, scope: &CompanyScope, steps: &[Step]) -> Result<()>;

    /// The task's steps, by attempt then seq. NotFound if the task is not
    /// the company's.
    async fn task_trace(&self, scope: &CompanyScope, id: &TaskId) -> Result<Vec<Step>>;

    /// Applies a reviewer's decision to a task in `needs_review`, in one
    /// transaction with its audit entry and the review row: approve ->
    /// completed (result replaced when edited, `requires_human_review`
    /// cleared); reject -> queued with the feedback recorded, or failed when
    /// it was already rejected `max_requeues` times. Conflict when the task
    /// is not in `needs_review`; NotFound when it is not the company's.
    async fn review_task(
        &self,
        scope: &CompanyScope,
        id: &TaskId,
        input: &ReviewInput,
        max_requeues: u32,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Task>;

    /// Records a 1-5 rating of a completed or needs_review task (a later
    /// rating by anyone adds a row; the latest counts). Conflict for other
    /// statuses.
    async fn rate_task(
        &self,
        scope: &CompanyScope,
        id: &TaskId,
        rating: u8,
        reviewer: &str,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Review>;

    /// The task's reviews, oldest first.
    async fn task_reviews(&self, scope: &CompanyScope, id: &TaskId) -> Result<Vec<Review>>;

    /// The company's primary session (a default one if never saved).
    async fn load_session(&self, scope: &CompanyScope) -> Result<Session>;

    /// Saves the session if `session.version` is still the stored one
    /// (optimistic: Conflict otherwise); returns it with the new version.
    async fn save_session(
        &self,
        scope: &CompanyScope,
        session: &Session,
        now: DateTime<Utc>,
    ) -> Result<Session>;
}

/// Checks steps before anything is written: positions and counts are never
/// negative, attempts count from 1. Errors name the step (`steps.3.seq`).
pub fn check_steps(steps: &[Step]) -> Result<(), ValidationError> {
    if steps.len() > MAX_STEPS_PER_CALL {
        return Err(ValidationError::new(
            "steps",
            format!(
                "holds {} steps; at most {MAX_STEPS_PER_CALL} per call",
                steps.len()
            ),
        ));
    }
    for (i, s) in steps.iter().enumerate() {
        let err =
            |field: &str, msg: &str| Err(ValidationError::new(format!("steps.{i}.{field}"), msg));
        if s.attempt < 1 {
            return err("attempt", "attempts count from 1");
        }
        if s.seq < 0 {
            return err("seq", "must not be negative");
        }
        for (field, v) in [
            ("prompt_tokens", s.prompt_tokens),
            ("completion_tokens", s.completion_tokens),
            ("latency_ms", s.latency_ms),
        ] {
            if v < 0 {
                return err(field, "must not be negative");
            }
        }
    }
    Ok(())
}

/// A rating is 1 to 5.
pub fn check_rating(rating: u8) -> Result<(), ValidationError> {
    if (1..=5).contains(&rating) {
        Ok(())
    } else {
        Err(ValidationError::new("rating", "must be between 1 and 5"))
    }
}

/// What a review may carry: a rating of 1 to 5, and a rejection's
/// feedback, which must say something.
pub fn check_review(input: &ReviewInput) -> Result<(), ValidationError> {
    if let Some(r) = input.rating {
        check_rating(r)?;
    }
    if let Decision::Reject { feedback } = &input.decision {
        if feedback.trim().is_empty() {
            return Err(ValidationError::new(
                "feedback",
                "a rejection must say what to change",
            ));
        }
        if feedback.chars().count() > MAX_FEEDBACK_CHARS {
            return Err(ValidationError::new(
                "feedback",
                format!("must be at most {MAX_FEEDBACK_CHARS} characters"),
            ));
        }
    }
    Ok(())
}

/// Where a reviewed task goes: an approval completes it; a rejection sends
/// it back to the queue unless it was already rejected `max_requeues` times
/// (`prior_rejections`), when it fails.
pub fn review_outcome(decision: &Decision, prior_rejections: u64, max_requeues: u32) -> TaskStatus {
    match decision {
        Decision::Approve { .. } => TaskStatus::Completed,
        Decision::Reject { .. } if prior_rejections < u64::from(max_requeues) => TaskStatus::Queued,
        Decision::Reject { .. } => TaskStatus::Failed,
    }
}

/// A requeued task's `max_attempts`: its attempts budget is for transient
/// failures of one piece of work, and a rejection asks for new work, so the
/// task gets at least one more run however many it used. Any attempts it
/// had left stay for retries of that run.
pub fn requeued_max_attempts(attempts: i32, max_attempts: i32) -> i32 {
    max_attempts.max(attempts.saturating_add(1))
}

/// The task's status reason after a review, for its events and `task show`.
pub fn review_reason(
    input: &ReviewInput,
    to: TaskStatus,
    prior_rejections: u64,
    max_requeues: u32,
) -> String {
    let who = &input.reviewer;
    match (&input.decision, to) {
        (Decision::Approve { result: Some(_) }, _) => {
            format!("approved by {who} with an edited result")
        }
        (Decision::Approve { result: None }, _) => format!("approved by {who}"),
        (Decision::Reject { feedback }, TaskStatus::Queued) => format!(
            "rejected by {who} (requeue {} of {max_requeues}): {}",
            prior_rejections + 1,
            feedback.trim()
        ),
        (Decision::Reject { feedback }, _) => format!(
            "rejected by {who}, no requeues left ({max_requeues} allowed): {}",
            feedback.trim()
        ),
    }
}

/// A session as it may be saved: counts never negative.
pub fn check_session(session: &Session) -> Result<(), ValidationError> {
    if session.tokens < 0 {
        return Err(ValidationError::new("tokens", "must not be negative"));
    }
    if session.version < 0 {
        return Err(ValidationError::new("version", "must not be negative"));
    }
    Ok(())
}

/// The Conflict of a save whose version is no longer the stored one.
pub fn stale_session(company: &kira_core::CompanyId, version: i64) -> crate::StoreError {
    crate::StoreError::Conflict(format!(
        "the session of company {company} changed since version {version} was read; load it again"
    ))
}

impl Decision {
    /// The word a review row records: `approved` or `rejected`.
    pub fn recorded_as(&self) -> &'static str {
        match self {
            Decision::Approve { .. } => "approved",
            Decision::Reject { .. } => "rejected",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(decision: Decision, rating: Option<u8>) -> ReviewInput {
        ReviewInput {
            decision,
            rating,
            reviewer: "key:abc".into(),
        }
    }

    fn reject(feedback: &str) -> Decision {
        Decision::Reject {
            feedback: feedback.into(),
        }
    }

    #[test]
    fn rejections_requeue_until_the_limit_then_fail() {
        let approve = Decision::Approve { result: None };
        assert_eq!(review_outcome(&approve, 5, 0), TaskStatus::Completed);
        assert_eq!(review_outcome(&reject("x"), 0, 1), TaskStatus::Queued);
        assert_eq!(review_outcome(&reject("x"), 1, 1), TaskStatus::Failed);
        assert_eq!(review_outcome(&reject("x"), 0, 0), TaskStatus::Failed);
        assert_eq!(review_outcome(&reject("x"), 2, 3), TaskStatus::Queued);
    }

    #[test]
    fn a_requeued_task_always_gets_another_run() {
        assert_eq!(requeued_max_attempts(3, 3), 4);
        assert_eq!(requeued_max_attempts(1, 3), 3);
        assert_eq!(requeued_max_attempts(i32::MAX, 3), i32::MAX);
    }

    #[test]
    fn reviews_are_checked_by_field() {
        assert!(check_review(&input(Decision::Approve { result: None }, Some(5))).is_ok());
        for bad in [0, 6, 255] {
            let e = check_review(&input(Decision::Approve { result: None }, Some(bad)))
                .expect_err("out of range");
            assert_eq!(e.field, "rating");
        }
        assert_eq!(
            check_review(&input(reject(" \n "), None))
                .expect_err("empty")
                .field,
            "feedback"
        );
        let long = "x".repeat(MAX_FEEDBACK_CHARS + 1);
        assert_eq!(
            check_review(&input(reject(&long), None))
                .expect_err("long")
                .field,
            "feedback"
        );
    }

    #[test]
    fn steps_are_checked_by_position() {
        let step = |attempt, seq, tokens| Step {
            task_id: TaskId::parse("acme_legal_001").expect("id"),
            attempt,
            seq,
            agent: "primary".into(),
            kind: StepKind::Llm,
            prompt_tokens: tokens,
            completion_tokens: 0,
            latency_ms: 0,
            detail: serde_json::json!({}),
            at: chrono::DateTime::UNIX_EPOCH,
        };
        assert!(check_steps(&[step(1, 0, 0), step(2, 5, 10)]).is_ok());
        let field = |s: Vec<Step>| check_steps(&s).expect_err("bad").field;
        assert_eq!(field(vec![step(1, 0, 0), step(0, 1, 0)]), "steps.1.attempt");
        assert_eq!(field(vec![step(1, -1, 0)]), "steps.0.seq");
        assert_eq!(field(vec![step(1, 0, -3)]), "steps.0.prompt_tokens");
        assert_eq!(field(vec![step(1, 0, 0); MAX_STEPS_PER_CALL + 1]), "steps");
    }

    #[test]
    fn step_kinds_round_trip() {
        for k in StepKind::ALL {
            assert_eq!(StepKind::parse(k.as_str()), Some(k));
            assert_eq!(
                serde_json::to_value(k).expect("serialize"),
                serde_json::json!(k.as_str())
            );
        }
        assert_eq!(StepKind::parse("thought"), None);
    }

    #[test]
    fn reasons_say_who_and_why() {
        let r = review_reason(
            &input(reject(" too vague "), None),
            TaskStatus::Queued,
            0,
            1,
        );
        assert_eq!(r, "rejected by key:abc (requeue 1 of 1): too vague");
        let r = review_reason(
            &input(reject("still vague"), None),
            TaskStatus::Failed,
            1,
            1,
        );
        assert_eq!(
            r,
            "rejected by key:abc, no requeues left (1 allowed): still vague"
        );
        let edited = Decision::Approve {
            result: Some(serde_json::json!({"answer": 1})),
        };
        assert_eq!(
            review_reason(&input(edited, None), TaskStatus::Completed, 0, 1),
            "approved by key:abc with an edited result"
        );
    }
}
