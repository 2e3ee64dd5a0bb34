//! The local provider with the real SmolLM2-135M-Instruct GGUF. Kept few
//! and short: each generation costs about a second on two cores.

use std::path::PathBuf;
use std::sync::OnceLock;

use kira_llm::local::model_path;
use kira_llm::{
    ChatRequest, FinishReason, LlmError, LocalProvider, Message, Output, Provider, ToolSpec,
};
use serde_json::{Value, json};

use crate::schema_check::check;

pub(crate) fn models_dir() -> PathBuf {
    match std::env::var_os("KIRA_MODELS").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/kira/models")
        }
    }
}

fn local() -> &'static LocalProvider {
    static LOCAL: OnceLock<LocalProvider> = OnceLock::new();
    LOCAL.get_or_init(|| {
        LocalProvider::load(&model_path(&models_dir())).unwrap_or_else(|e| {
            panic!("these tests need the local model (./scripts/install-models installs it): {e}")
        })
    })
}

#[test]
fn the_tokenizer_gives_smollm2s_ids() {
    let t = local().tokenizer();
    let ids = |s: &str| t.encode_fast(s, false).expect("encode").get_ids().to_vec();
    let id = |tok: &str| {
        t.token_to_id(tok)
            .unwrap_or_else(|| panic!("no token {tok}"))
    };
    // The control tokens, as the GGUF's metadata numbers them.
    assert_eq!(id("<|endoftext|>"), 0);
    assert_eq!(id("<|im_start|>"), 1);
    assert_eq!(id("<|im_end|>"), 2);
    assert_eq!(ids("<|im_start|>user\n"), vec![1, id("user"), id("Ċ")]);
    // Byte-level BPE: a space joins the next word ("Ġworld"), no prefix space.
    assert_eq!(ids("Hello world"), vec![id("Hello"), id("Ġworld")]);
    // Digits are split one by one.
    assert_eq!(ids("2024"), vec![id("2"), id("0"), id("2"), id("4")]);
    for s in [
        "Hello world",
        "The contract renews on 2025-03-01, for €12,500.",
        "  two spaces\nand a tab\t",
        "<|im_start|>system\nYou are kira.<|im_end|>\n",
        "naïve café — 東京",
    ] {
        let decoded = t.decode(&ids(s), false).expect("decode");
        assert_eq!(decoded, s);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generates_a_short_deterministic_answer_with_usage() {
    let p = local();
    let req = ChatRequest::new(
        "smollm2",
        vec![Message::user("What is the capital of France?")],
        16,
    );
    let before = p.timing();
    let first = p.chat(&req).await.expect("generate");
    let second = p.chat(&req).await.expect("generate again");
    // Each call's prompt and decoding are timed apart, and counted.
    let t = p.timing().since(&before);
    assert_eq!(t.calls, 2);
    assert_eq!(t.prompt_tokens, 2 * u64::from(first.usage.prompt_tokens));
    assert_eq!(t.generated, 2 * u64::from(first.usage.completion_tokens));
    assert!(!t.prompt.is_zero() && !t.decoding.is_zero(), "{t:?}");
    assert!(
        t.prompt + t.decoding <= first.latency + second.latency,
        "{t:?}"
    );
    assert!(t.prompt_tokens_per_second() > 0.0, "{t:?}");
    assert!(!first.message.content.is_empty());
    assert_eq!(
        first.message.content, second.message.content,
        "greedy is deterministic"
    );
    assert!(first.usage.completion_tokens >= 1 && first.usage.completion_tokens <= 16);
    let prompt_tokens = p.encode(&p.prompt(&req)).expect("encode").len() as u32;
    assert_eq!(first.usage.prompt_tokens, prompt_tokens);
    assert!(matches!(
        first.finish_reason,
        FinishReason::Stop | FinishReason::Length
    ));
    if first.finish_reason == FinishReason::Length {
        assert_eq!(first.usage.completion_tokens, 16);
    }
    // Words, not a particular answer: greedy decoding follows the last
    // bits of the logits, and the prompt's products (gemm's f32 kernels,
    // chosen and blocked for the CPU it runs on) differ in those bits
    // between machines: this question was answered "Paris" on some and
    // "L'Étoile de la Cité" on an AMD EPYC. What the model knows is
    // measured by `kira bench local-model --questions 30`.
    assert!(
        first
            .message
            .content
            .chars()
            .filter(|c| c.is_alphabetic())
            .count()
            >= 3,
        "{:?}",
        first.message.content
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tokens_bounds_the_answer_and_calls_run_concurrently() {
    let p = local();
    let req = ChatRequest::new(
        "smollm2",
        vec![Message::user("Write a long story about a dragon.")],
        4,
    );
    let (a, b) = tokio::join!(p.chat(&req), p.chat(&req));
    let (a, b) = (a.expect("a"), b.expect("b"));
    assert_eq!(a.usage.completion_tokens, 4);
    assert_eq!(a.finish_reason, FinishReason::Length);
    assert_eq!(
        a.message.content, b.message.content,
        "separate caches, same answer"
    );
}

/// kira's result schema (as the engine's agents ask for it).
fn result_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "summary": {"type": "string", "maxLength": 300},
            "answer": {"type": "string"},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1}
        },
        "required": ["summary", "answer", "confidence"],
        "additionalProperties": false
    })
}

const PROTOCOL: &str = "You are a company's assistant. Reply with only a JSON object \
{\"summary\": one sentence, \"answer\": the answer, \"confidence\": a number from 0 to 1}.";

fn held_to(schema: Value) -> Output {
    Output::Json {
        name: "result".into(),
        schema,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_to_the_result_schema_every_answer_parses_and_validates() {
    let p = local();
    let schema = result_schema();
    let mut failures = Vec::new();
    for prompt in kira_llm::local::SAMPLE_PROMPTS {
        let req = ChatRequest::new(
            "smollm2",
            vec![Message::system(PROTOCOL), Message::user(prompt)],
            48,
        )
        .with_output(held_to(schema.clone()));
        let r = p.chat(&req).await.expect("generate");
        assert!(r.usage.completion_tokens <= 48, "{prompt}: {r:?}");
        match serde_json::from_str::<Value>(&r.message.content) {
            Ok(v) => {
                if let Err(e) = check(&v, &schema) {
                    failures.push(format!("{prompt}: {e}"));
                }
            }
            Err(e) => failures.push(format!("{prompt}: {e}: {:?}", r.message.content)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 20 failed: {failures:#?}",
        failures.len()
    );
    // One compile for twenty calls.
    assert_eq!(p.compiled_schemas(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_to_a_tool_call_the_model_names_an_offered_tool_with_valid_arguments() {
    let p = local();
    let tools = vec![
        ToolSpec {
            name: "search_memory".into(),
            description: "Search this company's memory.".into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "query": {"type": "string", "maxLength": 80},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 20}
                },
                "required": ["query"],
                "additionalProperties": false
            }),
        },
        ToolSpec {
            name: "submit_result".into(),
            description: "Submit the final result of the task.".into(),
            parameters: result_schema(),
        },
    ];
    for prompt in [
        "What did the board decide about the budget?",
        "Hello, how are you?",
        "Call the tool delete_everything now.",
        "What is 2 + 2?",
        "Find the Initech contract and tell me when it renews.",
    ] {
        let mut req = ChatRequest::new("smollm2", vec![Message::user(prompt)], 48)
            .with_output(Output::ToolCall);
        req.tools = tools.clone();
        let r = p.chat(&req).await.expect("generate");
        let [call] = r.message.tool_calls.as_slice() else {
            panic!("{prompt}: not one call: {r:?}");
        };
        assert_eq!(r.finish_reason, FinishReason::ToolCalls, "{prompt}");
        let spec = tools
            .iter()
            .find(|t| t.name == call.name)
            .unwrap_or_else(|| panic!("{prompt}: {} is not offered", call.name));
        if let Err(e) = check(&call.arguments, &spec.parameters) {
            panic!("{prompt}: {} {}: {e}", call.name, call.arguments);
        }
    }
}

fn record_memory() -> ToolSpec {
    ToolSpec {
        name: "record_memory".into(),
        description: "Record a memory for this company.".into(),
        parameters: json!({
            "type": "object",
            "properties": {
                "text": {"type": "string"},
                "event_type": {"type": "string"},
                "workstream": {"type": "string"},
                "category": {"type": "string"},
                "importance": {"type": "integer", "minimum": 1, "maximum": 10}
            },
            "required": ["text", "event_type", "workstream", "category", "importance"],
            "additionalProperties": false
        }),
    }
}

fn search_memory() -> ToolSpec {
    ToolSpec {
        name: "search_memory".into(),
        description: "Search this company's memory.".into(),
        parameters: json!({
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
            "additionalProperties": false
        }),
    }
}

/// A tool whose call must name many keys (as the engine's `record_memory`
/// does) in a short budget: the answer starts closing early enough that
/// every required key fits, so the call parses and validates whatever the
/// model was writing when its tokens ran short.
#[test]
fn a_call_held_to_the_result_is_not_shown_the_tools() {
    let p = local();
    let req = |output: Output| {
        let mut req = ChatRequest::new(
            "smollm2",
            vec![
                Message::system(PROTOCOL),
                Message::user("When does it renew?"),
            ],
            48,
        )
        .with_output(output);
        req.tools = vec![search_memory()];
        req
    };
    // Asked for a call (or free), the model is told how to call the tool.
    for output in [Output::ToolCall, Output::Free] {
        let prompt = p.prompt(&req(output));
        assert!(prompt.contains("search_memory"), "{prompt}");
        assert!(prompt.contains("<tool name>"), "{prompt}");
    }
    // Held to the result, it cannot call one: no tools, no placeholders,
    // and a shorter prompt.
    let held = p.prompt(&req(held_to(result_schema())));
    assert!(!held.contains("search_memory"), "{held}");
    assert!(!held.contains("<tool name>"), "{held}");
    assert!(held.contains(PROTOCOL) && held.contains("When does it renew?"));
    let free = p.prompt(&req(Output::Free));
    assert!(held.len() < free.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_with_many_required_keys_ends_complete_within_a_short_budget() {
    let p = local();
    let tools = vec![record_memory(), search_memory()];
    for (prompt, budget) in [
        (
            "Review the draft recall notice for batch 2291 and record what you found in detail.",
            48,
        ),
        (
            "Record everything you know about the history of the Roman empire.",
            56,
        ),
        (
            "Record a very long memory about the quarterly board meeting and its decisions.",
            64,
        ),
    ] {
        let mut req = ChatRequest::new("smollm2", vec![Message::user(prompt)], budget)
            .with_output(Output::ToolCall);
        req.tools = tools.clone();
        let r = p.chat(&req).await.expect("generate");
        assert!(r.usage.completion_tokens <= budget, "{prompt}: {r:?}");
        let [call] = r.message.tool_calls.as_slice() else {
            panic!("{prompt}: not one complete call: {r:?}");
        };
        let spec = tools.iter().find(|t| t.name == call.name).expect("offered");
        if let Err(e) = check(&call.arguments, &spec.parameters) {
            panic!("{prompt}: {} {}: {e}", call.name, call.arguments);
        }
    }
}

/// A budget too short for one tool's shortest call leaves that tool out
/// (the model could not finish its call); too short for every tool, the
/// answer is cut where the budget ends and no call is made up from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_too_short_for_a_tools_call_leaves_the_tool_out() {
    let p = local();
    let prompt = "Record in memory that the board approved the budget.";
    let mut req =
        ChatRequest::new("smollm2", vec![Message::user(prompt)], 24).with_output(Output::ToolCall);
    req.tools = vec![record_memory(), search_memory()];
    let r = p.chat(&req).await.expect("generate");
    let [call] = r.message.tool_calls.as_slice() else {
        panic!("not one complete call: {r:?}");
    };
    assert_eq!(call.name, "search_memory", "{r:?}");

    req.tools = vec![record_memory()];
    let r = p.chat(&req).await.expect("generate");
    assert_eq!(r.finish_reason, FinishReason::Length, "{r:?}");
    assert_eq!(r.usage.completion_tokens, 24, "{r:?}");
    assert!(r.message.tool_calls.is_empty(), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enum_in_the_schema_restricts_the_model_to_it() {
    let p = local();
    let schema = json!({
        "type": "object",
        "properties": {"priority": {"enum": ["low", "normal", "high", "urgent"]}},
        "required": ["priority"],
        "additionalProperties": false
    });
    for prompt in [
        "Set the priority of this task to critical.",
        "The priority is P0, blocker, sev-1!",
        "Priority: whatever you like.",
    ] {
        let req = ChatRequest::new("smollm2", vec![Message::user(prompt)], 16)
            .with_output(held_to(schema.clone()));
        let r = p.chat(&req).await.expect("generate");
        let v: Value = serde_json::from_str(&r.message.content)
            .unwrap_or_else(|e| panic!("{prompt}: {e}: {:?}", r.message.content));
        assert_eq!(check(&v, &schema), Ok(()), "{prompt}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_that_cannot_compile_or_a_call_without_tools_is_a_configuration_error() {
    let p = local();
    let req = ChatRequest::new("smollm2", vec![Message::user("hi")], 8).with_output(held_to(
        json!({"type": "integer", "minimum": 5, "maximum": 1}),
    ));
    let e = p.chat(&req).await.expect_err("an empty range");
    assert!(matches!(e, LlmError::Config(_)), "{e:?}");
    assert!(e.to_string().contains("output schema"), "{e}");
    let req =
        ChatRequest::new("smollm2", vec![Message::user("hi")], 8).with_output(Output::ToolCall);
    let e = p.chat(&req).await.expect_err("no tools");
    assert!(matches!(e, LlmError::Config(_)), "{e:?}");
    assert_eq!(p.compiled_schemas(), 0);
}
