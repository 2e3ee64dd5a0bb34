//! Tasks and budgets through the CLI: a server with the simulated executor
//! runs what is submitted and accounts for every token; a server without
//! an executor only queues; bad submissions are refused with the field
//! named and change nothing.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::support::{Server, fails, ok, ok_json, s, wait_for};

/// A server whose kira.toml (read from its work dir) configures the
/// simulated executor, with latency so a run can be watched, and a small
/// budget.
pub const SIMULATED: &str = "\
[budget]
total_tokens = 100000

[executor]
kind = \"simulated\"
latency_ms_min = 200
latency_ms_max = 400
";

pub fn add_company(server: &Server, id: &str) {
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

/// Submits a task; its JSON.
fn submit(server: &Server, company: &str, text: &str, args: &[&str]) -> Value {
    let mut cmd = server.kira();
    cmd.args(["task", "submit", company, text]).args(args);
    ok_json(&mut cmd)
}

fn status_of(server: &Server, id: &str) -> String {
    let task = ok_json(server.kira().args(["task", "show", id]));
    s(&task, "status").to_owned()
}

/// Starts `kira serve` in `work`, with `config` as its ./kira.toml.
pub fn start_in(work: &Path, config: Option<&str>, args: &[&str]) -> Server {
    if let Some(text) = config {
        std::fs::write(work.join("kira.toml"), text).expect("write kira.toml");
    }
    Server::start(work, args)
}

#[test]
fn the_simulated_executor_runs_tasks_within_the_budget() {
    let work = tempfile::tempdir().expect("temp dir");
    let server = start_in(work.path(), Some(SIMULATED), &[]);
    run_simulated_story(&server);
    assert!(server.stop().success());
}

/// Shared with the PostgreSQL test: both backends run the same queue.
pub fn run_simulated_story(server: &Server) {
    assert!(
        server
            .stderr()
            .contains("executor: simulated (results are marked simulated)"),
        "{}",
        server.stderr()
    );
    add_company(server, "acme");
    add_company(server, "beta");

    let review = submit(
        server,
        "acme",
        "Review the acquisition agreement",
        &["--type", "complex_legal_analysis", "--priority", "high"],
    );
    let review_id = s(&review, "task_id").to_owned();
    assert!(review_id.starts_with("acme_legal_"), "{review}");

    // Watching follows the run live and ends when it does.
    let watch = ok(server.kira().args(["task", "watch", &review_id]));
    let lines: Vec<&str> = watch.lines().collect();
    assert!(lines.len() >= 3, "one line per change:\n{watch}");
    assert!(lines.iter().all(|l| l.contains(&review_id)), "{watch}");
    assert!(lines[0].contains("queued"), "{watch}");
    assert!(watch.contains("queued -> running"), "{watch}");
    assert!(
        lines
            .last()
            .is_some_and(|l| l.contains("running -> completed")),
        "{watch}"
    );

    let deadline = "2099-01-01T00:00:00Z";
    let others = [
        submit(
            server,
            "acme",
            "What is our runway?",
            &["--type", "quick_question_answer", "--priority", "low"],
        ),
        submit(
            server,
            "acme",
            "Model the Q3 cash flow",
            &[
                "--type",
                "financial_modeling",
                "--priority",
                "urgent",
                "--deadline",
                deadline,
                "--param",
                "quarter=Q3",
                "--param",
                "months:=3",
            ],
        ),
        submit(
            server,
            "beta",
            "Weekly status",
            &["--type", "routine_status_update"],
        ),
    ];
    let modeling = &others[1];
    assert_eq!(s(modeling, "priority"), "urgent");
    assert_eq!(s(modeling, "agent"), "financial");
    assert_eq!(modeling["parameters"]["months"], 3);
    assert_eq!(s(&modeling["parameters"], "quarter"), "Q3");
    for t in &others {
        let id = s(t, "task_id").to_owned();
        wait_for(Duration::from_secs(30), "the task completes", || {
            (status_of(server, &id) == "completed").then_some(())
        });
    }

    let page = ok_json(server.kira().args(["task", "list", "acme"]));
    let tasks = page["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 3, "{page}");
    assert!(tasks.iter().all(|t| t["status"] == "completed"), "{page}");
    assert!(page["next_before"].is_null(), "{page}");
    let table = ok(server.kira().args(["task", "list", "acme"]));
    assert_eq!(table.matches("completed").count(), 3, "{table}");
    for id in [&review_id, &s(&others[0], "task_id").to_owned()] {
        assert!(table.contains(id.as_str()), "{table}");
    }
    let urgent = ok_json(
        server
            .kira()
            .args(["task", "list", "acme", "--priority", "urgent"]),
    );
    assert_eq!(
        urgent["tasks"].as_array().map(Vec::len),
        Some(1),
        "{urgent}"
    );
    let first = ok(server.kira().args(["task", "list", "acme", "--limit", "2"]));
    assert!(
        first.contains("more tasks: kira task list acme --limit 2 --before "),
        "{first}"
    );

    let shown = ok(server.kira().args(["task", "show", &review_id]));
    for want in ["completed", "simulated", "requires_human_review", "1 of 3"] {
        assert!(shown.contains(want), "{want} missing from\n{shown}");
    }
    let shown = ok_json(server.kira().args(["task", "show", &review_id]));
    assert_eq!(shown["result"]["simulated"], true, "{shown}");
    let used = shown["prompt_tokens"].as_i64().expect("tokens")
        + shown["completion_tokens"].as_i64().expect("tokens");
    assert!(used > 0, "{shown}");

    // Every token the tasks used is in the budget, and the ledger agrees.
    let budget = ok_json(server.kira().args(["budget", "show"]));
    assert_eq!(budget["total_tokens"], 100_000, "{budget}");
    let spent: i64 = budget["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .map(|p| p["spent"].as_i64().expect("spent"))
        .sum();
    let acme = budget["companies"]
        .as_array()
        .expect("companies")
        .iter()
        .find(|c| c["company_id"] == "acme")
        .expect("acme has an allocation");
    assert!(acme["spent_all_pools"].as_i64() >= Some(used), "{budget}");
    assert!(spent >= used, "{budget}");
    let table = ok(server.kira().args(["budget", "show"]));
    for want in ["base", "burst", "emergency", "acme", "beta", "no pending"] {
        assert!(table.contains(want), "{want} missing from\n{table}");
    }
    assert!(table.contains(&spent.to_string()), "{table}");
    let verdict = ok(server.kira().args(["budget", "verify"]));
    assert!(verdict.starts_with("ledger consistent: "), "{verdict}");

    // The metrics count each of acme's runs once, with exactly the tokens
    // the tasks were charged.
    let acme_tokens: i64 = tasks
        .iter()
        .map(|t| {
            t["prompt_tokens"].as_i64().expect("p") + t["completion_tokens"].as_i64().expect("c")
        })
        .sum();
    let m = ok_json(
        server
            .kira()
            .args(["metrics", "company", "acme", "--step", "300"]),
    );
    assert_eq!(m["totals"]["completed"], 3, "{m}");
    assert_eq!(m["totals"]["tasks_ended"], 3, "{m}");
    assert_eq!(m["totals"]["tokens"], acme_tokens, "{m}");
    assert_eq!(m["within_sla"], true, "{m}");
    let table = ok(server.kira().args(["metrics", "company", "acme"]));
    for want in ["runs ended:      3 (3 completed", "SLA:", "AGENT"] {
        assert!(table.contains(want), "{want} missing from\n{table}");
    }
    let requests = ok(server.kira().args(["budget", "requests", "--all"]));
    assert_eq!(requests.trim(), "no emergency requests");

    // The same idempotency key gives the same task; another body with it
    // is refused.
    let args = [
        "--type",
        "quick_question_answer",
        "--idempotency-key",
        "q-1",
    ];
    let a = submit(server, "beta", "Ping", &args);
    let b = submit(server, "beta", "Ping", &args);
    assert_eq!(s(&a, "task_id"), s(&b, "task_id"));
    let out = fails(
        server
            .kira()
            .args(["task", "submit", "beta", "Pong"])
            .args(args),
        1,
    );
    assert!(out.stderr.contains("Idempotency-Key"), "{}", out.stderr);
}

#[test]
fn without_an_executor_tasks_wait_and_can_be_cancelled() {
    let work = tempfile::tempdir().expect("temp dir");
    let server = start_in(work.path(), None, &[]);
    assert!(
        server
            .stderr()
            .contains("executor: none (tasks wait in the queue)"),
        "{}",
        server.stderr()
    );
    add_company(&server, "acme");

    let task = submit(
        &server,
        "acme",
        "Review the NDA",
        &["--type", "document_review"],
    );
    let id = s(&task, "task_id").to_owned();
    let submitted = ok(server.kira().args([
        "task",
        "submit",
        "acme",
        "Second",
        "--type",
        "document_review",
    ]));
    assert!(submitted.contains("queued"), "{submitted}");
    let shown = ok(server.kira().args(["task", "show", &id]));
    assert!(shown.contains("queued"), "{shown}");
    assert_eq!(status_of(&server, &id), "queued", "nothing runs it");

    // A watch follows the task live: it prints the queued state, then the
    // cancellation, and ends.
    let mut watch = server.spawn_kira(&["task", "watch", &id]);
    let (tx, rx) = mpsc::channel();
    let stdout = watch.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the watch prints the task's first state");
    assert!(first.contains(&id) && first.contains("queued"), "{first}");

    let out = ok(server.kira().args(["task", "cancel", &id]));
    assert_eq!(out.trim(), format!("cancelled task {id}"));
    let last = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the watch prints the cancellation");
    assert!(last.contains("queued -> cancelled"), "{last}");
    let status = wait_for(Duration::from_secs(10), "the watch ends", || {
        watch.try_wait().expect("child status")
    });
    assert!(status.success(), "watch exits 0 once the task is final");
    reader.join().expect("reader");
    assert_eq!(status_of(&server, &id), "cancelled");
    let again = fails(server.kira().args(["task", "cancel", &id]), 1);
    assert!(again.stderr.starts_with("error: "), "{}", again.stderr);

    // Bad submissions name the field and store nothing.
    let before = ok_json(server.kira().args(["task", "list", "acme"]));
    let bad = fails(
        server
            .kira()
            .args(["task", "submit", "acme", "x", "--type", "no_such_type"]),
        1,
    );
    assert!(bad.stderr.contains("(field: type)"), "{}", bad.stderr);
    let bad = fails(
        server.kira().args([
            "task",
            "submit",
            "acme",
            "x",
            "--type",
            "document_review",
            "--priority",
            "whenever",
        ]),
        2,
    );
    assert!(bad.stderr.contains("--priority"), "{}", bad.stderr);
    let bad = fails(
        server.kira().args([
            "task",
            "submit",
            "acme",
            "x",
            "--type",
            "document_review",
            "--deadline",
            "2020-01-01T00:00:00Z",
        ]),
        1,
    );
    assert!(bad.stderr.contains("(field: deadline)"), "{}", bad.stderr);
    let bad = fails(
        server.kira().args([
            "task",
            "submit",
            "acme",
            "x",
            "--type",
            "document_review",
            "--specialist",
            "astrologer",
        ]),
        1,
    );
    assert!(bad.stderr.contains("(field: specialist)"), "{}", bad.stderr);
    let bad = fails(server.kira().args(["task", "show", "acme"]), 1);
    assert!(bad.stderr.contains("task id"), "{}", bad.stderr);
    let after = ok_json(server.kira().args(["task", "list", "acme"]));
    assert_eq!(before, after, "refused submissions store nothing");

    assert!(server.stop().success());
}

/// Base and burst too small for any task: an urgent task asks for
/// emergency tokens and waits for a human, who grants one request and
/// refuses another.
#[test]
fn emergency_tokens_wait_for_a_human() {
    let work = tempfile::tempdir().expect("temp dir");
    let config = "\
[budget]
total_tokens = 10000
base_percent = 10
burst_percent = 10
emergency_percent = 80

[executor]
kind = \"simulated\"
";
    let server = start_in(work.path(), Some(config), &[]);
    add_company(&server, "acme");
    let args = ["--type", "quick_question_answer", "--priority", "urgent"];
    let granted = s(
        &submit(&server, "acme", "Can we sign today?", &args),
        "task_id",
    )
    .to_owned();
    let refused = s(&submit(&server, "acme", "And tomorrow?", &args), "task_id").to_owned();
    for id in [&granted, &refused] {
        wait_for(
            Duration::from_secs(20),
            "the task waits for approval",
            || (status_of(&server, id) == "awaiting_approval").then_some(()),
        );
    }

    let pending = ok_json(server.kira().args(["budget", "requests"]));
    let requests = pending["requests"].as_array().expect("requests");
    assert_eq!(requests.len(), 2, "{pending}");
    let request_for = |task: &str| {
        requests
            .iter()
            .find(|r| r["task_id"] == task)
            .map(|r| s(r, "request_id").to_owned())
            .expect("a request per task")
    };
    let table = ok(server.kira().args(["budget", "show"]));
    assert!(table.contains(&request_for(&granted)), "{table}");

    let out = ok(server.kira().args([
        "budget",
        "approve",
        &request_for(&granted),
        "--note",
        "board meeting",
    ]));
    assert!(out.starts_with("approved request "), "{out}");
    let out = ok(server.kira().args([
        "budget",
        "reject",
        &request_for(&refused),
        "--note",
        "not urgent",
    ]));
    assert!(out.starts_with("rejected request "), "{out}");

    wait_for(
        Duration::from_secs(20),
        "the granted task completes",
        || (status_of(&server, &granted) == "completed").then_some(()),
    );
    let failed = ok_json(server.kira().args(["task", "show", &refused]));
    assert_eq!(s(&failed, "status"), "failed", "{failed}");
    assert!(
        s(&failed, "status_reason").contains("not urgent"),
        "{failed}"
    );
    let none = ok(server.kira().args(["budget", "requests"]));
    assert_eq!(none.trim(), "no pending emergency requests");
    let all = ok_json(server.kira().args(["budget", "requests", "--all"]));
    assert_eq!(all["requests"].as_array().map(Vec::len), Some(2), "{all}");
    let verdict = ok(server.kira().args(["budget", "verify"]));
    assert!(verdict.starts_with("ledger consistent: "), "{verdict}");
    assert!(server.stop().success());
}

/// A client following a task that never ends does not hold up SIGTERM: its
/// stream is closed when the server stops.
#[test]
fn an_open_watch_does_not_hold_up_shutdown() {
    let work = tempfile::tempdir().expect("temp dir");
    let server = Server::start(work.path(), &[]);
    ok(server.kira().args([
        "company",
        "add",
        "acme",
        "--name",
        "Acme",
        "--industry",
        "fintech",
        "--jurisdiction",
        "US-DE",
    ]));
    let submitted = ok_json(server.kira().args([
        "--json",
        "task",
        "submit",
        "acme",
        "Never runs",
        "--type",
        "quick_question_answer",
    ]));
    let id = s(&submitted, "task_id").to_owned();
    let mut watch = server.spawn_kira(&["task", "watch", &id]);
    let stdout = watch.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the watch is following the task");
    let started = std::time::Instant::now();
    let status = server.stop();
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped in {:?}: the open watch held it up",
        started.elapsed()
    );
    wait_for(Duration::from_secs(10), "the watch ends", || {
        watch.try_wait().expect("child status")
    });
    reader.join().expect("reader");
}
