//! The sharing rule table through the API: every rule of SEED 2.3, both
//! directions, consent missing, and an open conflict, which blocks
//! everything until it is resolved. And issue 17's first finding from the
//! attacker's side: a company's keys get nothing of another company but
//! what that company published, with both sides' consent, anonymised.

use std::sync::Arc;

use kira_core::audit::{AuditRecord, Outcome};
use kira_core::auth::Principal;
use kira_core::{CompanyId, clock::Clock, clock::SystemClock};
use kira_store::Store;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{Backend, Server};

/// A company whose admin-set consents exchange each of `consent` with
/// every partner.
async fn company(s: &Server, id: &str, industry: &str, jurisdiction: &str, consent: &[&str]) {
    s.admin_ok(
        Method::POST,
        "/v1/companies",
        Some(json!({
            "id": id, "name": format!("{id} corp"), "industry": industry,
            "jurisdiction": jurisdiction,
        })),
    )
    .await;
    for scope in consent {
        s.admin_ok(
            Method::PUT,
            &format!("/v1/companies/{id}/sharing/consents"),
            Some(json!({"scope": scope, "partner": "*"})),
        )
        .await;
    }
}

async fn check(s: &Server, a: &str, b: &str, scope: &str) -> Value {
    s.admin_ok(
        Method::GET,
        &format!("/v1/sharing/check?a={a}&b={b}&scope={scope}"),
        None,
    )
    .await
}

async fn open_store(s: &Server, backend: Backend) -> Arc<dyn Store> {
    match backend {
        Backend::Sqlite => Arc::new(
            kira_store::sqlite::SqliteStore::open(&s.db_url)
                .await
                .expect("sqlite"),
        ),
        Backend::Postgres => Arc::new(
            kira_store::postgres::PgStore::open(&s.db_url, None)
                .await
                .expect("postgres"),
        ),
    }
}

/// (a, b, scope, allowed, flagged, rule)
type Row = (
    &'static str,
    &'static str,
    &'static str,
    bool,
    bool,
    Option<&'static str>,
);

const LEGAL: &str = "anonymized_legal_patterns";
const TEMPLATES: &str = "process_templates";

async fn table(backend: Backend) {
    let s = Server::start(backend).await;
    company(&s, "fin-de", "fintech", "US-DE", &[TEMPLATES, LEGAL]).await;
    company(&s, "bank-de", "Banking", "US-DE", &[TEMPLATES, LEGAL]).await;
    company(&s, "fin-ca", "fintech", "US-CA", &[]).await;
    company(&s, "saas-de", "saas", "US-DE", &[TEMPLATES]).await;
    let rows: Vec<Row> = vec![
        // legal_precedent_sharing: same jurisdiction and similar industry.
        (
            "fin-de",
            "bank-de",
            LEGAL,
            true,
            false,
            Some("legal_precedent_sharing"),
        ),
        // ... but not another jurisdiction, nor a dissimilar industry.
        ("fin-de", "fin-ca", LEGAL, false, false, None),
        ("fin-de", "saas-de", LEGAL, false, false, None),
        // best_practice_sharing: both consent.
        (
            "fin-de",
            "saas-de",
            TEMPLATES,
            true,
            false,
            Some("best_practice_sharing"),
        ),
        // Consent missing on one side.
        ("fin-de", "fin-ca", TEMPLATES, false, false, None),
        // A scope no rule grants.
        ("fin-de", "bank-de", "customer_lists", false, false, None),
    ];
    for (a, b, scope, allowed, flagged, rule) in &rows {
        for (x, y) in [(a, b), (b, a)] {
            let v = check(&s, x, y, scope).await;
            let got = (
                v["verdict"]["allowed"].as_bool(),
                v["verdict"]["flagged_for_review"].as_bool(),
                v["verdict"]["rule"].as_str(),
            );
            assert_eq!(
                got,
                (Some(*allowed), Some(*flagged), *rule),
                "{x} {y} {scope}: {v}"
            );
            assert_eq!(v["conflict_open"], false);
        }
    }
    let v = check(&s, "fin-de", "fin-ca", TEMPLATES).await;
    let reason = v["verdict"]["reason"].as_str().expect("reason");
    assert!(reason.contains("consent missing on one side"), "{reason}");

    // An open conflict flags the pair and blocks every scope, both ways.
    let store = open_store(&s, backend).await;
    let admin = Principal::system().admin().expect("admin");
    let record = AuditRecord {
        at: SystemClock.now(),
        request_id: "test".into(),
        actor: "system".into(),
        company_id: None,
        action: "conflict.flag".into(),
        target: "conflict".into(),
        outcome: Outcome::Ok,
        detail: String::new(),
    };
    let flag = store
        .flag_conflict(
            &admin,
            Uuid::now_v7(),
            &CompanyId::parse("bank-de").expect("id"),
            &CompanyId::parse("fin-de").expect("id"),
            "Globex",
            &[Uuid::now_v7()],
            SystemClock.now(),
            record,
        )
        .await
        .expect("flag")
        .expect("new");
    for scope in [LEGAL, TEMPLATES] {
        for (x, y) in [("fin-de", "bank-de"), ("bank-de", "fin-de")] {
            let v = check(&s, x, y, scope).await;
            assert_eq!(v["conflict_open"], true, "{v}");
            assert_eq!(v["verdict"]["allowed"], false, "{v}");
            assert_eq!(v["verdict"]["flagged_for_review"], true, "{v}");
            assert_eq!(v["verdict"]["rule"], "conflict_prevention", "{v}");
        }
    }
    // Other pairs are untouched.
    let v = check(&s, "fin-de", "saas-de", TEMPLATES).await;
    assert_eq!(v["verdict"]["allowed"], true, "{v}");

    let list = s.admin_ok(Method::GET, "/v1/conflicts", None).await;
    assert_eq!(list["conflicts"][0]["id"], json!(flag.id));
    assert_eq!(list["conflicts"][0]["counterparty"], "globex");
    let path = format!("/v1/conflicts/{}/resolve", flag.id);
    let (st, v) = s
        .call(
            Method::POST,
            &path,
            Some(&s.admin),
            Some(json!({"note": " "})),
        )
        .await;
    assert_eq!(
        (st, v["error"]["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("note"))
    );
    let v = s
        .admin_ok(
            Method::POST,
            &path,
            Some(json!({"note": "different deals"})),
        )
        .await;
    assert_eq!(v["status"], "resolved");
    let (st, _) = s
        .call(
            Method::POST,
            &path,
            Some(&s.admin),
            Some(json!({"note": "again"})),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    let v = check(&s, "bank-de", "fin-de", LEGAL).await;
    assert_eq!(v["verdict"]["rule"], "legal_precedent_sharing", "{v}");
    assert_eq!(
        s.admin_ok(Method::GET, "/v1/conflicts", None).await["conflicts"],
        json!([])
    );
    let all = s
        .admin_ok(Method::GET, "/v1/conflicts?status=all", None)
        .await;
    assert_eq!(all["conflicts"].as_array().expect("list").len(), 1);

    // Bad input names the parameter.
    for (path, status, field) in [
        ("/v1/sharing/check?a=fin-de&b=fin-de&scope=x", 422, "b"),
        (
            "/v1/sharing/check?a=fin-de&b=bank-de&scope=Bad Scope",
            422,
            "scope",
        ),
        ("/v1/sharing/check?a=fin-de&b=bank-de", 400, "scope"),
        ("/v1/sharing/check?a=NOPE&b=bank-de&scope=x", 400, "a"),
        ("/v1/conflicts?status=maybe", 400, "status"),
    ] {
        let (st, v) = s.call(Method::GET, path, Some(&s.admin), None).await;
        assert_eq!(st.as_u16(), status, "{path}: {v}");
        assert_eq!(v["error"]["field"], field, "{path}: {v}");
    }
    let (st, _) = s
        .call(
            Method::GET,
            "/v1/sharing/check?a=fin-de&b=ghost&scope=x",
            Some(&s.admin),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sharing_rule_table() {
    table(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sharing_rule_table() {
    table(Backend::Postgres).await;
}

/// Through the API: two companies' memories naming one counterparty open a
/// flag the explainer reports, and a caller of one company naming the
/// other is refused, audited and counted in `GET /v1/conflicts`.
async fn detection_and_denials(backend: Backend) {
    let s = Server::start(backend).await;
    company(&s, "fin-de", "fintech", "US-DE", &[TEMPLATES]).await;
    company(&s, "bank-de", "Banking", "US-DE", &[TEMPLATES]).await;
    for (c, text) in [("fin-de", "Supply talks"), ("bank-de", "Credit line")] {
        s.admin_ok(
            Method::POST,
            &format!("/v1/companies/{c}/memory"),
            Some(json!({
                "occurred_at": "2026-01-05T10:00:00Z", "event_type": "note", "workstream": "general",
                "content": {"text": text, "counterparties": ["Initech LLC"]},
            })),
        )
        .await;
    }
    let list = s.admin_ok(Method::GET, "/v1/conflicts", None).await;
    let flags = list["conflicts"].as_array().expect("list");
    assert_eq!(flags.len(), 1, "{list}");
    assert_eq!(flags[0]["counterparty"], "initech llc");
    assert_eq!(flags[0]["company_a"], "bank-de");
    assert_eq!(flags[0]["company_b"], "fin-de");
    let v = check(&s, "fin-de", "bank-de", TEMPLATES).await;
    assert_eq!(v["conflict_open"], true, "{v}");
    assert_eq!(v["verdict"]["allowed"], false, "{v}");

    let before = list["denied_cross_company_reads"].as_u64().expect("count");
    let (_, token) = s.key("operator", Some("fin-de")).await;
    let (st, _) = s
        .call(
            Method::GET,
            "/v1/companies/bank-de/memory",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let list = s.admin_ok(Method::GET, "/v1/conflicts", None).await;
    assert_eq!(
        list["denied_cross_company_reads"].as_u64(),
        Some(before + 1),
        "{list}"
    );
    let audit = s.audit().await;
    assert!(
        audit
            .iter()
            .any(|e| e["outcome"] == "denied" && e["target"] == "company:bank-de"),
        "{audit:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_detection_and_denials() {
    detection_and_denials(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_detection_and_denials() {
    detection_and_denials(Backend::Postgres).await;
}

/// What B wrote, with a marker that survives anonymising (so its arrival
/// shows) and what must never reach A: unlisted people and organisations,
/// a code name, an IBAN, an email, a phone number and an amount.
const B_NOTE: &str = "Settlement playbook quokkaplan: Gregor Vantongeren of Zephyrine \
    Logistics GmbH agreed under Project Nightjar to pay $1,250,000 into \
    DE89 3704 0044 0532 0130 00; questions to g.vantongeren@zephyrine.example \
    or +44 20 7946 0958.";
const NEVER: [&str; 10] = [
    "Gregor",
    "Vantongeren",
    "Zephyrine",
    "Nightjar",
    "1,250,000",
    "DE89",
    "3704 0044",
    "zephyrine.example",
    "7946 0958",
    "victim",
];

/// Issue 17, finding 1, from the attacker's side: A's operator and viewer
/// keys only. Even with A's profile made to match B's by an admin, A's
/// context packs, searches and published list hold nothing of B until B
/// published an item and both consented; then only its anonymised text;
/// after B withdraws it, nothing again. A's keys cannot give consent nor
/// publish or read B's items.
async fn a_reads_only_what_b_published(backend: Backend) {
    let s = Server::start(backend).await;
    company(&s, "attacker", "saas", "GB", &[]).await;
    company(&s, "victim", "fintech", "US-DE", &[]).await;
    let (_, operator) = s.key("operator", Some("attacker")).await;
    let (_, viewer) = s.key("viewer", Some("attacker")).await;
    let (_, b_operator) = s.key("operator", Some("victim")).await;
    let mut b_memories = Vec::new();
    for (workstream, text) in [
        ("legal", B_NOTE.to_owned()),
        ("general", format!("General note: {B_NOTE}")),
    ] {
        let m = s
            .admin_ok(
                Method::POST,
                "/v1/companies/victim/memory",
                Some(json!({
                    "occurred_at": "2026-01-05T10:00:00Z", "event_type": "note",
                    "workstream": workstream, "content": {"text": text},
                })),
            )
            .await;
        b_memories.push(m["id"].as_str().expect("id").to_owned());
    }
    // The admin makes A look like B: same jurisdiction, same industry.
    s.admin_ok(
        Method::PATCH,
        "/v1/companies/attacker",
        Some(json!({"jurisdiction": "US-DE", "industry": "fintech"})),
    )
    .await;

    // Everything A's keys can ask that could carry B's words.
    let probe = |marker_expected: bool| {
        let s = &s;
        let (operator, viewer) = (operator.clone(), viewer.clone());
        async move {
            let mut seen = Vec::new();
            for token in [&operator, &viewer] {
                for path in [
                    "/v1/companies/attacker/context?task_type=legal&q=settlement%20playbook%20quokkaplan%20Vantongeren&budget=4000",
                    "/v1/companies/attacker/context?q=settlement%20playbook%20quokkaplan&budget=4000",
                    "/v1/companies/attacker/context?task_type=general&q=quokkaplan%20Zephyrine&budget=4000",
                    "/v1/companies/attacker/memory/search?q=quokkaplan%20Vantongeren",
                    "/v1/companies/attacker/memory",
                    "/v1/companies/attacker/shared?withdrawn=true",
                    "/v1/audit?company=attacker",
                ] {
                    let (st, v) = s.call(Method::GET, path, Some(token), None).await;
                    assert_eq!(st, StatusCode::OK, "{path}: {v}");
                    let body = v.to_string();
                    for never in NEVER {
                        assert!(
                            !body.contains(never),
                            "{backend:?} {path}: {never} in {body}"
                        );
                    }
                    seen.push((path, body));
                }
            }
            let legal = &seen[0].1;
            assert_eq!(
                legal.contains("quokkaplan"),
                marker_expected,
                "{backend:?}: {legal}"
            );
            seen
        }
    };
    probe(false).await;

    // A's keys cannot consent, for A or for B, nor touch B's items.
    for (method, path, body) in [
        (
            Method::PUT,
            "/v1/companies/attacker/sharing/consents",
            Some(json!({"scope": LEGAL, "partner": "*"})),
        ),
        (
            Method::PUT,
            "/v1/companies/victim/sharing/consents",
            Some(json!({"scope": LEGAL, "partner": "*"})),
        ),
        (Method::GET, "/v1/companies/attacker/sharing/consents", None),
    ] {
        let (st, v) = s.call(method, path, Some(&operator), body).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{path}: {v}");
    }
    let (st, _) = s
        .call(
            Method::POST,
            "/v1/companies/victim/shared",
            Some(&operator),
            Some(json!({"memory_id": b_memories[0], "scope": LEGAL})),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // Publishing B's memory id as A's own: A has no such memory.
    let (st, _) = s
        .call(
            Method::POST,
            "/v1/companies/attacker/shared",
            Some(&operator),
            Some(json!({"memory_id": b_memories[0], "scope": LEGAL})),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = s
        .call(
            Method::GET,
            "/v1/companies/victim/shared",
            Some(&operator),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // The old profile field grants nothing, whoever sets it.
    s.admin_ok(
        Method::PATCH,
        "/v1/companies/attacker",
        Some(json!({"sharing_consent": [LEGAL, TEMPLATES]})),
    )
    .await;
    s.admin_ok(
        Method::PATCH,
        "/v1/companies/victim",
        Some(json!({"sharing_consent": [LEGAL, TEMPLATES]})),
    )
    .await;
    probe(false).await;

    // B consents, and B's operator publishes its legal note: A has not
    // consented, so still nothing.
    s.admin_ok(
        Method::PUT,
        "/v1/companies/victim/sharing/consents",
        Some(json!({"scope": LEGAL, "partner": "attacker"})),
    )
    .await;
    let (st, item) = s
        .call(
            Method::POST,
            "/v1/companies/victim/shared",
            Some(&b_operator),
            Some(json!({"memory_id": b_memories[0], "scope": LEGAL})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{item}");
    let text = item["text"].as_str().expect("text");
    assert!(text.contains("quokkaplan"), "{text}");
    for never in NEVER {
        assert!(
            !text.contains(never),
            "{never} in the published text {text}"
        );
    }
    probe(false).await;

    // Both consent: A receives the published text, anonymised, and nothing
    // else of B (not the general note, which B never published).
    s.admin_ok(
        Method::PUT,
        "/v1/companies/attacker/sharing/consents",
        Some(json!({"scope": LEGAL, "partner": "*"})),
    )
    .await;
    let seen = probe(true).await;
    assert!(seen[0].1.contains("shared:"), "{}", seen[0].1);
    assert!(!seen[0].1.contains("General note"), "{}", seen[0].1);
    // The explainer (admin) names both consents.
    let v = check(&s, "attacker", "victim", LEGAL).await;
    assert_eq!(v["verdict"]["allowed"], true, "{v}");
    let reason = v["verdict"]["reason"].as_str().expect("reason");
    assert!(
        reason.contains("victim consents to anonymized_legal_patterns with attacker")
            && reason.contains("attacker consents to anonymized_legal_patterns with *"),
        "{reason}"
    );

    // B withdraws: gone from A's next pack.
    let item_id = item["id"].as_str().expect("id");
    let (st, v) = s
        .call(
            Method::DELETE,
            &format!("/v1/companies/victim/shared/{item_id}"),
            Some(&b_operator),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(v["withdrawn_at"].is_string(), "{v}");
    probe(false).await;

    // Every change was audited under its company, naming no other one.
    // (A's refused attempts on B are in A's log as "another company".)
    let audit = s.audit().await;
    for action in ["sharing.publish", "sharing.withdraw", "sharing.consent"] {
        let entries: Vec<&Value> = audit.iter().filter(|e| e["action"] == action).collect();
        assert!(!entries.is_empty(), "{action} audited");
        for e in entries {
            // The admin's own entries (company none) may name both.
            let Some(c) = e["company_id"].as_str() else {
                continue;
            };
            let other = if c == "victim" { "attacker" } else { "victim" };
            assert!(!e["detail"].to_string().contains(other), "{e}");
        }
    }
    // B's own log says its items were read, never by whom; the admin's
    // entry names both.
    let (st, own) = s
        .call(
            Method::GET,
            "/v1/audit?company=victim&limit=1000",
            Some(&b_operator),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{own}");
    let entries = own["entries"].as_array().expect("entries");
    assert!(
        entries.iter().any(|e| e["action"] == "sharing.read"),
        "{backend:?}: B's log records the read: {own}"
    );
    assert!(
        !own.to_string().contains("attacker"),
        "{backend:?}: B's log names A: {own}"
    );
    assert!(
        audit.iter().any(|e| e["action"] == "sharing.read"
            && e["company_id"].is_null()
            && e["detail"].to_string().contains("attacker")),
        "{backend:?}: the admin's entry names the reader"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_reads_only_what_b_published() {
    a_reads_only_what_b_published(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_reads_only_what_b_published() {
    a_reads_only_what_b_published(Backend::Postgres).await;
}
