//! [`NodeStore`], written once for every [`Db`].

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use kira_core::auth::AdminScope;
use kira_core::nodes::{NodeRole, Uptime, extends};

use crate::flow::store::{Db, commit_or_roll_back};
use crate::nodes::{NodeBeat, NodeRow, NodeStore};
use crate::sql::{Columns, Conn, q};
use crate::{Result, StoreError};

fn node_from_row<R: Columns + ?Sized>(r: &R) -> Result<NodeRow> {
    Ok(NodeRow {
        node_id: r.text("node_id")?,
        role: NodeRole::parse(&r.text("role")?).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        version: r.text("version")?,
        started_at: r.time("started_at")?,
        last_beat_at: r.time("last_beat_at")?,
        stopped_at: r.opt_time("stopped_at")?,
    })
}

async fn beat(c: &mut dyn Conn, b: &NodeBeat, grace: TimeDelta) -> Result<()> {
    let at = b.at.trunc_subsecs(6);
    // A node that said it stopped starts a new span, however soon it beats.
    let stopped = c
        .opt(q("SELECT stopped_at FROM nodes WHERE node_id = $1").arg(b.node_id.as_str()))
        .await?
        .map(|r| r.opt_time("stopped_at"))
        .transpose()?
        .flatten()
        .is_some();
    c.exec(
        q("INSERT INTO nodes (node_id, role, version, started_at, last_beat_at, stopped_at) \
           VALUES ($1, $2, $3, $4, $5, NULL) \
           ON CONFLICT (node_id) DO UPDATE SET role = excluded.role, version = excluded.version, \
             started_at = excluded.started_at, last_beat_at = excluded.last_beat_at, stopped_at = NULL")
        .arg(b.node_id.as_str())
        .arg(b.role.as_str())
        .arg(b.version.as_str())
        .arg(b.started_at.trunc_subsecs(6))
        .arg(at),
    )
    .await?;
    let last = c
        .opt(
            q("SELECT up_from, up_to FROM node_uptime WHERE node_id = $1 \
               ORDER BY up_from DESC LIMIT 1")
            .arg(b.node_id.as_str()),
        )
        .await?;
    match last {
        Some(r) if !stopped && extends(r.time("up_to")?, at, grace) => {
            c.exec(
                q("UPDATE node_uptime SET up_to = $3 WHERE node_id = $1 AND up_from = $2")
                    .arg(b.node_id.as_str())
                    .arg(r.time("up_from")?)
                    .arg(at),
            )
            .await?;
        }
        // A beat from before the span's end (a clock stepped back) adds
        // nothing; any other starts a span.
        Some(r) if at <= r.time("up_to")? => {}
        _ => {
            c.exec(
                q(
                    "INSERT INTO node_uptime (node_id, up_from, up_to) VALUES ($1, $2, $2) \
                   ON CONFLICT (node_id, up_from) DO NOTHING",
                )
                .arg(b.node_id.as_str())
                .arg(at),
            )
            .await?;
        }
    }
    Ok(())
}

async fn stopped(c: &mut dyn Conn, node: &str, at: DateTime<Utc>) -> Result<()> {
    let at = at.trunc_subsecs(6);
    c.exec(
        q("UPDATE nodes SET stopped_at = $2, last_beat_at = $2 WHERE node_id = $1")
            .arg(node)
            .arg(at),
    )
    .await?;
    c.exec(
        q(
            "UPDATE node_uptime SET up_to = $2 WHERE node_id = $1 AND up_from = \
             (SELECT max(up_from) FROM node_uptime WHERE node_id = $1) AND up_to <= $2",
        )
        .arg(node)
        .arg(at),
    )
    .await?;
    Ok(())
}

/// Old spans, then the nodes that no longer beat (their spans with them).
async fn prune(c: &mut dyn Conn, before: DateTime<Utc>) -> Result<u64> {
    c.exec(q("DELETE FROM node_uptime WHERE up_to < $1").arg(before))
        .await?;
    c.exec(q("DELETE FROM nodes WHERE last_beat_at < $1").arg(before))
        .await
}

#[async_trait]
impl<D: Db> NodeStore for D {
    async fn node_beat(&self, b: &NodeBeat, grace: TimeDelta) -> Result<()> {
        let mut tx = self.write_system().await?;
        let done = beat(&mut tx, b, grace).await;
        commit_or_roll_back::<D, _>(tx, done).await
    }

    async fn node_stopped(&self, node_id: &str, at: DateTime<Utc>) -> Result<()> {
        let mut tx = self.write_system().await?;
        let done = stopped(&mut tx, node_id, at).await;
        commit_or_roll_back::<D, _>(tx, done).await
    }

    async fn nodes(&self, _admin: &AdminScope, since: DateTime<Utc>) -> Result<Vec<NodeRow>> {
        let mut c = self.plain().await?;
        c.all(
            q(
                "SELECT node_id, role, version, started_at, last_beat_at, stopped_at FROM nodes \
               WHERE last_beat_at >= $1 ORDER BY last_beat_at DESC, node_id",
            )
            .arg(since.trunc_subsecs(6)),
        )
        .await?
        .iter()
        .map(node_from_row)
        .collect()
    }

    async fn node_uptime(
        &self,
        _admin: &AdminScope,
        role: NodeRole,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<Uptime>> {
        let mut c = self.plain().await?;
        c.all(
            q("SELECT u.up_from, u.up_to FROM node_uptime u JOIN nodes n ON n.node_id = u.node_id \
               WHERE n.role = $1 AND u.up_to >= $2 AND u.up_from <= $3 ORDER BY u.up_from")
            .arg(role.as_str())
            .arg(from.trunc_subsecs(6))
            .arg(to.trunc_subsecs(6)),
        )
        .await?
        .iter()
        .map(|r| {
            Ok(Uptime {
                from: r.time("up_from")?,
                to: r.time("up_to")?,
            })
        })
        .collect()
    }

    async fn prune_nodes(&self, before: DateTime<Utc>) -> Result<u64> {
        let mut tx = self.write_system().await?;
        let before = before.trunc_subsecs(6);
        let done = prune(&mut tx, before).await;
        commit_or_roll_back::<D, _>(tx, done).await
    }
}
