//! Streaming against the fake server: server-sent events in each wire
//! format, text handed over as it arrives, tool calls and usage put
//! together, and streams that break off or are refused.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kira_llm::{
    Anthropic, ChatRequest, FinishReason, LlmError, Message, OpenAi, Provider, Resilient,
    RetryPolicy,
};
use serde_json::json;

use crate::fake::{Fake, RecordingSleeper, Reply};

fn sse(events: &[(&str, serde_json::Value)]) -> String {
    events
        .iter()
        .map(|(name, data)| {
            if name.is_empty() {
                format!("data: {data}\n\n")
            } else {
                format!("event: {name}\ndata: {data}\n\n")
            }
        })
        .collect()
}

fn req() -> ChatRequest {
    ChatRequest::new("m", vec![Message::user("hi")], 64)
}

fn collector() -> (Arc<Mutex<Vec<String>>>, impl Fn(&str) + Send + Sync) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    (got, move |t: &str| {
        g.lock().expect("lock").push(t.to_owned())
    })
}

fn openai(fake: &Fake) -> OpenAi {
    OpenAi::new(
        "openai",
        &format!("{}/v1", fake.base),
        Some("sk-x".into()),
        Duration::from_secs(5),
    )
    .expect("provider")
}

#[tokio::test]
async fn openai_streams_text_then_tool_calls_and_usage() {
    let chunk = |delta: serde_json::Value, finish: Option<&str>| json!({"id": "c", "model": "gpt-x", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    let mut body = sse(&[
        (
            "",
            chunk(json!({"role": "assistant", "content": "Hel"}), None),
        ),
        ("", chunk(json!({"content": "lo"}), None)),
        (
            "",
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "search_memory", "arguments": "{\"que"}}]}),
                None,
            ),
        ),
        (
            "",
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "ry\":\"x\"}"}}]}),
                None,
            ),
        ),
        ("", chunk(json!({}), Some("tool_calls"))),
        (
            "",
            json!({"id": "c", "model": "gpt-x", "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7}}),
        ),
    ]);
    body.push_str("data: [DONE]\n\n");
    let fake = Fake::start(vec![Reply::status(200, &body)]).await;
    let (got, on_text) = collector();
    let r = openai(&fake)
        .chat_stream(&req(), &on_text)
        .await
        .expect("stream");
    assert_eq!(*got.lock().expect("lock"), ["Hel", "lo"]);
    assert_eq!(r.message.content, "Hello");
    assert_eq!(r.message.tool_calls.len(), 1);
    assert_eq!(r.message.tool_calls[0].id, "call_1");
    assert_eq!(r.message.tool_calls[0].arguments, json!({"query": "x"}));
    assert_eq!(r.finish_reason, FinishReason::ToolCalls);
    assert_eq!((r.usage.prompt_tokens, r.usage.completion_tokens), (11, 7));
    assert_eq!(r.model, "gpt-x");
    let seen = fake.seen();
    assert_eq!(seen[0].body["stream"], true);
    assert_eq!(seen[0].body["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn a_stream_that_breaks_off_is_an_unreadable_response() {
    let body = sse(&[(
        "",
        json!({"id": "c", "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": null}]}),
    )]);
    let fake = Fake::start(vec![Reply::status(200, &body)]).await;
    let (_got, on_text) = collector();
    let e = openai(&fake)
        .chat_stream(&req(), &on_text)
        .await
        .expect_err("cut off");
    assert!(matches!(e, LlmError::Decode { .. }), "{e}");
    let fake = Fake::start(vec![Reply::status(200, "data: {not json\n\n")]).await;
    let e = openai(&fake)
        .chat_stream(&req(), &on_text)
        .await
        .expect_err("malformed");
    assert!(matches!(e, LlmError::Decode { .. }), "{e}");
}

#[tokio::test]
async fn a_refused_stream_is_retried_like_a_call() {
    let ok = format!(
        "{}data: [DONE]\n\n",
        sse(&[(
            "",
            json!({"model": "m", "choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1}})
        )])
    );
    let fake = Fake::start(vec![
        Reply::status(429, "{}").header("retry-after", "2"),
        Reply::status(200, &ok),
    ])
    .await;
    let sleeper = Arc::new(RecordingSleeper::default());
    let p = Resilient::new(Arc::new(openai(&fake)), RetryPolicy::default())
        .with_sleeper(sleeper.clone());
    let (got, on_text) = collector();
    let r = p.chat_stream(&req(), &on_text).await.expect("retried");
    assert_eq!(r.message.content, "ok");
    assert_eq!(*got.lock().expect("lock"), ["ok"]);
    assert_eq!(sleeper.waits(), [Duration::from_secs(2)]);
}

#[tokio::test]
async fn anthropic_streams_text_and_tool_use() {
    let body = sse(&[
        (
            "message_start",
            json!({"type": "message_start", "message": {"id": "m1", "model": "claude-x",
            "usage": {"input_tokens": 20, "output_tokens": 1, "cache_read_input_tokens": 5}}}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me "}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "look."}}),
        ),
        (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "tu_1", "name": "search_memory", "input": {}}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"query\": "}}),
        ),
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "\"renewal\"}"}}),
        ),
        (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 1}),
        ),
        (
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
        ),
        ("message_stop", json!({"type": "message_stop"})),
    ]);
    let fake = Fake::start(vec![Reply::status(200, &body)]).await;
    let p = Anthropic::new(
        "anthropic",
        &fake.base,
        "ak-x".into(),
        Duration::from_secs(5),
    )
    .expect("p");
    let (got, on_text) = collector();
    let r = p.chat_stream(&req(), &on_text).await.expect("stream");
    assert_eq!(*got.lock().expect("lock"), ["Let me ", "look."]);
    assert_eq!(r.message.content, "Let me look.");
    assert_eq!(r.message.tool_calls.len(), 1);
    assert_eq!(r.message.tool_calls[0].name, "search_memory");
    assert_eq!(
        r.message.tool_calls[0].arguments,
        json!({"query": "renewal"})
    );
    assert_eq!(r.finish_reason, FinishReason::ToolCalls);
    assert_eq!(r.usage.completion_tokens, 9);
    assert!(r.usage.prompt_tokens >= 20, "{:?}", r.usage);
    assert_eq!(fake.seen()[0].body["stream"], true);
    // An error event mid-stream fails the call.
    let body = sse(&[(
        "error",
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    )]);
    let fake = Fake::start(vec![Reply::status(200, &body)]).await;
    let p = Anthropic::new(
        "anthropic",
        &fake.base,
        "ak-x".into(),
        Duration::from_secs(5),
    )
    .expect("p");
    let e = p
        .chat_stream(&req(), &on_text)
        .await
        .expect_err("error event");
    assert!(e.is_retryable(), "{e}");
}
