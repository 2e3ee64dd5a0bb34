//! The client commands: each builds one request, sends it, and prints the
//! answer as a table or, with `--json`, as the server's JSON.

pub mod admin;
pub mod agents;
pub mod alerts;
pub mod audit;
pub mod budget;
pub mod company;
pub mod credentials;
pub mod dashboard;
pub mod demo;
pub mod knowledge;
pub mod memory;
pub mod metrics;
pub mod review;
pub mod secret;
pub mod sharing;
pub mod task;
pub mod tools;

use std::path::PathBuf;
use std::process::ExitCode;

use serde::Deserialize;

use crate::client::{self, Client};
use crate::output;

/// What every client command needs: the API and how to print.
pub struct Ctx {
    pub client: Client,
    pub json: bool,
}

impl Ctx {
    /// The token is `--token`/`KIRA_TOKEN`, else the admin key in the data
    /// directory (`--data-dir`, `KIRA_DATA_DIR`, `./kira-data`).
    pub fn new(
        url: &str,
        token: Option<&str>,
        data_dir: Option<PathBuf>,
        json: bool,
    ) -> anyhow::Result<Self> {
        let data_dir = data_dir
            .or_else(|| {
                std::env::var_os("KIRA_DATA_DIR")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_DATA_DIR));
        let token = client::resolve_token(token, &data_dir)?;
        Ok(Self {
            client: Client::new(url, token)?,
            json,
        })
    }
}

#[derive(Debug, Deserialize)]
struct Whoami {
    key_id: String,
    role: String,
    company_id: Option<String>,
}

pub async fn whoami(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let v = ctx.client.get(&["v1", "whoami"], &[]).await?;
    if ctx.json {
        output::print_json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    let w: Whoami = client::decode(v)?;
    match w.company_id {
        Some(c) => println!("key {} ({} of company {c})", w.key_id, w.role),
        None => println!("key {} ({})", w.key_id, w.role),
    }
    Ok(ExitCode::SUCCESS)
}
