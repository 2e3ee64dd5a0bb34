//! kira-llm against fake servers on loopback that speak each wire format,
//! and against the real SmolLM2 GGUF (installed by `./scripts/install-models`;
//! these tests fail, never skip, without it). The larger Qwen2.5 model's
//! tests (`qwen`) are built only with the `larger-model` feature: the model
//! is installed on request, and a plain run (CI's) neither has nor skips them.

mod anthropic;
mod fake;
mod local;
mod openai;
#[cfg(feature = "larger-model")]
mod qwen;
mod resilient;
mod schema_check;
mod stream;
