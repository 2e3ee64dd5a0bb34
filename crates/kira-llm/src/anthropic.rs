//! Anthropic messages (`POST {base}/v1/messages`): the system prompt is a
//! top-level field, a turn's content is a list of blocks, tool calls are
//! `tool_use` blocks and their results `tool_result` blocks in a user turn.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::{self, send_json};
use crate::{
    ChatRequest, ChatResponse, FinishReason, LlmError, Message, Output, Provider, Role, ToolCall,
    Usage,
};

/// Anthropic's API, the default base URL (without `/v1`).
pub const ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";

/// The API version this crate speaks.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

pub struct Anthropic {
    name: String,
    base: String,
    key: String,
    client: reqwest::Client,
}

impl std::fmt::Debug for Anthropic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Anthropic")
            .field("name", &self.name)
            .field("base", &self.base)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl Anthropic {
    /// A provider named `name` at `base_url` (e.g. `https://api.anthropic.com`),
    /// sending `key` as `x-api-key`. `timeout` bounds one request.
    pub fn new(
        name: impl Into<String>,
        base_url: &str,
        key: String,
        timeout: Duration,
    ) -> Result<Self, LlmError> {
        Ok(Self {
            name: name.into(),
            base: http::base_url(base_url)?,
            key,
            client: http::client(timeout)?,
        })
    }
}

#[async_trait]
impl Provider for Anthropic {
    fn name(&self) -> &str {
        &self.name
    }

    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, LlmError> {
        let request = self
            .client
            .post(format!("{}/v1/messages", self.base))
            .header("x-api-key", &self.key)
            .header("anthropic-version", ANTHROPIC_VERSION)
            .json(&request_body(req));
        let (body, latency): (Reply, _) = send_json(&self.name, request, Some(&self.key)).await?;
        parse_response(body, latency, &req.model, forced_tool(req))
    }

    /// The messages API's event stream: text deltas go to `on_text`; tool
    /// input arrives as JSON fragments, joined per content block.
    async fn chat_stream(
        &self,
        req: &ChatRequest,
        on_text: crate::OnText<'_>,
    ) -> Result<ChatResponse, LlmError> {
        let mut body = request_body(req);
        body["stream"] = json!(true);
        let request = self
            .client
            .post(format!("{}/v1/messages", self.base))
            .header("x-api-key", &self.key)
            .header("anthropic-version", ANTHROPIC_VERSION)
            .json(&body);
        let provider = self.name.clone();
        let decode = |message: String| LlmError::Decode {
            provider: provider.clone(),
            message,
        };
        let mut model = None;
        let mut usage = json!({});
        let mut stop_reason = None;
        let mut blocks: Vec<Value> = Vec::new();
        let mut partial_json: Vec<String> = Vec::new();
        let mut stopped = false;
        let latency = http::send_sse(&self.name, request, Some(&self.key), |_, data| {
            let ev: Value =
                serde_json::from_str(data).map_err(|e| decode(format!("stream event: {e}")))?;
            match ev.get("type").and_then(Value::as_str).unwrap_or_default() {
                "message_start" => {
                    let m = &ev["message"];
                    model = m.get("model").and_then(Value::as_str).map(str::to_owned);
                    if let Some(u) = m.get("usage").and_then(Value::as_object) {
                        for (k, v) in u {
                            usage[k] = v.clone();
                        }
                    }
                }
                "content_block_start" => {
                    let i = ev["index"].as_u64().unwrap_or(0) as usize;
                    while blocks.len() <= i {
                        blocks.push(Value::Null);
                        partial_json.push(String::new());
                    }
                    blocks[i] = ev["content_block"].clone();
                }
                "content_block_delta" => {
                    let i = ev["index"].as_u64().unwrap_or(0) as usize;
                    let d = &ev["delta"];
                    let Some(block) = blocks.get_mut(i) else {
                        return Err(decode(format!("a delta for block {i}, never started")));
                    };
                    match d.get("type").and_then(Value::as_str).unwrap_or_default() {
                        "text_delta" => {
                            let t = d["text"].as_str().unwrap_or_default();
                            let so_far = block["text"].as_str().unwrap_or_default().to_owned();
                            block["text"] = json!(so_far + t);
                            if !t.is_empty() {
                                on_text(t);
                            }
                        }
                        "input_json_delta" => {
                            partial_json[i]
                                .push_str(d["partial_json"].as_str().unwrap_or_default());
                        }
                        _ => {}
                    }
                }
                "message_delta" => {
                    if let Some(r) = ev["delta"].get("stop_reason").and_then(Value::as_str) {
                        stop_reason = Some(r.to_owned());
                    }
                    if let Some(u) = ev.get("usage").and_then(Value::as_object) {
                        for (k, v) in u {
                            usage[k] = v.clone();
                        }
                    }
                }
                "message_stop" => {
                    stopped = true;
                    return Ok(false);
                }
                "error" => {
                    return Err(LlmError::Status {
                        provider: provider.clone(),
                        status: 500,
                        retry_after: None,
                        body: ev["error"].to_string(),
                    });
                }
                _ => {}
            }
            Ok(true)
        })
        .await?;
        if !stopped {
            return Err(LlmError::Decode {
                provider: self.name.clone(),
                message: "the stream ended before the answer did".into(),
            });
        }
        for (block, json_text) in blocks.iter_mut().zip(partial_json) {
            if block["type"] == "tool_use" && !json_text.trim().is_empty() {
                block["input"] =
                    serde_json::from_str(&json_text).unwrap_or(Value::String(json_text));
            }
        }
        let reply: Reply = serde_json::from_value(json!({
            "model": model,
            "content": blocks,
            "stop_reason": stop_reason,
            "usage": usage,
        }))
        .map_err(|e| LlmError::Decode {
            provider: self.name.clone(),
            message: format!("stream: {e}"),
        })?;
        parse_response(reply, latency, &req.model, forced_tool(req))
    }
}

/// The tool an [`Output::Json`] is asked for as: the messages API has no
/// response format, so the schema becomes a tool the model must call, and
/// that call's input is the answer. Only an object schema can be a tool's
/// input; any other is left to the prompt and the caller's parser.
fn forced_tool(req: &ChatRequest) -> Option<&str> {
    match &req.output {
        Output::Json { name, schema } if schema.get("type") == Some(&json!("object")) => {
            Some(name.as_str())
        }
        _ => None,
    }
}

/// The JSON body of a messages call. System messages join into the
/// top-level `system`; consecutive turns of one role merge into one turn,
/// since the API wants user and assistant to alternate.
pub(crate) fn request_body(req: &ChatRequest) -> Value {
    let system: Vec<&str> = req
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(|m| m.content.as_str())
        .collect();
    let mut turns: Vec<(&str, Vec<Value>)> = Vec::new();
    for m in req.messages.iter().filter(|m| m.role != Role::System) {
        let (role, blocks) = blocks(m);
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, b)) if *last == role => b.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|(role, content)| json!({ "role": role, "content": content }))
        .collect();
    let mut body = json!({
        "model": req.model,
        "max_tokens": req.max_tokens,
        "messages": messages,
    });
    if !system.is_empty() {
        body["system"] = json!(system.join("\n\n"));
    }
    if let Some(t) = req.temperature {
        body["temperature"] = json!(t);
    }
    if !req.tools.is_empty() {
        body["tools"] = req
            .tools
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "description": t.description,
                    "input_schema": t.parameters,
                })
            })
            .collect();
    }
    match (&req.output, forced_tool(req)) {
        (Output::Json { name, schema }, Some(_)) => {
            let tool = json!({
                "name": name,
                "description": "Give your answer by calling this tool; its input is the answer.",
                "input_schema": schema,
            });
            match body["tools"].as_array_mut() {
                Some(tools) => tools.push(tool),
                None => body["tools"] = json!([tool]),
            }
            body["tool_choice"] = json!({"type": "tool", "name": name});
        }
        (Output::ToolCall, _) if !req.tools.is_empty() => {
            body["tool_choice"] = json!({"type": "any"});
        }
        _ => {}
    }
    body
}

fn blocks(m: &Message) -> (&'static str, Vec<Value>) {
    match m.role {
        Role::Tool => (
            "user",
            vec![json!({
                "type": "tool_result",
                "tool_use_id": m.tool_call_id.as_deref().unwrap_or_default(),
                "content": m.content,
            })],
        ),
        Role::Assistant => {
            let mut out = Vec::new();
            if !m.content.is_empty() {
                out.push(json!({ "type": "text", "text": m.content }));
            }
            for c in &m.tool_calls {
                // `input` must be an object; text the model sent is wrapped.
                let input = match &c.arguments {
                    Value::Object(_) => c.arguments.clone(),
                    other => json!({ "input": other }),
                };
                out.push(json!({
                    "type": "tool_use", "id": c.id, "name": c.name, "input": input,
                }));
            }
            ("assistant", out)
        }
        Role::User | Role::System => ("user", vec![json!({ "type": "text", "text": m.content })]),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct Reply {
    #[serde(default)]
    model: Option<String>,
    content: Vec<Block>,
    #[serde(default)]
    stop_reason: Option<String>,
    usage: WireUsage,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: u32,
    #[serde(default)]
    output_tokens: u32,
    #[serde(default)]
    cache_creation_input_tokens: Option<u32>,
    #[serde(default)]
    cache_read_input_tokens: Option<u32>,
}

/// The answer in a reply; a call of `answer_tool` (the tool an
/// [`Output::Json`] was asked for as) is the message's text, as JSON.
pub(crate) fn parse_response(
    body: Reply,
    latency: Duration,
    requested_model: &str,
    answer_tool: Option<&str>,
) -> Result<ChatResponse, LlmError> {
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    let mut answered = false;
    for block in body.content {
        match block {
            Block::ToolUse { name, input, .. } if Some(name.as_str()) == answer_tool => {
                // The answer replaces whatever text came before it.
                text = input.to_string();
                answered = true;
            }
            Block::Text { text: t } if answered => {
                tracing::debug!(len = t.len(), "text after a forced answer is dropped");
            }
            Block::Text { text: t } => text.push_str(&t),
            Block::ToolUse { id, name, input } => tool_calls.push(ToolCall {
                id,
                name,
                arguments: input,
            }),
            // Thinking and other blocks are not part of the answer.
            Block::Other => {}
        }
    }
    let finish_reason = match body.stop_reason.as_deref() {
        Some("tool_use") if answered && tool_calls.is_empty() => FinishReason::Stop,
        Some("end_turn" | "stop_sequence") | None => FinishReason::Stop,
        Some("max_tokens") => FinishReason::Length,
        Some("tool_use") => FinishReason::ToolCalls,
        Some(other) => FinishReason::Other(other.to_string()),
    };
    let u = body.usage;
    // Cached prompt tokens are prompt tokens too: they count against the budget.
    let prompt_tokens = u
        .input_tokens
        .saturating_add(u.cache_creation_input_tokens.unwrap_or(0))
        .saturating_add(u.cache_read_input_tokens.unwrap_or(0));
    Ok(ChatResponse {
        message: Message {
            role: Role::Assistant,
            content: text,
            tool_calls,
            tool_call_id: None,
        },
        usage: Usage {
            prompt_tokens,
            completion_tokens: u.output_tokens,
        },
        finish_reason,
        latency,
        model: body.model.unwrap_or_else(|| requested_model.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_goes_top_level_and_tool_results_merge_into_one_user_turn() {
        let mut a = Message::assistant("let me look");
        a.tool_calls = vec![
            ToolCall {
                id: "t1".into(),
                name: "f".into(),
                arguments: json!({"a": 1}),
            },
            ToolCall {
                id: "t2".into(),
                name: "g".into(),
                arguments: json!("raw"),
            },
        ];
        let req = ChatRequest::new(
            "claude",
            vec![
                Message::system("be brief"),
                Message::user("q"),
                a,
                Message::tool("t1", "r1"),
                Message::tool("t2", "r2"),
                Message::user("and?"),
            ],
            64,
        );
        let body = request_body(&req);
        assert_eq!(body["system"], json!("be brief"));
        let msgs = body["messages"].as_array().expect("messages");
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[1]["content"][1]["type"], json!("tool_use"));
        assert_eq!(msgs[1]["content"][2]["input"], json!({"input": "raw"}));
        assert_eq!(msgs[2]["role"], json!("user"));
        let blocks = msgs[2]["content"].as_array().expect("blocks");
        assert_eq!(blocks.len(), 3);
        assert_eq!(blocks[0]["tool_use_id"], json!("t1"));
        assert_eq!(blocks[2]["text"], json!("and?"));
    }

    #[test]
    fn unknown_blocks_are_skipped_and_cached_tokens_counted() {
        let body: Reply = serde_json::from_value(json!({
            "content": [{"type": "thinking", "thinking": "..."}, {"type": "text", "text": "hi"}],
            "stop_reason": "refusal",
            "usage": {"input_tokens": 5, "output_tokens": 2,
                      "cache_read_input_tokens": 10, "cache_creation_input_tokens": null}
        }))
        .expect("shape");
        let r = parse_response(body, Duration::ZERO, "m", None).expect("parse");
        assert_eq!(r.message.content, "hi");
        assert_eq!(r.usage.prompt_tokens, 15);
        assert_eq!(r.finish_reason, FinishReason::Other("refusal".into()));
    }

    #[test]
    fn a_json_output_is_a_forced_tool_whose_input_is_the_answer() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "number"}}});
        let req =
            ChatRequest::new("claude", vec![Message::user("q")], 64).with_output(Output::Json {
                name: "result".into(),
                schema: schema.clone(),
            });
        let body = request_body(&req);
        assert_eq!(body["tools"][0]["name"], json!("result"));
        assert_eq!(body["tools"][0]["input_schema"], schema);
        assert_eq!(
            body["tool_choice"],
            json!({"type": "tool", "name": "result"})
        );
        let reply: Reply = serde_json::from_value(json!({
            "content": [{"type": "tool_use", "id": "t", "name": "result", "input": {"a": 1}}],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 5, "output_tokens": 2}
        }))
        .expect("shape");
        let r = parse_response(reply, Duration::ZERO, "m", forced_tool(&req)).expect("parse");
        assert_eq!(r.message.content, r#"{"a":1}"#);
        assert!(r.message.tool_calls.is_empty());
        assert_eq!(r.finish_reason, FinishReason::Stop);

        // A schema that is not an object cannot be a tool's input: left alone.
        let text = req.with_output(Output::Json {
            name: "n".into(),
            schema: json!({"type": "number"}),
        });
        assert!(request_body(&text).get("tool_choice").is_none());
    }

    #[test]
    fn a_required_tool_call_is_tool_choice_any() {
        let mut req =
            ChatRequest::new("claude", vec![Message::user("q")], 64).with_output(Output::ToolCall);
        assert!(request_body(&req).get("tool_choice").is_none());
        req.tools.push(crate::ToolSpec {
            name: "f".into(),
            description: "d".into(),
            parameters: json!({"type": "object"}),
        });
        assert_eq!(request_body(&req)["tool_choice"], json!({"type": "any"}));
    }
}
