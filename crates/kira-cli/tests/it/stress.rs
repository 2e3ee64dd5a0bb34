//! Concurrency stress on PostgreSQL: four `kira serve` processes on one
//! database, 50 concurrent submissions through each, all for one company
//! whose base allocation holds only `FITS` of the 200 runs. Tokens are
//! reserved inside the database, so however the four schedulers interleave,
//! no more is spent than the pool holds, and nothing that fits is refused:
//! exactly `FITS` tasks run and the rest wait for budget.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Server, block_on, http_get, ok, ok_json, s, wait_for};
use crate::tasks::start_in;

const SERVERS: usize = 4;
const PER_SERVER: usize = 50;
/// How many task estimates the company's base allocation holds.
const FITS: i64 = 37;
/// Every submission is the same, so one estimate holds for all of them.
const TEXT: &str = "Summarise the cash position for the board";
const TYPE: &str = "quick_question_answer";
const COMPANY: &str = "acme";

/// The servers' kira.toml: base is half the total and holds `fits`
/// estimates plus half of one more (a remainder no task fits in); medium
/// is in no burst level, so it may use base alone. Every run spends
/// exactly its reservation (usage 1.0), after a short latency so that many
/// reservations are held at once. Each process runs at most 8 of the
/// company's tasks at a time, so that one process's batched claim cannot
/// take every task before the others wake: they all race for the budget.
fn config(estimate: i64) -> String {
    let base = FITS * estimate + estimate / 2;
    format!(
        "\
[budget]
total_tokens = {total}
base_percent = 50
burst_percent = 40
emergency_percent = 10

[scheduler]
per_company_concurrency = 8
poll_interval_ms = 200

[agents.primary]
max_concurrent = 200

[executor]
kind = \"simulated\"
latency_ms_min = 0
latency_ms_max = 30
usage_min = 1.0
usage_max = 1.0
",
        total = base * 2
    )
}

fn add_company(server: &Server, token: &str, id: &str) {
    ok(server.kira_as(token).args([
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

/// The tokens the engine reserves for one of the submissions, read back
/// from a throwaway server (SQLite, no executor) with the same task types.
fn learn_estimate() -> i64 {
    let work = tempfile::tempdir().expect("temp dir");
    let probe = start_in(work.path(), None, &[]);
    add_company(&probe, &probe.admin_token(), "probe");
    let task = ok_json(probe.kira().args([
        "task",
        "submit",
        "probe",
        TEXT,
        "--type",
        TYPE,
        "--priority",
        "medium",
    ]));
    let estimate = task["estimated_tokens"].as_i64().expect("estimated_tokens");
    assert!(probe.stop().success());
    estimate
}

/// Fires every submission at once: `PER_SERVER` concurrent requests at
/// each server. Their task JSON, in no particular order.
fn submit_all(servers: &[Server], token: &str) -> Vec<Value> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = reqwest::Client::new();
        let mut set = tokio::task::JoinSet::new();
        for (n, server) in servers.iter().enumerate() {
            let url = format!("{}/v1/companies/{COMPANY}/tasks", server.url);
            for i in 0..PER_SERVER {
                let (client, url, token) = (client.clone(), url.clone(), token.to_owned());
                set.spawn(async move {
                    let body = json!({"task": TEXT, "type": TYPE, "priority": "medium"});
                    let resp = client
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&body)
                        .send()
                        .await
                        .unwrap_or_else(|e| panic!("submission {i} to server {n}: {e}"));
                    let status = resp.status().as_u16();
                    let task: Value = resp.json().await.expect("a JSON answer");
                    assert_eq!(status, 201, "submission {i} to server {n}: {task}");
                    task
                });
            }
        }
        let mut tasks = Vec::new();
        while let Some(done) = set.join_next().await {
            tasks.push(done.expect("submission task"));
        }
        tasks
    })
}

/// All of the company's tasks (at most 500, one page).
fn all_tasks(server: &Server, token: &str) -> Vec<Value> {
    let page = ok_json(
        server
            .kira_as(token)
            .args(["task", "list", COMPANY, "--limit", "500"]),
    );
    assert!(page["next_before"].is_null(), "one page holds them all");
    page["tasks"].as_array().expect("tasks").clone()
}

fn by_status(tasks: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for t in tasks {
        *counts.entry(s(t, "status").to_owned()).or_insert(0) += 1;
    }
    counts
}

fn pool<'a>(budget: &'a Value, name: &str) -> &'a Value {
    budget["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .find(|p| p["pool"] == name)
        .unwrap_or_else(|| panic!("no {name} pool in {budget}"))
}

fn int(v: &Value, key: &str) -> i64 {
    v[key]
        .as_i64()
        .unwrap_or_else(|| panic!("{key} is not an integer in {v}"))
}

/// The worker that claimed a task, from its transition to running.
fn claimed_by(server: &Server, token: &str, task_id: &str) -> Vec<String> {
    let path = format!("/v1/companies/{COMPANY}/tasks/{task_id}/events");
    let (code, body) = http_get(server.port, &path, Some(token)).expect("events");
    assert_eq!(code, 200, "{body}");
    let events: Value = serde_json::from_str(&body).expect("events JSON");
    events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["to_status"] == "running")
        .filter_map(|e| {
            let reason = e["reason"].as_str()?;
            let worker = reason.strip_prefix("claimed by ")?.split(';').next()?;
            Some(worker.to_owned())
        })
        .collect()
}

#[test]
fn four_processes_never_spend_more_than_the_budget_and_run_all_that_fits() {
    let started = Instant::now();
    let estimate = learn_estimate();
    assert!(estimate > 0);

    let url = block_on(kira_store::testdb::fresh_postgres());
    let config = config(estimate);
    let works: Vec<_> = (0..SERVERS)
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect();
    let db = ["--database-url", url.as_str()];
    // One at a time: the first migrates and makes the admin key; the
    // others find both.
    let servers: Vec<Server> = works
        .iter()
        .map(|w| start_in(w.path(), Some(&config), &db))
        .collect();
    let token = servers[0].admin_token();
    for later in &servers[1..] {
        assert!(!later.data_dir.join("admin.key").exists());
    }
    add_company(&servers[0], &token, COMPANY);

    // The company is the only one: its allocation is the whole base pool.
    let budget = ok_json(servers[1].kira_as(&token).args(["budget", "show"]));
    let base = pool(&budget, "base");
    let capacity = int(base, "capacity");
    assert_eq!(capacity, FITS * estimate + estimate / 2, "{budget}");
    let acme = &budget["companies"][0];
    assert_eq!(s(acme, "company_id"), COMPANY, "{budget}");
    assert_eq!(int(acme, "allocation"), capacity, "{budget}");
    let setup = started.elapsed();

    let submitted = submit_all(&servers, &token);
    let submitting = started.elapsed() - setup;
    assert_eq!(submitted.len(), SERVERS * PER_SERVER);
    for t in &submitted {
        assert_eq!(int(t, "estimated_tokens"), estimate, "{t}");
        assert_eq!(s(t, "priority"), "medium", "{t}");
    }

    // Settled: nothing is queued or running any more.
    let tasks = wait_for(
        Duration::from_secs(60),
        "every task ran or waits for budget",
        || {
            let tasks = all_tasks(&servers[0], &token);
            let settled = tasks.len() == submitted.len()
                && tasks
                    .iter()
                    .all(|t| !matches!(s(t, "status"), "queued" | "running"));
            settled.then_some(tasks)
        },
    );
    let running = started.elapsed() - setup - submitting;

    let counts = by_status(&tasks);
    let completed: Vec<&Value> = tasks
        .iter()
        .filter(|t| t["status"] == "completed")
        .collect();
    let want = BTreeMap::from([
        (
            "completed".to_owned(),
            usize::try_from(FITS).expect("small"),
        ),
        (
            "waiting_budget".to_owned(),
            SERVERS * PER_SERVER - usize::try_from(FITS).expect("small"),
        ),
    ]);
    assert_eq!(counts, want, "exactly the tasks that fit ran");
    for t in &completed {
        let used = int(t, "prompt_tokens") + int(t, "completion_tokens");
        assert_eq!(used, estimate, "a run spends its reservation: {t}");
        assert_eq!(int(t, "attempts"), 1, "{t}");
    }
    for t in tasks.iter().filter(|t| t["status"] == "waiting_budget") {
        assert!(
            s(t, "status_reason").contains("tokens free"),
            "it waits for budget: {t}"
        );
    }

    // The pools, read through another process: base spent is exactly what
    // ran, within its capacity, with too little left for one more; nothing
    // is held; no other pool was touched.
    let budget = ok_json(servers[2].kira_as(&token).args(["budget", "show"]));
    let base = pool(&budget, "base");
    assert_eq!(int(base, "spent"), FITS * estimate, "{budget}");
    assert!(int(base, "spent") <= capacity, "{budget}");
    assert_eq!(int(base, "reserved"), 0, "{budget}");
    assert!(int(base, "remaining") < estimate, "{budget}");
    for name in ["burst", "emergency"] {
        let p = pool(&budget, name);
        assert_eq!((int(p, "spent"), int(p, "reserved")), (0, 0), "{budget}");
    }
    let acme = &budget["companies"][0];
    assert_eq!(int(acme, "spent"), FITS * estimate, "{budget}");
    assert_eq!(int(acme, "spent_all_pools"), FITS * estimate, "{budget}");
    assert_eq!(int(acme, "reserved"), 0, "{budget}");
    assert!(
        budget["pending_requests"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "medium tasks ask for no emergency tokens: {budget}"
    );

    let verdict = ok(servers[1].kira_as(&token).args(["budget", "verify"]));
    assert!(verdict.starts_with("ledger consistent: "), "{verdict}");
    let chain = ok(servers[3].kira_as(&token).args(["audit", "verify"]));
    assert!(chain.starts_with("audit chain intact: "), "{chain}");

    // The runs were shared out between the processes: the race was real.
    let mut workers: BTreeMap<String, usize> = BTreeMap::new();
    for t in &completed {
        let claims = claimed_by(&servers[3], &token, s(t, "task_id"));
        assert_eq!(claims.len(), 1, "claimed once: {t}");
        for w in claims {
            *workers.entry(w).or_insert(0) += 1;
        }
    }
    assert!(
        workers.len() >= 2,
        "more than one process ran tasks: {workers:?}"
    );

    // The contention cost no failed scheduling pass or request.
    for server in &servers {
        let log = server.stderr();
        let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
        assert!(errors.is_empty(), "{}", errors.join("\n"));
    }
    for server in servers {
        assert!(server.stop().success());
    }
    eprintln!(
        "stress: estimate {estimate} tokens, {FITS} fit; setup {setup:?}, \
         {} submissions in {submitting:?}, settled in {running:?}, total {:?}; \
         runs per worker {:?}",
        SERVERS * PER_SERVER,
        started.elapsed(),
        workers.values().collect::<Vec<_>>()
    );
}
