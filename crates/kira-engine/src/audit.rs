//! The audit log as the API serves it: pages of entries (every company's
//! for an admin, one company's for its keys), the chain check, and the
//! entries of refused requests, which no change carries.
//!
//! A successful change is audited by the method that makes it, in its
//! transaction; what is appended here stands on its own.

use std::sync::Arc;

use kira_core::CompanyId;
use kira_core::audit::{AuditEntry, AuditRecord, ChainReport};
use kira_core::auth::{AdminScope, CompanyScope};
use kira_store::AuditPage;

use crate::{Ctx, EngineError};

/// The audit log's pages and chain. No state of its own: the log is the
/// store's, written in the transaction of each change it records.
pub struct AuditLog {
    ctx: Arc<Ctx>,
}

impl AuditLog {
    pub(crate) fn new(ctx: Arc<Ctx>) -> Self {
        Self { ctx }
    }

    /// Appends entries that record no change: a refused or failed request.
    pub async fn append(&self, records: Vec<AuditRecord>) -> Result<(), EngineError> {
        self.ctx.store.append_audits(records).await?;
        Ok(())
    }

    /// One page of every company's entries, or of `company`'s (admin); the
    /// read is audited.
    pub async fn list_all(
        &self,
        admin: &AdminScope,
        company: Option<&CompanyId>,
        page: AuditPage,
        audit: AuditRecord,
    ) -> Result<Vec<AuditEntry>, EngineError> {
        Ok(self
            .ctx
            .store
            .list_all_audit(admin, company, page, audit)
            .await?)
    }

    /// One page of the scope's company's entries.
    pub async fn list_company(
        &self,
        scope: &CompanyScope,
        page: AuditPage,
    ) -> Result<Vec<AuditEntry>, EngineError> {
        Ok(self.ctx.store.list_company_audit(scope, page).await?)
    }

    /// Walks the whole chain (admin) and reports the first broken link.
    pub async fn verify(
        &self,
        admin: &AdminScope,
        audit: AuditRecord,
    ) -> Result<ChainReport, EngineError> {
        Ok(self.ctx.store.verify_audit(admin, audit).await?)
    }
}
