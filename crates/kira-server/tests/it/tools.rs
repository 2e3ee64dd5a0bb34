//! Tools through the real API, on both backends: bad registrations refused
//! naming the field with nothing written; a company tool invisible and
//! unreachable to another company's operator and viewer keys (404, the
//! attempt audited under the attacker's own company); an operator's test
//! call of a plain HTTP tool on loopback, through the wrapper, audited.

use axum::extract::Path;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Backend, Server};

/// The engine's configuration with loopback allowed: the tool peers here
/// are on loopback, which a company's URL may not reach by default.
fn loopback_allowed() -> kira_engine::EngineConfig {
    let mut cfg = kira_engine::EngineConfig::default();
    cfg.tools.outbound = std::sync::Arc::new(kira_core::outbound::OutboundPolicy {
        allow_private_networks: true,
        ..Default::default()
    });
    cfg
}

async fn open_server(backend: Backend) -> Server {
    Server::start_engine(
        backend,
        kira_server::ServerConfig::default(),
        std::sync::Arc::new(kira_core::clock::SystemClock),
        loopback_allowed(),
    )
    .await
}

fn names(list: &Value) -> Vec<String> {
    list["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|t| t["name"].as_str().expect("name").to_owned())
        .collect()
}

/// A weather service on loopback: `GET /weather/{city}?units=` answers
/// JSON; the tool's result pointer picks `/now/summary`.
async fn weather() -> String {
    let app = axum::Router::new().route(
        "/weather/{city}",
        axum::routing::get(|Path(city): Path<String>, q: axum::extract::RawQuery| async move {
            axum::Json(json!({"now": {"summary": format!("sunny in {city} ({})", q.0.unwrap_or_default())}}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    format!("http://{addr}")
}

fn http_tool(name: &str, company: &str, base: &str) -> Value {
    json!({
        "name": name, "layer": "company", "company": company,
        "description": "the weather now",
        "source": {"kind": "http", "method": "GET", "url": format!("{base}/weather/{{city}}"),
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "units": {"type": "string"}},
                "required": ["city"]},
            "result": "/now/summary"}
    })
}

async fn bad_registrations_are_refused_naming_the_field(backend: Backend) {
    let s = Server::start(backend).await;
    s.company("acme").await;
    let (_, operator) = s.key("operator", Some("acme")).await;
    let cases = [
        (
            json!({"name": "x", "layer": "company", "company": "acme",
                "source": {"kind": "http", "method": "GET", "url": "https://x.example/",
                    "parameters": {"type": "object", "properties": {"q": {"type": 7}}}}}),
            "source.parameters.properties.q.type",
        ),
        (
            json!({"name": "x", "layer": "company", "company": "acme",
                "source": {"kind": "http", "method": "GET", "url": "https://x.example/{id}",
                    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}),
            "source.url",
        ),
        (
            json!({"name": "x", "layer": "company", "company": "acme",
                "source": {"kind": "mcp_stdio", "command": "/no/such/kira-mcp-server"}}),
            "source.command",
        ),
        (
            json!({"name": "x", "layer": "infrastructure",
                "source": {"kind": "mcp_stdio", "command": "/no/such/kira-mcp-server"}}),
            "source.command",
        ),
        (
            json!({"name": "x", "layer": "company", "company": "acme", "source": {"kind": "ftp"}}),
            "source.kind",
        ),
    ];
    for (body, field) in cases {
        let (status, v) = s
            .call(
                Method::POST,
                "/v1/tools",
                Some(&s.admin),
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["field"], field, "{body}: {v}");
    }
    // An operator may not have kira run a command, even a real one.
    let (status, v) = s
        .call(
            Method::POST,
            "/v1/tools",
            Some(&operator),
            Some(json!({"name": "sh", "layer": "company", "company": "acme",
                "source": {"kind": "mcp_stdio", "command": "/bin/sh"}})),
        )
        .await;
    assert_eq!(status, 403, "{v}");
    let (_, list) = s
        .call(Method::GET, "/v1/tools?company=acme", Some(&s.admin), None)
        .await;
    assert!(
        names(&list).iter().all(|n| n != "x" && n != "sh"),
        "nothing written: {list}"
    );
}

#[tokio::test]
async fn bad_registrations_are_refused_naming_the_field_sqlite() {
    bad_registrations_are_refused_naming_the_field(Backend::Sqlite).await;
}

#[tokio::test]
async fn bad_registrations_are_refused_naming_the_field_postgres() {
    bad_registrations_are_refused_naming_the_field(Backend::Postgres).await;
}

async fn a_companys_tools_are_invisible_to_another_companys_keys(backend: Backend) {
    let s = open_server(backend).await;
    s.company("acme").await;
    s.company("other").await;
    let base = weather().await;
    let (_, acme_op) = s.key("operator", Some("acme")).await;
    let (status, v) = s
        .call(
            Method::POST,
            "/v1/tools",
            Some(&acme_op),
            Some(http_tool("acmeweather", "acme", &base)),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["layer"], "company");

    let (_, list) = s.call(Method::GET, "/v1/tools", Some(&acme_op), None).await;
    assert!(names(&list).contains(&"acmeweather".to_owned()), "{list}");
    let tool = list["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .find(|t| t["name"] == "acmeweather")
        .expect("listed")
        .clone();
    assert_eq!(
        (tool["layer"].as_str(), tool["source"].as_str()),
        (Some("company"), Some("http"))
    );

    // The operator tests it as its company: through the wrapper, audited.
    let (status, r) = s
        .call(
            Method::POST,
            "/v1/tools/acmeweather/test",
            Some(&acme_op),
            Some(json!({"arguments": {"city": "Berlin", "units": "metric"}})),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["outcome"], "ok", "{r}");
    assert_eq!(r["content"], "sunny in Berlin (units=metric)");

    for role in ["operator", "viewer"] {
        let (_, other) = s.key(role, Some("other")).await;
        let (status, list) = s.call(Method::GET, "/v1/tools", Some(&other), None).await;
        assert_eq!(status, 200);
        assert!(!list.to_string().contains("acme"), "{role}: {list}");
        for (method, path, body) in [
            (Method::GET, "/v1/tools?company=acme", None),
            (Method::GET, "/v1/tools/acmeweather?company=acme", None),
            (Method::GET, "/v1/tools/acmeweather", None),
            (Method::GET, "/v1/tools/configs?company=acme", None),
            (Method::DELETE, "/v1/tools/acmeweather?company=acme", None),
            (
                Method::POST,
                "/v1/tools/acmeweather/test?company=acme",
                Some(json!({"arguments": {"city": "Paris"}})),
            ),
            (
                Method::PUT,
                "/v1/tools/acmeweather/config?company=acme",
                Some(json!({"config": {"defaults": {"units": "imperial"}}})),
            ),
            (
                Method::POST,
                "/v1/tools",
                Some(http_tool("spy", "acme", &base)),
            ),
        ] {
            let (status, v) = s.call(method.clone(), path, Some(&other), body).await;
            assert!(
                status == 404 || status == 403,
                "{role} {method} {path}: {status} {v}"
            );
            assert!(!v.to_string().contains("sunny"), "{v}");
        }
        // Its own test of acme's tool name finds nothing to call.
        let (status, r) = s
            .call(
                Method::POST,
                "/v1/tools/acmeweather/test",
                Some(&other),
                Some(json!({"arguments": {"city": "Paris"}})),
            )
            .await;
        if role == "operator" {
            assert_eq!(status, 200, "{r}");
            assert_eq!(r["outcome"], "refused", "{r}");
        } else {
            assert_eq!(status, 403, "a viewer does not call tools: {r}");
        }
    }
    // Acme's tool is still there, unconfigured; its trail has the test call
    // and no other company's.
    let (_, list) = s.call(Method::GET, "/v1/tools", Some(&acme_op), None).await;
    assert!(names(&list).contains(&"acmeweather".to_owned()));
    assert!(!names(&list).contains(&"spy".to_owned()));
    let (_, configs) = s
        .call(Method::GET, "/v1/tools/configs", Some(&acme_op), None)
        .await;
    assert_eq!(configs["configs"], json!([]));
    let audit = s.audit().await;
    let calls: Vec<&Value> = audit
        .iter()
        .filter(|e| e["action"] == "tool.call")
        .collect();
    let acme_calls: Vec<&&Value> = calls.iter().filter(|e| e["company_id"] == "acme").collect();
    assert_eq!(acme_calls.len(), 1, "{calls:?}");
    assert_eq!(acme_calls[0]["target"], "acmeweather");
    let detail: Value =
        serde_json::from_str(acme_calls[0]["detail"].as_str().expect("detail")).expect("json");
    assert_eq!(
        detail["arguments"],
        json!({"city": "Berlin", "units": "metric"})
    );
    assert_eq!(detail["outcome"], "ok");
    assert!(
        audit
            .iter()
            .filter(|e| e["company_id"] == "other")
            .all(|e| !e.to_string().contains("acmeweather") || e["action"] == "tool.call"),
        "the other company's log names acme's tool only as its own refused call"
    );
}

#[tokio::test]
async fn a_companys_tools_are_invisible_to_another_companys_keys_sqlite() {
    a_companys_tools_are_invisible_to_another_companys_keys(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_companys_tools_are_invisible_to_another_companys_keys_postgres() {
    a_companys_tools_are_invisible_to_another_companys_keys(Backend::Postgres).await;
}

/// A company's operator tries to make kira call kira itself, the cloud
/// metadata service and loopback in every spelling: each registration is
/// refused naming the field (403, audited, nothing written), a contact's
/// webhook too; a name for loopback is registered but its call is refused
/// and audited.
async fn a_tenant_cannot_point_kira_at_internal_addresses(backend: Backend) {
    let s = Server::start(backend).await;
    s.company("acme").await;
    let (_, operator) = s.key("operator", Some("acme")).await;
    let port = s
        .base
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .expect("kira's port");
    let http = |name: &str, url: String| {
        json!({"name": name, "layer": "company", "company": "acme",
            "source": {"kind": "http", "method": "GET", "url": url,
                "parameters": {"type": "object", "properties": {}}}})
    };
    let cases = [
        http("self", format!("http://127.0.0.1:{port}/v1/companies")),
        http("meta", "http://169.254.169.254/latest/meta-data/".into()),
        http("v6", format!("http://[::1]:{port}/v1/companies")),
        http(
            "mapped",
            format!("http://[::ffff:127.0.0.1]:{port}/v1/audit"),
        ),
        http("decimal", format!("http://2130706433:{port}/v1/companies")),
        http("octal", format!("http://0177.0.0.1:{port}/v1/companies")),
        http("short", format!("http://127.1:{port}/v1/companies")),
        http("zero", format!("http://0.0.0.0:{port}/v1/companies")),
        http("private", "http://10.0.0.8/admin".into()),
        json!({"name": "mcp", "layer": "company", "company": "acme",
            "source": {"kind": "mcp_http", "url": format!("http://127.0.0.1:{port}/mcp")}}),
        json!({"name": "mcp6", "layer": "company", "company": "acme",
            "source": {"kind": "mcp_http", "url": "http://[fe80::1]/mcp"}}),
    ];
    for body in cases {
        let (status, v) = s
            .call(
                Method::POST,
                "/v1/tools",
                Some(&operator),
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, 403, "{body}: {v}");
        assert_eq!(v["error"]["field"], "source.url", "{body}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("may not reach")),
            "{v}"
        );
    }
    // A contact's webhook is a company URL as well.
    let (status, v) = s
        .call(
            Method::PATCH,
            "/v1/companies/acme",
            Some(&operator),
            Some(json!({"contacts": [{"name": "ops", "webhook": "http://169.254.169.254/hook"}]})),
        )
        .await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["error"]["field"], "contacts.0.webhook", "{v}");

    // Nothing was written; every refusal is in acme's trail.
    let (_, list) = s
        .call(Method::GET, "/v1/tools", Some(&operator), None)
        .await;
    let listed = names(&list);
    for n in [
        "self", "meta", "v6", "mapped", "decimal", "octal", "short", "zero", "private", "mcp",
        "mcp6",
    ] {
        assert!(!listed.contains(&n.to_owned()), "{n} written: {list}");
    }
    let audit = s.audit().await;
    let refused = audit
        .iter()
        .filter(|e| e["action"] == "tool.add" && e["company_id"] == "acme" && e["outcome"] != "ok")
        .count();
    assert_eq!(refused, 11, "each refused registration audited");

    // A name that resolves to loopback: registered (names are checked when
    // called), refused when called, audited; kira never sees the request.
    let before = s.audit().await.len();
    let (status, v) = s
        .call(
            Method::POST,
            "/v1/tools",
            Some(&operator),
            Some(http(
                "local",
                format!("http://localhost:{port}/v1/companies"),
            )),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let (status, r) = s
        .call(
            Method::POST,
            "/v1/tools/local/test",
            Some(&operator),
            Some(json!({"arguments": {}})),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["outcome"], "refused", "{r}");
    assert!(
        r["content"]
            .as_str()
            .is_some_and(|c| c.contains("localhost resolves to") && c.contains("may not reach")),
        "{r}"
    );
    let after = s.audit().await;
    let new: Vec<&Value> = after.iter().skip(before).collect();
    let call = new
        .iter()
        .find(|e| e["action"] == "tool.call")
        .expect("the call audited");
    assert_eq!(call["outcome"], "denied", "{call}");
    assert_eq!(call["company_id"], "acme");
}

#[tokio::test]
async fn a_tenant_cannot_point_kira_at_internal_addresses_sqlite() {
    a_tenant_cannot_point_kira_at_internal_addresses(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_tenant_cannot_point_kira_at_internal_addresses_postgres() {
    a_tenant_cannot_point_kira_at_internal_addresses(Backend::Postgres).await;
}

/// The MCP reference server's command (`KIRA_MCP_SERVERS`, which
/// `scripts/test` fills).
fn everything() -> String {
    let dir = std::env::var_os("KIRA_MCP_SERVERS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache/kira/npm/node_modules/.bin")
        });
    let p = dir.join("mcp-server-everything");
    assert!(
        p.exists(),
        "{}: run ./scripts/install-mcp-servers",
        p.display()
    );
    p.display().to_string()
}

/// The listing's `everything` entry.
fn entry(list: &Value) -> Value {
    list["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .find(|t| t["name"] == "everything")
        .cloned()
        .unwrap_or_else(|| panic!("everything in {list}"))
}

/// `GET /v1/tools` reads the stored listing; `refresh=true` (an operator's)
/// lists the servers now and keeps what they said; a viewer reads it and
/// may not refresh; another company's keys never see acme's listing,
/// refreshed or not; `refresh` is in the OpenAPI document, `listed_at` in
/// the view's schema.
async fn a_companys_stored_listing_is_its_own(backend: Backend) {
    let s = open_server(backend).await;
    s.company("acme").await;
    s.company("other").await;
    let (status, v) = s
        .call(
            Method::POST,
            "/v1/tools",
            Some(&s.admin),
            Some(
                json!({"name": "everything", "layer": "company", "company": "acme",
                "source": {"kind": "mcp_stdio", "command": everything(), "args": ["stdio"]}}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let (_, acme_op) = s.key("operator", Some("acme")).await;
    let (_, acme_viewer) = s.key("viewer", Some("acme")).await;

    let (status, list) = s
        .call(Method::GET, "/v1/tools", Some(&acme_viewer), None)
        .await;
    assert_eq!(status, 200, "{list}");
    let e = entry(&list);
    assert_eq!(
        (e["tools"].clone(), e["listed_at"].clone()),
        (json!([]), Value::Null)
    );
    let (status, v) = s
        .call(
            Method::GET,
            "/v1/tools?refresh=true",
            Some(&acme_viewer),
            None,
        )
        .await;
    assert_eq!(status, 403, "a viewer does not start servers: {v}");
    let (status, v) = s
        .call(Method::GET, "/v1/tools?refresh=maybe", Some(&acme_op), None)
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("refresh"), "{v}");

    let (status, list) = s
        .call(Method::GET, "/v1/tools?refresh=true", Some(&acme_op), None)
        .await;
    assert_eq!(status, 200, "{list}");
    let fresh = entry(&list);
    assert!(
        fresh["tools"]
            .as_array()
            .expect("tools")
            .contains(&json!("everything.echo")),
        "{fresh}"
    );
    assert!(fresh["listed_at"].is_string(), "{fresh}");
    let (_, list) = s
        .call(Method::GET, "/v1/tools", Some(&acme_viewer), None)
        .await;
    let kept = entry(&list);
    // The same listing, or a later one: the server adds a tool once
    // initialised and says so, and kira lists it again.
    let at = |v: &Value| v["listed_at"].as_str().expect("listed_at").to_owned();
    assert!(at(&kept) >= at(&fresh), "{kept} {fresh}");
    assert!(
        kept["tools"]
            .as_array()
            .expect("tools")
            .contains(&json!("everything.echo")),
        "{kept}"
    );
    let (status, shown) = s
        .call(
            Method::GET,
            "/v1/tools/everything",
            Some(&acme_viewer),
            None,
        )
        .await;
    assert_eq!(status, 200, "{shown}");
    assert!(at(&shown) >= at(&kept), "{shown} {kept}");

    for role in ["operator", "viewer"] {
        let (_, other) = s.key(role, Some("other")).await;
        for path in ["/v1/tools", "/v1/tools?refresh=true"] {
            let (status, list) = s.call(Method::GET, path, Some(&other), None).await;
            if role == "viewer" && path.contains("refresh") {
                assert_eq!(status, 403, "{list}");
            } else {
                assert_eq!(status, 200, "{role} {path}: {list}");
            }
            assert!(
                !list.to_string().contains("everything"),
                "{role} {path}: {list}"
            );
        }
        for path in [
            "/v1/tools?company=acme",
            "/v1/tools?company=acme&refresh=true",
            "/v1/tools/everything",
            "/v1/tools/everything?refresh=true",
            "/v1/tools/everything?company=acme",
        ] {
            let (status, v) = s.call(Method::GET, path, Some(&other), None).await;
            assert!(
                status == 404 || status == 403,
                "{role} {path}: {status} {v}"
            );
            assert!(!v.to_string().contains("everything.echo"), "{v}");
        }
    }

    let doc = s.admin_ok(Method::GET, "/v1/openapi.json", None).await;
    for path in ["/v1/tools", "/v1/tools/{name}"] {
        let params = doc["paths"][path]["get"]["parameters"].to_string();
        assert!(params.contains("\"refresh\""), "{path}: {params}");
    }
    assert!(
        doc["components"]["schemas"]["ToolView"]["properties"]["listed_at"].is_object(),
        "{}",
        doc["components"]["schemas"]["ToolView"]
    );
    s.engine.tools().stop().await;
}

#[tokio::test]
async fn a_companys_stored_listing_is_its_own_sqlite() {
    a_companys_stored_listing_is_its_own(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_companys_stored_listing_is_its_own_postgres() {
    a_companys_stored_listing_is_its_own(Backend::Postgres).await;
}
