//! Conflict flags: the storage trait. Every method is on the admin path
//! (an [`AdminScope`]): a flag names two companies and a counterparty of
//! each, so no company scope may read it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kira_core::CompanyId;
use kira_core::audit::AuditRecord;
use kira_core::auth::AdminScope;
use kira_core::conflict::{Conflict, ConflictStatus};
use uuid::Uuid;

use crate::Result;

#[async_trait]
pub trait ConflictStore: Send + Sync {
    /// Flags `counterparty` (normalised) between the two companies, named
    /// by `memory_ids`, idempotently: an open flag for the pair and
    /// counterparty gains the ids it lacked; a resolved one that already
    /// names every id is left alone (a human looked at exactly this);
    /// otherwise a new open flag `id` is made. Returns the flag when it was
    /// made or grew (and then appends `audit` with it), None when nothing
    /// changed. Invalid for a company and itself.
    #[allow(clippy::too_many_arguments)]
    async fn flag_conflict(
        &self,
        admin: &AdminScope,
        id: Uuid,
        a: &CompanyId,
        b: &CompanyId,
        counterparty: &str,
        memory_ids: &[Uuid],
        at: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Option<Conflict>>;

    /// Flags, newest first; every status when `status` is None.
    async fn list_conflicts(
        &self,
        admin: &AdminScope,
        status: Option<ConflictStatus>,
        audit: AuditRecord,
    ) -> Result<Vec<Conflict>>;

    /// NotFound for an unknown id; Conflict when already resolved.
    async fn resolve_conflict(
        &self,
        admin: &AdminScope,
        id: Uuid,
        note: &str,
        at: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<Conflict>;

    /// Whether an open flag exists between the two (either order).
    async fn conflict_open(&self, admin: &AdminScope, a: &CompanyId, b: &CompanyId)
    -> Result<bool>;
}

/// The ids a flag should hold after adding `new` to `old`: `old` in its
/// order, then each new id it lacked. None when nothing is new.
pub(crate) fn merged_ids(old: &[Uuid], new: &[Uuid]) -> Option<Vec<Uuid>> {
    let mut out = old.to_vec();
    for id in new {
        if !out.contains(id) {
            out.push(*id);
        }
    }
    (out.len() > old.len()).then_some(out)
}
