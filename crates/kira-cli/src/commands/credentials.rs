//! `kira credentials set|rotate|list|delete`: a company's tool
//! credentials, the clients of `/v1/tools/{name}/credential` and
//! `/v1/tools/credentials`. `set` and `rotate` read the value from stdin,
//! so it is in no shell history or process list; nothing prints it.

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use super::Ctx;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum CredentialsCommand {
    /// Store the company's credential for a tool registration (stdin).
    Set {
        tool: String,
        #[arg(long)]
        company: Option<String>,
    },
    /// Replace it (stdin).
    Rotate {
        tool: String,
        #[arg(long)]
        company: Option<String>,
    },
    /// The company's credentials: tools and ages, never values.
    List {
        #[arg(long)]
        company: Option<String>,
    },
    Delete {
        tool: String,
        #[arg(long)]
        company: Option<String>,
    },
}

fn company_q(company: Option<String>) -> Vec<(&'static str, String)> {
    company.map(|c| vec![("company", c)]).unwrap_or_default()
}

fn read_stdin() -> anyhow::Result<String> {
    let mut value = String::new();
    std::io::stdin()
        .read_to_string(&mut value)
        .context("reading the credential from stdin")?;
    let value = value.trim_end_matches(['\n', '\r']).to_owned();
    anyhow::ensure!(!value.is_empty(), "no credential on stdin");
    Ok(value)
}

pub async fn run(ctx: &Ctx, cmd: CredentialsCommand) -> anyhow::Result<ExitCode> {
    let c = &ctx.client;
    let (v, text): (Value, String) = match cmd {
        CredentialsCommand::Set { tool, company } => {
            let body = json!({"value": read_stdin()?, "rotate": false});
            let v = c
                .send(
                    Method::PUT,
                    &["v1", "tools", &tool, "credential"],
                    &company_q(company),
                    Some(&body),
                )
                .await?;
            (v, format!("credential for {tool} stored (sealed)"))
        }
        CredentialsCommand::Rotate { tool, company } => {
            let body = json!({"value": read_stdin()?, "rotate": true});
            let v = c
                .send(
                    Method::PUT,
                    &["v1", "tools", &tool, "credential"],
                    &company_q(company),
                    Some(&body),
                )
                .await?;
            (v, format!("credential for {tool} rotated"))
        }
        CredentialsCommand::List { company } => {
            let v = c
                .get(&["v1", "tools", "credentials"], &company_q(company))
                .await?;
            let list = v["credentials"].as_array().cloned().unwrap_or_default();
            let text = if list.is_empty() {
                "no credentials".to_owned()
            } else {
                let mut t = output::table(&["TOOL", "SET BY", "SET", "ROTATED"]);
                for c in list {
                    t.add_row(vec![
                        c["tool"].as_str().unwrap_or_default().to_owned(),
                        c["created_by"].as_str().unwrap_or_default().to_owned(),
                        c["created_at"].as_str().unwrap_or_default().to_owned(),
                        c["rotated_at"].as_str().unwrap_or("-").to_owned(),
                    ]);
                }
                t.to_string()
            };
            (v, text)
        }
        CredentialsCommand::Delete { tool, company } => {
            let v = c
                .delete(&["v1", "tools", &tool, "credential"], &company_q(company))
                .await?;
            (v, format!("credential for {tool} deleted"))
        }
    };
    if ctx.json {
        output::print_json(&v)?;
    } else {
        println!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}
