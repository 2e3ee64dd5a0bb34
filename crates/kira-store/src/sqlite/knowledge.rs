//! The shared knowledge base on SQLite: `knowledge`, its external-content
//! FTS5 table `knowledge_fts` (kept in step by the migration's triggers),
//! and `knowledge_vectors`; and the conflict flags.

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use kira_core::audit::AuditRecord;
use kira_core::auth::AdminScope;
use kira_core::conflict::{Conflict, ConflictStatus, canonical_pair, normalise_counterparty};
use kira_core::knowledge::KnowledgeEntry;
use kira_core::{CompanyId, ValidationError};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use uuid::Uuid;

use super::{SqliteStore, append, company_id, json, parse_ts, to_json, ts};
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

fn uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| StoreError::Corrupt(format!("uuid {s:?}: {e}")))
}

fn entry_from_row(r: &SqliteRow) -> Result<KnowledgeEntry> {
    Ok(KnowledgeEntry {
        id: uuid(r.try_get("id")?)?,
        domain: r.try_get("domain")?,
        key: r.try_get("key")?,
        title: r.try_get("title")?,
        body: r.try_get("body")?,
        tags: json(r.try_get("tags")?)?,
        jurisdiction: r.try_get("jurisdiction")?,
        industry: r.try_get("industry")?,
        created_at: parse_ts(r.try_get("created_at")?)?,
        updated_at: parse_ts(r.try_get("updated_at")?)?,
    })
}

fn push_filter(qb: &mut QueryBuilder<Sqlite>, f: &KnowledgeFilter) {
    if let Some(d) = &f.domain {
        qb.push(" AND k.domain = ").push_bind(d.clone());
    }
    if let Some(t) = &f.tag {
        qb.push(" AND EXISTS (SELECT 1 FROM json_each(k.tags) WHERE json_each.value = ")
            .push_bind(t.to_lowercase())
            .push(")");
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
async fn upsert_one(tx: &mut SqliteConnection, e: &KnowledgeEntry) -> Result<KnowledgeEntry> {
    let now = e.updated_at.trunc_subsecs(6);
    let existing = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM knowledge k WHERE k.domain = ? AND k.key = ?"
    )))
    .bind(&e.domain)
    .bind(&e.key)
    .fetch_optional(&mut *tx)
    .await?
    .as_ref()
    .map(entry_from_row)
    .transpose()?;
    let tags = to_json(&e.tags)?;
    let tags_text = e.tags.join(" ");
    match existing {
        Some(old) => {
            sqlx::query(
                "UPDATE knowledge SET title = ?, body = ?, tags = ?, tags_text = ?, \
                 jurisdiction = ?, industry = ?, updated_at = ? WHERE id = ?",
            )
            .bind(&e.title)
            .bind(&e.body)
            .bind(&tags)
            .bind(&tags_text)
            .bind(&e.jurisdiction)
            .bind(&e.industry)
            .bind(ts(now))
            .bind(old.id.to_string())
            .execute(&mut *tx)
            .await?;
            if (&old.title, &old.body, &old.tags) != (&e.title, &e.body, &e.tags) {
                sqlx::query("DELETE FROM knowledge_vectors WHERE entry_id = ?")
                    .bind(old.id.to_string())
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
                "INSERT INTO knowledge (id, domain, key, title, body, tags, tags_text, \
                 jurisdiction, industry, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(e.id.to_string())
            .bind(&e.domain)
            .bind(&e.key)
            .bind(&e.title)
            .bind(&e.body)
            .bind(&tags)
            .bind(&tags_text)
            .bind(&e.jurisdiction)
            .bind(&e.industry)
            .bind(ts(now))
            .bind(ts(now))
            .execute(&mut *tx)
            .await
            .map_err(|err| match err {
                sqlx::Error::Database(d) if d.is_unique_violation() => {
                    StoreError::Conflict(format!("knowledge entry {} already exists", e.id))
                }
                err => err.into(),
            })?;
            Ok(KnowledgeEntry {
                created_at: now,
                updated_at: now,
                ..e.clone()
            })
        }
    }
}

/// The FTS5 query for `words`: each a quoted string, OR-ed, so nothing in
/// it is syntax.
fn fts_query(words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" OR ")
}

#[async_trait]
impl KnowledgeStore for SqliteStore {
    async fn upsert_knowledge(
        &self,
        _admin: &AdminScope,
        entries: &[KnowledgeEntry],
        audit: AuditRecord,
    ) -> Result<Vec<KnowledgeEntry>> {
        check_batch(entries)?;
        let mut tx = self.write().await?;
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
            "SELECT {COLUMNS} FROM knowledge k WHERE k.id = ?"
        )))
        .bind(id.to_string())
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
            QueryBuilder::<Sqlite>::new(format!("SELECT {COLUMNS} FROM knowledge k WHERE 1 = 1"));
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
        // Title and tags weigh twice the body, as on PostgreSQL.
        let mut qb = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {COLUMNS}, -bm25(knowledge_fts, 2.0, 1.0, 2.0) AS relevance \
             FROM knowledge_fts CROSS JOIN knowledge k ON k.seq = knowledge_fts.rowid \
             WHERE knowledge_fts MATCH "
        ));
        qb.push_bind(fts_query(&words));
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
        let mut tx = self.write().await?;
        let n = sqlx::query("DELETE FROM knowledge WHERE id = ?")
            .bind(id.to_string())
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
             (SELECT 1 FROM knowledge_vectors v WHERE v.entry_id = k.id AND v.model = ?) \
             ORDER BY k.created_at, k.id LIMIT ?"
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
        let mut tx = self.write().await?;
        for v in vectors {
            sqlx::query(
                "INSERT INTO knowledge_vectors (entry_id, model, vector) \
                 SELECT id, ?, ? FROM knowledge WHERE id = ? \
                 ON CONFLICT (entry_id, model) DO UPDATE SET vector = excluded.vector",
            )
            .bind(model)
            .bind(encode_vector(&v.vector))
            .bind(v.entry_id.to_string())
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
        let mut qb = QueryBuilder::<Sqlite>::new(
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
                    entry_id: uuid(r.try_get("entry_id")?)?,
                    vector: decode_vector(&bytes)
                        .ok_or_else(|| StoreError::Corrupt("vector length".into()))?,
                })
            })
            .collect()
    }
}

const CONFLICT_COLUMNS: &str = "id, company_a, company_b, counterparty, memory_ids, detected_at, \
     status, resolved_at, resolved_by, note";

fn conflict_from_row(r: &SqliteRow) -> Result<Conflict> {
    let status: String = r.try_get("status")?;
    Ok(Conflict {
        id: uuid(r.try_get("id")?)?,
        company_a: super::company_id(r.try_get("company_a")?)?,
        company_b: super::company_id(r.try_get("company_b")?)?,
        counterparty: r.try_get("counterparty")?,
        memory_ids: json(r.try_get("memory_ids")?)?,
        detected_at: parse_ts(r.try_get("detected_at")?)?,
        status: ConflictStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("conflict status {status:?}")))?,
        resolved_at: super::parse_opt_ts(r.try_get("resolved_at")?)?,
        resolved_by: r.try_get("resolved_by")?,
        note: r.try_get("note")?,
    })
}

async fn load_conflict(tx: &mut SqliteConnection, id: &str) -> Result<Conflict> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {CONFLICT_COLUMNS} FROM conflicts WHERE id = ?"
    )))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(StoreError::NotFound)?;
    conflict_from_row(&row)
}

#[async_trait]
impl ConflictStore for SqliteStore {
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
        let mut tx = self.write().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CONFLICT_COLUMNS} FROM conflicts WHERE company_a = ? AND company_b = ? \
             AND counterparty = ? ORDER BY status = 'open' DESC, detected_at DESC"
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
        let changed_id = match flags.first() {
            Some(open) if open.status == ConflictStatus::Open => {
                match merged_ids(&open.memory_ids, memory_ids) {
                    Some(ids) => {
                        sqlx::query("UPDATE conflicts SET memory_ids = ? WHERE id = ?")
                            .bind(to_json(&ids)?)
                            .bind(open.id.to_string())
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
                     detected_at, status) VALUES (?, ?, ?, ?, ?, ?, 'open')",
                )
                .bind(id.to_string())
                .bind(a.as_str())
                .bind(b.as_str())
                .bind(&counterparty)
                .bind(to_json(&merged_ids(&[], memory_ids).unwrap_or_default())?)
                .bind(ts(at.trunc_subsecs(6)))
                .execute(&mut *tx)
                .await?;
                Some(id)
            }
        };
        let Some(changed) = changed_id else {
            return Ok(None);
        };
        let flag = load_conflict(&mut tx, &changed.to_string()).await?;
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
        let mut tx = self.write().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CONFLICT_COLUMNS} FROM conflicts WHERE (? IS NULL OR status = ?) \
             ORDER BY detected_at DESC, id DESC"
        )))
        .bind(status.map(ConflictStatus::as_str))
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
        let mut tx = self.write().await?;
        let flag = load_conflict(&mut tx, &id.to_string()).await?;
        if flag.status == ConflictStatus::Resolved {
            return Err(StoreError::Conflict(format!(
                "conflict {id} is already resolved"
            )));
        }
        sqlx::query(
            "UPDATE conflicts SET status = 'resolved', resolved_at = ?, resolved_by = ?, note = ? \
             WHERE id = ?",
        )
        .bind(ts(at.trunc_subsecs(6)))
        .bind(&audit.actor)
        .bind(note)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        let flag = load_conflict(&mut tx, &id.to_string()).await?;
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
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM conflicts WHERE company_a = ? AND company_b = ? AND status = 'open'",
        )
        .bind(a.as_str())
        .bind(b.as_str())
        .fetch_one(self.pool())
        .await?;
        Ok(n > 0)
    }

    async fn conflict_partners(
        &self,
        _admin: &AdminScope,
        company: &CompanyId,
    ) -> Result<Vec<CompanyId>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT company_b FROM conflicts WHERE company_a = ?1 AND status = 'open' \
             UNION SELECT company_a FROM conflicts WHERE company_b = ?1 AND status = 'open'",
        )
        .bind(company.as_str())
        .fetch_all(self.pool())
        .await?;
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
        // The writer turn, so the read and its audit are one transaction.
        let mut tx = self.write().await?;
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT key, company_id, memory_id FROM ( \
                 SELECT key, company_id, memory_id, row_number() OVER \
                     (PARTITION BY key, company_id ORDER BY memory_id) AS n \
                 FROM memory_names \
                 WHERE kind = 'counterparty' AND company_id <> ? \
                   AND key IN (SELECT value FROM json_each(?))) \
             WHERE n <= ? ORDER BY key, company_id, memory_id",
        )
        .bind(company.as_str())
        .bind(to_json(&keys)?)
        .bind(SCAN_IDS_PER_MATCH as i64)
        .fetch_all(&mut *tx)
        .await?;
        let rows = rows
            .into_iter()
            .map(|(key, c, id)| {
                let id = Uuid::parse_str(&id)
                    .map_err(|e| StoreError::Corrupt(format!("memory id: {e}")))?;
                Ok((key, company_id(&c)?, id))
            })
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
        let mut tx = self.write().await?;
        let mut rows: Vec<(String, CompanyId, Uuid)> = Vec::new();
        for key in keys {
            // A normalised key is words of letters and digits: quoted, it
            // is one FTS5 phrase, never query syntax.
            let words: Vec<&str> = key
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .collect();
            if words.is_empty() {
                continue;
            }
            let phrase = format!("text : \"{}\"", words.join(" "));
            let found: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT m.company_id, m.id, m.content ->> '$.text' FROM memories_fts f \
                 JOIN memories m ON m.seq = f.rowid \
                 WHERE memories_fts MATCH ? AND m.company_id <> ? \
                   AND (m.event_type = 'contract' OR lower(m.category) LIKE '%contract%' \
                        OR lower(m.category) LIKE '%deal%') \
                 LIMIT ?",
            )
            .bind(&phrase)
            .bind(company.as_str())
            .bind(MENTION_ROWS_PER_KEY)
            .fetch_all(&mut *tx)
            .await?;
            for (c, id, text) in found {
                if text_names(&text, key) {
                    let id = Uuid::parse_str(&id)
                        .map_err(|e| StoreError::Corrupt(format!("memory id: {e}")))?;
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
