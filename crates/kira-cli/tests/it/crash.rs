//! Crash test: a `kira serve` is killed with SIGKILL while it runs tasks,
//! and another is started on the same database. Every task ends exactly
//! once in a final state, the dead worker's reservations are released,
//! and the ledger and the audit chain check out. SQLite (one process at a
//! time) and PostgreSQL.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Server, block_on, http_get, ok, ok_json, s, wait_for};
use crate::tasks::start_in;

const COMPANY: &str = "acme";
const TASKS: usize = 10;
/// Tasks of one company that run at once: the rest stay queued.
const SLOTS: usize = 4;

/// Short leases so a dead worker's tasks are free again within seconds;
/// every run spends exactly its reservation, so what was spent says how
/// many runs were settled.
const SCHEDULER: &str = "\
[scheduler]
lease_seconds = 2
heartbeat_seconds = 1
retry_backoff_seconds = 0
max_attempts = 3
poll_interval_ms = 200
per_company_concurrency = 4
";

/// The first server: runs last far longer than the test waits, so the
/// kill always lands mid-run.
fn slow() -> String {
    format!(
        "{SCHEDULER}
[executor]
kind = \"simulated\"
latency_ms_min = 30000
latency_ms_max = 30000
usage_min = 1.0
usage_max = 1.0
"
    )
}

/// The second server: the same, with runs that take no time.
fn fast() -> String {
    format!(
        "{SCHEDULER}
[executor]
kind = \"simulated\"
usage_min = 1.0
usage_max = 1.0
"
    )
}

#[test]
fn sqlite_crash_mid_run_then_restart() {
    crash_and_restart(&[]);
}

#[test]
fn postgres_crash_mid_run_then_restart() {
    let url = block_on(kira_store::testdb::fresh_postgres());
    crash_and_restart(&["--database-url", &url]);
}

fn tasks(server: &Server) -> Vec<Value> {
    let page = ok_json(
        server
            .kira()
            .args(["task", "list", COMPANY, "--limit", "500"]),
    );
    page["tasks"].as_array().expect("tasks").clone()
}

fn with_status(tasks: &[Value], status: &str) -> BTreeSet<String> {
    tasks
        .iter()
        .filter(|t| t["status"] == status)
        .map(|t| s(t, "task_id").to_owned())
        .collect()
}

fn int(v: &Value, key: &str) -> i64 {
    v[key]
        .as_i64()
        .unwrap_or_else(|| panic!("{key} is not an integer in {v}"))
}

fn events(server: &Server, task_id: &str) -> Vec<Value> {
    let path = format!("/v1/companies/{COMPANY}/tasks/{task_id}/events");
    let (code, body) =
        http_get(server.port, &path, Some(&server.admin_token())).expect("events answer");
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("events JSON");
    v["events"].as_array().expect("events").clone()
}

fn crash_and_restart(db: &[&str]) {
    let started = Instant::now();
    let work = tempfile::tempdir().expect("temp dir");
    let first = start_in(work.path(), Some(&slow()), db);
    ok(first.kira().args([
        "company",
        "add",
        COMPANY,
        "--name",
        "Acme",
        "--industry",
        "fintech",
        "--jurisdiction",
        "GB",
    ]));
    let mut ids = Vec::new();
    for i in 0..TASKS {
        let t = ok_json(first.kira().args([
            "task",
            "submit",
            COMPANY,
            &format!("Reconcile ledger {i:02}"),
            "--type",
            "quick_question_answer",
        ]));
        ids.push(s(&t, "task_id").to_owned());
    }

    // Mid-run: every slot holds a running task, and each holds its
    // reservation.
    let before = wait_for(
        Duration::from_secs(10),
        "the first server runs as many tasks as it has slots",
        || {
            let all = tasks(&first);
            (with_status(&all, "running").len() == SLOTS).then_some(all)
        },
    );
    let running = with_status(&before, "running");
    let held: i64 = before
        .iter()
        .filter(|t| t["status"] == "running")
        .map(|t| int(t, "estimated_tokens"))
        .sum();
    let budget = ok_json(first.kira().args(["budget", "show"]));
    let reserved: i64 = budget["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .map(|p| int(p, "reserved"))
        .sum();
    assert_eq!(
        reserved, held,
        "the running tasks hold their tokens: {budget}"
    );

    // kill -9: dropping the harness's Server kills its process with
    // SIGKILL (std's `Child::kill`) and reaps it. Nothing is finished,
    // released or settled on the way out.
    drop(first);
    let killed_at = started.elapsed();

    let second = start_in(work.path(), Some(&fast()), db);
    let after = wait_for(
        Duration::from_secs(20),
        "the second server completes every task",
        || {
            let all = tasks(&second);
            (with_status(&all, "completed").len() == TASKS).then_some(all)
        },
    );
    let recovered = started.elapsed() - killed_at;

    // Both servers were nodes: the killed one went silent (it never said
    // it stopped), the second one beats.
    let health = wait_for(
        Duration::from_secs(10),
        "the killed server's node is no longer live",
        || {
            let m = ok_json(second.kira().args(["metrics", "system"]));
            let h = m["health"].clone();
            let nodes = h["nodes"].as_array()?;
            (nodes.len() == 2 && nodes.iter().filter(|n| n["live"] == true).count() == 1)
                .then_some(h)
        },
    );
    assert_eq!(health["serving"], 1, "{health}");
    let silent: Vec<&Value> = health["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["live"] == false)
        .collect();
    assert_eq!(silent[0]["stopped_at"], Value::Null, "killed, not stopped");
    assert_eq!(silent[0]["role"], "serve");
    let a = health["availability_24h"].as_f64().expect("availability");
    assert!(a > 0.0 && a <= 1.0, "{health}");
    let ids: BTreeSet<String> = ids.into_iter().collect();
    assert_eq!(with_status(&after, "completed"), ids, "the tasks submitted");

    for t in &after {
        let id = s(t, "task_id");
        let events = events(&second, id);
        let finals: Vec<&Value> = events
            .iter()
            .filter(|e| {
                matches!(
                    e["to_status"].as_str(),
                    Some("completed" | "failed" | "cancelled" | "needs_review")
                )
            })
            .collect();
        assert_eq!(finals.len(), 1, "one final state for {id}: {events:?}");
        assert_eq!(
            events.last().map(|e| &e["to_status"]),
            Some(&Value::from("completed")),
            "{id} ends completed: {events:?}"
        );
        let runs = events
            .iter()
            .filter(|e| e["to_status"] == "running")
            .count();
        let used = int(t, "prompt_tokens") + int(t, "completion_tokens");
        assert_eq!(used, int(t, "estimated_tokens"), "settled once: {t}");
        if running.contains(id) {
            assert!(int(t, "attempts") >= 2, "{id} was running at the kill: {t}");
            assert_eq!(runs, 2, "{id}: {events:?}");
            assert!(
                events.iter().any(|e| e["from_status"] == "running"
                    && e["to_status"] == "queued"
                    && e["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("lease") && r.contains("expired"))),
                "{id} went back to the queue when its lease expired: {events:?}"
            );
        } else {
            assert_eq!(int(t, "attempts"), 1, "{id} was queued at the kill: {t}");
            assert_eq!(runs, 1, "{id}: {events:?}");
        }
    }

    // Nothing is held, and what was spent is one run of each task.
    let budget = ok_json(second.kira().args(["budget", "show"]));
    let pools = budget["pools"].as_array().expect("pools");
    for p in pools {
        assert_eq!(int(p, "reserved"), 0, "{budget}");
    }
    for c in budget["companies"].as_array().expect("companies") {
        assert_eq!(int(c, "reserved"), 0, "{budget}");
    }
    let spent: i64 = pools.iter().map(|p| int(p, "spent")).sum();
    let estimated: i64 = after.iter().map(|t| int(t, "estimated_tokens")).sum();
    assert_eq!(
        spent, estimated,
        "every task settled exactly once: {budget}"
    );

    let verdict = ok(second.kira().args(["budget", "verify"]));
    assert!(verdict.starts_with("ledger consistent: "), "{verdict}");
    let chain = ok(second.kira().args(["audit", "verify"]));
    assert!(chain.starts_with("audit chain intact: "), "{chain}");
    let log = second.stderr();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.is_empty(),
        "recovery logged errors:\n{}",
        errors.join("\n")
    );
    assert!(second.stop().success());
    let backend = if db.is_empty() { "sqlite" } else { "postgres" };
    eprintln!(
        "crash ({backend}): killed at {killed_at:?}, all completed {recovered:?} later, \
         total {:?}",
        started.elapsed()
    );
}
