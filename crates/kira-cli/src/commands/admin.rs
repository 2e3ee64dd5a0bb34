//! `kira admin ...`: API keys.

use std::process::ExitCode;

use kira_core::auth::ApiKey;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Ctx;
use crate::cli::AdminCommand;
use crate::client::decode;
use crate::output;

#[derive(Debug, Deserialize)]
struct CreatedKey {
    key: ApiKey,
    token: String,
}

#[derive(Debug, Deserialize)]
struct KeyList {
    keys: Vec<ApiKey>,
}

pub async fn run(ctx: &Ctx, cmd: AdminCommand) -> anyhow::Result<ExitCode> {
    let c = &ctx.client;
    let (v, human) = match cmd {
        AdminCommand::CreateKey {
            name,
            role,
            company,
        } => {
            let mut body = Map::new();
            body.insert("name".into(), json!(name));
            body.insert("role".into(), json!(role.as_str()));
            if let Some(company) = company {
                body.insert("company_id".into(), json!(company));
            }
            let v = c.post(&["v1", "keys"], Some(&Value::Object(body))).await?;
            let human = decode::<CreatedKey>(v.clone()).map(|k| {
                let scope = match &k.key.company_id {
                    Some(company) => format!("{} of company {company}", k.key.role),
                    None => k.key.role.to_string(),
                };
                format!(
                    "created key {} \"{}\" ({scope})\n\n    {}\n\n\
                     This token is shown only this once and will not be shown again: store it now.",
                    k.key.id, k.key.name, k.token
                )
            });
            (v, human)
        }
        AdminCommand::ListKeys => {
            let v = c.get(&["v1", "keys"], &[]).await?;
            let human = decode::<KeyList>(v.clone()).map(|l| output::keys(&l.keys));
            (v, human)
        }
        AdminCommand::RevokeKey { key_id } => {
            let v = c.post(&["v1", "keys", &key_id, "revoke"], None).await?;
            let human = decode::<ApiKey>(v.clone()).map(|k| {
                format!(
                    "revoked key {} at {}",
                    k.id,
                    k.revoked_at.as_ref().map(output::time).unwrap_or_default()
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
