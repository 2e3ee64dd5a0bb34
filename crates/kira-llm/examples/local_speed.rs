//! A local model's speed on this machine:
//! `cargo run --release -p kira-llm --example local_speed [MAX_TOKENS [MODEL]]`
//! (MODEL: SmolLM2-135M-Instruct, the default, or
//! Qwen2.5-Coder-0.5B-Instruct).
//! Prints load time, prompt tokens per second (the prompt's forward pass)
//! and generation tokens per second, for one call at a time, free and held
//! to a JSON schema (constrained decoding).

use std::path::PathBuf;
use std::time::Instant;

use kira_llm::local::{LOCAL_MODEL, LocalModel};
use kira_llm::{ChatRequest, LocalProvider, Message, Output, Provider};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let max_tokens: u32 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(64);
    let name = std::env::args()
        .nth(2)
        .unwrap_or_else(|| LOCAL_MODEL.into());
    let model = LocalModel::named(&name).ok_or(format!("no local model {name}"))?;
    let models = std::env::var_os("KIRA_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/kira/models")
        });
    let started = Instant::now();
    let local = LocalProvider::load(&model.path(&models))?;
    println!("{}: load {:.2?}", local.model(), started.elapsed());

    // Prompt speed: a long prompt and one new token.
    let long = "The quarterly report covers revenue, costs and hiring. ".repeat(40);
    let req = ChatRequest::new("local", vec![Message::user(long)], 1);
    let r = local.chat(&req).await?;
    println!(
        "prompt: {} tokens in {:.2?} = {:.0} tokens/s",
        r.usage.prompt_tokens,
        r.latency,
        f64::from(r.usage.prompt_tokens) / r.latency.as_secs_f64()
    );

    // Generation speed: a short prompt, many new tokens (minus the prompt's share).
    let req = ChatRequest::new(
        "local",
        vec![Message::user("Write a story about a lighthouse keeper.")],
        max_tokens,
    );
    let r = local.chat(&req).await?;
    let one = local
        .chat(&ChatRequest {
            max_tokens: 1,
            ..req.clone()
        })
        .await?;
    let generating = r.latency.saturating_sub(one.latency);
    println!(
        "generation: {} tokens in {:.2?} = {:.1} tokens/s (prompt {} tokens, {:.2?})",
        r.usage.completion_tokens,
        r.latency,
        f64::from(r.usage.completion_tokens.saturating_sub(1)) / generating.as_secs_f64(),
        r.usage.prompt_tokens,
        one.latency
    );
    println!("answer: {}", r.message.content);

    // The same, held to a schema whose one string the story fills.
    let held = req.clone().with_output(Output::Json {
        name: "story".into(),
        schema: serde_json::json!({
            "type": "object",
            "properties": {"story": {"type": "string"}},
            "required": ["story"],
        }),
    });
    let one = local
        .chat(&ChatRequest {
            max_tokens: 1,
            ..held.clone()
        })
        .await?;
    let r = local.chat(&held).await?;
    let generating = r.latency.saturating_sub(one.latency);
    println!(
        "constrained: {} tokens in {:.2?} = {:.1} tokens/s (first token {:.2?})",
        r.usage.completion_tokens,
        r.latency,
        f64::from(r.usage.completion_tokens.saturating_sub(1)) / generating.as_secs_f64(),
        one.latency
    );
    println!("answer: {}", r.message.content);
    let cost = local.constraint_cost();
    println!(
        "constraint: {:.1}% of decoding ({:.2?} of {:.2?} over {} calls; of it computing masks {:.2?})",
        cost.share() * 100.0,
        cost.constraint,
        cost.decoding,
        cost.calls,
        cost.masks
    );
    Ok(())
}
