//! [`SessionStore`], written once for every [`Db`].

use async_trait::async_trait;
use chrono::SubsecRound;
use kira_core::audit::AuditRecord;
use kira_core::auth::{StoredKey, StoredSession};
use kira_core::ids::KeyId;

use crate::flow::keys::key_from_row;
use crate::flow::store::Db;
use crate::sessions::SessionStore;
use crate::sql::{Columns, Conn, q};
use crate::{Result, StoreError};

fn session_from_row<R: Columns + ?Sized>(r: &R) -> Result<StoredSession> {
    Ok(StoredSession {
        id: r.text("session_id")?,
        key_id: KeyId::parse(&r.text("session_key_id")?)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        secret_sha256: r
            .bytes("secret_sha256")?
            .try_into()
            .map_err(|_| StoreError::Corrupt("session hash is not 32 bytes".into()))?,
        csrf: r.text("csrf")?,
        created_at: r.time("session_created_at")?,
        expires_at: r.time("expires_at")?,
    })
}

async fn find(c: &mut dyn Conn, id: &str) -> Result<Option<(StoredSession, StoredKey)>> {
    let row = c
        .opt(
            q("SELECT s.session_id, s.key_id AS session_key_id, s.secret_sha256, s.csrf, \
                 s.created_at AS session_created_at, s.expires_at, \
                 k.key_id, k.name, k.role, k.company_id, k.token_sha256, k.created_at, k.revoked_at \
               FROM ui_sessions s JOIN api_keys k ON k.key_id = s.key_id \
               WHERE s.session_id = $1")
            .arg(id),
        )
        .await?;
    match row {
        None => Ok(None),
        Some(r) => Ok(Some((session_from_row(&r)?, key_from_row(&r)?))),
    }
}

#[async_trait]
impl<D: Db> SessionStore for D {
    async fn insert_session(&self, s: &StoredSession, audit: AuditRecord) -> Result<()> {
        let mut tx = self.write_system().await?;
        tx.exec(
            q("DELETE FROM ui_sessions WHERE expires_at <= $1").arg(s.created_at.trunc_subsecs(6)),
        )
        .await?;
        let key = tx
            .int(q("SELECT count(*) FROM api_keys WHERE key_id = $1").arg(s.key_id.as_str()))
            .await?;
        if key.unwrap_or(0) == 0 {
            let _ = D::rollback(tx).await;
            return Err(StoreError::NotFound);
        }
        tx.exec(
            q("INSERT INTO ui_sessions \
                 (session_id, key_id, secret_sha256, csrf, created_at, expires_at) \
               VALUES ($1, $2, $3, $4, $5, $6)")
            .arg(s.id.as_str())
            .arg(s.key_id.as_str())
            .arg(&s.secret_sha256[..])
            .arg(s.csrf.as_str())
            .arg(s.created_at.trunc_subsecs(6))
            .arg(s.expires_at.trunc_subsecs(6)),
        )
        .await?;
        tx.audit(audit).await?;
        D::commit(tx).await
    }

    async fn find_session(&self, id: &str) -> Result<Option<(StoredSession, StoredKey)>> {
        let mut c = self.plain().await?;
        find(&mut c, id).await
    }

    async fn delete_session(&self, id: &str, audit: AuditRecord) -> Result<bool> {
        let mut tx = self.write_system().await?;
        let n = tx
            .exec(q("DELETE FROM ui_sessions WHERE session_id = $1").arg(id))
            .await?;
        if n == 0 {
            D::rollback(tx).await?;
            return Ok(false);
        }
        tx.audit(audit).await?;
        D::commit(tx).await?;
        Ok(true)
    }
}
