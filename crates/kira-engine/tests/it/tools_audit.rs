//! The wrapper's audit entries (issue 23): a call returns once its entry is
//! handed to the group writer, not once it is committed, and what must
//! follow the entry waits for it: a run's end, an operator's test call,
//! kira stopping. Every call (ok, the tool's error, refused) leaves exactly
//! one entry in its company's trail, on both backends. On PostgreSQL a gate
//! (an advisory lock every `tool.call` insert takes, held by the test)
//! keeps the entries from being written, so the tests see what waits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kira_core::audit::{AuditEntry, Outcome};
use kira_core::auth::Principal;
use kira_core::task::TaskStatus;
use kira_engine::tools::CallContext;
use kira_engine::{Engine, EngineConfig};
use kira_store::AuditPage;
use serde_json::json;
use sqlx::Connection;

use crate::agents::{
    FakeLlm, audit, completion, engine_with, run_all, scope, setup, submit, submit_task, tool_call,
};
use crate::common::Backend;

/// The key of the gate's advisory lock.
const GATE: i64 = 4_223;

/// Holds `tool.call` audit inserts back until opened (PostgreSQL).
struct Gate(sqlx::PgConnection);

impl Gate {
    /// Puts the gate on the database at `url`, closed.
    async fn closed(url: &str) -> Gate {
        let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
        sqlx::raw_sql(
            "CREATE FUNCTION kira_test_gate() RETURNS trigger LANGUAGE plpgsql \
             SECURITY DEFINER AS $$ BEGIN PERFORM pg_advisory_xact_lock_shared(4223); \
             RETURN NEW; END $$; \
             CREATE TRIGGER kira_test_gate BEFORE INSERT ON audit_log FOR EACH ROW \
             WHEN (NEW.action = 'tool.call') EXECUTE FUNCTION kira_test_gate();",
        )
        .execute(&mut c)
        .await
        .expect("gate");
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(GATE)
            .execute(&mut c)
            .await
            .expect("close");
        Gate(c)
    }

    /// Waits (10 s at most) until an entry's insert waits at the gate.
    async fn holds_an_entry(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
                 AND objid = $1 AND NOT granted",
            )
            .bind(GATE)
            .fetch_one(&mut self.0)
            .await
            .expect("locks");
            if waiting > 0 {
                return;
            }
            assert!(Instant::now() < deadline, "no audit entry reached the gate");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn open(mut self) {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(GATE)
            .execute(&mut self.0)
            .await
            .expect("open");
    }
}

/// How long something that must wait for the gate is watched: a broken
/// wait ends at once; a correct one never ends while the gate is closed.
const WATCH: Duration = Duration::from_millis(500);

/// Watches `done` for [`WATCH`]: false when it became true.
async fn stays_false(mut done: impl AsyncFnMut() -> bool) -> bool {
    let until = Instant::now() + WATCH;
    while Instant::now() < until {
        if done().await {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    !done().await
}

fn cx(scope: &kira_core::auth::CompanyScope) -> CallContext<'_> {
    CallContext {
        scope,
        actor: "test",
        request_id: "test-call",
        tokens_left: None,
    }
}

/// The company's `tool.call` entries as committed now (no waiting for the
/// writer).
pub(crate) async fn committed_calls(e: &Engine, company: &str) -> Vec<AuditEntry> {
    e.audit()
        .list_company(
            &scope(company),
            AuditPage {
                after_seq: 0,
                limit: 1_000,
            },
        )
        .await
        .expect("audit")
        .into_iter()
        .filter(|a| a.action == "tool.call")
        .collect()
}

fn memory_domain() -> Vec<String> {
    vec!["memory".to_owned()]
}

async fn every_call_leaves_exactly_one_entry_in_its_companys_chain(b: Backend) {
    let s = setup(b).await;
    let mut cfg = EngineConfig::default();
    cfg.tools.calls_per_minute = 3;
    let e = Engine::new(s.store.clone(), s.clock.clone(), cfg);
    let acme = scope("acme");
    let offer = e
        .tools()
        .offer(&acme, &memory_domain())
        .await
        .expect("offer");
    let query = json!({"query": "renewal"});
    let mut outcomes = Vec::new();
    for (name, args) in [
        ("search_memory", &query),
        // The tool's own error: no query.
        ("search_memory", &json!({})),
        // Not offered.
        ("search_knowledge", &query),
        ("search_memory", &query),
        // The company's minute is full.
        ("search_memory", &query),
    ] {
        outcomes.push(e.tools().call(&offer, &cx(&acme), name, args).await.outcome);
    }
    assert_eq!(
        outcomes,
        ["ok", "error", "refused", "ok", "refused"],
        "{outcomes:?}"
    );
    offer.unwritten().written().await.expect("written");
    assert_eq!(offer.unwritten().left(), 0);
    let entries = committed_calls(&e, "acme").await;
    let got: Vec<(&str, Outcome)> = entries
        .iter()
        .map(|a| (a.target.as_str(), a.outcome))
        .collect();
    assert_eq!(
        got,
        [
            ("search_memory", Outcome::Ok),
            ("search_memory", Outcome::Error),
            ("search_knowledge", Outcome::Denied),
            ("search_memory", Outcome::Ok),
            ("search_memory", Outcome::Denied),
        ],
        "one entry per call, in the order of the calls"
    );
    assert!(committed_calls(&e, "globex").await.is_empty());
    let report = e
        .audit()
        .verify(&Principal::system().admin().expect("admin"), audit("acme"))
        .await
        .expect("verify");
    assert!(report.ok && report.first_broken.is_none(), "{report:?}");
}

#[tokio::test]
async fn every_call_leaves_exactly_one_entry_in_its_companys_chain_sqlite() {
    every_call_leaves_exactly_one_entry_in_its_companys_chain(Backend::Sqlite).await;
}

#[tokio::test]
async fn every_call_leaves_exactly_one_entry_in_its_companys_chain_postgres() {
    every_call_leaves_exactly_one_entry_in_its_companys_chain(Backend::Postgres).await;
}

/// A run's end, with the entry of its tool call: recorded right after the
/// end, with no wait for the writer.
async fn a_runs_end_is_recorded_after_its_calls_entries(b: Backend) {
    let s = setup(b).await;
    let fake = FakeLlm::start(None, |n, _req| match n {
        0 => completion(
            tool_call("call_1", "search_memory", json!({"query": "renewal"})),
            300,
            20,
        ),
        _ => completion(submit("None found.", "Nothing recorded.", 0.9), 400, 30),
    })
    .await;
    let e = engine_with(&s, &fake, EngineConfig::default(), Arc::default());
    let id = submit_task(&e, "acme", "When does it renew?", "complex_legal_analysis").await;
    run_all(&e).await;
    let task = s.store.get_task(&scope("acme"), &id).await.expect("task");
    assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
    let entries = committed_calls(&e, "acme").await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].request_id, id.to_string());
    assert_eq!(e.tools().unwritten().left(), 0);
}

#[tokio::test]
async fn a_runs_end_is_recorded_after_its_calls_entries_sqlite() {
    a_runs_end_is_recorded_after_its_calls_entries(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_runs_end_is_recorded_after_its_calls_entries_postgres() {
    a_runs_end_is_recorded_after_its_calls_entries(Backend::Postgres).await;
}

/// With the entry held back: the run goes on past its call (the call did
/// not wait for the commit), and its end waits for the entry. The answer's
/// low confidence sends it to review, an end that writes no audit entry of
/// its own (one would queue behind the held entry on the chain's head).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_end_waits_for_its_calls_held_entry_postgres() {
    let s = setup(Backend::Postgres).await;
    let fake = FakeLlm::start(None, |n, _req| match n {
        0 => completion(
            tool_call("call_1", "search_memory", json!({"query": "renewal"})),
            300,
            20,
        ),
        _ => completion(submit("Unsure.", "Maybe March.", 0.1), 400, 30),
    })
    .await;
    let e = engine_with(&s, &fake, EngineConfig::default(), Arc::default());
    let id = submit_task(&e, "acme", "When does it renew?", "complex_legal_analysis").await;
    let mut gate = Gate::closed(&s.url).await;
    let run = {
        let e = e.clone();
        tokio::spawn(async move { run_all(&e).await })
    };
    gate.holds_an_entry().await;
    // The model was asked again: the call returned with its entry held.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fake.seen().len() < 2 {
        assert!(Instant::now() < deadline, "the call waited for its entry");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let store = s.store.clone();
    let id2 = id.clone();
    let held = stays_false(async || {
        let t = store.get_task(&scope("acme"), &id2).await.expect("task");
        t.status != TaskStatus::Running
    })
    .await;
    assert!(held, "the run's end was recorded before its call's entry");
    assert!(committed_calls(&e, "acme").await.is_empty());
    gate.open().await;
    run.await.expect("run");
    let task = s.store.get_task(&scope("acme"), &id).await.expect("task");
    assert_eq!(task.status, TaskStatus::NeedsReview, "{task:?}");
    assert_eq!(committed_calls(&e, "acme").await.len(), 1);
}

/// `kira tools test` (and the API's) answers once its entry is written;
/// kira stopping writes every entry handed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_test_call_and_stopping_wait_for_held_entries_postgres() {
    let s = setup(Backend::Postgres).await;
    let e = Engine::new(s.store.clone(), s.clock.clone(), EngineConfig::default());
    let acme = scope("acme");
    let offer = e
        .tools()
        .offer(&acme, &memory_domain())
        .await
        .expect("offer");
    let mut gate = Gate::closed(&s.url).await;
    // A run's call returns at once, its entry held.
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        e.tools()
            .call(&offer, &cx(&acme), "search_memory", &json!({"query": "x"})),
    )
    .await
    .expect("the call does not wait for its entry");
    assert_eq!(r.outcome, "ok");
    gate.holds_an_entry().await;
    assert_eq!(offer.unwritten().left(), 1);

    let test = {
        let (e, acme) = (e.clone(), acme.clone());
        tokio::spawn(async move {
            e.tools()
                .test(
                    &acme,
                    "search_memory",
                    &json!({"query": "y"}),
                    "operator",
                    "req-1",
                )
                .await
        })
    };
    assert!(
        stays_false(async || test.is_finished()).await,
        "the test call answered before its entry was written"
    );
    let stop = {
        let e = e.clone();
        tokio::spawn(async move { e.tools().stop().await })
    };
    assert!(
        stays_false(async || stop.is_finished()).await,
        "stopping did not wait for the entries"
    );
    gate.open().await;
    let r = test.await.expect("joined").expect("test");
    assert_eq!(r.outcome, "ok");
    let entries = committed_calls(&e, "acme").await;
    assert_eq!(
        entries.len(),
        2,
        "the test call's entry is written when it answers"
    );
    assert_eq!(entries[1].actor, "operator");
    stop.await.expect("stopped");
    assert_eq!(e.tools().unwritten().left(), 0);
}
