//! The one error type of this crate. No variant ever holds an API key:
//! request headers are never formatted, and response bodies are scrubbed of
//! the key before they are kept.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The request did not get a response: connection refused or reset, DNS.
    #[error("{provider}: request failed: {message}")]
    Http { provider: String, message: String },
    /// The provider answered with an error status other than 429.
    #[error("{provider}: HTTP {status}: {body}")]
    Status {
        provider: String,
        status: u16,
        /// The server's Retry-After, if it sent one.
        retry_after: Option<Duration>,
        /// The start of the error body, scrubbed of the key.
        body: String,
    },
    /// 429: too many requests or tokens for now.
    #[error("{provider}: rate limited (HTTP 429){}: {body}", retry_after.map(|d| format!(", retry after {d:?}")).unwrap_or_default())]
    RateLimited {
        provider: String,
        retry_after: Option<Duration>,
        body: String,
    },
    /// No answer within the time allowed for one attempt.
    #[error("{provider}: no answer within {after:?}")]
    Timeout { provider: String, after: Duration },
    /// The answer was not the provider's format (truncated, malformed, empty).
    #[error("{provider}: unreadable response: {message}")]
    Decode { provider: String, message: String },
    /// The provider is configured wrongly (bad base URL, unknown model, ...).
    #[error("LLM configuration: {0}")]
    Config(String),
    /// The local model's file is not installed.
    #[error("local model not found at {}: {hint}", path.display())]
    Missing { path: PathBuf, hint: String },
    /// The local model failed to load or run.
    #[error("local model: {0}")]
    Local(String),
}

impl LlmError {
    /// Whether trying the same call again may succeed: 429, 408, 5xx,
    /// timeouts and failed connections.
    pub fn is_retryable(&self) -> bool {
        match self {
            LlmError::RateLimited { .. } | LlmError::Timeout { .. } | LlmError::Http { .. } => true,
            LlmError::Status { status, .. } => *status == 408 || *status >= 500,
            LlmError::Decode { .. }
            | LlmError::Config(_)
            | LlmError::Missing { .. }
            | LlmError::Local(_) => false,
        }
    }

    /// How long the server asked to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            LlmError::RateLimited { retry_after, .. } | LlmError::Status { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }
}
