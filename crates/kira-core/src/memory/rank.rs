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
    /// Relevance and importance as in the paper; recency a tenth of
    /// relevance, so it orders hits about equally relevant (within 0.1 of
    /// each other, the best being 1) but never puts a recent weak match
    /// above an older one that answers the question: a question may be
    /// about any time. Recent memories still lead a context pack through
    /// its hot and warm sections, which are chosen by age. At equal weights
    /// recency decided: LongMemEval_S's sample (answer sessions of any age,
    /// full text only) had session recall_all@5 0.739 at 1.0, 0.772 at
    /// 0.3, 0.783 at 0.1, 0.03 and 0. A month's half-life, the warm window.
    fn default() -> Self {
        Self {
            relevance: 1.0,
            recency: 0.1,
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

/// The episodes of a query's hits: hits of one source (a conversation, a
/// document, a task) form an episode when each follows the one before it
/// within `gap`. Returns each hit's episode number, in input order; a hit
/// without a source is in none.
pub fn episodes(
    hits: &[(Option<&str>, DateTime<Utc>)],
    gap: chrono::TimeDelta,
) -> Vec<Option<usize>> {
    let mut order: Vec<usize> = (0..hits.len()).filter(|&i| hits[i].0.is_some()).collect();
    order.sort_by(|&a, &b| hits[a].0.cmp(&hits[b].0).then(hits[a].1.cmp(&hits[b].1)));
    let mut out = vec![None; hits.len()];
    let mut episode = 0;
    for (n, &i) in order.iter().enumerate() {
        if n > 0 {
            let prev = order[n - 1];
            if hits[prev].0 != hits[i].0 || hits[i].1 - hits[prev].1 > gap {
                episode += 1;
            }
        }
        out[i] = Some(episode);
    }
    out
}

/// Hits of one episode support each other: a conversation several of whose
/// turns match a question is more likely what it asks about than one with
/// a single match. `hits` are `(item, episode, relevance, support)`:
/// relevance is what the hit ranks by, support what it lends the other
/// hits of its episode (its match on the question's words and meaning,
/// say, without votes that favour a whole time window). Both are min-max
/// normalised over the query's hits (as [`normalise`]); each hit then
/// gains `share` times the squares of the best `others` supports of the
/// other hits of its episode, so that strong company counts and a long
/// episode of weak matches does not outweigh one strong match. The result
/// is each item with its new relevance, best first (ties keep their input
/// order).
pub fn support_within_episodes<T>(
    hits: Vec<(T, Option<usize>, f64, f64)>,
    share: f64,
    others: usize,
) -> Vec<(T, f64)> {
    let relevance = normalise(&hits.iter().map(|h| h.2).collect::<Vec<_>>());
    let support = normalise(&hits.iter().map(|h| h.3).collect::<Vec<_>>());
    let mut by_episode: std::collections::HashMap<usize, Vec<(f64, usize)>> = Default::default();
    for (i, (h, s)) in hits.iter().zip(&support).enumerate() {
        if let Some(e) = h.1 {
            by_episode.entry(e).or_default().push((*s, i));
        }
    }
    for v in by_episode.values_mut() {
        v.sort_by(|a, b| b.0.total_cmp(&a.0));
    }
    let share = if share.is_finite() {
        share.max(0.0)
    } else {
        0.0
    };
    let mut lifted: Vec<(T, f64)> = hits
        .into_iter()
        .zip(relevance)
        .enumerate()
        .map(|(i, ((item, episode, _, _), r))| {
            let lent = episode.and_then(|e| by_episode.get(&e)).map_or(0.0, |all| {
                all.iter()
                    .filter(|(_, j)| *j != i)
                    .take(others)
                    .map(|(s, _)| s * s)
                    .sum::<f64>()
            });
            (item, r + share * lent)
        })
        .collect();
    // Stable: ties keep the input order.
    lifted.sort_by(|a, b| b.1.total_cmp(&a.1));
    lifted
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
        let w = ScoreWeights {
            recency: 1.0,
            ..ScoreWeights::default()
        };
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

    /// By default recency orders equally relevant hits but does not
    /// outweigh a clearly better match: a question may be about any time.
    #[test]
    fn by_default_relevance_outweighs_recency() {
        let w = ScoreWeights::default();
        let hits = vec![
            ("fresh_partial", 6.0, ago(0), 5),
            ("old_answer", 10.0, ago(90), 5),
            ("twin_older", 3.0, ago(20), 5),
            ("twin_newer", 3.0, ago(2), 5),
            ("floor", 0.0, ago(0), 5),
        ];
        let names: Vec<&str> = rank_hits(hits, now(), &w)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            names,
            [
                "old_answer",
                "fresh_partial",
                "twin_newer",
                "twin_older",
                "floor"
            ]
        );
        // Nearly equal relevance: the fresher goes first.
        let close = vec![
            ("old", 10.0, ago(90), 5),
            ("fresh", 9.5, ago(0), 5),
            ("floor", 0.0, ago(400), 5),
        ];
        let ranked = rank_hits(close, now(), &w);
        assert_eq!(ranked[0].0, "fresh", "{ranked:?}");
    }

    #[test]
    fn ranking_order() {
        let w = ScoreWeights {
            recency: 1.0,
            ..ScoreWeights::default()
        };
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
    fn episodes_are_one_source_in_close_succession() {
        let t = now();
        let min = TimeDelta::minutes;
        let hits = [
            (Some("s1"), t),
            (Some("s2"), t + min(5)),
            (Some("s1"), t + min(50)),
            // 50 minutes after the one before: the same episode, though
            // 100 after the first.
            (Some("s1"), t + min(100)),
            // More than the gap after: a new one.
            (Some("s1"), t + min(200)),
            (None, t),
            (None, t + min(1)),
        ];
        let e = episodes(&hits, TimeDelta::hours(1));
        assert_eq!(e[0], e[2]);
        assert_eq!(e[0], e[3]);
        assert_ne!(e[0], e[4]);
        assert_ne!(e[0], e[1]);
        assert_ne!(e[1], e[4]);
        assert!(e[0].is_some() && e[1].is_some() && e[4].is_some());
        assert_eq!((e[5], e[6]), (None, None), "no source, no episode");
        assert!(episodes(&[], TimeDelta::hours(1)).is_empty());
    }

    #[test]
    fn hits_of_one_episode_support_each_other() {
        // One strong lone hit; an episode of three good hits; a long
        // episode of weak ones; a hit with no episode.
        let hits: Vec<(&str, Option<usize>, f64, f64)> = [
            ("lone", Some(0), 10.0),
            ("a1", Some(1), 9.0),
            ("a2", Some(1), 8.0),
            ("a3", Some(1), 8.0),
            ("w1", Some(2), 2.0),
            ("w2", Some(2), 2.0),
            ("w3", Some(2), 2.0),
            ("w4", Some(2), 2.0),
            ("w5", Some(2), 2.0),
            ("none", None, 2.5),
            ("floor", None, 0.0),
        ]
        .into_iter()
        .map(|(n, e, r)| (n, e, r, r))
        .collect();
        let ranked = support_within_episodes(hits.clone(), 0.2, 4);
        let names: Vec<&str> = ranked.iter().map(|(n, _)| *n).collect();
        // a1: 0.9 + 0.2 * (0.8² + 0.8²) = 1.156 > lone's 1.0.
        assert_eq!(names[..4], ["a1", "a2", "a3", "lone"]);
        let score = |n: &str| ranked.iter().find(|(x, _)| *x == n).map(|x| x.1);
        assert!((score("a1").unwrap_or_default() - 1.156).abs() < 1e-9);
        // Two equal hits each count the other: a2 = 0.8 + 0.2 * (0.81 + 0.64).
        assert!((score("a2").unwrap_or_default() - 1.09).abs() < 1e-9);
        // Four weak neighbours (0.2 each, squared) add 0.032: a weak
        // episode stays below a single stronger hit.
        assert!((score("w1").unwrap_or_default() - 0.232).abs() < 1e-9);
        assert!(score("none") > score("w1"));
        assert_eq!(score("floor"), Some(0.0));
        // Without a share, the order is the relevance order.
        let plain = support_within_episodes(hits, 0.0, 4);
        assert_eq!(plain[0].0, "lone");
        assert!(plain.windows(2).all(|p| p[0].1 >= p[1].1));
        assert!(
            support_within_episodes(Vec::<((), Option<usize>, f64, f64)>::new(), 0.2, 4).is_empty()
        );
        // What a hit lends is its support, not its relevance: an episode
        // whose hits rank high for another reason (a time the question
        // names) but match the question weakly lends little.
        let timely = vec![
            ("lone", Some(0), 10.0, 10.0),
            ("t1", Some(1), 9.0, 1.0),
            ("t2", Some(1), 9.0, 1.0),
            ("t3", Some(1), 9.0, 1.0),
            ("floor", None, 0.0, 0.0),
        ];
        let ranked = support_within_episodes(timely, 0.2, 4);
        assert_eq!(ranked[0].0, "lone");
        assert!((ranked[1].1 - (0.9 + 0.2 * 2.0 * 0.01)).abs() < 1e-9);
    }

    proptest! {
        /// Support only adds: no hit loses relevance, and a hit with no
        /// episode keeps its normalised relevance exactly.
        #[test]
        fn support_never_lowers_a_hit(
            hits in proptest::collection::vec((0.0f64..100.0, proptest::option::of(0usize..4)), 0..30),
            share in 0.0f64..2.0,
            others in 0usize..6,
        ) {
            let input: Vec<(usize, Option<usize>, f64, f64)> =
                hits.iter().enumerate().map(|(i, (r, e))| (i, *e, *r, *r)).collect();
            let raw: Vec<f64> = hits.iter().map(|h| h.0).collect();
            let norm = normalise(&raw);
            let out = support_within_episodes(input, share, others);
            prop_assert_eq!(out.len(), hits.len());
            prop_assert!(out.windows(2).all(|p| p[0].1 >= p[1].1));
            for (i, r) in &out {
                prop_assert!(*r >= norm[*i] - 1e-12);
                if hits[*i].1.is_none() {
                    prop_assert_eq!(*r, norm[*i]);
                }
                prop_assert!(*r <= norm[*i] + share * others as f64 + 1e-12);
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
