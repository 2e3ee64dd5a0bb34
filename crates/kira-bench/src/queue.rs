//! `kira bench queue`: the queue, scheduler, budgets and ledger end to end
//! through the real store, with the simulated executor at zero latency, so
//! what is measured is kira's own cost per task. With `--processes N`
//! (PostgreSQL), N worker processes share one database, as several
//! `kira serve` would.

use std::collections::BTreeMap;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;

use kira_core::CompanyId;
use kira_core::audit::{AuditRecord, Outcome};
use kira_core::auth::{Access, Principal};
use kira_core::clock::{Clock, SystemClock};
use kira_core::company::NewCompany;
use kira_core::task::{Priority, TaskRequest, TaskStatus};
use kira_store::Store;
use kira_store::work::TaskFilter;
use serde::Serialize;

use kira_engine::config::{ExecutorConfig, SimulatedConfig};
use kira_engine::executor::Simulated;
use kira_engine::{Engine, EngineConfig, EngineError};

use crate::report::{Percentiles, percentiles, print_json};
use crate::{BenchError, Scratch};

/// The engine configuration of a benchmark: ample budget and slots (so the
/// scheduler, not a limit, is measured), or a scarce agent for `overload`;
/// the scheduler's own settings (the snapshot's size, the start gate) are
/// the defaults `kira serve` runs with.
pub fn bench_config(overload: bool) -> EngineConfig {
    let mut cfg = EngineConfig::default();
    cfg.budget.total_tokens = 1_000_000_000_000;
    cfg.scheduler.per_company_concurrency = 1_000;
    let slots = if overload { 4 } else { 256 };
    for a in cfg.agents.values_mut() {
        a.max_concurrent = slots;
    }
    cfg.executor = Some(ExecutorConfig::Simulated(SimulatedConfig::default()));
    cfg
}

pub(crate) fn record(company: &CompanyId, action: &str) -> AuditRecord {
    AuditRecord {
        at: chrono::DateTime::UNIX_EPOCH,
        request_id: String::new(),
        actor: "system".into(),
        company_id: Some(company.clone()),
        action: action.into(),
        target: "bench".into(),
        outcome: Outcome::Ok,
        detail: String::new(),
    }
}

/// The priority of the i-th task: uniform, or an overload mix weighted
/// towards the middle (10% emergency, 20% urgent, 30% high, 25% medium,
/// 15% low).
fn priority(i: usize, overload: bool) -> Priority {
    if !overload {
        return Priority::ALL[i % 5];
    }
    match i % 20 {
        0 | 1 => Priority::Emergency,
        2..=5 => Priority::Urgent,
        6..=11 => Priority::High,
        12..=16 => Priority::Medium,
        _ => Priority::Low,
    }
}

/// Creates `companies` companies in `store` (the engine's) and submits
/// `tasks` tasks across them.
pub async fn seed(
    engine: &Engine,
    store: &dyn Store,
    companies: usize,
    tasks: usize,
    overload: bool,
) -> Result<Vec<CompanyId>, EngineError> {
    let system = Principal::system();
    let mut ids = Vec::with_capacity(companies);
    for c in 0..companies {
        let (id, profile) = NewCompany {
            id: format!("bench-{c:04}"),
            name: format!("Bench {c}"),
            industry: "software".into(),
            jurisdiction: "US-DE".into(),
            revenue_usd: 1_000_000 * (c as i64 % 5 + 1),
            complexity_score: 0.5,
            activity_score: 0.5,
            priority_multiplier: 1.0,
            sla_response_seconds: 30,
            contacts: vec![],
            sharing_consent: Default::default(),
        }
        .validate()?;
        let scope = system
            .scope(&id, Access::Write)
            .map_err(|_| kira_core::ValidationError::new("id", "denied"))?;
        store
            .create_company(
                &scope,
                &profile,
                engine.clock().now(),
                record(&id, "company.create"),
            )
            .await?;
        ids.push(id);
    }
    store
        .refresh_allocations(&engine.config().budget, engine.clock().now())
        .await?;
    let types = [
        "quick_question_answer",
        "document_review",
        "financial_modeling",
        "routine_status_update",
    ];
    for i in 0..tasks {
        let company = &ids[i % ids.len()];
        let scope = system
            .scope(company, Access::Write)
            .map_err(|_| kira_core::ValidationError::new("id", "denied"))?;
        let req = TaskRequest {
            task: format!("benchmark task {i}"),
            task_type: types[i % types.len()].into(),
            priority: priority(i, overload),
            deadline: None,
            parameters: None,
            specialist: None,
        };
        engine
            .tasks()
            .submit(&scope, &req, None, record(company, "task.submit"))
            .await?;
    }
    Ok(ids)
}

/// Runs the scheduler's own loop (`Scheduler::start`, as `kira serve`
/// runs it: a pass whenever a run ends or work arrives, passes at least
/// its gap apart) until nothing in `store` (the engine's) is queued or
/// running. The metrics roll-up runs meanwhile, as beside `kira serve`'s
/// scheduler.
pub async fn drain(engine: &Engine, store: &dyn Store) -> Result<(), EngineError> {
    run_until(engine, wait_until_drained(store)).await
}

/// Runs the scheduler's loop and the metrics roll-up until `done` ends,
/// and gives what it gave.
async fn run_until<T>(engine: &Engine, done: impl std::future::Future<Output = T>) -> T {
    let stop = kira_engine::Shutdown::new();
    let metrics = engine.metrics().start_jobs(stop.clone());
    let scheduler = engine.scheduler().start(stop.clone());
    let out = done.await;
    stop.trigger();
    let _ = scheduler.await;
    let _ = metrics.await;
    out
}

/// How often the benchmark looks whether the queue is empty. The time
/// measured does not depend on it (it ends at the last finish the store
/// recorded, [`drained_in`]); a look is a query over the whole queue, so a
/// tighter poll would take the database from the scheduler it measures.
const DRAINED_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// How long the benchmark waits for a task to finish before it gives up:
/// a scheduler whose every claim fails (it logs each and tries again)
/// would otherwise keep it waiting for ever.
const STALLED_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

async fn wait_until_drained(store: &dyn Store) -> Result<(), EngineError> {
    let admin = Principal::system()
        .admin()
        .map_err(|_| kira_core::ValidationError::new("admin", "denied"))?;
    let mut progress = Progress::default();
    loop {
        let waiting = store.waiting_work(&admin).await?;
        let left: i64 = waiting
            .queue
            .iter()
            .filter(|q| q.status == "queued" || q.status == "running")
            .map(|q| q.tasks)
            .sum();
        if left == 0 {
            return Ok(());
        }
        progress
            .look(left, std::time::Instant::now(), STALLED_AFTER)
            .map_err(|e| kira_core::ValidationError::new("queue", e))?;
        tokio::time::sleep(DRAINED_POLL).await;
    }
}

/// Whether the queue still drains: the fewest tasks left seen, and when.
#[derive(Debug, Default)]
struct Progress {
    fewest: Option<(i64, std::time::Instant)>,
}

impl Progress {
    /// Records a look at the queue: `left` tasks queued or running at
    /// `now`. An error once that count has not fallen for `stalled_after`.
    fn look(
        &mut self,
        left: i64,
        now: std::time::Instant,
        stalled_after: std::time::Duration,
    ) -> Result<(), String> {
        match self.fewest {
            Some((fewest, since)) if left >= fewest => {
                if now.saturating_duration_since(since) >= stalled_after {
                    return Err(format!(
                        "did not drain: {left} tasks queued or running, none finished in {} s \
                         (the scheduler's warnings say why)",
                        stalled_after.as_secs()
                    ));
                }
            }
            _ => self.fewest = Some((left, now)),
        }
        Ok(())
    }
}

/// An engine for a benchmark over `store`.
pub fn engine(store: Arc<dyn Store>, clock: Arc<dyn Clock>, overload: bool) -> Engine {
    Engine::with_executor(
        store,
        clock,
        bench_config(overload),
        Arc::new(Simulated::new(SimulatedConfig::default())),
    )
}

#[derive(Debug, Clone, Serialize)]
pub struct QueueReport {
    pub tasks: usize,
    pub completed: usize,
    pub seconds: f64,
    pub tasks_per_second: f64,
    /// From claimed to recorded as finished (executor time is zero).
    pub run: Percentiles,
    /// From submitted to running, per priority level.
    pub wait_by_priority: BTreeMap<String, Percentiles>,
    /// The CPU the drain used, all threads (of this process only: absent
    /// with `--processes`), per task: comparable on a busy machine, where
    /// the throughput is not.
    pub cpu_us_per_task: Option<f64>,
    /// The busiest threads of the drain, milliseconds each.
    pub cpu_by_thread: Vec<crate::cpu::ThreadCpu>,
}

/// Every task of `companies`, read back page by page.
pub async fn all_tasks(
    engine: &Engine,
    companies: &[CompanyId],
) -> Result<Vec<kira_core::task::Task>, EngineError> {
    let system = Principal::system();
    let mut out = Vec::new();
    for c in companies {
        let scope = system
            .scope(c, Access::Read)
            .map_err(|_| kira_core::ValidationError::new("id", "denied"))?;
        let mut before = None;
        loop {
            let page = engine
                .tasks()
                .list(
                    &scope,
                    &TaskFilter {
                        before_seq: before,
                        limit: 500,
                        ..Default::default()
                    },
                )
                .await?;
            let Some(last) = page.last() else { break };
            before = Some(last.task_id.seq());
            out.extend(page);
        }
    }
    Ok(out)
}

/// Reads every task back and summarises: completion, run and wait times,
/// and the throughput of the drain that began at `start` (the engine's
/// clock) and ended at the last finish recorded.
pub async fn report(
    engine: &Engine,
    companies: &[CompanyId],
    tasks: usize,
    start: chrono::DateTime<chrono::Utc>,
) -> Result<QueueReport, EngineError> {
    let all = all_tasks(engine, companies).await?;
    let seconds = drained_in(all.iter().map(|t| t.finished_at), start);
    let mut completed = 0;
    let mut run = Vec::new();
    let mut wait: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let ms = |d: chrono::TimeDelta| d.num_microseconds().unwrap_or(0) as f64 / 1000.0;
    for t in all {
        if t.status == TaskStatus::Completed {
            completed += 1;
        }
        if let (Some(s), Some(f)) = (t.started_at, t.finished_at) {
            run.push(ms(f - s));
            wait.entry(t.priority.as_str().to_owned())
                .or_default()
                .push(ms(s - t.created_at));
        }
    }
    #[allow(clippy::cast_precision_loss)]
    let tps = if seconds > 0.0 {
        tasks as f64 / seconds
    } else {
        0.0
    };
    Ok(QueueReport {
        tasks,
        completed,
        seconds,
        tasks_per_second: tps,
        run: percentiles(run),
        wait_by_priority: wait.into_iter().map(|(k, v)| (k, percentiles(v))).collect(),
        cpu_us_per_task: None,
        cpu_by_thread: Vec::new(),
    })
}

/// Seconds from `start` to the last of the tasks' `finishes` (zero when
/// none finished): the drain's length as the store recorded it, so the
/// benchmark's own polling adds nothing to it.
pub fn drained_in(
    finishes: impl IntoIterator<Item = Option<chrono::DateTime<chrono::Utc>>>,
    start: chrono::DateTime<chrono::Utc>,
) -> f64 {
    finishes
        .into_iter()
        .flatten()
        .max()
        .and_then(|end| (end - start).num_microseconds())
        .map_or(0.0, |us| us.max(0) as f64 / 1e6)
}

/// Seeds, drains in this process, and reports.
pub async fn run_single(
    engine: &Engine,
    store: &dyn Store,
    companies: usize,
    tasks: usize,
    overload: bool,
) -> Result<QueueReport, EngineError> {
    let ids = seed(engine, store, companies, tasks, overload).await?;
    let start = engine.clock().now();
    drain(engine, store).await?;
    report(engine, &ids, tasks, start).await
}

#[derive(Debug, clap::Args)]
pub struct QueueArgs {
    /// An EMPTY database to run in (postgres://...); default: a new SQLite file in a temp directory.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Tasks to run.
    #[arg(long, default_value_t = 2000)]
    pub tasks: usize,
    /// Companies they belong to.
    #[arg(long, default_value_t = 20)]
    pub companies: usize,
    /// Worker processes (PostgreSQL only for more than 1).
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// Overload: 4 slots per agent and a priority mix (10% emergency, 20% urgent,
    /// 30% high, 25% medium, 15% low), to see the wait per level.
    #[arg(long)]
    pub overload: bool,
}

/// `kira bench queue`: seeds, drains in this process or in `--processes`
/// worker processes sharing the database, and prints the report.
pub async fn command(args: QueueArgs, json: bool) -> Result<ExitCode, BenchError> {
    if args.tasks == 0 || args.companies == 0 || args.processes == 0 {
        return Err(BenchError::Invalid(
            "--tasks, --companies and --processes must be at least 1".into(),
        ));
    }
    let db = Scratch::new(args.database_url.as_deref(), "kira-bench")?;
    if args.processes > 1 && !db.is_postgres() {
        return Err(BenchError::Invalid(
            "--processes above 1 needs --database-url postgres://... (SQLite serves one process)"
                .into(),
        ));
    }
    let store = db.open().await?;
    let engine = engine(store.clone(), Arc::new(SystemClock), args.overload);
    eprintln!(
        "seeding {} companies and {} tasks ...",
        args.companies, args.tasks
    );
    let companies = seed(
        &engine,
        store.as_ref(),
        args.companies,
        args.tasks,
        args.overload,
    )
    .await
    .map_err(|e| BenchError::during("seeding (the database must be empty)", e))?;
    // Worker processes are started and have opened the database before
    // the clock starts, as `kira serve` processes would be running when
    // the work arrives (and as pgbench leaves out its connections).
    let workers = if args.processes == 1 {
        None
    } else {
        Some(Workers::start(db.url(), args.processes, args.overload)?)
    };
    eprintln!("running with {} process(es) ...", args.processes);
    let start = engine.clock().now();
    let cpu_before = crate::cpu::sample();
    match workers {
        None => drain(&engine, store.as_ref()).await?,
        Some(w) => w.drain(store.as_ref()).await?,
    }
    let cpu = cpu_before
        .zip(crate::cpu::sample())
        .filter(|_| args.processes == 1)
        .map(|(a, b)| crate::cpu::used(&a, &b));
    let mut report = report(&engine, &companies, args.tasks, start).await?;
    if let Some(cpu) = cpu {
        #[allow(clippy::cast_precision_loss)]
        let per_task = cpu.total_ms * 1000.0 / args.tasks as f64;
        report.cpu_us_per_task = Some(per_task);
        report.cpu_by_thread = cpu.threads.into_iter().take(CPU_THREADS_SHOWN).collect();
    }
    let backend = if db.is_postgres() {
        "postgres"
    } else {
        "sqlite"
    };
    db.remove();
    print_report(&report, backend, &args, json)?;
    Ok(if report.completed == report.tasks {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// How many of the drain's busiest threads the report names.
const CPU_THREADS_SHOWN: usize = 6;

/// What a worker process says once its database is open and it waits
/// for the word to drain.
const READY: &str = "ready";

/// The word a worker waits for before it drains.
const GO: &str = "go";

/// `processes` copies of this binary as `bench queue-worker` on one
/// database, each with its store open, waiting for the word to drain.
struct Workers {
    children: Vec<std::process::Child>,
}

impl Workers {
    /// Starts the workers and waits until each says it is ready.
    fn start(url: &str, processes: usize, overload: bool) -> Result<Self, BenchError> {
        let exe = std::env::current_exe()?;
        let mut children = Vec::with_capacity(processes);
        for _ in 0..processes {
            let mut c = std::process::Command::new(&exe);
            c.args(["bench", "queue-worker", "--database-url", url]);
            if overload {
                c.arg("--overload");
            }
            children.push(
                c.stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()?,
            );
        }
        let mut workers = Workers { children };
        if let Err(e) = workers.wait_ready() {
            // Not told to go: none may drain the queue on its own.
            for child in &mut workers.children {
                let _ = child.kill();
                let _ = child.wait();
            }
            return Err(e);
        }
        Ok(workers)
    }

    fn wait_ready(&mut self) -> Result<(), BenchError> {
        for child in &mut self.children {
            let Some(out) = child.stdout.as_mut() else {
                return Err(BenchError::Worker("a worker process has no stdout".into()));
            };
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)?;
            if line.trim() != READY {
                return Err(BenchError::Worker(
                    "a worker process did not start (its error is above)".into(),
                ));
            }
        }
        Ok(())
    }

    /// Tells every worker to go, looks (from this process alone) until
    /// the queue is drained, then tells them to stop and waits for them.
    /// Only this process looks (beside `kira serve` processes nothing
    /// would): four workers each reading the whole queue every 50 ms took
    /// a share of the database from the schedulers measured.
    async fn drain(mut self, store: &dyn Store) -> Result<(), BenchError> {
        let drained = match self.go() {
            Ok(()) => wait_until_drained(store).await.map_err(BenchError::from),
            Err(e) => Err(e),
        };
        // Closing a worker's stdin is its word to stop.
        for child in &mut self.children {
            drop(child.stdin.take());
        }
        if drained.is_err() {
            for child in &mut self.children {
                let _ = child.kill();
            }
        }
        let children = std::mem::take(&mut self.children);
        let exits = tokio::task::spawn_blocking(move || {
            children
                .into_iter()
                .map(std::process::Child::wait_with_output)
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| BenchError::Worker(format!("waiting for the workers: {e}")))??;
        drained?;
        if let Some(out) = exits.iter().find(|o| !o.status.success()) {
            return Err(BenchError::Worker(format!(
                "a worker process failed: {}",
                out.status
            )));
        }
        Ok(())
    }

    /// Tells every worker to start draining.
    fn go(&mut self) -> Result<(), BenchError> {
        for child in &mut self.children {
            let Some(stdin) = child.stdin.as_mut() else {
                return Err(BenchError::Worker("a worker process has no stdin".into()));
            };
            std::io::Write::write_all(stdin, format!("{GO}\n").as_bytes())?;
            std::io::Write::flush(stdin)?;
        }
        Ok(())
    }
}

fn print_report(
    report: &QueueReport,
    backend: &str,
    args: &QueueArgs,
    json: bool,
) -> Result<(), BenchError> {
    if json {
        let mut v = serde_json::to_value(report)?;
        v["backend"] = backend.into();
        v["processes"] = args.processes.into();
        v["overload"] = args.overload.into();
        print_json(&v)?;
        return Ok(());
    }
    println!(
        "queue benchmark: {backend}, {} process(es){}",
        args.processes,
        if args.overload { ", overload mix" } else { "" }
    );
    println!(
        "  tasks          {} ({} completed) in {:.2} s",
        report.tasks, report.completed, report.seconds
    );
    println!("  throughput     {:.0} tasks/s", report.tasks_per_second);
    if let Some(us) = report.cpu_us_per_task {
        #[allow(clippy::cast_precision_loss)]
        let per_task = |ms: f64| ms * 1000.0 / report.tasks as f64;
        let threads: Vec<String> = report
            .cpu_by_thread
            .iter()
            .map(|t| format!("{} {:.0}", t.name, per_task(t.ms)))
            .collect();
        println!(
            "  cpu            {us:.0} us/task (busiest threads, us/task: {})",
            threads.join(", ")
        );
    }
    println!(
        "  claim->finish  p50 {:.2} ms  p99 {:.2} ms",
        report.run.p50_ms, report.run.p99_ms
    );
    for (level, p) in &report.wait_by_priority {
        println!(
            "  wait {level:<9} p50 {:.0} ms  p99 {:.0} ms",
            p.p50_ms, p.p99_ms
        );
    }
    Ok(())
}

/// `kira bench queue-worker`: one worker process of a multi-process run;
/// drains the shared queue with the scheduler's loop from the word to go
/// (a line on stdin) until the word to stop (stdin closed). The process
/// that started it looks whether the queue is drained.
pub async fn worker(url: &str, overload: bool) -> Result<ExitCode, BenchError> {
    let store = crate::open(url).await?;
    let engine = engine(store.clone(), Arc::new(SystemClock), overload);
    println!("{READY}");
    let mut stdin = std::io::BufReader::new(std::io::stdin());
    let (word, stdin) = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdin, &mut line).map(|_| (line, stdin))
    })
    .await
    .map_err(|e| BenchError::Worker(format!("waiting for the word to go: {e}")))??;
    if word.trim() != GO {
        // The starting process went away before the word: nothing to do.
        return Ok(ExitCode::FAILURE);
    }
    let stopped = tokio::task::spawn_blocking(move || {
        let mut stdin = stdin;
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut stdin, &mut rest)
    });
    run_until(&engine, stopped)
        .await
        .map_err(|e| BenchError::Worker(format!("waiting for the word to stop: {e}")))??;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeDelta, TimeZone, Utc};

    /// The drain gives up once no task has finished for the stall time,
    /// and only then: any fall in the count starts the time again.
    #[test]
    fn a_drain_gives_up_when_nothing_finishes_for_the_stall_time() {
        let t0 = std::time::Instant::now();
        let at = |s: u64| t0 + std::time::Duration::from_secs(s);
        let stall = std::time::Duration::from_secs(60);
        let mut p = Progress::default();
        assert_eq!(p.look(10, at(0), stall), Ok(()));
        assert_eq!(p.look(10, at(59), stall), Ok(()));
        assert_eq!(p.look(9, at(70), stall), Ok(()), "one finished");
        assert_eq!(p.look(12, at(100), stall), Ok(()), "more submitted");
        assert_eq!(p.look(9, at(129), stall), Ok(()));
        let err = p.look(9, at(130), stall).expect_err("stalled");
        assert!(err.contains("9 tasks") && err.contains("60 s"), "{err}");
    }

    #[test]
    fn a_drain_ends_at_the_last_finish_recorded() {
        let start = Utc
            .with_ymd_and_hms(2026, 6, 1, 12, 0, 0)
            .single()
            .expect("time");
        let at = |ms| Some(start + TimeDelta::milliseconds(ms));
        let finishes = [at(1_500), None, at(2_250), at(10)];
        assert!((drained_in(finishes, start) - 2.25).abs() < 1e-9);
        assert_eq!(drained_in([None], start), 0.0, "nothing finished");
    }
}
