//! `kira tools list|add|remove|show|test|configure|configs`: the clients
//! of `/v1/tools` (the registry, company tool configurations, and a test
//! call through the company wrapper).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Ctx;
use crate::client::decode;
use crate::output;

// Parsed once per process: the size of `Add` costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum ToolsCommand {
    /// What an agent of a domain working for a company is offered, with
    /// each tool's layer and source (admin without --company: the
    /// infrastructure and domain layers). An MCP server's tools are those
    /// kira listed when it last connected to it: listing starts nothing.
    List {
        #[arg(long)]
        company: Option<String>,
        /// legal, financial, technical, content, research, memory or
        /// knowledge (default: every domain).
        #[arg(long)]
        domain: Option<String>,
        /// Connect to each MCP server (starting a stdio one) and list its
        /// tools now (an operator's or the admin's key).
        #[arg(long)]
        refresh: bool,
    },
    /// Register a tool: an MCP server over stdio (`--command`, `--arg`),
    /// an MCP server over streamable HTTP (`--mcp-url`, `--header`), a
    /// plain HTTP endpoint (`--method`, `--url`, `--parameters`), or the
    /// whole registration as JSON (`--file`).
    Add {
        /// The registration's name (an MCP server's tools become NAME.TOOL).
        name: String,
        /// infrastructure, domain or company.
        #[arg(long, default_value = "company")]
        layer: String,
        #[arg(long)]
        domain: Option<String>,
        #[arg(long)]
        company: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
        /// The MCP server's command.
        #[arg(long, conflicts_with_all = ["url", "file", "mcp_url"])]
        command: Option<String>,
        /// An MCP server's URL over streamable HTTP (its endpoint, e.g.
        /// https://mcp.example/mcp).
        #[arg(long, conflicts_with_all = ["url", "file"])]
        mcp_url: Option<String>,
        /// NAME=VALUE sent with every request of an HTTP tool or an MCP
        /// server over HTTP (repeatable); `{credential}` in a value is the
        /// company's credential for this tool (`kira credentials set`).
        #[arg(long = "header")]
        headers: Vec<String>,
        /// An argument of the command (repeatable).
        #[arg(long = "arg", allow_hyphen_values = true)]
        args: Vec<String>,
        /// NAME=VALUE in the server's environment (repeatable).
        #[arg(long = "env")]
        env: Vec<String>,
        /// An HTTP tool's URL template (`{param}` names a parameter).
        #[arg(long)]
        url: Option<String>,
        #[arg(long, default_value = "GET")]
        method: String,
        /// An HTTP tool's parameters: a JSON schema (or @FILE).
        #[arg(long)]
        parameters: Option<String>,
        /// An HTTP tool's result: a JSON pointer into the answer.
        #[arg(long)]
        result: Option<String>,
        /// Per-call timeout in milliseconds.
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// The source as JSON (`{"kind": ...}`), instead of the flags.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Remove a registration.
    Remove {
        name: String,
        #[arg(long, default_value = "company")]
        layer: String,
        #[arg(long)]
        domain: Option<String>,
        #[arg(long)]
        company: Option<String>,
    },
    /// One registration as the company sees it, with its tools.
    Show {
        name: String,
        #[arg(long)]
        company: Option<String>,
        /// As for `list`: connect to the server and list its tools now.
        #[arg(long)]
        refresh: bool,
    },
    /// Call a tool once as the company, through the company wrapper.
    Test {
        /// As a model calls it: `NAME` or `SERVER.TOOL`.
        tool: String,
        /// The arguments, a JSON object.
        #[arg(long, default_value = "{}")]
        args: String,
        #[arg(long)]
        company: Option<String>,
    },
    /// Set the company's configuration of a tool: `defaults` are merged
    /// under the arguments of every call its agents make (`--clear`
    /// removes it).
    Configure {
        tool: String,
        /// `{"defaults": {...}, "preferences": {...}}`.
        #[arg(long, required_unless_present = "clear")]
        config: Option<String>,
        #[arg(long)]
        clear: bool,
        #[arg(long)]
        company: Option<String>,
    },
    /// The company's tool configurations.
    Configs {
        #[arg(long)]
        company: Option<String>,
    },
}

#[derive(Debug, Deserialize)]
struct View {
    name: String,
    layer: String,
    domain: Option<String>,
    source: String,
    registered_by: String,
    tools: Vec<String>,
    listed_at: Option<String>,
    error: Option<String>,
}

fn views_table(list: &[View]) -> String {
    if list.is_empty() {
        return "no tools".into();
    }
    let mut t = output::table(&["NAME", "LAYER", "DOMAIN", "SOURCE", "BY", "TOOLS"]);
    for v in list {
        let listed = v.tools.join(", ");
        let tools = match (&v.error, v.source.starts_with("mcp_"), &v.listed_at) {
            (Some(e), _, None) => format!("(none now: {})", output::one_line(e, 60)),
            (Some(e), _, Some(at)) => format!(
                "(none now: {}; as listed {at}: {listed})",
                output::one_line(e, 60)
            ),
            (None, true, Some(at)) => format!("{listed} (listed {at})"),
            (None, true, None) => "(not listed yet: --refresh lists them)".into(),
            (None, false, _) => listed,
        };
        t.add_row(vec![
            v.name.clone(),
            v.layer.clone(),
            v.domain.clone().unwrap_or_default(),
            v.source.clone(),
            v.registered_by.clone(),
            tools,
        ]);
    }
    t.to_string()
}

fn json_arg(flag: &str, s: &str) -> anyhow::Result<Value> {
    let text = match s.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("{flag}: reading {path}"))?
        }
        None => s.to_owned(),
    };
    serde_json::from_str(&text).with_context(|| format!("{flag}: not JSON"))
}

fn company_q(company: Option<String>) -> Vec<(&'static str, String)> {
    company.map(|c| vec![("company", c)]).unwrap_or_default()
}

pub async fn run(ctx: &Ctx, cmd: ToolsCommand) -> anyhow::Result<ExitCode> {
    let c = &ctx.client;
    let (v, text): (Value, fn(Value) -> anyhow::Result<String>) = match cmd {
        ToolsCommand::List {
            company,
            domain,
            refresh,
        } => {
            let mut q = company_q(company);
            q.extend(domain.map(|d| ("domain", d)));
            if refresh {
                q.push(("refresh", "true".into()));
            }
            let v = c.get(&["v1", "tools"], &q).await?;
            (v, |v| {
                Ok(views_table(&decode::<Vec<View>>(v["tools"].clone())?))
            })
        }
        ToolsCommand::Add {
            name,
            layer,
            domain,
            company,
            description,
            command,
            mcp_url,
            headers,
            args,
            env,
            url,
            method,
            parameters,
            result,
            timeout_ms,
            file,
        } => {
            let mut header_map = serde_json::Map::new();
            for h in headers {
                let (k, v) = h
                    .split_once('=')
                    .with_context(|| format!("--header {h:?}: write NAME=VALUE"))?;
                header_map.insert(k.to_owned(), Value::String(v.to_owned()));
            }
            let source = if let Some(path) = file {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("--file: reading {}", path.display()))?;
                serde_json::from_str::<Value>(&text).context("--file: not JSON")?
            } else if let Some(command) = command {
                let mut envs = serde_json::Map::new();
                for e in env {
                    let (k, v) = e
                        .split_once('=')
                        .with_context(|| format!("--env {e:?}: write NAME=VALUE"))?;
                    envs.insert(k.to_owned(), Value::String(v.to_owned()));
                }
                json!({"kind": "mcp_stdio", "command": command, "args": args, "env": envs})
            } else if let Some(url) = mcp_url {
                json!({"kind": "mcp_http", "url": url, "headers": header_map})
            } else if let Some(url) = url {
                let parameters = match parameters {
                    Some(p) => json_arg("--parameters", &p)?,
                    None => json!({"type": "object"}),
                };
                json!({"kind": "http", "method": method, "url": url, "parameters": parameters,
                    "headers": header_map, "result": result})
            } else {
                anyhow::bail!(
                    "name the source: --command (MCP over stdio), --mcp-url (MCP over HTTP), --url (HTTP) or --file"
                );
            };
            let body = json!({
                "name": name, "layer": layer, "domain": domain, "company": company,
                "description": description, "source": source, "timeout_ms": timeout_ms,
            });
            let v = c.post(&["v1", "tools"], Some(&body)).await?;
            (v, |v| {
                Ok(format!(
                    "registered {} ({} layer, {})",
                    v["name"].as_str().unwrap_or_default(),
                    v["layer"].as_str().unwrap_or_default(),
                    v["source"]["kind"].as_str().unwrap_or_default()
                ))
            })
        }
        ToolsCommand::Remove {
            name,
            layer,
            domain,
            company,
        } => {
            let mut q = company_q(company);
            q.push(("layer", layer));
            q.extend(domain.map(|d| ("domain", d)));
            let v = c.delete(&["v1", "tools", &name], &q).await?;
            (v, |_| Ok("removed".into()))
        }
        ToolsCommand::Show {
            name,
            company,
            refresh,
        } => {
            let mut q = company_q(company);
            if refresh {
                q.push(("refresh", "true".into()));
            }
            let v = c.get(&["v1", "tools", &name], &q).await?;
            (v, |v| {
                let view: View = decode(v.clone())?;
                Ok(format!(
                    "{}\n{}",
                    views_table(std::slice::from_ref(&view)),
                    v["description"].as_str().unwrap_or_default()
                ))
            })
        }
        ToolsCommand::Test {
            tool,
            args,
            company,
        } => {
            let arguments = json_arg("--args", &args)?;
            let body = json!({"arguments": arguments});
            let v = c
                .send(
                    Method::POST,
                    &["v1", "tools", &tool, "test"],
                    &company_q(company),
                    Some(&body),
                )
                .await?;
            (v, |v| {
                Ok(format!(
                    "{} ({} ms, {} bytes, {} tokens{})\n{}",
                    v["outcome"].as_str().unwrap_or_default(),
                    v["latency_ms"],
                    v["result_bytes"],
                    v["result_tokens"],
                    if v["cut"].as_bool() == Some(true) {
                        ", cut"
                    } else {
                        ""
                    },
                    v["content"].as_str().unwrap_or_default()
                ))
            })
        }
        ToolsCommand::Configure {
            tool,
            config,
            clear,
            company,
        } => {
            let config = if clear {
                Value::Null
            } else {
                json_arg("--config", config.as_deref().unwrap_or("{}"))?
            };
            let body = json!({"config": config});
            let v = c
                .send(
                    Method::PUT,
                    &["v1", "tools", &tool, "config"],
                    &company_q(company),
                    Some(&body),
                )
                .await?;
            (v, |_| Ok("configured".into()))
        }
        ToolsCommand::Configs { company } => {
            let v = c
                .get(&["v1", "tools", "configs"], &company_q(company))
                .await?;
            (v, |v| {
                let list = v["configs"].as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    return Ok("no tool configurations".into());
                }
                let mut t = output::table(&["TOOL", "CONFIG", "BY"]);
                for c in list {
                    t.add_row(vec![
                        c["tool"].as_str().unwrap_or_default().to_owned(),
                        c["config"].to_string(),
                        c["updated_by"].as_str().unwrap_or_default().to_owned(),
                    ]);
                }
                Ok(t.to_string())
            })
        }
    };
    if ctx.json {
        output::print_json(&v)?;
    } else {
        println!("{}", text(v)?);
    }
    Ok(ExitCode::SUCCESS)
}
