//! Batch claims and finishes, written once: each backend's set-based fast
//! path takes what it can in one transaction, and what it cannot (a claim
//! it could not decide, a completion that is not plain) goes the single
//! way, at its turn.

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use kira_core::budget::BudgetConfig;
use kira_core::task::{TaskId, TaskStatus, check_transition};

use crate::work::{
    Admission, BudgetStore, Candidate, ClaimOutcome, Completed, Completion, Reservation, TaskStore,
    finish_one,
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

/// The rows a set of plain completions writes, as JSON rows each backend's
/// set-based statements read.
pub(crate) struct FinishPlan {
    /// (index in the batch, the task's row changes).
    pub(crate) tasks: Vec<(usize, serde_json::Value)>,
    /// Reservations closed: settled or released.
    pub(crate) closed: Vec<serde_json::Value>,
    /// Balance movements of closed reservations, in ledger order (`n`).
    pub(crate) ledger: Vec<serde_json::Value>,
    /// Requeued (retry) and ended tasks' queue rows.
    pub(crate) requeued: Vec<serde_json::Value>,
    pub(crate) ended: Vec<serde_json::Value>,
    /// A result goes as its JSON text (SQLite's JSON is text), else as
    /// the JSON value.
    result_as_text: bool,
}

impl FinishPlan {
    pub(crate) fn new(result_as_text: bool) -> Self {
        Self {
            tasks: Vec::new(),
            closed: Vec::new(),
            ledger: Vec::new(),
            requeued: Vec::new(),
            ended: Vec::new(),
            result_as_text,
        }
    }

    /// Adds `c` if it is plain: a legal end, and a settlement (if any) of a
    /// reservation the task holds, within its amount. False otherwise.
    pub(crate) fn add(&mut self, i: usize, c: &Completion, held: &[Reservation]) -> bool {
        let f = &c.finish;
        // Back to waiting for budget gives the attempt back: the slow way.
        if f.status == TaskStatus::WaitingBudget
            || check_transition(TaskStatus::Running, f.status).is_err()
        {
            return false;
        }
        let company = c.scope.company();
        let (mut p, mut k, mut cost) = (0, 0, 0.0);
        let mut settled = None;
        if let Some(s) = &c.settle {
            let Some(r) = held.iter().find(|r| r.reservation_id == s.reservation_id) else {
                return false;
            };
            (p, k, cost) = (
                s.prompt_tokens.max(0),
                s.completion_tokens.max(0),
                s.cost_usd.max(0.0),
            );
            if &r.company_id != company || p + k > r.amount || !cost.is_finite() {
                return false;
            }
            settled = Some((r, p + k));
        }
        let result = match &f.result {
            Some(v) if self.result_as_text => serde_json::Value::String(v.to_string()),
            Some(v) => v.clone(),
            None => serde_json::Value::Null,
        };
        let ledger = &mut self.ledger;
        let mut line = |r: &Reservation, kind: &str, amount: i64, detail: &str| {
            let n = ledger.len();
            ledger.push(serde_json::json!({
                "n": n, "period": r.period_id, "company": r.company_id.as_str(), "id": r.task_id.as_str(),
                "rid": r.reservation_id, "pool": r.pool.as_str(), "kind": kind, "amount": amount,
                "detail": detail,
            }));
        };
        if let Some((r, used)) = settled {
            line(r, "settle", used, "");
            if r.amount > used {
                line(r, "release", r.amount - used, "unused");
            }
        }
        for r in held {
            if settled.is_some_and(|(s, _)| s.reservation_id == r.reservation_id) {
                continue;
            }
            line(r, "release", r.amount, "run ended");
        }
        for r in held {
            let (state, spent, cost) = match settled {
                Some((s, used)) if s.reservation_id == r.reservation_id => ("settled", used, cost),
                _ => ("released", 0, 0.0),
            };
            self.closed.push(serde_json::json!({
                "rid": r.reservation_id, "state": state, "spent": spent, "cost": cost, "period": r.period_id,
                "company": r.company_id.as_str(), "pool": r.pool.as_str(), "amount": r.amount,
            }));
        }
        // Both backends read this text as a timestamp.
        let not_before = f.retry_at.map(|t| {
            t.trunc_subsecs(6)
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        });
        let queue = serde_json::json!({
            "id": c.task_id.as_str(), "company": company.as_str(), "not_before": not_before,
        });
        if f.status == TaskStatus::Queued {
            self.requeued.push(queue);
        } else {
            self.ended.push(queue);
        }
        let n = self.tasks.len();
        self.tasks.push((
            i,
            serde_json::json!({
                "n": n, "id": c.task_id.as_str(), "company": company.as_str(), "result": result,
                "confidence": f.confidence, "review": f.requires_human_review, "error": f.error,
                "status": f.status.as_str(), "reason": f.reason,
                "finished": f.status.is_final() || f.status == TaskStatus::NeedsReview,
                "p": p, "c": k, "cost": cost,
            }),
        ));
        true
    }
}

/// A candidate a batch claim takes from its company's base allocation.
pub(crate) struct FastClaim<'a> {
    pub(crate) c: &'a Candidate,
    pub(crate) from: TaskStatus,
    pub(crate) amount: i64,
    pub(crate) reservation_id: String,
}

/// The outcomes of a fast claim in rank order: each one found gone where
/// it was met (`gone`: its place among `fast`), each claimed one with its
/// reservation on the base pool of `period`.
pub(crate) fn push_outcomes(
    out: &mut Vec<(TaskId, ClaimOutcome)>,
    fast: &[FastClaim<'_>],
    gone: Vec<(usize, TaskId)>,
    mut claimed: std::collections::BTreeMap<String, kira_core::task::Task>,
    period: &str,
) -> Result<()> {
    let mut gone = gone.into_iter().peekable();
    for (i, f) in fast.iter().enumerate() {
        while let Some((_, id)) = gone.next_if(|(at, _)| *at == i) {
            out.push((id, ClaimOutcome::Gone));
        }
        let task = claimed.remove(f.c.entry.task_id.as_str()).ok_or_else(|| {
            StoreError::Corrupt("batch claim: a claimed task was not returned".into())
        })?;
        out.push((
            f.c.entry.task_id.clone(),
            ClaimOutcome::Claimed {
                task: Box::new(task),
                reservation: Reservation {
                    reservation_id: f.reservation_id.clone(),
                    task_id: f.c.entry.task_id.clone(),
                    company_id: f.c.scope.company().clone(),
                    period_id: period.to_owned(),
                    pool: kira_core::budget::Pool::Base,
                    amount: f.amount,
                },
            },
        ));
    }
    out.extend(gone.map(|(_, id)| (id, ClaimOutcome::Gone)));
    Ok(())
}
