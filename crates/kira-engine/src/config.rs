//! The engine's configuration: budgets, priority, the scheduler, providers,
//! agents and their limits, the primary agent, task types, the executor,
//! model prices, knowledge, sharing, memory, context packs and review. Read
//! from the `[budget]`, `[priority]`, `[scheduler]`, `[tasks]`,
//! `[providers.NAME]`, `[agents.NAME]`, `[primary]`, `[summarizer]`,
//! `[task_types.NAME]`, `[executor]`, `[prices.MODEL]`, `[knowledge]`,
//! `[sharing]`, `[memory]`, `[context]` and `[review]` sections of
//! `kira.toml` (`EngineFile`), resolved over the defaults and validated one
//! section at a time; every default is SEED's.

use std::collections::{BTreeMap, BTreeSet};

use chrono::TimeDelta;
use kira_core::ValidationError;
use kira_core::budget::{BudgetConfig, ModelPrice};
use kira_core::knowledge::{DEFAULT_DOMAINS, check_domain};
use kira_core::memory::Workstream;
use kira_core::priority::PriorityConfig;
use kira_core::sharing::SharingRules;
use kira_core::task::{Priority, check_task_type};
use serde::{Deserialize, Serialize};

/// The agent that answers inline: every company's primary agent.
pub const PRIMARY: &str = "primary";
/// SEED's specialist pool.
pub const SPECIALISTS: [&str; 5] = ["legal", "financial", "technical", "content", "research"];

#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    pub budget: BudgetConfig,
    pub priority: PriorityConfig,
    pub scheduler: SchedulerConfig,
    /// What a company key may submit (`[tasks]`).
    pub tasks: TasksConfig,
    /// Every agent that can run tasks, with its limits.
    pub agents: BTreeMap<String, AgentConfig>,
    pub task_types: BTreeMap<String, TaskTypeConfig>,
    /// None: real agents (`crate::agent`), which the binary builds with
    /// its providers; `kind = "none"`: tasks wait in the queue;
    /// `kind = "simulated"`: the stand-in for tests and benchmarks.
    pub executor: Option<ExecutorConfig>,
    pub prices: BTreeMap<String, ModelPrice>,
    pub memory: crate::memory::MemoryConfig,
    /// The shared knowledge base's domains (`[knowledge] domains`).
    pub knowledge_domains: BTreeSet<String>,
    /// Cross-company access rules (`[sharing]`), SEED 2.3's by default.
    pub sharing: SharingRules,
    /// When a result waits for a human (`[review]`).
    pub review: ReviewConfig,
    /// Model providers agents may name (`[providers.NAME]`); empty: the
    /// environment's (OpenAI, Anthropic), else the local model.
    pub providers: BTreeMap<String, ProviderSpec>,
    /// The primary agent's session and spawn rule (`[primary]`).
    pub primary: PrimaryConfig,
    /// What summarises for compaction and the primary session (`[summarizer]`).
    pub summarizer: SummarizerConfig,
    /// The task metrics' roll-up and retention (`[metrics]`).
    pub metrics: crate::metrics::MetricsConfig,
    /// Alert rules, teams and their channels (`[alerts]`).
    pub alerts: crate::alerts::AlertsConfig,
    /// The tool wrapper's limits and the shipped tools (`[tools]`).
    pub tools: crate::tools::ToolsConfig,
}

/// Which summariser compaction and the primary session use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SummarizerConfig {
    /// `extractive` (no model; the default) or `llm` (a call to `agent`'s
    /// provider and model).
    pub kind: SummarizerKind,
    /// The agent whose model summarises, for `llm`.
    pub agent: String,
    /// Output tokens of one summary, for `llm`.
    pub max_tokens: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SummarizerKind {
    Extractive,
    Llm,
}

impl Default for SummarizerConfig {
    fn default() -> Self {
        Self {
            kind: SummarizerKind::Extractive,
            agent: "content".to_owned(),
            max_tokens: 400,
        }
    }
}

/// The review policy: which results go to `needs_review` instead of
/// completing, and how often a rejected task runs again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReviewConfig {
    /// Results with a lower confidence wait for a human.
    pub confidence_threshold: f64,
    /// Task types whose results always wait for a human.
    pub always: BTreeSet<String>,
    /// A run that hit a limit (steps, tokens, wall time) waits for a human.
    pub on_limit: bool,
    /// How often a rejected task goes back to the queue; after that a
    /// rejection fails it.
    pub max_requeues: u32,
}

impl Default for ReviewConfig {
    fn default() -> Self {
        Self {
            confidence_threshold: 0.7,
            always: BTreeSet::new(),
            on_limit: true,
            max_requeues: 1,
        }
    }
}

impl ReviewConfig {
    /// Whether a result of this type, with this confidence, from a run
    /// that did or did not hit a limit, needs a human.
    pub fn needs_review(&self, task_type: &str, confidence: f64, hit_limit: bool) -> bool {
        confidence < self.confidence_threshold
            || self.always.contains(task_type)
            || (hit_limit && self.on_limit)
    }
}

/// `[tasks]`: limits on what a company key may submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TasksConfig {
    /// Emergency tasks of one company a non-admin key may have queued or
    /// running at once (emergency outranks every other company's work);
    /// 0: only admin keys submit at `emergency`.
    pub max_emergency_open_per_company: u32,
}

impl Default for TasksConfig {
    fn default() -> Self {
        Self {
            max_emergency_open_per_company: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// How long a claimed task is a worker's before someone else may take it.
    pub lease: TimeDelta,
    /// How often a worker renews its lease (well inside `lease`).
    pub heartbeat: TimeDelta,
    pub max_attempts: i32,
    /// The first retry waits this long; each later one twice as long.
    pub retry_backoff: TimeDelta,
    /// How often an idle scheduler looks at the queue without being woken.
    pub poll_interval: TimeDelta,
    /// Running tasks per company, across agents.
    pub per_company_concurrency: u32,
    /// Candidates read per scheduling pass: the tasks waiting longest of
    /// those whose agent and company have a free slot (and, past those,
    /// each level's first eighth as many; see `TaskStore::queue_snapshot`).
    pub batch: u32,
    /// Runs preparing their first model call at once: the floor of a limit
    /// that widens when starts are quick (see `crate::starting`); twice the
    /// machine's cores by default.
    pub max_starting: u32,
    /// How long the runs one pass starts may take to reach their first
    /// call, side by side on the cores: the limit on runs starting at once
    /// widens past `max_starting` while recent starts fit in it. Zero keeps
    /// the limit at `max_starting`.
    pub start_target: TimeDelta,
}

/// Twice the machine's cores: a run's preparation is mostly this process's
/// CPU, with a little waiting on the database between.
fn default_max_starting() -> u32 {
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    u32::try_from(cores * 2).unwrap_or(u32::MAX).clamp(2, 64)
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            lease: TimeDelta::seconds(60),
            heartbeat: TimeDelta::seconds(15),
            max_attempts: 3,
            retry_backoff: TimeDelta::seconds(5),
            poll_interval: TimeDelta::seconds(1),
            per_company_concurrency: 4,
            batch: 256,
            max_starting: default_max_starting(),
            start_target: TimeDelta::milliseconds(2),
        }
    }
}

/// One agent of the pool (or the primary): how many runs at once, its
/// instructions, its model, the tools it may use and its limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub max_concurrent: u32,
    /// The agent's instructions; none: the built-in prompt for its name
    /// (`crate::agent::prompts`), or a generic one for a new agent.
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// A `[providers.NAME]`; none: the default provider.
    #[serde(default)]
    pub provider: Option<String>,
    /// The model; none: the provider's.
    #[serde(default)]
    pub model: Option<String>,
    /// Models tried in order when the model fails after its retries.
    #[serde(default)]
    pub fallback_models: Vec<String>,
    /// Tool domains the agent may use: `memory` (search and record the
    /// company's memories), `knowledge` (search the shared knowledge
    /// base), and the registry's domains (legal, financial, technical,
    /// content, research), whose domain tools it is then offered.
    /// Infrastructure tools and its company's tools are every agent's;
    /// submitting the result is always allowed.
    #[serde(default = "default_tools")]
    pub tools: Vec<String>,
    /// Model calls per run at most; none: 6 on a remote model, 1 on the
    /// local one (it answers from its context pack in one call held to
    /// the result: SmolLM2's tool calls search for nothing useful, and
    /// each call rereads a prompt of 1,000 tokens or more).
    #[serde(default)]
    pub max_steps: Option<u32>,
    /// Prompt and completion tokens per run at most.
    #[serde(default = "default_run_tokens")]
    pub max_tokens_per_run: i64,
    /// Wall time of a run at most, in seconds.
    #[serde(default = "default_wall_seconds")]
    pub max_wall_seconds: u64,
    /// Output tokens per call; none: 1,024 on a remote model, 200 on the
    /// local one.
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    /// Tokens of context pack in the first prompt; none: 4,000 on a remote
    /// model, 600 on the local one (its window is small and it is slow).
    #[serde(default)]
    pub context_budget: Option<usize>,
}

/// Tool domains an agent may be given: the built-ins' and the registry's.
pub const TOOL_DOMAINS: [&str; 7] = [
    "memory",
    "knowledge",
    "legal",
    "financial",
    "technical",
    "content",
    "research",
];

fn default_tools() -> Vec<String> {
    kira_core::tools::BUILTIN_DOMAINS
        .iter()
        .map(|d| (*d).to_owned())
        .collect()
}
fn default_run_tokens() -> i64 {
    64_000
}
fn default_wall_seconds() -> u64 {
    600
}

impl AgentConfig {
    /// An agent with `max_concurrent` slots and every other setting at its
    /// default.
    pub fn with_slots(max_concurrent: u32) -> AgentConfig {
        AgentConfig {
            max_concurrent,
            system_prompt: None,
            provider: None,
            model: None,
            fallback_models: Vec::new(),
            tools: default_tools(),
            max_steps: None,
            max_tokens_per_run: default_run_tokens(),
            max_wall_seconds: default_wall_seconds(),
            max_output_tokens: None,
            context_budget: None,
        }
    }

    fn validate(&self, name: &str) -> Result<(), ValidationError> {
        let field = |k: &str| format!("agents.{name}.{k}");
        if !(1..=10_000).contains(&self.max_concurrent) {
            return Err(ValidationError::new(
                field("max_concurrent"),
                "must be between 1 and 10000",
            ));
        }
        for t in &self.tools {
            if !TOOL_DOMAINS.contains(&t.as_str()) {
                return Err(ValidationError::new(
                    field("tools"),
                    format!("'{t}' is not one of {}", TOOL_DOMAINS.join(", ")),
                ));
            }
        }
        if let Some(v) = self.max_steps
            && !(1..=100).contains(&v)
        {
            return Err(ValidationError::new(
                field("max_steps"),
                "must be between 1 and 100",
            ));
        }
        if !(100..=100_000_000).contains(&self.max_tokens_per_run) {
            return Err(ValidationError::new(
                field("max_tokens_per_run"),
                "must be between 100 and 100000000",
            ));
        }
        if !(1..=86_400).contains(&self.max_wall_seconds) {
            return Err(ValidationError::new(
                field("max_wall_seconds"),
                "must be between 1 and 86400",
            ));
        }
        if let Some(v) = self.max_output_tokens
            && !(1..=1_000_000).contains(&v)
        {
            return Err(ValidationError::new(
                field("max_output_tokens"),
                "must be between 1 and 1000000",
            ));
        }
        if let Some(v) = self.context_budget
            && v > 1_000_000
        {
            return Err(ValidationError::new(
                field("context_budget"),
                "must be at most 1000000",
            ));
        }
        if let Some(p) = &self.system_prompt
            && p.trim().is_empty()
        {
            return Err(ValidationError::new(
                field("system_prompt"),
                "must not be empty",
            ));
        }
        Ok(())
    }
}

/// Which wire format a configured provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI-compatible chat completions (OpenAI, vLLM, Ollama, llama.cpp
    /// server, LiteLLM: any base URL).
    OpenAi,
    Anthropic,
    /// SmolLM2-135M-Instruct in process (installed by
    /// `./scripts/install-models`).
    Local,
}

/// `[providers.NAME]`: a model provider agents may name. The key is never
/// in the file in the clear: `api_key_env` names the environment variable
/// holding it, or `api_key_encrypted` holds it sealed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    pub kind: ProviderKind,
    /// None: the provider's public URL (OpenAI's, Anthropic's).
    #[serde(default)]
    pub base_url: Option<String>,
    /// The environment variable with the API key (`OPENAI_API_KEY`, ...).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Or the API key sealed with the master key in `KIRA_SECRET_KEY`
    /// (`kira secret encrypt --provider NAME` prints it): `kira-sealed-v1:...`.
    /// Never shown back.
    #[serde(default, skip_serializing)]
    pub api_key_encrypted: Option<String>,
    /// The model agents get when they name none.
    #[serde(default)]
    pub model: Option<String>,
    /// Calls to this provider at once, across agents.
    #[serde(default = "default_provider_concurrency")]
    pub max_concurrent: usize,
    /// One attempt's time limit, in seconds.
    #[serde(default = "default_provider_timeout")]
    pub timeout_seconds: u64,
    /// Retries after the first attempt (429, 5xx, timeouts).
    #[serde(default = "default_provider_retries")]
    pub max_retries: u32,
    /// Hold answers to the format each call asks for: the local model
    /// decodes under the schema's grammar, an OpenAI-compatible server is
    /// sent `response_format` and a required tool choice, Anthropic a
    /// forced tool. `false` sends every call free (for a server that
    /// rejects those fields); answers are then read by the tolerant parser.
    #[serde(default = "default_structured_output")]
    pub structured_output: bool,
}

fn default_provider_concurrency() -> usize {
    8
}
fn default_provider_timeout() -> u64 {
    120
}
fn default_provider_retries() -> u32 {
    2
}
fn default_structured_output() -> bool {
    true
}

impl ProviderSpec {
    fn validate(&self, name: &str) -> Result<(), ValidationError> {
        let field = |k: &str| format!("providers.{name}.{k}");
        if !(1..=10_000).contains(&self.max_concurrent) {
            return Err(ValidationError::new(
                field("max_concurrent"),
                "must be between 1 and 10000",
            ));
        }
        if !(1..=3_600).contains(&self.timeout_seconds) {
            return Err(ValidationError::new(
                field("timeout_seconds"),
                "must be between 1 and 3600",
            ));
        }
        if self.max_retries > 20 {
            return Err(ValidationError::new(
                field("max_retries"),
                "must be between 0 and 20",
            ));
        }
        if let Some(u) = &self.base_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(ValidationError::new(
                field("base_url"),
                "must start with http:// or https://",
            ));
        }
        if let Some(v) = &self.api_key_env
            && (v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            return Err(ValidationError::new(
                field("api_key_env"),
                "must be an environment variable's name (letters, digits, '_'); \
                 the key itself never goes in the file",
            ));
        }
        if self.api_key_env.is_some() && self.api_key_encrypted.is_some() {
            return Err(ValidationError::new(
                field("api_key_encrypted"),
                "give the key one way: api_key_env or api_key_encrypted",
            ));
        }
        if let Some(v) = &self.api_key_encrypted
            && !v.starts_with("kira-sealed-v1:")
        {
            return Err(ValidationError::new(
                field("api_key_encrypted"),
                "must be a sealed key (kira-sealed-v1:...) from `kira secret encrypt`; \
                 a plain key never goes in the file",
            ));
        }
        if self.kind == ProviderKind::Local
            && (self.base_url.is_some()
                || self.api_key_env.is_some()
                || self.api_key_encrypted.is_some())
        {
            return Err(ValidationError::new(
                field("kind"),
                "a local provider takes no base_url, api_key_env or api_key_encrypted",
            ));
        }
        if self.kind == ProviderKind::Local
            && let Some(model) = &self.model
            && kira_llm::local::LocalModel::named(model).is_none()
        {
            let known: Vec<&str> = kira_llm::local::LOCAL_MODELS
                .iter()
                .map(|m| m.name)
                .collect();
            return Err(ValidationError::new(
                field("model"),
                format!("a local provider runs one of {}", known.join(", ")),
            ));
        }
        Ok(())
    }
}

/// The primary agent: its session and SEED 3.2's spawn rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrimaryConfig {
    /// When the session's summary and turns pass this many tokens, the
    /// older turns are summarised into the summary.
    pub session_max_tokens: i64,
    /// Turns kept verbatim after a compaction.
    pub session_keep_turns: usize,
    /// A task estimated above this many tokens goes to a specialist
    /// whatever its type (SEED 3.2: 50,000).
    pub spawn_above_tokens: i64,
    /// The specialist such a task goes to when its type names none.
    pub large_task_specialist: String,
}

impl Default for PrimaryConfig {
    fn default() -> Self {
        Self {
            session_max_tokens: 2_000,
            session_keep_turns: 6,
            spawn_above_tokens: 50_000,
            large_task_specialist: "research".to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskTypeConfig {
    /// The specialist that runs this type; none: the primary agent answers.
    #[serde(default)]
    pub specialist: Option<String>,
    /// The most output a run of this type may produce, for the estimate.
    #[serde(default = "default_output")]
    pub max_output_tokens: i64,
    /// With a specialist: spawn only when the document (the `document`
    /// parameter, else the task text) is longer than this many characters;
    /// shorter ones the primary answers (SEED 3.2: document_review above
    /// 10,000).
    #[serde(default)]
    pub spawn_above_chars: Option<usize>,
}

fn default_output() -> i64 {
    2_000
}

/// A stand-in for agents, for tests and benchmarks. Every result it makes
/// says it was simulated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedConfig {
    /// Latency of a run, uniformly in [min, max] milliseconds.
    #[serde(default)]
    pub latency_ms_min: u64,
    #[serde(default)]
    pub latency_ms_max: u64,
    /// Tokens a run uses, as a fraction of its reservation, uniformly in [min, max].
    #[serde(default = "default_usage_min")]
    pub usage_min: f64,
    #[serde(default = "default_usage_max")]
    pub usage_max: f64,
    #[serde(default = "default_confidence")]
    pub confidence: f64,
    /// Fraction of runs that fail (retryable), for tests of retries.
    #[serde(default)]
    pub failure_rate: f64,
}

fn default_usage_min() -> f64 {
    0.5
}
fn default_usage_max() -> f64 {
    0.9
}
fn default_confidence() -> f64 {
    0.9
}

impl Default for SimulatedConfig {
    fn default() -> Self {
        Self {
            latency_ms_min: 0,
            latency_ms_max: 0,
            usage_min: default_usage_min(),
            usage_max: default_usage_max(),
            confidence: default_confidence(),
            failure_rate: 0.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ExecutorConfig {
    Simulated(SimulatedConfig),
    /// Tasks are accepted and wait in the queue; nothing runs them.
    None,
    /// Real agents (the default when there is no `[executor]`).
    Agents,
}

impl Default for EngineConfig {
    fn default() -> Self {
        // A specialist is offered its own domain's tools.
        let mut agents: BTreeMap<String, AgentConfig> = SPECIALISTS
            .iter()
            .map(|s| {
                let mut a = AgentConfig::with_slots(2);
                a.tools.push((*s).to_owned());
                ((*s).to_owned(), a)
            })
            .collect();
        agents.insert(PRIMARY.to_owned(), AgentConfig::with_slots(8));
        let t = |specialist: Option<&str>, max_output_tokens| TaskTypeConfig {
            specialist: specialist.map(str::to_owned),
            max_output_tokens,
            spawn_above_chars: None,
        };
        // SEED 3.2's task types and who runs them.
        let task_types = BTreeMap::from([
            ("complex_legal_analysis".to_owned(), t(Some("legal"), 4_000)),
            (
                "document_review".to_owned(),
                TaskTypeConfig {
                    spawn_above_chars: Some(10_000),
                    ..t(Some("legal"), 3_000)
                },
            ),
            ("financial_modeling".to_owned(), t(Some("financial"), 4_000)),
            (
                "new_company_onboarding".to_owned(),
                t(Some("research"), 4_000),
            ),
            ("quick_question_answer".to_owned(), t(None, 1_000)),
            ("routine_status_update".to_owned(), t(None, 1_000)),
        ]);
        Self {
            budget: BudgetConfig::default(),
            priority: PriorityConfig::default(),
            scheduler: SchedulerConfig::default(),
            tasks: TasksConfig::default(),
            agents,
            task_types,
            executor: None,
            prices: BTreeMap::new(),
            memory: crate::memory::MemoryConfig::default(),
            knowledge_domains: DEFAULT_DOMAINS.iter().map(|d| (*d).to_owned()).collect(),
            sharing: SharingRules::default(),
            review: ReviewConfig::default(),
            providers: BTreeMap::new(),
            primary: PrimaryConfig::default(),
            summarizer: SummarizerConfig::default(),
            metrics: crate::metrics::MetricsConfig::default(),
            alerts: crate::alerts::AlertsConfig::default(),
            tools: crate::tools::ToolsConfig::default(),
        }
    }
}

/// The engine sections of `kira.toml`, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineFile {
    #[serde(default)]
    pub budget: BudgetSection,
    #[serde(default)]
    pub priority: PrioritySection,
    #[serde(default)]
    pub scheduler: SchedulerSection,
    #[serde(default)]
    pub tasks: TasksSection,
    #[serde(default)]
    pub agents: BTreeMap<String, AgentConfig>,
    #[serde(default)]
    pub task_types: BTreeMap<String, TaskTypeConfig>,
    #[serde(default)]
    pub executor: Option<ExecutorConfig>,
    #[serde(default)]
    pub prices: BTreeMap<String, PriceSection>,
    #[serde(default)]
    pub knowledge: KnowledgeSection,
    /// Replaces SEED's rules as a whole when present.
    #[serde(default)]
    pub sharing: Option<SharingRules>,
    #[serde(default)]
    pub memory: MemorySection,
    #[serde(default)]
    pub context: ContextSection,
    #[serde(default)]
    pub review: Option<ReviewConfig>,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderSpec>,
    #[serde(default)]
    pub primary: Option<PrimaryConfig>,
    #[serde(default)]
    pub summarizer: Option<SummarizerConfig>,
    #[serde(default)]
    pub metrics: crate::metrics::MetricsSection,
    #[serde(default)]
    pub alerts: crate::alerts::AlertsSection,
    #[serde(default)]
    pub tools: crate::tools::ToolsSection,
}

/// `[memory]`: retention, compaction, search; `[memory.layers]`,
/// `[memory.search]` and `[memory.compaction.WORKSTREAM]` below it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemorySection {
    pub retention_days: Option<i64>,
    pub compaction_interval_hours: Option<i64>,
    /// Candidates each retriever (full text, vectors) hands to fusion.
    pub search_candidates: Option<u32>,
    pub rrf_k: Option<f64>,
    #[serde(default)]
    pub layers: LayersSection,
    #[serde(default)]
    pub search: SearchSection,
    /// Per workstream; a workstream given here replaces SEED's strategy
    /// for it, the others keep theirs.
    #[serde(default)]
    pub compaction: BTreeMap<String, kira_core::memory::CompactionStrategy>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayersSection {
    pub hot_days: Option<i64>,
    pub hot_importance: Option<i16>,
    pub warm_days: Option<i64>,
    pub warm_importance: Option<i16>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchSection {
    pub relevance: Option<f64>,
    pub recency: Option<f64>,
    pub importance: Option<f64>,
    pub recency_half_life_days: Option<f64>,
}

/// `[context]`: how context packs are filled.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextSection {
    pub default_budget: Option<usize>,
    pub max_budget: Option<usize>,
    pub hot_items: Option<u32>,
    pub warm_items: Option<u32>,
    pub cold_hits: Option<u32>,
    pub background_items: Option<u32>,
    pub background_below: Option<f64>,
    pub knowledge_hits: Option<u32>,
    pub shared_hits: Option<u32>,
    pub shared_companies: Option<u32>,
    /// Workstream -> the sharing scope its tasks ask other companies for.
    pub shared_scopes: Option<BTreeMap<String, String>>,
    pub shared_default_scope: Option<String>,
    pub shares: Option<crate::memory::Shares>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnowledgeSection {
    /// Replaces the default domains (SEED 2.2's three) when present.
    pub domains: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSection {
    pub total_tokens: Option<i64>,
    pub base_percent: Option<u8>,
    pub burst_percent: Option<u8>,
    pub emergency_percent: Option<u8>,
    /// Priority levels that may draw from burst.
    pub burst_levels: Option<Vec<Priority>>,
    /// Priority levels that may ask for emergency tokens.
    pub emergency_levels: Option<Vec<Priority>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrioritySection {
    pub deadline_window_minutes: Option<i64>,
    pub max_deadline_pressure: Option<f64>,
    pub aging_points_per_minute: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerSection {
    pub lease_seconds: Option<i64>,
    pub heartbeat_seconds: Option<i64>,
    pub max_attempts: Option<i32>,
    pub retry_backoff_seconds: Option<i64>,
    pub poll_interval_ms: Option<i64>,
    pub per_company_concurrency: Option<u32>,
    pub batch: Option<u32>,
    pub max_starting: Option<u32>,
    pub start_target_ms: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TasksSection {
    pub max_emergency_open_per_company: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceSection {
    pub input_per_million: f64,
    pub output_per_million: f64,
}

impl EngineFile {
    /// The defaults with this file's values over them, validated. Errors
    /// name the key as written in the file (`budget.total_tokens`).
    pub fn resolve(self) -> Result<EngineConfig, ValidationError> {
        let mut c = EngineConfig::default();
        resolve_budget(&mut c.budget, self.budget)?;
        resolve_priority(&mut c.priority, self.priority)?;
        resolve_scheduler(&mut c.scheduler, self.scheduler)?;
        resolve_tasks(&mut c.tasks, self.tasks)?;
        resolve_providers_and_agents(&mut c, self.providers, self.agents)?;
        resolve_primary(&mut c, self.primary, self.summarizer)?;
        resolve_task_types(&mut c, self.task_types)?;
        if let Some(ExecutorConfig::Simulated(s)) = &self.executor {
            check_simulated(s)?;
        }
        c.executor = self.executor;
        for (model, p) in self.prices {
            let price = ModelPrice {
                input_per_million: p.input_per_million,
                output_per_million: p.output_per_million,
            };
            price.validate().map_err(|e| {
                ValidationError::new(format!("prices.{model}.{}", e.field), e.message)
            })?;
            c.prices.insert(model, price);
        }
        if let Some(domains) = self.knowledge.domains {
            c.knowledge_domains = resolve_domains(domains)?;
        }
        if let Some(rules) = self.sharing {
            rules.validate()?;
            c.sharing = rules;
        }
        resolve_memory(&mut c.memory, self.memory, self.context)?;
        if let Some(r) = self.review {
            check_review(&r, &c.task_types)?;
            c.review = r;
        }
        self.metrics.resolve(&mut c.metrics)?;
        self.alerts.resolve(&mut c.alerts)?;
        self.tools.resolve(&mut c.tools)?;
        Ok(c)
    }
}

/// `v` if it lies in `min..=max`, else an error naming `field` and the range.
pub(crate) fn within<T: PartialOrd + std::fmt::Display + Copy>(
    field: &str,
    v: T,
    min: T,
    max: T,
) -> Result<T, ValidationError> {
    if (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(ValidationError::new(
            field,
            format!("must be between {min} and {max}"),
        ))
    }
}

/// `[budget]`.
fn resolve_budget(budget: &mut BudgetConfig, b: BudgetSection) -> Result<(), ValidationError> {
    if let Some(v) = b.total_tokens {
        budget.total_tokens = v;
    }
    if let Some(v) = b.base_percent {
        budget.base_percent = v;
    }
    if let Some(v) = b.burst_percent {
        budget.burst_percent = v;
    }
    if let Some(v) = b.emergency_percent {
        budget.emergency_percent = v;
    }
    if let Some(v) = b.burst_levels {
        budget.burst_levels = v.into_iter().collect::<BTreeSet<_>>();
    }
    if let Some(v) = b.emergency_levels {
        budget.emergency_levels = v.into_iter().collect::<BTreeSet<_>>();
    }
    budget.validate()
}

/// `[priority]`.
fn resolve_priority(
    priority: &mut PriorityConfig,
    p: PrioritySection,
) -> Result<(), ValidationError> {
    if let Some(v) = p.deadline_window_minutes {
        priority.deadline_window = TimeDelta::try_minutes(v).ok_or_else(|| {
            ValidationError::new("priority.deadline_window_minutes", "is out of range")
        })?;
    }
    if let Some(v) = p.max_deadline_pressure {
        priority.max_deadline_pressure = v;
    }
    if let Some(v) = p.aging_points_per_minute {
        priority.aging_points_per_minute = v;
    }
    priority.validate()
}

/// `[scheduler]`.
fn resolve_scheduler(sc: &mut SchedulerConfig, s: SchedulerSection) -> Result<(), ValidationError> {
    let secs = |field: &str, v: Option<i64>, min: i64, max: i64| {
        v.map(|v| within(field, v, min, max).map(TimeDelta::seconds))
            .transpose()
    };
    if let Some(v) = secs("scheduler.lease_seconds", s.lease_seconds, 2, 86_400)? {
        sc.lease = v;
    }
    if let Some(v) = secs("scheduler.heartbeat_seconds", s.heartbeat_seconds, 1, 3_600)? {
        sc.heartbeat = v;
    }
    if sc.heartbeat * 2 > sc.lease {
        return Err(ValidationError::new(
            "scheduler.heartbeat_seconds",
            "must be at most half of scheduler.lease_seconds, or leases lapse between heartbeats",
        ));
    }
    if let Some(v) = s.max_attempts {
        sc.max_attempts = within("scheduler.max_attempts", v, 1, 100)?;
    }
    if let Some(v) = secs(
        "scheduler.retry_backoff_seconds",
        s.retry_backoff_seconds,
        0,
        86_400,
    )? {
        sc.retry_backoff = v;
    }
    if let Some(v) = s.poll_interval_ms {
        let v = within("scheduler.poll_interval_ms", v, 10, 60_000)?;
        sc.poll_interval = TimeDelta::milliseconds(v);
    }
    if let Some(v) = s.per_company_concurrency {
        sc.per_company_concurrency = within("scheduler.per_company_concurrency", v, 1, 10_000)?;
    }
    if let Some(v) = s.batch {
        sc.batch = within("scheduler.batch", v, 1, 100_000)?;
    }
    if let Some(v) = s.max_starting {
        sc.max_starting = within("scheduler.max_starting", v, 1, 10_000)?;
    }
    if let Some(v) = s.start_target_ms {
        let v = within("scheduler.start_target_ms", v, 0, 10_000)?;
        sc.start_target = TimeDelta::milliseconds(v);
    }
    Ok(())
}

/// `[tasks]`.
fn resolve_tasks(tasks: &mut TasksConfig, t: TasksSection) -> Result<(), ValidationError> {
    if let Some(v) = t.max_emergency_open_per_company {
        tasks.max_emergency_open_per_company =
            within("tasks.max_emergency_open_per_company", v, 0, 10_000)?;
    }
    Ok(())
}

/// `[providers.NAME]` and `[agents.NAME]`: an agent names only a
/// configured provider.
fn resolve_providers_and_agents(
    c: &mut EngineConfig,
    providers: BTreeMap<String, ProviderSpec>,
    agents: BTreeMap<String, AgentConfig>,
) -> Result<(), ValidationError> {
    for (name, p) in providers {
        check_task_type(&name)
            .map_err(|e| ValidationError::new(format!("providers.{name}"), e.message))?;
        p.validate(&name)?;
        c.providers.insert(name, p);
    }
    for (name, a) in agents {
        check_task_type(&name)
            .map_err(|e| ValidationError::new(format!("agents.{name}"), e.message))?;
        a.validate(&name)?;
        if let Some(p) = &a.provider
            && !c.providers.contains_key(p)
        {
            return Err(ValidationError::new(
                format!("agents.{name}.provider"),
                format!("names no [providers.{p}] section"),
            ));
        }
        c.agents.insert(name, a);
    }
    Ok(())
}

/// `[primary]` and `[summarizer]`, over the agents already resolved: the
/// summariser and the large-task specialist must be configured agents.
fn resolve_primary(
    c: &mut EngineConfig,
    primary: Option<PrimaryConfig>,
    summarizer: Option<SummarizerConfig>,
) -> Result<(), ValidationError> {
    if let Some(p) = primary {
        within(
            "primary.session_max_tokens",
            p.session_max_tokens,
            100,
            1_000_000,
        )?;
        if p.session_keep_turns > 1_000 {
            return Err(ValidationError::new(
                "primary.session_keep_turns",
                "must be at most 1000",
            ));
        }
        if p.spawn_above_tokens < 1 {
            return Err(ValidationError::new(
                "primary.spawn_above_tokens",
                "must be at least 1",
            ));
        }
        c.primary = p;
    }
    if let Some(sm) = summarizer {
        if !c.agents.contains_key(&sm.agent) {
            return Err(ValidationError::new(
                "summarizer.agent",
                format!("names no configured agent: {}", sm.agent),
            ));
        }
        within("summarizer.max_tokens", sm.max_tokens, 16, 100_000)?;
        c.summarizer = sm;
    }
    if c.primary.large_task_specialist == PRIMARY
        || !c.agents.contains_key(&c.primary.large_task_specialist)
    {
        return Err(ValidationError::new(
            "primary.large_task_specialist",
            format!(
                "names no configured specialist: {}",
                c.primary.large_task_specialist
            ),
        ));
    }
    Ok(())
}

/// `[task_types.NAME]`, added to the built-in ones; each names only a
/// configured specialist.
fn resolve_task_types(
    c: &mut EngineConfig,
    task_types: BTreeMap<String, TaskTypeConfig>,
) -> Result<(), ValidationError> {
    for (name, t) in task_types {
        check_task_type(&name)
            .map_err(|e| ValidationError::new(format!("task_types.{name}"), e.message))?;
        c.task_types.insert(name, t);
    }
    for (name, t) in &c.task_types {
        if let Some(s) = &t.specialist
            && !c.agents.contains_key(s)
        {
            return Err(ValidationError::new(
                format!("task_types.{name}.specialist"),
                format!("names no configured agent: {s}"),
            ));
        }
        within(
            &format!("task_types.{name}.max_output_tokens"),
            t.max_output_tokens,
            1,
            10_000_000,
        )?;
    }
    Ok(())
}

/// `[executor] kind = "simulated"`: its ranges and shares.
fn check_simulated(s: &SimulatedConfig) -> Result<(), ValidationError> {
    let unit = |v: f64| (0.0..=1.0).contains(&v);
    if s.latency_ms_min > s.latency_ms_max {
        return Err(ValidationError::new(
            "executor.latency_ms_min",
            "must not exceed executor.latency_ms_max",
        ));
    }
    if !unit(s.usage_min) || !unit(s.usage_max) || s.usage_min > s.usage_max {
        return Err(ValidationError::new(
            "executor.usage_min",
            "usage_min <= usage_max, both in [0, 1]",
        ));
    }
    if !unit(s.confidence) {
        return Err(ValidationError::new(
            "executor.confidence",
            "must be between 0 and 1",
        ));
    }
    if !unit(s.failure_rate) {
        return Err(ValidationError::new(
            "executor.failure_rate",
            "must be between 0 and 1",
        ));
    }
    Ok(())
}

/// `[knowledge] domains`: at least one, each a valid domain name.
fn resolve_domains(domains: Vec<String>) -> Result<BTreeSet<String>, ValidationError> {
    if domains.is_empty() {
        return Err(ValidationError::new(
            "knowledge.domains",
            "must name at least one domain",
        ));
    }
    for (i, d) in domains.iter().enumerate() {
        check_domain(d)
            .map_err(|e| ValidationError::new(format!("knowledge.domains.{i}"), e.message))?;
    }
    Ok(domains.into_iter().collect())
}

/// `[review]`: `always` names only configured task types.
fn check_review(
    r: &ReviewConfig,
    task_types: &BTreeMap<String, TaskTypeConfig>,
) -> Result<(), ValidationError> {
    if !(r.confidence_threshold.is_finite() && (0.0..=1.0).contains(&r.confidence_threshold)) {
        return Err(ValidationError::new(
            "review.confidence_threshold",
            "must be between 0 and 1",
        ));
    }
    for t in &r.always {
        if !task_types.contains_key(t) {
            return Err(ValidationError::new(
                "review.always",
                format!("names no configured task type: {t}"),
            ));
        }
    }
    if r.max_requeues > 100 {
        return Err(ValidationError::new(
            "review.max_requeues",
            "must be between 0 and 100",
        ));
    }
    Ok(())
}

/// `[memory]` (with its layers, search weights and compaction strategies)
/// and `[context]`.
fn resolve_memory(
    m: &mut crate::memory::MemoryConfig,
    f: MemorySection,
    ctx: ContextSection,
) -> Result<(), ValidationError> {
    if let Some(v) = f.retention_days {
        m.retention = TimeDelta::days(within("memory.retention_days", v, 0, 36_500)?);
    }
    if let Some(v) = f.compaction_interval_hours {
        m.compaction_interval =
            TimeDelta::hours(within("memory.compaction_interval_hours", v, 1, 24 * 365)?);
    }
    if let Some(v) = f.search_candidates {
        m.candidates = u32::try_from(within("memory.search_candidates", i64::from(v), 1, 10_000)?)
            .unwrap_or(100);
    }
    if let Some(v) = f.rrf_k {
        if !(v.is_finite() && (0.0..=10_000.0).contains(&v)) {
            return Err(ValidationError::new(
                "memory.rrf_k",
                "must be between 0 and 10000",
            ));
        }
        m.rrf_k = v;
    }
    let l = f.layers;
    let layers = &mut m.layers;
    if let Some(v) = l.hot_days {
        layers.hot_days = v;
    }
    if let Some(v) = l.hot_importance {
        layers.hot_importance = v;
    }
    if let Some(v) = l.warm_days {
        layers.warm_days = v;
    }
    if let Some(v) = l.warm_importance {
        layers.warm_importance = v;
    }
    layers.validate().map_err(|e| {
        ValidationError::new(
            format!("memory.layers.{}", e.field.trim_start_matches("context.")),
            e.message,
        )
    })?;
    let s = f.search;
    let search = &mut m.search;
    if let Some(v) = s.relevance {
        search.relevance = v;
    }
    if let Some(v) = s.recency {
        search.recency = v;
    }
    if let Some(v) = s.importance {
        search.importance = v;
    }
    if let Some(v) = s.recency_half_life_days {
        search.recency_half_life_days = v;
    }
    search
        .validate()
        .map_err(|e| ValidationError::new(format!("memory.{}", e.field), e.message))?;
    for (workstream, strategy) in f.compaction {
        m.compaction.strategies.insert(workstream, strategy);
    }
    m.compaction.validate().map_err(|e| {
        ValidationError::new(
            e.field
                .replacen("compaction.strategies", "memory.compaction", 1),
            e.message,
        )
    })?;

    resolve_context(&mut m.context, ctx)
}

/// `[context]`: budgets, how many items each section may read, and the
/// sharing scopes a pack asks for.
fn resolve_context(
    c: &mut crate::memory::ContextConfig,
    ctx: ContextSection,
) -> Result<(), ValidationError> {
    if let Some(v) = ctx.default_budget {
        c.default_budget = v;
    }
    if let Some(v) = ctx.max_budget {
        c.max_budget = v;
    }
    if c.max_budget == 0 || c.max_budget > 1_000_000 {
        return Err(ValidationError::new(
            "context.max_budget",
            "must be between 1 and 1000000",
        ));
    }
    if c.default_budget == 0 || c.default_budget > c.max_budget {
        return Err(ValidationError::new(
            "context.default_budget",
            "must be between 1 and context.max_budget",
        ));
    }
    for (field, v, slot) in [
        ("context.hot_items", ctx.hot_items, &mut c.hot_items),
        ("context.warm_items", ctx.warm_items, &mut c.warm_items),
        ("context.cold_hits", ctx.cold_hits, &mut c.cold_hits),
        (
            "context.background_items",
            ctx.background_items,
            &mut c.background_items,
        ),
        (
            "context.knowledge_hits",
            ctx.knowledge_hits,
            &mut c.knowledge_hits,
        ),
        ("context.shared_hits", ctx.shared_hits, &mut c.shared_hits),
        (
            "context.shared_companies",
            ctx.shared_companies,
            &mut c.shared_companies,
        ),
    ] {
        if let Some(v) = v {
            *slot = u32::try_from(within(field, i64::from(v), 0, 10_000)?).unwrap_or(0);
        }
    }
    let scope_name = |field: &str, v: &str| {
        if v.is_empty()
            || !v
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            Err(ValidationError::new(
                field,
                "must be a sharing scope's name (lowercase letters, digits, '_')",
            ))
        } else {
            Ok(v.to_owned())
        }
    };
    if let Some(scopes) = ctx.shared_scopes {
        let mut out = BTreeMap::new();
        for (w, scope) in scopes {
            let field = format!("context.shared_scopes.{w}");
            let ws = Workstream::parse(&w)
                .map_err(|_| ValidationError::new(field.clone(), "is not a workstream"))?;
            out.insert(ws, scope_name(&field, &scope)?);
        }
        c.shared_scopes = out;
    }
    if let Some(v) = ctx.shared_default_scope {
        c.shared_default_scope = scope_name("context.shared_default_scope", &v)?;
    }
    if let Some(shares) = ctx.shares {
        shares.validate()?;
        c.shares = shares;
    }
    if let Some(v) = ctx.background_below {
        if !(0.0..=1.0).contains(&v) {
            return Err(ValidationError::new(
                "context.background_below",
                "must be between 0 and 1",
            ));
        }
        c.background_below = v;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(toml_text: &str) -> Result<EngineConfig, ValidationError> {
        let f: EngineFile = serde_json::from_value(toml_like(toml_text)).expect("parse");
        f.resolve()
    }

    /// Tests write sections as JSON objects to keep this crate free of a TOML parser.
    fn toml_like(json: &str) -> serde_json::Value {
        serde_json::from_str(json).expect("json")
    }

    #[test]
    fn alerts_section_changes_adds_and_removes_rules() {
        let c = resolve("{}").expect("valid");
        // SEED's alerts by default, with the security and provider rules.
        assert_eq!(c.alerts.rules.len(), 17);
        let c = resolve(
            r#"{"alerts": {
                "evaluate_interval_seconds": 15,
                "repeat_interval_minutes": 60,
                "teams": {"operator": {"channels": [
                    {"kind": "webhook", "url": "https://hooks.example.com/x", "format": "slack"},
                    {"kind": "log"}]}},
                "rules": {
                    "sla_violation": {"for_seconds": 60},
                    "review_backlog": {"enabled": false},
                    "big_backlog": {"severity": "critical",
                        "condition": {"type": "review_backlog", "above": 100}}
                }}}"#,
        )
        .expect("valid");
        let a = &c.alerts;
        assert_eq!(a.evaluate_interval, TimeDelta::seconds(15));
        assert_eq!(a.repeat_interval, TimeDelta::minutes(60));
        assert_eq!(a.teams["operator"].len(), 2);
        let sla = a
            .rules
            .iter()
            .find(|r| r.name == "sla_violation")
            .expect("sla");
        assert_eq!(sla.for_duration, TimeDelta::seconds(60));
        assert!(a.rules.iter().all(|r| r.name != "review_backlog"));
        assert!(a.rules.iter().any(|r| r.name == "big_backlog"));
        for (bad, field) in [
            (
                r#"{"alerts": {"rules": {"new_one": {"for_seconds": 5}}}}"#,
                "alerts.rules.new_one.condition",
            ),
            (
                r#"{"alerts": {"rules": {"pool_low": {"condition": {"type": "pool_remaining", "below": 2.0}}}}}"#,
                "alerts.rules.pool_low.below",
            ),
            (
                r#"{"alerts": {"teams": {"ops": {"channels": [{"kind": "webhook", "url": "ftp://x"}]}}}}"#,
                "alerts.teams.ops.channels.0.url",
            ),
            (
                r#"{"alerts": {"evaluate_interval_seconds": 0}}"#,
                "alerts.evaluate_interval_seconds",
            ),
        ] {
            assert_eq!(resolve(bad).expect_err(bad).field, field);
        }
    }

    #[test]
    fn defaults_are_seeds() {
        let c = resolve("{}").expect("valid");
        assert_eq!(c.budget.total_tokens, 2_000_000);
        assert_eq!(
            c.task_types["complex_legal_analysis"].specialist.as_deref(),
            Some("legal")
        );
        assert!(c.agents.contains_key(PRIMARY));
        assert!(c.executor.is_none(), "nothing runs tasks unless configured");
        assert!(c.scheduler.max_starting >= 2, "twice the cores, at least 2");
        assert_eq!(
            c.knowledge_domains.iter().collect::<Vec<_>>(),
            [
                "business_patterns",
                "industry_standards",
                "legal_frameworks"
            ]
        );
        assert_eq!(c.sharing, SharingRules::default());
        assert_eq!(c.memory, crate::memory::MemoryConfig::default());
    }

    #[test]
    fn knowledge_domains_and_sharing_rules_are_configurable() {
        let c = resolve(
            r#"{"knowledge": {"domains": ["playbooks"]},
                "sharing": {"rules": [{"name": "peers", "condition": "same_jurisdiction",
                                       "result": {"allow": {"scope": "playbooks"}}}]}}"#,
        )
        .expect("valid");
        assert_eq!(
            c.knowledge_domains.iter().collect::<Vec<_>>(),
            ["playbooks"]
        );
        assert_eq!(c.sharing.rules.len(), 1);
        for (json, field) in [
            (r#"{"knowledge": {"domains": []}}"#, "knowledge.domains"),
            (
                r#"{"knowledge": {"domains": ["ok", "Not Ok"]}}"#,
                "knowledge.domains.1",
            ),
            (
                r#"{"sharing": {"rules": [{"name": "x", "condition": {"all": []}, "result": "flag_for_human_review"}]}}"#,
                "sharing.rules.0.condition.all",
            ),
        ] {
            assert_eq!(resolve(json).expect_err(json).field, field);
        }
    }

    #[test]
    fn each_bad_value_is_named() {
        for (json, field) in [
            (r#"{"budget": {"base_percent": 70}}"#, "budget.base_percent"),
            (
                r#"{"providers": {"x": {"kind": "openai", "api_key_encrypted": "sk-plain"}}}"#,
                "providers.x.api_key_encrypted",
            ),
            (
                r#"{"providers": {"x": {"kind": "openai", "api_key_env": "K", "api_key_encrypted": "kira-sealed-v1:00"}}}"#,
                "providers.x.api_key_encrypted",
            ),
            (
                r#"{"providers": {"x": {"kind": "local", "model": "llama3.1:8b"}}}"#,
                "providers.x.model",
            ),
            (r#"{"budget": {"total_tokens": 0}}"#, "budget.total_tokens"),
            (
                r#"{"scheduler": {"lease_seconds": 10, "heartbeat_seconds": 6}}"#,
                "scheduler.heartbeat_seconds",
            ),
            (
                r#"{"scheduler": {"max_attempts": 0}}"#,
                "scheduler.max_attempts",
            ),
            (
                r#"{"scheduler": {"max_starting": 0}}"#,
                "scheduler.max_starting",
            ),
            (
                r#"{"scheduler": {"start_target_ms": -1}}"#,
                "scheduler.start_target_ms",
            ),
            (
                r#"{"agents": {"legal": {"max_concurrent": 0}}}"#,
                "agents.legal.max_concurrent",
            ),
            (
                r#"{"task_types": {"audit": {"specialist": "nobody"}}}"#,
                "task_types.audit.specialist",
            ),
            (
                r#"{"executor": {"kind": "simulated", "confidence": 2}}"#,
                "executor.confidence",
            ),
            (
                r#"{"memory": {"layers": {"hot_days": -1}}}"#,
                "memory.layers.hot_days",
            ),
            (
                r#"{"memory": {"search": {"recency": -1}}}"#,
                "memory.search.recency",
            ),
            (
                r#"{"memory": {"compaction": {"legal": {"preserve": ["a"], "discard": ["a"]}}}}"#,
                "memory.compaction.legal.discard.0",
            ),
            (
                r#"{"memory": {"compaction": {"lega": {"preserve": ["a"]}}}}"#,
                "memory.compaction.lega",
            ),
            (
                r#"{"memory": {"retention_days": -3}}"#,
                "memory.retention_days",
            ),
            (
                r#"{"context": {"default_budget": 0}}"#,
                "context.default_budget",
            ),
            (
                r#"{"context": {"shares": {"hot": 2, "warm": 0, "cold": 0, "knowledge": 0, "shared": 0}}}"#,
                "context.shares.hot",
            ),
        ] {
            assert_eq!(resolve(json).expect_err(json).field, field, "{json}");
        }
    }

    #[test]
    fn sections_override_defaults() {
        let c = resolve(
            r#"{"budget": {"total_tokens": 1000, "burst_levels": ["emergency"]},
                "agents": {"legal": {"max_concurrent": 7}},
                "task_types": {"tax_filing": {"specialist": "financial"}},
                "executor": {"kind": "simulated", "latency_ms_max": 5},
                "scheduler": {"max_starting": 3, "start_target_ms": 0}}"#,
        )
        .expect("valid");
        assert_eq!(c.scheduler.max_starting, 3);
        assert_eq!(c.scheduler.start_target, TimeDelta::zero());
        assert_eq!(c.budget.total_tokens, 1000);
        assert_eq!(c.budget.burst_levels.len(), 1);
        assert_eq!(c.agents["legal"].max_concurrent, 7);
        assert_eq!(c.task_types["tax_filing"].max_output_tokens, 2_000);
        assert!(matches!(c.executor, Some(ExecutorConfig::Simulated(_))));

        let c = resolve(
            r#"{"memory": {"retention_days": 90, "layers": {"hot_days": 3},
                           "search": {"recency": 0.5},
                           "compaction": {"legal": {"preserve": ["everything"]}}},
                "context": {"cold_hits": 12, "default_budget": 2000,
                            "background_items": 5, "background_below": 0.25}}"#,
        )
        .expect("valid");
        assert_eq!(c.memory.context.background_items, 5);
        assert_eq!(c.memory.context.background_below, 0.25);
        let e = resolve(r#"{"context": {"background_below": 1.5}}"#).expect_err("out of range");
        assert_eq!(e.field, "context.background_below");
        assert_eq!(c.memory.retention, TimeDelta::days(90));
        assert_eq!(c.memory.layers.hot_days, 3);
        assert_eq!(
            c.memory.layers.warm_days, 30,
            "the rest keep their defaults"
        );
        assert_eq!(c.memory.search.recency, 0.5);
        assert_eq!(
            c.memory.compaction.strategies["legal"].preserve,
            vec!["everything".to_owned()]
        );
        assert!(c.memory.compaction.strategies.contains_key("financial"));
        assert_eq!(c.memory.context.cold_hits, 12);
        assert_eq!(c.memory.context.default_budget, 2000);
        let c = resolve(
            r#"{"context": {"knowledge_hits": 3, "shared_hits": 0, "shared_companies": 50,
                "shared_scopes": {"financial": "process_templates"},
                "shared_default_scope": "industry_benchmarks"}}"#,
        )
        .expect("valid");
        let ctx = &c.memory.context;
        assert_eq!(
            (ctx.knowledge_hits, ctx.shared_hits, ctx.shared_companies),
            (3, 0, 50)
        );
        assert_eq!(
            ctx.shared_scopes
                .get(&Workstream::Financial)
                .map(String::as_str),
            Some("process_templates")
        );
        assert_eq!(ctx.shared_default_scope, "industry_benchmarks");
        for (json, field) in [
            (
                r#"{"context": {"shared_hits": 10001}}"#,
                "context.shared_hits",
            ),
            (
                r#"{"context": {"shared_scopes": {"sales": "x"}}}"#,
                "context.shared_scopes.sales",
            ),
            (
                r#"{"context": {"shared_default_scope": "Not Ok"}}"#,
                "context.shared_default_scope",
            ),
        ] {
            assert_eq!(resolve(json).expect_err(json).field, field);
        }
    }
}
