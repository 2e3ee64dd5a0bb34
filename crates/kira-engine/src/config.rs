//! The engine's configuration: budgets, priority, the scheduler, agents and
//! their limits, task types, the executor and model prices. Read from the
//! `[budget]`, `[priority]`, `[scheduler]`, `[agents.NAME]`,
//! `[task_types.NAME]`, `[executor]`, `[prices.MODEL]`, `[knowledge]` and
//! `[sharing]` sections of `kira.toml`; every default is SEED's.

use std::collections::{BTreeMap, BTreeSet};

use chrono::TimeDelta;
use kira_core::ValidationError;
use kira_core::budget::{BudgetConfig, ModelPrice};
use kira_core::knowledge::{DEFAULT_DOMAINS, check_domain};
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
    /// Every agent that can run tasks, with its limits.
    pub agents: BTreeMap<String, AgentConfig>,
    pub task_types: BTreeMap<String, TaskTypeConfig>,
    /// None: tasks wait in the queue; nothing pretends to run them.
    pub executor: Option<ExecutorConfig>,
    pub prices: BTreeMap<String, ModelPrice>,
    pub memory: crate::memory::MemoryConfig,
    /// The shared knowledge base's domains (`[knowledge] domains`).
    pub knowledge_domains: BTreeSet<String>,
    /// Cross-company access rules (`[sharing]`), SEED 2.3's by default.
    pub sharing: SharingRules,
    /// When a result waits for a human (`[review]`).
    pub review: ReviewConfig,
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
    /// Candidates read per scheduling pass.
    pub batch: u32,
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
            batch: 512,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub max_concurrent: u32,
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
}

impl Default for EngineConfig {
    fn default() -> Self {
        let mut agents: BTreeMap<String, AgentConfig> = SPECIALISTS
            .iter()
            .map(|s| ((*s).to_owned(), AgentConfig { max_concurrent: 2 }))
            .collect();
        agents.insert(PRIMARY.to_owned(), AgentConfig { max_concurrent: 8 });
        let t = |specialist: Option<&str>, max_output_tokens| TaskTypeConfig {
            specialist: specialist.map(str::to_owned),
            max_output_tokens,
        };
        // SEED 3.2's task types and who runs them.
        let task_types = BTreeMap::from([
            ("complex_legal_analysis".to_owned(), t(Some("legal"), 4_000)),
            ("document_review".to_owned(), t(Some("legal"), 3_000)),
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
            agents,
            task_types,
            executor: None,
            prices: BTreeMap::new(),
            memory: crate::memory::MemoryConfig::default(),
            knowledge_domains: DEFAULT_DOMAINS.iter().map(|d| (*d).to_owned()).collect(),
            sharing: SharingRules::default(),
            review: ReviewConfig::default(),
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
        let b = self.budget;
        let budget = &mut c.budget;
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
        c.budget.validate()?;

        let p = self.priority;
        if let Some(v) = p.deadline_window_minutes {
            c.priority.deadline_window = TimeDelta::try_minutes(v).ok_or_else(|| {
                ValidationError::new("priority.deadline_window_minutes", "is out of range")
            })?;
        }
        if let Some(v) = p.max_deadline_pressure {
            c.priority.max_deadline_pressure = v;
        }
        if let Some(v) = p.aging_points_per_minute {
            c.priority.aging_points_per_minute = v;
        }
        c.priority.validate()?;

        let s = self.scheduler;
        let secs = |field: &str,
                    v: Option<i64>,
                    min: i64,
                    max: i64|
         -> Result<Option<TimeDelta>, ValidationError> {
            v.map(|v| {
                if (min..=max).contains(&v) {
                    Ok(TimeDelta::seconds(v))
                } else {
                    Err(ValidationError::new(
                        field,
                        format!("must be between {min} and {max}"),
                    ))
                }
            })
            .transpose()
        };
        let sc = &mut c.scheduler;
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
            if !(1..=100).contains(&v) {
                return Err(ValidationError::new(
                    "scheduler.max_attempts",
                    "must be between 1 and 100",
                ));
            }
            sc.max_attempts = v;
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
            if !(10..=60_000).contains(&v) {
                return Err(ValidationError::new(
                    "scheduler.poll_interval_ms",
                    "must be between 10 and 60000",
                ));
            }
            sc.poll_interval = TimeDelta::milliseconds(v);
        }
        if let Some(v) = s.per_company_concurrency {
            if !(1..=10_000).contains(&v) {
                return Err(ValidationError::new(
                    "scheduler.per_company_concurrency",
                    "must be between 1 and 10000",
                ));
            }
            sc.per_company_concurrency = v;
        }
        if let Some(v) = s.batch {
            if !(1..=100_000).contains(&v) {
                return Err(ValidationError::new(
                    "scheduler.batch",
                    "must be between 1 and 100000",
                ));
            }
            sc.batch = v;
        }

        for (name, a) in self.agents {
            check_task_type(&name)
                .map_err(|e| ValidationError::new(format!("agents.{name}"), e.message))?;
            if !(1..=10_000).contains(&a.max_concurrent) {
                return Err(ValidationError::new(
                    format!("agents.{name}.max_concurrent"),
                    "must be between 1 and 10000",
                ));
            }
            c.agents.insert(name, a);
        }
        for (name, t) in self.task_types {
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
            if !(1..=10_000_000).contains(&t.max_output_tokens) {
                return Err(ValidationError::new(
                    format!("task_types.{name}.max_output_tokens"),
                    "must be between 1 and 10000000",
                ));
            }
        }
        if let Some(ExecutorConfig::Simulated(s)) = &self.executor {
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
            if domains.is_empty() {
                return Err(ValidationError::new(
                    "knowledge.domains",
                    "must name at least one domain",
                ));
            }
            for (i, d) in domains.iter().enumerate() {
                check_domain(d).map_err(|e| {
                    ValidationError::new(format!("knowledge.domains.{i}"), e.message)
                })?;
            }
            c.knowledge_domains = domains.into_iter().collect();
        }
        if let Some(rules) = self.sharing {
            rules.validate()?;
            c.sharing = rules;
        }
        resolve_memory(&mut c.memory, self.memory, self.context)?;
        if let Some(r) = self.review {
            if !(r.confidence_threshold.is_finite()
                && (0.0..=1.0).contains(&r.confidence_threshold))
            {
                return Err(ValidationError::new(
                    "review.confidence_threshold",
                    "must be between 0 and 1",
                ));
            }
            for t in &r.always {
                if !c.task_types.contains_key(t) {
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
            c.review = r;
        }
        Ok(c)
    }
}

fn resolve_memory(
    m: &mut crate::memory::MemoryConfig,
    f: MemorySection,
    ctx: ContextSection,
) -> Result<(), ValidationError> {
    let range = |field: &str, v: i64, min: i64, max: i64| {
        if (min..=max).contains(&v) {
            Ok(v)
        } else {
            Err(ValidationError::new(
                field,
                format!("must be between {min} and {max}"),
            ))
        }
    };
    if let Some(v) = f.retention_days {
        m.retention = TimeDelta::days(range("memory.retention_days", v, 0, 36_500)?);
    }
    if let Some(v) = f.compaction_interval_hours {
        m.compaction_interval =
            TimeDelta::hours(range("memory.compaction_interval_hours", v, 1, 24 * 365)?);
    }
    if let Some(v) = f.search_candidates {
        m.candidates = u32::try_from(range("memory.search_candidates", i64::from(v), 1, 10_000)?)
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

    let c = &mut m.context;
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
    ] {
        if let Some(v) = v {
            *slot = u32::try_from(range(field, i64::from(v), 0, 10_000)?).unwrap_or(0);
        }
    }
    if let Some(shares) = ctx.shares {
        shares.validate()?;
        c.shares = shares;
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
    fn defaults_are_seeds() {
        let c = resolve("{}").expect("valid");
        assert_eq!(c.budget.total_tokens, 2_000_000);
        assert_eq!(
            c.task_types["complex_legal_analysis"].specialist.as_deref(),
            Some("legal")
        );
        assert!(c.agents.contains_key(PRIMARY));
        assert!(c.executor.is_none(), "nothing runs tasks unless configured");
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
                "executor": {"kind": "simulated", "latency_ms_max": 5}}"#,
        )
        .expect("valid");
        assert_eq!(c.budget.total_tokens, 1000);
        assert_eq!(c.budget.burst_levels.len(), 1);
        assert_eq!(c.agents["legal"].max_concurrent, 7);
        assert_eq!(c.task_types["tax_filing"].max_output_tokens, 2_000);
        assert!(matches!(c.executor, Some(ExecutorConfig::Simulated(_))));

        let c = resolve(
            r#"{"memory": {"retention_days": 90, "layers": {"hot_days": 3},
                           "search": {"recency": 0.5},
                           "compaction": {"legal": {"preserve": ["everything"]}}},
                "context": {"cold_hits": 12, "default_budget": 2000}}"#,
        )
        .expect("valid");
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
    }
}
