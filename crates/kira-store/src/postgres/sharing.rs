//! Published items and sharing consents on PostgreSQL: company tables under
//! row-level security (0017); the consent directory is the admin path's
//! read, which the `admin_read` policy allows for SELECT only. The flows
//! are `flow::sharing`'s.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kira_core::CompanyId;
use kira_core::audit::AuditRecord;
use kira_core::auth::{AdminScope, CompanyScope};
use kira_core::sharing::Consent;
use sqlx::PgConnection;
use uuid::Uuid;

use super::PgStore;
use crate::flow::sharing as flow;
use crate::sharing::{ConsentRecord, SharedFilter, SharedItem, SharingStore};
use crate::{DeletedRows, Result, StoreError};

/// Removes the company's published items and consents, and other
/// companies' consents naming it (a forced delete).
pub(super) async fn delete_company_sharing(
    tx: &mut PgConnection,
    company: &CompanyId,
    deleted: &mut DeletedRows,
) -> Result<()> {
    // Opens the partner_cleanup policies (0017) for this transaction.
    sqlx::query("SELECT set_config('app.company_delete', 'on', true)")
        .execute(&mut *tx)
        .await?;
    crate::flow::company::delete_rows(tx, company, crate::flow::company::SHARING_ROWS, deleted)
        .await?;
    Ok(())
}

#[async_trait]
impl SharingStore for PgStore {
    async fn publish_item(
        &self,
        scope: &CompanyScope,
        item: &SharedItem,
        audit: AuditRecord,
    ) -> Result<SharedItem> {
        let company = scope.company();
        let mut tx = self.scoped(company).await?;
        // The company's row, locked: concurrent publications count in turn.
        sqlx::query("SELECT 1 FROM companies WHERE company_id = $1 FOR UPDATE")
            .bind(company.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
        let stored = flow::publish_item(&mut tx, company, item, audit).await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn list_shared_items(
        &self,
        scope: &CompanyScope,
        filter: &SharedFilter,
    ) -> Result<Vec<SharedItem>> {
        let mut tx = self.scoped(scope.company()).await?;
        let items = flow::list_shared_items(&mut tx, scope.company(), filter).await?;
        tx.commit().await?;
        Ok(items)
    }

    async fn withdraw_item(
        &self,
        scope: &CompanyScope,
        id: Uuid,
        by: &str,
        at: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<SharedItem> {
        let mut tx = self.scoped(scope.company()).await?;
        let item = flow::withdraw_item(&mut tx, scope.company(), id, by, at, audit).await?;
        tx.commit().await?;
        Ok(item)
    }

    async fn list_consents(&self, scope: &CompanyScope) -> Result<Vec<ConsentRecord>> {
        let mut tx = self.scoped(scope.company()).await?;
        let consents = flow::list_consents(&mut tx, scope.company()).await?;
        tx.commit().await?;
        Ok(consents)
    }

    async fn put_consent(
        &self,
        scope: &CompanyScope,
        consent: &Consent,
        by: &str,
        at: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<ConsentRecord> {
        let mut tx = self.scoped(scope.company()).await?;
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
        let mut tx = self.scoped(scope.company()).await?;
        flow::delete_consent(&mut tx, scope.company(), consent, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn consent_directory(&self, _admin: &AdminScope) -> Result<Vec<(CompanyId, Consent)>> {
        let mut tx = self.admin_read().await?;
        let directory = flow::consent_directory(&mut tx).await?;
        tx.commit().await?;
        Ok(directory)
    }
}
