//! The provider-neutral chat types every provider speaks: a request of
//! messages and tools in, one assistant message with its tool calls, token
//! usage, finish reason and latency out.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One chat completion call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The model as the provider names it (`gpt-4o-mini`, `claude-3-5-haiku-latest`).
    pub model: String,
    pub messages: Vec<Message>,
    /// The most completion tokens the reply may use; budgets reserve this much.
    pub max_tokens: u32,
    /// `None` leaves the provider's default; the local model samples greedily.
    pub temperature: Option<f32>,
    /// Tools the model may call; empty for none.
    pub tools: Vec<ToolSpec>,
    /// What shape the answer must take. Providers that can hold a model
    /// to it do (the local model masks its tokens; OpenAI-compatible
    /// servers get `response_format` or a required tool call; Anthropic a
    /// forced tool); the caller parses the answer tolerantly either way.
    #[serde(default)]
    pub output: Output,
}

/// The shape an answer must take.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Output {
    /// Text, and tool calls if the model makes any.
    #[default]
    Free,
    /// The message's text is one JSON value valid against `schema`, a
    /// JSON schema; `name` names it to providers that want a name.
    Json {
        name: String,
        schema: serde_json::Value,
    },
    /// Exactly one call of one of the request's tools, its arguments valid
    /// against that tool's parameters schema.
    ToolCall,
}

impl ChatRequest {
    /// A request for `model` with no tools and the provider's temperature.
    pub fn new(model: impl Into<String>, messages: Vec<Message>, max_tokens: u32) -> Self {
        Self {
            model: model.into(),
            messages,
            max_tokens,
            temperature: None,
            tools: Vec::new(),
            output: Output::Free,
        }
    }

    /// The same request, its answer held to `output`.
    pub fn with_output(mut self, output: Output) -> Self {
        self.output = output;
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    /// The result of a tool call, answering the call named by `tool_call_id`.
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// Calls an assistant message makes; empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a `Tool` message: the id of the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    fn of(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::of(Role::System, content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::of(Role::User, content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::of(Role::Assistant, content)
    }

    /// The result of the call `call_id`.
    pub fn tool(call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            tool_call_id: Some(call_id.into()),
            ..Self::of(Role::Tool, content)
        }
    }
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// The arguments' JSON schema (an object schema).
    pub parameters: serde_json::Value,
}

/// A call the model asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id for the call, echoed in the `Tool` message that answers it.
    pub id: String,
    pub name: String,
    /// The arguments as JSON (normally an object; a string when the model
    /// sent text that is not JSON, so the caller can report it back).
    pub arguments: serde_json::Value,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens the provider counted in the prompt (cached ones included).
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

impl Usage {
    pub fn total(&self) -> u32 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// Why the model stopped. Servers send odd values; they are kept, not refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    /// A natural end or a stop sequence.
    Stop,
    /// `max_tokens` was reached: the answer is cut short.
    Length,
    /// The model asks for the tool calls in its message.
    ToolCalls,
    /// Anything else the provider said (content filter, refusal, ...).
    Other(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    /// The assistant's message (role `Assistant`), with its tool calls.
    pub message: Message,
    pub usage: Usage,
    pub finish_reason: FinishReason,
    /// Wall time of the call that answered (the last attempt).
    pub latency: Duration,
    /// The model that answered, as the provider reports it (after a
    /// fallback, the fallback's).
    pub model: String,
}
