//! The audit log as the API serves it: pages of entries (every company's
//! for an admin, one company's for its keys), the chain check, and the
//! entries of refused requests, which no change carries.
//!
//! A successful change is audited by the method that makes it, in its
//! transaction; what is appended here stands on its own.

use kira_core::CompanyId;
use kira_core::audit::{AuditEntry, AuditRecord, ChainReport};
use kira_core::auth::{AdminScope, CompanyScope};
use kira_store::AuditPage;

use crate::{Engine, EngineError};

impl Engine {
    /// Appends entries that record no change: a refused or failed request.
    pub async fn append_audits(&self, records: Vec<AuditRecord>) -> Result<(), EngineError> {
        self.store().append_audits(records).await?;
        Ok(())
    }

    /// One page of every company's entries, or of `company`'s (admin); the
    /// read is audited.
    pub async fn list_all_audit(
        &self,
        admin: &AdminScope,
        company: Option<&CompanyId>,
        page: AuditPage,
        audit: AuditRecord,
    ) -> Result<Vec<AuditEntry>, EngineError> {
        Ok(self
            .store()
            .list_all_audit(admin, company, page, audit)
            .await?)
    }

    /// One page of the scope's company's entries.
    pub async fn list_company_audit(
        &self,
        scope: &CompanyScope,
        page: AuditPage,
    ) -> Result<Vec<AuditEntry>, EngineError> {
        Ok(self.store().list_company_audit(scope, page).await?)
    }

    /// Walks the whole chain (admin) and reports the first broken link.
    pub async fn verify_audit(
        &self,
        admin: &AdminScope,
        audit: AuditRecord,
    ) -> Result<ChainReport, EngineError> {
        Ok(self.store().verify_audit(admin, audit).await?)
    }
}
