//! Agents: the executor that runs a claimed task through a model. A run is
//! SEED's loop: the context pack first, then model, tool calls, model,
//! until the agent submits a result or hits a limit (steps, tokens, wall
//! time). Each call reserves its tokens before (the prompt counted with
//! cl100k plus the output it may write) and is settled with the provider's
//! usage after. Every step is recorded (`kira task trace`), the result is
//! judged by the review policy, and the primary agent's session with the
//! company takes the task and its outcome as a turn.
//!
//! Architecture invariant: a run touches company data only through
//! `run.scope()`, the task's company; tools take no company and every
//! call goes through the company wrapper (see [`crate::tools`]), whose
//! results come back fenced as data; and a specialist's prompt is built
//! from this task's company alone, so one company's data cannot reach
//! another company's prompts.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use kira_core::task::Task;
use kira_llm::{
    ChatRequest, ChatResponse, Message, Output, Provider, Resilient, RetryPolicy, Sleeper,
    ToolCall, ToolSpec,
};
use kira_store::agents::{Step, StepKind};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::config::{AgentConfig, EngineConfig, PRIMARY};
use crate::executor::{ExecOutcome, Executor, Run, RunError};
use crate::memory::ContextRequest;
use crate::memory::pack::count_tokens;
use result::FinalResult;

pub mod calibrate;
pub mod prompts;
pub mod result;
pub mod session;
pub mod summarize;

/// Output tokens per call and context budget on the local model, whose
/// window is small and which is slow on a CPU.
const LOCAL_OUTPUT: u32 = 200;
const LOCAL_CONTEXT: usize = 600;
const REMOTE_OUTPUT: u32 = 1_024;
const REMOTE_CONTEXT: usize = 4_000;
/// Model calls per run when the agent sets none: the local model answers
/// from its context pack in one call held to the result (see
/// `AgentConfig::max_steps`); a remote one may search and call tools.
const LOCAL_STEPS: u32 = 1;
const REMOTE_STEPS: u32 = 6;
/// Characters of a tool result kept in a trace.
const TRACE_CHARS: usize = 2_000;

/// The agent loop's own tool: the run's answer, never a wrapper call.
pub const SUBMIT_RESULT: &str = "submit_result";

fn submit_spec() -> ToolSpec {
    ToolSpec {
        name: SUBMIT_RESULT.into(),
        description: "Submit the final result of the task. Call it once, at the end.".into(),
        parameters: result::schema(),
    }
}

/// What a run is offered, computed at its start from the registry and the
/// company's configuration: the wrapper's offer, the specs the model is
/// given (the offer's and `submit_result`), and the tokens of the system
/// prompt with those specs.
struct RunTools {
    offer: crate::tools::Offer,
    specs: Vec<ToolSpec>,
    fixed_tokens: i64,
}

/// A provider as configured: the client, its default model, whether it is
/// the local model, and how hard to retry it. Every agent on it shares its
/// concurrency limit.
#[derive(Clone)]
pub struct ProviderHandle {
    pub name: String,
    pub provider: Arc<dyn Provider>,
    pub default_model: String,
    pub local: bool,
    pub policy: RetryPolicy,
    /// Calls ask for the output format the loop needs (a tool call, the
    /// result's schema); false: every call goes free (see
    /// `ProviderSpec::structured_output`).
    pub structured_output: bool,
    permits: Arc<Semaphore>,
    sleeper: Option<Arc<dyn Sleeper>>,
}

impl ProviderHandle {
    pub fn new(
        name: impl Into<String>,
        provider: Arc<dyn Provider>,
        default_model: impl Into<String>,
        local: bool,
        policy: RetryPolicy,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(policy.max_concurrent.max(1)));
        Self {
            name: name.into(),
            provider,
            default_model: default_model.into(),
            local,
            policy,
            structured_output: true,
            permits,
            sleeper: None,
        }
    }

    /// Whether calls ask for the output format the loop needs.
    pub fn with_structured_output(mut self, on: bool) -> Self {
        self.structured_output = on;
        self
    }

    /// The same provider under another name (a `[providers.NAME]`).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Backoff waits on `sleeper` (tests record them instead of sleeping).
    pub fn with_sleeper(mut self, sleeper: Arc<dyn Sleeper>) -> Self {
        self.sleeper = Some(sleeper);
        self
    }
}

/// The configured providers: by `[providers.NAME]`, and the one agents get
/// when they name none.
#[derive(Clone, Default)]
pub struct Providers {
    pub named: BTreeMap<String, ProviderHandle>,
    pub default: Option<ProviderHandle>,
}

/// One agent, ready to run.
pub struct AgentRuntime {
    pub name: String,
    pub config: AgentConfig,
    pub system_prompt: String,
    pub provider_name: String,
    pub provider: Arc<dyn Provider>,
    pub model: String,
    pub local: bool,
    /// Calls ask for the format the loop needs; else they go free.
    pub structured_output: bool,
    /// Model calls per run at most.
    pub max_steps: u32,
    pub max_output_tokens: u32,
    pub context_budget: usize,
    /// Tokens of the system prompt and the built-ins' specs: the least
    /// every first prompt holds (a run's registry tools come on top).
    fixed_tokens: i64,
}

/// Runs tasks with real agents.
pub struct AgentExecutor {
    agents: BTreeMap<String, AgentRuntime>,
    config: EngineConfig,
    /// Provider prompt counts against kira's, per provider and model.
    calibration: Arc<calibrate::Calibration>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentSetupError {
    #[error("agent '{agent}' names provider '{provider}', which is not configured")]
    UnknownProvider { agent: String, provider: String },
    #[error("agent '{0}' has no provider: configure [providers] or install the local model")]
    NoProvider(String),
}

impl AgentExecutor {
    pub fn new(config: &EngineConfig, providers: &Providers) -> Result<Self, AgentSetupError> {
        let mut agents = BTreeMap::new();
        for (name, a) in &config.agents {
            let handle = match &a.provider {
                Some(p) => {
                    providers
                        .named
                        .get(p)
                        .ok_or_else(|| AgentSetupError::UnknownProvider {
                            agent: name.clone(),
                            provider: p.clone(),
                        })?
                }
                None => providers
                    .default
                    .as_ref()
                    .ok_or_else(|| AgentSetupError::NoProvider(name.clone()))?,
            };
            let mut resilient = Resilient::new(handle.provider.clone(), handle.policy.clone())
                .with_permits(handle.permits.clone())
                .with_fallbacks(a.fallback_models.clone());
            if let Some(s) = &handle.sleeper {
                resilient = resilient.with_sleeper(s.clone());
            }
            let (out, ctx, steps) = if handle.local {
                (LOCAL_OUTPUT, LOCAL_CONTEXT, LOCAL_STEPS)
            } else {
                (REMOTE_OUTPUT, REMOTE_CONTEXT, REMOTE_STEPS)
            };
            let system_prompt = a
                .system_prompt
                .clone()
                .unwrap_or_else(|| prompts::builtin(name));
            let mut tools = crate::tools::builtin::specs_for(&a.tools);
            tools.push(submit_spec());
            let fixed_tokens = tokens_of(&[Message::system(system_prompt.clone())], &tools);
            agents.insert(
                name.clone(),
                AgentRuntime {
                    name: name.clone(),
                    system_prompt,
                    fixed_tokens,
                    provider_name: handle.name.clone(),
                    provider: Arc::new(resilient),
                    model: a
                        .model
                        .clone()
                        .unwrap_or_else(|| handle.default_model.clone()),
                    local: handle.local,
                    structured_output: handle.structured_output,
                    max_steps: a.max_steps.unwrap_or(steps),
                    max_output_tokens: a.max_output_tokens.unwrap_or(out),
                    context_budget: a.context_budget.unwrap_or(ctx),
                    config: a.clone(),
                },
            );
        }
        Ok(Self {
            agents,
            config: config.clone(),
            calibration: Arc::default(),
        })
    }

    pub fn agent(&self, name: &str) -> Option<&AgentRuntime> {
        self.agents.get(name)
    }

    pub fn agents(&self) -> impl Iterator<Item = &AgentRuntime> {
        self.agents.values()
    }
}

/// How an agent is run: its provider and model and what it is given.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct AgentModel {
    pub provider: String,
    pub model: String,
    /// The in-process model (SmolLM2).
    pub local: bool,
    /// Calls ask for the output format the loop needs (constrained
    /// decoding on the local model); false: they go free.
    pub structured_output: bool,
    /// Model calls per run at most.
    pub max_steps: u32,
    pub max_output_tokens: u32,
    pub context_budget: usize,
    pub system_prompt: String,
    /// The provider's prompt counts against kira's for this model, and the
    /// factor reservations use.
    pub calibration: calibrate::PromptCalibration,
}

/// An agent as `kira agents` shows it: configuration, model and load.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct AgentStatus {
    pub name: String,
    /// `primary` (every company's own) or `specialist` (the shared pool).
    pub role: String,
    pub max_concurrent: u32,
    /// Tasks of every company running on it now.
    pub running: usize,
    /// Tasks waiting for it (queued, or due a retry).
    pub queued: usize,
    /// Task types routed to it.
    pub task_types: Vec<String>,
    pub tools: Vec<String>,
    pub fallback_models: Vec<String>,
    pub max_steps: u32,
    pub max_tokens_per_run: i64,
    pub max_wall_seconds: u64,
    /// None when tasks are not run by agents (no executor, or simulated).
    pub model: Option<AgentModel>,
}

/// The configured agents as `kira agents` shows them. No state of its
/// own: their load is the queue's, their models the scheduler's executor's.
pub struct Agents {
    ctx: Arc<crate::Ctx>,
    scheduler: Arc<crate::scheduler::Scheduler>,
}

impl Agents {
    pub(crate) fn new(ctx: Arc<crate::Ctx>, scheduler: Arc<crate::scheduler::Scheduler>) -> Self {
        Self { ctx, scheduler }
    }

    /// Every configured agent with its model and current load.
    pub async fn list(&self) -> Result<Vec<AgentStatus>, crate::EngineError> {
        let snap = self
            .ctx
            .store
            .queue_snapshot(self.ctx.clock.now(), 100_000, None)
            .await?;
        let cfg = &self.ctx.config;
        Ok(cfg
            .agents
            .iter()
            .map(|(name, a)| {
                let model = self.scheduler.executor().and_then(|e| e.describe(name));
                AgentStatus {
                    name: name.clone(),
                    role: if name == PRIMARY {
                        "primary"
                    } else {
                        "specialist"
                    }
                    .to_owned(),
                    max_concurrent: a.max_concurrent,
                    running: snap.running.iter().filter(|(ag, _)| ag == name).count(),
                    queued: snap.runnable.iter().filter(|e| &e.agent == name).count(),
                    task_types: cfg
                        .task_types
                        .iter()
                        .filter(|(_, t)| {
                            t.specialist.as_deref() == Some(name.as_str())
                                || (name == PRIMARY
                                    && (t.specialist.is_none() || t.spawn_above_chars.is_some()))
                        })
                        .map(|(k, _)| k.clone())
                        .collect(),
                    tools: a.tools.clone(),
                    fallback_models: a.fallback_models.clone(),
                    max_steps: model
                        .as_ref()
                        .map(|m| m.max_steps)
                        .or(a.max_steps)
                        .unwrap_or(REMOTE_STEPS),
                    max_tokens_per_run: a.max_tokens_per_run,
                    max_wall_seconds: a.max_wall_seconds,
                    model,
                }
            })
            .collect())
    }
}

/// The steps of one run, written when it ends (one statement).
struct Trace {
    task: Task,
    agent: String,
    steps: Vec<Step>,
}

impl Trace {
    fn push(
        &mut self,
        run: &Run,
        kind: StepKind,
        detail: serde_json::Value,
        usage: (i64, i64),
        latency_ms: i64,
    ) {
        let seq = i32::try_from(self.steps.len()).unwrap_or(i32::MAX);
        self.steps.push(Step {
            task_id: self.task.task_id.clone(),
            attempt: self.task.attempts.max(1),
            seq,
            agent: self.agent.clone(),
            kind,
            prompt_tokens: usage.0,
            completion_tokens: usage.1,
            latency_ms,
            detail,
            at: run.now(),
        });
    }

    /// Hands the steps to the run, which records them with its end.
    fn finish(self, run: &mut Run) {
        run.records_mut().steps = self.steps;
    }
}

/// At most `n` characters of `s`, with an ellipsis when cut.
pub(crate) fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n).collect();
        t.push('…');
        t
    }
}

/// SEED 1's task message, from the primary agent to a specialist.
pub fn task_message(task: &Task) -> serde_json::Value {
    json!({
        "task_id": task.task_id,
        "company_context": task.company_context,
        "task": task.task,
        "type": task.task_type,
        "priority": task.priority,
        "deadline": task.deadline,
        "parameters": task.parameters,
        "from": PRIMARY,
        "to": task.agent,
    })
}

fn tokens_of(messages: &[Message], tools: &[ToolSpec]) -> i64 {
    let mut n = 0usize;
    for m in messages {
        // A few tokens of framing per message.
        n += 4 + count_tokens(&m.content);
        for c in &m.tool_calls {
            n += count_tokens(&c.name) + count_tokens(&c.arguments.to_string());
        }
    }
    if !tools.is_empty() {
        n += count_tokens(&serde_json::to_string(tools).unwrap_or_default());
    }
    i64::try_from(n).unwrap_or(i64::MAX / 4)
}

/// What a call's answer must be: one call of the agent's tools (a search,
/// or `submit_result`, which ends the run), or the result itself when
/// `submit_result` is the only tool or this is the last call the run's
/// step limit allows, so that a run ends with a result the review policy
/// can judge by its stated confidence.
fn output_for(tools: &[ToolSpec], last_step: bool) -> Output {
    let only_submit = tools.iter().all(|t| t.name == SUBMIT_RESULT);
    if last_step || only_submit {
        Output::Json {
            name: result::RESULT_NAME.to_owned(),
            schema: result::schema(),
        }
    } else {
        Output::ToolCall
    }
}

/// The first user message: the company, its context pack, the primary's
/// session, earlier reviewers' feedback, and the task.
fn first_prompt(task: &Task, context: &str, session: Option<&str>, feedback: &[String]) -> String {
    let mut p = String::new();
    p.push_str("# Company\n");
    p.push_str(&task.company_context.to_string());
    p.push_str("\n\n");
    if !context.trim().is_empty() {
        p.push_str("# Context\n");
        p.push_str(context.trim());
        p.push_str("\n\n");
    }
    if let Some(s) = session
        && !s.trim().is_empty()
    {
        p.push_str("# Our conversation so far\n");
        p.push_str(s.trim());
        p.push_str("\n\n");
    }
    if !feedback.is_empty() {
        p.push_str("# A reviewer rejected an earlier answer to this task\n");
        for f in feedback {
            p.push_str("- ");
            p.push_str(f);
            p.push('\n');
        }
        p.push('\n');
    }
    p.push_str(&format!(
        "# Task {} ({}, priority {})\n{}\n",
        task.task_id, task.task_type, task.priority, task.task
    ));
    if task.parameters.as_object().is_some_and(|o| !o.is_empty()) {
        p.push_str("\nParameters: ");
        p.push_str(&task.parameters.to_string());
        p.push('\n');
    }
    if let Some(d) = task.deadline {
        p.push_str(&format!("Deadline: {}\n", d.to_rfc3339()));
    }
    p
}

/// Why a run stopped before the agent submitted a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    Steps,
    Tokens,
    WallTime,
}

impl Limit {
    fn as_str(self) -> &'static str {
        match self {
            Limit::Steps => "steps",
            Limit::Tokens => "tokens",
            Limit::WallTime => "wall_time",
        }
    }
}

/// Where a run's conversation stands.
#[derive(Debug, Default)]
struct Progress {
    /// Tokens the calls used so far.
    used: i64,
    /// Model calls made.
    steps: u32,
    /// The model's last non-empty text.
    last_text: String,
    /// The limit that stopped the run, if one did.
    limit: Option<Limit>,
    /// The result, once submitted or answered.
    result: Option<FinalResult>,
}

/// A model call as reserved: kira's count of its prompt, its provider's
/// calibration, the tokens held for it and its output allowance.
struct Call {
    prompt: i64,
    factor: f64,
    need: i64,
    max_output: u32,
}

#[async_trait]
impl Executor for AgentExecutor {
    fn name(&self) -> &str {
        "agents"
    }

    fn describe(&self, agent: &str) -> Option<AgentModel> {
        self.agents.get(agent).map(|a| AgentModel {
            provider: a.provider_name.clone(),
            model: a.model.clone(),
            local: a.local,
            structured_output: a.structured_output,
            max_steps: a.max_steps,
            max_output_tokens: a.max_output_tokens,
            context_budget: a.context_budget,
            system_prompt: a.system_prompt.clone(),
            calibration: self.calibration.show(&a.provider_name, &a.model),
        })
    }

    fn first_call_tokens(&self, agent: &str, task_type: &str, input_tokens: i64) -> Option<i64> {
        // Only what every first call certainly sends and may write back:
        // the claim admits the task, and its first call resizes the hold
        // to the counted prompt once the context pack and session exist.
        let a = self.agents.get(agent)?;
        let output = i64::from(self.max_output(a, task_type));
        Some(
            a.fixed_tokens
                .saturating_add(input_tokens)
                .saturating_add(output),
        )
    }

    async fn execute(&self, run: &mut Run) -> ExecOutcome {
        let task = run.task.clone();
        let Some(agent) = self.agents.get(&task.agent) else {
            return ExecOutcome::Failed {
                error: format!("no agent named '{}' is configured", task.agent),
                retryable: false,
            };
        };
        let mut trace = Trace {
            task: task.clone(),
            agent: agent.name.clone(),
            steps: Vec::new(),
        };
        let outcome = self.run_loop(run, agent, &mut trace).await;
        trace.finish(run);
        outcome
    }
}

impl AgentExecutor {
    /// Output tokens per call: the agent's, or the task type's if lower.
    fn max_output(&self, agent: &AgentRuntime, task_type: &str) -> u32 {
        let type_output = self
            .config
            .task_types
            .get(task_type)
            .map_or(i64::from(agent.max_output_tokens), |t| t.max_output_tokens);
        u32::try_from(type_output.min(i64::from(agent.max_output_tokens)).max(1)).unwrap_or(1)
    }

    async fn run_loop(
        &self,
        run: &mut Run,
        agent: &AgentRuntime,
        trace: &mut Trace,
    ) -> ExecOutcome {
        let primary = agent.name == PRIMARY;
        if !primary {
            trace.push(
                run,
                StepKind::TaskMessage,
                task_message(&run.task),
                (0, 0),
                0,
            );
        }
        let mut messages = match self.first_messages(run, agent, primary).await {
            Ok(m) => m,
            Err(error) => {
                return ExecOutcome::Failed {
                    error,
                    retryable: true,
                };
            }
        };
        // What the run is offered: the registry and the company's tool
        // configuration as they are now.
        let offer = match run
            .engine()
            .tools()
            .offer(run.scope(), &agent.config.tools)
            .await
        {
            Ok(o) => o,
            Err(e) => {
                return ExecOutcome::Failed {
                    error: format!("tools: {e}"),
                    retryable: true,
                };
            }
        };
        run.end_after_audits(offer.unwritten());
        let mut specs = offer.specs();
        specs.push(submit_spec());
        let tools = RunTools {
            fixed_tokens: tokens_of(&messages[..1], &specs),
            offer,
            specs,
        };
        let mut progress = Progress::default();
        if let Some(stopped) = self
            .converse(run, agent, &tools, trace, &mut messages, &mut progress)
            .await
        {
            return stopped;
        }
        self.conclude(run, agent, trace, progress, primary)
    }

    /// The system prompt and the first user message: the task with its
    /// context pack, the primary agent's session, and the feedback of
    /// earlier rejections. An error says which read failed.
    async fn first_messages(
        &self,
        run: &Run,
        agent: &AgentRuntime,
        primary: bool,
    ) -> Result<Vec<Message>, String> {
        let task = &run.task;
        let engine = run.engine();
        let scope = run.scope();
        let pack = engine
            .memory()
            .context(
                scope,
                &ContextRequest {
                    task_type: Some(task.task_type.clone()),
                    query: task.task.clone(),
                    budget: Some(agent.context_budget),
                },
            )
            .await
            .map_err(|e| format!("context: {e}"))?;
        let session = if primary {
            match run.store().load_session(scope).await {
                Ok(s) => Some(session::render(&s)),
                Err(e) => return Err(format!("session: {e}")),
            }
        } else {
            None
        };
        // A first attempt has never been reviewed (a rejection requeues,
        // and the next claim counts another attempt): no read for it.
        let feedback: Vec<String> = if task.attempts <= 1 {
            Vec::new()
        } else {
            match engine.reviews().list(scope, &task.task_id).await {
                Ok(rs) => rs
                    .into_iter()
                    .filter(|r| r.decision == "rejected")
                    .filter_map(|r| r.feedback)
                    .collect(),
                Err(e) => return Err(format!("reviews: {e}")),
            }
        };
        Ok(vec![
            Message::system(agent.system_prompt.clone()),
            Message::user(first_prompt(
                task,
                &pack.render(),
                session.as_deref(),
                &feedback,
            )),
        ])
    }

    /// Model, tool calls, model, until the agent submits a result, answers
    /// without tool calls, or hits a limit (recorded in `progress`). Some
    /// outcome when the run ends otherwise: cancelled, out of budget, or a
    /// failed call.
    async fn converse(
        &self,
        run: &mut Run,
        agent: &AgentRuntime,
        tools: &RunTools,
        trace: &mut Trace,
        messages: &mut Vec<Message>,
        progress: &mut Progress,
    ) -> Option<ExecOutcome> {
        let started = run.now();
        let max_output = self.max_output(agent, &run.task.task_type);
        let limits = &agent.config;
        while progress.result.is_none() {
            if run.cancelled() {
                return Some(ExecOutcome::Cancelled);
            }
            if progress.steps >= agent.max_steps {
                progress.limit = Some(Limit::Steps);
                break;
            }
            let elapsed = run.now() - started;
            if elapsed.num_seconds() >= i64::try_from(limits.max_wall_seconds).unwrap_or(i64::MAX) {
                progress.limit = Some(Limit::WallTime);
                break;
            }
            // The system prompt and tool specs never change: counted once.
            // The call is known now: reserve its prompt as this provider
            // and model count it (kira's count, calibrated) plus the most
            // it may write.
            let prompt = tools.fixed_tokens + tokens_of(&messages[1..], &[]);
            let factor = self.calibration.factor(&agent.provider_name, &agent.model);
            let call = Call {
                prompt,
                factor,
                need: calibrate::scaled(prompt, factor) + i64::from(max_output),
                max_output,
            };
            if progress.used + call.need > limits.max_tokens_per_run {
                progress.limit = Some(Limit::Tokens);
                break;
            }
            let resp = match self
                .call_model(run, agent, &tools.specs, trace, messages, &call, progress)
                .await
            {
                Ok(r) => r,
                Err(stopped) => return Some(stopped),
            };
            let calls = resp.message.tool_calls.clone();
            if !resp.message.content.trim().is_empty() {
                progress.last_text = resp.message.content.clone();
            }
            messages.push(resp.message);
            if calls.is_empty() {
                progress.result = Some(result::from_text(&progress.last_text));
                break;
            }
            let left = limits.max_tokens_per_run - progress.used;
            progress.result =
                Self::run_tools(run, agent, tools, trace, calls, messages, left).await;
        }
        None
    }

    /// One model call: reserved before, settled after with the provider's
    /// usage (or the reservation when it reports none), and traced.
    #[allow(clippy::too_many_arguments)]
    async fn call_model(
        &self,
        run: &mut Run,
        agent: &AgentRuntime,
        specs: &[ToolSpec],
        trace: &mut Trace,
        messages: &[Message],
        call: &Call,
        progress: &mut Progress,
    ) -> Result<ChatResponse, ExecOutcome> {
        let failed = |error: String| ExecOutcome::Failed {
            error,
            retryable: true,
        };
        let reservation = match run.reserve(call.need).await {
            Ok(r) => r,
            Err(RunError::OutOfBudget(reason)) => return Err(ExecOutcome::OutOfBudget { reason }),
            Err(e) => return Err(failed(e.to_string())),
        };
        progress.steps += 1;
        let last_step = progress.steps >= agent.max_steps;
        let req = ChatRequest {
            model: agent.model.clone(),
            messages: messages.to_vec(),
            max_tokens: call.max_output,
            temperature: None,
            tools: specs.to_vec(),
            output: if agent.structured_output {
                output_for(specs, last_step)
            } else {
                Output::Free
            },
        };
        let resp = match agent.provider.chat(&req).await {
            Ok(r) => {
                run.engine().metrics().provider_call(
                    &agent.provider_name,
                    &agent.model,
                    Some(r.latency),
                );
                r
            }
            Err(e) => {
                run.engine()
                    .metrics()
                    .provider_call(&agent.provider_name, &agent.model, None);
                if let Err(re) = run.release(&reservation).await {
                    tracing::warn!(task = %run.task.task_id, error = %re, "could not release a failed call's reservation");
                }
                trace.push(
                    run,
                    StepKind::Llm,
                    json!({"model": agent.model, "provider": agent.provider_name, "error": e.to_string()}),
                    (0, 0),
                    0,
                );
                return Err(failed(format!(
                    "{} ({}): {e}",
                    agent.provider_name, agent.model
                )));
            }
        };
        let reported = resp.usage.prompt_tokens > 0 || resp.usage.completion_tokens > 0;
        let (p, c) = if reported {
            let p = i64::from(resp.usage.prompt_tokens);
            self.calibration
                .observe(&agent.provider_name, &agent.model, call.prompt, p);
            (p, i64::from(resp.usage.completion_tokens))
        } else {
            // No usage reported: charge the reservation, the most the
            // call could have cost (the trace says so).
            (
                call.need - i64::from(call.max_output),
                i64::from(call.max_output),
            )
        };
        progress.used += p + c;
        if let Err(e) = run.settle(&reservation, &resp.model, p, c).await {
            return Err(failed(e.to_string()));
        }
        let latency = i64::try_from(resp.latency.as_millis()).unwrap_or(i64::MAX);
        trace.push(
            run,
            StepKind::Llm,
            json!({
                "model": resp.model,
                "provider": agent.provider_name,
                "finish_reason": resp.finish_reason,
                "content": cut(&resp.message.content, TRACE_CHARS),
                "tool_calls": resp.message.tool_calls,
                "reserved": reservation.amount,
                "counted_prompt": call.prompt,
                "calibration": call.factor,
                "usage": if reported { "reported by the provider" } else { "not reported: charged the reservation" },
            }),
            (p, c),
            latency,
        );
        Ok(resp)
    }

    /// Runs the model's tool calls in order through the company wrapper,
    /// each result added to `messages` fenced as the tool's data; the
    /// result when one of them submits it (the calls after it are not
    /// run). `left` is what the run has left of its tokens: a result is
    /// cut to fit it.
    async fn run_tools(
        run: &Run,
        agent: &AgentRuntime,
        tools: &RunTools,
        trace: &mut Trace,
        calls: Vec<ToolCall>,
        messages: &mut Vec<Message>,
        mut left: i64,
    ) -> Option<FinalResult> {
        let source = run.task.task_id.to_string();
        let actor = format!("agent:{}", agent.name);
        for call in calls {
            if call.name == SUBMIT_RESULT {
                let r = result::from_object(&call.arguments);
                trace.push(
                    run,
                    StepKind::Tool,
                    json!({"call_id": call.id, "name": call.name, "arguments": call.arguments, "result": "accepted"}),
                    (0, 0),
                    0,
                );
                return Some(r);
            }
            let cx = crate::tools::CallContext {
                scope: run.scope(),
                actor: &actor,
                request_id: &source,
                tokens_left: Some(left),
            };
            let out = run
                .engine()
                .tools()
                .call(&tools.offer, &cx, &call.name, &call.arguments)
                .await;
            left -= out.result_tokens;
            let ms = i64::try_from(out.latency_ms).unwrap_or(i64::MAX);
            let key = if out.error { "error" } else { "result" };
            trace.push(
                run,
                StepKind::Tool,
                json!({
                    "call_id": call.id,
                    "name": call.name,
                    "arguments": tools.offer.redact(&call.arguments),
                    key: cut(&out.content, TRACE_CHARS),
                    "outcome": out.outcome,
                    "layer": out.layer,
                    "result_tokens": out.result_tokens,
                    "cut": out.cut,
                }),
                (0, 0),
                ms,
            );
            messages.push(Message::tool(call.id.clone(), out.for_prompt()));
        }
        None
    }

    /// The run's outcome from where the conversation stopped: the result
    /// (or what the last text says, at confidence 0, after a limit), the
    /// review policy's verdict, the response message of a specialist, the
    /// session turns and the trace's end.
    fn conclude(
        &self,
        run: &mut Run,
        agent: &AgentRuntime,
        trace: &mut Trace,
        progress: Progress,
        primary: bool,
    ) -> ExecOutcome {
        let task = run.task.clone();
        let Progress {
            used,
            steps,
            last_text,
            limit,
            result: final_result,
        } = progress;
        let hit_limit = limit.is_some();
        let r = final_result.unwrap_or_else(|| {
            let mut r = result::from_text(&last_text);
            r.confidence = 0.0;
            r.summary = format!(
                "stopped at the {} limit before a result was submitted",
                limit.map_or("steps", Limit::as_str)
            );
            r
        });
        let review = self
            .config
            .review
            .needs_review(&task.task_type, r.confidence, hit_limit);
        let result = json!({
            "summary": r.summary,
            "answer": r.answer,
            "confidence": r.confidence,
            "agent": agent.name,
            "model": agent.model,
            "steps": steps,
            "tokens": used,
            "limit_hit": limit.map(Limit::as_str),
            "well_formed": r.well_formed,
        });
        let status = if review { "needs_review" } else { "completed" };
        if !primary {
            trace.push(
                run,
                StepKind::ResponseMessage,
                json!({
                    "task_id": task.task_id,
                    "status": status,
                    "result": result,
                    "confidence": r.confidence,
                    "requires_human_review": review,
                    "from": agent.name,
                    "to": PRIMARY,
                }),
                (0, 0),
                0,
            );
        }
        let (turns, turn_tokens) = session::turns(&task, &r.summary, status, run.now());
        let records = run.records_mut();
        records.session_turns = turns;
        records.session_tokens = turn_tokens;
        trace.push(
            run,
            StepKind::End,
            json!({"status": status, "limit": limit.map(Limit::as_str), "steps": steps, "tokens": used}),
            (0, 0),
            0,
        );
        ExecOutcome::Done {
            result,
            confidence: r.confidence,
            requires_human_review: review,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_held_to_a_tool_call_until_the_last_step_asks_for_the_result() {
        let mut all =
            crate::tools::builtin::specs_for(&["memory".to_owned(), "knowledge".to_owned()]);
        all.push(submit_spec());
        assert_eq!(output_for(&all, false), Output::ToolCall);
        let result = Output::Json {
            name: result::RESULT_NAME.to_owned(),
            schema: result::schema(),
        };
        assert_eq!(output_for(&all, true), result);
        // An agent with no domains can only submit: its answer is the result.
        let submit_only = vec![submit_spec()];
        assert_eq!(submit_only.len(), 1);
        assert_eq!(output_for(&submit_only, false), result);
    }
}
