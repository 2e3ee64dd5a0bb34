//! `kira audit ...`: read the log and check its hash chain.

use std::process::ExitCode;

use kira_core::audit::{AuditEntry, ChainReport};
use serde::Deserialize;

use super::Ctx;
use crate::cli::AuditCommand;
use crate::client::decode;
use crate::output;

#[derive(Debug, Deserialize)]
struct AuditPage {
    entries: Vec<AuditEntry>,
    next_after: Option<i64>,
}

pub async fn run(ctx: &Ctx, cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    let c = &ctx.client;
    match cmd {
        AuditCommand::List {
            company,
            after,
            limit,
        } => {
            let mut query = Vec::new();
            if let Some(company) = company {
                query.push(("company", company));
            }
            if let Some(after) = after {
                query.push(("after", after.to_string()));
            }
            if let Some(limit) = limit {
                query.push(("limit", limit.to_string()));
            }
            let v = c.get(&["v1", "audit"], &query).await?;
            if ctx.json {
                output::print_json(&v)?;
            } else {
                let page: AuditPage = decode(v)?;
                println!("{}", output::audit(&page.entries));
                if let Some(next) = page.next_after {
                    println!("more entries: kira audit list --after {next}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify => {
            let v = c.get(&["v1", "audit", "verify"], &[]).await?;
            let report: ChainReport = decode(v.clone())?;
            if ctx.json {
                output::print_json(&v)?;
            } else {
                println!("{}", verdict(&report));
            }
            // A broken chain fails the command with or without --json, so a
            // script can check the exit status alone.
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn verdict(r: &ChainReport) -> String {
    match (&r.first_broken, r.ok) {
        (None, true) => format!("audit chain intact: {} entries", r.entries),
        (Some(b), _) => format!("audit chain BROKEN at entry {}: {}", b.seq, b.reason),
        (None, false) => "audit chain BROKEN (the server named no entry)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use kira_core::audit::BrokenLink;

    use super::*;

    #[test]
    fn verdicts() {
        let ok = ChainReport {
            entries: 7,
            ok: true,
            first_broken: None,
        };
        assert_eq!(verdict(&ok), "audit chain intact: 7 entries");
        let broken = ChainReport {
            entries: 1,
            ok: false,
            first_broken: Some(BrokenLink {
                seq: 2,
                reason: "the entry was altered".into(),
            }),
        };
        assert_eq!(
            verdict(&broken),
            "audit chain BROKEN at entry 2: the entry was altered"
        );
    }
}
