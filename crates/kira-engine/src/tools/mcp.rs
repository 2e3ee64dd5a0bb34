//! MCP servers, supervised: over stdio kira starts the server's command,
//! over streamable HTTP it connects to the server's URL; either way it
//! talks MCP through `rmcp`, keeps the server's tools (`tools/list`, listed
//! again on `notifications/tools/list_changed`), starts or connects again
//! with backoff when the server exits or the connection ends (at most
//! `max_restarts_per_minute` times a minute) and stops it with kira. A
//! stdio server's stderr is logged under its name, with what kira
//! injected into it and anything shaped like a bearer token redacted.

use std::collections::{BTreeMap, VecDeque};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use kira_core::outbound::OutboundPolicy;
use rmcp::model::{CallToolRequestParams, CallToolResult, ContentBlock, Tool};
use rmcp::service::{NotificationContext, Peer, RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, ServiceExt};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio::sync::{Notify, watch};

/// What to start. Its environment may hold a company's credential: it
/// is never printed (no `Debug`).
#[derive(Clone, PartialEq, Eq)]
pub struct Spawn {
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// The credentials put into `env`: never logged, even when the server
    /// prints them.
    pub secrets: Vec<String>,
}

/// Where a server over streamable HTTP is. Its headers may hold a
/// company's credential: never printed (no `Debug`).
#[derive(Clone, PartialEq, Eq)]
pub struct Remote {
    pub url: String,
    pub headers: BTreeMap<String, String>,
    /// The policy its URL is held to (none: a trusted shared server).
    pub guard: Option<Arc<OutboundPolicy>>,
    /// How its name is resolved for the check before connecting.
    pub resolver: crate::outbound::Resolver,
}

/// How kira reaches a server.
#[derive(Clone, PartialEq, Eq)]
pub enum Connect {
    Stdio(Spawn),
    Http(Remote),
}

/// How a supervised server restarts.
#[derive(Debug, Clone, Copy)]
pub struct Supervision {
    pub max_restarts_per_minute: u32,
    /// The first wait before a restart; doubled after each quick exit.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

/// Told a server's tools each time it lists them (when it connects, and
/// again on `list_changed`); awaited before a caller waiting for the server
/// or counting its refreshes hears of the new list (the tools registry
/// keeps it in the database, for `kira tools list`).
pub type OnListed =
    Arc<dyn Fn(Vec<Tool>) -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>;

/// Where a server stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Starting,
    /// Running; its generation counts the starts.
    Up(u64),
    /// Exited or failed to start; restarting after a wait.
    Down(String),
    /// Stopped with kira.
    Stopped,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum McpError {
    #[error("MCP server '{server}' is not running ({reason})")]
    NotRunning { server: String, reason: String },
    #[error("MCP server '{server}' did not answer within {ms} ms")]
    Timeout { server: String, ms: u128 },
    #[error("MCP server '{server}' failed the call: {message}")]
    Failed { server: String, message: String },
}

/// The client side of the connection: a changed tool list wakes the
/// supervisor, which lists the tools again.
#[derive(Clone)]
struct Handler {
    changed: Arc<Notify>,
}

impl ClientHandler for Handler {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.changed.notify_one();
    }
}

struct Live {
    peer: Peer<RoleClient>,
    pid: Option<u32>,
}

/// One supervised MCP server.
pub struct McpServer {
    name: String,
    connect: Connect,
    /// The HTTP client of a server over streamable HTTP.
    http: reqwest::Client,
    supervision: Supervision,
    live: RwLock<Option<Arc<Live>>>,
    tools: RwLock<Vec<Tool>>,
    status: watch::Sender<Status>,
    stop: Arc<Notify>,
    stopped: watch::Sender<bool>,
    starts: AtomicU64,
    refreshes: AtomicU64,
    /// Why the last start failed (kept through the restarts after it).
    last_error: RwLock<Option<String>>,
    on_listed: Option<OnListed>,
}

impl McpServer {
    /// Starts `spawn` under supervision; the server's tools are listed as
    /// soon as it answers (see [`McpServer::wait_up`]).
    pub fn start(
        name: &str,
        connect: Connect,
        supervision: Supervision,
        http: reqwest::Client,
        on_listed: Option<OnListed>,
    ) -> Arc<McpServer> {
        let server = Arc::new(McpServer {
            name: name.to_owned(),
            connect,
            http,
            supervision,
            live: RwLock::new(None),
            tools: RwLock::new(Vec::new()),
            status: watch::channel(Status::Starting).0,
            stop: Arc::new(Notify::new()),
            stopped: watch::channel(false).0,
            starts: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
            last_error: RwLock::new(None),
            on_listed,
        });
        tokio::spawn(supervise(server.clone()));
        server
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// Times the server was started (the first start included).
    pub fn starts(&self) -> u64 {
        self.starts.load(Ordering::SeqCst)
    }

    /// Times the tools were listed again after `list_changed`.
    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::SeqCst)
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.live
            .read()
            .ok()
            .and_then(|l| l.as_ref().and_then(|l| l.pid))
    }

    /// The server's tools as last listed.
    pub fn tools(&self) -> Vec<Tool> {
        self.tools.read().map(|t| t.clone()).unwrap_or_default()
    }

    /// Waits until the server is up, at most `within`.
    pub async fn wait_up(&self, within: Duration) -> Result<(), McpError> {
        let mut rx = self.status.subscribe();
        let waited =
            tokio::time::timeout(within, rx.wait_for(|s| matches!(s, Status::Up(_)))).await;
        match waited {
            Ok(Ok(_)) => Ok(()),
            _ => {
                let mut reason = match self.status() {
                    Status::Down(r) => r,
                    Status::Stopped => "stopped".into(),
                    _ => "still starting".into(),
                };
                if let Some(last) = self.last_error.read().ok().and_then(|l| l.clone())
                    && !reason.contains(&last)
                {
                    reason = format!("{reason}; the last start failed: {last}");
                }
                Err(McpError::NotRunning {
                    server: self.name.clone(),
                    reason,
                })
            }
        }
    }

    /// Calls `tool` with `args` (an object), waiting for the answer at most
    /// `timeout` (starting included). An error the tool reports is an Ok
    /// result with `is_error` set.
    pub async fn call(
        &self,
        tool: &str,
        args: &Value,
        timeout: Duration,
    ) -> Result<CallToolResult, McpError> {
        self.call_with_meta(tool, args, None, timeout).await
    }

    /// [`McpServer::call`] with the request's `_meta` (an object).
    pub async fn call_with_meta(
        &self,
        tool: &str,
        args: &Value,
        meta: Option<Value>,
        timeout: Duration,
    ) -> Result<CallToolResult, McpError> {
        let t0 = Instant::now();
        self.wait_up(timeout).await?;
        let live = self
            .live
            .read()
            .ok()
            .and_then(|l| l.clone())
            .ok_or_else(|| McpError::NotRunning {
                server: self.name.clone(),
                reason: "it exited".into(),
            })?;
        let mut params = CallToolRequestParams::new(tool.to_owned());
        if let Value::Object(m) = args {
            params = params.with_arguments(m.clone());
        }
        if let Some(Value::Object(m)) = meta {
            params.meta = Some(m.into());
        }
        let left = timeout.saturating_sub(t0.elapsed());
        match tokio::time::timeout(left, live.peer.call_tool(params)).await {
            Err(_) => Err(McpError::Timeout {
                server: self.name.clone(),
                ms: timeout.as_millis(),
            }),
            Ok(Err(e)) => Err(McpError::Failed {
                server: self.name.clone(),
                message: match e {
                    rmcp::ServiceError::TransportClosed => {
                        "the server exited during the call (kira restarts it)".into()
                    }
                    other => other.to_string(),
                },
            }),
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// Waits until the supervisor has stopped the server, at most `within`.
    pub async fn wait_stopped(&self, within: Duration) {
        let mut rx = self.status.subscribe();
        let _ = tokio::time::timeout(within, rx.wait_for(|s| *s == Status::Stopped)).await;
    }

    /// Stops the server and its supervisor.
    pub fn shutdown(&self) {
        let _ = self.stopped.send_replace(true);
        self.stop.notify_waiters();
        self.stop.notify_one();
    }

    /// Keeps `tools` as the server's list, and tells [`OnListed`].
    async fn set_tools(&self, tools: Vec<Tool>) {
        if let Some(told) = &self.on_listed {
            told(tools.clone()).await;
        }
        if let Ok(mut t) = self.tools.write() {
            *t = tools;
        }
    }

    fn is_stopped(&self) -> bool {
        *self.stopped.borrow()
    }
}

impl Drop for McpServer {
    fn drop(&mut self) {
        let _ = self.stopped.send_replace(true);
        self.stop.notify_one();
    }
}

/// A result's text: text blocks as they are, other blocks as their JSON,
/// the structured content when there is no block.
pub fn result_text(r: &CallToolResult) -> String {
    let mut parts: Vec<String> = r
        .content
        .iter()
        .map(|c| match c {
            ContentBlock::Text(t) => t.text.clone(),
            other => serde_json::to_string(other).unwrap_or_default(),
        })
        .collect();
    if parts.is_empty()
        && let Some(s) = &r.structured_content
    {
        parts.push(s.to_string());
    }
    parts.join("\n")
}

/// Starts, watches and restarts the server until it is stopped.
async fn supervise(server: Arc<McpServer>) {
    let mut recent: VecDeque<Instant> = VecDeque::new();
    let mut backoff = server.supervision.backoff;
    let window = Duration::from_secs(60);
    loop {
        if server.is_stopped() {
            break;
        }
        // At most N starts a minute: past that, wait for the oldest to
        // leave the window.
        while recent.front().is_some_and(|t| t.elapsed() >= window) {
            recent.pop_front();
        }
        // The first start is not a restart.
        let max = server.supervision.max_restarts_per_minute as usize + 1;
        if recent.len() >= max {
            let wait = recent
                .front()
                .map_or(window, |t| window.saturating_sub(t.elapsed()));
            let reason = format!(
                "restarted {} times in a minute; next try in {} s",
                recent.len() - 1,
                wait.as_secs()
            );
            tracing::error!(server = %server.name, "MCP server {reason}");
            let _ = server.status.send_replace(Status::Down(reason));
            if pause(&server, wait).await {
                break;
            }
            continue;
        }
        recent.push_back(Instant::now());
        let started = Instant::now();
        let _ = server.status.send_replace(Status::Starting);
        match run_once(&server).await {
            Ok(()) => {}
            Err(reason) => {
                tracing::warn!(server = %server.name, %reason, "MCP server down");
                if let Ok(mut l) = server.last_error.write() {
                    *l = Some(reason.clone());
                }
                let _ = server.status.send_replace(Status::Down(reason));
            }
        }
        if let Ok(mut l) = server.live.write() {
            *l = None;
        }
        if server.is_stopped() {
            break;
        }
        // A server that ran a while starts again at once and with the
        // first backoff; one that keeps exiting waits longer each time.
        if started.elapsed() > Duration::from_secs(30) {
            backoff = server.supervision.backoff;
        }
        if pause(&server, backoff).await {
            break;
        }
        backoff = (backoff * 2).min(server.supervision.max_backoff);
    }
    let _ = server.status.send_replace(Status::Stopped);
}

/// Waits `d` or until stopped; true when stopped.
async fn pause(server: &McpServer, d: Duration) -> bool {
    let mut stopped = server.stopped.subscribe();
    tokio::select! {
        () = tokio::time::sleep(d) => server.is_stopped(),
        () = async { let _ = stopped.wait_for(|s| *s).await; } => true,
    }
}

/// Starts the process (stdio) and logs its stderr, redacted.
async fn spawn_stdio(
    server: &McpServer,
    spawn: &Spawn,
    handler: Handler,
) -> Result<(RunningService<RoleClient, Handler>, Option<u32>), String> {
    let program = super::find_command(&spawn.command).ok_or_else(|| {
        format!(
            "could not start '{}': not an executable file here (nor a name found in PATH)",
            spawn.command
        )
    })?;
    let (proc, stderr) = spawn_on_one_thread(program, spawn)
        .await
        .map_err(|e| format!("could not start '{}': {e}", spawn.command))?;
    let pid = proc.id();
    server.starts.fetch_add(1, Ordering::SeqCst);
    if let Some(err) = stderr {
        let name = server.name.clone();
        let secrets = spawn.secrets.clone();
        tokio::spawn(async move {
            let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
            let mut lines = tokio::io::BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let line = kira_core::tools::redact_line(&line, &secrets);
                tracing::info!(target: "kira::mcp", server = %name, "{line}");
            }
        });
    }
    let client = tokio::time::timeout(Duration::from_secs(30), handler.serve(proc))
        .await
        .map_err(|_| "did not answer initialize within 30 s".to_owned())?
        .map_err(|e| format!("initialize failed: {e}"))?;
    Ok((client, pid))
}

/// The command that runs `program` so that it dies with kira, even when
/// kira is killed outright (SIGKILL runs no destructor, so
/// `kill_on_drop` cannot help): on Linux, util-linux's `setpriv
/// --pdeathsig KILL` sets the process's parent-death signal
/// (`PR_SET_PDEATHSIG`) and execs the server, which keeps it. kira itself
/// cannot set it without `unsafe` (`pre_exec`), which the workspace
/// forbids. Without a `setpriv` that can (not Linux, not installed, or
/// older than util-linux 2.33) the server starts as it is and kira says
/// so once: it then outlives a killed kira.
///
/// The signal covers the server's own process, not children it starts
/// itself (a server started through `npx` or a shell script should
/// `exec` the real one). Runs on the thread of [`spawn_on_one_thread`]
/// (the first call tries `setpriv` once, blocking).
fn dies_with_kira(program: &std::path::Path) -> tokio::process::Command {
    static SETPRIV: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    let setpriv = SETPRIV.get_or_init(|| {
        let works = |setpriv: &std::path::PathBuf| {
            std::process::Command::new(setpriv)
                .args(["--pdeathsig", "KILL", "--"])
                .arg(setpriv)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let found = cfg!(target_os = "linux")
            .then(|| super::find_command("setpriv"))
            .flatten()
            .filter(works);
        if found.is_none() {
            tracing::warn!(
                "no `setpriv --pdeathsig` (util-linux 2.33 or later): stdio MCP servers will outlive kira if it is killed (SIGKILL)"
            );
        }
        found
    });
    match setpriv {
        Some(setpriv) => {
            let mut cmd = tokio::process::Command::new(setpriv);
            cmd.args(["--pdeathsig", "KILL", "--"]).arg(program);
            cmd
        }
        None => tokio::process::Command::new(program),
    }
}

/// Starts `spawn` (its command found at `program`) from one thread that
/// lives as long as kira: the kernel sends the parent-death signal when
/// the *thread* that forked the child exits, not the process, and a
/// runtime's threads come and go (a blocking-pool thread ends when idle;
/// a worker that blocks in place hands its work to another thread).
async fn spawn_on_one_thread(
    program: std::path::PathBuf,
    spawn: &Spawn,
) -> std::io::Result<(
    rmcp::transport::TokioChildProcess,
    Option<tokio::process::ChildStderr>,
)> {
    type Job = Box<dyn FnOnce() + Send>;
    static SPAWNER: std::sync::OnceLock<Option<std::sync::mpsc::Sender<Job>>> =
        std::sync::OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let started = std::thread::Builder::new()
            .name("kira-mcp-spawn".into())
            .spawn(move || {
                // The thread must outlive every server it started: a job
                // that panics is dropped, not the thread.
                while let Ok(job) = rx.recv() {
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            });
        match started {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::error!(error = %e, "could not start the thread that starts MCP servers");
                None
            }
        }
    });
    let (args, env) = (spawn.args.clone(), spawn.env.clone());
    let start = move || {
        let mut cmd = dies_with_kira(&program);
        cmd.args(&args).envs(&env).kill_on_drop(true);
        rmcp::transport::TokioChildProcess::builder(cmd)
            .stderr(Stdio::piped())
            .spawn()
    };
    let Some(spawner) = spawner else {
        return start();
    };
    // The child is registered with this runtime (its exit, its pipes).
    let runtime = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _entered = runtime.enter();
        let _ = tx.send(start());
    });
    spawner
        .send(job)
        .map_err(|_| std::io::Error::other("the thread that starts MCP servers has ended"))?;
    rx.await
        .map_err(|_| std::io::Error::other("starting the process failed unexpectedly"))?
}

/// Connects to a server over streamable HTTP, its URL held to its policy
/// (an address literal here; every name the client resolves, in its
/// resolver).
async fn connect_http(
    server: &McpServer,
    remote: &Remote,
    handler: Handler,
) -> Result<RunningService<RoleClient, Handler>, String> {
    if let Some(policy) = &remote.guard {
        crate::outbound::preflight(policy, &remote.resolver, &remote.url)
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut headers = std::collections::HashMap::new();
    for (k, v) in &remote.headers {
        let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("header {k} is not a header name"))?;
        let mut value = reqwest::header::HeaderValue::from_str(v)
            .map_err(|_| format!("header {k}'s value is not a header value"))?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    let config =
        StreamableHttpClientTransportConfig::with_uri(remote.url.clone()).custom_headers(headers);
    let transport = StreamableHttpClientTransport::with_client(server.http.clone(), config);
    server.starts.fetch_add(1, Ordering::SeqCst);
    let client = tokio::time::timeout(Duration::from_secs(30), handler.serve(transport))
        .await
        .map_err(|_| "did not answer initialize within 30 s".to_owned())?
        .map_err(|e| {
            let why = match crate::outbound::refusal(&e) {
                Some(r) => r.to_string(),
                None => error_chain(&e),
            };
            format!("initialize failed: {why}")
        })?;
    Ok(client)
}

/// An error with its causes, one after another (rmcp's transport errors
/// say the most in their sources).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

/// One life of the server: start it (stdio) or connect (HTTP), initialise,
/// list the tools, serve until it exits or the connection ends (Ok) or
/// kira stops it; Err when it could not start.
async fn run_once(server: &Arc<McpServer>) -> Result<(), String> {
    let changed = Arc::new(Notify::new());
    let handler = Handler {
        changed: changed.clone(),
    };
    let (client, pid) = match &server.connect {
        Connect::Stdio(spawn) => spawn_stdio(server, spawn, handler).await?,
        Connect::Http(remote) => (connect_http(server, remote, handler).await?, None),
    };
    let peer = client.peer().clone();
    let tools = peer
        .list_all_tools()
        .await
        .map_err(|e| format!("tools/list failed: {e}"))?;
    server.set_tools(tools).await;
    let live = Arc::new(Live {
        peer: peer.clone(),
        pid,
    });
    if let Ok(mut l) = server.live.write() {
        *l = Some(live);
    }
    let generation = server.starts();
    let _ = server.status.send_replace(Status::Up(generation));
    tracing::info!(server = %server.name, pid, "MCP server up");

    // Lists the tools again whenever the server says they changed.
    let refresher = {
        let server = server.clone();
        let peer = peer.clone();
        tokio::spawn(async move {
            loop {
                changed.notified().await;
                match peer.list_all_tools().await {
                    Ok(tools) => {
                        server.set_tools(tools).await;
                        server.refreshes.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => {
                        tracing::warn!(server = %server.name, error = %e, "tools/list after list_changed failed");
                        break;
                    }
                }
            }
        })
    };
    let ct = client.cancellation_token();
    let waiting = client.waiting();
    tokio::pin!(waiting);
    let mut stopped = server.stopped.subscribe();
    let out = tokio::select! {
        r = &mut waiting => {
            let reason = match r {
                Ok(q) => format!("exited ({q:?})"),
                Err(e) => format!("its connection task failed: {e}"),
            };
            tracing::warn!(server = %server.name, %reason, "MCP server exited");
            let _ = server.status.send_replace(Status::Down(reason));
            Ok(())
        }
        () = async { let _ = stopped.wait_for(|s| *s).await; } => {
            ct.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut waiting).await;
            Ok(())
        }
    };
    refresher.abort();
    out
}

/// The live servers, shared by every caller of one registration.
#[derive(Default)]
pub struct Pool {
    servers: Mutex<BTreeMap<String, Arc<McpServer>>>,
}

impl Pool {
    /// The server under `key`, started on first use (and again when how
    /// it is reached changed); `http` is the client of one over HTTP,
    /// `on_listed` what a new server tells of its tools.
    pub fn get(
        &self,
        key: &str,
        name: &str,
        connect: &Connect,
        sup: Supervision,
        http: &reqwest::Client,
        on_listed: impl FnOnce() -> Option<OnListed>,
    ) -> Arc<McpServer> {
        let mut servers = match self.servers.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        if let Some(s) = servers.get(key)
            && &s.connect == connect
            && s.status() != Status::Stopped
        {
            return s.clone();
        }
        let s = McpServer::start(name, connect.clone(), sup, http.clone(), on_listed());
        if let Some(old) = servers.insert(key.to_owned(), s.clone()) {
            old.shutdown();
        }
        s
    }

    /// Stops every server.
    pub fn shutdown(&self) {
        let servers = match self.servers.lock() {
            Ok(mut s) => std::mem::take(&mut *s),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        for s in servers.values() {
            s.shutdown();
        }
    }

    /// Every server, by key.
    pub fn servers(&self) -> Vec<(String, Arc<McpServer>)> {
        match self.servers.lock() {
            Ok(s) => s.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Err(_) => Vec::new(),
        }
    }
}
