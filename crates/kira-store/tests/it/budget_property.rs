//! The budget invariants as a property, on both backends: for random
//! interleavings of submit, claim, reserve, settle, release, lease expiry
//! and emergency decisions across companies, no pool and no company
//! allocation is ever exceeded except by an overdraft no larger than what
//! settlements reported above their reservations, every reported token is
//! spent (nothing capped away), a refusal happens only when the tokens did
//! not fit (or the company was overdrawn), and the ledger always reproduces
//! the balances.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use chrono::{DateTime, Months, TimeDelta, Utc};
use kira_core::auth::Principal;
use kira_core::budget::{BudgetConfig, Pool};
use kira_core::task::{Priority, TaskId};
use kira_store::Store;
use kira_store::work::{
    BudgetState, Candidate, ClaimOutcome, Completed, Completion, Finish, ReserveOutcome, Settlement,
};
use proptest::prelude::*;

use crate::support::{Open, create, property, record, scope, t0};
use crate::work::{Slots, new_task};

#[derive(Debug, Clone)]
enum Op {
    Submit(usize, usize, i64),
    Claim(usize),
    Reserve(usize, i64),
    Settle(usize, i64),
    Release(usize),
    /// Sets reservation i (modulo their number) to an amount.
    Resize(usize, i64),
    Finish(usize),
    Expire,
    Decide(bool),
    /// Claims tasks [i, i+n) in one batch, with `slots` slots.
    ClaimBatch(usize, usize, usize),
    /// Ends tasks [i, i+n) in one batch, settling reservation r (if any) with the first.
    FinishBatch(usize, usize, Option<(usize, i64)>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..3usize, 0..5usize, 1..2500i64).prop_map(|(c, p, t)| Op::Submit(c, p, t)),
        3 => (0..64usize).prop_map(Op::Claim),
        2 => (0..64usize, 1..2000i64).prop_map(|(t, a)| Op::Reserve(t, a)),
        // Usage up to three times a large reservation, on a reservation
        // picked among those made (index modulo their number), so some
        // settlements find no room and overdraw.
        3 => (0..64usize, 0..7500i64).prop_map(|(r, u)| Op::Settle(r, u)),
        1 => (0..64usize).prop_map(Op::Release),
        2 => (0..64usize, 1..3000i64).prop_map(|(r, a)| Op::Resize(r, a)),
        1 => (0..64usize).prop_map(Op::Finish),
        1 => Just(Op::Expire),
        1 => any::<bool>().prop_map(Op::Decide),
        2 => (0..64usize, 1..8usize, 0..8usize).prop_map(|(i, n, k)| Op::ClaimBatch(i, n, k)),
        2 => (0..64usize, 1..8usize, proptest::option::of((0..64usize, 0..3000i64)))
            .prop_map(|(i, n, r)| Op::FinishBatch(i, n, r)),
    ]
}

fn cfg() -> BudgetConfig {
    BudgetConfig {
        total_tokens: 20_000,
        ..BudgetConfig::default()
    }
}

struct Case {
    store: Arc<dyn Store>,
    companies: Vec<String>,
    now: DateTime<Utc>,
    tasks: tokio::sync::Mutex<Vec<(String, TaskId)>>,
    /// (company, reservation id, amount reserved, task).
    reservations: tokio::sync::Mutex<Vec<(String, String, i64, TaskId)>>,
    /// What the provider reported, summed over every settlement recorded.
    reported: AtomicI64,
    /// The most an overdraft may be: usage above the reservation, or all
    /// of it when the reservation may have been released first.
    allowance: AtomicI64,
    /// Tasks whose reservations a release, a finish or the reaper may have
    /// given back before their settlement.
    maybe_released: tokio::sync::Mutex<std::collections::HashSet<String>>,
    expired: std::sync::atomic::AtomicBool,
}

fn admin() -> kira_core::auth::AdminScope {
    Principal::system().admin().expect("admin")
}

fn check_balances(s: &BudgetState, reported: i64, allowance: i64) -> Result<(), TestCaseError> {
    let mut overdraft = 0;
    for p in &s.pools {
        prop_assert!(p.reserved >= 0 && p.spent >= 0, "{p:?}");
        prop_assert_eq!(p.overdraft, (p.reserved + p.spent - p.capacity).max(0));
        // The base pool's overdraft is its companies'; a shared pool is
        // never overdrawn: usage above its room is the company's debt.
        if p.pool != Pool::Base {
            prop_assert_eq!(p.overdraft, 0, "a shared pool is overdrawn: {:?}", s);
        }
    }
    for c in &s.companies {
        prop_assert_eq!(c.overdraft, (c.reserved + c.spent - c.allocation).max(0));
        overdraft += c.overdraft;
    }
    prop_assert!(
        overdraft <= allowance,
        "overdrawn by {overdraft}, more than settlements reported above their reservations ({allowance}): {s:?}"
    );
    prop_assert_eq!(
        s.companies.iter().map(|c| c.spent_all_pools).sum::<i64>(),
        reported,
        "the ledger's usage is not what the provider reported"
    );
    let base = s
        .pools
        .iter()
        .find(|p| p.pool == Pool::Base)
        .map_or(0, |p| p.capacity);
    prop_assert!(
        s.companies.iter().map(|c| c.allocation).sum::<i64>() <= base,
        "allocations oversubscribe the base pool"
    );
    Ok(())
}

fn overdrawn(s: &BudgetState, company: &str) -> bool {
    s.companies
        .iter()
        .any(|c| c.company_id.as_str() == company && c.overdraft > 0)
}

/// Free tokens of a pool, and of the company's allocation.
fn free(s: &BudgetState, pool: Pool, company: &str) -> (i64, i64) {
    let p = s
        .pools
        .iter()
        .find(|p| p.pool == pool)
        .map_or(0, |p| p.capacity - p.reserved - p.spent);
    let c = s
        .companies
        .iter()
        .find(|c| c.company_id.as_str() == company)
        .map_or(0, |c| c.allocation - c.reserved - c.spent);
    (p, c)
}

impl Case {
    async fn maybe_released(&self, reservation: &str, task: &TaskId) -> bool {
        let released = self.maybe_released.lock().await;
        self.expired.load(Ordering::SeqCst)
            || released.contains(reservation)
            || released.contains(task.as_str())
    }

    /// Counts a recorded settlement of `used` on a reservation of `amount`.
    fn settled(&self, used: i64, amount: i64, maybe_released: bool) {
        self.reported.fetch_add(used, Ordering::SeqCst);
        let above = if maybe_released {
            used
        } else {
            (used - amount).max(0)
        };
        self.allowance.fetch_add(above, Ordering::SeqCst);
    }

    async fn run(&self, op: Op) -> Result<(), TestCaseError> {
        let s = self.store.as_ref();
        let cfg = cfg();
        let now = self.now;
        let fail = |e: kira_store::StoreError| TestCaseError::fail(e.to_string());
        match op {
            Op::Submit(c, p, tokens) => {
                let company = &self.companies[c];
                let t = new_task("legal", Priority::ALL[p], tokens);
                let id = s
                    .submit_task(
                        &scope(company),
                        &t,
                        now,
                        record(Some(company), "task.submit"),
                    )
                    .await
                    .map_err(fail)?
                    .task
                    .task_id;
                self.tasks.lock().await.push((company.clone(), id));
            }
            Op::Claim(i) => {
                let Some((company, id)) = self.tasks.lock().await.get(i).cloned() else {
                    return Ok(());
                };
                let before = s.budget_state(&admin(), &cfg, now).await.map_err(fail)?;
                let out = s
                    .claim(
                        &scope(&company),
                        &id,
                        "w",
                        now + TimeDelta::minutes(1),
                        &cfg,
                        now,
                    )
                    .await
                    .map_err(fail)?;
                match out {
                    ClaimOutcome::Claimed { reservation, .. } => {
                        self.reservations.lock().await.push((
                            company,
                            reservation.reservation_id,
                            reservation.amount,
                            id,
                        ));
                    }
                    ClaimOutcome::WaitingBudget { .. } | ClaimOutcome::AwaitingApproval { .. } => {
                        let task = s.get_task(&scope(&company), &id).await.map_err(fail)?;
                        let need = task.estimated_tokens;
                        let (base, alloc) = free(&before, Pool::Base, &company);
                        let (burst, _) = free(&before, Pool::Burst, &company);
                        let burst_ok = cfg.burst_levels.contains(&task.priority);
                        // Other claims may run concurrently and only take tokens away,
                        // so "it fitted before" must mean it was taken since.
                        let after = s.budget_state(&admin(), &cfg, now).await.map_err(fail)?;
                        let (base2, alloc2) = free(&after, Pool::Base, &company);
                        let (burst2, _) = free(&after, Pool::Burst, &company);
                        let fitted_throughout = !overdrawn(&before, &company)
                            && !overdrawn(&after, &company)
                            && ((need <= base.min(base2) && need <= alloc.min(alloc2))
                                || (burst_ok && need <= burst.min(burst2)));
                        prop_assert!(
                            !fitted_throughout,
                            "refused {need} tokens that fitted: {before:?}"
                        );
                    }
                    ClaimOutcome::Gone => {}
                }
            }
            Op::Reserve(i, amount) => {
                let Some((company, id)) = self.tasks.lock().await.get(i).cloned() else {
                    return Ok(());
                };
                match s.reserve(&scope(&company), &id, amount, &cfg, now).await {
                    Ok(ReserveOutcome::Reserved(r)) => self.reservations.lock().await.push((
                        company,
                        r.reservation_id,
                        r.amount,
                        id,
                    )),
                    Ok(ReserveOutcome::Denied { .. })
                    | Err(kira_store::StoreError::Conflict(_)) => {}
                    Err(e) => return Err(fail(e)),
                }
            }
            Op::Settle(i, used) => {
                let picked = {
                    let all = self.reservations.lock().await;
                    all.get(i % all.len().max(1)).cloned()
                };
                let Some((company, r, amount, task)) = picked else {
                    return Ok(());
                };
                // Read before the settlement: a release after it cannot
                // have made this one an overdraft.
                let released = self.maybe_released(&r, &task).await;
                match s
                    .settle(&scope(&company), &r, used * 2 / 3, used / 3, 0.0, now)
                    .await
                {
                    Ok(()) => self.settled(used * 2 / 3 + used / 3, amount, released),
                    Err(kira_store::StoreError::Conflict(_)) => {}
                    Err(e) => return Err(fail(e)),
                }
            }
            Op::Resize(i, amount) => {
                let picked = {
                    let all = self.reservations.lock().await;
                    all.get(i % all.len().max(1)).cloned()
                };
                let Some((company, r, _, _)) = picked else {
                    return Ok(());
                };
                match s
                    .resize_reservation(&scope(&company), &r, amount, now)
                    .await
                {
                    Ok(ReserveOutcome::Reserved(got)) => {
                        prop_assert_eq!(got.amount, amount);
                        // A settlement's allowance is measured against the
                        // smaller of the amounts it held.
                        let mut all = self.reservations.lock().await;
                        if let Some(e) = all.iter_mut().find(|e| e.1 == r) {
                            e.2 = e.2.min(amount);
                        }
                    }
                    Ok(ReserveOutcome::Denied { .. })
                    | Err(kira_store::StoreError::Conflict(_)) => {}
                    Err(e) => return Err(fail(e)),
                }
            }
            Op::Release(i) => {
                let Some((company, r, _, _)) = self.reservations.lock().await.get(i).cloned()
                else {
                    return Ok(());
                };
                self.maybe_released.lock().await.insert(r.clone());
                s.release(&scope(&company), &r, now).await.map_err(fail)?;
            }
            Op::Finish(i) => {
                let Some((company, id)) = self.tasks.lock().await.get(i).cloned() else {
                    return Ok(());
                };
                self.maybe_released
                    .lock()
                    .await
                    .insert(id.as_str().to_owned());
                let f = Finish {
                    status: kira_core::task::TaskStatus::Completed,
                    reason: "done".into(),
                    result: None,
                    confidence: None,
                    requires_human_review: false,
                    error: None,
                    retry_at: None,
                };
                match s.finish(&scope(&company), &id, "w", f, now).await {
                    Ok(_) | Err(kira_store::StoreError::Conflict(_)) => {}
                    Err(e) => return Err(fail(e)),
                }
            }
            Op::ClaimBatch(i, n, slots) => {
                let tasks: Vec<_> = self
                    .tasks
                    .lock()
                    .await
                    .iter()
                    .skip(i)
                    .take(n)
                    .cloned()
                    .collect();
                let snap = s.queue_snapshot(now, 1000, None).await.map_err(fail)?;
                // Those still queued, in the order submitted; the others as
                // the scheduler last saw them would be: gone.
                let cands: Vec<Candidate> = tasks
                    .iter()
                    .filter_map(|(company, id)| {
                        let entry = snap.runnable.iter().find(|e| &e.task_id == id)?.clone();
                        Some(Candidate {
                            scope: scope(company),
                            entry,
                        })
                    })
                    .collect();
                let before = s.budget_state(&admin(), &cfg, now).await.map_err(fail)?;
                let out = s
                    .claim_batch(
                        &cands,
                        &mut Slots(slots),
                        "w",
                        now + TimeDelta::minutes(1),
                        &cfg,
                        now,
                    )
                    .await
                    .map_err(fail)?;
                prop_assert!(
                    out.iter()
                        .filter(|(_, o)| matches!(o, ClaimOutcome::Claimed { .. }))
                        .count()
                        <= slots,
                    "a batch took more than its slots"
                );
                let after = s.budget_state(&admin(), &cfg, now).await.map_err(fail)?;
                for (id, o) in out {
                    let Some((company, _)) = tasks.iter().find(|(_, t)| t == &id).cloned() else {
                        return Err(TestCaseError::fail("an outcome for a task not sent"));
                    };
                    match o {
                        ClaimOutcome::Claimed { reservation, .. } => self
                            .reservations
                            .lock()
                            .await
                            .push((company, reservation.reservation_id, reservation.amount, id)),
                        ClaimOutcome::WaitingBudget { .. }
                        | ClaimOutcome::AwaitingApproval { .. } => {
                            let task = s.get_task(&scope(&company), &id).await.map_err(fail)?;
                            let need = task.estimated_tokens;
                            let (base, alloc) = free(&before, Pool::Base, &company);
                            let (burst, _) = free(&before, Pool::Burst, &company);
                            let (base2, alloc2) = free(&after, Pool::Base, &company);
                            let (burst2, _) = free(&after, Pool::Burst, &company);
                            let burst_ok = cfg.burst_levels.contains(&task.priority);
                            let fitted_throughout = !overdrawn(&before, &company)
                                && !overdrawn(&after, &company)
                                && ((need <= base.min(base2) && need <= alloc.min(alloc2))
                                    || (burst_ok && need <= burst.min(burst2)));
                            prop_assert!(
                                !fitted_throughout,
                                "a batch refused {need} tokens that fitted: {before:?}"
                            );
                        }
                        ClaimOutcome::Gone => {}
                    }
                }
            }
            Op::FinishBatch(i, n, settle) => {
                let tasks: Vec<_> = self
                    .tasks
                    .lock()
                    .await
                    .iter()
                    .skip(i)
                    .take(n)
                    .cloned()
                    .collect();
                let reservations = self.reservations.lock().await.clone();
                let mut settled = None;
                let mut completions = Vec::new();
                for (k, (company, id)) in tasks.iter().enumerate() {
                    let settle = match settle.filter(|_| k == 0).and_then(|(r, used)| {
                        reservations
                            .get(r)
                            .filter(|(c, ..)| c == company)
                            .map(|r| (r.clone(), used))
                    }) {
                        Some(((_, r, amount, task), used)) => {
                            let released = self.maybe_released(&r, &task).await;
                            settled = Some((used * 2 / 3 + used / 3, amount, released));
                            Some(Settlement {
                                reservation_id: r,
                                prompt_tokens: used * 2 / 3,
                                completion_tokens: used / 3,
                                cost_usd: 0.0,
                            })
                        }
                        None => None,
                    };
                    completions.push(Completion {
                        scope: scope(company),
                        task_id: id.clone(),
                        finish: Finish {
                            status: kira_core::task::TaskStatus::Completed,
                            reason: "done".into(),
                            result: None,
                            confidence: None,
                            requires_human_review: false,
                            error: None,
                            retry_at: None,
                        },
                        settle,
                        records: Default::default(),
                    });
                }
                {
                    let mut released = self.maybe_released.lock().await;
                    for (_, id) in &tasks {
                        released.insert(id.as_str().to_owned());
                    }
                }
                let out = s.finish_batch("w", completions, now).await.map_err(fail)?;
                if let (Some(first), Some((used, amount, released))) = (out.first(), settled)
                    && !matches!(first, Completed::SettleFailed(_))
                {
                    self.settled(used, amount, released);
                }
            }
            Op::Expire => {
                self.expired.store(true, Ordering::SeqCst);
                s.reap_expired(now + TimeDelta::minutes(2), TimeDelta::zero())
                    .await
                    .map_err(fail)?;
            }
            Op::Decide(approve) => {
                let pending = s.emergency_requests(&admin(), true).await.map_err(fail)?;
                if let Some(r) = pending.first() {
                    match s
                        .decide_emergency(
                            &admin(),
                            &r.request_id,
                            approve,
                            "",
                            now,
                            record(Some(r.company_id.as_str()), "budget.decide"),
                        )
                        .await
                    {
                        Ok(_) | Err(kira_store::StoreError::Conflict(_)) => {}
                        Err(e) => return Err(fail(e)),
                    }
                }
            }
        }
        Ok(())
    }
}

static CASE: AtomicUsize = AtomicUsize::new(0);

async fn case(store: Arc<dyn Store>, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let n = CASE.fetch_add(1, Ordering::SeqCst);
    // Each case in a month of its own, with companies of its own.
    let now = t0()
        .checked_add_months(Months::new(n as u32 + 1))
        .expect("date");
    let companies: Vec<String> = (0..3).map(|i| format!("p{n}-{i}")).collect();
    for c in &companies {
        create(store.as_ref(), c).await;
    }
    store
        .refresh_allocations(&cfg(), now)
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let case = Arc::new(Case {
        store: store.clone(),
        companies,
        now,
        tasks: Default::default(),
        reservations: Default::default(),
        reported: AtomicI64::new(0),
        allowance: AtomicI64::new(0),
        maybe_released: Default::default(),
        expired: Default::default(),
    });
    // Ops run four at a time, concurrently.
    for chunk in ops.chunks(4) {
        let handles: Vec<_> = chunk
            .iter()
            .cloned()
            .map(|op| {
                let case = Arc::clone(&case);
                tokio::spawn(async move { case.run(op).await })
            })
            .collect();
        for h in handles {
            h.await.map_err(|e| TestCaseError::fail(e.to_string()))??;
        }
        let state = store
            .budget_state(&admin(), &cfg(), now)
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_balances(
            &state,
            case.reported.load(Ordering::SeqCst),
            case.allowance.load(Ordering::SeqCst),
        )?;
    }
    let report = store
        .verify_ledger(&admin())
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(report.ok, "{report:?}");
    Ok(())
}

fn run(open: Open, cases: u32) {
    let strategy = proptest::collection::vec(op(), 10..60);
    property("budget", open, cases, strategy, case);
}

#[test]
fn sqlite_budgets_are_never_overspent() {
    run(|| Box::pin(crate::support::sqlite()), 48);
}

#[test]
fn postgres_budgets_are_never_overspent() {
    run(|| Box::pin(crate::support::postgres()), 32);
}
