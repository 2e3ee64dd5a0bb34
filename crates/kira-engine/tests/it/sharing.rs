//! Cross-company sharing through the engine, on SQLite and PostgreSQL:
//! conflict detection (listed counterparties and contract text), the rule
//! table as `Sharing::candidates` applies it, the anonymiser's corpus as
//! other companies' published items (no leak into a context pack), and
//! isolation: a pack holds only items their owner published, between two
//! companies that both consented, never a raw memory.

use std::collections::BTreeSet;
use std::sync::Arc;

use kira_core::CompanyId;
use kira_core::audit::{AuditRecord, Outcome};
use kira_core::auth::{Access, CompanyScope, Principal};
use kira_core::clock::ManualClock;
use kira_core::company::NewCompany;
use kira_core::conflict::ConflictStatus;
use kira_core::memory::{EventType, Memory, NewMemory, Workstream};
use kira_core::sharing::{Consent, Partner};
use kira_engine::memory::{ContextRequest, Section};
use kira_engine::{Engine, EngineConfig};
use kira_store::{AuditPage, Store};
use serde_json::{Value, json};

use crate::common::{Backend, fresh_store, t0};

const LEGAL: &str = "anonymized_legal_patterns";
const TEMPLATES: &str = "process_templates";

struct Setup {
    store: Arc<dyn Store>,
    engine: Engine,
    _dir: Option<tempfile::TempDir>,
}

async fn setup(backend: Backend) -> Setup {
    let (store, dir) = fresh_store(backend).await;
    let mut cfg = EngineConfig::default();
    // The corpus has more companies than a pack searches by default.
    cfg.memory.context.shared_companies = 100;
    let engine = Engine::new(store.clone(), Arc::new(ManualClock::new(t0())), cfg);
    Setup {
        store,
        engine,
        _dir: dir,
    }
}

fn id(c: &str) -> CompanyId {
    CompanyId::parse(c).expect("id")
}

fn scope(c: &str) -> CompanyScope {
    Principal::system()
        .scope(&id(c), Access::Write)
        .expect("scope")
}

fn audit(c: Option<&str>) -> AuditRecord {
    AuditRecord {
        at: t0(),
        request_id: String::new(),
        actor: "system".into(),
        company_id: c.map(id),
        action: "test".into(),
        target: "test".into(),
        outcome: Outcome::Ok,
        detail: String::new(),
    }
}

async fn company(s: &Setup, profile: Value) {
    let (cid, p) = serde_json::from_value::<NewCompany>(profile)
        .expect("json")
        .validate()
        .expect("valid");
    s.store
        .create_company(&scope(cid.as_str()), &p, t0(), audit(Some(cid.as_str())))
        .await
        .expect("create");
}

/// A company consenting to exchange each of `consent` with every partner.
async fn plain(s: &Setup, c: &str, industry: &str, jurisdiction: &str, consent: &[&str]) {
    company(
        s,
        json!({
            "id": c, "name": format!("{c} corp"), "industry": industry,
            "jurisdiction": jurisdiction,
        }),
    )
    .await;
    for scope_name in consent {
        give(s, c, scope_name, "*").await;
    }
}

/// An admin records `c`'s consent to exchange `scope_name` with `partner`.
async fn give(s: &Setup, c: &str, scope_name: &str, partner: &str) {
    let admin = Principal::system().admin().expect("admin");
    let consent = Consent {
        scope: scope_name.into(),
        partner: Partner::parse(partner).expect("partner"),
    };
    s.engine
        .sharing()
        .put_consent(&admin, &id(c), &consent, "admin", audit(Some(c)))
        .await
        .expect("consent");
}

/// An admin takes `c`'s consent back.
async fn take_back(s: &Setup, c: &str, scope_name: &str, partner: &str) {
    let admin = Principal::system().admin().expect("admin");
    let consent = Consent {
        scope: scope_name.into(),
        partner: Partner::parse(partner).expect("partner"),
    };
    s.engine
        .sharing()
        .delete_consent(&admin, &id(c), &consent, audit(Some(c)))
        .await
        .expect("take back");
}

/// `c` publishes each of `memories` for each of `scopes`; the items' ids.
async fn publish(s: &Setup, c: &str, memories: &[Memory], scopes: &[&str]) -> Vec<uuid::Uuid> {
    let mut ids = Vec::new();
    for m in memories {
        for scope_name in scopes {
            let item = s
                .engine
                .sharing()
                .publish(&scope(c), m.id, scope_name, "operator", audit(Some(c)))
                .await
                .expect("publish");
            ids.push(item.id);
        }
    }
    ids
}

fn memory(event_type: EventType, category: &str, content: Value) -> NewMemory {
    NewMemory {
        occurred_at: t0(),
        event_type,
        workstream: Workstream::Legal,
        category: category.into(),
        content,
        importance: 5,
        indexed_terms: vec![],
        source: None,
    }
}

async fn add(s: &Setup, c: &str, items: Vec<NewMemory>) -> Vec<Memory> {
    s.engine
        .memory()
        .add(&scope(c), items, true, audit(Some(c)))
        .await
        .expect("add")
}

async fn open_flags(s: &Setup) -> Vec<(String, String, String, usize)> {
    let admin = Principal::system().admin().expect("admin");
    s.store
        .list_conflicts(&admin, Some(ConflictStatus::Open), audit(None))
        .await
        .expect("list")
        .into_iter()
        .map(|f| {
            (
                f.company_a.to_string(),
                f.company_b.to_string(),
                f.counterparty,
                f.memory_ids.len(),
            )
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The audit entries naming company `c`.
/// Every entry, as the admin sees them.
async fn audit_of_all(s: &Setup) -> Vec<kira_core::audit::AuditEntry> {
    let admin = Principal::system().admin().expect("admin");
    s.store
        .list_all_audit(
            &admin,
            None,
            AuditPage {
                after_seq: 0,
                limit: 1_000,
            },
            audit(None),
        )
        .await
        .expect("audit")
}

async fn audit_of(s: &Setup, c: &str) -> Vec<kira_core::audit::AuditEntry> {
    let admin = Principal::system().admin().expect("admin");
    s.store
        .list_all_audit(
            &admin,
            Some(&id(c)),
            AuditPage {
                after_seq: 0,
                limit: 1_000,
            },
            audit(None),
        )
        .await
        .expect("audit")
}

async fn shared(s: &Setup, c: &str, scope_name: &str, q: &str) -> Vec<String> {
    s.engine
        .sharing()
        .candidates(&scope(c), scope_name, q, 50)
        .await
        .expect("shared")
        .into_iter()
        .map(|c| {
            assert!(c.id.starts_with("shared:"), "{}", c.id);
            c.text
        })
        .collect()
}

async fn conflicts(b: Backend) {
    let s = setup(b).await;
    for c in ["acme", "beta", "gamma", "delta"] {
        plain(&s, c, "fintech", "US-DE", &[TEMPLATES]).await;
    }
    let named = |cp: &str, text: &str| {
        memory(
            EventType::Note,
            "general",
            json!({ "text": text, "counterparties": [cp] }),
        )
    };
    add(&s, "acme", vec![named("Globex Corp", "supply talks")]).await;
    assert!(open_flags(&s).await.is_empty(), "{b:?}: one company alone");
    // The same counterparty, written differently, by another company.
    let beta = add(&s, "beta", vec![named("globex  corp.", "renewal talks")]).await;
    publish(&s, "beta", &beta, &[TEMPLATES]).await;
    assert_eq!(
        open_flags(&s).await,
        [("acme".into(), "beta".into(), "globex corp".into(), 2)],
        "{b:?}"
    );
    // Idempotent: the same memories again change nothing.
    let again = s
        .engine
        .sharing()
        .detect_conflicts(&scope("beta"), &beta)
        .await
        .expect("detect");
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(open_flags(&s).await.len(), 1);

    // A note that merely mentions the name is not a contract; a contract
    // event whose text names it is, as is a deal category.
    add(
        &s,
        "gamma",
        vec![memory(
            EventType::Note,
            "general",
            json!({"text": "Lunch near the Globex Corp offices."}),
        )],
    )
    .await;
    assert_eq!(
        open_flags(&s).await.len(),
        1,
        "{b:?}: a note is not a contract"
    );
    add(
        &s,
        "gamma",
        vec![memory(
            EventType::Contract,
            "general",
            json!({"text": "Signed the master services agreement with Globex Corp today."}),
        )],
    )
    .await;
    add(
        &s,
        "delta",
        vec![memory(
            EventType::Decision,
            "deals",
            json!({"text": "Go ahead with the GLOBEX CORP. distribution deal."}),
        )],
    )
    .await;
    let flags = open_flags(&s).await;
    let pairs: BTreeSet<(&str, &str)> = flags
        .iter()
        .map(|(a, b, _, _)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        pairs,
        BTreeSet::from([
            ("acme", "beta"),
            ("acme", "gamma"),
            ("beta", "gamma"),
            ("acme", "delta"),
            ("beta", "delta"),
            // Not delta and gamma: gamma's contract text names Globex but
            // gamma lists no counterparty, and text is read when written.
        ]),
        "{b:?}: {flags:?}"
    );
    assert!(flags.iter().all(|f| f.2 == "globex corp"));

    // Each scan that matched is audited, naming the company whose names it
    // read, on the admin's view only (issue 17): acme's own log holds no
    // counterparty matched and no other company.
    let admin = Principal::system().admin().expect("admin");
    let entries = audit_of_all(&s).await;
    assert!(
        entries.iter().any(|e| e.action == "memory.conflict_scan"
            && e.company_id.is_none()
            && e.detail.contains("company:acme")
            && e.detail.contains("globex corp")),
        "{b:?}"
    );
    for e in audit_of(&s, "acme").await {
        let text = format!("{} {}", e.target, e.detail);
        assert!(
            !["globex", "beta", "gamma", "delta"]
                .iter()
                .any(|w| text.contains(w)),
            "{b:?}: acme's entry names another company: {e:?}"
        );
    }

    // While open, nothing is shared and the explainer says why; the blocked
    // read is counted. Resolving opens sharing again.
    let q = "renewal supply talks";
    let denied = async || {
        s.engine
            .sharing()
            .denied_reads(&admin)
            .await
            .expect("denied reads")
    };
    let before = denied().await;
    assert!(shared(&s, "acme", TEMPLATES, q).await.is_empty(), "{b:?}");
    assert!(denied().await > before);
    let check = s
        .engine
        .sharing()
        .check(&admin, &id("acme"), &id("beta"), TEMPLATES)
        .await
        .expect("check");
    assert!(check.conflict_open && !check.verdict.allowed && check.verdict.flagged_for_review);
    let all = s
        .store
        .list_conflicts(&admin, Some(ConflictStatus::Open), audit(None))
        .await
        .expect("list");
    for f in all
        .iter()
        .filter(|f| f.company_a.as_str() == "acme" && f.company_b.as_str() == "beta")
    {
        s.store
            .resolve_conflict(&admin, f.id, "different Globex desks", t0(), audit(None))
            .await
            .expect("resolve");
    }
    let got = shared(&s, "acme", TEMPLATES, q).await;
    assert_eq!(got.len(), 1, "{b:?}: {got:?}");
    assert!(got[0].contains("renewal talks") && !got[0].to_lowercase().contains("globex"));
    // A resolved flag that already names these memories stays resolved.
    let again = s
        .engine
        .sharing()
        .detect_conflicts(&scope("beta"), &beta)
        .await
        .expect("detect");
    assert!(again.is_empty(), "{again:?}");
}

#[tokio::test]
async fn conflicts_sqlite() {
    conflicts(Backend::Sqlite).await;
}

#[tokio::test]
async fn conflicts_postgres() {
    conflicts(Backend::Postgres).await;
}

/// Every rule of the default table, both directions: which companies'
/// items reach each company's shared candidates, per scope.
async fn rule_table(b: Backend) {
    let s = setup(b).await;
    plain(&s, "fin-de", "fintech", "US-DE", &[TEMPLATES, LEGAL]).await;
    plain(&s, "bank-de", "Banking", "US-DE", &[TEMPLATES, LEGAL]).await;
    plain(&s, "fin-ca", "fintech", "US-CA", &[LEGAL]).await;
    plain(&s, "saas-de", "saas", "US-DE", &[TEMPLATES, LEGAL]).await;
    // One marker word per company, so an item shows where it came from.
    let marker = |c: &str| match c {
        "fin-de" => "alpha",
        "bank-de" => "bravo",
        "fin-ca" => "charlie",
        _ => "delta",
    };
    let all = ["fin-de", "bank-de", "fin-ca", "saas-de"];
    for c in all {
        let m = add(
            &s,
            c,
            vec![memory(
                EventType::Note,
                "playbooks",
                json!({ "text": format!("Onboarding playbook {}: checklist first.", marker(c)) }),
            )],
        )
        .await;
        publish(&s, c, &m, &[LEGAL, TEMPLATES, "customer_lists"]).await;
    }
    // (company, scope, the companies whose items it gets)
    let table: Vec<(&str, &str, Vec<&str>)> = vec![
        // legal_precedent_sharing: same jurisdiction and similar industry.
        ("fin-de", LEGAL, vec!["bank-de"]),
        ("bank-de", LEGAL, vec!["fin-de"]),
        // Other jurisdiction; dissimilar industry.
        ("fin-ca", LEGAL, vec![]),
        ("saas-de", LEGAL, vec![]),
        // best_practice_sharing: both consent; fin-ca's consent is missing
        // (it consents to legal patterns only).
        ("fin-de", TEMPLATES, vec!["bank-de", "saas-de"]),
        ("bank-de", TEMPLATES, vec!["fin-de", "saas-de"]),
        ("saas-de", TEMPLATES, vec!["fin-de", "bank-de"]),
        ("fin-ca", TEMPLATES, vec![]),
        // A scope no rule grants.
        ("fin-de", "customer_lists", vec![]),
        ("bank-de", "customer_lists", vec![]),
    ];
    for (c, scope_name, from) in &table {
        let got = shared(&s, c, scope_name, "onboarding playbook checklist").await;
        let sources: BTreeSet<&str> = all
            .iter()
            .copied()
            .filter(|o| got.iter().any(|t| t.contains(marker(o))))
            .collect();
        assert_eq!(
            sources,
            from.iter().copied().collect::<BTreeSet<_>>(),
            "{b:?}: {c} {scope_name}: {got:?}"
        );
        assert_eq!(got.len(), from.len(), "{got:?}");
        assert!(!sources.contains(c), "own memories are not shared");
    }
    // The legal workstream's packs ask for legal patterns; others for
    // process templates.
    let pack = |t: Option<&'static str>| {
        let e = &s.engine;
        async move {
            e.memory()
                .context(
                    &scope("fin-ca"),
                    &ContextRequest {
                        task_type: t.map(Into::into),
                        query: "onboarding playbook".into(),
                        budget: Some(2_000),
                    },
                )
                .await
                .expect("pack")
        }
    };
    assert_eq!(
        pack(Some("legal")).await.section(Section::Shared).count(),
        0
    );
    let pack = s
        .engine
        .memory()
        .context(
            &scope("bank-de"),
            &ContextRequest {
                task_type: Some("legal".into()),
                query: "onboarding playbook".into(),
                budget: Some(2_000),
            },
        )
        .await
        .expect("pack");
    let shared_items: Vec<&str> = pack
        .section(Section::Shared)
        .map(|i| i.text.as_str())
        .collect();
    assert_eq!(shared_items.len(), 1, "{b:?}: {shared_items:?}");
    assert!(shared_items[0].contains("alpha"));
}

/// A pack reads other companies only while a later one could still change
/// its shared section: each partner's best hit scores 1 and ties go to the
/// partner listed first, so with `k` items scoring 1 the search stops. A
/// partner without a hit does not count, and its read is audited all the
/// same.
async fn shared_reads_stop_once_the_answer_is_settled(b: Backend) {
    let s = setup(b).await;
    plain(&s, "reader", "saas", "US-DE", &[TEMPLATES]).await;
    // Listed in id order: p0 (nothing matching), then p1 .. p5, each with
    // a marker word (an anonymised copy names no company).
    let markers = [
        ("p0", ""),
        ("p1", "alpha"),
        ("p2", "bravo"),
        ("p3", "charlie"),
        ("p4", "delta"),
        ("p5", "echo"),
    ];
    for (p, marker) in markers {
        plain(&s, p, "saas", "US-DE", &[TEMPLATES]).await;
        let text = if marker.is_empty() {
            "Lunch with the marketing team.".to_owned()
        } else {
            format!("Onboarding checklist {marker}: contracts first.")
        };
        let m = add(
            &s,
            p,
            vec![memory(
                EventType::Note,
                "playbooks",
                json!({ "text": text }),
            )],
        )
        .await;
        publish(&s, p, &m, &[TEMPLATES]).await;
    }
    let reads = || async {
        let admin = Principal::system().admin().expect("admin");
        let page = AuditPage {
            after_seq: 0,
            limit: 10_000,
        };
        s.store
            .list_all_audit(&admin, None, page, audit(None))
            .await
            .expect("audit")
            .into_iter()
            .filter(|e| e.action == "sharing.read")
            .filter_map(|e| e.company_id.map(|c| c.as_str().to_owned()))
            .collect::<Vec<_>>()
    };
    let got = s
        .engine
        .sharing()
        .candidates(&scope("reader"), TEMPLATES, "onboarding checklist", 2)
        .await
        .expect("shared");
    let texts: Vec<&str> = got.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(texts.len(), 2, "{b:?}: {texts:?}");
    assert!(
        texts[0].contains("alpha") && texts[1].contains("bravo"),
        "{b:?}: {texts:?}"
    );
    // The first wave (p0, p1) found one item scoring 1; the second read
    // one more partner, p2, and stopped.
    let mut read = reads().await;
    read.sort();
    assert_eq!(read, ["p0", "p1", "p2"], "{b:?}");
}

#[tokio::test]
async fn shared_reads_stop_sqlite() {
    shared_reads_stop_once_the_answer_is_settled(Backend::Sqlite).await;
}

#[tokio::test]
async fn shared_reads_stop_postgres() {
    shared_reads_stop_once_the_answer_is_settled(Backend::Postgres).await;
}

#[tokio::test]
async fn rule_table_sqlite() {
    rule_table(Backend::Sqlite).await;
}

#[tokio::test]
async fn rule_table_postgres() {
    rule_table(Backend::Postgres).await;
}

struct Note {
    companies: Vec<String>,
    people: Vec<String>,
    counterparties: Vec<String>,
    keep: Vec<String>,
    /// Names and numbers in the text that nothing lists.
    unlisted: Vec<String>,
    text: String,
}

/// kira-core's anonymiser corpus (see its header for the format).
fn corpus() -> Vec<Note> {
    let raw = include_str!("../../../kira-core/tests/data/anonymise_corpus.txt");
    let mut notes = Vec::new();
    for entry in raw.split("\n=== ").skip(1) {
        let (head, text) = entry.split_once("\n---\n").expect("a --- line");
        let mut note = Note {
            companies: vec![],
            people: vec![],
            counterparties: vec![],
            keep: vec![],
            unlisted: vec![],
            text: text.trim().to_owned(),
        };
        for line in head.lines().skip(1) {
            let (key, values) = line.split_once(':').expect("key: values");
            let values: Vec<String> = values
                .split('|')
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .collect();
            match key.trim() {
                "companies" => note.companies = values,
                "people" => note.people = values,
                "counterparties" => note.counterparties = values,
                "keep" => note.keep = values,
                "unlisted" => note.unlisted = values,
                other => panic!("unknown corpus key {other}"),
            }
        }
        notes.push(note);
    }
    notes
}

/// Crude detectors, independent of the anonymiser's scanners: a listed
/// name at word boundaries, an email, money, a year, a long run of digits.
fn leaks(text: &str, entities: &[&str]) -> Vec<String> {
    let lower = text.to_lowercase();
    let mut found = Vec::new();
    for e in entities {
        let e = e.to_lowercase();
        for (pos, _) in lower.match_indices(&e) {
            let before = lower[..pos].chars().next_back();
            let after = lower[pos + e.len()..].chars().next();
            if !before.is_some_and(char::is_alphanumeric)
                && !after.is_some_and(char::is_alphanumeric)
            {
                found.push(format!("entity {e:?}"));
            }
        }
    }
    let chars: Vec<char> = text.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if *c == '@' {
            found.push("email".into());
        }
        if "$£€¥".contains(*c) && chars.get(i + 1).is_some_and(char::is_ascii_digit) {
            found.push("money".into());
        }
    }
    for word in text.split(|c: char| !c.is_ascii_digit()) {
        if word.len() >= 7 {
            found.push(format!("digits {word}"));
        }
    }
    // Exact dates: 2024-03-04, 01.02.2024, 1/15/2024; a month and a day.
    // (A bare year, "the 2025 term", is not an exact date.)
    let words: Vec<&str> = text.split_whitespace().collect();
    for (i, w) in words.iter().enumerate() {
        let w = w.trim_matches(|c: char| !c.is_ascii_digit());
        let seps = w.chars().filter(|c| "-/.".contains(*c)).count();
        if seps >= 2 && w.chars().all(|c| c.is_ascii_digit() || "-/.".contains(c)) {
            found.push(format!("date {w}"));
        }
        let month = [
            "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ]
        .iter()
        .any(|m| w.is_empty() && words[i].to_lowercase().starts_with(m));
        let day = |x: Option<&&str>| x.is_some_and(|x| x.starts_with(|c: char| c.is_ascii_digit()));
        if month && (day(words.get(i + 1)) || (i > 0 && day(words.get(i - 1)))) {
            found.push(format!("date near {}", words[i]));
        }
    }
    found
}

/// The corpus as 37 companies' memories (names, people and counterparties
/// listed as a user would; unlisted names, code names and IBANs in five of
/// them), each published for process templates, all consenting to share
/// them with a reader: nothing listed or unlisted, and no email, phone,
/// amount, account number or exact date, reaches the reader's candidates or
/// its context pack; no raw memory does.
async fn no_leaks(b: Backend) {
    let s = setup(b).await;
    let notes = corpus();
    assert!(notes.len() >= 30);
    plain(&s, "reader", "saas", "GB", &[TEMPLATES]).await;
    plain(&s, "loner", "saas", "GB", &[]).await;
    for (i, n) in notes.iter().enumerate() {
        let cid = &n.companies[1];
        company(
            &s,
            json!({
                "id": cid, "name": n.companies[0], "industry": "saas",
                "jurisdiction": "US-DE",
                "contacts": [{"name": n.people[0], "email": format!("owner{i}@example.com")}],
            }),
        )
        .await;
        give(&s, cid, TEMPLATES, "*").await;
        let m = add(
            &s,
            cid,
            vec![memory(
                EventType::Meeting,
                "notes",
                json!({
                    "text": n.text, "people": n.people, "counterparties": n.counterparties,
                }),
            )],
        )
        .await;
        publish(&s, cid, &m, &[TEMPLATES]).await;
    }
    let entities: Vec<&str> = notes
        .iter()
        .flat_map(|n| {
            n.companies
                .iter()
                .chain(&n.people)
                .chain(&n.counterparties)
                .chain(&n.unlisted)
        })
        .map(String::as_str)
        .collect();
    for n in &notes {
        assert!(
            !leaks(&n.text, &entities).is_empty(),
            "the detectors find nothing even in the raw note"
        );
    }
    let mut seen = 0;
    let mut failures = Vec::new();
    for n in &notes {
        let q = n.keep.join(" ");
        for text in shared(&s, "reader", TEMPLATES, &q).await {
            seen += 1;
            for leak in leaks(&text, &entities) {
                failures.push(format!("{leak} in {text}"));
            }
        }
    }
    assert!(seen >= notes.len(), "{b:?}: only {seen} items were shared");
    assert!(failures.is_empty(), "{b:?}:\n{}", failures.join("\n"));

    let pack = s
        .engine
        .memory()
        .context(
            &scope("reader"),
            &ContextRequest {
                task_type: None,
                query: "board meeting agreement invoice".into(),
                budget: Some(8_000),
            },
        )
        .await
        .expect("pack");
    assert!(pack.section(Section::Shared).count() > 0, "{b:?}");
    let shown = pack.render();
    assert!(leaks(&shown, &entities).is_empty(), "{b:?}: {shown}");
    for n in &notes {
        assert!(!shown.contains(&n.text), "{b:?}: a raw memory in the pack");
    }
    for i in pack.section(Section::Shared) {
        assert!(i.layer.is_none() && i.id.starts_with("shared:"));
        assert!(notes.iter().all(|n| !i.id.contains(&n.companies[1])));
    }

    // Without consent, nothing at all crosses.
    let pack = s
        .engine
        .memory()
        .context(
            &scope("loner"),
            &ContextRequest {
                task_type: None,
                query: "board meeting agreement invoice".into(),
                budget: Some(8_000),
            },
        )
        .await
        .expect("pack");
    assert_eq!(pack.section(Section::Shared).count(), 0);
    assert!(pack.items.is_empty(), "{b:?}: {:?}", pack.items);
}

#[tokio::test]
async fn no_leaks_sqlite() {
    no_leaks(Backend::Sqlite).await;
}

#[tokio::test]
async fn no_leaks_postgres() {
    no_leaks(Backend::Postgres).await;
}

/// The engine keeps the company directory between packs; a change to a
/// partner (consent withdrawn, archived, a new partner), made straight in
/// the store at the same instant, is seen by the very next pack.
async fn a_kept_directory_never_hides_a_change(b: Backend) {
    let s = setup(b).await;
    plain(&s, "reader", "saas", "US-DE", &[TEMPLATES]).await;
    plain(&s, "p1", "saas", "US-DE", &[TEMPLATES]).await;
    let note = |m: &str| {
        vec![memory(
            EventType::Note,
            "playbooks",
            json!({ "text": format!("Onboarding checklist {m}: contracts first.") }),
        )]
    };
    let m = add(&s, "p1", note("alpha")).await;
    publish(&s, "p1", &m, &[TEMPLATES]).await;
    let q = "onboarding checklist";
    assert_eq!(shared(&s, "reader", TEMPLATES, q).await.len(), 1);
    // Consent withdrawn: shared no more.
    take_back(&s, "p1", TEMPLATES, "*").await;
    assert!(shared(&s, "reader", TEMPLATES, q).await.is_empty(), "{b:?}");
    // A new partner is found at once.
    plain(&s, "p2", "saas", "US-DE", &[TEMPLATES]).await;
    let m = add(&s, "p2", note("bravo")).await;
    publish(&s, "p2", &m, &[TEMPLATES]).await;
    let got = shared(&s, "reader", TEMPLATES, q).await;
    assert_eq!(got.len(), 1, "{b:?}: {got:?}");
    assert!(got[0].contains("bravo"));
    // Archived: gone.
    s.store
        .archive_company(&scope("p2"), t0(), audit(Some("p2")))
        .await
        .expect("archive");
    assert!(shared(&s, "reader", TEMPLATES, q).await.is_empty(), "{b:?}");
}

#[tokio::test]
async fn a_kept_directory_never_hides_a_change_sqlite() {
    a_kept_directory_never_hides_a_change(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_kept_directory_never_hides_a_change_postgres() {
    a_kept_directory_never_hides_a_change(Backend::Postgres).await;
}

/// A contract text written before anyone listed the counterparty it names
/// is still matched when another company lists it later; a note naming it,
/// or a text with a near-miss of the name, is not.
async fn a_later_listing_finds_an_earlier_contract_text(b: Backend) {
    let s = setup(b).await;
    for c in ["xeno", "yarr", "zulu"] {
        plain(&s, c, "fintech", "US-DE", &[TEMPLATES]).await;
    }
    add(
        &s,
        "xeno",
        vec![memory(
            EventType::Contract,
            "general",
            json!({"text": "Signed the data licence with Initech Systems on the first of May."}),
        )],
    )
    .await;
    add(
        &s,
        "zulu",
        vec![
            memory(
                EventType::Note,
                "general",
                json!({"text": "Coffee with someone from Initech Systems."}),
            ),
            memory(
                EventType::Contract,
                "general",
                json!({"text": "Renewed with Initech Systemic Partners."}),
            ),
        ],
    )
    .await;
    assert!(
        open_flags(&s).await.is_empty(),
        "{b:?}: nobody lists it yet"
    );
    add(
        &s,
        "yarr",
        vec![memory(
            EventType::Note,
            "general",
            json!({"text": "Pipeline review.", "counterparties": ["Initech Systems"]}),
        )],
    )
    .await;
    let flags = open_flags(&s).await;
    assert_eq!(
        flags,
        [("xeno".into(), "yarr".into(), "initech systems".into(), 2)],
        "{b:?}: only the earlier contract text counts"
    );
    // The scan read xeno's text: audited naming xeno, for the admin only.
    let entries = audit_of_all(&s).await;
    assert!(
        entries.iter().any(|e| e.action == "memory.conflict_scan"
            && e.company_id.is_none()
            && e.detail.contains("company:xeno")
            && e.detail.contains("initech systems")),
        "{b:?}"
    );
}

#[tokio::test]
async fn a_later_listing_finds_an_earlier_contract_text_sqlite() {
    a_later_listing_finds_an_earlier_contract_text(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_later_listing_finds_an_earlier_contract_text_postgres() {
    a_later_listing_finds_an_earlier_contract_text(Backend::Postgres).await;
}

/// Only what the owner published crosses, and only while both companies
/// consent to the scope with each other: raw memories never; one side's
/// consent, or a consent naming someone else, shares nothing; taking a
/// consent back or withdrawing the item stops sharing with the next pack.
async fn published_items_and_consent_on_both_sides(b: Backend) {
    let s = setup(b).await;
    plain(&s, "reader", "saas", "US-DE", &[]).await;
    plain(&s, "owner", "saas", "US-DE", &[]).await;
    plain(&s, "other", "saas", "US-DE", &[]).await;
    let q = "onboarding checklist zanzibar";
    let m = add(
        &s,
        "owner",
        vec![memory(
            EventType::Note,
            "playbooks",
            json!({
                "text": "Onboarding checklist zanzibar: Oskar Thorvaldsen of Halvorsen Capital \
                         Partners pays into DE89 3704 0044 0532 0130 00.",
                "people": ["Hedda Lund"],
            }),
        )],
    )
    .await;
    // Both consent, nothing published: nothing, however well it matches.
    give(&s, "reader", TEMPLATES, "*").await;
    give(&s, "owner", TEMPLATES, "*").await;
    assert!(shared(&s, "reader", TEMPLATES, q).await.is_empty(), "{b:?}");

    let items = publish(&s, "owner", &m, &[TEMPLATES]).await;
    // Once per memory and scope; a scope is a name.
    for (scope_name, conflict) in [(TEMPLATES, true), ("Not A Scope", false)] {
        let again = s
            .engine
            .sharing()
            .publish(
                &scope("owner"),
                m[0].id,
                scope_name,
                "operator",
                audit(Some("owner")),
            )
            .await;
        assert!(
            if conflict {
                matches!(
                    again,
                    Err(kira_engine::EngineError::Store(
                        kira_store::StoreError::Conflict(_)
                    ))
                )
            } else {
                matches!(again, Err(kira_engine::EngineError::Invalid(_)))
            },
            "{b:?}: {again:?}"
        );
    }
    let got = shared(&s, "reader", TEMPLATES, q).await;
    assert_eq!(got.len(), 1, "{b:?}: {got:?}");
    let published = s
        .engine
        .sharing()
        .published(&scope("owner"), Some(TEMPLATES), false)
        .await
        .expect("list");
    assert_eq!(got[0], published[0].text, "the published text, as stored");
    for gone in ["Oskar", "Thorvaldsen", "Halvorsen", "DE89", "3704", "owner"] {
        assert!(!got[0].contains(gone), "{b:?}: {gone} in {}", got[0]);
    }
    assert!(got[0].contains("zanzibar"), "{}", got[0]);

    // One side only: the owner's consent names another company.
    take_back(&s, "owner", TEMPLATES, "*").await;
    give(&s, "owner", TEMPLATES, "other").await;
    assert!(shared(&s, "reader", TEMPLATES, q).await.is_empty(), "{b:?}");
    // Named: the reader itself.
    give(&s, "owner", TEMPLATES, "reader").await;
    assert_eq!(shared(&s, "reader", TEMPLATES, q).await.len(), 1, "{b:?}");
    // The reader takes its own consent back: nothing.
    take_back(&s, "reader", TEMPLATES, "*").await;
    assert!(shared(&s, "reader", TEMPLATES, q).await.is_empty(), "{b:?}");
    give(&s, "reader", TEMPLATES, "owner").await;
    assert_eq!(shared(&s, "reader", TEMPLATES, q).await.len(), 1, "{b:?}");
    // The explainer names the consents that decided.
    let admin = Principal::system().admin().expect("admin");
    let check = s
        .engine
        .sharing()
        .check(&admin, &id("reader"), &id("owner"), TEMPLATES)
        .await
        .expect("check");
    assert!(check.verdict.allowed, "{check:?}");
    assert!(
        check
            .verdict
            .reason
            .contains("owner consents to process_templates with reader"),
        "{}",
        check.verdict.reason
    );
    // Another scope was never published: nothing there.
    give(&s, "reader", LEGAL, "*").await;
    give(&s, "owner", LEGAL, "*").await;
    assert!(shared(&s, "reader", LEGAL, q).await.is_empty(), "{b:?}");

    // Withdrawn: gone from the very next pack; a second withdrawal is a
    // conflict.
    s.engine
        .sharing()
        .withdraw(&scope("owner"), items[0], "operator", audit(Some("owner")))
        .await
        .expect("withdraw");
    assert!(shared(&s, "reader", TEMPLATES, q).await.is_empty(), "{b:?}");
    let again = s
        .engine
        .sharing()
        .withdraw(&scope("owner"), items[0], "operator", audit(Some("owner")))
        .await;
    assert!(
        matches!(
            again,
            Err(kira_engine::EngineError::Store(
                kira_store::StoreError::Conflict(_)
            ))
        ),
        "{again:?}"
    );
    // Another company cannot withdraw (or see) the owner's item.
    let theirs = s
        .engine
        .sharing()
        .withdraw(
            &scope("reader"),
            items[0],
            "operator",
            audit(Some("reader")),
        )
        .await;
    assert!(
        matches!(
            theirs,
            Err(kira_engine::EngineError::Store(
                kira_store::StoreError::NotFound
            ))
        ),
        "{theirs:?}"
    );
    assert!(
        s.engine
            .sharing()
            .published(&scope("reader"), None, true)
            .await
            .expect("list")
            .is_empty()
    );

    // A memory deleted for good takes its published items with it.
    publish(&s, "owner", &m, &[TEMPLATES]).await;
    assert_eq!(shared(&s, "reader", TEMPLATES, q).await.len(), 1, "{b:?}");
    s.store
        .delete_memory(&scope("owner"), m[0].id, audit(Some("owner")))
        .await
        .expect("delete");
    assert!(shared(&s, "reader", TEMPLATES, q).await.is_empty(), "{b:?}");
    assert!(
        s.engine
            .sharing()
            .published(&scope("owner"), None, true)
            .await
            .expect("list")
            .is_empty(),
        "{b:?}"
    );

    // A forced delete of the owner takes the reader's consent naming it,
    // so a company made later under the same id inherits nothing.
    s.store
        .delete_company(&scope("owner"), audit(Some("owner")))
        .await
        .expect("delete");
    let left: Vec<String> = s
        .engine
        .sharing()
        .consents(&admin, &id("reader"))
        .await
        .expect("consents")
        .iter()
        .map(|c| format!("{} {}", c.scope, c.partner))
        .collect();
    assert_eq!(left, [format!("{LEGAL} *")], "{b:?}");
}

#[tokio::test]
async fn published_items_and_consent_on_both_sides_sqlite() {
    published_items_and_consent_on_both_sides(Backend::Sqlite).await;
}

#[tokio::test]
async fn published_items_and_consent_on_both_sides_postgres() {
    published_items_and_consent_on_both_sides(Backend::Postgres).await;
}
