//! Zero-config provider choice from the environment, following the SDKs'
//! variables. This crate never reads the environment itself: the caller
//! passes a reader (only `kira-cli` reads the real one).

use std::sync::Arc;
use std::time::Duration;

use crate::anthropic::{ANTHROPIC_BASE_URL, Anthropic};
use crate::openai::{OPENAI_BASE_URL, OpenAi};
use crate::{LlmError, Provider};

/// The model used with an OpenAI key when `KIRA_MODEL` names none.
pub const DEFAULT_OPENAI_MODEL: &str = "gpt-4o-mini";
/// The model used with an Anthropic key when `KIRA_MODEL` names none.
pub const DEFAULT_ANTHROPIC_MODEL: &str = "claude-3-5-haiku-latest";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// OpenAI's chat completions, at OpenAI or any compatible server.
    OpenAi,
    Anthropic,
}

/// A remote provider: which wire format, where, with which key and model.
#[derive(Clone, PartialEq)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    pub base_url: String,
    pub api_key: Option<String>,
    pub model: String,
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("model", &self.model)
            .finish()
    }
}

impl ProviderConfig {
    /// The provider this configuration describes, named `openai` or
    /// `anthropic`; `timeout` bounds one request.
    pub fn build(&self, timeout: Duration) -> Result<Arc<dyn Provider>, LlmError> {
        Ok(match self.kind {
            ProviderKind::OpenAi => Arc::new(OpenAi::new(
                "openai",
                &self.base_url,
                self.api_key.clone(),
                timeout,
            )?),
            ProviderKind::Anthropic => {
                let key = self.api_key.clone().ok_or_else(|| {
                    LlmError::Config("the Anthropic provider needs an API key".into())
                })?;
                Arc::new(Anthropic::new("anthropic", &self.base_url, key, timeout)?)
            }
        })
    }
}

/// The provider the environment names, as the official SDKs read it:
/// `OPENAI_API_KEY` (with `OPENAI_BASE_URL`, default OpenAI's API) or
/// `ANTHROPIC_API_KEY` (with `ANTHROPIC_BASE_URL`). `OPENAI_BASE_URL` alone
/// means a keyless OpenAI-compatible server (Ollama, llama.cpp, vLLM).
/// With both keys, OpenAI is chosen unless `KIRA_MODEL` names a Claude
/// model. The model is `KIRA_MODEL`, else the provider's small default.
/// `None`: nothing configured, the caller falls back to the local model.
/// Empty values count as unset.
pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Option<ProviderConfig> {
    let var = |name: &str| {
        env(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let model = var("KIRA_MODEL");
    let openai_key = var("OPENAI_API_KEY");
    let openai_base = var("OPENAI_BASE_URL");
    let anthropic_key = var("ANTHROPIC_API_KEY");
    let wants_claude = model.as_deref().is_some_and(|m| m.starts_with("claude"));

    let openai = || ProviderConfig {
        kind: ProviderKind::OpenAi,
        base_url: openai_base
            .clone()
            .unwrap_or_else(|| OPENAI_BASE_URL.to_string()),
        api_key: openai_key.clone(),
        model: model
            .clone()
            .unwrap_or_else(|| DEFAULT_OPENAI_MODEL.to_string()),
    };
    let anthropic = |key: String| ProviderConfig {
        kind: ProviderKind::Anthropic,
        base_url: var("ANTHROPIC_BASE_URL").unwrap_or_else(|| ANTHROPIC_BASE_URL.to_string()),
        api_key: Some(key),
        model: model
            .clone()
            .unwrap_or_else(|| DEFAULT_ANTHROPIC_MODEL.to_string()),
    };
    match (&openai_key, anthropic_key) {
        (Some(_), Some(key)) if wants_claude => Some(anthropic(key)),
        (Some(_), _) => Some(openai()),
        (None, Some(key)) => Some(anthropic(key)),
        (None, None) if openai_base.is_some() => Some(openai()),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Env = &'static [(&'static str, &'static str)];
    type Expected = Option<(
        ProviderKind,
        &'static str,
        Option<&'static str>,
        &'static str,
    )>;

    fn pick(vars: &[(&str, &str)]) -> Option<ProviderConfig> {
        let env = |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        };
        from_env(&env)
    }

    #[test]
    fn the_environment_picks_the_provider_as_the_sdks_do() {
        use ProviderKind::*;
        // (environment, expected kind, base URL, key, model)
        let table: &[(Env, Expected)] = &[
            (&[], None),
            (&[("KIRA_MODEL", "gpt-4o")], None),
            (&[("OPENAI_API_KEY", "")], None),
            (&[("OPENAI_API_KEY", "  ")], None),
            (
                &[("OPENAI_API_KEY", "sk-1")],
                Some((OpenAi, OPENAI_BASE_URL, Some("sk-1"), "gpt-4o-mini")),
            ),
            (
                &[
                    ("OPENAI_API_KEY", "sk-1"),
                    ("OPENAI_BASE_URL", "http://vllm:8000/v1"),
                    ("KIRA_MODEL", "qwen2.5"),
                ],
                Some((OpenAi, "http://vllm:8000/v1", Some("sk-1"), "qwen2.5")),
            ),
            (
                &[("OPENAI_BASE_URL", "http://localhost:11434/v1")],
                Some((OpenAi, "http://localhost:11434/v1", None, "gpt-4o-mini")),
            ),
            (
                &[("ANTHROPIC_API_KEY", "ak-1")],
                Some((
                    Anthropic,
                    ANTHROPIC_BASE_URL,
                    Some("ak-1"),
                    "claude-3-5-haiku-latest",
                )),
            ),
            (
                &[
                    ("ANTHROPIC_API_KEY", "ak-1"),
                    ("ANTHROPIC_BASE_URL", "http://proxy"),
                    ("KIRA_MODEL", "claude-sonnet-4-5"),
                ],
                Some((Anthropic, "http://proxy", Some("ak-1"), "claude-sonnet-4-5")),
            ),
            (
                &[("OPENAI_API_KEY", "sk-1"), ("ANTHROPIC_API_KEY", "ak-1")],
                Some((OpenAi, OPENAI_BASE_URL, Some("sk-1"), "gpt-4o-mini")),
            ),
            (
                &[
                    ("OPENAI_API_KEY", "sk-1"),
                    ("ANTHROPIC_API_KEY", "ak-1"),
                    ("KIRA_MODEL", "claude-3-5-haiku-latest"),
                ],
                Some((
                    Anthropic,
                    ANTHROPIC_BASE_URL,
                    Some("ak-1"),
                    "claude-3-5-haiku-latest",
                )),
            ),
        ];
        for (vars, expected) in table {
            let got = pick(vars).map(|c| (c.kind, c.base_url, c.api_key, c.model));
            let expected = expected
                .map(|(k, b, key, m)| (k, b.to_string(), key.map(str::to_string), m.to_string()));
            assert_eq!(got, expected, "env {vars:?}");
        }
    }

    #[test]
    fn debug_hides_the_key_and_anthropic_needs_one() {
        let c = pick(&[("ANTHROPIC_API_KEY", "ak-secret")]).expect("config");
        assert!(!format!("{c:?}").contains("ak-secret"));
        let keyless = ProviderConfig { api_key: None, ..c };
        assert!(matches!(
            keyless.build(Duration::from_secs(1)),
            Err(LlmError::Config(_))
        ));
    }
}
