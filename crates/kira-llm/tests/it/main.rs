//! kira-llm against fake servers on loopback that speak each wire format,
//! and against the real SmolLM2 GGUF (installed by `./scripts/install-models`;
//! these tests fail, never skip, without it). The larger Qwen2.5 model's
//! tests (`qwen`) are ignored unless asked for: it is installed on request.

mod anthropic;
mod fake;
mod local;
mod openai;
mod qwen;
mod resilient;
mod schema_check;
mod stream;
