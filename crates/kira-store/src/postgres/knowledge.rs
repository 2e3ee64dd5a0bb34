//! The shared knowledge base on PostgreSQL: `knowledge` with a generated,
//! weighted tsvector under a GIN index, and `knowledge_vectors`. No
//! row-level security: the rows belong to no company. Also the conflict
//! flags, which only the admin path reads. The flows are
//! `flow::knowledge`'s; the search's match and the flag lock are here.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kira_core::CompanyId;
use kira_core::audit::AuditRecord;
use kira_core::auth::AdminScope;
use kira_core::conflict::{Conflict, ConflictStatus};
use kira_core::knowledge::KnowledgeEntry;
use sqlx::{PgConnection, Postgres, QueryBuilder};
use uuid::Uuid;

use super::PgStore;
use super::memory::{TSQUERY_AFTER, TSQUERY_BEFORE};
use crate::conflicts::{ConflictStore, CounterpartyMatch, check_scan_keys, mention_keys};
use crate::flow::knowledge::{self as flow, COLUMNS, entry_from_row, vector_from_row};
use crate::knowledge::{
    KnowledgeCursor, KnowledgeFilter, KnowledgeHit, KnowledgeStore, KnowledgeVector, check_batch,
};
use crate::memory::query_words;
use crate::{Result, StoreError};

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
        let stored = flow::upsert(&mut tx, entries, written_concurrently, audit).await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn get_knowledge(&self, id: Uuid) -> Result<KnowledgeEntry> {
        flow::get(&mut self.pool().acquire().await?, id).await
    }

    async fn list_knowledge(
        &self,
        filter: &KnowledgeFilter,
        after: Option<&KnowledgeCursor>,
        limit: u32,
    ) -> Result<Vec<KnowledgeEntry>> {
        let mut qb = flow::list_query::<Postgres>(filter, after, limit);
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
        flow::finish_search(&mut qb, filter, limit);
        let rows = qb.build().fetch_all(self.pool()).await?;
        rows.iter().map(flow::hit_from_row).collect()
    }

    async fn delete_knowledge(
        &self,
        _admin: &AdminScope,
        id: Uuid,
        audit: AuditRecord,
    ) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        flow::delete(&mut tx, id, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn knowledge_without_vectors(
        &self,
        model: &str,
        limit: u32,
    ) -> Result<Vec<KnowledgeEntry>> {
        flow::without_vectors(&mut self.pool().acquire().await?, model, limit).await
    }

    async fn put_knowledge_vectors(
        &self,
        _admin: &AdminScope,
        model: &str,
        vectors: &[KnowledgeVector],
    ) -> Result<()> {
        let mut tx = self.pool().begin().await?;
        flow::put_vectors(&mut tx, model, vectors).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn knowledge_vectors(
        &self,
        model: &str,
        filter: &KnowledgeFilter,
    ) -> Result<Vec<KnowledgeVector>> {
        let mut qb = flow::vectors_query::<Postgres>(model, filter);
        let rows = qb.build().fetch_all(self.pool()).await?;
        rows.iter().map(vector_from_row).collect()
    }
}

/// An entry's insert meets a unique key when a concurrent upsert inserted
/// the same (domain, key) first.
fn written_concurrently(e: &KnowledgeEntry) -> StoreError {
    StoreError::Conflict(format!(
        "knowledge entry {}/{} was written concurrently; try again",
        e.domain, e.key
    ))
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
        let (a, b, counterparty) = flow::flag_subject(a, b, counterparty)?;
        let mut tx = self.admin_read().await?;
        lock_flag(&mut tx, &a, &b, &counterparty).await?;
        let flag = flow::flag(&mut tx, id, &a, &b, &counterparty, memory_ids, at, audit).await?;
        tx.commit().await?;
        Ok(flag)
    }

    async fn list_conflicts(
        &self,
        _admin: &AdminScope,
        status: Option<ConflictStatus>,
        audit: AuditRecord,
    ) -> Result<Vec<Conflict>> {
        let mut tx = self.admin_read().await?;
        let flags = flow::list_conflicts(&mut tx, status, audit).await?;
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
        let flag = flow::resolve(&mut tx, id, note, at, audit).await?;
        tx.commit().await?;
        Ok(flag)
    }

    async fn conflict_open(
        &self,
        _admin: &AdminScope,
        a: &CompanyId,
        b: &CompanyId,
    ) -> Result<bool> {
        let mut tx = self.admin_read().await?;
        let open = flow::open(&mut tx, a, b).await?;
        tx.commit().await?;
        Ok(open)
    }

    async fn conflict_partners(
        &self,
        _admin: &AdminScope,
        company: &CompanyId,
    ) -> Result<Vec<CompanyId>> {
        let mut tx = self.admin_read().await?;
        let partners = flow::partners(&mut tx, company).await?;
        tx.commit().await?;
        Ok(partners)
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
        let matches = flow::scan_counterparties(&mut tx, company, keys, audit).await?;
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
        let mut tx = self.admin_read().await?;
        let matches = flow::scan_contract_mentions(&mut tx, company, &keys, audit).await?;
        tx.commit().await?;
        Ok(matches)
    }
}
