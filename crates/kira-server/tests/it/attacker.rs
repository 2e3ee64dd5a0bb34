//! The attacker's property (issue 17): random sequences of requests made
//! with one company's operator and viewer keys, over every route of the
//! OpenAPI document and with random bodies (profile changes of every field
//! included), never return a byte of another company's content or its id,
//! and never change it. Both backends.

use proptest::prelude::*;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Backend, Server};

/// The other company's id and the marker in everything it holds.
const VICTIM: &str = "zqvictim";
const MARK: &str = "Zqxmark";

struct World {
    s: Server,
    /// acme's operator and viewer tokens.
    tokens: [String; 2],
    /// Every (method, path template) of the API but streams.
    routes: Vec<(Method, String)>,
    /// The victim's ids, none of which may reach the attacker.
    secrets: Vec<String>,
    own_task: String,
    own_memory: String,
    victim_task: String,
    victim_memory: String,
    victim_key: String,
}

async fn world(backend: Backend) -> World {
    let s = Server::start(backend).await;
    s.company("acme").await;
    s.company(VICTIM).await;
    let (_, operator) = s.key("operator", Some("acme")).await;
    let (_, viewer) = s.key("viewer", Some("acme")).await;
    let (victim_key, _) = s.key("operator", Some(VICTIM)).await;
    let memory = |c: &str, text: String| {
        let s = &s;
        let c = c.to_owned();
        async move {
            let v = s
                .admin_ok(
                    Method::POST,
                    &format!("/v1/companies/{c}/memory"),
                    Some(json!({
                        "occurred_at": "2026-01-05T10:00:00Z",
                        "event_type": "contract",
                        "workstream": "legal",
                        "category": "key_decisions",
                        "importance": 9,
                        "content": {"text": text, "people": ["Ada Quill"]}
                    })),
                )
                .await;
            v["id"].as_str().expect("memory id").to_owned()
        }
    };
    let victim_memory = memory(
        VICTIM,
        format!(
            "{MARK} settlement playbook: pay Globex 40,000 EUR to IBAN GB29 NWBK 6016 1331 9268 19"
        ),
    )
    .await;
    let own_memory = memory("acme", "Settlement playbook of our own.".into()).await;
    let task = |c: &str, text: String| {
        let s = &s;
        let c = c.to_owned();
        async move {
            let v = s
                .admin_ok(
                    Method::POST,
                    &format!("/v1/companies/{c}/tasks"),
                    Some(json!({"task": text, "type": "quick_question_answer"})),
                )
                .await;
            v["task_id"].as_str().expect("task id").to_owned()
        }
    };
    let victim_task = task(VICTIM, format!("{MARK} review the Globex settlement")).await;
    let own_task = task("acme", "Review our settlement".into()).await;
    let doc = s.admin_ok(Method::GET, "/v1/openapi.json", None).await;
    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        if path.ends_with("/watch") {
            continue;
        }
        for (m, method) in [
            ("get", Method::GET),
            ("post", Method::POST),
            ("put", Method::PUT),
            ("patch", Method::PATCH),
            ("delete", Method::DELETE),
        ] {
            if item.get(m).is_some() {
                routes.push((method, path.clone()));
            }
        }
    }
    assert!(routes.len() > 40, "{} routes", routes.len());
    let secrets = vec![
        VICTIM.to_owned(),
        MARK.to_owned(),
        victim_task.clone(),
        victim_memory.clone(),
        victim_key.clone(),
        "Globex".to_owned(),
        "GB29".to_owned(),
    ];
    World {
        s,
        tokens: [operator, viewer],
        routes,
        secrets,
        own_task,
        own_memory,
        victim_task,
        victim_memory,
        victim_key,
    }
}

/// One request: which route, which key, whether the path names the
/// victim (or its objects) or acme, and the body's fields.
#[derive(Debug, Clone)]
struct Request {
    route: usize,
    viewer: bool,
    at_victim: bool,
    body: Vec<(String, Value)>,
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!(3.0)),
        Just(json!(9e12)),
        Just(json!(true)),
        Just(json!(null)),
        Just(json!([])),
        Just(json!({})),
        Just(json!("emergency")),
        Just(json!("anonymized_legal_patterns")),
        Just(json!("*")),
        Just(json!("US-DE")),
        Just(json!(["anonymized_legal_patterns", "process_templates"])),
        Just(json!({"text": "settlement playbook"})),
        "[a-z ]{0,12}".prop_map(Value::from),
    ]
}

fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("name"),
        Just("industry"),
        Just("jurisdiction"),
        Just("revenue_usd"),
        Just("complexity_score"),
        Just("activity_score"),
        Just("priority_multiplier"),
        Just("sla_response_seconds"),
        Just("sharing_consent"),
        Just("contacts"),
        Just("task"),
        Just("type"),
        Just("priority"),
        Just("content"),
        Just("occurred_at"),
        Just("event_type"),
        Just("scope"),
        Just("partner"),
        Just("memory_id"),
        Just("decision"),
        Just("rating"),
        Just("role"),
        Just("company_id"),
        Just("note"),
    ]
    .prop_map(str::to_owned)
}

fn requests(routes: usize) -> impl Strategy<Value = Vec<Request>> {
    let one = (
        0..routes,
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec((field(), value()), 0..5),
    )
        .prop_map(|(route, viewer, at_victim, body)| Request {
            route,
            viewer,
            at_victim,
            body,
        });
    prop::collection::vec(one, 1..30)
}

impl World {
    /// The concrete path of a request: path parameters filled with the
    /// victim's ids or acme's, and the queries a route needs to get past
    /// its checks.
    fn path(&self, template: &str, at_victim: bool) -> String {
        let (company, task, memory) = if at_victim {
            (VICTIM, &self.victim_task, &self.victim_memory)
        } else {
            ("acme", &self.own_task, &self.own_memory)
        };
        let mut p = template
            .replace("{id}", company)
            .replace("{task_id}", task)
            .replace("{memory_id}", memory)
            .replace("{key_id}", &self.victim_key)
            .replace("{name}", "legal")
            .replace("{item_id}", "00000000-0000-7000-8000-000000000001")
            .replace("{request_id}", "00000000-0000-7000-8000-000000000002")
            .replace("{conflict_id}", "00000000-0000-7000-8000-000000000003")
            .replace("{entry_id}", "00000000-0000-7000-8000-000000000004");
        let query = if p.ends_with("/context") {
            "?task_type=legal&q=settlement%20playbook%20Globex%20Zqxmark&budget=4000"
        } else if p.ends_with("/search") {
            "?q=settlement%20playbook%20Globex%20Zqxmark"
        } else if p == "/v1/audit" {
            if at_victim {
                "?company=zqvictim"
            } else {
                "?company=acme"
            }
        } else if p == "/v1/sharing/check" {
            "?a=acme&b=acme&scope=anonymized_legal_patterns"
        } else {
            ""
        };
        p.push_str(query);
        p
    }

    async fn send(&self, r: &Request) -> (Method, String, u16, String) {
        let (method, template) = &self.routes[r.route];
        let path = self.path(template, r.at_victim);
        let token = &self.tokens[usize::from(r.viewer)];
        let body = (matches!(*method, Method::POST | Method::PUT | Method::PATCH))
            .then(|| Value::Object(r.body.iter().cloned().collect()));
        let (status, v) = self.s.call(method.clone(), &path, Some(token), body).await;
        (method.clone(), path, status.as_u16(), v.to_string())
    }

    /// What the admin sees of the victim: its profile, allocation,
    /// memories and tasks.
    async fn victim_state(&self) -> Value {
        let s = &self.s;
        let mut profile = s
            .admin_ok(Method::GET, &format!("/v1/companies/{VICTIM}"), None)
            .await;
        // Refreshed by others' changes; compared through the budget below.
        if let Some(o) = profile.as_object_mut() {
            o.remove("updated_at");
        }
        let budget = s.admin_ok(Method::GET, "/v1/budget", None).await;
        let allocation = budget["companies"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["company_id"] == VICTIM).cloned());
        let memory = s
            .admin_ok(Method::GET, &format!("/v1/companies/{VICTIM}/memory"), None)
            .await;
        let tasks = s
            .admin_ok(Method::GET, &format!("/v1/companies/{VICTIM}/tasks"), None)
            .await;
        json!({"profile": profile, "allocation": allocation, "memory": memory, "tasks": tasks})
    }
}

fn run(backend: Backend, cases: u32) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let w = rt.block_on(world(backend));
    let before = rt.block_on(w.victim_state());
    let cfg = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(cfg, |(seq in requests(w.routes.len()))| {
        rt.block_on(async {
            for r in &seq {
                let (method, path, status, body) = w.send(r).await;
                assert!(status < 500, "{backend:?} {method} {path}: {status} {body}");
                for secret in &w.secrets {
                    assert!(
                        !body.contains(secret.as_str()),
                        "{backend:?} {method} {path} ({status}) returned {secret}: {body}"
                    );
                }
            }
            let after = w.victim_state().await;
            assert_eq!(after, before, "{backend:?}: the victim changed after {seq:?}");
        });
    });
}

#[test]
fn sqlite_no_request_of_one_company_reaches_another() {
    run(Backend::Sqlite, 24);
}

#[test]
fn postgres_no_request_of_one_company_reaches_another() {
    run(Backend::Postgres, 12);
}
