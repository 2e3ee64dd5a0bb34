//! `/metrics` as a Prometheus on the same host scrapes it: the API's with
//! an admin key, and the loopback listener (`metrics_listen`) with none.

use std::time::Duration;

use crate::support::{free_port, http_get, ok_json, s, wait_for};
use crate::tasks::{SIMULATED, add_company, start_in};

#[test]
fn a_finished_run_is_in_both_expositions() {
    let work = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let config = format!("metrics_listen = \"127.0.0.1:{port}\"\n{SIMULATED}");
    let server = start_in(work.path(), Some(&config), &[]);
    assert!(
        server.stderr().contains(&format!(
            "kira metrics (no key, loopback only) on http://127.0.0.1:{port}/metrics"
        )),
        "{}",
        server.stderr()
    );
    add_company(&server, "acme");
    let task = ok_json(server.kira().args([
        "task",
        "submit",
        "acme",
        "Weekly status",
        "--type",
        "routine_status_update",
    ]));
    let id = s(&task, "task_id").to_owned();
    wait_for(Duration::from_secs(30), "the task completes", || {
        let t = ok_json(server.kira().args(["task", "show", &id]));
        (s(&t, "status") == "completed").then_some(())
    });
    let agent = s(&task, "agent").to_owned();
    let lines = [
        "kira_tasks_ended_total{company=\"acme\",outcome=\"completed\"} 1".to_owned(),
        format!("kira_agent_tasks_ended_total{{agent=\"{agent}\",outcome=\"completed\"}} 1"),
    ];

    let (status, text) = http_get(port, "/metrics", None).expect("scrape");
    assert_eq!(status, 200, "{text}");
    for line in &lines {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    assert!(text.trim_end().ends_with("# EOF"), "{text}");

    let (status, _) = http_get(server.port, "/metrics", None).expect("scrape");
    assert_eq!(status, 401, "the API's /metrics needs a key");
    let (status, text) =
        http_get(server.port, "/metrics", Some(&server.admin_token())).expect("scrape");
    assert_eq!(status, 200, "{text}");
    for line in &lines {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    assert!(server.stop().success());
}
