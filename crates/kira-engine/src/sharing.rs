//! Cross-company sharing as the engine applies it: the explainer (which
//! rule decides for two companies and a scope, and why), conflict flags,
//! and the count of denied cross-company reads, a security signal.

use std::sync::atomic::Ordering;

use kira_core::auth::{Access, AdminScope};
use kira_core::sharing::{Facts, Verdict, decide};
use kira_core::{CompanyId, ValidationError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{Engine, EngineError};

/// The explainer's answer.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SharingCheck {
    pub a: CompanyId,
    pub b: CompanyId,
    pub scope: String,
    /// Whether an open conflict flag stands between the two.
    pub conflict_open: bool,
    pub verdict: Verdict,
}

/// A scope name as the rules spell them.
fn check_scope(scope: &str) -> Result<(), ValidationError> {
    let ok = !scope.is_empty()
        && scope.len() <= 64
        && scope
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "scope",
            "must be 1 to 64 lowercase letters, digits or '_'",
        ))
    }
}

impl Engine {
    /// Which rule decides whether `a` and `b` may share items of `scope`,
    /// from both profiles and the open conflict flags. NotFound when either
    /// company does not exist; Invalid for one company with itself.
    pub async fn check_sharing(
        &self,
        admin: &AdminScope,
        a: &CompanyId,
        b: &CompanyId,
        scope: &str,
    ) -> Result<SharingCheck, EngineError> {
        check_scope(scope)?;
        if a == b {
            return Err(ValidationError::new("b", "must be another company than a").into());
        }
        let store = self.store();
        let pa = store.get_company(&admin.company(a, Access::Read)).await?;
        let pb = store.get_company(&admin.company(b, Access::Read)).await?;
        let conflict_open = store.conflict_open(admin, a, b).await?;
        let facts = Facts {
            a: &pa.profile,
            b: &pb.profile,
            conflict_open,
        };
        Ok(SharingCheck {
            a: a.clone(),
            b: b.clone(),
            scope: scope.to_owned(),
            conflict_open,
            verdict: decide(&self.config().sharing, &facts, scope),
        })
    }

    /// Counts one denied cross-company read (the caller audits it).
    pub fn count_denied_cross_company_read(&self) {
        self.inner
            .denied_cross_company_reads
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Denied cross-company reads since this process started: a security
    /// signal for monitoring.
    pub fn denied_cross_company_reads(&self) -> u64 {
        self.inner
            .denied_cross_company_reads
            .load(Ordering::Relaxed)
    }
}
