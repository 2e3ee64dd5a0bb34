//! Dashboard sessions (issue 22, migration 0023): what a signed-in browser's
//! cookie names. A session is read before any company is known, like an
//! API key, so it is no company's row; it holds the key's id, never the
//! key, and only its own secret's hash.

use async_trait::async_trait;
use kira_core::audit::AuditRecord;
use kira_core::auth::{StoredKey, StoredSession};

use crate::Result;

#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Stores a session just made and appends `audit`, in one
    /// transaction that also deletes the sessions expired by its
    /// `created_at`; NotFound when its key is gone.
    async fn insert_session(&self, session: &StoredSession, audit: AuditRecord) -> Result<()>;

    /// The session and its key, if both are there (expired or not: the
    /// caller checks, with its clock).
    async fn find_session(&self, id: &str) -> Result<Option<(StoredSession, StoredKey)>>;

    /// Ends a session (sign-out) and appends `audit`; false (and nothing
    /// written) when there was none.
    async fn delete_session(&self, id: &str, audit: AuditRecord) -> Result<bool>;
}
