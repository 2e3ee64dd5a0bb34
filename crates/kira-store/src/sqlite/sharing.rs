//! Published items and sharing consents on SQLite: plain tables, every
//! statement bound to the scope's company; the flows are `flow::sharing`'s.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kira_core::CompanyId;
use kira_core::audit::AuditRecord;
use kira_core::auth::{AdminScope, CompanyScope};
use kira_core::sharing::Consent;
use sqlx::SqliteConnection;
use uuid::Uuid;

use super::SqliteStore;
use crate::flow::sharing as flow;
use crate::sharing::{ConsentRecord, SharedFilter, SharedItem, SharingStore};
use crate::{DeletedRows, Result};

/// Removes the company's published items and consents, and other
/// companies' consents naming it (a forced delete).
pub(super) async fn delete_company_sharing(
    tx: &mut SqliteConnection,
    company: &CompanyId,
    deleted: &mut DeletedRows,
) -> Result<()> {
    crate::flow::company::delete_rows(tx, company, crate::flow::company::SHARING_ROWS, deleted)
        .await?;
    Ok(())
}

#[async_trait]
impl SharingStore for SqliteStore {
    async fn publish_item(
        &self,
        scope: &CompanyScope,
        item: &SharedItem,
        audit: AuditRecord,
    ) -> Result<SharedItem> {
        let mut tx = self.write().await?;
        let stored = flow::publish_item(&mut tx, scope.company(), item, audit).await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn list_shared_items(
        &self,
        scope: &CompanyScope,
        filter: &SharedFilter,
    ) -> Result<Vec<SharedItem>> {
        flow::list_shared_items(&mut self.pool.acquire().await?, scope.company(), filter).await
    }

    async fn withdraw_item(
        &self,
        scope: &CompanyScope,
        id: Uuid,
        by: &str,
        at: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<SharedItem> {
        let mut tx = self.write().await?;
        let item = flow::withdraw_item(&mut tx, scope.company(), id, by, at, audit).await?;
        tx.commit().await?;
        Ok(item)
    }

    async fn list_consents(&self, scope: &CompanyScope) -> Result<Vec<ConsentRecord>> {
        flow::list_consents(&mut self.pool.acquire().await?, scope.company()).await
    }

    async fn put_consent(
        &self,
        scope: &CompanyScope,
        consent: &Consent,
        by: &str,
        at: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<ConsentRecord> {
        let mut tx = self.write().await?;
        let record = flow::put_consent(&mut tx, scope.company(), consent, by, at, audit).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn delete_consent(
        &self,
        scope: &CompanyScope,
        consent: &Consent,
        audit: AuditRecord,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        flow::delete_consent(&mut tx, scope.company(), consent, audit).await?;
        tx.commit().await
    }

    async fn consent_directory(&self, _admin: &AdminScope) -> Result<Vec<(CompanyId, Consent)>> {
        flow::consent_directory(&mut self.pool.acquire().await?).await
    }
}
