//! `kira bench`: end-to-end figures measured on this machine, through the
//! real store. With `--processes N` (PostgreSQL), N worker processes share
//! one database, as several `kira serve` would.

use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use kira_core::clock::SystemClock;
use kira_engine::bench;
use kira_store::{Store, StoreConfig};

use crate::cli::{BenchAgentsArgs, BenchCommand, BenchQueueArgs};

pub async fn run(cmd: BenchCommand, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::Queue(args) => queue(args, json).await,
        BenchCommand::Agents(args) => agents(args, json).await,
        BenchCommand::Memory(args) => super::bench_memory::run(args, json).await,
        BenchCommand::MemoryScale(args) => super::bench_memory::scale(args, json).await,
        BenchCommand::Longmemeval(args) => super::bench_memory::longmemeval(args, json).await,
        BenchCommand::QueueWorker {
            database_url,
            overload,
        } => worker(&database_url, overload).await,
    }
}

async fn open(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    kira_store::open(&StoreConfig {
        database_url: url.to_owned(),
        app_database_url: None,
    })
    .await
    .with_context(|| format!("opening {}", crate::config::redact_url(url)))
}

async fn agents(args: BenchAgentsArgs, json: bool) -> anyhow::Result<ExitCode> {
    if args.tasks == 0 || args.companies == 0 {
        bail!("--tasks and --companies must be at least 1");
    }
    let temp = std::env::temp_dir().join(format!("kira-bench-{}", uuid::Uuid::now_v7().simple()));
    let url = match &args.database_url {
        Some(u) => u.clone(),
        None => {
            std::fs::create_dir_all(&temp)?;
            format!("sqlite://{}", temp.join("bench.db").display())
        }
    };
    let store = open(&url).await?;
    let backend = if url.starts_with("postgres") {
        "postgresql"
    } else {
        "sqlite"
    };
    eprintln!(
        "agents benchmark: {backend}, {} tasks across {} companies, provider latency {} ms ...",
        args.tasks, args.companies, args.latency_ms
    );
    let r = kira_engine::agentbench::run(
        store,
        Arc::new(SystemClock),
        args.companies,
        args.tasks,
        std::time::Duration::from_millis(args.latency_ms),
    )
    .await?;
    let _ = std::fs::remove_dir_all(&temp);
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
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
            "  response time    p50 {:.1} ms, p99 {:.1} ms (submitted to finished)",
            r.response.p50_ms, r.response.p99_ms
        );
        println!("  within 30 s SLA  {:.1} %", r.within_sla * 100.0);
    }
    Ok(if r.completed == r.tasks {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn queue(args: BenchQueueArgs, json: bool) -> anyhow::Result<ExitCode> {
    if args.tasks == 0 || args.companies == 0 || args.processes == 0 {
        bail!("--tasks, --companies and --processes must be at least 1");
    }
    let temp = std::env::temp_dir().join(format!("kira-bench-{}", uuid::Uuid::now_v7().simple()));
    let url = match &args.database_url {
        Some(u) => u.clone(),
        None => {
            std::fs::create_dir_all(&temp)?;
            format!("sqlite://{}", temp.join("bench.db").display())
        }
    };
    let postgres = url.starts_with("postgres");
    if args.processes > 1 && !postgres {
        bail!(
            "--processes above 1 needs --database-url postgres://... (SQLite serves one process)"
        );
    }
    let store = open(&url).await?;
    let engine = bench::engine(store, Arc::new(SystemClock), args.overload);
    eprintln!(
        "seeding {} companies and {} tasks ...",
        args.companies, args.tasks
    );
    let companies = bench::seed(&engine, args.companies, args.tasks, args.overload)
        .await
        .context("seeding (the database must be empty)")?;
    eprintln!("running with {} process(es) ...", args.processes);
    let start = Instant::now();
    let claims = if args.processes == 1 {
        bench::drain(&engine).await?
    } else {
        let exe = std::env::current_exe()?;
        let children: Vec<_> = (0..args.processes)
            .map(|_| {
                let mut c = std::process::Command::new(&exe);
                c.args(["bench", "queue-worker", "--database-url", &url]);
                if args.overload {
                    c.arg("--overload");
                }
                c.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()
            })
            .collect::<Result<_, _>>()?;
        let mut claims = Vec::new();
        for child in children {
            let out = child.wait_with_output()?;
            if !out.status.success() {
                bail!("a worker process failed: {}", out.status);
            }
            let mine: Vec<u64> =
                serde_json::from_slice(&out.stdout).context("reading a worker's timings")?;
            claims.extend(mine);
        }
        claims
    };
    let seconds = start.elapsed().as_secs_f64();
    let report = bench::report(&engine, &companies, args.tasks, seconds, claims).await?;
    if args.database_url.is_none() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    let backend = if postgres { "postgres" } else { "sqlite" };
    if json {
        let mut v = serde_json::to_value(&report)?;
        v["backend"] = backend.into();
        v["processes"] = args.processes.into();
        v["overload"] = args.overload.into();
        crate::output::print_json(&v)?;
    } else {
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
        println!(
            "  claim          p50 {:.2} ms  p99 {:.2} ms",
            report.claim.p50_ms, report.claim.p99_ms
        );
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
    }
    Ok(if report.completed == report.tasks {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn worker(url: &str, overload: bool) -> anyhow::Result<ExitCode> {
    let store = open(url).await?;
    let engine = bench::engine(store, Arc::new(SystemClock), overload);
    let claims = bench::drain(&engine).await?;
    println!("{}", serde_json::to_string(&claims)?);
    Ok(ExitCode::SUCCESS)
}
