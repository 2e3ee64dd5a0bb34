//! `kira sharing ...`: publishing a memory for other companies (admin or
//! the company's operator), the company's published items, consents
//! (admin) and which rule lets two companies share a scope (admin); and
//! `kira conflicts ...` (admin), the flags that stop sharing.

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::Subcommand;
use kira_core::conflict::Conflict;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Ctx;
use crate::client::decode;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum SharingCommand {
    /// Whether companies A and B may share SCOPE, which rule and which
    /// consents decided, and why (admin).
    Check {
        a: String,
        b: String,
        /// Such as anonymized_legal_patterns or process_templates.
        scope: String,
    },
    /// Publish one of COMPANY's memories for SCOPE: its anonymised text,
    /// made now and shown, is all another company may receive of it.
    Publish {
        company: String,
        memory_id: String,
        /// Such as anonymized_legal_patterns or process_templates.
        scope: String,
    },
    /// COMPANY's published items, newest first.
    Published {
        company: String,
        /// Only this scope.
        #[arg(long)]
        scope: Option<String>,
        /// Withdrawn items too.
        #[arg(long)]
        withdrawn: bool,
    },
    /// Withdraw a published item: no company receives it from now on.
    Withdraw { company: String, item_id: String },
    /// COMPANY's consents to exchange a scope with a partner (admin).
    #[command(subcommand)]
    Consent(ConsentCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConsentCommand {
    /// COMPANY's consents.
    List { company: String },
    /// COMPANY consents to exchange SCOPE's published items with PARTNER
    /// (a company id, or '*' for every company the rules allow). Sharing
    /// needs a consent on both sides.
    Give {
        company: String,
        scope: String,
        #[arg(default_value = "*")]
        partner: String,
    },
    /// Take a consent back: what it allowed is no longer shared.
    Withdraw {
        company: String,
        scope: String,
        #[arg(default_value = "*")]
        partner: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConflictsCommand {
    /// Conflict flags: open ones unless --all.
    List {
        #[arg(long)]
        all: bool,
    },
    /// Resolve a flag after review; sharing follows the rules again.
    Resolve {
        conflict_id: String,
        /// Why: the audit log keeps it.
        #[arg(long)]
        note: String,
    },
}

#[derive(Debug, Deserialize)]
struct Check {
    a: String,
    b: String,
    scope: String,
    conflict_open: bool,
    verdict: Verdict,
}

#[derive(Debug, Deserialize)]
struct Verdict {
    allowed: bool,
    flagged_for_review: bool,
    rule: Option<String>,
    reason: String,
}

#[derive(Debug, Deserialize)]
struct ConflictList {
    conflicts: Vec<Conflict>,
}

#[derive(Debug, Deserialize)]
struct Item {
    id: String,
    scope: String,
    memory_id: String,
    text: String,
    published_by: String,
    published_at: DateTime<Utc>,
    withdrawn_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Deserialize)]
struct ItemList {
    items: Vec<Item>,
}

#[derive(Debug, Deserialize)]
struct ConsentRow {
    scope: String,
    partner: String,
    granted_by: String,
    granted_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize)]
struct ConsentList {
    consents: Vec<ConsentRow>,
}

fn items(list: &[Item]) -> String {
    if list.is_empty() {
        return "no published items".to_owned();
    }
    let mut t = output::table(&["ID", "SCOPE", "MEMORY", "PUBLISHED", "BY", "STATUS", "TEXT"]);
    for i in list {
        let text: String = i.text.chars().take(60).collect();
        let more = if i.text.chars().count() > 60 {
            "..."
        } else {
            ""
        };
        t.add_row(vec![
            i.id.clone(),
            i.scope.clone(),
            i.memory_id.clone(),
            output::time(&i.published_at),
            i.published_by.clone(),
            if i.withdrawn_at.is_some() {
                "withdrawn"
            } else {
                "live"
            }
            .to_owned(),
            format!("{text}{more}"),
        ]);
    }
    t.to_string()
}

fn item_text(i: &Item) -> String {
    let status = match &i.withdrawn_at {
        Some(at) => format!("withdrawn {}", output::time(at)),
        None => "live".to_owned(),
    };
    format!(
        "item {} ({}, scope {})
memory: {}
published: {} by {}
text: {}",
        i.id,
        status,
        i.scope,
        i.memory_id,
        output::time(&i.published_at),
        i.published_by,
        i.text
    )
}

fn consents(list: &[ConsentRow]) -> String {
    if list.is_empty() {
        return "no consents: this company shares nothing and receives nothing".to_owned();
    }
    let mut t = output::table(&["SCOPE", "PARTNER", "GRANTED BY", "GRANTED"]);
    for c in list {
        t.add_row(vec![
            c.scope.clone(),
            c.partner.clone(),
            c.granted_by.clone(),
            output::time(&c.granted_at),
        ]);
    }
    t.to_string()
}

fn check_text(c: &Check) -> String {
    let answer = if c.verdict.allowed {
        "ALLOWED"
    } else if c.verdict.flagged_for_review {
        "DENIED, flagged for human review"
    } else {
        "DENIED"
    };
    let rule = c.verdict.rule.as_deref().unwrap_or("(default)");
    format!(
        "{} <-> {} scope {}: {answer}\nrule: {rule}\nopen conflict: {}\nwhy: {}",
        c.a,
        c.b,
        c.scope,
        if c.conflict_open { "yes" } else { "no" },
        c.verdict.reason
    )
}

fn conflicts(list: &[Conflict]) -> String {
    if list.is_empty() {
        return "no conflicts".to_owned();
    }
    let mut t = output::table(&[
        "ID",
        "COMPANIES",
        "COUNTERPARTY",
        "MEMORIES",
        "DETECTED",
        "STATUS",
        "NOTE",
    ]);
    for c in list {
        t.add_row(vec![
            c.id.to_string(),
            format!("{} / {}", c.company_a, c.company_b),
            c.counterparty.clone(),
            c.memory_ids.len().to_string(),
            output::time(&c.detected_at),
            c.status.as_str().to_owned(),
            c.note.clone().unwrap_or_default(),
        ]);
    }
    t.to_string()
}

pub async fn run_sharing(ctx: &Ctx, cmd: SharingCommand) -> anyhow::Result<ExitCode> {
    let c = &ctx.client;
    match cmd {
        SharingCommand::Check { a, b, scope } => {
            let v = c
                .get(
                    &["v1", "sharing", "check"],
                    &[("a", a), ("b", b), ("scope", scope)],
                )
                .await?;
            print(ctx, &v, decode::<Check>(v.clone()).map(|c| check_text(&c)))
        }
        SharingCommand::Publish {
            company,
            memory_id,
            scope,
        } => {
            let v = c
                .post(
                    &["v1", "companies", &company, "shared"],
                    Some(&json!({ "memory_id": memory_id, "scope": scope })),
                )
                .await?;
            print(ctx, &v, decode::<Item>(v.clone()).map(|i| item_text(&i)))
        }
        SharingCommand::Published {
            company,
            scope,
            withdrawn,
        } => {
            let mut query = vec![("withdrawn", withdrawn.to_string())];
            if let Some(s) = scope {
                query.push(("scope", s));
            }
            let v = c
                .get(&["v1", "companies", &company, "shared"], &query)
                .await?;
            print(
                ctx,
                &v,
                decode::<ItemList>(v.clone()).map(|l| items(&l.items)),
            )
        }
        SharingCommand::Withdraw { company, item_id } => {
            let v = c
                .delete(&["v1", "companies", &company, "shared", &item_id], &[])
                .await?;
            print(ctx, &v, decode::<Item>(v.clone()).map(|i| item_text(&i)))
        }
        SharingCommand::Consent(cmd) => run_consent(ctx, cmd).await,
    }
}

async fn run_consent(ctx: &Ctx, cmd: ConsentCommand) -> anyhow::Result<ExitCode> {
    let c = &ctx.client;
    let v = match cmd {
        ConsentCommand::List { company } => {
            c.get(&["v1", "companies", &company, "sharing", "consents"], &[])
                .await?
        }
        ConsentCommand::Give {
            company,
            scope,
            partner,
        } => {
            c.send(
                Method::PUT,
                &["v1", "companies", &company, "sharing", "consents"],
                &[],
                Some(&json!({ "scope": scope, "partner": partner })),
            )
            .await?;
            c.get(&["v1", "companies", &company, "sharing", "consents"], &[])
                .await?
        }
        ConsentCommand::Withdraw {
            company,
            scope,
            partner,
        } => {
            c.delete(
                &["v1", "companies", &company, "sharing", "consents"],
                &[("scope", scope), ("partner", partner)],
            )
            .await?
        }
    };
    print(
        ctx,
        &v,
        decode::<ConsentList>(v.clone()).map(|l| consents(&l.consents)),
    )
}

pub async fn run_conflicts(ctx: &Ctx, cmd: ConflictsCommand) -> anyhow::Result<ExitCode> {
    let c = &ctx.client;
    match cmd {
        ConflictsCommand::List { all } => {
            let status = if all { "all" } else { "open" };
            let v = c
                .get(&["v1", "conflicts"], &[("status", status.to_owned())])
                .await?;
            print(
                ctx,
                &v,
                decode::<ConflictList>(v.clone()).map(|l| conflicts(&l.conflicts)),
            )
        }
        ConflictsCommand::Resolve { conflict_id, note } => {
            let v = c
                .post(
                    &["v1", "conflicts", &conflict_id, "resolve"],
                    Some(&json!({ "note": note })),
                )
                .await?;
            print(
                ctx,
                &v,
                decode::<Conflict>(v.clone()).map(|f| format!("resolved\n{}", conflicts(&[f]))),
            )
        }
    }
}

fn print(ctx: &Ctx, v: &Value, human: anyhow::Result<String>) -> anyhow::Result<ExitCode> {
    if ctx.json {
        output::print_json(v)?;
    } else {
        println!("{}", human?);
    }
    Ok(ExitCode::SUCCESS)
}
