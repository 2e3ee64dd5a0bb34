//! Changing a company's profile: which fields the caller's role may write
//! (`kira_core::company::writable_by`), the change, and the allocations
//! that follow from it.

use kira_core::ValidationError;
use kira_core::audit::AuditRecord;
use kira_core::auth::CompanyScope;
use kira_core::company::{Company, CompanyPatch};

use crate::{Engine, EngineError};

impl Engine {
    /// Applies `patch` to the scope's company. A field the scope's role may
    /// not write refuses the whole patch, naming the field; nothing changes.
    pub async fn update_company(
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
        let company = self
            .store()
            .update_company(scope, patch, self.clock().now(), audit)
            .await?;
        // Base allocations follow the profiles. The change itself is done;
        // a failed refresh is logged and retried by the next one.
        if let Err(e) = self.company_changed(&company.id).await {
            tracing::error!(company = %company.id, error = %e, "could not refresh budget allocations");
        }
        Ok(company)
    }
}
