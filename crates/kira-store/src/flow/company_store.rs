//! Companies, keys and the audit log's stores, written once over a
//! backend's transactions ([`Db`]), as `flow/store.rs` does for tasks and
//! budgets. A forced delete removes the company's rows of every concern
//! (`flow::company`); what each backend keeps is appending many audit
//! entries at once ([`Conn::audit_many`]).

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use kira_core::CompanyId;
use kira_core::audit::{AuditEntry, AuditRecord, BrokenLink, ChainReport, ChainVerifier, GENESIS};
use kira_core::auth::{AdminScope, ApiKey, CompanyScope, StoredKey};
use kira_core::company::{Company, CompanyPatch, CompanyProfile};
use kira_core::ids::KeyId;

use crate::flow::companies::{
    AUDIT_COLUMNS, COMPANY_COLUMNS, audit_from_row, company_from_row, load_company,
};
use crate::flow::keys::{KEY_COLUMNS, insert_key_row, key_from_row, load_key};
use crate::flow::store::Db;
use crate::sql::{Columns, Conn, Stmt, q};
use crate::{AuditPage, AuditStore, CompanyStore, DeletedRows, KeyStore, Result, StoreError};

/// Two servers starting on an empty PostgreSQL database: only one stores
/// its key. "kiraboot" in ASCII.
const BOOTSTRAP_LOCK: i64 = 0x6b69_7261_626f_6f74;

/// Audit entries read per statement while the chain is verified.
const VERIFY_BATCH: i64 = 1000;

fn json<T: serde::Serialize>(v: &T) -> Result<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Lets PostgreSQL's row-level policies admit every company's rows for
/// reading until the transaction ends.
async fn admin_read(c: &mut dyn Conn) -> Result<()> {
    let s = q("SELECT set_config('app.admin_read', 'on', true)");
    c.exec(s.pg_only()).await?;
    Ok(())
}

/// Entries in (after, to], in order, `VERIFY_BATCH` a statement.
static WALK_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq > $1 AND seq <= $2 \
         ORDER BY seq LIMIT $3"
    )
});

/// Pushes the entries in (after, to] through `v`, in order.
async fn walk(c: &mut dyn Conn, v: &mut ChainVerifier, after: i64, to: i64) -> Result<()> {
    let mut after = after;
    loop {
        let s = q(WALK_SQL.as_str()).arg(after).arg(to);
        let rows = c.all(s.arg(VERIFY_BATCH)).await?;
        let Some(last) = rows.last() else { break };
        after = last.int("seq")?;
        for r in &rows {
            match audit_from_row(r) {
                Ok(e) => v.push(&e),
                Err(e) => v.malformed(r.int("seq")?, &e.to_string()),
            }
        }
    }
    Ok(())
}

/// The scheduled check ([`AuditStore::verify_audit_scheduled`]): the
/// next `sweep` entries before the checkpoint, from where the sweep
/// stands, and every entry appended after it.
async fn scheduled_walk(c: &mut dyn Conn, sweep: i64) -> Result<ChainReport> {
    // The head first, and entries up to it only, as `verify_audit` walks.
    let head = c
        .one(q("SELECT seq, hash FROM audit_head WHERE id = 1"))
        .await?;
    let (head_seq, head_hash) = (head.int("seq")?, head.text("hash")?);
    let cp = c
        .one(q(
            "SELECT seq, hash, swept FROM audit_checkpoint WHERE id = 1",
        ))
        .await?;
    let (cp_seq, cp_hash, swept) = (cp.int("seq")?, cp.text("hash")?, cp.int("swept")?);
    let broken = |seq: i64, reason: String| ChainReport {
        entries: head_seq,
        ok: false,
        first_broken: Some(BrokenLink { seq, reason }),
    };
    // The older entries, a slice a run, round and round: each slice starts
    // from the hash of the entry the previous one ended with.
    let end = (swept + sweep).min(cp_seq);
    let older = if end <= swept {
        None
    } else {
        let anchor = if swept == 0 {
            Some(GENESIS.to_owned())
        } else {
            let s = q("SELECT hash FROM audit_log WHERE seq = $1").arg(swept);
            c.opt(s).await?.map(|r| r.text("hash")).transpose()?
        };
        Some(match anchor {
            None => broken(
                swept,
                format!("entry {swept} is gone: entries were removed"),
            ),
            Some(hash) => {
                let mut v = ChainVerifier::after(swept, hash);
                walk(c, &mut v, swept, end).await?;
                v.finish_slice(end, (end == cp_seq).then_some(cp_hash.as_str()))
            }
        })
    };
    // What was appended since the checkpoint, up to the head.
    let newer = if head_seq < cp_seq {
        broken(
            head_seq + 1,
            format!(
                "the chain head records entry {head_seq} but entry {cp_seq} was verified: \
                 entries were removed"
            ),
        )
    } else {
        let mut v = ChainVerifier::after(cp_seq, cp_hash.clone());
        walk(c, &mut v, cp_seq, head_seq).await?;
        v.finish(Some((head_seq, head_hash.clone())))
    };
    let first_broken = older.and_then(|r| r.first_broken).or(newer.first_broken);
    if first_broken.is_none() {
        // Verified up to the head; a sweep that reached the checkpoint
        // starts again from the first entry.
        let swept = if end >= cp_seq { 0 } else { end };
        let s = q("UPDATE audit_checkpoint SET seq = $1, hash = $2, swept = $3 WHERE id = 1")
            .arg(head_seq)
            .arg(&head_hash)
            .arg(swept);
        c.exec(s).await?;
    }
    Ok(ChainReport {
        entries: head_seq,
        ok: first_broken.is_none(),
        first_broken,
    })
}

/// The profile's columns, `$2` to `$11` in [`COMPANY_COLUMNS`]' order
/// (`$1` is the company's id).
fn with_profile<'a>(
    s: Stmt<'a>,
    p: &'a CompanyProfile,
    contacts: &'a serde_json::Value,
    consent: &'a serde_json::Value,
) -> Stmt<'a> {
    s.arg(&p.name)
        .arg(&p.industry)
        .arg(&p.jurisdiction)
        .arg(p.revenue_usd)
        .arg(p.complexity_score)
        .arg(p.activity_score)
        .arg(p.priority_multiplier)
        .arg(i64::from(p.sla_response_seconds))
        .arg(contacts)
        .arg(consent)
}

async fn write_profile(
    c: &mut dyn Conn,
    id: &CompanyId,
    p: &CompanyProfile,
    updated_at: DateTime<Utc>,
    archived_at: Option<DateTime<Utc>>,
) -> Result<()> {
    let (contacts, consent) = (json(&p.contacts)?, json(&p.sharing_consent)?);
    let s = q(
        "UPDATE companies SET name = $2, industry = $3, jurisdiction = $4, revenue_usd = $5, \
               complexity_score = $6, activity_score = $7, priority_multiplier = $8, \
               sla_response_seconds = $9, contacts = $10, sharing_consent = $11, updated_at = $12, \
               archived_at = $13 WHERE company_id = $1",
    )
    .arg(id.as_str());
    let s = with_profile(s, p, &contacts, &consent);
    c.exec(s.arg(updated_at).arg(archived_at)).await?;
    Ok(())
}

async fn insert_company(
    c: &mut dyn Conn,
    id: &CompanyId,
    p: &CompanyProfile,
    now: DateTime<Utc>,
) -> Result<()> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "INSERT INTO companies ({COMPANY_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, NULL)"
        )
    });
    let (contacts, consent) = (json(&p.contacts)?, json(&p.sharing_consent)?);
    let s = with_profile(q(SQL.as_str()).arg(id.as_str()), p, &contacts, &consent);
    c.exec(s.arg(now)).await?;
    Ok(())
}

/// Applies `patch` to the company's profile, or with none archives the
/// company, unless it is archived already; the company as it is then.
async fn rewrite(
    c: &mut dyn Conn,
    id: &CompanyId,
    patch: Option<CompanyPatch>,
    now: DateTime<Utc>,
    audit: AuditRecord,
) -> Result<Company> {
    let current = load_company(c, id, true).await?;
    if current.is_archived() {
        let what = if patch.is_some() { "is" } else { "is already" };
        return Err(StoreError::Conflict(format!(
            "company '{id}' {what} archived"
        )));
    }
    match patch {
        Some(patch) => {
            let profile = current.profile.apply(patch)?;
            write_profile(c, id, &profile, now, None).await?;
        }
        None => write_profile(c, id, &current.profile, now, Some(now)).await?,
    }
    let company = load_company(c, id, false).await?;
    c.audit(audit).await?;
    Ok(company)
}

#[async_trait]
impl<D: Db> CompanyStore for D {
    async fn create_company(
        &self,
        scope: &CompanyScope,
        profile: &CompanyProfile,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Company> {
        let now = now.trunc_subsecs(6);
        let id = scope.company();
        let conflict = || StoreError::Conflict(format!("company '{id}' already exists"));
        let mut tx = self.write_for(id).await?;
        let taken = q("SELECT 1 FROM companies WHERE company_id = $1").arg(id.as_str());
        if tx.opt(taken).await?.is_some() {
            return Err(conflict());
        }
        // A concurrent create of the same id (PostgreSQL) got there first.
        insert_company(&mut tx, id, profile, now)
            .await
            .map_err(|e| {
                if D::unique_violation(&e) {
                    conflict()
                } else {
                    e
                }
            })?;
        let company = load_company(&mut tx, id, false).await?;
        tx.audit(audit).await?;
        D::commit(tx).await?;
        Ok(company)
    }

    async fn get_company(&self, scope: &CompanyScope) -> Result<Company> {
        let mut r = self.read_for(scope.company()).await?;
        let company = load_company(&mut r, scope.company(), false).await?;
        D::end_read(r).await?;
        Ok(company)
    }

    async fn list_companies(
        &self,
        _admin: &AdminScope,
        include_archived: bool,
        audit: AuditRecord,
    ) -> Result<Vec<Company>> {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "SELECT {COMPANY_COLUMNS} FROM companies WHERE ($1 OR archived_at IS NULL) \
                 ORDER BY company_id"
            )
        });
        let mut tx = self.write_system().await?;
        admin_read(&mut tx).await?;
        let rows = tx.all(q(SQL.as_str()).arg(include_archived)).await?;
        let companies = rows
            .iter()
            .map(company_from_row)
            .collect::<Result<Vec<_>>>()?;
        tx.audit(audit).await?;
        D::commit(tx).await?;
        Ok(companies)
    }

    async fn company_directory(&self, _admin: &AdminScope) -> Result<Vec<Company>> {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "SELECT {COMPANY_COLUMNS} FROM companies WHERE archived_at IS NULL ORDER BY company_id"
            )
        });
        let mut r = self.read_all(false).await?;
        let rows = r.all(q(SQL.as_str())).await?;
        D::end_read(r).await?;
        rows.iter().map(company_from_row).collect()
    }

    async fn directory_version(&self) -> Result<i64> {
        let mut c = self.plain().await?;
        let v = c.int(q("SELECT version FROM directory_version WHERE id = 1"));
        v.await?.ok_or(StoreError::NotFound)
    }

    async fn update_company(
        &self,
        scope: &CompanyScope,
        patch: CompanyPatch,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Company> {
        let mut tx = self.write_for(scope.company()).await?;
        let now = now.trunc_subsecs(6);
        let company = rewrite(&mut tx, scope.company(), Some(patch), now, audit).await?;
        D::commit(tx).await?;
        Ok(company)
    }

    async fn archive_company(
        &self,
        scope: &CompanyScope,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Company> {
        let mut tx = self.write_for(scope.company()).await?;
        let now = now.trunc_subsecs(6);
        let company = rewrite(&mut tx, scope.company(), None, now, audit).await?;
        D::commit(tx).await?;
        Ok(company)
    }

    async fn delete_company(
        &self,
        scope: &CompanyScope,
        audit: AuditRecord,
    ) -> Result<DeletedRows> {
        let company = scope.company();
        let mut tx = self.write_for(company).await?;
        // The row lock (PostgreSQL) waits out a key being inserted for this
        // company (its foreign-key check holds a share lock), so the key is
        // deleted too.
        load_company(&mut tx, company, true).await?;
        let mut deleted = DeletedRows::default();
        crate::flow::company::delete_company_rows(&mut tx, company, audit.at, &mut deleted).await?;
        let rows = crate::flow::company::COMPANY_ROWS;
        crate::flow::company::delete_rows(&mut tx, company, rows, &mut deleted).await?;
        tx.audit(audit).await?;
        D::commit(tx).await?;
        Ok(deleted)
    }
}

#[async_trait]
impl<D: Db> KeyStore for D {
    async fn bootstrap_admin_key(&self, key: &StoredKey, audit: AuditRecord) -> Result<bool> {
        let mut tx = self.write_system().await?;
        let lock = q("SELECT pg_advisory_xact_lock($1)").arg(BOOTSTRAP_LOCK);
        tx.exec(lock.pg_only()).await?;
        let n = tx.int(q("SELECT count(*) FROM api_keys")).await?;
        if n.unwrap_or(0) > 0 {
            return Ok(false);
        }
        insert_key_row(&mut tx, key).await?;
        tx.audit(audit).await?;
        D::commit(tx).await?;
        Ok(true)
    }

    async fn insert_key(
        &self,
        _admin: &AdminScope,
        key: &StoredKey,
        audit: AuditRecord,
    ) -> Result<ApiKey> {
        let mut tx = self.write_system().await?;
        if let Some(c) = &key.key.company_id {
            let name = q("SELECT set_config('app.current_company_id', $1, true)").arg(c.as_str());
            tx.exec(name.pg_only()).await?;
            load_company(&mut tx, c, false).await?;
        }
        insert_key_row(&mut tx, key).await?;
        tx.audit(audit).await?;
        D::commit(tx).await?;
        let mut k = key.key.clone();
        k.created_at = k.created_at.trunc_subsecs(6);
        k.revoked_at = k.revoked_at.map(|t| t.trunc_subsecs(6));
        Ok(k)
    }

    async fn find_key(&self, id: &KeyId) -> Result<Option<StoredKey>> {
        let mut c = self.plain().await?;
        load_key(&mut c, id, false).await
    }

    async fn list_keys(&self, _admin: &AdminScope, audit: AuditRecord) -> Result<Vec<ApiKey>> {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, key_id")
        });
        let mut tx = self.write_system().await?;
        let rows = tx.all(q(SQL.as_str())).await?;
        let keys = rows
            .iter()
            .map(|r| key_from_row(r).map(|k| k.key))
            .collect::<Result<Vec<_>>>()?;
        tx.audit(audit).await?;
        D::commit(tx).await?;
        Ok(keys)
    }

    async fn revoke_key(
        &self,
        _admin: &AdminScope,
        id: &KeyId,
        now: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<ApiKey> {
        let now = now.trunc_subsecs(6);
        let mut tx = self.write_system().await?;
        let found = load_key(&mut tx, id, true).await?;
        let mut key = found.ok_or(StoreError::NotFound)?.key;
        if key.revoked_at.is_some() {
            return Err(StoreError::Conflict(format!(
                "key '{id}' is already revoked"
            )));
        }
        let s = q("UPDATE api_keys SET revoked_at = $1 WHERE key_id = $2");
        tx.exec(s.arg(now).arg(id.as_str())).await?;
        tx.audit(audit).await?;
        D::commit(tx).await?;
        key.revoked_at = Some(now);
        Ok(key)
    }
}

#[async_trait]
impl<D: Db> AuditStore for D {
    async fn append_audit(&self, record: AuditRecord) -> Result<AuditEntry> {
        let mut tx = self.write_system().await?;
        let e = tx.audit(record).await?;
        D::commit(tx).await?;
        Ok(e)
    }

    async fn append_audits(&self, records: Vec<AuditRecord>) -> Result<Vec<AuditEntry>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.write_system().await?;
        let out = tx.audit_many(records).await?;
        D::commit(tx).await?;
        Ok(out)
    }

    async fn list_company_audit(
        &self,
        scope: &CompanyScope,
        page: AuditPage,
    ) -> Result<Vec<AuditEntry>> {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE company_id = $1 AND seq > $2 \
                 ORDER BY seq LIMIT $3"
            )
        });
        let mut r = self.read_for(scope.company()).await?;
        let s = q(SQL.as_str()).arg(scope.company().as_str());
        let rows = r
            .all(s.arg(page.after_seq).arg(i64::from(page.limit)))
            .await?;
        D::end_read(r).await?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn list_all_audit(
        &self,
        _admin: &AdminScope,
        company: Option<&CompanyId>,
        page: AuditPage,
        audit: AuditRecord,
    ) -> Result<Vec<AuditEntry>> {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE ($1 IS NULL OR company_id = $1) \
                 AND seq > $2 ORDER BY seq LIMIT $3"
            )
        });
        let mut tx = self.write_system().await?;
        admin_read(&mut tx).await?;
        let s = q(SQL.as_str()).arg(company.map(CompanyId::as_str));
        let rows = tx
            .all(s.arg(page.after_seq).arg(i64::from(page.limit)))
            .await?;
        let entries = rows
            .iter()
            .map(audit_from_row)
            .collect::<Result<Vec<_>>>()?;
        tx.audit(audit).await?;
        D::commit(tx).await?;
        Ok(entries)
    }

    async fn verify_audit(&self, _admin: &AdminScope, audit: AuditRecord) -> Result<ChainReport> {
        let mut tx = self.write_system().await?;
        admin_read(&mut tx).await?;
        // The head first, and entries up to it only: appends committed while
        // the walk runs are past it, and every entry up to it committed with
        // it, so the walk needs no lock and holds up no writer.
        let head = tx
            .one(q("SELECT seq, hash FROM audit_head WHERE id = 1"))
            .await?;
        let (head_seq, head_hash) = (head.int("seq")?, head.text("hash")?);
        let mut v = ChainVerifier::default();
        walk(&mut tx, &mut v, 0, head_seq).await?;
        let report = v.finish(Some((head_seq, head_hash)));
        tx.audit(audit).await?;
        D::commit(tx).await?;
        Ok(report)
    }

    async fn verify_audit_scheduled(
        &self,
        _admin: &AdminScope,
        sweep: i64,
        audit: AuditRecord,
    ) -> Result<ChainReport> {
        let mut tx = self.write_system().await?;
        admin_read(&mut tx).await?;
        let report = scheduled_walk(&mut tx, sweep.max(0)).await?;
        tx.audit(audit).await?;
        D::commit(tx).await?;
        Ok(report)
    }
}
