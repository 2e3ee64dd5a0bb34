//! `kira alerts list|show|ack|resolve|silence|silences|unsilence`: the
//! clients of `/v1/alerts` (an admin key sees every alert, a company key
//! its company's) and `/v1/alerts/silences` (admin).

use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, TimeDelta, Utc};
use clap::Subcommand;
use kira_core::clock::{Clock, SystemClock};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Ctx;
use crate::client::decode;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// Alerts, newest first.
    List {
        /// Open alerts only (pending, firing, acknowledged).
        #[arg(long)]
        open: bool,
        /// pending, firing, acknowledged or resolved.
        #[arg(long)]
        state: Option<String>,
        /// One rule's alerts.
        #[arg(long)]
        rule: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// An alert and every notification attempt made for it.
    Show { id: String },
    /// Acknowledge a firing alert: no escalation, no repeats.
    Ack { id: String },
    /// Resolve an open alert by hand.
    Resolve { id: String },
    /// Hold back the notifications of matching alerts (admin).
    Silence {
        /// NAME=VALUE, where NAME is rule, kind, severity, subject or a
        /// label; every matcher must match. Repeatable.
        #[arg(long = "match", required = true)]
        matchers: Vec<String>,
        /// How long, in minutes, from now.
        #[arg(long, default_value_t = 60, conflicts_with = "until")]
        minutes: i64,
        /// Until this time (RFC 3339) instead.
        #[arg(long)]
        until: Option<DateTime<Utc>>,
        /// Why.
        #[arg(long)]
        comment: String,
    },
    /// Silences not yet ended (admin); `--all` with the ended ones.
    Silences {
        #[arg(long)]
        all: bool,
    },
    /// End a silence now (admin).
    Unsilence { id: String },
}

#[derive(Debug, Deserialize)]
struct Alert {
    id: String,
    rule: String,
    severity: String,
    subject: String,
    state: String,
    summary: String,
    started_at: DateTime<Utc>,
    fired_at: Option<DateTime<Utc>>,
    acknowledged_by: Option<String>,
    escalated_at: Option<DateTime<Utc>>,
    resolved_at: Option<DateTime<Utc>>,
    resolved_by: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Attempt {
    notice: String,
    channel: String,
    target: String,
    attempt: i32,
    at: DateTime<Utc>,
    outcome: String,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Detail {
    alert: Alert,
    notifications: Vec<Attempt>,
}

#[derive(Debug, Deserialize)]
struct Matcher {
    name: String,
    value: String,
}

#[derive(Debug, Deserialize)]
struct Silence {
    id: String,
    matchers: Vec<Matcher>,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
    created_by: String,
    comment: String,
}

fn matcher(s: &str) -> anyhow::Result<Value> {
    let (name, value) = s
        .split_once('=')
        .with_context(|| format!("--match {s:?}: write NAME=VALUE"))?;
    Ok(json!({"name": name, "value": value}))
}

fn opt(t: &Option<DateTime<Utc>>) -> String {
    t.as_ref().map(output::time).unwrap_or_default()
}

fn alerts_table(list: &[Alert]) -> String {
    if list.is_empty() {
        return "no alerts".into();
    }
    let mut t = output::table(&[
        "ID", "RULE", "SUBJECT", "SEVERITY", "STATE", "SINCE", "SUMMARY",
    ]);
    for a in list {
        t.add_row(vec![
            a.id.clone(),
            a.rule.clone(),
            a.subject.clone(),
            a.severity.clone(),
            a.state.clone(),
            output::time(&a.started_at),
            output::one_line(&a.summary, 60),
        ]);
    }
    t.to_string()
}

fn detail(d: &Detail) -> String {
    let a = &d.alert;
    let mut out = format!(
        "alert       {}\nrule        {} ({})\nsubject     {}\nstate       {}\nsummary     {}\nstarted     {}\nfired       {}\nescalated   {}\n",
        a.id,
        a.rule,
        a.severity,
        a.subject,
        a.state,
        a.summary,
        output::time(&a.started_at),
        opt(&a.fired_at),
        opt(&a.escalated_at),
    );
    if let Some(by) = &a.acknowledged_by {
        out.push_str(&format!("acknowledged by {by}\n"));
    }
    if a.resolved_at.is_some() {
        out.push_str(&format!(
            "resolved    {} by {}\n",
            opt(&a.resolved_at),
            a.resolved_by.as_deref().unwrap_or("-")
        ));
    }
    if d.notifications.is_empty() {
        out.push_str("\nno notifications");
        return out;
    }
    let mut t = output::table(&[
        "AT", "NOTICE", "CHANNEL", "TARGET", "TRY", "OUTCOME", "ERROR",
    ]);
    for n in &d.notifications {
        t.add_row(vec![
            output::time(&n.at),
            n.notice.clone(),
            n.channel.clone(),
            n.target.clone(),
            n.attempt.to_string(),
            n.outcome.clone(),
            n.error.clone().unwrap_or_default(),
        ]);
    }
    format!("{out}\n{t}")
}

fn silences_table(list: &[Silence]) -> String {
    if list.is_empty() {
        return "no silences".into();
    }
    let mut t = output::table(&["ID", "MATCHERS", "FROM", "UNTIL", "BY", "WHY"]);
    for s in list {
        let m: Vec<String> = s
            .matchers
            .iter()
            .map(|m| format!("{}={}", m.name, m.value))
            .collect();
        t.add_row(vec![
            s.id.clone(),
            m.join(" "),
            output::time(&s.starts_at),
            output::time(&s.ends_at),
            s.created_by.clone(),
            output::one_line(&s.comment, 40),
        ]);
    }
    t.to_string()
}

pub async fn run(ctx: &Ctx, cmd: AlertsCommand) -> anyhow::Result<ExitCode> {
    let c = &ctx.client;
    let (v, text): (Value, fn(Value) -> anyhow::Result<String>) = match cmd {
        AlertsCommand::List {
            open,
            state,
            rule,
            limit,
        } => {
            let mut q = vec![("limit", limit.to_string())];
            if open {
                q.push(("open", "true".into()));
            }
            q.extend(state.map(|s| ("state", s)));
            q.extend(rule.map(|r| ("rule", r)));
            let v = c.get(&["v1", "alerts"], &q).await?;
            (v, |v| {
                Ok(alerts_table(&decode::<Vec<Alert>>(v["alerts"].clone())?))
            })
        }
        AlertsCommand::Show { id } => (c.get(&["v1", "alerts", &id], &[]).await?, |v| {
            Ok(detail(&decode::<Detail>(v)?))
        }),
        AlertsCommand::Ack { id } => (c.post(&["v1", "alerts", &id, "ack"], None).await?, |v| {
            Ok(alerts_table(&[decode::<Alert>(v)?]))
        }),
        AlertsCommand::Resolve { id } => (
            c.post(&["v1", "alerts", &id, "resolve"], None).await?,
            |v| Ok(alerts_table(&[decode::<Alert>(v)?])),
        ),
        AlertsCommand::Silence {
            matchers,
            minutes,
            until,
            comment,
        } => {
            let ends = until.unwrap_or_else(|| SystemClock.now() + TimeDelta::minutes(minutes));
            let matchers = matchers
                .iter()
                .map(|m| matcher(m))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let body = json!({"matchers": matchers, "ends_at": ends, "comment": comment});
            let v = c.post(&["v1", "alerts", "silences"], Some(&body)).await?;
            (v, |v| Ok(silences_table(&[decode::<Silence>(v)?])))
        }
        AlertsCommand::Silences { all } => {
            let q = if all {
                vec![("expired", "true".to_string())]
            } else {
                vec![]
            };
            let v = c.get(&["v1", "alerts", "silences"], &q).await?;
            (v, |v| {
                Ok(silences_table(&decode::<Vec<Silence>>(
                    v["silences"].clone(),
                )?))
            })
        }
        AlertsCommand::Unsilence { id } => (
            c.delete(&["v1", "alerts", "silences", &id], &[]).await?,
            |v| Ok(silences_table(&[decode::<Silence>(v)?])),
        ),
    };
    if ctx.json {
        output::print_json(&v)?;
    } else {
        println!("{}", text(v)?);
    }
    Ok(ExitCode::SUCCESS)
}
