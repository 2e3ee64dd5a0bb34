//! Nodes and availability (SEED 6's KPI): every kira process (a `kira
//! serve` or a `kira worker`) is a node that beats while it is up and
//! ready; its beats are kept as intervals of uptime, a beat within the
//! grace of the last one extending the open interval, a later one starting
//! a new interval. Availability over a window is the share of the window
//! covered by at least one serving node's uptime.

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::error::ValidationError;

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    /// `kira serve`: the HTTP API, the scheduler and the jobs.
    Serve,
    /// `kira worker`: the scheduler and its runs, no API.
    Worker,
}

impl NodeRole {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Serve => "serve",
            NodeRole::Worker => "worker",
        }
    }

    pub fn parse(s: &str) -> Result<NodeRole, ValidationError> {
        match s {
            "serve" => Ok(NodeRole::Serve),
            "worker" => Ok(NodeRole::Worker),
            _ => Err(ValidationError::new("role", "must be serve or worker")),
        }
    }
}

/// One span of a node's uptime: its first and its last beat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uptime {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// Whether a beat at `at` extends an interval whose last beat was `last`:
/// it comes within `grace` of it (and not before it).
pub fn extends(last: DateTime<Utc>, at: DateTime<Utc>, grace: TimeDelta) -> bool {
    at >= last && at - last <= grace
}

/// Whether a node whose last beat was `last` counts as live at `now`.
pub fn live(last: DateTime<Utc>, now: DateTime<Utc>, grace: TimeDelta) -> bool {
    last <= now && now - last <= grace
}

/// The share of `[from, to)` covered by the union of `spans`, in [0, 1]
/// (None for an empty window). A span whose last beat is within `grace`
/// of `now` is open: it covers up to `now`.
pub fn availability(
    spans: &[Uptime],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
    grace: TimeDelta,
) -> Option<f64> {
    if to <= from {
        return None;
    }
    let mut clipped: Vec<(DateTime<Utc>, DateTime<Utc>)> = spans
        .iter()
        .map(|s| {
            let end = if live(s.to, now, grace) { now } else { s.to };
            (s.from.max(from), end.min(to))
        })
        .filter(|(a, b)| a < b)
        .collect();
    clipped.sort();
    let mut covered = TimeDelta::zero();
    let mut open: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
    for (a, b) in clipped {
        open = match open {
            Some((oa, ob)) if a <= ob => Some((oa, ob.max(b))),
            Some((oa, ob)) => {
                covered += ob - oa;
                Some((a, b))
            }
            None => Some((a, b)),
        };
    }
    if let Some((oa, ob)) = open {
        covered += ob - oa;
    }
    let share = covered.num_milliseconds() as f64 / (to - from).num_milliseconds() as f64;
    Some(share.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn t(min: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0)
            .single()
            .expect("valid")
            + TimeDelta::minutes(min)
    }

    fn span(a: i64, b: i64) -> Uptime {
        Uptime {
            from: t(a),
            to: t(b),
        }
    }

    const GRACE: TimeDelta = TimeDelta::seconds(30);

    #[test]
    fn a_beat_within_the_grace_extends_and_a_later_one_does_not() {
        assert!(extends(t(0), t(0) + TimeDelta::seconds(30), GRACE));
        assert!(!extends(t(0), t(0) + TimeDelta::seconds(31), GRACE));
        assert!(!extends(t(1), t(0), GRACE), "a beat from the past");
    }

    #[test]
    fn overlapping_nodes_count_once_and_gaps_count_as_down() {
        // Two nodes overlap 10-20; nothing 30-40; one node 40-50.
        let spans = [span(0, 20), span(10, 30), span(40, 50)];
        let a = availability(&spans, t(0), t(60), t(60), GRACE).expect("a window");
        assert!((a - 40.0 / 60.0).abs() < 1e-9, "{a}");
        // The window cuts the spans.
        let a = availability(&spans, t(25), t(45), t(60), GRACE).expect("a window");
        assert!((a - 10.0 / 20.0).abs() < 1e-9, "{a}");
    }

    #[test]
    fn a_live_node_covers_up_to_now() {
        let now = t(50) + TimeDelta::seconds(20);
        let a = availability(&[span(0, 50)], t(0), now, now, GRACE).expect("a window");
        assert_eq!(a, 1.0);
        // Past its grace, the node is down since its last beat.
        let later = t(60);
        let a = availability(&[span(0, 50)], t(0), later, later, GRACE).expect("a window");
        assert!((a - 50.0 / 60.0).abs() < 1e-9, "{a}");
    }

    #[test]
    fn an_empty_window_has_no_availability() {
        assert_eq!(availability(&[span(0, 10)], t(5), t(5), t(5), GRACE), None);
        assert_eq!(availability(&[], t(0), t(10), t(10), GRACE), Some(0.0));
    }

    proptest! {
        /// Availability is a share, never more than the spans' total
        /// length, and equal to a minute-by-minute count when every span
        /// is whole minutes.
        #[test]
        fn availability_is_the_covered_share(
            raw in proptest::collection::vec((0i64..100, 0i64..30), 0..8),
            lo in 0i64..100, len in 1i64..100,
        ) {
            let spans: Vec<Uptime> = raw.iter().map(|(a, l)| span(*a, a + l)).collect();
            let (from, to) = (t(lo), t(lo + len));
            let now = t(1_000);
            let a = availability(&spans, from, to, now, GRACE).expect("a window");
            prop_assert!((0.0..=1.0).contains(&a));
            let minutes = (lo..lo + len)
                .filter(|m| spans.iter().any(|s| s.from <= t(*m) && t(m + 1) <= s.to))
                .count();
            prop_assert!((a - minutes as f64 / len as f64).abs() < 1e-9);
        }
    }
}
