//! kira-llm against fake servers on loopback that speak each wire format,
//! and against the real SmolLM2 GGUF (installed by `./scripts/install-models`;
//! these tests fail, never skip, without it).

mod anthropic;
mod fake;
mod local;
mod openai;
mod resilient;
mod schema_check;
mod stream;
