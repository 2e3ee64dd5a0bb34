//! What runs in kira: task submission, the scheduler that ranks every
//! company's queued work by effective priority and claims it within agent
//! and company limits and the budget, the workers that run claimed tasks
//! through an [`executor::Executor`], and the periodic jobs (lease reaper,
//! allocation refresh).
//!
//! Architecture invariant: the engine reaches company data only through a
//! `CompanyScope`; for its own work (claiming, running) it uses the
//! `system` principal, which the audit log names.

use std::sync::Arc;

use kira_core::clock::Clock;
use kira_store::Store;
use tokio::sync::{Notify, watch};

pub mod agent;
pub mod audit;
pub mod budget;
pub mod companies;
pub mod config;
pub mod executor;
mod group;
pub mod keys;
pub mod knowledge;
pub mod memory;
pub mod metrics;
pub mod review;
pub mod scheduler;
pub mod sharing;
mod starting;
pub mod tasks;
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

/// The engine: cheap to clone, shared by the HTTP handlers and the
/// background loop.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
    executor: Option<Arc<dyn executor::Executor>>,
    /// Rung when work arrives, so an idle scheduler looks at once.
    wake: Arc<Notify>,
    /// This process's name on leases.
    worker_id: String,
    /// The sentence-embedding model; None: full text only.
    embedder: Option<Arc<dyn memory::embed::TextEmbedder>>,
    /// Rung when memories arrive, so an idle embedder looks at once.
    embed_wake: Notify,
    summarizer: Arc<dyn memory::summarize::Summarizer>,
    /// Denied cross-company reads since start (see `sharing`).
    denied_cross_company_reads: std::sync::atomic::AtomicU64,
    /// Ends of runs waiting to be recorded together.
    completions: worker::Completions,
    /// The company directory as of a directory version (see `sharing`).
    directory: std::sync::Mutex<Option<(i64, Arc<sharing::Directory>)>>,
    /// Held while the directory is read again, so runs that find it stale
    /// at the same moment (the first wave after a start) read it once.
    directory_reload: tokio::sync::Mutex<()>,
    /// Audit entries of reads waiting to be written together.
    audits: group::Group<Vec<kira_core::audit::AuditRecord>, Result<(), String>>,
    /// When the scheduler last looked for expired leases (see `scheduler`).
    last_reap: std::sync::Mutex<Option<chrono::DateTime<chrono::Utc>>>,
    /// Runs claimed and still preparing their first call (see `starting`).
    starting: Arc<starting::StartGate>,
}

impl Engine {
    /// An engine with the executor its configuration names, if any.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, config: EngineConfig) -> Engine {
        let executor = executor::from_config(config.executor.as_ref());
        Self::build(store, clock, config, executor)
    }

    /// An engine running tasks with `executor` (tests, and the agents issue).
    pub fn with_executor(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        config: EngineConfig,
        executor: Arc<dyn executor::Executor>,
    ) -> Engine {
        Self::build(store, clock, config, Some(executor))
    }

    fn build(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        config: EngineConfig,
        executor: Option<Arc<dyn executor::Executor>>,
    ) -> Engine {
        let worker_id = format!("worker-{}", uuid::Uuid::now_v7().simple());
        // So the first context pack does not load the tokenizer.
        memory::pack::warm_up_in_background();
        let wake = Arc::new(Notify::new());
        let starting = starting::StartGate::new(
            config.scheduler.max_starting as usize,
            config.scheduler.start_target.to_std().unwrap_or_default(),
            wake.clone(),
        );
        Engine {
            inner: Arc::new(Inner {
                store,
                clock,
                config,
                executor,
                wake,
                worker_id,
                embedder: None,
                embed_wake: Notify::new(),
                summarizer: Arc::new(memory::summarize::Extractive::default()),
                denied_cross_company_reads: Default::default(),
                completions: worker::Completions::default(),
                audits: group::Group::default(),
                directory: std::sync::Mutex::new(None),
                directory_reload: tokio::sync::Mutex::new(()),
                last_reap: std::sync::Mutex::new(None),
                starting,
            }),
        }
    }

    /// The store, for the engine's own services only: every other crate
    /// goes through their methods, so a rule one of them owns holds for
    /// every caller.
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Whether the database answers (readiness).
    pub async fn ping(&self) -> Result<(), EngineError> {
        Ok(self.store().ping().await?)
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Whether tasks run on the simulated executor, whose results are not
    /// real work and are not remembered.
    pub fn is_simulated(&self) -> bool {
        self.executor_name() == Some("simulated")
    }

    /// The executor's name, or None when tasks only queue.
    pub fn executor_name(&self) -> Option<&str> {
        self.inner.executor.as_ref().map(|e| e.name())
    }

    pub fn worker_id(&self) -> &str {
        &self.inner.worker_id
    }

    /// The engine with `embedder` for semantic retrieval. Call before the
    /// engine is cloned or shared.
    pub fn with_embedder(mut self, embedder: Arc<dyn memory::embed::TextEmbedder>) -> Engine {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.embedder = Some(embedder),
            None => tracing::error!("with_embedder called on a shared engine; ignored"),
        }
        self
    }

    /// The engine with `summarizer` for compaction (default: extractive).
    pub fn with_summarizer(mut self, s: Arc<dyn memory::summarize::Summarizer>) -> Engine {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.summarizer = s,
            None => tracing::error!("with_summarizer called on a shared engine; ignored"),
        }
        self
    }

    pub fn embedder(&self) -> Option<&Arc<dyn memory::embed::TextEmbedder>> {
        self.inner.embedder.as_ref()
    }

    pub fn summarizer(&self) -> &Arc<dyn memory::summarize::Summarizer> {
        &self.inner.summarizer
    }

    /// Wakes the scheduler (new or requeued work, or a slot freed).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }
}
