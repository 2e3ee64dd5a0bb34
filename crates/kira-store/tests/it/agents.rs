//! Run traces, human review and primary sessions: the conformance
//! scenarios, run on SQLite and PostgreSQL.

use chrono::{DateTime, TimeDelta, Utc};
use kira_core::audit::AuditEntry;
use kira_core::memory::{EventType, Memory, Workstream};
use kira_core::task::{Priority, TaskId, TaskStatus};
use kira_store::agents::{Decision, ReviewInput, Session, Step, StepKind};
use kira_store::memory::MemoryFilter;
use kira_store::work::{ClaimOutcome, Completed, Completion, Finish, RunRecords, finish_one};
use kira_store::{AuditPage, Store, StoreError};
use serde_json::json;

use crate::support::{Fresh, create, record, scope, t0};
use crate::work::{new_task, small_budget, submit};

conformance!(
    steps_round_trip_in_order,
    approval_completes_with_or_without_an_edited_result,
    rejection_requeues_then_fails,
    review_conflicts_unless_in_review_and_writes_nothing,
    a_refused_review_leaves_the_task_claimable,
    ratings_on_completed_and_reviewed_tasks,
    sessions_default_save_and_refuse_a_stale_version,
    another_company_reads_and_changes_nothing,
    forced_delete_removes_steps_reviews_and_sessions,
    concurrent_reviews_decide_once,
    a_run_end_writes_its_trace_turns_and_memory_with_it,
);

fn at(minutes: i64) -> DateTime<Utc> {
    t0() + TimeDelta::minutes(minutes)
}

/// `t` as the stores keep it: to the microsecond.
fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    chrono::SubsecRound::trunc_subsecs(t, 6)
}

async fn claim_at(s: &dyn Store, company: &str, id: &TaskId, now: DateTime<Utc>) {
    let o = s
        .claim(
            &scope(company),
            id,
            "w1",
            now + TimeDelta::minutes(1),
            &small_budget(),
            now,
        )
        .await
        .expect("claim");
    assert!(matches!(o, ClaimOutcome::Claimed { .. }), "{o:?}");
}

async fn finish_for_review(s: &dyn Store, company: &str, id: &TaskId, now: DateTime<Utc>) {
    let t = s
        .finish(
            &scope(company),
            id,
            "w1",
            Finish {
                status: TaskStatus::NeedsReview,
                reason: "low confidence".into(),
                result: Some(json!({"summary": "Draft NDA", "answer": "Sign it"})),
                confidence: Some(0.4),
                requires_human_review: true,
                error: None,
                retry_at: None,
            },
            now,
        )
        .await
        .expect("finish");
    assert_eq!(t.status, TaskStatus::NeedsReview);
}

/// A task of `company`, submitted, claimed and finished into needs_review
/// through the TaskStore, as a worker would; `max_attempts` 1, so the task
/// has used every attempt it had.
async fn in_review(s: &dyn Store, company: &str) -> TaskId {
    let mut t = new_task("legal", Priority::High, 100);
    t.max_attempts = 1;
    let id = submit(s, company, &t).await;
    claim_at(s, company, &id, t0()).await;
    finish_for_review(s, company, &id, t0()).await;
    id
}

fn approve(result: Option<serde_json::Value>, rating: Option<u8>) -> ReviewInput {
    ReviewInput {
        decision: Decision::Approve { result },
        rating,
        reviewer: "key:reviewer".into(),
    }
}

fn reject(feedback: &str) -> ReviewInput {
    ReviewInput {
        decision: Decision::Reject {
            feedback: feedback.into(),
        },
        rating: None,
        reviewer: "key:reviewer".into(),
    }
}

async fn review(
    s: &dyn Store,
    company: &str,
    id: &TaskId,
    input: &ReviewInput,
    now: DateTime<Utc>,
) -> Result<kira_core::task::Task, StoreError> {
    s.review_task(
        &scope(company),
        id,
        input,
        1,
        now,
        record(Some(company), "task.review"),
    )
    .await
}

async fn audit_of(s: &dyn Store, company: &str) -> Vec<AuditEntry> {
    s.list_company_audit(
        &scope(company),
        AuditPage {
            after_seq: 0,
            limit: 1000,
        },
    )
    .await
    .expect("audit")
}

fn step(id: &TaskId, attempt: i32, seq: i32, kind: StepKind) -> Step {
    Step {
        task_id: id.clone(),
        attempt,
        seq,
        agent: if kind == StepKind::ResponseMessage {
            "legal".into()
        } else {
            "primary".into()
        },
        kind,
        prompt_tokens: 100 + i64::from(seq),
        completion_tokens: 20,
        latency_ms: 350,
        detail: json!({"model": "m", "content": format!("step {attempt}.{seq}"), "tool_calls": []}),
        at: t0() + TimeDelta::seconds(i64::from(attempt * 10 + seq)),
    }
}

async fn steps_round_trip_in_order(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    let id = submit(s, "acme", &new_task("legal", Priority::Medium, 100)).await;
    let other = submit(s, "acme", &new_task("legal", Priority::Medium, 100)).await;
    assert_eq!(s.task_trace(&scope("acme"), &id).await.expect("trace"), []);
    s.record_steps(&scope("acme"), &[])
        .await
        .expect("nothing to record");

    // Recorded out of order, in two calls, beside another task's steps.
    let late = [
        step(&id, 2, 0, StepKind::Llm),
        step(&id, 1, 2, StepKind::End),
    ];
    let early = [
        step(&id, 1, 0, StepKind::TaskMessage),
        step(&other, 1, 0, StepKind::Llm),
        step(&id, 1, 1, StepKind::ResponseMessage),
    ];
    s.record_steps(&scope("acme"), &late).await.expect("record");
    s.record_steps(&scope("acme"), &early)
        .await
        .expect("record");
    let trace = s.task_trace(&scope("acme"), &id).await.expect("trace");
    let order: Vec<(i32, i32, StepKind)> =
        trace.iter().map(|t| (t.attempt, t.seq, t.kind)).collect();
    assert_eq!(
        order,
        [
            (1, 0, StepKind::TaskMessage),
            (1, 1, StepKind::ResponseMessage),
            (1, 2, StepKind::End),
            (2, 0, StepKind::Llm),
        ]
    );
    let mut expected = early[0].clone();
    expected.at = micros(expected.at);
    assert_eq!(
        trace[0], expected,
        "every field comes back, times to the microsecond"
    );
    assert_eq!(trace[1].agent, "legal");
    assert_eq!(
        s.task_trace(&scope("acme"), &other)
            .await
            .expect("trace")
            .len(),
        1
    );

    // A call with a step already recorded writes none of its steps.
    let r = s
        .record_steps(
            &scope("acme"),
            &[
                step(&id, 3, 0, StepKind::Llm),
                step(&id, 1, 1, StepKind::Tool),
            ],
        )
        .await;
    assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
    let r = s
        .record_steps(
            &scope("acme"),
            &[
                step(&id, 3, 0, StepKind::Llm),
                step(&id, 3, 0, StepKind::Llm),
            ],
        )
        .await;
    assert!(
        matches!(r, Err(StoreError::Conflict(_))),
        "twice in one call: {r:?}"
    );
    let mut bad = step(&id, 3, 0, StepKind::Llm);
    bad.seq = -1;
    match s
        .record_steps(&scope("acme"), &[step(&id, 3, 1, StepKind::Llm), bad])
        .await
    {
        Err(StoreError::Invalid(e)) => assert_eq!(e.field, "steps.1.seq"),
        r => panic!("expected Invalid, got {r:?}"),
    }
    let ghost = TaskId::parse("acme_legal_099").expect("id");
    let r = s
        .record_steps(
            &scope("acme"),
            &[
                step(&id, 3, 0, StepKind::Llm),
                step(&ghost, 1, 0, StepKind::Llm),
            ],
        )
        .await;
    assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
    assert!(matches!(
        s.task_trace(&scope("acme"), &ghost).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        s.task_trace(&scope("acme"), &id)
            .await
            .expect("trace")
            .len(),
        4,
        "no refused call wrote anything"
    );
}

async fn approval_completes_with_or_without_an_edited_result(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    let kept = in_review(s, "acme").await;
    let edited = in_review(s, "acme").await;

    let t = review(s, "acme", &kept, &approve(None, Some(4)), at(5))
        .await
        .expect("approve");
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(
        t.result,
        Some(json!({"summary": "Draft NDA", "answer": "Sign it"}))
    );
    assert!(!t.requires_human_review, "a human has reviewed it");
    assert_eq!(t.finished_at, Some(micros(at(5))));
    assert_eq!(t.status_reason, "approved by key:reviewer");
    let events = s
        .task_events(&scope("acme"), &kept, 0)
        .await
        .expect("events");
    let last = events.last().expect("events");
    assert_eq!(
        (last.from_status, last.to_status, last.reason.as_str()),
        (
            Some(TaskStatus::NeedsReview),
            TaskStatus::Completed,
            "approved by key:reviewer"
        )
    );
    let reviews = s
        .task_reviews(&scope("acme"), &kept)
        .await
        .expect("reviews");
    assert_eq!(reviews.len(), 1);
    let r = &reviews[0];
    assert_eq!(
        (
            r.decision.as_str(),
            r.rating,
            r.feedback.as_deref(),
            r.edited_result.as_ref()
        ),
        ("approved", Some(4), None, None)
    );
    assert_eq!(
        (r.reviewer.as_str(), r.at, &r.task_id),
        ("key:reviewer", micros(at(5)), &kept)
    );
    let audit = audit_of(s, "acme").await;
    assert_eq!(audit.last().map(|e| e.action.as_str()), Some("task.review"));

    let better = json!({"summary": "NDA reviewed", "answer": "Sign after clause 4 is struck"});
    let t = review(
        s,
        "acme",
        &edited,
        &approve(Some(better.clone()), None),
        at(6),
    )
    .await
    .expect("approve edited");
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(
        t.result.as_ref(),
        Some(&better),
        "the reviewer's result replaces the agent's"
    );
    assert_eq!(
        t.status_reason,
        "approved by key:reviewer with an edited result"
    );
    let reviews = s
        .task_reviews(&scope("acme"), &edited)
        .await
        .expect("reviews");
    assert_eq!(reviews.len(), 1);
    assert_eq!(reviews[0].edited_result.as_ref(), Some(&better));
    assert_eq!(reviews[0].rating, None);
    assert_eq!(
        s.get_task(&scope("acme"), &edited).await.expect("get"),
        t,
        "what review_task returns is what is stored"
    );
}

async fn rejection_requeues_then_fails(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    let id = in_review(s, "acme").await;
    let before = s.get_task(&scope("acme"), &id).await.expect("get");
    assert_eq!((before.attempts, before.max_attempts), (1, 1));

    let t = review(
        s,
        "acme",
        &id,
        &reject("  Cite the governing law.  "),
        at(5),
    )
    .await
    .expect("reject");
    assert_eq!(t.status, TaskStatus::Queued);
    assert_eq!(
        t.status_reason,
        "rejected by key:reviewer (requeue 1 of 1): Cite the governing law."
    );
    assert_eq!(
        (t.attempts, t.max_attempts),
        (1, 2),
        "a requeued task gets one more run though it used its attempts"
    );
    assert_eq!(t.finished_at, None, "a queued task has not finished");
    // The scheduler sees it again, with its scheduling facts.
    let snap = s.queue_snapshot(at(5), 10, None).await.expect("snapshot");
    assert_eq!(snap.runnable.len(), 1);
    let e = &snap.runnable[0];
    assert_eq!(
        (
            &e.task_id,
            e.status,
            e.priority,
            e.attempts,
            e.waiting_since,
            e.multiplier
        ),
        (
            &id,
            TaskStatus::Queued,
            Priority::High,
            1,
            micros(at(5)),
            1.0
        )
    );
    let reviews = s.task_reviews(&scope("acme"), &id).await.expect("reviews");
    assert_eq!(reviews.len(), 1);
    assert_eq!(
        (reviews[0].decision.as_str(), reviews[0].feedback.as_deref()),
        ("rejected", Some("Cite the governing law."))
    );

    // It runs again, and is rejected again: max_requeues is 1, so it fails.
    claim_at(s, "acme", &id, at(6)).await;
    let running = s.get_task(&scope("acme"), &id).await.expect("get");
    assert_eq!((running.status, running.attempts), (TaskStatus::Running, 2));
    finish_for_review(s, "acme", &id, at(7)).await;
    let t = review(s, "acme", &id, &reject("Still no governing law."), at(8))
        .await
        .expect("reject again");
    assert_eq!(t.status, TaskStatus::Failed);
    assert!(
        t.last_error
            .as_deref()
            .is_some_and(|e| e.contains("Still no governing law.")),
        "{:?}",
        t.last_error
    );
    assert_eq!(t.finished_at, Some(micros(at(8))));
    assert!(
        s.queue_snapshot(at(9), 10, None)
            .await
            .expect("snap")
            .runnable
            .is_empty()
    );
    let reviews = s.task_reviews(&scope("acme"), &id).await.expect("reviews");
    let decisions: Vec<&str> = reviews.iter().map(|r| r.decision.as_str()).collect();
    assert_eq!(decisions, ["rejected", "rejected"], "oldest first");
    let changes: Vec<(Option<TaskStatus>, TaskStatus)> = s
        .task_events(&scope("acme"), &id, 0)
        .await
        .expect("events")
        .iter()
        .map(|e| (e.from_status, e.to_status))
        .collect();
    use TaskStatus::*;
    assert_eq!(
        changes,
        [
            (None, Queued),
            (Some(Queued), Running),
            (Some(Running), NeedsReview),
            (Some(NeedsReview), Queued),
            (Some(Queued), Running),
            (Some(Running), NeedsReview),
            (Some(NeedsReview), Failed),
        ]
    );
    let ledger = s
        .verify_ledger(&kira_core::auth::Principal::system().admin().expect("admin"))
        .await
        .expect("ledger");
    assert!(ledger.ok, "{ledger:?}");
}

async fn review_conflicts_unless_in_review_and_writes_nothing(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    let queued = submit(s, "acme", &new_task("legal", Priority::Medium, 100)).await;
    let done = in_review(s, "acme").await;
    review(s, "acme", &done, &approve(None, None), at(1))
        .await
        .expect("approve");
    let pending = in_review(s, "acme").await;
    let audit_before = audit_of(s, "acme").await.len();

    for (id, what) in [(&queued, "queued"), (&done, "completed")] {
        for input in [approve(None, Some(3)), reject("redo")] {
            let r = review(s, "acme", id, &input, at(2)).await;
            assert!(matches!(r, Err(StoreError::Conflict(_))), "{what}: {r:?}");
        }
    }
    let ghost = TaskId::parse("acme_legal_099").expect("id");
    assert!(matches!(
        review(s, "acme", &ghost, &approve(None, None), at(2)).await,
        Err(StoreError::NotFound)
    ));
    for (input, field) in [
        (reject("   "), "feedback"),
        (approve(None, Some(0)), "rating"),
        (approve(None, Some(6)), "rating"),
    ] {
        match review(s, "acme", &pending, &input, at(2)).await {
            Err(StoreError::Invalid(e)) => assert_eq!(e.field, field),
            r => panic!("expected Invalid {field}, got {r:?}"),
        }
    }
    assert_eq!(
        s.get_task(&scope("acme"), &pending)
            .await
            .expect("get")
            .status,
        TaskStatus::NeedsReview
    );
    assert_eq!(
        s.task_reviews(&scope("acme"), &queued)
            .await
            .expect("reviews"),
        []
    );
    assert_eq!(
        s.task_reviews(&scope("acme"), &done)
            .await
            .expect("reviews")
            .len(),
        1
    );
    assert_eq!(
        s.task_reviews(&scope("acme"), &pending)
            .await
            .expect("reviews"),
        []
    );
    assert_eq!(
        audit_of(s, "acme").await.len(),
        audit_before,
        "refusals are the server's to audit"
    );
}

/// A review refused after it locked the task leaves no lock behind: the
/// scheduler, which skips locked queue rows as taken, claims the task at
/// once.
async fn a_refused_review_leaves_the_task_claimable(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    for _ in 0..10 {
        let id = submit(s, "acme", &new_task("legal", Priority::Medium, 10)).await;
        let r = review(s, "acme", &id, &approve(None, None), at(1)).await;
        assert!(matches!(r, Err(StoreError::Conflict(_))), "{r:?}");
        claim_at(s, "acme", &id, at(1)).await;
    }
}

async fn ratings_on_completed_and_reviewed_tasks(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    let pending = in_review(s, "acme").await;
    let done = in_review(s, "acme").await;
    review(s, "acme", &done, &approve(None, None), at(1))
        .await
        .expect("approve");
    let queued = submit(s, "acme", &new_task("legal", Priority::Medium, 100)).await;
    let rate = |id: TaskId, rating: u8, who: &'static str, minutes: i64| async move {
        s.rate_task(
            &scope("acme"),
            &id,
            rating,
            who,
            at(minutes),
            record(Some("acme"), "task.rate"),
        )
        .await
    };

    let r = rate(pending.clone(), 2, "key:a", 2)
        .await
        .expect("rate in review");
    assert_eq!(
        (r.decision.as_str(), r.rating, r.reviewer.as_str(), r.at),
        ("rated", Some(2), "key:a", micros(at(2)))
    );
    assert_eq!(
        s.get_task(&scope("acme"), &pending)
            .await
            .expect("get")
            .status,
        TaskStatus::NeedsReview,
        "a rating decides nothing"
    );
    for (n, rating) in [1u8, 5].into_iter().enumerate() {
        rate(done.clone(), rating, "key:b", 3 + n as i64)
            .await
            .expect("rate completed");
    }
    let ratings: Vec<(String, Option<u8>)> = s
        .task_reviews(&scope("acme"), &done)
        .await
        .expect("reviews")
        .into_iter()
        .map(|r| (r.decision, r.rating))
        .collect();
    assert_eq!(
        ratings,
        [
            ("approved".into(), None),
            ("rated".into(), Some(1)),
            ("rated".into(), Some(5))
        ],
        "each rating is a row; the latest counts"
    );
    assert!(matches!(
        rate(queued.clone(), 3, "key:a", 5).await,
        Err(StoreError::Conflict(_))
    ));
    for bad in [0u8, 6] {
        match rate(done.clone(), bad, "key:a", 5).await {
            Err(StoreError::Invalid(e)) => assert_eq!(e.field, "rating"),
            r => panic!("expected Invalid rating, got {r:?}"),
        }
    }
    let ghost = TaskId::parse("acme_legal_099").expect("id");
    assert!(matches!(
        rate(ghost, 3, "key:a", 5).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        s.task_reviews(&scope("acme"), &queued)
            .await
            .expect("reviews"),
        []
    );
}

async fn sessions_default_save_and_refuse_a_stale_version(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    let fresh = s.load_session(&scope("acme")).await.expect("load");
    assert_eq!(fresh, Session::default());
    assert_eq!(
        (fresh.version, fresh.summary.as_str(), fresh.updated_at),
        (0, "", None)
    );

    let mut first = fresh.clone();
    first.turns = vec![
        json!({"role": "user", "content": "Hello", "task_id": "acme_legal_001", "at": "2026-03-01T09:30:00Z"}),
    ];
    first.tokens = 12;
    let saved = s
        .save_session(&scope("acme"), &first, at(1))
        .await
        .expect("first save");
    assert_eq!((saved.version, saved.updated_at), (1, Some(micros(at(1)))));
    assert_eq!(saved.turns, first.turns);
    assert_eq!(s.load_session(&scope("acme")).await.expect("load"), saved);

    // Two writers read version 1; the second save is refused.
    let mut a = saved.clone();
    a.summary = "The user greeted the agent.".into();
    a.turns.clear();
    a.tokens = 7;
    let mut b = saved.clone();
    b.tokens = 99;
    let a = s
        .save_session(&scope("acme"), &a, at(2))
        .await
        .expect("save a");
    assert_eq!(a.version, 2);
    assert!(matches!(
        s.save_session(&scope("acme"), &b, at(3)).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(
        matches!(
            s.save_session(&scope("acme"), &fresh, at(3)).await,
            Err(StoreError::Conflict(_))
        ),
        "a first save when one exists is stale too"
    );
    assert_eq!(s.load_session(&scope("acme")).await.expect("load"), a);

    let mut negative = a.clone();
    negative.tokens = -1;
    match s.save_session(&scope("acme"), &negative, at(4)).await {
        Err(StoreError::Invalid(e)) => assert_eq!(e.field, "tokens"),
        r => panic!("expected Invalid, got {r:?}"),
    }
    assert!(matches!(
        s.save_session(&scope("ghost"), &fresh, at(4)).await,
        Err(StoreError::NotFound)
    ));
}

/// Company B, holding only its own scope, names A's task and session: it
/// reads nothing of A's and changes nothing.
async fn another_company_reads_and_changes_nothing(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    create(s, "beta").await;
    let id = in_review(s, "acme").await;
    s.record_steps(&scope("acme"), &[step(&id, 1, 0, StepKind::Llm)])
        .await
        .expect("record");
    s.rate_task(
        &scope("acme"),
        &id,
        3,
        "key:a",
        at(1),
        record(Some("acme"), "task.rate"),
    )
    .await
    .expect("rate");
    let mut session = Session {
        summary: "acme's secret plans".into(),
        ..Session::default()
    };
    session = s
        .save_session(&scope("acme"), &session, at(1))
        .await
        .expect("save");

    let b = scope("beta");
    assert!(matches!(
        s.task_trace(&b, &id).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.task_reviews(&b, &id).await,
        Err(StoreError::NotFound)
    ));
    for input in [approve(None, Some(5)), reject("no")] {
        let r = s
            .review_task(
                &b,
                &id,
                &input,
                1,
                at(2),
                record(Some("beta"), "task.review"),
            )
            .await;
        assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
    }
    let r = s
        .rate_task(
            &b,
            &id,
            1,
            "key:b",
            at(2),
            record(Some("beta"), "task.rate"),
        )
        .await;
    assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
    let r = s.record_steps(&b, &[step(&id, 1, 1, StepKind::Llm)]).await;
    assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
    assert_eq!(s.load_session(&b).await.expect("load"), Session::default());
    // B's first save is B's own and leaves A's alone.
    s.save_session(&b, &Session::default(), at(3))
        .await
        .expect("save b");

    assert_eq!(s.load_session(&scope("acme")).await.expect("load"), session);
    assert_eq!(
        s.task_trace(&scope("acme"), &id)
            .await
            .expect("trace")
            .len(),
        1
    );
    assert_eq!(
        s.task_reviews(&scope("acme"), &id)
            .await
            .expect("reviews")
            .len(),
        1
    );
    assert_eq!(
        s.get_task(&scope("acme"), &id).await.expect("get").status,
        TaskStatus::NeedsReview
    );
}

async fn forced_delete_removes_steps_reviews_and_sessions(f: Fresh) {
    let s = f.store.as_ref();
    for c in ["acme", "beta"] {
        create(s, c).await;
        let id = in_review(s, c).await;
        s.record_steps(
            &scope(c),
            &[
                step(&id, 1, 0, StepKind::Llm),
                step(&id, 1, 1, StepKind::End),
            ],
        )
        .await
        .expect("record");
        review(s, c, &id, &approve(None, Some(5)), at(1))
            .await
            .expect("approve");
        s.save_session(&scope(c), &Session::default(), at(1))
            .await
            .expect("save");
    }
    let deleted = s
        .delete_company(&scope("acme"), record(Some("acme"), "company.delete"))
        .await
        .expect("delete");
    let count = |t: &str| deleted.tables.iter().find(|(n, _)| n == t).map(|(_, n)| *n);
    assert_eq!(
        (
            count("task_steps"),
            count("task_reviews"),
            count("agent_sessions"),
            count("tasks")
        ),
        (Some(2), Some(1), Some(1), Some(1))
    );
    let beta_task = TaskId::parse("beta_legal_001").expect("id");
    assert_eq!(
        s.task_trace(&scope("beta"), &beta_task)
            .await
            .expect("trace")
            .len(),
        2
    );
    assert_eq!(
        s.task_reviews(&scope("beta"), &beta_task)
            .await
            .expect("reviews")
            .len(),
        1
    );
    assert_eq!(
        s.load_session(&scope("beta")).await.expect("load").version,
        1
    );
}

/// Two reviewers decide on one task at once: one decision counts, the
/// other is told the task moved on.
async fn concurrent_reviews_decide_once(f: Fresh) {
    let s = f.store.clone();
    create(s.as_ref(), "acme").await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(in_review(s.as_ref(), "acme").await);
    }
    for id in ids {
        let (s1, s2) = (s.clone(), s.clone());
        let (id1, id2) = (id.clone(), id.clone());
        let first = tokio::spawn(async move {
            review(s1.as_ref(), "acme", &id1, &approve(None, None), at(1)).await
        });
        let second =
            tokio::spawn(
                async move { review(s2.as_ref(), "acme", &id2, &reject("redo"), at(1)).await },
            );
        let results = [first.await.expect("join"), second.await.expect("join")];
        let ok = results.iter().filter(|r| r.is_ok()).count();
        let conflicts = results
            .iter()
            .filter(|r| matches!(r, Err(StoreError::Conflict(_))))
            .count();
        assert_eq!((ok, conflicts), (1, 1), "{results:?}");
        let reviews = s.task_reviews(&scope("acme"), &id).await.expect("reviews");
        assert_eq!(reviews.len(), 1, "one decision recorded");
        let task = s.get_task(&scope("acme"), &id).await.expect("get");
        let expected = if reviews[0].decision == "approved" {
            TaskStatus::Completed
        } else {
            TaskStatus::Queued
        };
        assert_eq!(task.status, expected);
    }
}

fn done() -> Finish {
    Finish {
        status: TaskStatus::Completed,
        reason: "done".into(),
        result: Some(json!({"summary": "done"})),
        confidence: Some(0.9),
        requires_human_review: false,
        error: None,
        retry_at: None,
    }
}

fn result_memory(company: &str, task: &TaskId, n: u128) -> Memory {
    Memory {
        id: uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + n),
        company_id: kira_core::CompanyId::parse(company).expect("id"),
        occurred_at: micros(at(2)),
        event_type: EventType::TaskResult,
        workstream: Workstream::General,
        category: "task_results".into(),
        content: json!({"text": format!("the zeppelin answer to {task}")}),
        importance: 6,
        indexed_terms: vec![],
        source: Some(task.to_string()),
        created_at: micros(at(2)),
        archived_at: None,
        compacted_from: vec![],
        supersedes: None,
    }
}

fn run_records(company: &str, task: &TaskId, n: u128) -> RunRecords {
    RunRecords {
        steps: vec![
            step(task, 1, 0, StepKind::Llm),
            step(task, 1, 1, StepKind::End),
        ],
        session_turns: vec![
            json!({"role": "user", "task_id": task, "content": "the question"}),
            json!({"role": "primary", "task_id": task, "content": "(completed) the answer"}),
        ],
        session_tokens: 12,
        memory: Some((
            result_memory(company, task, n),
            record(Some(company), "memory.add"),
        )),
    }
}

fn end(company: &str, task: &TaskId, records: RunRecords) -> Completion {
    Completion {
        scope: scope(company),
        task_id: task.clone(),
        finish: done(),
        settle: None,
        records,
    }
}

async fn a_run_end_writes_its_trace_turns_and_memory_with_it(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    create(s, "beta").await;
    let a = submit(s, "acme", &new_task("primary", Priority::Medium, 100)).await;
    let b = submit(s, "beta", &new_task("legal", Priority::Medium, 100)).await;
    claim_at(s, "acme", &a, at(1)).await;
    claim_at(s, "beta", &b, at(1)).await;
    let out = s
        .finish_batch(
            "w1",
            vec![
                end("acme", &a, run_records("acme", &a, 1)),
                end("beta", &b, run_records("beta", &b, 2)),
            ],
            at(2),
        )
        .await
        .expect("batch");
    assert!(
        out.iter().all(|o| matches!(o, Completed::Recorded)),
        "{out:?}"
    );
    for (company, other, task, n) in [("acme", "beta", &a, 1), ("beta", "acme", &b, 2)] {
        let trace = s.task_trace(&scope(company), task).await.expect("trace");
        assert_eq!(
            trace.iter().map(|t| (t.seq, t.kind)).collect::<Vec<_>>(),
            vec![(0, StepKind::Llm), (1, StepKind::End)]
        );
        let session = s.load_session(&scope(company)).await.expect("session");
        assert_eq!(session.turns, run_records(company, task, n).session_turns);
        assert_eq!(session.tokens, 12);
        let m = result_memory(company, task, n);
        assert_eq!(
            s.get_memory(&scope(company), m.id).await.expect("memory"),
            m
        );
        let found = s
            .search_memories(&scope(company), "zeppelin", &MemoryFilter::default(), 10)
            .await
            .expect("search");
        assert_eq!(found.len(), 1, "only the company's own result");
        assert!(matches!(
            s.get_memory(&scope(other), m.id).await,
            Err(StoreError::NotFound)
        ));
        assert!(
            audit_of(s, company)
                .await
                .iter()
                .any(|e| e.action == "memory.add")
        );
    }

    // One bad record (a step of another company's task) fails the whole
    // batch, which changes nothing; each end recorded alone then stands,
    // the bad one without its records.
    let c = submit(s, "acme", &new_task("primary", Priority::Medium, 100)).await;
    let d = submit(s, "acme", &new_task("primary", Priority::Medium, 100)).await;
    claim_at(s, "acme", &c, at(3)).await;
    claim_at(s, "acme", &d, at(3)).await;
    let bad = end(
        "acme",
        &c,
        RunRecords {
            steps: vec![step(&b, 2, 0, StepKind::Llm)],
            ..RunRecords::default()
        },
    );
    let mut good_records = run_records("acme", &d, 3);
    good_records.steps = vec![step(&d, 1, 0, StepKind::End)];
    let good = end("acme", &d, good_records);
    assert!(
        s.finish_batch("w1", vec![bad.clone(), good.clone()], at(4))
            .await
            .is_err()
    );
    for t in [&c, &d] {
        let task = s.get_task(&scope("acme"), t).await.expect("task");
        assert_eq!(
            task.status,
            TaskStatus::Running,
            "nothing of the batch stays"
        );
        assert!(
            s.task_trace(&scope("acme"), t)
                .await
                .expect("trace")
                .is_empty()
        );
    }
    assert_eq!(
        s.load_session(&scope("acme"))
            .await
            .expect("session")
            .turns
            .len(),
        2
    );
    for e in [bad, good] {
        assert!(matches!(
            finish_one(s, "w1", e, at(4)).await,
            Completed::Recorded
        ));
    }
    assert_eq!(
        s.get_task(&scope("acme"), &c).await.expect("c").status,
        TaskStatus::Completed
    );
    assert!(
        s.task_trace(&scope("acme"), &c)
            .await
            .expect("trace")
            .is_empty()
    );
    assert!(s.task_trace(&scope("beta"), &b).await.expect("trace").len() == 2);
    assert_eq!(
        s.task_trace(&scope("acme"), &d).await.expect("trace").len(),
        1
    );
    let session = s.load_session(&scope("acme")).await.expect("session");
    assert_eq!(session.turns.len(), 4, "turns append in order");
    assert_eq!(session.turns[2]["task_id"], json!(d));
    assert_eq!(session.tokens, 24);

    // Two ends of one company in one batch: both traces, both memories
    // (queued for embedding, their names listed), the turns of the first
    // before those of the second, and an unbroken audit chain.
    let e = submit(s, "acme", &new_task("primary", Priority::Medium, 100)).await;
    let g = submit(s, "acme", &new_task("primary", Priority::Medium, 100)).await;
    claim_at(s, "acme", &e, at(5)).await;
    claim_at(s, "acme", &g, at(5)).await;
    let mut named = run_records("acme", &g, 6);
    if let Some((m, _)) = &mut named.memory {
        m.content = json!({"text": "met the supplier", "people": ["Dana Whit"], "counterparties": ["Whit Supplies"]});
    }
    let out = s
        .finish_batch(
            "w1",
            vec![
                end("acme", &e, run_records("acme", &e, 5)),
                end("acme", &g, named),
            ],
            at(6),
        )
        .await
        .expect("batch");
    assert!(
        out.iter().all(|o| matches!(o, Completed::Recorded)),
        "{out:?}"
    );
    let session = s.load_session(&scope("acme")).await.expect("session");
    let tasks: Vec<&serde_json::Value> = session.turns.iter().map(|t| &t["task_id"]).collect();
    assert_eq!(
        tasks[4..],
        [&json!(e), &json!(e), &json!(g), &json!(g)],
        "each run's turns, in the batch's order"
    );
    assert_eq!(session.tokens, 48);
    for (t, n) in [(&e, 5), (&g, 6)] {
        assert_eq!(
            s.task_trace(&scope("acme"), t).await.expect("trace").len(),
            2
        );
        let m = result_memory("acme", t, n);
        assert!(s.get_memory(&scope("acme"), m.id).await.is_ok());
    }
    let queued = s.claim_embed_jobs(at(7), 100).await.expect("embed queue");
    for (t, n) in [(&e, 5), (&g, 6)] {
        let id = result_memory("acme", t, n).id;
        assert!(queued.iter().any(|q| q.memory_id == id), "{id} is queued");
    }
    let names = s.listed_names(&scope("acme"), 100).await.expect("names");
    assert!(names.iter().any(|(_, n)| n == "Dana Whit"), "{names:?}");
    assert!(names.iter().any(|(_, n)| n == "Whit Supplies"), "{names:?}");
    let admin = kira_core::auth::Principal::system().admin().expect("admin");
    let chain = s
        .verify_audit(&admin, record(None, "audit.verify"))
        .await
        .expect("verify");
    assert!(chain.ok, "{chain:?}");
}
