//! `kira bench local-model`: the local model (SmolLM2, in process) on this
//! machine: its load time, and prompt and generation speed.

use std::process::ExitCode;
use std::time::Instant;

use kira_llm::{ChatRequest, LocalProvider, Message, Provider};

use crate::BenchError;

/// Times the local model: loading it, a prompt alone (one output token)
/// and the same prompt with `tokens` out; generation speed is the extra
/// tokens over the extra time.
pub async fn command(tokens: u32, runs: u32, json: bool) -> Result<ExitCode, BenchError> {
    if tokens < 2 || runs == 0 {
        return Err(BenchError::Invalid(
            "--tokens must be at least 2 and --runs at least 1".into(),
        ));
    }
    let path = kira_llm::local::model_path(&kira_embed::models_dir());
    let t0 = Instant::now();
    let model = LocalProvider::load(&path)?;
    let load = t0.elapsed().as_secs_f64();
    // A prompt of the size an agent's first call has on the local model.
    let context = "The board approved the 2027 budget of 4 million dollars. \
                   The Initech contract renews on 1 March 2027. "
        .repeat(12);
    let req = |max| {
        ChatRequest::new(
            kira_llm::local::LOCAL_MODEL,
            vec![
                Message::system("You are the company's primary agent. Answer briefly."),
                Message::user(format!(
                    "{context}\nWrite a long, detailed report on the budget and the contract."
                )),
            ],
            max,
        )
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mut prompt_s, mut full_s, mut prompt_tokens, mut out_tokens) = (vec![], vec![], 0, 0);
    for _ in 0..runs {
        let a = model.chat(&req(1)).await?;
        prompt_s.push(a.latency.as_secs_f64());
        prompt_tokens = a.usage.prompt_tokens;
        let b = model.chat(&req(tokens)).await?;
        full_s.push(b.latency.as_secs_f64());
        out_tokens = b.usage.completion_tokens;
    }
    let (p, f) = (median(prompt_s), median(full_s));
    let prompt_tps = f64::from(prompt_tokens) / p;
    let gen_tps = if f > p && out_tokens > 1 {
        f64::from(out_tokens - 1) / (f - p)
    } else {
        0.0
    };
    let r = serde_json::json!({
        "model": kira_llm::local::LOCAL_MODEL,
        "load_seconds": load,
        "prompt_tokens": prompt_tokens,
        "prompt_tokens_per_second": prompt_tps,
        "generated_tokens": out_tokens,
        "generation_tokens_per_second": gen_tps,
        "runs": runs,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("local model: {}", kira_llm::local::LOCAL_MODEL);
        println!("  load             {load:.2} s");
        println!(
            "  prompt           {prompt_tokens} tokens at {prompt_tps:.0} tokens/s (median of {runs})"
        );
        println!("  generation       {out_tokens} tokens at {gen_tps:.1} tokens/s");
    }
    Ok(ExitCode::SUCCESS)
}
