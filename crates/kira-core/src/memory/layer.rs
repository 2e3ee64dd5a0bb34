//! Context layers (SEED 3.1): which of hot, warm and cold a memory belongs
//! to, from its age and importance.
//!
//! A memory's **age** is `now - occurred_at`, to the nanosecond, with no
//! rounding to days: with `hot_days = 7`, an event exactly 7 days old is
//! hot and one 7 days and 1 second old is not (unless it is important
//! enough). An event dated in the future has a negative age and is hot.
//! Whole days would make the boundary depend on the time of day a context
//! pack is loaded, which no one could predict.

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::MAX_IMPORTANCE;
use crate::ValidationError;

/// The thresholds of the layers. An importance threshold of 11 (one above
/// the highest importance) turns that route into the layer off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerConfig {
    /// Events at most this many days old are hot.
    pub hot_days: i64,
    /// Events at least this important are hot, whatever their age.
    pub hot_importance: i16,
    /// Events at most this many days old are at least warm.
    pub warm_days: i64,
    /// Events at least this important are at least warm.
    pub warm_importance: i16,
}

impl Default for LayerConfig {
    /// SEED 3.1's thresholds.
    fn default() -> Self {
        Self {
            hot_days: 7,
            hot_importance: 8,
            warm_days: 30,
            warm_importance: 6,
        }
    }
}

/// A hundred years: far beyond any retention anyone asks for, and small
/// enough that day counts convert to time spans without overflow.
const MAX_DAYS: i64 = 36_500;

impl LayerConfig {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if !(0..=MAX_DAYS).contains(&self.hot_days) {
            return Err(ValidationError::new(
                "context.hot_days",
                format!("must be between 0 and {MAX_DAYS}"),
            ));
        }
        // Warm must include hot, or a layer would be skipped as an event
        // ages, and "older never hotter" would fail.
        if !(self.hot_days..=MAX_DAYS).contains(&self.warm_days) {
            return Err(ValidationError::new(
                "context.warm_days",
                format!("must be between hot_days and {MAX_DAYS}"),
            ));
        }
        let top = MAX_IMPORTANCE + 1;
        if !(1..=top).contains(&self.hot_importance) {
            return Err(ValidationError::new(
                "context.hot_importance",
                format!("must be between 1 and {top}"),
            ));
        }
        if !(1..=self.hot_importance).contains(&self.warm_importance) {
            return Err(ValidationError::new(
                "context.warm_importance",
                "must be between 1 and hot_importance",
            ));
        }
        Ok(())
    }

    /// The hot window as a span of time.
    pub fn hot_window(&self) -> TimeDelta {
        days(self.hot_days)
    }

    /// The warm window as a span of time.
    pub fn warm_window(&self) -> TimeDelta {
        days(self.warm_days)
    }
}

/// An unvalidated day count must not panic a rule: out of range saturates.
fn days(d: i64) -> TimeDelta {
    TimeDelta::try_days(d).unwrap_or(if d < 0 {
        TimeDelta::MIN
    } else {
        TimeDelta::MAX
    })
}

/// Where a memory sits in a context pack. `Ord` is hottest first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    /// Recent or very important: always loaded.
    Hot,
    /// Fairly recent or important: loaded when relevant to the task.
    Warm,
    /// The rest: reached by search only.
    Cold,
}

impl Layer {
    pub const ALL: [Layer; 3] = [Layer::Hot, Layer::Warm, Layer::Cold];

    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Hot => "hot",
            Layer::Warm => "warm",
            Layer::Cold => "cold",
        }
    }
}

/// The layer of an event that happened at `occurred_at` with `importance`,
/// seen at `now` (see the module doc for what age means).
pub fn layer(
    occurred_at: DateTime<Utc>,
    importance: i16,
    now: DateTime<Utc>,
    cfg: &LayerConfig,
) -> Layer {
    let age = now - occurred_at;
    if age <= cfg.hot_window() || importance >= cfg.hot_importance {
        Layer::Hot
    } else if age <= cfg.warm_window() || importance >= cfg.warm_importance {
        Layer::Warm
    } else {
        Layer::Cold
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 1, 12, 0, 0)
            .single()
            .expect("valid time")
    }

    fn at_age(age: TimeDelta, importance: i16) -> Layer {
        layer(now() - age, importance, now(), &LayerConfig::default())
    }

    fn d(n: i64) -> TimeDelta {
        TimeDelta::days(n)
    }

    #[test]
    fn seed_boundaries() {
        use Layer::{Cold, Hot, Warm};
        let s = TimeDelta::seconds(1);
        // Age, for an unimportant event.
        assert_eq!(at_age(TimeDelta::zero(), 1), Hot);
        assert_eq!(at_age(d(7), 1), Hot, "exactly 7 days is hot");
        assert_eq!(at_age(d(7) + s, 1), Warm, "a second later it is not");
        assert_eq!(at_age(d(8), 1), Warm);
        assert_eq!(at_age(d(29), 1), Warm);
        assert_eq!(at_age(d(30), 1), Warm, "exactly 30 days is warm");
        assert_eq!(at_age(d(30) + s, 1), Cold);
        assert_eq!(at_age(d(31), 1), Cold);
        assert_eq!(at_age(d(-3), 1), Hot, "the future is hot");
        // Importance, for an old event.
        let old = d(365);
        assert_eq!(at_age(old, 10), Hot);
        assert_eq!(at_age(old, 8), Hot);
        assert_eq!(at_age(old, 7), Warm);
        assert_eq!(at_age(old, 6), Warm);
        assert_eq!(at_age(old, 5), Cold);
        // Either route suffices.
        assert_eq!(at_age(d(8), 8), Hot);
        assert_eq!(at_age(d(31), 6), Warm);
        assert_eq!(at_age(d(3), 1), Hot);
    }

    #[test]
    fn configured_thresholds() {
        let cfg = LayerConfig {
            hot_days: 1,
            hot_importance: 11,
            warm_days: 2,
            warm_importance: 11,
        };
        assert_eq!(cfg.validate(), Ok(()));
        assert_eq!(layer(now() - d(30), 10, now(), &cfg), Layer::Cold);
        assert_eq!(layer(now() - d(2), 10, now(), &cfg), Layer::Warm);
        assert_eq!(layer(now() - d(1), 1, now(), &cfg), Layer::Hot);
    }

    #[test]
    fn config_fields_are_named() {
        let cfg = LayerConfig::default();
        assert_eq!(cfg.validate(), Ok(()));
        let cases = [
            (
                LayerConfig {
                    hot_days: -1,
                    ..cfg
                },
                "context.hot_days",
            ),
            (
                LayerConfig {
                    hot_days: 31,
                    ..cfg
                },
                "context.warm_days",
            ),
            (
                LayerConfig {
                    warm_days: MAX_DAYS + 1,
                    ..cfg
                },
                "context.warm_days",
            ),
            (
                LayerConfig {
                    hot_importance: 0,
                    ..cfg
                },
                "context.hot_importance",
            ),
            (
                LayerConfig {
                    hot_importance: 12,
                    ..cfg
                },
                "context.hot_importance",
            ),
            (
                LayerConfig {
                    warm_importance: 9,
                    ..cfg
                },
                "context.warm_importance",
            ),
            (
                LayerConfig {
                    warm_importance: 0,
                    ..cfg
                },
                "context.warm_importance",
            ),
        ];
        for (bad, field) in cases {
            assert_eq!(bad.validate().expect_err(field).field, field);
        }
    }

    #[test]
    fn absurd_config_does_not_panic() {
        let cfg = LayerConfig {
            hot_days: i64::MAX,
            hot_importance: 8,
            warm_days: i64::MIN,
            warm_importance: 6,
        };
        assert_eq!(layer(now() - d(10_000), 1, now(), &cfg), Layer::Hot);
    }

    fn any_config() -> impl Strategy<Value = LayerConfig> {
        (0i64..=60, 0i64..=60, 1i16..=11, 1i16..=11).prop_map(|(a, b, i, j)| LayerConfig {
            hot_days: a.min(b),
            warm_days: a.max(b),
            hot_importance: i.max(j),
            warm_importance: i.min(j),
        })
    }

    proptest! {
        #[test]
        fn monotone(
            cfg in any_config(),
            age1 in -86_400i64..=90 * 86_400,
            age2 in -86_400i64..=90 * 86_400,
            imp1 in 1i16..=10,
            imp2 in 1i16..=10,
        ) {
            prop_assert!(cfg.validate().is_ok());
            let l = |age: i64, imp| layer(now() - TimeDelta::seconds(age), imp, now(), &cfg);
            let (young, old) = (age1.min(age2), age1.max(age2));
            prop_assert!(l(old, imp1) >= l(young, imp1), "older never hotter");
            let (lo, hi) = (imp1.min(imp2), imp1.max(imp2));
            prop_assert!(l(age1, hi) <= l(age1, lo), "more important never colder");
        }
    }
}
