//! `kira metrics company|system|agent`: task metrics over a window (the
//! totals with SEED's KPIs, then a line per company or agent), the
//! clients of `GET /v1/companies/{id}/metrics`, `/v1/metrics/system` and
//! `/v1/agents/{name}/metrics`.

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::Value;

use super::Ctx;
use crate::client::decode;
use crate::output;

#[derive(Debug, Args)]
pub struct Window {
    /// Start of the window (RFC 3339); default: a day before --to.
    #[arg(long)]
    pub from: Option<String>,
    /// End of the window (RFC 3339); default: now.
    #[arg(long)]
    pub to: Option<String>,
    /// Seconds per point (a whole number of minutes); default 3600.
    #[arg(long)]
    pub step: Option<i64>,
}

#[derive(Debug, Subcommand)]
pub enum MetricsCommand {
    /// One company's figures: response time against its SLA, success and
    /// automation rates, tokens, cost, satisfaction; a line per agent.
    Company {
        id: String,
        #[command(flatten)]
        window: Window,
    },
    /// Every company's figures (admin), a line per company and per agent.
    System {
        #[command(flatten)]
        window: Window,
    },
    /// One agent's figures: across companies for an admin, the key's own
    /// company's otherwise.
    Agent {
        name: String,
        #[command(flatten)]
        window: Window,
    },
}

#[derive(Debug, Default, Deserialize)]
struct Summary {
    tasks_ended: i64,
    completed: i64,
    failed: i64,
    needs_review: i64,
    success_rate: Option<f64>,
    automation_rate: Option<f64>,
    mean_response_seconds: Option<f64>,
    p95_response_seconds: Option<f64>,
    p95_queue_wait_seconds: Option<f64>,
    tokens: i64,
    tokens_per_completed: Option<f64>,
    cost_usd: f64,
    tool_calls: i64,
    satisfaction: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct Series {
    from: String,
    to: String,
    step_seconds: i64,
    totals: Summary,
    #[serde(default)]
    companies: BTreeMap<String, Summary>,
    #[serde(default)]
    agents: BTreeMap<String, Summary>,
    #[serde(default)]
    sla_response_seconds: Option<i64>,
    #[serde(default)]
    within_sla: Option<bool>,
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}{unit}"))
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{:.1}%", v * 100.0))
}

fn lines(title: &str, rows: &BTreeMap<String, Summary>) -> String {
    let mut t = output::table(&[
        title, "ENDED", "DONE", "FAILED", "REVIEW", "SUCCESS", "P95 RESP", "TOKENS", "COST",
        "RATING",
    ]);
    for (k, s) in rows {
        t.add_row(vec![
            k.clone(),
            s.tasks_ended.to_string(),
            s.completed.to_string(),
            s.failed.to_string(),
            s.needs_review.to_string(),
            pct(s.success_rate),
            opt(s.p95_response_seconds, " s"),
            s.tokens.to_string(),
            output::usd(s.cost_usd),
            opt(s.satisfaction, ""),
        ]);
    }
    t.to_string()
}

fn render(s: &Series) -> String {
    let t = &s.totals;
    let mut out = format!(
        "window:          {} to {} (points every {} s)\n\
         runs ended:      {} ({} completed, {} failed, {} waited for review)\n\
         success rate:    {}\nautomation rate: {} (target 80%)\n\
         response time:   mean {}, p95 {}\nqueue wait p95:  {}\n\
         tokens:          {} ({} per completed run)\ncost:            {}\n\
         tool calls:      {}\nsatisfaction:    {} (target 4.5 of 5)",
        s.from,
        s.to,
        s.step_seconds,
        t.tasks_ended,
        t.completed,
        t.failed,
        t.needs_review,
        pct(t.success_rate),
        pct(t.automation_rate),
        opt(t.mean_response_seconds, " s"),
        opt(t.p95_response_seconds, " s"),
        opt(t.p95_queue_wait_seconds, " s"),
        t.tokens,
        opt(t.tokens_per_completed, ""),
        output::usd(t.cost_usd),
        t.tool_calls,
        opt(t.satisfaction, ""),
    );
    if let Some(sla) = s.sla_response_seconds {
        let verdict = match s.within_sla {
            Some(true) => "within",
            Some(false) => "OVER",
            None => "no runs",
        };
        out.push_str(&format!("\nSLA:             {sla} s ({verdict})"));
    }
    if !s.companies.is_empty() {
        out.push_str(&format!("\n\n{}", lines("COMPANY", &s.companies)));
    }
    if !s.agents.is_empty() {
        out.push_str(&format!("\n\n{}", lines("AGENT", &s.agents)));
    }
    out
}

fn query(w: Window) -> Vec<(&'static str, String)> {
    let mut q = Vec::new();
    if let Some(v) = w.from {
        q.push(("from", v));
    }
    if let Some(v) = w.to {
        q.push(("to", v));
    }
    if let Some(v) = w.step {
        q.push(("step", v.to_string()));
    }
    q
}

pub async fn run(ctx: &Ctx, cmd: MetricsCommand) -> anyhow::Result<ExitCode> {
    let v: Value = match cmd {
        MetricsCommand::Company { id, window } => {
            ctx.client
                .get(&["v1", "companies", &id, "metrics"], &query(window))
                .await?
        }
        MetricsCommand::System { window } => {
            ctx.client
                .get(&["v1", "metrics", "system"], &query(window))
                .await?
        }
        MetricsCommand::Agent { name, window } => {
            ctx.client
                .get(&["v1", "agents", &name, "metrics"], &query(window))
                .await?
        }
    };
    if ctx.json {
        output::print_json(&v)?;
    } else {
        println!("{}", render(&decode::<Series>(v)?));
    }
    Ok(ExitCode::SUCCESS)
}
