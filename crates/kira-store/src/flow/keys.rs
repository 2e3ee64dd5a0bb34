//! API key rows, written once for both backends.

use kira_core::CompanyId;
use kira_core::auth::{ApiKey, Role, StoredKey};
use kira_core::ids::KeyId;

use crate::sql::{Columns, Conn, q};
use crate::{Result, StoreError};

/// The columns [`key_from_row`] reads.
pub(crate) const KEY_COLUMNS: &str =
    "key_id, name, role, company_id, token_sha256, created_at, revoked_at";

pub(crate) fn key_from_row<R: Columns + ?Sized>(r: &R) -> Result<StoredKey> {
    let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt(e.to_string());
    let company = r.opt_text("company_id")?;
    Ok(StoredKey {
        key: ApiKey {
            id: KeyId::parse(&r.text("key_id")?).map_err(|e| corrupt(&e))?,
            name: r.text("name")?,
            role: Role::parse(&r.text("role")?).map_err(|e| corrupt(&e))?,
            company_id: company
                .as_deref()
                .map(CompanyId::parse)
                .transpose()
                .map_err(|e| corrupt(&e))?,
            created_at: r.time("created_at")?,
            revoked_at: r.opt_time("revoked_at")?,
        },
        token_sha256: r
            .bytes("token_sha256")?
            .try_into()
            .map_err(|_| StoreError::Corrupt("token hash is not 32 bytes".into()))?,
    })
}

/// Inserts `key`: a conflict when its id is taken, not found when its
/// company was deleted after the caller looked.
pub(crate) async fn insert_key_row(c: &mut dyn Conn, key: &StoredKey) -> Result<()> {
    use chrono::SubsecRound;
    let k = &key.key;
    let done = c
        .exec(
            q("INSERT INTO api_keys (key_id, name, role, company_id, token_sha256, created_at, revoked_at) \
               VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .arg(k.id.as_str())
            .arg(k.name.as_str())
            .arg(k.role.as_str())
            .arg(k.company_id.as_ref().map(CompanyId::as_str))
            .arg(&key.token_sha256[..])
            .arg(k.created_at.trunc_subsecs(6))
            .arg(k.revoked_at.map(|t| t.trunc_subsecs(6))),
        )
        .await;
    match done {
        Ok(_) => Ok(()),
        Err(StoreError::Database(sqlx::Error::Database(d))) if d.is_unique_violation() => Err(
            StoreError::Conflict(format!("key '{}' already exists", k.id)),
        ),
        Err(StoreError::Database(sqlx::Error::Database(d))) if d.is_foreign_key_violation() => {
            Err(StoreError::NotFound)
        }
        Err(e) => Err(e),
    }
}

/// The key, if it exists; on PostgreSQL `lock` takes its row.
pub(crate) async fn load_key(
    c: &mut dyn Conn,
    id: &KeyId,
    lock: bool,
) -> Result<Option<StoredKey>> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = $1")
    });
    let s = q(SQL.as_str()).arg(id.as_str());
    let s = if lock { s.for_update() } else { s };
    c.opt(s).await?.as_ref().map(key_from_row).transpose()
}
