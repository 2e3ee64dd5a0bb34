//! API keys and authentication: who a bearer token is, issuing, listing
//! and revoking keys (admin), and the first admin key of a new database.
//!
//! A token's secret is shown once, when it is issued; kira keeps its hash.

use std::sync::Arc;

use kira_core::ValidationError;
use kira_core::audit::{AuditRecord, Outcome};
use kira_core::auth::{
    Actor, AdminScope, ApiKey, IssuedKey, IssuedSession, NewKey, Principal, Role, StoredSession,
    session_id, token_key_id,
};
use kira_core::clock::Clock;
use kira_core::ids::KeyId;
use kira_store::Store;

use crate::{Ctx, EngineError};

/// Why a token does not authenticate. Recorded in the audit log only: the
/// caller is told nothing more than that it is not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthenticated {
    Malformed,
    UnknownKey,
    LookupFailed,
    WrongSecretOrRevoked,
}

impl Unauthenticated {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Malformed => "malformed token",
            Self::UnknownKey => "unknown key",
            Self::LookupFailed => "key lookup failed",
            Self::WrongSecretOrRevoked => "wrong secret or revoked key",
        }
    }
}

/// How long a dashboard session lasts after sign-in.
pub const SESSION_TTL: chrono::TimeDelta = chrono::TimeDelta::hours(12);

/// A key just issued: the record kira keeps and the token, shown once.
#[derive(Debug)]
pub struct CreatedKey {
    pub key: ApiKey,
    pub token: String,
}

/// Keys and authentication. No state of its own: a key's truth is the
/// store's, read on every request, so a revocation holds at once.
pub struct Keys {
    ctx: Arc<Ctx>,
}

impl Keys {
    pub(crate) fn new(ctx: Arc<Ctx>) -> Self {
        Self { ctx }
    }

    /// The principal behind a bearer token.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, Unauthenticated> {
        let key_id = token_key_id(token).ok_or(Unauthenticated::Malformed)?;
        let stored = self
            .ctx
            .store
            .find_key(&key_id)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "key lookup failed");
                Unauthenticated::LookupFailed
            })?
            .ok_or(Unauthenticated::UnknownKey)?;
        Principal::authenticate(token, &stored).ok_or(Unauthenticated::WrongSecretOrRevoked)
    }

    /// Starts a dashboard session for `principal`, an API key that just
    /// authenticated; the sign-in is audited with it. The token is for the
    /// browser's cookie only.
    pub async fn start_session(
        &self,
        principal: &Principal,
        audit: AuditRecord,
    ) -> Result<IssuedSession, EngineError> {
        let Actor::Key(key) = principal.actor() else {
            return Err(ValidationError::new("key", "only an API key signs in").into());
        };
        let now = chrono::SubsecRound::trunc_subsecs(self.ctx.clock.now(), 6);
        let issued = StoredSession::issue(&mut rand::rng(), key.clone(), now, SESSION_TTL);
        let audit = AuditRecord {
            target: format!("session:{}", issued.stored.id),
            detail: format!("until {}", issued.stored.expires_at.to_rfc3339()),
            ..audit
        };
        self.ctx.store.insert_session(&issued.stored, audit).await?;
        Ok(issued)
    }

    /// The principal behind a dashboard session token, and the session
    /// (its form token): while it has not expired and its key is live.
    pub async fn session(
        &self,
        token: &str,
    ) -> Result<(Principal, StoredSession), Unauthenticated> {
        let id = session_id(token).ok_or(Unauthenticated::Malformed)?;
        let (session, key) = self
            .ctx
            .store
            .find_session(id)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "session lookup failed");
                Unauthenticated::LookupFailed
            })?
            .ok_or(Unauthenticated::UnknownKey)?;
        let principal =
            Principal::authenticate_session(token, &session, &key, self.ctx.clock.now())
                .ok_or(Unauthenticated::WrongSecretOrRevoked)?;
        Ok((principal, session))
    }

    /// Ends the session (sign-out), audited; false when it was gone.
    pub async fn end_session(
        &self,
        session: &StoredSession,
        audit: AuditRecord,
    ) -> Result<bool, EngineError> {
        let audit = AuditRecord {
            target: format!("session:{}", session.id),
            ..audit
        };
        Ok(self.ctx.store.delete_session(&session.id, audit).await?)
    }

    /// Whether a key still authenticates: not revoked, not deleted. A failed
    /// lookup counts as no, so what a key holds open never outlives it
    /// because the database was down.
    pub async fn is_live(&self, key: &KeyId) -> bool {
        matches!(self.ctx.store.find_key(key).await, Ok(Some(k)) if k.key.revoked_at.is_none())
    }

    /// Issues a key (admin); the audit entry names it and its role.
    /// `Store(NotFound)` when it names a company that does not exist.
    pub async fn create(
        &self,
        admin: &AdminScope,
        new: NewKey,
        audit: AuditRecord,
    ) -> Result<CreatedKey, EngineError> {
        let issued = new.issue(&mut rand::rng(), self.ctx.clock.now())?;
        let audit = AuditRecord {
            target: format!("key:{}", issued.stored.key.id),
            detail: format!("role={}", issued.stored.key.role),
            ..audit
        };
        let key = self
            .ctx
            .store
            .insert_key(admin, &issued.stored, audit)
            .await?;
        Ok(CreatedKey {
            key,
            token: issued.token,
        })
    }

    /// Every key (admin), without its token.
    pub async fn list(
        &self,
        admin: &AdminScope,
        audit: AuditRecord,
    ) -> Result<Vec<ApiKey>, EngineError> {
        Ok(self.ctx.store.list_keys(admin, audit).await?)
    }

    /// Revokes a key (admin): it stops authenticating at once.
    /// `Store(Conflict)` when it already was.
    pub async fn revoke(
        &self,
        admin: &AdminScope,
        id: &KeyId,
        audit: AuditRecord,
    ) -> Result<ApiKey, EngineError> {
        Ok(self
            .ctx
            .store
            .revoke_key(admin, id, self.ctx.clock.now(), audit)
            .await?)
    }
}

/// On a database with no API key at all, makes the first admin key and
/// returns it (the caller shows the token once). Safe to call on every
/// start and from several processes at once: only one key is ever made.
/// A function of the store, not of an engine: it runs before one is built.
pub async fn bootstrap_admin_key(
    store: &dyn Store,
    clock: &dyn Clock,
) -> Result<Option<IssuedKey>, EngineError> {
    let now = clock.now();
    let issued = NewKey {
        name: "bootstrap-admin".into(),
        role: Role::Admin,
        company_id: None,
    }
    .issue(&mut rand::rng(), now)?;
    let audit = AuditRecord {
        at: now,
        request_id: String::new(),
        actor: Principal::system().actor().to_string(),
        company_id: None,
        action: "key.bootstrap".into(),
        target: format!("key:{}", issued.stored.key.id),
        outcome: Outcome::Ok,
        detail: String::new(),
    };
    Ok(store
        .bootstrap_admin_key(&issued.stored, audit)
        .await?
        .then_some(issued))
}
