//! [`ToolStore`], written once for every [`Db`]: the registry's rows and
//! the companies' tool configurations (migration 0021). A company's rows
//! are read and written in its company's transaction, which on PostgreSQL
//! also sees the shared rows (infrastructure and domain); the admin's
//! writes of shared rows set `app.tools_registry`, the one setting that
//! admits them.

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use kira_core::CompanyId;
use kira_core::audit::AuditRecord;
use kira_core::auth::CompanyScope;
use kira_core::tools::{Layer, ToolEntry, ToolSource};
use uuid::Uuid;

use crate::flow::store::{Db, commit_or_roll_back, lock_company};
use crate::sql::{Columns, Conn, q};
use crate::tools::{
    CredentialInfo, CredentialWrite, ToolConfig, ToolKey, ToolListing, ToolStore, ToolWriter,
};
use crate::{Result, StoreError};

fn entry_from_row<R: Columns + ?Sized>(r: &R) -> Result<ToolEntry> {
    let layer = r.text("layer")?;
    let source: ToolSource = serde_json::from_value(r.json("source")?)
        .map_err(|e| StoreError::Corrupt(format!("tool source: {e}")))?;
    Ok(ToolEntry {
        name: r.text("name")?,
        layer: Layer::parse(&layer).map_err(|_| StoreError::Corrupt(format!("layer {layer:?}")))?,
        domain: r.opt_text("domain")?,
        company_id: match r.opt_text("company_id")? {
            Some(c) => Some(
                CompanyId::parse(&c).map_err(|_| StoreError::Corrupt(format!("company {c:?}")))?,
            ),
            None => None,
        },
        description: r.text("description")?,
        source,
        timeout_ms: r
            .opt_int("timeout_ms")?
            .map(|t| u64::try_from(t).unwrap_or_default()),
        created_by: r.text("created_by")?,
        created_at: Some(r.time("created_at")?),
    })
}

async fn list(c: &mut dyn Conn, company: Option<&CompanyId>) -> Result<Vec<ToolEntry>> {
    let s = q(concat!(
        "SELECT name, layer, domain, company_id, description, source, timeout_ms, \
         created_by, created_at FROM tool_registrations ",
        "WHERE company_id IS NULL OR company_id = $1 ORDER BY name, layer, slot"
    ))
    .arg(company.map(CompanyId::as_str));
    c.all(s).await?.iter().map(entry_from_row).collect()
}

async fn insert(c: &mut dyn Conn, e: &ToolEntry, audit: AuditRecord) -> Result<ToolEntry> {
    let source = serde_json::to_value(&e.source).map_err(|x| StoreError::Corrupt(x.to_string()))?;
    let slot = ToolKey::of(e).slot();
    let at = e.created_at.unwrap_or(audit.at).trunc_subsecs(6);
    let s = q(
        "INSERT INTO tool_registrations (tool_id, slot, name, layer, domain, company_id, \
         description, source, timeout_ms, created_by, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
    )
    .arg(Uuid::now_v7())
    .arg(slot.as_str())
    .arg(e.name.as_str())
    .arg(e.layer.as_str())
    .arg(e.domain.as_deref())
    .arg(e.company_id.as_ref().map(CompanyId::as_str))
    .arg(e.description.as_str())
    .arg(&source)
    .arg(e.timeout_ms.map(|t| i64::try_from(t).unwrap_or(i64::MAX)))
    .arg(e.created_by.as_str())
    .arg(at);
    if c.exec(s).await? != 1 {
        return Err(StoreError::Conflict(format!(
            "a {} tool named '{}' is registered already{}",
            e.layer.as_str(),
            e.name,
            e.domain
                .as_deref()
                .map(|d| format!(" for {d}"))
                .unwrap_or_default()
        )));
    }
    c.audit(audit).await?;
    Ok(ToolEntry {
        created_at: Some(at),
        ..e.clone()
    })
}

async fn delete(c: &mut dyn Conn, key: &ToolKey, audit: AuditRecord) -> Result<()> {
    let slot = key.slot();
    let n = c
        .exec(
            q("DELETE FROM tool_registrations WHERE slot = $1 AND name = $2")
                .arg(slot.as_str())
                .arg(key.name.as_str()),
        )
        .await?;
    if n == 0 {
        return Err(StoreError::NotFound);
    }
    // Its listing goes with it: the shared server's, or the company's.
    // (A company's listing of a removed shared registration stays until
    // the company is deleted; its source digest keeps it from being shown
    // for another registration of the name.)
    delete_listing(c, &slot, &key.name, key.company.as_ref()).await?;
    c.audit(audit).await?;
    Ok(())
}

async fn delete_listing(
    c: &mut dyn Conn,
    slot: &str,
    name: &str,
    company: Option<&CompanyId>,
) -> Result<u64> {
    let s = match company {
        Some(id) => {
            q("DELETE FROM tool_listings WHERE slot = $1 AND name = $2 AND company_id = $3")
                .arg(slot)
                .arg(name)
                .arg(id.as_str())
        }
        None => q("DELETE FROM tool_listings WHERE slot = $1 AND name = $2 AND company_id IS NULL")
            .arg(slot)
            .arg(name),
    };
    c.exec(s).await
}

async fn put_listing(c: &mut dyn Conn, l: &ToolListing) -> Result<()> {
    delete_listing(c, &l.slot, &l.name, l.company_id.as_ref()).await?;
    // Another process listing the same server at the same moment wrote
    // the same thing: nothing more to do.
    c.exec(
        q(
            "INSERT INTO tool_listings (slot, name, company_id, source_digest, tools, listed_at) \
           VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .arg(l.slot.as_str())
        .arg(l.name.as_str())
        .arg(l.company_id.as_ref().map(CompanyId::as_str))
        .arg(l.source_digest.as_str())
        .arg(&l.tools)
        .arg(l.listed_at.trunc_subsecs(6)),
    )
    .await?;
    Ok(())
}

async fn listings(c: &mut dyn Conn, company: Option<&CompanyId>) -> Result<Vec<ToolListing>> {
    let s = q(
        "SELECT slot, name, company_id, source_digest, tools, listed_at FROM tool_listings \
         WHERE company_id IS NULL OR company_id = $1 \
         ORDER BY slot, name, coalesce(company_id, '')",
    )
    .arg(company.map(CompanyId::as_str));
    c.all(s)
        .await?
        .iter()
        .map(|r| {
            Ok(ToolListing {
                slot: r.text("slot")?,
                name: r.text("name")?,
                company_id: match r.opt_text("company_id")? {
                    Some(c) => Some(
                        CompanyId::parse(&c)
                            .map_err(|_| StoreError::Corrupt(format!("company {c:?}")))?,
                    ),
                    None => None,
                },
                source_digest: r.text("source_digest")?,
                tools: r.json("tools")?,
                listed_at: r.time("listed_at")?,
            })
        })
        .collect()
}

/// Admits the shared (no company) registrations for writing (PostgreSQL).
async fn registry_policy(c: &mut dyn Conn) -> Result<()> {
    c.exec(q("SELECT set_config('app.tools_registry', 'on', true)").pg_only())
        .await?;
    Ok(())
}

/// Removes a deleted company's registrations and tool configurations.
pub(crate) async fn delete_company_tools(
    c: &mut dyn Conn,
    company: &CompanyId,
    deleted: &mut crate::DeletedRows,
) -> Result<()> {
    crate::flow::company::delete_rows(c, company, crate::flow::company::TOOL_ROWS, deleted).await
}

/// The transaction a registration's write runs in: its company's, or (a
/// shared entry) the system's with the registry's policy open. A company
/// key reaches its own company's entries only.
async fn tool_tx<D: Db>(
    db: &D,
    who: ToolWriter<'_>,
    entry_company: Option<&CompanyId>,
) -> Result<D::Tx> {
    match (who, entry_company) {
        (ToolWriter::Company(s), Some(c)) if s.company() == c => db.write_for(c).await,
        (ToolWriter::Company(_), _) => Err(StoreError::NotFound),
        (ToolWriter::Admin(_), Some(c)) => db.write_for(c).await,
        (ToolWriter::Admin(_), None) => {
            let mut tx = db.write_system().await?;
            registry_policy(&mut tx).await?;
            Ok(tx)
        }
    }
}

#[async_trait]
impl<D: Db> ToolStore for D {
    async fn list_tools(&self, company: Option<&CompanyScope>) -> Result<Vec<ToolEntry>> {
        match company {
            Some(s) => {
                let mut r = self.read_for(s.company()).await?;
                let out = list(&mut r, Some(s.company())).await?;
                D::end_read(r).await?;
                Ok(out)
            }
            None => {
                let mut r = self.plain().await?;
                list(&mut r, None).await
            }
        }
    }

    async fn add_tool(
        &self,
        who: ToolWriter<'_>,
        entry: &ToolEntry,
        audit: AuditRecord,
    ) -> Result<ToolEntry> {
        let mut tx = tool_tx(self, who, entry.company_id.as_ref()).await?;
        if let Some(c) = &entry.company_id
            && !lock_company(&mut tx, c).await?
        {
            let _ = D::rollback(tx).await;
            return Err(StoreError::NotFound);
        }
        let done = insert(&mut tx, entry, audit).await;
        commit_or_roll_back::<D, _>(tx, done).await
    }

    async fn remove_tool(
        &self,
        who: ToolWriter<'_>,
        key: &ToolKey,
        audit: AuditRecord,
    ) -> Result<()> {
        let mut tx = tool_tx(self, who, key.company.as_ref()).await?;
        let done = delete(&mut tx, key, audit).await;
        commit_or_roll_back::<D, _>(tx, done).await
    }

    async fn put_tool_listing(&self, who: ToolWriter<'_>, listing: &ToolListing) -> Result<()> {
        let mut tx = tool_tx(self, who, listing.company_id.as_ref()).await?;
        if let Some(c) = &listing.company_id
            && !lock_company(&mut tx, c).await?
        {
            let _ = D::rollback(tx).await;
            return Err(StoreError::NotFound);
        }
        let done = put_listing(&mut tx, listing).await;
        commit_or_roll_back::<D, _>(tx, done).await
    }

    async fn tool_listings(&self, company: Option<&CompanyScope>) -> Result<Vec<ToolListing>> {
        match company {
            Some(s) => {
                let mut r = self.read_for(s.company()).await?;
                let out = listings(&mut r, Some(s.company())).await?;
                D::end_read(r).await?;
                Ok(out)
            }
            None => {
                let mut r = self.plain().await?;
                listings(&mut r, None).await
            }
        }
    }

    async fn tool_configs(&self, scope: &CompanyScope) -> Result<Vec<ToolConfig>> {
        let mut r = self.read_for(scope.company()).await?;
        let rows = r
            .all(
                q(
                    "SELECT tool, config, updated_by, updated_at FROM tool_configs \
                   WHERE company_id = $1 ORDER BY tool",
                )
                .arg(scope.company().as_str()),
            )
            .await?;
        D::end_read(r).await?;
        rows.iter()
            .map(|r| {
                Ok(ToolConfig {
                    tool: r.text("tool")?,
                    config: r.json("config")?,
                    updated_by: r.text("updated_by")?,
                    updated_at: r.time("updated_at")?,
                })
            })
            .collect()
    }

    async fn put_tool_config(
        &self,
        scope: &CompanyScope,
        tool: &str,
        config: Option<&serde_json::Value>,
        by: &str,
        at: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<()> {
        let company = scope.company();
        let mut tx = self.write_for(company).await?;
        let done = async {
            if !lock_company(&mut tx, company).await? {
                return Err(StoreError::NotFound);
            }
            let n = match config {
                Some(v) => {
                    tx.exec(
                        q("INSERT INTO tool_configs (company_id, tool, config, updated_by, updated_at) \
                           VALUES ($1, $2, $3, $4, $5) ON CONFLICT (company_id, tool) DO UPDATE \
                           SET config = excluded.config, updated_by = excluded.updated_by, \
                           updated_at = excluded.updated_at")
                        .arg(company.as_str())
                        .arg(tool)
                        .arg(v)
                        .arg(by)
                        .arg(at.trunc_subsecs(6)),
                    )
                    .await?
                }
                None => {
                    tx.exec(
                        q("DELETE FROM tool_configs WHERE company_id = $1 AND tool = $2")
                            .arg(company.as_str())
                            .arg(tool),
                    )
                    .await?
                }
            };
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            tx.audit(audit).await.map(|_| ())
        }
        .await;
        commit_or_roll_back::<D, _>(tx, done).await
    }

    async fn put_credential(
        &self,
        scope: &CompanyScope,
        tool: &str,
        sealed: &str,
        how: CredentialWrite,
        by: &str,
        at: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<()> {
        let company = scope.company();
        let at = at.trunc_subsecs(6);
        let mut tx = self.write_for(company).await?;
        let done = async {
            if !lock_company(&mut tx, company).await? {
                return Err(StoreError::NotFound);
            }
            let n = match how {
                CredentialWrite::Set => {
                    tx.exec(
                        q("INSERT INTO tool_credentials (company_id, tool, sealed, created_by, created_at) \
                           VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING")
                        .arg(company.as_str())
                        .arg(tool)
                        .arg(sealed)
                        .arg(by)
                        .arg(at),
                    )
                    .await?
                }
                CredentialWrite::Rotate => {
                    tx.exec(
                        q("UPDATE tool_credentials SET sealed = $3, rotated_at = $4 \
                           WHERE company_id = $1 AND tool = $2")
                        .arg(company.as_str())
                        .arg(tool)
                        .arg(sealed)
                        .arg(at),
                    )
                    .await?
                }
            };
            if n == 0 {
                return Err(match how {
                    CredentialWrite::Set => StoreError::Conflict(format!(
                        "the company has a credential for '{tool}' already: rotate it"
                    )),
                    CredentialWrite::Rotate => StoreError::NotFound,
                });
            }
            tx.audit(audit).await.map(|_| ())
        }
        .await;
        commit_or_roll_back::<D, _>(tx, done).await
    }

    async fn list_credentials(&self, scope: &CompanyScope) -> Result<Vec<CredentialInfo>> {
        let mut r = self.read_for(scope.company()).await?;
        let rows = r
            .all(
                q(
                    "SELECT tool, created_by, created_at, rotated_at FROM tool_credentials \
                   WHERE company_id = $1 ORDER BY tool",
                )
                .arg(scope.company().as_str()),
            )
            .await?;
        D::end_read(r).await?;
        rows.iter()
            .map(|r| {
                Ok(CredentialInfo {
                    tool: r.text("tool")?,
                    created_by: r.text("created_by")?,
                    created_at: r.time("created_at")?,
                    rotated_at: r.opt_time("rotated_at")?,
                })
            })
            .collect()
    }

    async fn sealed_credentials(&self, scope: &CompanyScope) -> Result<Vec<(String, String)>> {
        let mut r = self.read_for(scope.company()).await?;
        let rows = r
            .all(
                q("SELECT tool, sealed FROM tool_credentials WHERE company_id = $1 ORDER BY tool")
                    .arg(scope.company().as_str()),
            )
            .await?;
        D::end_read(r).await?;
        rows.iter()
            .map(|r| Ok((r.text("tool")?, r.text("sealed")?)))
            .collect()
    }

    async fn delete_credential(
        &self,
        scope: &CompanyScope,
        tool: &str,
        audit: AuditRecord,
    ) -> Result<()> {
        let mut tx = self.write_for(scope.company()).await?;
        let done = async {
            let n = tx
                .exec(
                    q("DELETE FROM tool_credentials WHERE company_id = $1 AND tool = $2")
                        .arg(scope.company().as_str())
                        .arg(tool),
                )
                .await?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            tx.audit(audit).await.map(|_| ())
        }
        .await;
        commit_or_roll_back::<D, _>(tx, done).await
    }
}
