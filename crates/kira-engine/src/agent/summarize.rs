//! The LLM summariser: compaction's and the primary session's
//! [`Summarizer`] as a model call. Chosen by `[summarizer] kind = "llm"`
//! with the agent whose provider and model it uses; the extractive one
//! stays the default (and is what this one falls back to when the call
//! fails or answers nothing, so compaction never stops on a model error).

use std::sync::Arc;

use async_trait::async_trait;
use kira_core::memory::Memory;
use kira_llm::{ChatRequest, Message, Provider};

use crate::memory::render_memory;
use crate::memory::summarize::{Extractive, Summarizer};

/// The instructions of a summary call.
pub const PROMPT: &str = "You condense a company's records into one short paragraph for its \
own future reference. Keep every date, deadline, amount, percentage, decision and the names \
of people and counterparties exactly as written; drop chit-chat and repetition; do not add \
anything that is not in the records. Answer with the paragraph only.";

/// Characters of records sent in one call at most (the rest is cut).
const MAX_INPUT_CHARS: usize = 24_000;

pub struct LlmSummarizer {
    provider: Arc<dyn Provider>,
    model: String,
    max_tokens: u32,
    fallback: Extractive,
}

impl LlmSummarizer {
    pub fn new(provider: Arc<dyn Provider>, model: impl Into<String>, max_tokens: u32) -> Self {
        Self {
            provider,
            model: model.into(),
            max_tokens,
            fallback: Extractive::default(),
        }
    }

    /// The request for `memories`, oldest first.
    pub fn request(&self, memories: &[Memory]) -> ChatRequest {
        let mut records = String::new();
        for m in memories {
            let line = render_memory(m);
            if records.len() + line.len() > MAX_INPUT_CHARS {
                break;
            }
            records.push_str("- ");
            records.push_str(&line);
            records.push('\n');
        }
        ChatRequest::new(
            self.model.clone(),
            vec![
                Message::system(PROMPT),
                Message::user(format!("Records, oldest first:\n{records}")),
            ],
            self.max_tokens,
        )
    }
}

#[async_trait]
impl Summarizer for LlmSummarizer {
    fn name(&self) -> &str {
        "llm"
    }

    async fn summarize(&self, memories: &[Memory]) -> Result<String, String> {
        match self.provider.chat(&self.request(memories)).await {
            Ok(r) if !r.message.content.trim().is_empty() => {
                Ok(r.message.content.trim().to_owned())
            }
            Ok(_) => {
                tracing::warn!("the LLM summariser answered nothing; used the extractive one");
                self.fallback.summarize(memories).await
            }
            Err(e) => {
                tracing::warn!(error = %e, "the LLM summariser failed; used the extractive one");
                self.fallback.summarize(memories).await
            }
        }
    }
}
