//! The shared knowledge base on SQLite: `knowledge`, its external-content
//! FTS5 table `knowledge_fts` (kept in step by the migration's triggers),
//! and `knowledge_vectors`; and the conflict flags. The flows are
//! `flow::knowledge`'s; the search's match is here.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kira_core::CompanyId;
use kira_core::audit::AuditRecord;
use kira_core::auth::AdminScope;
use kira_core::conflict::{Conflict, ConflictStatus};
use kira_core::knowledge::KnowledgeEntry;
use sqlx::{QueryBuilder, Sqlite};
use uuid::Uuid;

use super::SqliteStore;
use crate::conflicts::{ConflictStore, CounterpartyMatch, check_scan_keys, mention_keys};
use crate::flow::knowledge::{self as flow, COLUMNS, entry_from_row, vector_from_row};
use crate::knowledge::{
    KnowledgeCursor, KnowledgeFilter, KnowledgeHit, KnowledgeStore, KnowledgeVector, check_batch,
};
use crate::memory::query_words;
use crate::{Result, StoreError};

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
        let stored = flow::upsert(&mut tx, entries, id_taken, audit).await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn get_knowledge(&self, id: Uuid) -> Result<KnowledgeEntry> {
        flow::get(&mut self.pool.acquire().await?, id).await
    }

    async fn list_knowledge(
        &self,
        filter: &KnowledgeFilter,
        after: Option<&KnowledgeCursor>,
        limit: u32,
    ) -> Result<Vec<KnowledgeEntry>> {
        let mut qb = flow::list_query::<Sqlite>(filter, after, limit);
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
        let mut tx = self.write().await?;
        flow::delete(&mut tx, id, audit).await?;
        tx.commit().await
    }

    async fn knowledge_without_vectors(
        &self,
        model: &str,
        limit: u32,
    ) -> Result<Vec<KnowledgeEntry>> {
        flow::without_vectors(&mut self.pool.acquire().await?, model, limit).await
    }

    async fn put_knowledge_vectors(
        &self,
        _admin: &AdminScope,
        model: &str,
        vectors: &[KnowledgeVector],
    ) -> Result<()> {
        let mut tx = self.write().await?;
        flow::put_vectors(&mut tx, model, vectors).await?;
        tx.commit().await
    }

    async fn knowledge_vectors(
        &self,
        model: &str,
        filter: &KnowledgeFilter,
    ) -> Result<Vec<KnowledgeVector>> {
        let mut qb = flow::vectors_query::<Sqlite>(model, filter);
        let rows = qb.build().fetch_all(self.pool()).await?;
        rows.iter().map(vector_from_row).collect()
    }
}

/// Within the writer turn, an entry's insert meets a unique key only when
/// its id is taken.
fn id_taken(e: &KnowledgeEntry) -> StoreError {
    StoreError::Conflict(format!("knowledge entry {} already exists", e.id))
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
        let (a, b, counterparty) = flow::flag_subject(a, b, counterparty)?;
        let mut tx = self.write().await?;
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
        let mut tx = self.write().await?;
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
        let mut tx = self.write().await?;
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
        flow::open(&mut self.pool.acquire().await?, a, b).await
    }

    async fn conflict_partners(
        &self,
        _admin: &AdminScope,
        company: &CompanyId,
    ) -> Result<Vec<CompanyId>> {
        flow::partners(&mut self.pool.acquire().await?, company).await
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
        let mut tx = self.write().await?;
        let matches = flow::scan_contract_mentions(&mut tx, company, &keys, audit).await?;
        tx.commit().await?;
        Ok(matches)
    }
}
