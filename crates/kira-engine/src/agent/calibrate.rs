//! How far each provider's and model's prompt counts are from kira's own
//! (cl100k): the ratio of the provider's reported `prompt_tokens` to kira's
//! count, over its recent calls, and the factor reservations scale kira's
//! count by (a high percentile of the ratio).
//!
//! Kept in memory, per process: a few dozen numbers per model, learnt again
//! within the first calls after a restart (until then reservations use the
//! uncalibrated margin, which is what kira reserved before calibration
//! existed). A table would survive restarts but costs a write per call on
//! the hot path for a figure that a handful of calls re-establishes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

/// Ratios kept per provider and model: the most recent calls.
pub const WINDOW: usize = 64;
/// The factor before any observation: kira's count plus 15%.
pub const UNCALIBRATED: f64 = 1.15;
/// The percentile of the recent ratios reservations use.
pub const PERCENTILE: f64 = 0.95;

/// The observed ratios of one provider and model, as `kira agents` shows them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct PromptCalibration {
    /// Calls observed (at most the last [`WINDOW`] are kept).
    pub observations: usize,
    /// What reservations multiply kira's prompt count by.
    pub factor: f64,
    /// The smallest and largest recent ratio (the spread); None before
    /// any observation.
    pub min_ratio: Option<f64>,
    pub max_ratio: Option<f64>,
}

/// Calls observed in all, and the most recent ratios.
type Observed = (usize, VecDeque<f64>);

/// Per (provider, model), the recent ratios.
#[derive(Debug, Default)]
pub struct Calibration {
    ratios: Mutex<BTreeMap<(String, String), Observed>>,
}

impl Calibration {
    /// Records one call: kira counted `counted` prompt tokens, the provider
    /// reported `reported`. Calls without a usable count are not evidence.
    pub fn observe(&self, provider: &str, model: &str, counted: i64, reported: i64) {
        if counted <= 0 || reported <= 0 {
            return;
        }
        let ratio = reported as f64 / counted as f64;
        let mut all = self.ratios.lock().unwrap_or_else(|e| e.into_inner());
        let (n, window) = all
            .entry((provider.to_owned(), model.to_owned()))
            .or_default();
        *n += 1;
        if window.len() == WINDOW {
            window.pop_front();
        }
        window.push_back(ratio);
    }

    /// The factor for a reservation: the [`PERCENTILE`] of the recent
    /// ratios (nearest rank), or [`UNCALIBRATED`] before any.
    pub fn factor(&self, provider: &str, model: &str) -> f64 {
        self.show(provider, model).factor
    }

    pub fn show(&self, provider: &str, model: &str) -> PromptCalibration {
        let all = self.ratios.lock().unwrap_or_else(|e| e.into_inner());
        let Some((n, window)) = all.get(&(provider.to_owned(), model.to_owned())) else {
            return PromptCalibration {
                observations: 0,
                factor: UNCALIBRATED,
                min_ratio: None,
                max_ratio: None,
            };
        };
        let mut sorted: Vec<f64> = window.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let rank = ((PERCENTILE * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        PromptCalibration {
            observations: *n,
            factor: sorted[rank - 1],
            min_ratio: sorted.first().copied(),
            max_ratio: sorted.last().copied(),
        }
    }
}

/// The tokens to reserve for a prompt kira counted as `counted`, scaled by
/// `factor`, rounded up.
pub fn scaled(counted: i64, factor: f64) -> i64 {
    let n = (counted as f64 * factor).ceil();
    if n.is_finite() && n < (i64::MAX / 4) as f64 {
        n as i64
    } else {
        i64::MAX / 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_any_call_the_margin_after_calls_the_high_percentile() {
        let c = Calibration::default();
        assert_eq!(c.factor("p", "m"), UNCALIBRATED);
        c.observe("p", "m", 1000, 1300);
        assert!((c.factor("p", "m") - 1.3).abs() < 1e-9);
        // Another model of the same provider is not affected.
        assert_eq!(c.factor("p", "other"), UNCALIBRATED);
        // 19 calls at 1.0 and one at 2.0: p95 of 20 is the 19th, 1.0.
        let c = Calibration::default();
        for _ in 0..19 {
            c.observe("p", "m", 100, 100);
        }
        c.observe("p", "m", 100, 200);
        let s = c.show("p", "m");
        assert_eq!((s.observations, s.factor), (20, 1.0));
        assert_eq!((s.min_ratio, s.max_ratio), (Some(1.0), Some(2.0)));
        // Two at 2.0 out of 20: the 95th percentile is 2.0.
        c.observe("p", "m", 100, 200);
        assert_eq!(c.factor("p", "m"), 2.0);
    }

    #[test]
    fn a_call_without_usage_is_no_evidence_and_the_window_keeps_the_recent() {
        let c = Calibration::default();
        c.observe("p", "m", 100, 0);
        c.observe("p", "m", 0, 100);
        assert_eq!(c.show("p", "m").observations, 0);
        for _ in 0..WINDOW {
            c.observe("p", "m", 100, 300);
        }
        for _ in 0..WINDOW {
            c.observe("p", "m", 100, 110);
        }
        let s = c.show("p", "m");
        assert_eq!(s.observations, 2 * WINDOW);
        assert!((s.factor - 1.1).abs() < 1e-9, "{s:?}");
    }

    #[test]
    fn scaling_rounds_up() {
        assert_eq!(scaled(1000, 1.15), 1150);
        assert_eq!(scaled(3, 1.1), 4);
        assert_eq!(scaled(i64::MAX / 2, 10.0), i64::MAX / 4);
    }
}
