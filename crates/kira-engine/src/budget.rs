//! Token budgets as the API serves them: the period's pools and
//! allocations, emergency requests and their decisions (an approval wakes
//! the scheduler, whose task now has tokens), the ledger check, and the
//! refresh of base allocations after a company changes.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use kira_core::audit::AuditRecord;
use kira_core::auth::{AdminScope, CompanyScope};
use kira_core::{CompanyId, ValidationError};
use kira_store::work::{BudgetState, EmergencyRequest, LedgerReport};

use crate::{Ctx, EngineError};

/// The most characters of a decision's note.
pub const MAX_NOTE_CHARS: usize = 2_000;

/// The budget as read at `at` (burn rates and projections are as of then).
#[derive(Debug)]
pub struct BudgetSnapshot {
    pub state: BudgetState,
    pub at: DateTime<Utc>,
}

/// Token budgets. No state of its own: pools, allocations, reservations
/// and the ledger are the store's, changed only in its transactions.
pub struct Budget {
    ctx: Arc<Ctx>,
}

impl Budget {
    pub(crate) fn new(ctx: Arc<Ctx>) -> Self {
        Self { ctx }
    }

    /// The current period (admin): pools, every company's allocation and
    /// usage, and pending emergency requests.
    pub async fn period(&self, admin: &AdminScope) -> Result<BudgetSnapshot, EngineError> {
        let at = self.ctx.clock.now();
        let state = self
            .ctx
            .store
            .budget_state(admin, &self.ctx.config.budget, at)
            .await?;
        Ok(BudgetSnapshot { state, at })
    }

    /// The current period as one company's key sees it: its own line and
    /// requests only (no pools: their totals would show what other
    /// companies spend).
    pub async fn own_period(&self, scope: &CompanyScope) -> Result<BudgetSnapshot, EngineError> {
        let at = self.ctx.clock.now();
        let state = self
            .ctx
            .store
            .company_budget(scope, &self.ctx.config.budget, at)
            .await?;
        Ok(BudgetSnapshot {
            state: BudgetState::own_only(state),
            at,
        })
    }

    /// Emergency token requests (admin), pending only or all.
    pub async fn emergencies(
        &self,
        admin: &AdminScope,
        pending_only: bool,
    ) -> Result<Vec<EmergencyRequest>, EngineError> {
        Ok(self
            .ctx
            .store
            .emergency_requests(admin, pending_only)
            .await?)
    }

    /// Approves (the tokens are granted from the emergency pool and the
    /// task queued again) or rejects (the task fails with the note, which
    /// must then say why) a pending request (admin).
    pub async fn decide(
        &self,
        admin: &AdminScope,
        request_id: &str,
        approve: bool,
        note: &str,
        audit: AuditRecord,
    ) -> Result<EmergencyRequest, EngineError> {
        if note.chars().count() > MAX_NOTE_CHARS {
            return Err(ValidationError::new("note", "must be at most 2000 characters").into());
        }
        if !approve && note.trim().is_empty() {
            return Err(ValidationError::new("note", "say why the tokens are refused").into());
        }
        let r = self
            .ctx
            .store
            .decide_emergency(
                admin,
                request_id,
                approve,
                note.trim(),
                self.ctx.clock.now(),
                audit,
            )
            .await?;
        if approve {
            self.ctx.wake_scheduler();
        }
        Ok(r)
    }

    /// Replays the token ledger and compares every balance (admin).
    pub async fn verify_ledger(&self, admin: &AdminScope) -> Result<LedgerReport, EngineError> {
        Ok(self.ctx.store.verify_ledger(admin).await?)
    }

    /// Recomputes the base allocations after a company was added, changed,
    /// archived or deleted.
    pub async fn company_changed(&self, _company: &CompanyId) -> Result<(), EngineError> {
        self.ctx
            .store
            .refresh_allocations(&self.ctx.config.budget, self.ctx.clock.now())
            .await?;
        Ok(())
    }
}
