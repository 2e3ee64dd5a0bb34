//! Episodic memory on PostgreSQL: events in `memories` with a generated
//! `tsvector` (GIN-indexed), vectors and the embedding queue beside them.
//! Each company-scoped transaction names its company for the row-level
//! policies and every statement binds it again. A batch is one statement
//! over `unnest` of column arrays, whatever its size. The embedding queue
//! holds no content and has no policies: claims read it for every company,
//! with `FOR UPDATE SKIP LOCKED` so concurrent embedders never share a job.

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use kira_core::CompanyId;
use kira_core::audit::AuditRecord;
use kira_core::auth::CompanyScope;
use kira_core::conflict::NameKind;
use kira_core::memory::{EventType, Memory, Workstream};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::{FOREIGN_KEY_VIOLATION, PgStore, UNIQUE_VIOLATION, append, company_id, sqlstate};
use crate::memory::*;
use crate::{DeletedRows, Result, StoreError};

const MEMORY_COLUMNS: &str = "m.id, m.company_id, m.occurred_at, m.event_type, m.workstream, \
     m.category, m.content, m.importance, m.indexed_terms, m.source, m.created_at, m.archived_at, \
     m.compacted_from, m.supersedes";

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn memory_from_row(r: &PgRow) -> Result<Memory> {
    let event_type: &str = r.try_get("event_type")?;
    let workstream: &str = r.try_get("workstream")?;
    let content: Json<serde_json::Value> = r.try_get("content")?;
    Ok(Memory {
        id: r.try_get("id")?,
        company_id: company_id(r.try_get("company_id")?)?,
        occurred_at: r.try_get("occurred_at")?,
        event_type: EventType::parse(event_type).map_err(|e| corrupt("event type", e))?,
        workstream: Workstream::parse(workstream).map_err(|e| corrupt("workstream", e))?,
        category: r.try_get("category")?,
        content: content.0,
        importance: r.try_get("importance")?,
        indexed_terms: r.try_get("indexed_terms")?,
        source: r.try_get("source")?,
        created_at: r.try_get("created_at")?,
        archived_at: r.try_get("archived_at")?,
        compacted_from: r.try_get("compacted_from")?,
        supersedes: r.try_get("supersedes")?,
    })
}

/// The narrowing of a [`MemoryFilter`], appended to a query over
/// `memories m` whose WHERE has begun.
fn push_filter(qb: &mut QueryBuilder<Postgres>, f: &MemoryFilter) {
    if let Some(t) = f.event_type {
        qb.push(" AND m.event_type = ").push_bind(t.as_str());
    }
    if let Some(w) = f.workstream {
        qb.push(" AND m.workstream = ").push_bind(w.as_str());
    }
    if let Some(c) = &f.category {
        qb.push(" AND m.category = ").push_bind(c.clone());
    }
    if let Some(t) = f.from {
        qb.push(" AND m.occurred_at >= ").push_bind(t);
    }
    if let Some(t) = f.until {
        qb.push(" AND m.occurred_at < ").push_bind(t);
    }
    if let Some(i) = f.min_importance {
        qb.push(" AND m.importance >= ").push_bind(i);
    }
    if let Some(t) = &f.term {
        qb.push(" AND ")
            .push_bind(t.to_lowercase())
            .push(" = ANY (m.indexed_terms)");
    }
    qb.push(match f.archived {
        Archived::Exclude => " AND m.archived_at IS NULL",
        Archived::Include => "",
        Archived::Only => " AND m.archived_at IS NOT NULL",
        Archived::LiveOrSummarized => " AND (m.archived_at IS NULL OR m.summary_id IS NOT NULL)",
    });
}

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

/// Archives (`Some`) or restores (`None`) those of `ids` that are the
/// company's and in the other state; how many changed. The rows are locked
/// in id order first, so two archivers of overlapping sets queue rather
/// than deadlock, and the second sees the first's result.
async fn set_archived_tx(
    tx: &mut PgConnection,
    company: &CompanyId,
    ids: &[Uuid],
    archived_at: Option<DateTime<Utc>>,
) -> Result<u64> {
    let sql = match archived_at {
        Some(_) => {
            "UPDATE memories SET archived_at = $3 WHERE company_id = $1 AND archived_at IS NULL \
             AND id IN (SELECT id FROM memories WHERE company_id = $1 AND id = ANY ($2) \
                        AND archived_at IS NULL ORDER BY id FOR UPDATE)"
        }
        None => {
            "UPDATE memories SET archived_at = $3 WHERE company_id = $1 AND archived_at IS NOT NULL \
             AND id IN (SELECT id FROM memories WHERE company_id = $1 AND id = ANY ($2) \
                        AND archived_at IS NOT NULL ORDER BY id FOR UPDATE)"
        }
    };
    Ok(sqlx::query(sql)
        .bind(company.as_str())
        .bind(ids)
        .bind(archived_at.map(|t| t.trunc_subsecs(6)))
        .execute(&mut *tx)
        .await?
        .rows_affected())
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
        let sql = format!(
            "SELECT {MEMORY_COLUMNS} FROM memories m WHERE m.company_id = $1 AND m.id = $2"
        );
        let mut tx = self.scoped(scope.company()).await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(scope.company().as_str())
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
        tx.commit().await?;
        memory_from_row(&row)
    }

    async fn get_memories(&self, scope: &CompanyScope, ids: &[Uuid]) -> Result<Vec<Memory>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {MEMORY_COLUMNS} FROM memories m WHERE m.company_id = $1 AND m.id = ANY ($2)"
        );
        let mut tx = self.scoped(scope.company()).await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(scope.company().as_str())
            .bind(ids)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter().map(memory_from_row).collect()
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
        let mut qb = QueryBuilder::<Postgres>::new(format!(
            "SELECT {MEMORY_COLUMNS} FROM memories m WHERE m.company_id = "
        ));
        qb.push_bind(scope.company().as_str().to_owned());
        push_filter(&mut qb, filter);
        if let Some(c) = after {
            qb.push(" AND (m.occurred_at, m.id) < (")
                .push_bind(c.occurred_at)
                .push(", ")
                .push_bind(c.id)
                .push(")");
        }
        qb.push(" ORDER BY m.occurred_at DESC, m.id DESC LIMIT ")
            .push_bind(i64::from(limit));
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
        let asked: Vec<(usize, &(MemoryFilter, u32))> =
            lists.iter().enumerate().filter(|(_, l)| l.1 > 0).collect();
        if asked.is_empty() {
            return Ok(lists.iter().map(|_| Vec::new()).collect());
        }
        // One statement in one scoped transaction, not one of each per list.
        let mut qb = QueryBuilder::<Postgres>::new("");
        for (n, (i, (filter, limit))) in asked.iter().enumerate() {
            if n > 0 {
                qb.push(" UNION ALL ");
            }
            qb.push("SELECT * FROM (SELECT ")
                .push_bind(i64::try_from(*i).unwrap_or(i64::MAX))
                .push(format!(
                    "::int8 AS part, {MEMORY_COLUMNS} FROM memories m WHERE m.company_id = "
                ))
                .push_bind(scope.company().as_str().to_owned());
            push_filter(&mut qb, filter);
            qb.push(" ORDER BY m.occurred_at DESC, m.id DESC LIMIT ")
                .push_bind(i64::from(*limit))
                .push(") AS l");
        }
        let mut tx = self.scoped(scope.company()).await?;
        let rows = qb.build().fetch_all(&mut *tx).await?;
        tx.commit().await?;
        lists_from_parts(
            lists.len(),
            rows.iter()
                .map(|r| Ok((r.try_get("part")?, memory_from_row(r)?))),
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
        push_filter(&mut qb, filter);
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
        let n = set_archived_tx(&mut tx, scope.company(), ids, archived_at).await?;
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
        // The vector and the queue entry go by the foreign keys' cascade.
        let n = sqlx::query("DELETE FROM memories WHERE company_id = $1 AND id = $2")
            .bind(scope.company().as_str())
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound);
        }
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
        let n = set_archived_tx(&mut tx, scope.company(), &sources, Some(at)).await?;
        if n != sources.len() as u64 {
            // Dropping the transaction rolls the archiving back.
            return Err(StoreError::Conflict(
                "a source of the summary is not a live memory of this company".into(),
            ));
        }
        sqlx::query("UPDATE memories SET summary_id = $3 WHERE company_id = $1 AND id = ANY ($2)")
            .bind(scope.company().as_str())
            .bind(&sources)
            .bind(summary.id)
            .execute(&mut *tx)
            .await?;
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
        let n = sqlx::query(
            "DELETE FROM memories WHERE company_id = $1 AND archived_at IS NOT NULL AND archived_at < $2 \
             AND summary_id IS NULL",
        )
        .bind(scope.company().as_str())
        .bind(before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        append(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn memory_stats(&self, scope: &CompanyScope, model: &str) -> Result<MemoryStats> {
        let mut tx = self.scoped(scope.company()).await?;
        let r = sqlx::query(
            "SELECT count(*) FILTER (WHERE m.archived_at IS NULL) AS live, \
             count(*) FILTER (WHERE m.archived_at IS NOT NULL) AS archived, \
             count(v.memory_id) FILTER (WHERE m.archived_at IS NULL) AS embedded \
             FROM memories m LEFT JOIN memory_vectors v \
             ON v.memory_id = m.id AND v.company_id = m.company_id AND v.model = $2 \
             WHERE m.company_id = $1",
        )
        .bind(scope.company().as_str())
        .bind(model)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        let count = |c: &str| -> Result<u64> {
            let n: i64 = r.try_get(c)?;
            u64::try_from(n).map_err(|e| corrupt(c, e))
        };
        Ok(MemoryStats {
            live: count("live")?,
            archived: count("archived")?,
            embedded: count("embedded")?,
        })
    }

    async fn claim_embed_jobs(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<EmbedJob>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = now.trunc_subsecs(6);
        // A lease is held through its last instant, as a task's is. Rows
        // another claimer has locked are skipped, not waited for.
        let rows = sqlx::query(
            "UPDATE memory_embed_queue q SET claimed_until = $2 \
             FROM (SELECT memory_id FROM memory_embed_queue \
                   WHERE claimed_until IS NULL OR claimed_until < $1 \
                   ORDER BY queued_at, memory_id LIMIT $3 FOR UPDATE SKIP LOCKED) c \
             WHERE q.memory_id = c.memory_id \
             RETURNING q.company_id, q.memory_id, q.queued_at",
        )
        .bind(now)
        .bind(now + EMBED_LEASE)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        let mut jobs = rows
            .iter()
            .map(|r| {
                let queued_at: DateTime<Utc> = r.try_get("queued_at")?;
                Ok((
                    queued_at,
                    EmbedJob {
                        company_id: company_id(r.try_get("company_id")?)?,
                        memory_id: r.try_get("memory_id")?,
                    },
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        // RETURNING follows no ORDER BY.
        jobs.sort_by_key(|(at, j)| (*at, j.memory_id));
        Ok(jobs.into_iter().map(|(_, j)| j).collect())
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
        sqlx::query(
            "DELETE FROM memory_embed_queue WHERE company_id = $1 AND memory_id = ANY ($2)",
        )
        .bind(scope.company().as_str())
        .bind(ids)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn listed_names(
        &self,
        scope: &CompanyScope,
        limit: u32,
    ) -> Result<Vec<(NameKind, String)>> {
        let mut tx = self.scoped(scope.company()).await?;
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT DISTINCT kind, name FROM memory_names WHERE company_id = $1 \
             ORDER BY kind, name LIMIT $2",
        )
        .bind(scope.company().as_str())
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.into_iter()
            .map(|(kind, name)| {
                let kind = NameKind::parse(&kind).ok_or_else(|| corrupt("name kind", &kind))?;
                Ok((kind, name))
            })
            .collect()
    }

    async fn memory_vectors(
        &self,
        scope: &CompanyScope,
        model: &str,
        filter: &MemoryFilter,
    ) -> Result<Vec<MemoryVector>> {
        let company = scope.company().as_str().to_owned();
        let mut qb = QueryBuilder::<Postgres>::new(
            "SELECT v.memory_id, v.vector FROM memory_vectors v JOIN memories m ON m.id = v.memory_id \
             WHERE v.company_id = ",
        );
        qb.push_bind(company.clone())
            .push(" AND v.model = ")
            .push_bind(model.to_owned())
            .push(" AND m.company_id = ")
            .push_bind(company);
        push_filter(&mut qb, filter);
        qb.push(" ORDER BY v.memory_id");
        let mut tx = self.scoped(scope.company()).await?;
        let rows = qb.build().fetch_all(&mut *tx).await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                let bytes: Vec<u8> = r.try_get("vector")?;
                Ok(MemoryVector {
                    memory_id: r.try_get("memory_id")?,
                    vector: decode_vector(&bytes)
                        .ok_or_else(|| corrupt("vector", "length is not a multiple of 4"))?,
                })
            })
            .collect()
    }
}
