//! `kira bench metrics`: what a Prometheus scrape and a company's metrics
//! cost as deployments grow. COMPANIES companies each run a task on each
//! of the six agents (the simulated executor, the default configuration's
//! agents and metrics), the series are rolled up, then `GET /metrics` (an
//! admin key) and `GET /v1/companies/{id}/metrics` (the last 7 days in
//! hours) are timed through the real HTTP API on loopback, as a scraper
//! and a dashboard would call them.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use kira_core::auth::{Access, Principal};
use kira_core::clock::{Clock, SystemClock};
use kira_core::task::{Priority, TaskRequest};
use serde::Serialize;

use crate::queue::{bench_config, drain, record, seed};
use crate::report::{Percentiles, percentiles, print_json};
use crate::{BenchError, Scratch};

/// The agents a task is given to, one task each per company.
const AGENTS: [Option<&str>; 6] = [
    None,
    Some("legal"),
    Some("financial"),
    Some("technical"),
    Some("content"),
    Some("research"),
];

#[derive(Debug, clap::Args)]
pub struct MetricsArgs {
    /// An EMPTY database to run in (postgres://...); default: a new SQLite file.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Companies, each with one task per agent.
    #[arg(long, default_value_t = 1000)]
    pub companies: usize,
    /// Scrapes (and company reads) timed.
    #[arg(long, default_value_t = 100)]
    pub scrapes: usize,
}

#[derive(Debug, Serialize)]
pub struct MetricsReport {
    pub companies: usize,
    pub tasks: usize,
    /// Seconds to run every task and roll its metrics up.
    pub seed_seconds: f64,
    /// `GET /metrics`, end to end over HTTP.
    pub scrape: Percentiles,
    /// Bytes and lines of one exposition.
    pub exposition_bytes: usize,
    pub exposition_lines: usize,
    /// `GET /v1/companies/{id}/metrics?step=3600` over the last 7 days.
    pub company_week: Percentiles,
    /// Runs the last exposition counts as completed (should be `tasks`).
    pub completed_in_exposition: u64,
    /// Where a scrape's time goes: the median milliseconds of each of its
    /// parts, called one at a time in process.
    pub breakdown: std::collections::BTreeMap<String, f64>,
}

/// The sum of `kira_tasks_ended_total` samples of completed runs.
fn completed(exposition: &str) -> u64 {
    exposition
        .lines()
        .filter(|l| l.starts_with("kira_tasks_ended_total{") && l.contains("outcome=\"completed\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

pub async fn command(args: MetricsArgs, json: bool) -> Result<ExitCode, BenchError> {
    if args.companies == 0 || args.scrapes == 0 {
        return Err(BenchError::Invalid(
            "--companies and --scrapes must be at least 1".into(),
        ));
    }
    let db = Scratch::new(args.database_url.as_deref(), "kira-bench-metrics")?;
    let store = db.open().await?;
    let report = run(store, args.companies, args.scrapes).await?;
    if json {
        print_json(&serde_json::to_value(&report)?)?;
    } else {
        println!(
            "{} companies, {} tasks (run and rolled up in {:.1} s)\n\
             GET /metrics: p50 {:.1} ms, p99 {:.1} ms ({} lines, {} bytes)\n\
             GET /v1/companies/ID/metrics (7 days in hours): p50 {:.1} ms, p99 {:.1} ms",
            report.companies,
            report.tasks,
            report.seed_seconds,
            report.scrape.p50_ms,
            report.scrape.p99_ms,
            report.exposition_lines,
            report.exposition_bytes,
            report.company_week.p50_ms,
            report.company_week.p99_ms,
        );
        let parts: Vec<String> = report
            .breakdown
            .iter()
            .map(|(k, v)| format!("{k} {v:.1}"))
            .collect();
        println!("a scrape's parts (median ms): {}", parts.join(", "));
    }
    db.remove();
    let ok = report.completed_in_exposition == report.tasks as u64;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs the benchmark in `store` (empty): `companies` companies, a task
/// per agent each, then `scrapes` timed reads of each kind.
pub async fn run(
    store: Arc<dyn kira_store::Store>,
    companies: usize,
    scrapes: usize,
) -> Result<MetricsReport, BenchError> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let engine = kira_engine::Engine::with_executor(
        store.clone(),
        clock.clone(),
        bench_config(false),
        Arc::new(kira_engine::executor::Simulated::new(Default::default())),
    );
    eprintln!(
        "running {} tasks of {} companies ...",
        companies * AGENTS.len(),
        companies
    );
    let started = Instant::now();
    let ids = seed(&engine, store.as_ref(), companies, 0, false).await?;
    let system = Principal::system();
    for (i, company) in ids.iter().enumerate() {
        let scope = system.scope(company, Access::Write)?;
        for (a, specialist) in AGENTS.iter().enumerate() {
            let req = TaskRequest {
                task: format!("metrics benchmark task {i}.{a}"),
                task_type: "quick_question_answer".into(),
                priority: Priority::ALL[(i + a) % 5],
                deadline: None,
                parameters: None,
                specialist: specialist.map(str::to_owned),
            };
            engine
                .tasks()
                .submit(&scope, &req, None, record(company, "task.submit"))
                .await?;
        }
    }
    drain(&engine, store.as_ref()).await?;
    engine.metrics().roll_up().await?;
    let seed_seconds = started.elapsed().as_secs_f64();

    let (base, token, server) = serve(&engine, store.as_ref(), clock.as_ref()).await?;
    let http = reqwest::Client::new();
    let get = |path: String| timed(http.get(format!("{base}{path}")).bearer_auth(&token), path);
    let (mut scrape_ms, mut week_ms) = (Vec::new(), Vec::new());
    let (mut bytes, mut lines, mut last_completed) = (0, 0, 0);
    for i in 0..scrapes {
        let (ms, body) = get("/metrics".into()).await?;
        scrape_ms.push(ms);
        (bytes, lines) = (body.len(), body.lines().count());
        last_completed = completed(&body);
        let company = &ids[i % ids.len()];
        let (ms, _) = get(format!(
            "/v1/companies/{company}/metrics?step=3600&from={}",
            (clock.now() - chrono::TimeDelta::days(7))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ))
        .await?;
        week_ms.push(ms);
    }
    server.abort();
    let breakdown = breakdown(&engine, store.as_ref(), scrapes.min(20)).await?;
    Ok(MetricsReport {
        companies,
        tasks: companies * AGENTS.len(),
        seed_seconds,
        scrape: percentiles(scrape_ms),
        exposition_bytes: bytes,
        exposition_lines: lines,
        company_week: percentiles(week_ms),
        completed_in_exposition: last_completed,
        breakdown,
    })
}

/// Serves `engine` on a loopback port with kira's router, as `kira serve`
/// does, after making the database's first admin key: the base URL, the
/// key and the server's task (abort it when done).
pub(crate) async fn serve(
    engine: &kira_engine::Engine,
    store: &dyn kira_store::Store,
    clock: &dyn Clock,
) -> Result<(String, String, tokio::task::JoinHandle<std::io::Result<()>>), BenchError> {
    let token = kira_engine::keys::bootstrap_admin_key(store, clock)
        .await?
        .ok_or_else(|| {
            BenchError::Invalid("the database already has keys: give an empty one".into())
        })?
        .token;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = kira_server::router(engine.clone(), kira_server::ServerConfig::default())
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((base, token, server))
}

/// Sends `req` (for `path`); the milliseconds to its whole body, and the
/// body. A status other than success is an error naming the path.
pub(crate) async fn timed(
    req: reqwest::RequestBuilder,
    path: String,
) -> Result<(f64, String), BenchError> {
    let t = Instant::now();
    let res = req
        .send()
        .await
        .map_err(|e| BenchError::during("request", e))?;
    let status = res.status();
    let body = res
        .text()
        .await
        .map_err(|e| BenchError::during("body", e))?;
    if !status.is_success() {
        return Err(BenchError::Invalid(format!("{path}: {status}: {body}")));
    }
    Ok((t.elapsed().as_secs_f64() * 1_000.0, body))
}

/// The median time of each part of a scrape, `n` calls each.
async fn breakdown(
    engine: &kira_engine::Engine,
    store: &dyn kira_store::Store,
    n: usize,
) -> Result<std::collections::BTreeMap<String, f64>, BenchError> {
    let admin = Principal::system().admin()?;
    let scraper = Principal::system().metrics()?;
    let now = engine.clock().now();
    let mut parts = std::collections::BTreeMap::new();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    macro_rules! time {
        ($name:expr, $call:expr) => {{
            let mut ms = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                let _ = $call;
                ms.push(t.elapsed().as_secs_f64() * 1_000.0);
            }
            parts.insert($name.to_owned(), median(ms));
        }};
    }
    time!("roll_up", engine.metrics().roll_up().await?);
    time!("totals", store.metric_totals(&admin).await?);
    time!(
        "budget_state",
        store
            .budget_state(&admin, &engine.config().budget, now)
            .await?
    );
    time!("company_directory", store.company_directory(&admin).await?);
    time!("waiting_work", store.waiting_work(&admin).await?);
    time!("scrape", engine.metrics().scrape(&scraper).await?);
    let process = kira_server::prom::ProcessMetrics::default();
    let mut ms = Vec::with_capacity(n);
    for _ in 0..n {
        let scrape = engine.metrics().scrape(&scraper).await?;
        let t = Instant::now();
        let text = kira_server::prom::render(&process, scrape)
            .map_err(|e| BenchError::during("render", e))?;
        ms.push(t.elapsed().as_secs_f64() * 1_000.0);
        std::hint::black_box(text);
    }
    parts.insert("render".to_owned(), median(ms));
    Ok(parts)
}
