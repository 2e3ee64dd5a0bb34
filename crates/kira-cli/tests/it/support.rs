//! Starting and stopping a real `kira serve`, and running the CLI against it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const KIRA: &str = env!("CARGO_BIN_EXE_kira");

/// Variables that would change what the binary does if the environment
/// running the tests happened to set them.
const KIRA_VARS: &[&str] = &[
    "KIRA_URL",
    "KIRA_TOKEN",
    "KIRA_DATA_DIR",
    "KIRA_LISTEN",
    "KIRA_METRICS_LISTEN",
    "KIRA_DATABASE_URL",
    "KIRA_APP_DATABASE_URL",
    "KIRA_MAX_BODY_BYTES",
    "KIRA_CONFIG",
    "KIRA_LOG",
    // The model providers' variables: tests never reach the internet.
    "KIRA_MODEL",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL",
];

/// The `kira` binary with a clean environment, run in `cwd`.
pub fn kira_in(cwd: &Path) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::new(KIRA);
    for v in KIRA_VARS {
        cmd.env_remove(v);
    }
    cmd.env("NO_COLOR", "1").current_dir(cwd);
    cmd
}

pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(cmd: &mut assert_cmd::Command) -> Output {
    let out = cmd.output().expect("kira runs");
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the command, expecting success; its stdout.
pub fn ok(cmd: &mut assert_cmd::Command) -> String {
    let out = cmd.assert().success();
    String::from_utf8_lossy(&out.get_output().stdout).into_owned()
}

/// Runs the command with `--json`, expecting success; its stdout parsed.
pub fn ok_json(cmd: &mut assert_cmd::Command) -> Value {
    let stdout = ok(cmd.arg("--json"));
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("--json printed non-JSON ({e}):\n{stdout}"))
}

/// Runs the command expecting exit status `code`; its output.
pub fn fails(cmd: &mut assert_cmd::Command, code: i32) -> Output {
    let out = run(cmd);
    assert_eq!(
        out.code,
        Some(code),
        "expected exit {code}\nstdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    out
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A running `kira serve`. Killed when dropped; its log is printed when
/// the test is failing, to say why.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    pub url: String,
    pub work: PathBuf,
    pub data_dir: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

/// How long `kira serve` may take to answer /healthz.
const STARTS_WITHIN: Duration = Duration::from_secs(30);

impl Server {
    /// Starts `kira serve` in `work` with its data in `work/data`, plus
    /// `args`, and waits until /healthz answers.
    pub fn start(work: &Path, args: &[&str]) -> Server {
        let port = free_port();
        let data_dir = work.join("data");
        let n = std::fs::read_dir(work).map(|d| d.count()).unwrap_or(0);
        let stdout_path = work.join(format!("serve-{n}.out"));
        let stderr_path = work.join(format!("serve-{n}.err"));
        let mut cmd = Command::new(KIRA);
        for v in KIRA_VARS {
            cmd.env_remove(v);
        }
        let listen = format!("127.0.0.1:{port}");
        // Without a configuration of its own a test's server only queues
        // tasks: the default (agents on the local model) is slow on CI and
        // is tested where a test asks for it.
        if !args.contains(&"--config") {
            let file = work.join("kira.toml");
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            if !text.contains("[executor]") {
                std::fs::write(&file, format!("{text}\n[executor]\nkind = \"none\"\n"))
                    .expect("write kira.toml");
            }
        }
        cmd.current_dir(work)
            .env("NO_COLOR", "1")
            .args(["serve", "--listen", &listen, "--data-dir"])
            .arg(&data_dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr_path).expect("stderr file"));
        let child = cmd.spawn().expect("kira serve starts");
        let mut server = Server {
            child: Some(child),
            port,
            url: format!("http://{listen}"),
            work: work.to_path_buf(),
            data_dir,
            stdout_path,
            stderr_path,
        };
        server.wait_healthy();
        server
    }

    /// Waits for /healthz. A server answers once its models are loaded
    /// (the embedder always, the local model where agents run on it),
    /// which took 10 s once on a 2-core CI machine busy starting other
    /// test binaries: the deadline only says the server never came up.
    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + STARTS_WITHIN;
        loop {
            if let Some(status) = self.child_mut().try_wait().expect("child status") {
                panic!("kira serve exited early ({status}):\n{}", self.stderr());
            }
            if let Ok((200, body)) = http_get(self.port, "/healthz", None) {
                assert!(body.contains("ok"), "healthz said {body}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kira serve did not answer /healthz within {} s:\n{}",
                STARTS_WITHIN.as_secs(),
                self.stderr()
            );
            pause(Duration::from_millis(100));
        }
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("server running")
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The token `kira serve` saved for the first admin key.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.key"))
            .expect("admin.key")
            .trim()
            .to_owned()
    }

    /// The CLI pointed at this server, authenticating with admin.key from
    /// the data directory (the default when no token is given).
    pub fn kira(&self) -> assert_cmd::Command {
        let mut cmd = kira_in(&self.work);
        cmd.args(["--url", &self.url, "--data-dir"])
            .arg(&self.data_dir);
        cmd
    }

    /// The CLI pointed at this server with another key's token.
    pub fn kira_as(&self, token: &str) -> assert_cmd::Command {
        let mut cmd = kira_in(&self.work);
        cmd.args(["--url", &self.url]).env("KIRA_TOKEN", token);
        cmd
    }

    /// The CLI pointed at this server as a child process with its stdout
    /// piped, for commands that run on (`task watch`) and are read as they
    /// print.
    pub fn spawn_kira(&self, args: &[&str]) -> Child {
        let mut cmd = Command::new(KIRA);
        for v in KIRA_VARS {
            cmd.env_remove(v);
        }
        cmd.current_dir(&self.work)
            .env("NO_COLOR", "1")
            .args(["--url", &self.url, "--data-dir"])
            .arg(&self.data_dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kira runs")
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// Kills the server outright (SIGKILL: nothing of its shutdown runs)
    /// and reaps it.
    pub fn kill(mut self) {
        let mut child = self.child.take().expect("server running");
        child.kill().expect("SIGKILL sent");
        child.wait().expect("reaped");
    }

    /// Sends SIGTERM and waits (up to 10 s) for the server to finish.
    pub fn stop(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server running");
        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(killed.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("child status") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "kira serve did not stop within 10 s of SIGTERM:\n{}",
                    self.stderr()
                );
            }
            pause(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- kira serve stderr ---\n{}", self.stderr());
        }
    }
}

/// A plain HTTP/1.1 GET on loopback: status and body.
pub fn http_get(port: u16, path: &str, token: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {resp}")))?;
    let body = resp
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

/// A field of a JSON value as a string, for terse assertions.
pub fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {v}"))
}

/// A small runtime for the async helpers (test databases, sqlx).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// Polls `check` until it gives a value, for up to `timeout`; panics with
/// `what` when it never does.
pub fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        pause(Duration::from_millis(100));
    }
}

/// Waits a little between polls of a real process. Real time is the point
/// here: the server is another process, and no clock can be injected into
/// it.
#[allow(clippy::disallowed_methods)]
fn pause(d: Duration) {
    std::thread::sleep(d);
}
