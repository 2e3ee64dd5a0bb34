//! The shared knowledge base as the engine serves it: writes checked
//! against the configured domains, search, and the candidates a context
//! pack's knowledge section takes.

use std::sync::Arc;

use kira_core::ValidationError;
use kira_core::audit::AuditRecord;
use kira_core::auth::AdminScope;
use kira_core::knowledge::{KnowledgeEntry, NewKnowledge};
use kira_store::knowledge::{KnowledgeCursor, KnowledgeFilter, KnowledgeHit};
use uuid::Uuid;

use crate::memory::embed::Embeddings;
use crate::{Ctx, EngineError};

/// The most hits one search returns.
pub const MAX_SEARCH_LIMIT: u32 = 100;
/// The longest search query, in bytes.
pub const MAX_SEARCH_QUERY_BYTES: usize = 1000;

/// A write as the API receives it: one entry, or a batch whose errors name
/// `entries.N.field`.
#[derive(Debug, Clone)]
pub enum KnowledgeWrite {
    One(NewKnowledge),
    Batch(Vec<NewKnowledge>),
}

/// The shared knowledge base. No state of its own; searches with
/// embeddings' nearest vectors beside full text, and wakes the embedder
/// when entries are written.
pub struct Knowledge {
    ctx: Arc<Ctx>,
    embeddings: Arc<Embeddings>,
}

impl Knowledge {
    pub(crate) fn new(ctx: Arc<Ctx>, embeddings: Arc<Embeddings>) -> Self {
        Self { ctx, embeddings }
    }

    /// Validates and stores the entries (insert or update by domain and
    /// key) in one audited transaction, whose entry says how many; the
    /// entries as stored.
    pub async fn add(
        &self,
        admin: &AdminScope,
        write: KnowledgeWrite,
        audit: AuditRecord,
    ) -> Result<Vec<KnowledgeEntry>, EngineError> {
        let now = self.ctx.clock.now();
        let (items, batch) = match write {
            KnowledgeWrite::One(k) => (vec![k], false),
            KnowledgeWrite::Batch(ks) => (ks, true),
        };
        let audit = AuditRecord {
            detail: format!("entries={}", items.len()),
            ..audit
        };
        if batch && (items.is_empty() || items.len() > kira_store::knowledge::MAX_BATCH) {
            return Err(ValidationError::new(
                "entries",
                format!(
                    "must hold 1 to {} entries",
                    kira_store::knowledge::MAX_BATCH
                ),
            )
            .into());
        }
        let mut entries = Vec::with_capacity(items.len());
        for (i, k) in items.into_iter().enumerate() {
            let named = |e: ValidationError| {
                if batch {
                    e.under(&format!("entries.{i}"))
                } else {
                    e
                }
            };
            self.check_domain(&k.domain).map_err(named)?;
            entries.push(k.validate(Uuid::now_v7(), now).map_err(named)?);
        }
        let stored = self
            .ctx
            .store
            .upsert_knowledge(admin, &entries, audit)
            .await?;
        // New text to embed.
        self.embeddings.wake();
        Ok(stored)
    }

    /// One page of entries in (domain, key) order, after the cursor.
    pub async fn list(
        &self,
        filter: &KnowledgeFilter,
        after: Option<&KnowledgeCursor>,
        limit: u32,
    ) -> Result<Vec<KnowledgeEntry>, EngineError> {
        Ok(self.ctx.store.list_knowledge(filter, after, limit).await?)
    }

    pub async fn get(&self, id: Uuid) -> Result<KnowledgeEntry, EngineError> {
        Ok(self.ctx.store.get_knowledge(id).await?)
    }

    /// Deletes an entry and its vectors (admin).
    pub async fn delete(
        &self,
        admin: &AdminScope,
        id: Uuid,
        audit: AuditRecord,
    ) -> Result<(), EngineError> {
        Ok(self.ctx.store.delete_knowledge(admin, id, audit).await?)
    }

    fn check_domain(&self, domain: &str) -> Result<(), ValidationError> {
        let domains = &self.ctx.config.knowledge_domains;
        if domains.contains(domain) {
            return Ok(());
        }
        Err(ValidationError::new(
            "domain",
            format!(
                "must be a configured domain: {}",
                domains.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        ))
    }

    /// Full-text search of the knowledge base, any word matching, best
    /// first. `limit` is 1..=[`MAX_SEARCH_LIMIT`].
    pub async fn search(
        &self,
        query: &str,
        filter: &KnowledgeFilter,
        limit: u32,
    ) -> Result<Vec<KnowledgeHit>, EngineError> {
        if query.trim().is_empty() {
            return Err(EngineError::Parameter(ValidationError::new(
                "q",
                "must not be empty",
            )));
        }
        if query.len() > MAX_SEARCH_QUERY_BYTES {
            return Err(EngineError::Parameter(ValidationError::new(
                "q",
                format!("must be at most {MAX_SEARCH_QUERY_BYTES} bytes"),
            )));
        }
        if !(1..=MAX_SEARCH_LIMIT).contains(&limit) {
            return Err(ValidationError::new(
                "limit",
                format!("must be between 1 and {MAX_SEARCH_LIMIT}"),
            )
            .into());
        }
        let candidates = limit.max(self.ctx.config.memory.candidates);
        let text = self
            .ctx
            .store
            .search_knowledge(query, filter, candidates)
            .await?;
        // Meaning beside words, as for memories: nearest vectors fused by
        // reciprocal rank.
        let nearest = match self.embeddings.model_id() {
            Some(model) => {
                let vectors = self.ctx.store.knowledge_vectors(&model, filter).await?;
                self.embeddings
                    .nearest_ids(
                        query,
                        vectors
                            .into_iter()
                            .map(|v| (v.entry_id, v.vector))
                            .collect(),
                        candidates as usize,
                    )
                    .await?
            }
            None => Vec::new(),
        };
        if nearest.is_empty() {
            let mut text = text;
            text.truncate(limit as usize);
            return Ok(text);
        }
        let text_ids: Vec<uuid::Uuid> = text.iter().map(|h| h.entry.id).collect();
        let mut by_id: std::collections::HashMap<uuid::Uuid, kira_core::knowledge::KnowledgeEntry> =
            text.into_iter().map(|h| (h.entry.id, h.entry)).collect();
        let fused = kira_core::memory::fuse_rrf(&[text_ids, nearest], self.ctx.config.memory.rrf_k);
        let mut out = Vec::new();
        for (id, score) in fused.into_iter().take(limit as usize) {
            let entry = match by_id.remove(&id) {
                Some(e) => e,
                None => match self.ctx.store.get_knowledge(id).await {
                    Ok(e) => e,
                    // Deleted between the two reads.
                    Err(kira_store::StoreError::NotFound) => continue,
                    Err(e) => return Err(e.into()),
                },
            };
            out.push(KnowledgeHit {
                entry,
                relevance: score,
            });
        }
        Ok(out)
    }

    /// The top `k` knowledge entries for `query`, for a context pack's
    /// knowledge section: (`kb:<uuid>`, score in (0, 1] with 1 for the best
    /// hit, `<title>: <body>`). Nothing for a query with no searchable word.
    pub async fn candidates(
        &self,
        query: &str,
        k: usize,
    ) -> Result<Vec<(String, f64, String)>, EngineError> {
        let limit = u32::try_from(k.min(MAX_SEARCH_LIMIT as usize)).unwrap_or(MAX_SEARCH_LIMIT);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let hits = self
            .search(query, &KnowledgeFilter::default(), limit)
            .await?;
        Ok(candidates(hits))
    }
}

/// Hits as candidates, relevance scaled so the best is 1. The databases'
/// scores compare only within one query; a context pack mixes sections, so
/// it gets a bounded score.
fn candidates(hits: Vec<KnowledgeHit>) -> Vec<(String, f64, String)> {
    let best = hits
        .iter()
        .map(|h| h.relevance)
        .fold(f64::MIN_POSITIVE, f64::max);
    hits.into_iter()
        .map(|h| {
            let score = (h.relevance / best).clamp(f64::MIN_POSITIVE, 1.0);
            (
                format!("kb:{}", h.entry.id),
                score,
                format!("{}: {}", h.entry.title, h.entry.body),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn hit(title: &str, relevance: f64) -> KnowledgeHit {
        let at = DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z")
            .expect("time")
            .to_utc();
        KnowledgeHit {
            entry: KnowledgeEntry {
                id: Uuid::nil(),
                domain: "legal_frameworks".into(),
                key: "k".into(),
                title: title.into(),
                body: "Body.".into(),
                tags: vec![],
                jurisdiction: None,
                industry: None,
                created_at: at,
                updated_at: at,
            },
            relevance,
        }
    }

    #[test]
    fn candidates_are_scaled_to_the_best_hit() {
        let c = candidates(vec![hit("A", 4.0), hit("B", 1.0)]);
        assert_eq!(c[0].0, format!("kb:{}", Uuid::nil()));
        assert_eq!(c[0].1, 1.0);
        assert_eq!(c[1].1, 0.25);
        assert_eq!(c[1].2, "B: Body.");
        // Non-positive relevance (SQLite's bm25 can be tiny) stays in (0, 1].
        let c = candidates(vec![hit("A", 0.0)]);
        assert!(c[0].1 > 0.0 && c[0].1 <= 1.0);
        assert!(candidates(vec![]).is_empty());
    }
}
