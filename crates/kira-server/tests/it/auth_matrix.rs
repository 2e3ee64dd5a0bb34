//! Every route x every role x own/other company: the status code, on both
//! backends (a `metrics` key: `GET /metrics` and the public routes, 403 on
//! every other). Afterwards, every denied cross-company attempt is in the
//! audit log.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Backend, Server};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Anonymous,
    BadToken,
    Admin,
    Operator,
    Viewer,
    /// A `metrics` key: it may scrape and nothing else.
    Metrics,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Own,
    Other,
}

const WHO: [Who; 6] = [
    Who::Anonymous,
    Who::BadToken,
    Who::Admin,
    Who::Operator,
    Who::Viewer,
    Who::Metrics,
];

struct Route {
    method: Method,
    /// `{c}`: the target company; `{k}`: a key made for this cell.
    path: &'static str,
    body: Option<Value>,
    /// The status when authenticated (401 is checked separately).
    expect: fn(Who, Target) -> u16,
    /// Changes the target for good: an admin cell gets a company of its own.
    destructive: bool,
}

fn public(_: Who, _: Target) -> u16 {
    200
}
fn anyone_own(w: Who, t: Target) -> u16 {
    match (w, t) {
        (Who::Admin, _) | (_, Target::Own) => 200,
        _ => 404,
    }
}
fn writer_own(w: Who, t: Target) -> u16 {
    match (w, t) {
        (Who::Admin, _) | (Who::Operator, Target::Own) => 200,
        (Who::Viewer, Target::Own) => 403,
        _ => 404,
    }
}
fn admin_on_company(w: Who, t: Target) -> u16 {
    match (w, t) {
        (Who::Admin, _) => 200,
        (_, Target::Own) => 403,
        // The role check comes first: a non-admin learns nothing about the other company either way.
        (_, Target::Other) => 403,
    }
}
fn admin_only(w: Who, _: Target) -> u16 {
    if w == Who::Admin { 200 } else { 403 }
}
fn admin_creates(w: Who, _: Target) -> u16 {
    if w == Who::Admin { 201 } else { 403 }
}
fn anyone(_: Who, _: Target) -> u16 {
    200
}
fn writer_creates(w: Who, t: Target) -> u16 {
    match writer_own(w, t) {
        200 => 201,
        s => s,
    }
}
fn admin_deletes(w: Who, _: Target) -> u16 {
    if w == Who::Admin { 204 } else { 403 }
}
/// Acknowledge and resolve: the role check first (a viewer learns nothing
/// of any alert), then another company's alert is not found.
fn writer_alert(w: Who, t: Target) -> u16 {
    match (w, t) {
        (Who::Admin, _) | (Who::Operator, Target::Own) => 200,
        (Who::Viewer, _) => 403,
        _ => 404,
    }
}
fn admin_finds_nothing(w: Who, _: Target) -> u16 {
    if w == Who::Admin { 404 } else { 403 }
}

fn routes() -> Vec<Route> {
    let r = |method, path, body, expect, destructive| Route {
        method,
        path,
        body,
        expect,
        destructive,
    };
    vec![
        r(
            Method::GET,
            "/healthz",
            None,
            public as fn(Who, Target) -> u16,
            false,
        ),
        r(Method::GET, "/readyz", None, public, false),
        r(Method::GET, "/v1/openapi.json", None, public, false),
        r(Method::GET, "/v1/whoami", None, anyone, false),
        r(Method::GET, "/v1/agents", None, anyone, false),
        r(Method::GET, "/v1/agents/legal", None, anyone, false),
        r(
            Method::POST,
            "/v1/companies",
            Some(json!({})),
            admin_creates,
            false,
        ),
        r(Method::GET, "/v1/companies", None, anyone, false),
        r(Method::GET, "/v1/companies/{c}", None, anyone_own, false),
        // An operator may change the name; the fields that decide across
        // companies are the admin's (tests/it/isolation.rs).
        r(
            Method::PATCH,
            "/v1/companies/{c}",
            Some(json!({"name": "Renamed corp"})),
            writer_own,
            false,
        ),
        r(
            Method::POST,
            "/v1/companies/{c}/archive",
            None,
            admin_on_company,
            true,
        ),
        r(
            Method::DELETE,
            "/v1/companies/{c}?force=true",
            None,
            admin_on_company,
            true,
        ),
        r(
            Method::POST,
            "/v1/keys",
            Some(json!({"name": "k", "role": "viewer", "company_id": "{c}"})),
            admin_creates,
            false,
        ),
        r(Method::GET, "/v1/keys", None, admin_only, false),
        r(Method::POST, "/v1/keys/{k}/revoke", None, admin_only, false),
        r(
            Method::GET,
            "/v1/audit?company={c}",
            None,
            anyone_own,
            false,
        ),
        r(Method::GET, "/v1/audit/verify", None, admin_only, false),
        r(
            Method::POST,
            "/v1/companies/{c}/tasks",
            Some(json!({"task": "Summarise the week", "type": "routine_status_update"})),
            writer_creates,
            false,
        ),
        r(
            Method::GET,
            "/v1/companies/{c}/tasks",
            None,
            anyone_own,
            false,
        ),
        r(
            Method::GET,
            "/v1/companies/{c}/tasks/{t}",
            None,
            anyone_own,
            false,
        ),
        r(
            Method::POST,
            "/v1/companies/{c}/tasks/{fresh}/cancel",
            None,
            writer_own,
            false,
        ),
        r(
            Method::GET,
            "/v1/companies/{c}/tasks/{t}/events",
            None,
            anyone_own,
            false,
        ),
        r(
            Method::GET,
            "/v1/companies/{c}/tasks/{done}/watch",
            None,
            anyone_own,
            false,
        ),
        r(
            Method::GET,
            "/v1/companies/{c}/tasks/{t}/trace",
            None,
            anyone_own,
            false,
        ),
        r(
            Method::GET,
            "/v1/companies/{c}/reviews",
            None,
            anyone_own,
            false,
        ),
        r(
            Method::POST,
            "/v1/companies/{c}/tasks/{revfresh}/review",
            Some(json!({"decision": "approve", "rating": 4})),
            writer_own,
            false,
        ),
        r(
            Method::POST,
            "/v1/companies/{c}/tasks/{rev}/rating",
            Some(json!({"rating": 3})),
            writer_creates,
            false,
        ),
        r(
            Method::GET,
            "/v1/companies/{c}/tasks/{rev}/reviews",
            None,
            anyone_own,
            false,
        ),
        r(Method::GET, "/v1/budget", None, anyone, false),
        r(Method::GET, "/v1/budget/requests", None, admin_only, false),
        r(
            Method::POST,
            "/v1/budget/requests/{r}/approve",
            None,
            admin_finds_nothing,
            false,
        ),
        r(
            Method::POST,
            "/v1/budget/requests/{r}/reject",
            Some(json!({"note": "no"})),
            admin_finds_nothing,
            false,
        ),
        r(Method::GET, "/v1/budget/verify", None, admin_only, false),
        r(Method::GET, "/metrics", None, admin_only, false),
        r(Method::GET, "/v1/metrics/system", None, admin_only, false),
        r(
            Method::GET,
            "/v1/companies/{c}/metrics",
            None,
            anyone_own,
            false,
        ),
        r(Method::GET, "/v1/agents/legal/metrics", None, anyone, false),
        r(Method::GET, "/v1/dashboard", None, admin_only, false),
        r(
            Method::GET,
            "/v1/companies/{c}/dashboard",
            None,
            anyone_own,
            false,
        ),
        r(
            Method::POST,
            "/v1/knowledge",
            Some(crate::knowledge::entry("legal_frameworks", "matrix")),
            admin_creates,
            false,
        ),
        r(Method::GET, "/v1/knowledge", None, anyone, false),
        r(
            Method::GET,
            "/v1/knowledge/search?q=delaware",
            None,
            anyone,
            false,
        ),
        r(Method::GET, "/v1/knowledge/{kb}", None, anyone, false),
        r(
            Method::DELETE,
            "/v1/knowledge/{kbfresh}",
            None,
            admin_deletes,
            false,
        ),
        r(
            Method::GET,
            "/v1/sharing/check?a=acme&b=other&scope=process_templates",
            None,
            admin_only,
            false,
        ),
        r(Method::GET, "/v1/conflicts", None, admin_only, false),
        r(
            Method::POST,
            "/v1/companies/{c}/memory",
            Some(json!({
                "occurred_at": "2026-01-05T10:00:00Z",
                "event_type": "note",
                "content": {"text": "Matrix note"}
            })),
            writer_creates,
            false,
        ),
        r(
            Method::GET,
            "/v1/companies/{c}/memory",
            None,
            anyone_own,
            false,
        ),
        r(
            Method::GET,
            "/v1/companies/{c}/memory/search?q=delaware",
            None,
            anyone_own,
            false,
        ),
        r(
            Method::POST,
            "/v1/companies/{c}/memory/compact",
            Some(json!({"dry_run": true})),
            writer_own,
            false,
        ),
        r(
            Method::GET,
            "/v1/companies/{c}/memory/{m}",
            None,
            anyone_own,
            false,
        ),
        r(
            Method::POST,
            "/v1/companies/{c}/memory/{mfresh}/archive",
            None,
            writer_own,
            false,
        ),
        r(
            Method::POST,
            "/v1/companies/{c}/memory/{marchived}/restore",
            None,
            writer_own,
            false,
        ),
        r(
            Method::DELETE,
            "/v1/companies/{c}/memory/{mfresh}",
            None,
            admin_on_company,
            false,
        ),
        r(
            Method::GET,
            "/v1/companies/{c}/context?q=delaware&task_type=legal&budget=500",
            None,
            anyone_own,
            false,
        ),
        r(
            Method::POST,
            "/v1/conflicts/{r}/resolve",
            Some(json!({"note": "separate deals"})),
            admin_finds_nothing,
            false,
        ),
        r(
            Method::POST,
            "/v1/companies/{c}/shared",
            Some(json!({"memory_id": "{mfresh}", "scope": "process_templates"})),
            writer_creates,
            false,
        ),
        r(
            Method::GET,
            "/v1/companies/{c}/shared",
            None,
            anyone_own,
            false,
        ),
        r(
            Method::DELETE,
            "/v1/companies/{c}/shared/{ifresh}",
            None,
            writer_own,
            false,
        ),
        r(
            Method::GET,
            "/v1/companies/{c}/sharing/consents",
            None,
            admin_on_company,
            false,
        ),
        r(
            Method::PUT,
            "/v1/companies/{c}/sharing/consents",
            Some(json!({"scope": "process_templates", "partner": "*"})),
            admin_on_company,
            false,
        ),
        r(Method::GET, "/v1/alerts", None, anyone, false),
        r(Method::GET, "/v1/alerts/{alert}", None, anyone_own, false),
        r(
            Method::POST,
            "/v1/alerts/{afresh}/ack",
            None,
            writer_alert,
            false,
        ),
        r(
            Method::POST,
            "/v1/alerts/{afresh}/resolve",
            None,
            writer_alert,
            false,
        ),
        r(Method::GET, "/v1/alerts/silences", None, admin_only, false),
        r(
            Method::POST,
            "/v1/alerts/silences",
            Some(
                json!({"matchers": [{"name": "subject", "value": "company:{c}"}],
                        "ends_at": "{ends}", "comment": "maintenance"}),
            ),
            admin_creates,
            false,
        ),
        r(
            Method::DELETE,
            "/v1/alerts/silences/{sfresh}",
            None,
            admin_only,
            false,
        ),
        // After the PUT above, for both companies: there is one to take back.
        r(
            Method::DELETE,
            "/v1/companies/{c}/sharing/consents?scope=process_templates&partner=*",
            None,
            admin_on_company,
            false,
        ),
    ]
}

fn is_public(path: &str) -> bool {
    path == "/healthz" || path == "/readyz" || path == "/v1/openapi.json"
}

async fn matrix(backend: Backend) {
    // Every 401 audited: no per-address limit within this test's minute.
    let s = Server::start_with(
        backend,
        kira_server::ServerConfig {
            unauthenticated_audit_per_minute: 10_000,
            ..Default::default()
        },
    )
    .await;
    s.company("acme").await;
    s.company("other").await;
    let (operator_id, operator) = s.key("operator", Some("acme")).await;
    let (viewer_id, viewer) = s.key("viewer", Some("acme")).await;
    let (metrics_id, metrics) = s.key("metrics", None).await;
    let bad = "kira_aaaaaaaaaaaa_0123456789012345678901234567890123456789".to_owned();
    // Per company: a task that stays queued, and one already cancelled (its watch ends at once).
    let mut tasks = std::collections::HashMap::new();
    for c in ["acme", "other"] {
        let queued = s.task(c).await;
        let done = s.task(c).await;
        s.admin_ok(
            Method::POST,
            &format!("/v1/companies/{c}/tasks/{done}/cancel"),
            None,
        )
        .await;
        tasks.insert(c.to_owned(), (queued, done));
    }
    // Per company: a task waiting for review, kept for reads and ratings.
    let mut in_review = std::collections::HashMap::new();
    for c in ["acme", "other"] {
        in_review.insert(c.to_owned(), s.needs_review(c).await);
    }
    let kb = s.knowledge("legal_frameworks", "kept").await;
    let mut kept_memory = std::collections::HashMap::new();
    for c in ["acme", "other"] {
        kept_memory.insert(c.to_owned(), s.memory(c, false).await);
    }
    // Silences end within a year of now.
    let ends = {
        use kira_core::clock::Clock;
        (kira_core::clock::SystemClock.now() + chrono::TimeDelta::days(30)).to_rfc3339()
    };
    let mut kept_alert = std::collections::HashMap::new();
    for c in ["acme", "other"] {
        kept_alert.insert(c.to_owned(), firing_alert(&s, c).await);
    }
    let mut n = 0;
    let mut cells = 0;
    for route in routes() {
        for who in WHO {
            for target in [Target::Own, Target::Other] {
                n += 1;
                let mut company = if target == Target::Own {
                    "acme".to_owned()
                } else {
                    "other".to_owned()
                };
                if route.destructive && who == Who::Admin {
                    company = format!("tmp-{n}");
                    s.company(&company).await;
                }
                let key_id = if route.path.contains("{k}") {
                    s.key("viewer", Some("acme")).await.0
                } else {
                    String::new()
                };
                let fresh = if route.path.contains("{fresh}") {
                    s.task(&company).await
                } else {
                    String::new()
                };
                let revfresh = if route.path.contains("{revfresh}") {
                    s.needs_review(&company).await
                } else {
                    String::new()
                };
                let kbfresh = if route.path.contains("{kbfresh}") {
                    s.knowledge("business_patterns", &format!("fresh-{n}"))
                        .await
                } else {
                    String::new()
                };
                let in_body = |p: &str| {
                    route
                        .body
                        .as_ref()
                        .is_some_and(|b| b.to_string().contains(p))
                };
                let mfresh = if route.path.contains("{mfresh}") || in_body("{mfresh}") {
                    s.memory(&company, false).await
                } else {
                    String::new()
                };
                // A published item, fresh for each cell.
                let ifresh = if route.path.contains("{ifresh}") {
                    let m = s.memory(&company, false).await;
                    let item = s
                        .admin_ok(
                            Method::POST,
                            &format!("/v1/companies/{company}/shared"),
                            Some(json!({"memory_id": m, "scope": "process_templates"})),
                        )
                        .await;
                    item["id"].as_str().expect("item id").to_owned()
                } else {
                    String::new()
                };
                let marchived = if route.path.contains("{marchived}") {
                    s.memory(&company, true).await
                } else {
                    String::new()
                };
                let afresh = if route.path.contains("{afresh}") {
                    firing_alert(&s, &company).await
                } else {
                    String::new()
                };
                let sfresh = if route.path.contains("{sfresh}") {
                    let v = s
                        .admin_ok(
                            Method::POST,
                            "/v1/alerts/silences",
                            Some(json!({"matchers": [{"name": "rule", "value": "x"}],
                                        "ends_at": ends, "comment": "c"})),
                        )
                        .await;
                    v["id"].as_str().expect("silence id").to_owned()
                } else {
                    String::new()
                };
                let path = route
                    .path
                    .replace("{afresh}", &afresh)
                    .replace("{sfresh}", &sfresh)
                    .replace(
                        "{alert}",
                        kept_alert.get(&company).map_or("", String::as_str),
                    )
                    .replace("{revfresh}", &revfresh)
                    .replace("{rev}", in_review.get(&company).map_or("", String::as_str))
                    .replace("{mfresh}", &mfresh)
                    .replace("{ifresh}", &ifresh)
                    .replace("{marchived}", &marchived)
                    .replace("{m}", kept_memory.get(&company).map_or("", String::as_str))
                    .replace("{kbfresh}", &kbfresh)
                    .replace("{kb}", &kb)
                    .replace("{c}", &company)
                    .replace("{k}", &key_id)
                    .replace("{fresh}", &fresh)
                    .replace(
                        "{t}",
                        tasks
                            .get(&company)
                            .map_or("", |t: &(String, String)| t.0.as_str()),
                    )
                    .replace(
                        "{done}",
                        tasks
                            .get(&company)
                            .map_or("", |t: &(String, String)| t.1.as_str()),
                    )
                    .replace("{r}", "0190f3a0-0000-7000-8000-000000000000");
                let body = route.body.clone().map(|b| {
                    if route.path == "/v1/companies" && route.method == Method::POST {
                        crate::support::company_body(&format!("new-{n}"))
                    } else {
                        let b = b
                            .to_string()
                            .replace("{c}", &company)
                            .replace("{ends}", &ends)
                            .replace("{mfresh}", &mfresh);
                        serde_json::from_str(&b).expect("json")
                    }
                });
                let token = match who {
                    Who::Anonymous => None,
                    Who::BadToken => Some(bad.as_str()),
                    Who::Admin => Some(s.admin.as_str()),
                    Who::Operator => Some(operator.as_str()),
                    Who::Viewer => Some(viewer.as_str()),
                    Who::Metrics => Some(metrics.as_str()),
                };
                let expected = match who {
                    Who::Anonymous | Who::BadToken if !is_public(route.path) => 401,
                    Who::Metrics if is_public(route.path) || route.path == "/metrics" => 200,
                    Who::Metrics => 403,
                    _ => (route.expect)(who, target),
                };
                let (status, v) = s.call(route.method.clone(), &path, token, body).await;
                assert_eq!(
                    status.as_u16(),
                    expected,
                    "{:?} {} as {who:?} on {target:?}: {v}",
                    route.method,
                    path
                );
                if expected >= 400 {
                    assert!(v["error"]["code"].is_string(), "error body for {path}: {v}");
                }
                cells += 1;
            }
        }
    }
    assert_eq!(cells, 69 * 6 * 2);

    // Every refused attempt on the other company is in the audit log, under
    // the caller's company (issue 17: "other"'s own log never shows a key
    // of acme's).
    let audit = s.audit().await;
    let denied_other = audit
        .iter()
        .filter(|e| {
            e["outcome"] == "denied"
                && e["company_id"] == "acme"
                && e["target"].as_str().is_some_and(|t| t.contains("other"))
        })
        .count();
    let acme_keys = [format!("key:{operator_id}"), format!("key:{viewer_id}")];
    assert!(
        audit
            .iter()
            .all(|e| e["company_id"] != "other"
                || !acme_keys.iter().any(|k| e["actor"] == k.as_str())),
        "no key of acme's in other's log"
    );
    // operator and viewer on: show, update, audit list (404s).
    assert!(
        denied_other >= 6,
        "denied cross-company attempts audited: {denied_other}"
    );
    // Every route the metrics key was refused is audited under its name.
    let scraper = format!("key:{metrics_id}");
    let refused = audit
        .iter()
        .filter(|e| e["actor"] == scraper.as_str() && e["outcome"] == "denied")
        .count();
    assert_eq!(refused, (69 - 4) * 2, "every refusal of the metrics key");
    let anonymous = audit
        .iter()
        .filter(|e| e["actor"] == "anonymous" && e["outcome"] == "denied")
        .count();
    assert!(anonymous >= 2 * 2 * 12, "every 401 is audited: {anonymous}");
    assert!(
        audit.iter().all(|e| !e.to_string().contains("kira_")),
        "no token in the audit log"
    );

    let (_, verify) = s
        .call(Method::GET, "/v1/audit/verify", Some(&s.admin), None)
        .await;
    assert_eq!(verify["ok"], true, "{verify}");
}

/// A firing alert of `company`, as the evaluator writes one; its id.
pub async fn firing_alert(s: &Server, company: &str) -> String {
    use kira_core::alerts::{Alert, AlertState, RuleKind, Severity, Subject};
    let now = chrono::DateTime::parse_from_rfc3339("2026-06-01T09:00:00Z")
        .expect("time")
        .to_utc();
    let a = Alert {
        id: uuid::Uuid::now_v7(),
        rule: format!("sla_{}", uuid::Uuid::now_v7().simple()),
        kind: RuleKind::SlaViolation,
        severity: Severity::Warning,
        subject: Subject::Company(kira_core::CompanyId::parse(company).expect("id")),
        labels: Default::default(),
        state: AlertState::Firing,
        summary: format!("{company} is slow"),
        value: 1.0,
        started_at: now,
        fired_at: Some(now),
        acknowledged_at: None,
        acknowledged_by: None,
        escalated_at: None,
        last_notified_at: Some(now),
        resolved_at: None,
        resolved_by: None,
        updated_at: now,
        version: 0,
    };
    s.store
        .write_alert_plan(std::slice::from_ref(&a), &[])
        .await
        .expect("alert");
    a.id.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_every_route_role_and_company() {
    matrix(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_every_route_role_and_company() {
    matrix(Backend::Postgres).await;
}

#[tokio::test]
async fn non_admins_list_only_their_own_company() {
    let s = Server::start(Backend::Sqlite).await;
    s.company("acme").await;
    s.company("other").await;
    let (_, viewer) = s.key("viewer", Some("acme")).await;
    let (_, v) = s
        .call(Method::GET, "/v1/companies", Some(&viewer), None)
        .await;
    let ids: Vec<_> = v["companies"]
        .as_array()
        .expect("list")
        .iter()
        .map(|c| c["id"].clone())
        .collect();
    assert_eq!(ids, [json!("acme")]);
    let (_, v) = s.call(Method::GET, "/v1/audit", Some(&viewer), None).await;
    assert!(
        v["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .all(|e| e["company_id"] == "acme"),
        "{v}"
    );
    let (_, v) = s.call(Method::GET, "/v1/whoami", Some(&viewer), None).await;
    assert_eq!(v["role"], "viewer");
    assert_eq!(v["company_id"], "acme");
}
