//! kira's benchmarks, each end to end through the real engine and store on
//! this machine: the queue, agents with a fake provider, memory retrieval
//! (LoCoMo, LongMemEval), memory at scale, and the local model. The `kira`
//! binary mounts [`BenchCommand`] as `kira bench`; `scripts/bench` drives
//! it and reads its `--json` output.
//!
//! API boundary: this crate sits above `kira-engine` and `kira-store` and
//! uses only their public API; no library crate depends on it, and only
//! the `kira` binary names it, so nothing `kira serve` runs calls into it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Subcommand;
use kira_store::{Store, StoreConfig, StoreError};

pub mod agents;
pub mod answers;
pub mod cpu;
pub mod dashboard;
pub mod local_model;
pub mod locomo;
pub mod longmemeval;
pub mod memory;
pub mod metrics;
pub mod queue;
pub mod report;
pub mod scale;
pub mod tools;

pub use report::{Percentiles, percentiles};

/// `kira bench ...`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The queue end to end: submit, claim with a budget reservation, run
    /// (simulated, zero latency), settle, ledger, complete.
    Queue(queue::QueueArgs),
    /// Retrieval quality of context packs on LoCoMo (../shared/bench):
    /// evidence recall per category at each token budget, and pack latency.
    Memory(locomo::MemoryArgs),
    /// Memory at scale: COMPANIES x PER_COMPANY memories (full text; no
    /// vectors at this size), batch insert throughput, search and 8,000-token
    /// context pack latency for one company.
    MemoryScale(scale::MemoryScaleArgs),
    /// Session recall on LongMemEval_S (../shared/bench): each question's
    /// haystack is one company's memory (user turns); recall_all/any@5/@10.
    Longmemeval(longmemeval::LongmemevalArgs),
    /// Agents end to end with a fake provider answering after a fixed
    /// latency: tasks per second, kira's own time per task (all but the
    /// provider's) p50/p99, and the share of tasks within the 30 s SLA.
    Agents(agents::AgentsArgs),
    /// A local model (SmolLM2 in process, or the one --model names): load
    /// time, prompt and generation tokens per second on this machine, free
    /// and held to an output schema (constrained decoding), how many of a
    /// set of varied prompts get an answer that parses as an agent's
    /// result, and how many of 30 questions it answers right.
    LocalModel(local_model::LocalModelArgs),
    /// The local model through a real `kira serve` (this binary, default
    /// configuration): 30 questions whose answers are in the company's
    /// memory, submitted as tasks through the HTTP API, as shipped (held
    /// to the format) and with `structured_output = false`; how many it
    /// answers right.
    Answers(answers::AnswersArgs),
    /// Metrics as deployments grow: COMPANIES companies with a run on each
    /// of six agents, then `GET /metrics` and a company's week of metrics
    /// timed through the HTTP API.
    Metrics(metrics::MetricsArgs),
    /// Dashboards and alerts on a deployment with history: COMPANIES
    /// companies with a run a day for DAYS days, then one alert evaluation,
    /// a company's dashboard (JSON and page) and the executive dashboard,
    /// timed through the HTTP API.
    Dashboard(dashboard::DashboardArgs),
    /// Tool calls: the company wrapper's overhead per call (p50/p99) next
    /// to a direct rmcp call to the same stdio MCP server, then calls per
    /// second from concurrent callers and what the rate limit refuses.
    Tools(tools::ToolsArgs),
    /// One worker process of `bench queue --processes N` (internal): opens
    /// the database, prints `ready`, and drains the queue once its stdin
    /// is closed.
    #[command(hide = true)]
    QueueWorker {
        #[arg(long)]
        database_url: String,
        #[arg(long)]
        overload: bool,
    },
}

/// Runs one benchmark and prints its figures (JSON with `json`). The exit
/// code says whether every task of the run completed.
pub async fn run(cmd: BenchCommand, json: bool) -> Result<ExitCode, BenchError> {
    match cmd {
        BenchCommand::Queue(args) => queue::command(args, json).await,
        BenchCommand::Agents(args) => agents::command(args, json).await,
        BenchCommand::LocalModel(args) => local_model::command(args, json).await,
        BenchCommand::Answers(args) => answers::command(args, json).await,
        BenchCommand::Memory(args) => locomo::command(args, json).await,
        BenchCommand::MemoryScale(args) => scale::command(args, json).await,
        BenchCommand::Longmemeval(args) => longmemeval::command(args, json).await,
        BenchCommand::Metrics(args) => metrics::command(args, json).await,
        BenchCommand::Tools(args) => tools::command(args, json).await,
        BenchCommand::Dashboard(args) => dashboard::command(args, json).await,
        BenchCommand::QueueWorker {
            database_url,
            overload,
        } => queue::worker(&database_url, overload).await,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A flag out of range; the message names it.
    #[error("{0}")]
    Invalid(String),
    /// The benchmark's data could not be read; the message says which.
    #[error("{0}")]
    Data(String),
    /// A worker process of a multi-process run failed.
    #[error("{0}")]
    Worker(String),
    #[error("opening {url}")]
    Open {
        url: String,
        #[source]
        source: StoreError,
    },
    /// What the benchmark was doing when `source` failed.
    #[error("{what}")]
    During {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Engine(#[from] kira_engine::EngineError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Validation(#[from] kira_core::ValidationError),
    #[error(transparent)]
    Denied(#[from] kira_core::auth::Denied),
    #[error(transparent)]
    Llm(#[from] kira_llm::LlmError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

impl BenchError {
    fn during(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        BenchError::During {
            what: what.into(),
            source: Box::new(source),
        }
    }
}

/// The database a benchmark runs in: the one it was given, or a new SQLite
/// file in a temp directory of its own.
pub(crate) struct Scratch {
    url: String,
    /// The temp directory, when the benchmark made the database.
    temp: Option<PathBuf>,
}

impl Scratch {
    /// `url`, or a new SQLite file under a temp directory named `prefix-<id>`.
    fn new(url: Option<&str>, prefix: &str) -> Result<Scratch, BenchError> {
        if let Some(url) = url {
            return Ok(Scratch {
                url: url.to_owned(),
                temp: None,
            });
        }
        let temp = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&temp)?;
        Ok(Scratch {
            url: format!("sqlite://{}", temp.join("bench.db").display()),
            temp: Some(temp),
        })
    }

    fn url(&self) -> &str {
        &self.url
    }

    fn is_postgres(&self) -> bool {
        self.url.starts_with("postgres")
    }

    async fn open(&self) -> Result<Arc<dyn Store>, BenchError> {
        open(&self.url).await
    }

    /// Removes the temp directory, if the benchmark made one.
    fn remove(self) {
        if let Some(temp) = self.temp {
            let _ = std::fs::remove_dir_all(temp);
        }
    }
}

async fn open(url: &str) -> Result<Arc<dyn Store>, BenchError> {
    kira_store::open(&StoreConfig {
        database_url: url.to_owned(),
        app_database_url: None,
    })
    .await
    .map_err(|source| BenchError::Open {
        url: kira_core::url::redact_url(url),
        source,
    })
}
