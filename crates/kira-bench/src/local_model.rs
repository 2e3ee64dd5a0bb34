//! `kira bench local-model`: the local model (SmolLM2, in process) on this
//! machine: its load time, prompt and generation speed, free and held to
//! an output schema (what constrained decoding costs), against the bound
//! memory bandwidth sets (weights read per token over bytes read per
//! second on one core, as generation runs), and how often its answer to a
//! varied prompt parses as an agent's result, free and held to the result
//! schema.

use std::process::ExitCode;
use std::time::Instant;

use kira_engine::agent::result;
use kira_llm::local::SAMPLE_PROMPTS;
use kira_llm::{ChatRequest, LocalProvider, Message, Output, Provider};
use serde_json::json;

use crate::BenchError;

/// Output tokens per answer in the result check (an agent's answer on
/// the local model is allowed 200; fewer keep the check short).
const ANSWER_TOKENS: u32 = 64;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Prompt and generation speed for requests made by `req(max_tokens)`:
/// a prompt alone (one output token) and the same prompt with `tokens`
/// out; generation speed is the extra tokens over the extra time.
async fn speed(
    model: &LocalProvider,
    req: impl Fn(u32) -> ChatRequest,
    tokens: u32,
    runs: u32,
) -> Result<Speed, BenchError> {
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
    Ok(Speed {
        prompt_tokens,
        prompt_tps: f64::from(prompt_tokens) / p,
        out_tokens,
        gen_tps: if f > p && out_tokens > 1 {
            f64::from(out_tokens - 1) / (f - p)
        } else {
            0.0
        },
    })
}

struct Speed {
    prompt_tokens: u32,
    prompt_tps: f64,
    out_tokens: u32,
    gen_tps: f64,
}

/// How many of the first `n` prompts get an answer that reads as a well
/// formed result (a JSON object with an answer or summary and a readable
/// confidence), answered with `output`.
async fn results(model: &LocalProvider, n: usize, output: &Output) -> Result<usize, BenchError> {
    let mut ok = 0;
    for prompt in SAMPLE_PROMPTS.iter().take(n) {
        let req = ChatRequest::new(
            kira_llm::local::LOCAL_MODEL,
            vec![
                Message::system(kira_engine::agent::prompts::builtin(
                    kira_engine::config::PRIMARY,
                )),
                Message::user(*prompt),
            ],
            ANSWER_TOKENS,
        )
        .with_output(output.clone());
        let r = model.chat(&req).await?;
        if result::from_text(&r.message.content).well_formed {
            ok += 1;
        }
    }
    Ok(ok)
}

/// Times the local model and checks its answers; see the module.
pub async fn command(
    tokens: u32,
    runs: u32,
    answers: usize,
    json: bool,
) -> Result<ExitCode, BenchError> {
    if tokens < 2 || runs == 0 || answers > SAMPLE_PROMPTS.len() {
        return Err(BenchError::Invalid(format!(
            "--tokens must be at least 2, --runs at least 1 and --answers at most {}",
            SAMPLE_PROMPTS.len()
        )));
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
    // Held to a schema whose one string the report fills: the model
    // chooses nearly every token, so the difference is the mask's cost.
    let report = Output::Json {
        name: "report".into(),
        schema: json!({
            "type": "object",
            "properties": {"report": {"type": "string"}},
            "required": ["report"],
        }),
    };
    let free = speed(&model, req, tokens, runs).await?;
    let held = speed(
        &model,
        |max| req(max).with_output(report.clone()),
        tokens,
        runs,
    )
    .await?;
    // Measured on the critical path of the constrained calls, not as the
    // difference of two speeds, which a busy machine blurs.
    let cost = model.constraint_cost().share();
    let bandwidth = kira_llm::local::read_bandwidth();
    let bound = bandwidth / model.bytes_per_token() as f64;
    let result_output = Output::Json {
        name: result::RESULT_NAME.into(),
        schema: result::schema(),
    };
    let (free_ok, held_ok) = if answers > 0 {
        (
            results(&model, answers, &Output::Free).await?,
            results(&model, answers, &result_output).await?,
        )
    } else {
        (0, 0)
    };
    let r = json!({
        "model": kira_llm::local::LOCAL_MODEL,
        "load_seconds": load,
        "prompt_tokens": free.prompt_tokens,
        "prompt_tokens_per_second": free.prompt_tps,
        "generated_tokens": free.out_tokens,
        "generation_tokens_per_second": free.gen_tps,
        "constrained_generated_tokens": held.out_tokens,
        "constrained_generation_tokens_per_second": held.gen_tps,
        "constraint_cost": cost,
        "weight_bytes_per_token": model.bytes_per_token(),
        "read_bandwidth_bytes_per_second": bandwidth,
        "bandwidth_bound_tokens_per_second": bound,
        "answers": answers,
        "results_well_formed_free": free_ok,
        "results_well_formed_constrained": held_ok,
        "runs": runs,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("local model: {}", kira_llm::local::LOCAL_MODEL);
        println!("  load             {load:.2} s");
        println!(
            "  prompt           {} tokens at {:.0} tokens/s (median of {runs})",
            free.prompt_tokens, free.prompt_tps
        );
        println!(
            "  generation       {} tokens at {:.1} tokens/s",
            free.out_tokens, free.gen_tps
        );
        println!(
            "  constrained      {} tokens at {:.1} tokens/s (the constraint: {:.1} % of decoding time)",
            held.out_tokens,
            held.gen_tps,
            cost * 100.0
        );
        println!(
            "  bound            {bound:.1} tokens/s ({:.0} MB of weights per token, {:.1} GB/s read on one core)",
            model.bytes_per_token() as f64 / 1e6,
            bandwidth / 1e9
        );
        if answers > 0 {
            println!(
                "  results          {free_ok}/{answers} well formed free, {held_ok}/{answers} held to the result schema"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
