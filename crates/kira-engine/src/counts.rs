//! The counts no company's transaction records (authentication failures,
//! denied cross-company reads, provider calls), as this process makes
//! them: added up in memory where they happen, at no cost to the request
//! or call, and written to the database in one transaction by
//! [`Counts::flush`] (the metrics job every roll-up interval, the alerts
//! evaluation and `/metrics` before they read, and kira stopping). The
//! database holds every process's, each counted once
//! (`kira_store::counts`).

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::SubsecRound;
use kira_core::clock::Clock;
use kira_core::ids::KeyId;
use kira_core::metrics::PROVIDER_BOUNDS;
use kira_store::Store;
use kira_store::counts::{CountBatch, CountKey, CountKind, Streak, Tally};

/// The most per-second rows one process holds unwritten: a flood of
/// refusals from ever new addresses while the database is away cannot
/// grow it without bound (what comes past it is logged, not kept).
const MAX_PENDING: usize = 100_000;

/// This process's counts not yet written.
pub struct Counts {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    pending: Mutex<Pending>,
    /// One write at a time, so a provider's calls reach its streak in the
    /// order they ended.
    writing: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Pending {
    batch: CountBatch,
    dropped: u64,
}

impl Counts {
    pub(crate) fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            pending: Mutex::new(Pending::default()),
            writing: tokio::sync::Mutex::new(()),
        }
    }

    fn count(&self, kind: CountKind, subject: String, detail: String, tally: Tally) {
        let at = self.clock.now().trunc_subsecs(0);
        let key = CountKey {
            kind,
            at,
            subject,
            detail,
        };
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.batch.counts.len() >= MAX_PENDING && !p.batch.counts.contains_key(&key) {
            p.dropped += tally.n + tally.errors;
            return;
        }
        p.batch.counts.entry(key).or_default().add(tally);
    }

    /// A request refused for want of a valid key or session: the key id
    /// its token named (never the token), if any, and the client's address.
    pub fn auth_failure(&self, key: Option<&KeyId>, from: IpAddr) {
        self.count(
            CountKind::AuthFailure,
            key.map(ToString::to_string).unwrap_or_default(),
            from.to_string(),
            Tally { n: 1, errors: 0 },
        );
    }

    /// A cross-company read refused.
    pub fn denied_read(&self) {
        self.count(
            CountKind::DeniedRead,
            String::new(),
            String::new(),
            Tally { n: 1, errors: 0 },
        );
    }

    /// A call to `provider`'s `model`: answered after `latency`, or failed
    /// (after its retries and fallbacks).
    pub fn provider_call(&self, provider: &str, model: &str, answered: Option<Duration>) {
        let now = self.clock.now();
        self.count(
            CountKind::ProviderCall,
            provider.to_owned(),
            model.to_owned(),
            Tally {
                n: u64::from(answered.is_some()),
                errors: u64::from(answered.is_none()),
            },
        );
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(latency) = answered {
            let secs = latency.as_secs_f64();
            let l = p
                .batch
                .latency
                .entry((provider.to_owned(), model.to_owned()))
                .or_default();
            l.seconds += secs;
            l.buckets[PROVIDER_BOUNDS.partition_point(|b| *b < secs)] += 1;
        }
        let this = Streak {
            answered: answered.is_some(),
            errors_after: u64::from(answered.is_none()),
        };
        let s = p
            .batch
            .streaks
            .entry(provider.to_owned())
            .or_insert((Streak::default(), now));
        *s = (s.0.then(this), now);
    }

    /// Writes what this process counted since the last write. On failure
    /// the counts are kept for the next one.
    pub async fn flush(&self) -> Result<(), kira_store::StoreError> {
        let _turn = self.writing.lock().await;
        let (batch, dropped) = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let p = std::mem::take(&mut *p);
            (p.batch, p.dropped)
        };
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "counts past {MAX_PENDING} unwritten rows were not kept (the database was not reached)"
            );
        }
        if batch.is_empty() {
            return Ok(());
        }
        match self.store.add_counts(&batch).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                p.batch.put_back(batch);
                Err(e)
            }
        }
    }
}
