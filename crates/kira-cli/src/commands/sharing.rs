//! `kira sharing check` and `kira conflicts ...` (admin): which rule lets
//! two companies share a scope, and the conflict flags that stop it.

use std::process::ExitCode;

use clap::Subcommand;
use kira_core::conflict::Conflict;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Ctx;
use crate::client::decode;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum SharingCommand {
    /// Whether companies A and B may share SCOPE, which rule decided and why.
    Check {
        a: String,
        b: String,
        /// Such as anonymized_legal_patterns or process_templates.
        scope: String,
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
    let SharingCommand::Check { a, b, scope } = cmd;
    let v = ctx
        .client
        .get(
            &["v1", "sharing", "check"],
            &[("a", a), ("b", b), ("scope", scope)],
        )
        .await?;
    print(ctx, &v, decode::<Check>(v.clone()).map(|c| check_text(&c)))
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
