//! Tasks: their ids, priority levels and the state machine every status
//! change must pass, plus the checks on what a submitted task may contain.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use crate::{CompanyId, ValidationError};

/// How urgent a task is, as the submitter says (SEED 4.2's levels).
///
/// `Ord` follows declaration order, most urgent first: `Emergency < Low`.
/// That is the order listings show; compare [`Priority::level`] when "more
/// urgent" must mean "greater".
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Emergency,
    Urgent,
    High,
    Medium,
    Low,
}

impl Priority {
    /// Most urgent first.
    pub const ALL: [Priority; 5] = [
        Priority::Emergency,
        Priority::Urgent,
        Priority::High,
        Priority::Medium,
        Priority::Low,
    ];

    /// SEED 4.2's base score: the level before the company multiplier,
    /// deadline pressure and aging.
    pub fn level(self) -> u32 {
        match self {
            Priority::Emergency => 100,
            Priority::Urgent => 80,
            Priority::High => 60,
            Priority::Medium => 40,
            Priority::Low => 20,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Emergency => "emergency",
            Priority::Urgent => "urgent",
            Priority::High => "high",
            Priority::Medium => "medium",
            Priority::Low => "low",
        }
    }

    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                ValidationError::new(
                    "priority",
                    format!("'{s}' is not one of emergency, urgent, high, medium, low"),
                )
            })
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Where a task is in its life. Only the moves in [`TRANSITIONS`] are legal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Runnable, waiting for the scheduler to pick it.
    Queued,
    /// Not runnable until its company's budget (or the burst pool) has room.
    WaitingBudget,
    /// Waiting for a human to grant or refuse emergency tokens.
    AwaitingApproval,
    /// Claimed by a worker under a lease.
    Running,
    /// Finished, but the result needs a human to accept it.
    NeedsReview,
    Completed,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 8] = [
        TaskStatus::Queued,
        TaskStatus::WaitingBudget,
        TaskStatus::AwaitingApproval,
        TaskStatus::Running,
        TaskStatus::NeedsReview,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::WaitingBudget => "waiting_budget",
            TaskStatus::AwaitingApproval => "awaiting_approval",
            TaskStatus::Running => "running",
            TaskStatus::NeedsReview => "needs_review",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                ValidationError::new(
                    "status",
                    format!(
                        "'{s}' is not one of queued, waiting_budget, awaiting_approval, \
                         running, needs_review, completed, failed, cancelled"
                    ),
                )
            })
    }

    /// A final task never changes status again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

use TaskStatus::{
    AwaitingApproval, Cancelled, Completed, Failed, NeedsReview, Queued, Running, WaitingBudget,
};

/// Every legal status change, and nothing else. The store checks each
/// update against this list (and its SQL guards the same pairs), so this is
/// the one place to read what can happen to a task.
pub const TRANSITIONS: &[(TaskStatus, TaskStatus)] = &[
    // The scheduler picks it, or finds no budget, or only emergency tokens
    // would do; or the user cancels; or it can never run (e.g. its type was
    // removed from the configuration).
    (Queued, Running),
    (Queued, WaitingBudget),
    (Queued, AwaitingApproval),
    (Queued, Cancelled),
    (Queued, Failed),
    // Budget freed up (or a new period began); or base and burst are spent
    // and the level may ask for emergency tokens.
    (WaitingBudget, Queued),
    // Its recheck came and the budget now holds it: the scheduler claims it.
    (WaitingBudget, Running),
    (WaitingBudget, AwaitingApproval),
    (WaitingBudget, Cancelled),
    (WaitingBudget, Failed),
    // Approved: back to the queue with its grant. Rejected: failed, with the
    // reason.
    (AwaitingApproval, Queued),
    (AwaitingApproval, Failed),
    (AwaitingApproval, Cancelled),
    (Running, Completed),
    (Running, NeedsReview),
    (Running, Failed),
    // A retry: the worker's lease expired or the call failed transiently.
    (Running, Queued),
    // A reservation for the next call did not fit mid-run.
    (Running, WaitingBudget),
    // Cooperative cancellation: the worker saw the request and stopped.
    (Running, Cancelled),
    (NeedsReview, Completed),
    // The reviewer rejected the result and asked for another attempt.
    (NeedsReview, Queued),
    (NeedsReview, Failed),
    (NeedsReview, Cancelled),
];

pub fn can_transition(from: TaskStatus, to: TaskStatus) -> bool {
    TRANSITIONS.contains(&(from, to))
}

/// A status change the state machine does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a task cannot go from {from} to {to}")]
pub struct IllegalTransition {
    pub from: TaskStatus,
    pub to: TaskStatus,
}

pub fn check_transition(from: TaskStatus, to: TaskStatus) -> Result<(), IllegalTransition> {
    if can_transition(from, to) {
        Ok(())
    } else {
        Err(IllegalTransition { from, to })
    }
}

const MAX_LABEL_LEN: usize = 64;

/// A task's id, readable and unique: `<company>_<label>_<seq>` such as
/// `acme_legal_001`, where the label is the specialist or task type and
/// `seq` the company's own sequence number, zero-padded to three digits.
///
/// Company ids never contain `_`, so the first `_` ends the company and the
/// last one starts the sequence; the id is unique as long as the sequence is
/// unique per company, whatever the label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, example = "acme_legal_001")]
pub struct TaskId(String);

impl TaskId {
    /// The id of the company's `seq`th task. `seq` comes from the store's
    /// per-company sequence and is never negative. A label that is not
    /// lowercase letters, digits and `_` is made into one (other characters
    /// become `_`, an empty one becomes `task`, a long one is cut to 64), so
    /// that every id made here is one [`TaskId::parse`] accepts.
    pub fn new(company: &CompanyId, label: &str, seq: i64) -> TaskId {
        debug_assert!(seq >= 0, "task sequence numbers start at 1, got {seq}");
        let mut label: String = label
            .chars()
            .take(MAX_LABEL_LEN)
            .map(|c| {
                let c = c.to_ascii_lowercase();
                if is_label_char(c) { c } else { '_' }
            })
            .collect();
        if label.is_empty() {
            label.push_str("task");
        }
        TaskId(format!("{company}_{label}_{:03}", seq.max(0)))
    }

    pub fn parse(s: &str) -> Result<TaskId, ValidationError> {
        let err = || {
            Err(ValidationError::new(
                "task_id",
                format!("'{s}' is not a task id such as acme_legal_001"),
            ))
        };
        let Some((company, rest)) = s.split_once('_') else {
            return err();
        };
        let Some((label, digits)) = rest.rsplit_once('_') else {
            return err();
        };
        let label_ok =
            !label.is_empty() && label.len() <= MAX_LABEL_LEN && label.chars().all(is_label_char);
        // Only the canonical spelling of a sequence number, as `new` writes
        // it: `acme_legal_1` and `acme_legal_0001` would otherwise name the
        // same task as `acme_legal_001` without being equal to it.
        let seq_ok = digits.bytes().all(|b| b.is_ascii_digit())
            && digits
                .parse::<i64>()
                .is_ok_and(|n| format!("{n:03}") == digits);
        if CompanyId::parse(company).is_err() || !label_ok || !seq_ok {
            return err();
        }
        Ok(TaskId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The company part of the id, as written in it.
    pub fn company_part(&self) -> &str {
        self.0.split_once('_').map_or("", |(c, _)| c)
    }

    /// The per-company sequence number.
    pub fn seq(&self) -> i64 {
        self.0
            .rsplit_once('_')
            .and_then(|(_, d)| d.parse().ok())
            .unwrap_or(0)
    }
}

fn is_label_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TaskId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TaskId::parse(&s).map_err(|e| serde::de::Error::custom(e.message))
    }
}

/// A task type (`complex_legal_analysis`, `document_review`, ...): 1 to 64
/// lowercase letters, digits and `_`, so that it can be a task id's label.
pub fn check_task_type(s: &str) -> Result<(), ValidationError> {
    if s.is_empty() || s.len() > MAX_LABEL_LEN {
        return Err(ValidationError::new("type", "must be 1 to 64 characters"));
    }
    if !s.chars().all(is_label_char) {
        return Err(ValidationError::new(
            "type",
            "may contain only lowercase letters, digits and '_'",
        ));
    }
    Ok(())
}

pub const MAX_TASK_TEXT_CHARS: usize = 20_000;

/// The task's text as it will be stored: trimmed, with Windows line endings
/// made `\n` (a pasted document should not be refused for them), 1 to
/// 20,000 characters, and no control characters but newline and tab, which
/// could otherwise hide text from the human who reviews the prompt.
pub fn check_task_text(s: &str) -> Result<String, ValidationError> {
    let text = s.trim().replace("\r\n", "\n");
    if text.is_empty() {
        return Err(ValidationError::new("task", "must not be empty"));
    }
    if text.chars().count() > MAX_TASK_TEXT_CHARS {
        return Err(ValidationError::new(
            "task",
            format!("must be at most {MAX_TASK_TEXT_CHARS} characters"),
        ));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(ValidationError::new(
            "task",
            "must not contain control characters other than newline and tab",
        ));
    }
    Ok(text)
}

/// A task as stored: SEED 1's task message, its state, and its response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Task {
    pub task_id: TaskId,
    pub company_id: CompanyId,
    /// The company profile as it was at submission (SEED 1's company_context).
    #[schema(value_type = Object)]
    pub company_context: serde_json::Value,
    /// The task text.
    pub task: String,
    #[serde(rename = "type")]
    pub task_type: String,
    pub priority: Priority,
    pub deadline: Option<DateTime<Utc>>,
    #[schema(value_type = Object)]
    pub parameters: serde_json::Value,
    /// The specialist the submitter asked for, if any.
    pub specialist: Option<String>,
    /// The agent whose slot runs it (a specialist, or `primary`).
    pub agent: String,
    pub status: TaskStatus,
    /// Why it is in its status (waiting for budget, failed, ...).
    pub status_reason: String,
    pub attempts: i32,
    pub max_attempts: i32,
    /// What the claim reserves: an upper bound of the first model call
    /// (its whole prompt and output allowance) where the executor knows
    /// one, else the task's text and parameters plus its type's output.
    pub estimated_tokens: i64,
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    pub confidence: Option<f64>,
    pub requires_human_review: bool,
    pub last_error: Option<String>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_usd: f64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One state change of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskEvent {
    pub event_id: i64,
    pub task_id: TaskId,
    pub at: DateTime<Utc>,
    pub from_status: Option<TaskStatus>,
    pub to_status: TaskStatus,
    pub reason: String,
}

/// The body of a submission: SEED 1's task message as the operator sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    /// What to do.
    pub task: String,
    /// A configured task type, such as complex_legal_analysis.
    #[serde(rename = "type")]
    pub task_type: String,
    #[serde(default = "medium")]
    pub priority: Priority,
    pub deadline: Option<DateTime<Utc>>,
    /// Anything the task needs, such as a document.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Value>,
    /// Ask for this specialist instead of the type's.
    #[serde(default)]
    pub specialist: Option<String>,
}

fn medium() -> Priority {
    Priority::Medium
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, VecDeque};

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn priority_names_levels_and_serde_agree() {
        let levels: Vec<u32> = Priority::ALL.iter().map(|p| p.level()).collect();
        assert_eq!(levels, [100, 80, 60, 40, 20]);
        for p in Priority::ALL {
            assert_eq!(Priority::parse(p.as_str()), Ok(p));
            let json = serde_json::to_value(p).expect("serialize");
            assert_eq!(json, serde_json::json!(p.as_str()));
            let back: Priority = serde_json::from_value(json).expect("deserialize");
            assert_eq!(back, p);
        }
        for bad in ["", "High", "critical", " low"] {
            assert_eq!(Priority::parse(bad).expect_err(bad).field, "priority");
        }
        // Most urgent sorts first.
        let mut sorted = Priority::ALL;
        sorted.sort();
        assert_eq!(sorted, Priority::ALL);
        assert!(Priority::Emergency < Priority::Low);
    }

    #[test]
    fn status_names_and_serde_agree() {
        for s in TaskStatus::ALL {
            assert_eq!(TaskStatus::parse(s.as_str()), Ok(s));
            let json = serde_json::to_value(s).expect("serialize");
            assert_eq!(json, serde_json::json!(s.as_str()));
        }
        assert_eq!(
            serde_json::to_value(TaskStatus::WaitingBudget).expect("serialize"),
            "waiting_budget"
        );
        let e = TaskStatus::parse("done").expect_err("unknown");
        assert_eq!(e.field, "status");
        let finals: Vec<_> = TaskStatus::ALL
            .into_iter()
            .filter(|s| s.is_final())
            .collect();
        assert_eq!(finals, [Completed, Failed, Cancelled]);
    }

    /// The state machine written out as a table, independently of
    /// TRANSITIONS: each row is a `from`, each column a `to`, both in
    /// `TaskStatus::ALL` order; `1` is legal.
    #[test]
    fn transition_table() {
        let table = [
            // to: queued, waiting_budget, awaiting_approval, running,
            //     needs_review, completed, failed, cancelled
            /* Queued           */
            ". 1 1 1 . . 1 1",
            /* WaitingBudget    */ "1 . 1 1 . . 1 1",
            /* AwaitingApproval */ "1 . . . . . 1 1",
            /* Running          */ "1 1 . . 1 1 1 1",
            /* NeedsReview      */ "1 . . . . 1 1 1",
            /* Completed        */ ". . . . . . . .",
            /* Failed           */ ". . . . . . . .",
            /* Cancelled        */ ". . . . . . . .",
        ];
        let mut legal = 0;
        for (from, row) in TaskStatus::ALL.into_iter().zip(table) {
            let cells: Vec<char> = row.chars().filter(|c| *c != ' ').collect();
            assert_eq!(cells.len(), 8);
            for (to, cell) in TaskStatus::ALL.into_iter().zip(cells) {
                let expected = cell == '1';
                legal += usize::from(expected);
                assert_eq!(can_transition(from, to), expected, "{from} -> {to}");
                assert_eq!(check_transition(from, to).is_ok(), expected);
            }
        }
        assert_eq!(TRANSITIONS.len(), legal, "TRANSITIONS has duplicates");
    }

    #[test]
    fn illegal_transition_message() {
        let e = check_transition(Completed, Running).expect_err("final");
        assert_eq!(e.to_string(), "a task cannot go from completed to running");
        assert_eq!(
            e,
            IllegalTransition {
                from: Completed,
                to: Running
            }
        );
    }

    #[test]
    fn final_states_have_no_exits() {
        for (from, to) in TRANSITIONS {
            assert!(!from.is_final(), "{from} -> {to} leaves a final state");
        }
    }

    #[test]
    fn every_state_can_finish() {
        for start in TaskStatus::ALL {
            let mut seen = BTreeSet::from([start.as_str()]);
            let mut todo = VecDeque::from([start]);
            let mut finishes = start.is_final();
            while let Some(s) = todo.pop_front() {
                for &(from, to) in TRANSITIONS {
                    if from == s && seen.insert(to.as_str()) {
                        finishes |= to.is_final();
                        todo.push_back(to);
                    }
                }
            }
            assert!(finishes, "{start} can never reach a final state");
            // A user can always give up on a task that is not yet final.
            if !start.is_final() {
                assert!(can_transition(start, Cancelled), "{start}");
                assert!(can_transition(start, Failed), "{start}");
            }
        }
    }

    fn acme() -> CompanyId {
        CompanyId::parse("acme").expect("valid")
    }

    #[test]
    fn task_ids_look_like_seed() {
        let id = TaskId::new(&acme(), "legal", 1);
        assert_eq!(id.as_str(), "acme_legal_001");
        assert_eq!(id.to_string(), "acme_legal_001");
        assert_eq!(id.company_part(), "acme");
        assert_eq!(id.seq(), 1);
        assert_eq!(
            TaskId::new(&acme(), "legal", 1234).as_str(),
            "acme_legal_1234"
        );
        let comp = CompanyId::parse("comp-a").expect("valid");
        let id = TaskId::new(&comp, "complex_legal_analysis", 42);
        assert_eq!(id.as_str(), "comp-a_complex_legal_analysis_042");
        assert_eq!(TaskId::parse(id.as_str()), Ok(id.clone()));
        assert_eq!(id.company_part(), "comp-a");
        assert_eq!(id.seq(), 42);
    }

    #[test]
    fn task_id_labels_are_made_valid() {
        assert_eq!(
            TaskId::new(&acme(), "Legal Review", 7).as_str(),
            "acme_legal_review_007"
        );
        assert_eq!(TaskId::new(&acme(), "", 7).as_str(), "acme_task_007");
        let long = TaskId::new(&acme(), &"x".repeat(100), 7);
        assert!(TaskId::parse(long.as_str()).is_ok());
    }

    #[test]
    fn task_id_parse_refuses_what_new_cannot_make() {
        for bad in [
            "",
            "acme",
            "acme_001",
            "acme_legal",
            "acme_legal_",
            "acme_legal_1",
            "acme_legal_01",
            "acme_legal_0001",
            "acme_legal_-01",
            "acme_legal_+01",
            "acme_Legal_001",
            "acme__001",
            "Acme_legal_001",
            "a_legal_001",
            "acme_legal_001x",
            "acme_le-gal_001",
            "acme_legal_99999999999999999999",
        ] {
            let e = TaskId::parse(bad).expect_err(bad);
            assert_eq!(e.field, "task_id", "{bad}");
        }
        let e = serde_json::from_value::<TaskId>(serde_json::json!("nope")).expect_err("bad");
        assert!(e.to_string().contains("task id"));
    }

    proptest! {
        #[test]
        fn every_new_id_parses_back(
            company in "[a-z0-9][a-z0-9-]{0,48}[a-z0-9]",
            label in "\\PC{0,80}",
            seq in 0i64..=i64::MAX,
        ) {
            let company = CompanyId::parse(&company).expect("generated a valid slug");
            let id = TaskId::new(&company, &label, seq);
            prop_assert_eq!(TaskId::parse(id.as_str()), Ok(id.clone()));
            prop_assert_eq!(id.company_part(), company.as_str());
            prop_assert_eq!(id.seq(), seq);
            let json = serde_json::to_string(&id).expect("serialize");
            prop_assert_eq!(serde_json::from_str::<TaskId>(&json).expect("deserialize"), id);
        }
    }

    #[test]
    fn task_types() {
        for ok in ["document_review", "a", "x1", &"a".repeat(64)] {
            assert!(check_task_type(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Document",
            "doc review",
            "doc-review",
            "é",
            &"a".repeat(65),
        ] {
            assert_eq!(check_task_type(bad).expect_err(bad).field, "type", "{bad}");
        }
    }

    #[test]
    fn task_text() {
        assert_eq!(
            check_task_text("  Review the\r\n\tagreement \n").expect("valid"),
            "Review the\n\tagreement"
        );
        assert_eq!(
            check_task_text(&"é".repeat(MAX_TASK_TEXT_CHARS))
                .expect("at the limit")
                .chars()
                .count(),
            MAX_TASK_TEXT_CHARS
        );
        for bad in [
            String::new(),
            " \n\t ".to_owned(),
            "a".repeat(MAX_TASK_TEXT_CHARS + 1),
            "bell\u{7}".to_owned(),
            "lone\rreturn".to_owned(),
            "escape\u{1b}[31m".to_owned(),
            "nul\0".to_owned(),
        ] {
            assert_eq!(
                check_task_text(&bad).expect_err(&bad).field,
                "task",
                "{bad:?}"
            );
        }
    }
}
