//! The OpenAI-compatible provider against the fake server.

use std::time::Duration;

use kira_llm::{ChatRequest, FinishReason, LlmError, Message, OpenAi, Output, Provider, ToolSpec};
use serde_json::json;

use crate::fake::{Fake, Reply};

fn provider(fake: &Fake, key: Option<&str>) -> OpenAi {
    OpenAi::new(
        "openai",
        &format!("{}/v1/", fake.base),
        key.map(str::to_string),
        Duration::from_secs(5),
    )
    .expect("provider")
}

fn search_tool() -> ToolSpec {
    ToolSpec {
        name: "search_memory".into(),
        description: "Search the company's memories.".into(),
        parameters: json!({"type": "object", "properties": {"query": {"type": "string"}}}),
    }
}

#[tokio::test]
async fn request_shape_and_a_tool_call_answer() {
    let fake = Fake::start(vec![Reply::json(json!({
        "id": "chatcmpl-1",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": null,
                "tool_calls": [{
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "search_memory", "arguments": "{\"query\":\"contract\"}"}
                }]
            },
            "finish_reason": "tool_calls"
        }],
        "usage": {"prompt_tokens": 57, "completion_tokens": 18, "total_tokens": 75}
    }))])
    .await;
    let mut req = ChatRequest::new(
        "gpt-4o-mini",
        vec![
            Message::system("You are terse."),
            Message::user("Find the contract"),
        ],
        128,
    );
    req.temperature = Some(0.2);
    req.tools.push(search_tool());

    let r = provider(&fake, Some("sk-test-123"))
        .chat(&req)
        .await
        .expect("chat");

    assert_eq!(r.finish_reason, FinishReason::ToolCalls);
    assert_eq!(r.usage.prompt_tokens, 57);
    assert_eq!(r.usage.completion_tokens, 18);
    assert_eq!(r.model, "gpt-4o-mini-2024-07-18");
    assert_eq!(r.message.content, "");
    assert_eq!(r.message.tool_calls.len(), 1);
    assert_eq!(r.message.tool_calls[0].id, "call_abc");
    assert_eq!(r.message.tool_calls[0].name, "search_memory");
    assert_eq!(
        r.message.tool_calls[0].arguments,
        json!({"query": "contract"})
    );

    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(seen[0].headers["authorization"], "Bearer sk-test-123");
    assert_eq!(
        seen[0].headers["content-type"], "application/json",
        "JSON body"
    );
    let body = &seen[0].body;
    assert_eq!(body["model"], json!("gpt-4o-mini"));
    assert_eq!(body["max_tokens"], json!(128));
    assert!((body["temperature"].as_f64().expect("temperature") - 0.2).abs() < 1e-6);
    assert_eq!(
        body["messages"],
        json!([
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Find the contract"}
        ])
    );
    assert_eq!(
        body["tools"],
        json!([{"type": "function", "function": {
            "name": "search_memory",
            "description": "Search the company's memories.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}
        }}])
    );
}

#[tokio::test]
async fn text_answer_without_a_key_sends_no_authorization() {
    let fake = Fake::start(vec![Reply::json(json!({
        "model": "llama3.2",
        "choices": [{"message": {"role": "assistant", "content": "Paris."}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2}
    }))])
    .await;
    let req = ChatRequest::new("llama3.2", vec![Message::user("Capital of France?")], 2);
    let r = provider(&fake, None).chat(&req).await.expect("chat");
    assert_eq!(r.message.content, "Paris.");
    assert_eq!(r.finish_reason, FinishReason::Length);
    assert_eq!(r.usage.total(), 11);
    assert!(fake.seen()[0].headers.get("authorization").is_none());
    assert!(fake.seen()[0].body.get("tools").is_none());
}

#[tokio::test]
async fn an_output_schema_goes_as_response_format_and_a_required_call_as_tool_choice() {
    let fake = Fake::start(vec![Reply::json(json!({
        "model": "gpt-4o-mini",
        "choices": [{"message": {"role": "assistant", "content": "{\"answer\":\"4\",\"confidence\":0.9}"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 9}
    }))])
    .await;
    let schema = json!({
        "type": "object",
        "properties": {"answer": {"type": "string"}, "confidence": {"type": "number", "minimum": 0, "maximum": 1}},
        "required": ["answer", "confidence"],
        "additionalProperties": false
    });
    let p = provider(&fake, None);
    let mut req = ChatRequest::new("gpt-4o-mini", vec![Message::user("2+2?")], 32).with_output(
        Output::Json {
            name: "result".into(),
            schema: schema.clone(),
        },
    );
    let r = p.chat(&req).await.expect("chat");
    assert_eq!(r.message.content, "{\"answer\":\"4\",\"confidence\":0.9}");
    req.tools.push(search_tool());
    req.output = Output::ToolCall;
    p.chat(&req).await.expect("chat");
    let seen = fake.seen();
    assert_eq!(
        seen[0].body["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "result", "schema": schema, "strict": true}})
    );
    assert!(seen[0].body.get("tool_choice").is_none());
    assert_eq!(seen[1].body["tool_choice"], json!("required"));
    assert!(seen[1].body.get("response_format").is_none());
}

#[tokio::test]
async fn error_statuses_keep_status_and_retry_after_but_never_the_key() {
    let fake = Fake::start(vec![
        Reply::status(429, r#"{"error": {"message": "slow down"}}"#).header("retry-after", "7"),
        Reply::status(
            401,
            r#"{"error": {"message": "Incorrect API key provided: sk-test-123"}}"#,
        ),
        Reply::status(503, "overloaded").header("retry-after-ms", "1500"),
    ])
    .await;
    let p = provider(&fake, Some("sk-test-123"));
    let req = ChatRequest::new("m", vec![Message::user("x")], 4);

    match p.chat(&req).await {
        Err(LlmError::RateLimited { retry_after, .. }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(7)))
        }
        other => panic!("expected 429, got {other:?}"),
    }
    let e = p.chat(&req).await.expect_err("401");
    assert!(matches!(e, LlmError::Status { status: 401, .. }), "{e:?}");
    assert!(!e.to_string().contains("sk-test-123"), "{e}");
    assert!(!format!("{e:?}").contains("sk-test-123"), "{e:?}");
    assert!(!e.is_retryable());
    let e = p.chat(&req).await.expect_err("503");
    assert!(matches!(e, LlmError::Status { status: 503, .. }), "{e:?}");
    assert_eq!(e.retry_after(), Some(Duration::from_millis(1500)));
    assert!(e.is_retryable());
}

#[tokio::test]
async fn truncated_and_malformed_bodies_are_decode_errors() {
    for body in [
        r#"{"choices": [{"message": {"content": "hel"#,
        "<html>gateway</html>",
        r#"{"choices": []}"#,
        "",
    ] {
        let fake = Fake::start(vec![Reply::status(200, body)]).await;
        let req = ChatRequest::new("m", vec![Message::user("x")], 4);
        let e = provider(&fake, None).chat(&req).await.expect_err(body);
        assert!(matches!(e, LlmError::Decode { .. }), "{body:?}: {e:?}");
    }
}

#[tokio::test]
async fn a_refused_connection_is_a_retryable_http_error() {
    // Bind and drop, so the port is (almost certainly) closed.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let p = OpenAi::new(
        "openai",
        &format!("http://127.0.0.1:{port}/v1"),
        Some("sk-secret-9".into()),
        Duration::from_secs(2),
    )
    .expect("provider");
    let e = p
        .chat(&ChatRequest::new("m", vec![Message::user("x")], 4))
        .await
        .expect_err("refused");
    assert!(matches!(e, LlmError::Http { .. }), "{e:?}");
    assert!(e.is_retryable());
    assert!(!e.to_string().contains("sk-secret-9"));
}
