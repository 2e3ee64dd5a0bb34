//! Replaying the budget ledger: every balance must be what its movements
//! add up to. Shared by both backends; they only read the rows.

use std::collections::BTreeMap;

use kira_core::budget::Pool;

use crate::work::LedgerReport;

/// One ledger row, as read back.
#[derive(Debug, Clone)]
pub struct Movement {
    pub period: String,
    pub company: Option<String>,
    pub reservation: Option<String>,
    pub pool: Option<Pool>,
    pub kind: String,
    pub amount: i64,
}

/// Balances as the ledger says they are.
#[derive(Debug, Default)]
pub struct Replay {
    /// (period, pool) -> [capacity, reserved, spent]
    pools: BTreeMap<(String, Pool), [i64; 3]>,
    /// (period, company) -> [tokens, reserved, spent]
    allocations: BTreeMap<(String, String), [i64; 3]>,
    /// reservation -> [held, spent]
    reservations: BTreeMap<String, [i64; 2]>,
    unknown: Vec<String>,
}

impl Replay {
    pub fn apply(&mut self, m: Movement) {
        let Some(pool) = m.pool else {
            self.unknown
                .push(format!("a {} movement names no pool", m.kind));
            return;
        };
        let (reserved, spent, capacity, tokens) = match m.kind.as_str() {
            "rollover" => (0, 0, m.amount, 0),
            "allocate" => (0, 0, 0, m.amount),
            "reserve" | "grant" => (m.amount, 0, 0, 0),
            "settle" => (-m.amount, m.amount, 0, 0),
            "release" | "shrink" => (-m.amount, 0, 0, 0),
            // Usage above the reservation that found no room: spent with
            // nothing held for it, so the balance goes below zero.
            "overdraft" => (0, m.amount, 0, 0),
            other => {
                self.unknown
                    .push(format!("unknown movement kind {other:?}"));
                return;
            }
        };
        let p = self.pools.entry((m.period.clone(), pool)).or_default();
        p[0] += capacity;
        p[1] += reserved;
        p[2] += spent;
        if pool == Pool::Base
            && let Some(c) = &m.company
        {
            let a = self
                .allocations
                .entry((m.period.clone(), c.clone()))
                .or_default();
            a[0] += tokens;
            a[1] += reserved;
            a[2] += spent;
        }
        if let Some(r) = m.reservation {
            let r = self.reservations.entry(r).or_default();
            r[0] += reserved;
            r[1] += spent;
        }
    }

    /// Compares with the stored balances. Allocations of companies deleted
    /// with `--force` are gone from the table but not from the ledger; they
    /// are not compared (their tokens still count in the pools).
    pub fn compare(
        self,
        entries: i64,
        pools: &BTreeMap<(String, Pool), [i64; 3]>,
        allocations: &BTreeMap<(String, String), [i64; 3]>,
        reservations: &BTreeMap<String, [i64; 2]>,
    ) -> LedgerReport {
        let mut differences = self.unknown;
        let names = ["capacity", "reserved", "spent"];
        let keys: std::collections::BTreeSet<_> =
            pools.keys().chain(self.pools.keys()).cloned().collect();
        for key in keys {
            let want = self.pools.get(&key).copied().unwrap_or_default();
            let have = pools.get(&key).copied().unwrap_or_default();
            for i in 0..3 {
                if want[i] != have[i] {
                    differences.push(format!(
                        "pool {} of {}: {} is {} but the ledger says {}",
                        key.1.as_str(),
                        key.0,
                        names[i],
                        have[i],
                        want[i]
                    ));
                }
            }
        }
        let names = ["tokens", "reserved", "spent"];
        for (key, have) in allocations {
            let want = self.allocations.get(key).copied().unwrap_or_default();
            for i in 0..3 {
                if want[i] != have[i] {
                    differences.push(format!(
                        "allocation of {} in {}: {} is {} but the ledger says {}",
                        key.1, key.0, names[i], have[i], want[i]
                    ));
                }
            }
        }
        for (id, have) in reservations {
            let want = self.reservations.get(id).copied().unwrap_or_default();
            if want != *have {
                differences.push(format!(
                    "reservation {id}: held {} and spent {} but the ledger says {} and {}",
                    have[0], have[1], want[0], want[1]
                ));
            }
        }
        LedgerReport {
            entries,
            ok: differences.is_empty(),
            differences,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(
        kind: &str,
        pool: Pool,
        company: Option<&str>,
        res: Option<&str>,
        amount: i64,
    ) -> Movement {
        Movement {
            period: "2026-11".into(),
            company: company.map(str::to_owned),
            reservation: res.map(str::to_owned),
            pool: Some(pool),
            kind: kind.into(),
            amount,
        }
    }

    #[test]
    fn a_reserve_settle_release_cycle_balances() {
        let mut r = Replay::default();
        r.apply(m("rollover", Pool::Base, None, None, 100));
        r.apply(m("allocate", Pool::Base, Some("acme"), None, 100));
        r.apply(m("reserve", Pool::Base, Some("acme"), Some("r1"), 40));
        r.apply(m("settle", Pool::Base, Some("acme"), Some("r1"), 30));
        r.apply(m("release", Pool::Base, Some("acme"), Some("r1"), 10));
        let pools = BTreeMap::from([(("2026-11".to_string(), Pool::Base), [100, 0, 30])]);
        let allocs = BTreeMap::from([(("2026-11".to_string(), "acme".to_string()), [100, 0, 30])]);
        let res = BTreeMap::from([("r1".to_string(), [0, 30])]);
        let report = r.compare(5, &pools, &allocs, &res);
        assert!(report.ok, "{report:?}");
    }

    #[test]
    fn an_overdraft_is_spent_without_a_hold_and_replays() {
        let mut r = Replay::default();
        r.apply(m("rollover", Pool::Base, None, None, 100));
        r.apply(m("allocate", Pool::Base, Some("acme"), None, 100));
        r.apply(m("reserve", Pool::Base, Some("acme"), Some("r1"), 90));
        r.apply(m("reserve", Pool::Base, Some("acme"), Some("r1"), 10));
        r.apply(m("settle", Pool::Base, Some("acme"), Some("r1"), 100));
        r.apply(m("overdraft", Pool::Base, Some("acme"), Some("r1"), 25));
        let pools = BTreeMap::from([(("2026-11".to_string(), Pool::Base), [100, 0, 125])]);
        let allocs = BTreeMap::from([(("2026-11".to_string(), "acme".to_string()), [100, 0, 125])]);
        let res = BTreeMap::from([("r1".to_string(), [0, 125])]);
        let report = r.compare(6, &pools, &allocs, &res);
        assert!(report.ok, "{report:?}");
        // The same balances without the overdraft row do not replay.
        let mut r = Replay::default();
        r.apply(m("rollover", Pool::Base, None, None, 100));
        r.apply(m("allocate", Pool::Base, Some("acme"), None, 100));
        r.apply(m("reserve", Pool::Base, Some("acme"), Some("r1"), 100));
        r.apply(m("settle", Pool::Base, Some("acme"), Some("r1"), 100));
        assert!(!r.compare(4, &pools, &allocs, &res).ok);
    }

    #[test]
    fn a_shrink_gives_back_part_of_a_held_reservation() {
        let mut r = Replay::default();
        r.apply(m("rollover", Pool::Burst, None, None, 100));
        r.apply(m("reserve", Pool::Burst, Some("acme"), Some("r1"), 60));
        r.apply(m("shrink", Pool::Burst, Some("acme"), Some("r1"), 45));
        let pools = BTreeMap::from([(("2026-11".to_string(), Pool::Burst), [100, 15, 0])]);
        let res = BTreeMap::from([("r1".to_string(), [15, 0])]);
        let report = r.compare(3, &pools, &BTreeMap::new(), &res);
        assert!(report.ok, "{report:?}");
    }

    #[test]
    fn a_balance_that_moved_without_a_ledger_row_is_reported() {
        let mut r = Replay::default();
        r.apply(m("rollover", Pool::Burst, None, None, 50));
        let pools = BTreeMap::from([(("2026-11".to_string(), Pool::Burst), [50, 7, 0])]);
        let report = r.compare(1, &pools, &BTreeMap::new(), &BTreeMap::new());
        assert!(!report.ok);
        assert!(
            report.differences[0].contains("reserved is 7 but the ledger says 0"),
            "{report:?}"
        );
    }
}
