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
//! heads. Here each matrix is kept twice: as Q8_0 blocks (a quarter of
//! f32's bytes, multiplied by candle's AVX2 dot product, and near-exact for
//! Q4_1 values) for the few rows of a step, and as f32 for a prompt's many
//! rows, which candle's gemm multiplies best. The KV cache is a buffer that
//! grows by a row per token, and grouped heads read their shared keys in
//! place.

use std::sync::Arc;

use candle_core::quantized::gguf_file;
use candle_core::quantized::k_quants::{BlockQ8_0, GgmlType, QK8_0};
use candle_core::{D, Device, Tensor};
use rayon::prelude::*;

/// From this many rows on, a matrix product goes through the f32 weights
/// and candle's gemm (a prompt); below, through the Q8_0 weights (a step,
/// or the few tokens a constraint forces).
const BATCHED_ROWS: usize = 16;

/// A step's matrix products are split over rayon's threads in chunks of
/// this many weight rows (a small matrix stays on the calling thread):
/// enough work per chunk that handing it over costs little, and enough
/// chunks that a core taken by something else does not hold the step up.
const ROWS_PER_TASK: usize = 64;

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

/// A weight matrix `rows × cols` (out × in).
#[derive(Debug)]
struct Linear {
    rows: usize,
    cols: usize,
    /// `cols / 32` blocks per row.
    packed: Vec<BlockQ8_0>,
    /// The same weights as f32 `(rows, cols)`, for many rows at once;
    /// `None` for a matrix only ever applied to one row (the output).
    dense: Option<Tensor>,
    /// Added to each output row (qwen2's query, key and value products).
    bias: Option<Vec<f32>>,
}

impl Linear {
    fn new(values: &[f32], rows: usize, cols: usize, dense: bool) -> Result<Self> {
        if values.len() != rows * cols || !cols.is_multiple_of(QK8_0) {
            candle_core::bail!("a {rows}×{cols} matrix with {} values", values.len());
        }
        let mut packed = vec![BlockQ8_0::zeros(); rows * cols / QK8_0];
        BlockQ8_0::from_float(values, &mut packed);
        let dense = if dense {
            Some(Tensor::from_slice(values, (rows, cols), &Device::Cpu)?)
        } else {
            None
        };
        Ok(Self {
            rows,
            cols,
            packed,
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
        let blocks = self.cols / QK8_0;
        let mut xq = vec![BlockQ8_0::zeros(); m * blocks];
        BlockQ8_0::from_float(x, &mut xq);
        // By weight row first (`by_row[r * m + i]`), so that each task
        // writes one slice.
        let mut by_row = vec![0f32; self.rows * m];
        let dots = |(out, rows): (&mut [f32], &[BlockQ8_0])| {
            for (row, out) in rows.chunks_exact(blocks).zip(out.chunks_exact_mut(m)) {
                for (xi, o) in xq.chunks_exact(blocks).zip(out) {
                    *o = BlockQ8_0::vec_dot(self.cols, row, xi);
                }
            }
        };
        if self.rows < 2 * ROWS_PER_TASK {
            dots((&mut by_row, &self.packed));
        } else {
            by_row
                .par_chunks_mut(ROWS_PER_TASK * m)
                .zip(self.packed.par_chunks(ROWS_PER_TASK * blocks))
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
    /// The token embeddings, one row of `dim` per token, as Q8_0 blocks.
    embedding: Vec<BlockQ8_0>,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    output: Linear,
}

/// One layer's keys and values so far: per position, `kv_heads × head_dim`
/// values (rotated keys).
#[derive(Debug, Clone, Default)]
struct Cache {
    k: Vec<f32>,
    v: Vec<f32>,
}

/// One instance: the shared weights and its own KV cache.
#[derive(Debug, Clone)]
pub(crate) struct Llama {
    weights: Arc<Weights>,
    caches: Vec<Cache>,
}

impl Llama {
    /// Reads a llama (SmolLM2) or qwen2 (Qwen2.5) GGUF, whatever its
    /// quantization: candle unpacks each tensor to f32, which is then
    /// packed again as Q8_0.
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
        let (embedding, vocab, embedding_cols) = matrix(content, reader, "token_embd.weight")?;
        if embedding_cols != dim {
            candle_core::bail!("token embeddings of {embedding_cols}, not {dim}");
        }
        let output = if content.tensor_infos.contains_key("output.weight") {
            let (w, rows, cols) = matrix(content, reader, "output.weight")?;
            Linear::new(&w, rows, cols, false)?
        } else {
            Linear::new(&embedding, vocab, dim, false)?
        };
        let mut packed_embedding = vec![BlockQ8_0::zeros(); embedding.len() / QK8_0];
        BlockQ8_0::from_float(&embedding, &mut packed_embedding);
        drop(embedding);
        let (kv, mut ffn) = (kv_heads * head_dim, None);
        let mut blocks = Vec::with_capacity(layers);
        for i in 0..layers {
            let mut read = |name: &str, rows: Option<usize>, cols: Option<usize>| {
                let (w, r, c) = matrix(content, reader, &format!("blk.{i}.{name}.weight"))?;
                if rows.is_some_and(|rows| rows != r) || cols.is_some_and(|cols| cols != c) {
                    candle_core::bail!(
                        "blk.{i}.{name} is {r}×{c}, which does not fit {dim} dimensions"
                    );
                }
                Ok((w, r))
            };
            let (mut qkv, _) = read("attn_q", Some(dim), Some(dim))?;
            qkv.extend(read("attn_k", Some(kv), Some(dim))?.0);
            qkv.extend(read("attn_v", Some(kv), Some(dim))?.0);
            let (o, _) = read("attn_output", Some(dim), Some(dim))?;
            let (mut gate_up, hidden) = read("ffn_gate", ffn, Some(dim))?;
            ffn = Some(hidden);
            gate_up.extend(read("ffn_up", ffn, Some(dim))?.0);
            let (down, _) = read("ffn_down", Some(dim), ffn)?;
            let norm = |reader: &mut R, name: &str| -> Result<Vec<f32>> {
                let v = vector(content, reader, &format!("blk.{i}.{name}.weight"))?;
                if v.len() != dim {
                    candle_core::bail!("blk.{i}.{name} has {} values, not {dim}", v.len());
                }
                Ok(v)
            };
            let mut qkv = Linear::new(&qkv, dim + 2 * kv, dim, true)?;
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
                o: Linear::new(&o, dim, dim, true)?,
                gate_up: Linear::new(&gate_up, 2 * hidden, dim, true)?,
                down: Linear::new(&down, dim, hidden, true)?,
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
            caches: vec![Cache::default(); layers],
        })
    }

    /// A new instance with the same weights and an empty cache.
    pub(crate) fn instance(&self) -> Self {
        Self {
            weights: self.weights.clone(),
            caches: vec![Cache::default(); self.caches.len()],
        }
    }

    /// Forgets every position (the buffers are kept for the next call).
    pub(crate) fn clear(&mut self) {
        for c in &mut self.caches {
            c.k.clear();
            c.v.clear();
        }
    }

    /// Bytes of weights one step (one new token) reads: every matrix's
    /// Q8_0 blocks.
    pub(crate) fn step_bytes(&self) -> usize {
        let w = &self.weights;
        let block = std::mem::size_of::<BlockQ8_0>();
        let matrices = w
            .layers
            .iter()
            .flat_map(|l| [&l.qkv, &l.o, &l.gate_up, &l.down]);
        matrices
            .chain([&w.output])
            .map(|m| m.packed.len() * block)
            .sum()
    }

    /// Positions held in the cache.
    fn len(&self) -> usize {
        let c = &self.weights.config;
        self.caches
            .first()
            .map_or(0, |k| k.k.len() / (c.kv_heads * c.head_dim))
    }

    /// Reads `tokens` at the positions after those already cached and
    /// returns the logits for the next token (after the last of them).
    pub(crate) fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let w = self.weights.clone();
        let c = &w.config;
        let m = tokens.len();
        if m == 0 {
            candle_core::bail!("no tokens to read");
        }
        let pos = self.len();
        let blocks = c.dim / QK8_0;
        let mut x = vec![0f32; m * c.dim];
        for (row, &t) in x.chunks_exact_mut(c.dim).zip(tokens) {
            let t = t as usize;
            if t >= c.vocab {
                candle_core::bail!("token {t} is outside the vocabulary of {}", c.vocab);
            }
            BlockQ8_0::to_float(&w.embedding[t * blocks..(t + 1) * blocks], row);
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
            cache.k.extend_from_slice(&k);
            cache.v.extend_from_slice(&v);
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

/// A weight matrix of the GGUF, unpacked: its values, rows and columns.
fn matrix<R: std::io::Read + std::io::Seek>(
    content: &gguf_file::Content,
    reader: &mut R,
    name: &str,
) -> Result<(Vec<f32>, usize, usize)> {
    let t = content
        .tensor(reader, name, &Device::Cpu)?
        .dequantize(&Device::Cpu)?;
    let (rows, cols) = t.dims2()?;
    Ok((t.flatten_all()?.to_vec1()?, rows, cols))
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
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `y += a * x`.
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// Causal attention of `m` query rows (positions `pos..pos + m`, already
/// in `cache`) over the cache; each group of `heads / kv_heads` query
/// heads shares one key/value head.
fn attention(c: &Config, q: &[f32], cache: &Cache, pos: usize, m: usize) -> Result<Vec<f32>> {
    if m >= BATCHED_ROWS {
        return attention_batched(c, q, cache, pos, m);
    }
    let (hd, kv_width) = (c.head_dim, c.kv_heads * c.head_dim);
    let group = c.heads / c.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; m * c.dim];
    let mut scores = Vec::with_capacity(pos + m);
    for i in 0..m {
        let seen = pos + i + 1;
        for h in 0..c.heads {
            let kv = (h / group) * hd;
            let qh = &q[i * c.dim + h * hd..][..hd];
            scores.clear();
            scores.extend(
                cache.k[..seen * kv_width]
                    .chunks_exact(kv_width)
                    .map(|k| dot(qh, &k[kv..kv + hd]) * scale),
            );
            softmax(&mut scores);
            let oh = &mut out[i * c.dim + h * hd..][..hd];
            for (s, v) in scores.iter().zip(cache.v.chunks_exact(kv_width)) {
                axpy(oh, *s, &v[kv..kv + hd]);
            }
        }
    }
    Ok(out)
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
    let k = Tensor::from_slice(&cache.k[..len * kvh * hd], (len, kvh, hd), dev)?
        .transpose(0, 1)?
        .contiguous()?;
    let v = Tensor::from_slice(&cache.v[..len * kvh * hd], (len, kvh, hd), dev)?
        .transpose(0, 1)?
        .contiguous()?;
    let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?.reshape((kvh, group, m, len))?;
    let mask: Vec<f32> = (0..m)
        .flat_map(|i| (0..len).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    let mask = Tensor::from_vec(mask, (m, len), dev)?;
    let probs = softmax_last(&scores.broadcast_add(&mask)?)?.reshape((kvh, group * m, len))?;
    probs
        .matmul(&v)?
        .reshape((c.heads, m, hd))?
        .transpose(0, 1)?
        .flatten_all()?
        .to_vec1()
}

/// Softmax over the last dimension.
fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::Value;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_transformers::models::{quantized_llama, quantized_qwen2};

    const VOCAB: usize = 48;
    const DIM: usize = 64;
    const FFN: usize = 96;

    /// A small random model in GGUF form, f32 weights, two layers, four
    /// query heads sharing two key/value heads: a llama with tied
    /// embeddings (no output matrix, as SmolLM2), or a qwen2 with its
    /// query, key and value biases and an output matrix of its own.
    fn tiny_gguf(arch: &str) -> Vec<u8> {
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
            QTensor::quantize(&t, GgmlDType::F32).expect("f32")
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

    fn both(arch: &str) -> (Llama, Reference) {
        let bytes = tiny_gguf(arch);
        let mut r = std::io::Cursor::new(bytes);
        let content = gguf_file::Content::read(&mut r).expect("read");
        let ours = Llama::from_gguf(&content, &mut r).expect("ours");
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
        gives_candles_logits("llama");
    }

    #[test]
    fn gives_candles_qwen2_logits_with_biases_and_rotated_halves() {
        gives_candles_logits("qwen2");
    }

    fn gives_candles_logits(arch: &str) {
        let (mut ours, mut theirs) = both(arch);
        // A prompt long enough for the batched path, then single steps,
        // then a few tokens at once (as a constraint forces them).
        let prompt: Vec<u32> = (0..20).map(|i| (i * 7 % VOCAB) as u32).collect();
        let feeds: [&[u32]; 4] = [&prompt, &[3], &[41], &[5, 9, 30]];
        let mut pos = 0;
        for feed in feeds {
            let a = ours.forward(feed).expect("ours");
            let b = candle_logits(&mut theirs, feed, pos);
            pos += feed.len();
            // Q8_0 weights and activations: up to 2.5% off on this model
            // (more would mean a mistake: a wrong rotation or head is far off).
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
        let (model, _) = both(arch);
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

    #[test]
    fn tokens_outside_the_vocabulary_and_other_architectures_are_errors() {
        let (mut model, _) = both("llama");
        assert!(model.forward(&[VOCAB as u32]).is_err());
        assert!(model.forward(&[]).is_err());
        let mut r = std::io::Cursor::new(tiny_gguf("llama"));
        let mut content = gguf_file::Content::read(&mut r).expect("read");
        content.metadata.insert(
            "general.architecture".into(),
            Value::String("gemma3".into()),
        );
        let e = Llama::from_gguf(&content, &mut r).expect_err("gemma3");
        assert!(e.to_string().contains("gemma3"), "{e}");
    }

    #[test]
    fn a_step_reads_every_matrix_once_as_q8_0() {
        let (model, _) = both("llama");
        let per_layer = 2 * DIM * DIM + 2 * 32 * DIM + 3 * FFN * DIM;
        let values = 2 * per_layer + VOCAB * DIM;
        assert_eq!(model.step_bytes(), values / 32 * 34);
    }

    #[test]
    fn the_dot_product_sums_every_lane_and_the_tail() {
        let a: Vec<f32> = (0..19).map(|i| i as f32).collect();
        let b = vec![2.0; 19];
        assert_eq!(dot(&a, &b), 2.0 * (0..19).sum::<i32>() as f32);
    }
}
