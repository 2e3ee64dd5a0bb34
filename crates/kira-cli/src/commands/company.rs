//! `kira company ...`: create, list, show, update, archive and delete.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::bail;
use kira_core::company::Company;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Ctx;
use crate::cli::{CompanyCommand, ProfileArgs};
use crate::client::decode;
use crate::output;

/// Refusals that need no server: checked before a token is even read.
pub fn check(cmd: &CompanyCommand) -> anyhow::Result<()> {
    if let CompanyCommand::Delete { id, force: false } = cmd {
        bail!(
            "refusing to delete company {id} without --force: deleting removes every row it owns \
             and cannot be undone (archive it instead, or run again with --force)"
        );
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct CompanyList {
    companies: Vec<Company>,
}

#[derive(Debug, Deserialize)]
struct Deleted {
    deleted: String,
    #[serde(default)]
    rows: BTreeMap<String, u64>,
}

pub async fn run(ctx: &Ctx, cmd: CompanyCommand) -> anyhow::Result<ExitCode> {
    check(&cmd)?;
    let c = &ctx.client;
    let (v, human) = match cmd {
        CompanyCommand::Add(a) => {
            let mut body = Map::new();
            body.insert("id".into(), json!(a.id));
            body.insert("name".into(), json!(a.name));
            body.insert("industry".into(), json!(a.industry));
            body.insert("jurisdiction".into(), json!(a.jurisdiction));
            profile_fields(&a.profile, &mut body);
            let v = c
                .post(&["v1", "companies"], Some(&Value::Object(body)))
                .await?;
            let human = company_with_note("created company", &v);
            (v, human)
        }
        CompanyCommand::List { all } => {
            let query = if all {
                vec![("include_archived", "true".to_owned())]
            } else {
                vec![]
            };
            let v = c.get(&["v1", "companies"], &query).await?;
            let human = decode::<CompanyList>(v.clone()).map(|l| output::companies(&l.companies));
            (v, human)
        }
        CompanyCommand::Show { id } => {
            let v = c.get(&["v1", "companies", &id], &[]).await?;
            let human = decode::<Company>(v.clone()).map(|co| output::company(&co));
            (v, human)
        }
        CompanyCommand::Update(u) => {
            let mut body = Map::new();
            for (key, value) in [
                ("name", u.name),
                ("industry", u.industry),
                ("jurisdiction", u.jurisdiction),
            ] {
                if let Some(value) = value {
                    body.insert(key.into(), json!(value));
                }
            }
            profile_fields(&u.profile, &mut body);
            if u.clear_contacts {
                body.insert("contacts".into(), json!([]));
            }
            if u.clear_consent {
                body.insert("sharing_consent".into(), json!([]));
            }
            if body.is_empty() {
                bail!(
                    "nothing to update: give at least one field to change, such as --name (see kira company update --help)"
                );
            }
            let v = c
                .patch(&["v1", "companies", &u.id], &Value::Object(body))
                .await?;
            let human = company_with_note("updated company", &v);
            (v, human)
        }
        CompanyCommand::Archive { id } => {
            let v = c.post(&["v1", "companies", &id, "archive"], None).await?;
            let human = decode::<Company>(v.clone()).map(|co| {
                format!(
                    "archived company {} at {}",
                    co.id,
                    co.archived_at
                        .as_ref()
                        .map(output::time)
                        .unwrap_or_default()
                )
            });
            (v, human)
        }
        CompanyCommand::Delete { id, force: _ } => {
            let v = c
                .delete(&["v1", "companies", &id], &[("force", "true".to_owned())])
                .await?;
            let human = decode::<Deleted>(v.clone()).map(|d| {
                let rows: Vec<String> = d.rows.iter().map(|(t, n)| format!("{t} {n}")).collect();
                format!(
                    "deleted company {} (rows removed: {})",
                    d.deleted,
                    if rows.is_empty() {
                        "none".to_owned()
                    } else {
                        rows.join(", ")
                    }
                )
            });
            (v, human)
        }
    };
    if ctx.json {
        output::print_json(&v)?;
    } else {
        println!("{}", human?);
    }
    Ok(ExitCode::SUCCESS)
}

fn company_with_note(note: &str, v: &Value) -> anyhow::Result<String> {
    let co: Company = decode(v.clone())?;
    Ok(format!("{note} {}\n{}", co.id, output::company(&co)))
}

/// The optional profile fields the user gave, under the API's names.
fn profile_fields(p: &ProfileArgs, body: &mut Map<String, Value>) {
    if let Some(v) = p.revenue {
        body.insert("revenue_usd".into(), json!(v));
    }
    if let Some(v) = p.complexity {
        body.insert("complexity_score".into(), json!(v));
    }
    if let Some(v) = p.activity {
        body.insert("activity_score".into(), json!(v));
    }
    if let Some(v) = p.priority_multiplier {
        body.insert("priority_multiplier".into(), json!(v));
    }
    if let Some(v) = p.sla_seconds {
        body.insert("sla_response_seconds".into(), json!(v));
    }
    if !p.contacts.is_empty() {
        body.insert("contacts".into(), json!(p.contacts));
    }
    if !p.consent.is_empty() {
        body.insert("sharing_consent".into(), json!(p.consent));
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn body_of(args: &[&str]) -> Map<String, Value> {
        let cli = Cli::try_parse_from(args).expect("valid args");
        let Command::Company(CompanyCommand::Add(a)) = cli.command else {
            panic!("not company add");
        };
        let mut body = Map::new();
        profile_fields(&a.profile, &mut body);
        body
    }

    #[test]
    fn only_given_fields_are_sent() {
        let base = [
            "kira",
            "company",
            "add",
            "acme",
            "--name",
            "A",
            "--industry",
            "x",
            "--jurisdiction",
            "GB",
        ];
        assert!(body_of(&base).is_empty(), "the server applies its defaults");

        let mut args = base.to_vec();
        args.extend([
            "--revenue",
            "5",
            "--sla-seconds",
            "60",
            "--contact",
            "name=Jo,email=jo@x.com",
            "--contact",
            "name=Ops",
            "--consent",
            "process_templates",
        ]);
        let body = body_of(&args);
        assert_eq!(
            Value::Object(body),
            json!({
                "revenue_usd": 5,
                "sla_response_seconds": 60,
                "contacts": [{"name": "Jo", "email": "jo@x.com"}, {"name": "Ops"}],
                "sharing_consent": ["process_templates"],
            })
        );
    }

    #[test]
    fn delete_without_force_is_refused_locally() {
        let e = check(&CompanyCommand::Delete {
            id: "acme".into(),
            force: false,
        })
        .expect_err("refused");
        assert!(e.to_string().contains("--force"));
        assert!(
            check(&CompanyCommand::Delete {
                id: "acme".into(),
                force: true
            })
            .is_ok()
        );
    }
}
