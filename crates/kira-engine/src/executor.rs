//! Executors run claimed tasks: the `Executor` trait, the `Run` a task's
//! run goes through (its budget: reserve before each call, settle after,
//! the last settlement written with the run's end; its place among the
//! runs starting; the engine its tools reach), and the `Simulated` executor
//! for tests and benchmarks of the queue. The real one is
//! `agent::AgentExecutor`; the scheduler owns whichever runs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use kira_core::auth::CompanyScope;
use kira_core::budget::{BudgetConfig, ModelPrice, cost_usd};
use kira_core::clock::Clock;
use kira_core::task::Task;
use kira_store::Store;
use kira_store::work::{Reservation, ReserveOutcome, RunRecords, Settlement};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use crate::config::{ExecutorConfig, SimulatedConfig};

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecOutcome {
    Done {
        result: serde_json::Value,
        confidence: f64,
        requires_human_review: bool,
    },
    Failed {
        error: String,
        retryable: bool,
    },
    /// Stopped because the task was cancelled.
    Cancelled,
    /// A call could not get tokens.
    OutOfBudget {
        reason: String,
    },
}

#[async_trait]
pub trait Executor: Send + Sync {
    fn name(&self) -> &str;
    async fn execute(&self, run: &mut Run) -> ExecOutcome;

    /// How the executor runs `agent` (its model), for `kira agents`; None
    /// when it has no such notion (the simulated executor).
    fn describe(&self, _agent: &str) -> Option<crate::agent::AgentModel> {
        None
    }

    /// What `agent`'s run of a task of `task_type` needs to start: a lower
    /// bound of its first call (the fixed prompt, `input_tokens` of task
    /// text and parameters, the output allowance; no context pack, no
    /// session, which are not built yet). The claim holds it; the first
    /// call resizes it to the call's real bound ([`Run::reserve`]). None:
    /// the task's own estimate.
    fn first_call_tokens(&self, _agent: &str, _task_type: &str, _input_tokens: i64) -> Option<i64> {
        None
    }
}

/// One run of a task: its budget (reserve before each call, settle after)
/// and whether it should stop.
pub struct Run {
    pub task: Task,
    /// The engine, for what an agent's tools reach (memory, knowledge),
    /// always through [`Run::scope`].
    engine: crate::Engine,
    scope: CompanyScope,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    budget: BudgetConfig,
    prices: BTreeMap<String, ModelPrice>,
    /// The claim's reservation, handed to the first call.
    first: Option<Reservation>,
    /// Whether any call was given its reservation (so may have reached
    /// the model).
    reserved_a_call: bool,
    /// What the first call needed when it was denied.
    first_call_need: Option<i64>,
    /// The last call's usage, not yet written: it is settled before the
    /// next reservation, or with the run's end in the same transaction.
    unsettled: Option<Settlement>,
    /// What the run leaves behind (trace, session turns), written with its
    /// end in the same transaction.
    records: RunRecords,
    pub(crate) cancel: Arc<AtomicBool>,
    /// The run's place among those starting, until its first call.
    starting: Option<crate::starting::Starting>,
    /// The audit entries of the run's tool calls: its end is recorded only
    /// once they are written.
    audits: Vec<crate::tools::Unwritten>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    OutOfBudget(String),
    #[error(transparent)]
    Store(#[from] kira_store::StoreError),
}

impl Run {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        engine: crate::Engine,
        task: Task,
        scope: CompanyScope,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        budget: BudgetConfig,
        prices: BTreeMap<String, ModelPrice>,
        first: Reservation,
        cancel: Arc<AtomicBool>,
        starting: crate::starting::Starting,
    ) -> Run {
        Run {
            task,
            engine,
            scope,
            store,
            clock,
            budget,
            prices,
            first: Some(first),
            reserved_a_call: false,
            first_call_need: None,
            unsettled: None,
            records: RunRecords::default(),
            cancel,
            starting: Some(starting),
            audits: Vec::new(),
        }
    }

    /// The run's end waits until the audit entries counted by `unwritten`
    /// (its tool offer's) are written: an end is never committed before
    /// the entries of the calls the run made.
    pub fn end_after_audits(&mut self, unwritten: crate::tools::Unwritten) {
        self.audits.push(unwritten);
    }

    /// Waits until the run's tool calls' audit entries are written; an
    /// error says how many could not be (each logged when it failed).
    pub(crate) async fn audits_written(&self) -> Result<(), String> {
        for a in &self.audits {
            a.written().await?;
        }
        Ok(())
    }

    /// The run's own preparation is over: what follows waits on a model
    /// (or, for the simulated executor, on its pretended latency), so
    /// another run may start. Reserving for a call says so too.
    pub fn calling(&mut self) {
        self.starting = None;
    }

    /// What the run leaves behind, recorded with its end.
    pub(crate) fn records_mut(&mut self) -> &mut RunRecords {
        &mut self.records
    }

    pub(crate) fn take_records(&mut self) -> RunRecords {
        std::mem::take(&mut self.records)
    }

    pub fn engine(&self) -> &crate::Engine {
        &self.engine
    }

    /// The store, for the engine's own executors (the agent loop reads the
    /// primary session through it).
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The task's company: every read and write of the run goes through it.
    pub fn scope(&self) -> &CompanyScope {
        &self.scope
    }

    /// The run's clock (injected; tests move it).
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }

    /// Gives back a reservation whose call never happened or failed.
    pub async fn release(&mut self, r: &Reservation) -> Result<(), RunError> {
        self.settle_now().await?;
        self.store
            .release(&self.scope, &r.reservation_id, self.clock.now())
            .await?;
        Ok(())
    }

    /// Writes the usage held back by [`Run::settle`], if any.
    async fn settle_now(&mut self) -> Result<(), RunError> {
        if let Some(s) = self.unsettled.take() {
            self.store
                .settle(
                    &self.scope,
                    &s.reservation_id,
                    s.prompt_tokens,
                    s.completion_tokens,
                    s.cost_usd,
                    self.clock.now(),
                )
                .await?;
        }
        Ok(())
    }

    /// The usage not yet written, for the run's end to settle.
    pub(crate) fn take_unsettled(&mut self) -> Option<Settlement> {
        self.unsettled.take()
    }

    /// False while no call has been given a reservation: a run denied
    /// its first call never reached the model, and waits for budget
    /// again instead of spending an attempt.
    pub fn reserved_a_call(&self) -> bool {
        self.reserved_a_call
    }

    /// What the first call was denied, if it was: the task's next claim
    /// holds that much, so runs claimed together never each hold a start
    /// and all fail to grow it.
    pub(crate) fn first_call_need(&self) -> Option<i64> {
        self.first_call_need
    }

    /// Tokens for one call: an upper bound of its prompt plus max_tokens.
    pub async fn reserve(&mut self, amount: i64) -> Result<Reservation, RunError> {
        let r = self.reserve_call(amount).await;
        if r.is_ok() {
            self.reserved_a_call = true;
        }
        r
    }

    async fn reserve_call(&mut self, amount: i64) -> Result<Reservation, RunError> {
        self.calling();
        // What the last call used may free what this one needs.
        self.settle_now().await?;
        if let Some(first) = self.first.take() {
            // The claim held what the run needs to start; now the call is
            // known, hold exactly its bound: what is over goes back at
            // once, what is missing is taken if there is room.
            if amount == first.amount {
                return Ok(first);
            }
            return match self
                .store
                .resize_reservation(&self.scope, &first.reservation_id, amount, self.clock.now())
                .await?
            {
                ReserveOutcome::Reserved(r) => Ok(r),
                ReserveOutcome::Denied { reason } => {
                    self.first_call_need = Some(amount);
                    self.store
                        .release(&self.scope, &first.reservation_id, self.clock.now())
                        .await?;
                    Err(RunError::OutOfBudget(reason))
                }
            };
        }
        match self
            .store
            .reserve(
                &self.scope,
                &self.task.task_id,
                amount,
                &self.budget,
                self.clock.now(),
            )
            .await?
        {
            ReserveOutcome::Reserved(r) => Ok(r),
            ReserveOutcome::Denied { reason } => Err(RunError::OutOfBudget(reason)),
        }
    }

    /// Settles a call with the provider's real usage; prices by `model`.
    /// The write waits for the next reservation or the run's end (whichever
    /// comes first), so a run's last settlement and its end are recorded in
    /// one transaction, shared with other runs ending at the same time.
    pub async fn settle(
        &mut self,
        r: &Reservation,
        model: &str,
        prompt_tokens: i64,
        completion_tokens: i64,
    ) -> Result<(), RunError> {
        self.settle_now().await?;
        let cost = self
            .prices
            .get(model)
            .map_or(0.0, |p| cost_usd(p, prompt_tokens, completion_tokens));
        self.unsettled = Some(Settlement {
            reservation_id: r.reservation_id.clone(),
            prompt_tokens,
            completion_tokens,
            cost_usd: cost,
        });
        Ok(())
    }

    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
}

/// The executor a configuration names, when the engine can build it
/// alone (agents need providers: the binary builds those).
pub fn from_config(cfg: Option<&ExecutorConfig>) -> Option<Arc<dyn Executor>> {
    match cfg? {
        ExecutorConfig::Simulated(s) => Some(Arc::new(Simulated::new(s.clone()))),
        ExecutorConfig::None | ExecutorConfig::Agents => None,
    }
}

/// Pretends to run a task: waits, uses a share of its reservation, and
/// answers with a result that says it was simulated. For tests and
/// benchmarks of the queue, scheduler and budgets; never a stand-in for an
/// agent in production.
#[derive(Debug, Clone)]
pub struct Simulated {
    cfg: SimulatedConfig,
}

impl Simulated {
    pub fn new(cfg: SimulatedConfig) -> Self {
        Self { cfg }
    }

    /// The same task and attempt always draw the same numbers.
    fn rng(task: &Task) -> StdRng {
        let h = Sha256::digest(format!("{}#{}", task.task_id, task.attempts));
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&h);
        StdRng::from_seed(seed)
    }
}

#[async_trait]
impl Executor for Simulated {
    fn name(&self) -> &str {
        "simulated"
    }

    async fn execute(&self, run: &mut Run) -> ExecOutcome {
        let mut rng = Self::rng(&run.task);
        let c = &self.cfg;
        let latency = rng.random_range(c.latency_ms_min..=c.latency_ms_max);
        run.calling();
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        if run.cancelled() {
            return ExecOutcome::Cancelled;
        }
        if c.failure_rate > 0.0 && rng.random_bool(c.failure_rate) {
            return ExecOutcome::Failed {
                error: "simulated failure".into(),
                retryable: true,
            };
        }
        let r = match run.reserve(run.task.estimated_tokens).await {
            Ok(r) => r,
            Err(RunError::OutOfBudget(reason)) => return ExecOutcome::OutOfBudget { reason },
            Err(e) => {
                return ExecOutcome::Failed {
                    error: e.to_string(),
                    retryable: true,
                };
            }
        };
        let share = rng.random_range(c.usage_min..=c.usage_max);
        #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
        let used = ((r.amount as f64) * share).round() as i64;
        let prompt = used * 3 / 4;
        if let Err(e) = run.settle(&r, "simulated", prompt, used - prompt).await {
            return ExecOutcome::Failed {
                error: e.to_string(),
                retryable: true,
            };
        }
        let preview: String = run.task.task.chars().take(80).collect();
        ExecOutcome::Done {
            result: serde_json::json!({
                "simulated": true,
                "executor": "simulated",
                "summary": format!("Simulated result for: {preview}"),
                "note": "produced by the simulated executor; no model ran",
            }),
            confidence: c.confidence,
            requires_human_review: false,
        }
    }
}
