//! The shared knowledge base on PostgreSQL: `knowledge` with a generated,
//! weighted tsvector under a GIN index, and `knowledge_vectors`. No
//! row-level security: the rows belong to no company. Also the conflict
//! flags, which only the admin path reads.

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use kira_core::audit::AuditRecord;
use kira_core::auth::AdminScope;
use kira_core::conflict::{Conflict, ConflictStatus, canonical_pair, normalise_counterparty};
use kira_core::knowledge::KnowledgeEntry;
use kira_core::{CompanyId, ValidationError};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::memory::{TSQUERY_AFTER, TSQUERY_BEFORE};
use super::{PgStore, UNIQUE_VIOLATION, append, company_id, sqlstate};
use crate::conflicts::{
    ConflictStore, CounterpartyMatch, MENTION_ROWS_PER_KEY, SCAN_IDS_PER_MATCH, check_scan_keys,
    flag_records, group_matches, mention_keys, merged_ids, scan_records, text_names,
};
use crate::knowledge::{
    KnowledgeCursor, KnowledgeFilter, KnowledgeHit, KnowledgeStore, KnowledgeVector, check_batch,
};
use crate::memory::{decode_vector, encode_vector, query_words};
use crate::{Result, StoreError};

const COLUMNS: &str = "k.id, k.domain, k.key, k.title, k.body, k.tags, k.jurisdiction, k.industry, \
     k.created_at, k.updated_at";

fn entry_from_row(r: &PgRow) -> Result<KnowledgeEntry> {
    Ok(KnowledgeEntry {
        id: r.try_get("id")?,
        domain: r.try_get("domain")?,
        key: r.try_get("key")?,
        title: r.try_get("title")?,
        body: r.try_get("body")?,
        tags: r.try_get("tags")?,
        jurisdiction: r.try_get("jurisdiction")?,
        industry: r.try_get("industry")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn push_filter(qb: &mut QueryBuilder<Postgres>, f: &KnowledgeFilter) {
    if let Some(d) = &f.domain {
        qb.push(" AND k.domain = ").push_bind(d.clone());
    }
    if let Some(t) = &f.tag {
        qb.push(" AND ")
            .push_bind(t.to_lowercase())
            .push(" = ANY (k.tags)");
    }
    if let Some(j) = &f.jurisdiction {
        qb.push(" AND k.jurisdiction = ").push_bind(j.clone());
    }
    if let Some(i) = &f.industry {
        qb.push(" AND k.industry = ")
            .push_bind(i.trim().to_lowercase());
    }
}

/// Inserts or updates one entry by (domain, key); the entry as stored.
async fn upsert_one(tx: &mut PgConnection, e: &KnowledgeEntry) -> Result<KnowledgeEntry> {
    let now = e.updated_at.trunc_subsecs(6);
    // The row lock holds off a concurrent upsert of the same pair until
    // this transaction ends; a concurrent insert of a new pair meets the
    // unique key instead.
    let existing = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM knowledge k WHERE k.domain = $1 AND k.key = $2 FOR UPDATE"
    )))
    .bind(&e.domain)
    .bind(&e.key)
    .fetch_optional(&mut *tx)
    .await?
    .as_ref()
    .map(entry_from_row)
    .transpose()?;
    match existing {
        Some(old) => {
            sqlx::query(
                "UPDATE knowledge SET title = $1, body = $2, tags = $3, jurisdiction = $4, \
                 industry = $5, updated_at = $6 WHERE id = $7",
            )
            .bind(&e.title)
            .bind(&e.body)
            .bind(&e.tags)
            .bind(&e.jurisdiction)
            .bind(&e.industry)
            .bind(now)
            .bind(old.id)
            .execute(&mut *tx)
            .await?;
            if (&old.title, &old.body, &old.tags) != (&e.title, &e.body, &e.tags) {
                sqlx::query("DELETE FROM knowledge_vectors WHERE entry_id = $1")
                    .bind(old.id)
                    .execute(&mut *tx)
                    .await?;
            }
            Ok(KnowledgeEntry {
                id: old.id,
                created_at: old.created_at,
                updated_at: now,
                ..e.clone()
            })
        }
        None => {
            sqlx::query(
                "INSERT INTO knowledge (id, domain, key, title, body, tags, jurisdiction, \
                 industry, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
            )
            .bind(e.id)
            .bind(&e.domain)
            .bind(&e.key)
            .bind(&e.title)
            .bind(&e.body)
            .bind(&e.tags)
            .bind(&e.jurisdiction)
            .bind(&e.industry)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|err| match sqlstate(&err).as_deref() {
                Some(UNIQUE_VIOLATION) => StoreError::Conflict(format!(
                    "knowledge entry {}/{} was written concurrently; try again",
                    e.domain, e.key
                )),
                _ => err.into(),
            })?;
            Ok(KnowledgeEntry {
                created_at: now,
                updated_at: now,
                ..e.clone()
            })
        }
    }
}

#[async_trait]
impl KnowledgeStore for PgStore {
    async fn upsert_knowledge(
        &self,
        _admin: &AdminScope,
        entries: &[KnowledgeEntry],
        audit: AuditRecord,
    ) -> Result<Vec<KnowledgeEntry>> {
        check_batch(entries)?;
        let mut tx = self.pool().begin().await?;
        let mut stored = Vec::with_capacity(entries.len());
        for e in entries {
            stored.push(upsert_one(&mut tx, e).await?);
        }
        append(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn get_knowledge(&self, id: Uuid) -> Result<KnowledgeEntry> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM knowledge k WHERE k.id = $1"
        )))
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .ok_or(StoreError::NotFound)?;
        entry_from_row(&row)
    }

    async fn list_knowledge(
        &self,
        filter: &KnowledgeFilter,
        after: Option<&KnowledgeCursor>,
        limit: u32,
    ) -> Result<Vec<KnowledgeEntry>> {
        let mut qb =
            QueryBuilder::<Postgres>::new(format!("SELECT {COLUMNS} FROM knowledge k WHERE true"));
        push_filter(&mut qb, filter);
        if let Some(c) = after {
            qb.push(" AND (k.domain, k.key) > (")
                .push_bind(c.domain.clone())
                .push(", ")
                .push_bind(c.key.clone())
                .push(")");
        }
        qb.push(" ORDER BY k.domain, k.key LIMIT ")
            .push_bind(i64::from(limit));
        let rows = qb.build().fetch_all(self.pool()).await?;
        rows.iter().map(entry_from_row).collect()
    }

    async fn search_knowledge(
        &self,
        query: &str,
        filter: &KnowledgeFilter,
        limit: u32,
    ) -> Result<Vec<KnowledgeHit>> {
        let words = query_words(query);
        if words.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let mut qb = QueryBuilder::<Postgres>::new("WITH q AS (SELECT ");
        qb.push(TSQUERY_BEFORE)
            .push_bind(words.join(" "))
            .push(TSQUERY_AFTER)
            .push(format!(
                " AS q) SELECT {COLUMNS}, ts_rank_cd(k.search, q.q)::float8 AS relevance \
                 FROM knowledge k, q WHERE k.search @@ q.q"
            ));
        push_filter(&mut qb, filter);
        qb.push(" ORDER BY relevance DESC, k.id LIMIT ")
            .push_bind(i64::from(limit));
        let rows = qb.build().fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| {
                Ok(KnowledgeHit {
                    entry: entry_from_row(r)?,
                    relevance: r.try_get("relevance")?,
                })
            })
            .collect()
    }

    async fn delete_knowledge(
        &self,
        _admin: &AdminScope,
        id: Uuid,
        audit: AuditRecord,
    ) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        let n = sqlx::query("DELETE FROM knowledge WHERE id = $1")
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

    async fn knowledge_without_vectors(
        &self,
        model: &str,
        limit: u32,
    ) -> Result<Vec<KnowledgeEntry>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM knowledge k WHERE NOT EXISTS \
             (SELECT 1 FROM knowledge_vectors v WHERE v.entry_id = k.id AND v.model = $1) \
             ORDER BY k.created_at, k.id LIMIT $2"
        )))
        .bind(model)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(entry_from_row).collect()
    }

    async fn put_knowledge_vectors(
        &self,
        _admin: &AdminScope,
        model: &str,
        vectors: &[KnowledgeVector],
    ) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        for v in vectors {
            sqlx::query(
                "INSERT INTO knowledge_vectors (entry_id, model, vector) \
                 SELECT id, $1, $2 FROM knowledge WHERE id = $3 \
                 ON CONFLICT (entry_id, model) DO UPDATE SET vector = excluded.vector",
            )
            .bind(model)
            .bind(encode_vector(&v.vector))
            .bind(v.entry_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn knowledge_vectors(
        &self,
        model: &str,
        filter: &KnowledgeFilter,
    ) -> Result<Vec<KnowledgeVector>> {
        let mut qb = QueryBuilder::<Postgres>::new(
            "SELECT v.entry_id, v.vector FROM knowledge_vectors v \
             JOIN knowledge k ON k.id = v.entry_id WHERE v.model = ",
        );
        qb.push_bind(model.to_owned());
        push_filter(&mut qb, filter);
        qb.push(" ORDER BY v.entry_id");
        let rows = qb.build().fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| {
                let bytes: Vec<u8> = r.try_get("vector")?;
                Ok(KnowledgeVector {
                    entry_id: r.try_get("entry_id")?,
                    vector: decode_vector(&bytes)
                        .ok_or_else(|| StoreError::Corrupt("vector length".into()))?,
                })
            })
            .collect()
    }
}

const CONFLICT_COLUMNS: &str = "id, company_a, company_b, counterparty, memory_ids, detected_at, \
     status, resolved_at, resolved_by, note";

fn conflict_from_row(r: &PgRow) -> Result<Conflict> {
    let status: &str = r.try_get("status")?;
    Ok(Conflict {
        id: r.try_get("id")?,
        company_a: super::company_id(r.try_get("company_a")?)?,
        company_b: super::company_id(r.try_get("company_b")?)?,
        counterparty: r.try_get("counterparty")?,
        memory_ids: r.try_get("memory_ids")?,
        detected_at: r.try_get("detected_at")?,
        status: ConflictStatus::parse(status)
            .ok_or_else(|| StoreError::Corrupt(format!("conflict status {status:?}")))?,
        resolved_at: r.try_get("resolved_at")?,
        resolved_by: r.try_get("resolved_by")?,
        note: r.try_get("note")?,
    })
}

async fn load_conflict(tx: &mut PgConnection, id: Uuid, lock: bool) -> Result<Conflict> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {CONFLICT_COLUMNS} FROM conflicts WHERE id = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    )))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(StoreError::NotFound)?;
    conflict_from_row(&row)
}

/// Serialises flagging per (pair, counterparty) across processes, so two
/// detections of one conflict make one flag.
async fn lock_flag(tx: &mut PgConnection, a: &CompanyId, b: &CompanyId, cp: &str) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("conflict\u{1f}{a}\u{1f}{b}\u{1f}{cp}"))
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[async_trait]
impl ConflictStore for PgStore {
    async fn flag_conflict(
        &self,
        _admin: &AdminScope,
        id: Uuid,
        a: &CompanyId,
        b: &CompanyId,
        counterparty: &str,
        memory_ids: &[Uuid],
        at: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Option<Conflict>> {
        let (a, b) = canonical_pair(a, b).ok_or_else(|| {
            ValidationError::new("company_b", "a company is not in conflict with itself")
        })?;
        let counterparty = normalise_counterparty(counterparty);
        let mut tx = self.admin_read().await?;
        lock_flag(&mut tx, &a, &b, &counterparty).await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CONFLICT_COLUMNS} FROM conflicts WHERE company_a = $1 AND company_b = $2 \
             AND counterparty = $3 ORDER BY status = 'open' DESC, detected_at DESC"
        )))
        .bind(a.as_str())
        .bind(b.as_str())
        .bind(&counterparty)
        .fetch_all(&mut *tx)
        .await?;
        let flags = rows
            .iter()
            .map(conflict_from_row)
            .collect::<Result<Vec<_>>>()?;
        let changed = match flags.first() {
            Some(open) if open.status == ConflictStatus::Open => {
                match merged_ids(&open.memory_ids, memory_ids) {
                    Some(ids) => {
                        sqlx::query("UPDATE conflicts SET memory_ids = $1 WHERE id = $2")
                            .bind(&ids)
                            .bind(open.id)
                            .execute(&mut *tx)
                            .await?;
                        Some(open.id)
                    }
                    None => None,
                }
            }
            _ if flags
                .iter()
                .any(|f| merged_ids(&f.memory_ids, memory_ids).is_none()) =>
            {
                None
            }
            _ => {
                sqlx::query(
                    "INSERT INTO conflicts (id, company_a, company_b, counterparty, memory_ids, \
                     detected_at, status) VALUES ($1, $2, $3, $4, $5, $6, 'open')",
                )
                .bind(id)
                .bind(a.as_str())
                .bind(b.as_str())
                .bind(&counterparty)
                .bind(merged_ids(&[], memory_ids).unwrap_or_default())
                .bind(at.trunc_subsecs(6))
                .execute(&mut *tx)
                .await?;
                Some(id)
            }
        };
        let Some(changed) = changed else {
            return Ok(None);
        };
        let flag = load_conflict(&mut tx, changed, false).await?;
        for record in flag_records(audit, &flag, changed == id) {
            append(&mut tx, record).await?;
        }
        tx.commit().await?;
        Ok(Some(flag))
    }

    async fn list_conflicts(
        &self,
        _admin: &AdminScope,
        status: Option<ConflictStatus>,
        audit: AuditRecord,
    ) -> Result<Vec<Conflict>> {
        let mut tx = self.admin_read().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CONFLICT_COLUMNS} FROM conflicts WHERE ($1::text IS NULL OR status = $1) \
             ORDER BY detected_at DESC, id DESC"
        )))
        .bind(status.map(ConflictStatus::as_str))
        .fetch_all(&mut *tx)
        .await?;
        let flags = rows
            .iter()
            .map(conflict_from_row)
            .collect::<Result<Vec<_>>>()?;
        append(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(flags)
    }

    async fn resolve_conflict(
        &self,
        _admin: &AdminScope,
        id: Uuid,
        note: &str,
        at: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Conflict> {
        let mut tx = self.admin_read().await?;
        let flag = load_conflict(&mut tx, id, true).await?;
        if flag.status == ConflictStatus::Resolved {
            return Err(StoreError::Conflict(format!(
                "conflict {id} is already resolved"
            )));
        }
        sqlx::query(
            "UPDATE conflicts SET status = 'resolved', resolved_at = $1, resolved_by = $2, \
             note = $3 WHERE id = $4",
        )
        .bind(at.trunc_subsecs(6))
        .bind(&audit.actor)
        .bind(note)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let flag = load_conflict(&mut tx, id, false).await?;
        append(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(flag)
    }

    async fn conflict_open(
        &self,
        _admin: &AdminScope,
        a: &CompanyId,
        b: &CompanyId,
    ) -> Result<bool> {
        let Some((a, b)) = canonical_pair(a, b) else {
            return Ok(false);
        };
        let mut tx = self.admin_read().await?;
        let open: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM conflicts WHERE company_a = $1 AND company_b = $2 \
             AND status = 'open')",
        )
        .bind(a.as_str())
        .bind(b.as_str())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(open)
    }

    async fn conflict_partners(
        &self,
        _admin: &AdminScope,
        company: &CompanyId,
    ) -> Result<Vec<CompanyId>> {
        let mut tx = self.admin_read().await?;
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT company_b FROM conflicts WHERE company_a = $1 AND status = 'open' \
             UNION SELECT company_a FROM conflicts WHERE company_b = $1 AND status = 'open'",
        )
        .bind(company.as_str())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(|s| company_id(s)).collect()
    }

    async fn scan_counterparties(
        &self,
        _admin: &AdminScope,
        company: &CompanyId,
        keys: &[String],
        audit: AuditRecord,
    ) -> Result<Vec<CounterpartyMatch>> {
        check_scan_keys(keys)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // memory_names' conflict_scan policy shows counterparty rows, and
        // nothing else, to an admin_read transaction.
        let mut tx = self.admin_read().await?;
        let rows: Vec<(String, String, Uuid)> = sqlx::query_as(
            "SELECT key, company_id, memory_id FROM ( \
                 SELECT key, company_id, memory_id, row_number() OVER \
                     (PARTITION BY key, company_id ORDER BY memory_id) AS n \
                 FROM memory_names \
                 WHERE kind = 'counterparty' AND company_id <> $1 AND key = ANY ($2)) AS r \
             WHERE n <= $3 ORDER BY key, company_id, memory_id",
        )
        .bind(company.as_str())
        .bind(keys)
        .bind(SCAN_IDS_PER_MATCH as i64)
        .fetch_all(&mut *tx)
        .await?;
        let rows = rows
            .into_iter()
            .map(|(key, c, id)| Ok((key, company_id(&c)?, id)))
            .collect::<Result<Vec<_>>>()?;
        let matches = group_matches(rows);
        for record in scan_records(&audit, &matches) {
            append(&mut tx, record).await?;
        }
        tx.commit().await?;
        Ok(matches)
    }

    async fn scan_contract_mentions(
        &self,
        _admin: &AdminScope,
        company: &CompanyId,
        keys: &[String],
        audit: AuditRecord,
    ) -> Result<Vec<CounterpartyMatch>> {
        let keys = mention_keys(keys)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // The contract_mention_scan policy shows contract and deal
        // memories, and no others, to an admin_read transaction.
        let mut tx = self.admin_read().await?;
        let mut rows: Vec<(String, CompanyId, Uuid)> = Vec::new();
        for key in keys {
            let found: Vec<(String, Uuid, Option<String>)> = sqlx::query_as(
                "SELECT company_id, id, content ->> 'text' FROM memories \
                 WHERE search @@ phraseto_tsquery('english'::regconfig, $1) AND company_id <> $2 \
                   AND (event_type = 'contract' OR lower(category) LIKE '%contract%' \
                        OR lower(category) LIKE '%deal%') \
                 LIMIT $3",
            )
            .bind(key.as_str())
            .bind(company.as_str())
            .bind(MENTION_ROWS_PER_KEY)
            .fetch_all(&mut *tx)
            .await?;
            for (c, id, text) in found {
                if text.as_deref().is_some_and(|t| text_names(t, key)) {
                    rows.push((key.clone(), company_id(&c)?, id));
                }
            }
        }
        rows.sort();
        let matches = group_matches(rows);
        for record in scan_records(&audit, &matches) {
            append(&mut tx, record).await?;
        }
        tx.commit().await?;
        Ok(matches)
    }
}
