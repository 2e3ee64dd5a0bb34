//! `kira dashboard [COMPANY]`: the executive dashboard (admin) or one
//! company's, the client of `GET /v1/dashboard` and
//! `GET /v1/companies/{id}/dashboard`; `--json` prints SEED 6.3's shape.

use std::process::ExitCode;

use clap::Args;
use serde_json::Value;

use super::Ctx;
use crate::output;

#[derive(Debug, Args)]
pub struct DashboardCommand {
    /// A company's dashboard; without it, the executive one (admin).
    pub company: Option<String>,
}

fn num(v: &Value, unit: &str) -> String {
    v.as_f64()
        .map_or_else(|| "-".to_owned(), |v| format!("{v:.2}{unit}"))
}

fn pct(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "-".to_owned(), |v| format!("{:.1}%", v * 100.0))
}

fn company(d: &Value) -> String {
    let o = &d["overview"];
    let r = &d["resource_usage"];
    let q = &d["queue"];
    let t = &d["trends"];
    let mut out = format!(
        "{} ({})\nlast {} days:   {} tasks, mean response {}, p95 {} (SLA {} s), success {}, \
         {} tokens per successful task, satisfaction {}\n\
         last 7 days:    tasks {} \n\
         tokens {}:  used {}, remaining {}, projected {} by the period's end\n\
         queue:          {} unfinished ({} queued, {} running), {} waiting for review\n\
         alerts:         {} active, {} changed in the last 24 hours",
        d["name"].as_str().unwrap_or_default(),
        d["company_id"].as_str().unwrap_or_default(),
        o["days"],
        o["total_tasks"],
        num(&o["avg_response_time"], " s"),
        num(&o["p95_response_time"], " s"),
        o["sla_response_seconds"],
        pct(&o["success_rate"]),
        num(&o["token_efficiency"], ""),
        num(&o["satisfaction"], ""),
        t["task_volume"],
        r["period_id"].as_str().unwrap_or_default(),
        r["tokens_used"],
        r["tokens_remaining"],
        r["projected_monthly"],
        q["depth"],
        q["queued"],
        q["running"],
        d["review_backlog"],
        d["alerts"]["active"].as_array().map_or(0, Vec::len),
        d["alerts"]["recent"].as_array().map_or(0, Vec::len),
    );
    for a in d["alerts"]["active"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\n  [{}] {} {}: {}",
            a["state"].as_str().unwrap_or_default(),
            a["rule"].as_str().unwrap_or_default(),
            a["subject"].as_str().unwrap_or_default(),
            a["summary"].as_str().unwrap_or_default()
        ));
    }
    out
}

/// A share as a percentage, `-` when there is none.
fn share(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "-".into(), |v| format!("{:.2}%", v * 100.0))
}

fn executive(d: &Value) -> String {
    let h = &d["system_health"];
    let mut out = format!(
        "nodes:    {} serving, availability {} (24 h), {} (30 d)\n\
         queue:    {} unfinished ({} queued, {} running), oldest runnable wait {}\n\
         reviews:  {} waiting\nworkers:  {} holding leases\nalerts:   {} open",
        h["nodes"]["serving"],
        share(&h["nodes"]["availability_24h"]),
        share(&h["nodes"]["availability_30d"]),
        h["queue"]["depth"],
        h["queue"]["queued"],
        h["queue"]["running"],
        num(&h["queue"]["oldest_runnable_wait_seconds"], " s"),
        h["reviews_waiting"],
        h["workers"].as_array().map_or(0, Vec::len),
        d["alert_summary"]["open"],
    );
    let mut t = output::table(&[
        "COMPANY",
        "TASKS",
        "P95 RESP",
        "SLA",
        "SUCCESS",
        "USED",
        "REMAINING",
        "PROJECTED",
        "RATING",
        "ALERTS",
    ]);
    for c in d["companies"].as_array().into_iter().flatten() {
        t.add_row(vec![
            c["company_id"].as_str().unwrap_or_default().to_owned(),
            c["tasks"].to_string(),
            num(&c["p95_response_seconds"], " s"),
            format!("{} s", c["sla_response_seconds"]),
            pct(&c["success_rate"]),
            c["tokens_used"].to_string(),
            c["tokens_remaining"].to_string(),
            c["tokens_projected"].to_string(),
            num(&c["satisfaction"], ""),
            c["open_alerts"].to_string(),
        ]);
    }
    out.push_str(&format!("\n\n{t}"));
    let mut pools = output::table(&["POOL", "CAPACITY", "RESERVED", "SPENT", "REMAINING", "USED"]);
    for p in d["resource_utilization"]["pools"]
        .as_array()
        .into_iter()
        .flatten()
    {
        pools.add_row(vec![
            p["pool"].as_str().unwrap_or_default().to_owned(),
            p["capacity"].to_string(),
            p["reserved"].to_string(),
            p["spent"].to_string(),
            p["remaining"].to_string(),
            pct(&p["utilization"]),
        ]);
    }
    out.push_str(&format!("\n\n{pools}"));
    out
}

pub async fn run(ctx: &Ctx, cmd: DashboardCommand) -> anyhow::Result<ExitCode> {
    let v: Value = match &cmd.company {
        Some(id) => {
            ctx.client
                .get(&["v1", "companies", id, "dashboard"], &[])
                .await?
        }
        None => ctx.client.get(&["v1", "dashboard"], &[]).await?,
    };
    if ctx.json {
        output::print_json(&v)?;
    } else if cmd.company.is_some() {
        println!("{}", company(&v));
    } else {
        println!("{}", executive(&v));
    }
    Ok(ExitCode::SUCCESS)
}
