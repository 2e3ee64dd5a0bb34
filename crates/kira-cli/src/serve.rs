//! `kira serve`: opens the store, makes the first admin key when there is
//! none, and runs the HTTP API and the engine (the scheduler, when an
//! executor is configured, and the periodic jobs) until SIGINT or SIGTERM.
//!
//! Stopping is in two steps: first the HTTP server stops accepting and
//! finishes open requests, then the engine is told to stop and given a
//! while to hand back what it holds. Work it cannot finish in time is not
//! lost: its leases lapse and another start picks it up.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{IsTerminal, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kira_core::clock::SystemClock;
use kira_engine::config::ExecutorConfig;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;

use crate::config::{Config, redact_url};

/// How long open HTTP requests may take to finish after a stop request.
/// A client following a task (`kira task watch`) keeps its request open;
/// past this it is cut off rather than holding the stop up for ever.
const HTTP_DRAIN: Duration = Duration::from_secs(10);
/// How long the engine may take to stop once HTTP has.
const ENGINE_STOP: Duration = Duration::from_secs(10);

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    // The data directory holds the database and the admin token: owner only.
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.data_dir)
        .with_context(|| {
            format!(
                "cannot create the data directory {}",
                cfg.data_dir.display()
            )
        })?;

    init_logging(&cfg.log);
    tracing::info!(
        listen = %cfg.listen,
        database = %redact_url(&cfg.database_url),
        data_dir = %cfg.data_dir.display(),
        max_body_bytes = cfg.max_body_bytes,
        "starting kira"
    );

    // Registered before anything slow, so a stop request during start-up
    // is not lost to the default handler.
    let mut sigterm = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;

    let store = kira_store::open(&cfg.store_config())
        .await
        .with_context(|| format!("cannot open the database {}", redact_url(&cfg.database_url)))?;

    let clock = SystemClock;
    if let Some(issued) = kira_engine::keys::bootstrap_admin_key(store.as_ref(), &clock)
        .await
        .context("cannot create the first admin key")?
    {
        announce_admin_key(
            &cfg.admin_key_path(),
            &issued.token,
            issued.stored.key.id.as_str(),
        );
    }

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener
        .local_addr()
        .context("cannot read the listening address")?;
    eprintln!("kira listening on http://{addr}");
    eprintln!("kira dashboard on http://{addr}/ui/ (sign in with an API key)");

    let env = |k: &str| std::env::var(k).ok();
    let engine = crate::agents::engine(store, &cfg.engine, &env)?;
    let engine = crate::models::with_models(engine);
    tool_credentials(&engine, &env);
    let shutdown = kira_engine::Shutdown::new();
    let background = engine.scheduler().start(shutdown.clone());
    let memory_jobs = engine.memory().start_jobs(shutdown.clone());
    let metrics_jobs = engine.metrics().start_jobs(shutdown.clone());
    let alert_jobs = engine.alerts().start_jobs(shutdown.clone());
    let heartbeat = engine
        .nodes()
        .start(kira_core::nodes::NodeRole::Serve, shutdown.clone());

    let stopping = kira_engine::Shutdown::new();
    let process = std::sync::Arc::new(kira_server::prom::ProcessMetrics::default());
    let metrics_listener = metrics_listener(cfg.metrics_listen, &engine, &process).await?;
    let app = kira_server::router(
        engine.clone(),
        kira_server::ServerConfig {
            max_body_bytes: cfg.max_body_bytes,
            unauthenticated_audit_per_minute: cfg.unauthenticated_audit_per_minute,
            stopping: stopping.clone(),
            process,
            secure_cookies: cfg.secure_cookies,
        },
    );
    let stop_requested = Arc::new(Notify::new());
    let stop_notice = stop_requested.clone();
    // The peer's address: unauthenticated refusals are limited per address.
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let http = axum::serve(listener, app).with_graceful_shutdown(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm.recv() => {}
        }
        tracing::info!("stop requested; finishing open requests");
        // Open `task watch` streams end now rather than hold the drain.
        stopping.trigger();
        stop_notice.notify_one();
    });
    let drain_limit = async move {
        stop_requested.notified().await;
        tokio::time::sleep(HTTP_DRAIN).await;
    };
    tokio::select! {
        served = http => served.context("the server failed")?,
        () = drain_limit => tracing::warn!(
            seconds = HTTP_DRAIN.as_secs(),
            "open requests did not finish in time; closing them"
        ),
    }

    tracing::info!("HTTP stopped; stopping the engine");
    if let Some(m) = metrics_listener {
        m.abort();
    }
    shutdown.trigger();
    match tokio::time::timeout(ENGINE_STOP, background).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "the engine's background work failed"),
        Err(_) => tracing::warn!(
            seconds = ENGINE_STOP.as_secs(),
            "the engine did not stop in time; its leases will lapse and the tasks be retried"
        ),
    }
    // The MCP servers kira started stop with it.
    engine.tools().stop().await;
    wait_for_jobs([
        ("memory jobs", memory_jobs),
        ("metrics jobs", metrics_jobs),
        ("alert evaluator", alert_jobs),
        ("node heartbeat", heartbeat),
    ])
    .await;
    tracing::info!("kira stopped");
    Ok(())
}

/// The loopback-only `/metrics` listener (`metrics_listen`), if asked for,
/// serving until aborted.
async fn metrics_listener(
    addr: Option<std::net::SocketAddr>,
    engine: &kira_engine::Engine,
    process: &std::sync::Arc<kira_server::prom::ProcessMetrics>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (metrics_listen)"))?;
    eprintln!("kira metrics (no key, loopback only) on http://{addr}/metrics");
    let router = kira_server::metrics_router(engine.clone(), process.clone());
    Ok(Some(tokio::spawn(async move {
        if let Err(e) = axum::serve(l, router).await {
            tracing::error!(error = %e, "the metrics listener failed");
        }
    })))
}

/// Waits for each background job to stop after the shutdown, at most
/// `ENGINE_STOP` each, and says which did not.
async fn wait_for_jobs<const N: usize>(jobs: [(&str, tokio::task::JoinHandle<()>); N]) {
    for (name, job) in jobs {
        if tokio::time::timeout(ENGINE_STOP, job).await.is_err() {
            tracing::warn!("the {name} did not stop in time");
        }
    }
}

/// `kira worker`: the engine alone (scheduler, workers, periodic jobs), for
/// scaling out beside `kira serve` processes on one PostgreSQL database.
pub async fn worker(cfg: Config) -> anyhow::Result<()> {
    init_logging(&cfg.log);
    if let Some(ExecutorConfig::None) = &cfg.engine.executor {
        anyhow::bail!(
            "kira worker runs tasks, but the configuration says [executor] kind = \"none\""
        );
    }
    let mut sigterm = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let store = kira_store::open(&cfg.store_config())
        .await
        .with_context(|| format!("cannot open the database {}", redact_url(&cfg.database_url)))?;
    tracing::info!(database = %redact_url(&cfg.database_url), "kira worker started");
    let env = |k: &str| std::env::var(k).ok();
    let engine = crate::agents::engine(store, &cfg.engine, &env)?;
    let engine = crate::models::with_models(engine);
    tool_credentials(&engine, &env);
    let shutdown = kira_engine::Shutdown::new();
    let background = engine.scheduler().start(shutdown.clone());
    let metrics_jobs = engine.metrics().start_jobs(shutdown.clone());
    let heartbeat = engine
        .nodes()
        .start(kira_core::nodes::NodeRole::Worker, shutdown.clone());
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm.recv() => {}
    }
    tracing::info!("stop requested; finishing runs in flight");
    shutdown.trigger();
    if tokio::time::timeout(ENGINE_STOP, background).await.is_err() {
        tracing::warn!(
            seconds = ENGINE_STOP.as_secs(),
            "runs did not finish in time; their leases will lapse and the tasks be retried"
        );
    }
    wait_for_jobs([
        ("metrics jobs", metrics_jobs),
        ("node heartbeat", heartbeat),
    ])
    .await;
    engine.tools().stop().await;
    tracing::info!("kira worker stopped");
    Ok(())
}

/// With `KIRA_SECRET_KEY` set, the companies' tool credentials can be set
/// and are opened for their calls; without it, setting one is refused.
fn tool_credentials(engine: &kira_engine::Engine, env: &dyn Fn(&str) -> Option<String>) {
    match crate::secrets::MasterKey::from_env(env) {
        Ok(key) => engine.tools().set_master_key(key),
        Err(e) => tracing::info!("tool credentials are off: {e}"),
    }
}

pub(crate) fn init_logging(filter: &str) {
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    // The filter was checked when the configuration was loaded.
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(crate::config::DEFAULT_LOG));
    // Logs go to stderr: stdout carries only the one-time token message.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

/// Saves the first admin key's token and tells the operator, once. The
/// token is printed even when saving fails: the store has no other copy,
/// and without it nobody could ever make a key.
fn announce_admin_key(path: &Path, token: &str, key_id: &str) {
    let saved = write_admin_key(path, token);
    let terminal = std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    let _ = write!(
        out,
        "{}",
        admin_key_notice(path, token, key_id, saved.as_ref().err(), terminal)
    );
    let _ = out.flush();
    if let Err(e) = saved {
        tracing::error!(path = %path.display(), error = %e, "cannot save the admin key");
    }
}

/// What `kira serve` prints about the first admin key. The token is shown
/// only on a terminal: a service manager keeps stdout in its journal,
/// where anyone who reads the journal would find an admin token. Elsewhere
/// the file's path is printed instead, unless the file could not be
/// written: then the token is printed anyway, as the only copy there is.
fn admin_key_notice(
    path: &Path,
    token: &str,
    key_id: &str,
    not_saved: Option<&std::io::Error>,
    terminal: bool,
) -> String {
    let path = path.display();
    match (not_saved, terminal) {
        (None, true) => format!(
            "kira: created the first admin key ({key_id}). Its token is shown only this once:\n\n    {token}\n\n\
             It was saved to {path} (mode 0600), where the kira CLI finds it. \
             Make other keys with `kira admin create-key`.\n"
        ),
        (None, false) => format!(
            "kira: created the first admin key ({key_id}). Its token was saved to {path} \
             (mode 0600), where the kira CLI finds it; it is not printed, since this output \
             is not a terminal. Make other keys with `kira admin create-key`.\n"
        ),
        (Some(e), _) => format!(
            "kira: created the first admin key ({key_id}). Its token is shown only this once:\n\n    {token}\n\n\
             It could NOT be saved to {path}: {e}. Copy it now; it cannot be shown again.\n"
        ),
    }
}

/// Writes the token to a new file readable by its owner only. The mode is
/// set at creation, so the token is never readable by others, not even for
/// an instant. A file left from an earlier database is replaced: keys are
/// only bootstrapped into a store that has none, so it is stale.
fn write_admin_key(path: &Path, token: &str) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(token.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn admin_key_file_is_owner_only_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("admin.key");
        std::fs::write(&path, "old").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_admin_key(&path, "kira_new").expect("written");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "kira_new\n");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn the_token_is_printed_only_on_a_terminal_or_when_it_has_no_other_copy() {
        let path = Path::new("/var/lib/kira/admin.key");
        let token = "kira_abc_secret";
        let journal = admin_key_notice(path, token, "abc", None, false);
        assert!(!journal.contains(token), "{journal}");
        assert!(journal.contains("/var/lib/kira/admin.key"), "{journal}");
        let terminal = admin_key_notice(path, token, "abc", None, true);
        assert_eq!(terminal.matches(token).count(), 1, "{terminal}");
        let failed = std::io::Error::other("read-only file system");
        for tty in [false, true] {
            let lost = admin_key_notice(path, token, "abc", Some(&failed), tty);
            assert_eq!(lost.matches(token).count(), 1, "{lost}");
            assert!(lost.contains("could NOT be saved"), "{lost}");
        }
    }
}
