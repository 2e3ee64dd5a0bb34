//! Effective priority: the score the scheduler orders runnable tasks by
//! (SEED 4.2), with deadline pressure and aging.
//!
//! ```text
//! score = min(level × company multiplier × deadline pressure + aging, 100)
//! ```
//!
//! - **level** is 100, 80, 60, 40, 20 for emergency .. low.
//! - **deadline pressure** is 1.0 with no deadline or while at least
//!   `deadline_window` remains, then rises linearly to
//!   `max_deadline_pressure` as the remaining time falls to zero. At or past
//!   the deadline it stays at the maximum and the task is *late*. Linear,
//!   because it is the one curve an operator can predict from two numbers.
//! - **aging** is `aging_points_per_minute` for every minute the task has
//!   been waiting to run.
//!
//! Aging is added inside the cap, not after it, so the score stays on
//! SEED's 0 to 100 scale (what the API shows means the same for every task)
//! and so the cap is reachable by waiting: a task that waits long enough
//! reaches 100 like a fresh emergency. The scheduler breaks ties in score by
//! waiting time, older first, so among capped tasks the order is first come,
//! first served, and only the finitely many tasks that were already waiting
//! can run before a capped one.
//!
//! The bound that follows: a low task (level 20) of a company with
//! multiplier `m`, waiting `W` minutes under a flood of fresh tasks that
//! score `S`, is picked at the next free slot once
//! `20 × m + W × aging_points_per_minute >= S`: it then scores at least `S`
//! and is older than all of them. With the defaults (0.5 points a minute)
//! and `m = 1`, even a flood of emergencies (`S = 100`) holds it back at
//! most 160 minutes; a flood of high tasks (60), 80 minutes. Deadline
//! pressure only raises a score, so the bound ignores it.
//! [`starvation_bound_minutes`] computes it. With aging set to 0 there is no
//! bound: low tasks then run only when nothing else is runnable.

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::ValidationError;
use crate::task::Priority;

/// The highest score a task can have.
pub const MAX_SCORE: f64 = 100.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PriorityConfig {
    /// How long before its deadline a task starts to gain pressure.
    pub deadline_window: TimeDelta,
    /// The pressure at (and past) the deadline.
    pub max_deadline_pressure: f64,
    /// Points a waiting task gains per minute, so nothing starves.
    pub aging_points_per_minute: f64,
}

impl Default for PriorityConfig {
    fn default() -> Self {
        Self {
            deadline_window: TimeDelta::hours(24),
            max_deadline_pressure: 1.5,
            aging_points_per_minute: 0.5,
        }
    }
}

impl PriorityConfig {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.deadline_window <= TimeDelta::zero() {
            return Err(ValidationError::new(
                "priority.deadline_window_minutes",
                "must be more than 0",
            ));
        }
        if !(1.0..=10.0).contains(&self.max_deadline_pressure) {
            return Err(ValidationError::new(
                "priority.max_deadline_pressure",
                "must be between 1 and 10",
            ));
        }
        if !(0.0..=100.0).contains(&self.aging_points_per_minute) {
            return Err(ValidationError::new(
                "priority.aging_points_per_minute",
                "must be between 0 and 100",
            ));
        }
        Ok(())
    }
}

/// A task's score and what went into it, for the scheduler and for showing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
pub struct EffectivePriority {
    /// In [0, 100]; higher runs first.
    pub score: f64,
    /// In [1, max_deadline_pressure].
    pub deadline_pressure: f64,
    /// Points gained by waiting (before the cap).
    pub aging: f64,
    /// The deadline has passed (or is now).
    pub late: bool,
}

/// The pressure a deadline puts on a task now, and whether it is late.
pub fn deadline_pressure(
    deadline: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    cfg: &PriorityConfig,
) -> (f64, bool) {
    let Some(deadline) = deadline else {
        return (1.0, false);
    };
    let remaining = deadline - now;
    if remaining <= TimeDelta::zero() {
        return (cfg.max_deadline_pressure, true);
    }
    if remaining >= cfg.deadline_window {
        return (1.0, false);
    }
    // 0 < remaining < window, so the division is safe and the fraction is
    // in (0, 1); the clamp only guards against rounding.
    let used_up = 1.0 - millis(remaining) / millis(cfg.deadline_window);
    let pressure = 1.0 + (cfg.max_deadline_pressure - 1.0) * used_up.clamp(0.0, 1.0);
    (pressure, false)
}

/// The score of a task of `level` from a company with `multiplier` (its
/// validated `priority_multiplier`), runnable since `waiting_since`.
pub fn effective_priority(
    level: Priority,
    multiplier: f64,
    deadline: Option<DateTime<Utc>>,
    waiting_since: DateTime<Utc>,
    now: DateTime<Utc>,
    cfg: &PriorityConfig,
) -> EffectivePriority {
    let (pressure, late) = deadline_pressure(deadline, now, cfg);
    // A clock that went back, or a task that became runnable "later", has
    // not waited: it must not lose points either.
    let waited_minutes = millis((now - waiting_since).max(TimeDelta::zero())) / 60_000.0;
    let aging = waited_minutes * cfg.aging_points_per_minute;
    let raw = f64::from(level.level()) * multiplier * pressure + aging;
    // A corrupt multiplier (NaN, negative) must not jump the queue: NaN
    // would otherwise compare as neither higher nor lower than anything.
    let score = if raw.is_nan() {
        0.0
    } else {
        raw.clamp(0.0, MAX_SCORE)
    };
    EffectivePriority {
        score,
        deadline_pressure: pressure,
        aging,
        late,
    }
}

/// Minutes a task of `level` (company `multiplier`, no deadline) must wait
/// before its score reaches `competing_score`, the score of fresh tasks it
/// competes with; it runs at the next free slot after that (see the module
/// doc). 0 if it already does; infinite when aging is off and it does not.
pub fn starvation_bound_minutes(
    level: Priority,
    multiplier: f64,
    competing_score: f64,
    cfg: &PriorityConfig,
) -> f64 {
    // Nothing scores above the cap, so reaching it is always enough.
    let target = competing_score.min(MAX_SCORE);
    let start = f64::from(level.level()) * multiplier;
    if start >= target {
        return 0.0;
    }
    if cfg.aging_points_per_minute <= 0.0 {
        return f64::INFINITY;
    }
    (target - start) / cfg.aging_points_per_minute
}

fn millis(d: TimeDelta) -> f64 {
    // Exact below 2^53 ms (285,000 years); beyond that the rounding still
    // keeps the order, which is all the scores rely on.
    d.num_milliseconds() as f64
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 1, 12, 0, 0)
            .single()
            .expect("valid time")
    }

    fn minutes(m: i64) -> TimeDelta {
        TimeDelta::minutes(m)
    }

    #[test]
    fn defaults_are_valid_and_named_fields_are_checked() {
        let cfg = PriorityConfig::default();
        assert_eq!(cfg.validate(), Ok(()));
        assert_eq!(cfg.deadline_window, TimeDelta::hours(24));
        let cases = [
            (
                PriorityConfig {
                    deadline_window: TimeDelta::zero(),
                    ..cfg
                },
                "priority.deadline_window_minutes",
            ),
            (
                PriorityConfig {
                    max_deadline_pressure: 0.99,
                    ..cfg
                },
                "priority.max_deadline_pressure",
            ),
            (
                PriorityConfig {
                    max_deadline_pressure: f64::NAN,
                    ..cfg
                },
                "priority.max_deadline_pressure",
            ),
            (
                PriorityConfig {
                    aging_points_per_minute: -0.1,
                    ..cfg
                },
                "priority.aging_points_per_minute",
            ),
            (
                PriorityConfig {
                    aging_points_per_minute: 100.5,
                    ..cfg
                },
                "priority.aging_points_per_minute",
            ),
        ];
        for (bad, field) in cases {
            assert_eq!(bad.validate().expect_err(field).field, field);
        }
    }

    #[test]
    fn pressure_curve() {
        let cfg = PriorityConfig::default();
        let now = t0();
        let at = |remaining: TimeDelta| deadline_pressure(Some(now + remaining), now, &cfg);
        assert_eq!(deadline_pressure(None, now, &cfg), (1.0, false));
        assert_eq!(at(TimeDelta::days(30)), (1.0, false));
        assert_eq!(at(TimeDelta::hours(24)), (1.0, false));
        assert_eq!(at(TimeDelta::hours(12)), (1.25, false));
        assert_eq!(at(TimeDelta::hours(6)), (1.375, false));
        assert_eq!(at(TimeDelta::zero()), (1.5, true));
        assert_eq!(at(-TimeDelta::days(3)), (1.5, true));
    }

    #[test]
    fn seed_formula_without_deadline_or_wait() {
        let cfg = PriorityConfig::default();
        let p = |level, mult| effective_priority(level, mult, None, t0(), t0(), &cfg);
        assert_eq!(p(Priority::High, 1.0).score, 60.0);
        assert_eq!(p(Priority::Low, 1.0).score, 20.0);
        assert_eq!(p(Priority::Urgent, 1.5).score, 100.0, "capped");
        assert_eq!(p(Priority::Medium, 0.5).score, 20.0);
        let e = p(Priority::Emergency, 1.0);
        assert_eq!(
            e,
            EffectivePriority {
                score: 100.0,
                deadline_pressure: 1.0,
                aging: 0.0,
                late: false
            }
        );
    }

    #[test]
    fn aging_and_deadline_add_up() {
        let cfg = PriorityConfig::default();
        let now = t0();
        // high (60) × 1.0 × 1.25 (12h left of 24h) + 10 minutes × 0.5.
        let e = effective_priority(
            Priority::High,
            1.0,
            Some(now + TimeDelta::hours(12)),
            now - minutes(10),
            now,
            &cfg,
        );
        assert_eq!(e.score, 80.0);
        assert_eq!(e.deadline_pressure, 1.25);
        assert_eq!(e.aging, 5.0);
        assert!(!e.late);
        // A task that becomes runnable in the future has not waited.
        let e = effective_priority(Priority::Low, 1.0, None, now + minutes(5), now, &cfg);
        assert_eq!(e.aging, 0.0);
        assert_eq!(e.score, 20.0);
    }

    #[test]
    fn corrupt_multiplier_never_jumps_the_queue() {
        let cfg = PriorityConfig::default();
        for m in [f64::NAN, -1.0, f64::NEG_INFINITY] {
            let e = effective_priority(Priority::Emergency, m, None, t0(), t0(), &cfg);
            assert_eq!(e.score, 0.0, "{m}");
        }
    }

    #[test]
    fn starvation_bounds() {
        let cfg = PriorityConfig::default();
        let b = |level, mult, s| starvation_bound_minutes(level, mult, s, &cfg);
        assert_eq!(b(Priority::Low, 1.0, 100.0), 160.0);
        assert_eq!(b(Priority::Low, 1.0, 60.0), 80.0);
        assert_eq!(
            b(Priority::Low, 1.0, 250.0),
            160.0,
            "nothing scores above 100"
        );
        assert_eq!(b(Priority::Low, 2.0, 60.0), 40.0);
        assert_eq!(b(Priority::High, 1.0, 60.0), 0.0);
        let off = PriorityConfig {
            aging_points_per_minute: 0.0,
            ..cfg
        };
        assert_eq!(
            starvation_bound_minutes(Priority::Low, 1.0, 60.0, &off),
            f64::INFINITY
        );
    }

    fn any_priority() -> impl Strategy<Value = Priority> {
        proptest::sample::select(Priority::ALL.to_vec())
    }

    /// Mostly gentle aging: with fast aging nearly every score sits at the
    /// cap, where the monotonicity properties would hold trivially.
    fn any_config() -> impl Strategy<Value = PriorityConfig> {
        let aging = prop_oneof![Just(0.0), 0.0f64..=0.05, 0.0f64..=1.0, 0.0f64..=100.0];
        (1i64..=7 * 24 * 60, 1.0f64..=10.0, aging).prop_map(|(w, p, a)| PriorityConfig {
            deadline_window: minutes(w),
            max_deadline_pressure: p,
            aging_points_per_minute: a,
        })
    }

    /// A deadline this many seconds from `t0` (or none), within ± 30 days.
    fn any_deadline() -> impl Strategy<Value = Option<i64>> {
        proptest::option::of(-30 * 86_400i64..=30 * 86_400)
    }

    fn at(secs: i64) -> DateTime<Utc> {
        t0() + TimeDelta::seconds(secs)
    }

    proptest! {
        #[test]
        fn score_is_capped(
            level in any_priority(),
            mult in 0.1f64..=3.0,
            deadline in any_deadline(),
            waited in 0i64..=100 * 86_400,
            cfg in any_config(),
        ) {
            prop_assert!(cfg.validate().is_ok());
            let e = effective_priority(level, mult, deadline.map(at), at(-waited), at(0), &cfg);
            prop_assert!((0.0..=MAX_SCORE).contains(&e.score), "{e:?}");
            prop_assert!((1.0..=cfg.max_deadline_pressure).contains(&e.deadline_pressure));
            prop_assert!(e.aging >= 0.0);
        }

        #[test]
        fn monotone_in_level_and_multiplier(
            a in any_priority(),
            b in any_priority(),
            m1 in 0.1f64..=3.0,
            m2 in 0.1f64..=3.0,
            deadline in any_deadline(),
            waited in 0i64..=3_600,
            cfg in any_config(),
        ) {
            let score = |p: Priority, m| {
                effective_priority(p, m, deadline.map(at), at(-waited), at(0), &cfg).score
            };
            let (lo, hi) = if a.level() <= b.level() { (a, b) } else { (b, a) };
            prop_assert!(score(lo, m1) <= score(hi, m1));
            let (mlo, mhi) = if m1 <= m2 { (m1, m2) } else { (m2, m1) };
            prop_assert!(score(a, mlo) <= score(a, mhi));
        }

        #[test]
        fn monotone_in_deadline_nearness(
            level in any_priority(),
            mult in 0.1f64..=3.0,
            // Deadlines as fractions of the window, so that most fall inside
            // it, where the curve is.
            f1 in -0.5f64..=1.5,
            f2 in -0.5f64..=1.5,
            waited in 0i64..=3_600,
            cfg in any_config(),
        ) {
            let score = |d: Option<f64>| {
                let deadline = d.map(|f| {
                    let ms = cfg.deadline_window.num_milliseconds() as f64 * f;
                    t0() + TimeDelta::milliseconds(ms as i64)
                });
                effective_priority(level, mult, deadline, at(-waited), at(0), &cfg).score
            };
            let (near, far) = if f1 <= f2 { (f1, f2) } else { (f2, f1) };
            prop_assert!(score(Some(near)) >= score(Some(far)));
            prop_assert!(score(Some(far)) >= score(None), "no deadline is the farthest");
        }

        #[test]
        fn monotone_in_waiting_time(
            level in any_priority(),
            mult in 0.1f64..=3.0,
            deadline in any_deadline(),
            w1 in -86_400i64..=30 * 86_400,
            w2 in -86_400i64..=30 * 86_400,
            cfg in any_config(),
        ) {
            let score = |waited: i64| {
                effective_priority(level, mult, deadline.map(at), at(-waited), at(0), &cfg).score
            };
            let (short, long) = if w1 <= w2 { (w1, w2) } else { (w2, w1) };
            prop_assert!(score(short) <= score(long));
        }

        /// The result depends only on the inputs' distances in time, never on
        /// the wall clock: moving everything by the same amount changes
        /// nothing, and asking twice gives the same answer.
        #[test]
        fn deterministic(
            level in any_priority(),
            mult in 0.1f64..=3.0,
            deadline in any_deadline(),
            waited in -86_400i64..=30 * 86_400,
            shift in -3_650 * 86_400i64..=3_650 * 86_400,
            cfg in any_config(),
        ) {
            let e = |s: i64| {
                effective_priority(
                    level, mult, deadline.map(|d| at(d + s)), at(s - waited), at(s), &cfg,
                )
            };
            prop_assert_eq!(e(0), e(0));
            prop_assert_eq!(e(0), e(shift));
        }

        #[test]
        fn late_iff_deadline_reached(
            level in any_priority(),
            deadline in -86_400i64..=86_400,
            now_ms in -86_400_000i64..=86_400_000,
            cfg in any_config(),
        ) {
            let now = t0() + TimeDelta::milliseconds(now_ms);
            let deadline = at(deadline);
            let e = effective_priority(level, 1.0, Some(deadline), now, now, &cfg);
            prop_assert_eq!(e.late, now >= deadline);
            prop_assert!(!effective_priority(level, 1.0, None, now, now, &cfg).late);
            if e.late {
                prop_assert_eq!(e.deadline_pressure, cfg.max_deadline_pressure);
            }
            // The instant itself is late, the millisecond before is not.
            prop_assert!(effective_priority(level, 1.0, Some(now), now, now, &cfg).late);
            let before = now - TimeDelta::milliseconds(1);
            prop_assert!(!effective_priority(level, 1.0, Some(now), before, before, &cfg).late);
        }

        /// The documented bound holds: after waiting the bound, a task
        /// scores at least what it competes with.
        #[test]
        fn waiting_the_bound_is_enough(
            level in any_priority(),
            mult in 0.1f64..=3.0,
            competing in 0.0f64..=150.0,
            cfg in any_config(),
        ) {
            // Tinier rates put the bound past the end of time.
            prop_assume!(cfg.aging_points_per_minute >= 0.001);
            let bound = starvation_bound_minutes(level, mult, competing, &cfg);
            prop_assert!(bound.is_finite() && bound >= 0.0);
            // Whole milliseconds, rounded up, as a clock would see them.
            let waited = TimeDelta::milliseconds((bound * 60_000.0).ceil() as i64 + 1);
            let e = effective_priority(level, mult, None, t0() - waited, t0(), &cfg);
            prop_assert!(e.score >= competing.min(MAX_SCORE), "{e:?} vs {competing}");
        }
    }
}
