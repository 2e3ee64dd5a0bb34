//! Counts that belong to no company's transaction (issue 22, migration
//! 0033): requests refused for want of a valid key or session,
//! cross-company reads refused, and calls to the model providers. A kira
//! process adds them up in memory as they happen ([`CountBatch`]) and
//! writes them here in batches, so the alerts evaluator and `/metrics` of
//! any process read every process's counts, each once: per second for
//! the rules' windows (pruned past the longest), all time for the
//! counters, and each provider's failures in a row.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kira_core::auth::AdminScope;
use kira_core::metrics::PROVIDER_BUCKETS;

use crate::Result;

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CountKind {
    /// A request refused for want of a valid key or session: subject the
    /// key id its token named ('' none, never the token), detail the
    /// client's address.
    AuthFailure,
    /// A cross-company read refused: no subject or detail.
    DeniedRead,
    /// A call to a provider (subject) and model (detail): answered (`n`)
    /// or failed after its retries and fallbacks (`errors`).
    ProviderCall,
}

impl CountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CountKind::AuthFailure => "auth_failure",
            CountKind::DeniedRead => "denied_read",
            CountKind::ProviderCall => "provider_call",
        }
    }

    pub fn parse(s: &str) -> Option<CountKind> {
        [
            CountKind::AuthFailure,
            CountKind::DeniedRead,
            CountKind::ProviderCall,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One second's count of a kind, subject and detail.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CountKey {
    pub kind: CountKind,
    /// The second the events happened in (whole seconds).
    pub at: DateTime<Utc>,
    pub subject: String,
    pub detail: String,
}

/// How many: events (a provider's answered calls) and a provider's
/// failed calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub n: u64,
    pub errors: u64,
}

impl Tally {
    pub fn add(&mut self, other: Tally) {
        self.n += other.n;
        self.errors += other.errors;
    }
}

/// The time answered calls to one provider and model took.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Latency {
    pub seconds: f64,
    /// Calls per bucket of `kira_core::metrics::PROVIDER_BOUNDS`, and above.
    pub buckets: [u64; PROVIDER_BUCKETS],
}

impl Latency {
    pub fn add(&mut self, other: &Latency) {
        self.seconds += other.seconds;
        for (b, o) in self.buckets.iter_mut().zip(other.buckets) {
            *b += o;
        }
    }
}

/// A provider's calls in a batch, in the order they ended: whether one
/// was answered, and the failures after the last answer (all of them
/// when none was).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Streak {
    pub answered: bool,
    pub errors_after: u64,
}

impl Streak {
    /// This streak followed by `later`'s calls.
    pub fn then(self, later: Streak) -> Streak {
        if later.answered {
            later
        } else {
            Streak {
                answered: self.answered,
                errors_after: self.errors_after + later.errors_after,
            }
        }
    }
}

/// What a process counted since it last wrote its counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CountBatch {
    pub counts: BTreeMap<CountKey, Tally>,
    /// Per (provider, model): its answered calls' time.
    pub latency: BTreeMap<(String, String), Latency>,
    /// Per provider: its streak, and when its last call ended.
    pub streaks: BTreeMap<String, (Streak, DateTime<Utc>)>,
}

impl CountBatch {
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty() && self.latency.is_empty() && self.streaks.is_empty()
    }

    /// Puts back `older` (a batch whose write failed) before what this
    /// one counted since.
    pub fn put_back(&mut self, older: CountBatch) {
        for (k, t) in older.counts {
            self.counts.entry(k).or_default().add(t);
        }
        for (k, l) in older.latency {
            self.latency.entry(k).or_default().add(&l);
        }
        for (p, (old, old_at)) in older.streaks {
            let merged = match self.streaks.get(&p) {
                Some((new, at)) => (old.then(*new), *at),
                None => (old, old_at),
            };
            self.streaks.insert(p, merged);
        }
    }
}

/// One provider and model's calls of all time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProviderTotal {
    pub provider: String,
    pub model: String,
    pub ok: u64,
    pub errors: u64,
    pub latency: Latency,
}

/// The all-time counts, every process's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CountTotals {
    pub auth_failures: u64,
    pub denied_reads: u64,
    pub providers: Vec<ProviderTotal>,
    /// Per provider, its latest calls that failed one after another.
    pub errors_in_a_row: Vec<(String, u64)>,
}

#[async_trait]
pub trait CountStore: Send + Sync {
    /// Adds `batch` to the per-second counts, the totals and the
    /// providers' streaks, in one transaction.
    async fn add_counts(&self, batch: &CountBatch) -> Result<()>;

    /// The per-second counts after `since`, oldest first (the admin's view).
    async fn counts_since(
        &self,
        admin: &AdminScope,
        since: DateTime<Utc>,
    ) -> Result<Vec<(CountKey, Tally)>>;

    /// The all-time counts (the admin's view).
    async fn count_totals(&self, admin: &AdminScope) -> Result<CountTotals>;

    /// Deletes the per-second counts before `before`; the totals stay.
    async fn prune_counts(&self, before: DateTime<Utc>) -> Result<u64>;
}
