//! How many unauthenticated refusals reach the audit log: at most
//! `per_minute` entries per source address in each minute-long window, the
//! rest counted and written as one summary entry when the address's window
//! has ended (at its next refusal, or at any address's refusal after
//! that). The map of addresses is bounded: when full, the address whose
//! window began first is flushed and forgotten.
//!
//! Time is handed in, never read here, so the rule is tested at any time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use chrono::{DateTime, TimeDelta, Utc};

/// How long one address's window lasts.
pub const WINDOW: TimeDelta = TimeDelta::minutes(1);

/// Addresses followed at once, at most.
pub const MAX_ADDRESSES: usize = 4096;

/// What to write for one refusal.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Admission {
    /// Whether this refusal gets its own entry.
    pub record: bool,
    /// Summaries to write first: (address, refusals counted but not
    /// recorded in its window that ended).
    pub summaries: Vec<(IpAddr, u64)>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: DateTime<Utc>,
    recorded: u32,
    counted: u64,
}

#[derive(Debug)]
pub struct RefusalLimiter {
    per_minute: u32,
    capacity: usize,
    windows: Mutex<HashMap<IpAddr, Window>>,
}

impl RefusalLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self::with_capacity(per_minute, MAX_ADDRESSES)
    }

    pub fn with_capacity(per_minute: u32, capacity: usize) -> Self {
        Self {
            per_minute,
            capacity: capacity.max(1),
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Decides about one refusal from `addr` at `now`.
    pub fn admit(&self, addr: IpAddr, now: DateTime<Utc>) -> Admission {
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = Admission::default();
        // Windows that ended: their counts are written now, and they go.
        windows.retain(|a, w| {
            if now - w.start < WINDOW {
                return true;
            }
            if w.counted > 0 {
                out.summaries.push((*a, w.counted));
            }
            false
        });
        if !windows.contains_key(&addr) && windows.len() >= self.capacity {
            let oldest = windows
                .iter()
                .min_by_key(|(_, w)| w.start)
                .map(|(a, w)| (*a, *w));
            if let Some((a, w)) = oldest {
                windows.remove(&a);
                if w.counted > 0 {
                    out.summaries.push((a, w.counted));
                }
            }
        }
        let w = windows.entry(addr).or_insert(Window {
            start: now,
            recorded: 0,
            counted: 0,
        });
        if w.recorded < self.per_minute {
            w.recorded += 1;
            out.record = true;
        } else {
            w.counted += 1;
        }
        out.summaries.sort();
        out
    }

    /// Addresses followed now.
    pub fn len(&self) -> usize {
        self.windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .expect("time")
            + TimeDelta::seconds(secs)
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn records_the_limit_then_counts_then_summarises_once() {
        let l = RefusalLimiter::new(3);
        let recorded = (0..100)
            .filter(|i| {
                let a = l.admit(ip(1), t(i % 50));
                assert!(a.summaries.is_empty());
                a.record
            })
            .count();
        assert_eq!(recorded, 3);
        // The window ended: the next refusal is recorded, after the summary.
        let a = l.admit(ip(1), t(61));
        assert_eq!(a.summaries, vec![(ip(1), 97)]);
        assert!(a.record);
        // And the count starts again.
        assert!(l.admit(ip(1), t(62)).summaries.is_empty());
    }

    #[test]
    fn addresses_are_limited_apart_and_flushed_by_any_refusal() {
        let l = RefusalLimiter::new(1);
        assert!(l.admit(ip(1), t(0)).record);
        assert!(!l.admit(ip(1), t(1)).record);
        assert!(!l.admit(ip(1), t(2)).record);
        assert!(l.admit(ip(2), t(3)).record);
        // Another address's refusal after ip(1)'s window writes its count.
        let a = l.admit(ip(2), t(60));
        assert_eq!(a.summaries, vec![(ip(1), 2)]);
        assert!(!a.record, "ip(2)'s window is still open");
        assert_eq!(l.len(), 1);
        // A window with nothing counted writes no summary.
        let a = l.admit(ip(3), t(200));
        assert_eq!(a.summaries, vec![(ip(2), 1)]);
    }

    #[test]
    fn memory_is_bounded_and_the_evicted_count_is_kept() {
        let l = RefusalLimiter::with_capacity(1, 8);
        assert!(l.admit(ip(0), t(0)).record);
        assert!(!l.admit(ip(0), t(0)).record);
        let mut summaries = Vec::new();
        for n in 1..=20 {
            summaries.extend(l.admit(ip(n), t(i64::from(n))).summaries);
            assert!(l.len() <= 8);
        }
        assert_eq!(summaries, vec![(ip(0), 1)]);
    }

    #[test]
    fn zero_records_nothing_and_counts_everything() {
        let l = RefusalLimiter::new(0);
        assert!(!l.admit(ip(1), t(0)).record);
        assert_eq!(l.admit(ip(1), t(60)).summaries, vec![(ip(1), 1)]);
    }
}
