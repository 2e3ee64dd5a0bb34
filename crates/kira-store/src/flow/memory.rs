//! Episodic memory, written once for both backends: [`MemoryStore`] for
//! every [`Db`], its rows, and the lists' filters, built once onto either
//! driver's query builder. What differs stays with each dialect
//! ([`MemorySql`]): the batch insert (SQLite's one command, PostgreSQL's
//! `unnest`), full-text search (FTS5 vs tsvector) and the vectors' write
//! (a statement per vector; one over `unnest`). A list of ids is a JSON
//! array read with `json_each` on SQLite and an array on PostgreSQL
//! (`q_each`), so each statement's text stays fixed whatever the number of
//! ids.

use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use kira_core::CompanyId;
use kira_core::ValidationError;
use kira_core::audit::AuditRecord;
use kira_core::auth::{AdminScope, CompanyScope};
use kira_core::conflict::NameKind;
use kira_core::memory::retention::FactCheck;
use kira_core::memory::{EventType, Memory, Workstream};
use uuid::Uuid;

use sqlx::QueryBuilder;

use crate::flow::store::Db;
use crate::memory::*;
use crate::sql::{Arg, Columns, Conn, Dialect, q, q_each};
use crate::{DeletedRows, Result, StoreError};

/// What each dialect writes its own way for memory.
#[async_trait]
pub(crate) trait MemorySql: Dialect {
    /// Inserts the rows (already checked to be `company`'s), queues each
    /// for embedding and records the names they mention, in one command
    /// (SQLite) or one statement over `unnest` per table (PostgreSQL).
    /// Conflict on an id already stored; NotFound when the company does
    /// not exist.
    async fn insert_memories(
        c: &mut Self::Connection,
        company: &CompanyId,
        memories: &[Memory],
    ) -> Result<()>;

    /// The company's memories that hold any of `words` (not empty) and
    /// pass `filter`, best first, at most `limit` (above 0).
    async fn search_memories(
        c: &mut Self::Connection,
        company: &CompanyId,
        words: &[String],
        filter: &MemoryFilter,
        limit: u32,
    ) -> Result<Vec<TextHit>>;

    /// Stores the vectors (not empty) of the company's memories and takes
    /// those memories out of the embedding queue.
    async fn put_vectors(
        c: &mut Self::Connection,
        company: &CompanyId,
        model: &str,
        vectors: &[MemoryVector],
    ) -> Result<()>;
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// The columns [`memory_from_row`] reads, of `memories m`.
pub(crate) const MEMORY_COLUMNS: &str = "m.id, m.company_id, m.occurred_at, m.event_type, \
     m.workstream, m.category, m.content, m.importance, m.indexed_terms, m.source, m.created_at, \
     m.archived_at, m.compacted_from, m.supersedes";

pub(crate) fn memory_from_row<R: Columns + ?Sized>(r: &R) -> Result<Memory> {
    let company = r.text("company_id")?;
    let event_type = r.text("event_type")?;
    let workstream = r.text("workstream")?;
    Ok(Memory {
        id: r.uuid("id")?,
        company_id: CompanyId::parse(&company)
            .map_err(|e| corrupt(&format!("company id {company:?}"), e))?,
        occurred_at: r.time("occurred_at")?,
        event_type: EventType::parse(&event_type).map_err(|e| corrupt("event type", e))?,
        workstream: Workstream::parse(&workstream).map_err(|e| corrupt("workstream", e))?,
        category: r.text("category")?,
        content: r.json("content")?,
        importance: i16::try_from(r.int("importance")?).map_err(|e| corrupt("importance", e))?,
        indexed_terms: r.texts("indexed_terms")?,
        source: r.opt_text("source")?,
        created_at: r.time("created_at")?,
        archived_at: r.opt_time("archived_at")?,
        compacted_from: r.uuids("compacted_from")?,
        supersedes: r.opt_uuid("supersedes")?,
    })
}

pub(crate) async fn get(c: &mut dyn Conn, company: &CompanyId, id: Uuid) -> Result<Memory> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!("SELECT {MEMORY_COLUMNS} FROM memories m WHERE m.company_id = $1 AND m.id = $2")
    });
    memory_from_row(&c.one(q(SQL.as_str()).arg(company.as_str()).arg(id)).await?)
}

/// Those of `ids` that are the company's, in no order.
pub(crate) async fn get_many(
    c: &mut dyn Conn,
    company: &CompanyId,
    ids: &[Uuid],
) -> Result<Vec<Memory>> {
    static SQLITE: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {MEMORY_COLUMNS} FROM memories m \
             WHERE m.company_id = $1 AND m.id IN (SELECT value FROM json_each($2))"
        )
    });
    static PG: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {MEMORY_COLUMNS} FROM memories m WHERE m.company_id = $1 AND m.id = ANY ($2)"
        )
    });
    let rows = c
        .all(
            q_each(SQLITE.as_str(), PG.as_str())
                .arg(company.as_str())
                .arg(ids),
        )
        .await?;
    rows.iter().map(memory_from_row).collect()
}

/// Archives (`Some`) or restores (`None`) those of `ids` that are the
/// company's and in the other state; how many changed. On PostgreSQL the
/// rows are locked in id order first, so two archivers of overlapping sets
/// queue rather than deadlock, and the second sees the first's result.
pub(crate) async fn set_archived(
    c: &mut dyn Conn,
    company: &CompanyId,
    ids: &[Uuid],
    archived_at: Option<DateTime<Utc>>,
) -> Result<u64> {
    let s = match archived_at {
        Some(_) => q_each(
            "UPDATE memories SET archived_at = $3 WHERE company_id = $1 AND archived_at IS NULL \
             AND id IN (SELECT value FROM json_each($2))",
            "UPDATE memories SET archived_at = $3 WHERE company_id = $1 AND archived_at IS NULL \
             AND id IN (SELECT id FROM memories WHERE company_id = $1 AND id = ANY ($2) \
                        AND archived_at IS NULL ORDER BY id FOR UPDATE)",
        ),
        None => q_each(
            "UPDATE memories SET archived_at = $3 WHERE company_id = $1 AND archived_at IS NOT NULL \
             AND id IN (SELECT value FROM json_each($2))",
            "UPDATE memories SET archived_at = $3 WHERE company_id = $1 AND archived_at IS NOT NULL \
             AND id IN (SELECT id FROM memories WHERE company_id = $1 AND id = ANY ($2) \
                        AND archived_at IS NOT NULL ORDER BY id FOR UPDATE)",
        ),
    };
    c.exec(
        s.arg(company.as_str())
            .arg(ids)
            .arg(archived_at.map(|t| t.trunc_subsecs(6))),
    )
    .await
}

/// Archives a summary's `sources` at `at`, marking them with the summary's
/// id; a conflict (the caller rolls back) when one is not a live memory of
/// the company. The summary itself is the caller's to insert.
pub(crate) async fn archive_sources(
    c: &mut dyn Conn,
    company: &CompanyId,
    sources: &[Uuid],
    summary: Uuid,
    at: DateTime<Utc>,
) -> Result<()> {
    let n = set_archived(c, company, sources, Some(at)).await?;
    if n != sources.len() as u64 {
        return Err(StoreError::Conflict(
            "a source of the summary is not a live memory of this company".into(),
        ));
    }
    c.exec(
        q_each(
            "UPDATE memories SET summary_id = $3 WHERE company_id = $1 \
             AND id IN (SELECT value FROM json_each($2))",
            "UPDATE memories SET summary_id = $3 WHERE company_id = $1 AND id = ANY ($2)",
        )
        .arg(company.as_str())
        .arg(sources)
        .arg(summary),
    )
    .await?;
    Ok(())
}

/// Deletes the company's memory; the vector and the queue entry go by the
/// foreign keys' cascade.
pub(crate) async fn delete(c: &mut dyn Conn, company: &CompanyId, id: Uuid) -> Result<()> {
    let n = c
        .exec(
            q("DELETE FROM memories WHERE company_id = $1 AND id = $2")
                .arg(company.as_str())
                .arg(id),
        )
        .await?;
    if n == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// Deletes the company's memories archived before `before`, never a
/// summary's sources; how many went.
pub(crate) async fn purge_archived(
    c: &mut dyn Conn,
    company: &CompanyId,
    before: DateTime<Utc>,
) -> Result<u64> {
    c.exec(
        q(
            "DELETE FROM memories WHERE company_id = $1 AND archived_at IS NOT NULL \
           AND archived_at < $2 AND summary_id IS NULL",
        )
        .arg(company.as_str())
        .arg(before),
    )
    .await
}

pub(crate) async fn stats(
    c: &mut dyn Conn,
    company: &CompanyId,
    model: &str,
) -> Result<MemoryStats> {
    let r = c
        .one(
            q(
                "SELECT count(*) FILTER (WHERE m.archived_at IS NULL) AS live, \
               count(*) FILTER (WHERE m.archived_at IS NOT NULL) AS archived, \
               count(v.memory_id) FILTER (WHERE m.archived_at IS NULL) AS embedded \
               FROM memories m LEFT JOIN memory_vectors v \
               ON v.memory_id = m.id AND v.company_id = m.company_id AND v.model = $2 \
               WHERE m.company_id = $1",
            )
            .arg(company.as_str())
            .arg(model),
        )
        .await?;
    let count = |col: &str| -> Result<u64> {
        let n = r.int(col)?;
        u64::try_from(n).map_err(|e| corrupt(col, e))
    };
    Ok(MemoryStats {
        live: count("live")?,
        archived: count("archived")?,
        embedded: count("embedded")?,
    })
}

/// Leases up to `limit` jobs of the embedding queue, of every company,
/// oldest first. A lease is held through its last instant, as a task's
/// is. On PostgreSQL rows another claimer has locked are skipped, not
/// waited for.
pub(crate) async fn claim_embed_jobs(
    c: &mut dyn Conn,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<Vec<EmbedJob>> {
    let now = now.trunc_subsecs(6);
    let rows = c
        .all(
            q_each(
                "UPDATE memory_embed_queue SET claimed_until = $2 WHERE memory_id IN ( \
                     SELECT memory_id FROM memory_embed_queue \
                     WHERE claimed_until IS NULL OR claimed_until < $1 \
                     ORDER BY queued_at, memory_id LIMIT $3) \
                 RETURNING company_id, memory_id, queued_at",
                "UPDATE memory_embed_queue q SET claimed_until = $2 \
                 FROM (SELECT memory_id FROM memory_embed_queue \
                       WHERE claimed_until IS NULL OR claimed_until < $1 \
                       ORDER BY queued_at, memory_id LIMIT $3 FOR UPDATE SKIP LOCKED) c \
                 WHERE q.memory_id = c.memory_id \
                 RETURNING q.company_id, q.memory_id, q.queued_at",
            )
            .arg(now)
            .arg(now + EMBED_LEASE)
            .arg(i64::from(limit)),
        )
        .await?;
    let mut jobs = rows
        .iter()
        .map(|r| {
            let company = r.text("company_id")?;
            Ok((
                r.time("queued_at")?,
                EmbedJob {
                    company_id: CompanyId::parse(&company)
                        .map_err(|e| corrupt(&format!("company id {company:?}"), e))?,
                    memory_id: r.uuid("memory_id")?,
                },
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    // RETURNING follows no ORDER BY.
    jobs.sort_by_key(|(at, j)| (*at, j.memory_id));
    Ok(jobs.into_iter().map(|(_, j)| j).collect())
}

/// Takes the company's memories out of the embedding queue.
pub(crate) async fn drop_embed_jobs(
    c: &mut dyn Conn,
    company: &CompanyId,
    ids: &[Uuid],
) -> Result<()> {
    c.exec(
        q_each(
            "DELETE FROM memory_embed_queue WHERE company_id = $1 \
             AND memory_id IN (SELECT value FROM json_each($2))",
            "DELETE FROM memory_embed_queue WHERE company_id = $1 AND memory_id = ANY ($2)",
        )
        .arg(company.as_str())
        .arg(ids),
    )
    .await?;
    Ok(())
}

/// The names the company's memories mention, by kind and name.
pub(crate) async fn listed_names(
    c: &mut dyn Conn,
    company: &CompanyId,
    limit: u32,
) -> Result<Vec<(NameKind, String)>> {
    let rows = c
        .all(
            q(
                "SELECT DISTINCT kind, name FROM memory_names WHERE company_id = $1 \
               ORDER BY kind, name LIMIT $2",
            )
            .arg(company.as_str())
            .arg(i64::from(limit)),
        )
        .await?;
    rows.iter()
        .map(|r| {
            let kind = r.text("kind")?;
            let kind = NameKind::parse(&kind).ok_or_else(|| corrupt("name kind", &kind))?;
            Ok((kind, r.text("name")?))
        })
        .collect()
}

/// A memory's vector, of a row with `memory_id` and `vector`.
pub(crate) fn vector_from_row<R: Columns + ?Sized>(r: &R) -> Result<crate::memory::MemoryVector> {
    Ok(crate::memory::MemoryVector {
        memory_id: r.uuid("memory_id")?,
        vector: crate::memory::decode_vector(&r.bytes("vector")?)
            .ok_or_else(|| corrupt("vector", "length is not a multiple of 4"))?,
    })
}

/// Appends `sql` and binds `a` after it.
fn push<'a, DB: Dialect>(qb: &mut QueryBuilder<DB>, sql: &str, a: impl Into<Arg<'a>>) {
    qb.push(sql);
    DB::push_arg(qb, a.into());
}

/// The narrowing of a [`MemoryFilter`], appended to a query over
/// `memories m` whose WHERE has begun.
pub(crate) fn push_filter<DB: Dialect>(qb: &mut QueryBuilder<DB>, f: &MemoryFilter) {
    if let Some(t) = f.event_type {
        push(qb, " AND m.event_type = ", t.as_str());
    }
    if let Some(w) = f.workstream {
        push(qb, " AND m.workstream = ", w.as_str());
    }
    if let Some(c) = &f.category {
        push(qb, " AND m.category = ", c);
    }
    if let Some(t) = f.from {
        push(qb, " AND m.occurred_at >= ", t);
    }
    if let Some(t) = f.until {
        push(qb, " AND m.occurred_at < ", t);
    }
    if let Some(i) = f.min_importance {
        push(qb, " AND m.importance >= ", i64::from(i));
    }
    if let Some(t) = &f.term {
        let (before, after) = DB::each(
            (
                " AND EXISTS (SELECT 1 FROM json_each(m.indexed_terms) WHERE value = ",
                ")",
            ),
            (" AND ", " = ANY (m.indexed_terms)"),
        );
        push(qb, before, t.to_lowercase().as_str());
        qb.push(after);
    }
    qb.push(match f.archived {
        Archived::Exclude => " AND m.archived_at IS NULL",
        Archived::Include => "",
        Archived::Only => " AND m.archived_at IS NOT NULL",
        Archived::LiveOrSummarized => " AND (m.archived_at IS NULL OR m.summary_id IS NOT NULL)",
    });
}

/// The company's memories that pass `filter`, newest first, after `after`.
pub(crate) fn list_query<DB: Dialect>(
    company: &CompanyId,
    filter: &MemoryFilter,
    after: Option<MemoryCursor>,
    limit: u32,
) -> QueryBuilder<DB> {
    static SQL: LazyLock<String> =
        LazyLock::new(|| format!("SELECT {MEMORY_COLUMNS} FROM memories m WHERE m.company_id = "));
    let mut qb = QueryBuilder::new(SQL.as_str());
    DB::push_arg(&mut qb, company.as_str().into());
    push_filter(&mut qb, filter);
    if let Some(c) = after {
        push(&mut qb, " AND (m.occurred_at, m.id) < (", c.occurred_at);
        push(&mut qb, ", ", c.id);
        qb.push(")");
    }
    push(
        &mut qb,
        " ORDER BY m.occurred_at DESC, m.id DESC LIMIT ",
        i64::from(limit),
    );
    qb
}

/// The first pages of `lists` in one statement, each list a subquery
/// tagged with its place (`part`), since every statement is a round trip
/// (to SQLite's connection thread; to PostgreSQL's server); `None` when no
/// list asks for any.
pub(crate) fn list_many_query<DB: Dialect>(
    company: &CompanyId,
    lists: &[(MemoryFilter, u32)],
) -> Option<QueryBuilder<DB>> {
    static SQLITE: LazyLock<String> = LazyLock::new(|| {
        format!(" AS part, {MEMORY_COLUMNS} FROM memories m WHERE m.company_id = ")
    });
    static PG: LazyLock<String> = LazyLock::new(|| {
        format!("::int8 AS part, {MEMORY_COLUMNS} FROM memories m WHERE m.company_id = ")
    });
    let mut qb = QueryBuilder::new("");
    let mut any = false;
    for (i, (filter, limit)) in lists.iter().enumerate() {
        if *limit == 0 {
            continue;
        }
        if any {
            qb.push(" UNION ALL ");
        }
        any = true;
        push(
            &mut qb,
            "SELECT * FROM (SELECT ",
            i64::try_from(i).unwrap_or(i64::MAX),
        );
        push(
            &mut qb,
            DB::each(SQLITE.as_str(), PG.as_str()),
            company.as_str(),
        );
        push_filter(&mut qb, filter);
        push(
            &mut qb,
            " ORDER BY m.occurred_at DESC, m.id DESC LIMIT ",
            i64::from(*limit),
        );
        qb.push(DB::each(")", ") AS l"));
    }
    any.then_some(qb)
}

/// The company's vectors of `model`, of the memories that pass `filter`.
pub(crate) fn vectors_query<DB: Dialect>(
    company: &CompanyId,
    model: &str,
    filter: &MemoryFilter,
) -> QueryBuilder<DB> {
    let mut qb = QueryBuilder::new(
        "SELECT v.memory_id, v.vector FROM memory_vectors v JOIN memories m ON m.id = v.memory_id \
         WHERE v.company_id = ",
    );
    DB::push_arg(&mut qb, company.as_str().into());
    push(&mut qb, " AND v.model = ", model);
    push(&mut qb, " AND m.company_id = ", company.as_str());
    push_filter(&mut qb, filter);
    qb.push(" ORDER BY v.memory_id");
    qb
}

/// Removes the company's memory rows from all three tables (the forced
/// company delete); on SQLite the full-text rows go with them by trigger.
pub(crate) async fn delete_company_memory(
    c: &mut dyn Conn,
    company: &CompanyId,
    deleted: &mut DeletedRows,
) -> Result<()> {
    crate::flow::company::delete_rows(c, company, crate::flow::company::MEMORY_ROWS, deleted).await
}

#[async_trait]
impl<D: Db> MemoryStore for D {
    async fn insert_memories(
        &self,
        scope: &CompanyScope,
        memories: &[Memory],
        audit: AuditRecord,
    ) -> Result<()> {
        check_batch(scope, memories)?;
        let mut tx = self.write_for(scope.company()).await?;
        D::Sql::insert_memories(&mut tx, scope.company(), memories).await?;
        tx.audit(audit).await?;
        D::commit(tx).await
    }

    async fn get_memory(&self, scope: &CompanyScope, id: Uuid) -> Result<Memory> {
        let mut r = self.read_for(scope.company()).await?;
        let memory = get(&mut r, scope.company(), id).await?;
        D::end_read(r).await?;
        Ok(memory)
    }

    async fn get_memories(&self, scope: &CompanyScope, ids: &[Uuid]) -> Result<Vec<Memory>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut r = self.read_for(scope.company()).await?;
        let memories = get_many(&mut r, scope.company(), ids).await?;
        D::end_read(r).await?;
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
        let qb = list_query::<D::Sql>(scope.company(), filter, after, limit);
        let mut r = self.read_for(scope.company()).await?;
        let rows = D::Sql::fetch(&mut r, qb).await?;
        D::end_read(r).await?;
        rows.iter().map(memory_from_row).collect()
    }

    async fn list_memories_many(
        &self,
        scope: &CompanyScope,
        lists: &[(MemoryFilter, u32)],
    ) -> Result<Vec<Vec<Memory>>> {
        let Some(qb) = list_many_query::<D::Sql>(scope.company(), lists) else {
            return Ok(lists.iter().map(|_| Vec::new()).collect());
        };
        let mut r = self.read_for(scope.company()).await?;
        let rows = D::Sql::fetch(&mut r, qb).await?;
        D::end_read(r).await?;
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
        let mut r = self.read_for(scope.company()).await?;
        let hits = D::Sql::search_memories(&mut r, scope.company(), &words, filter, limit).await?;
        D::end_read(r).await?;
        Ok(hits)
    }

    async fn set_archived(
        &self,
        scope: &CompanyScope,
        ids: &[Uuid],
        archived_at: Option<DateTime<Utc>>,
        audit: AuditRecord,
    ) -> Result<u64> {
        let mut tx = self.write_for(scope.company()).await?;
        let n = set_archived(&mut tx, scope.company(), ids, archived_at).await?;
        tx.audit(audit).await?;
        D::commit(tx).await?;
        Ok(n)
    }

    async fn delete_memory(
        &self,
        scope: &CompanyScope,
        id: Uuid,
        audit: AuditRecord,
    ) -> Result<()> {
        let mut tx = self.write_for(scope.company()).await?;
        delete(&mut tx, scope.company(), id).await?;
        tx.audit(audit).await?;
        D::commit(tx).await
    }

    async fn replace_with_summary(
        &self,
        scope: &CompanyScope,
        summary: &Memory,
        check: FactCheck,
        at: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<()> {
        let sources = summary_sources(scope, summary)?;
        if check.kept < 0 || check.kept > check.facts {
            return Err(StoreError::Invalid(ValidationError::new(
                "check",
                "kept must be between 0 and the facts checked",
            )));
        }
        let company = scope.company();
        let mut tx = self.write_for(company).await?;
        // Dropping the transaction on an error rolls the archiving back.
        archive_sources(&mut tx, company, &sources, summary.id, at).await?;
        D::Sql::insert_memories(&mut tx, company, std::slice::from_ref(summary)).await?;
        tx.exec(
            q(
                "INSERT INTO compaction_checks (company_id, summary_id, at, sources, facts, kept) \
               VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .arg(company.as_str())
            .arg(summary.id)
            .arg(at.trunc_subsecs(6))
            .arg(sources.len() as i64)
            .arg(check.facts)
            .arg(check.kept),
        )
        .await?;
        tx.audit(audit).await?;
        D::commit(tx).await
    }

    async fn retention(
        &self,
        scope: &CompanyScope,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<FactCheck> {
        let company = scope.company();
        let mut r = self.read_for(company).await?;
        let found = r
            .opt(
                q("SELECT CAST(coalesce(sum(facts), 0) AS BIGINT) AS facts, \
                     CAST(coalesce(sum(kept), 0) AS BIGINT) AS kept \
                   FROM compaction_checks WHERE company_id = $1 AND at >= $2 AND at <= $3")
                .arg(company.as_str())
                .arg(from.trunc_subsecs(6))
                .arg(to.trunc_subsecs(6)),
            )
            .await;
        D::end_read(r).await?;
        Ok(match found? {
            Some(row) => FactCheck {
                facts: row.int("facts")?,
                kept: row.int("kept")?,
            },
            None => FactCheck::default(),
        })
    }

    async fn retention_totals(&self, _admin: &AdminScope) -> Result<Vec<(String, FactCheck)>> {
        let mut r = self.read_all(false).await?;
        let found = r
            .all(q(
                "SELECT company_id, CAST(sum(facts) AS BIGINT) AS facts, \
                   CAST(sum(kept) AS BIGINT) AS kept \
                 FROM compaction_checks GROUP BY company_id ORDER BY company_id",
            ))
            .await;
        D::end_read(r).await?;
        found?
            .iter()
            .map(|row| {
                Ok((
                    row.text("company_id")?,
                    FactCheck {
                        facts: row.int("facts")?,
                        kept: row.int("kept")?,
                    },
                ))
            })
            .collect()
    }

    async fn purge_archived(
        &self,
        scope: &CompanyScope,
        before: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<u64> {
        let mut tx = self.write_for(scope.company()).await?;
        let n = purge_archived(&mut tx, scope.company(), before).await?;
        tx.audit(audit).await?;
        D::commit(tx).await?;
        Ok(n)
    }

    async fn memory_stats(&self, scope: &CompanyScope, model: &str) -> Result<MemoryStats> {
        let mut r = self.read_for(scope.company()).await?;
        let found = stats(&mut r, scope.company(), model).await?;
        D::end_read(r).await?;
        Ok(found)
    }

    async fn claim_embed_jobs(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<EmbedJob>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // The queue has no policies: no company to name.
        let mut c = self.write_plain().await?;
        let jobs = claim_embed_jobs(&mut c, now, limit).await?;
        D::end_plain_write(c).await?;
        Ok(jobs)
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
        let mut tx = self.write_for(scope.company()).await?;
        D::Sql::put_vectors(&mut tx, scope.company(), model, vectors).await?;
        D::commit(tx).await
    }

    async fn drop_embed_jobs(&self, scope: &CompanyScope, ids: &[Uuid]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut c = self.write_plain().await?;
        drop_embed_jobs(&mut c, scope.company(), ids).await?;
        D::end_plain_write(c).await
    }

    async fn listed_names(
        &self,
        scope: &CompanyScope,
        limit: u32,
    ) -> Result<Vec<(NameKind, String)>> {
        let mut r = self.read_for(scope.company()).await?;
        let names = listed_names(&mut r, scope.company(), limit).await?;
        D::end_read(r).await?;
        Ok(names)
    }

    async fn memory_vectors(
        &self,
        scope: &CompanyScope,
        model: &str,
        filter: &MemoryFilter,
    ) -> Result<Vec<MemoryVector>> {
        let qb = vectors_query::<D::Sql>(scope.company(), model, filter);
        let mut r = self.read_for(scope.company()).await?;
        let rows = D::Sql::fetch(&mut r, qb).await?;
        D::end_read(r).await?;
        rows.iter().map(vector_from_row).collect()
    }
}
