//! One operator's day against a SQLite server: the first start, companies,
//! keys and roles, the audit log, and a graceful stop. `run_story` is
//! shared with the PostgreSQL test, so both backends serve the same CLI.

use std::os::unix::fs::PermissionsExt;

use crate::support::{Server, fails, http_get, kira_in, ok, ok_json, s};

#[test]
fn sqlite_story() {
    let work = tempfile::tempdir().expect("temp dir");
    let server = Server::start(work.path(), &[]);
    assert!(
        server.data_dir.join("kira.db").exists(),
        "the default database lives in the data dir"
    );
    check_first_start(&server);
    run_story(&server);
    let status = server.stop();
    assert!(
        status.success(),
        "SIGTERM stops the server cleanly: {status}"
    );
}

/// The first start made an admin key, saved it owner-only, and printed
/// the file's path, not the token: the test's stdout is not a terminal, as
/// a service manager's journal is not (issue 17).
pub fn check_first_start(server: &Server) {
    let key_path = server.data_dir.join("admin.key");
    let meta = std::fs::metadata(&key_path).expect("admin.key exists");
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "admin.key is owner-only"
    );
    let token = server.admin_token();
    assert!(token.starts_with("kira_"), "{token}");
    let stdout = server.stdout();
    assert!(
        !stdout.contains(&token),
        "no token where a journal would keep it:\n{stdout}"
    );
    assert!(
        stdout.contains(&key_path.display().to_string()),
        "the key file is named:\n{stdout}"
    );
    let stderr = server.stderr();
    assert!(
        stderr.contains(&format!("kira listening on {}", server.url)),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("kira dashboard on {}/ui/", server.url)),
        "the dashboard's URL is printed at start:\n{stderr}"
    );
    assert!(!stderr.contains(&token), "the token never reaches the log");
}

pub fn run_story(server: &Server) {
    let me = ok_json(server.kira().arg("whoami"));
    assert_eq!(s(&me, "role"), "admin");

    // Companies: only the flags given are sent, the server fills defaults.
    let acme = ok_json(server.kira().args([
        "company",
        "add",
        "acme",
        "--name",
        "Acme Corp",
        "--industry",
        "fintech",
        "--jurisdiction",
        "US-DE",
        "--revenue",
        "1000000",
        "--sla-seconds",
        "60",
        "--contact",
        "name=Jane Doe,email=jane@acme.example,webhook=https://hooks.example/a",
        "--contact",
        "name=Ops",
        "--consent",
        "process_templates",
    ]));
    assert_eq!(s(&acme, "id"), "acme");
    assert_eq!(acme["revenue_usd"], 1_000_000);
    assert_eq!(acme["sla_response_seconds"], 60);
    assert_eq!(acme["priority_multiplier"], 1.0, "server default");
    assert_eq!(acme["contacts"][0]["email"], "jane@acme.example");
    assert_eq!(acme["contacts"][1]["name"], "Ops");
    assert_eq!(acme["sharing_consent"][0], "process_templates");

    let out = ok(server.kira().args([
        "company",
        "add",
        "beta",
        "--name",
        "Beta Ltd",
        "--industry",
        "retail",
        "--jurisdiction",
        "GB",
    ]));
    assert!(out.contains("created company beta"), "{out}");

    let table = ok(server.kira().args(["company", "list"]));
    assert!(
        table.contains("Acme Corp") && table.contains("Beta Ltd"),
        "{table}"
    );
    let list = ok_json(server.kira().args(["company", "list"]));
    assert_eq!(list["companies"].as_array().map(Vec::len), Some(2));

    let shown = ok(server.kira().args(["company", "show", "acme"]));
    assert!(shown.contains("Jane Doe <jane@acme.example>"), "{shown}");

    let updated = ok_json(server.kira().args([
        "company",
        "update",
        "acme",
        "--name",
        "Acme Two",
        "--priority-multiplier",
        "2",
    ]));
    assert_eq!(s(&updated, "name"), "Acme Two");
    assert_eq!(updated["priority_multiplier"], 2.0);
    assert_eq!(
        s(&updated, "industry"),
        "fintech",
        "fields not given are kept"
    );
    assert_eq!(updated["contacts"].as_array().map(Vec::len), Some(2));
    let cleared = ok_json(
        server
            .kira()
            .args(["company", "update", "acme", "--clear-contacts"]),
    );
    assert_eq!(cleared["contacts"].as_array().map(Vec::len), Some(0));

    // Bad input: refused by the server, which names the field.
    let bad = fails(
        server.kira().args([
            "company",
            "add",
            "BAD_ID",
            "--name",
            "x",
            "--industry",
            "y",
            "--jurisdiction",
            "GB",
        ]),
        1,
    );
    assert!(bad.stderr.starts_with("error: "), "{}", bad.stderr);
    assert!(bad.stderr.contains("(field: id)"), "{}", bad.stderr);
    let bad = fails(
        server
            .kira()
            .args(["company", "update", "acme", "--complexity", "1.5"]),
        1,
    );
    assert!(
        bad.stderr.contains("(field: complexity_score)"),
        "{}",
        bad.stderr
    );

    // Keys and roles.
    let operator = ok_json(server.kira().args([
        "admin",
        "create-key",
        "--name",
        "acme-ops",
        "--role",
        "operator",
        "--company",
        "acme",
    ]));
    let op_token = s(&operator, "token").to_owned();
    let viewer = ok_json(server.kira().args([
        "admin",
        "create-key",
        "--name",
        "acme-view",
        "--role",
        "viewer",
        "--company",
        "acme",
    ]));
    let viewer_token = s(&viewer, "token").to_owned();
    let viewer_id = s(&viewer["key"], "id").to_owned();
    let human = ok(server.kira().args([
        "admin",
        "create-key",
        "--name",
        "beta-view",
        "--role",
        "viewer",
        "--company",
        "beta",
    ]));
    assert!(
        human.contains("kira_") && human.contains("will not be shown again"),
        "{human}"
    );
    let keys = ok_json(server.kira().args(["admin", "list-keys"]));
    assert_eq!(keys["keys"].as_array().map(Vec::len), Some(4));
    let keys_table = ok(server.kira().args(["admin", "list-keys"]));
    assert!(
        !keys_table.contains(&op_token),
        "listings never show tokens"
    );

    let viewed = ok_json(
        server
            .kira_as(&viewer_token)
            .args(["company", "show", "acme"]),
    );
    assert_eq!(s(&viewed, "name"), "Acme Two");
    let denied = fails(
        server
            .kira_as(&viewer_token)
            .args(["company", "update", "acme", "--name", "Hacked"]),
        1,
    );
    assert!(
        denied.stderr.starts_with("error: ") && denied.stderr.len() > 10,
        "{}",
        denied.stderr
    );
    let after = ok_json(server.kira().args(["company", "show", "acme"]));
    assert_eq!(s(&after, "name"), "Acme Two", "the viewer changed nothing");
    fails(
        server.kira_as(&viewer_token).args(["admin", "list-keys"]),
        1,
    );

    // An operator changes its company's name; the facts that decide
    // across companies (here the industry) are the admin's (issue 17).
    let by_op = ok_json(
        server
            .kira_as(&op_token)
            .args(["company", "update", "acme", "--name", "Acme Ops"]),
    );
    assert_eq!(s(&by_op, "name"), "Acme Ops");
    let refused = fails(
        server
            .kira_as(&op_token)
            .args(["company", "update", "acme", "--industry", "payments"]),
        1,
    );
    assert!(
        refused.stderr.contains("(field: industry)"),
        "{}",
        refused.stderr
    );
    let after = ok_json(server.kira().args(["company", "show", "acme"]));
    assert_eq!(
        s(&after, "industry"),
        "fintech",
        "the operator changed nothing"
    );
    fails(
        server.kira_as(&op_token).args(["company", "show", "beta"]),
        1,
    );

    // A revoked key stops working at once.
    let revoked = ok_json(server.kira().args(["admin", "revoke-key", &viewer_id]));
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    fails(server.kira_as(&viewer_token).arg("whoami"), 1);
    let (status, _) = http_get(server.port, "/v1/whoami", Some(&viewer_token)).expect("http");
    assert_eq!(status, 401);

    // The audit log saw all of it, and its chain is intact.
    let audit = ok_json(server.kira().args(["audit", "list", "--limit", "500"]));
    let entries = audit["entries"].as_array().expect("entries");
    assert!(entries.len() >= 10, "{audit}");
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "company.create" && e["outcome"] == "rejected")
    );
    let page = ok_json(
        server
            .kira()
            .args(["audit", "list", "--company", "acme", "--limit", "2"]),
    );
    let page_entries = page["entries"].as_array().expect("entries");
    assert_eq!(page_entries.len(), 2);
    assert!(
        page_entries.iter().all(|e| e["company_id"] == "acme"),
        "{page}"
    );
    let next = page["next_after"].as_i64().expect("more pages");
    let rest = ok_json(server.kira().args([
        "audit",
        "list",
        "--company",
        "acme",
        "--after",
        &next.to_string(),
    ]));
    assert!(
        rest["entries"]
            .as_array()
            .is_some_and(|es| es.iter().all(|e| e["seq"].as_i64() > Some(next)))
    );
    let table = ok(server.kira().args(["audit", "list"]));
    assert!(table.contains("company.create"), "{table}");
    let verdict = ok(server.kira().args(["audit", "verify"]));
    assert!(verdict.starts_with("audit chain intact: "), "{verdict}");

    // Archive hides a company from the default list.
    ok(server.kira().args(["company", "archive", "beta"]));
    let active = ok(server.kira().args(["company", "list"]));
    assert!(!active.contains("Beta Ltd"), "{active}");
    let all = ok(server.kira().args(["company", "list", "--all"]));
    assert!(
        all.contains("Beta Ltd") && all.contains("archived"),
        "{all}"
    );

    // Deleting needs --force; without it nothing is sent.
    let refused = fails(server.kira().args(["company", "delete", "acme"]), 1);
    assert!(refused.stderr.contains("--force"), "{}", refused.stderr);
    ok(server.kira().args(["company", "show", "acme"]));
    let deleted = ok_json(server.kira().args(["company", "delete", "acme", "--force"]));
    assert_eq!(s(&deleted, "deleted"), "acme");
    fails(server.kira().args(["company", "show", "acme"]), 1);
    fails(server.kira_as(&op_token).arg("whoami"), 1);

    // Completions need no server.
    let script = ok(kira_in(&server.work).args(["completions", "bash"]));
    assert!(
        script.contains("complete") && script.contains("kira"),
        "{script}"
    );
}
