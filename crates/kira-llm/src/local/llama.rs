//! The llama forward pass the local model runs, written for the way kira
//! uses it: one call at a time per instance, a long prompt once, then one
//! token (or a few forced ones) per step. It reads two architectures of
//! GGUF: `llama` (SmolLM2) and `qwen2` (Qwen2.5), which is llama with
//! biases on the query, key and value products and rotary embeddings
//! over the two halves of a head instead of interleaved pairs.
//!
//! candle's `quantized_llama` served before; on two cores it read every
//! weight as f32 for each token (the GGUF's Q4_1 was unpacked because
//! candle multiplies Q4_1 with scalar code), concatenated the whole KV
//! cache per layer per token and copied it three more times for grouped
//! heads. Here each matrix is kept twice: quantized ([`quant`]: the GGUF's
//! own Q4_1 blocks where it ships them, else Q8) for the few rows of a
//! step, whose time is reading the weights, and as f32 for a prompt's many
//! rows, which candle's gemm multiplies best. The KV cache grows by a row
//! per token, per key/value head, in bf16 ([`Cache`]), and a group of query
//! heads reads its shared keys together, in place.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, gguf_file};
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::quant::{Activation, BLOCK, GROUP, Q4_1, Rows};

/// From this many rows on, a matrix product goes through the f32 weights
/// and candle's gemm (a prompt); below, through the quantized weights (a
/// step, or the few tokens a constraint forces).
const BATCHED_ROWS: usize = 16;
/// Rows of a prompt read in one pass (see [`Llama::forward`]).
const PREFILL_ROWS: usize = 256;

/// A step's matrix products are split over rayon's threads in chunks of
/// at least this many weight rows (a small matrix stays on the calling
/// thread), and of at most a [`TASKS_PER_THREAD`]th of a thread's share:
/// enough work per chunk that handing it over costs little (a step makes
/// over a hundred products), and enough chunks that a core taken by
/// something else does not hold the step up.
const ROWS_PER_TASK: usize = 64;
const TASKS_PER_THREAD: usize = 4;

type Result<T> = candle_core::Result<T>;

/// Which elements of a head rotary embeddings rotate together.
#[derive(Debug, Clone, Copy, PartialEq)]
enum RopeStyle {
    /// Elements `2i` and `2i + 1` (llama: its GGUF converter permutes the
    /// query and key rows to make this so).
    Interleaved,
    /// Elements `i` and `i + head_dim / 2` (qwen2, GPT-NeoX).
    Halves,
}

/// The hyper-parameters the GGUF's metadata gives.
#[derive(Debug, Clone, PartialEq)]
struct Config {
    layers: usize,
    dim: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    rope_base: f32,
    rope_style: RopeStyle,
    eps: f32,
    vocab: usize,
}

/// A weight matrix as the GGUF holds it: its values, and its Q4_1 blocks
/// when it ships as Q4_1 (stacked matrices keep them only if all do).
#[derive(Debug, Clone)]
struct Matrix {
    values: Vec<f32>,
    rows: usize,
    cols: usize,
    q4_1: Option<Vec<Q4_1>>,
}

impl Matrix {
    /// `self`'s rows, then `other`'s.
    fn stack(mut self, other: Matrix) -> Result<Self> {
        if other.cols != self.cols {
            candle_core::bail!("stacking {} columns on {}", other.cols, self.cols);
        }
        self.values.extend(other.values);
        self.rows += other.rows;
        self.q4_1 = match (self.q4_1, other.q4_1) {
            (Some(mut a), Some(b)) => {
                a.extend(b);
                Some(a)
            }
            _ => None,
        };
        Ok(self)
    }

    /// The blocks a step multiplies: Q4_1 as shipped, else Q8.
    fn rows(&self) -> Rows {
        match &self.q4_1 {
            Some(blocks) => Rows::q4_1(blocks, self.rows, self.cols / BLOCK),
            None => Rows::q8(&self.values, self.rows, self.cols / BLOCK),
        }
    }
}

/// A weight matrix `rows × cols` (out × in).
#[derive(Debug)]
struct Linear {
    rows: usize,
    cols: usize,
    /// `cols / 32` blocks per row.
    packed: Rows,
    /// The same weights as f32 `(rows, cols)`, for many rows at once;
    /// `None` for a matrix only ever applied to one row (the output).
    dense: Option<Tensor>,
    /// Added to each output row (qwen2's query, key and value products).
    bias: Option<Vec<f32>>,
}

impl Linear {
    fn new(m: &Matrix, dense: bool) -> Result<Self> {
        let (rows, cols) = (m.rows, m.cols);
        if m.values.len() != rows * cols || !cols.is_multiple_of(BLOCK) {
            candle_core::bail!("a {rows}×{cols} matrix with {} values", m.values.len());
        }
        if m.q4_1
            .as_ref()
            .is_some_and(|b| b.len() * BLOCK != rows * cols)
        {
            candle_core::bail!("a {rows}×{cols} matrix with the wrong number of blocks");
        }
        let dense = if dense {
            Some(Tensor::from_slice(&m.values, (rows, cols), &Device::Cpu)?)
        } else {
            None
        };
        Ok(Self {
            rows,
            cols,
            packed: m.rows(),
            dense,
            bias: None,
        })
    }

    fn with_bias(mut self, bias: Vec<f32>) -> Result<Self> {
        if bias.len() != self.rows {
            candle_core::bail!("a bias of {} for {} rows", bias.len(), self.rows);
        }
        self.bias = Some(bias);
        Ok(self)
    }

    /// `x` (`m` rows of `cols`) times the matrix's transpose, plus the
    /// bias if any: `m` rows of `rows`.
    fn forward(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        let mut out = self.product(x, m)?;
        if let Some(bias) = &self.bias {
            for row in out.chunks_exact_mut(self.rows) {
                add(row, bias);
            }
        }
        Ok(out)
    }

    /// `x` (`m` rows of `cols`) times the matrix's transpose: `m` rows of
    /// `rows`.
    fn product(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        debug_assert_eq!(x.len(), m * self.cols);
        if let Some(dense) = self.dense.as_ref().filter(|_| m >= BATCHED_ROWS) {
            let x = Tensor::from_slice(x, (m, self.cols), &Device::Cpu)?;
            return x.matmul(&dense.t()?)?.flatten_all()?.to_vec1();
        }
        let blocks = self.cols / BLOCK;
        let mut xq = Vec::with_capacity(m * blocks);
        Activation::quantize(x, &mut xq);
        // By weight row first (`by_row[r * m + i]`), so that each task
        // writes one slice: task `k` the rows from `k * per_task`.
        let mut by_row = vec![0f32; self.rows * m];
        // Whole groups of rows per task.
        let per_task = (self.rows / (TASKS_PER_THREAD * rayon::current_num_threads()))
            .max(ROWS_PER_TASK)
            .next_multiple_of(GROUP);
        let dots = |(k, out): (usize, &mut [f32])| {
            let (first, n) = (k * per_task, out.len() / m);
            let rows = self.packed.slice(first, n);
            if m == 1 {
                return rows.dots(&xq, out);
            }
            let mut column = vec![0f32; n];
            for (i, xi) in xq.chunks_exact(blocks).enumerate() {
                rows.dots(xi, &mut column);
                for (r, v) in column.iter().enumerate() {
                    out[r * m + i] = *v;
                }
            }
        };
        if self.rows < 2 * ROWS_PER_TASK {
            dots((0, &mut by_row));
        } else {
            by_row
                .par_chunks_mut(per_task * m)
                .enumerate()
                .for_each(dots);
        }
        if m == 1 {
            return Ok(by_row);
        }
        let mut out = vec![0f32; m * self.rows];
        for (r, row) in by_row.chunks_exact(m).enumerate() {
            for (i, v) in row.iter().enumerate() {
                out[i * self.rows + r] = *v;
            }
        }
        Ok(out)
    }
}

#[derive(Debug)]
struct Layer {
    attn_norm: Vec<f32>,
    /// The query, key and value matrices stacked: one product, and the
    /// activations quantized once, for the three.
    qkv: Linear,
    o: Linear,
    ffn_norm: Vec<f32>,
    /// The gate and up matrices stacked, likewise.
    gate_up: Linear,
    down: Linear,
}

/// The weights, shared by every instance.
#[derive(Debug)]
struct Weights {
    config: Config,
    /// The token embeddings, one row of `dim` per token; `None` when they
    /// are the output matrix (tied, as SmolLM2's and Qwen2.5's are), which
    /// is then kept once.
    embedding: Option<Rows>,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    output: Linear,
}

/// One layer's keys (rotated) and values so far, per key/value head:
/// `head_dim` values a position, one position after the other, as bf16
/// (the top half of an f32's bits, rounded to nearest).
///
/// A generation step reads the whole cache of every layer: at 2,300
/// positions, as f32, 106 MB a token on SmolLM2, about as much as its
/// weights (111 MB), read from memory every step since the weights stream
/// through the CPU's caches in between, so after a long prompt a step took
/// twice its time. bf16 halves it and turns back into f32 with a shift the compiler
/// vectorises into the dot products; each head's positions lie in one
/// stream. bf16 is the precision these models were trained in (and
/// vLLM's cache for them); an f32's mantissa beyond it is noise to the
/// softmax.
#[derive(Debug, Clone)]
struct Cache {
    k: Vec<Vec<u16>>,
    v: Vec<Vec<u16>>,
    len: usize,
}

impl Cache {
    fn new(kv_heads: usize) -> Self {
        Self {
            k: vec![Vec::new(); kv_heads],
            v: vec![Vec::new(); kv_heads],
            len: 0,
        }
    }

    /// Appends the positions of `k` and `v`, which hold `kv_heads ×
    /// head_dim` values a position.
    fn push(&mut self, k: &[f32], v: &[f32], hd: usize) {
        let width = self.k.len() * hd;
        for (rows, heads) in [(k, &mut self.k), (v, &mut self.v)] {
            for row in rows.chunks_exact(width) {
                for (head, values) in heads.iter_mut().zip(row.chunks_exact(hd)) {
                    let at = head.len();
                    head.resize(at + hd, 0);
                    for (b, &x) in head[at..].iter_mut().zip(values) {
                        *b = bf16(x);
                    }
                }
            }
        }
        self.len += k.len() / width;
    }

    fn clear(&mut self) {
        for h in self.k.iter_mut().chain(&mut self.v) {
            h.clear();
        }
        self.len = 0;
    }

    /// The first `len` positions of every head, as f32: `(kv_heads, len,
    /// head_dim)`.
    fn unpacked(heads: &[Vec<u16>], len: usize, hd: usize) -> Vec<f32> {
        let mut out = vec![0f32; heads.len() * len * hd];
        for (out, h) in out.chunks_exact_mut(len * hd).zip(heads) {
            for (o, &b) in out.iter_mut().zip(&h[..len * hd]) {
                *o = from_bf16(b);
            }
        }
        out
    }
}

/// `x` as bf16 bits, rounded to nearest even (a NaN stays a NaN), in
/// branch-free arithmetic the compiler vectorises.
#[inline(always)]
fn bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    // Adding 0x7fff and the lowest kept bit carries into the kept half
    // exactly when the dropped half is above its midpoint, or at it with
    // an odd kept half.
    let rounded = (bits + 0x7fff + ((bits >> 16) & 1)) >> 16;
    if x.is_nan() { 0x7fc0 } else { rounded as u16 }
}

/// bf16 bits as the f32 they are the top half of.
#[inline(always)]
fn from_bf16(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

/// One instance: the shared weights and its own KV cache.
#[derive(Debug, Clone)]
pub(crate) struct Llama {
    weights: Arc<Weights>,
    caches: Vec<Cache>,
}

impl Llama {
    /// Reads a llama (SmolLM2) or qwen2 (Qwen2.5) GGUF, whatever its
    /// quantization: Q4_1 matrices are kept as they are, any other is
    /// unpacked by candle and quantized again as Q8.
    pub(crate) fn from_gguf<R: std::io::Read + std::io::Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
    ) -> Result<Self> {
        let md = |key: &str| {
            content
                .metadata
                .get(key)
                .ok_or_else(|| candle_core::Error::Msg(format!("no {key} in the GGUF")))
        };
        let arch = md("general.architecture")?.to_string()?.clone();
        let rope_style = match arch.as_str() {
            "llama" => RopeStyle::Interleaved,
            "qwen2" => RopeStyle::Halves,
            _ => candle_core::bail!("a {arch} model; the local runtime reads llama and qwen2 ones"),
        };
        // Hyper-parameters are keyed by the architecture's name.
        let key = |name: &str| format!("{arch}.{name}");
        let count = |name: &str| -> Result<usize> { Ok(md(&key(name))?.to_u32()? as usize) };
        let dim = count("embedding_length")?;
        let heads = count("attention.head_count")?;
        let kv_heads = count("attention.head_count_kv")?;
        let layers = count("block_count")?;
        if heads == 0 || kv_heads == 0 || !dim.is_multiple_of(heads) || heads % kv_heads != 0 {
            candle_core::bail!("{heads} heads, {kv_heads} key/value heads for {dim} dimensions");
        }
        let head_dim = dim / heads;
        if count("rope.dimension_count").unwrap_or(head_dim) != head_dim {
            candle_core::bail!("partial rotary embeddings are not supported");
        }
        let embedding = matrix(content, reader, "token_embd.weight")?;
        let vocab = embedding.rows;
        if embedding.cols != dim || !dim.is_multiple_of(BLOCK) {
            candle_core::bail!("token embeddings of {}, not {dim}", embedding.cols);
        }
        let (output, packed_embedding) = if content.tensor_infos.contains_key("output.weight") {
            let output = Linear::new(&matrix(content, reader, "output.weight")?, false)?;
            (output, Some(embedding.rows()))
        } else {
            (Linear::new(&embedding, false)?, None)
        };
        drop(embedding);
        let (kv, mut ffn) = (kv_heads * head_dim, None);
        let mut blocks = Vec::with_capacity(layers);
        for i in 0..layers {
            let mut read = |name: &str, rows: Option<usize>, cols: Option<usize>| {
                let m = matrix(content, reader, &format!("blk.{i}.{name}.weight"))?;
                let (r, c) = (m.rows, m.cols);
                if rows.is_some_and(|rows| rows != r) || cols.is_some_and(|cols| cols != c) {
                    candle_core::bail!(
                        "blk.{i}.{name} is {r}×{c}, which does not fit {dim} dimensions"
                    );
                }
                Ok(m)
            };
            let qkv = read("attn_q", Some(dim), Some(dim))?
                .stack(read("attn_k", Some(kv), Some(dim))?)?
                .stack(read("attn_v", Some(kv), Some(dim))?)?;
            let o = read("attn_output", Some(dim), Some(dim))?;
            let gate = read("ffn_gate", ffn, Some(dim))?;
            let hidden = gate.rows;
            ffn = Some(hidden);
            let gate_up = gate.stack(read("ffn_up", ffn, Some(dim))?)?;
            let down = read("ffn_down", Some(dim), ffn)?;
            let norm = |reader: &mut R, name: &str| -> Result<Vec<f32>> {
                let v = vector(content, reader, &format!("blk.{i}.{name}.weight"))?;
                if v.len() != dim {
                    candle_core::bail!("blk.{i}.{name} has {} values, not {dim}", v.len());
                }
                Ok(v)
            };
            let mut qkv = Linear::new(&qkv, true)?;
            // qwen2 adds a bias to each of the three products (stacked
            // as their matrices are); llama has none.
            let biases = ["attn_q", "attn_k", "attn_v"].map(|n| format!("blk.{i}.{n}.bias"));
            if biases.iter().any(|b| content.tensor_infos.contains_key(b)) {
                let mut bias = Vec::with_capacity(dim + 2 * kv);
                for b in &biases {
                    bias.extend(vector(content, reader, b)?);
                }
                qkv = qkv.with_bias(bias)?;
            }
            blocks.push(Layer {
                attn_norm: norm(reader, "attn_norm")?,
                ffn_norm: norm(reader, "ffn_norm")?,
                qkv,
                o: Linear::new(&o, true)?,
                gate_up: Linear::new(&gate_up, true)?,
                down: Linear::new(&down, true)?,
            });
        }
        let norm = vector(content, reader, "output_norm.weight")?;
        if output.cols != dim || output.rows != vocab || norm.len() != dim {
            candle_core::bail!("the output's shapes do not fit {dim} dimensions");
        }
        let config = Config {
            layers,
            dim,
            heads,
            kv_heads,
            head_dim,
            rope_base: md(&key("rope.freq_base"))
                .and_then(|v| v.to_f32())
                .unwrap_or(10_000.0),
            rope_style,
            eps: md(&key("attention.layer_norm_rms_epsilon"))?.to_f32()?,
            vocab,
        };
        Ok(Self {
            weights: Arc::new(Weights {
                config,
                embedding: packed_embedding,
                layers: blocks,
                norm,
                output,
            }),
            caches: vec![Cache::new(kv_heads); layers],
        })
    }

    /// A new instance with the same weights and an empty cache.
    pub(crate) fn instance(&self) -> Self {
        Self {
            weights: self.weights.clone(),
            caches: vec![Cache::new(self.weights.config.kv_heads); self.caches.len()],
        }
    }

    /// Forgets every position (the buffers are kept for the next call).
    pub(crate) fn clear(&mut self) {
        for c in &mut self.caches {
            c.clear();
        }
    }

    /// Bytes of weights one step (one new token) reads: every matrix's
    /// quantized blocks.
    pub(crate) fn step_bytes(&self) -> usize {
        let w = &self.weights;
        let matrices = w
            .layers
            .iter()
            .flat_map(|l| [&l.qkv, &l.o, &l.gate_up, &l.down]);
        matrices.chain([&w.output]).map(|m| m.packed.bytes()).sum()
    }

    /// Positions held in the cache.
    fn len(&self) -> usize {
        self.caches.first().map_or(0, |c| c.len)
    }

    /// Reads `tokens` at the positions after those already cached and
    /// returns the logits for the next token (after the last of them).
    /// A long prompt is read [`PREFILL_ROWS`] at a time: each chunk's
    /// attention covers the cache so far and itself, so the scores held at
    /// once grow with the prompt, not with its square (at 2,000 tokens,
    /// read whole, they were ~130 MB a layer, allocated and faulted in
    /// again for every layer).
    pub(crate) fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        // On one of rayon's threads: a step splits over a hundred products
        // among the pool, and from inside it each split is a push to a
        // local queue, where from outside it is a hand-over, a wake-up
        // and a wait.
        rayon::scope(|_| {
            let (head, last) = match tokens.len() {
                0 => (&[][..], tokens),
                n => tokens.split_at((n - 1) / PREFILL_ROWS * PREFILL_ROWS),
            };
            for chunk in head.chunks(PREFILL_ROWS) {
                self.step(chunk)?;
            }
            self.step(last)
        })
    }

    fn step(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let w = self.weights.clone();
        let c = &w.config;
        let m = tokens.len();
        if m == 0 {
            candle_core::bail!("no tokens to read");
        }
        let pos = self.len();
        let mut x = vec![0f32; m * c.dim];
        for (row, &t) in x.chunks_exact_mut(c.dim).zip(tokens) {
            let t = t as usize;
            if t >= c.vocab {
                candle_core::bail!("token {t} is outside the vocabulary of {}", c.vocab);
            }
            let embedding = w.embedding.as_ref().unwrap_or(&w.output.packed);
            embedding.row_to_float(t, row);
        }
        let rope = Rope::new(c, pos, m);
        for (layer, cache) in w.layers.iter().zip(&mut self.caches) {
            let xn = rms_norm(&x, &layer.attn_norm, c.eps);
            let qkv = layer.qkv.forward(&xn, m)?;
            let kv = c.kv_heads * c.head_dim;
            let (mut q, mut k, mut v) = (
                Vec::with_capacity(m * c.dim),
                Vec::with_capacity(m * kv),
                Vec::with_capacity(m * kv),
            );
            for row in qkv.chunks_exact(c.dim + 2 * kv) {
                q.extend_from_slice(&row[..c.dim]);
                k.extend_from_slice(&row[c.dim..c.dim + kv]);
                v.extend_from_slice(&row[c.dim + kv..]);
            }
            rope.apply(&mut q, c.heads);
            rope.apply(&mut k, c.kv_heads);
            cache.push(&k, &v, c.head_dim);
            let attended = attention(c, &q, cache, pos, m)?;
            add(&mut x, &layer.o.forward(&attended, m)?);
            let xn = rms_norm(&x, &layer.ffn_norm, c.eps);
            let gate_up = layer.gate_up.forward(&xn, m)?;
            let hidden = layer.down.cols;
            let mut act = Vec::with_capacity(m * hidden);
            for row in gate_up.chunks_exact(2 * hidden) {
                let (gate, up) = row.split_at(hidden);
                act.extend(gate.iter().zip(up).map(|(g, u)| g / (1.0 + (-g).exp()) * u));
            }
            add(&mut x, &layer.down.forward(&act, m)?);
        }
        let last = rms_norm(&x[(m - 1) * c.dim..], &w.norm, c.eps);
        w.output.forward(&last, 1)
    }
}

/// A weight matrix of the GGUF: unpacked, and its blocks if Q4_1.
fn matrix<R: std::io::Read + std::io::Seek>(
    content: &gguf_file::Content,
    reader: &mut R,
    name: &str,
) -> Result<Matrix> {
    let q = content.tensor(reader, name, &Device::Cpu)?;
    let q4_1 = if q.dtype() == GgmlDType::Q4_1 {
        let blocks = Q4_1::from_gguf(&q.data()?)
            .ok_or_else(|| candle_core::Error::Msg(format!("{name}: Q4_1 data cut short")))?;
        Some(blocks)
    } else {
        None
    };
    let t = q.dequantize(&Device::Cpu)?;
    let (rows, cols) = t.dims2()?;
    Ok(Matrix {
        values: t.flatten_all()?.to_vec1()?,
        rows,
        cols,
        q4_1,
    })
}

/// A weight vector of the GGUF (a norm's scales).
fn vector<R: std::io::Read + std::io::Seek>(
    content: &gguf_file::Content,
    reader: &mut R,
    name: &str,
) -> Result<Vec<f32>> {
    content
        .tensor(reader, name, &Device::Cpu)?
        .dequantize(&Device::Cpu)?
        .flatten_all()?
        .to_vec1()
}

/// Rotary position embeddings for `m` rows from position `pos`.
struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
    style: RopeStyle,
}

impl Rope {
    fn new(c: &Config, pos: usize, m: usize) -> Self {
        let half = c.head_dim / 2;
        let theta: Vec<f32> = (0..half)
            .map(|i| 1.0 / c.rope_base.powf((2 * i) as f32 / c.head_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(m * half);
        let mut sin = Vec::with_capacity(m * half);
        for p in pos..pos + m {
            for t in &theta {
                let angle = p as f32 * t;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Self {
            cos,
            sin,
            half,
            style: c.rope_style,
        }
    }

    /// Rotates `x`, `m` rows of `heads` heads.
    fn apply(&self, x: &mut [f32], heads: usize) {
        let head_dim = 2 * self.half;
        for (row, x) in x.chunks_exact_mut(heads * head_dim).enumerate() {
            let cos = &self.cos[row * self.half..(row + 1) * self.half];
            let sin = &self.sin[row * self.half..(row + 1) * self.half];
            for head in x.chunks_exact_mut(head_dim) {
                match self.style {
                    RopeStyle::Interleaved => {
                        for ((pair, c), s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
                            let (a, b) = (pair[0], pair[1]);
                            pair[0] = a * c - b * s;
                            pair[1] = a * s + b * c;
                        }
                    }
                    RopeStyle::Halves => {
                        let (first, second) = head.split_at_mut(self.half);
                        for (((a, b), c), s) in first.iter_mut().zip(second).zip(cos).zip(sin) {
                            let (x, y) = (*a, *b);
                            *a = x * c - y * s;
                            *b = x * s + y * c;
                        }
                    }
                }
            }
        }
    }
}

/// Each row of `x` scaled to unit root mean square, times `weight`.
fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(weight.len()) {
        let mean = dot(row, row) / row.len() as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        out.extend(row.iter().zip(weight).map(|(v, w)| v * scale * w));
    }
    out
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// A dot product in eight lanes, which the compiler vectorises (a plain
/// fold over floats it may not reorder).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_of(a, b, |x| x)
}

/// The dot product of `a` with `b` read as f32 by `f`, in eight lanes.
#[inline(always)]
fn dot_of<T: Copy>(a: &[f32], b: &[T], f: impl Fn(T) -> f32) -> f32 {
    let mut lanes = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, &y)| x * f(y))
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            lanes[i] += x[i] * f(y[i]);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Positions of one key/value head a step's attention takes as one piece
/// of work: its keys and values (128 KB as bf16 at 64 dimensions) stay in
/// the core's cache while every query head of the group reads them.
const STEP_BLOCK: usize = 512;

/// Causal attention of `m` query rows (positions `pos..pos + m`, already
/// in `cache`) over the cache; each group of `heads / kv_heads` query
/// heads shares one key/value head.
///
/// A row's work is split by key/value head and by blocks of positions,
/// over the pool's threads; each piece reads its keys and values once for
/// the whole group of query heads and keeps, per head, its maximum
/// score, its sum of exponentials and its weighted values, which are
/// merged at the end (the softmax of the pieces together).
fn attention(c: &Config, q: &[f32], cache: &Cache, pos: usize, m: usize) -> Result<Vec<f32>> {
    if m >= BATCHED_ROWS {
        return attention_batched(c, q, cache, pos, m);
    }
    let (hd, group) = (c.head_dim, c.heads / c.kv_heads);
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; m * c.dim];
    for (i, (row, qi)) in out
        .chunks_exact_mut(c.dim)
        .zip(q.chunks_exact(c.dim))
        .enumerate()
    {
        let seen = pos + i + 1;
        let blocks = seen.div_ceil(STEP_BLOCK);
        let parts: Vec<Part> = (0..c.kv_heads * blocks)
            .into_par_iter()
            .map(|t| {
                let (g, b) = (t / blocks, t % blocks);
                let (from, to) = (b * STEP_BLOCK, ((b + 1) * STEP_BLOCK).min(seen));
                Part::of(
                    &qi[g * group * hd..(g + 1) * group * hd],
                    &cache.k[g][from * hd..to * hd],
                    &cache.v[g][from * hd..to * hd],
                    hd,
                    scale,
                )
            })
            .collect();
        for (out, parts) in row
            .chunks_exact_mut(group * hd)
            .zip(parts.chunks_exact(blocks))
        {
            Part::merge(parts, hd, out);
        }
    }
    Ok(out)
}

/// A group of query heads' attention over a block of positions, kept
/// unnormalised: per head the largest score, the sum of the exponentials
/// of the scores less it, and the values weighted by those exponentials.
struct Part {
    max: Vec<f32>,
    sum: Vec<f32>,
    acc: Vec<f32>,
}

impl Part {
    /// Of the query heads `qs` (`head_dim` values each) over the keys `k`
    /// and values `v` of a block (bf16, `head_dim` a position).
    fn of(qs: &[f32], k: &[u16], v: &[u16], hd: usize, scale: f32) -> Self {
        let (heads, n) = (qs.len() / hd, k.len() / hd);
        let plain = || {
            let mut scores = vec![0f32; heads * n];
            for (j, kj) in k.chunks_exact(hd).enumerate() {
                for (h, qh) in qs.chunks_exact(hd).enumerate() {
                    scores[h * n + j] = dot_bf16(qh, kj) * scale;
                }
            }
            let mut max = Vec::with_capacity(heads);
            let mut sum = Vec::with_capacity(heads);
            for s in scores.chunks_exact_mut(n) {
                let m = lane_max(s);
                for x in s.iter_mut() {
                    *x = exp_nonpositive(*x - m);
                }
                max.push(m);
                sum.push(lane_sum(s));
            }
            let mut acc = vec![0f32; heads * hd];
            for (j, vj) in v.chunks_exact(hd).enumerate() {
                for (h, acc) in acc.chunks_exact_mut(hd).enumerate() {
                    let w = scores[h * n + j];
                    for (a, &b) in acc.iter_mut().zip(vj) {
                        *a += w * from_bf16(b);
                    }
                }
            }
            Part { max, sum, acc }
        };
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = pulp::x86::V3::try_new() {
            return simd.vectorize(plain);
        }
        plain()
    }

    /// The normalised attention of each head of the group over all the
    /// blocks of `parts`, written into `out` (`head_dim` values a head).
    fn merge(parts: &[Part], hd: usize, out: &mut [f32]) {
        for (h, out) in out.chunks_exact_mut(hd).enumerate() {
            let max = parts
                .iter()
                .map(|p| p.max[h])
                .fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for p in parts {
                let w = (p.max[h] - max).exp();
                sum += p.sum[h] * w;
                for (o, a) in out.iter_mut().zip(&p.acc[h * hd..(h + 1) * hd]) {
                    *o += w * a;
                }
            }
            let inv = 1.0 / sum;
            for o in out.iter_mut() {
                *o *= inv;
            }
        }
    }
}

/// The dot product of `a` with the bf16 values `b`, in eight lanes.
#[inline(always)]
fn dot_bf16(a: &[f32], b: &[u16]) -> f32 {
    dot_of(a, b, from_bf16)
}

/// The largest of `x` (not empty), in eight lanes.
#[inline(always)]
fn lane_max(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for i in 0..8 {
            lanes[i] = lanes[i].max(c[i]);
        }
    }
    lanes.iter().copied().fold(tail, f32::max)
}

/// [`attention`] for many rows, as batched matrix products.
fn attention_batched(
    c: &Config,
    q: &[f32],
    cache: &Cache,
    pos: usize,
    m: usize,
) -> Result<Vec<f32>> {
    let dev = &Device::Cpu;
    let (hd, kvh, group) = (c.head_dim, c.kv_heads, c.heads / c.kv_heads);
    let len = pos + m;
    // (m, heads, hd) -> (kv_heads, group * m, hd): the query heads that
    // share a key head, one after the other.
    let q = Tensor::from_slice(q, (m, c.heads, hd), dev)?
        .transpose(0, 1)?
        .reshape((kvh, group * m, hd))?;
    let k = Tensor::from_vec(Cache::unpacked(&cache.k, len, hd), (kvh, len, hd), dev)?;
    let v = Tensor::from_vec(Cache::unpacked(&cache.v, len, hd), (kvh, len, hd), dev)?;
    // One pass over the scores, in place: scaled, masked (row i sees the
    // positions up to pos + i) and normalised. Built from tensor
    // operations this was eight passes, each a new allocation of
    // heads x m x len floats (18 MB a layer for 256 rows at 2,000
    // tokens), faulted in again every time.
    let mut scores = q.matmul(&k.t()?)?.flatten_all()?.to_vec1::<f32>()?;
    let scale = 1.0 / (hd as f32).sqrt();
    scores
        .par_chunks_exact_mut(len)
        .enumerate()
        .for_each(|(r, row)| {
            let (visible, hidden) = row.split_at_mut(pos + r % m + 1);
            softmax_scaled(visible, scale);
            hidden.fill(0.0);
        });
    let probs = Tensor::from_vec(scores, (kvh, group * m, len), dev)?;
    probs
        .matmul(&v)?
        .reshape((c.heads, m, hd))?
        .transpose(0, 1)?
        .flatten_all()?
        .to_vec1()
}

/// Softmax of `x * scale` in place (`scale` > 0), vectorised where the
/// CPU has AVX2 and FMA: every loop is elementwise or keeps eight lanes,
/// since the compiler may not reorder a float reduction.
fn softmax_scaled(x: &mut [f32], scale: f32) {
    let mut plain = || {
        let max = lane_max(x);
        for v in x.iter_mut() {
            *v = exp_nonpositive((*v - max) * scale);
        }
        let inv = 1.0 / lane_sum(x);
        for v in x.iter_mut() {
            *v *= inv;
        }
    };
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = pulp::x86::V3::try_new() {
        return simd.vectorize(plain);
    }
    plain()
}

/// The sum of `x` in eight lanes.
#[inline(always)]
fn lane_sum(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..8 {
            lanes[i] += c[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// e^x for x <= 0 (a softmax's shifted scores) in plain arithmetic the
/// compiler vectorises, where `f32::exp` is a call per value (4-7 times
/// slower over a row): x = n ln 2 + r with |r| <= ln 2 / 2, e^r by its
/// Taylor series to r^6 (relative error under 3e-7), times 2^n built in the
/// exponent's bits. Below -87 (and for -inf) the result is 0.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 x 2^23 rounds to the nearest integer in the low bits.
    const ROUND: f32 = 12_582_912.0;
    let live = x >= -87.0;
    let x = x.max(-87.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // t and ROUND share an exponent, so their bits differ by n: n + 127
    // shifted into the exponent field is 2^n.
    let n_bits = t.to_bits().wrapping_sub(ROUND.to_bits());
    let scaled = p * f32::from_bits(n_bits.wrapping_add(127) << 23);
    if live { scaled } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::quantized::gguf_file::Value;
    use candle_transformers::models::{quantized_llama, quantized_qwen2};

    const VOCAB: usize = 48;
    const DIM: usize = 64;
    const FFN: usize = 96;

    /// A small random model in GGUF form, two layers, four query heads
    /// sharing two key/value heads: a llama with tied embeddings (no output
    /// matrix, as SmolLM2), or a qwen2 with its query, key and value biases
    /// and an output matrix of its own. Its matrices are `dtype`.
    fn tiny_gguf(arch: &str, dtype: GgmlDType) -> Vec<u8> {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut random = |rows: usize, cols: usize, scale: f32| {
            let values: Vec<f32> = (0..rows * cols)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
                })
                .collect();
            let t = Tensor::from_vec(values, (rows, cols), &Device::Cpu).expect("tensor");
            QTensor::quantize(&t, if rows == 1 { GgmlDType::F32 } else { dtype }).expect("q")
        };
        let qwen2 = arch == "qwen2";
        let mut tensors = vec![
            ("token_embd.weight".to_string(), random(VOCAB, DIM, 2.0)),
            ("output_norm.weight".to_string(), random(1, DIM, 0.4)),
        ];
        if qwen2 {
            tensors.push(("output.weight".to_string(), random(VOCAB, DIM, 1.0)));
        }
        for i in 0..2 {
            for (name, rows, cols) in [
                ("attn_q", DIM, DIM),
                ("attn_k", 32, DIM),
                ("attn_v", 32, DIM),
                ("attn_output", DIM, DIM),
                ("ffn_gate", FFN, DIM),
                ("ffn_up", FFN, DIM),
                ("ffn_down", DIM, FFN),
            ] {
                tensors.push((format!("blk.{i}.{name}.weight"), random(rows, cols, 0.5)));
            }
            for name in ["attn_norm", "ffn_norm"] {
                tensors.push((format!("blk.{i}.{name}.weight"), random(1, DIM, 0.4)));
            }
            if qwen2 {
                for (name, rows) in [("attn_q", DIM), ("attn_k", 32), ("attn_v", 32)] {
                    tensors.push((format!("blk.{i}.{name}.bias"), random(1, rows, 1.0)));
                }
            }
        }
        // Norm weights are vectors, around 1; biases are vectors.
        let tensors: Vec<(String, QTensor)> = tensors
            .into_iter()
            .map(|(name, t)| {
                let norm = name.ends_with("norm.weight");
                if norm || name.ends_with(".bias") {
                    let v = t
                        .dequantize(&Device::Cpu)
                        .and_then(|v| v.flatten_all())
                        .and_then(|v| v + if norm { 1.0 } else { 0.0 })
                        .expect("v");
                    (name, QTensor::quantize(&v, GgmlDType::F32).expect("f32"))
                } else {
                    (name, t)
                }
            })
            .collect();
        let key = |name: &str| format!("{arch}.{name}");
        let metadata = [
            (
                "general.architecture".to_string(),
                Value::String(arch.into()),
            ),
            (key("embedding_length"), Value::U32(DIM as u32)),
            (key("context_length"), Value::U32(64)),
            (key("attention.head_count"), Value::U32(4)),
            (key("attention.head_count_kv"), Value::U32(2)),
            (key("block_count"), Value::U32(2)),
            (key("rope.dimension_count"), Value::U32(16)),
            (key("rope.freq_base"), Value::F32(10_000.0)),
            (key("attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
        ];
        let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut out = std::io::Cursor::new(Vec::new());
        gguf_file::write(&mut out, &metadata, &tensors).expect("write");
        out.into_inner()
    }

    /// candle's own forward pass of a model, the reference ours is held to.
    enum Reference {
        Llama(quantized_llama::ModelWeights),
        Qwen2(quantized_qwen2::ModelWeights),
    }

    /// The same model with every tensor unpacked to f32.
    fn unpacked(bytes: Vec<u8>) -> Vec<u8> {
        let mut r = std::io::Cursor::new(bytes);
        let content = gguf_file::Content::read(&mut r).expect("read");
        let dev = &Device::Cpu;
        let tensors: Vec<(String, QTensor)> = content
            .tensor_infos
            .keys()
            .map(|name| {
                let t = content.tensor(&mut r, name, dev).expect("tensor");
                let f = t.dequantize(dev).expect("f32");
                (
                    name.clone(),
                    QTensor::quantize(&f, GgmlDType::F32).expect("f32"),
                )
            })
            .collect();
        let metadata: Vec<(&str, &Value)> = content
            .metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut out = std::io::Cursor::new(Vec::new());
        gguf_file::write(&mut out, &metadata, &tensors).expect("write");
        out.into_inner()
    }

    /// Our model of `dtype` weights, and candle's of the same weights
    /// unpacked to f32 (so that the reference is exact: candle's own
    /// quantized products round activations too).
    fn both(arch: &str, dtype: GgmlDType) -> (Llama, Reference) {
        let bytes = tiny_gguf(arch, dtype);
        let mut r = std::io::Cursor::new(bytes.clone());
        let content = gguf_file::Content::read(&mut r).expect("read");
        let ours = Llama::from_gguf(&content, &mut r).expect("ours");
        let mut r = std::io::Cursor::new(unpacked(bytes));
        let content = gguf_file::Content::read(&mut r).expect("read");
        let dev = &Device::Cpu;
        let theirs = match arch {
            "llama" => Reference::Llama(
                quantized_llama::ModelWeights::from_gguf(content, &mut r, dev).expect("candle"),
            ),
            _ => Reference::Qwen2(
                quantized_qwen2::ModelWeights::from_gguf(content, &mut r, dev).expect("candle"),
            ),
        };
        (ours, theirs)
    }

    fn candle_logits(m: &mut Reference, tokens: &[u32], pos: usize) -> Vec<f32> {
        let input = Tensor::new(tokens, &Device::Cpu)
            .and_then(|t| t.unsqueeze(0))
            .expect("input");
        let logits = match m {
            Reference::Llama(m) => m.forward(&input, pos),
            Reference::Qwen2(m) => m.forward(&input, pos),
        };
        logits
            .and_then(|l| l.flatten_all())
            .and_then(|l| l.to_vec1())
            .expect("candle forward")
    }

    /// The largest difference, relative to the largest logit.
    fn distance(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    fn argmax(v: &[f32]) -> usize {
        (0..v.len())
            .max_by(|&i, &j| v[i].total_cmp(&v[j]))
            .expect("not empty")
    }

    #[test]
    fn gives_candles_logits_for_a_prompt_steps_and_forced_tokens() {
        gives_candles_logits("llama", GgmlDType::F32);
    }

    #[test]
    fn gives_candles_qwen2_logits_with_biases_and_rotated_halves() {
        gives_candles_logits("qwen2", GgmlDType::F32);
    }

    /// Q4_1 matrices are multiplied as the GGUF ships them.
    #[test]
    fn gives_candles_logits_for_q4_1_weights() {
        gives_candles_logits("llama", GgmlDType::Q4_1);
        gives_candles_logits("qwen2", GgmlDType::Q4_1);
    }

    fn gives_candles_logits(arch: &str, dtype: GgmlDType) {
        let (mut ours, mut theirs) = both(arch, dtype);
        // A prompt long enough for the batched path, then single steps,
        // then a few tokens at once (as a constraint forces them).
        let prompt: Vec<u32> = (0..20).map(|i| (i * 7 % VOCAB) as u32).collect();
        let feeds: [&[u32]; 4] = [&prompt, &[3], &[41], &[5, 9, 30]];
        let mut pos = 0;
        for feed in feeds {
            let a = ours.forward(feed).expect("ours");
            let b = candle_logits(&mut theirs, feed, pos);
            pos += feed.len();
            // Quantized weights and 8-bit activations: up to 2.5% off on
            // this model (more would mean a mistake: a wrong rotation or
            // head is far off).
            let d = distance(&a, &b);
            assert!(
                d < 0.04,
                "{arch}: after {pos} tokens the logits differ by {d}"
            );
            assert_eq!(argmax(&a), argmax(&b), "{arch}: after {pos} tokens");
        }
        assert_eq!(ours.len(), pos);
    }

    #[test]
    fn a_prompt_read_at_once_or_token_by_token_gives_the_same_logits() {
        for arch in ["llama", "qwen2"] {
            a_prompt_read_at_once_or_token_by_token(arch);
        }
    }

    fn a_prompt_read_at_once_or_token_by_token(arch: &str) {
        let (model, _) = both(arch, GgmlDType::F32);
        let prompt: Vec<u32> = (0..24).map(|i| (i * 5 % VOCAB) as u32).collect();
        let mut batched = model.instance();
        let at_once = batched.forward(&prompt).expect("batched");
        let mut stepped = model.instance();
        let mut last = Vec::new();
        for t in &prompt {
            last = stepped.forward(&[*t]).expect("step");
        }
        assert!(distance(&last, &at_once) < 0.04);
        assert_eq!(argmax(&last), argmax(&at_once));
        // Cleared, an instance starts over.
        stepped.clear();
        assert_eq!(stepped.forward(&prompt).expect("again"), at_once);
    }

    /// Attention as written down, in f64: each query head over the
    /// positions it sees.
    fn attention_by_the_book(c: &Config, q: &[f32], cache: &Cache, pos: usize) -> Vec<f64> {
        let hd = c.head_dim;
        let mut out = Vec::new();
        for (i, row) in q.chunks_exact(c.dim).enumerate() {
            for h in 0..c.heads {
                let kv = h / (c.heads / c.kv_heads);
                let qh = &row[h * hd..(h + 1) * hd];
                let scores: Vec<f64> = (0..=pos + i)
                    .map(|j| {
                        let k = &cache.k[kv][j * hd..][..hd];
                        qh.iter()
                            .zip(k)
                            .map(|(a, &b)| f64::from(*a) * f64::from(from_bf16(b)))
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for d in 0..hd {
                    let v: f64 = e
                        .iter()
                        .enumerate()
                        .map(|(j, w)| w * f64::from(from_bf16(cache.v[kv][j * hd + d])))
                        .sum();
                    out.push(v / sum);
                }
            }
        }
        out
    }

    #[test]
    fn attention_is_attention_by_the_book_for_a_step_and_for_a_chunk() {
        // Four query heads on one key head and on two, 1,100 positions:
        // a step's attention in three blocks (512, 512, 76).
        for kv_heads in [1, 2] {
            let c = Config {
                layers: 1,
                dim: 4 * 16,
                heads: 4,
                kv_heads,
                head_dim: 16,
                rope_base: 10_000.0,
                rope_style: RopeStyle::Halves,
                eps: 1e-5,
                vocab: 8,
            };
            let (len, width) = (1_100, kv_heads * 16);
            let wave = |n: usize, k: usize| ((n * k % 97) as f32 / 97.0 - 0.5) * 4.0;
            let mut cache = Cache::new(kv_heads);
            let k: Vec<f32> = (0..len * width).map(|n| wave(n, 31)).collect();
            let v: Vec<f32> = (0..len * width).map(|n| wave(n, 17)).collect();
            // Pushed in pieces, as steps and chunks append them.
            for (k, v) in k.chunks(7 * width).zip(v.chunks(7 * width)) {
                cache.push(k, v, 16);
            }
            assert_eq!(cache.len, len);
            assert_eq!(
                from_bf16(cache.k[kv_heads - 1][(len - 1) * 16 + 15]),
                from_bf16(bf16(k[len * width - 1]))
            );
            // A generation step's few rows, and a prompt's chunk (the
            // batched path), at the cache's end.
            for m in [3, 20] {
                let pos = len - m;
                let q: Vec<f32> = (0..m * c.dim).map(|n| wave(n, 13)).collect();
                let ours = attention(&c, &q, &cache, pos, m).expect("attention");
                let book = attention_by_the_book(&c, &q, &cache, pos);
                assert_eq!(ours.len(), book.len());
                let worst = ours
                    .iter()
                    .zip(&book)
                    .map(|(a, b)| (f64::from(*a) - b).abs())
                    .fold(0.0, f64::max);
                assert!(
                    worst < 1e-5,
                    "{kv_heads} key heads, {m} rows: off by {worst}"
                );
            }
        }
    }

    #[test]
    fn the_cache_keeps_values_to_bf16_rounded_to_nearest() {
        for x in [
            0.0f32,
            -0.0,
            1.0,
            -2.5,
            3.140_625,
            2f32.powi(-100),
            -65_536.0,
            2f32.powi(127),
        ] {
            assert_eq!(from_bf16(bf16(x)), x, "{x} is a bf16");
        }
        let mut worst = 0f32;
        for i in 1..20_000 {
            let x = (i as f32 * 0.731).sin() * 10f32.powi(i % 9 - 4);
            let back = from_bf16(bf16(x));
            worst = worst.max(((back - x) / x).abs());
        }
        // Seven bits of mantissa: half a unit in the last place is at most
        // 2^-8 of the value.
        assert!(worst <= 1.0 / 256.0, "off by {worst}");
        assert!(worst > 1.0 / 1024.0, "rounded to bf16 at all: {worst}");
        // Ties go to even: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7.
        assert_eq!(from_bf16(bf16(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(
            from_bf16(bf16(1.0 + 3.0 / 256.0)),
            1.0 + 4.0 / 256.0,
            "and up when the kept half is odd"
        );
        assert!(from_bf16(bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(bf16(f32::INFINITY)), f32::INFINITY);
        // The same rounding as the half crate's, bit for bit.
        for i in 0..100_000u32 {
            let x = f32::from_bits(i.wrapping_mul(2_654_435_761));
            if !x.is_nan() {
                assert_eq!(bf16(x), half::bf16::from_f32(x).to_bits(), "{x:e}");
            }
        }
    }

    #[test]
    fn the_vectorised_exp_is_within_three_parts_in_ten_million_of_the_exact_value() {
        let mut worst = 0f64;
        for i in 0..=870_000 {
            let x = -(i as f32) / 10_000.0;
            let (ours, exact) = (f64::from(exp_nonpositive(x)), f64::from(x).exp());
            worst = worst.max((ours - exact).abs() / exact);
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpositive(-100.0), 0.0);
        assert_eq!(exp_nonpositive(0.0), 1.0);
    }

    #[test]
    fn a_scaled_softmax_is_the_softmax_of_the_scaled_scores() {
        let scores: Vec<f32> = (0..37).map(|i| ((i * 7919) % 101) as f32 - 50.0).collect();
        let mut ours = scores.clone();
        softmax_scaled(&mut ours, 0.125);
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f64> = scores
            .iter()
            .map(|s| (f64::from(s - max) * 0.125).exp())
            .collect();
        let sum: f64 = e.iter().sum();
        for (o, e) in ours.iter().zip(&e) {
            assert!(
                (f64::from(*o) - e / sum).abs() < 1e-6,
                "{o} against {}",
                e / sum
            );
        }
        assert!((ours.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn a_long_prompt_read_in_chunks_gives_the_logits_of_one_pass() {
        for arch in ["llama", "qwen2"] {
            let (model, _) = both(arch, GgmlDType::F32);
            // Two whole chunks and a part: 256 + 256 + 88.
            let prompt: Vec<u32> = (0..600).map(|i| (i * 7 % VOCAB) as u32).collect();
            let mut chunked = model.instance();
            let a = chunked.forward(&prompt).expect("chunked");
            assert_eq!(chunked.len(), prompt.len());
            let mut whole = model.instance();
            let b = rayon::scope(|_| whole.step(&prompt)).expect("one pass");
            // The same products, the attention split by rows: only the
            // order of float sums differs.
            let d = distance(&a, &b);
            assert!(d < 1e-3, "{arch}: the logits differ by {d}");
            assert_eq!(argmax(&a), argmax(&b), "{arch}");
            // A prompt of whole chunks still ends on a pass of its own rows.
            let mut exact = model.instance();
            exact.forward(&prompt[..512]).expect("two chunks");
            assert_eq!(exact.len(), 512);
        }
    }

    #[test]
    fn tokens_outside_the_vocabulary_and_other_architectures_are_errors() {
        let (mut model, _) = both("llama", GgmlDType::F32);
        assert!(model.forward(&[VOCAB as u32]).is_err());
        assert!(model.forward(&[]).is_err());
        let mut r = std::io::Cursor::new(tiny_gguf("llama", GgmlDType::F32));
        let mut content = gguf_file::Content::read(&mut r).expect("read");
        content.metadata.insert(
            "general.architecture".into(),
            Value::String("gemma3".into()),
        );
        let e = Llama::from_gguf(&content, &mut r).expect_err("gemma3");
        assert!(e.to_string().contains("gemma3"), "{e}");
    }

    /// Q4_1 stays Q4_1 (24 bytes a block of 32 here); f32 becomes Q8
    /// (36 bytes).
    #[test]
    fn a_step_reads_every_matrix_once_quantized() {
        let per_layer = 2 * DIM * DIM + 2 * 32 * DIM + 3 * FFN * DIM;
        let blocks = (2 * per_layer + VOCAB * DIM) / 32;
        let (model, _) = both("llama", GgmlDType::F32);
        assert_eq!(model.step_bytes(), blocks * 36);
        let (model, _) = both("llama", GgmlDType::Q4_1);
        assert_eq!(model.step_bytes(), blocks * 24);
    }

    #[test]
    fn the_dot_product_sums_every_lane_and_the_tail() {
        let a: Vec<f32> = (0..19).map(|i| i as f32).collect();
        let b = vec![2.0; 19];
        assert_eq!(dot(&a, &b), 2.0 * (0..19).sum::<i32>() as f32);
    }
}
