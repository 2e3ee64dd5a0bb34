//! Task metrics (SEED 6.1): what a task's end, a tool call and a review
//! add to the time series, the series' resolutions and histograms, and the
//! figures read from them (averages, quantiles, rates). Pure: the store
//! keeps the rows, the engine reads the clock.
//!
//! Every figure is a sum, so rows add: a minute's row, an hour's and the
//! all-time total are the same additions bucketed differently, and two
//! processes adding disjoint events to one row never need to read it.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde::Serialize;

/// Upper bounds (milliseconds) of the response-time and queue-wait
/// histograms' buckets; a last bucket holds what is above the largest.
pub const BOUNDS_MS: [i64; 13] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 120_000, 300_000, 900_000,
    3_600_000,
];

/// Buckets of a histogram: one per bound and the overflow.
pub const BUCKETS: usize = BOUNDS_MS.len() + 1;

/// Upper bounds (seconds) of the provider call latency histogram.
pub const PROVIDER_BOUNDS: [f64; 10] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];
/// Its buckets: one per bound, and the one above them.
pub const PROVIDER_BUCKETS: usize = PROVIDER_BOUNDS.len() + 1;

/// The time series' resolutions; `Total` is one row per key since the
/// first event, never pruned (the counters `/metrics` exposes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    Minute,
    Hour,
    Day,
    Total,
}

impl Resolution {
    pub const ALL: [Resolution; 4] = [
        Resolution::Minute,
        Resolution::Hour,
        Resolution::Day,
        Resolution::Total,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Minute => "minute",
            Resolution::Hour => "hour",
            Resolution::Day => "day",
            Resolution::Total => "total",
        }
    }

    pub fn parse(s: &str) -> Option<Resolution> {
        Resolution::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The length of one bucket (None for `Total`).
    pub fn step(self) -> Option<TimeDelta> {
        match self {
            Resolution::Minute => Some(TimeDelta::minutes(1)),
            Resolution::Hour => Some(TimeDelta::hours(1)),
            Resolution::Day => Some(TimeDelta::days(1)),
            Resolution::Total => None,
        }
    }

    /// The start of the bucket holding `at` (the epoch for `Total`).
    pub fn bucket(self, at: DateTime<Utc>) -> DateTime<Utc> {
        match self.step() {
            Some(step) => at.duration_trunc(step).unwrap_or(at),
            None => DateTime::UNIX_EPOCH,
        }
    }

    /// The coarsest stored resolution whose buckets divide `step`, so a
    /// series asked for at `step` reads as few rows as it can.
    pub fn for_step(step: TimeDelta) -> Resolution {
        if step >= TimeDelta::days(1) && step.num_seconds() % 86_400 == 0 {
            Resolution::Day
        } else if step >= TimeDelta::hours(1) && step.num_seconds() % 3_600 == 0 {
            Resolution::Hour
        } else {
            Resolution::Minute
        }
    }
}

/// Counts per bucket of [`BOUNDS_MS`] (not cumulative).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Histogram(pub [i64; BUCKETS]);

impl Histogram {
    pub fn observe(&mut self, ms: i64) {
        let i = BOUNDS_MS.partition_point(|&b| b < ms);
        self.0[i] += 1;
    }

    pub fn add(&mut self, other: &Histogram) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    pub fn count(&self) -> i64 {
        self.0.iter().sum()
    }

    /// The `q` quantile (0..=1) in milliseconds, interpolated linearly
    /// inside its bucket as Prometheus' `histogram_quantile` does; the
    /// overflow bucket answers its lower bound. None when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut seen = 0i64;
        for (i, &n) in self.0.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if (seen + n) as f64 >= rank {
                let lower = if i == 0 { 0 } else { BOUNDS_MS[i - 1] } as f64;
                let Some(&upper) = BOUNDS_MS.get(i) else {
                    return Some(lower);
                };
                let within = (rank - seen as f64) / n as f64;
                return Some(lower + (upper as f64 - lower) * within);
            }
            seen += n;
        }
        Some(*BOUNDS_MS.last().unwrap_or(&0) as f64)
    }
}

/// The sums of one series' bucket (one company, agent and priority level,
/// or any sum of such rows).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Rollup {
    /// Runs that ended: completed, failed, cancelled or needs_review.
    pub ended: i64,
    pub completed: i64,
    pub failed: i64,
    pub cancelled: i64,
    /// Runs whose result waited for a human.
    pub needs_review: i64,
    /// Submitted to end, summed over the runs that ended.
    pub response_ms: i64,
    /// Submitted to the last claim, over the ended runs that started.
    pub queue_wait_ms: i64,
    /// Ended runs that had started (the queue wait's count).
    pub started: i64,
    /// Last claim to end.
    pub run_ms: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_usd: f64,
    pub tool_calls: i64,
    pub reviews_approved: i64,
    pub reviews_rejected: i64,
    /// Tasks rated (a task's latest rating counts; a re-rating moves the
    /// sum in the bucket where it was made, so sums over a window that
    /// holds both are exact).
    pub ratings: i64,
    pub rating_sum: i64,
    pub response: Histogram,
    pub queue_wait: Histogram,
}

/// The integer sums of [`Rollup`] by column name, in the store's column
/// order (the histograms and the cost are apart).
pub const COUNTERS: [&str; 16] = [
    "ended",
    "completed",
    "failed",
    "cancelled",
    "needs_review",
    "response_ms",
    "queue_wait_ms",
    "started",
    "run_ms",
    "prompt_tokens",
    "completion_tokens",
    "tool_calls",
    "reviews_approved",
    "reviews_rejected",
    "ratings",
    "rating_sum",
];

impl Rollup {
    /// The integer sums in [`COUNTERS`]' order.
    pub fn counters(&self) -> [i64; 16] {
        [
            self.ended,
            self.completed,
            self.failed,
            self.cancelled,
            self.needs_review,
            self.response_ms,
            self.queue_wait_ms,
            self.started,
            self.run_ms,
            self.prompt_tokens,
            self.completion_tokens,
            self.tool_calls,
            self.reviews_approved,
            self.reviews_rejected,
            self.ratings,
            self.rating_sum,
        ]
    }

    /// The sums read back in [`COUNTERS`]' order.
    pub fn from_counters(
        c: [i64; 16],
        cost_usd: f64,
        response: Histogram,
        queue_wait: Histogram,
    ) -> Rollup {
        Rollup {
            ended: c[0],
            completed: c[1],
            failed: c[2],
            cancelled: c[3],
            needs_review: c[4],
            response_ms: c[5],
            queue_wait_ms: c[6],
            started: c[7],
            run_ms: c[8],
            prompt_tokens: c[9],
            completion_tokens: c[10],
            tool_calls: c[11],
            reviews_approved: c[12],
            reviews_rejected: c[13],
            ratings: c[14],
            rating_sum: c[15],
            cost_usd,
            response,
            queue_wait,
        }
    }

    pub fn add(&mut self, o: &Rollup) {
        let mut c = self.counters();
        for (a, b) in c.iter_mut().zip(o.counters()) {
            *a += b;
        }
        let mut response = self.response;
        response.add(&o.response);
        let mut queue_wait = self.queue_wait;
        queue_wait.add(&o.queue_wait);
        *self = Rollup::from_counters(c, self.cost_usd + o.cost_usd, response, queue_wait);
    }

    /// What one recorded event adds.
    pub fn of_event(e: &MetricEvent) -> Rollup {
        let mut r = Rollup::default();
        match &e.kind {
            EventKind::Task {
                outcome,
                created_at,
                started_at,
                prompt_tokens,
                completion_tokens,
                cost_usd,
            } => {
                r.prompt_tokens = *prompt_tokens;
                r.completion_tokens = *completion_tokens;
                r.cost_usd = *cost_usd;
                if let Some(outcome) = outcome {
                    r.ended = 1;
                    match outcome {
                        Outcome::Completed => r.completed = 1,
                        Outcome::Failed => r.failed = 1,
                        Outcome::Cancelled => r.cancelled = 1,
                        Outcome::NeedsReview => r.needs_review = 1,
                    }
                    let response = millis(e.at - *created_at);
                    r.response_ms = response;
                    r.response.observe(response);
                    if let Some(started) = started_at {
                        let wait = millis(*started - *created_at);
                        r.started = 1;
                        r.queue_wait_ms = wait;
                        r.queue_wait.observe(wait);
                        r.run_ms = millis(e.at - *started);
                    }
                }
            }
            EventKind::ToolCall => r.tool_calls = 1,
            EventKind::Review {
                decision,
                rating,
                previous_rating,
            } => {
                match decision {
                    Some(ReviewDecision::Approved) => r.reviews_approved = 1,
                    Some(ReviewDecision::Rejected) => r.reviews_rejected = 1,
                    None => {}
                }
                if let Some(rating) = rating {
                    r.ratings = 1;
                    r.rating_sum = i64::from(*rating);
                    if let Some(previous) = previous_rating {
                        r.ratings -= 1;
                        r.rating_sum -= i64::from(*previous);
                    }
                }
            }
        }
        r
    }

    pub fn tokens(&self) -> i64 {
        self.prompt_tokens + self.completion_tokens
    }

    /// Mean response time in milliseconds over the ended runs.
    pub fn mean_response_ms(&self) -> Option<f64> {
        (self.ended > 0).then(|| self.response_ms as f64 / self.ended as f64)
    }

    pub fn mean_queue_wait_ms(&self) -> Option<f64> {
        (self.started > 0).then(|| self.queue_wait_ms as f64 / self.started as f64)
    }

    /// Completed among the runs that ended other than by cancellation.
    pub fn success_rate(&self) -> Option<f64> {
        let n = self.ended - self.cancelled;
        (n > 0).then(|| self.completed as f64 / n as f64)
    }

    /// Completed with no human stepping in, among the runs that ended
    /// other than by cancellation (SEED's automation rate; a run whose
    /// result waited for review is not automated, whatever the decision).
    pub fn automation_rate(&self) -> Option<f64> {
        self.success_rate()
    }

    /// Mean rating on the 1-5 scale (SEED's satisfaction score).
    pub fn satisfaction(&self) -> Option<f64> {
        (self.ratings > 0).then(|| self.rating_sum as f64 / self.ratings as f64)
    }

    /// Tokens per completed run (SEED's token efficiency).
    pub fn tokens_per_completed(&self) -> Option<f64> {
        (self.completed > 0).then(|| self.tokens() as f64 / self.completed as f64)
    }

    /// Failed among the runs that ended other than by cancellation.
    pub fn error_rate(&self) -> Option<f64> {
        let n = self.ended - self.cancelled;
        (n > 0).then(|| self.failed as f64 / n as f64)
    }
}

fn millis(d: TimeDelta) -> i64 {
    d.num_milliseconds().max(0)
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Failed,
    Cancelled,
    NeedsReview,
}

impl Outcome {
    pub fn parse(s: &str) -> Option<Outcome> {
        Some(match s {
            "completed" => Outcome::Completed,
            "failed" => Outcome::Failed,
            "cancelled" => Outcome::Cancelled,
            "needs_review" => Outcome::NeedsReview,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewDecision {
    Approved,
    Rejected,
}

/// What the database recorded, in the transaction that made it: a task
/// whose run ended or whose usage was settled, a tool call, a review.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricEvent {
    pub company_id: String,
    pub agent: String,
    /// The task's level (`Priority::as_str`).
    pub priority: String,
    pub at: DateTime<Utc>,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// Usage settled (the deltas) and, with `outcome`, the run's end.
    Task {
        outcome: Option<Outcome>,
        created_at: DateTime<Utc>,
        started_at: Option<DateTime<Utc>>,
        prompt_tokens: i64,
        completion_tokens: i64,
        cost_usd: f64,
    },
    ToolCall,
    /// A decision, a rating, or both. A rating replaces the task's
    /// `previous_rating` (the latest counts), so it adds its difference.
    Review {
        decision: Option<ReviewDecision>,
        rating: Option<i32>,
        previous_rating: Option<i32>,
    },
}

/// A series' key: whose sums, at which resolution, from when.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub company_id: String,
    pub agent: String,
    pub priority: String,
    pub resolution: Resolution,
    pub bucket: DateTime<Utc>,
}

/// The rows `events` add to, at every resolution, summed per key (sorted,
/// so concurrent writers touch rows in one order).
pub fn roll_up(events: &[MetricEvent]) -> Vec<(SeriesKey, Rollup)> {
    let mut rows: std::collections::BTreeMap<SeriesKey, Rollup> = Default::default();
    for e in events {
        let add = Rollup::of_event(e);
        for resolution in Resolution::ALL {
            let key = SeriesKey {
                company_id: e.company_id.clone(),
                agent: e.agent.clone(),
                priority: e.priority.clone(),
                resolution,
                bucket: resolution.bucket(e.at),
            };
            rows.entry(key).or_default().add(&add);
        }
    }
    rows.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, h, m, s)
            .single()
            .expect("valid")
    }

    fn ended(outcome: Outcome, at: DateTime<Utc>, created: DateTime<Utc>) -> MetricEvent {
        MetricEvent {
            company_id: "a".into(),
            agent: "primary".into(),
            priority: "medium".into(),
            at,
            kind: EventKind::Task {
                outcome: Some(outcome),
                created_at: created,
                started_at: Some(created + TimeDelta::seconds(1)),
                prompt_tokens: 100,
                completion_tokens: 20,
                cost_usd: 0.5,
            },
        }
    }

    #[test]
    fn buckets_truncate_to_their_resolution() {
        let at = t(10, 17, 42);
        assert_eq!(Resolution::Minute.bucket(at), t(10, 17, 0));
        assert_eq!(Resolution::Hour.bucket(at), t(10, 0, 0));
        assert_eq!(Resolution::Day.bucket(at), t(0, 0, 0));
        assert_eq!(Resolution::Total.bucket(at), DateTime::UNIX_EPOCH);
        assert_eq!(
            Resolution::for_step(TimeDelta::minutes(5)),
            Resolution::Minute
        );
        assert_eq!(Resolution::for_step(TimeDelta::hours(2)), Resolution::Hour);
        assert_eq!(
            Resolution::for_step(TimeDelta::minutes(90)),
            Resolution::Minute
        );
        assert_eq!(Resolution::for_step(TimeDelta::days(7)), Resolution::Day);
    }

    #[test]
    fn an_end_adds_its_times_tokens_and_outcome() {
        let e = ended(Outcome::Completed, t(10, 0, 11), t(10, 0, 0));
        let r = Rollup::of_event(&e);
        assert_eq!((r.ended, r.completed, r.started), (1, 1, 1));
        assert_eq!(r.response_ms, 11_000);
        assert_eq!(r.queue_wait_ms, 1_000);
        assert_eq!(r.run_ms, 10_000);
        assert_eq!(r.tokens(), 120);
        assert_eq!(r.response.0[7], 1, "11 s falls in (10 s, 30 s]");
        assert_eq!(r.queue_wait.0[3], 1, "1 s falls in (500 ms, 1 s]");
    }

    #[test]
    fn usage_alone_is_no_end() {
        let mut e = ended(Outcome::Completed, t(10, 0, 11), t(10, 0, 0));
        if let EventKind::Task { outcome, .. } = &mut e.kind {
            *outcome = None;
        }
        let r = Rollup::of_event(&e);
        assert_eq!((r.ended, r.response.count(), r.tokens()), (0, 0, 120));
    }

    #[test]
    fn roll_up_sums_per_key_at_every_resolution() {
        let events = vec![
            ended(Outcome::Completed, t(10, 0, 11), t(10, 0, 0)),
            ended(Outcome::Failed, t(10, 0, 50), t(10, 0, 0)),
            ended(Outcome::NeedsReview, t(10, 1, 5), t(10, 0, 0)),
        ];
        let rows = roll_up(&events);
        let at = |res: Resolution| -> Vec<&Rollup> {
            rows.iter()
                .filter(|(k, _)| k.resolution == res)
                .map(|(_, r)| r)
                .collect()
        };
        assert_eq!(at(Resolution::Minute).len(), 2);
        assert_eq!(at(Resolution::Hour).len(), 1);
        let total = at(Resolution::Total)[0];
        assert_eq!(
            (
                total.ended,
                total.completed,
                total.failed,
                total.needs_review
            ),
            (3, 1, 1, 1)
        );
        assert_eq!(total.tokens(), 360);
        assert_eq!(total.success_rate(), Some(1.0 / 3.0));
    }

    #[test]
    fn quantiles_interpolate_inside_a_bucket() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.95), None);
        for _ in 0..10 {
            h.observe(2_000); // (1 s, 2.5 s]
        }
        let p50 = h.quantile(0.5).expect("some");
        assert!((1_000.0..=2_500.0).contains(&p50), "{p50}");
        h.observe(10_000_000);
        assert_eq!(h.quantile(1.0), Some(3_600_000.0));
    }

    #[test]
    fn the_counters_round_trip() {
        let mut r = Rollup::of_event(&ended(Outcome::Completed, t(10, 0, 11), t(10, 0, 0)));
        r.tool_calls = 3;
        r.rating_sum = 9;
        let back = Rollup::from_counters(r.counters(), r.cost_usd, r.response, r.queue_wait);
        assert_eq!(back, r);
    }
}
