//! Memory through the CLI: add, import a JSON Lines file, list with
//! filters, search, show, archive, restore, compact, delete, and the
//! context pack an agent would see; bad input is refused naming the field
//! and writes nothing.

use serde_json::Value;

use crate::support::{Server, fails, ok, ok_json, s};

fn count(server: &Server, company: &str, extra: &[&str]) -> usize {
    let v: Value = ok_json(
        server
            .kira()
            .args(["memory", "list", company, "--limit", "500"])
            .args(extra),
    );
    v["memories"].as_array().map_or(0, Vec::len)
}

#[test]
fn memory_add_import_search_archive_compact_and_context() {
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
        "GB",
    ]));
    let added = ok_json(server.kira().args([
        "memory",
        "add",
        "acme",
        "Signed the NDA with Initech; renewal due 1 March 2027.",
        "--type",
        "contract",
        "--workstream",
        "legal",
        "--category",
        "key_decisions",
        "--importance",
        "9",
        "--person",
        "Dana Whitfield",
        "--counterparty",
        "Initech",
    ]));
    let id = s(&added, "id").to_owned();
    assert_eq!(added["importance"], 9);
    assert_eq!(
        added["indexed_terms"],
        serde_json::json!(["dana whitfield", "initech"])
    );

    let file = work.path().join("memories.jsonl");
    std::fs::write(
        &file,
        "{\"occurred_at\": \"2026-01-10T09:00:00Z\", \"event_type\": \"meeting\", \"workstream\": \"financial\", \"category\": \"monthly_reviews\", \"content\": {\"text\": \"January close reviewed: burn rate down 8%.\"}}\n\
         \n\
         {\"occurred_at\": \"2026-01-12T09:00:00Z\", \"event_type\": \"decision\", \"content\": {\"text\": \"Hired a second backend engineer.\"}}\n",
    )
    .expect("write");
    let out = ok(server.kira().args(["memory", "import", "acme"]).arg(&file));
    assert!(out.contains("imported 2 memories"), "{out}");
    assert_eq!(count(&server, "acme", &[]), 3);
    assert_eq!(count(&server, "acme", &["--workstream", "financial"]), 1);
    assert_eq!(count(&server, "acme", &["--term", "Initech"]), 1);

    let found = ok(server
        .kira()
        .args(["memory", "search", "acme", "NDA renewal"]));
    assert!(found.contains(&id), "{found}");
    let shown = ok(server.kira().args(["memory", "show", "acme", &id]));
    assert!(
        shown.contains("Initech") && shown.contains("key_decisions"),
        "{shown}"
    );

    let pack = ok(server.kira().args([
        "context",
        "acme",
        "--task-type",
        "legal",
        "--q",
        "When is the NDA renewal?",
        "--budget",
        "500",
    ]));
    assert!(pack.contains("of 500 tokens"), "{pack}");
    assert!(pack.contains("[hot]") && pack.contains(&id), "{pack}");

    ok(server.kira().args(["memory", "archive", "acme", &id]));
    assert_eq!(count(&server, "acme", &[]), 2);
    assert_eq!(count(&server, "acme", &["--archived", "only"]), 1);
    let twice = fails(server.kira().args(["memory", "archive", "acme", &id]), 1);
    assert!(
        twice.stderr.contains("already archived"),
        "{}",
        twice.stderr
    );
    ok(server.kira().args(["memory", "restore", "acme", &id]));
    assert_eq!(count(&server, "acme", &[]), 3);

    let dry = ok(server
        .kira()
        .args(["memory", "compact", "acme", "--dry-run"]));
    assert!(
        dry.contains("dry run") && dry.contains("examined 3"),
        "{dry}"
    );

    // Bad input: named, exit 1, nothing written.
    let bad = fails(
        server
            .kira()
            .args(["memory", "add", "acme", "x", "--importance", "11"]),
        1,
    );
    assert!(bad.stderr.contains("importance"), "{}", bad.stderr);
    std::fs::write(
        &file,
        "{\"occurred_at\": \"2026-01-10T09:00:00Z\", \"event_type\": \"note\", \"content\": {\"text\": \"fine\"}}\n\
         {\"occurred_at\": \"2026-01-10T09:00:00Z\", \"event_type\": \"gossip\", \"content\": {\"text\": \"bad type\"}}\n",
    )
    .expect("write");
    let bad = fails(
        server.kira().args(["memory", "import", "acme"]).arg(&file),
        1,
    );
    assert!(
        bad.stderr.contains("memories.1.event_type"),
        "{}",
        bad.stderr
    );
    std::fs::write(&file, "{\"occurred_at\": \"2026-01-10\"\nnot json\n").expect("write");
    let bad = fails(
        server.kira().args(["memory", "import", "acme"]).arg(&file),
        1,
    );
    assert!(bad.stderr.contains(":1: not valid JSON"), "{}", bad.stderr);
    assert_eq!(count(&server, "acme", &["--archived", "include"]), 3);

    ok(server.kira().args(["memory", "delete", "acme", &id]));
    let gone = fails(server.kira().args(["memory", "show", "acme", &id]), 1);
    assert!(gone.stderr.contains("not found"), "{}", gone.stderr);
}
