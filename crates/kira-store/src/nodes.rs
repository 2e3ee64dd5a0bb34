//! Nodes and their uptime (issue 22's availability KPI, migration 0026):
//! each kira process beats while it is up; its beats are kept as spans of
//! uptime ([`kira_core::nodes`] says when a beat extends a span). No
//! company owns these rows; reads are the admin's.

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use kira_core::auth::AdminScope;
use kira_core::nodes::{NodeRole, Uptime};

use crate::Result;

/// A node's beat.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeBeat {
    pub node_id: String,
    pub role: NodeRole,
    /// kira's version on the node.
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

/// A node as last seen.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    pub node_id: String,
    pub role: NodeRole,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub last_beat_at: DateTime<Utc>,
    /// When it said it stopped (None: it did not, or has not yet).
    pub stopped_at: Option<DateTime<Utc>>,
}

#[async_trait]
pub trait NodeStore: Send + Sync {
    /// Records a beat: the node's row, and its span of uptime extended
    /// when the beat comes within `grace` of the span's last beat, else a
    /// new span. A node writes only its own rows.
    async fn node_beat(&self, beat: &NodeBeat, grace: TimeDelta) -> Result<()>;

    /// The node stopped at `at` (a clean shutdown): its open span ends
    /// there and it is no longer live.
    async fn node_stopped(&self, node_id: &str, at: DateTime<Utc>) -> Result<()>;

    /// Nodes beating at or after `since`, newest beat first.
    async fn nodes(&self, admin: &AdminScope, since: DateTime<Utc>) -> Result<Vec<NodeRow>>;

    /// The spans of nodes of `role` that reach into `[from, to]`.
    async fn node_uptime(
        &self,
        admin: &AdminScope,
        role: NodeRole,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<Uptime>>;

    /// Deletes nodes whose last beat is before `before`, with their spans.
    async fn prune_nodes(&self, before: DateTime<Utc>) -> Result<u64>;
}
