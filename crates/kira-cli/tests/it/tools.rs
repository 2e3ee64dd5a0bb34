//! `kira tools` through the real binary: an MCP server registered by the
//! admin listed with its layer, source and namespaced tools, tested as the
//! company, configured and removed; a command that does not exist and an
//! MCP server at the metadata address refused with the field named and
//! nothing written; an MCP server over HTTP registered by its URL; a
//! stdio server that outlives its input dying with a `kira serve` killed
//! with SIGKILL.

use crate::support::{Server, fails, ok, ok_json};

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

#[test]
fn tools_add_list_test_configure_remove() {
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
        "US-DE",
    ]));
    let bad = fails(
        server.kira().args([
            "tools",
            "add",
            "ghost",
            "--layer",
            "infrastructure",
            "--command",
            "/no/such/kira-mcp-server",
        ]),
        1,
    );
    assert!(bad.stderr.contains("source.command"), "{}", bad.stderr);
    // A company URL at an internal address: refused naming the field.
    let internal = fails(
        server.kira().args([
            "tools",
            "add",
            "inside",
            "--company",
            "acme",
            "--mcp-url",
            "http://169.254.169.254/mcp",
            "--header",
            "Authorization=Bearer {credential}",
        ]),
        1,
    );
    assert!(
        internal.stderr.contains("source.url") && internal.stderr.contains("link-local"),
        "{}",
        internal.stderr
    );
    let remote = ok(server.kira().args([
        "tools",
        "add",
        "remote",
        "--company",
        "acme",
        "--mcp-url",
        "https://mcp.example.invalid/mcp",
        "--header",
        "Authorization=Bearer {credential}",
    ]));
    assert!(
        remote.contains("registered remote (company layer, mcp_http)"),
        "{remote}"
    );
    ok(server
        .kira()
        .args(["tools", "remove", "remote", "--company", "acme"]));

    let cmd = everything();
    let out = ok(server.kira().args([
        "tools",
        "add",
        "everything",
        "--layer",
        "company",
        "--company",
        "acme",
        "--command",
        &cmd,
        "--arg",
        "stdio",
    ]));
    assert!(
        out.contains("registered everything (company layer, mcp_stdio)"),
        "{out}"
    );

    // Listing starts nothing: a server kira never listed says so.
    let list = ok(server
        .kira()
        .args(["tools", "list", "--company", "acme", "--domain", "legal"]));
    assert!(
        list.contains("everything") && list.contains("mcp_stdio"),
        "{list}"
    );
    assert!(list.contains("not listed yet"), "{list}");
    assert!(!list.contains("ghost"), "nothing written: {list}");
    assert!(
        children(server.pid(), "mcp-server-everything").is_empty(),
        "a listing started no server"
    );
    // A refresh starts it and lists its tools; the next listing shows
    // what it listed, from the database.
    let list = ok(server.kira().args([
        "tools",
        "list",
        "--company",
        "acme",
        "--domain",
        "legal",
        "--refresh",
    ]));
    assert!(list.contains("everything.echo"), "{list}");
    assert_eq!(children(server.pid(), "mcp-server-everything").len(), 1);
    let list = ok(server
        .kira()
        .args(["tools", "show", "everything", "--company", "acme"]));
    assert!(
        list.contains("everything.echo") && list.contains("(listed "),
        "{list}"
    );
    let json = ok_json(
        server
            .kira()
            .args(["--json", "tools", "list", "--company", "acme"]),
    );
    let names: Vec<&str> = json["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|t| t["name"].as_str().expect("name"))
        .collect();
    assert!(
        names.contains(&"search_memory") && names.contains(&"everything"),
        "{names:?}"
    );

    ok(server.kira().args([
        "tools",
        "configure",
        "everything.echo",
        "--company",
        "acme",
        "--config",
        r#"{"defaults": {"message": "from the company's defaults"}}"#,
    ]));
    let out = ok(server
        .kira()
        .args(["tools", "test", "everything.echo", "--company", "acme"]));
    assert!(out.starts_with("ok ("), "{out}");
    assert!(out.contains("Echo: from the company's defaults"), "{out}");

    ok(server
        .kira()
        .args(["tools", "remove", "everything", "--company", "acme"]));
    let list = ok(server.kira().args(["tools", "list", "--company", "acme"]));
    assert!(!list.contains("everything"), "{list}");
}

/// The processes whose parent is `parent` and whose command line holds
/// `needle`.
fn children(parent: u32, needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(parent) && String::from_utf8_lossy(&cmdline).contains(needle) {
            out.push(pid);
        }
    }
    out
}

/// The process has exited: gone, or a zombie nobody has reaped yet (its
/// new parent, the container's init, may never reap it).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

#[test]
fn a_stdio_mcp_server_dies_with_kira_when_kira_is_killed() {
    // A server that stays when its input closes (the reference servers
    // leave at end of input unless a call or a timer holds them): only
    // a signal from the kernel can stop it once kira is killed.
    let python = std::env::var("KIRA_TEST_SMTPD_PYTHON").unwrap_or("/usr/bin/python3".into());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/lingering_mcp_server.py")
        .display()
        .to_string();
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
        "US-DE",
    ]));
    ok(server.kira().args([
        "tools",
        "add",
        "lingering",
        "--layer",
        "company",
        "--company",
        "acme",
        "--command",
        &python,
        "--arg",
        &script,
    ]));
    let out = ok(server
        .kira()
        .args(["tools", "test", "lingering.ping", "--company", "acme"]));
    assert!(out.contains("pong"), "{out}");
    let servers = children(server.pid(), "lingering_mcp_server.py");
    assert_eq!(servers.len(), 1, "one server, started by kira: {servers:?}");
    // None of kira's shutdown runs: only the kernel can stop the server.
    server.kill();
    crate::support::wait_for(
        std::time::Duration::from_secs(10),
        "the MCP server exits when kira is killed",
        || servers.iter().all(|p| exited(*p)).then_some(()),
    );
}
