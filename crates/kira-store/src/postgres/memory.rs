//! Episodic memory on PostgreSQL: events in `memories` with a generated
//! `tsvector` (GIN-indexed), vectors and the embedding queue beside them.
//! A batch is one statement over `unnest` of column arrays, whatever its
//! size. The embedding queue holds no content and has no policies: claims
//! read it for every company, with `FOR UPDATE SKIP LOCKED` so concurrent
//! embedders never share a job. The store, rows, filters and flows are
//! `flow::memory`'s; what PostgreSQL does its own way ([`MemorySql`]: the
//! batch insert, the search, the vectors' write) is here.

use async_trait::async_trait;
use chrono::SubsecRound;
use kira_core::CompanyId;
use kira_core::memory::Memory;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::{FOREIGN_KEY_VIOLATION, UNIQUE_VIOLATION, sqlstate};
use crate::flow::memory::{self as flow, MEMORY_COLUMNS, MemorySql, memory_from_row};
use crate::memory::*;
use crate::{Result, StoreError};

fn to_json_text<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Inserts the rows (already checked to be `company`'s) and queues each for
/// embedding, in one statement: one array per column, unnested. The
/// per-row arrays (terms, sources of a summary) travel as JSON text, since
/// `unnest` would flatten an array of arrays. Conflict on an id already
/// stored; NotFound when the company does not exist.
pub(super) async fn insert_rows(
    tx: &mut PgConnection,
    company: &CompanyId,
    memories: &[Memory],
) -> Result<()> {
    let n = memories.len();
    let mut ids = Vec::with_capacity(n);
    let mut occurred = Vec::with_capacity(n);
    let mut event_types = Vec::with_capacity(n);
    let mut workstreams = Vec::with_capacity(n);
    let mut categories = Vec::with_capacity(n);
    let mut contents = Vec::with_capacity(n);
    let mut importances = Vec::with_capacity(n);
    let mut terms = Vec::with_capacity(n);
    let mut sources = Vec::with_capacity(n);
    let mut created = Vec::with_capacity(n);
    let mut archived = Vec::with_capacity(n);
    let mut compacted_from = Vec::with_capacity(n);
    let mut supersedes = Vec::with_capacity(n);
    for m in memories {
        ids.push(m.id);
        occurred.push(m.occurred_at.trunc_subsecs(6));
        event_types.push(m.event_type.as_str());
        workstreams.push(m.workstream.as_str());
        categories.push(m.category.as_str());
        contents.push(to_json_text(&m.content)?);
        importances.push(m.importance);
        terms.push(to_json_text(&m.indexed_terms)?);
        sources.push(m.source.as_deref());
        created.push(m.created_at.trunc_subsecs(6));
        archived.push(m.archived_at.map(|t| t.trunc_subsecs(6)));
        compacted_from.push(to_json_text(&m.compacted_from)?);
        supersedes.push(m.supersedes);
    }
    sqlx::query(
        "WITH new AS ( \
             INSERT INTO memories (id, company_id, occurred_at, event_type, workstream, category, content, \
                 importance, indexed_terms, source, created_at, archived_at, compacted_from, supersedes) \
             SELECT r.id, $1, r.occurred_at, r.event_type, r.workstream, r.category, r.content::jsonb, \
                 r.importance, \
                 ARRAY(SELECT t.value FROM jsonb_array_elements_text(r.terms::jsonb) WITH ORDINALITY t \
                       ORDER BY t.ordinality), \
                 r.source, r.created_at, r.archived_at, \
                 ARRAY(SELECT s.value::uuid FROM jsonb_array_elements_text(r.compacted_from::jsonb) \
                       WITH ORDINALITY s ORDER BY s.ordinality), \
                 r.supersedes \
             FROM unnest($2::uuid[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::text[], \
                         $8::int2[], $9::text[], $10::text[], $11::timestamptz[], $12::timestamptz[], \
                         $13::text[], $14::uuid[]) \
                 AS r(id, occurred_at, event_type, workstream, category, content, importance, terms, \
                      source, created_at, archived_at, compacted_from, supersedes) \
             RETURNING id, created_at) \
         INSERT INTO memory_embed_queue (memory_id, company_id, queued_at) \
         SELECT id, $1, created_at FROM new",
    )
    .bind(company.as_str())
    .bind(ids)
    .bind(occurred)
    .bind(event_types)
    .bind(workstreams)
    .bind(categories)
    .bind(contents)
    .bind(importances)
    .bind(terms)
    .bind(sources)
    .bind(created)
    .bind(archived)
    .bind(compacted_from)
    .bind(supersedes)
    .execute(&mut *tx)
    .await
    .map_err(|e| match sqlstate(&e).as_deref() {
        Some(UNIQUE_VIOLATION) => {
            StoreError::Conflict("a memory with this id already exists".into())
        }
        Some(FOREIGN_KEY_VIOLATION) => StoreError::NotFound,
        _ => e.into(),
    })?;
    let names = name_rows(memories);
    if !names.is_empty() {
        let mut ids = Vec::with_capacity(names.len());
        let mut kinds = Vec::with_capacity(names.len());
        let mut written = Vec::with_capacity(names.len());
        let mut keys = Vec::with_capacity(names.len());
        for (id, kind, name, key) in names {
            ids.push(id);
            kinds.push(kind.as_str());
            written.push(name);
            keys.push(key);
        }
        sqlx::query(
            "INSERT INTO memory_names (kind, key, company_id, memory_id, name) \
             SELECT r.kind, r.key, $1, r.memory_id, r.name \
             FROM unnest($2::text[], $3::text[], $4::uuid[], $5::text[]) AS r(kind, key, memory_id, name) \
             ON CONFLICT DO NOTHING",
        )
        .bind(company.as_str())
        .bind(kinds)
        .bind(keys)
        .bind(ids)
        .bind(written)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// The OR of the query words' lexemes as a tsquery, around the bound
/// words. The words go through `to_tsvector` (stemmed, stop words dropped,
/// never a syntax error) and each lexeme comes back quoted, quotes and
/// backslashes doubled as the tsquery input syntax wants; the text cast
/// (not `to_tsquery`) keeps the lexemes as they are. NULL, which matches
/// nothing, when every word is a stop word.
pub(super) const TSQUERY_BEFORE: &str = "(SELECT string_agg('''' || replace(replace(l.lexeme, '\\', '\\\\'), '''', '''''') \
     || '''', ' | ') FROM unnest(to_tsvector('english'::regconfig, ";
pub(super) const TSQUERY_AFTER: &str = ")) AS l)::tsquery";

#[async_trait]
impl MemorySql for Postgres {
    async fn insert_memories(
        c: &mut PgConnection,
        company: &CompanyId,
        memories: &[Memory],
    ) -> Result<()> {
        insert_rows(c, company, memories).await
    }

    async fn search_memories(
        c: &mut PgConnection,
        company: &CompanyId,
        words: &[String],
        filter: &MemoryFilter,
        limit: u32,
    ) -> Result<Vec<TextHit>> {
        // The company's rows first, then the match: the query is computed
        // at run time, so the planner cannot tell a common word from a rare
        // one and would intersect the GIN index's matches of every company
        // (670k rows for three common words at 1M memories, 120 ms) with
        // the company's. Reading only the company's rows costs what the
        // company holds.
        let mut qb = QueryBuilder::<Postgres>::new("WITH q AS (SELECT ");
        qb.push(TSQUERY_BEFORE)
            .push_bind(words.join(" "))
            .push(TSQUERY_AFTER)
            .push(" AS q), m AS MATERIALIZED (SELECT * FROM memories m WHERE m.company_id = ")
            .push_bind(company.as_str().to_owned());
        flow::push_filter(&mut qb, filter);
        qb.push(format!(
            ") SELECT {MEMORY_COLUMNS}, ts_rank_cd(m.search, q.q)::float8 AS relevance \
             FROM m, q WHERE m.search @@ q.q"
        ));
        qb.push(" ORDER BY relevance DESC, m.occurred_at DESC, m.id DESC LIMIT ")
            .push_bind(i64::from(limit));
        let rows = qb.build().fetch_all(&mut *c).await?;
        rows.iter()
            .map(|r| {
                Ok(TextHit {
                    memory: memory_from_row(r)?,
                    relevance: r.try_get("relevance")?,
                })
            })
            .collect()
    }

    /// One statement over `unnest`.
    async fn put_vectors(
        c: &mut PgConnection,
        company: &CompanyId,
        model: &str,
        vectors: &[MemoryVector],
    ) -> Result<()> {
        // One row per memory: ON CONFLICT may not touch a row twice.
        let vectors = dedup_vectors(vectors);
        let ids: Vec<Uuid> = vectors.iter().map(|v| v.memory_id).collect();
        let blobs: Vec<Vec<u8>> = vectors.iter().map(|v| encode_vector(&v.vector)).collect();
        sqlx::query(
            "WITH stored AS ( \
                 INSERT INTO memory_vectors (memory_id, company_id, model, vector) \
                 SELECT v.memory_id, $1, $2, v.vector \
                 FROM unnest($3::uuid[], $4::bytea[]) AS v(memory_id, vector) \
                 JOIN memories m ON m.id = v.memory_id AND m.company_id = $1 \
                 ON CONFLICT (memory_id) DO UPDATE SET model = excluded.model, vector = excluded.vector \
                 RETURNING memory_id) \
             DELETE FROM memory_embed_queue \
             WHERE company_id = $1 AND memory_id IN (SELECT memory_id FROM stored)",
        )
        .bind(company.as_str())
        .bind(model)
        .bind(ids)
        .bind(blobs)
        .execute(&mut *c)
        .await?;
        Ok(())
    }
}
