//! Nodes and their uptime on both backends: beats within the grace extend
//! a node's span, a later beat starts a new one, a stop closes it, the
//! spans of one role are read for a window, and old nodes are pruned.

use chrono::{SubsecRound, TimeDelta};
use kira_core::auth::Principal;
use kira_core::nodes::{NodeRole, Uptime};
use kira_store::nodes::NodeBeat;

use crate::support::{Fresh, t0};

conformance!(beats_become_spans_of_uptime);

const GRACE: TimeDelta = TimeDelta::seconds(30);

fn beat(node: &str, role: NodeRole, secs: i64) -> NodeBeat {
    NodeBeat {
        node_id: node.into(),
        role,
        version: "0.1.0".into(),
        started_at: t0(),
        at: (t0() + TimeDelta::seconds(secs)).trunc_subsecs(6),
    }
}

async fn beats_become_spans_of_uptime(f: Fresh) {
    let s = f.store.as_ref();
    let admin = Principal::system().admin().expect("admin");
    let at = |secs: i64| (t0() + TimeDelta::seconds(secs)).trunc_subsecs(6);
    // serve-a beats every 15 s for a minute, misses 45 s, beats again.
    for secs in [0, 15, 30, 45, 60, 105, 120] {
        s.node_beat(&beat("serve-a", NodeRole::Serve, secs), GRACE)
            .await
            .expect("beat");
    }
    // A beat from the past (a clock stepped back) changes nothing.
    s.node_beat(&beat("serve-a", NodeRole::Serve, 50), GRACE)
        .await
        .expect("beat");
    // A worker beats too; it is not a serving node.
    s.node_beat(&beat("worker-b", NodeRole::Worker, 0), GRACE)
        .await
        .expect("beat");

    let spans = s
        .node_uptime(&admin, NodeRole::Serve, at(0), at(600))
        .await
        .expect("spans");
    assert_eq!(
        spans,
        vec![
            Uptime {
                from: at(0),
                to: at(60)
            },
            Uptime {
                from: at(105),
                to: at(120)
            },
        ]
    );
    // Only the spans that reach into the window.
    let later = s
        .node_uptime(&admin, NodeRole::Serve, at(100), at(600))
        .await
        .expect("spans");
    assert_eq!(later.len(), 1);
    let workers = s
        .node_uptime(&admin, NodeRole::Worker, at(0), at(600))
        .await
        .expect("spans");
    assert_eq!(workers.len(), 1);

    // A clean stop ends the span where it stopped.
    s.node_stopped("serve-a", at(130)).await.expect("stop");
    let nodes = s.nodes(&admin, at(0)).await.expect("nodes");
    assert_eq!(nodes.len(), 2);
    let a = nodes.iter().find(|n| n.node_id == "serve-a").expect("a");
    assert_eq!(a.stopped_at, Some(at(130)));
    assert_eq!(a.last_beat_at, at(130));
    assert_eq!(a.role, NodeRole::Serve);
    let spans = s
        .node_uptime(&admin, NodeRole::Serve, at(100), at(600))
        .await
        .expect("spans");
    assert_eq!(spans[0].to, at(130));
    // Beating again after a stop starts a new span and clears the stop.
    s.node_beat(&beat("serve-a", NodeRole::Serve, 140), GRACE)
        .await
        .expect("beat");
    let nodes = s.nodes(&admin, at(135)).await.expect("nodes");
    assert_eq!(nodes.len(), 1, "only nodes beating since then");
    assert_eq!(nodes[0].stopped_at, None);

    // Pruning removes the worker (last beat at 0) and serve-a's old spans.
    assert!(s.prune_nodes(at(100)).await.expect("prune") >= 1);
    let nodes = s.nodes(&admin, at(0)).await.expect("nodes");
    assert_eq!(
        nodes.iter().map(|n| n.node_id.as_str()).collect::<Vec<_>>(),
        ["serve-a"]
    );
    let spans = s
        .node_uptime(&admin, NodeRole::Serve, at(0), at(600))
        .await
        .expect("spans");
    assert_eq!(spans.len(), 2, "the spans ending after 100 s are kept");
}
