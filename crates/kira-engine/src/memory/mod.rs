//! Memory in the engine: adding events, hybrid search (the database's full
//! text fused with dense vectors by reciprocal rank, then weighed with
//! recency and importance), context packs ([`pack`]) and compaction
//! ([`compact`]). Every read and write goes through the caller's
//! `CompanyScope`; the background jobs use the system principal.

pub mod compact;
pub mod embed;
pub mod jobs;
pub mod pack;
pub mod summarize;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use kira_core::ValidationError;
use kira_core::audit::AuditRecord;
use kira_core::auth::CompanyScope;
use kira_core::memory::{
    CompactionConfig, Layer, LayerConfig, Memory, NewMemory, ScoreWeights, TimeWindow, Workstream,
    combined_score, episodes, fuse_rrf, layer, new_memory_id, normalise, rank_hits, recency,
    speaks_of, support_within_episodes, windows_in,
};
use kira_core::sharing::{SCOPE_ANONYMIZED_LEGAL_PATTERNS, SCOPE_PROCESS_TEMPLATES};
use kira_store::StoreError;
use kira_store::memory::{Archived, MAX_BATCH, MemoryCursor, MemoryFilter};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

pub use pack::{ContextPack, PackItem, Section, Shares};

use crate::config::EngineConfig;
use crate::knowledge::Knowledge;
use crate::sharing::Sharing;
use crate::{Ctx, EngineError};
use embed::Embeddings;
use summarize::Summarizer;

/// Memory settings: `[memory]`, `[memory.layers]`, `[memory.search]`,
/// `[memory.compaction.WORKSTREAM]` and `[context]` in `kira.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryConfig {
    pub layers: LayerConfig,
    pub search: ScoreWeights,
    pub compaction: CompactionConfig,
    /// Archived memories are purged this long after archiving.
    pub retention: TimeDelta,
    /// How often the compaction job runs over every company.
    pub compaction_interval: TimeDelta,
    pub context: ContextConfig,
    /// Candidates each retriever hands to fusion.
    pub candidates: u32,
    /// Reciprocal rank fusion's k: smaller weighs the top of each list
    /// more. 20 by default (the paper's 60 put fewer of the right turns and
    /// sessions first: LoCoMo evidence recall 71.3 / 82.4% at 1,000 / 2,000
    /// tokens and LongMemEval-S recall_all@5 0.891 at 60, 74.8 / 84.2% and
    /// 0.913 at 20, default configuration with embeddings).
    pub rrf_k: f64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            layers: LayerConfig::default(),
            search: ScoreWeights::default(),
            compaction: CompactionConfig::default(),
            retention: TimeDelta::days(30),
            compaction_interval: TimeDelta::hours(24),
            context: ContextConfig::default(),
            candidates: 100,
            rrf_k: 20.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContextConfig {
    pub shares: Shares,
    /// Hot memories offered at most.
    pub hot_items: u32,
    /// Warm memories offered at most.
    pub warm_items: u32,
    /// With a task text, hot and warm items that no search found relevant
    /// to it take their section's share only up to this many each (the
    /// newest and most important); the rest wait for the budget the
    /// relevance hits leave.
    pub background_items: u32,
    /// Hot and warm search hits less relevant than this (in [0, 1], 1 the
    /// task's best hit) count as background too: recent but only loosely
    /// about the task. 0.5 measured best on LoCoMo (see README).
    pub background_below: f64,
    /// Cold search hits offered at most. Fewer are offered when fewer
    /// could fill the budget: the cold section and whatever the other
    /// sections leave unused go to them, so a fixed handful (SEED's top 5)
    /// would leave most of a pack empty.
    pub cold_hits: u32,
    /// Shared knowledge base hits offered at most.
    pub knowledge_hits: u32,
    /// Anonymised items from other companies offered at most.
    pub shared_hits: u32,
    /// Other companies searched at most for one pack's shared section.
    pub shared_companies: u32,
    /// The sharing scope a workstream's tasks ask other companies for;
    /// workstreams not listed (and packs without a task type) ask for
    /// `shared_default_scope`.
    pub shared_scopes: BTreeMap<Workstream, String>,
    pub shared_default_scope: String,
    /// Budget when a request names none.
    pub default_budget: usize,
    /// The largest budget a request may ask for.
    pub max_budget: usize,
}

impl Default for ContextConfig {
    fn default() -> Self {
        Self {
            shares: Shares::default(),
            hot_items: 20,
            warm_items: 20,
            cold_hits: 400,
            background_items: 3,
            background_below: 0.5,
            knowledge_hits: 5,
            shared_hits: 5,
            shared_companies: 20,
            shared_scopes: BTreeMap::from([(
                Workstream::Legal,
                SCOPE_ANONYMIZED_LEGAL_PATTERNS.to_owned(),
            )]),
            shared_default_scope: SCOPE_PROCESS_TEMPLATES.to_owned(),
            default_budget: 4_000,
            max_budget: 128_000,
        }
    }
}

/// A search hit, with why it ranked where it did.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SearchHit {
    pub memory: Memory,
    /// Combined score in [0, 1]: fused relevance, recency, importance.
    pub score: f64,
    pub layer: Layer,
    /// 1-based rank among full-text matches, if it was one.
    pub text_rank: Option<usize>,
    /// 1-based rank among nearest vectors, if it was one.
    pub vector_rank: Option<usize>,
}

/// A hybrid search candidate before recency and importance weigh in.
struct Fused {
    memory: Memory,
    /// The reciprocal-rank-fused vote: higher is more relevant.
    relevance: f64,
    text_rank: Option<usize>,
    vector_rank: Option<usize>,
}

/// What [`Memories::context`] is asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct ContextRequest {
    /// A task type or a workstream name; picks the warm section's workstream.
    pub task_type: Option<String>,
    /// The task's text: what warm and cold search for.
    pub query: String,
    pub budget: Option<usize>,
}

/// The longest memory search query, in characters.
pub const MAX_SEARCH_QUERY_CHARS: usize = 2_000;
/// The longest text a context pack is made for, in characters: a task's
/// text, which is never longer.
pub const MAX_CONTEXT_QUERY_CHARS: usize = kira_core::task::MAX_TASK_TEXT_CHARS;

/// A company's memory. Owns the summariser compaction (and the primary
/// agent's session) uses; reaches embeddings for the vectors it searches
/// and wakes, knowledge and sharing for a context pack's sections, and
/// sharing for the conflict check after every write.
pub struct Memories {
    ctx: Arc<Ctx>,
    summarizer: Arc<dyn Summarizer>,
    embeddings: Arc<Embeddings>,
    knowledge: Arc<Knowledge>,
    sharing: Arc<Sharing>,
}

impl Memories {
    pub(crate) fn new(
        ctx: Arc<Ctx>,
        summarizer: Arc<dyn Summarizer>,
        embeddings: Arc<Embeddings>,
        knowledge: Arc<Knowledge>,
        sharing: Arc<Sharing>,
    ) -> Self {
        Self {
            ctx,
            summarizer,
            embeddings,
            knowledge,
            sharing,
        }
    }

    /// What compaction summarises with (default: extractive).
    pub fn summarizer(&self) -> &Arc<dyn Summarizer> {
        &self.summarizer
    }

    /// One page of the scope's company's memories, newest first.
    pub async fn list(
        &self,
        scope: &CompanyScope,
        filter: &MemoryFilter,
        after: Option<MemoryCursor>,
        limit: u32,
    ) -> Result<Vec<Memory>, EngineError> {
        Ok(self
            .ctx
            .store
            .list_memories(scope, filter, after, limit)
            .await?)
    }

    pub async fn get(&self, scope: &CompanyScope, id: Uuid) -> Result<Memory, EngineError> {
        Ok(self.ctx.store.get_memory(scope, id).await?)
    }

    /// Archives a memory (it leaves search and context until restored, and
    /// is purged when the retention period has passed) or restores it;
    /// the memory as it is then. `Store(Conflict)` when it already is so.
    pub async fn set_archived(
        &self,
        scope: &CompanyScope,
        id: Uuid,
        archive: bool,
        audit: AuditRecord,
    ) -> Result<Memory, EngineError> {
        let m = self.ctx.store.get_memory(scope, id).await?;
        if m.is_archived() == archive {
            return Err(StoreError::Conflict(
                if archive {
                    "the memory is already archived"
                } else {
                    "the memory is not archived"
                }
                .into(),
            )
            .into());
        }
        let at = archive.then(|| self.ctx.clock.now());
        self.ctx.store.set_archived(scope, &[id], at, audit).await?;
        Ok(self.ctx.store.get_memory(scope, id).await?)
    }

    /// Deletes a memory, its vector and its queue entry for good.
    pub async fn delete(
        &self,
        scope: &CompanyScope,
        id: Uuid,
        audit: AuditRecord,
    ) -> Result<(), EngineError> {
        Ok(self.ctx.store.delete_memory(scope, id, audit).await?)
    }

    /// Validates and stores 1..=1,000 memories in one transaction. Errors
    /// name the field (`memories.3.importance` for a batch). The store
    /// queues each for embedding; the embedder is woken. Then conflicts
    /// with other companies are looked for ([`Sharing::detect_conflicts`]):
    /// the write is done by then, so a failure there is logged, not
    /// returned.
    pub async fn add(
        &self,
        scope: &CompanyScope,
        items: Vec<NewMemory>,
        batch: bool,
        audit: AuditRecord,
    ) -> Result<Vec<Memory>, EngineError> {
        if items.is_empty() {
            return Err(ValidationError::new("memories", "must hold at least one memory").into());
        }
        if items.len() > MAX_BATCH {
            return Err(ValidationError::new(
                "memories",
                format!(
                    "holds {} memories; at most {MAX_BATCH} per request",
                    items.len()
                ),
            )
            .into());
        }
        let now = self.ctx.clock.now();
        let mut memories = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let valid = item.validate(now).map_err(|mut e| {
                if batch {
                    e.field = format!("memories.{i}.{}", e.field);
                }
                e
            })?;
            memories.push(valid.into_memory(new_memory_id(now), scope.company().clone(), now));
        }
        self.ctx
            .store
            .insert_memories(scope, &memories, audit)
            .await?;
        self.embeddings.wake();
        if let Err(e) = self.sharing.detect_conflicts(scope, &memories).await {
            tracing::error!(company = %scope.company(), error = %e, "conflict detection failed");
        }
        Ok(memories)
    }

    /// Hybrid search: full-text and vector candidates fused by reciprocal
    /// rank, then weighed with recency and importance.
    pub async fn search(
        &self,
        scope: &CompanyScope,
        query: &str,
        filter: &MemoryFilter,
        limit: u32,
    ) -> Result<Vec<SearchHit>, EngineError> {
        if query.trim().is_empty() {
            return Err(EngineError::Parameter(ValidationError::new(
                "q",
                "must not be empty",
            )));
        }
        if query.chars().count() > MAX_SEARCH_QUERY_CHARS {
            return Err(EngineError::Parameter(ValidationError::new(
                "q",
                format!("must be at most {MAX_SEARCH_QUERY_CHARS} characters"),
            )));
        }
        let cfg = &self.ctx.config.memory;
        let fused = self
            .hybrid_hits(scope, query, filter, cfg.candidates.max(limit))
            .await?;
        let now = self.ctx.clock.now();
        let hits: Vec<(Fused, f64, DateTime<Utc>, i16)> = fused
            .into_iter()
            .map(|f| {
                let (rel, at, imp) = (f.relevance, f.memory.occurred_at, f.memory.importance);
                (f, rel, at, imp)
            })
            .collect();
        Ok(rank_hits(hits, now, &cfg.search)
            .into_iter()
            .take(limit as usize)
            .map(|(f, score)| SearchHit {
                layer: layer(f.memory.occurred_at, f.memory.importance, now, &cfg.layers),
                text_rank: f.text_rank,
                vector_rank: f.vector_rank,
                memory: f.memory,
                score,
            })
            .collect())
    }

    /// Full-text and vector candidates (`candidates` from each), fused by
    /// reciprocal rank, best first, before recency and importance weigh in.
    async fn hybrid_hits(
        &self,
        scope: &CompanyScope,
        query: &str,
        filter: &MemoryFilter,
        candidates: u32,
    ) -> Result<Vec<Fused>, EngineError> {
        let cfg = &self.ctx.config.memory;
        let text = self
            .ctx
            .store
            .search_memories(scope, query, filter, candidates)
            .await?;
        let text_ids: Vec<Uuid> = text.iter().map(|h| h.memory.id).collect();
        let vector_ids = self.nearest(scope, query, filter, candidates).await?;

        let mut by_id: HashMap<Uuid, Memory> =
            text.into_iter().map(|h| (h.memory.id, h.memory)).collect();
        let missing: Vec<Uuid> = vector_ids
            .iter()
            .copied()
            .filter(|id| !by_id.contains_key(id))
            .collect();
        if !missing.is_empty() {
            for m in self.ctx.store.get_memories(scope, &missing).await? {
                by_id.insert(m.id, m);
            }
        }
        let rank_of = |list: &[Uuid]| -> HashMap<Uuid, usize> {
            list.iter()
                .enumerate()
                .map(|(i, id)| (*id, i + 1))
                .collect()
        };
        let (text_rank, vector_rank) = (rank_of(&text_ids), rank_of(&vector_ids));
        let mut lists = vec![text_ids, vector_ids];
        // What the question's words and meaning found, before the votes of
        // the time it names: what a hit lends its episode.
        let found = fuse_rrf(&lists, cfg.rrf_k);
        let topical: HashMap<Uuid, f64> = found.iter().copied().collect();
        let windows = windows_in(query, self.ctx.clock.now());
        if !windows.is_empty() {
            let timely = self
                .timely(scope, &windows, filter, &found, &mut by_id, candidates)
                .await?;
            lists.push(timely);
        }
        let fused: Vec<Fused> = fuse_rrf(&lists, cfg.rrf_k)
            .into_iter()
            .filter_map(|(id, relevance)| {
                by_id.remove(&id).map(|memory| Fused {
                    text_rank: text_rank.get(&id).copied(),
                    vector_rank: vector_rank.get(&id).copied(),
                    memory,
                    relevance,
                })
            })
            .filter(|f| archived_passes(&f.memory, filter.archived))
            .collect();
        Ok(supported_by_episode(fused, &topical))
    }

    /// The third list fusion votes with when the query names a time (see
    /// [`windows_in`]): the candidates that speak of it (happened then, or
    /// say something happened then), in their fused order, then the
    /// memories of each window no retriever found, newest first, unless
    /// the window holds more than `candidates` (then it tells nothing
    /// apart). The latter join `by_id`.
    async fn timely(
        &self,
        scope: &CompanyScope,
        windows: &[TimeWindow],
        filter: &MemoryFilter,
        found: &[(Uuid, f64)],
        by_id: &mut HashMap<Uuid, Memory>,
        candidates: u32,
    ) -> Result<Vec<Uuid>, EngineError> {
        let mut timely: Vec<Uuid> = found
            .iter()
            .filter(|(id, _)| {
                by_id
                    .get(id)
                    .is_some_and(|m| speaks_of(windows, m.occurred_at, m.text()))
            })
            .map(|(id, _)| *id)
            .collect();
        let lists: Vec<(MemoryFilter, u32)> = windows
            .iter()
            .map(|w| {
                let within = MemoryFilter {
                    from: Some(filter.from.map_or(w.from, |f| f.max(w.from))),
                    until: Some(filter.until.map_or(w.until, |u| u.min(w.until))),
                    ..filter.clone()
                };
                (within, candidates + 1)
            })
            .collect();
        let pages = self.ctx.store.list_memories_many(scope, &lists).await?;
        for page in pages.into_iter().filter(|p| p.len() <= candidates as usize) {
            for m in page {
                if let std::collections::hash_map::Entry::Vacant(e) = by_id.entry(m.id) {
                    timely.push(m.id);
                    e.insert(m);
                }
            }
        }
        Ok(timely)
    }

    /// Ids of the memories whose vectors are nearest the query's, best
    /// first; empty without an embedder.
    async fn nearest(
        &self,
        scope: &CompanyScope,
        query: &str,
        filter: &MemoryFilter,
        k: u32,
    ) -> Result<Vec<Uuid>, EngineError> {
        let Some(model) = self.embeddings.model_id() else {
            return Ok(Vec::new());
        };
        let vectors = self.ctx.store.memory_vectors(scope, &model, filter).await?;
        self.embeddings
            .nearest_ids(
                query,
                vectors
                    .into_iter()
                    .map(|v| (v.memory_id, v.vector))
                    .collect(),
                k as usize,
            )
            .await
    }

    /// The context an agent starts from (SEED 3.1): hot, warm, cold,
    /// knowledge and shared sections, deduplicated and fitted to the token
    /// budget, each item with its provenance. Only the scope's company's
    /// memories ever go in raw.
    pub async fn context(
        &self,
        scope: &CompanyScope,
        req: &ContextRequest,
    ) -> Result<ContextPack, EngineError> {
        if req.query.chars().count() > MAX_CONTEXT_QUERY_CHARS {
            return Err(EngineError::Parameter(ValidationError::new(
                "q",
                format!("must be at most {MAX_CONTEXT_QUERY_CHARS} characters"),
            )));
        }
        let cfg = &self.ctx.config.memory;
        let budget = req.budget.unwrap_or(cfg.context.default_budget);
        if budget > cfg.context.max_budget {
            return Err(ValidationError::new(
                "budget",
                format!("must be at most {}", cfg.context.max_budget),
            )
            .into());
        }
        let workstream = match req.task_type.as_deref() {
            Some(t) => Some(workstream_of(&self.ctx.config, t)?),
            None => None,
        };
        let now = self.ctx.clock.now();
        let reads = self
            .context_reads(scope, req, workstream, budget, now)
            .await?;
        self.pack_context(scope, req, reads, budget, now).await
    }

    /// Everything a context pack is made from. The sections' reads run
    /// together, so a pack takes about as long as its slowest read, not
    /// their sum.
    async fn context_reads(
        &self,
        scope: &CompanyScope,
        req: &ContextRequest,
        workstream: Option<Workstream>,
        budget: usize,
        now: DateTime<Utc>,
    ) -> Result<ContextReads, EngineError> {
        let cfg = &self.ctx.config.memory;
        let layers = cfg.layers;
        // Hot: the newest and the most important, by recency and importance.
        let recent = MemoryFilter {
            from: Some(now - layers.hot_window()),
            ..MemoryFilter::default()
        };
        let important = MemoryFilter {
            min_importance: Some(layers.hot_importance),
            ..MemoryFilter::default()
        };
        let store = &self.ctx.store;
        // Hot (newest, most important) and the workstream's recent
        // memories: three lists, read in one go.
        let mut lists = vec![
            (recent, cfg.context.hot_items),
            (important, cfg.context.hot_items),
        ];
        if let Some(w) = workstream {
            lists.push((
                MemoryFilter {
                    workstream: Some(w),
                    from: Some(now - layers.warm_window()),
                    ..MemoryFilter::default()
                },
                cfg.context.warm_items,
            ));
        }
        let listed = async {
            let mut l = store.list_memories_many(scope, &lists).await?.into_iter();
            let mut hot = l.next().unwrap_or_default();
            hot.extend(l.next().unwrap_or_default());
            Ok::<_, EngineError>((hot, l.next().unwrap_or_default()))
        };
        // Relevance hits for the task text, as many as the budget could
        // hold: they rank hot and warm items and fill the cold section and
        // whatever the other sections leave unused.
        let hits = async {
            if req.query.trim().is_empty() {
                Ok(Vec::new())
            } else {
                self.hybrid_hits(
                    scope,
                    &req.query,
                    &MemoryFilter {
                        archived: Archived::LiveOrSummarized,
                        ..MemoryFilter::default()
                    },
                    relevance_candidates(budget, cfg.candidates),
                )
                .await
            }
        };
        // Knowledge and shared: the task text's best hits in the knowledge
        // base and, as anonymised copies, in other companies' memories
        // where a sharing rule allows the task's scope.
        let knowledge = self
            .knowledge
            .candidates(&req.query, cfg.context.knowledge_hits as usize);
        let shared_scope = workstream
            .and_then(|w| cfg.context.shared_scopes.get(&w))
            .unwrap_or(&cfg.context.shared_default_scope);
        let shared = self.sharing.candidates(
            scope,
            shared_scope,
            &req.query,
            cfg.context.shared_hits as usize,
        );
        let ((hot, workstream_recent), hits, knowledge, shared) =
            tokio::try_join!(listed, hits, knowledge, shared)?;
        Ok(ContextReads {
            hot,
            workstream_recent,
            hits,
            knowledge,
            shared,
        })
    }

    /// Ranks what was read for `req` into the pack's sections and fits
    /// them to `budget`.
    async fn pack_context(
        &self,
        scope: &CompanyScope,
        req: &ContextRequest,
        reads: ContextReads,
        budget: usize,
        now: DateTime<Utc>,
    ) -> Result<ContextPack, EngineError> {
        let cfg = &self.ctx.config.memory;
        let layers = cfg.layers;
        let cand = |m: &Memory, score: f64| pack::Candidate {
            id: m.id.to_string(),
            layer: Some(pack_layer(m, now, &layers)),
            score,
            text: pack_line(m),
            group: Some(pack_group(m)),
        };
        let ContextReads {
            hot,
            workstream_recent,
            hits,
            knowledge,
            shared: shared_c,
        } = reads;
        let mut relevance: HashMap<Uuid, f64> = {
            let raw: Vec<f64> = hits.iter().map(|f| f.relevance).collect();
            hits.iter()
                .map(|f| f.memory.id)
                .zip(normalise(&raw))
                .collect()
        };
        let layer_of = |m: &Memory| pack_layer(m, now, &layers);
        let mut by_layer: HashMap<Layer, Vec<Memory>> = HashMap::new();
        for f in hits {
            by_layer
                .entry(layer_of(&f.memory))
                .or_default()
                .push(f.memory);
        }
        let mut take_layer = |l: Layer| by_layer.remove(&l).unwrap_or_default();

        // Hot and warm: the listed memories and the layer's relevance hits,
        // ordered by relevance, recency and importance together.
        let mut listed_hot = take_layer(Layer::Hot);
        listed_hot.extend(hot);
        let hot_c = ranked_section(listed_hot, &relevance, now, &cfg.search, &cand);
        let mut listed_warm = take_layer(Layer::Warm);
        listed_warm.extend(
            workstream_recent
                .into_iter()
                .filter(|m| layer_of(m) == Layer::Warm)
                .take(cfg.context.warm_items as usize),
        );
        let warm_c = ranked_section(listed_warm, &relevance, now, &cfg.search, &cand);
        let cold = take_layer(Layer::Cold);
        let cold_c: Vec<pack::Candidate> = self
            .cold_section(scope, cold, &mut relevance, budget, now)
            .await?
            .iter()
            .map(|(m, s)| cand(m, *s))
            .collect();
        let knowledge_c: Vec<pack::Candidate> = knowledge
            .into_iter()
            .map(|(id, score, text)| pack::Candidate {
                id,
                layer: None,
                score,
                text,
                group: None,
            })
            .collect();

        let relevance: HashMap<String, f64> = relevance
            .into_iter()
            .map(|(id, r)| (id.to_string(), r))
            .collect();
        let background = (!req.query.trim().is_empty()).then_some(pack::Background {
            items: cfg.context.background_items as usize,
            below: cfg.context.background_below,
        });
        Ok(pack::fit_for_task(
            vec![
                (Section::Hot, hot_c),
                (Section::Warm, warm_c),
                (Section::Cold, cold_c),
                (Section::Knowledge, knowledge_c),
                (Section::Shared, shared_c),
            ],
            &relevance,
            budget,
            &cfg.context.shares,
            background,
            &pack::count_tokens,
        ))
    }

    /// Cold: relevance hits from further back, with their neighbours, and
    /// their scores.
    /// Recency placed them here, so it does not rank them again: relevance
    /// and importance do. As many as could fill the budget, at most
    /// `cold_hits`.
    async fn cold_section(
        &self,
        scope: &CompanyScope,
        cold: Vec<Memory>,
        relevance: &mut HashMap<Uuid, f64>,
        budget: usize,
        now: DateTime<Utc>,
    ) -> Result<Vec<(Memory, f64)>, EngineError> {
        let cfg = &self.ctx.config.memory;
        let cold_weights = ScoreWeights {
            recency: 0.0,
            ..cfg.search
        };
        let mut cold: Vec<(Memory, f64)> = cold
            .into_iter()
            .map(|m| {
                let rel = relevance.get(&m.id).copied().unwrap_or(0.0);
                let score = combined_score(rel, 0.0, m.importance, &cold_weights);
                (m, score)
            })
            .collect();
        cold.sort_by(|a, b| b.1.total_cmp(&a.1));
        let cold = self
            .with_neighbours(scope, cold, now, &cfg.layers, relevance)
            .await?;
        let mut estimate = 0usize;
        Ok(cold
            .into_iter()
            .take(cfg.context.cold_hits as usize)
            .take_while(|(m, _)| {
                let fits = estimate < budget;
                estimate += estimated_tokens(m);
                fits
            })
            .collect())
    }

    /// Adds to the best cold hits the events just before and after each in
    /// the same workstream (within [`NEIGHBOUR_WINDOW`]): the turn that
    /// answers a question, the one that asked it, the one that says when.
    /// Each follows its hit at a fraction of its score, so it displaces
    /// only weaker hits. One round trip for all of them.
    async fn with_neighbours(
        &self,
        scope: &CompanyScope,
        cold: Vec<(Memory, f64)>,
        now: DateTime<Utc>,
        layers: &LayerConfig,
        relevance: &mut HashMap<Uuid, f64>,
    ) -> Result<Vec<(Memory, f64)>, EngineError> {
        let anchors = cold.len().min(NEIGHBOUR_ANCHORS);
        let mut lists = Vec::with_capacity(2 * anchors);
        for (m, _) in &cold[..anchors] {
            let base = MemoryFilter {
                workstream: Some(m.workstream),
                archived: Archived::LiveOrSummarized,
                ..MemoryFilter::default()
            };
            lists.push((
                MemoryFilter {
                    from: Some(m.occurred_at - NEIGHBOUR_WINDOW),
                    until: Some(m.occurred_at),
                    ..base.clone()
                },
                1,
            ));
            lists.push((
                MemoryFilter {
                    from: Some(m.occurred_at + TimeDelta::milliseconds(1)),
                    until: Some(m.occurred_at + NEIGHBOUR_WINDOW),
                    ..base
                },
                NEIGHBOUR_AFTER_PAGE,
            ));
        }
        if lists.is_empty() {
            return Ok(cold);
        }
        let pages = self.ctx.store.list_memories_many(scope, &lists).await?;
        let mut neighbours: Vec<Vec<Memory>> = vec![Vec::new(); anchors];
        for (i, page) in pages.into_iter().enumerate() {
            let is_after = i % 2 == 1;
            // A page lists newest first: the event just before is its
            // first; the one just after is the last of a page that holds
            // the whole window.
            let nearest = if is_after {
                if page.len() >= NEIGHBOUR_AFTER_PAGE as usize {
                    None
                } else {
                    page.into_iter().last()
                }
            } else {
                page.into_iter().next()
            };
            if let Some(n) = nearest.filter(|n| pack_layer(n, now, layers) == Layer::Cold) {
                neighbours[i / 2].push(n);
            }
        }
        // A neighbour already among the hits is lifted to its share of the
        // hit's score if that is more than its own; any other joins.
        let mut out = cold;
        let mut at: HashMap<Uuid, usize> = out
            .iter()
            .enumerate()
            .map(|(i, (m, _))| (m.id, i))
            .collect();
        for (i, near) in neighbours.into_iter().enumerate() {
            let (anchor, score) = (out[i].0.id, out[i].1);
            let rel = relevance.get(&anchor).copied().unwrap_or(0.0) * NEIGHBOUR_WEIGHT;
            for n in near {
                let lifted = score * NEIGHBOUR_WEIGHT;
                let r = relevance.entry(n.id).or_insert(0.0);
                *r = r.max(rel);
                match at.get(&n.id) {
                    Some(&k) => out[k].1 = out[k].1.max(lifted),
                    None => {
                        at.insert(n.id, out.len());
                        out.push((n, lifted));
                    }
                }
            }
        }
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(out)
    }
}

/// The workstream a task type works in: a workstream's own name, else
/// the type's specialist's (legal, financial, ...), else general.
pub fn workstream_of(cfg: &EngineConfig, task_type: &str) -> Result<Workstream, EngineError> {
    if let Ok(w) = Workstream::parse(task_type) {
        return Ok(w);
    }
    let Some(t) = cfg.task_types.get(task_type) else {
        return Err(ValidationError::new(
            "task_type",
            format!("'{task_type}' is neither a configured task type nor a workstream"),
        )
        .into());
    };
    Ok(t.specialist
        .as_deref()
        .and_then(|s| Workstream::parse(s).ok())
        .unwrap_or(Workstream::General))
}

/// Hits ranked again with the support of their episode's other hits
/// ([`support_within_episodes`]): turns of one conversation, notes of one
/// meeting (one `source`, each within [`EPISODE_GAP`] of the one before).
/// What a hit lends is its `topical` vote (full text and vectors), not
/// the time list's. Relevance becomes the normalised fused vote plus that
/// support.
fn supported_by_episode(fused: Vec<Fused>, topical: &HashMap<Uuid, f64>) -> Vec<Fused> {
    let keys: Vec<(Option<&str>, DateTime<Utc>)> = fused
        .iter()
        .map(|f| (f.memory.source.as_deref(), f.memory.occurred_at))
        .collect();
    let episode = episodes(&keys, EPISODE_GAP);
    let hits = fused
        .into_iter()
        .zip(episode)
        .map(|(f, e)| {
            let (r, t) = (f.relevance, topical.get(&f.memory.id).copied());
            (f, e, r, t.unwrap_or(0.0))
        })
        .collect();
    support_within_episodes(hits, EPISODE_SHARE, EPISODE_OTHERS)
        .into_iter()
        .map(|(f, relevance)| Fused { relevance, ..f })
        .collect()
}

/// How far apart two hits of one source may follow each other and still be
/// one episode: a conversation's turns, a meeting's notes.
const EPISODE_GAP: TimeDelta = TimeDelta::hours(1);
/// What the best other hits of an episode add to a hit: `EPISODE_SHARE`
/// times the squares of the normalised relevance of at most
/// `EPISODE_OTHERS` of them. LongMemEval_S's sample (92 questions, each
/// session a source) measured in the README; LoCoMo's turns each have a
/// source of their own, so their packs do not change.
const EPISODE_SHARE: f64 = 0.2;
const EPISODE_OTHERS: usize = 4;

/// Cold hits whose neighbouring events are offered too. On LoCoMo (all ten
/// conversations, all but adversarial) neighbours took evidence recall at
/// 2,000 tokens from 72.1% to 72.4% as configured by default, and from
/// 79.0% to 80.0% in `kira bench memory --retrieval`.
const NEIGHBOUR_ANCHORS: usize = 10;
/// How far apart an event and its neighbour may be: a conversation's
/// turns, a meeting's notes.
const NEIGHBOUR_WINDOW: TimeDelta = TimeDelta::minutes(30);
/// Events read after a hit to find the nearest (pages list newest first).
const NEIGHBOUR_AFTER_PAGE: u32 = 20;
/// A neighbour's score as a share of its hit's: close behind it, so the
/// turns around the best hits come before weaker hits elsewhere. On LoCoMo
/// (full text only, stop words left out, lines grouped by day) 0.5 gave
/// 68.1% at 1,000 tokens and 76.7% at 2,000; 0.7, 70.8% and 81.0%; 0.85,
/// 73.0% and 80.6%; 1.0, 71.9% and 80.3%. Twenty anchors instead of ten
/// changed nothing.
const NEIGHBOUR_WEIGHT: f64 = 0.85;

/// Candidates each retriever hands to fusion for a pack of `budget`
/// tokens: enough for relevance hits of a few lines' length to fill the
/// budget, never fewer than `candidates`, and bounded so a large budget
/// stays cheap.
fn relevance_candidates(budget: usize, candidates: u32) -> u32 {
    const MAX: u32 = 1_000;
    let by_budget = u32::try_from(budget / 10).unwrap_or(MAX);
    by_budget.clamp(candidates.min(MAX), MAX)
}

/// A cheap upper estimate of a memory's line in a pack, in tokens: about
/// four characters per token, plus the date and kind before the text.
fn estimated_tokens(m: &Memory) -> usize {
    m.text().len() / 4 + 12
}

/// What a context pack is made from (see [`Memories::context`]).
struct ContextReads {
    /// The newest and the most important memories.
    hot: Vec<Memory>,
    /// The task's workstream's memories of the warm window.
    workstream_recent: Vec<Memory>,
    /// Relevance hits for the task text.
    hits: Vec<Fused>,
    /// Knowledge base hits: id, score, text.
    knowledge: Vec<(String, f64, String)>,
    /// Other companies' published items the sharing rules allow.
    shared: Vec<pack::Candidate>,
}

/// A hot or warm section's candidates, deduplicated and best first by
/// relevance to the task (0 for a memory no retriever found), recency and
/// importance together.
fn ranked_section(
    memories: Vec<Memory>,
    relevance: &HashMap<Uuid, f64>,
    now: DateTime<Utc>,
    weights: &ScoreWeights,
    cand: &dyn Fn(&Memory, f64) -> pack::Candidate,
) -> Vec<pack::Candidate> {
    let mut seen = HashSet::new();
    let mut scored: Vec<(Memory, f64)> = memories
        .into_iter()
        .filter(|m| seen.insert(m.id))
        .map(|m| {
            let rel = relevance.get(&m.id).copied().unwrap_or(0.0);
            let rec = recency(m.occurred_at, now, weights.recency_half_life_days);
            let score = combined_score(rel, rec, m.importance, weights);
            (m, score)
        })
        .collect();
    scored.sort_by(|a, b| match b.1.total_cmp(&a.1) {
        std::cmp::Ordering::Equal => b.0.occurred_at.cmp(&a.0.occurred_at),
        o => o,
    });
    scored.iter().map(|(m, s)| cand(m, *s)).collect()
}

/// A memory's layer in a context pack: its age and importance decide, but
/// an archived memory (the source of a compaction summary, which stands in
/// for it in the hot and warm sections) is only ever a cold search hit.
fn pack_layer(m: &Memory, now: DateTime<Utc>, layers: &LayerConfig) -> Layer {
    if m.is_archived() {
        Layer::Cold
    } else {
        layer(m.occurred_at, m.importance, now, layers)
    }
}

fn archived_passes(m: &Memory, a: Archived) -> bool {
    match a {
        Archived::Exclude => !m.is_archived(),
        Archived::Include => true,
        Archived::Only => m.is_archived(),
        // Which archived memories are summary sources only the store knows;
        // the candidates came through its filter.
        Archived::LiveOrSummarized => true,
    }
}

/// A memory's line in a context pack: its text, on one line. Its date and
/// kind ([`pack_group`]) head the section's lines that share them, once:
/// on every line they cost a LoCoMo turn a third of its tokens.
fn pack_line(m: &Memory) -> String {
    m.text().replace('\n', " ")
}

/// The group a memory's line is shown under in a context pack: its day
/// and kind, as [`render_memory`] begins.
fn pack_group(m: &Memory) -> String {
    format!(
        "{} {}/{}",
        m.occurred_at.format("%Y-%m-%d"),
        m.event_type,
        m.workstream
    )
}

/// One memory as an agent sees it: date, kind, then the text.
pub fn render_memory(m: &Memory) -> String {
    format!(
        "[{} {}/{}] {}",
        m.occurred_at.format("%Y-%m-%d"),
        m.event_type,
        m.workstream,
        m.text().replace('\n', " ")
    )
}
