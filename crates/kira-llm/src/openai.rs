//! OpenAI-compatible chat completions (`POST {base}/chat/completions`):
//! OpenAI itself, vLLM, Ollama, the llama.cpp server, LiteLLM. Tool calls
//! are OpenAI's function calls, whose arguments travel as a JSON string.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::{self, send_json};
use crate::{
    ChatRequest, ChatResponse, FinishReason, LlmError, Message, Output, Provider, Role, ToolCall,
    Usage,
};

/// OpenAI's API, the default base URL.
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

pub struct OpenAi {
    name: String,
    base: String,
    key: Option<String>,
    client: reqwest::Client,
}

impl std::fmt::Debug for OpenAi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAi")
            .field("name", &self.name)
            .field("base", &self.base)
            .field("key", &self.key.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl OpenAi {
    /// A provider named `name` at `base_url` (e.g. `https://api.openai.com/v1`,
    /// `http://localhost:11434/v1`); `key` is sent as a bearer token when
    /// given (local servers need none). `timeout` bounds one request.
    pub fn new(
        name: impl Into<String>,
        base_url: &str,
        key: Option<String>,
        timeout: Duration,
    ) -> Result<Self, LlmError> {
        Ok(Self {
            name: name.into(),
            base: http::base_url(base_url)?,
            key: key.filter(|k| !k.is_empty()),
            client: http::client(timeout)?,
        })
    }
}

#[async_trait]
impl Provider for OpenAi {
    fn name(&self) -> &str {
        &self.name
    }

    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, LlmError> {
        let mut request = self
            .client
            .post(format!("{}/chat/completions", self.base))
            .json(&request_body(req));
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        let (body, latency): (Completion, _) =
            send_json(&self.name, request, self.key.as_deref()).await?;
        parse_response(&self.name, body, latency, &req.model)
    }

    /// Server-sent chunks (`"stream": true`, usage in the last chunk via
    /// `stream_options.include_usage`); text deltas go to `on_text`, tool
    /// call fragments are joined by their index.
    async fn chat_stream(
        &self,
        req: &ChatRequest,
        on_text: crate::OnText<'_>,
    ) -> Result<ChatResponse, LlmError> {
        let mut body = request_body(req);
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        let mut request = self
            .client
            .post(format!("{}/chat/completions", self.base))
            .json(&body);
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        let mut acc = StreamAcc::default();
        let provider = self.name.clone();
        let latency = http::send_sse(&self.name, request, self.key.as_deref(), |_, data| {
            if data.trim() == "[DONE]" {
                acc.done = true;
                return Ok(false);
            }
            let chunk: Value = serde_json::from_str(data).map_err(|e| LlmError::Decode {
                provider: provider.clone(),
                message: format!("stream chunk: {e}"),
            })?;
            if let Some(text) = acc.add(&chunk) {
                on_text(&text);
            }
            Ok(true)
        })
        .await?;
        if !acc.done && acc.finish_reason.is_none() {
            return Err(LlmError::Decode {
                provider: self.name.clone(),
                message: "the stream ended before the answer did".into(),
            });
        }
        let completion: Completion =
            serde_json::from_value(acc.into_completion()).map_err(|e| LlmError::Decode {
                provider: self.name.clone(),
                message: format!("stream: {e}"),
            })?;
        parse_response(&self.name, completion, latency, &req.model)
    }
}

/// A streamed answer being put together.
#[derive(Default)]
struct StreamAcc {
    model: Option<String>,
    content: String,
    /// By index: (id, name, arguments so far).
    tools: std::collections::BTreeMap<u64, (Option<String>, String, String)>,
    finish_reason: Option<String>,
    usage: Option<Value>,
    done: bool,
}

impl StreamAcc {
    /// Takes one chunk in; returns its text, if any.
    fn add(&mut self, chunk: &Value) -> Option<String> {
        if let Some(m) = chunk.get("model").and_then(Value::as_str) {
            self.model = Some(m.to_owned());
        }
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            self.usage = Some(u.clone());
        }
        let choice = chunk.get("choices")?.as_array()?.first()?;
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish_reason = Some(f.to_owned());
        }
        let delta = choice.get("delta")?;
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let entry = self.tools.entry(index).or_default();
            if let Some(id) = call.get("id").and_then(Value::as_str) {
                entry.0 = Some(id.to_owned());
            }
            if let Some(f) = call.get("function") {
                if let Some(n) = f.get("name").and_then(Value::as_str) {
                    entry.1.push_str(n);
                }
                if let Some(a) = f.get("arguments").and_then(Value::as_str) {
                    entry.2.push_str(a);
                }
            }
        }
        let text = delta.get("content").and_then(Value::as_str)?;
        if text.is_empty() {
            return None;
        }
        self.content.push_str(text);
        Some(text.to_owned())
    }

    /// The answer in the shape of a non-streamed completion.
    fn into_completion(self) -> Value {
        let tool_calls: Vec<Value> = self
            .tools
            .into_values()
            .map(|(id, name, arguments)| {
                json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}})
            })
            .collect();
        let mut message = json!({"role": "assistant", "content": self.content});
        if !tool_calls.is_empty() {
            message["tool_calls"] = json!(tool_calls);
        }
        json!({
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason}],
            "usage": self.usage,
        })
    }
}

/// The JSON body OpenAI's chat completions take.
pub(crate) fn request_body(req: &ChatRequest) -> Value {
    let messages: Vec<Value> = req.messages.iter().map(wire_message).collect();
    let mut body = json!({
        "model": req.model,
        "messages": messages,
        "max_tokens": req.max_tokens,
    });
    if let Some(t) = req.temperature {
        body["temperature"] = json!(t);
    }
    if !req.tools.is_empty() {
        body["tools"] = req
            .tools
            .iter()
            .map(|t| {
                // Strict where the parameters allow it: the server then
                // holds the arguments to them, as it holds a result.
                let function = match strict_schema(&t.parameters) {
                    Some(parameters) => json!({
                        "name": t.name,
                        "description": t.description,
                        "parameters": parameters,
                        "strict": true,
                    }),
                    None => json!({
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    }),
                };
                json!({"type": "function", "function": function})
            })
            .collect();
    }
    match &req.output {
        Output::Free => {}
        // Structured outputs: OpenAI's strict mode, vLLM's and the
        // llama.cpp server's guided decoding, Ollama's format.
        // A schema strict mode cannot take goes as it is, not strict: the
        // server follows it as well as it can, and the answer is read
        // tolerantly either way.
        Output::Json { name, schema } => {
            let json_schema = match strict_schema(schema) {
                Some(strict) => json!({"name": name, "schema": strict, "strict": true}),
                None => json!({"name": name, "schema": schema, "strict": false}),
            };
            body["response_format"] = json!({"type": "json_schema", "json_schema": json_schema});
        }
        Output::ToolCall if !req.tools.is_empty() => body["tool_choice"] = json!("required"),
        Output::ToolCall => {}
    }
    body
}

/// Keywords of a schema strict mode takes (OpenAI's structured outputs:
/// its supported subset; vLLM, the llama.cpp server and Ollama take at
/// least these).
const STRICT_KEYWORDS: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "anyOf",
    "description",
    "$ref",
    "$defs",
    "definitions",
    "pattern",
    "format",
    "multipleOf",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minItems",
    "maxItems",
];

/// Keywords whose meaning a schema cannot keep without them: a schema that
/// uses one is not sent as strict.
const SHAPING_KEYWORDS: &[&str] = &[
    "allOf",
    "oneOf",
    "not",
    "if",
    "then",
    "else",
    "patternProperties",
    "dependentRequired",
    "dependentSchemas",
    "unevaluatedProperties",
    "unevaluatedItems",
    "prefixItems",
    "contains",
    "propertyNames",
];

/// `schema` as strict mode takes it, or None if it cannot be: its root is
/// an object, every object names all its properties as required and
/// allows no others, and it uses no keyword that shapes values beyond
/// strict mode's subset. Keywords outside the subset that only annotate
/// or bound a value (`title`, `default`, `minLength`, `maxLength`, ...)
/// are left out: the server holds the answer to the shape, not to those
/// bounds, and the answer is read tolerantly as from any model.
pub(crate) fn strict_schema(schema: &Value) -> Option<Value> {
    if schema.get("type") != Some(&json!("object")) {
        return None;
    }
    strict_node(schema)
}

fn strict_node(schema: &Value) -> Option<Value> {
    let Value::Object(map) = schema else {
        // `true`/`false` schemas say nothing strict mode can hold to.
        return None;
    };
    if map.keys().any(|k| SHAPING_KEYWORDS.contains(&k.as_str())) {
        return None;
    }
    // Strict mode wants every value typed (an empty schema allows any).
    if !["type", "anyOf", "enum", "const", "$ref"]
        .iter()
        .any(|k| map.contains_key(*k))
    {
        return None;
    }
    let is_object = map.get("type") == Some(&json!("object")) || map.contains_key("properties");
    if is_object {
        let properties: Vec<&String> = match map.get("properties") {
            None => Vec::new(),
            Some(Value::Object(p)) => p.keys().collect(),
            Some(_) => return None,
        };
        let required: Vec<&str> = match map.get("required") {
            None => Vec::new(),
            Some(Value::Array(r)) => r.iter().filter_map(Value::as_str).collect(),
            Some(_) => return None,
        };
        if map.get("additionalProperties") != Some(&json!(false))
            || properties.iter().any(|k| !required.contains(&k.as_str()))
        {
            return None;
        }
    }
    let mut out = serde_json::Map::new();
    for (k, v) in map {
        if !STRICT_KEYWORDS.contains(&k.as_str()) {
            continue;
        }
        let v = match k.as_str() {
            "properties" | "$defs" | "definitions" => {
                let Value::Object(children) = v else {
                    return None;
                };
                let mut strict = serde_json::Map::new();
                for (name, child) in children {
                    strict.insert(name.clone(), strict_node(child)?);
                }
                Value::Object(strict)
            }
            "items" => strict_node(v)?,
            "anyOf" => {
                let Value::Array(options) = v else {
                    return None;
                };
                Value::Array(options.iter().map(strict_node).collect::<Option<_>>()?)
            }
            _ => v.clone(),
        };
        out.insert(k.clone(), v);
    }
    Some(Value::Object(out))
}

fn wire_message(m: &Message) -> Value {
    let mut out = json!({ "role": m.role.as_str(), "content": m.content });
    if m.role == Role::Assistant && !m.tool_calls.is_empty() {
        if m.content.is_empty() {
            out["content"] = Value::Null;
        }
        out["tool_calls"] = m
            .tool_calls
            .iter()
            .map(|c| {
                // Arguments travel as a JSON string; a string argument is
                // the model's own unparseable text, sent back as it was.
                let arguments = match &c.arguments {
                    Value::String(s) => s.clone(),
                    v => v.to_string(),
                };
                json!({
                    "id": c.id,
                    "type": "function",
                    "function": { "name": c.name, "arguments": arguments },
                })
            })
            .collect();
    }
    if let Some(id) = &m.tool_call_id {
        out["tool_call_id"] = json!(id);
    }
    out
}

#[derive(Debug, Deserialize)]
pub(crate) struct Completion {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    message: WireMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Debug, Deserialize)]
struct WireToolCall {
    #[serde(default)]
    id: Option<String>,
    function: WireFunction,
}

#[derive(Debug, Deserialize)]
struct WireFunction {
    name: String,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

pub(crate) fn parse_response(
    provider: &str,
    body: Completion,
    latency: Duration,
    requested_model: &str,
) -> Result<ChatResponse, LlmError> {
    let decode = |message: &str| LlmError::Decode {
        provider: provider.to_string(),
        message: message.to_string(),
    };
    let choice = body
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| decode("no choices in the response"))?;
    let tool_calls: Vec<ToolCall> = choice
        .message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let raw = c.function.arguments.unwrap_or_default();
            let arguments = if raw.trim().is_empty() {
                json!({})
            } else {
                serde_json::from_str(&raw).unwrap_or(Value::String(raw))
            };
            ToolCall {
                id: c.id.unwrap_or_else(|| format!("call_{i}")),
                name: c.function.name,
                arguments,
            }
        })
        .collect();
    let finish_reason = match choice.finish_reason.as_deref() {
        Some("stop") => FinishReason::Stop,
        Some("length") => FinishReason::Length,
        Some("tool_calls" | "function_call") => FinishReason::ToolCalls,
        Some(other) => FinishReason::Other(other.to_string()),
        // Some servers leave it out; say what the message shows.
        None if !tool_calls.is_empty() => FinishReason::ToolCalls,
        None => FinishReason::Stop,
    };
    let usage = match body.usage {
        Some(u) => Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
        },
        None => {
            tracing::warn!(provider, "response has no usage; counting zero tokens");
            Usage::default()
        }
    };
    Ok(ChatResponse {
        message: Message {
            role: Role::Assistant,
            content: choice.message.content.unwrap_or_default(),
            tool_calls,
            tool_call_id: None,
        },
        usage,
        finish_reason,
        latency,
        model: body.model.unwrap_or_else(|| requested_model.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ToolSpec;

    fn parse(v: Value) -> ChatResponse {
        let body: Completion = serde_json::from_value(v).expect("shape");
        parse_response("t", body, Duration::ZERO, "asked").expect("parse")
    }

    #[test]
    fn assistant_tool_calls_go_out_as_function_calls_with_string_arguments() {
        let mut a = Message::assistant("");
        a.tool_calls.push(ToolCall {
            id: "c1".into(),
            name: "search".into(),
            arguments: json!({"q": "x"}),
        });
        let mut req = ChatRequest::new(
            "m",
            vec![Message::user("hi"), a, Message::tool("c1", "found")],
            10,
        );
        req.tools.push(ToolSpec {
            name: "search".into(),
            description: "d".into(),
            parameters: json!({"type": "object"}),
        });
        let body = request_body(&req);
        assert_eq!(body["messages"][1]["content"], Value::Null);
        assert_eq!(
            body["messages"][1]["tool_calls"][0]["function"]["arguments"],
            json!("{\"q\":\"x\"}")
        );
        assert_eq!(body["messages"][2]["tool_call_id"], json!("c1"));
        assert_eq!(body["tools"][0]["function"]["name"], json!("search"));
        assert!(body.get("temperature").is_none());
        assert!(body.get("response_format").is_none());
        assert!(body.get("tool_choice").is_none());
        let body = request_body(&req.clone().with_output(Output::ToolCall));
        assert_eq!(body["tool_choice"], json!("required"));
    }

    #[test]
    fn a_json_output_goes_as_a_response_format_strict_when_it_can_be() {
        let closed = json!({
            "type": "object",
            "properties": {"a": {"type": "string", "minLength": 1, "maxLength": 300, "title": "A"}},
            "required": ["a"],
            "additionalProperties": false
        });
        let req = ChatRequest::new("m", vec![Message::user("hi")], 10).with_output(Output::Json {
            name: "result".into(),
            schema: closed,
        });
        let body = request_body(&req);
        // Strict, without the keywords strict mode does not take.
        assert_eq!(
            body["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "result", "strict": true, "schema": {
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "required": ["a"],
                "additionalProperties": false
            }}})
        );
        // An optional property: strict mode cannot say it; sent as it is.
        let open = json!({"type": "object", "properties": {"a": {"type": "number"}}});
        let body = request_body(&req.clone().with_output(Output::Json {
            name: "result".into(),
            schema: open.clone(),
        }));
        assert_eq!(
            body["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "result", "schema": open, "strict": false}})
        );
        // No tools: nothing to require.
        let body = request_body(&req.with_output(Output::ToolCall));
        assert!(body.get("tool_choice").is_none());
    }

    #[test]
    fn a_tool_is_strict_when_its_parameters_can_be() {
        let mut req = ChatRequest::new("m", vec![Message::user("hi")], 10);
        let closed = json!({
            "type": "object",
            "properties": {"q": {"type": "string", "default": "x"}, "n": {"type": ["integer", "null"]}},
            "required": ["q", "n"],
            "additionalProperties": false
        });
        for (name, parameters) in [
            ("closed", closed),
            (
                "open",
                json!({"type": "object", "properties": {"q": {"type": "string"}}}),
            ),
        ] {
            req.tools.push(ToolSpec {
                name: name.into(),
                description: "d".into(),
                parameters,
            });
        }
        let body = request_body(&req);
        let closed = &body["tools"][0]["function"];
        assert_eq!(closed["strict"], json!(true));
        assert_eq!(
            closed["parameters"]["properties"],
            json!({"q": {"type": "string"}, "n": {"type": ["integer", "null"]}})
        );
        let open = &body["tools"][1]["function"];
        assert!(open.get("strict").is_none());
        assert_eq!(open["parameters"], req.tools[1].parameters);
    }

    #[test]
    fn strict_mode_takes_closed_typed_shapes_only() {
        let object = |properties: Value, required: Value| json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false});
        // Nested objects, arrays, anyOf, enums and $defs, all closed.
        let nested = object(
            json!({
                "items": {"type": "array", "minItems": 1, "uniqueItems": true,
                          "items": object(json!({"k": {"enum": ["a", "b"]}}), json!(["k"]))},
                "either": {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/n"}]}
            }),
            json!(["items", "either"]),
        );
        let mut with_defs = nested.clone();
        with_defs["$defs"] = json!({"n": {"type": "number", "exclusiveMinimum": 0}});
        let strict = strict_schema(&with_defs).expect("closed");
        assert_eq!(strict["properties"]["items"]["minItems"], json!(1));
        assert!(strict["properties"]["items"].get("uniqueItems").is_none());
        assert_eq!(strict["$defs"]["n"]["exclusiveMinimum"], json!(0));
        // What strict mode cannot take, at any depth.
        let not_strict = [
            json!({"type": "string"}),
            json!({"type": "object"}),
            object(json!({"a": {"type": "string"}}), json!([])),
            object(json!({"a": {}}), json!(["a"])),
            object(json!({"a": {"oneOf": [{"type": "string"}]}}), json!(["a"])),
            object(
                json!({"a": {"type": "object", "properties": {"b": {"type": "string"}}}}),
                json!(["a"]),
            ),
            object(
                json!({"a": {"type": "array", "items": {"type": "object", "additionalProperties": true}}}),
                json!(["a"]),
            ),
            object(json!({"a": {"type": "string"}}), json!("a")),
            json!({"type": "object", "allOf": [], "additionalProperties": false}),
        ];
        for s in not_strict {
            assert_eq!(strict_schema(&s), None, "{s}");
        }
    }

    #[test]
    fn odd_finish_reasons_and_missing_fields_are_tolerated() {
        let r = parse(json!({"choices": [{"message": {"content": null}, "finish_reason": "eos"}]}));
        assert_eq!(r.finish_reason, FinishReason::Other("eos".into()));
        assert_eq!(r.message.content, "");
        assert_eq!(r.model, "asked");
        assert_eq!(r.usage, Usage::default());
        let r = parse(json!({"choices": [{"message": {"tool_calls": [
            {"function": {"name": "f", "arguments": "not json"}},
            {"id": "b", "function": {"name": "g", "arguments": ""}}
        ]}}]}));
        assert_eq!(r.finish_reason, FinishReason::ToolCalls);
        assert_eq!(r.message.tool_calls[0].id, "call_0");
        assert_eq!(r.message.tool_calls[0].arguments, json!("not json"));
        assert_eq!(r.message.tool_calls[1].arguments, json!({}));
    }

    #[test]
    fn no_choices_is_a_decode_error() {
        let body: Completion = serde_json::from_value(json!({"choices": []})).expect("shape");
        assert!(matches!(
            parse_response("t", body, Duration::ZERO, "m"),
            Err(LlmError::Decode { .. })
        ));
    }

    #[test]
    fn debug_never_shows_the_key() {
        let p = OpenAi::new(
            "openai",
            "http://127.0.0.1:1",
            Some("sk-secret".into()),
            Duration::from_secs(1),
        )
        .expect("provider");
        assert!(!format!("{p:?}").contains("sk-secret"));
    }
}
