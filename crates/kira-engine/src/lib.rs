//! What runs in kira: task submission, the scheduler that ranks every
//! company's queued work by effective priority and claims it within agent
//! and company limits and the budget, the workers that run claimed tasks
//! through an [`executor::Executor`], and the periodic jobs (lease reaper,
//! allocation refresh), and company memory, knowledge and sharing.
//!
//! [`Engine`] is a handle on a set of services, one per responsibility
//! (`engine.companies()`, `engine.tasks()`, `engine.scheduler()`,
//! `engine.memory()`, ...), each with its own state over one shared context
//! of store, clock and configuration. ARCHITECTURE.md names what each owns.
//!
//! Architecture invariant: the engine reaches company data only through a
//! `CompanyScope`; for its own work (claiming, running) it uses the
//! `system` principal, which the audit log names.

use std::sync::{Arc, Weak};

use kira_core::clock::Clock;
use kira_store::Store;
use tokio::sync::{Notify, watch};

pub mod agent;
pub mod alerts;
pub mod audit;
pub mod budget;
pub mod companies;
pub mod config;
pub mod counts;
pub mod dashboard;
pub mod executor;
mod group;
pub mod keys;
pub mod knowledge;
pub mod memory;
pub mod metrics;
pub mod nodes;
pub mod outbound;
pub mod review;
pub mod scheduler;
pub mod sharing;
mod starting;
pub mod tasks;
pub mod tools;
mod worker;

pub use config::EngineConfig;
pub use scheduler::TickReport;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Invalid(#[from] kira_core::ValidationError),
    /// A request malformed in one field (a search query empty or too
    /// long, a rating off the scale, a field that does not fit the
    /// decision): the API answers 400 naming it. `Invalid` is a well-formed
    /// request whose content breaks a rule (422).
    #[error(transparent)]
    Parameter(kira_core::ValidationError),
    /// The caller's role may not set this field (or level): the error
    /// names it.
    #[error("not allowed: {0}")]
    Forbidden(kira_core::ValidationError),
    #[error(transparent)]
    Store(#[from] kira_store::StoreError),
    #[error("embedding: {0}")]
    Embed(String),
    #[error("summarizer: {0}")]
    Summarize(String),
    /// Audit entries could not be written (in a group of them).
    #[error("audit log: {0}")]
    Audit(String),
}

/// Runs `job` under the store's job lock `key`, on one node at a time
/// (None: another node holds it), and gives the lock back as the job ends,
/// whatever its outcome, so the job can run again at once.
pub(crate) async fn locked<T>(
    store: &dyn Store,
    key: i64,
    job: impl std::future::Future<Output = Result<T, EngineError>>,
) -> Result<Option<T>, EngineError> {
    let Some(lock) = store.job_lock(key).await? else {
        return Ok(None);
    };
    let out = job.await;
    lock.release().await;
    out.map(Some)
}

/// Tells background work to stop.
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        let (tx, rx) = watch::channel(false);
        Self {
            tx: Arc::new(tx),
            rx,
        }
    }

    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// What every service shares: the store, the clock, the configuration,
/// and the scheduler's wake (submissions, requeues, approvals and freed
/// slots ring it). Nothing here changes after the engine is built.
pub(crate) struct Ctx {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: EngineConfig,
    /// Rung when work arrives, so an idle scheduler looks at once.
    pub(crate) wake: Arc<Notify>,
    /// This process's counts of what no company's transaction records,
    /// until they are written.
    pub(crate) counts: counts::Counts,
}

impl Ctx {
    /// Wakes the scheduler (new or requeued work, or a slot freed).
    pub(crate) fn wake_scheduler(&self) {
        self.wake.notify_one();
    }
}

/// The engine: a handle on its services, cheap to clone, shared by the
/// HTTP handlers, the background loops and the runs (see ARCHITECTURE.md,
/// "API boundary", for what each service owns).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Services>,
}

/// Every service, each with its own state; those another one depends on
/// are shared with it.
pub(crate) struct Services {
    ctx: Arc<Ctx>,
    keys: keys::Keys,
    audit: audit::AuditLog,
    companies: companies::Companies,
    budget: Arc<budget::Budget>,
    tasks: tasks::Tasks,
    reviews: review::Reviews,
    memory: Arc<memory::Memories>,
    embeddings: Arc<memory::embed::Embeddings>,
    knowledge: Arc<knowledge::Knowledge>,
    sharing: Arc<sharing::Sharing>,
    scheduler: Arc<scheduler::Scheduler>,
    agents: agent::Agents,
    metrics: Arc<metrics::Metrics>,
    nodes: Arc<nodes::Nodes>,
    alerts: Arc<alerts::Alerts>,
    tools: tools::Tools,
    dashboard: dashboard::Dashboard,
}

impl Engine {
    /// An engine with the executor its configuration names, if any.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, config: EngineConfig) -> Engine {
        let executor = executor::from_config(config.executor.as_ref());
        Self::with_parts(store, clock, config, executor)
    }

    /// An engine running tasks with `executor`: tests, benchmarks, and
    /// `kira serve` with agents (`agent::AgentExecutor`, which needs the
    /// providers the binary builds).
    pub fn with_executor(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        config: EngineConfig,
        executor: Arc<dyn executor::Executor>,
    ) -> Engine {
        Self::with_parts(store, clock, config, Some(executor))
    }

    fn with_parts(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        config: EngineConfig,
        executor: Option<Arc<dyn executor::Executor>>,
    ) -> Engine {
        // So the first context pack does not load the tokenizer.
        memory::pack::warm_up_in_background();
        let ctx = Arc::new(Ctx {
            counts: counts::Counts::new(store.clone(), clock.clone()),
            store,
            clock,
            config,
            wake: Arc::new(Notify::new()),
        });
        let summarizer: Arc<dyn memory::summarize::Summarizer> =
            Arc::new(memory::summarize::Extractive::default());
        Self::build(ctx, executor, None, summarizer)
    }

    /// Builds the services over `ctx`, each given those it depends on (the
    /// order below is the dependency order: no service names a later one).
    fn build(
        ctx: Arc<Ctx>,
        executor: Option<Arc<dyn executor::Executor>>,
        embedder: Option<Arc<dyn memory::embed::TextEmbedder>>,
        summarizer: Arc<dyn memory::summarize::Summarizer>,
    ) -> Engine {
        let inner = Arc::new_cyclic(|engine| {
            let budget = Arc::new(budget::Budget::new(ctx.clone()));
            let embeddings = Arc::new(memory::embed::Embeddings::new(ctx.clone(), embedder));
            let knowledge = Arc::new(knowledge::Knowledge::new(ctx.clone(), embeddings.clone()));
            let sharing = Arc::new(sharing::Sharing::new(ctx.clone()));
            let memory = Arc::new(memory::Memories::new(
                ctx.clone(),
                summarizer,
                embeddings.clone(),
                knowledge.clone(),
                sharing.clone(),
            ));
            let scheduler = Arc::new(scheduler::Scheduler::new(
                ctx.clone(),
                executor,
                engine.clone(),
                memory.clone(),
                sharing.clone(),
                embeddings.clone(),
            ));
            let nodes = Arc::new(nodes::Nodes::new(
                ctx.clone(),
                scheduler.worker_id().to_owned(),
            ));
            let metrics = Arc::new(metrics::Metrics::new(
                ctx.clone(),
                sharing.clone(),
                nodes.clone(),
            ));
            Services {
                keys: keys::Keys::new(ctx.clone()),
                audit: audit::AuditLog::new(ctx.clone()),
                companies: companies::Companies::new(ctx.clone(), budget.clone()),
                tasks: tasks::Tasks::new(ctx.clone(), scheduler.clone()),
                reviews: review::Reviews::new(ctx.clone(), memory.clone()),
                agents: agent::Agents::new(ctx.clone(), scheduler.clone()),
                dashboard: dashboard::Dashboard::new(
                    ctx.clone(),
                    metrics.clone(),
                    budget.clone(),
                    nodes.clone(),
                ),
                nodes,
                metrics: metrics.clone(),
                alerts: Arc::new(alerts::Alerts::new(ctx.clone(), metrics, sharing.clone())),
                tools: tools::Tools::new(ctx.clone(), engine.clone()),
                budget,
                memory,
                embeddings,
                knowledge,
                sharing,
                scheduler,
                ctx,
            }
        });
        Engine { inner }
    }

    /// The engine with `embedder` for semantic retrieval. Call before the
    /// engine is cloned or shared.
    pub fn with_embedder(self, embedder: Arc<dyn memory::embed::TextEmbedder>) -> Engine {
        if Arc::strong_count(&self.inner) != 1 {
            tracing::error!("with_embedder called on a shared engine; ignored");
            return self;
        }
        // Memory, knowledge and the scheduler share the model through
        // `Embeddings`: the services are built again over the same context.
        let s = &self.inner;
        Self::build(
            s.ctx.clone(),
            s.scheduler.executor().cloned(),
            Some(embedder),
            s.memory.summarizer().clone(),
        )
    }

    /// The engine with `summarizer` for compaction (default: extractive).
    /// Call before the engine is cloned or shared.
    pub fn with_summarizer(self, summarizer: Arc<dyn memory::summarize::Summarizer>) -> Engine {
        if Arc::strong_count(&self.inner) != 1 {
            tracing::error!("with_summarizer called on a shared engine; ignored");
            return self;
        }
        // As for the embedder: the scheduler shares memory's summariser.
        let s = &self.inner;
        Self::build(
            s.ctx.clone(),
            s.scheduler.executor().cloned(),
            s.embeddings.embedder().cloned(),
            summarizer,
        )
    }

    /// The engine behind `services`, while it is there (the scheduler's
    /// handle for the runs it starts: it is owned by the engine, so it
    /// holds it weakly).
    pub(crate) fn upgrade(services: &Weak<Services>) -> Option<Engine> {
        services.upgrade().map(|inner| Engine { inner })
    }

    /// Whether the database answers (readiness).
    pub async fn ping(&self) -> Result<(), EngineError> {
        Ok(self.inner.ctx.store.ping().await?)
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.ctx.clock
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.ctx.config
    }

    /// API keys and authentication.
    pub fn keys(&self) -> &keys::Keys {
        &self.inner.keys
    }

    /// The audit log.
    pub fn audit(&self) -> &audit::AuditLog {
        &self.inner.audit
    }

    /// Company profiles.
    pub fn companies(&self) -> &companies::Companies {
        &self.inner.companies
    }

    /// Token budgets, emergency requests, the ledger.
    pub fn budget(&self) -> &budget::Budget {
        &self.inner.budget
    }

    /// Submitting, cancelling and reading tasks.
    pub fn tasks(&self) -> &tasks::Tasks {
        &self.inner.tasks
    }

    /// Human review of results.
    pub fn reviews(&self) -> &review::Reviews {
        &self.inner.reviews
    }

    /// Company memory: writes, search, context packs, compaction.
    pub fn memory(&self) -> &Arc<memory::Memories> {
        &self.inner.memory
    }

    /// Sentence embeddings and their background loop.
    pub fn embeddings(&self) -> &memory::embed::Embeddings {
        &self.inner.embeddings
    }

    /// The shared knowledge base.
    pub fn knowledge(&self) -> &knowledge::Knowledge {
        &self.inner.knowledge
    }

    /// Cross-company sharing and conflict flags.
    pub fn sharing(&self) -> &sharing::Sharing {
        &self.inner.sharing
    }

    /// The scheduler and the runs it starts.
    pub fn scheduler(&self) -> &scheduler::Scheduler {
        &self.inner.scheduler
    }

    /// Task metrics: the roll-up, the series, the scrape.
    pub fn metrics(&self) -> &Arc<metrics::Metrics> {
        &self.inner.metrics
    }

    /// This process as a node (its heartbeat), every node, availability.
    pub fn nodes(&self) -> &Arc<nodes::Nodes> {
        &self.inner.nodes
    }

    /// Alert rules, their evaluation and notifications; silences.
    pub fn alerts(&self) -> &Arc<alerts::Alerts> {
        &self.inner.alerts
    }

    /// The tool registry and the company wrapper every tool call goes
    /// through.
    pub fn tools(&self) -> &tools::Tools {
        &self.inner.tools
    }

    /// The executive and company dashboards (SEED 6.3).
    pub fn dashboard(&self) -> &dashboard::Dashboard {
        &self.inner.dashboard
    }

    /// The configured agents and their load.
    pub fn agents(&self) -> &agent::Agents {
        &self.inner.agents
    }
}
