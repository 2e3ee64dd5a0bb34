//! Running one claimed task: heartbeat the lease, execute, record the end.
//! Ends are recorded in groups ([`crate::group`]): runs that end while a
//! group is being written queue up, and the next writer takes them all in
//! one transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use kira_core::auth::{Access, CompanyScope, Principal};
use kira_core::task::{Task, TaskId, TaskStatus};
use kira_store::work::{Completed, Completion, Finish, Reservation, Settlement, finish_one};

use crate::Engine;
use crate::executor::{ExecOutcome, Run};
use crate::scheduler::Scheduler;

/// Ends of runs waiting to be written.
pub(crate) type Completions = crate::group::Group<Completion, Completed>;

/// A run among the scheduler's ended runs (see `Scheduler::ended`) for as
/// long as this lives.
struct Ended<'a> {
    scheduler: &'a Scheduler,
    task: TaskId,
}

impl<'a> Ended<'a> {
    fn new(scheduler: &'a Scheduler, task: TaskId) -> Self {
        scheduler.ended_set().insert(task.clone());
        Self { scheduler, task }
    }
}

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        self.scheduler.ended_set().remove(&self.task);
    }
}

impl Scheduler {
    /// Records `c` with whatever other ends are waiting, in one store call.
    /// While it is recorded the run holds no slot: a pass may fill it.
    async fn complete(&self, c: Completion) -> Completed {
        let _ended = Ended::new(self, c.task_id.clone());
        self.wake();
        self.completions
            .submit(
                c,
                |mut items| async move {
                    let n = items.len();
                    let now = self.ctx.clock.now();
                    let began = std::time::Instant::now();
                    // A result memory occurs when its task finished.
                    for c in &mut items {
                        if let Some((m, _)) = &mut c.records.memory {
                            m.occurred_at = chrono::SubsecRound::trunc_subsecs(now, 6);
                        }
                    }
                    let written = self
                        .ctx
                        .store
                        .finish_batch(self.worker_id(), items.clone(), now)
                        .await;
                    tracing::debug!(
                        runs = n,
                        write_us = began.elapsed().as_micros(),
                        "run ends recorded"
                    );
                    match written {
                        Ok(r) if r.len() == n => r,
                        failed => {
                            if let Err(e) = failed {
                                tracing::warn!(error = %e, runs = n, "a group of run ends failed; recording them one by one");
                            }
                            let mut r = Vec::with_capacity(n);
                            for c in items {
                                r.push(finish_one(self.ctx.store.as_ref(), self.worker_id(), c, now).await);
                            }
                            r
                        }
                    }
                },
                || {
                    Completed::NotFinished(kira_store::StoreError::Conflict(
                        "the end of the run was not recorded".into(),
                    ))
                },
            )
            .await
    }
}

impl Scheduler {
    /// Runs a claimed task to its end; the run is handed `engine`. The
    /// scheduler is woken as soon as the end is recorded, since the run's
    /// slot is free then: a freed slot must not wait for the next poll.
    pub(crate) async fn run_claimed(
        &self,
        engine: &Engine,
        task: Task,
        reservation: Reservation,
        mut starting: crate::starting::Starting,
    ) {
        starting.begin();
        let Some(executor) = self.executor().cloned() else {
            return;
        };
        let id = task.task_id.clone();
        let Ok(scope) = Principal::system().scope(&task.company_id, Access::Write) else {
            return;
        };
        let cancel = Arc::new(AtomicBool::new(false));
        let lost = Arc::new(AtomicBool::new(false));
        let beat = {
            let (engine, id, cancel, lost) =
                (engine.clone(), id.clone(), cancel.clone(), lost.clone());
            tokio::spawn(async move {
                engine.scheduler().heartbeat(&id, &cancel, &lost).await;
            })
        };
        let cfg = &self.ctx.config;
        let mut run = Run::new(
            engine.clone(),
            task.clone(),
            scope.clone(),
            self.ctx.store.clone(),
            self.ctx.clock.clone(),
            cfg.budget.clone(),
            cfg.prices.clone(),
            reservation,
            cancel,
            starting,
        );
        let outcome = executor.execute(&mut run).await;
        run.calling();
        // The end (even a lost lease's trace) follows the audit entries of
        // the run's tool calls.
        if let Err(e) = run.audits_written().await {
            tracing::warn!(task = %id, error = %e, "the run ends with tool calls not audited");
        }
        let settle = run.take_unsettled();
        beat.abort();
        if lost.load(Ordering::SeqCst) {
            self.end_lost_run(&scope, &id, &mut run, settle).await;
            return;
        }
        if !run.reserved_a_call()
            && let Some(need) = run.first_call_need()
            && let Err(e) = self
                .ctx
                .store
                .raise_estimate(&scope, &id, self.worker_id(), need)
                .await
        {
            tracing::warn!(task = %id, error = %e, "could not record what the task's first call needs");
        }
        let now = self.ctx.clock.now();
        let ending = Ending {
            task: &task,
            now,
            retry_backoff: cfg.scheduler.retry_backoff,
        };
        let finish = ending.finish(outcome, run.reserved_a_call(), executor.name());
        let mut records = run.take_records();
        // What the company remembers of a completed task (a reviewed one
        // is remembered when a human approves it), in the end's transaction,
        // so it is remembered exactly once.
        if finish.status == TaskStatus::Completed
            && !self.is_simulated()
            && let Some(memory) = self.result_memory(&task, &finish, &scope, now)
        {
            records.memory = Some(memory);
        }
        let completion = Completion {
            scope,
            task_id: id,
            finish,
            settle,
            records,
        };
        self.record_end(completion, &ending).await;
    }

    /// A run whose lease was lost: the task is no longer this worker's, but
    /// what the run used is still charged and its trace still says what it
    /// did.
    async fn end_lost_run(
        &self,
        scope: &CompanyScope,
        id: &TaskId,
        run: &mut Run,
        settle: Option<Settlement>,
    ) {
        tracing::warn!(task = %id, "lease lost during the run; the task is no longer this worker's");
        if let Some(s) = settle {
            let now = self.ctx.clock.now();
            if let Err(e) = self
                .ctx
                .store
                .settle(
                    scope,
                    &s.reservation_id,
                    s.prompt_tokens,
                    s.completion_tokens,
                    s.cost_usd,
                    now,
                )
                .await
            {
                tracing::warn!(task = %id, error = %e, "could not settle the usage of a run whose lease was lost");
            }
        }
        let steps = run.take_records().steps;
        self.record_trace(scope, id, steps).await;
        self.wake();
    }

    /// The memory and audit entry of a completed task's result, if its
    /// result makes one.
    fn result_memory(
        &self,
        task: &Task,
        finish: &Finish,
        scope: &CompanyScope,
        now: DateTime<Utc>,
    ) -> Option<(kira_core::memory::Memory, kira_core::audit::AuditRecord)> {
        let mut done = task.clone();
        done.status = TaskStatus::Completed;
        done.result.clone_from(&finish.result);
        done.confidence = finish.confidence;
        let new = crate::review::result_new_memory(&self.ctx.config, &done, now)?;
        match new.validate(now) {
            Ok(valid) => {
                let m = valid.into_memory(
                    kira_core::memory::new_memory_id(now),
                    scope.company().clone(),
                    now,
                );
                Some((m, crate::review::result_audit(scope, &done, now)))
            }
            Err(e) => {
                tracing::warn!(task = %task.task_id, error = %e, "the task's result cannot be a memory");
                None
            }
        }
    }

    /// Records the run's end with its records, wakes the scheduler, and
    /// then does what the end calls for: the result memory's embedding and
    /// conflict check, the primary session's compaction. A settlement that
    /// fails ends the run as a failed attempt, keeping only its trace.
    async fn record_end(&self, completion: Completion, ending: &Ending<'_>) {
        let scope = completion.scope.clone();
        let id = completion.task_id.clone();
        let steps = completion.records.steps.clone();
        let memory = completion.records.memory.as_ref().map(|(m, _)| m.clone());
        let turns = !completion.records.session_turns.is_empty();
        let completed = self.complete(completion).await;
        // The slot was free from the run's end (see `complete`); written, the
        // end no longer counts as running in the store either. Not so when
        // the end is still to be written below.
        if !matches!(completed, Completed::SettleFailed(_)) {
            self.wake();
        }
        let recorded = match completed {
            Completed::Recorded => Ok(()),
            // As a settle failing inside the executor would have ended it.
            Completed::SettleFailed(e) => {
                let error = e.to_string();
                let f = ending.retry(format!("the run failed: {error}"), Some(error));
                let finished = self
                    .ctx
                    .store
                    .finish(&scope, &id, self.worker_id(), f, self.ctx.clock.now())
                    .await;
                if finished.is_ok() {
                    self.wake();
                    // The run did not count: only its trace stays.
                    self.record_trace(&scope, &id, steps).await;
                }
                match finished {
                    Ok(_) => return,
                    Err(e) => Err(e),
                }
            }
            Completed::NotFinished(e) => Err(e),
        };
        match recorded {
            Ok(()) => {
                if let Some(m) = memory {
                    self.embeddings.wake();
                    if let Err(e) = self.sharing.detect_conflicts(&scope, &[m]).await {
                        tracing::error!(task = %id, error = %e, "conflict detection failed");
                    }
                }
                if turns
                    && let Err(e) = crate::agent::session::compact_if_needed(
                        &self.ctx,
                        self.memory.summarizer().as_ref(),
                        &scope,
                    )
                    .await
                {
                    tracing::warn!(task = %id, error = %e, "could not compact the primary session");
                }
            }
            Err(e) => tracing::warn!(task = %id, error = %e, "could not record the end of a run"),
        }
    }

    /// Records the steps of a run whose end went in without them.
    async fn record_trace(
        &self,
        scope: &kira_core::auth::CompanyScope,
        id: &kira_core::task::TaskId,
        steps: Vec<kira_store::agents::Step>,
    ) {
        if steps.is_empty() {
            return;
        }
        if let Err(e) = self.ctx.store.record_steps(scope, &steps).await {
            tracing::warn!(task = %id, error = %e, "could not record the run's trace");
        }
    }

    /// Renews the lease until aborted; flags a cancel request or a lost lease.
    async fn heartbeat(
        &self,
        id: &kira_core::task::TaskId,
        cancel: &AtomicBool,
        lost: &AtomicBool,
    ) {
        let sched = &self.ctx.config.scheduler;
        let every = sched
            .heartbeat
            .to_std()
            .unwrap_or(std::time::Duration::from_secs(15));
        loop {
            tokio::time::sleep(every).await;
            let now = self.ctx.clock.now();
            match self
                .ctx
                .store
                .heartbeat(id, self.worker_id(), now + sched.lease, now)
                .await
            {
                Ok(lease) => {
                    if lease.cancel_requested {
                        cancel.store(true, Ordering::SeqCst);
                    }
                    if !lease.held {
                        lost.store(true, Ordering::SeqCst);
                        cancel.store(true, Ordering::SeqCst);
                        return;
                    }
                }
                Err(e) => tracing::warn!(task = %id, error = %e, "heartbeat failed"),
            }
        }
    }
}

/// How a run's outcome becomes the task's end, as of `now`.
struct Ending<'a> {
    task: &'a Task,
    now: DateTime<Utc>,
    /// The first retry's wait, doubled with each attempt.
    retry_backoff: chrono::TimeDelta,
}

impl Ending<'_> {
    /// The end of an attempt that may be tried again: queued for a retry
    /// after a growing wait while attempts are left, failed after that.
    fn retry(&self, reason: String, error: Option<String>) -> Finish {
        let task = self.task;
        if task.attempts < task.max_attempts {
            let exp = u32::try_from(task.attempts.max(1) - 1).unwrap_or(0).min(16);
            Finish {
                status: TaskStatus::Queued,
                reason: format!(
                    "{reason}; retry {} of {}",
                    task.attempts + 1,
                    task.max_attempts
                ),
                result: None,
                confidence: None,
                requires_human_review: false,
                error,
                retry_at: Some(self.now + self.retry_backoff * 2_i32.pow(exp)),
            }
        } else {
            Finish {
                status: TaskStatus::Failed,
                reason: format!("{reason}; no attempts left"),
                result: None,
                confidence: None,
                requires_human_review: false,
                error,
                retry_at: None,
            }
        }
    }

    /// The end `outcome` calls for; `reserved_a_call` says whether the run
    /// got as far as reserving a model call, `executor` names what ran it.
    fn finish(&self, outcome: ExecOutcome, reserved_a_call: bool, executor: &str) -> Finish {
        match outcome {
            ExecOutcome::Done {
                result,
                confidence,
                requires_human_review,
            } => Finish {
                status: if requires_human_review {
                    TaskStatus::NeedsReview
                } else {
                    TaskStatus::Completed
                },
                reason: format!("run by {} ({executor})", self.task.agent),
                result: Some(result),
                confidence: Some(confidence),
                requires_human_review,
                error: None,
                retry_at: None,
            },
            ExecOutcome::Failed {
                error,
                retryable: true,
            } => self.retry(format!("the run failed: {error}"), Some(error)),
            ExecOutcome::Failed {
                error,
                retryable: false,
            } => Finish {
                status: TaskStatus::Failed,
                reason: format!("the run failed: {error}"),
                result: None,
                confidence: None,
                requires_human_review: false,
                error: Some(error),
                retry_at: None,
            },
            // Denied its first call (the claim held only what starting
            // needs): nothing reached the model, so the task waits for
            // budget as an unclaimed one would, its attempt given back.
            ExecOutcome::OutOfBudget { reason } if !reserved_a_call => Finish {
                status: TaskStatus::WaitingBudget,
                reason: format!("waiting for budget: its first call needs more: {reason}"),
                result: None,
                confidence: None,
                requires_human_review: false,
                error: None,
                retry_at: Some(self.now + kira_store::work::WAITING_BUDGET_RECHECK),
            },
            ExecOutcome::OutOfBudget { reason } => {
                self.retry(format!("out of budget mid-run: {reason}"), Some(reason))
            }
            ExecOutcome::Cancelled => Finish {
                status: TaskStatus::Cancelled,
                reason: "cancelled while running".into(),
                result: None,
                confidence: None,
                requires_human_review: false,
                error: None,
                retry_at: None,
            },
        }
    }
}
