//! This process as a node: its beats make a span of uptime, and the
//! heartbeat job, on shutdown, records that the node stopped; the health view then shows it
//! stopped and not live, and its uptime counted up to the stop.

use std::sync::Arc;

use chrono::TimeDelta;
use kira_core::auth::Principal;
use kira_core::clock::{Clock, ManualClock};
use kira_core::nodes::NodeRole;
use kira_engine::{Engine, EngineConfig, Shutdown};

use crate::common::{Backend, fresh_store, t0};

async fn heartbeat_then_stop(backend: Backend) {
    let (store, _dir) = fresh_store(backend).await;
    let clock = Arc::new(ManualClock::new(t0()));
    let engine = Engine::new(
        store,
        clock.clone() as Arc<dyn Clock>,
        EngineConfig::default(),
    );
    let admin = Principal::system().admin().expect("admin");
    let nodes = engine.nodes();
    assert_eq!(
        nodes.grace(),
        TimeDelta::seconds(30),
        "two default heartbeats"
    );

    // Ten minutes of beats, every heartbeat.
    nodes.beat(NodeRole::Serve).await.expect("beat");
    let health = nodes.health(&admin).await.expect("health");
    assert_eq!(health.serving, 1, "{health:?}");
    assert_eq!(health.nodes[0].node_id, nodes.node_id());
    assert_eq!(health.nodes[0].node_id, engine.scheduler().worker_id());
    assert_eq!(health.availability_24h, None, "no time has passed yet");
    for _ in 0..40 {
        clock.advance(TimeDelta::seconds(15));
        nodes.beat(NodeRole::Serve).await.expect("beat");
    }
    // The job beats as it starts and, told to stop, records the stop.
    let shutdown = Shutdown::new();
    shutdown.trigger();
    nodes.start(NodeRole::Serve, shutdown).await.expect("job");
    let stopped_at = t0() + TimeDelta::minutes(10);
    // An hour later: the node is listed, stopped, and was up the first
    // ten minutes of the seventy since its first beat.
    clock.advance(TimeDelta::hours(1));
    let health = nodes.health(&admin).await.expect("health");
    assert_eq!(health.serving, 0);
    assert!(!health.nodes[0].live);
    assert_eq!(health.nodes[0].stopped_at, Some(stopped_at));
    let a = health.availability_24h.expect("a share");
    assert!((a - 10.0 / 70.0).abs() < 1e-9, "{a}");
    assert_eq!(health.availability_30d, health.availability_24h);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_heartbeat_then_stop() {
    heartbeat_then_stop(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_heartbeat_then_stop() {
    heartbeat_then_stop(Backend::Postgres).await;
}
