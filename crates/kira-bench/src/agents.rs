//! `kira bench agents`: tasks end to end through real agents (context
//! pack, prompt, reservation, the model call, settlement, trace, session,
//! the run's end) with a fake provider that answers every call after a
//! fixed latency with a submitted result. What is measured besides
//! throughput is kira's own time per task: from claimed to recorded as
//! finished, minus the provider's time for that task.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kira_core::clock::{Clock, SystemClock};
use kira_core::task::TaskStatus;
use kira_llm::{
    ChatRequest, ChatResponse, FinishReason, LlmError, Message, Provider, RetryPolicy, ToolCall,
    Usage,
};
use kira_store::Store;
use serde::Serialize;

use kira_engine::agent::{AgentExecutor, ProviderHandle, Providers};
use kira_engine::{Engine, EngineError, Shutdown};

use crate::queue::{all_tasks, bench_config, seed};
use crate::report::{Percentiles, percentiles};
use crate::{BenchError, Scratch};

/// Answers every call with `submit_result` after `latency`, and keeps how
/// long each task's calls took and when its first began and its last ended.
pub struct FixedLatency {
    latency: Duration,
    /// The run's clock, so call times compare with the task's timestamps.
    clock: Arc<dyn Clock>,
    spent: Mutex<HashMap<String, Calls>>,
}

/// A task's calls to the provider.
#[derive(Debug, Clone, Copy)]
struct Calls {
    spent: Duration,
    first_start: DateTime<Utc>,
    last_end: DateTime<Utc>,
}

impl FixedLatency {
    pub fn new(latency: Duration, clock: Arc<dyn Clock>) -> Self {
        Self {
            latency,
            clock,
            spent: Mutex::new(HashMap::new()),
        }
    }

    /// The task id in a prompt ("# Task <id> (").
    fn task_of(req: &ChatRequest) -> String {
        req.messages
            .iter()
            .find_map(|m| {
                m.content
                    .split("# Task ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .map(str::to_owned)
            })
            .unwrap_or_default()
    }
}

#[async_trait]
impl Provider for FixedLatency {
    fn name(&self) -> &str {
        "fixed-latency"
    }

    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, LlmError> {
        let (t0, began) = (Instant::now(), self.clock.now());
        tokio::time::sleep(self.latency).await;
        let took = t0.elapsed();
        let ended = self.clock.now();
        self.spent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(Self::task_of(req))
            .and_modify(|c| {
                c.spent += took;
                c.last_end = ended;
            })
            .or_insert(Calls {
                spent: took,
                first_start: began,
                last_end: ended,
            });
        let prompt: usize = req.messages.iter().map(|m| m.content.len() / 4).sum();
        Ok(ChatResponse {
            message: Message {
                tool_calls: vec![ToolCall {
                    id: "call_1".into(),
                    name: "submit_result".into(),
                    arguments: serde_json::json!({
                        "summary": "done", "answer": "benchmark answer", "confidence": 0.9
                    }),
                }],
                ..Message::assistant("")
            },
            usage: Usage {
                prompt_tokens: u32::try_from(prompt).unwrap_or(u32::MAX),
                completion_tokens: 20,
            },
            finish_reason: FinishReason::ToolCalls,
            latency: took,
            model: req.model.clone(),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentsReport {
    pub tasks: usize,
    pub companies: usize,
    pub latency_ms: u64,
    /// Runs at once per agent.
    pub slots: u32,
    pub completed: usize,
    pub seconds: f64,
    pub tasks_per_second: f64,
    /// Claimed to recorded as finished, minus the provider's time.
    pub overhead: Percentiles,
    /// Of which before the first call: the claim to the first call's start
    /// (context pack, session, prompt).
    pub before_call: Percentiles,
    /// And after the last call: its end to the run's end being recorded
    /// (the result, the trace, the end's write).
    pub after_call: Percentiles,
    /// Submitted to finished.
    pub response: Percentiles,
    /// Share of tasks finished within their company's SLA (30 s).
    pub within_sla: f64,
}

/// Seeds `companies` and `tasks`, runs them through agents (each with
/// `slots` runs at once) on a provider answering after `latency`, and
/// reports. More slots: more throughput, and more of kira's own work
/// queued per task on two cores and SQLite's one writer.
pub async fn run(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    companies: usize,
    tasks: usize,
    latency: Duration,
    slots: u32,
) -> Result<AgentsReport, EngineError> {
    let mut cfg = bench_config(false);
    for a in cfg.agents.values_mut() {
        a.max_concurrent = slots;
    }
    let fake = Arc::new(FixedLatency::new(latency, clock.clone()));
    let policy = RetryPolicy {
        max_concurrent: 10_000,
        ..RetryPolicy::default()
    };
    let providers = Providers {
        named: Default::default(),
        default: Some(ProviderHandle::new(
            "fixed-latency",
            fake.clone(),
            "bench-model",
            false,
            policy,
        )),
    };
    let exec = AgentExecutor::new(&cfg, &providers)
        .map_err(|e| kira_core::ValidationError::new("agents", e.to_string()))?;
    let engine = Engine::with_executor(store.clone(), clock, cfg, Arc::new(exec));
    let ids = seed(&engine, store.as_ref(), companies, tasks, false).await?;
    let start = Instant::now();
    // The scheduler's own loop, as `kira serve` runs it: a pass whenever
    // work arrives or a run's end frees a slot.
    let shutdown = Shutdown::new();
    let scheduler = engine.scheduler().start(shutdown.clone());
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let snap = store.queue_snapshot(engine.clock().now(), 1, None).await?;
        if snap.runnable.is_empty() && snap.running.is_empty() {
            break;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    shutdown.trigger();
    let _ = scheduler.await;

    let spent = fake
        .spent
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let ms = |d: chrono::TimeDelta| d.num_microseconds().unwrap_or(0) as f64 / 1000.0;
    let (mut completed, mut within) = (0, 0);
    let (mut overhead, mut before, mut after, mut response) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for t in all_tasks(&engine, &ids).await? {
        if t.status == TaskStatus::Completed {
            completed += 1;
        }
        if let (Some(s), Some(f)) = (t.started_at, t.finished_at) {
            let calls = spent.get(t.task_id.as_str());
            let provider = calls.map_or(0.0, |c| c.spent.as_secs_f64() * 1000.0);
            overhead.push((ms(f - s) - provider).max(0.0));
            if let Some(c) = calls {
                before.push(ms(c.first_start - s).max(0.0));
                after.push(ms(f - c.last_end).max(0.0));
            }
            let r = ms(f - t.created_at);
            response.push(r);
            if r <= 30_000.0 {
                within += 1;
            }
        }
    }
    #[allow(clippy::cast_precision_loss)]
    let share = |n: usize| {
        if tasks == 0 {
            0.0
        } else {
            n as f64 / tasks as f64
        }
    };
    Ok(AgentsReport {
        tasks,
        companies,
        latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
        slots,
        completed,
        seconds,
        #[allow(clippy::cast_precision_loss)]
        tasks_per_second: if seconds > 0.0 {
            tasks as f64 / seconds
        } else {
            0.0
        },
        overhead: percentiles(overhead),
        before_call: percentiles(before),
        after_call: percentiles(after),
        response: percentiles(response),
        within_sla: share(within),
    })
}

#[derive(Debug, clap::Args)]
pub struct AgentsArgs {
    /// An EMPTY database to run in (postgres://...); default: a new SQLite file in a temp directory.
    #[arg(long)]
    pub database_url: Option<String>,
    #[arg(long, default_value_t = 1_000)]
    pub tasks: usize,
    #[arg(long, default_value_t = 100)]
    pub companies: usize,
    /// The fake provider's latency per call, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub latency_ms: u64,
    /// Runs at once per agent (six agents): more gives more throughput and
    /// more of kira's own time per task (its work queues).
    #[arg(long, default_value_t = 16)]
    pub slots: u32,
}

/// `kira bench agents`: runs the benchmark and prints its report.
pub async fn command(args: AgentsArgs, json: bool) -> Result<ExitCode, BenchError> {
    if args.tasks == 0 || args.companies == 0 {
        return Err(BenchError::Invalid(
            "--tasks and --companies must be at least 1".into(),
        ));
    }
    if !(1..=10_000).contains(&args.slots) {
        return Err(BenchError::Invalid("--slots must be 1 to 10000".into()));
    }
    let db = Scratch::new(args.database_url.as_deref(), "kira-bench")?;
    let store = db.open().await?;
    let backend = if db.is_postgres() {
        "postgresql"
    } else {
        "sqlite"
    };
    eprintln!(
        "agents benchmark: {backend}, {} tasks across {} companies, provider latency {} ms, {} runs at once per agent ...",
        args.tasks, args.companies, args.latency_ms, args.slots
    );
    let r = run(
        store,
        Arc::new(SystemClock),
        args.companies,
        args.tasks,
        Duration::from_millis(args.latency_ms),
        args.slots,
    )
    .await?;
    db.remove();
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_text(&r, backend);
    }
    Ok(if r.completed == r.tasks {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_text(r: &AgentsReport, backend: &str) {
    println!("agents benchmark: {backend}");
    println!(
        "  tasks            {} ({} completed) in {:.1} s",
        r.tasks, r.completed, r.seconds
    );
    println!("  throughput       {:.1} tasks/s", r.tasks_per_second);
    println!(
        "  kira overhead    p50 {:.1} ms, p99 {:.1} ms per task (claimed to finished, minus the provider's {} ms)",
        r.overhead.p50_ms, r.overhead.p99_ms, r.latency_ms
    );
    println!(
        "    before the call  p50 {:.1} ms, p99 {:.1} ms (claimed to the first call)",
        r.before_call.p50_ms, r.before_call.p99_ms
    );
    println!(
        "    after the call   p50 {:.1} ms, p99 {:.1} ms (the last call's end to finished)",
        r.after_call.p50_ms, r.after_call.p99_ms
    );
    println!(
        "  response time    p50 {:.1} ms, p99 {:.1} ms (submitted to finished)",
        r.response.p50_ms, r.response.p99_ms
    );
    println!("  within 30 s SLA  {:.1} %", r.within_sla * 100.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_task_id_is_read_from_the_prompt() {
        let req = ChatRequest::new(
            "m",
            vec![
                Message::system("s"),
                Message::user("# Company\n{}\n\n# Task acme_legal_001 (x, priority high)\nDo it"),
            ],
            10,
        );
        assert_eq!(FixedLatency::task_of(&req), "acme_legal_001");
    }
}
