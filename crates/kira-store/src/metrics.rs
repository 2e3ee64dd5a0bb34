//! Task metrics as time series (issue 22): what the database's triggers
//! record in `metric_events` when a run ends, a settlement adds usage, a
//! tool step or a review is written (in that change's own transaction),
//! added up by [`MetricsStore::roll_up_metrics`] into `metric_rollups`:
//! per company, agent and priority level, per minute, hour and day, and all
//! time. Company rows under row-level security like every company table;
//! the roll-up and the admin's reads are the cross-company paths.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kira_core::auth::{AdminScope, CompanyScope};
use kira_core::metrics::{Resolution, Rollup, SeriesKey};

use crate::Result;

/// Which rows a read wants.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsQuery {
    pub resolution: Resolution,
    /// Buckets starting at or after (ignored for `Total`).
    pub from: Option<DateTime<Utc>>,
    /// Buckets starting before (ignored for `Total`).
    pub to: Option<DateTime<Utc>>,
    /// One agent's rows only.
    pub agent: Option<String>,
}

impl MetricsQuery {
    /// Every key's all-time sums.
    pub fn totals() -> MetricsQuery {
        MetricsQuery {
            resolution: Resolution::Total,
            from: None,
            to: None,
            agent: None,
        }
    }
}

/// One stored row: a key and its sums.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRow {
    pub key: SeriesKey,
    pub sums: Rollup,
}

/// The all-time sums added up three ways (`/metrics`): per company, per
/// agent and per priority level, as the roll-up keeps them (every figure;
/// each row's other key fields are empty). The agent and level sums keep
/// what a deleted company's runs added: counters never go back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricTotals {
    pub by_company: Vec<MetricRow>,
    pub by_agent: Vec<MetricRow>,
    pub by_level: Vec<MetricRow>,
}

/// What one roll-up did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RollupReport {
    /// Recorded events added and deleted.
    pub events: usize,
    /// Series rows written (inserted or added to).
    pub rows: usize,
}

/// Unfinished tasks of one status and level (the queue's depth).
#[derive(Debug, Clone, PartialEq)]
pub struct QueueGauge {
    pub status: String,
    pub priority: String,
    pub tasks: i64,
    /// The longest-waiting one's `waiting_since`.
    pub oldest_waiting_since: Option<DateTime<Utc>>,
}

/// What waits now: the queue per status and level, and each company's
/// results waiting for review.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WaitingWork {
    pub queue: Vec<QueueGauge>,
    /// (company, tasks in needs_review), companies with none left out.
    pub reviews_waiting: Vec<(String, i64)>,
}

impl WaitingWork {
    /// When the longest-waiting queued (runnable) task began to wait.
    pub fn oldest_queued_since(&self) -> Option<DateTime<Utc>> {
        self.queue
            .iter()
            .filter(|q| q.status == "queued")
            .filter_map(|q| q.oldest_waiting_since)
            .min()
    }
}

#[async_trait]
pub trait MetricsStore: Send + Sync {
    /// Adds at most `limit` of the oldest recorded events to the series
    /// and deletes them, in one transaction: each event is counted once,
    /// also with several processes rolling up at once (PostgreSQL: an
    /// event another roll-up holds is left to it).
    async fn roll_up_metrics(&self, limit: u32) -> Result<RollupReport>;

    /// Events recorded and not yet rolled up.
    async fn pending_metric_events(&self) -> Result<i64>;

    /// Deletes the rows of `resolution` whose bucket starts before
    /// `before` (retention; `Total` rows are never pruned).
    async fn prune_metrics(&self, resolution: Resolution, before: DateTime<Utc>) -> Result<u64>;

    /// The company's rows.
    async fn company_metrics(
        &self,
        scope: &CompanyScope,
        q: &MetricsQuery,
    ) -> Result<Vec<MetricRow>>;

    /// Every company's rows (the admin's view).
    async fn all_metrics(&self, admin: &AdminScope, q: &MetricsQuery) -> Result<Vec<MetricRow>>;

    /// Every company's all-time sums per company, per agent and per level,
    /// kept by the roll-up (the admin's view).
    async fn metric_totals(&self, admin: &AdminScope) -> Result<MetricTotals>;

    /// The queue's depth and the review backlog, now (the admin's view).
    async fn waiting_work(&self, admin: &AdminScope) -> Result<WaitingWork>;
}
