//! `kira bench tools`: what the company wrapper adds to a tool call, next
//! to a direct call (rmcp's `tools/call` on the same supervised stdio MCP
//! server, which is all the wrapper's MCP path does besides its checks and
//! handing its audit entry to the writer, whose commit the benchmark lets
//! finish, untimed, before the next call); then calls per second from many
//! concurrent callers of one company until every call's audit entry is
//! written, and what the rate limit does to them.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use kira_core::CompanyId;
use kira_core::auth::Principal;
use kira_core::clock::SystemClock;
use kira_core::company::NewCompany;
use kira_core::tools::NewTool;
use kira_engine::tools::CallContext;
use kira_engine::{Engine, EngineConfig};
use kira_store::tools::ToolWriter;
use serde::Serialize;
use serde_json::{Value, json};

use crate::memory::{record, scope};
use crate::report::{Percentiles, micros, ms, print_json};
use crate::{BenchError, Scratch};

#[derive(Debug, Args)]
pub struct ToolsArgs {
    /// The MCP server's command (e.g. the path of `mcp-server-everything`).
    #[arg(long)]
    pub command: String,
    /// An argument of the command (repeatable).
    #[arg(long = "arg", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// The server's tool to call.
    #[arg(long, default_value = "echo")]
    pub tool: String,
    /// Its arguments (JSON).
    #[arg(long, default_value = r#"{"message": "hello"}"#)]
    pub arguments: String,
    /// Timed calls of each kind (direct, wrapped), alternated.
    #[arg(long, default_value_t = 1_000)]
    pub calls: usize,
    /// Concurrent callers in the throughput run.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    /// Calls in the throughput run.
    #[arg(long, default_value_t = 2_000)]
    pub throughput_calls: usize,
    /// The company's calls a minute in the throughput run.
    #[arg(long, default_value_t = 1_000)]
    pub rate_limit: u32,
    /// PostgreSQL or SQLite URL; default a new SQLite file.
    #[arg(long)]
    pub database_url: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ToolsReport {
    pub calls: usize,
    pub direct: Percentiles,
    pub wrapped: Percentiles,
    /// Wrapped minus direct, at each percentile: the difference of two
    /// tails, so its p99 carries both calls' noise.
    pub overhead_p50_ms: f64,
    pub overhead_p99_ms: f64,
    /// The wrapper's own time in each wrapped call, timed inside it (the
    /// call less its wait on the server: [`CallResult::wrapper_us`]).
    ///
    /// [`CallResult::wrapper_us`]: kira_engine::tools::CallResult::wrapper_us
    pub wrapper_own: Percentiles,
    pub concurrency: usize,
    pub throughput_calls: usize,
    pub calls_per_second: f64,
    pub rate_limit_per_minute: u32,
    pub refused_by_rate_limit: usize,
    pub ok: usize,
    pub refused_latency: Percentiles,
    /// After the last call returned, until every call's audit entry was
    /// written (a call returns once its entry is handed to the writer;
    /// the calls per second include this wait).
    pub audit_wait_ms: f64,
}

pub async fn command(args: ToolsArgs, json: bool) -> Result<ExitCode, BenchError> {
    if args.calls == 0 || args.concurrency == 0 || args.throughput_calls == 0 {
        return Err(BenchError::Invalid(
            "--calls, --concurrency and --throughput-calls must be at least 1".into(),
        ));
    }
    let arguments: Value = serde_json::from_str(&args.arguments)
        .map_err(|e| BenchError::Invalid(format!("--arguments: {e}")))?;
    let db = Scratch::new(args.database_url.as_deref(), "kira-bench-tools")?;
    let store = db.open().await?;
    let mut cfg = EngineConfig::default();
    cfg.tools.calls_per_minute = args.rate_limit;
    let engine = Engine::new(store.clone(), Arc::new(SystemClock), cfg);
    let report = run(&engine, &store, &args, &arguments).await;
    engine.tools().stop().await;
    let report = report?;
    if json {
        print_json(&serde_json::to_value(&report)?)?;
    } else {
        println!(
            "{} calls of each kind to {}:\n  direct (rmcp): p50 {:.3} ms, p99 {:.3} ms\n  \
             through the wrapper: p50 {:.3} ms, p99 {:.3} ms\n  added (wrapped - direct): p50 {:.3} ms, p99 {:.3} ms\n  \
             the wrapper's own time, timed inside each call: p50 {:.3} ms, p99 {:.3} ms\n\
             {} callers, {} calls: {:.0} calls/s (the last audit entries written {:.3} ms after the last call); \
             rate limit {}/min: {} ok, {} refused (p99 {:.3} ms)",
            report.calls,
            args.tool,
            report.direct.p50_ms,
            report.direct.p99_ms,
            report.wrapped.p50_ms,
            report.wrapped.p99_ms,
            report.overhead_p50_ms,
            report.overhead_p99_ms,
            report.wrapper_own.p50_ms,
            report.wrapper_own.p99_ms,
            report.concurrency,
            report.throughput_calls,
            report.calls_per_second,
            report.audit_wait_ms,
            report.rate_limit_per_minute,
            report.ok,
            report.refused_by_rate_limit,
            report.refused_latency.p99_ms,
        );
    }
    db.remove();
    Ok(ExitCode::SUCCESS)
}

async fn run(
    engine: &Engine,
    store: &Arc<dyn kira_store::Store>,
    args: &ToolsArgs,
    arguments: &Value,
) -> Result<ToolsReport, BenchError> {
    let id = CompanyId::parse("bench")?;
    let (id, profile) = serde_json::from_value::<NewCompany>(json!({
        "id": id.as_str(), "name": "bench", "industry": "research", "jurisdiction": "US"
    }))?
    .validate()?;
    let sc = scope(&id);
    store
        .create_company(
            &sc,
            &profile,
            engine.clock().now(),
            record(&id, "bench.company"),
        )
        .await?;
    let admin = Principal::system().admin()?;
    let new: NewTool = serde_json::from_value(json!({
        "name": "srv", "layer": "company", "company": id.as_str(),
        "source": {"kind": "mcp_stdio", "command": args.command, "args": args.args},
    }))?;
    engine
        .tools()
        .add(ToolWriter::Admin(&admin), new, record(&id, "bench.tool"))
        .await?;
    let offer = engine.tools().offer(&sc, &[]).await?;
    let name = format!("srv.{}", args.tool);
    if !offer.names().contains(&name) {
        return Err(BenchError::Invalid(format!(
            "the server offers no tool '{}' (it offers {:?})",
            args.tool,
            offer.names()
        )));
    }
    let server = engine
        .tools()
        .servers()
        .into_iter()
        .map(|(_, s)| s)
        .next()
        .ok_or_else(|| BenchError::Invalid("the server did not start".into()))?;
    let cx = CallContext {
        scope: &sc,
        actor: "bench",
        request_id: "bench",
        tokens_left: None,
    };
    // Warm both paths up, then alternate them so drift hits both alike.
    for _ in 0..20 {
        let _ = server
            .call(&args.tool, arguments, Duration::from_secs(30))
            .await;
        let _ = engine.tools().call(&offer, &cx, &name, arguments).await;
    }
    let (mut direct, mut wrapped, mut own) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.calls {
        let t = Instant::now();
        server
            .call(&args.tool, arguments, Duration::from_secs(30))
            .await
            .map_err(|e| BenchError::during("a direct call", e))?;
        direct.push(micros(t.elapsed()));
        let t = Instant::now();
        let r = engine.tools().call(&offer, &cx, &name, arguments).await;
        wrapped.push(micros(t.elapsed()));
        own.push(r.wrapper_us);
        if r.outcome != "ok" {
            return Err(BenchError::Invalid(format!(
                "a wrapped call failed: {}",
                r.content
            )));
        }
        // Untimed: the call's audit entry is written before the next call,
        // as a run's next model call leaves it time to be, so its commit
        // does not run inside the next timed call (direct or wrapped).
        offer
            .unwritten()
            .written()
            .await
            .map_err(BenchError::Invalid)?;
    }
    let (d, w) = (ms(&direct), ms(&wrapped));

    // Many callers of one company at once, against its rate limit.
    let offer = Arc::new(offer);
    let per = args.throughput_calls.div_ceil(args.concurrency);
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..args.concurrency {
        let engine = engine.clone();
        let offer = offer.clone();
        let sc = sc.clone();
        let name = name.clone();
        let arguments = arguments.clone();
        handles.push(tokio::spawn(async move {
            let cx = CallContext {
                scope: &sc,
                actor: "bench",
                request_id: "bench",
                tokens_left: None,
            };
            let mut out = Vec::with_capacity(per);
            for _ in 0..per {
                let t = Instant::now();
                let r = engine.tools().call(&offer, &cx, &name, &arguments).await;
                out.push((r.outcome, micros(t.elapsed())));
            }
            out
        }));
    }
    let mut outcomes = Vec::new();
    for h in handles {
        outcomes.extend(h.await.map_err(|e| BenchError::during("a caller", e))?);
    }
    // As a run's end would: every call's audit entry written.
    let flush = Instant::now();
    offer
        .unwritten()
        .written()
        .await
        .map_err(BenchError::Invalid)?;
    let audit_wait_ms = flush.elapsed().as_secs_f64() * 1_000.0;
    let secs = t0.elapsed().as_secs_f64();
    let refused: Vec<u64> = outcomes
        .iter()
        .filter(|(o, _)| o == "refused")
        .map(|(_, us)| *us)
        .collect();
    let ok = outcomes.iter().filter(|(o, _)| o == "ok").count();
    #[allow(clippy::cast_precision_loss)]
    let rate = outcomes.len() as f64 / secs.max(1e-9);
    Ok(ToolsReport {
        calls: args.calls,
        overhead_p50_ms: w.p50_ms - d.p50_ms,
        overhead_p99_ms: w.p99_ms - d.p99_ms,
        wrapper_own: ms(&own),
        direct: d,
        wrapped: w,
        concurrency: args.concurrency,
        throughput_calls: outcomes.len(),
        calls_per_second: rate,
        rate_limit_per_minute: args.rate_limit,
        refused_by_rate_limit: refused.len(),
        ok,
        refused_latency: ms(&refused),
        audit_wait_ms,
    })
}
