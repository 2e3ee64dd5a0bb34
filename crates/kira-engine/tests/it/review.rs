//! Human review through the engine, on SQLite and PostgreSQL: results an
//! executor flags for review wait, a rejected task is run again by the
//! scheduler (even after its last attempt), and an approved result becomes
//! one `task_result` memory of the company.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::TimeDelta;
use kira_core::CompanyId;
use kira_core::audit::{AuditRecord, Outcome};
use kira_core::auth::{Access, CompanyScope, Principal};
use kira_core::clock::ManualClock;
use kira_core::company::NewCompany;
use kira_core::memory::{EventType, Memory, Workstream};
use kira_core::task::{Priority, Task, TaskId, TaskRequest, TaskStatus};
use kira_engine::executor::{ExecOutcome, Executor, Run};
use kira_engine::review::RESULT_CATEGORY;
use kira_engine::{Engine, EngineConfig};
use kira_store::Store;
use kira_store::agents::{Decision, ReviewInput};
use kira_store::memory::{Archived, MemoryFilter};
use serde_json::json;

use crate::common::{Backend, fresh_store, t0};

struct Setup {
    store: Arc<dyn Store>,
    clock: Arc<ManualClock>,
    _dir: Option<tempfile::TempDir>,
}

async fn setup(backend: Backend) -> Setup {
    let (store, dir) = fresh_store(backend).await;
    let s = Setup {
        store,
        clock: Arc::new(ManualClock::new(t0())),
        _dir: dir,
    };
    let (_, p) = serde_json::from_value::<NewCompany>(json!({
        "id": "acme", "name": "Acme", "industry": "fintech", "jurisdiction": "US-DE"
    }))
    .expect("json")
    .validate()
    .expect("valid");
    s.store
        .create_company(&scope(), &p, t0(), audit("company.create"))
        .await
        .expect("create");
    s
}

fn scope() -> CompanyScope {
    Principal::system()
        .scope(&CompanyId::parse("acme").expect("id"), Access::Write)
        .expect("scope")
}

fn audit(action: &str) -> AuditRecord {
    AuditRecord {
        at: t0(),
        request_id: String::new(),
        actor: "system".into(),
        company_id: CompanyId::parse("acme").ok(),
        action: action.into(),
        target: "test".into(),
        outcome: Outcome::Ok,
        detail: String::new(),
    }
}

/// Answers every task with low confidence and asks for a human.
struct Unsure;

#[async_trait]
impl Executor for Unsure {
    fn name(&self) -> &str {
        "unsure"
    }
    async fn execute(&self, run: &mut Run) -> ExecOutcome {
        ExecOutcome::Done {
            result: json!({
                "summary": format!("Draft for attempt {}", run.task.attempts),
                "answer": "Probably fine.",
            }),
            confidence: 0.4,
            requires_human_review: true,
        }
    }
}

fn engine(s: &Setup, cfg: EngineConfig) -> Engine {
    Engine::with_executor(s.store.clone(), s.clock.clone(), cfg, Arc::new(Unsure))
}

async fn submit(e: &Engine, task_type: &str, p: Priority) -> TaskId {
    let req = TaskRequest {
        task: format!("{task_type} for acme"),
        task_type: task_type.into(),
        priority: p,
        deadline: None,
        parameters: None,
        specialist: None,
    };
    e.tasks()
        .submit(&scope(), &req, None, audit("task.submit"))
        .await
        .expect("submit")
        .task
        .task_id
}

/// One scheduling pass, its runs awaited; the tasks it claimed.
async fn tick(e: &Engine) -> Vec<TaskId> {
    let r = e.scheduler().tick().await.expect("tick");
    for h in r.runs {
        h.await.expect("run");
    }
    r.claimed
}

async fn task(s: &Setup, id: &TaskId) -> Task {
    s.store.get_task(&scope(), id).await.expect("task")
}

fn input(decision: Decision, rating: Option<u8>) -> ReviewInput {
    ReviewInput {
        decision,
        rating,
        reviewer: "key:reviewer".into(),
    }
}

fn reject(feedback: &str) -> ReviewInput {
    input(
        Decision::Reject {
            feedback: feedback.into(),
        },
        None,
    )
}

async fn decide(e: &Engine, id: &TaskId, i: ReviewInput) -> Task {
    e.reviews()
        .apply(&scope(), id, i, e.clock().now(), audit("task.review"))
        .await
        .expect("review")
}

async fn result_memories(s: &Setup) -> Vec<Memory> {
    let filter = MemoryFilter {
        event_type: Some(EventType::TaskResult),
        archived: Archived::Include,
        ..MemoryFilter::default()
    };
    s.store
        .list_memories(&scope(), &filter, None, 100)
        .await
        .expect("memories")
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Backend::Sqlite).await } )* }
        mod postgres { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Backend::Postgres).await } )* }
    };
}

both!(
    a_rejected_task_runs_again_and_its_approval_is_remembered_once,
    max_requeues_comes_from_the_configuration,
    an_edited_result_is_what_is_remembered,
);

async fn a_rejected_task_runs_again_and_its_approval_is_remembered_once(b: Backend) {
    let s = setup(b).await;
    let mut cfg = EngineConfig::default();
    // One attempt only: the rerun a rejection asks for must still happen.
    cfg.scheduler.max_attempts = 1;
    let e = engine(&s, cfg);
    e.budget()
        .company_changed(&CompanyId::parse("acme").expect("id"))
        .await
        .expect("refresh");
    let id = submit(&e, "complex_legal_analysis", Priority::High).await;
    assert_eq!(tick(&e).await, std::slice::from_ref(&id));
    let t = task(&s, &id).await;
    assert_eq!(
        (t.status, t.attempts, t.max_attempts),
        (TaskStatus::NeedsReview, 1, 1)
    );

    s.clock.advance(TimeDelta::minutes(5));
    let t = decide(&e, &id, reject("Cite the clause numbers.")).await;
    assert_eq!(t.status, TaskStatus::Queued);
    assert!(result_memories(&s).await.is_empty(), "nothing accepted yet");
    assert_eq!(
        tick(&e).await,
        std::slice::from_ref(&id),
        "the scheduler runs it again"
    );
    let t = task(&s, &id).await;
    assert_eq!((t.status, t.attempts), (TaskStatus::NeedsReview, 2));
    assert_eq!(
        t.result.as_ref().map(|r| r["summary"].clone()),
        Some(json!("Draft for attempt 2"))
    );

    s.clock.advance(TimeDelta::minutes(5));
    let t = decide(&e, &id, input(Decision::Approve { result: None }, Some(5))).await;
    assert_eq!(t.status, TaskStatus::Completed);
    let memories = result_memories(&s).await;
    assert_eq!(memories.len(), 1, "{memories:?}");
    let m = &memories[0];
    assert_eq!(
        (
            m.event_type,
            m.workstream,
            m.category.as_str(),
            m.source.as_deref()
        ),
        (
            EventType::TaskResult,
            Workstream::Legal,
            RESULT_CATEGORY,
            Some(id.as_str())
        )
    );
    assert_eq!(
        m.importance, 8,
        "high is 7, and a specialist (legal) ran it"
    );
    assert_eq!(Some(m.occurred_at), t.finished_at);
    assert_eq!(
        m.content,
        json!({
            "text": "Draft for attempt 2\n\nProbably fine.",
            "task_id": id.as_str(),
            "task_type": "complex_legal_analysis",
            "confidence": 0.4,
        })
    );

    // Recording again, as a retry or a later job might, adds nothing.
    for _ in 0..2 {
        e.reviews()
            .remember_result(&scope(), &t)
            .await
            .expect("again");
    }
    assert_eq!(result_memories(&s).await.len(), 1);
    // And neither does a task that is not completed.
    let other = submit(&e, "quick_question_answer", Priority::Low).await;
    tick(&e).await;
    e.reviews()
        .remember_result(&scope(), &task(&s, &other).await)
        .await
        .expect("not completed");
    assert_eq!(result_memories(&s).await.len(), 1);
}

async fn max_requeues_comes_from_the_configuration(b: Backend) {
    let s = setup(b).await;
    let mut cfg = EngineConfig::default();
    cfg.review.max_requeues = 0;
    let e = engine(&s, cfg);
    e.budget()
        .company_changed(&CompanyId::parse("acme").expect("id"))
        .await
        .expect("refresh");
    let id = submit(&e, "complex_legal_analysis", Priority::Medium).await;
    tick(&e).await;
    let t = decide(&e, &id, reject("Wrong jurisdiction.")).await;
    assert_eq!(t.status, TaskStatus::Failed, "no requeues allowed");
    assert!(tick(&e).await.is_empty());
    assert!(result_memories(&s).await.is_empty());
    let r = e
        .reviews()
        .apply(
            &scope(),
            &id,
            input(Decision::Approve { result: None }, None),
            e.clock().now(),
            audit("task.review"),
        )
        .await;
    assert!(
        matches!(
            r,
            Err(kira_engine::EngineError::Store(
                kira_store::StoreError::Conflict(_)
            ))
        ),
        "{r:?}"
    );
}

async fn an_edited_result_is_what_is_remembered(b: Backend) {
    let s = setup(b).await;
    let e = engine(&s, EngineConfig::default());
    e.budget()
        .company_changed(&CompanyId::parse("acme").expect("id"))
        .await
        .expect("refresh");
    let id = submit(&e, "quick_question_answer", Priority::Low).await;
    tick(&e).await;
    let edited = json!({"summary": "Runway is 14 months.", "answer": "Raise in Q3."});
    let t = decide(
        &e,
        &id,
        input(
            Decision::Approve {
                result: Some(edited.clone()),
            },
            None,
        ),
    )
    .await;
    assert_eq!(t.result, Some(edited));
    let memories = result_memories(&s).await;
    assert_eq!(memories.len(), 1);
    let m = &memories[0];
    assert_eq!(m.text(), "Runway is 14 months.\n\nRaise in Q3.");
    assert_eq!(
        (m.workstream, m.importance),
        (Workstream::General, 3),
        "low, run by the primary agent"
    );
    // It is found like any memory.
    let hits = e
        .memory()
        .search(&scope(), "runway", &MemoryFilter::default(), 5)
        .await
        .expect("search");
    assert_eq!(hits.first().map(|h| h.memory.id), Some(m.id));
}
