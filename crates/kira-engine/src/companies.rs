//! Companies: creating, reading, changing, archiving and deleting their
//! profiles, which fields the caller's role may write
//! (`kira_core::company::writable_by`), and the base allocations that
//! follow every change.

use std::sync::Arc;

use kira_core::ValidationError;
use kira_core::audit::AuditRecord;
use kira_core::auth::{Access, AdminScope, CompanyScope};
use kira_core::company::{Company, CompanyPatch, NewCompany};
use kira_store::{DeletedRows, StoreError};

use crate::budget::Budget;
use crate::{Ctx, EngineError};

/// Company profiles. No state of its own; every write is followed by the
/// budget's refresh of the base allocations, which follow the profiles.
pub struct Companies {
    ctx: Arc<Ctx>,
    budget: Arc<Budget>,
}

impl Companies {
    pub(crate) fn new(ctx: Arc<Ctx>, budget: Arc<Budget>) -> Self {
        Self { ctx, budget }
    }

    /// Creates a company (admin); its audit entry is filed under it.
    pub async fn create(
        &self,
        admin: &AdminScope,
        new: NewCompany,
        audit: AuditRecord,
    ) -> Result<Company, EngineError> {
        let (id, profile) = new.validate()?;
        self.check_webhooks(&profile.contacts)?;
        let scope = admin.company(&id, Access::Write);
        let audit = AuditRecord {
            company_id: Some(id.clone()),
            target: format!("company:{id}"),
            ..audit
        };
        let company = self
            .ctx
            .store
            .create_company(&scope, &profile, self.ctx.clock.now(), audit)
            .await?;
        self.allocations_follow(&company.id).await;
        Ok(company)
    }

    /// Every company (admin); the read is audited.
    pub async fn list(
        &self,
        admin: &AdminScope,
        include_archived: bool,
        audit: AuditRecord,
    ) -> Result<Vec<Company>, EngineError> {
        Ok(self
            .ctx
            .store
            .list_companies(admin, include_archived, audit)
            .await?)
    }

    /// What a company key's listing shows: its own company, if there (and
    /// not archived, unless asked for).
    pub async fn own(
        &self,
        scope: &CompanyScope,
        include_archived: bool,
    ) -> Result<Vec<Company>, EngineError> {
        match self.ctx.store.get_company(scope).await {
            Ok(c) if include_archived || !c.is_archived() => Ok(vec![c]),
            Ok(_) | Err(StoreError::NotFound) => Ok(vec![]),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get(&self, scope: &CompanyScope) -> Result<Company, EngineError> {
        Ok(self.ctx.store.get_company(scope).await?)
    }

    /// Applies `patch` to the scope's company. A field the scope's role may
    /// not write refuses the whole patch, naming the field; nothing changes.
    /// A contact's webhook is a company's URL: one whose host is an
    /// address the outbound policy forbids is refused when written (a
    /// name is checked when kira calls it).
    fn check_webhooks(&self, contacts: &[kira_core::company::Contact]) -> Result<(), EngineError> {
        for (i, c) in contacts.iter().enumerate() {
            if let Some(why) = c.webhook.as_deref().and_then(|u| {
                crate::outbound::forbidden_literal(&self.ctx.config.tools.outbound, u)
            }) {
                return Err(EngineError::Forbidden(ValidationError::new(
                    format!("contacts.{i}.webhook"),
                    why,
                )));
            }
        }
        Ok(())
    }

    pub async fn update(
        &self,
        scope: &CompanyScope,
        patch: CompanyPatch,
        audit: AuditRecord,
    ) -> Result<Company, EngineError> {
        if patch.is_empty() {
            return Err(ValidationError::new("body", "name at least one field to change").into());
        }
        if let Some(field) = patch.forbidden_for(scope.role()) {
            return Err(EngineError::Forbidden(ValidationError::new(
                field,
                format!(
                    "only an admin key may change '{field}': it decides what crosses between companies, their budgets or their priority"
                ),
            )));
        }
        if let Some(contacts) = &patch.contacts {
            self.check_webhooks(contacts)?;
        }
        let company = self
            .ctx
            .store
            .update_company(scope, patch, self.ctx.clock.now(), audit)
            .await?;
        self.allocations_follow(&company.id).await;
        Ok(company)
    }

    /// Archives the scope's company: it stays readable and stops changing.
    pub async fn archive(
        &self,
        scope: &CompanyScope,
        audit: AuditRecord,
    ) -> Result<Company, EngineError> {
        let company = self
            .ctx
            .store
            .archive_company(scope, self.ctx.clock.now(), audit)
            .await?;
        self.allocations_follow(&company.id).await;
        Ok(company)
    }

    /// Deletes the scope's company and every row it owns, in one
    /// transaction; the audit log keeps its entries. The base pool is then
    /// shared among the companies left.
    pub async fn delete(
        &self,
        scope: &CompanyScope,
        audit: AuditRecord,
    ) -> Result<DeletedRows, EngineError> {
        let rows = self.ctx.store.delete_company(scope, audit).await?;
        self.allocations_follow(scope.company()).await;
        Ok(rows)
    }

    /// Base allocations follow the companies' profiles. The change itself
    /// is done; a failed refresh is logged and retried by the next one.
    async fn allocations_follow(&self, company: &kira_core::CompanyId) {
        if let Err(e) = self.budget.company_changed(company).await {
            tracing::error!(company = %company, error = %e, "could not refresh budget allocations");
        }
    }
}
