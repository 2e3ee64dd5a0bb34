//! Published items and sharing consents on PostgreSQL: company tables under
//! row-level security (0017); the consent directory is the admin path's
//! read, which the `admin_read` policy allows for SELECT only.

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use kira_core::CompanyId;
use kira_core::audit::AuditRecord;
use kira_core::auth::{AdminScope, CompanyScope};
use kira_core::sharing::{Consent, Partner};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::{PgStore, UNIQUE_VIOLATION, append, company_id, sqlstate};
use crate::sharing::{ConsentRecord, MAX_LIVE_ITEMS, SharedFilter, SharedItem, SharingStore};
use crate::{DeletedRows, Result, StoreError};

const ITEM_COLUMNS: &str = "item_id, scope, memory_id, text, published_by, published_at, \
     withdrawn_by, withdrawn_at";

fn partner(s: &str) -> Result<Partner> {
    Partner::parse(s).map_err(|e| StoreError::Corrupt(format!("partner {s:?}: {e}")))
}

fn item_from_row(r: &PgRow) -> Result<SharedItem> {
    Ok(SharedItem {
        id: r.try_get("item_id")?,
        scope: r.try_get("scope")?,
        memory_id: r.try_get("memory_id")?,
        text: r.try_get("text")?,
        published_by: r.try_get("published_by")?,
        published_at: r.try_get("published_at")?,
        withdrawn_by: r.try_get("withdrawn_by")?,
        withdrawn_at: r.try_get("withdrawn_at")?,
    })
}

fn consent_from_row(r: &PgRow) -> Result<ConsentRecord> {
    Ok(ConsentRecord {
        scope: r.try_get("scope")?,
        partner: partner(r.try_get("partner")?)?,
        granted_by: r.try_get("granted_by")?,
        granted_at: r.try_get("granted_at")?,
    })
}

async fn load_item(
    tx: &mut PgConnection,
    company: &CompanyId,
    id: Uuid,
    lock: bool,
) -> Result<SharedItem> {
    let sql = format!(
        "SELECT {ITEM_COLUMNS} FROM shared_items WHERE company_id = $1 AND item_id = $2{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(company.as_str())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
    item_from_row(&row)
}

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
        let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM shared_items WHERE company_id = $1 AND withdrawn_at IS NULL",
        )
        .bind(company.as_str())
        .fetch_one(&mut *tx)
        .await?;
        if live >= i64::from(MAX_LIVE_ITEMS) {
            return Err(StoreError::Conflict(format!(
                "at most {MAX_LIVE_ITEMS} items may be published at once; withdraw some first"
            )));
        }
        let inserted = sqlx::query(
            "INSERT INTO shared_items (item_id, company_id, scope, memory_id, text, published_by, \
             published_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(item.id)
        .bind(company.as_str())
        .bind(&item.scope)
        .bind(item.memory_id)
        .bind(&item.text)
        .bind(&item.published_by)
        .bind(item.published_at.trunc_subsecs(6))
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if sqlstate(&e).as_deref() == Some(UNIQUE_VIOLATION) => {
                return Err(StoreError::Conflict(format!(
                    "memory {} is already published for {}",
                    item.memory_id, item.scope
                )));
            }
            Err(e) => return Err(e.into()),
        }
        let stored = load_item(&mut tx, company, item.id, false).await?;
        append(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn list_shared_items(
        &self,
        scope: &CompanyScope,
        filter: &SharedFilter,
    ) -> Result<Vec<SharedItem>> {
        let company = scope.company();
        let mut tx = self.scoped(company).await?;
        let sql = format!(
            "SELECT {ITEM_COLUMNS} FROM shared_items WHERE company_id = $1 \
             AND ($2::text IS NULL OR scope = $2) AND ($3 OR withdrawn_at IS NULL) \
             ORDER BY published_at DESC, item_id DESC LIMIT $4"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(company.as_str())
            .bind(filter.scope.as_deref())
            .bind(filter.include_withdrawn)
            .bind(i64::from(filter.limit))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter().map(item_from_row).collect()
    }

    async fn withdraw_item(
        &self,
        scope: &CompanyScope,
        id: Uuid,
        by: &str,
        at: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<SharedItem> {
        let company = scope.company();
        let mut tx = self.scoped(company).await?;
        let item = load_item(&mut tx, company, id, true).await?;
        if !item.is_live() {
            return Err(StoreError::Conflict(format!(
                "item {id} is already withdrawn"
            )));
        }
        sqlx::query(
            "UPDATE shared_items SET withdrawn_by = $1, withdrawn_at = $2 \
             WHERE company_id = $3 AND item_id = $4",
        )
        .bind(by)
        .bind(at.trunc_subsecs(6))
        .bind(company.as_str())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let item = load_item(&mut tx, company, id, false).await?;
        append(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(item)
    }

    async fn list_consents(&self, scope: &CompanyScope) -> Result<Vec<ConsentRecord>> {
        let company = scope.company();
        let mut tx = self.scoped(company).await?;
        let rows = sqlx::query(
            "SELECT scope, partner, granted_by, granted_at FROM sharing_consents \
             WHERE company_id = $1 ORDER BY scope, partner",
        )
        .bind(company.as_str())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(consent_from_row).collect()
    }

    async fn put_consent(
        &self,
        scope: &CompanyScope,
        consent: &Consent,
        by: &str,
        at: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<ConsentRecord> {
        let company = scope.company();
        let mut tx = self.scoped(company).await?;
        sqlx::query(
            "INSERT INTO sharing_consents (company_id, scope, partner, granted_by, granted_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (company_id, scope, partner) DO NOTHING",
        )
        .bind(company.as_str())
        .bind(&consent.scope)
        .bind(consent.partner.as_str())
        .bind(by)
        .bind(at.trunc_subsecs(6))
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(
            "SELECT scope, partner, granted_by, granted_at FROM sharing_consents \
             WHERE company_id = $1 AND scope = $2 AND partner = $3",
        )
        .bind(company.as_str())
        .bind(&consent.scope)
        .bind(consent.partner.as_str())
        .fetch_one(&mut *tx)
        .await?;
        let record = consent_from_row(&row)?;
        append(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn delete_consent(
        &self,
        scope: &CompanyScope,
        consent: &Consent,
        audit: AuditRecord,
    ) -> Result<()> {
        let company = scope.company();
        let mut tx = self.scoped(company).await?;
        let n = sqlx::query(
            "DELETE FROM sharing_consents WHERE company_id = $1 AND scope = $2 AND partner = $3",
        )
        .bind(company.as_str())
        .bind(&consent.scope)
        .bind(consent.partner.as_str())
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

    async fn consent_directory(&self, _admin: &AdminScope) -> Result<Vec<(CompanyId, Consent)>> {
        let mut tx = self.admin_read().await?;
        let rows = sqlx::query(
            "SELECT company_id, scope, partner FROM sharing_consents \
             ORDER BY company_id, scope, partner",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                Ok((
                    company_id(r.try_get("company_id")?)?,
                    Consent {
                        scope: r.try_get("scope")?,
                        partner: partner(r.try_get("partner")?)?,
                    },
                ))
            })
            .collect()
    }
}
