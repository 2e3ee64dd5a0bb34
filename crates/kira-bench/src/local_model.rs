//! `kira bench local-model`: a local model (SmolLM2-135M by default, or
//! the one `--model` names, in process) on this machine: its load time,
//! prompt and generation speed, free and held to an output schema (what
//! constrained decoding costs), against the bound memory bandwidth sets
//! (weights read per token over bytes read per second on one core, as
//! generation runs), how often its answer to a varied prompt parses as an
//! agent's result, free and held to the result schema, and how many of
//! [`QUESTIONS`] it answers right, held to the result schema and free.

use std::process::ExitCode;
use std::time::Instant;

use kira_engine::agent::result;
use kira_llm::local::{LOCAL_MODELS, LocalModel, SAMPLE_PROMPTS};
use kira_llm::{ChatRequest, LocalProvider, Message, Output, Provider};
use serde_json::json;

use crate::BenchError;

/// Output tokens per answer in the result check (an agent's answer on
/// the local model is allowed 200; fewer keep the check short).
const ANSWER_TOKENS: u32 = 64;

/// Thirty short tasks with a known answer: general knowledge, arithmetic,
/// language, reading a fact out of a short context beside a distractor
/// (what an agent does with a company's memory), and a little reasoning.
/// Each answer is right when its text (summary and answer) names one of
/// the accepted strings as a whole word or number, in any case. Only a
/// question that gives a context holds its answer, beside a distractor.
pub const QUESTIONS: [(&str, &[&str]); 30] = [
    ("What is the capital of France?", &["Paris"]),
    ("What is the capital of Japan?", &["Tokyo"]),
    ("Which planet is known as the Red Planet?", &["Mars"]),
    ("What is the largest ocean on Earth?", &["Pacific"]),
    ("Who wrote the play Romeo and Juliet?", &["Shakespeare"]),
    ("What language is mainly spoken in Brazil?", &["Portuguese"]),
    ("Which animal is called the king of the jungle?", &["lion"]),
    (
        "What gas do plants take from the air for photosynthesis?",
        &["carbon dioxide", "CO2"],
    ),
    ("How many legs does a spider have?", &["8", "eight"]),
    (
        "At how many degrees Celsius does water boil at sea level?",
        &["100"],
    ),
    ("What is 17 times 3?", &["51"]),
    ("What is 100 minus 37?", &["63"]),
    ("What is 12 plus 30?", &["42"]),
    ("What is 25% of 200?", &["50"]),
    ("What is the square root of 81?", &["9", "nine"]),
    ("What is the next number: 2, 4, 6, 8, ...?", &["10", "ten"]),
    ("How many hours are in a day?", &["24", "twenty-four"]),
    ("Translate 'thank you' into French.", &["merci"]),
    ("Translate 'good morning' into German.", &["guten Morgen"]),
    ("What is the opposite of 'hot'?", &["cold"]),
    ("Which month comes after October?", &["November"]),
    (
        "Context: Hofmann Foods ships on Tuesdays; Globex ships on Fridays. \
         On which day does Globex ship?",
        &["Friday", "Fridays"],
    ),
    (
        "Context: the 2026 budget was 3 million dollars; the 2027 budget is 4 million \
         dollars. What is the 2027 budget?",
        &["4 million", "4,000,000", "4000000", "four million"],
    ),
    (
        "Context: Alice Moreau is Acme's CEO and Bob Tanaka is its CFO. Who is Acme's CFO?",
        &["Bob Tanaka", "Tanaka"],
    ),
    (
        "Context: the office closes at 6 pm and the warehouse at 4 pm. When does the \
         warehouse close?",
        &["4 pm", "4pm", "4:00", "16:00", "four"],
    ),
    (
        "Context: invoice 1043 is for 2,500 euros and invoice 1044 is for 900 euros. \
         How much is invoice 1044?",
        &["900"],
    ),
    (
        "Context: the Initech contract renews on 1 March 2027; the Globex lease ends in \
         June 2028. In which month does the Initech contract renew?",
        &["March"],
    ),
    (
        "Context: the Globex lease starts on 2 May and runs for three years. For how many \
         years does it run?",
        &["3", "three"],
    ),
    (
        "We have 1.2 million dollars in cash and spend 100,000 dollars a month. How many \
         months of runway is that?",
        &["12", "twelve"],
    ),
    ("Spell the word 'cat' backwards.", &["tac"]),
];

/// Whether `text` names `expected` as a whole word or number (no letter
/// or digit right before or after it), in any case.
pub fn names(text: &str, expected: &str) -> bool {
    let (text, expected) = (text.to_lowercase(), expected.to_lowercase());
    text.match_indices(&expected).any(|(i, m)| {
        let before = text[..i].chars().next_back();
        let after = text[i + m.len()..].chars().next();
        !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
    })
}

/// How many of the first `n` [`QUESTIONS`] the model answers right as
/// `output` asks, and the questions it got wrong with its answers. Held to
/// the result schema an answer is right when it parses as a result whose
/// summary or answer names an accepted string; free, when its text does,
/// whatever its shape (the share of free answers that parse at all is
/// `results_well_formed_free`).
async fn quality(
    model: &LocalProvider,
    n: usize,
    output: &Output,
) -> Result<(usize, Vec<(String, String)>), BenchError> {
    let (mut right, mut wrong) = (0, Vec::new());
    for (question, accepted) in QUESTIONS.iter().take(n) {
        let req = ChatRequest::new(
            model.model(),
            vec![
                Message::system(kira_engine::agent::prompts::builtin(
                    kira_engine::config::PRIMARY,
                )),
                Message::user(*question),
            ],
            ANSWER_TOKENS,
        )
        .with_output(output.clone());
        let r = model.chat(&req).await?;
        let found = |text: &str| accepted.iter().any(|a| names(text, a));
        let is_right = if matches!(output, Output::Free) {
            found(&r.message.content)
        } else {
            let res = result::from_text(&r.message.content);
            res.well_formed && found(&format!("{} {}", res.summary, res.answer))
        };
        if is_right {
            right += 1;
        } else {
            wrong.push((question.to_string(), r.message.content));
        }
    }
    Ok((right, wrong))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Prompt and generation speed for requests made by `req(max_tokens)`
/// with `tokens` out, the medians of `runs` calls.
async fn speed(
    model: &LocalProvider,
    req: impl Fn(u32) -> ChatRequest,
    tokens: u32,
    runs: u32,
) -> Result<Speed, BenchError> {
    // Each call's prompt and decoding are timed apart by the provider, so
    // neither speed is the difference of two calls (which a long prompt's
    // noise could swallow).
    let (mut prompt_tps, mut gen_tps, mut prompt_tokens, mut out_tokens) = (vec![], vec![], 0, 0);
    for _ in 0..runs {
        let before = model.timing();
        let r = model.chat(&req(tokens)).await?;
        let t = model.timing().since(&before);
        prompt_tps.push(t.prompt_tokens_per_second());
        gen_tps.push(t.generation_tokens_per_second());
        prompt_tokens = r.usage.prompt_tokens;
        out_tokens = r.usage.completion_tokens;
    }
    Ok(Speed {
        prompt_tokens,
        prompt_tps: median(prompt_tps),
        out_tokens,
        gen_tps: median(gen_tps),
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
            model.model(),
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

/// What `kira bench local-model` is asked for.
#[derive(Debug, Clone, clap::Args)]
pub struct LocalModelArgs {
    /// Output tokens of the generation run.
    #[arg(long, default_value_t = 64)]
    pub tokens: u32,
    /// Runs of each kind; the medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// How many of the built-in prompts (at most 20) to answer free
    /// and held to the result schema; 0 skips the check.
    #[arg(long, default_value_t = 20)]
    pub answers: usize,
    /// How many of the 30 questions with known answers to ask, held to
    /// the result schema and free; 0 skips the check.
    #[arg(long, default_value_t = 30)]
    pub questions: usize,
    /// The local model: SmolLM2-135M-Instruct (the default) or
    /// Qwen2.5-Coder-0.5B-Instruct (installed by
    /// `./scripts/install-models --with qwen2.5-coder-0.5b-instruct`).
    #[arg(long, default_value = kira_llm::local::LOCAL_MODEL)]
    pub model: String,
    /// How many times the speed prompt repeats its two facts: 12 gives
    /// ~436 tokens (an agent's first call on a short context); 60, ~2,000
    /// (a run's later calls, with the tools' results).
    #[arg(long, default_value_t = 12)]
    pub prompt_repeat: usize,
}

/// Times the local model and checks its answers; see the module.
pub async fn command(args: LocalModelArgs, json: bool) -> Result<ExitCode, BenchError> {
    let LocalModelArgs {
        tokens,
        runs,
        answers,
        questions,
        model,
        prompt_repeat,
    } = args;
    if tokens < 2
        || runs == 0
        || answers > SAMPLE_PROMPTS.len()
        || questions > QUESTIONS.len()
        || !(1..=200).contains(&prompt_repeat)
    {
        return Err(BenchError::Invalid(format!(
            "--tokens must be at least 2, --runs at least 1, --answers at most {}, \
             --questions at most {} and --prompt-repeat between 1 and 200",
            SAMPLE_PROMPTS.len(),
            QUESTIONS.len()
        )));
    }
    let Some(chosen) = LocalModel::named(&model) else {
        let known: Vec<&str> = LOCAL_MODELS.iter().map(|m| m.name).collect();
        return Err(BenchError::Invalid(format!(
            "--model must be one of {}",
            known.join(", ")
        )));
    };
    let path = chosen.path(&kira_embed::models_dir());
    let t0 = Instant::now();
    let model = LocalProvider::load(&path)?;
    let load = t0.elapsed().as_secs_f64();
    // A prompt of the size an agent's first call has on the local model.
    let context = "The board approved the 2027 budget of 4 million dollars. \
                   The Initech contract renews on 1 March 2027. "
        .repeat(prompt_repeat);
    let req = |max| {
        ChatRequest::new(
            model.model(),
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
    let (right, wrong) = quality(&model, questions, &result_output).await?;
    let (right_free, _) = quality(&model, questions, &Output::Free).await?;
    let r = json!({
        "model": model.model(),
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
        "questions": questions,
        "questions_right": right,
        "questions_right_free": right_free,
        "questions_wrong": wrong
            .iter()
            .map(|(q, a)| json!({"question": q, "answer": a}))
            .collect::<Vec<_>>(),
        "runs": runs,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("local model: {}", model.model());
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
        if questions > 0 {
            println!(
                "  questions        {right}/{questions} answered right, held to the result schema; {right_free}/{questions} free"
            );
            for (q, a) in &wrong {
                println!("    wrong: {q}\n      {a}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_names_the_expected_word_or_number_whole_in_any_case() {
        assert!(names("The capital is PARIS.", "Paris"));
        assert!(names("It closes at 4 pm", "4 pm"));
        assert!(names("51", "51"));
        assert!(!names("about 510 of them", "51"));
        assert!(!names("Parisian", "Paris"));
        assert!(!names("", "Paris"));
        assert!(names("carbon dioxide (CO2)", "co2"));
    }

    #[test]
    fn only_a_question_with_a_context_holds_its_answer() {
        for (question, accepted) in QUESTIONS {
            assert!(!accepted.is_empty(), "{question}");
            let held = accepted.iter().any(|a| names(question, a));
            assert_eq!(held, question.starts_with("Context:"), "{question}");
        }
    }
}
