//! Nodes and availability (issue 22, SEED 6's availability KPI): this
//! process beats every `[scheduler] heartbeat` while it is up (its node id
//! is its scheduler's worker id, so the nodes line up with the leases they
//! hold), says when it stops, and the health view reads every node and
//! the share of each window some serving node was up.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use kira_core::auth::AdminScope;
use kira_core::nodes::{NodeRole, availability, live};
use kira_store::nodes::NodeBeat;
use serde::Serialize;
use tokio::task::JoinHandle;
use utoipa::ToSchema;

use crate::{Ctx, EngineError, Shutdown};

/// How far back the health view lists nodes.
const LISTED: TimeDelta = TimeDelta::days(1);

/// A node as the health view shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct NodeView {
    pub node_id: String,
    /// `serve` or `worker`.
    pub role: String,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub last_heartbeat: DateTime<Utc>,
    /// Beating now (its last beat within the grace of two heartbeats).
    pub live: bool,
    /// When it stopped cleanly, if it did.
    pub stopped_at: Option<DateTime<Utc>>,
}

/// The deployment's nodes and its availability (the share of the window
/// with at least one live `kira serve` node; None before any window
/// passed).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct NodeHealth {
    /// Nodes that beat in the last day, newest beat first.
    pub nodes: Vec<NodeView>,
    /// Serving nodes live now.
    pub serving: usize,
    pub availability_24h: Option<f64>,
    pub availability_30d: Option<f64>,
}

/// This process as a node, and the health view.
pub struct Nodes {
    ctx: Arc<Ctx>,
    node_id: String,
    started_at: DateTime<Utc>,
}

impl Nodes {
    pub(crate) fn new(ctx: Arc<Ctx>, node_id: String) -> Self {
        let started_at = ctx.clock.now();
        Self {
            ctx,
            node_id,
            started_at,
        }
    }

    /// A beat further apart than this from the last one means the node
    /// was down in between.
    pub fn grace(&self) -> TimeDelta {
        self.ctx.config.scheduler.heartbeat * 2
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Records that this node is up, now.
    pub async fn beat(&self, role: NodeRole) -> Result<(), EngineError> {
        let beat = NodeBeat {
            node_id: self.node_id.clone(),
            role,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: self.started_at,
            at: self.ctx.clock.now(),
        };
        Ok(self.ctx.store.node_beat(&beat, self.grace()).await?)
    }

    /// Records that this node stopped, now.
    pub async fn stopped(&self) -> Result<(), EngineError> {
        Ok(self
            .ctx
            .store
            .node_stopped(&self.node_id, self.ctx.clock.now())
            .await?)
    }

    /// Beats every heartbeat until `shutdown`, then records the stop;
    /// prunes the nodes gone quiet for longer than the day series are
    /// kept, hourly.
    pub fn start(self: &Arc<Self>, role: NodeRole, shutdown: Shutdown) -> JoinHandle<()> {
        let nodes = self.clone();
        tokio::spawn(async move {
            let every = nodes
                .ctx
                .config
                .scheduler
                .heartbeat
                .to_std()
                .unwrap_or(std::time::Duration::from_secs(15));
            let prune_every = std::time::Duration::from_secs(3_600);
            let mut last_prune: Option<std::time::Instant> = None;
            loop {
                if let Err(e) = nodes.beat(role).await {
                    tracing::warn!(error = %e, "node heartbeat failed");
                }
                if last_prune.is_none_or(|t| t.elapsed() >= prune_every) {
                    let before = nodes.ctx.clock.now() - nodes.ctx.config.metrics.day_retention;
                    if let Err(e) = nodes.ctx.store.prune_nodes(before).await {
                        tracing::warn!(error = %e, "pruning old nodes failed");
                    }
                    last_prune = Some(std::time::Instant::now());
                }
                tokio::select! {
                    () = shutdown.wait() => break,
                    () = tokio::time::sleep(every) => {}
                }
            }
            if let Err(e) = nodes.stopped().await {
                tracing::warn!(error = %e, "recording the node's stop failed");
            }
        })
    }

    /// Every node that beat in the last day, and the availability over the
    /// last 24 hours and 30 days (admin).
    pub async fn health(&self, admin: &AdminScope) -> Result<NodeHealth, EngineError> {
        let store = &self.ctx.store;
        let now = self.ctx.clock.now();
        let grace = self.grace();
        let nodes: Vec<NodeView> = store
            .nodes(admin, now - LISTED)
            .await?
            .into_iter()
            .map(|n| NodeView {
                live: n.stopped_at.is_none() && live(n.last_beat_at, now, grace),
                node_id: n.node_id,
                role: n.role.as_str().to_owned(),
                version: n.version,
                started_at: n.started_at,
                last_heartbeat: n.last_beat_at,
                stopped_at: n.stopped_at,
            })
            .collect();
        let month = now - TimeDelta::days(30);
        let spans = store
            .node_uptime(admin, NodeRole::Serve, month, now)
            .await?;
        // A window starts no earlier than the first beat in it: a
        // deployment a day old is not 97% down over 30 days.
        let first = spans.iter().map(|s| s.from).min();
        let share = |days: i64| {
            let from = now - TimeDelta::days(days);
            let from = first.map_or(from, |f| f.max(from));
            availability(&spans, from, now, now, grace)
        };
        Ok(NodeHealth {
            serving: nodes.iter().filter(|n| n.live && n.role == "serve").count(),
            nodes,
            availability_24h: share(1),
            availability_30d: share(30),
        })
    }
}
