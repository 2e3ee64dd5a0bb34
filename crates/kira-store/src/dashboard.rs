//! What the dashboards read beside the metrics, alerts and budgets
//! (issue 22): one company's waiting work, and the workers holding leases
//! (each lease's expiry tells when its worker last renewed it).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kira_core::auth::{AdminScope, CompanyScope};

use crate::Result;
use crate::metrics::WaitingWork;

/// A worker (one `kira serve` or `kira worker` process) holding leases.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerLeases {
    pub worker: String,
    /// Tasks it is running.
    pub running: i64,
    /// The latest expiry of its leases: its last heartbeat plus the lease.
    pub lease_expires_at: DateTime<Utc>,
}

#[async_trait]
pub trait DashboardStore: Send + Sync {
    /// The company's queue per status and level, and its results waiting
    /// for review.
    async fn company_waiting_work(&self, scope: &CompanyScope) -> Result<WaitingWork>;

    /// Every worker holding a lease now (the admin's view).
    async fn workers(&self, admin: &AdminScope) -> Result<Vec<WorkerLeases>>;
}
