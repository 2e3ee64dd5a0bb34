//! The local provider with the real SmolLM2-135M-Instruct GGUF. Kept few
//! and short: each generation costs about a second on two cores.

use std::path::PathBuf;
use std::sync::OnceLock;

use kira_llm::local::model_path;
use kira_llm::{ChatRequest, FinishReason, LocalProvider, Message, Provider};

fn models_dir() -> PathBuf {
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
    let first = p.chat(&req).await.expect("generate");
    let second = p.chat(&req).await.expect("generate again");
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
    assert!(
        first.message.content.contains("Paris"),
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
