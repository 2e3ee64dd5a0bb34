//! The resilient wrapper around any provider: a time limit per attempt,
//! retries with exponential backoff and full jitter on 429, 5xx, timeouts
//! and failed connections (honouring the server's Retry-After, capped), a
//! limit on concurrent calls, and a chain of fallback models tried in turn
//! when a model still fails after its retries.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use tokio::sync::Semaphore;

use crate::{ChatRequest, ChatResponse, LlmError, Provider};

/// Waits; injected so tests record the backoff instead of sleeping it.
#[async_trait]
pub trait Sleeper: Send + Sync {
    async fn sleep(&self, duration: Duration);
}

/// Sleeps on tokio's timer.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioSleeper;

#[async_trait]
impl Sleeper for TokioSleeper {
    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

/// How hard to try. The defaults follow the OpenAI and Anthropic SDKs
/// (two retries, backoff from half a second), with a longer attempt limit
/// for slow local servers.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries of one model after its first attempt.
    pub max_retries: u32,
    /// The first backoff's ceiling; each retry doubles it.
    pub base_backoff: Duration,
    /// No backoff is longer than this.
    pub max_backoff: Duration,
    /// A server's Retry-After longer than this is cut to it, so one header
    /// cannot park a worker for an hour.
    pub max_retry_after: Duration,
    /// One attempt that takes longer fails with [`LlmError::Timeout`].
    pub attempt_timeout: Duration,
    /// At most this many calls to the provider at once.
    pub max_concurrent: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 2,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(60),
            attempt_timeout: Duration::from_secs(120),
            max_concurrent: 8,
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0 for the first) after
    /// `error`: the server's Retry-After if it sent one (capped), else a
    /// uniformly random wait up to `base * 2^retry` (capped): full jitter,
    /// which spreads clients that failed together.
    pub fn backoff(&self, retry: u32, error: &LlmError, rng: &mut impl Rng) -> Duration {
        if let Some(after) = error.retry_after() {
            return after.min(self.max_retry_after);
        }
        let ceiling = self
            .base_backoff
            .saturating_mul(2u32.saturating_pow(retry))
            .min(self.max_backoff);
        let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rng.random_range(0..=ceiling_ms))
    }
}

/// A provider with retries, fallback models and a concurrency limit.
pub struct Resilient {
    inner: Arc<dyn Provider>,
    policy: RetryPolicy,
    fallbacks: Vec<String>,
    permits: Arc<Semaphore>,
    sleeper: Arc<dyn Sleeper>,
}

impl std::fmt::Debug for Resilient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resilient")
            .field("provider", &self.inner.name())
            .field("policy", &self.policy)
            .field("fallbacks", &self.fallbacks)
            .finish_non_exhaustive()
    }
}

impl Resilient {
    pub fn new(inner: Arc<dyn Provider>, policy: RetryPolicy) -> Self {
        let permits = Arc::new(Semaphore::new(policy.max_concurrent.max(1)));
        Self {
            inner,
            policy,
            fallbacks: Vec::new(),
            permits,
            sleeper: Arc::new(TokioSleeper),
        }
    }

    /// Models to try, in order, when the requested one fails after its
    /// retries. The requested model is skipped if it appears here.
    pub fn with_fallbacks(mut self, models: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.fallbacks = models.into_iter().map(Into::into).collect();
        self
    }

    /// Replaces the timer that backoff waits on.
    pub fn with_sleeper(mut self, sleeper: Arc<dyn Sleeper>) -> Self {
        self.sleeper = sleeper;
        self
    }

    /// Shares one concurrency limit between several wrappers of the same
    /// provider (say, one per agent, each with its own fallback chain).
    pub fn with_permits(mut self, permits: Arc<Semaphore>) -> Self {
        self.permits = permits;
        self
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// One attempt: waits for a permit (held only while the call runs, not
    /// during backoff), then calls with the attempt's time limit.
    async fn attempt(
        &self,
        req: &ChatRequest,
        on_text: Option<crate::OnText<'_>>,
    ) -> Result<ChatResponse, LlmError> {
        let _permit =
            self.permits.acquire().await.map_err(|_| {
                LlmError::Config("the provider's concurrency limit was closed".into())
            })?;
        let limit = self.policy.attempt_timeout;
        let call = async {
            match on_text {
                Some(f) => self.inner.chat_stream(req, f).await,
                None => self.inner.chat(req).await,
            }
        };
        match tokio::time::timeout(limit, call).await {
            Ok(result) => result,
            Err(_) => Err(LlmError::Timeout {
                provider: self.inner.name().to_string(),
                after: limit,
            }),
        }
    }

    /// Tries one model with its retries.
    async fn with_retries(
        &self,
        req: &ChatRequest,
        on_text: Option<crate::OnText<'_>>,
    ) -> Result<ChatResponse, LlmError> {
        let mut retry = 0;
        loop {
            let error = match self.attempt(req, on_text).await {
                Ok(response) => return Ok(response),
                Err(e) => e,
            };
            if !error.is_retryable() || retry >= self.policy.max_retries {
                return Err(error);
            }
            let wait = self.policy.backoff(retry, &error, &mut rand::rng());
            tracing::warn!(
                provider = self.inner.name(),
                model = req.model,
                retry = retry + 1,
                wait_ms = wait.as_millis() as u64,
                error = %error,
                "LLM call failed; retrying"
            );
            self.sleeper.sleep(wait).await;
            retry += 1;
        }
    }
}

#[async_trait]
impl Provider for Resilient {
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// The requested model with its retries, then each fallback model with
    /// its own; the first answer wins, else the last model's error.
    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, LlmError> {
        self.chain(req, None).await
    }

    /// As `chat`, streamed; a retried or fallen-back call streams its text
    /// again from the start.
    async fn chat_stream(
        &self,
        req: &ChatRequest,
        on_text: crate::OnText<'_>,
    ) -> Result<ChatResponse, LlmError> {
        self.chain(req, Some(on_text)).await
    }
}

impl Resilient {
    async fn chain(
        &self,
        req: &ChatRequest,
        on_text: Option<crate::OnText<'_>>,
    ) -> Result<ChatResponse, LlmError> {
        let mut error = match self.with_retries(req, on_text).await {
            Ok(response) => return Ok(response),
            Err(e) => e,
        };
        let mut tried = vec![req.model.clone()];
        for model in &self.fallbacks {
            if tried.contains(model) {
                continue;
            }
            tracing::warn!(
                provider = self.inner.name(),
                failed = tried.last().map(String::as_str).unwrap_or_default(),
                next = model.as_str(),
                error = %error,
                "LLM model failed; trying the fallback"
            );
            tried.push(model.clone());
            let next = ChatRequest {
                model: model.clone(),
                ..req.clone()
            };
            match self.with_retries(&next, on_text).await {
                Ok(response) => return Ok(response),
                Err(e) => error = e,
            }
        }
        Err(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn status(code: u16, retry_after: Option<Duration>) -> LlmError {
        LlmError::Status {
            provider: "p".into(),
            status: code,
            retry_after,
            body: String::new(),
        }
    }

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_capped_ceiling() {
        let policy = RetryPolicy {
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(700),
            ..RetryPolicy::default()
        };
        let mut rng = StdRng::seed_from_u64(7);
        let e = status(503, None);
        for (retry, ceiling) in [(0, 100), (1, 200), (2, 400), (3, 700), (10, 700), (40, 700)] {
            let waits: Vec<u64> = (0..200)
                .map(|_| policy.backoff(retry, &e, &mut rng).as_millis() as u64)
                .collect();
            assert!(waits.iter().all(|&w| w <= ceiling), "retry {retry}");
            // Jitter spreads the waits: not all at the ceiling, not all at zero.
            assert!(waits.iter().any(|&w| w < ceiling / 2), "retry {retry}");
            assert!(waits.iter().any(|&w| w > ceiling / 2), "retry {retry}");
        }
    }

    #[test]
    fn retry_after_wins_and_is_capped() {
        let policy = RetryPolicy {
            max_retry_after: Duration::from_secs(30),
            ..RetryPolicy::default()
        };
        let mut rng = StdRng::seed_from_u64(1);
        let e = status(503, Some(Duration::from_secs(3)));
        assert_eq!(policy.backoff(0, &e, &mut rng), Duration::from_secs(3));
        let e = status(503, Some(Duration::from_secs(3600)));
        assert_eq!(policy.backoff(0, &e, &mut rng), Duration::from_secs(30));
    }

    #[test]
    fn what_is_retried() {
        assert!(status(500, None).is_retryable());
        assert!(status(529, None).is_retryable());
        assert!(status(408, None).is_retryable());
        assert!(!status(400, None).is_retryable());
        assert!(!status(401, None).is_retryable());
        assert!(!LlmError::Config("x".into()).is_retryable());
        assert!(
            LlmError::Timeout {
                provider: "p".into(),
                after: Duration::ZERO
            }
            .is_retryable()
        );
    }
}
