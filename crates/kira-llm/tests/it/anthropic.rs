//! The Anthropic provider against the fake server.

use std::time::Duration;

use kira_llm::{
    ANTHROPIC_VERSION, Anthropic, ChatRequest, FinishReason, LlmError, Message, Output, Provider,
    ToolCall, ToolSpec,
};
use serde_json::json;

use crate::fake::{Fake, Reply};

fn provider(fake: &Fake) -> Anthropic {
    Anthropic::new(
        "anthropic",
        &fake.base,
        "ak-test-456".into(),
        Duration::from_secs(5),
    )
    .expect("provider")
}

#[tokio::test]
async fn request_shape_tool_use_out_and_tool_result_in() {
    let fake = Fake::start(vec![Reply::json(json!({
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-5-haiku-20241022",
        "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_2", "name": "search_memory", "input": {"query": "renewal"}}
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 120, "output_tokens": 33}
    }))])
    .await;
    let mut earlier = Message::assistant("");
    earlier.tool_calls.push(ToolCall {
        id: "toolu_1".into(),
        name: "search_memory".into(),
        arguments: json!({"query": "contract"}),
    });
    let mut req = ChatRequest::new(
        "claude-3-5-haiku-latest",
        vec![
            Message::system("You are the legal specialist."),
            Message::user("When does the contract renew?"),
            earlier,
            Message::tool("toolu_1", "Signed 2024-03-01 for one year."),
        ],
        256,
    );
    req.tools.push(ToolSpec {
        name: "search_memory".into(),
        description: "Search memories.".into(),
        parameters: json!({"type": "object", "properties": {"query": {"type": "string"}}}),
    });

    let r = provider(&fake).chat(&req).await.expect("chat");
    assert_eq!(r.finish_reason, FinishReason::ToolCalls);
    assert_eq!(r.message.content, "Checking.");
    assert_eq!(r.message.tool_calls.len(), 1);
    assert_eq!(r.message.tool_calls[0].id, "toolu_2");
    assert_eq!(
        r.message.tool_calls[0].arguments,
        json!({"query": "renewal"})
    );
    assert_eq!(r.usage.prompt_tokens, 120);
    assert_eq!(r.usage.completion_tokens, 33);
    assert_eq!(r.model, "claude-3-5-haiku-20241022");

    let seen = &fake.seen()[0];
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.headers["x-api-key"], "ak-test-456");
    assert_eq!(seen.headers["anthropic-version"], ANTHROPIC_VERSION);
    assert!(seen.headers.get("authorization").is_none());
    assert_eq!(
        seen.body,
        json!({
            "model": "claude-3-5-haiku-latest",
            "max_tokens": 256,
            "system": "You are the legal specialist.",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "When does the contract renew?"}]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "search_memory", "input": {"query": "contract"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Signed 2024-03-01 for one year."}
                ]}
            ],
            "tools": [{
                "name": "search_memory",
                "description": "Search memories.",
                "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}
            }]
        })
    );
}

#[tokio::test]
async fn an_output_schema_is_a_forced_tool_whose_input_is_the_answer() {
    let fake = Fake::start(vec![Reply::json(json!({
        "model": "claude-3-5-haiku",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "result", "input": {"answer": "4", "confidence": 0.9}}],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 10, "output_tokens": 12}
    }))])
    .await;
    let schema = json!({
        "type": "object",
        "properties": {"answer": {"type": "string"}, "confidence": {"type": "number"}},
        "required": ["answer", "confidence"]
    });
    let req =
        ChatRequest::new("claude", vec![Message::user("2+2?")], 64).with_output(Output::Json {
            name: "result".into(),
            schema: schema.clone(),
        });
    let r = provider(&fake).chat(&req).await.expect("chat");
    let answer: serde_json::Value = serde_json::from_str(&r.message.content).expect("JSON text");
    assert_eq!(answer, json!({"answer": "4", "confidence": 0.9}));
    assert!(r.message.tool_calls.is_empty());
    assert_eq!(r.finish_reason, FinishReason::Stop);
    let body = &fake.seen()[0].body;
    assert_eq!(
        body["tool_choice"],
        json!({"type": "tool", "name": "result"})
    );
    assert_eq!(body["tools"][0]["input_schema"], schema);
}

#[tokio::test]
async fn end_turn_and_max_tokens() {
    let fake = Fake::start(vec![
        Reply::json(json!({
            "content": [{"type": "text", "text": "Yes."}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 10, "output_tokens": 2}
        })),
        Reply::json(json!({
            "content": [{"type": "text", "text": "It dep"}],
            "stop_reason": "max_tokens",
            "usage": {"input_tokens": 10, "output_tokens": 3}
        })),
    ])
    .await;
    let req = ChatRequest::new("claude", vec![Message::user("ok?")], 3);
    let p = provider(&fake);
    let r = p.chat(&req).await.expect("first");
    assert_eq!(
        (r.message.content.as_str(), r.finish_reason),
        ("Yes.", FinishReason::Stop)
    );
    assert_eq!(
        r.model, "claude",
        "the requested model when none is reported"
    );
    let r = p.chat(&req).await.expect("second");
    assert_eq!(r.finish_reason, FinishReason::Length);
    assert!(fake.seen()[0].body.get("system").is_none());
}

#[tokio::test]
async fn overloaded_and_rate_limited_are_retryable_and_the_key_is_scrubbed() {
    let fake = Fake::start(vec![
        Reply::status(
            529,
            r#"{"type":"error","error":{"type":"overloaded_error"}}"#,
        ),
        Reply::status(
            429,
            r#"{"type":"error","error":{"message":"key ak-test-456 over limit"}}"#,
        )
        .header("retry-after", "2"),
        Reply::status(200, r#"{"content": [{"type": "text""#),
    ])
    .await;
    let p = provider(&fake);
    let req = ChatRequest::new("claude", vec![Message::user("x")], 3);
    let e = p.chat(&req).await.expect_err("529");
    assert!(matches!(e, LlmError::Status { status: 529, .. }) && e.is_retryable());
    let e = p.chat(&req).await.expect_err("429");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
    assert!(!e.to_string().contains("ak-test-456"), "{e}");
    let e = p.chat(&req).await.expect_err("truncated");
    assert!(matches!(e, LlmError::Decode { .. }), "{e:?}");
}
