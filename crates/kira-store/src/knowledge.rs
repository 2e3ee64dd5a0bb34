//! The shared knowledge base: the storage trait and the records it moves.
//!
//! Knowledge is not company data, so there is no row-level security and no
//! company scope: any authenticated caller may read (the server checks the
//! caller), and every write takes an [`AdminScope`] and appends its audit
//! entry in the same transaction. Full-text search is the database's
//! (SQLite FTS5 over title, body and tags; PostgreSQL a generated tsvector
//! with a GIN index), any word of the query matching.

use async_trait::async_trait;
use kira_core::ValidationError;
use kira_core::audit::AuditRecord;
use kira_core::auth::AdminScope;
use kira_core::knowledge::KnowledgeEntry;
use uuid::Uuid;

use crate::Result;

/// The most entries one upsert takes (one transaction).
pub const MAX_BATCH: usize = 1_000;

/// Filters shared by list, search and vector reads. Every field narrows;
/// each compares exactly (the industry lower-cased, as stored).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnowledgeFilter {
    pub domain: Option<String>,
    pub tag: Option<String>,
    pub jurisdiction: Option<String>,
    pub industry: Option<String>,
}

/// Where a list page starts: after this (domain, key), the list's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnowledgeCursor {
    pub domain: String,
    pub key: String,
}

impl KnowledgeCursor {
    pub fn of(e: &KnowledgeEntry) -> Self {
        Self {
            domain: e.domain.clone(),
            key: e.key.clone(),
        }
    }

    /// The opaque string an API hands out: `<domain>/<key>` (neither may
    /// hold a `/`).
    pub fn encode(&self) -> String {
        format!("{}/{}", self.domain, self.key)
    }

    pub fn decode(s: &str) -> Option<Self> {
        let (domain, key) = s.split_once('/')?;
        kira_core::knowledge::check_domain(domain).ok()?;
        kira_core::knowledge::check_key(key).ok()?;
        Some(Self {
            domain: domain.to_owned(),
            key: key.to_owned(),
        })
    }
}

/// A full-text match; `relevance` is the database's score, higher is
/// better, comparable only within one query.
#[derive(Debug, Clone, PartialEq)]
pub struct KnowledgeHit {
    pub entry: KnowledgeEntry,
    pub relevance: f64,
}

/// A stored embedding of one entry.
#[derive(Debug, Clone, PartialEq)]
pub struct KnowledgeVector {
    pub entry_id: Uuid,
    pub vector: Vec<f32>,
}

#[async_trait]
pub trait KnowledgeStore: Send + Sync {
    /// Inserts or updates 1..=[`MAX_BATCH`] entries by (domain, key) in one
    /// transaction, with the audit entry. An update keeps the stored id and
    /// `created_at`, and drops the entry's vectors when its text changed.
    /// Returns the entries as stored, in the order given. Invalid (nothing
    /// written) when the batch is empty, too large, or names one (domain,
    /// key) twice.
    async fn upsert_knowledge(
        &self,
        admin: &AdminScope,
        entries: &[KnowledgeEntry],
        audit: AuditRecord,
    ) -> Result<Vec<KnowledgeEntry>>;

    /// NotFound for an unknown id.
    async fn get_knowledge(&self, id: Uuid) -> Result<KnowledgeEntry>;

    /// One page in (domain, key) order.
    async fn list_knowledge(
        &self,
        filter: &KnowledgeFilter,
        after: Option<&KnowledgeCursor>,
        limit: u32,
    ) -> Result<Vec<KnowledgeEntry>>;

    /// Full-text search over title, body and tags, any word of `query`
    /// matching (OR), best first, at most `limit`. A query with no
    /// searchable word returns nothing.
    async fn search_knowledge(
        &self,
        query: &str,
        filter: &KnowledgeFilter,
        limit: u32,
    ) -> Result<Vec<KnowledgeHit>>;

    /// Removes the entry and its vectors. NotFound for an unknown id.
    async fn delete_knowledge(
        &self,
        admin: &AdminScope,
        id: Uuid,
        audit: AuditRecord,
    ) -> Result<()>;

    /// Up to `limit` entries with no vector for `model`, oldest first: the
    /// embedder's work list.
    async fn knowledge_without_vectors(
        &self,
        model: &str,
        limit: u32,
    ) -> Result<Vec<KnowledgeEntry>>;

    /// Stores (or replaces) vectors for `model`; ids of entries that no
    /// longer exist are skipped.
    async fn put_knowledge_vectors(
        &self,
        admin: &AdminScope,
        model: &str,
        vectors: &[KnowledgeVector],
    ) -> Result<()>;

    /// The vectors for `model` of the entries that pass `filter`.
    async fn knowledge_vectors(
        &self,
        model: &str,
        filter: &KnowledgeFilter,
    ) -> Result<Vec<KnowledgeVector>>;
}

/// The checks every backend makes before an upsert.
pub(crate) fn check_batch(entries: &[KnowledgeEntry]) -> Result<()> {
    if entries.is_empty() || entries.len() > MAX_BATCH {
        return Err(
            ValidationError::new("entries", format!("must hold 1 to {MAX_BATCH} entries")).into(),
        );
    }
    let mut seen = std::collections::HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if let Some(j) = seen.insert((e.domain.as_str(), e.key.as_str()), i) {
            return Err(ValidationError::new(
                format!("entries.{i}.key"),
                format!("'{}/{}' is already entries.{j}", e.domain, e.key),
            )
            .into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_refuses_garbage() {
        let c = KnowledgeCursor {
            domain: "legal_frameworks".into(),
            key: "delaware.corp".into(),
        };
        assert_eq!(KnowledgeCursor::decode(&c.encode()), Some(c));
        assert_eq!(KnowledgeCursor::decode("nope"), None);
        assert_eq!(KnowledgeCursor::decode("Bad/key"), None);
        assert_eq!(KnowledgeCursor::decode("d/a/b"), None);
    }
}
