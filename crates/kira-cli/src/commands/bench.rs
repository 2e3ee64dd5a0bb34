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
        BenchCommand::LocalModel { tokens, runs } => local_model(tokens, runs, json).await,
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
    if !(1..=10_000).contains(&args.slots) {
        bail!("--slots must be 1 to 10000");
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
        "agents benchmark: {backend}, {} tasks across {} companies, provider latency {} ms, {} runs at once per agent ...",
        args.tasks, args.companies, args.latency_ms, args.slots
    );
    let r = kira_engine::agentbench::run(
        store,
        Arc::new(SystemClock),
        args.companies,
        args.tasks,
        std::time::Duration::from_millis(args.latency_ms),
        args.slots,
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
    Ok(if r.completed == r.tasks {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Times the local model: loading it, a prompt alone (one output token)
/// and the same prompt with `tokens` out; generation speed is the extra
/// tokens over the extra time.
async fn local_model(tokens: u32, runs: u32, json: bool) -> anyhow::Result<ExitCode> {
    use kira_llm::{ChatRequest, LocalProvider, Message, Provider};
    if tokens < 2 || runs == 0 {
        bail!("--tokens must be at least 2 and --runs at least 1");
    }
    let path = kira_llm::local::model_path(&kira_embed::models_dir());
    let t0 = Instant::now();
    let model = LocalProvider::load(&path)?;
    let load = t0.elapsed().as_secs_f64();
    // A prompt of the size an agent's first call has on the local model.
    let context = "The board approved the 2027 budget of 4 million dollars. \
                   The Initech contract renews on 1 March 2027. "
        .repeat(12);
    let req = |max| {
        ChatRequest::new(
            kira_llm::local::LOCAL_MODEL,
            vec![
                Message::system("You are the company's primary agent. Answer briefly."),
                Message::user(format!(
                    "{context}\nWrite a long, detailed report on the budget and the contract."
                )),
            ],
            max,
        )
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mut prompt_s, mut full_s, mut prompt_tokens, mut out_tokens) = (vec![], vec![], 0, 0);
    for _ in 0..runs {
        let a = model.chat(&req(1)).await?;
        prompt_s.push(a.latency.as_secs_f64());
        prompt_tokens = a.usage.prompt_tokens;
        let b = model.chat(&req(tokens)).await?;
        full_s.push(b.latency.as_secs_f64());
        out_tokens = b.usage.completion_tokens;
    }
    let (p, f) = (median(prompt_s), median(full_s));
    let prompt_tps = f64::from(prompt_tokens) / p;
    let gen_tps = if f > p && out_tokens > 1 {
        f64::from(out_tokens - 1) / (f - p)
    } else {
        0.0
    };
    let r = serde_json::json!({
        "model": kira_llm::local::LOCAL_MODEL,
        "load_seconds": load,
        "prompt_tokens": prompt_tokens,
        "prompt_tokens_per_second": prompt_tps,
        "generated_tokens": out_tokens,
        "generation_tokens_per_second": gen_tps,
        "runs": runs,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("local model: {}", kira_llm::local::LOCAL_MODEL);
        println!("  load             {load:.2} s");
        println!(
            "  prompt           {prompt_tokens} tokens at {prompt_tps:.0} tokens/s (median of {runs})"
        );
        println!("  generation       {out_tokens} tokens at {gen_tps:.1} tokens/s");
    }
    Ok(ExitCode::SUCCESS)
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
