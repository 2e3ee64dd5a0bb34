//! The knowledge base through the CLI: add, import a JSON Lines file, list,
//! search, show and delete; a bad line is named.

use crate::support::{Server, fails, ok, ok_json, s};

#[test]
fn knowledge_add_import_list_search_show_delete() {
    let work = tempfile::tempdir().expect("temp dir");
    let server = Server::start(work.path(), &[]);
    let added = ok_json(server.kira().args([
        "knowledge",
        "add",
        "--domain",
        "legal_frameworks",
        "--key",
        "delaware_corp",
        "--title",
        "Delaware corporations",
        "--body",
        "Directors owe fiduciary duties of care and loyalty.",
        "--tag",
        "corporate",
        "--jurisdiction",
        "US-DE",
    ]));
    let id = s(&added["entries"][0], "id").to_owned();

    let file = work.path().join("kb.jsonl");
    std::fs::write(
        &file,
        "{\"domain\": \"business_patterns\", \"key\": \"saas_metrics\", \"title\": \"SaaS metrics\", \"body\": \"Net revenue retention and churn.\"}\n\
         \n\
         {\"domain\": \"industry_standards\", \"key\": \"pci_dss\", \"title\": \"PCI DSS\", \"body\": \"Encrypt cardholder data.\", \"tags\": [\"payments\"]}\n",
    )
    .expect("write");
    let out = ok(server.kira().args(["knowledge", "import"]).arg(&file));
    assert!(out.contains("imported 2 entries"), "{out}");

    let list = ok(server.kira().args(["knowledge", "list", "--limit", "2"]));
    assert!(
        list.contains("saas_metrics") && list.contains("pci_dss"),
        "{list}"
    );
    assert!(
        list.contains("more entries: --after industry_standards/pci_dss"),
        "{list}"
    );
    let found = ok(server
        .kira()
        .args(["knowledge", "search", "churn fiduciary"]));
    assert!(
        found.contains("delaware_corp") && found.contains("saas_metrics"),
        "{found}"
    );
    // An entry matching no word may still come back as a semantic
    // neighbour once the embedder has run, but never above the matches.
    if let Some(pci) = found.find("pci_dss") {
        assert!(
            found.find("delaware_corp").is_some_and(|d| d < pci)
                && found.find("saas_metrics").is_some_and(|m| m < pci),
            "{found}"
        );
    }
    let shown = ok(server.kira().args(["knowledge", "show", &id]));
    assert!(shown.contains("legal_frameworks/delaware_corp"), "{shown}");
    assert!(shown.contains("fiduciary duties"), "{shown}");
    ok(server.kira().args(["knowledge", "delete", &id]));
    let gone = fails(server.kira().args(["knowledge", "show", &id]), 1);
    assert!(gone.stderr.contains("not found"), "{}", gone.stderr);

    std::fs::write(
        &file,
        "{\"domain\": \"recipes\", \"key\": \"k\", \"title\": \"T\", \"body\": \"B\"}\n",
    )
    .expect("write");
    let bad = fails(server.kira().args(["knowledge", "import"]).arg(&file), 1);
    assert!(bad.stderr.contains("entries.0.domain"), "{}", bad.stderr);
}

#[test]
fn sharing_check_says_which_rule_decides() {
    let work = tempfile::tempdir().expect("temp dir");
    let server = Server::start(work.path(), &[]);
    for (id, industry) in [("fin-de", "fintech"), ("bank-de", "banking")] {
        ok(server.kira().args([
            "company",
            "add",
            id,
            "--name",
            id,
            "--industry",
            industry,
            "--jurisdiction",
            "US-DE",
        ]));
    }
    let legal = [
        "sharing",
        "check",
        "fin-de",
        "bank-de",
        "anonymized_legal_patterns",
    ];
    // The rule holds, but nobody consented yet.
    let out = ok(server.kira().args(legal));
    assert!(
        out.contains("DENIED") && out.contains("would allow"),
        "{out}"
    );
    for c in ["fin-de", "bank-de"] {
        let out =
            ok(server
                .kira()
                .args(["sharing", "consent", "give", c, "anonymized_legal_patterns"]));
        assert!(
            out.contains("anonymized_legal_patterns") && out.contains('*'),
            "{out}"
        );
    }
    let out = ok(server.kira().args(legal));
    assert!(out.contains("ALLOWED"), "{out}");
    assert!(out.contains("rule: legal_precedent_sharing"), "{out}");
    assert!(
        out.contains("fin-de consents to anonymized_legal_patterns with *"),
        "{out}"
    );
    let out =
        ok(server
            .kira()
            .args(["sharing", "check", "fin-de", "bank-de", "process_templates"]));
    assert!(
        out.contains("DENIED") && out.contains("consent missing"),
        "{out}"
    );
    let out = ok(server.kira().args(["conflicts", "list"]));
    assert_eq!(out.trim(), "no conflicts");

    // Publish, list, withdraw; then a consent taken back.
    let memory = ok_json(server.kira().args([
        "memory",
        "add",
        "bank-de",
        "--type",
        "decision",
        "--workstream",
        "legal",
        "Board playbook: Gregor Vantongeren signs, IBAN DE89 3704 0044 0532 0130 00.",
    ]));
    let memory_id = s(&memory, "id").to_owned();
    let item = ok_json(server.kira().args([
        "sharing",
        "publish",
        "bank-de",
        &memory_id,
        "anonymized_legal_patterns",
    ]));
    let text = s(&item, "text");
    assert!(text.contains("playbook"), "{text}");
    assert!(
        !text.contains("Vantongeren") && !text.contains("DE89"),
        "{text}"
    );
    let item_id = s(&item, "id").to_owned();
    let out = ok(server.kira().args(["sharing", "published", "bank-de"]));
    assert!(out.contains(&item_id) && out.contains("live"), "{out}");
    let out = ok(server
        .kira()
        .args(["sharing", "withdraw", "bank-de", &item_id]));
    assert!(out.contains("withdrawn"), "{out}");
    let out = ok(server.kira().args(["sharing", "published", "bank-de"]));
    assert_eq!(out.trim(), "no published items", "{out}");
    let out = ok(server.kira().args([
        "sharing",
        "consent",
        "withdraw",
        "fin-de",
        "anonymized_legal_patterns",
    ]));
    assert!(out.contains("no consents"), "{out}");
}
