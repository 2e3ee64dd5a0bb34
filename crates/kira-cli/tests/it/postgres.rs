//! The same story against PostgreSQL, in a fresh database of the test
//! cluster (`KIRA_TEST_PG_URL`, or the local default).

use crate::story::{check_first_start, run_story};
use crate::support::{Server, block_on};
use crate::tasks::{SIMULATED, run_simulated_story, start_in};

#[test]
fn postgres_story() {
    let url = block_on(kira_store::testdb::fresh_postgres());
    let work = tempfile::tempdir().expect("temp dir");
    let server = Server::start(work.path(), &["--database-url", &url]);
    assert!(
        !server.data_dir.join("kira.db").exists(),
        "no SQLite file when the database is PostgreSQL"
    );
    check_first_start(&server);
    run_story(&server);
    let status = server.stop();
    assert!(
        status.success(),
        "SIGTERM stops the server cleanly: {status}"
    );
}

#[test]
fn postgres_tasks_with_the_simulated_executor() {
    let url = block_on(kira_store::testdb::fresh_postgres());
    let work = tempfile::tempdir().expect("temp dir");
    let server = start_in(work.path(), Some(SIMULATED), &["--database-url", &url]);
    run_simulated_story(&server);
    assert!(server.stop().success());
}

/// Two `kira serve` processes on one PostgreSQL database, changed at the
/// same time through both: the audit log stays one verifiable chain.
#[test]
fn two_server_processes_keep_one_audit_chain() {
    let url = block_on(kira_store::testdb::fresh_postgres());
    let (w1, w2) = (
        tempfile::tempdir().expect("temp dir"),
        tempfile::tempdir().expect("temp dir"),
    );
    let first = Server::start(w1.path(), &["--database-url", &url]);
    let second = Server::start(w2.path(), &["--database-url", &url]);
    assert!(
        !second.data_dir.join("admin.key").exists(),
        "the second process finds a key and makes none"
    );
    let token = first.admin_token();
    crate::support::ok(first.kira().args([
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
    let writers: Vec<_> = (0..8)
        .map(|i| {
            let server = if i % 2 == 0 { &first } else { &second };
            let (work, url, token) = (server.work.clone(), server.url.clone(), token.clone());
            std::thread::spawn(move || {
                for j in 0..5 {
                    let revenue = (i * 100 + j).to_string();
                    crate::support::ok(
                        crate::support::kira_in(&work)
                            .args(["--url", &url])
                            .env("KIRA_TOKEN", &token)
                            .args(["company", "update", "acme", "--revenue", &revenue]),
                    );
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    let report =
        crate::support::ok_json(second.kira_as(&token).args(["--json", "audit", "verify"]));
    assert_eq!(report["ok"], true, "{report}");
    // bootstrap key + company add + 40 updates, besides the chain checks
    // (the alerts evaluators' scheduled ones and the one just made).
    let list = crate::support::ok_json(
        second
            .kira_as(&token)
            .args(["audit", "list", "--limit", "500"]),
    );
    let entries = list["entries"].as_array().expect("entries");
    let writes = entries
        .iter()
        .filter(|e| e["action"] != "audit.verify")
        .count();
    assert_eq!(writes, 42, "{list}");
}

/// `kira worker` runs the queue of a `kira serve` that has no executor: the
/// server takes the task over HTTP, the worker process claims and runs it.
#[test]
fn a_worker_process_runs_what_a_server_queues() {
    let url = block_on(kira_store::testdb::fresh_postgres());
    let work = tempfile::tempdir().expect("temp dir");
    let server = Server::start(work.path(), &["--database-url", &url]);
    crate::support::ok(server.kira().args([
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
    let worker_config = work.path().join("worker.toml");
    std::fs::write(&worker_config, "[executor]\nkind = \"simulated\"\n").expect("write config");
    // A worker told to run nothing refuses to start.
    let no_executor = work.path().join("no-executor.toml");
    std::fs::write(&no_executor, "[executor]\nkind = \"none\"\n").expect("write config");
    let refused = crate::support::fails(
        crate::support::kira_in(work.path())
            .args(["worker", "--database-url", &url, "--config"])
            .arg(&no_executor),
        1,
    );
    assert!(refused.stderr.contains("[executor]"), "{}", refused.stderr);
    let mut worker = std::process::Command::new(env!("CARGO_BIN_EXE_kira"))
        .current_dir(work.path())
        .args(["worker", "--database-url", &url, "--config"])
        .arg(&worker_config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kira worker starts");
    let task = crate::support::ok_json(server.kira().args([
        "--json",
        "task",
        "submit",
        "acme",
        "Summarise the week",
        "--type",
        "routine_status_update",
    ]));
    let id = crate::support::s(&task, "task_id").to_owned();
    let done = crate::support::wait_for(
        std::time::Duration::from_secs(20),
        "the worker completes the task",
        || {
            let t = crate::support::ok_json(server.kira().args(["--json", "task", "show", &id]));
            (crate::support::s(&t, "status") == "completed").then_some(t)
        },
    );
    assert_eq!(done["result"]["simulated"], true, "{done}");
    // Both processes roll metrics up; the run is counted once.
    let m = crate::support::ok_json(server.kira().args(["--json", "metrics", "system"]));
    assert_eq!(m["totals"]["completed"], 1, "{m}");
    assert_eq!(m["totals"]["tasks_ended"], 1, "{m}");
    assert_eq!(
        m["totals"]["tokens"],
        done["prompt_tokens"].as_i64().expect("p") + done["completion_tokens"].as_i64().expect("c"),
        "{m}"
    );
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    let status = crate::support::wait_for(
        std::time::Duration::from_secs(15),
        "the worker stops",
        || worker.try_wait().expect("worker status"),
    );
    assert!(
        status.success(),
        "SIGTERM stops the worker cleanly: {status}"
    );
}

/// `kira bench queue` with worker processes: each opens the database and
/// says it is ready, is told to go (a line on its stdin), and together
/// they run every task; the bench sees the queue drained and tells them to
/// stop (their stdin closed), and the command ends only once they have.
#[test]
fn bench_queue_drains_in_worker_processes() {
    let url = block_on(kira_store::testdb::fresh_postgres());
    let work = tempfile::tempdir().expect("temp dir");
    let v = crate::support::ok_json(crate::support::kira_in(work.path()).args([
        "bench",
        "queue",
        "--tasks",
        "120",
        "--companies",
        "3",
        "--processes",
        "2",
        "--database-url",
        &url,
    ]));
    assert_eq!(v["tasks"], 120, "{v}");
    assert_eq!(v["completed"], 120, "{v}");
    assert!(v["tasks_per_second"].as_f64().expect("rate") > 0.0, "{v}");
}
