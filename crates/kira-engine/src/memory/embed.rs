//! Embeddings beside full text: the engine's view of a sentence-embedding
//! model, and the background loop that embeds new memories (and knowledge
//! entries). Writes never wait for it: an insert queues the memory's id,
//! this loop claims ids, reads their text through the company scope and
//! stores the vectors.

use std::collections::BTreeMap;
use std::sync::Arc;

use kira_core::CompanyId;
use kira_core::auth::{Access, Principal};
use kira_store::memory::{EmbedJob, MemoryVector};

use tokio::sync::Notify;

use crate::{Ctx, EngineError, Shutdown};

/// A sentence-embedding model. Vectors are L2-normalised, so a dot product
/// is the cosine.
pub trait TextEmbedder: Send + Sync {
    /// Stored beside each vector; vectors of different models never mix.
    fn model_id(&self) -> &str;

    /// One vector per text, in order. Blocking: call from a blocking thread.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, String>;
}

/// Embedding jobs claimed per pass.
pub const EMBED_BATCH: u32 = 64;

/// Embeddings: the model (if any) and the wake of the loop that drains the
/// store's embedding queue. Memory and knowledge search with it, and ring
/// it when they write text.
pub struct Embeddings {
    ctx: Arc<Ctx>,
    /// The sentence-embedding model; None: full text only.
    embedder: Option<Arc<dyn TextEmbedder>>,
    /// Rung when text to embed arrives, so an idle embedder looks at once.
    wake: Notify,
}

impl Embeddings {
    pub(crate) fn new(ctx: Arc<Ctx>, embedder: Option<Arc<dyn TextEmbedder>>) -> Self {
        Self {
            ctx,
            embedder,
            wake: Notify::new(),
        }
    }

    /// The model, if there is one (else search is full text only).
    pub fn embedder(&self) -> Option<&Arc<dyn TextEmbedder>> {
        self.embedder.as_ref()
    }

    /// The model's id, stored beside its vectors.
    pub(crate) fn model_id(&self) -> Option<String> {
        self.embedder.as_ref().map(|e| e.model_id().to_owned())
    }

    /// Text to embed was written: wakes the embedder loop.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Embeds `texts` on a blocking thread; None without an embedder.
    pub(crate) async fn embed_texts(
        &self,
        texts: Vec<String>,
    ) -> Result<Option<Vec<Vec<f32>>>, EngineError> {
        let Some(embedder) = self.embedder() else {
            return Ok(None);
        };
        let embedder = Arc::clone(embedder);
        let out = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            embedder.embed(&refs)
        })
        .await
        .map_err(|e| EngineError::Embed(format!("embedding thread: {e}")))?
        .map_err(EngineError::Embed)?;
        Ok(Some(out))
    }

    /// The ids of `vectors` nearest the embedding of `query`, best first (ties:
    /// smaller id), at most `k`; empty without an embedder or vectors.
    /// Vectors of another length (another model) are ignored.
    pub(crate) async fn nearest_ids(
        &self,
        query: &str,
        mut vectors: Vec<(uuid::Uuid, Vec<f32>)>,
        k: usize,
    ) -> Result<Vec<uuid::Uuid>, EngineError> {
        if vectors.is_empty() {
            return Ok(Vec::new());
        }
        let Some(q) = self
            .embed_texts(vec![query.to_owned()])
            .await?
            .and_then(|mut v| v.pop())
        else {
            return Ok(Vec::new());
        };
        vectors.retain(|(_, v)| v.len() == q.len());
        vectors.sort_by_key(|(id, _)| *id);
        let refs: Vec<&[f32]> = vectors.iter().map(|(_, v)| v.as_slice()).collect();
        Ok(kira_embed::top_k(&q, &refs, k)
            .into_iter()
            .map(|(i, _)| vectors[i].0)
            .collect())
    }

    /// One pass: claims up to [`EMBED_BATCH`] queued memories and embeds
    /// them. Returns how many it stored; 0 when the queue is empty (or
    /// there is no embedder).
    pub async fn pass(&self) -> Result<usize, EngineError> {
        let Some(embedder) = self.embedder() else {
            return Ok(0);
        };
        let model = embedder.model_id().to_owned();
        let jobs = self
            .ctx
            .store
            .claim_embed_jobs(self.ctx.clock.now(), EMBED_BATCH)
            .await?;
        let mut by_company: BTreeMap<CompanyId, Vec<uuid::Uuid>> = BTreeMap::new();
        for EmbedJob {
            company_id,
            memory_id,
        } in jobs
        {
            by_company.entry(company_id).or_default().push(memory_id);
        }
        let system = Principal::system();
        let mut stored = 0;
        for (company, ids) in by_company {
            let Ok(scope) = system.scope(&company, Access::Write) else {
                continue;
            };
            let memories = self.ctx.store.get_memories(&scope, &ids).await?;
            let found: std::collections::HashSet<uuid::Uuid> =
                memories.iter().map(|m| m.id).collect();
            let missing: Vec<uuid::Uuid> = ids
                .iter()
                .copied()
                .filter(|id| !found.contains(id))
                .collect();
            if !missing.is_empty() {
                self.ctx.store.drop_embed_jobs(&scope, &missing).await?;
            }
            if memories.is_empty() {
                continue;
            }
            let texts: Vec<String> = memories.iter().map(|m| m.text().to_owned()).collect();
            let Some(vectors) = self.embed_texts(texts).await? else {
                return Ok(stored);
            };
            let rows: Vec<MemoryVector> = memories
                .iter()
                .zip(vectors)
                .map(|(m, vector)| MemoryVector {
                    memory_id: m.id,
                    vector,
                })
                .collect();
            self.ctx.store.put_vectors(&scope, &model, &rows).await?;
            stored += rows.len();
        }
        stored += self.embed_knowledge(&model).await?;
        Ok(stored)
    }

    /// Embeds shared knowledge entries that have no vector for `model` yet
    /// (`title: body`); returns how many.
    async fn embed_knowledge(&self, model: &str) -> Result<usize, EngineError> {
        let entries = self
            .ctx
            .store
            .knowledge_without_vectors(model, EMBED_BATCH)
            .await?;
        if entries.is_empty() {
            return Ok(0);
        }
        let texts = entries
            .iter()
            .map(|e| format!("{}: {}", e.title, e.body))
            .collect();
        let Some(vectors) = self.embed_texts(texts).await? else {
            return Ok(0);
        };
        let rows: Vec<kira_store::knowledge::KnowledgeVector> = entries
            .iter()
            .zip(vectors)
            .map(|(e, vector)| kira_store::knowledge::KnowledgeVector {
                entry_id: e.id,
                vector,
            })
            .collect();
        let admin = Principal::system()
            .admin()
            .map_err(|e| EngineError::Embed(format!("the system principal: {e}")))?;
        self.ctx
            .store
            .put_knowledge_vectors(&admin, model, &rows)
            .await?;
        Ok(rows.len())
    }

    /// Embeds until the queue is empty, then waits to be woken (a memory
    /// was added) or for the poll interval; stops on `shutdown`.
    pub async fn run(&self, shutdown: Shutdown) {
        if self.embedder().is_none() {
            return;
        }
        let poll = self
            .ctx
            .config
            .scheduler
            .poll_interval
            .to_std()
            .unwrap_or(std::time::Duration::from_secs(1));
        loop {
            if shutdown.is_triggered() {
                return;
            }
            match self.pass().await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "embedding pass failed; retrying"),
            }
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(poll * 5) => {}
            }
        }
    }
}

impl TextEmbedder for kira_embed::Embedder {
    fn model_id(&self) -> &str {
        kira_embed::Embedder::model_id(self)
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
        kira_embed::Embedder::embed(self, texts).map_err(|e| e.to_string())
    }
}
