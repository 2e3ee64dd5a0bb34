//! The agents `kira serve` and `kira worker` run tasks with: the providers
//! of `[providers.NAME]`, else the environment's (the SDKs' variables),
//! else the local model from `$KIRA_MODELS`. Keys are read from the
//! environment here and go nowhere but the providers' request headers.

use std::sync::Arc;
use std::time::Duration;

use kira_engine::agent::summarize::LlmSummarizer;
use kira_engine::agent::{AgentExecutor, ProviderHandle, Providers};
use kira_engine::config::{
    EngineConfig, ExecutorConfig, ProviderKind, ProviderSpec, SummarizerKind,
};
use kira_llm::local::LocalModel;
use kira_llm::{
    ANTHROPIC_BASE_URL, LocalProvider, OPENAI_BASE_URL, ProviderConfig, RetryPolicy, from_env,
};

/// The name the local provider goes by in traces and `[providers]`.
pub const LOCAL: &str = "local";
/// The name of the provider taken from the environment.
pub const ENV: &str = "env";

fn policy(spec: Option<&ProviderSpec>) -> RetryPolicy {
    let mut p = RetryPolicy::default();
    if let Some(s) = spec {
        p.max_concurrent = s.max_concurrent;
        p.attempt_timeout = Duration::from_secs(s.timeout_seconds);
        p.max_retries = s.max_retries;
    }
    p
}

/// The local model a `kind = "local"` provider's `model` names (checked
/// when the configuration was read), else SmolLM2-135M.
fn local(models: &std::path::Path, spec: Option<&ProviderSpec>) -> Result<ProviderHandle, String> {
    let chosen = match spec.and_then(|s| s.model.as_deref()) {
        Some(name) => LocalModel::named(name).ok_or_else(|| format!("no local model {name}"))?,
        None => kira_llm::local::SMOLLM2_135M,
    };
    let p = LocalProvider::load(&chosen.path(models)).map_err(|e| e.to_string())?;
    // One model instance per core: the KV cache lives in the instance.
    let p = p.with_pool_size(2);
    let model = chosen.name.to_owned();
    let mut pol = policy(spec);
    // Local generation is slow on a CPU; no point queueing more than the
    // instances, nor retrying what did not fail transiently.
    pol.max_concurrent = pol.max_concurrent.min(2);
    pol.attempt_timeout = pol.attempt_timeout.max(Duration::from_secs(600));
    let structured = spec.is_none_or(|s| s.structured_output);
    Ok(
        ProviderHandle::new(LOCAL, Arc::new(p), model, true, pol)
            .with_structured_output(structured),
    )
}

fn remote(
    name: &str,
    spec: &ProviderSpec,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<ProviderHandle> {
    let (kind, base, default_model) = match spec.kind {
        ProviderKind::OpenAi => (
            kira_llm::ProviderKind::OpenAi,
            OPENAI_BASE_URL,
            kira_llm::DEFAULT_OPENAI_MODEL,
        ),
        ProviderKind::Anthropic => (
            kira_llm::ProviderKind::Anthropic,
            ANTHROPIC_BASE_URL,
            kira_llm::DEFAULT_ANTHROPIC_MODEL,
        ),
        ProviderKind::Local => unreachable!("local providers are built by `local`"),
    };
    let api_key = match (&spec.api_key_env, &spec.api_key_encrypted) {
        (Some(var), _) => Some(env(var).filter(|v| !v.trim().is_empty()).ok_or_else(|| {
            anyhow::anyhow!(
                "providers.{name}.api_key_env: the environment variable {var} is not set"
            )
        })?),
        (None, Some(sealed)) => {
            let field = crate::secrets::provider_field(name);
            let key = crate::secrets::MasterKey::from_env(env)
                .and_then(|k| k.open(&field, sealed))
                .map_err(|e| anyhow::anyhow!("{field}: {e}"))?;
            Some(key)
        }
        (None, None) => None,
    };
    let cfg = ProviderConfig {
        kind,
        base_url: spec.base_url.clone().unwrap_or_else(|| base.to_owned()),
        api_key,
        model: spec
            .model
            .clone()
            .unwrap_or_else(|| default_model.to_owned()),
    };
    let pol = policy(Some(spec));
    let provider = cfg
        .build(pol.attempt_timeout)
        .map_err(|e| anyhow::anyhow!("providers.{name}: {e}"))?;
    Ok(ProviderHandle::new(name, provider, cfg.model, false, pol)
        .with_structured_output(spec.structured_output))
}

/// Every configured provider, and the default one: `[providers.default]`
/// if there is one, else the environment's, else the local model. A
/// missing local model is reported (with how to install it), not fatal.
pub fn providers(
    cfg: &EngineConfig,
    env: &dyn Fn(&str) -> Option<String>,
    models: &std::path::Path,
) -> anyhow::Result<Providers> {
    let mut out = Providers::default();
    for (name, spec) in &cfg.providers {
        let handle = if spec.kind == ProviderKind::Local {
            match local(models, Some(spec)) {
                Ok(h) => h.named(name.clone()),
                Err(e) => {
                    tracing::warn!("provider '{name}' (the local model) is unavailable: {e}");
                    continue;
                }
            }
        } else {
            remote(name, spec, env)?
        };
        out.named.insert(name.clone(), handle);
    }
    if let Some(d) = out.named.get("default") {
        out.default = Some(d.clone());
    } else if let Some(pc) = from_env(env) {
        let pol = RetryPolicy::default();
        let provider = pc
            .build(pol.attempt_timeout)
            .map_err(|e| anyhow::anyhow!("the provider from the environment: {e}"))?;
        tracing::info!(provider = provider.name(), model = %pc.model, "agents use the provider from the environment");
        out.default = Some(ProviderHandle::new(
            ENV,
            provider,
            pc.model.clone(),
            false,
            pol,
        ));
    } else {
        match out
            .named
            .get(LOCAL)
            .cloned()
            .map(Ok)
            .unwrap_or_else(|| local(models, None))
        {
            Ok(h) => {
                tracing::info!(model = %h.default_model, "agents use the local model (no provider configured)");
                out.default = Some(h);
            }
            Err(e) => tracing::warn!(
                "no model provider: set OPENAI_API_KEY or ANTHROPIC_API_KEY, configure [providers], \
                 or install the local model; {e}"
            ),
        }
    }
    Ok(out)
}

/// The engine for `kira serve` / `kira worker`: the simulated executor,
/// none, or real agents (the default). Agents that cannot be built (no
/// provider) leave tasks in the queue, and say why.
pub fn engine(
    store: Arc<dyn kira_store::Store>,
    cfg: &EngineConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<kira_engine::Engine> {
    let clock: Arc<dyn kira_core::clock::Clock> = Arc::new(kira_core::clock::SystemClock);
    match &cfg.executor {
        Some(ExecutorConfig::Simulated(_)) => {
            tracing::info!("executor: simulated (results are marked simulated)");
            Ok(kira_engine::Engine::new(store, clock, cfg.clone()))
        }
        Some(ExecutorConfig::None) => {
            tracing::info!("executor: none (tasks wait in the queue)");
            Ok(kira_engine::Engine::new(store, clock, cfg.clone()))
        }
        None | Some(ExecutorConfig::Agents) => {
            let models = kira_embed::models_dir();
            let providers = providers(cfg, env, &models)?;
            match AgentExecutor::new(cfg, &providers) {
                Ok(exec) => {
                    tracing::info!("executor: agents");
                    let summarizer = match cfg.summarizer.kind {
                        SummarizerKind::Llm => exec.agent(&cfg.summarizer.agent).map(|a| {
                            tracing::info!(agent = %a.name, model = %a.model, "summariser: llm");
                            LlmSummarizer::new(
                                a.provider.clone(),
                                a.model.clone(),
                                cfg.summarizer.max_tokens,
                            )
                        }),
                        SummarizerKind::Extractive => None,
                    };
                    let engine = kira_engine::Engine::with_executor(
                        store,
                        clock,
                        cfg.clone(),
                        Arc::new(exec),
                    );
                    Ok(match summarizer {
                        Some(s) => engine.with_summarizer(Arc::new(s)),
                        None => engine,
                    })
                }
                Err(e) => {
                    tracing::warn!("executor: none, tasks wait in the queue: {e}");
                    Ok(kira_engine::Engine::new(store, clock, cfg.clone()))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::{MASTER_KEY_ENV, MasterKey, provider_field};
    use axum::http::HeaderMap;
    use kira_llm::{ChatRequest, Message};
    use std::sync::Mutex;

    /// A chat-completions server that records the Authorization header.
    async fn fake() -> (String, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let app = axum::Router::new().fallback(move |h: HeaderMap| {
            let s = s.clone();
            async move {
                let auth = h
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                s.lock().expect("lock").push(auth);
                axum::Json(serde_json::json!({
                    "id": "c", "model": "m",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
                }))
            }
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(l, app).await.expect("serve") });
        (format!("http://{addr}/v1"), seen)
    }

    fn config(base: &str, sealed: &str) -> EngineConfig {
        let mut cfg = EngineConfig::default();
        let spec: ProviderSpec = serde_json::from_value(serde_json::json!({
            "kind": "openai", "base_url": base, "api_key_encrypted": sealed, "model": "m"
        }))
        .expect("spec");
        cfg.providers.insert("default".into(), spec);
        cfg
    }

    #[tokio::test]
    async fn an_encrypted_key_is_opened_with_the_master_key_and_sent() {
        let (base, seen) = fake().await;
        let master = MasterKey::generate();
        let sealed = MasterKey::parse(&master)
            .expect("key")
            .seal(&provider_field("default"), "sk-sealed-42");
        let env = |k: &str| (k == MASTER_KEY_ENV).then(|| master.clone());
        let p = providers(&config(&base, &sealed), &env, std::path::Path::new("/none"))
            .expect("providers");
        let handle = p.default.expect("default");
        handle
            .provider
            .chat(&ChatRequest::new("m", vec![Message::user("hello")], 5))
            .await
            .expect("chat");
        assert_eq!(*seen.lock().expect("lock"), vec!["Bearer sk-sealed-42"]);

        // Without the master key, or with another, nothing is built and
        // the error names the field, never the key.
        for env_key in [None, Some(MasterKey::generate())] {
            let env = |k: &str| (k == MASTER_KEY_ENV).then(|| env_key.clone()).flatten();
            let e = providers(&config(&base, &sealed), &env, std::path::Path::new("/none"))
                .err()
                .expect("refused")
                .to_string();
            assert!(e.contains("providers.default.api_key_encrypted"), "{e}");
            assert!(!e.contains("sk-sealed-42"), "{e}");
        }
        // Sealed for another provider, it does not open here.
        let moved = MasterKey::parse(&master)
            .expect("key")
            .seal(&provider_field("other"), "sk-sealed-42");
        assert!(providers(&config(&base, &moved), &env, std::path::Path::new("/none")).is_err());
    }

    #[test]
    fn structured_output_is_on_unless_the_provider_turns_it_off() {
        let spec = |extra: serde_json::Value| {
            let mut v = serde_json::json!({"kind": "openai", "base_url": "http://127.0.0.1:9/v1"});
            v.as_object_mut()
                .expect("object")
                .extend(extra.as_object().expect("object").clone());
            serde_json::from_value::<ProviderSpec>(v).expect("spec")
        };
        let mut cfg = EngineConfig::default();
        cfg.providers
            .insert("held".into(), spec(serde_json::json!({})));
        cfg.providers.insert(
            "free".into(),
            spec(serde_json::json!({"structured_output": false})),
        );
        let p = providers(&cfg, &|_| None, std::path::Path::new("/none")).expect("providers");
        assert!(p.named["held"].structured_output);
        assert!(!p.named["free"].structured_output);
    }

    #[test]
    fn a_local_provider_runs_the_model_its_configuration_names() {
        use kira_llm::local::{QWEN25_CODER_05B, SMOLLM2_135M};
        let spec = |model: Option<&str>| {
            let mut v = serde_json::json!({"kind": "local"});
            if let Some(m) = model {
                v["model"] = serde_json::json!(m);
            }
            serde_json::from_value::<ProviderSpec>(v).expect("spec")
        };
        // Not installed: the error names the chosen model's file and how
        // to install that model.
        let empty = tempfile::tempdir().expect("dir");
        for (model, want) in [
            (Some("qwen2.5-coder-0.5b-instruct"), QWEN25_CODER_05B),
            (None, SMOLLM2_135M),
        ] {
            let e = local(empty.path(), Some(&spec(model)))
                .err()
                .expect("missing");
            assert!(
                e.contains(&want.path(empty.path()).display().to_string()),
                "{e}"
            );
            assert!(e.contains(want.install), "{e}");
        }
        // Installed: the file at the chosen model's place is loaded, under
        // its name (here SmolLM2's weights stand in for the larger model's,
        // which CI does not install).
        let models = tempfile::tempdir().expect("dir");
        let place = QWEN25_CODER_05B.path(models.path());
        std::fs::create_dir_all(place.parent().expect("folder")).expect("folder");
        std::os::unix::fs::symlink(SMOLLM2_135M.path(&kira_embed::models_dir()), &place)
            .expect("link");
        let h = local(
            models.path(),
            Some(&spec(Some("Qwen2.5-Coder-0.5B-Instruct"))),
        )
        .expect("loads");
        assert_eq!(h.default_model, QWEN25_CODER_05B.name);
        assert!(h.local);
    }
}
