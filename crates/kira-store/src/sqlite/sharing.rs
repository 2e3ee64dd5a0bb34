//! Published items and sharing consents on SQLite: plain tables, every
//! statement bound to the scope's company.

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use kira_core::CompanyId;
use kira_core::audit::AuditRecord;
use kira_core::auth::{AdminScope, CompanyScope};
use kira_core::sharing::{Consent, Partner};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};
use uuid::Uuid;

use super::{SqliteStore, append, company_id, parse_opt_ts, parse_ts, ts};
use crate::sharing::{ConsentRecord, MAX_LIVE_ITEMS, SharedFilter, SharedItem, SharingStore};
use crate::{DeletedRows, Result, StoreError};

const ITEM_COLUMNS: &str = "item_id, scope, memory_id, text, published_by, published_at, \
     withdrawn_by, withdrawn_at";

fn uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| StoreError::Corrupt(format!("uuid {s:?}: {e}")))
}

fn partner(s: &str) -> Result<Partner> {
    Partner::parse(s).map_err(|e| StoreError::Corrupt(format!("partner {s:?}: {e}")))
}

fn item_from_row(r: &SqliteRow) -> Result<SharedItem> {
    Ok(SharedItem {
        id: uuid(r.try_get("item_id")?)?,
        scope: r.try_get("scope")?,
        memory_id: uuid(r.try_get("memory_id")?)?,
        text: r.try_get("text")?,
        published_by: r.try_get("published_by")?,
        published_at: parse_ts(r.try_get("published_at")?)?,
        withdrawn_by: r.try_get("withdrawn_by")?,
        withdrawn_at: parse_opt_ts(r.try_get("withdrawn_at")?)?,
    })
}

fn consent_from_row(r: &SqliteRow) -> Result<ConsentRecord> {
    Ok(ConsentRecord {
        scope: r.try_get("scope")?,
        partner: partner(r.try_get("partner")?)?,
        granted_by: r.try_get("granted_by")?,
        granted_at: parse_ts(r.try_get("granted_at")?)?,
    })
}

async fn load_item(tx: &mut SqliteConnection, company: &CompanyId, id: Uuid) -> Result<SharedItem> {
    let sql =
        format!("SELECT {ITEM_COLUMNS} FROM shared_items WHERE company_id = ? AND item_id = ?");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(company.as_str())
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
    item_from_row(&row)
}

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
        let company = scope.company();
        let mut tx = self.write().await?;
        let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM shared_items WHERE company_id = ? AND withdrawn_at IS NULL",
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
             published_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(item.id.to_string())
        .bind(company.as_str())
        .bind(&item.scope)
        .bind(item.memory_id.to_string())
        .bind(&item.text)
        .bind(&item.published_by)
        .bind(ts(item.published_at.trunc_subsecs(6)))
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                return Err(StoreError::Conflict(format!(
                    "memory {} is already published for {}",
                    item.memory_id, item.scope
                )));
            }
            Err(e) => return Err(e.into()),
        }
        let stored = load_item(&mut tx, company, item.id).await?;
        append(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn list_shared_items(
        &self,
        scope: &CompanyScope,
        filter: &SharedFilter,
    ) -> Result<Vec<SharedItem>> {
        let sql = format!(
            "SELECT {ITEM_COLUMNS} FROM shared_items WHERE company_id = ? \
             AND (? IS NULL OR scope = ?) AND (? OR withdrawn_at IS NULL) \
             ORDER BY published_at DESC, item_id DESC LIMIT ?"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(scope.company().as_str())
            .bind(filter.scope.as_deref())
            .bind(filter.scope.as_deref())
            .bind(filter.include_withdrawn)
            .bind(i64::from(filter.limit))
            .fetch_all(&self.pool)
            .await?;
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
        let mut tx = self.write().await?;
        let item = load_item(&mut tx, company, id).await?;
        if !item.is_live() {
            return Err(StoreError::Conflict(format!(
                "item {id} is already withdrawn"
            )));
        }
        sqlx::query(
            "UPDATE shared_items SET withdrawn_by = ?, withdrawn_at = ? \
             WHERE company_id = ? AND item_id = ?",
        )
        .bind(by)
        .bind(ts(at.trunc_subsecs(6)))
        .bind(company.as_str())
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        let item = load_item(&mut tx, company, id).await?;
        append(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(item)
    }

    async fn list_consents(&self, scope: &CompanyScope) -> Result<Vec<ConsentRecord>> {
        let rows = sqlx::query(
            "SELECT scope, partner, granted_by, granted_at FROM sharing_consents \
             WHERE company_id = ? ORDER BY scope, partner",
        )
        .bind(scope.company().as_str())
        .fetch_all(&self.pool)
        .await?;
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
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO sharing_consents (company_id, scope, partner, granted_by, granted_at) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (company_id, scope, partner) DO NOTHING",
        )
        .bind(company.as_str())
        .bind(&consent.scope)
        .bind(consent.partner.as_str())
        .bind(by)
        .bind(ts(at.trunc_subsecs(6)))
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(
            "SELECT scope, partner, granted_by, granted_at FROM sharing_consents \
             WHERE company_id = ? AND scope = ? AND partner = ?",
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
        let mut tx = self.write().await?;
        let n = sqlx::query(
            "DELETE FROM sharing_consents WHERE company_id = ? AND scope = ? AND partner = ?",
        )
        .bind(scope.company().as_str())
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
        let rows = sqlx::query(
            "SELECT company_id, scope, partner FROM sharing_consents ORDER BY company_id, scope, partner",
        )
        .fetch_all(&self.pool)
        .await?;
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
