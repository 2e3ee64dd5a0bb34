//! `kira agents list|show`: the agent pool, its models, limits and load.

use std::process::ExitCode;

use clap::Subcommand;
use serde::Deserialize;
use serde_json::Value;

use super::Ctx;
use crate::client::decode;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// Every agent: role, model, slots, running and queued tasks.
    List,
    /// One agent, with its limits, tools and system prompt.
    Show { name: String },
}

#[derive(Debug, Deserialize)]
struct Model {
    provider: String,
    model: String,
    local: bool,
    #[serde(default = "yes")]
    structured_output: bool,
    max_output_tokens: u32,
    context_budget: usize,
    system_prompt: String,
    #[serde(default)]
    calibration: Option<Calibration>,
}

fn yes() -> bool {
    true
}

/// The provider's prompt counts against kira's (cl100k) for this model.
#[derive(Debug, Deserialize)]
struct Calibration {
    observations: usize,
    factor: f64,
    min_ratio: Option<f64>,
    max_ratio: Option<f64>,
}

fn calibration_line(c: &Calibration) -> String {
    match (c.min_ratio, c.max_ratio) {
        (Some(lo), Some(hi)) => format!(
            "prompts reserved at {:.3}x kira's count (p95 of {} calls; ratio {lo:.3} to {hi:.3})",
            c.factor, c.observations
        ),
        _ => format!(
            "prompts reserved at {:.3}x kira's count (no calls observed yet)",
            c.factor
        ),
    }
}

#[derive(Debug, Deserialize)]
struct Agent {
    name: String,
    role: String,
    max_concurrent: u32,
    running: usize,
    queued: usize,
    task_types: Vec<String>,
    tools: Vec<String>,
    fallback_models: Vec<String>,
    max_steps: u32,
    max_tokens_per_run: i64,
    max_wall_seconds: u64,
    model: Option<Model>,
}

#[derive(Debug, Deserialize)]
struct AgentList {
    agents: Vec<Agent>,
    executor: Option<String>,
}

fn model_name(m: Option<&Model>) -> String {
    m.map_or_else(
        || "-".to_owned(),
        |m| {
            format!(
                "{}/{}{}",
                m.provider,
                m.model,
                if m.local { " (local)" } else { "" }
            )
        },
    )
}

fn list(l: &AgentList) -> String {
    let mut t = output::table(&[
        "AGENT",
        "ROLE",
        "MODEL",
        "SLOTS",
        "RUNNING",
        "QUEUED",
        "TASK TYPES",
    ]);
    for a in &l.agents {
        t.add_row(vec![
            a.name.clone(),
            a.role.clone(),
            model_name(a.model.as_ref()),
            a.max_concurrent.to_string(),
            a.running.to_string(),
            a.queued.to_string(),
            a.task_types.join(", "),
        ]);
    }
    let executor = l
        .executor
        .as_deref()
        .unwrap_or("none: tasks wait in the queue");
    format!("{t}\nexecutor: {executor}")
}

fn show(a: &Agent) -> String {
    let mut out = format!(
        "agent:        {}\nrole:         {}\nmodel:        {}\nslots:        {} ({} running, {} queued)\ntask types:   {}\ntools:        {}\nfallbacks:    {}\nlimits:       {} steps, {} tokens per run, {} s wall time",
        a.name,
        a.role,
        model_name(a.model.as_ref()),
        a.max_concurrent,
        a.running,
        a.queued,
        a.task_types.join(", "),
        a.tools.join(", "),
        if a.fallback_models.is_empty() {
            "none".to_owned()
        } else {
            a.fallback_models.join(", ")
        },
        a.max_steps,
        a.max_tokens_per_run,
        a.max_wall_seconds,
    );
    if let Some(m) = &a.model {
        out.push_str(&format!(
            "\noutput:       {} tokens per call, {}\ncontext:      {} tokens of context pack\ncalibration:  {}\n\nsystem prompt:\n{}",
            m.max_output_tokens,
            if m.structured_output {
                "held to the format each call asks for"
            } else {
                "free (structured_output = false)"
            },
            m.context_budget,
            m.calibration
                .as_ref()
                .map_or_else(|| "not reported".to_owned(), calibration_line),
            m.system_prompt
        ));
    }
    out
}

fn print(ctx: &Ctx, v: &Value, text: anyhow::Result<String>) -> anyhow::Result<ExitCode> {
    if ctx.json {
        output::print_json(v)?;
    } else {
        println!("{}", text?);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run(ctx: &Ctx, cmd: AgentsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AgentsCommand::List => {
            let v = ctx.client.get(&["v1", "agents"], &[]).await?;
            print(ctx, &v, decode::<AgentList>(v.clone()).map(|l| list(&l)))
        }
        AgentsCommand::Show { name } => {
            let v = ctx.client.get(&["v1", "agents", &name], &[]).await?;
            print(ctx, &v, decode::<Agent>(v.clone()).map(|a| show(&a)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_reads_as_the_factor_and_its_spread() {
        let before = Calibration {
            observations: 0,
            factor: 1.15,
            min_ratio: None,
            max_ratio: None,
        };
        assert_eq!(
            calibration_line(&before),
            "prompts reserved at 1.150x kira's count (no calls observed yet)"
        );
        let after = Calibration {
            observations: 12,
            factor: 1.31,
            min_ratio: Some(1.28),
            max_ratio: Some(1.32),
        };
        assert_eq!(
            calibration_line(&after),
            "prompts reserved at 1.310x kira's count (p95 of 12 calls; ratio 1.280 to 1.320)"
        );
    }
}
