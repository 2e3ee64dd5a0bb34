//! Tasks, the queue and token budgets: the storage traits and the records
//! they move. The task table is the queue; `task_queue` holds only the
//! scheduling facts of unfinished tasks, so the scheduler can rank every
//! company's work without reading any company's content.
//!
//! Architecture invariant: a reservation is a conditional update inside one
//! transaction (`reserved + spent + amount <= limit` in the WHERE): on the
//! company's allocation for the base pool (allocations sum to the pool, so
//! its balance is their sum), on the pool row for burst and emergency. No
//! check in application code stands between a read and a write.

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use kira_core::CompanyId;
use kira_core::audit::AuditRecord;
use kira_core::auth::{AdminScope, CompanyScope};
use kira_core::budget::{BudgetConfig, Pool};
use kira_core::task::{Priority, Task, TaskEvent, TaskId, TaskStatus};
use serde::Serialize;

use crate::{Result, StoreError};

/// How long a task that found no budget waits before it is tried again.
pub const WAITING_BUDGET_RECHECK: TimeDelta = TimeDelta::seconds(10);

/// A validated submission, ready to store.
#[derive(Debug, Clone)]
pub struct NewTask {
    /// The middle part of the task id: the specialist, else the type.
    pub label: String,
    pub company_context: serde_json::Value,
    pub task: String,
    pub task_type: String,
    pub priority: Priority,
    pub deadline: Option<DateTime<Utc>>,
    pub parameters: serde_json::Value,
    pub specialist: Option<String>,
    pub agent: String,
    pub estimated_tokens: i64,
    pub max_attempts: i32,
    /// The company's priority multiplier at submission.
    pub multiplier: f64,
    pub idempotency: Option<Idempotency>,
    /// The most unfinished tasks (queued, running or waiting) at this
    /// task's priority its company may have, this one included; checked in
    /// the submission's transaction, which holds the company's lock.
    /// Invalid, naming `priority`, when full. None: no limit.
    pub open_limit: Option<u32>,
}

/// Refuses a submission whose company already has `open` unfinished tasks
/// at its priority when `limit` allows no more.
pub(crate) fn check_open_limit(new: &NewTask, open: i64, limit: u32) -> Result<()> {
    if open >= i64::from(limit) {
        return Err(kira_core::ValidationError::new(
            "priority",
            format!(
                "this company already has {open} {} task(s) queued or running; a company key may have at most {limit} (ask an admin)",
                new.priority.as_str()
            ),
        )
        .into());
    }
    Ok(())
}

/// An `Idempotency-Key` and the hash of the request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    pub request_hash: String,
}

#[derive(Debug, Clone)]
pub struct Submitted {
    pub task: Task,
    /// False when an earlier request with the same key made it.
    pub created: bool,
}

/// Filters for listing one company's tasks, newest first.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub status: Option<TaskStatus>,
    pub priority: Option<Priority>,
    pub task_type: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    /// The cursor: tasks with a smaller sequence number than this.
    pub before_seq: Option<i64>,
    pub limit: u32,
}

/// The scheduling facts of a task waiting to run.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueEntry {
    pub task_id: TaskId,
    pub company_id: CompanyId,
    pub agent: String,
    pub status: TaskStatus,
    pub priority: Priority,
    pub multiplier: f64,
    pub deadline: Option<DateTime<Utc>>,
    pub waiting_since: DateTime<Utc>,
    pub estimated_tokens: i64,
    pub attempts: i32,
}

/// The slots a scheduling pass fills: each agent's runs at once (an agent
/// not named has none) and one company's runs at once across agents.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Capacity {
    pub agents: std::collections::BTreeMap<String, u32>,
    pub per_company: u32,
    /// Runs of the caller's that have ended, their ends not yet written:
    /// still running in the store, but holding no slot (nor counted among
    /// the snapshot's `running`).
    pub ended: Vec<TaskId>,
}

/// How many tasks of each priority level (and of the nearest deadlines) a
/// queue snapshot of `limit` reads beyond the longest waiting: an eighth.
pub fn level_window(limit: u32) -> u32 {
    limit.div_ceil(8)
}

/// Adds to a snapshot's longest-waiting tasks those its level and deadline
/// windows read (see [`TaskStore::queue_snapshot`]), each task once,
/// longest waiting first as before.
pub(crate) fn add_windows(runnable: &mut Vec<QueueEntry>, windows: Vec<QueueEntry>) {
    let read: std::collections::HashSet<TaskId> =
        runnable.iter().map(|e| e.task_id.clone()).collect();
    runnable.extend(windows.into_iter().filter(|e| !read.contains(&e.task_id)));
    runnable.sort_by(|a, b| {
        (a.waiting_since, a.task_id.as_str()).cmp(&(b.waiting_since, b.task_id.as_str()))
    });
}

/// What the scheduler sees: tasks it may start now, and what is running.
#[derive(Debug, Clone, Default)]
pub struct QueueSnapshot {
    pub runnable: Vec<QueueEntry>,
    /// (agent, company) of every running task.
    pub running: Vec<(String, CompanyId)>,
}

/// Tokens held for a task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reservation {
    pub reservation_id: String,
    pub task_id: TaskId,
    pub company_id: CompanyId,
    pub period_id: String,
    pub pool: Pool,
    pub amount: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOutcome {
    /// The task is ours, running, with tokens reserved for its first call.
    Claimed {
        task: Box<Task>,
        reservation: Reservation,
    },
    /// Someone else claimed it first, or it is no longer runnable.
    Gone,
    /// No pool it may use has room: it waits, and does not block others.
    WaitingBudget { reason: String },
    /// Its level may ask for emergency tokens: a human must approve.
    AwaitingApproval { request_id: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum ReserveOutcome {
    Reserved(Reservation),
    Denied { reason: String },
}

/// A task a batch claim may take, with the scope its claim runs in.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub scope: CompanyScope,
    pub entry: QueueEntry,
}

/// Whether a candidate may start now: a free slot for its agent and its
/// company. A batch claim asks in rank order, just before it would claim,
/// and reports each task it took, so slots are spent exactly as a sequence
/// of single claims would spend them.
pub trait Admission: Send {
    fn free(&self, e: &QueueEntry) -> bool;
    fn take(&mut self, e: &QueueEntry);
}

/// The usage of a run's last call, settled with the run's end.
#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    pub reservation_id: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_usd: f64,
}

/// The end of one run, for [`TaskStore::finish_batch`].
#[derive(Debug, Clone)]
pub struct Completion {
    pub scope: CompanyScope,
    pub task_id: TaskId,
    pub finish: Finish,
    /// Settled first, even when the lease turns out to be lost.
    pub settle: Option<Settlement>,
    /// What the run leaves besides its end: written with the end, in its
    /// transaction, only when the end is recorded.
    pub records: RunRecords,
}

/// What a run leaves behind besides its end (all of the completion's
/// company): its trace, its turns in the primary session, and the memory
/// of its result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunRecords {
    /// The run's steps (checked as [`crate::agents::check_steps`] does).
    pub steps: Vec<crate::agents::Step>,
    /// Turns appended to the company's primary session, oldest first.
    pub session_turns: Vec<serde_json::Value>,
    /// Tokens the turns add to the session's count.
    pub session_tokens: i64,
    /// A memory of the result (stored as `insert_memories` stores it, and
    /// queued for embedding), with its audit entry.
    pub memory: Option<(kira_core::memory::Memory, AuditRecord)>,
}

impl RunRecords {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.session_turns.is_empty() && self.memory.is_none()
    }

    /// Checks everything before any of it is written.
    pub fn check(&self, company: &CompanyId) -> Result<()> {
        crate::agents::check_steps(&self.steps)?;
        if self.session_tokens < 0 {
            return Err(
                kira_core::ValidationError::new("session_tokens", "must not be negative").into(),
            );
        }
        if let Some((m, _)) = &self.memory
            && &m.company_id != company
        {
            return Err(StoreError::Conflict(format!(
                "a memory of company '{}' in a run of '{company}'",
                m.company_id
            )));
        }
        Ok(())
    }
}

/// What became of one [`Completion`].
#[derive(Debug)]
pub enum Completed {
    /// Settled (if there was a settlement) and finished.
    Recorded,
    /// The settlement failed and nothing was recorded: the caller decides
    /// the end again (a retry) and records it with [`TaskStore::finish`].
    SettleFailed(StoreError),
    /// Settled, but the end could not be recorded (Conflict: the lease was lost).
    NotFinished(StoreError),
}

/// The lease as the worker's heartbeat finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// False when the lease expired and someone else may have the task.
    pub held: bool,
    pub cancel_requested: bool,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    /// completed, needs_review, failed, cancelled, or queued (retry).
    pub status: TaskStatus,
    pub reason: String,
    pub result: Option<serde_json::Value>,
    pub confidence: Option<f64>,
    pub requires_human_review: bool,
    pub error: Option<String>,
    /// For a retry: not before this time.
    pub retry_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolState {
    pub pool: Pool,
    pub capacity: i64,
    pub reserved: i64,
    /// Every token the provider reported, overdrafts included.
    pub spent: i64,
    /// How far reserved plus spent is above capacity (0 when within).
    pub overdraft: i64,
}

/// How far a balance is below zero: the overdraft of `limit` when
/// `reserved + spent` exceed it, else 0.
pub fn overdraft_of(limit: i64, reserved: i64, spent: i64) -> i64 {
    (reserved + spent - limit).max(0)
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompanyBudget {
    pub company_id: CompanyId,
    pub factor: f64,
    pub share: f64,
    /// Its base allocation.
    pub allocation: i64,
    /// Base tokens reserved and spent.
    pub reserved: i64,
    pub spent: i64,
    /// How far reserved plus spent is above the allocation: usage the
    /// provider reported beyond what the company had. While above zero its
    /// claims wait for budget (the next period or an approved grant).
    pub overdraft: i64,
    /// Tokens spent from every pool (base, burst, emergency).
    pub spent_all_pools: i64,
    /// What the provider reported this period's calls cost, in US dollars
    /// (each settled reservation keeps its call's cost).
    pub cost_usd: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmergencyRequest {
    pub request_id: String,
    pub company_id: CompanyId,
    pub task_id: TaskId,
    pub period_id: String,
    pub amount: i64,
    pub status: String,
    pub reason: String,
    pub requested_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
    pub decided_by: Option<String>,
    pub decision: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetState {
    pub period_id: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub total_tokens: i64,
    pub pools: Vec<PoolState>,
    pub companies: Vec<CompanyBudget>,
    pub pending_requests: Vec<EmergencyRequest>,
}

impl BudgetState {
    /// What one company's key may see: its own line and requests, without
    /// the pools, whose totals would show what other companies spend.
    pub fn own_only(self) -> Self {
        Self {
            pools: Vec::new(),
            ..self
        }
    }
}

/// The outcome of replaying the ledger against the balances.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LedgerReport {
    pub entries: i64,
    pub ok: bool,
    /// Each balance that differs from what the ledger says, in words.
    pub differences: Vec<String>,
}

#[async_trait]
pub trait TaskStore: Send + Sync {
    /// Stores a task with the next sequence number of its company. With an
    /// idempotency key seen before: the same task if the request hash
    /// matches, else Conflict.
    async fn submit_task(
        &self,
        scope: &CompanyScope,
        new: &NewTask,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Submitted>;

    async fn get_task(&self, scope: &CompanyScope, id: &TaskId) -> Result<Task>;

    async fn list_tasks(&self, scope: &CompanyScope, filter: &TaskFilter) -> Result<Vec<Task>>;

    /// The task's state changes after `after_event`, oldest first.
    async fn task_events(
        &self,
        scope: &CompanyScope,
        id: &TaskId,
        after_event: i64,
    ) -> Result<Vec<TaskEvent>>;

    /// Cancels a waiting task at once (releasing what it holds), or asks a
    /// running one to stop. Conflict when it has already finished.
    async fn cancel_task(
        &self,
        scope: &CompanyScope,
        id: &TaskId,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Task>;

    /// Tasks that may start at `now` (queued, or waiting for budget and due
    /// a retry) and what is running. The tasks are the `limit` waiting
    /// longest; when there are more, also of each priority level the first
    /// [`level_window`]`(limit)` by company multiplier (highest first) then
    /// waiting time, and as many of the nearest deadlines, so a fresh
    /// urgent task is not hidden behind a long queue. Longest waiting
    /// first. With a `capacity`, only tasks whose agent and company have a
    /// free slot given what runs: all of them are tasks a pass could start.
    async fn queue_snapshot(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        capacity: Option<&Capacity>,
    ) -> Result<QueueSnapshot>;

    /// Takes the task for `worker` and reserves its estimated tokens, in one
    /// transaction; or records why it must wait.
    async fn claim(
        &self,
        scope: &CompanyScope,
        id: &TaskId,
        worker: &str,
        lease_until: DateTime<Utc>,
        budget: &BudgetConfig,
        now: DateTime<Utc>,
    ) -> Result<ClaimOutcome>;

    /// Claims `candidates` (in rank order) as a sequence of [`claim`]s would,
    /// each where `admission` has a slot; returns the outcome of each it
    /// tried, in order. Backends take the runs of candidates that fit their
    /// company's base allocation in one transaction, with set-based
    /// statements; the others go through `claim` at their turn.
    ///
    /// [`claim`]: TaskStore::claim
    async fn claim_batch(
        &self,
        candidates: &[Candidate],
        admission: &mut dyn Admission,
        worker: &str,
        lease_until: DateTime<Utc>,
        budget: &BudgetConfig,
        now: DateTime<Utc>,
    ) -> Result<Vec<(TaskId, ClaimOutcome)>>;

    /// Records the ends of runs held by `worker`, each as [`settle`] then
    /// [`finish`] would; one outcome per completion, in order. Backends
    /// record the plain ones (the lease held, the settlement within its
    /// reservation) in one transaction.
    ///
    /// [`settle`]: BudgetStore::settle
    /// [`finish`]: TaskStore::finish
    async fn finish_batch(
        &self,
        worker: &str,
        completions: Vec<Completion>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Completed>>;

    /// Raises the estimate a running task of `worker` is claimed for next
    /// time to `tokens` (never lowers it): what its first call was found to
    /// need, so a task sent back to wait is claimed for what it costs.
    /// Conflict when the lease is no longer the worker's.
    async fn raise_estimate(
        &self,
        scope: &CompanyScope,
        id: &TaskId,
        worker: &str,
        tokens: i64,
    ) -> Result<()>;

    async fn heartbeat(
        &self,
        id: &TaskId,
        worker: &str,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Lease>;

    /// Writes what a run left behind (its trace, session turns, result
    /// memory) in one transaction: for an end recorded on its own, without
    /// [`TaskStore::finish_batch`]'s transaction.
    async fn record_run(
        &self,
        scope: &CompanyScope,
        records: &RunRecords,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// Ends a run held by `worker`: records the result, releases every
    /// reservation the task still holds. Conflict if the lease was lost.
    async fn finish(
        &self,
        scope: &CompanyScope,
        id: &TaskId,
        worker: &str,
        finish: Finish,
        now: DateTime<Utc>,
    ) -> Result<Task>;

    /// Running tasks whose lease expired: their reservations are released
    /// and they are queued again after `backoff * 2^(attempts-1)`, or failed
    /// after their last attempt.
    async fn reap_expired(&self, now: DateTime<Utc>, backoff: TimeDelta) -> Result<Vec<TaskId>>;
}

/// How a settlement of `used` tokens is charged against a reservation that
/// holds `held` after taking what room its pool had (`held` may be zero
/// when the reaper released it): the `settle` row moves held tokens to
/// spent, the `overdraft` row is usage with nothing held for it, the
/// `release` row gives back what was not used. Every reported token is in
/// `settle + overdraft`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Charge {
    pub settle: i64,
    pub overdraft: i64,
    pub release: i64,
}

impl Charge {
    pub(crate) fn of(used: i64, held: i64) -> Self {
        let settle = used.min(held);
        Charge {
            settle,
            overdraft: used - settle,
            release: held - settle,
        }
    }
}

/// The ledger's words for an overdraft row.
pub(crate) const OVERDRAFT_DETAIL: &str =
    "usage above the reservation with no room left: the company's balance is overdrawn";

/// Where an overdraft of `r` is charged: the company's own base
/// allocation, whatever pool `r` held. A shared pool (burst, emergency)
/// thus never goes past its capacity for one company's usage, so the
/// others keep their claims on it, and the company that overdrew is the
/// one whose balance goes negative and whose work waits.
pub(crate) fn debtor(r: &Reservation) -> Reservation {
    Reservation {
        pool: Pool::Base,
        ..r.clone()
    }
}

/// The audit entry of an overdraft: under the company alone, naming only
/// its own task and reservation.
pub(crate) fn overdraft_audit(r: &Reservation, c: Charge, now: DateTime<Utc>) -> AuditRecord {
    AuditRecord {
        at: now,
        request_id: String::new(),
        actor: "system".into(),
        company_id: Some(r.company_id.clone()),
        action: "budget.overdraft".into(),
        target: format!("task:{}", r.task_id),
        outcome: kira_core::audit::Outcome::Ok,
        detail: format!(
            "the provider reported {} tokens above what the {} pool had room for (reservation {}): \
             charged as an overdraft; this company's work waits for budget",
            c.overdraft,
            r.pool.as_str(),
            r.reservation_id
        ),
    }
}

/// What a refresh of the allocations must leave a company: what it holds
/// and spent, but only up to its current allocation, so a refresh never
/// turns an overdraft into allocation taken from the other companies.
pub(crate) fn committed(tokens: Option<i64>, reserved: i64, spent: i64) -> i64 {
    let c = reserved + spent;
    tokens.map_or(c, |t| c.min(t))
}

/// One completion the slow way: [`BudgetStore::settle`], then [`TaskStore::finish`].
pub async fn finish_one<S: TaskStore + BudgetStore + ?Sized>(
    store: &S,
    worker: &str,
    c: Completion,
    now: DateTime<Utc>,
) -> Completed {
    if let Some(s) = &c.settle
        && let Err(e) = store
            .settle(
                &c.scope,
                &s.reservation_id,
                s.prompt_tokens,
                s.completion_tokens,
                s.cost_usd,
                now,
            )
            .await
    {
        return Completed::SettleFailed(e);
    }
    match store
        .finish(&c.scope, &c.task_id, worker, c.finish, now)
        .await
    {
        Ok(_) => {
            if !c.records.is_empty()
                && let Err(e) = store.record_run(&c.scope, &c.records, now).await
            {
                tracing::warn!(task = %c.task_id, error = %e, "the run ended, but its trace, session turns or result memory could not be recorded");
            }
            Completed::Recorded
        }
        Err(e) => Completed::NotFinished(e),
    }
}

#[async_trait]
pub trait BudgetStore: Send + Sync {
    /// Makes the period containing `now` (pools and allocations) if missing.
    async fn ensure_period(&self, cfg: &BudgetConfig, now: DateTime<Utc>) -> Result<String>;

    /// Recomputes the base allocations of the current period from the
    /// companies' profiles; never below what a company spent or holds.
    async fn refresh_allocations(&self, cfg: &BudgetConfig, now: DateTime<Utc>) -> Result<()>;

    /// Reserves `amount` for a call of a running task from the first pool
    /// its priority may use that has room.
    async fn reserve(
        &self,
        scope: &CompanyScope,
        id: &TaskId,
        amount: i64,
        cfg: &BudgetConfig,
        now: DateTime<Utc>,
    ) -> Result<ReserveOutcome>;

    /// Settles a held reservation with what was really used (the rest is
    /// released), and adds the usage and cost to the task.
    async fn settle(
        &self,
        scope: &CompanyScope,
        reservation_id: &str,
        prompt_tokens: i64,
        completion_tokens: i64,
        cost_usd: f64,
        now: DateTime<Utc>,
    ) -> Result<()>;

    async fn release(
        &self,
        scope: &CompanyScope,
        reservation_id: &str,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// Sets a held reservation to `amount`, once a call's need is known:
    /// lower, the difference goes back at once (a `shrink` row); higher,
    /// the difference is held if its pool (for base, the company's
    /// allocation) has room (a `reserve` row), else Denied and the
    /// reservation is unchanged. Conflict when it is no longer held.
    async fn resize_reservation(
        &self,
        scope: &CompanyScope,
        reservation_id: &str,
        amount: i64,
        now: DateTime<Utc>,
    ) -> Result<ReserveOutcome>;

    /// The current period: pools, every company's allocation, pending requests (admin).
    async fn budget_state(
        &self,
        admin: &AdminScope,
        cfg: &BudgetConfig,
        now: DateTime<Utc>,
    ) -> Result<BudgetState>;

    /// The current period for one company: the pools and its own line
    /// (a company key is shown [`BudgetState::own_only`]).
    async fn company_budget(
        &self,
        scope: &CompanyScope,
        cfg: &BudgetConfig,
        now: DateTime<Utc>,
    ) -> Result<BudgetState>;

    async fn emergency_requests(
        &self,
        admin: &AdminScope,
        pending_only: bool,
    ) -> Result<Vec<EmergencyRequest>>;

    /// Approves (tokens are granted from the emergency pool and the task is
    /// queued) or rejects (the task fails with the note) a pending request.
    async fn decide_emergency(
        &self,
        admin: &AdminScope,
        request_id: &str,
        approve: bool,
        note: &str,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<EmergencyRequest>;

    /// Replays the ledger and compares every balance.
    async fn verify_ledger(&self, admin: &AdminScope) -> Result<LedgerReport>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_puts_every_reported_token_on_the_ledger() {
        // Within the reservation: settled, the rest released.
        assert_eq!(
            Charge::of(30, 40),
            Charge {
                settle: 30,
                overdraft: 0,
                release: 10
            }
        );
        // Above what was held: the excess is an overdraft, never dropped.
        assert_eq!(
            Charge::of(125, 100),
            Charge {
                settle: 100,
                overdraft: 25,
                release: 0
            }
        );
        // Released by the reaper, nothing held: all of it is overdraft.
        assert_eq!(
            Charge::of(7, 0),
            Charge {
                settle: 0,
                overdraft: 7,
                release: 0
            }
        );
    }

    #[test]
    fn a_refresh_keeps_an_overdraft_to_the_company() {
        assert_eq!(committed(None, 5, 10), 15);
        assert_eq!(committed(Some(100), 5, 10), 15);
        // Overdrawn by 20: the refresh leaves its allocation at 100, not 120.
        assert_eq!(committed(Some(100), 0, 120), 100);
    }
}
