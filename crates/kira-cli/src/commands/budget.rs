//! `kira budget ...`: the period's pools and allocations, emergency token
//! requests, and the ledger check.

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Ctx;
use crate::cli::BudgetCommand;
use crate::client::decode;
use crate::output;

/// `GET /v1/budget`.
#[derive(Debug, Deserialize)]
pub struct BudgetView {
    pub period_id: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub total_tokens: i64,
    pub pools: Vec<PoolView>,
    pub companies: Vec<CompanyBudgetView>,
    #[serde(default)]
    pub pending_requests: Vec<EmergencyRequestView>,
}

#[derive(Debug, Deserialize)]
pub struct PoolView {
    pub pool: String,
    pub capacity: i64,
    pub reserved: i64,
    pub spent: i64,
    pub remaining: i64,
    #[serde(default)]
    pub overdraft: i64,
}

#[derive(Debug, Deserialize)]
pub struct CompanyBudgetView {
    pub company_id: String,
    pub factor: f64,
    pub share: f64,
    pub allocation: i64,
    pub reserved: i64,
    pub spent: i64,
    pub remaining: i64,
    #[serde(default)]
    pub overdraft: i64,
    pub spent_all_pools: i64,
    pub burn_rate_per_day: f64,
    pub projected_period_use: i64,
    pub cost_usd: f64,
}

#[derive(Debug, Deserialize)]
pub struct EmergencyRequestView {
    pub request_id: String,
    pub company_id: String,
    pub task_id: String,
    pub amount: i64,
    pub status: String,
    pub reason: String,
    pub requested_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
    pub decided_by: Option<String>,
    pub decision: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RequestList {
    requests: Vec<EmergencyRequestView>,
}

/// `GET /v1/budget/verify`.
#[derive(Debug, Deserialize)]
struct LedgerReport {
    entries: i64,
    ok: bool,
    #[serde(default)]
    differences: Vec<String>,
}

pub async fn run(ctx: &Ctx, cmd: BudgetCommand) -> anyhow::Result<ExitCode> {
    let c = &ctx.client;
    let (v, human) = match cmd {
        BudgetCommand::Show => {
            let v = c.get(&["v1", "budget"], &[]).await?;
            let human = decode::<BudgetView>(v.clone()).map(|b| output::budget(&b));
            (v, human)
        }
        BudgetCommand::Requests { all } => {
            let pending = if all { "false" } else { "true" };
            let v = c
                .get(
                    &["v1", "budget", "requests"],
                    &[("pending", pending.to_owned())],
                )
                .await?;
            let human = decode::<RequestList>(v.clone())
                .map(|l| output::emergency_requests(&l.requests, !all));
            (v, human)
        }
        BudgetCommand::Approve { request_id, note } => {
            decide(ctx, &request_id, "approve", note.as_deref()).await?
        }
        BudgetCommand::Reject { request_id, note } => {
            decide(ctx, &request_id, "reject", Some(&note)).await?
        }
        BudgetCommand::Verify => {
            let v = c.get(&["v1", "budget", "verify"], &[]).await?;
            let report: LedgerReport = decode(v.clone())?;
            if ctx.json {
                output::print_json(&v)?;
            } else {
                println!("{}", verdict(&report));
            }
            // A difference fails the command with or without --json, so a
            // script can check the exit status alone.
            return Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
    };
    if ctx.json {
        output::print_json(&v)?;
    } else {
        println!("{}", human?);
    }
    Ok(ExitCode::SUCCESS)
}

async fn decide(
    ctx: &Ctx,
    request_id: &str,
    action: &str,
    note: Option<&str>,
) -> anyhow::Result<(Value, anyhow::Result<String>)> {
    let mut body = Map::new();
    if let Some(note) = note {
        body.insert("note".into(), json!(note));
    }
    let v = ctx
        .client
        .post(
            &["v1", "budget", "requests", request_id, action],
            Some(&Value::Object(body)),
        )
        .await?;
    let human = decode::<EmergencyRequestView>(v.clone()).map(|r| {
        let what = if action == "approve" {
            format!(
                "approved request {}: {} emergency tokens for task {}",
                r.request_id, r.amount, r.task_id
            )
        } else {
            format!(
                "rejected request {}: task {} fails",
                r.request_id, r.task_id
            )
        };
        format!("{what}\n{}", output::emergency_requests(&[r], false))
    });
    Ok((v, human))
}

fn verdict(r: &LedgerReport) -> String {
    if r.ok && r.differences.is_empty() {
        return format!("ledger consistent: {} entries", r.entries);
    }
    let n = r.differences.len();
    let mut out = format!(
        "ledger INCONSISTENT: {} entries, {n} {}",
        r.entries,
        if n == 1 { "difference" } else { "differences" }
    );
    for d in &r.differences {
        out.push_str("\n  ");
        out.push_str(d);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let ok = LedgerReport {
            entries: 12,
            ok: true,
            differences: vec![],
        };
        assert_eq!(verdict(&ok), "ledger consistent: 12 entries");
        let bad = LedgerReport {
            entries: 3,
            ok: false,
            differences: vec!["pool base: reserved is 10, the ledger says 0".into()],
        };
        assert_eq!(
            verdict(&bad),
            "ledger INCONSISTENT: 3 entries, 1 difference\n  pool base: reserved is 10, the ledger says 0"
        );
    }
}
