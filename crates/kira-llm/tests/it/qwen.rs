//! The larger local model, Qwen2.5-Coder-0.5B-Instruct (qwen2, 491 MB). It
//! is installed only on request, so these tests are built only with the
//! `larger-model` feature, and run, failing without the model, with:
//!
//! ```text
//! ./scripts/install-models --with qwen2.5-coder-0.5b-instruct
//! cargo nextest run --workspace --features kira-llm/larger-model -E 'test(/qwen::/)'
//! ```

use std::sync::OnceLock;

use kira_llm::local::QWEN25_CODER_05B;
use kira_llm::{ChatRequest, LocalProvider, Message, Output, Provider, ToolSpec};
use serde_json::{Value, json};

use crate::local::models_dir;
use crate::schema_check::check;

const NEEDS: &str = "needs ./scripts/install-models --with qwen2.5-coder-0.5b-instruct";

fn qwen() -> &'static LocalProvider {
    static QWEN: OnceLock<LocalProvider> = OnceLock::new();
    QWEN.get_or_init(|| {
        LocalProvider::load(&QWEN25_CODER_05B.path(&models_dir()))
            .unwrap_or_else(|e| panic!("these tests {NEEDS}: {e}"))
    })
}

#[test]
fn the_tokenizer_gives_qwens_ids() {
    let p = qwen();
    assert_eq!(p.model(), "Qwen2.5-Coder-0.5B-Instruct");
    let t = p.tokenizer();
    let ids = |s: &str| t.encode_fast(s, false).expect("encode").get_ids().to_vec();
    assert_eq!(t.token_to_id("<|endoftext|>"), Some(151_643));
    assert_eq!(t.token_to_id("<|im_start|>"), Some(151_644));
    assert_eq!(t.token_to_id("<|im_end|>"), Some(151_645));
    // Qwen2's own ids for this text (its published tokenizer's).
    assert_eq!(ids("Hello, world!"), vec![9707, 11, 1879, 0]);
    // A user-defined token is one token, not its letters.
    assert_eq!(ids("<tool_call>").len(), 1);
    for s in [
        "Hello world",
        "The contract renews on 2025-03-01, for €12,500.",
        "  two spaces\nand a tab\t",
        "<|im_start|>system\nYou are kira.<|im_end|>\n",
        "naïve café — 東京",
    ] {
        assert_eq!(t.decode(&ids(s), false).expect("decode"), s);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_to_the_result_schema_every_answer_parses_and_validates() {
    let p = qwen();
    let schema = json!({
        "type": "object",
        "properties": {
            "summary": {"type": "string", "maxLength": 300},
            "answer": {"type": "string"},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1}
        },
        "required": ["summary", "answer", "confidence"],
        "additionalProperties": false
    });
    let mut failures = Vec::new();
    for prompt in kira_llm::local::SAMPLE_PROMPTS {
        let req = ChatRequest::new(p.model(), vec![Message::user(prompt)], 48).with_output(
            Output::Json {
                name: "result".into(),
                schema: schema.clone(),
            },
        );
        let r = p.chat(&req).await.expect("generate");
        match serde_json::from_str::<Value>(&r.message.content) {
            Ok(v) => {
                if let Err(e) = check(&v, &schema) {
                    failures.push(format!("{prompt}: {e}"));
                }
            }
            Err(e) => failures.push(format!("{prompt}: {e}: {:?}", r.message.content)),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_to_a_tool_call_the_model_names_an_offered_tool_and_answers_plainly_free() {
    let p = qwen();
    let tools = vec![ToolSpec {
        name: "search_memory".into(),
        description: "Search this company's memory.".into(),
        parameters: json!({
            "type": "object",
            "properties": {"query": {"type": "string", "maxLength": 80}},
            "required": ["query"],
            "additionalProperties": false
        }),
    }];
    let mut req = ChatRequest::new(
        p.model(),
        vec![Message::user("Find the Initech contract.")],
        48,
    )
    .with_output(Output::ToolCall);
    req.tools = tools.clone();
    let r = p.chat(&req).await.expect("generate");
    let [call] = r.message.tool_calls.as_slice() else {
        panic!("not one call: {r:?}");
    };
    assert_eq!(call.name, "search_memory");
    assert_eq!(check(&call.arguments, &tools[0].parameters), Ok(()));
    // Free, the model answers a plain question in words.
    let req = ChatRequest::new(
        p.model(),
        vec![Message::user("What is the capital of France?")],
        16,
    );
    let r = p.chat(&req).await.expect("generate");
    assert!(
        r.message.content.contains("Paris"),
        "{:?}",
        r.message.content
    );
}
