//! Tools that reach over the network, and what never leaves kira: an MCP
//! server over streamable HTTP (the real `mcp-server-everything
//! streamableHttp` on a random port, behind a loopback proxy that keeps
//! what kira sent), with a header carrying the company's credential and
//! the company's preferences in a call's `_meta`, on both backends; a
//! stdio server that prints its secret to stderr, logged redacted; the
//! outbound address policy refusing names that resolve to loopback, and a
//! redirect to a forbidden address.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kira_core::auth::Principal;
use kira_core::outbound::OutboundPolicy;
use kira_core::tools::NewTool;
use kira_engine::tools::CallContext;
use kira_engine::{Engine, EngineConfig};
use kira_store::AuditPage;
use kira_store::tools::{CredentialWrite, ToolWriter};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::agents::{audit, scope, setup};
use crate::common::Backend;
use crate::tools::bin;

fn tool(v: Value) -> NewTool {
    serde_json::from_value(v).expect("registration")
}

fn cx<'a>(scope: &'a kira_core::auth::CompanyScope) -> CallContext<'a> {
    CallContext {
        scope,
        actor: "test",
        request_id: "test-call",
        tokens_left: None,
    }
}

/// The engine's configuration with loopback allowed (the peers here are
/// on loopback), or as shipped.
fn config(allow_private: bool) -> EngineConfig {
    let mut cfg = EngineConfig::default();
    cfg.tools.outbound = Arc::new(OutboundPolicy {
        allow_private_networks: allow_private,
        ..OutboundPolicy::default()
    });
    cfg.tools.restart_backoff = Duration::from_millis(50);
    cfg
}

/// What the log said while the guard lives (this thread's subscriber:
/// the tests run on a current-thread runtime, so every task kira spawns
/// logs here).
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn capture() -> (Log, tracing::subscriber::DefaultGuard) {
        let log = Log::default();
        let writer = log.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .finish();
        (log, tracing::subscriber::set_default(sub))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log")).into_owned()
    }

    /// Waits (10 s at most) until the log holds `what`.
    async fn wait_for(&self, what: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.text();
            if text.contains(what) || std::time::Instant::now() > deadline {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `mcp-server-everything streamableHttp` on a free high port; killed
/// when the child is dropped.
async fn everything_over_http() -> (tokio::process::Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = tokio::process::Command::new(bin("mcp-server-everything"))
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("mcp-server-everything starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "mcp-server-everything did not listen on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, port)
}

/// A TCP proxy on loopback to `upstream` that keeps every byte clients
/// sent through it (requests, headers and bodies).
async fn tee_proxy(upstream: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                continue;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    kept.lock().expect("kept").extend_from_slice(&buf[..n]);
                    if sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = sw.shutdown().await;
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut sr, &mut cw).await;
            });
        }
    });
    (addr, seen)
}

fn sent(seen: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&seen.lock().expect("seen")).into_owned()
}

/// The company's audit entries once every call's is written (a call
/// returns once its entry is handed to the writer).
async fn tool_audits(e: &Engine, company: &str) -> Vec<kira_core::audit::AuditEntry> {
    e.tools()
        .unwritten()
        .written()
        .await
        .expect("audits written");
    e.audit()
        .list_company(
            &scope(company),
            AuditPage {
                after_seq: 0,
                limit: 1_000,
            },
        )
        .await
        .expect("audit")
}

async fn an_mcp_server_over_streamable_http_with_a_credential_header(b: Backend) {
    let (log, _guard) = Log::capture();
    let (mut everything, port) = everything_over_http().await;
    let (proxy, seen) = tee_proxy(SocketAddr::from(([127, 0, 0, 1], port))).await;
    let s = setup(b).await;
    let e = Engine::new(s.store.clone(), s.clock.clone(), config(true));
    e.tools()
        .set_master_key(kira_core::seal::MasterKey::parse(&"cd".repeat(32)).expect("key"));
    let marker = format!("mcp-bearer-marker-{}", uuid::Uuid::now_v7().simple());
    let acme = scope("acme");
    // The company's operator registers it: a URL, not a command.
    let entry = e
        .tools()
        .add(
            ToolWriter::Company(&acme),
            tool(json!({"name": "remote", "layer": "company", "company": "acme",
                "description": "the reference server over HTTP",
                "source": {"kind": "mcp_http", "url": format!("http://{proxy}/mcp"),
                    "headers": {"Authorization": "Bearer {credential}", "X-Kira-Test": "plain-header"}}})),
            audit("acme"),
        )
        .await
        .expect("registered");
    assert_eq!(entry.source.kind(), "mcp_http");
    e.tools()
        .set_credential(
            &acme,
            "remote",
            &marker,
            CredentialWrite::Set,
            audit("acme"),
        )
        .await
        .expect("credential set");
    e.tools()
        .configure(
            &acme,
            "remote.echo",
            Some(&json!({"preferences": {"language": "de", "tone": "formal"}})),
            audit("acme"),
        )
        .await
        .expect("configured");

    let offer = e.tools().offer(&acme, &[]).await.expect("offer");
    let names = offer.names();
    for t in ["remote.echo", "remote.get-sum"] {
        assert!(names.contains(&t.to_owned()), "{t} in {names:?}");
    }
    let r = e
        .tools()
        .call(
            &offer,
            &cx(&acme),
            "remote.echo",
            &json!({"message": "over http"}),
        )
        .await;
    assert_eq!((r.outcome.as_str(), r.error), ("ok", false), "{r:?}");
    assert_eq!(r.content, "Echo: over http");
    let r = e
        .tools()
        .call(
            &offer,
            &cx(&acme),
            "remote.get-sum",
            &json!({"a": 20, "b": 22}),
        )
        .await;
    assert!(r.content.contains("is 42"), "{r:?}");
    let r = e
        .tools()
        .call(&offer, &cx(&acme), "remote.get-sum", &json!({"a": "x"}))
        .await;
    assert_eq!((r.outcome.as_str(), r.error), ("error", true), "{r:?}");

    // What went over the wire: the credential in the header (the server
    // got it), the plain header, the preferences in echo's `_meta` only.
    let wire = sent(&seen);
    assert!(
        wire.to_ascii_lowercase()
            .contains(&format!("authorization: bearer {marker}").to_ascii_lowercase()),
        "the credential reached the server"
    );
    assert!(
        wire.to_ascii_lowercase()
            .contains("x-kira-test: plain-header")
    );
    let meta = wire
        .find(r#""kira/preferences":{"#)
        .map(|i| &wire[i..(i + 80).min(wire.len())])
        .unwrap_or_default();
    assert!(
        wire.contains(r#""_meta":{"#)
            && meta.contains(r#""language":"de""#)
            && meta.contains(r#""tone":"formal""#),
        "preferences in echo's _meta: {wire}"
    );
    assert_eq!(
        wire.matches("kira/preferences").count(),
        1,
        "only echo is configured"
    );

    // The tools the server adds once initialised are listed: over HTTP it
    // announces them (list_changed) before the client's event stream is
    // open, so they come with the first tools/list after initialize.
    let (_, server) = e
        .tools()
        .servers()
        .into_iter()
        .find(|(k, _)| k.ends_with("/remote"))
        .expect("server");
    assert!(
        server
            .tools()
            .iter()
            .any(|t| t.name == "simulate-research-query")
    );
    assert!(
        offer
            .names()
            .contains(&"remote.simulate-research-query".to_owned())
    );

    // Globex is offered nothing of acme's server.
    let g = scope("globex");
    let offer_g = e.tools().offer(&g, &[]).await.expect("offer");
    assert!(offer_g.names().iter().all(|n| !n.starts_with("remote.")));

    // The credential is nowhere kira keeps or shows things.
    let audits = tool_audits(&e, "acme").await;
    let calls: Vec<_> = audits.iter().filter(|a| a.action == "tool.call").collect();
    assert_eq!(calls.len(), 3);
    let echo: Value = serde_json::from_str(&calls[0].detail).expect("json");
    assert_eq!(echo["preferences"], "meta");
    assert_eq!(echo["arguments"], json!({"message": "over http"}));
    let sum: Value = serde_json::from_str(&calls[1].detail).expect("json");
    assert_eq!(sum["preferences"], Value::Null);
    assert!(
        !serde_json::to_string(&audits)
            .expect("json")
            .contains(&marker)
    );
    // The listing is the one kira kept when it connected: nothing is
    // reached to list it, and the credential is not in it either.
    let views = e
        .tools()
        .list(Some(&acme), None, false)
        .await
        .expect("list");
    let view = views.iter().find(|v| v.name == "remote").expect("listed");
    assert_eq!(view.source, "mcp_http");
    assert!(view.listed_at.is_some(), "{view:?}");
    assert!(view.tools.contains(&"remote.echo".to_owned()), "{view:?}");
    let kept = s.store.tool_listings(Some(&acme)).await.expect("listings");
    assert!(!format!("{kept:?}").contains(&marker));
    assert!(
        !serde_json::to_string(&views)
            .expect("json")
            .contains(&marker)
    );
    let stored = s.store.list_tools(Some(&acme)).await.expect("stored");
    let stored = serde_json::to_string(&stored).expect("json");
    assert!(stored.contains("Bearer {credential}") && !stored.contains(&marker));
    e.tools().stop().await;
    let text = log.text();
    assert!(
        text.contains("MCP server up"),
        "the log was captured: {text}"
    );
    assert!(!text.contains(&marker), "the log holds the credential");
    everything.kill().await.expect("stopped");
}

#[tokio::test]
async fn an_mcp_server_over_streamable_http_with_a_credential_header_sqlite() {
    an_mcp_server_over_streamable_http_with_a_credential_header(Backend::Sqlite).await;
}

#[tokio::test]
async fn an_mcp_server_over_streamable_http_with_a_credential_header_postgres() {
    an_mcp_server_over_streamable_http_with_a_credential_header(Backend::Postgres).await;
}

#[tokio::test]
async fn a_servers_stderr_is_logged_without_its_secrets() {
    let (log, _guard) = Log::capture();
    let s = setup(Backend::Sqlite).await;
    let e = Engine::new(s.store.clone(), s.clock.clone(), config(false));
    e.tools()
        .set_master_key(kira_core::seal::MasterKey::parse(&"ef".repeat(32)).expect("key"));
    let marker = format!("stderr-secret-{}", uuid::Uuid::now_v7().simple());
    let bearer = format!("tok{}", uuid::Uuid::now_v7().simple());
    // A server that prints its environment's secret and a bearer token
    // before it starts serving.
    let script = format!(
        "echo \"starting with token=$KIRA_TEST_TOKEN and Authorization: Bearer {bearer}\" >&2; exec {} stdio",
        bin("mcp-server-everything")
    );
    let a = Principal::system().admin().expect("admin");
    e.tools()
        .add(
            ToolWriter::Admin(&a),
            tool(
                json!({"name": "chatty", "layer": "company", "company": "acme",
                "source": {"kind": "mcp_stdio", "command": "/bin/sh", "args": ["-c", script],
                    "env": {"KIRA_TEST_TOKEN": "{credential}"}}}),
            ),
            audit("acme"),
        )
        .await
        .expect("registered");
    let acme = scope("acme");
    e.tools()
        .set_credential(
            &acme,
            "chatty",
            &marker,
            CredentialWrite::Set,
            audit("acme"),
        )
        .await
        .expect("credential");
    let offer = e.tools().offer(&acme, &[]).await.expect("offer");
    assert!(offer.names().contains(&"chatty.echo".to_owned()));
    let text = log.wait_for("starting with token=").await;
    let line = text
        .lines()
        .find(|l| l.contains("starting with token="))
        .unwrap_or_else(|| panic!("the server's stderr was logged: {text}"));
    assert!(
        line.contains("chatty"),
        "logged with the server's name: {line}"
    );
    assert!(
        line.contains("token=[redacted]") && line.contains("Bearer [redacted]"),
        "{line}"
    );
    assert!(
        !text.contains(&marker),
        "the injected credential is not logged"
    );
    assert!(!text.contains(&bearer), "a bearer token is not logged");
    e.tools().stop().await;
}

/// An HTTP tool on loopback whose host is given by name.
fn http_tool(name: &str, url: &str) -> NewTool {
    tool(json!({"name": name, "layer": "company", "company": "acme",
        "source": {"kind": "http", "method": "GET", "url": url,
            "parameters": {"type": "object", "properties": {}}}}))
}

#[tokio::test]
async fn names_resolving_to_forbidden_addresses_and_redirects_to_them_are_refused_at_call_time() {
    let s = setup(Backend::Sqlite).await;
    // A peer on loopback that would answer anything; kira must never
    // connect to it.
    let peer = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    peer.set_nonblocking(true).expect("nonblocking");
    let port = peer.local_addr().expect("addr").port();
    // A redirector on 127.0.0.2, which the operator allows, sending
    // callers on to the peer on 127.0.0.1.
    let app = axum::Router::new().route(
        "/go",
        axum::routing::get(move || async move {
            axum::response::Redirect::temporary(&format!("http://127.0.0.1:{port}/x"))
        }),
    );
    let redirector = tokio::net::TcpListener::bind("127.0.0.2:0")
        .await
        .expect("bind 127.0.0.2");
    let redirector_addr = redirector.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(redirector, app).await.expect("serve") });

    let mut cfg = config(false);
    cfg.tools.outbound = Arc::new(
        OutboundPolicy::default()
            .with_allowed("tools.allow_outbound", &["127.0.0.2".into()])
            .expect("policy"),
    );
    cfg.tools.start_timeout = Duration::from_secs(2);
    let e = Engine::new(s.store.clone(), s.clock.clone(), cfg);
    let acme = scope("acme");
    for (name, url) in [
        ("byname", format!("http://localhost:{port}/x")),
        ("redirected", format!("http://{redirector_addr}/go")),
    ] {
        e.tools()
            .add(
                ToolWriter::Company(&acme),
                http_tool(name, &url),
                audit("acme"),
            )
            .await
            .unwrap_or_else(|err| panic!("{name} is registered (a name, or allowed): {err:?}"));
    }
    // The same over MCP: a name for loopback is registered, never reached.
    e.tools()
        .add(
            ToolWriter::Company(&acme),
            tool(
                json!({"name": "sneaky", "layer": "company", "company": "acme",
                "source": {"kind": "mcp_http", "url": format!("http://localhost:{port}/mcp")}}),
            ),
            audit("acme"),
        )
        .await
        .expect("registered");
    let offer = e.tools().offer(&acme, &[]).await.expect("offer");
    let sneaky = offer
        .views()
        .iter()
        .find(|v| v.name == "sneaky")
        .expect("listed");
    let why = sneaky.error.as_deref().unwrap_or_default();
    assert!(
        why.contains("refused by kira's outbound address policy")
            && why.contains("localhost resolves to"),
        "{why}"
    );
    for (name, expect) in [
        ("byname", "localhost resolves to"),
        ("redirected", "127.0.0.1 is a loopback address"),
    ] {
        let r = e.tools().call(&offer, &cx(&acme), name, &json!({})).await;
        assert_eq!(
            (r.outcome.as_str(), r.error),
            ("refused", true),
            "{name}: {r:?}"
        );
        assert!(
            r.content
                .contains("refused by kira's outbound address policy")
                && r.content.contains(expect),
            "{name}: {}",
            r.content
        );
    }
    assert!(
        matches!(peer.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "nothing connected to the loopback peer"
    );
    let audits = tool_audits(&e, "acme").await;
    let refused: Vec<_> = audits
        .iter()
        .filter(|a| a.action == "tool.call" && a.outcome == kira_core::audit::Outcome::Denied)
        .collect();
    assert_eq!(refused.len(), 2, "every refused call is audited");
    e.tools().stop().await;
}

/// A master key for the tests' credentials.
fn master_key() -> kira_core::seal::MasterKey {
    kira_core::seal::MasterKey::parse(&"cd".repeat(32)).expect("key")
}

#[tokio::test]
async fn a_redirect_to_another_origin_carries_none_of_the_registrations_headers() {
    use crate::common::{answer, wire_server};
    let s = setup(Backend::Sqlite).await;
    let mut cfg = config(true);
    cfg.tools.start_timeout = Duration::from_secs(2);
    let e = Engine::new(s.store.clone(), s.clock.clone(), cfg);
    e.tools().set_master_key(master_key());
    let acme = scope("acme");
    let marker = format!("redirect-credential-{}", uuid::Uuid::now_v7().simple());

    // The other origin answers whatever it is asked; the registered one
    // sends every request there (307: the method and body go along).
    let (other, other_wire) = wire_server(
        ([127, 0, 0, 1], 0).into(),
        answer("200 OK", &[], r#"{"answer": "from the other origin"}"#),
    )
    .await;
    let (first, first_wire) = wire_server(
        ([127, 0, 0, 1], 0).into(),
        answer(
            "307 Temporary Redirect",
            &[format!("location: http://{other}/landing")],
            "",
        ),
    )
    .await;
    e.tools()
        .add(
            ToolWriter::Company(&acme),
            tool(json!({"name": "submit", "layer": "company", "company": "acme",
                "source": {"kind": "http", "method": "POST", "url": format!("http://{first}/submit"),
                    "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
                    "headers": {"X-Api-Key": "{credential}", "X-Custom": "plain-custom-value"},
                    "result": "/answer"}})),
            audit("acme"),
        )
        .await
        .expect("registered");
    e.tools()
        .set_credential(
            &acme,
            "submit",
            &marker,
            CredentialWrite::Set,
            audit("acme"),
        )
        .await
        .expect("credential");
    e.tools()
        .configure(
            &acme,
            "submit",
            Some(&json!({"preferences": {"tone": "terse"}})),
            audit("acme"),
        )
        .await
        .expect("configured");

    // The same over MCP: the session is not carried to another origin.
    let (mcp_other, mcp_other_wire) = wire_server(
        ([127, 0, 0, 1], 0).into(),
        answer("200 OK", &["content-type: application/json".into()], "{}"),
    )
    .await;
    let (mcp_first, mcp_first_wire) = wire_server(
        ([127, 0, 0, 1], 0).into(),
        answer(
            "307 Temporary Redirect",
            &[format!("location: http://{mcp_other}/mcp")],
            "",
        ),
    )
    .await;
    e.tools()
        .add(
            ToolWriter::Company(&acme),
            tool(json!({"name": "hop", "layer": "company", "company": "acme",
                "source": {"kind": "mcp_http", "url": format!("http://{mcp_first}/mcp"),
                    "headers": {"X-Api-Key": "{credential}"}}})),
            audit("acme"),
        )
        .await
        .expect("registered");
    e.tools()
        .set_credential(&acme, "hop", &marker, CredentialWrite::Set, audit("acme"))
        .await
        .expect("credential");

    let offer = e.tools().offer(&acme, &[]).await.expect("offer");
    let r = e
        .tools()
        .call(&offer, &cx(&acme), "submit", &json!({"text": "hello"}))
        .await;
    assert_eq!((r.outcome.as_str(), r.error), ("ok", false), "{r:?}");
    assert_eq!(r.content, "from the other origin");

    // On the wire: the registered origin got the credential, the custom
    // header and the preferences; the other origin got the request and its
    // body, and none of them.
    let first_sent = first_wire.text().to_ascii_lowercase();
    assert!(
        first_sent.contains(&format!("x-api-key: {marker}")),
        "{first_sent}"
    );
    assert!(first_sent.contains("x-custom: plain-custom-value"));
    assert!(first_sent.contains("kira-preferences:"));
    let other_sent = other_wire.text();
    assert_eq!(
        other_wire.requests(),
        1,
        "the redirect is followed: {other_sent}"
    );
    assert!(other_sent.starts_with("POST /landing "), "{other_sent}");
    assert!(other_sent.contains(r#""text":"hello""#), "{other_sent}");
    let other_lower = other_sent.to_ascii_lowercase();
    for leaked in [
        marker.as_str(),
        "x-api-key",
        "x-custom",
        "plain-custom-value",
        "kira-preferences",
        "terse",
    ] {
        assert!(
            !other_lower.contains(leaked),
            "{leaked} reached the other origin: {other_sent}"
        );
    }

    let hop = offer
        .views()
        .iter()
        .find(|v| v.name == "hop")
        .expect("listed");
    let why = hop.error.clone().unwrap_or_default();
    assert!(
        !why.is_empty(),
        "the MCP server is not reached: {:?}",
        hop.tools
    );
    assert!(
        mcp_first_wire.text().contains(&marker),
        "the registered origin got the credential"
    );
    assert_eq!(
        mcp_other_wire.requests(),
        0,
        "an MCP session never follows a redirect to another origin: {}",
        mcp_other_wire.text()
    );
    e.tools().stop().await;
}

#[tokio::test]
async fn a_name_that_rebinds_to_a_forbidden_address_after_the_check_is_refused_when_called() {
    use crate::common::{answer, rebinding_pair, untouched};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let s = setup(Backend::Sqlite).await;
    // The peers: on 127.0.0.2, which the operator allows, the real
    // endpoints; on 127.0.0.1, at the same ports, what a rebinding name
    // would lead to.
    let (api, api_wire, api_loopback) = rebinding_pair(answer("200 OK", &[], "fine")).await;
    let (mcp, mcp_wire, mcp_loopback) = rebinding_pair(answer("200 OK", &[], "{}")).await;
    // api.rebind.test answers 127.0.0.2 until `rebound`, then 127.0.0.1;
    // mcp.rebind.test answers 127.0.0.2 to its first question (the check
    // before connecting) and 127.0.0.1 to every later one (the connection).
    let rebound = Arc::new(AtomicBool::new(false));
    let mcp_lookups = Arc::new(AtomicUsize::new(0));
    let resolver = {
        let rebound = rebound.clone();
        let mcp_lookups = mcp_lookups.clone();
        kira_engine::outbound::Resolver::from_fn(move |host| {
            let allowed: std::net::IpAddr = [127, 0, 0, 2].into();
            let forbidden: std::net::IpAddr = [127, 0, 0, 1].into();
            match host {
                "api.rebind.test" if rebound.load(Ordering::SeqCst) => Ok(vec![forbidden]),
                "api.rebind.test" => Ok(vec![allowed]),
                "mcp.rebind.test" if mcp_lookups.fetch_add(1, Ordering::SeqCst) == 0 => {
                    Ok(vec![allowed])
                }
                "mcp.rebind.test" => Ok(vec![forbidden]),
                other => Err(std::io::Error::other(format!("{other} is not a test name"))),
            }
        })
    };
    let mut cfg = config(false);
    cfg.tools.outbound = Arc::new(
        OutboundPolicy::default()
            .with_allowed("tools.allow_outbound", &["127.0.0.2".into()])
            .expect("policy"),
    );
    cfg.tools.resolver = resolver;
    cfg.tools.start_timeout = Duration::from_secs(2);
    let e = Engine::new(s.store.clone(), s.clock.clone(), cfg);
    let acme = scope("acme");
    e.tools()
        .add(
            ToolWriter::Company(&acme),
            http_tool(
                "rebinding",
                &format!("http://api.rebind.test:{}/x", api.port()),
            ),
            audit("acme"),
        )
        .await
        .expect("a name is registered");
    e.tools()
        .add(
            ToolWriter::Company(&acme),
            tool(json!({"name": "rebinding_mcp", "layer": "company", "company": "acme",
                "source": {"kind": "mcp_http", "url": format!("http://mcp.rebind.test:{}/mcp", mcp.port())}})),
            audit("acme"),
        )
        .await
        .expect("a name is registered");

    let offer = e.tools().offer(&acme, &[]).await.expect("offer");
    let r = e
        .tools()
        .call(&offer, &cx(&acme), "rebinding", &json!({}))
        .await;
    assert_eq!(
        (r.outcome.as_str(), r.content.as_str()),
        ("ok", "fine"),
        "{r:?}"
    );
    assert_eq!(api_wire.requests(), 1);

    rebound.store(true, Ordering::SeqCst);
    let r = e
        .tools()
        .call(&offer, &cx(&acme), "rebinding", &json!({}))
        .await;
    assert_eq!((r.outcome.as_str(), r.error), ("refused", true), "{r:?}");
    assert!(
        r.content
            .contains("refused by kira's outbound address policy")
            && r.content.contains("127.0.0.1"),
        "{}",
        r.content
    );
    assert_eq!(api_wire.requests(), 1, "no second request went anywhere");
    assert!(untouched(&api_loopback), "nothing connected to 127.0.0.1");

    // The MCP server passed the check before connecting, and its name
    // answered the forbidden address when the client connected.
    let view = offer
        .views()
        .iter()
        .find(|v| v.name == "rebinding_mcp")
        .expect("listed");
    let why = view.error.clone().unwrap_or_default();
    assert!(
        why.contains("refused by kira's outbound address policy"),
        "{why}"
    );
    assert!(
        mcp_lookups.load(Ordering::SeqCst) >= 2,
        "checked, then resolved to connect"
    );
    assert!(untouched(&mcp_loopback), "nothing connected to 127.0.0.1");
    assert_eq!(mcp_wire.requests(), 0, "{}", mcp_wire.text());

    let audits = tool_audits(&e, "acme").await;
    let calls: Vec<_> = audits
        .iter()
        .filter(|a| a.action == "tool.call")
        .map(|a| a.outcome)
        .collect();
    assert_eq!(
        calls,
        [
            kira_core::audit::Outcome::Ok,
            kira_core::audit::Outcome::Denied
        ],
        "the refused call is audited as refused"
    );
    e.tools().stop().await;
}

/// A small MCP server over streamable HTTP (rmcp's server side): its
/// tools are what the test puts in `tools`; it keeps the connected
/// client's peer so the test can announce a change.
#[derive(Clone, Default)]
struct Changing {
    tools: Arc<Mutex<Vec<rmcp::model::Tool>>>,
    peer: Arc<Mutex<Option<rmcp::Peer<rmcp::RoleServer>>>>,
}

impl Changing {
    fn add(&self, name: &'static str) {
        let schema = json!({"type": "object", "properties": {}});
        let Value::Object(schema) = schema else {
            unreachable!("an object")
        };
        self.tools
            .lock()
            .expect("tools")
            .push(rmcp::model::Tool::new(
                name,
                format!("the tool {name}"),
                schema,
            ));
    }
}

impl rmcp::ServerHandler for Changing {
    fn get_info(&self) -> rmcp::model::ServerConfig {
        rmcp::model::ServerConfig::new(
            rmcp::model::ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(rmcp::model::Implementation::new("changing", "1.0.0"))
    }

    async fn list_tools(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        _context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::ListToolsResult, rmcp::ErrorData> {
        let tools = self.tools.lock().expect("tools").clone();
        Ok(rmcp::model::ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: rmcp::model::CallToolRequestParams,
        _context: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, rmcp::ErrorData> {
        Ok(
            rmcp::model::CallToolResult::success(vec![rmcp::model::ContentBlock::text(format!(
                "{} ran",
                request.name
            ))])
            .into(),
        )
    }

    async fn on_initialized(&self, context: rmcp::service::NotificationContext<rmcp::RoleServer>) {
        *self.peer.lock().expect("peer") = Some(context.peer.clone());
    }
}

#[tokio::test]
async fn a_tool_list_changed_after_connecting_over_streamable_http_reaches_the_next_offer() {
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    use std::sync::atomic::{AtomicUsize, Ordering};
    let server = Changing::default();
    server.add("first");
    let service: StreamableHttpService<Changing, LocalSessionManager> = {
        let server = server.clone();
        StreamableHttpService::new(
            move || Ok(server.clone()),
            Arc::default(),
            StreamableHttpServerConfig::default(),
        )
    };
    // The client's event stream (a GET) is where a notification that
    // answers no request arrives.
    let streams = Arc::new(AtomicUsize::new(0));
    let app = {
        let streams = streams.clone();
        axum::Router::new()
            .nest_service("/mcp", service)
            .layer(axum::middleware::from_fn(
                move |request: axum::extract::Request, next: axum::middleware::Next| {
                    let streams = streams.clone();
                    async move {
                        if request.method() == axum::http::Method::GET {
                            streams.fetch_add(1, Ordering::SeqCst);
                        }
                        next.run(request).await
                    }
                },
            ))
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let s = setup(Backend::Sqlite).await;
    let e = Engine::new(s.store.clone(), s.clock.clone(), config(true));
    let acme = scope("acme");
    e.tools()
        .add(
            ToolWriter::Company(&acme),
            tool(
                json!({"name": "changing", "layer": "company", "company": "acme",
                "source": {"kind": "mcp_http", "url": format!("http://{addr}/mcp")}}),
            ),
            audit("acme"),
        )
        .await
        .expect("registered");
    let names = e.tools().offer(&acme, &[]).await.expect("offer").names();
    assert!(names.contains(&"changing.first".to_owned()), "{names:?}");
    assert!(!names.contains(&"changing.second".to_owned()), "{names:?}");
    let (_, supervised) = e
        .tools()
        .servers()
        .into_iter()
        .find(|(k, _)| k.ends_with("/changing"))
        .expect("server");

    // Connected, initialised, and its event stream open: the server
    // changes its tools and says so.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let peer = loop {
        let peer = server.peer.lock().expect("peer").clone();
        if let Some(p) = peer
            && streams.load(Ordering::SeqCst) > 0
        {
            break p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the client neither initialised nor opened its event stream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    server.add("second");
    // The stream is open once its GET reached the server; the server may
    // attach it a moment after, so the notice is sent again until kira
    // has listed the tools again (10 s at most).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while supervised.refreshes() == 0 {
        peer.notify_tool_list_changed()
            .await
            .expect("the notice is sent");
        assert!(
            std::time::Instant::now() < deadline,
            "kira never listed the tools again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let offer = e.tools().offer(&acme, &[]).await.expect("offer");
    let names = offer.names();
    assert!(
        names.contains(&"changing.first".to_owned())
            && names.contains(&"changing.second".to_owned()),
        "{names:?}"
    );
    assert_eq!(supervised.starts(), 1, "no restart: the same connection");
    let r = e
        .tools()
        .call(&offer, &cx(&acme), "changing.second", &json!({}))
        .await;
    assert_eq!(
        (r.outcome.as_str(), r.content.as_str()),
        ("ok", "second ran"),
        "{r:?}"
    );
    e.tools().stop().await;
}
