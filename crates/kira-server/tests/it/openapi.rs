//! The OpenAPI document covers every route the server answers.

use std::collections::BTreeSet;

use reqwest::Method;

use crate::support::{Backend, Server};

#[tokio::test]
async fn openapi_lists_every_route_with_responses() {
    let s = Server::start(Backend::Sqlite).await;
    let (status, doc) = s.call(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let mut found = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("item") {
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path} has responses"
            );
            found.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    let expected: BTreeSet<String> = [
        "GET /healthz",
        "GET /readyz",
        "GET /v1/openapi.json",
        "GET /v1/whoami",
        "GET /v1/agents",
        "GET /v1/agents/{name}",
        "GET /v1/agents/{name}/metrics",
        "GET /metrics",
        "GET /v1/metrics/system",
        "GET /v1/companies/{id}/metrics",
        "GET /v1/dashboard",
        "GET /v1/companies/{id}/dashboard",
        "GET /v1/alerts",
        "GET /v1/alerts/{id}",
        "POST /v1/alerts/{id}/ack",
        "POST /v1/alerts/{id}/resolve",
        "GET /v1/alerts/silences",
        "POST /v1/alerts/silences",
        "DELETE /v1/alerts/silences/{id}",
        "GET /v1/tools",
        "POST /v1/tools",
        "GET /v1/tools/{name}",
        "DELETE /v1/tools/{name}",
        "POST /v1/tools/{name}/test",
        "GET /v1/tools/configs",
        "PUT /v1/tools/{name}/config",
        "GET /v1/tools/credentials",
        "PUT /v1/tools/{name}/credential",
        "DELETE /v1/tools/{name}/credential",
        "POST /v1/companies",
        "GET /v1/companies",
        "GET /v1/companies/{id}",
        "PATCH /v1/companies/{id}",
        "DELETE /v1/companies/{id}",
        "POST /v1/companies/{id}/archive",
        "POST /v1/keys",
        "GET /v1/keys",
        "POST /v1/keys/{key_id}/revoke",
        "GET /v1/audit",
        "GET /v1/audit/verify",
        "POST /v1/companies/{id}/tasks",
        "GET /v1/companies/{id}/tasks",
        "GET /v1/companies/{id}/tasks/{task_id}",
        "POST /v1/companies/{id}/tasks/{task_id}/cancel",
        "GET /v1/companies/{id}/tasks/{task_id}/events",
        "GET /v1/companies/{id}/tasks/{task_id}/watch",
        "GET /v1/companies/{id}/tasks/{task_id}/trace",
        "GET /v1/companies/{id}/reviews",
        "POST /v1/companies/{id}/tasks/{task_id}/review",
        "POST /v1/companies/{id}/tasks/{task_id}/rating",
        "GET /v1/companies/{id}/tasks/{task_id}/reviews",
        "GET /v1/budget",
        "GET /v1/budget/requests",
        "POST /v1/budget/requests/{request_id}/approve",
        "POST /v1/budget/requests/{request_id}/reject",
        "GET /v1/budget/verify",
        "POST /v1/companies/{id}/memory",
        "GET /v1/companies/{id}/memory",
        "GET /v1/companies/{id}/memory/search",
        "POST /v1/companies/{id}/memory/compact",
        "GET /v1/companies/{id}/memory/{memory_id}",
        "DELETE /v1/companies/{id}/memory/{memory_id}",
        "POST /v1/companies/{id}/memory/{memory_id}/archive",
        "POST /v1/companies/{id}/memory/{memory_id}/restore",
        "GET /v1/companies/{id}/context",
        "POST /v1/knowledge",
        "GET /v1/knowledge",
        "GET /v1/knowledge/search",
        "GET /v1/knowledge/{entry_id}",
        "DELETE /v1/knowledge/{entry_id}",
        "GET /v1/sharing/check",
        "GET /v1/conflicts",
        "POST /v1/conflicts/{conflict_id}/resolve",
        "POST /v1/companies/{id}/shared",
        "GET /v1/companies/{id}/shared",
        "DELETE /v1/companies/{id}/shared/{item_id}",
        "GET /v1/companies/{id}/sharing/consents",
        "PUT /v1/companies/{id}/sharing/consents",
        "DELETE /v1/companies/{id}/sharing/consents",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(found, expected);
    // And each documented route is really served (not a 404 from the fallback).
    for route in &expected {
        let (method, path) = route.split_once(' ').expect("route");
        let path = path
            .replace("{id}", "acme")
            .replace("{key_id}", "abcdefabcdef");
        let (status, v) = s
            .call(
                Method::from_bytes(method.as_bytes()).expect("method"),
                &path,
                None,
                None,
            )
            .await;
        assert!(
            v["error"]["code"] != "not_found"
                || status != 404
                || v["error"]["message"] != "no such route",
            "{route}"
        );
    }
    assert!(doc["components"]["schemas"]["Company"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    // A key's role, the scraper's `metrics` among them.
    let roles = doc["components"]["schemas"]["Role"].to_string();
    for role in ["admin", "operator", "viewer", "metrics"] {
        assert!(roles.contains(&format!("\"{role}\"")), "{role} in {roles}");
    }
}

/// Which profile fields a company key may not change is in the document,
/// from the same list the server enforces (issue 17).
#[test]
fn the_document_marks_the_admin_only_profile_fields() {
    use kira_core::auth::Role;
    use kira_core::company::{ADMIN_ONLY_FIELDS, writable_by};
    let doc = serde_json::to_value(kira_server::openapi()).expect("json");
    let props = doc["components"]["schemas"]["CompanyPatch"]["properties"]
        .as_object()
        .expect("CompanyPatch properties");
    for (field, schema) in props {
        let says_admin = schema["description"]
            .as_str()
            .is_some_and(|d| d.starts_with("Admin only"));
        assert_eq!(
            says_admin,
            !writable_by(Role::Operator, field),
            "{field}: {schema}"
        );
    }
    assert_eq!(
        props
            .keys()
            .filter(|f| ADMIN_ONLY_FIELDS.contains(&f.as_str()))
            .count(),
        ADMIN_ONLY_FIELDS.len()
    );
    let patch = &doc["paths"]["/v1/companies/{id}"]["patch"];
    let text = patch.to_string();
    for field in ADMIN_ONLY_FIELDS {
        assert!(
            text.contains(field),
            "the route's description names {field}"
        );
    }
    assert!(
        patch["responses"]["403"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("admin-only")),
        "{patch}"
    );
}
