//! Episodic memory: the storage trait and the records it moves. Memories
//! are company data: every method takes a [`CompanyScope`] and binds its
//! company (and PostgreSQL's row-level security binds it again). Full-text
//! search is the database's (SQLite FTS5, PostgreSQL tsvector + GIN); the
//! final ranking (recency, importance, fusion with dense vectors) is the
//! engine's, from the core rules.
//!
//! Embeddings are computed outside the write: an insert queues the new
//! memory's id in `memory_embed_queue` (ids only, no content, so the queue
//! needs no company scope to read), and the engine's embedder claims ids,
//! reads their text through the company scope and stores the vectors.

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use kira_core::audit::AuditRecord;
use kira_core::auth::{AdminScope, CompanyScope};
use kira_core::conflict::NameKind;
use kira_core::memory::retention::FactCheck;
use kira_core::memory::{EventType, Memory, Workstream};
use kira_core::{CompanyId, ValidationError};
use uuid::Uuid;

use crate::{Result, StoreError};

/// The most memories one insert takes (one transaction).
pub const MAX_BATCH: usize = 1_000;

/// How long a claimed embedding job is left to its claimer before another
/// embedder may take it.
pub const EMBED_LEASE: TimeDelta = TimeDelta::seconds(120);

/// Which memories a list or search sees, by archive state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Archived {
    /// Live memories only (the default everywhere).
    #[default]
    Exclude,
    /// Live and archived.
    Include,
    /// Archived only.
    Only,
    /// Live, and the archived sources of compaction summaries (which are
    /// never purged): what a context pack searches.
    LiveOrSummarized,
}

/// Filters shared by list, search and vector reads. Every field narrows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryFilter {
    pub event_type: Option<EventType>,
    pub workstream: Option<Workstream>,
    pub category: Option<String>,
    /// `occurred_at >= from`.
    pub from: Option<DateTime<Utc>>,
    /// `occurred_at < until`.
    pub until: Option<DateTime<Utc>>,
    pub min_importance: Option<i16>,
    /// One of the memory's `indexed_terms` (compared lower-cased, exactly).
    pub term: Option<String>,
    pub archived: Archived,
}

/// Where a list page starts: after this memory in the list's order
/// (`occurred_at` descending, then `id` descending).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryCursor {
    pub occurred_at: DateTime<Utc>,
    pub id: Uuid,
}

impl MemoryCursor {
    pub fn of(m: &Memory) -> Self {
        Self {
            occurred_at: m.occurred_at,
            id: m.id,
        }
    }

    /// The opaque string an API hands out: `<rfc3339 micros>_<uuid>`.
    pub fn encode(&self) -> String {
        format!(
            "{}_{}",
            self.occurred_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            self.id
        )
    }

    pub fn decode(s: &str) -> Option<Self> {
        let (at, id) = s.rsplit_once('_')?;
        Some(Self {
            occurred_at: DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc),
            id: Uuid::parse_str(id).ok()?,
        })
    }
}

/// A full-text match. `relevance` is higher for better matches and
/// compares only within one query: PostgreSQL's `ts_rank_cd`; on SQLite,
/// BM25 over the company's own memories (each query word's share of them,
/// the memory's length), never statistics of other companies.
#[derive(Debug, Clone, PartialEq)]
pub struct TextHit {
    pub memory: Memory,
    pub relevance: f64,
}

/// A stored embedding of one memory.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryVector {
    pub memory_id: Uuid,
    pub vector: Vec<f32>,
}

/// A memory waiting for its embedding (ids only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedJob {
    pub company_id: CompanyId,
    pub memory_id: Uuid,
}

/// Counts for one company's memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemoryStats {
    pub live: u64,
    pub archived: u64,
    /// Live memories with a vector for the asked model.
    pub embedded: u64,
}

/// The lists of [`MemoryStore::list_memories_many`] from one compound
/// read's rows, each tagged with its list's place: each list in its own
/// order (newest first, ties by larger id), since a compound select
/// promises none.
pub(crate) fn lists_from_parts(
    lists: usize,
    rows: impl IntoIterator<Item = Result<(i64, Memory)>>,
) -> Result<Vec<Vec<Memory>>> {
    let mut out: Vec<Vec<Memory>> = (0..lists).map(|_| Vec::new()).collect();
    for row in rows {
        let (part, m) = row?;
        usize::try_from(part)
            .ok()
            .and_then(|p| out.get_mut(p))
            .ok_or_else(|| StoreError::Corrupt(format!("memory lists: part {part}")))?
            .push(m);
    }
    for list in &mut out {
        list.sort_by_key(|m| std::cmp::Reverse((m.occurred_at, m.id)));
    }
    Ok(out)
}

#[async_trait]
pub trait MemoryStore: Send + Sync {
    /// Stores 1..=[`MAX_BATCH`] memories of the scope's company in one
    /// transaction, with the audit entry, and queues each for embedding
    /// (queued at its `created_at`). Each memory's `company_id` must be the
    /// scope's (else Invalid, and nothing is written); an id already stored,
    /// or twice in the batch, is a Conflict; NotFound if the company does
    /// not exist. Times are kept to microseconds.
    async fn insert_memories(
        &self,
        scope: &CompanyScope,
        memories: &[Memory],
        audit: AuditRecord,
    ) -> Result<()>;

    /// NotFound for an unknown id or another company's.
    async fn get_memory(&self, scope: &CompanyScope, id: Uuid) -> Result<Memory>;

    /// The scope's memories among `ids` (archived included), in no
    /// particular order; unknown and foreign ids are left out.
    async fn get_memories(&self, scope: &CompanyScope, ids: &[Uuid]) -> Result<Vec<Memory>>;

    /// One page, newest `occurred_at` first (ties: larger id first).
    async fn list_memories(
        &self,
        scope: &CompanyScope,
        filter: &MemoryFilter,
        after: Option<MemoryCursor>,
        limit: u32,
    ) -> Result<Vec<Memory>>;

    /// Several first pages of one company's memories, each as
    /// [`MemoryStore::list_memories`] with no cursor returns it, in the
    /// order asked. A backend may read them in one statement.
    async fn list_memories_many(
        &self,
        scope: &CompanyScope,
        lists: &[(MemoryFilter, u32)],
    ) -> Result<Vec<Vec<Memory>>> {
        let mut out = Vec::with_capacity(lists.len());
        for (filter, limit) in lists {
            out.push(self.list_memories(scope, filter, None, *limit).await?);
        }
        Ok(out)
    }

    /// Full-text search over the memory's text, category, indexed terms
    /// and the names in its content, any word of `query` matching (OR),
    /// best `relevance` first, at most `limit`. A query with no searchable
    /// word returns nothing.
    async fn search_memories(
        &self,
        scope: &CompanyScope,
        query: &str,
        filter: &MemoryFilter,
        limit: u32,
    ) -> Result<Vec<TextHit>>;

    /// Archives (`Some(at)`) or restores (`None`) the given memories; ids
    /// already in that state are left alone. Returns how many changed.
    async fn set_archived(
        &self,
        scope: &CompanyScope,
        ids: &[Uuid],
        archived_at: Option<DateTime<Utc>>,
        audit: AuditRecord,
    ) -> Result<u64>;

    /// Removes the memory, its vector and its queue entry. NotFound if not
    /// the scope's.
    async fn delete_memory(&self, scope: &CompanyScope, id: Uuid, audit: AuditRecord)
    -> Result<()>;

    /// Compaction's one write: inserts `summary` (whose `compacted_from`
    /// names `sources`), archives the sources at `at` and records `check`
    /// (what the summary kept of their facts, the context-retention KPI),
    /// in one transaction. Conflict, and nothing written, if any source is
    /// not a live memory of the scope's company (another run got there
    /// first). Invalid if the summary is another company's or names no
    /// source.
    async fn replace_with_summary(
        &self,
        scope: &CompanyScope,
        summary: &Memory,
        check: FactCheck,
        at: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<()>;

    /// The company's compaction checks of summaries written in
    /// `[from, to]`, added up.
    async fn retention(
        &self,
        scope: &CompanyScope,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<FactCheck>;

    /// Every company's compaction checks of all time, added up per
    /// company (the admin's view, for `/metrics`).
    async fn retention_totals(&self, admin: &AdminScope) -> Result<Vec<(String, FactCheck)>>;

    /// Hard-deletes the scope's memories archived before `before` (the
    /// retention period is over), except the sources of a compaction
    /// summary, which are kept (and found by search with
    /// [`Archived::LiveOrSummarized`]). Returns how many.
    async fn purge_archived(
        &self,
        scope: &CompanyScope,
        before: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<u64>;

    async fn memory_stats(&self, scope: &CompanyScope, model: &str) -> Result<MemoryStats>;

    /// Takes up to `limit` queued embedding jobs of any company, oldest
    /// first (then by id), that nobody holds (or whose lease ran out before
    /// `now`), holding them until `now + EMBED_LEASE`. Concurrent claimers
    /// never get the same job.
    async fn claim_embed_jobs(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<EmbedJob>>;

    /// Stores (or replaces) vectors of the scope's memories for `model` and
    /// removes their queue entries; ids that are not the scope's memories
    /// are skipped. A memory has one vector: storing one for another model
    /// replaces it. Of an id given twice, the last vector is kept.
    async fn put_vectors(
        &self,
        scope: &CompanyScope,
        model: &str,
        vectors: &[MemoryVector],
    ) -> Result<()>;

    /// Removes queue entries without a vector (the text could not be
    /// embedded, or the memory is gone).
    async fn drop_embed_jobs(&self, scope: &CompanyScope, ids: &[Uuid]) -> Result<()>;

    /// The distinct people and counterparties the scope's memories list
    /// (archived ones included), as written, at most `limit`: what the
    /// anonymiser removes from a copy that leaves the company.
    async fn listed_names(
        &self,
        scope: &CompanyScope,
        limit: u32,
    ) -> Result<Vec<(NameKind, String)>>;

    /// The vectors for `model` of the scope's memories that pass `filter`.
    async fn memory_vectors(
        &self,
        scope: &CompanyScope,
        model: &str,
        filter: &MemoryFilter,
    ) -> Result<Vec<MemoryVector>>;
}

/// The most words of a search query that reach the database; the rest are
/// ignored (a pasted document is not a query).
pub const MAX_QUERY_WORDS: usize = 32;

/// English words too common to tell one memory from another: PostgreSQL's
/// `english` stop words (its `tsearch_data/english.stop`, Snowball's list),
/// which its full text drops from documents and queries alike. SQLite's
/// FTS5 keeps every word, so without this list a question's "when", "did"
/// and "the" each voted for the memories that hold them (on LoCoMo, full
/// text only: evidence recall at 1,000 tokens 62.9% with them, 66.6%
/// without).
const STOP_WORDS: &str = "i me my myself we our ours ourselves you your yours yourself \
     yourselves he him his himself she her hers herself it its itself \
     they them their theirs themselves what which who whom this that \
     these those am is are was were be been being have has had having do \
     does did doing a an the and but if or because as until while of at \
     by for with about against between into through during before after \
     above below to from up down in out on off over under again further \
     then once here there when where why how all any both each few more \
     most other some such no nor not only own same so than too very s t \
     can will just don should now";

/// The searchable words of a user's query: runs of letters and digits,
/// lower-cased, first occurrence kept, stop words ([`STOP_WORDS`]) left out
/// unless the query has nothing else, at most [`MAX_QUERY_WORDS`]. Nothing
/// else of the query reaches the full-text syntax of either database, so
/// quotes, operators and brackets in it are plain separators.
pub(crate) fn query_words(query: &str) -> Vec<String> {
    let all: Vec<String> = query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    let is_stop = |w: &String| STOP_WORDS.split(' ').any(|s| s == w);
    let only_stop_words = all.iter().all(is_stop);
    let mut words: Vec<String> = Vec::new();
    for w in all {
        if (only_stop_words || !is_stop(&w)) && !words.contains(&w) {
            words.push(w);
            if words.len() == MAX_QUERY_WORDS {
                break;
            }
        }
    }
    words
}

/// The checks every backend makes before writing a batch: 1..=MAX_BATCH
/// memories, each of the scope's company. Duplicate ids are left to the
/// database's unique key (a Conflict either way).
pub(crate) fn check_batch(scope: &CompanyScope, memories: &[Memory]) -> Result<()> {
    if memories.is_empty() || memories.len() > MAX_BATCH {
        return Err(ValidationError::new(
            "memories",
            format!("must hold 1 to {MAX_BATCH} memories"),
        )
        .into());
    }
    check_company(scope, memories)
}

pub(crate) fn check_company(scope: &CompanyScope, memories: &[Memory]) -> Result<()> {
    if let Some(i) = memories
        .iter()
        .position(|m| &m.company_id != scope.company())
    {
        return Err(ValidationError::new(
            format!("memories.{i}.company_id"),
            format!("must be the scope's company '{}'", scope.company()),
        )
        .into());
    }
    Ok(())
}

/// The duplicate-free ids of a compaction summary's sources; Invalid when
/// it names none (a summary replaces something).
pub(crate) fn summary_sources(scope: &CompanyScope, summary: &Memory) -> Result<Vec<Uuid>> {
    check_company(scope, std::slice::from_ref(summary))?;
    let mut ids = summary.compacted_from.clone();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Err(
            ValidationError::new("compacted_from", "must name the memories replaced").into(),
        );
    }
    if ids.contains(&summary.id) {
        return Err(
            ValidationError::new("compacted_from", "must not name the summary itself").into(),
        );
    }
    Ok(ids)
}

/// The name index rows of `memories`: (memory id, kind, name as written,
/// key), from each memory's `content.people` and `content.counterparties`.
pub(crate) fn name_rows(memories: &[Memory]) -> Vec<(Uuid, NameKind, String, String)> {
    memories
        .iter()
        .flat_map(|m| {
            kira_core::conflict::listed_names(&m.content)
                .into_iter()
                .map(move |n| (m.id, n.kind, n.name, n.key))
        })
        .collect()
}

/// The vectors to store, one per memory (the last given wins), in id order.
pub(crate) fn dedup_vectors(vectors: &[MemoryVector]) -> Vec<&MemoryVector> {
    let mut by_id = std::collections::BTreeMap::new();
    for v in vectors {
        by_id.insert(v.memory_id, v);
    }
    by_id.into_values().collect()
}

/// A vector as stored: little-endian f32s.
pub fn encode_vector(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The inverse of [`encode_vector`]; None when the length is not a
/// multiple of 4.
pub fn decode_vector(b: &[u8]) -> Option<Vec<f32>> {
    if !b.len().is_multiple_of(4) {
        return None;
    }
    Some(
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_round_trip() {
        let v = vec![0.0, -1.5, 3.25, f32::MIN_POSITIVE];
        assert_eq!(decode_vector(&encode_vector(&v)), Some(v));
        assert_eq!(decode_vector(&[1, 2, 3]), None);
    }

    #[test]
    fn query_words_keep_letters_and_digits_only() {
        assert_eq!(
            query_words(r#"Board "meeting" AND (q3) OR NOT* board: -x"#),
            ["board", "meeting", "q3", "x"]
        );
        for hostile in ["", "\"", "*", "(", ":", "^", "' -- ;", "\u{0}\u{7}"] {
            assert!(query_words(hostile).is_empty(), "{hostile:?}");
        }
        assert_eq!(
            query_words("Müller's Straße 東京"),
            ["müller", "straße", "東京"]
        );
        let many = (0..100)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(query_words(&many).len(), MAX_QUERY_WORDS);
    }

    /// The words that tell memories apart reach the database; a query of
    /// nothing but common words still searches with them. Stop words do
    /// not take a long query's places either.
    #[test]
    fn query_words_leave_out_stop_words() {
        assert_eq!(
            query_words("When did Caroline go to the LGBTQ support group?"),
            ["caroline", "go", "lgbtq", "support", "group"]
        );
        assert_eq!(query_words("What did we do?"), ["what", "did", "we", "do"]);
        let long = (0..40)
            .map(|i| format!("the w{i} of"))
            .collect::<Vec<_>>()
            .join(" ");
        let words = query_words(&long);
        assert_eq!(words.len(), MAX_QUERY_WORDS);
        assert!(words.iter().all(|w| w.starts_with('w')), "{words:?}");
        // PostgreSQL's list, word for word: 127 words, each once.
        let list: std::collections::BTreeSet<&str> = STOP_WORDS.split(' ').collect();
        assert_eq!(list.len(), 127);
        assert!(
            list.iter()
                .all(|w| !w.is_empty() && w.chars().all(char::is_alphabetic))
        );
    }

    #[test]
    fn cursor_round_trips_and_refuses_garbage() {
        let c = MemoryCursor {
            occurred_at: DateTime::parse_from_rfc3339("2026-11-01T12:00:00.123456Z")
                .expect("time")
                .with_timezone(&Utc),
            id: Uuid::nil(),
        };
        assert_eq!(MemoryCursor::decode(&c.encode()), Some(c));
        assert_eq!(MemoryCursor::decode("nope"), None);
        assert_eq!(MemoryCursor::decode("2026-11-01T12:00:00Z_notauuid"), None);
    }
}
