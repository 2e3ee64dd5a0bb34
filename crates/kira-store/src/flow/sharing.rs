//! Published items and sharing consents, written once for both backends.
//! The backend opens the transaction (SQLite's writer turn, PostgreSQL's
//! company scope) and, on PostgreSQL, takes the company's row before a
//! publication, so concurrent publications count in turn.

use std::sync::LazyLock;

use chrono::{DateTime, SubsecRound, Utc};
use kira_core::CompanyId;
use kira_core::audit::AuditRecord;
use kira_core::auth::{AdminScope, CompanyScope};
use kira_core::sharing::{Consent, Partner};
use uuid::Uuid;

use crate::sharing::{ConsentRecord, MAX_LIVE_ITEMS, SharedFilter, SharedItem};
use crate::sql::{Columns, Conn, q};
use crate::{Result, StoreError};

/// The columns [`item_from_row`] reads.
const ITEM_COLUMNS: &str = "item_id, scope, memory_id, text, published_by, published_at, \
     withdrawn_by, withdrawn_at";

fn partner(s: &str) -> Result<Partner> {
    Partner::parse(s).map_err(|e| StoreError::Corrupt(format!("partner {s:?}: {e}")))
}

fn item_from_row<R: Columns + ?Sized>(r: &R) -> Result<SharedItem> {
    Ok(SharedItem {
        id: r.uuid("item_id")?,
        scope: r.text("scope")?,
        memory_id: r.uuid("memory_id")?,
        text: r.text("text")?,
        published_by: r.text("published_by")?,
        published_at: r.time("published_at")?,
        withdrawn_by: r.opt_text("withdrawn_by")?,
        withdrawn_at: r.opt_time("withdrawn_at")?,
    })
}

fn consent_from_row<R: Columns + ?Sized>(r: &R) -> Result<ConsentRecord> {
    Ok(ConsentRecord {
        scope: r.text("scope")?,
        partner: partner(&r.text("partner")?)?,
        granted_by: r.text("granted_by")?,
        granted_at: r.time("granted_at")?,
    })
}

/// The company's item; on PostgreSQL `lock` takes its row.
async fn load_item(
    c: &mut dyn Conn,
    company: &CompanyId,
    id: Uuid,
    lock: bool,
) -> Result<SharedItem> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!("SELECT {ITEM_COLUMNS} FROM shared_items WHERE company_id = $1 AND item_id = $2")
    });
    let s = q(SQL.as_str()).arg(company.as_str()).arg(id);
    let s = if lock { s.for_update() } else { s };
    item_from_row(&c.one(s).await?)
}

/// Publishes `item` unless the company has as many live items as allowed
/// or the memory is already published for the scope.
pub(crate) async fn publish_item(
    c: &mut dyn Conn,
    company: &CompanyId,
    item: &SharedItem,
    audit: AuditRecord,
) -> Result<SharedItem> {
    let live = c
        .int(
            q("SELECT count(*) FROM shared_items WHERE company_id = $1 AND withdrawn_at IS NULL")
                .arg(company.as_str()),
        )
        .await?
        .unwrap_or(0);
    if live >= i64::from(MAX_LIVE_ITEMS) {
        return Err(StoreError::Conflict(format!(
            "at most {MAX_LIVE_ITEMS} items may be published at once; withdraw some first"
        )));
    }
    let inserted = c
        .exec(
            q("INSERT INTO shared_items (item_id, company_id, scope, memory_id, text, published_by, \
               published_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .arg(item.id)
            .arg(company.as_str())
            .arg(item.scope.as_str())
            .arg(item.memory_id)
            .arg(item.text.as_str())
            .arg(item.published_by.as_str())
            .arg(item.published_at.trunc_subsecs(6)),
        )
        .await;
    match inserted {
        Ok(_) => {}
        Err(StoreError::Database(sqlx::Error::Database(d))) if d.is_unique_violation() => {
            return Err(StoreError::Conflict(format!(
                "memory {} is already published for {}",
                item.memory_id, item.scope
            )));
        }
        Err(e) => return Err(e),
    }
    let stored = load_item(c, company, item.id, false).await?;
    c.audit(audit).await?;
    Ok(stored)
}

pub(crate) async fn list_shared_items(
    c: &mut dyn Conn,
    company: &CompanyId,
    filter: &SharedFilter,
) -> Result<Vec<SharedItem>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {ITEM_COLUMNS} FROM shared_items WHERE company_id = $1 \
             AND ($2 IS NULL OR scope = $2) AND ($3 OR withdrawn_at IS NULL) \
             ORDER BY published_at DESC, item_id DESC LIMIT $4"
        )
    });
    let rows = c
        .all(
            q(SQL.as_str())
                .arg(company.as_str())
                .arg(filter.scope.as_deref())
                .arg(filter.include_withdrawn)
                .arg(i64::from(filter.limit)),
        )
        .await?;
    rows.iter().map(item_from_row).collect()
}

/// Withdraws the company's live item; a conflict when it is withdrawn.
pub(crate) async fn withdraw_item(
    c: &mut dyn Conn,
    company: &CompanyId,
    id: Uuid,
    by: &str,
    at: DateTime<Utc>,
    audit: AuditRecord,
) -> Result<SharedItem> {
    let item = load_item(c, company, id, true).await?;
    if !item.is_live() {
        return Err(StoreError::Conflict(format!(
            "item {id} is already withdrawn"
        )));
    }
    c.exec(
        q(
            "UPDATE shared_items SET withdrawn_by = $1, withdrawn_at = $2 \
           WHERE company_id = $3 AND item_id = $4",
        )
        .arg(by)
        .arg(at.trunc_subsecs(6))
        .arg(company.as_str())
        .arg(id),
    )
    .await?;
    let item = load_item(c, company, id, false).await?;
    c.audit(audit).await?;
    Ok(item)
}

pub(crate) async fn list_consents(
    c: &mut dyn Conn,
    company: &CompanyId,
) -> Result<Vec<ConsentRecord>> {
    let rows = c
        .all(
            q(
                "SELECT scope, partner, granted_by, granted_at FROM sharing_consents \
               WHERE company_id = $1 ORDER BY scope, partner",
            )
            .arg(company.as_str()),
        )
        .await?;
    rows.iter().map(consent_from_row).collect()
}

/// Grants `consent` (kept as first granted when it stands already).
pub(crate) async fn put_consent(
    c: &mut dyn Conn,
    company: &CompanyId,
    consent: &Consent,
    by: &str,
    at: DateTime<Utc>,
    audit: AuditRecord,
) -> Result<ConsentRecord> {
    c.exec(
        q(
            "INSERT INTO sharing_consents (company_id, scope, partner, granted_by, granted_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (company_id, scope, partner) DO NOTHING",
        )
        .arg(company.as_str())
        .arg(consent.scope.as_str())
        .arg(consent.partner.as_str())
        .arg(by)
        .arg(at.trunc_subsecs(6)),
    )
    .await?;
    let row = c
        .one(
            q(
                "SELECT scope, partner, granted_by, granted_at FROM sharing_consents \
               WHERE company_id = $1 AND scope = $2 AND partner = $3",
            )
            .arg(company.as_str())
            .arg(consent.scope.as_str())
            .arg(consent.partner.as_str()),
        )
        .await?;
    let record = consent_from_row(&row)?;
    c.audit(audit).await?;
    Ok(record)
}

pub(crate) async fn delete_consent(
    c: &mut dyn Conn,
    company: &CompanyId,
    consent: &Consent,
    audit: AuditRecord,
) -> Result<()> {
    let n = c
        .exec(
            q("DELETE FROM sharing_consents WHERE company_id = $1 AND scope = $2 AND partner = $3")
                .arg(company.as_str())
                .arg(consent.scope.as_str())
                .arg(consent.partner.as_str()),
        )
        .await?;
    if n == 0 {
        return Err(StoreError::NotFound);
    }
    c.audit(audit).await?;
    Ok(())
}

/// Every company's consents (the admin path's read).
pub(crate) async fn consent_directory(c: &mut dyn Conn) -> Result<Vec<(CompanyId, Consent)>> {
    let rows = c
        .all(q(
            "SELECT company_id, scope, partner FROM sharing_consents \
             ORDER BY company_id, scope, partner",
        ))
        .await?;
    rows.iter()
        .map(|r| {
            let company = r.text("company_id")?;
            Ok((
                CompanyId::parse(&company)
                    .map_err(|e| StoreError::Corrupt(format!("company id {company:?}: {e}")))?,
                Consent {
                    scope: r.text("scope")?,
                    partner: partner(&r.text("partner")?)?,
                },
            ))
        })
        .collect()
}

/// Removes the company's published items and consents, and other
/// companies' consents naming it (a forced delete).
pub(crate) async fn delete_company_sharing(
    c: &mut dyn Conn,
    company: &CompanyId,
    deleted: &mut crate::DeletedRows,
) -> Result<()> {
    // Opens PostgreSQL's partner_cleanup policies (0017) for this transaction.
    let open = q("SELECT set_config('app.company_delete', 'on', true)");
    c.exec(open.pg_only()).await?;
    let rows = crate::flow::company::SHARING_ROWS;
    crate::flow::company::delete_rows(c, company, rows, deleted).await
}

#[async_trait::async_trait]
impl<D: crate::flow::store::Db> crate::sharing::SharingStore for D {
    async fn publish_item(
        &self,
        scope: &CompanyScope,
        item: &SharedItem,
        audit: AuditRecord,
    ) -> Result<SharedItem> {
        let company = scope.company();
        let mut tx = self.write_for(company).await?;
        // The company's row, locked (PostgreSQL): concurrent publications
        // count in turn.
        if tx.is_pg() {
            let me = q("SELECT 1 FROM companies WHERE company_id = $1").arg(company.as_str());
            tx.opt(me.for_update()).await?.ok_or(StoreError::NotFound)?;
        }
        let stored = publish_item(&mut tx, company, item, audit).await?;
        D::commit(tx).await?;
        Ok(stored)
    }

    async fn list_shared_items(
        &self,
        scope: &CompanyScope,
        filter: &SharedFilter,
    ) -> Result<Vec<SharedItem>> {
        let mut r = self.read_for(scope.company()).await?;
        let items = list_shared_items(&mut r, scope.company(), filter).await?;
        D::end_read(r).await?;
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
        let mut tx = self.write_for(scope.company()).await?;
        let item = withdraw_item(&mut tx, scope.company(), id, by, at, audit).await?;
        D::commit(tx).await?;
        Ok(item)
    }

    async fn list_consents(&self, scope: &CompanyScope) -> Result<Vec<ConsentRecord>> {
        let mut r = self.read_for(scope.company()).await?;
        let consents = list_consents(&mut r, scope.company()).await?;
        D::end_read(r).await?;
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
        let mut tx = self.write_for(scope.company()).await?;
        let record = put_consent(&mut tx, scope.company(), consent, by, at, audit).await?;
        D::commit(tx).await?;
        Ok(record)
    }

    async fn delete_consent(
        &self,
        scope: &CompanyScope,
        consent: &Consent,
        audit: AuditRecord,
    ) -> Result<()> {
        let mut tx = self.write_for(scope.company()).await?;
        delete_consent(&mut tx, scope.company(), consent, audit).await?;
        D::commit(tx).await
    }

    async fn consent_directory(&self, _admin: &AdminScope) -> Result<Vec<(CompanyId, Consent)>> {
        let mut r = self.read_all(false).await?;
        let directory = consent_directory(&mut r).await?;
        D::end_read(r).await?;
        Ok(directory)
    }
}
