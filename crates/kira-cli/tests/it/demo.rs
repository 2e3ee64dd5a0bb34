//! `kira demo` against a real server running the simulated executor: it
//! sets up three companies with memories and a knowledge base, every task
//! it submits ends, the report names each task's agent, a second run
//! reuses what the first made, and without a server it says so.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::{Server, fails, free_port, kira_in, ok, ok_json, s};
use crate::tasks::start_in;

/// The simulated executor, fast, and a budget the demo's tasks fit in
/// twice over. Written out here: a server without an [executor] may only
/// queue.
const CONFIG: &str = "\
[budget]
total_tokens = 1000000

[executor]
kind = \"simulated\"
latency_ms_min = 20
latency_ms_max = 80
";

const COMPANIES: [&str; 3] = ["demo-ledgerline", "demo-hofmann", "demo-brightdesk"];

fn array<'a>(v: &'a Value, key: &str) -> &'a Vec<Value> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} is not an array in {v}"))
}

/// Every task of the demo's companies, as the API lists them.
fn all_tasks(server: &Server) -> Vec<Value> {
    COMPANIES
        .iter()
        .flat_map(|c| array(&ok_json(server.kira().args(["task", "list", c])), "tasks").clone())
        .collect()
}

fn memory_count(server: &Server, company: &str) -> usize {
    let page = ok_json(
        server
            .kira()
            .args(["memory", "list", company, "--limit", "500"]),
    );
    array(&page, "memories").len()
}

fn demo_knowledge(server: &Server) -> Vec<Value> {
    let page =
        ok_json(
            server
                .kira()
                .args(["knowledge", "list", "--tag", "kira-demo", "--limit", "500"]),
        );
    array(&page, "entries").clone()
}

fn settled(status: &str) -> bool {
    matches!(
        status,
        "completed" | "needs_review" | "failed" | "cancelled"
    )
}

#[test]
fn the_demo_sets_up_companies_runs_tasks_and_reruns_cleanly() {
    let work = tempfile::tempdir().expect("temp dir");
    let server = start_in(work.path(), Some(CONFIG), &[]);

    let out = ok(server.kira().args(["demo", "--wait", "120"]));

    // Three companies of different industries and jurisdictions.
    let list = ok_json(server.kira().args(["company", "list"]));
    let companies = array(&list, "companies");
    let ids: BTreeSet<&str> = companies.iter().map(|c| s(c, "id")).collect();
    assert_eq!(ids, COMPANIES.into_iter().collect(), "{list}");
    let industries: BTreeSet<&str> = companies.iter().map(|c| s(c, "industry")).collect();
    let jurisdictions: BTreeSet<&str> = companies.iter().map(|c| s(c, "jurisdiction")).collect();
    assert_eq!((industries.len(), jurisdictions.len()), (3, 3), "{list}");

    // Each with its memories, found by search too; the shared knowledge.
    let memories: Vec<usize> = COMPANIES.iter().map(|c| memory_count(&server, c)).collect();
    assert!(
        memories.iter().all(|n| (8..=15).contains(n)),
        "{memories:?}"
    );
    let hits = ok_json(server.kira().args([
        "memory",
        "search",
        "demo-hofmann",
        "sesame allergen withdrawal",
    ]));
    assert!(!array(&hits, "hits").is_empty(), "{hits}");
    let knowledge = demo_knowledge(&server);
    assert!((6..=10).contains(&knowledge.len()), "{knowledge:?}");
    let domains: BTreeSet<&str> = knowledge.iter().map(|k| s(k, "domain")).collect();
    assert_eq!(domains.len(), 3, "{domains:?}");

    // Every task ended, and the report lists each with its agent.
    let tasks = all_tasks(&server);
    assert_eq!(tasks.len(), 6, "{tasks:?}");
    for t in &tasks {
        let id = s(t, "task_id");
        assert!(settled(s(t, "status")), "{t}");
        let row = out
            .lines()
            .find(|l| l.trim_start().starts_with(id))
            .unwrap_or_else(|| panic!("{id} is not in the report:\n{out}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert!(cells.contains(&s(t, "agent")), "{row}");
        assert!(cells.contains(&s(t, "status")), "{row}");
        assert!(cells.contains(&s(t, "type")), "{row}");
    }
    let agents: BTreeSet<&str> = tasks.iter().map(|t| s(t, "agent")).collect();
    assert!(agents.len() >= 3, "specialists and primary: {agents:?}");
    assert!(out.contains("6 tasks: "), "{out}");
    assert!(out.contains("0 still running"), "{out}");
    assert!(out.contains("kira task show demo-"), "{out}");

    // A second run reuses the companies, adds no memory or entry twice,
    // and runs a new set of tasks.
    let again = ok_json(server.kira().args(["demo", "--wait", "120"]));
    for c in array(&again, "companies") {
        assert_eq!(c["created"], false, "{again}");
        assert_eq!(c["memories_imported"], 0, "{again}");
    }
    let reported = array(&again, "tasks");
    assert_eq!(reported.len(), 6, "{again}");
    assert!(reported.iter().all(|t| settled(s(t, "status"))), "{again}");
    assert_eq!(again["summary"]["unfinished"], 0, "{again}");
    let again_memories: Vec<usize> = COMPANIES.iter().map(|c| memory_count(&server, c)).collect();
    assert_eq!(again_memories, memories);
    assert_eq!(demo_knowledge(&server).len(), knowledge.len());
    assert_eq!(all_tasks(&server).len(), 12);

    // A key that is not an admin's changes nothing.
    let operator = ok_json(server.kira().args([
        "admin",
        "create-key",
        "--name",
        "ops",
        "--role",
        "operator",
        "--company",
        "demo-hofmann",
    ]));
    let out = fails(
        server
            .kira_as(s(&operator, "token"))
            .args(["demo", "--prefix", "other"]),
        1,
    );
    assert!(out.stderr.contains("needs an admin key"), "{}", out.stderr);
    let list = ok_json(server.kira().args(["company", "list"]));
    assert_eq!(array(&list, "companies").len(), 3, "{list}");

    assert!(server.stop().success());
}

/// The demo's first three tasks (a legal analysis, a document review the
/// primary agent answers inline, a financial model) on the local model,
/// each agent allowed two short calls: every answer is held to the
/// protocol (a tool call, then the result), so every task ends with a
/// result the model stated, completed or waiting for review by the policy
/// on its confidence, and none because its output did not parse.
const LOCAL: &str = "\
[budget]
total_tokens = 1000000

[executor]
kind = \"agents\"

[review]
confidence_threshold = 0.5

[agents.primary]
max_concurrent = 2
max_steps = 2
max_output_tokens = 48
context_budget = 100

[agents.legal]
max_concurrent = 2
max_steps = 2
max_output_tokens = 48
context_budget = 100

[agents.financial]
max_concurrent = 2
max_steps = 2
max_output_tokens = 48
context_budget = 100
";

#[test]
fn on_the_local_model_every_task_ends_with_the_result_the_model_stated() {
    let work = tempfile::tempdir().expect("temp dir");
    let server = start_in(work.path(), Some(LOCAL), &[]);
    assert!(
        server.stderr().contains("agents use the local model"),
        "{}",
        server.stderr()
    );
    let out = ok_json(
        server
            .kira()
            .args(["demo", "--tasks", "3", "--wait", "900"]),
    );
    assert_eq!(out["summary"]["unfinished"], 0, "{out}");
    let tasks = all_tasks(&server);
    assert_eq!(tasks.len(), 3, "{tasks:?}");
    for t in &tasks {
        let shown = ok_json(server.kira().args(["task", "show", s(t, "task_id")]));
        let status = s(&shown, "status");
        let result = &shown["result"];
        assert!(matches!(status, "completed" | "needs_review"), "{shown}");
        assert_eq!(result["model"], "SmolLM2-135M-Instruct", "{shown}");
        // The model's own result, read from its answer, not a fallback.
        assert_eq!(result["well_formed"], true, "{shown}");
        assert!(result["limit_hit"].is_null(), "{shown}");
        let confidence = result["confidence"].as_f64().expect("confidence");
        assert!((0.0..=1.0).contains(&confidence), "{shown}");
        // In review exactly when the policy says so for that confidence.
        assert_eq!(status == "needs_review", confidence < 0.5, "{shown}");
    }
    assert!(server.stop().success());
}

#[test]
fn without_a_server_the_demo_says_how_to_start_one() {
    let work = tempfile::tempdir().expect("temp dir");
    let url = format!("http://127.0.0.1:{}", free_port());
    let out = fails(
        kira_in(work.path()).args(["--url", &url, "--token", "t", "demo"]),
        1,
    );
    assert!(
        out.stderr.contains("cannot reach the kira server") && out.stderr.contains("kira serve"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}
