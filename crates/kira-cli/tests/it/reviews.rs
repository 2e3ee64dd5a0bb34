//! Review and traces through the CLI against a real `kira serve`.
//!
//! No executor kira ships asks for a human yet (the simulated one never
//! does), so the test plays the worker: tasks are submitted with the CLI,
//! then claimed, finished into `needs_review` and given a trace through the
//! store, on the server's own SQLite file, as a worker process would.
//! Everything a reviewer does afterwards goes through the binary.

use std::path::Path;

use chrono::TimeDelta;
use kira_core::CompanyId;
use kira_core::auth::{Access, Principal};
use kira_core::clock::{Clock, SystemClock};
use kira_core::task::{TaskId, TaskStatus};
use kira_store::agents::{AgentStore, Step, StepKind};
use kira_store::sqlite::SqliteStore;
use kira_store::work::{ClaimOutcome, Finish, TaskStore};
use serde_json::{Value, json};

use crate::support::{Server, block_on, fails, ok, ok_json, s};

fn add_company(server: &Server, id: &str) {
    ok(server.kira().args([
        "company",
        "add",
        id,
        "--name",
        id,
        "--industry",
        "fintech",
        "--jurisdiction",
        "GB",
    ]));
}

fn submit(server: &Server, company: &str, text: &str, task_type: &str) -> String {
    let v = ok_json(server.kira().args([
        "task",
        "submit",
        company,
        text,
        "--type",
        task_type,
        "--priority",
        "high",
    ]));
    s(&v, "task_id").to_owned()
}

fn key(server: &Server, role: &str, company: &str) -> String {
    let v = ok_json(server.kira().args([
        "admin",
        "create-key",
        "--name",
        &format!("{company}-{role}"),
        "--role",
        role,
        "--company",
        company,
    ]));
    s(&v, "token").to_owned()
}

/// Runs `id` as a worker whose agent asked for a human: claimed, its steps
/// recorded (a task message to the legal specialist, its model call and
/// tool call, the response, the end), finished into needs_review.
async fn run_into_review(db: &Path, id: &str, with_messages: bool) {
    let store = SqliteStore::open(&format!("sqlite://{}", db.display()))
        .await
        .expect("open the server's database");
    let tid = TaskId::parse(id).expect("task id");
    let scope = Principal::system()
        .scope(
            &CompanyId::parse(tid.company_part()).expect("company"),
            Access::Write,
        )
        .expect("scope");
    let now = SystemClock.now();
    let budget = kira_engine::EngineConfig::default().budget;
    let claimed = store
        .claim(
            &scope,
            &tid,
            "test-worker",
            now + TimeDelta::hours(1),
            &budget,
            now,
        )
        .await
        .expect("claim");
    assert!(
        matches!(claimed, ClaimOutcome::Claimed { .. }),
        "{claimed:?}"
    );
    let step = |seq, kind, agent: &str, prompt, completion, detail| Step {
        task_id: tid.clone(),
        attempt: 1,
        seq,
        agent: agent.into(),
        kind,
        prompt_tokens: prompt,
        completion_tokens: completion,
        latency_ms: 400,
        detail,
        at: now,
    };
    let mut steps = vec![
        step(
            1,
            StepKind::Llm,
            "legal",
            1200,
            300,
            json!({"model": "gpt-test", "finish_reason": "tool_calls", "content": "",
                   "tool_calls": [{"id": "c1", "name": "search_memory", "arguments": {"q": "NDA"}}]}),
        ),
        step(
            2,
            StepKind::Tool,
            "legal",
            0,
            0,
            json!({"call_id": "c1", "name": "search_memory", "arguments": {"q": "NDA"}, "result": "2 hits"}),
        ),
        step(
            4,
            StepKind::End,
            "legal",
            0,
            0,
            json!({"status": "needs_review", "reason": "confidence 0.42"}),
        ),
    ];
    if with_messages {
        steps.push(step(
            0,
            StepKind::TaskMessage,
            "primary",
            0,
            0,
            json!({"task": "Review the NDA for unusual clauses", "type": "complex_legal_analysis"}),
        ));
        steps.push(step(
            3,
            StepKind::ResponseMessage,
            "legal",
            0,
            0,
            json!({"status": "completed", "confidence": 0.42,
                   "result": {"summary": "Clause 7 is one-sided"}}),
        ));
    }
    store.record_steps(&scope, &steps).await.expect("steps");
    let finish = Finish {
        status: TaskStatus::NeedsReview,
        reason: "confidence below the threshold".into(),
        result: Some(json!({"summary": "Clause 7 is one-sided", "answer": "Negotiate clause 7."})),
        confidence: Some(0.42),
        requires_human_review: true,
        error: None,
        retry_at: None,
    };
    store
        .finish(&scope, &tid, "test-worker", finish, now)
        .await
        .expect("finish");
    store.close().await;
}

fn ids(list: &Value) -> Vec<String> {
    list["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| s(t, "task_id").to_owned())
        .collect()
}

#[test]
fn reviewing_through_the_cli() {
    let work = tempfile::tempdir().expect("temp dir");
    let server = Server::start(work.path(), &[]);
    let db = server.data_dir.join("kira.db");
    add_company(&server, "acme");
    add_company(&server, "beta");
    let nda = submit(&server, "acme", "Review the NDA", "complex_legal_analysis");
    let lease = submit(
        &server,
        "acme",
        "Review the lease",
        "complex_legal_analysis",
    );
    let theirs = submit(&server, "beta", "Review the MSA", "complex_legal_analysis");
    let queued = submit(&server, "acme", "Weekly status", "routine_status_update");
    block_on(async {
        run_into_review(&db, &nda, true).await;
        run_into_review(&db, &lease, false).await;
        run_into_review(&db, &theirs, false).await;
    });
    let operator = key(&server, "operator", "acme");
    let viewer = key(&server, "viewer", "acme");

    // An admin's list covers every company; a company key's, its own.
    let all = ok_json(server.kira().args(["review", "list"]));
    let mut got = ids(&all);
    got.sort();
    let mut want = vec![nda.clone(), lease.clone(), theirs.clone()];
    want.sort();
    assert_eq!(got, want, "{all}");
    let table = ok(server.kira().args(["review", "list"]));
    assert!(table.contains(&nda) && table.contains(&theirs), "{table}");
    assert!(table.contains("Clause 7 is one-sided"), "{table}");
    assert!(table.contains("0.42"), "{table}");
    let beta = ok_json(server.kira().args(["review", "list", "--company", "beta"]));
    assert_eq!(ids(&beta), std::slice::from_ref(&theirs));
    let mine = ok_json(server.kira_as(&viewer).args(["review", "list"]));
    let mut mine = ids(&mine);
    mine.sort();
    let mut acme = vec![nda.clone(), lease.clone()];
    acme.sort();
    assert_eq!(mine, acme, "a company key sees its own company's reviews");

    // The trace: a readable table, or every detail with --json.
    let trace = ok(server.kira_as(&viewer).args(["task", "trace", &nda]));
    for needle in [
        "task_message",
        "response_message",
        "llm",
        "tool",
        "1200/300",
        "400 ms",
        "calls search_memory",
        "search_memory(",
        "-> 2 hits",
        "Review the NDA for unusual clauses",
        "5 steps, 1200/300 tokens, 2000 ms",
    ] {
        assert!(trace.contains(needle), "{needle:?} in:\n{trace}");
    }
    let raw = ok_json(server.kira().args(["task", "trace", &nda]));
    let seqs: Vec<i64> = raw["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["seq"].as_i64().expect("seq"))
        .collect();
    assert_eq!(seqs, [0, 1, 2, 3, 4], "in order");
    assert_eq!(
        raw["steps"][1]["detail"]["tool_calls"][0]["name"],
        "search_memory"
    );

    // `task show` adds the messages between the agents, when there are any.
    let shown = ok(server.kira().args(["task", "show", &nda]));
    assert!(shown.contains("messages:"), "{shown}");
    assert!(shown.contains("task message (primary"), "{shown}");
    assert!(shown.contains("response message (legal"), "{shown}");
    assert!(
        shown.contains("Review the NDA for unusual clauses"),
        "{shown}"
    );
    let plain = ok(server.kira().args(["task", "show", &lease]));
    assert!(!plain.contains("messages:"), "{plain}");
    let as_json = ok_json(server.kira().args(["task", "show", &nda]));
    assert_eq!(
        s(&as_json, "status"),
        "needs_review",
        "--json is the task alone"
    );

    let before = ok(server.kira().args(["review", "show", &nda]));
    assert!(before.contains("Negotiate clause 7."), "{before}");
    assert!(
        before.contains("0.42") && before.contains("no reviews"),
        "{before}"
    );

    // Reject one: it goes back to the queue with the feedback.
    let out = ok(server.kira_as(&operator).args([
        "review",
        "reject",
        &nda,
        "--feedback",
        "Cite the governing law.",
        "--rating",
        "2",
    ]));
    assert!(out.contains("queued to run again"), "{out}");
    assert!(out.contains("Cite the governing law."), "{out}");
    let after = ok_json(server.kira().args(["review", "show", &nda]));
    assert_eq!(s(&after["task"], "status"), "queued");
    assert_eq!(after["reviews"][0]["decision"], "rejected");
    assert_eq!(after["reviews"][0]["feedback"], "Cite the governing law.");
    assert_eq!(after["reviews"][0]["rating"], 2);
    let table = ok(server.kira().args(["review", "show", &nda]));
    assert!(
        table.contains("rejected") && table.contains("Cite the governing law."),
        "{table}"
    );

    // Approve another with an edited result: it completes and is remembered.
    let edited = work.path().join("edited.json");
    std::fs::write(
        &edited,
        r#"{"summary": "Clause 7 is one-sided", "answer": "Strike clause 7, then sign."}"#,
    )
    .expect("write");
    let out = ok(server.kira_as(&operator).args([
        "review",
        "approve",
        &lease,
        "--result",
        edited.to_str().expect("utf-8"),
        "--rating",
        "5",
    ]));
    assert!(out.contains("completed"), "{out}");
    let task = ok_json(server.kira().args(["task", "show", &lease]));
    assert_eq!(task["result"]["answer"], "Strike clause 7, then sign.");
    let memories = ok_json(
        server
            .kira()
            .args(["memory", "list", "acme", "--type", "task_result"]),
    );
    let list = memories["memories"].as_array().expect("memories");
    assert_eq!(list.len(), 1, "{memories}");
    assert_eq!(list[0]["source"], lease.as_str());
    assert_eq!(
        list[0]["content"]["text"],
        "Clause 7 is one-sided\n\nStrike clause 7, then sign."
    );

    // Ratings.
    let out = ok(server
        .kira_as(&operator)
        .args(["review", "rate", &lease, "4"]));
    assert_eq!(out.trim(), format!("rated task {lease}: 4 of 5"));
    let reviews = ok_json(server.kira().args(["review", "show", &lease]));
    let ratings: Vec<i64> = reviews["reviews"]
        .as_array()
        .expect("reviews")
        .iter()
        .filter_map(|r| r["rating"].as_i64())
        .collect();
    assert_eq!(ratings, [5, 4]);

    // Refusals say why, and change nothing.
    let e = fails(
        server
            .kira_as(&operator)
            .args(["review", "reject", &lease, "--feedback", "too late"]),
        1,
    );
    assert!(e.stderr.contains("not needs_review"), "{}", e.stderr);
    let e = fails(
        server.kira_as(&viewer).args(["review", "approve", &theirs]),
        1,
    );
    assert!(
        e.stderr.contains("not found"),
        "another company's task: {}",
        e.stderr
    );
    let e = fails(
        server
            .kira_as(&viewer)
            .args(["review", "rate", &lease, "3"]),
        1,
    );
    assert!(e.stderr.contains("role"), "{}", e.stderr);
    let e = fails(server.kira().args(["review", "rate", &queued, "3"]), 1);
    assert!(e.stderr.contains("queued"), "{}", e.stderr);
    let e = fails(server.kira().args(["review", "rate", &lease, "9"]), 2);
    assert!(e.stderr.contains("9"), "{}", e.stderr);
    let list = work.path().join("list.json");
    std::fs::write(&list, "[1, 2]").expect("write");
    let e = fails(
        server.kira().args([
            "review",
            "approve",
            &theirs,
            "--result",
            list.to_str().expect("utf-8"),
        ]),
        1,
    );
    assert!(e.stderr.contains("JSON object"), "{}", e.stderr);
    let e = fails(
        server
            .kira()
            .args(["review", "reject", &theirs, "--feedback", "  "]),
        1,
    );
    assert!(e.stderr.contains("--feedback"), "{}", e.stderr);
    let e = fails(server.kira().args(["review", "show", "acme"]), 1);
    assert!(e.stderr.contains("task_id"), "{}", e.stderr);
    let beta = ok_json(server.kira().args(["review", "list", "--company", "beta"]));
    assert_eq!(ids(&beta), [theirs], "beta's task still waits");
    assert!(server.stop().success());
}
