//! Sharing by publication: the items a company published for other
//! companies (anonymised text, made at publish time) and its consents to
//! exchange a scope with a partner. Both are company data: every method but
//! [`SharingStore::consent_directory`] takes the company's scope.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kira_core::CompanyId;
use kira_core::audit::AuditRecord;
use kira_core::auth::{AdminScope, CompanyScope};
use kira_core::sharing::{Consent, Partner};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::Result;

/// A published item, as its owner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct SharedItem {
    pub id: Uuid,
    /// The scope it is published for, such as process_templates.
    pub scope: String,
    /// The memory it was made from (the owner's id; never shown to others).
    pub memory_id: Uuid,
    /// The anonymised text other companies may receive.
    pub text: String,
    /// Who published it: the key's name, or `admin`/`system`.
    pub published_by: String,
    pub published_at: DateTime<Utc>,
    pub withdrawn_by: Option<String>,
    pub withdrawn_at: Option<DateTime<Utc>>,
}

impl SharedItem {
    pub fn is_live(&self) -> bool {
        self.withdrawn_at.is_none()
    }
}

/// Which of a company's items to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedFilter {
    /// Only this scope.
    pub scope: Option<String>,
    /// Withdrawn items too.
    pub include_withdrawn: bool,
    /// At most this many, newest first.
    pub limit: u32,
}

/// A consent as stored: who gave it and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ConsentRecord {
    pub scope: String,
    /// A company id, or `*` for every company the rules allow.
    #[schema(value_type = String)]
    pub partner: Partner,
    pub granted_by: String,
    pub granted_at: DateTime<Utc>,
}

impl ConsentRecord {
    pub fn consent(&self) -> Consent {
        Consent {
            scope: self.scope.clone(),
            partner: self.partner.clone(),
        }
    }
}

/// The most items one company may have live at once: the shared section
/// reads a partner's live items of a scope whole.
pub const MAX_LIVE_ITEMS: u32 = 1_000;

#[async_trait]
pub trait SharingStore: Send + Sync {
    /// Stores a published item and appends `audit`. Conflict when the
    /// memory is already published (live) for the scope, or the company
    /// has [`MAX_LIVE_ITEMS`] live items.
    async fn publish_item(
        &self,
        scope: &CompanyScope,
        item: &SharedItem,
        audit: AuditRecord,
    ) -> Result<SharedItem>;

    /// The company's items, newest first.
    async fn list_shared_items(
        &self,
        scope: &CompanyScope,
        filter: &SharedFilter,
    ) -> Result<Vec<SharedItem>>;

    /// Withdraws an item: it is never shared again. NotFound for an item
    /// of no such id in this company; Conflict when already withdrawn.
    async fn withdraw_item(
        &self,
        scope: &CompanyScope,
        id: Uuid,
        by: &str,
        at: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<SharedItem>;

    /// The company's consents, by scope and partner.
    async fn list_consents(&self, scope: &CompanyScope) -> Result<Vec<ConsentRecord>>;

    /// Records a consent (kept as it was when it exists already) and
    /// appends `audit`. Returns the consent as stored.
    async fn put_consent(
        &self,
        scope: &CompanyScope,
        consent: &Consent,
        by: &str,
        at: DateTime<Utc>,
        audit: AuditRecord,
    ) -> Result<ConsentRecord>;

    /// Removes a consent and appends `audit`; NotFound when there is none.
    async fn delete_consent(
        &self,
        scope: &CompanyScope,
        consent: &Consent,
        audit: AuditRecord,
    ) -> Result<()>;

    /// Every company's consents (admin path, unaudited like
    /// [`crate::CompanyStore::company_directory`]: the engine keeps them
    /// with the directory, whose version a consent change moves).
    async fn consent_directory(&self, admin: &AdminScope) -> Result<Vec<(CompanyId, Consent)>>;
}
