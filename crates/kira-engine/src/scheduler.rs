//! The scheduler: ranks every runnable task by effective priority (SEED
//! 4.2 plus aging, `kira_core::priority`), then claims in that order where
//! the task's agent and company have a free slot. A task that cannot get
//! budget waits and the scheduler moves on to the next one, so no task
//! blocks those behind it. The [`Scheduler`] service is defined here; its
//! runs (`worker.rs`) and the gate on runs starting (`starting.rs`) are
//! its too.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use chrono::{DateTime, Utc};
use kira_core::CompanyId;
use kira_core::auth::{Access, Principal};
use kira_core::priority::{EffectivePriority, effective_priority};
use kira_core::task::TaskId;
use kira_store::work::{Admission, Candidate, Capacity, ClaimOutcome, QueueEntry, QueueSnapshot};
use tokio::task::JoinHandle;

use crate::config::EngineConfig;
use crate::executor::Executor;
use crate::memory::Memories;
use crate::memory::embed::Embeddings;
use crate::sharing::Sharing;
use crate::starting::StartGate;
use crate::worker::Completions;
use crate::{Ctx, Engine, EngineError, Services, Shutdown};

/// The runnable tasks, best first: higher score, then longer waiting, then id.
pub fn rank(
    runnable: Vec<QueueEntry>,
    cfg: &EngineConfig,
    now: DateTime<Utc>,
) -> Vec<(QueueEntry, EffectivePriority)> {
    let mut ranked: Vec<_> = runnable
        .into_iter()
        .map(|e| {
            let p = effective_priority(
                e.priority,
                e.multiplier,
                e.deadline,
                e.waiting_since,
                now,
                &cfg.priority,
            );
            (e, p)
        })
        .collect();
    ranked.sort_by(|(a, pa), (b, pb)| {
        pb.score
            .total_cmp(&pa.score)
            .then(a.waiting_since.cmp(&b.waiting_since))
            .then_with(|| a.task_id.as_str().cmp(b.task_id.as_str()))
    });
    ranked
}

/// Free slots per agent and per company, given what runs.
#[derive(Debug, Clone)]
pub struct Slots {
    agent: HashMap<String, i64>,
    company: HashMap<CompanyId, i64>,
    per_company: i64,
}

impl Slots {
    pub fn new(running: &[(String, CompanyId)], cfg: &EngineConfig) -> Self {
        let mut agent: HashMap<String, i64> = cfg
            .agents
            .iter()
            .map(|(n, a)| (n.clone(), i64::from(a.max_concurrent)))
            .collect();
        let mut company = HashMap::new();
        let per_company = i64::from(cfg.scheduler.per_company_concurrency);
        for (a, c) in running {
            *agent.entry(a.clone()).or_insert(0) -= 1;
            *company.entry(c.clone()).or_insert(per_company) -= 1;
        }
        Slots {
            agent,
            company,
            per_company,
        }
    }

    pub fn free(&self, e: &QueueEntry) -> bool {
        self.agent.get(&e.agent).copied().unwrap_or(0) > 0
            && self
                .company
                .get(&e.company_id)
                .copied()
                .unwrap_or(self.per_company)
                > 0
    }

    pub fn take(&mut self, e: &QueueEntry) {
        *self.agent.entry(e.agent.clone()).or_insert(0) -= 1;
        *self
            .company
            .entry(e.company_id.clone())
            .or_insert(self.per_company) -= 1;
    }
}

impl Admission for Slots {
    fn free(&self, e: &QueueEntry) -> bool {
        Slots::free(self, e)
    }

    fn take(&mut self, e: &QueueEntry) {
        Slots::take(self, e);
    }
}

/// The slots a pass fills, for the store to leave out tasks that could not
/// take one; the runs in `ended` hold none.
fn capacity(cfg: &EngineConfig, ended: Vec<TaskId>) -> Capacity {
    Capacity {
        agents: cfg
            .agents
            .iter()
            .map(|(n, a)| (n.clone(), a.max_concurrent))
            .collect(),
        per_company: cfg.scheduler.per_company_concurrency,
        ended,
    }
}

/// Candidates per claim transaction: large enough that a transaction's cost
/// is shared by many tasks, small enough that the first runs start (and
/// other processes find work) without waiting for a whole pass. Where runs
/// start slowly (agents preparing context), the start gate's room keeps
/// batches far smaller. Measured with `kira bench queue` (quiet 2-core
/// machine, alternating): 256 against 64 gave +9% on SQLite (5,176 ->
/// 5,645 tasks/s) and +25-38% on PostgreSQL with 4 processes (1,230 ->
/// 1,530-1,700); 512 and 1,024 no more than 256.
pub const CLAIM_BATCH: usize = 256;

/// What one scheduling pass did.
#[derive(Debug, Default)]
pub struct TickReport {
    /// Tasks whose leases had expired, now queued again or failed.
    pub reaped: Vec<TaskId>,
    /// Claimed, in the order they were claimed.
    pub claimed: Vec<TaskId>,
    /// Left waiting for budget or for a human.
    pub waiting: Vec<TaskId>,
    /// The runs started; tests await them.
    pub runs: Vec<JoinHandle<()>>,
}

/// Takes from `pending` (in rank order) the next claim batch: the tasks
/// that would find a slot if every one before them were claimed, at most
/// `max` (the room among runs starting) and [`CLAIM_BATCH`]. A task without
/// a free slot now has none later in the pass (slots are only taken), so it
/// is dropped; one whose slot the batch would fill, or that finds no room
/// among the runs starting, stays pending, for a next batch, which is sent
/// only when some of this one could not be claimed (gone, or waiting for
/// budget) and left their slots free, or when room was freed. So a batch
/// reads no more tasks than it can take.
fn next_batch(pending: &mut Vec<Candidate>, slots: &Slots, max: usize) -> Vec<Candidate> {
    let mut room = slots.clone();
    let mut batch = Vec::new();
    let mut kept = Vec::new();
    let max = max.min(CLAIM_BATCH);
    for c in pending.drain(..) {
        if !slots.free(&c.entry) {
            continue;
        }
        if batch.len() < max && room.free(&c.entry) {
            room.take(&c.entry);
            batch.push(c);
        } else {
            kept.push(c);
        }
    }
    *pending = kept;
    batch
}

/// The scheduler and the runs it starts. Owns what running needs: the
/// executor, this process's name on leases, the runs starting (and room for
/// more), the run ends waiting to be written together, and when leases
/// were last looked at. A run's end reaches memory (the session's
/// summariser), sharing (the conflict check of a result memory) and
/// embeddings (their wake).
pub struct Scheduler {
    pub(crate) ctx: Arc<Ctx>,
    /// The engine each run is handed (`Run::engine`), held weakly: the
    /// engine owns the scheduler.
    engine: Weak<Services>,
    executor: Option<Arc<dyn Executor>>,
    /// This process's name on leases.
    worker_id: String,
    /// Runs claimed and still preparing their first call (see `starting`).
    starting: Arc<StartGate>,
    /// Ends of runs waiting to be recorded together.
    pub(crate) completions: Completions,
    /// Runs that have ended and whose ends are being recorded: their slots
    /// are free (a pass does not count them as running).
    ended: std::sync::Mutex<std::collections::HashSet<TaskId>>,
    /// When the scheduler last looked for expired leases.
    last_reap: std::sync::Mutex<Option<DateTime<Utc>>>,
    pub(crate) memory: Arc<Memories>,
    pub(crate) sharing: Arc<Sharing>,
    pub(crate) embeddings: Arc<Embeddings>,
}

impl Scheduler {
    pub(crate) fn new(
        ctx: Arc<Ctx>,
        executor: Option<Arc<dyn Executor>>,
        engine: Weak<Services>,
        memory: Arc<Memories>,
        sharing: Arc<Sharing>,
        embeddings: Arc<Embeddings>,
    ) -> Self {
        let sched = &ctx.config.scheduler;
        let starting = StartGate::new(
            sched.max_starting as usize,
            sched.start_target.to_std().unwrap_or_default(),
            ctx.wake.clone(),
        );
        Self {
            worker_id: format!("worker-{}", uuid::Uuid::now_v7().simple()),
            starting,
            completions: Completions::default(),
            ended: Default::default(),
            last_reap: std::sync::Mutex::new(None),
            ctx,
            engine,
            executor,
            memory,
            sharing,
            embeddings,
        }
    }

    /// The executor, or None when tasks only queue.
    pub(crate) fn executor(&self) -> Option<&Arc<dyn Executor>> {
        self.executor.as_ref()
    }

    /// The executor's name, or None when tasks only queue.
    pub fn executor_name(&self) -> Option<&str> {
        self.executor.as_ref().map(|e| e.name())
    }

    /// Whether tasks run on the simulated executor, whose results are not
    /// real work and are not remembered.
    pub fn is_simulated(&self) -> bool {
        self.executor_name() == Some("simulated")
    }

    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Wakes the scheduler (new or requeued work, or a slot freed).
    pub fn wake(&self) {
        self.ctx.wake_scheduler();
    }

    /// One pass: reap expired leases (when due), rank the queue, claim what may run
    /// and start it. Does nothing but reap without an executor.
    pub async fn tick(&self) -> Result<TickReport, EngineError> {
        let cfg = &self.ctx.config;
        let now = self.ctx.clock.now();
        let mut report = TickReport::default();
        if self.reap_due(now) {
            report.reaped = self
                .ctx
                .store
                .reap_expired(now, cfg.scheduler.retry_backoff)
                .await?;
        }
        if self.executor.is_none() {
            return Ok(report);
        }
        // The runs get the engine; gone only while it is being dropped.
        let Some(engine) = Engine::upgrade(&self.engine) else {
            return Ok(report);
        };
        let began = std::time::Instant::now();
        let QueueSnapshot { runnable, running } = self
            .ctx
            .store
            .queue_snapshot(
                now,
                cfg.scheduler.batch,
                Some(&capacity(cfg, self.ended_runs())),
            )
            .await?;
        let read = runnable.len();
        let snapshot_us = began.elapsed().as_micros();
        let mut slots = Slots::new(&running, cfg);
        let candidates: Vec<Candidate> = rank(runnable, cfg, now)
            .into_iter()
            .filter_map(|(entry, _)| {
                let scope = Principal::system()
                    .scope(&entry.company_id, Access::Write)
                    .ok()?;
                Some(Candidate { scope, entry })
            })
            .collect();
        // In rank order, a batch at a time; the slots carry over.
        let mut pending = candidates;
        let gate = &self.starting;
        loop {
            let batch = next_batch(&mut pending, &slots, gate.room());
            if batch.is_empty() {
                // Claimable tasks left for want of room among the runs
                // starting: the next run to reach its call wakes a pass.
                if !pending.is_empty() && !gate.hold_back() {
                    continue;
                }
                break;
            }
            // A run starts when its claim is made, not when the pass began:
            // the reap, the snapshot and earlier batches came before it.
            let claimed_at = self.ctx.clock.now();
            let claim_began = std::time::Instant::now();
            let asked = batch.len();
            let outcomes = match self
                .ctx
                .store
                .claim_batch(
                    &batch,
                    &mut slots,
                    self.worker_id(),
                    claimed_at + cfg.scheduler.lease,
                    &cfg.budget,
                    claimed_at,
                )
                .await
            {
                Ok(o) => o,
                // One batch's trouble must not stop the pass for the others.
                Err(e) => {
                    tracing::warn!(error = %e, "batch claim failed");
                    continue;
                }
            };
            tracing::debug!(
                asked,
                claim_us = claim_began.elapsed().as_micros(),
                "claim batch"
            );
            for (id, outcome) in outcomes {
                match outcome {
                    ClaimOutcome::Claimed { task, reservation } => {
                        report.claimed.push(id);
                        let engine = engine.clone();
                        let starting = gate.enter();
                        report.runs.push(tokio::spawn(async move {
                            let runner = engine.scheduler();
                            runner
                                .run_claimed(&engine, *task, reservation, starting)
                                .await;
                        }));
                    }
                    ClaimOutcome::WaitingBudget { .. } | ClaimOutcome::AwaitingApproval { .. } => {
                        report.waiting.push(id);
                    }
                    ClaimOutcome::Gone => {}
                }
            }
        }
        tracing::debug!(
            read,
            claimed = report.claimed.len(),
            waiting = report.waiting.len(),
            room = gate.room(),
            snapshot_us,
            pass_us = began.elapsed().as_micros(),
            "scheduling pass"
        );
        Ok(report)
    }

    /// The runs whose ends are being recorded, read before the queue (see
    /// [`Capacity::ended`]): one whose end is written by the time the
    /// queue is read is no longer running there either.
    fn ended_runs(&self) -> Vec<TaskId> {
        self.ended_set().iter().cloned().collect()
    }

    pub(crate) fn ended_set(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<TaskId>> {
        self.ended
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether this pass looks for expired leases: at most once per
    /// [`REAP_EVERY`] of the clock (a pass runs whenever a run ends, and a
    /// lease lasts a minute), or when the clock went back.
    fn reap_due(&self, now: DateTime<Utc>) -> bool {
        let mut last = self
            .last_reap
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = reap_is_due(*last, now);
        if due {
            *last = Some(now);
        }
        due
    }

    /// The periodic jobs: open the budget period and refresh allocations,
    /// on one node at a time.
    pub async fn periodic(&self) -> Result<bool, EngineError> {
        let (cfg, now) = (&self.ctx.config.budget, self.ctx.clock.now());
        let store = self.ctx.store.as_ref();
        let ran = crate::locked(store, JOB_BUDGET, async {
            store.ensure_period(cfg, now).await?;
            store.refresh_allocations(cfg, now).await?;
            Ok(())
        })
        .await?;
        Ok(ran.is_some())
    }

    /// The background loop: a pass whenever work arrives (here, or in
    /// another process on PostgreSQL) or the poll interval passes, and the
    /// periodic jobs every minute, until `shutdown`. Runs in flight finish
    /// first.
    pub fn start(&self, shutdown: Shutdown) -> JoinHandle<()> {
        let engine = Engine::upgrade(&self.engine);
        tokio::spawn(async move {
            // Gone only while the engine is being dropped.
            let Some(engine) = engine else { return };
            let this = engine.scheduler();
            let ctx = &this.ctx;
            let listener = ctx.store.watch_tasks(ctx.wake.clone());
            let poll = ctx
                .config
                .scheduler
                .poll_interval
                .to_std()
                .unwrap_or(std::time::Duration::from_secs(1));
            let mut runs: Vec<JoinHandle<()>> = Vec::new();
            let mut last_periodic: Option<std::time::Instant> = None;
            let mut last_pass: Option<std::time::Instant> = None;
            loop {
                if last_periodic.is_none_or(|t| t.elapsed() >= PERIODIC_EVERY) {
                    if let Err(e) = this.periodic().await {
                        tracing::error!(error = %e, "periodic budget jobs failed");
                    }
                    last_periodic = Some(std::time::Instant::now());
                }
                // Wakes that come close together (runs ending one after
                // another) share one pass: a pass reads the whole queue.
                if let Some(gap) = last_pass.and_then(|t| PASS_GAP.checked_sub(t.elapsed())) {
                    tokio::time::sleep(gap).await;
                }
                last_pass = Some(std::time::Instant::now());
                match this.tick().await {
                    Ok(r) => runs.extend(r.runs),
                    Err(e) => tracing::error!(error = %e, "scheduling pass failed"),
                }
                runs.retain(|h| !h.is_finished());
                tokio::select! {
                    () = shutdown.wait() => break,
                    () = ctx.wake.notified() => {}
                    () = tokio::time::sleep(poll) => {}
                }
            }
            if let Some(l) = listener {
                l.abort();
            }
            for h in runs {
                let _ = h.await;
            }
        })
    }
}

/// The least time between the starts of two passes of the scheduler's
/// loop: a freed slot waits at most this long for its next task.
const PASS_GAP: std::time::Duration = std::time::Duration::from_millis(10);

/// How often a pass looks for expired leases at most.
const REAP_EVERY: chrono::TimeDelta = chrono::TimeDelta::seconds(1);

/// Whether a pass at `now` looks for expired leases, the last look having
/// been at `last`.
fn reap_is_due(last: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    last.is_none_or(|t| now - t >= REAP_EVERY || now < t)
}

/// The advisory-lock key of the budget jobs.
const JOB_BUDGET: i64 = 0x6b69_7261_0001;
const PERIODIC_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeDelta, TimeZone};
    use kira_core::task::{Priority, TaskStatus};

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0)
            .single()
            .expect("time")
    }

    fn entry(id: &str, company: &str, agent: &str, p: Priority, waited_min: i64) -> QueueEntry {
        QueueEntry {
            task_id: TaskId::parse(id).expect("id"),
            company_id: CompanyId::parse(company).expect("company"),
            agent: agent.into(),
            status: TaskStatus::Queued,
            priority: p,
            multiplier: 1.0,
            deadline: None,
            waiting_since: now() - TimeDelta::minutes(waited_min),
            estimated_tokens: 100,
            attempts: 0,
        }
    }

    fn ids(r: &[(QueueEntry, EffectivePriority)]) -> Vec<&str> {
        r.iter().map(|(e, _)| e.task_id.as_str()).collect()
    }

    #[test]
    fn higher_levels_first_then_the_longest_waiting() {
        let cfg = EngineConfig::default();
        let r = rank(
            vec![
                entry("acme_legal_001", "acme", "legal", Priority::Low, 0),
                entry("acme_legal_002", "acme", "legal", Priority::High, 0),
                entry("acme_legal_003", "acme", "legal", Priority::High, 1),
                entry("acme_legal_004", "acme", "legal", Priority::Emergency, 0),
            ],
            &cfg,
            now(),
        );
        assert_eq!(
            ids(&r),
            [
                "acme_legal_004",
                "acme_legal_003",
                "acme_legal_002",
                "acme_legal_001"
            ]
        );
    }

    #[test]
    fn a_low_task_overtakes_fresh_high_ones_within_the_starvation_bound() {
        let cfg = EngineConfig::default();
        let bound =
            kira_core::priority::starvation_bound_minutes(Priority::Low, 1.0, 60.0, &cfg.priority);
        #[allow(clippy::cast_possible_truncation)]
        let waited = bound.ceil() as i64 + 1;
        let r = rank(
            vec![
                entry("acme_legal_001", "acme", "legal", Priority::High, 0),
                entry("acme_legal_002", "acme", "legal", Priority::Low, waited),
            ],
            &cfg,
            now(),
        );
        assert_eq!(
            ids(&r)[0],
            "acme_legal_002",
            "after {waited} minutes the low task leads"
        );
    }

    #[test]
    fn deadline_pressure_lifts_a_task() {
        let cfg = EngineConfig::default();
        let mut near = entry("acme_legal_001", "acme", "legal", Priority::Medium, 0);
        near.deadline = Some(now() + TimeDelta::minutes(30));
        let far = entry("acme_legal_002", "acme", "legal", Priority::Medium, 5);
        let r = rank(vec![far, near], &cfg, now());
        assert_eq!(ids(&r)[0], "acme_legal_001");
    }

    proptest::proptest! {
        /// For any queue: the ranking is a permutation of it, scores never
        /// rise down the list, and equal scores are in waiting order.
        #[test]
        fn ranking_is_a_sorted_permutation(
            tasks in proptest::collection::vec((0..5usize, 0..600i64, proptest::option::of(-60..600i64), 1..30u32), 0..40)
        ) {
            let cfg = EngineConfig::default();
            let entries: Vec<QueueEntry> = tasks
                .iter()
                .enumerate()
                .map(|(i, (p, waited, deadline, mult))| {
                    let mut e = entry(&format!("acme_legal_{:03}", i + 1), "acme", "legal", Priority::ALL[*p], *waited);
                    e.multiplier = f64::from(*mult) / 10.0;
                    e.deadline = deadline.map(|m| now() + TimeDelta::minutes(m));
                    e
                })
                .collect();
            let ranked = rank(entries.clone(), &cfg, now());
            proptest::prop_assert_eq!(ranked.len(), entries.len());
            let mut ids: Vec<_> = ranked.iter().map(|(e, _)| e.task_id.clone()).collect();
            ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            let mut want: Vec<_> = entries.iter().map(|e| e.task_id.clone()).collect();
            want.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            proptest::prop_assert_eq!(ids, want);
            for w in ranked.windows(2) {
                let ((a, pa), (b, pb)) = (&w[0], &w[1]);
                proptest::prop_assert!(pa.score >= pb.score);
                if pa.score == pb.score {
                    proptest::prop_assert!(a.waiting_since <= b.waiting_since);
                }
            }
        }
    }

    #[test]
    fn expired_leases_are_looked_for_at_most_once_a_second() {
        assert!(reap_is_due(None, now()), "the first pass looks");
        assert!(!reap_is_due(Some(now()), now()));
        assert!(!reap_is_due(
            Some(now()),
            now() + TimeDelta::milliseconds(999)
        ));
        assert!(reap_is_due(Some(now()), now() + TimeDelta::seconds(1)));
        assert!(
            reap_is_due(Some(now()), now() - TimeDelta::milliseconds(1)),
            "a clock that went back does not stop the reaper"
        );
    }

    #[test]
    fn slots_count_agents_and_companies() {
        let mut cfg = EngineConfig::default();
        cfg.scheduler.per_company_concurrency = 2;
        let running = vec![("legal".to_string(), CompanyId::parse("acme").expect("id"))];
        let mut s = Slots::new(&running, &cfg);
        let a = entry("acme_legal_001", "acme", "legal", Priority::High, 0);
        assert!(s.free(&a), "legal has 2 slots, 1 used; acme has 2, 1 used");
        s.take(&a);
        assert!(!s.free(&a), "legal is full");
        let b = entry("acme_financial_002", "acme", "financial", Priority::High, 0);
        assert!(!s.free(&b), "acme is full");
        let c = entry("beta_financial_001", "beta", "financial", Priority::High, 0);
        assert!(s.free(&c));
        let unknown = entry("beta_astrology_002", "beta", "astrology", Priority::High, 0);
        assert!(
            !s.free(&unknown),
            "an agent that is not configured has no slots"
        );
    }

    #[test]
    fn a_claim_batch_holds_only_the_tasks_that_could_take_a_slot() {
        let mut cfg = EngineConfig::default();
        cfg.agents
            .insert("legal".into(), crate::config::AgentConfig::with_slots(2));
        cfg.scheduler.per_company_concurrency = 1;
        let cand = |id: &str, company: &str, agent: &str| Candidate {
            scope: Principal::system()
                .scope(&CompanyId::parse(company).expect("id"), Access::Write)
                .expect("scope"),
            entry: entry(id, company, agent, Priority::High, 0),
        };
        let mut pending = vec![
            cand("acme_legal_001", "acme", "legal"),
            cand("acme_legal_002", "acme", "legal"),
            cand("beta_legal_001", "beta", "legal"),
            cand("gamma_astrology_001", "gamma", "astrology"),
            cand("gamma_legal_001", "gamma", "legal"),
        ];
        let mut slots = Slots::new(&[], &cfg);
        let batch = next_batch(&mut pending, &slots, usize::MAX);
        let names = |b: &[Candidate]| {
            b.iter()
                .map(|c| c.entry.task_id.as_str().to_owned())
                .collect::<Vec<_>>()
        };
        // Two legal slots, one per company: acme's first and beta's.
        assert_eq!(names(&batch), ["acme_legal_001", "beta_legal_001"]);
        // The others wait (the agent nobody configured has no slot: gone).
        assert_eq!(names(&pending), ["acme_legal_002", "gamma_legal_001"]);
        // acme's was claimed, beta's waits for budget: one slot is left,
        // and acme is at its limit.
        slots.take(&batch[0].entry);
        let batch = next_batch(&mut pending, &slots, usize::MAX);
        assert_eq!(names(&batch), ["gamma_legal_001"]);
        assert!(pending.is_empty());
        slots.take(&batch[0].entry);
        assert!(next_batch(&mut pending, &slots, usize::MAX).is_empty());
    }

    #[test]
    fn a_claim_batch_takes_no_more_than_the_room_among_runs_starting() {
        let mut cfg = EngineConfig::default();
        cfg.agents
            .insert("legal".into(), crate::config::AgentConfig::with_slots(4));
        let cand = |id: &str, company: &str| Candidate {
            scope: Principal::system()
                .scope(&CompanyId::parse(company).expect("id"), Access::Write)
                .expect("scope"),
            entry: entry(id, company, "legal", Priority::High, 0),
        };
        let mut pending = vec![
            cand("acme_legal_001", "acme"),
            cand("beta_legal_001", "beta"),
            cand("gamma_legal_001", "gamma"),
        ];
        let slots = Slots::new(&[], &cfg);
        let ids = |b: &[Candidate]| {
            b.iter()
                .map(|c| c.entry.task_id.as_str().to_owned())
                .collect::<Vec<_>>()
        };
        // No room: nothing is claimed and nothing claimable is dropped.
        assert!(next_batch(&mut pending, &slots, 0).is_empty());
        assert_eq!(pending.len(), 3);
        let batch = next_batch(&mut pending, &slots, 2);
        assert_eq!(ids(&batch), ["acme_legal_001", "beta_legal_001"]);
        assert_eq!(ids(&pending), ["gamma_legal_001"]);
    }
}
