//! Search ranking in the spirit of the Generative Agents memory stream
//! (Park et al., 2023): a hit's score is a weighted mean of its text
//! relevance (min-max normalised over the hits of one query), an
//! exponential recency decay and its importance / 10, so every score is in
//! [0, 1] and scores of one query compare. The database finds and scores
//! the text matches; this decides their order.

use std::cmp::Ordering;

use chrono::{DateTime, Utc};

use super::MAX_IMPORTANCE;
use crate::ValidationError;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreWeights {
    pub relevance: f64,
    pub recency: f64,
    pub importance: f64,
    /// The age at which recency has fallen to 0.5.
    pub recency_half_life_days: f64,
}

impl Default for ScoreWeights {
    /// The paper's equal weights; a month's half-life, the warm window.
    fn default() -> Self {
        Self {
            relevance: 1.0,
            recency: 1.0,
            importance: 1.0,
            recency_half_life_days: 30.0,
        }
    }
}

impl ScoreWeights {
    pub fn validate(&self) -> Result<(), ValidationError> {
        for (field, w) in [
            ("search.relevance", self.relevance),
            ("search.recency", self.recency),
            ("search.importance", self.importance),
        ] {
            if !(0.0..=1_000.0).contains(&w) {
                return Err(ValidationError::new(field, "must be between 0 and 1000"));
            }
        }
        if self.relevance + self.recency + self.importance <= 0.0 {
            return Err(ValidationError::new(
                "search.relevance",
                "at least one of relevance, recency and importance must weigh more than 0",
            ));
        }
        // Below an hour, everything but the last few hours would score 0.
        let hour = 1.0 / 24.0;
        if !(hour..=36_500.0).contains(&self.recency_half_life_days) {
            return Err(ValidationError::new(
                "search.recency_half_life_days",
                "must be between 1/24 (an hour) and 36500",
            ));
        }
        Ok(())
    }
}

/// How recent an event is: 1 at age 0, halving every `half_life_days`.
/// An event dated in the future counts as age 0. In (0, 1], except that it
/// underflows to 0 after about 1,075 half-lives (88 years at 30 days),
/// where it no longer matters.
pub fn recency(occurred_at: DateTime<Utc>, now: DateTime<Utc>, half_life_days: f64) -> f64 {
    let age_ms = (now - occurred_at).num_milliseconds().max(0);
    let age_days = age_ms as f64 / 86_400_000.0;
    let r = 0.5_f64.powf(age_days / half_life_days);
    // A zero or NaN half-life (unvalidated config) must not produce NaN.
    if r.is_nan() { 0.0 } else { r.clamp(0.0, 1.0) }
}

/// Min-max normalisation into [0, 1]: the best becomes 1, the worst 0.
/// When all are equal there is nothing to tell apart: all are 1.0 if they
/// matched at all (positive), else 0.0. NaN and -inf count as the worst,
/// +inf as the best.
pub fn normalise(scores: &[f64]) -> Vec<f64> {
    let finite = || scores.iter().copied().filter(|s| s.is_finite());
    let (Some(min), Some(max)) = (
        finite().min_by(f64::total_cmp),
        finite().max_by(f64::total_cmp),
    ) else {
        return scores
            .iter()
            .map(|&s| if s == f64::INFINITY { 1.0 } else { 0.0 })
            .collect();
    };
    let span = max - min;
    scores
        .iter()
        .map(|&s| {
            if s.is_nan() || s == f64::NEG_INFINITY {
                0.0
            } else if s == f64::INFINITY {
                1.0
            } else if span > 0.0 && span.is_finite() {
                ((s - min) / span).clamp(0.0, 1.0)
            } else if span > 0.0 {
                // The span overflowed (values near ±f64::MAX): halve first.
                ((s / 2.0 - min / 2.0) / (max / 2.0 - min / 2.0)).clamp(0.0, 1.0)
            } else if s > 0.0 {
                1.0
            } else {
                0.0
            }
        })
        .collect()
}

/// The weighted mean of normalised relevance, recency and importance / 10:
/// in [0, 1]. Inputs are clamped to their ranges, so a caller's slip cannot
/// push a hit above everything else.
pub fn combined_score(relevance_norm: f64, recency: f64, importance: i16, w: &ScoreWeights) -> f64 {
    let unit = |x: f64| if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) };
    let weight = |x: f64| if x.is_nan() { 0.0 } else { x.max(0.0) };
    let (wr, wc, wi) = (weight(w.relevance), weight(w.recency), weight(w.importance));
    let total = wr + wc + wi;
    if !(total > 0.0 && total.is_finite()) {
        return 0.0;
    }
    let imp = f64::from(importance.clamp(0, MAX_IMPORTANCE)) / f64::from(MAX_IMPORTANCE);
    let score = (wr * unit(relevance_norm) + wc * unit(recency) + wi * imp) / total;
    score.clamp(0.0, 1.0)
}

/// Orders one query's hits, best first, each with its combined score. A
/// hit is `(item, raw text relevance, occurred_at, importance)`; raw
/// relevance is whatever the database's ranking returns (ts_rank, negated
/// bm25, a fused rank), higher meaning better. Equal scores go to the more
/// recent event, then keep their input order.
pub fn rank_hits<T>(
    hits: Vec<(T, f64, DateTime<Utc>, i16)>,
    now: DateTime<Utc>,
    w: &ScoreWeights,
) -> Vec<(T, f64)> {
    let raw: Vec<f64> = hits.iter().map(|h| h.1).collect();
    let relevance = normalise(&raw);
    let mut scored: Vec<(T, f64, DateTime<Utc>)> = hits
        .into_iter()
        .zip(relevance)
        .map(|((item, _, at, importance), rel)| {
            let rec = recency(at, now, w.recency_half_life_days);
            (item, combined_score(rel, rec, importance, w), at)
        })
        .collect();
    // Stable, so that full ties keep the database's order.
    scored.sort_by(|a, b| match b.1.total_cmp(&a.1) {
        Ordering::Equal => b.2.cmp(&a.2),
        o => o,
    });
    scored
        .into_iter()
        .map(|(item, score, _)| (item, score))
        .collect()
}

/// Reciprocal rank fusion (Cormack et al., 2009): each list votes
/// `1 / (k + rank)` (rank from 1) for its items; the result is every item
/// of any list with its summed vote, best first (ties: first seen first).
/// `k` damps the head of each list; 60 is the paper's value.
pub fn fuse_rrf<T: Clone + Eq + std::hash::Hash>(lists: &[Vec<T>], k: f64) -> Vec<(T, f64)> {
    let mut order: Vec<T> = Vec::new();
    let mut votes: std::collections::HashMap<T, f64> = std::collections::HashMap::new();
    for list in lists {
        for (i, item) in list.iter().enumerate() {
            let vote = 1.0 / (k + i as f64 + 1.0);
            match votes.get_mut(item) {
                Some(v) => *v += vote,
                None => {
                    votes.insert(item.clone(), vote);
                    order.push(item.clone());
                }
            }
        }
    }
    let mut fused: Vec<(T, f64)> = order
        .into_iter()
        .map(|item| {
            let v = votes.get(&item).copied().unwrap_or(0.0);
            (item, v)
        })
        .collect();
    fused.sort_by(|a, b| b.1.total_cmp(&a.1));
    fused
}

#[cfg(test)]
mod tests {
    use chrono::{TimeDelta, TimeZone};
    use proptest::prelude::*;

    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 1, 12, 0, 0)
            .single()
            .expect("valid time")
    }

    fn ago(days: i64) -> DateTime<Utc> {
        now() - TimeDelta::days(days)
    }

    #[test]
    fn weights_validate() {
        let w = ScoreWeights::default();
        assert_eq!(w.validate(), Ok(()));
        let cases = [
            (
                ScoreWeights {
                    relevance: -0.1,
                    ..w
                },
                "search.relevance",
            ),
            (
                ScoreWeights {
                    recency: f64::NAN,
                    ..w
                },
                "search.recency",
            ),
            (
                ScoreWeights {
                    importance: f64::INFINITY,
                    ..w
                },
                "search.importance",
            ),
            (
                ScoreWeights {
                    relevance: 0.0,
                    recency: 0.0,
                    importance: 0.0,
                    ..w
                },
                "search.relevance",
            ),
            (
                ScoreWeights {
                    recency_half_life_days: 0.0,
                    ..w
                },
                "search.recency_half_life_days",
            ),
        ];
        for (bad, field) in cases {
            assert_eq!(bad.validate().expect_err(field).field, field);
        }
    }

    #[test]
    fn recency_decays_by_half_lives() {
        assert_eq!(recency(now(), now(), 30.0), 1.0);
        assert_eq!(recency(ago(30), now(), 30.0), 0.5);
        assert_eq!(recency(ago(60), now(), 30.0), 0.25);
        assert_eq!(recency(now() + TimeDelta::days(1), now(), 30.0), 1.0);
        let old = recency(ago(3_650), now(), 30.0);
        assert!(old > 0.0 && old < 1e-30, "{old}");
        assert_eq!(recency(ago(1), now(), 0.0), 0.0);
        assert_eq!(recency(now(), now(), 0.0), 0.0, "NaN becomes 0");
    }

    #[test]
    fn normalisation() {
        assert_eq!(normalise(&[2.0, 4.0, 3.0]), [0.0, 1.0, 0.5]);
        assert_eq!(normalise(&[0.3, 0.3]), [1.0, 1.0]);
        assert_eq!(normalise(&[0.0, 0.0]), [0.0, 0.0]);
        assert_eq!(normalise(&[-2.0]), [0.0]);
        assert_eq!(normalise(&[]), Vec::<f64>::new());
        assert_eq!(
            normalise(&[f64::NAN, 1.0, f64::INFINITY, 3.0, f64::NEG_INFINITY]),
            [0.0, 0.0, 1.0, 1.0, 0.0]
        );
        assert_eq!(normalise(&[f64::NAN]), [0.0]);
        assert_eq!(normalise(&[-f64::MAX, f64::MAX]), [0.0, 1.0]);
    }

    #[test]
    fn combined_is_the_weighted_mean() {
        let w = ScoreWeights::default();
        assert_eq!(combined_score(1.0, 1.0, 10, &w), 1.0);
        assert_eq!(combined_score(0.0, 0.0, 0, &w), 0.0);
        assert!((combined_score(1.0, 0.5, 6, &w) - 0.7).abs() < 1e-12);
        let only_importance = ScoreWeights {
            relevance: 0.0,
            recency: 0.0,
            importance: 2.0,
            ..w
        };
        assert_eq!(combined_score(1.0, 1.0, 3, &only_importance), 0.3);
        // Out-of-range inputs are clamped, bad weights give 0.
        assert_eq!(combined_score(7.0, f64::NAN, 99, &w), 2.0 / 3.0);
        let none = ScoreWeights {
            relevance: f64::NAN,
            recency: -1.0,
            importance: 0.0,
            ..w
        };
        assert_eq!(combined_score(1.0, 1.0, 10, &none), 0.0);
    }

    #[test]
    fn ranking_order() {
        let w = ScoreWeights::default();
        let hits = vec![
            ("old_relevant", 10.0, ago(365), 5),
            ("fresh_weak", 1.0, ago(0), 5),
            ("important", 1.0, ago(365), 10),
            ("twin_older", 5.0, ago(10), 5),
            ("twin_newer", 5.0, ago(10) + TimeDelta::seconds(1), 5),
        ];
        let ranked = rank_hits(hits, now(), &w);
        let names: Vec<&str> = ranked.iter().map(|(n, _)| *n).collect();
        // old_relevant: (1 + ~0 + 0.5)/3; twins: (4/9 + 0.79 + 0.5)/3;
        // fresh_weak: (0 + 1 + 0.5)/3; important: (0 + ~0 + 1)/3.
        assert_eq!(
            names,
            [
                "twin_newer",
                "twin_older",
                "old_relevant",
                "fresh_weak",
                "important"
            ]
        );
        assert!(ranked.windows(2).all(|p| p[0].1 >= p[1].1));
        assert!(rank_hits(Vec::<((), f64, DateTime<Utc>, i16)>::new(), now(), &w).is_empty());
    }

    fn any_weights() -> impl Strategy<Value = ScoreWeights> {
        (0.0f64..=10.0, 0.0f64..=10.0, 0.0f64..=10.0, 0.5f64..=365.0)
            .prop_filter("some weight", |(a, b, c, _)| a + b + c > 0.0)
            .prop_map(|(a, b, c, h)| ScoreWeights {
                relevance: a,
                recency: b,
                importance: c,
                recency_half_life_days: h,
            })
    }

    /// (raw relevance, age in seconds, importance)
    fn any_hit() -> impl Strategy<Value = (f64, i64, i16)> {
        (-5.0f64..=50.0, -86_400i64..=400 * 86_400, 1i16..=10)
    }

    fn position(ranked: &[(usize, f64)], id: usize) -> usize {
        ranked
            .iter()
            .position(|(i, _)| *i == id)
            .expect("every hit is ranked")
    }

    proptest! {
        #[test]
        fn scores_are_in_unit_range_and_sorted(
            hits in proptest::collection::vec(any_hit(), 0..20),
            w in any_weights(),
        ) {
            let n = hits.len();
            let input = hits
                .into_iter()
                .enumerate()
                .map(|(i, (rel, age, imp))| (i, rel, now() - TimeDelta::seconds(age), imp))
                .collect();
            let ranked = rank_hits(input, now(), &w);
            prop_assert_eq!(ranked.len(), n);
            for (_, s) in &ranked {
                prop_assert!((0.0..=1.0).contains(s), "{s}");
            }
            prop_assert!(ranked.windows(2).all(|p| p[0].1 >= p[1].1));
        }

        /// Two hits equal but in one respect: the better one ranks first,
        /// or ties in score (and then ranks first if it is more recent).
        #[test]
        fn better_never_ranks_lower(
            others in proptest::collection::vec(any_hit(), 0..10),
            base in any_hit(),
            better_rel in 0.0f64..=20.0,
            fresher in 0i64..=100 * 86_400,
            more_important in 0i16..=9,
            which in 0usize..3,
            w in any_weights(),
        ) {
            let (rel, age, imp) = base;
            let improved = match which {
                0 => (rel + better_rel, age, imp),
                1 => (rel, age - fresher, imp),
                _ => (rel, age, (imp + more_important).min(10)),
            };
            let mut hits: Vec<(usize, (f64, i64, i16))> =
                others.into_iter().enumerate().map(|(i, h)| (i + 2, h)).collect();
            // The worse one goes first in the input, so a stable sort alone
            // would keep it ahead: only the rule can put the better first.
            hits.insert(0, (0, base));
            hits.insert(1, (1, improved));
            let input = hits
                .into_iter()
                .map(|(i, (r, a, m))| (i, r, now() - TimeDelta::seconds(a), m))
                .collect();
            let ranked = rank_hits(input, now(), &w);
            let (worse, better) = (position(&ranked, 0), position(&ranked, 1));
            let score = |p: usize| ranked[p].1;
            prop_assert!(score(better) >= score(worse));
            if score(better) > score(worse) || (which == 1 && fresher > 0) {
                prop_assert!(better < worse, "{ranked:?}");
            }
        }
    }

    #[test]
    fn rrf_rewards_agreement_and_keeps_every_item() {
        let fused = fuse_rrf(&[vec!["a", "b", "c"], vec!["c", "b", "d"]], 60.0);
        let ids: Vec<&str> = fused.iter().map(|(t, _)| *t).collect();
        // b and c are in both lists; b ranks 2 + 2, c ranks 3 + 1: the
        // reciprocal of the smaller rank weighs more, so c edges out b.
        assert_eq!(ids, vec!["c", "b", "a", "d"]);
        assert!(fused.windows(2).all(|w| w[0].1 >= w[1].1));
        assert!(fuse_rrf::<u8>(&[], 60.0).is_empty());
        // One list: its own order.
        let one = fuse_rrf(&[vec![3, 1, 2]], 60.0);
        assert_eq!(one.iter().map(|x| x.0).collect::<Vec<_>>(), vec![3, 1, 2]);
    }
}
