//! kira's LLM providers behind one trait: chat messages and tools in; the
//! assistant's message, its tool calls, real token usage, the finish reason
//! and the latency out.
//!
//! [`OpenAi`] speaks OpenAI-compatible chat completions (OpenAI, vLLM,
//! Ollama, the llama.cpp server, LiteLLM), [`Anthropic`] the messages API,
//! and [`LocalProvider`] runs SmolLM2-135M-Instruct in process with candle,
//! so a machine with no key and no network still has a model. [`Resilient`]
//! wraps any of them with timeouts, retries, a concurrency limit and
//! fallback models; [`from_env`] picks a remote provider the way the SDKs
//! do. This crate depends on nothing of kira.

mod anthropic;
mod chat;
mod config;
mod error;
mod http;
pub mod local;
mod openai;
mod resilient;

use async_trait::async_trait;

pub use anthropic::{ANTHROPIC_BASE_URL, ANTHROPIC_VERSION, Anthropic};
pub use chat::{
    ChatRequest, ChatResponse, FinishReason, Message, Output, Role, ToolCall, ToolSpec, Usage,
};
pub use config::{
    DEFAULT_ANTHROPIC_MODEL, DEFAULT_OPENAI_MODEL, ProviderConfig, ProviderKind, from_env,
};
pub use error::LlmError;
pub use local::LocalProvider;
pub use openai::{OPENAI_BASE_URL, OpenAi};
pub use resilient::{Resilient, RetryPolicy, Sleeper, TokioSleeper};

/// A chat model behind some API. One call, one assistant message.
#[async_trait]
pub trait Provider: Send + Sync {
    /// The provider's name in logs and traces (`openai`, `anthropic`, `local`).
    fn name(&self) -> &str;

    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, LlmError>;

    /// The same call, streamed where the provider can: `on_text` gets each
    /// piece of the answer's text as it arrives, and the whole answer
    /// (tool calls, usage, finish reason) is returned at the end. A
    /// provider that cannot stream hands the whole text over at once.
    async fn chat_stream(
        &self,
        req: &ChatRequest,
        on_text: OnText<'_>,
    ) -> Result<ChatResponse, LlmError> {
        let r = self.chat(req).await?;
        if !r.message.content.is_empty() {
            on_text(&r.message.content);
        }
        Ok(r)
    }
}

/// What receives streamed text.
pub type OnText<'a> = &'a (dyn Fn(&str) + Send + Sync);
