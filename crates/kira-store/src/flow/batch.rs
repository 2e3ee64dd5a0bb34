//! Batch claims and finishes, written once: each backend's set-based fast
//! path takes what it can in one transaction, and what it cannot (a claim
//! it could not decide, a completion that is not plain) goes the single
//! way, at its turn.

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use kira_core::budget::BudgetConfig;
use kira_core::task::TaskId;

use crate::work::{
    Admission, BudgetStore, Candidate, ClaimOutcome, Completed, Completion, TaskStore, finish_one,
};
use crate::{Result, StoreError};

/// A backend's set-based paths.
#[async_trait]
pub(crate) trait FastPaths: Send + Sync {
    /// Claims the longest run of `cands` (in rank order) that may be taken
    /// set-based: still claimable, no grant held, and fitting the company's
    /// base allocation together with the claims before it. Returns how many
    /// candidates it settled (claimed, found gone, or passed over for want
    /// of a slot), each outcome pushed to `out`; the next one, if any,
    /// needs the single claim.
    #[allow(clippy::too_many_arguments)]
    async fn claim_fast(
        &self,
        cands: &[Candidate],
        admission: &mut dyn Admission,
        worker: &str,
        lease_until: DateTime<Utc>,
        budget: &BudgetConfig,
        now: DateTime<Utc>,
        out: &mut Vec<(TaskId, ClaimOutcome)>,
    ) -> Result<usize>;

    /// Records the plain completions in one transaction, filling their
    /// places in `out`; the indices of the others.
    async fn finish_fast(
        &self,
        worker: &str,
        cs: &[Completion],
        now: DateTime<Utc>,
        out: &mut [Option<Completed>],
    ) -> Result<Vec<usize>>;
}

/// [`TaskStore::claim_batch`] over a backend's fast path.
pub(crate) async fn claim_batch<S: FastPaths + TaskStore + ?Sized>(
    s: &S,
    candidates: &[Candidate],
    admission: &mut dyn Admission,
    worker: &str,
    lease_until: DateTime<Utc>,
    budget: &BudgetConfig,
    now: DateTime<Utc>,
) -> Result<Vec<(TaskId, ClaimOutcome)>> {
    let now = now.trunc_subsecs(6);
    let lease_until = lease_until.trunc_subsecs(6);
    let mut out = Vec::with_capacity(candidates.len());
    let mut rest = candidates;
    while !rest.is_empty() {
        let done = s
            .claim_fast(rest, admission, worker, lease_until, budget, now, &mut out)
            .await?;
        rest = &rest[done..];
        // The one the set could not take, by the single claim, at its turn.
        let Some((c, after)) = rest.split_first() else {
            break;
        };
        rest = after;
        if !admission.free(&c.entry) {
            continue;
        }
        let o = s
            .claim(&c.scope, &c.entry.task_id, worker, lease_until, budget, now)
            .await?;
        if matches!(o, ClaimOutcome::Claimed { .. }) {
            admission.take(&c.entry);
        }
        out.push((c.entry.task_id.clone(), o));
    }
    Ok(out)
}

/// [`TaskStore::finish_batch`] over a backend's fast path.
pub(crate) async fn finish_batch<S: FastPaths + TaskStore + BudgetStore + ?Sized>(
    s: &S,
    worker: &str,
    completions: Vec<Completion>,
    now: DateTime<Utc>,
) -> Result<Vec<Completed>> {
    let now = now.trunc_subsecs(6);
    let mut out: Vec<Option<Completed>> = completions.iter().map(|_| None).collect();
    let slow = s.finish_fast(worker, &completions, now, &mut out).await?;
    let mut completions: Vec<Option<Completion>> = completions.into_iter().map(Some).collect();
    for i in slow {
        if let Some(c) = completions[i].take() {
            out[i] = Some(finish_one(s, worker, c, now).await);
        }
    }
    out.into_iter()
        .map(|o| {
            o.ok_or_else(|| {
                StoreError::Corrupt("batch finish: a completion without an outcome".into())
            })
        })
        .collect()
}
