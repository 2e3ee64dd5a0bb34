//! What the memory benchmarks share: companies loaded with a corpus as
//! their memory, compaction and embedding run to the end, and the engine
//! settings of pure retrieval.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use kira_core::CompanyId;
use kira_core::audit::{AuditRecord, Outcome};
use kira_core::auth::{Access, CompanyScope, Principal};
use kira_core::company::NewCompany;
use kira_core::memory::{EventType, NewMemory, Workstream};
use kira_engine::{Engine, EngineConfig, EngineError};
use kira_store::Store;

use crate::BenchError;

/// Context settings where every item is chosen by relevance to the
/// question: all memories cold, the cold section takes the whole budget,
/// and ranking ignores recency and importance (LoCoMo asks about any
/// point of a conversation, and every turn has the same importance).
pub fn retrieval_config() -> EngineConfig {
    let mut cfg = EngineConfig::default();
    let m = &mut cfg.memory;
    m.layers.hot_days = 0;
    m.layers.hot_importance = 11;
    m.layers.warm_days = 0;
    m.layers.warm_importance = 11;
    m.context.shares = kira_engine::memory::Shares {
        hot: 0.0,
        warm: 0.0,
        cold: 1.0,
        knowledge: 0.0,
        shared: 0.0,
    };
    m.context.cold_hits = 400;
    m.candidates = 400;
    m.search.recency = 0.0;
    m.search.importance = 0.0;
    cfg
}

/// `engine` with the sentence-embedding model of `KIRA_MODELS`, unless
/// `no_embed` (full text only).
pub fn with_embedder(engine: Engine, no_embed: bool) -> Result<Engine, BenchError> {
    if no_embed {
        return Ok(engine);
    }
    let dir = kira_embed::model_dir(&kira_embed::models_dir());
    let e = kira_embed::Embedder::load(&dir)
        .map_err(|e| BenchError::during("loading the embedding model", e))?;
    Ok(engine.with_embedder(Arc::new(e)))
}

pub(crate) fn record(company: &CompanyId, action: &str) -> AuditRecord {
    AuditRecord {
        at: DateTime::<Utc>::UNIX_EPOCH,
        request_id: "bench".into(),
        actor: "system".into(),
        company_id: Some(company.clone()),
        action: action.into(),
        target: "bench".into(),
        outcome: Outcome::Ok,
        detail: String::new(),
    }
}

pub(crate) fn scope(id: &CompanyId) -> CompanyScope {
    // The system principal is an admin: a scope is always granted.
    match Principal::system().scope(id, Access::Write) {
        Ok(s) => s,
        Err(_) => unreachable!("the system principal may act for every company"),
    }
}

/// How a benchmark's turns are filed: `general`/`conversation` notes, or
/// (to measure compaction) `operational`/`status_meetings`, a category the
/// default strategy summarises.
pub const AS_CONVERSATION: (Workstream, &str) = (Workstream::General, "conversation");
pub const AS_STATUS_MEETINGS: (Workstream, &str) = (Workstream::Operational, "status_meetings");

/// Creates the company in `store` (the engine's) and loads `items` (text,
/// time, source) as its memory, filed as `kind` (workstream, category),
/// 1,000 per transaction. Returns the company id.
pub async fn load_company(
    engine: &Engine,
    store: &dyn Store,
    name: &str,
    items: &[(String, DateTime<Utc>, String)],
    kind: (Workstream, &str),
) -> Result<CompanyId, EngineError> {
    let (id, profile) = serde_json::from_value::<NewCompany>(serde_json::json!({
        "id": name, "name": name, "industry": "research", "jurisdiction": "US"
    }))
    .map_err(|e| kira_core::ValidationError::new("company", e.to_string()))?
    .validate()?;
    let sc = scope(&id);
    store
        .create_company(
            &sc,
            &profile,
            engine.clock().now(),
            record(&id, "bench.company"),
        )
        .await?;
    for chunk in items.chunks(kira_store::memory::MAX_BATCH) {
        let batch: Vec<NewMemory> = chunk
            .iter()
            .map(|(text, at, source)| NewMemory {
                occurred_at: *at,
                event_type: EventType::Note,
                workstream: kind.0,
                category: kind.1.into(),
                content: serde_json::json!({ "text": text }),
                importance: 5,
                indexed_terms: vec![],
                source: Some(source.clone()),
            })
            .collect();
        engine
            .memory()
            .add(&sc, batch, true, record(&id, "bench.memory"))
            .await?;
    }
    Ok(id)
}

/// Compacts each company's memory now (what the daily job does); returns
/// the summaries written and the memories they replaced.
pub async fn compact_all(
    engine: &Engine,
    companies: &[CompanyId],
) -> Result<(usize, usize), EngineError> {
    let (mut summaries, mut sources) = (0, 0);
    for c in companies {
        let r = engine.memory().compact(&scope(c), false).await?;
        for g in r.groups.iter().filter(|g| g.summary_id.is_some()) {
            summaries += 1;
            sources += g.sources;
        }
    }
    Ok((summaries, sources))
}

/// Embeds every queued memory; returns how many.
pub async fn embed_all(engine: &Engine) -> Result<usize, EngineError> {
    let mut total = 0;
    loop {
        let n = engine.embeddings().pass().await?;
        if n == 0 {
            return Ok(total);
        }
        total += n;
    }
}
