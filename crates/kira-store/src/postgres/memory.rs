//! Episodic memory on PostgreSQL: events in `memories` with a generated
//! `tsvector` (GIN-indexed), vectors and the embedding queue beside them.
//! Each company-scoped transaction names its company for the row-level
//! policies and every statement binds it again. A batch is one statement
//! over `unnest` of column arrays, whatever its size. The embedding queue
//! holds no content and has no policies: claims read it for every company,
//! with `FOR UPDATE SKIP LOCKED` so concurrent embedders never share a job.
//! The rows, filters and flows are `flow::memory`'s; the batch insert, the
//! search and the vectors' write are here.

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use kira_core::CompanyId;
use kira_core::audit::AuditRecord;
use kira_core::auth::CompanyScope;
use kira_core::conflict::NameKind;
use kira_core::memory::Memory;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::{FOREIGN_KEY_VIOLATION, PgStore, UNIQUE_VIOLATION, append, sqlstate};
use crate::flow::memory::{self as flow, MEMORY_COLUMNS, memory_from_row, vector_from_row};
use crate::memory::*;
use crate::sql::Columns;
use crate::{DeletedRows, Result, StoreError};

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

/// Removes the company's memory rows from all three tables (the forced
/// company delete).
pub(super) async fn delete_company_memory(
    tx: &mut PgConnection,
    company: &CompanyId,
    deleted: &mut DeletedRows,
) -> Result<()> {
    crate::flow::company::delete_rows(tx, company, crate::flow::company::MEMORY_ROWS, deleted)
        .await?;
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
impl MemoryStore for PgStore {
    async fn insert_memories(
        &self,
        scope: &CompanyScope,
        memories: &[Memory],
        audit: AuditRecord,
    ) -> Result<()> {
        check_batch(scope, memories)?;
        let mut tx = self.scoped(scope.company()).await?;
        insert_rows(&mut tx, scope.company(), memories).await?;
        append(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_memory(&self, scope: &CompanyScope, id: Uuid) -> Result<Memory> {
        let mut tx = self.scoped(scope.company()).await?;
        let memory = flow::get(&mut tx, scope.company(), id).await?;
        tx.commit().await?;
        Ok(memory)
    }

    async fn get_memories(&self, scope: &CompanyScope, ids: &[Uuid]) -> Result<Vec<Memory>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.scoped(scope.company()).await?;
        let memories = flow::get_many(&mut tx, scope.company(), ids).await?;
        tx.commit().await?;
        Ok(memories)
    }

    async fn list_memories(
        &self,
        scope: &CompanyScope,
        filter: &MemoryFilter,
        after: Option<MemoryCursor>,
        limit: u32,
    ) -> Result<Vec<Memory>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut qb = flow::list_query::<Postgres>(scope.company(), filter, after, limit);
        let mut tx = self.scoped(scope.company()).await?;
        let rows = qb.build().fetch_all(&mut *tx).await?;
        tx.commit().await?;
        rows.iter().map(memory_from_row).collect()
    }

    async fn list_memories_many(
        &self,
        scope: &CompanyScope,
        lists: &[(MemoryFilter, u32)],
    ) -> Result<Vec<Vec<Memory>>> {
        let Some(mut qb) = flow::list_many_query::<Postgres>(scope.company(), lists) else {
            return Ok(lists.iter().map(|_| Vec::new()).collect());
        };
        let mut tx = self.scoped(scope.company()).await?;
        let rows = qb.build().fetch_all(&mut *tx).await?;
        tx.commit().await?;
        lists_from_parts(
            lists.len(),
            rows.iter()
                .map(|r| Ok((r.int("part")?, memory_from_row(r)?))),
        )
    }

    async fn search_memories(
        &self,
        scope: &CompanyScope,
        query: &str,
        filter: &MemoryFilter,
        limit: u32,
    ) -> Result<Vec<TextHit>> {
        let words = query_words(query);
        if words.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
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
            .push_bind(scope.company().as_str().to_owned());
        flow::push_filter(&mut qb, filter);
        qb.push(format!(
            ") SELECT {MEMORY_COLUMNS}, ts_rank_cd(m.search, q.q)::float8 AS relevance \
             FROM m, q WHERE m.search @@ q.q"
        ));
        qb.push(" ORDER BY relevance DESC, m.occurred_at DESC, m.id DESC LIMIT ")
            .push_bind(i64::from(limit));
        let mut tx = self.scoped(scope.company()).await?;
        let rows = qb.build().fetch_all(&mut *tx).await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                Ok(TextHit {
                    memory: memory_from_row(r)?,
                    relevance: r.try_get("relevance")?,
                })
            })
            .collect()
    }

    async fn set_archived(
        &self,
        scope: &CompanyScope,
        ids: &[Uuid],
        archived_at: Option<DateTime<Utc>>,
        audit: AuditRecord,
    ) -> Result<u64> {
        let mut tx = self.scoped(scope.company()).await?;
        let n = flow::set_archived(&mut tx, scope.company(), ids, archived_at).await?;
        append(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn delete_memory(
        &self,
        scope: &CompanyScope,
        id: Uuid,
        audit: AuditRecord,
    ) -> Result<()> {
        let mut tx = self.scoped(scope.company()).await?;
        flow::delete(&mut tx, scope.company(), id).await?;
        append(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn replace_with_summary(
        &self,
        scope: &CompanyScope,
        summary: &Memory,
        at: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<()> {
        let sources = summary_sources(scope, summary)?;
        let mut tx = self.scoped(scope.company()).await?;
        // Dropping the transaction on an error rolls the archiving back.
        flow::archive_sources(&mut tx, scope.company(), &sources, summary.id, at).await?;
        insert_rows(&mut tx, scope.company(), std::slice::from_ref(summary)).await?;
        append(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn purge_archived(
        &self,
        scope: &CompanyScope,
        before: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<u64> {
        let mut tx = self.scoped(scope.company()).await?;
        let n = flow::purge_archived(&mut tx, scope.company(), before).await?;
        append(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn memory_stats(&self, scope: &CompanyScope, model: &str) -> Result<MemoryStats> {
        let mut tx = self.scoped(scope.company()).await?;
        let stats = flow::stats(&mut tx, scope.company(), model).await?;
        tx.commit().await?;
        Ok(stats)
    }

    async fn claim_embed_jobs(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<EmbedJob>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // The queue has no policies: the pool's connection, no transaction.
        flow::claim_embed_jobs(&mut self.pool().acquire().await?, now, limit).await
    }

    async fn put_vectors(
        &self,
        scope: &CompanyScope,
        model: &str,
        vectors: &[MemoryVector],
    ) -> Result<()> {
        if vectors.is_empty() {
            return Ok(());
        }
        // One row per memory: ON CONFLICT may not touch a row twice.
        let vectors = dedup_vectors(vectors);
        let ids: Vec<Uuid> = vectors.iter().map(|v| v.memory_id).collect();
        let blobs: Vec<Vec<u8>> = vectors.iter().map(|v| encode_vector(&v.vector)).collect();
        let mut tx = self.scoped(scope.company()).await?;
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
        .bind(scope.company().as_str())
        .bind(model)
        .bind(ids)
        .bind(blobs)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn drop_embed_jobs(&self, scope: &CompanyScope, ids: &[Uuid]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        // The queue has no policies: the pool's connection, no transaction.
        flow::drop_embed_jobs(&mut self.pool().acquire().await?, scope.company(), ids).await
    }

    async fn listed_names(
        &self,
        scope: &CompanyScope,
        limit: u32,
    ) -> Result<Vec<(NameKind, String)>> {
        let mut tx = self.scoped(scope.company()).await?;
        let names = flow::listed_names(&mut tx, scope.company(), limit).await?;
        tx.commit().await?;
        Ok(names)
    }

    async fn memory_vectors(
        &self,
        scope: &CompanyScope,
        model: &str,
        filter: &MemoryFilter,
    ) -> Result<Vec<MemoryVector>> {
        let mut qb = flow::vectors_query::<Postgres>(scope.company(), model, filter);
        let mut tx = self.scoped(scope.company()).await?;
        let rows = qb.build().fetch_all(&mut *tx).await?;
        tx.commit().await?;
        rows.iter().map(vector_from_row).collect()
    }
}
