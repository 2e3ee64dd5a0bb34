//! The queue snapshot as a property, on both backends: for random queues
//! (levels, company multipliers, deadlines, waiting times, agents) and
//! windows, the tasks read are exactly the ones `queue_snapshot` promises:
//! the `limit` waiting longest, and when there are more, of each level the
//! first `level_window(limit)` by multiplier then waiting time, and as many
//! of the nearest deadlines; only tasks that could start, longest waiting
//! first.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{Months, TimeDelta};
use kira_core::task::Priority;
use kira_store::Store;
use kira_store::work::{Capacity, QueueEntry, level_window};
use proptest::prelude::*;

use crate::support::{Open, create, property, record, scope, t0};
use crate::work::new_task;

#[derive(Debug, Clone)]
struct Queued {
    legal: bool,
    priority: usize,
    multiplier: f64,
    deadline_hours: Option<i64>,
    waited_minutes: i64,
}

fn queued() -> impl Strategy<Value = Queued> {
    (
        any::<bool>(),
        0..5usize,
        prop::sample::select(vec![0.5, 1.0, 1.5, 2.0]),
        prop::option::of(0..48i64),
        0..6i64,
    )
        .prop_map(
            |(legal, priority, multiplier, deadline_hours, waited_minutes)| Queued {
                legal,
                priority,
                multiplier,
                deadline_hours,
                waited_minutes,
            },
        )
}

/// What the snapshot must hold, from every runnable task.
fn expected(mut all: Vec<QueueEntry>, limit: u32) -> Vec<String> {
    let by_age = |a: &QueueEntry, b: &QueueEntry| {
        (a.waiting_since, a.task_id.as_str()).cmp(&(b.waiting_since, b.task_id.as_str()))
    };
    all.sort_by(by_age);
    let limit = limit as usize;
    let mut read: Vec<QueueEntry> = all.iter().take(limit).cloned().collect();
    if all.len() >= limit {
        let w = level_window(limit as u32) as usize;
        for p in Priority::ALL {
            let mut level: Vec<&QueueEntry> = all.iter().filter(|e| e.priority == p).collect();
            level.sort_by(|a, b| b.multiplier.total_cmp(&a.multiplier).then(by_age(a, b)));
            read.extend(level.into_iter().take(w).cloned());
        }
        let mut due: Vec<&QueueEntry> = all.iter().filter(|e| e.deadline.is_some()).collect();
        due.sort_by(|a, b| (a.deadline, a.task_id.as_str()).cmp(&(b.deadline, b.task_id.as_str())));
        read.extend(due.into_iter().take(w).cloned());
    }
    read.sort_by(by_age);
    read.dedup_by(|a, b| a.task_id == b.task_id);
    read.into_iter()
        .map(|e| e.task_id.as_str().to_owned())
        .collect()
}

static CASE: AtomicUsize = AtomicUsize::new(0);

async fn case(
    store: Arc<dyn Store>,
    tasks: Vec<Queued>,
    limit: u32,
    legal_only: bool,
) -> Result<(), TestCaseError> {
    let fail = |e: kira_store::StoreError| TestCaseError::fail(e.to_string());
    let n = CASE.fetch_add(1, Ordering::SeqCst);
    let company = format!("q{n}");
    let s = store.as_ref();
    create(s, &company).await;
    let start = t0()
        .checked_add_months(Months::new(n as u32 + 1))
        .expect("date");
    let now = start + TimeDelta::minutes(10);
    for q in &tasks {
        let mut t = new_task(
            if q.legal { "legal" } else { "financial" },
            Priority::ALL[q.priority],
            100,
        );
        t.multiplier = q.multiplier;
        t.deadline = q.deadline_hours.map(|h| now + TimeDelta::hours(h));
        let at = now - TimeDelta::minutes(q.waited_minutes);
        s.submit_task(
            &scope(&company),
            &t,
            at,
            record(Some(&company), "task.submit"),
        )
        .await
        .map_err(fail)?;
    }
    let capacity = legal_only.then(|| Capacity {
        agents: [("legal".to_owned(), 1)].into(),
        per_company: 100,
        ended: Vec::new(),
    });
    let everything = s
        .queue_snapshot(now, 10_000, None)
        .await
        .map_err(fail)?
        .runnable;
    let startable: Vec<QueueEntry> = everything
        .into_iter()
        .filter(|e| !legal_only || e.agent == "legal")
        .collect();
    let snap = s
        .queue_snapshot(now, limit, capacity.as_ref())
        .await
        .map_err(fail)?;
    let got: Vec<String> = snap
        .runnable
        .iter()
        .map(|e| e.task_id.as_str().to_owned())
        .collect();
    let want = expected(startable, limit);
    // The queue is emptied for the next case before judging this one.
    s.delete_company(&scope(&company), record(Some(&company), "company.delete"))
        .await
        .map_err(fail)?;
    prop_assert_eq!(got, want, "limit {}, legal only {}", limit, legal_only);
    Ok(())
}

#[test]
fn sqlite_snapshots_read_what_they_promise() {
    run(|| Box::pin(crate::support::sqlite()), 64);
}

#[test]
fn postgres_snapshots_read_what_they_promise() {
    run(|| Box::pin(crate::support::postgres()), 32);
}

fn run(open: Open, cases: u32) {
    let strategy = (
        proptest::collection::vec(queued(), 0..24),
        1..12u32,
        any::<bool>(),
    );
    property(
        "queue snapshot",
        open,
        cases,
        strategy,
        |store, (tasks, limit, legal_only)| case(store, tasks, limit, legal_only),
    );
}
