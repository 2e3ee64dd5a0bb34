//! What agents leave behind: the trace of each run (every LLM call, tool
//! call and the messages between the primary agent and a specialist), human
//! review of results, and the primary agent's persistent session per
//! company. All of it is company data: scoped, row-level security on
//! PostgreSQL.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kira_core::audit::AuditRecord;
use kira_core::auth::CompanyScope;
use kira_core::task::{Task, TaskId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Result;

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
