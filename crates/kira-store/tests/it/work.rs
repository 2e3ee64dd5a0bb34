//! Tasks, the queue and budgets: the conformance scenarios, run on SQLite
//! and PostgreSQL.

use chrono::TimeDelta;
use kira_core::auth::Principal;
use kira_core::budget::{BudgetConfig, Pool};
use kira_core::task::{Priority, TaskId, TaskStatus};
use kira_store::work::{
    Admission, Candidate, Capacity, ClaimOutcome, Completed, Completion, Finish, Idempotency,
    NewTask, QueueEntry, ReserveOutcome, Settlement, TaskFilter,
};
use kira_store::{AuditPage, Store, StoreError};
use serde_json::json;

use crate::support::{Fresh, create, record, scope, t0};

conformance!(
    submit_numbers_tasks_per_company_and_honours_idempotency,
    claim_reserves_settle_charges_and_finish_completes,
    a_task_without_budget_waits_without_blocking_others,
    high_priority_draws_burst_when_base_is_spent,
    emergency_tokens_need_a_human,
    cancel_waiting_and_running_tasks,
    an_expired_lease_is_retried_then_failed,
    only_the_lease_holder_finishes_and_only_legal_transitions,
    usage_above_the_reservation_is_charged_when_it_fits,
    usage_with_no_room_left_overdraws_and_the_company_waits,
    an_overdraft_on_a_shared_pool_is_the_companys_own_debt,
    a_reservation_shrinks_and_grows_to_the_calls_need,
    a_run_denied_its_first_call_waits_for_budget_with_its_attempt_back,
    forced_delete_releases_and_removes_tasks,
    a_waiting_task_runs_once_budget_frees,
    usage_reported_after_a_lost_lease_is_still_charged,
    a_companys_cost_is_what_its_settled_calls_of_the_period_cost,
    a_batch_claim_goes_in_rank_order_within_slots_and_budget,
    a_batch_finish_records_what_settle_then_finish_would,
    a_snapshot_for_a_pass_leaves_out_tasks_that_could_not_take_a_slot,
    a_snapshot_reads_what_outranks_the_longest_waiting,
);

/// 10,000 tokens: base 6,000, burst 3,000, emergency 1,000.
pub fn small_budget() -> BudgetConfig {
    BudgetConfig {
        total_tokens: 10_000,
        ..BudgetConfig::default()
    }
}

pub fn new_task(label: &str, priority: Priority, tokens: i64) -> NewTask {
    NewTask {
        label: label.into(),
        company_context: json!({"id": "x"}),
        task: format!("do the {label} work"),
        task_type: "quick_question_answer".into(),
        priority,
        deadline: None,
        parameters: json!({}),
        specialist: None,
        agent: label.into(),
        estimated_tokens: tokens,
        max_attempts: 3,
        multiplier: 1.0,
        idempotency: None,
        open_limit: None,
    }
}

pub async fn submit(s: &dyn Store, company: &str, t: &NewTask) -> TaskId {
    s.submit_task(
        &scope(company),
        t,
        t0(),
        record(Some(company), "task.submit"),
    )
    .await
    .expect("submit")
    .task
    .task_id
}

fn admin() -> kira_core::auth::AdminScope {
    Principal::system().admin().expect("admin")
}

fn done(status: TaskStatus) -> Finish {
    Finish {
        status,
        reason: "test".into(),
        result: Some(json!({"answer": 42})),
        confidence: Some(0.9),
        requires_human_review: false,
        error: None,
        retry_at: None,
    }
}

async fn claim(s: &dyn Store, company: &str, id: &TaskId, cfg: &BudgetConfig) -> ClaimOutcome {
    s.claim(
        &scope(company),
        id,
        "w1",
        t0() + TimeDelta::minutes(1),
        cfg,
        t0(),
    )
    .await
    .expect("claim")
}

async fn ledger_ok(s: &dyn Store) {
    let r = s.verify_ledger(&admin()).await.expect("verify");
    assert!(r.ok, "{r:?}");
}

async fn submit_numbers_tasks_per_company_and_honours_idempotency(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    create(s, "beta").await;
    let a1 = submit(s, "acme", &new_task("legal", Priority::High, 100)).await;
    let a2 = submit(s, "acme", &new_task("financial", Priority::Low, 100)).await;
    let b1 = submit(s, "beta", &new_task("legal", Priority::High, 100)).await;
    assert_eq!(
        (a1.as_str(), a2.as_str(), b1.as_str()),
        ("acme_legal_001", "acme_financial_002", "beta_legal_001")
    );

    let mut t = new_task("legal", Priority::High, 100);
    t.idempotency = Some(Idempotency {
        key: "k1".into(),
        request_hash: "h1".into(),
    });
    let first = s
        .submit_task(
            &scope("acme"),
            &t,
            t0(),
            record(Some("acme"), "task.submit"),
        )
        .await
        .expect("submit");
    let again = s
        .submit_task(
            &scope("acme"),
            &t,
            t0(),
            record(Some("acme"), "task.submit"),
        )
        .await
        .expect("again");
    assert!(first.created && !again.created);
    assert_eq!(first.task, again.task);
    t.idempotency = Some(Idempotency {
        key: "k1".into(),
        request_hash: "other".into(),
    });
    let r = s
        .submit_task(
            &scope("acme"),
            &t,
            t0(),
            record(Some("acme"), "task.submit"),
        )
        .await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
    // The same key in another company is another request.
    t.idempotency = Some(Idempotency {
        key: "k1".into(),
        request_hash: "h1".into(),
    });
    assert!(
        s.submit_task(
            &scope("beta"),
            &t,
            t0(),
            record(Some("beta"), "task.submit")
        )
        .await
        .expect("beta")
        .created
    );

    let task = s.get_task(&scope("acme"), &a1).await.expect("get");
    assert_eq!(task.status, TaskStatus::Queued);
    assert_eq!(task.priority, Priority::High);
    assert!(
        matches!(
            s.get_task(&scope("beta"), &a1).await,
            Err(StoreError::NotFound)
        ),
        "another company's task is not found"
    );
    let listed = s
        .list_tasks(
            &scope("acme"),
            &TaskFilter {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .expect("list");
    assert_eq!(listed.len(), 3);
    assert!(
        listed
            .windows(2)
            .all(|w| w[0].task_id.seq() > w[1].task_id.seq()),
        "newest first"
    );
    let page = s
        .list_tasks(
            &scope("acme"),
            &TaskFilter {
                limit: 1,
                before_seq: Some(listed[0].task_id.seq()),
                ..Default::default()
            },
        )
        .await
        .expect("page");
    assert_eq!(page[0].task_id, listed[1].task_id);
    let low = s
        .list_tasks(
            &scope("acme"),
            &TaskFilter {
                limit: 10,
                priority: Some(Priority::Low),
                ..Default::default()
            },
        )
        .await
        .expect("low");
    assert_eq!(low.len(), 1);
    let events = s.task_events(&scope("acme"), &a1, 0).await.expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].to_status, TaskStatus::Queued);
}

async fn claim_reserves_settle_charges_and_finish_completes(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    let cfg = small_budget();
    let id = submit(s, "acme", &new_task("legal", Priority::Medium, 500)).await;
    let snap = s.queue_snapshot(t0(), 100, None).await.expect("snapshot");
    assert_eq!(snap.runnable.len(), 1);
    let ClaimOutcome::Claimed { task, reservation } = claim(s, "acme", &id, &cfg).await else {
        panic!("claimed")
    };
    assert_eq!(task.status, TaskStatus::Running);
    assert_eq!(task.attempts, 1);
    assert_eq!((reservation.pool, reservation.amount), (Pool::Base, 500));
    assert_eq!(
        claim(s, "acme", &id, &cfg).await,
        ClaimOutcome::Gone,
        "a running task cannot be claimed twice"
    );
    let snap = s.queue_snapshot(t0(), 100, None).await.expect("snapshot");
    assert!(snap.runnable.is_empty());
    assert_eq!(snap.running.len(), 1);

    let state = s.budget_state(&admin(), &cfg, t0()).await.expect("state");
    let base = state
        .pools
        .iter()
        .find(|p| p.pool == Pool::Base)
        .expect("base");
    assert_eq!((base.capacity, base.reserved, base.spent), (6000, 500, 0));
    assert_eq!(
        state.companies[0].allocation, 6000,
        "one company gets the whole base pool"
    );

    s.settle(
        &scope("acme"),
        &reservation.reservation_id,
        300,
        80,
        0.01,
        t0(),
    )
    .await
    .expect("settle");
    let again = s
        .settle(&scope("acme"), &reservation.reservation_id, 1, 1, 0.0, t0())
        .await;
    assert!(
        matches!(again, Err(StoreError::Conflict(_))),
        "a reservation settles once"
    );
    let t = s
        .finish(&scope("acme"), &id, "w1", done(TaskStatus::Completed), t0())
        .await
        .expect("finish");
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!((t.prompt_tokens, t.completion_tokens), (300, 80));
    assert!(t.finished_at.is_some());
    assert_eq!(t.result, Some(json!({"answer": 42})));

    let state = s
        .company_budget(&scope("acme"), &cfg, t0())
        .await
        .expect("state");
    let base = state
        .pools
        .iter()
        .find(|p| p.pool == Pool::Base)
        .expect("base");
    assert_eq!((base.reserved, base.spent), (0, 380));
    assert_eq!(
        (state.companies[0].spent, state.companies[0].reserved),
        (380, 0)
    );
    let events: Vec<_> = s
        .task_events(&scope("acme"), &id, 0)
        .await
        .expect("events")
        .into_iter()
        .map(|e| e.to_status)
        .collect();
    assert_eq!(
        events,
        [
            TaskStatus::Queued,
            TaskStatus::Running,
            TaskStatus::Completed
        ]
    );
    ledger_ok(s).await;
}

async fn a_task_without_budget_waits_without_blocking_others(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    let cfg = small_budget();
    let big = submit(s, "acme", &new_task("legal", Priority::Medium, 7000)).await;
    let small = submit(s, "acme", &new_task("legal", Priority::Medium, 100)).await;
    let ClaimOutcome::WaitingBudget { reason } = claim(s, "acme", &big, &cfg).await else {
        panic!("waits")
    };
    assert!(reason.contains("7000"), "{reason}");
    assert!(
        matches!(
            claim(s, "acme", &small, &cfg).await,
            ClaimOutcome::Claimed { .. }
        ),
        "the small task behind it runs"
    );
    let t = s.get_task(&scope("acme"), &big).await.expect("get");
    assert_eq!(t.status, TaskStatus::WaitingBudget);
    assert_eq!(t.attempts, 0, "waiting is not an attempt");
    // It is tried again only after the recheck delay.
    let snap = s.queue_snapshot(t0(), 100, None).await.expect("snapshot");
    assert!(snap.runnable.iter().all(|e| e.task_id != big));
    let later = s
        .queue_snapshot(t0() + TimeDelta::minutes(5), 100, None)
        .await
        .expect("snapshot");
    assert!(
        later
            .runnable
            .iter()
            .any(|e| e.task_id == big && e.status == TaskStatus::WaitingBudget)
    );
    ledger_ok(s).await;
}

async fn high_priority_draws_burst_when_base_is_spent(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    let cfg = small_budget();
    let eat = submit(s, "acme", &new_task("legal", Priority::Medium, 6000)).await;
    assert!(matches!(
        claim(s, "acme", &eat, &cfg).await,
        ClaimOutcome::Claimed { .. }
    ));
    let medium = submit(s, "acme", &new_task("legal", Priority::Medium, 100)).await;
    let high = submit(s, "acme", &new_task("legal", Priority::High, 100)).await;
    assert!(
        matches!(
            claim(s, "acme", &medium, &cfg).await,
            ClaimOutcome::WaitingBudget { .. }
        ),
        "medium may not use burst"
    );
    let ClaimOutcome::Claimed { reservation, .. } = claim(s, "acme", &high, &cfg).await else {
        panic!("high runs")
    };
    assert_eq!(reservation.pool, Pool::Burst);
    // A call of a running task reserves the same way.
    match s
        .reserve(&scope("acme"), &high, 2900, &cfg, t0())
        .await
        .expect("reserve")
    {
        ReserveOutcome::Reserved(r) => assert_eq!(r.pool, Pool::Burst),
        other => panic!("{other:?}"),
    }
    let denied = s
        .reserve(&scope("acme"), &high, 1, &cfg, t0())
        .await
        .expect("reserve");
    assert!(
        matches!(denied, ReserveOutcome::Denied { .. }),
        "burst is full: {denied:?}"
    );
    ledger_ok(s).await;
}

async fn emergency_tokens_need_a_human(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    let cfg = small_budget();
    for (i, amount) in [6000, 3000].into_iter().enumerate() {
        let id = submit(s, "acme", &new_task("legal", Priority::High, amount)).await;
        assert!(
            matches!(
                claim(s, "acme", &id, &cfg).await,
                ClaimOutcome::Claimed { .. }
            ),
            "filler {i}"
        );
    }
    let urgent = submit(s, "acme", &new_task("legal", Priority::Urgent, 800)).await;
    let ClaimOutcome::AwaitingApproval { request_id } = claim(s, "acme", &urgent, &cfg).await
    else {
        panic!("asks")
    };
    assert_eq!(
        s.get_task(&scope("acme"), &urgent)
            .await
            .expect("get")
            .status,
        TaskStatus::AwaitingApproval
    );
    let pending = s
        .emergency_requests(&admin(), true)
        .await
        .expect("requests");
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (pending[0].amount, pending[0].task_id.clone()),
        (800, urgent.clone())
    );
    assert!(
        s.queue_snapshot(t0(), 100, None)
            .await
            .expect("snap")
            .runnable
            .is_empty(),
        "it waits for a human, not the scheduler"
    );

    let req = s
        .decide_emergency(
            &admin(),
            &request_id,
            true,
            "board deadline",
            t0(),
            record(Some("acme"), "budget.approve"),
        )
        .await
        .expect("approve");
    assert_eq!(req.status, "approved");
    let again = s
        .decide_emergency(
            &admin(),
            &request_id,
            true,
            "",
            t0(),
            record(Some("acme"), "budget.approve"),
        )
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))));
    let outcome = claim(s, "acme", &urgent, &cfg).await;
    let ClaimOutcome::Claimed { reservation, .. } = outcome else {
        panic!("runs: {outcome:?}")
    };
    assert_eq!(
        (reservation.pool, reservation.amount),
        (Pool::Emergency, 800)
    );

    // A second urgent task: rejected, it fails with the note.
    let other = submit(s, "acme", &new_task("legal", Priority::Urgent, 800)).await;
    let ClaimOutcome::AwaitingApproval { request_id } = claim(s, "acme", &other, &cfg).await else {
        panic!("asks")
    };
    s.decide_emergency(
        &admin(),
        &request_id,
        false,
        "not worth it",
        t0(),
        record(Some("acme"), "budget.reject"),
    )
    .await
    .expect("reject");
    let t = s.get_task(&scope("acme"), &other).await.expect("get");
    assert_eq!(t.status, TaskStatus::Failed);
    assert!(
        t.status_reason.contains("not worth it"),
        "{}",
        t.status_reason
    );
    // A medium task never asks.
    let medium = submit(s, "acme", &new_task("legal", Priority::Medium, 800)).await;
    assert!(matches!(
        claim(s, "acme", &medium, &cfg).await,
        ClaimOutcome::WaitingBudget { .. }
    ));
    ledger_ok(s).await;
}

async fn cancel_waiting_and_running_tasks(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    let cfg = small_budget();
    let waiting = submit(s, "acme", &new_task("legal", Priority::Low, 100)).await;
    let t = s
        .cancel_task(
            &scope("acme"),
            &waiting,
            t0(),
            record(Some("acme"), "task.cancel"),
        )
        .await
        .expect("cancel");
    assert_eq!(t.status, TaskStatus::Cancelled);
    let r = s
        .cancel_task(
            &scope("acme"),
            &waiting,
            t0(),
            record(Some("acme"), "task.cancel"),
        )
        .await;
    assert!(
        matches!(r, Err(StoreError::Conflict(_))),
        "a finished task cannot be cancelled"
    );

    let running = submit(s, "acme", &new_task("legal", Priority::Low, 100)).await;
    assert!(matches!(
        claim(s, "acme", &running, &cfg).await,
        ClaimOutcome::Claimed { .. }
    ));
    let t = s
        .cancel_task(
            &scope("acme"),
            &running,
            t0(),
            record(Some("acme"), "task.cancel"),
        )
        .await
        .expect("cancel");
    assert_eq!(
        t.status,
        TaskStatus::Running,
        "a running task is asked to stop"
    );
    let lease = s
        .heartbeat(&running, "w1", t0() + TimeDelta::minutes(2), t0())
        .await
        .expect("heartbeat");
    assert!(lease.held && lease.cancel_requested);
    let t = s
        .finish(
            &scope("acme"),
            &running,
            "w1",
            done(TaskStatus::Cancelled),
            t0(),
        )
        .await
        .expect("finish");
    assert_eq!(t.status, TaskStatus::Cancelled);
    let state = s
        .company_budget(&scope("acme"), &cfg, t0())
        .await
        .expect("state");
    assert!(
        state.pools.iter().all(|p| p.reserved == 0),
        "the reservation was released"
    );
    ledger_ok(s).await;
}

async fn an_expired_lease_is_retried_then_failed(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    let cfg = small_budget();
    let mut t = new_task("legal", Priority::Medium, 100);
    t.max_attempts = 2;
    let id = submit(s, "acme", &t).await;
    assert!(matches!(
        claim(s, "acme", &id, &cfg).await,
        ClaimOutcome::Claimed { .. }
    ));
    // The lease runs to t0 + 1 min; nothing expires before.
    assert!(
        s.reap_expired(t0() + TimeDelta::seconds(30), TimeDelta::seconds(10))
            .await
            .expect("reap")
            .is_empty()
    );
    let at = t0() + TimeDelta::minutes(2);
    assert_eq!(
        s.reap_expired(at, TimeDelta::seconds(10))
            .await
            .expect("reap"),
        std::slice::from_ref(&id)
    );
    let task = s.get_task(&scope("acme"), &id).await.expect("get");
    assert_eq!(task.status, TaskStatus::Queued);
    let lease = s
        .heartbeat(&id, "w1", at + TimeDelta::minutes(1), at)
        .await
        .expect("heartbeat");
    assert!(!lease.held, "the old worker lost the lease");
    let r = s
        .finish(&scope("acme"), &id, "w1", done(TaskStatus::Completed), at)
        .await;
    assert!(
        matches!(r, Err(StoreError::Conflict(_))),
        "and cannot record a result"
    );
    assert!(
        s.company_budget(&scope("acme"), &cfg, at)
            .await
            .expect("state")
            .pools
            .iter()
            .all(|p| p.reserved == 0)
    );
    // Backoff: not runnable for 10 s.
    assert!(
        s.queue_snapshot(at, 10, None)
            .await
            .expect("snap")
            .runnable
            .is_empty()
    );
    let later = at + TimeDelta::seconds(11);
    assert!(matches!(
        s.claim(
            &scope("acme"),
            &id,
            "w2",
            later + TimeDelta::minutes(1),
            &cfg,
            later
        )
        .await
        .expect("claim"),
        ClaimOutcome::Claimed { .. }
    ));
    let end = later + TimeDelta::minutes(5);
    s.reap_expired(end, TimeDelta::seconds(10))
        .await
        .expect("reap");
    let task = s.get_task(&scope("acme"), &id).await.expect("get");
    assert_eq!(
        task.status,
        TaskStatus::Failed,
        "two attempts were all it had"
    );
    assert_eq!(task.attempts, 2);
    assert!(
        task.last_error.as_deref().is_some_and(|e| e.contains("w2")),
        "{:?}",
        task.last_error
    );
    ledger_ok(s).await;
}

async fn only_the_lease_holder_finishes_and_only_legal_transitions(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    let cfg = small_budget();
    let id = submit(s, "acme", &new_task("legal", Priority::Medium, 100)).await;
    let r = s
        .finish(&scope("acme"), &id, "w1", done(TaskStatus::Completed), t0())
        .await;
    assert!(
        matches!(r, Err(StoreError::Conflict(_))),
        "a queued task has no lease to finish"
    );
    assert!(matches!(
        claim(s, "acme", &id, &cfg).await,
        ClaimOutcome::Claimed { .. }
    ));
    let r = s
        .finish(
            &scope("acme"),
            &id,
            "intruder",
            done(TaskStatus::Completed),
            t0(),
        )
        .await;
    assert!(matches!(r, Err(StoreError::Conflict(_))));
    let r = s
        .finish(
            &scope("acme"),
            &id,
            "w1",
            done(TaskStatus::AwaitingApproval),
            t0(),
        )
        .await;
    assert!(
        matches!(r, Err(StoreError::Conflict(_))),
        "running -> awaiting_approval is not a transition"
    );
    let t = s
        .finish(
            &scope("acme"),
            &id,
            "w1",
            done(TaskStatus::NeedsReview),
            t0(),
        )
        .await
        .expect("review");
    assert_eq!(t.status, TaskStatus::NeedsReview);
    assert!(
        s.queue_snapshot(t0(), 10, None)
            .await
            .expect("snap")
            .runnable
            .is_empty(),
        "review waits for a human"
    );
    ledger_ok(s).await;
}

async fn usage_above_the_reservation_is_charged_when_it_fits(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    let cfg = small_budget();
    let id = submit(s, "acme", &new_task("legal", Priority::Medium, 100)).await;
    let ClaimOutcome::Claimed { reservation, .. } = claim(s, "acme", &id, &cfg).await else {
        panic!("claimed")
    };
    s.settle(
        &scope("acme"),
        &reservation.reservation_id,
        100,
        50,
        0.0,
        t0(),
    )
    .await
    .expect("settle");
    let state = s
        .company_budget(&scope("acme"), &cfg, t0())
        .await
        .expect("state");
    assert_eq!(state.companies[0].spent, 150);
    ledger_ok(s).await;
}

/// Issue 19: every token the provider reports is on the ledger. Above a
/// reservation with no room left, the balance goes negative with an
/// `overdraft` row and an audit entry; the company's claims then wait until
/// the next period or an approved emergency grant, and other companies run.
async fn usage_with_no_room_left_overdraws_and_the_company_waits(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    create(s, "beta").await;
    let cfg = small_budget();
    let alloc = s
        .company_budget(&scope("acme"), &cfg, t0())
        .await
        .expect("state")
        .companies[0]
        .allocation;
    let big = submit(s, "acme", &new_task("legal", Priority::Medium, alloc - 500)).await;
    let small = submit(s, "acme", &new_task("legal", Priority::Medium, 500)).await;
    let ClaimOutcome::Claimed { reservation, .. } = claim(s, "acme", &big, &cfg).await else {
        panic!("claimed")
    };
    assert!(matches!(
        claim(s, "acme", &small, &cfg).await,
        ClaimOutcome::Claimed { .. }
    ));
    // The provider reports 1,500 above the reservation; the allocation is full.
    let used = reservation.amount + 1500;
    s.settle(
        &scope("acme"),
        &reservation.reservation_id,
        used - 300,
        300,
        0.0,
        t0(),
    )
    .await
    .expect("settle");
    let line = s
        .company_budget(&scope("acme"), &cfg, t0())
        .await
        .expect("state")
        .companies
        .remove(0);
    assert_eq!(
        (
            line.spent,
            line.reserved,
            line.overdraft,
            line.spent_all_pools
        ),
        (used, 500, 1500, used),
        "every reported token is spent, the excess an overdraft"
    );
    ledger_ok(s).await;
    let acme_log = s
        .list_company_audit(
            &scope("acme"),
            AuditPage {
                after_seq: 0,
                limit: 1000,
            },
        )
        .await
        .expect("audit");
    let overdraft: Vec<_> = acme_log
        .iter()
        .filter(|e| e.action == "budget.overdraft")
        .collect();
    assert_eq!(overdraft.len(), 1, "{acme_log:?}");
    assert_eq!(overdraft[0].target, format!("task:{big}"));
    assert!(overdraft[0].detail.contains("1500"), "{:?}", overdraft[0]);
    assert!(!overdraft[0].detail.contains("beta"), "{:?}", overdraft[0]);
    let beta_log = s
        .list_company_audit(
            &scope("beta"),
            AuditPage {
                after_seq: 0,
                limit: 1000,
            },
        )
        .await
        .expect("audit");
    assert!(beta_log.iter().all(|e| e.action != "budget.overdraft"));

    // Overdrawn: nothing more runs, from base or burst.
    for p in [Priority::Low, Priority::High] {
        let id = submit(s, "acme", &new_task("legal", p, 10)).await;
        assert!(
            matches!(
                claim(s, "acme", &id, &cfg).await,
                ClaimOutcome::WaitingBudget { .. }
            ),
            "{p:?}"
        );
    }
    // Another company is not held back.
    let other = submit(s, "beta", &new_task("legal", Priority::Medium, 10)).await;
    assert!(matches!(
        claim(s, "beta", &other, &cfg).await,
        ClaimOutcome::Claimed { .. }
    ));
    // An approved emergency grant runs its task all the same.
    let urgent = submit(s, "acme", &new_task("legal", Priority::Urgent, 100)).await;
    let ClaimOutcome::AwaitingApproval { request_id } = claim(s, "acme", &urgent, &cfg).await
    else {
        panic!("an urgent task asks for a grant")
    };
    s.decide_emergency(
        &admin(),
        &request_id,
        true,
        "ok",
        t0(),
        record(Some("acme"), "budget.approve"),
    )
    .await
    .expect("approve");
    assert!(matches!(
        claim(s, "acme", &urgent, &cfg).await,
        ClaimOutcome::Claimed { .. }
    ));
    // The next period starts without the overdraft.
    let next = t0() + TimeDelta::days(40);
    let id = submit(s, "acme", &new_task("legal", Priority::Medium, 10)).await;
    assert!(matches!(
        s.claim(
            &scope("acme"),
            &id,
            "w1",
            next + TimeDelta::minutes(1),
            &cfg,
            next
        )
        .await
        .expect("claim"),
        ClaimOutcome::Claimed { .. }
    ));
    ledger_ok(s).await;
}

/// Issue 19: usage above a burst reservation with no room left in the
/// burst pool goes on the company's own balance, not the shared pool's:
/// the company is overdrawn and waits, and the others keep the burst pool.
async fn an_overdraft_on_a_shared_pool_is_the_companys_own_debt(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    create(s, "beta").await;
    let cfg = &small_budget();
    let alloc = |c: &'static str| async move {
        s.company_budget(&scope(c), cfg, t0())
            .await
            .expect("state")
            .companies[0]
            .allocation
    };
    // Each company's base is full, so high-priority work draws burst.
    for c in ["acme", "beta"] {
        let fill = submit(s, c, &new_task("legal", Priority::Medium, alloc(c).await)).await;
        assert!(matches!(
            claim(s, c, &fill, cfg).await,
            ClaimOutcome::Claimed { .. }
        ));
    }
    let burst_claim = |c: &'static str, tokens: i64| async move {
        let id = submit(s, c, &new_task("legal", Priority::High, tokens)).await;
        claim(s, c, &id, cfg).await
    };
    let ClaimOutcome::Claimed {
        reservation: theirs,
        ..
    } = burst_claim("beta", 500).await
    else {
        panic!("beta claimed from burst")
    };
    let ClaimOutcome::Claimed { reservation, .. } = burst_claim("acme", 1_000).await else {
        panic!("acme claimed from burst")
    };
    assert_eq!((reservation.pool, theirs.pool), (Pool::Burst, Pool::Burst));
    // The provider reports 5,000 for acme's call: the burst pool (3,000,
    // 1,500 of it held) has room for 1,500 more, and the other 2,500 are
    // acme's overdraft.
    s.settle(
        &scope("acme"),
        &reservation.reservation_id,
        4_000,
        1_000,
        0.0,
        t0(),
    )
    .await
    .expect("settle");
    let state = s.budget_state(&admin(), cfg, t0()).await.expect("state");
    let burst = state
        .pools
        .iter()
        .find(|p| p.pool == Pool::Burst)
        .expect("burst");
    assert_eq!(
        (burst.spent, burst.reserved, burst.overdraft),
        (2_500, 500, 0),
        "the shared pool is not overdrawn"
    );
    let line = |c: &str| {
        state
            .companies
            .iter()
            .find(|l| l.company_id.as_str() == c)
            .cloned()
            .expect("line")
    };
    assert_eq!(line("acme").overdraft, 2_500, "{:?}", line("acme"));
    assert_eq!(
        line("acme").spent_all_pools,
        5_000,
        "every reported token is spent"
    );
    assert_eq!(line("beta").overdraft, 0, "{:?}", line("beta"));
    ledger_ok(s).await;
    // beta gives its burst tokens back: its next burst task runs, while
    // acme, overdrawn, waits even for a small one.
    s.release(&scope("beta"), &theirs.reservation_id, t0())
        .await
        .expect("release");
    assert!(matches!(
        burst_claim("acme", 10).await,
        ClaimOutcome::WaitingBudget { .. }
    ));
    assert!(matches!(
        burst_claim("beta", 400).await,
        ClaimOutcome::Claimed { .. }
    ));
    ledger_ok(s).await;
}

async fn a_reservation_shrinks_and_grows_to_the_calls_need(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    let cfg = small_budget();
    let alloc = s
        .company_budget(&scope("acme"), &cfg, t0())
        .await
        .expect("state")
        .companies[0]
        .allocation;
    let id = submit(s, "acme", &new_task("legal", Priority::Medium, 1000)).await;
    let ClaimOutcome::Claimed { reservation, .. } = claim(s, "acme", &id, &cfg).await else {
        panic!("claimed")
    };
    let reserved = || async {
        s.company_budget(&scope("acme"), &cfg, t0())
            .await
            .expect("state")
            .companies[0]
            .reserved
    };
    let resize = |amount: i64| {
        let rid = reservation.reservation_id.clone();
        async move {
            s.resize_reservation(&scope("acme"), &rid, amount, t0())
                .await
                .expect("resize")
        }
    };
    let ReserveOutcome::Reserved(r) = resize(400).await else {
        panic!("a shrink always succeeds")
    };
    assert_eq!((r.amount, reserved().await), (400, 400));
    let ReserveOutcome::Reserved(r) = resize(1500).await else {
        panic!("room to grow")
    };
    assert_eq!((r.amount, reserved().await), (1500, 1500));
    assert!(
        matches!(resize(alloc + 1).await, ReserveOutcome::Denied { .. }),
        "no room: denied"
    );
    assert_eq!(reserved().await, 1500, "a denied growth changes nothing");
    ledger_ok(s).await;
    s.settle(&scope("acme"), &r.reservation_id, 1000, 100, 0.0, t0())
        .await
        .expect("settle");
    assert!(matches!(
        s.resize_reservation(&scope("acme"), &r.reservation_id, 10, t0())
            .await,
        Err(StoreError::Conflict(_))
    ));
    ledger_ok(s).await;
}

async fn a_run_denied_its_first_call_waits_for_budget_with_its_attempt_back(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    let cfg = small_budget();
    let id = submit(s, "acme", &new_task("legal", Priority::Medium, 100)).await;
    assert!(matches!(
        claim(s, "acme", &id, &cfg).await,
        ClaimOutcome::Claimed { .. }
    ));
    // What its first call needed is what the next claim holds; never lowered.
    s.raise_estimate(&scope("acme"), &id, "w1", 900)
        .await
        .expect("raise");
    s.raise_estimate(&scope("acme"), &id, "w1", 300)
        .await
        .expect("raise");
    assert!(matches!(
        s.raise_estimate(&scope("acme"), &id, "someone else", 5000)
            .await,
        Err(StoreError::Conflict(_))
    ));
    let f = Finish {
        status: TaskStatus::WaitingBudget,
        reason: "waiting for budget".into(),
        result: None,
        confidence: None,
        requires_human_review: false,
        error: None,
        retry_at: Some(t0() + TimeDelta::seconds(10)),
    };
    let out = s
        .finish_batch(
            "w1",
            vec![Completion {
                scope: scope("acme"),
                task_id: id.clone(),
                finish: f,
                settle: None,
                records: Default::default(),
            }],
            t0(),
        )
        .await
        .expect("finish");
    assert!(matches!(out[0], Completed::Recorded), "{out:?}");
    let task = s.get_task(&scope("acme"), &id).await.expect("task");
    assert_eq!((task.status, task.attempts), (TaskStatus::WaitingBudget, 0));
    let line = s
        .company_budget(&scope("acme"), &cfg, t0())
        .await
        .expect("state")
        .companies
        .remove(0);
    assert_eq!(line.reserved, 0, "what the claim held went back");
    // Claimable again after its recheck, not before.
    let snap = s.queue_snapshot(t0(), 10, None).await.expect("snap");
    assert!(snap.runnable.iter().all(|e| e.task_id != id));
    let later = t0() + TimeDelta::seconds(11);
    assert!(matches!(
        s.claim(
            &scope("acme"),
            &id,
            "w1",
            later + TimeDelta::minutes(1),
            &cfg,
            later
        )
        .await
        .expect("claim"),
        ClaimOutcome::Claimed { .. }
    ));
    let task = s.get_task(&scope("acme"), &id).await.expect("task");
    assert_eq!((task.attempts, task.estimated_tokens), (1, 900));
    let held = s
        .company_budget(&scope("acme"), &cfg, later)
        .await
        .expect("state")
        .companies
        .remove(0)
        .reserved;
    assert_eq!(held, 900, "claimed for what its first call needs");
    ledger_ok(s).await;
}

async fn forced_delete_releases_and_removes_tasks(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    create(s, "beta").await;
    let cfg = small_budget();
    let id = submit(s, "acme", &new_task("legal", Priority::Medium, 1000)).await;
    assert!(matches!(
        claim(s, "acme", &id, &cfg).await,
        ClaimOutcome::Claimed { .. }
    ));
    submit(s, "beta", &new_task("legal", Priority::Medium, 100)).await;
    let deleted = s
        .delete_company(&scope("acme"), record(Some("acme"), "company.delete"))
        .await
        .expect("delete");
    let count = |t: &str| deleted.tables.iter().find(|(n, _)| n == t).map(|(_, n)| *n);
    assert_eq!(count("tasks"), Some(1));
    assert_eq!(count("companies"), Some(1));
    let state = s.budget_state(&admin(), &cfg, t0()).await.expect("state");
    assert!(
        state.pools.iter().all(|p| p.reserved == 0),
        "what the company held went back to the pool"
    );
    assert_eq!(
        s.queue_snapshot(t0(), 10, None)
            .await
            .expect("snap")
            .runnable
            .len(),
        1,
        "beta's task stays"
    );
    ledger_ok(s).await;
}

async fn a_waiting_task_runs_once_budget_frees(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    let cfg = small_budget();
    let first = submit(s, "acme", &new_task("legal", Priority::Medium, 5000)).await;
    let second = submit(s, "acme", &new_task("legal", Priority::Medium, 2000)).await;
    assert!(matches!(
        claim(s, "acme", &first, &cfg).await,
        ClaimOutcome::Claimed { .. }
    ));
    assert!(matches!(
        claim(s, "acme", &second, &cfg).await,
        ClaimOutcome::WaitingBudget { .. }
    ));
    s.finish(&scope("acme"), &first, "w1", done(TaskStatus::Failed), t0())
        .await
        .expect("finish");
    let later = t0() + TimeDelta::minutes(1);
    let out = s
        .claim(
            &scope("acme"),
            &second,
            "w1",
            later + TimeDelta::minutes(1),
            &cfg,
            later,
        )
        .await
        .expect("claim");
    assert!(
        matches!(out, ClaimOutcome::Claimed { .. }),
        "waiting_budget -> running once the tokens are back: {out:?}"
    );
    let events: Vec<_> = s
        .task_events(&scope("acme"), &second, 0)
        .await
        .expect("events")
        .into_iter()
        .map(|e| e.to_status)
        .collect();
    assert_eq!(
        events,
        [
            TaskStatus::Queued,
            TaskStatus::WaitingBudget,
            TaskStatus::Running
        ]
    );
    ledger_ok(s).await;
}

/// A budget line's cost is the provider's reported cost of the company's
/// calls settled in that period: not another period's, not another
/// company's.
async fn a_companys_cost_is_what_its_settled_calls_of_the_period_cost(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    create(s, "beta").await;
    let cfg = &small_budget();
    let settle_at = |id: TaskId, now: chrono::DateTime<chrono::Utc>, cost: f64| async move {
        let outcome = s
            .claim(
                &scope("acme"),
                &id,
                "w1",
                now + TimeDelta::minutes(1),
                cfg,
                now,
            )
            .await
            .expect("claim");
        let ClaimOutcome::Claimed { reservation, .. } = outcome else {
            panic!("claimed, not {outcome:?}")
        };
        s.settle(
            &scope("acme"),
            &reservation.reservation_id,
            100,
            50,
            cost,
            now,
        )
        .await
        .expect("settle");
    };
    let first = submit(s, "acme", &new_task("legal", Priority::Medium, 500)).await;
    settle_at(first.clone(), t0(), 0.25).await;
    let next = t0() + TimeDelta::days(40);
    let second = submit(s, "acme", &new_task("legal", Priority::Medium, 500)).await;
    settle_at(second, next, 0.5).await;
    let costs = |now| async move {
        let state = s.budget_state(&admin(), cfg, now).await.expect("state");
        state
            .companies
            .iter()
            .map(|c| (c.company_id.to_string(), c.cost_usd))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        costs(t0()).await,
        [("acme".to_owned(), 0.25), ("beta".to_owned(), 0.0)]
    );
    assert_eq!(
        costs(next).await,
        [("acme".to_owned(), 0.5), ("beta".to_owned(), 0.0)]
    );
    let one = s
        .company_budget(&scope("acme"), cfg, next)
        .await
        .expect("state");
    assert_eq!(one.companies.len(), 1);
    assert_eq!(one.companies[0].cost_usd, 0.5);
    let task = s.get_task(&scope("acme"), &first).await.expect("task");
    assert_eq!(task.cost_usd, 0.25);
    ledger_ok(s).await;
}

async fn usage_reported_after_a_lost_lease_is_still_charged(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    let cfg = small_budget();
    let id = submit(s, "acme", &new_task("legal", Priority::Medium, 500)).await;
    let ClaimOutcome::Claimed { reservation, .. } = claim(s, "acme", &id, &cfg).await else {
        panic!("claimed")
    };
    // The worker stalls past its lease; the reaper gives the tokens back.
    let later = t0() + TimeDelta::minutes(5);
    s.reap_expired(later, TimeDelta::seconds(10))
        .await
        .expect("reap");
    let base = |st: &kira_store::work::BudgetState| {
        let p = st
            .pools
            .iter()
            .find(|p| p.pool == Pool::Base)
            .expect("base");
        (p.reserved, p.spent)
    };
    assert_eq!(
        base(
            &s.company_budget(&scope("acme"), &cfg, later)
                .await
                .expect("state")
        ),
        (0, 0)
    );
    // Its call had used 300 tokens: they are charged when it reports them.
    s.settle(
        &scope("acme"),
        &reservation.reservation_id,
        200,
        100,
        0.0,
        later,
    )
    .await
    .expect("late settle");
    assert_eq!(
        base(
            &s.company_budget(&scope("acme"), &cfg, later)
                .await
                .expect("state")
        ),
        (0, 300)
    );
    let t = s.get_task(&scope("acme"), &id).await.expect("task");
    assert_eq!(t.prompt_tokens + t.completion_tokens, 300);
    let again = s
        .settle(
            &scope("acme"),
            &reservation.reservation_id,
            1,
            1,
            0.0,
            later,
        )
        .await;
    assert!(
        matches!(again, Err(StoreError::Conflict(_))),
        "charged once: {again:?}"
    );
    ledger_ok(s).await;
}

/// At most `n` tasks may start.
pub struct Slots(pub usize);

impl Admission for Slots {
    fn free(&self, _: &QueueEntry) -> bool {
        self.0 > 0
    }
    fn take(&mut self, _: &QueueEntry) {
        self.0 -= 1;
    }
}

/// The queue entries of `ids`, in that order (the caller's rank order).
pub async fn candidates(s: &dyn Store, ids: &[&TaskId]) -> Vec<Candidate> {
    let snap = s.queue_snapshot(t0(), 1000, None).await.expect("snapshot");
    ids.iter()
        .map(|id| {
            let entry = snap
                .runnable
                .iter()
                .find(|e| &&e.task_id == id)
                .cloned()
                .expect("queued");
            Candidate {
                scope: scope(entry.company_id.as_str()),
                entry,
            }
        })
        .collect()
}

async fn a_batch_claim_goes_in_rank_order_within_slots_and_budget(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    let cfg = small_budget();
    // Base holds 6,000 for acme; low and medium may not draw burst.
    let a = submit(s, "acme", &new_task("legal", Priority::Medium, 2000)).await;
    let b = submit(s, "acme", &new_task("legal", Priority::Medium, 2500)).await;
    let c = submit(s, "acme", &new_task("legal", Priority::Low, 3000)).await;
    let d = submit(s, "acme", &new_task("legal", Priority::Low, 1000)).await;
    let e = submit(s, "acme", &new_task("legal", Priority::Low, 100)).await;
    let g = submit(s, "acme", &new_task("legal", Priority::Low, 100)).await;
    let cands = candidates(s, &[&a, &g, &b, &c, &d, &e]).await;
    // g is taken by another worker before the batch runs.
    assert!(matches!(
        claim(s, "acme", &g, &cfg).await,
        ClaimOutcome::Claimed { .. }
    ));
    let mut slots = Slots(3);
    let out = s
        .claim_batch(
            &cands,
            &mut slots,
            "w2",
            t0() + TimeDelta::minutes(1),
            &cfg,
            t0(),
        )
        .await
        .expect("batch");
    let got: Vec<(&str, &str)> = out
        .iter()
        .map(|(id, o)| {
            let what = match o {
                ClaimOutcome::Claimed { .. } => "claimed",
                ClaimOutcome::Gone => "gone",
                ClaimOutcome::WaitingBudget { .. } => "waiting",
                ClaimOutcome::AwaitingApproval { .. } => "approval",
            };
            (id.as_str(), what)
        })
        .collect();
    // As single claims in that order: g is gone and takes no slot; c does
    // not fit what a and b left (1,400 of 6,000 with g's 100) and waits
    // without taking a slot or blocking d; e finds no slot left.
    assert_eq!(
        got,
        [
            (a.as_str(), "claimed"),
            (g.as_str(), "gone"),
            (b.as_str(), "claimed"),
            (c.as_str(), "waiting"),
            (d.as_str(), "claimed"),
        ]
    );
    assert_eq!(slots.0, 0);
    for (id, o) in &out {
        if let ClaimOutcome::Claimed { task, reservation } = o {
            assert_eq!(&task.task_id, id);
            assert_eq!((task.status, task.attempts), (TaskStatus::Running, 1));
            assert_eq!(reservation.amount, task.estimated_tokens);
            assert_eq!(reservation.pool, Pool::Base);
            let events = s.task_events(&scope("acme"), id, 0).await.expect("events");
            assert_eq!(
                events.last().map(|e| (e.from_status, e.to_status)),
                Some((Some(TaskStatus::Queued), TaskStatus::Running))
            );
        }
    }
    let state = s.budget_state(&admin(), &cfg, t0()).await.expect("state");
    assert_eq!(
        (state.companies[0].reserved, state.companies[0].spent),
        (2000 + 2500 + 1000 + 100, 0)
    );
    let waiting = s.get_task(&scope("acme"), &c).await.expect("c");
    assert_eq!(waiting.status, TaskStatus::WaitingBudget);
    let queued = s.get_task(&scope("acme"), &e).await.expect("e");
    assert_eq!((queued.status, queued.attempts), (TaskStatus::Queued, 0));
    ledger_ok(s).await;
}

async fn a_batch_finish_records_what_settle_then_finish_would(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    let cfg = small_budget();
    let ids = [
        submit(s, "acme", &new_task("legal", Priority::Medium, 500)).await,
        submit(s, "acme", &new_task("legal", Priority::Medium, 400)).await,
        submit(s, "acme", &new_task("legal", Priority::Medium, 300)).await,
        submit(s, "acme", &new_task("legal", Priority::Medium, 200)).await,
    ];
    let cands = candidates(s, &ids.iter().collect::<Vec<_>>()).await;
    let out = s
        .claim_batch(
            &cands,
            &mut Slots(10),
            "w1",
            t0() + TimeDelta::minutes(1),
            &cfg,
            t0(),
        )
        .await
        .expect("batch");
    let rid: Vec<String> = out
        .iter()
        .map(|(_, o)| match o {
            ClaimOutcome::Claimed { reservation, .. } => reservation.reservation_id.clone(),
            o => panic!("claimed, not {o:?}"),
        })
        .collect();
    let settle = |i: usize, p: i64, c: i64| {
        Some(Settlement {
            reservation_id: rid[i].clone(),
            prompt_tokens: p,
            completion_tokens: c,
            cost_usd: 0.5,
        })
    };
    let retry = Finish {
        status: TaskStatus::Queued,
        reason: "retry".into(),
        result: None,
        confidence: None,
        requires_human_review: false,
        error: Some("boom".into()),
        retry_at: Some(t0() + TimeDelta::minutes(5)),
    };
    let completion = |i: usize, finish: Finish, settle: Option<Settlement>| Completion {
        scope: scope("acme"),
        task_id: ids[i].clone(),
        finish,
        settle,
        records: Default::default(),
    };
    let results = s
        .finish_batch(
            "w1",
            vec![
                // Within its reservation: the plain case.
                completion(0, done(TaskStatus::Completed), settle(0, 300, 100)),
                // A retry, nothing used: its reservation is released.
                completion(1, retry, None),
                // More than reserved: charged as settle does, if it fits.
                completion(2, done(TaskStatus::NeedsReview), settle(2, 400, 50)),
            ],
            t0(),
        )
        .await
        .expect("finish batch");
    assert!(
        results.iter().all(|r| matches!(r, Completed::Recorded)),
        "{results:?}"
    );
    let lost = s
        .finish_batch(
            "w-other",
            vec![completion(3, done(TaskStatus::Completed), None)],
            t0(),
        )
        .await
        .expect("finish batch");
    assert!(
        matches!(&lost[..], [Completed::NotFinished(StoreError::Conflict(_))]),
        "only the lease holder finishes: {lost:?}"
    );
    let acme_scope = scope("acme");
    let t = |i: usize| s.get_task(&acme_scope, &ids[i]);
    let t0_ = t(0).await.expect("task");
    assert_eq!(t0_.status, TaskStatus::Completed);
    assert_eq!((t0_.prompt_tokens, t0_.completion_tokens), (300, 100));
    assert!((t0_.cost_usd - 0.5).abs() < 1e-9);
    assert_eq!(t0_.result, Some(json!({"answer": 42})));
    assert!(t0_.finished_at.is_some());
    let t1 = t(1).await.expect("task");
    assert_eq!(
        (t1.status, t1.last_error.as_deref()),
        (TaskStatus::Queued, Some("boom"))
    );
    let snap = s.queue_snapshot(t0(), 100, None).await.expect("snapshot");
    assert!(snap.runnable.is_empty(), "the retry waits for its backoff");
    let later = s
        .queue_snapshot(t0() + TimeDelta::minutes(5), 100, None)
        .await
        .expect("snapshot");
    assert_eq!(later.runnable.len(), 1);
    assert_eq!(snap.running.len(), 1, "only the fourth task still runs");
    let t2 = t(2).await.expect("task");
    assert_eq!(t2.status, TaskStatus::NeedsReview);
    assert_eq!(t2.prompt_tokens + t2.completion_tokens, 450);
    let events = s
        .task_events(&scope("acme"), &ids[0], 0)
        .await
        .expect("events");
    assert_eq!(
        events.last().map(|e| (e.from_status, e.to_status)),
        Some((Some(TaskStatus::Running), TaskStatus::Completed))
    );
    let state = s.budget_state(&admin(), &cfg, t0()).await.expect("state");
    let acme = &state.companies[0];
    assert_eq!(
        (acme.reserved, acme.spent),
        (200, 400 + 450),
        "the fourth task's reservation is still held"
    );
    // Each settled call's cost, the plain one's and the one settled the
    // careful way alike.
    assert!((acme.cost_usd - 1.0).abs() < 1e-9, "{acme:?}");
    ledger_ok(s).await;
}

async fn a_snapshot_for_a_pass_leaves_out_tasks_that_could_not_take_a_slot(f: Fresh) {
    let s = f.store.as_ref();
    for c in ["acme", "beta", "gamma"] {
        create(s, c).await;
    }
    let cfg = small_budget();
    let task = |agent: &str| new_task(agent, Priority::Medium, 100);
    // acme runs one legal and one financial task: financial's one slot is
    // taken, and so is acme's limit of two.
    let mut acme_running = Vec::new();
    for agent in ["legal", "financial"] {
        let id = submit(s, "acme", &task(agent)).await;
        assert!(matches!(
            claim(s, "acme", &id, &cfg).await,
            ClaimOutcome::Claimed { .. }
        ));
        acme_running.push(id);
    }
    submit(s, "acme", &task("legal")).await;
    submit(s, "beta", &task("legal")).await;
    submit(s, "beta", &task("financial")).await;
    submit(s, "beta", &task("technical")).await;
    submit(s, "gamma", &task("legal")).await;
    submit(s, "gamma", &task("legal")).await;
    let mut capacity = Capacity {
        agents: [("legal".to_owned(), 2), ("financial".to_owned(), 1)].into(),
        per_company: 2,
        ended: Vec::new(),
    };
    let ids = |snap: &kira_store::work::QueueSnapshot| {
        snap.runnable
            .iter()
            .map(|e| e.task_id.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    let all = s.queue_snapshot(t0(), 10, None).await.expect("snapshot");
    assert_eq!(
        all.runnable.len(),
        6,
        "without a capacity, every runnable task"
    );
    let snap = s
        .queue_snapshot(t0(), 10, Some(&capacity))
        .await
        .expect("snapshot");
    // Not acme's (at its limit), not financial's (its slot is taken), not
    // technical's (an agent without slots).
    assert_eq!(
        ids(&snap),
        ["beta_legal_001", "gamma_legal_001", "gamma_legal_002"]
    );
    let mut running = snap.running.clone();
    running.sort();
    assert_eq!(
        running,
        [
            (
                "financial".to_owned(),
                kira_core::CompanyId::parse("acme").expect("id")
            ),
            (
                "legal".to_owned(),
                kira_core::CompanyId::parse("acme").expect("id")
            ),
        ]
    );
    // The limit counts only the tasks that could take a slot.
    let first = s
        .queue_snapshot(t0(), 2, Some(&capacity))
        .await
        .expect("snapshot");
    assert_eq!(ids(&first), ["beta_legal_001", "gamma_legal_001"]);
    // An agent whose slots are exactly taken has none free.
    capacity.agents.insert("legal".into(), 1);
    let none = s
        .queue_snapshot(t0(), 10, Some(&capacity))
        .await
        .expect("snapshot");
    assert!(none.runnable.is_empty(), "{:?}", ids(&none));
    assert_eq!(none.running.len(), 2);
    // A run that ended, its end not yet written, holds no slot: legal's is
    // free again, and acme is below its limit.
    capacity.ended = vec![acme_running[0].clone()];
    let freed = s
        .queue_snapshot(t0(), 10, Some(&capacity))
        .await
        .expect("snapshot");
    assert_eq!(
        ids(&freed),
        [
            "acme_legal_003",
            "beta_legal_001",
            "gamma_legal_001",
            "gamma_legal_002"
        ]
    );
    assert_eq!(
        freed.running,
        [(
            "financial".to_owned(),
            kira_core::CompanyId::parse("acme").expect("id")
        )]
    );
}

/// Past its window of the longest waiting, a snapshot also reads of each
/// level the first by multiplier then age, and the nearest deadlines.
async fn a_snapshot_reads_what_outranks_the_longest_waiting(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    let low = new_task("legal", Priority::Low, 100);
    for _ in 0..3 {
        submit(s, "acme", &low).await;
    }
    let favoured = NewTask {
        multiplier: 2.0,
        ..low.clone()
    };
    submit(s, "acme", &favoured).await;
    let emergency = new_task("legal", Priority::Emergency, 100);
    submit(s, "acme", &emergency).await;
    let due = NewTask {
        deadline: Some(t0() + TimeDelta::hours(1)),
        ..new_task("legal", Priority::Medium, 100)
    };
    submit(s, "acme", &due).await;
    submit(s, "acme", &emergency).await;
    let ids = |snap: &kira_store::work::QueueSnapshot| {
        snap.runnable
            .iter()
            .map(|e| e.task_id.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    let read = |limit| s.queue_snapshot(t0(), limit, None);
    // Two of seven: the two longest waiting, then one of each level (the
    // favoured low task, the first emergency, the medium one) and the one
    // deadline.
    assert_eq!(
        ids(&read(2).await.expect("snapshot")),
        [
            "acme_legal_001",
            "acme_legal_002",
            "acme_legal_004",
            "acme_legal_005",
            "acme_legal_006"
        ]
    );
    // A window that holds every task reads nothing more.
    assert_eq!(read(10).await.expect("snapshot").runnable.len(), 7);
    // The windows leave out what could not start, as the first does.
    let none = Capacity {
        agents: [("financial".to_owned(), 4)].into(),
        per_company: 4,
        ended: Vec::new(),
    };
    let snap = s
        .queue_snapshot(t0(), 2, Some(&none))
        .await
        .expect("snapshot");
    assert!(snap.runnable.is_empty(), "{:?}", ids(&snap));
}
