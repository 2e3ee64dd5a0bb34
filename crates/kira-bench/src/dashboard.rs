//! `kira bench dashboard`: what the dashboards and the alert evaluator
//! cost on a deployment with history. COMPANIES companies each run one
//! task a day for DAYS days (the simulated executor, the default
//! configuration's agents, metrics and alert rules, on an injected clock
//! that steps a day at a time, rolling up and pruning as `kira serve`
//! does), then, at the last day:
//!
//! - one alert evaluation over every company (timed in process: it is a
//!   background job, not a request);
//! - `GET /v1/companies/{id}/dashboard` (JSON) and the company's page
//!   `GET /ui/companies/{id}` (HTML, signed in with a session cookie),
//!   companies taken in turn;
//! - `GET /v1/dashboard`, the executive view across every company;
//!
//! all through the real HTTP API on loopback with an admin key. The exit
//! code says whether each company's dashboard counted exactly the runs it
//! was given.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DurationRound, TimeDelta};
use kira_core::auth::{Access, Principal};
use kira_core::clock::{Clock, ManualClock, SystemClock};
use kira_core::task::{Priority, TaskRequest};
use serde::Serialize;

use crate::queue::{bench_config, drain, record, seed};
use crate::report::{Percentiles, percentiles, print_json};
use crate::{BenchError, Scratch};

/// The agents a day's task goes to, in turn.
const AGENTS: [Option<&str>; 6] = [
    None,
    Some("legal"),
    Some("financial"),
    Some("technical"),
    Some("content"),
    Some("research"),
];

#[derive(Debug, clap::Args)]
pub struct DashboardArgs {
    /// An EMPTY database to run in (postgres://...); default: a new SQLite file.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Companies, each with one task a day.
    #[arg(long, default_value_t = 1000)]
    pub companies: usize,
    /// Days of history.
    #[arg(long, default_value_t = 90)]
    pub days: usize,
    /// Timed reads of each kind (and alert evaluations).
    #[arg(long, default_value_t = 100)]
    pub reads: usize,
}

#[derive(Debug, Serialize)]
pub struct DashboardReport {
    pub companies: usize,
    pub days: usize,
    pub tasks: usize,
    /// Seconds to run every day's tasks, roll up and prune.
    pub seed_seconds: f64,
    /// One alert evaluation over every company, in process.
    pub alert_evaluation: Percentiles,
    /// The first of them alone.
    pub first_evaluation_ms: f64,
    /// The scheduled verifications over this history, each timed once in
    /// process after the evaluations (a job of its own: no evaluation
    /// runs one): `audit_full` is `kira audit verify` (the whole chain),
    /// `audit_scheduled_first` the job's first audit check (no checkpoint
    /// yet: the whole chain too), `audit_scheduled_next` its next (what
    /// was appended since, and the sweep's slice), `ledger` `kira budget
    /// verify`'s replay.
    pub verifications_ms: std::collections::BTreeMap<String, f64>,
    /// `GET /v1/companies/{id}/dashboard`.
    pub company_json: Percentiles,
    /// `GET /ui/companies/{id}` with a session cookie.
    pub company_page: Percentiles,
    /// `GET /v1/dashboard`.
    pub executive_json: Percentiles,
    /// Companies whose dashboard counted other than the runs of its
    /// overview window (should be 0).
    pub miscounted: usize,
}

pub async fn command(args: DashboardArgs, json: bool) -> Result<ExitCode, BenchError> {
    if args.companies == 0 || args.reads == 0 || args.days == 0 {
        return Err(BenchError::Invalid(
            "--companies, --days and --reads must be at least 1".into(),
        ));
    }
    let db = Scratch::new(args.database_url.as_deref(), "kira-bench-dashboard")?;
    let store = db.open().await?;
    let report = run(store, args.companies, args.days, args.reads).await?;
    if json {
        print_json(&serde_json::to_value(&report)?)?;
    } else {
        let line = |what: &str, p: &Percentiles| {
            format!("{what}: p50 {:.1} ms, p99 {:.1} ms", p.p50_ms, p.p99_ms)
        };
        let evaluation = format!(
            "{} (the first {:.1} ms)",
            line("one alert evaluation", &report.alert_evaluation),
            report.first_evaluation_ms
        );
        println!(
            "{} companies x {} days = {} tasks (run, rolled up and pruned in {:.1} s)\n{}\n{}\n{}\n{}",
            report.companies,
            report.days,
            report.tasks,
            report.seed_seconds,
            evaluation,
            line("GET /v1/companies/ID/dashboard", &report.company_json),
            line("GET /ui/companies/ID (page)", &report.company_page),
            line("GET /v1/dashboard (executive)", &report.executive_json),
        );
        let verified: Vec<String> = report
            .verifications_ms
            .iter()
            .map(|(k, v)| format!("{k} {v:.1}"))
            .collect();
        println!(
            "scheduled verifications (ms, once each): {}",
            verified.join(", ")
        );
        if report.miscounted > 0 {
            println!(
                "{} companies' dashboards miscounted their runs",
                report.miscounted
            );
        }
    }
    db.remove();
    Ok(if report.miscounted == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs the benchmark in `store` (empty).
pub async fn run(
    store: Arc<dyn kira_store::Store>,
    companies: usize,
    days: usize,
    reads: usize,
) -> Result<DashboardReport, BenchError> {
    let today = SystemClock
        .now()
        .duration_trunc(TimeDelta::days(1))
        .map_err(|e| BenchError::during("today", e))?;
    // Each day's tasks run at noon, the last day's today.
    let noon = |d: usize| today - TimeDelta::days((days - 1 - d) as i64) + TimeDelta::hours(12);
    let clock = Arc::new(ManualClock::new(noon(0)));
    let engine = kira_engine::Engine::with_executor(
        store.clone(),
        clock.clone() as Arc<dyn Clock>,
        bench_config(false),
        Arc::new(kira_engine::executor::Simulated::new(Default::default())),
    );
    eprintln!("running {companies} companies x {days} days ...");
    let started = Instant::now();
    let ids = seed(&engine, store.as_ref(), companies, 0, false).await?;
    let system = Principal::system();
    for d in 0..days {
        clock.set(noon(d));
        for (i, company) in ids.iter().enumerate() {
            let scope = system.scope(company, Access::Write)?;
            let req = TaskRequest {
                task: format!("dashboard benchmark task {i} on day {d}"),
                task_type: "quick_question_answer".into(),
                priority: Priority::ALL[(i + d) % 5],
                deadline: None,
                parameters: None,
                specialist: AGENTS[(i + d) % AGENTS.len()].map(str::to_owned),
            };
            engine
                .tasks()
                .submit(&scope, &req, None, record(company, "task.submit"))
                .await?;
        }
        drain(&engine, store.as_ref()).await?;
        engine.metrics().roll_up().await?;
        engine.metrics().prune().await?;
        if d % 10 == 9 {
            eprintln!("  day {} of {days}", d + 1);
        }
    }
    let seed_seconds = started.elapsed().as_secs_f64();

    let mut evaluations = Vec::with_capacity(reads);
    for _ in 0..reads {
        let t = Instant::now();
        engine
            .alerts()
            .evaluate()
            .await?
            .ok_or_else(|| BenchError::Invalid("the alert evaluator's lock is held".into()))?;
        evaluations.push(t.elapsed().as_secs_f64() * 1_000.0);
    }

    let first_evaluation_ms = evaluations[0];
    let verifications_ms =
        verifications(store.as_ref(), engine.config().alerts.audit_sweep).await?;

    let (base, token, server) =
        crate::metrics::serve(&engine, store.as_ref(), clock.as_ref()).await?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| BenchError::during("HTTP client", e))?;
    let cookie = sign_in(&http, &base, &token).await?;
    let get = |path: String, auth: Auth<'_>| {
        let req = http.get(format!("{base}{path}"));
        let req = match auth {
            Auth::Key(k) => req.bearer_auth(k),
            Auth::Cookie(c) => req.header(reqwest::header::COOKIE, c),
        };
        crate::metrics::timed(req, path)
    };
    // Each company's overview covers the last OVERVIEW_DAYS days: one run a
    // day of those it has history for.
    let expected = days.min(kira_engine::dashboard::OVERVIEW_DAYS as usize) as i64;
    let (mut json_ms, mut page_ms, mut exec_ms) = (Vec::new(), Vec::new(), Vec::new());
    let mut miscounted = 0;
    for i in 0..reads {
        let company = &ids[(i * 7919) % ids.len()];
        let (ms, body) = get(
            format!("/v1/companies/{company}/dashboard"),
            Auth::Key(&token),
        )
        .await?;
        json_ms.push(ms);
        let v: serde_json::Value = serde_json::from_str(&body)?;
        if v["overview"]["total_tasks"].as_i64() != Some(expected) {
            miscounted += 1;
        }
        let (ms, _) = get(format!("/ui/companies/{company}"), Auth::Cookie(&cookie)).await?;
        page_ms.push(ms);
        let (ms, _) = get("/v1/dashboard".into(), Auth::Key(&token)).await?;
        exec_ms.push(ms);
    }
    server.abort();
    Ok(DashboardReport {
        companies,
        days,
        tasks: companies * days,
        seed_seconds,
        alert_evaluation: percentiles(evaluations),
        first_evaluation_ms,
        verifications_ms,
        company_json: percentiles(json_ms),
        company_page: percentiles(page_ms),
        executive_json: percentiles(exec_ms),
        miscounted,
    })
}

/// Each scheduled verification timed once (see
/// [`DashboardReport::verifications_ms`]).
async fn verifications(
    store: &dyn kira_store::Store,
    sweep: i64,
) -> Result<std::collections::BTreeMap<String, f64>, BenchError> {
    let admin = Principal::system().admin()?;
    let audit = || kira_core::audit::AuditRecord {
        at: chrono::DateTime::UNIX_EPOCH,
        request_id: String::new(),
        actor: "system".into(),
        company_id: None,
        action: "audit.verify".into(),
        target: "audit".into(),
        outcome: kira_core::audit::Outcome::Ok,
        detail: "bench".into(),
    };
    let mut out = std::collections::BTreeMap::new();
    let t = Instant::now();
    store.verify_audit(&admin, audit()).await?;
    out.insert("audit_full".to_owned(), t.elapsed().as_secs_f64() * 1_000.0);
    for name in ["audit_scheduled_first", "audit_scheduled_next"] {
        let t = Instant::now();
        store.verify_audit_scheduled(&admin, sweep, audit()).await?;
        out.insert(name.to_owned(), t.elapsed().as_secs_f64() * 1_000.0);
    }
    let t = Instant::now();
    store.verify_ledger(&admin).await?;
    out.insert("ledger".to_owned(), t.elapsed().as_secs_f64() * 1_000.0);
    Ok(out)
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    Key(&'a str),
    Cookie(&'a str),
}

/// Signs in to the dashboards with `key`; the session cookie to send.
async fn sign_in(http: &reqwest::Client, base: &str, key: &str) -> Result<String, BenchError> {
    let res = http
        .post(format!("{base}/ui/login"))
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(
            serde_urlencoded::to_string([("key", key)])
                .map_err(|e| BenchError::during("sign-in form", e))?,
        )
        .send()
        .await
        .map_err(|e| BenchError::during("sign-in", e))?;
    let cookie = res
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    cookie.ok_or_else(|| {
        BenchError::Invalid(format!(
            "signing in to the dashboards gave {} and no session cookie",
            res.status()
        ))
    })
}
