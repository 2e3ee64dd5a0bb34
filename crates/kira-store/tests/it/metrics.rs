//! Task metrics: what the database records when runs end, usage is
//! settled, tools are called and tasks reviewed, rolled up exactly once
//! into per-minute, hour, day and total series, and read per company or
//! across companies. Run on SQLite and PostgreSQL.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use kira_core::auth::Principal;
use kira_core::metrics::{Resolution, Rollup};
use kira_core::task::{Priority, TaskId, TaskStatus};
use kira_store::Store;
use kira_store::agents::{Decision, ReviewInput, Step, StepKind};
use kira_store::metrics::{MetricRow, MetricsQuery};
use kira_store::work::{ClaimOutcome, Completed, Completion, Finish, RunRecords, Settlement};
use serde_json::json;

use crate::support::{Fresh, create, record, scope, t0};
use crate::work::{new_task, small_budget, submit};

conformance!(
    each_end_usage_tool_call_and_review_counts_once,
    concurrent_roll_ups_count_each_event_once,
    a_company_reads_only_its_own_series,
    pruning_keeps_the_totals,
    totals_add_up_per_company_agent_and_level,
);

fn at(seconds: i64) -> DateTime<Utc> {
    t0() + TimeDelta::seconds(seconds)
}

/// Claims `id` at `now`; the reservation's id.
async fn claim(s: &dyn Store, company: &str, id: &TaskId, now: DateTime<Utc>) -> String {
    match s
        .claim(
            &scope(company),
            id,
            "w1",
            now + TimeDelta::minutes(5),
            &small_budget(),
            now,
        )
        .await
        .expect("claim")
    {
        ClaimOutcome::Claimed { reservation, .. } => reservation.reservation_id,
        o => panic!("not claimed: {o:?}"),
    }
}

fn finish(status: TaskStatus) -> Finish {
    Finish {
        status,
        reason: "ended".into(),
        result: Some(json!({"summary": "s"})),
        confidence: Some(0.9),
        requires_human_review: status == TaskStatus::NeedsReview,
        error: (status == TaskStatus::Failed).then(|| "boom".into()),
        retry_at: None,
    }
}

fn tool_step(id: &TaskId, seq: i32) -> Step {
    Step {
        task_id: id.clone(),
        attempt: 1,
        seq,
        agent: "legal".into(),
        kind: if seq == 0 {
            StepKind::Llm
        } else {
            StepKind::Tool
        },
        prompt_tokens: 0,
        completion_tokens: 0,
        latency_ms: 5,
        detail: json!({"tool": "memory_search"}),
        at: at(30),
    }
}

/// A task of `company` submitted at t0, claimed at `claimed` s, ended at
/// `ended` s with `status`, settling `prompt`/`completion` tokens, with
/// `tools` tool steps in its trace.
#[allow(clippy::too_many_arguments)]
async fn run(
    s: &dyn Store,
    company: &str,
    agent: &str,
    status: TaskStatus,
    claimed: i64,
    ended: i64,
    (prompt, completion): (i64, i64),
    tools: i32,
) -> TaskId {
    let id = submit(s, company, &new_task(agent, Priority::High, 100)).await;
    let reservation = claim(s, company, &id, at(claimed)).await;
    let steps = (0..=tools).map(|seq| tool_step(&id, seq)).collect();
    let out = s
        .finish_batch(
            "w1",
            vec![Completion {
                scope: scope(company),
                task_id: id.clone(),
                finish: finish(status),
                settle: Some(Settlement {
                    reservation_id: reservation,
                    prompt_tokens: prompt,
                    completion_tokens: completion,
                    cost_usd: 0.25,
                }),
                records: RunRecords {
                    steps,
                    ..RunRecords::default()
                },
            }],
            at(ended),
        )
        .await
        .expect("finish");
    assert!(matches!(out[..], [Completed::Recorded]), "{out:?}");
    id
}

fn sum(rows: &[MetricRow]) -> Rollup {
    let mut total = Rollup::default();
    for r in rows {
        total.add(&r.sums);
    }
    total
}

async fn company_totals(s: &dyn Store, company: &str) -> Rollup {
    sum(&s
        .company_metrics(&scope(company), &MetricsQuery::totals())
        .await
        .expect("read"))
}

async fn roll_up_all(s: &dyn Store) {
    while s.roll_up_metrics(1_000).await.expect("roll up").events > 0 {}
    assert_eq!(s.pending_metric_events().await.expect("pending"), 0);
}

async fn each_end_usage_tool_call_and_review_counts_once(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    run(
        s,
        "acme",
        "legal",
        TaskStatus::Completed,
        2,
        12,
        (100, 20),
        2,
    )
    .await;
    run(s, "acme", "legal", TaskStatus::Failed, 4, 40, (50, 0), 0).await;
    let reviewed = run(
        s,
        "acme",
        "legal",
        TaskStatus::NeedsReview,
        1,
        70,
        (10, 5),
        1,
    )
    .await;
    // A cancel before any claim ends a run that never started.
    let cancelled = submit(s, "acme", &new_task("primary", Priority::Low, 100)).await;
    s.cancel_task(
        &scope("acme"),
        &cancelled,
        at(90),
        record(Some("acme"), "task.cancel"),
    )
    .await
    .expect("cancel");
    // The review's approval is a decision, not a second end; its rating
    // and a later one count once, the later one.
    let input = ReviewInput {
        decision: Decision::Approve { result: None },
        rating: Some(2),
        reviewer: "key:r".into(),
    };
    s.review_task(
        &scope("acme"),
        &reviewed,
        &input,
        1,
        at(100),
        record(Some("acme"), "task.review"),
    )
    .await
    .expect("review");
    s.rate_task(
        &scope("acme"),
        &reviewed,
        5,
        "key:r",
        at(110),
        record(Some("acme"), "task.rate"),
    )
    .await
    .expect("rate");

    assert!(s.pending_metric_events().await.expect("pending") > 0);
    roll_up_all(s).await;
    // Nothing is counted twice by a second roll-up.
    assert_eq!(s.roll_up_metrics(1_000).await.expect("again").events, 0);

    let total = company_totals(s, "acme").await;
    assert_eq!(
        (
            total.ended,
            total.completed,
            total.failed,
            total.needs_review,
            total.cancelled
        ),
        (4, 1, 1, 1, 1)
    );
    assert_eq!(total.prompt_tokens, 160);
    assert_eq!(total.completion_tokens, 25);
    assert!((total.cost_usd - 0.75).abs() < 1e-9, "{}", total.cost_usd);
    assert_eq!(total.tool_calls, 3);
    assert_eq!((total.reviews_approved, total.reviews_rejected), (1, 0));
    assert_eq!((total.ratings, total.rating_sum), (1, 5));
    // Response: submitted (t0) to end; queue wait: to the claim.
    assert_eq!(total.response_ms, (12 + 40 + 70 + 90) * 1_000);
    assert_eq!(total.started, 3);
    assert_eq!(total.queue_wait_ms, (2 + 4 + 1) * 1_000);
    assert_eq!(total.run_ms, (10 + 36 + 69) * 1_000);
    assert_eq!(total.response.count(), 4);

    // The minutes: t0's minute (09:30) holds the first two ends, the next
    // the third and the cancel.
    let minute = |t: DateTime<Utc>| Resolution::Minute.bucket(t);
    let minutes = s
        .company_metrics(
            &scope("acme"),
            &MetricsQuery {
                resolution: Resolution::Minute,
                from: Some(minute(t0())),
                to: Some(at(120)),
                agent: None,
            },
        )
        .await
        .expect("minutes");
    let ended_in = |b: DateTime<Utc>| -> i64 {
        minutes
            .iter()
            .filter(|r| r.key.bucket == b)
            .map(|r| r.sums.ended)
            .sum()
    };
    assert_eq!((ended_in(minute(t0())), ended_in(minute(at(60)))), (2, 2));
    assert_eq!(sum(&minutes), total, "the minutes add up to the total");
    // One agent's rows.
    let legal = s
        .company_metrics(
            &scope("acme"),
            &MetricsQuery {
                agent: Some("legal".into()),
                ..MetricsQuery::totals()
            },
        )
        .await
        .expect("legal");
    assert_eq!(sum(&legal).ended, 3);
}

async fn concurrent_roll_ups_count_each_event_once(f: Fresh) {
    let s = f.store.clone();
    create(s.as_ref(), "acme").await;
    create(s.as_ref(), "beta").await;
    for i in 0..12 {
        let company = if i % 2 == 0 { "acme" } else { "beta" };
        run(
            s.as_ref(),
            company,
            "legal",
            TaskStatus::Completed,
            1,
            5 + i,
            (10, 1),
            1,
        )
        .await;
    }
    let mut workers = Vec::new();
    for _ in 0..4 {
        let s: Arc<dyn Store> = s.clone();
        workers.push(tokio::spawn(async move {
            let mut n = 0;
            loop {
                let r = s.roll_up_metrics(3).await.expect("roll up");
                if r.events == 0 && s.pending_metric_events().await.expect("pending") == 0 {
                    return n;
                }
                n += r.events;
            }
        }));
    }
    let mut events = 0;
    for w in workers {
        events += w.await.expect("join");
    }
    // Per run at least its end (with the settlement's usage) and one tool
    // call; each counted once, whichever roll-up took it.
    assert!(events >= 24, "{events}");
    for company in ["acme", "beta"] {
        let t = company_totals(s.as_ref(), company).await;
        assert_eq!(
            (t.ended, t.completed, t.tool_calls, t.prompt_tokens),
            (6, 6, 6, 60)
        );
    }
}

async fn a_company_reads_only_its_own_series(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    create(s, "beta").await;
    run(s, "acme", "legal", TaskStatus::Completed, 1, 5, (10, 1), 0).await;
    run(s, "beta", "primary", TaskStatus::Failed, 1, 5, (20, 2), 0).await;
    roll_up_all(s).await;
    for (company, other) in [("acme", "beta"), ("beta", "acme")] {
        let rows = s
            .company_metrics(&scope(company), &MetricsQuery::totals())
            .await
            .expect("read");
        assert!(!rows.is_empty());
        assert!(rows.iter().all(|r| r.key.company_id == company), "{rows:?}");
        assert!(!rows.iter().any(|r| r.key.company_id == other));
    }
    let admin = Principal::system().admin().expect("admin");
    let all = s
        .all_metrics(&admin, &MetricsQuery::totals())
        .await
        .expect("all");
    let t = sum(&all);
    assert_eq!(
        (t.ended, t.completed, t.failed, t.prompt_tokens),
        (2, 1, 1, 30)
    );
    // The forced delete takes a company's series with it.
    s.delete_company(
        &admin.company(&crate::support::cid("beta"), kira_core::auth::Access::Write),
        record(Some("beta"), "company.delete"),
    )
    .await
    .expect("delete");
    let all = s
        .all_metrics(&admin, &MetricsQuery::totals())
        .await
        .expect("all");
    assert!(all.iter().all(|r| r.key.company_id == "acme"), "{all:?}");
}

async fn pruning_keeps_the_totals(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    run(s, "acme", "legal", TaskStatus::Completed, 1, 5, (10, 1), 0).await;
    roll_up_all(s).await;
    let removed = s
        .prune_metrics(Resolution::Minute, at(3_600))
        .await
        .expect("prune");
    assert!(removed >= 1);
    assert_eq!(
        s.prune_metrics(Resolution::Total, at(3_600))
            .await
            .expect("no-op"),
        0
    );
    let minutes = s
        .company_metrics(
            &scope("acme"),
            &MetricsQuery {
                resolution: Resolution::Minute,
                from: None,
                to: None,
                agent: None,
            },
        )
        .await
        .expect("minutes");
    assert!(minutes.is_empty());
    assert_eq!(company_totals(s, "acme").await.completed, 1);
    let hours = s
        .company_metrics(
            &scope("acme"),
            &MetricsQuery {
                resolution: Resolution::Hour,
                from: None,
                to: None,
                agent: None,
            },
        )
        .await
        .expect("hours");
    assert_eq!(sum(&hours).completed, 1);
}

/// The totals `/metrics` reads, kept by the roll-up per company, per agent
/// and per level, equal the all-time rows added up here, after several
/// roll-ups; a deleted company's row goes, what its runs added to the
/// agent and level sums stays.
async fn totals_add_up_per_company_agent_and_level(f: Fresh) {
    let s = f.store.as_ref();
    create(s, "acme").await;
    create(s, "beta").await;
    run(s, "acme", "legal", TaskStatus::Completed, 1, 5, (10, 1), 2).await;
    run(s, "acme", "legal", TaskStatus::Failed, 2, 40, (7, 3), 0).await;
    roll_up_all(s).await;
    run(s, "acme", "primary", TaskStatus::Completed, 1, 3, (5, 5), 1).await;
    run(
        s,
        "beta",
        "legal",
        TaskStatus::NeedsReview,
        1,
        900,
        (20, 2),
        0,
    )
    .await;
    roll_up_all(s).await;
    let admin = Principal::system().admin().expect("admin");
    let all = s
        .all_metrics(&admin, &MetricsQuery::totals())
        .await
        .expect("all");
    let t = s.metric_totals(&admin).await.expect("totals");
    let grouped = |rows: &[MetricRow], key: fn(&MetricRow) -> &str| {
        let mut m: std::collections::BTreeMap<String, Rollup> = Default::default();
        for r in rows {
            m.entry(key(r).to_owned()).or_default().add(&r.sums);
        }
        m.into_iter().collect::<Vec<_>>()
    };
    let pairs = |rows: &[MetricRow], key: fn(&MetricRow) -> &str| {
        rows.iter()
            .map(|r| (key(r).to_owned(), r.sums))
            .collect::<Vec<_>>()
    };
    fn company(r: &MetricRow) -> &str {
        &r.key.company_id
    }
    fn agent(r: &MetricRow) -> &str {
        &r.key.agent
    }
    fn level(r: &MetricRow) -> &str {
        &r.key.priority
    }
    assert_eq!(pairs(&t.by_company, company), grouped(&all, company));
    assert_eq!(pairs(&t.by_agent, agent), grouped(&all, agent));
    assert_eq!(pairs(&t.by_level, level), grouped(&all, level));
    assert_eq!(t.by_company.len(), 2);
    assert_eq!(t.by_agent.len(), 2);
    assert!(t.by_company.iter().all(|r| r.key.agent.is_empty()));
    assert!(t.by_agent.iter().all(|r| r.key.company_id.is_empty()));
    let acme = &t.by_company[0].sums;
    assert_eq!((acme.completed, acme.failed, acme.ended), (2, 1, 3));
    assert_eq!(acme.prompt_tokens, 22);
    assert!((acme.cost_usd - 0.75).abs() < 1e-9);

    // acme deleted: its row goes; the agents' and levels' counters keep
    // what its runs added.
    s.delete_company(&scope("acme"), record(Some("acme"), "company.delete"))
        .await
        .expect("delete acme");
    let after = s.metric_totals(&admin).await.expect("totals");
    assert_eq!(
        after
            .by_company
            .iter()
            .map(|r| r.key.company_id.as_str())
            .collect::<Vec<_>>(),
        ["beta"]
    );
    assert_eq!(after.by_agent, t.by_agent);
    assert_eq!(after.by_level, t.by_level);
}
