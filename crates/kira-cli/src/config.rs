//! The server's configuration: one typed [`Config`], loaded once at start
//! from flags, then the environment, then a TOML file, then defaults, and
//! validated before anything starts. Every refusal names the key and where
//! its value came from, so the operator knows what to fix.
//!
//! The engine's sections (`[budget]`, `[agents.NAME]`, ...) come from the
//! file only; their shapes and checks are `kira_engine::config`'s, read
//! here in the same pass as the server's keys so that an unknown key at any
//! level is refused with its line.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use kira_core::sharing::SharingRules;
use kira_engine::config::{
    AgentConfig, BudgetSection, ContextSection, EngineConfig, EngineFile, ExecutorConfig,
    KnowledgeSection, MemorySection, PriceSection, PrimaryConfig, PrioritySection, ProviderSpec,
    ReviewConfig, SchedulerSection, SummarizerConfig, TaskTypeConfig, TasksSection,
};
use serde::Deserialize;

pub use kira_core::url::redact_url;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "./kira-data";
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
/// Bodies past this are never legitimate API requests; a larger limit only
/// lets one client make the server buffer more memory.
pub const MAX_MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;
pub const DEFAULT_LOG: &str = "info";
/// Read when neither `--config` nor `KIRA_CONFIG` names a file.
pub const DEFAULT_CONFIG_FILE: &str = "kira.toml";

/// What `kira serve` runs with. Only [`Config::load`] makes one, so a
/// `Config` in hand is a valid one.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    /// A loopback-only listener serving `GET /metrics` without a key, for a
    /// Prometheus on the same host (`metrics_listen`, `KIRA_METRICS_LISTEN`).
    pub metrics_listen: Option<SocketAddr>,
    /// `sqlite:...`, `postgres://...` or `postgresql://...`.
    pub database_url: String,
    /// PostgreSQL only.
    pub app_database_url: Option<String>,
    pub data_dir: PathBuf,
    pub max_body_bytes: usize,
    /// Unauthenticated refusals audited per source address and minute; the
    /// rest are counted in one summary entry.
    pub unauthenticated_audit_per_minute: u32,
    /// A tracing env-filter directive such as `info` or `kira_server=debug`.
    pub log: String,
    /// `[ui] secure_cookies`: the dashboard's session cookie always
    /// `Secure` (else only on a request a proxy says came over https).
    pub secure_cookies: bool,
    /// Budgets, priority, the scheduler, agents, task types, the executor
    /// and prices.
    pub engine: EngineConfig,
}

/// The values given as `kira serve` flags, unparsed: parsing them here
/// rather than in clap gives every source the same checks and messages.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub listen: Option<String>,
    pub database_url: Option<String>,
    pub app_database_url: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub max_body_bytes: Option<String>,
    pub config: Option<PathBuf>,
    pub log: Option<String>,
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag(&'static str),
    Env(&'static str),
    File { path: PathBuf, line: Option<usize> },
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(name) => write!(f, "flag --{name}"),
            Source::Env(name) => write!(f, "env {name}"),
            Source::File { path, line: None } => write!(f, "file {}", path.display()),
            Source::File {
                path,
                line: Some(line),
            } => write!(f, "file {} line {line}", path.display()),
            Source::Default => f.write_str("default"),
        }
    }
}

/// A refused configuration: `kira serve` exits with status 2 on one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {key} ({origin}): {why}")]
pub struct ConfigError {
    pub key: String,
    /// Where the refused value came from.
    pub origin: Source,
    pub why: String,
}

impl ConfigError {
    fn new(key: &str, source: &Source, why: impl Into<String>) -> Self {
        Self {
            key: key.to_owned(),
            origin: source.clone(),
            why: why.into(),
        }
    }
}

/// The configuration file as written. Unknown keys are refused at every
/// level: a typo such as `listne` must not silently fall back to the
/// default. The fields are in the order the docs list them, which is the
/// order a refusal lists the known keys in.
///
/// The engine's sections are [`EngineFile`]'s fields, spelled out rather
/// than flattened in: serde cannot refuse unknown keys across a flatten.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    metrics_listen: Option<String>,
    database_url: Option<String>,
    app_database_url: Option<String>,
    data_dir: Option<PathBuf>,
    max_body_bytes: Option<u64>,
    log: Option<String>,
    unauthenticated_audit_per_minute: Option<u32>,
    #[serde(default)]
    budget: BudgetSection,
    #[serde(default)]
    priority: PrioritySection,
    #[serde(default)]
    scheduler: SchedulerSection,
    #[serde(default)]
    tasks: TasksSection,
    #[serde(default)]
    agents: BTreeMap<String, AgentConfig>,
    #[serde(default)]
    task_types: BTreeMap<String, TaskTypeConfig>,
    #[serde(default)]
    executor: Option<ExecutorConfig>,
    #[serde(default)]
    prices: BTreeMap<String, PriceSection>,
    #[serde(default)]
    knowledge: KnowledgeSection,
    #[serde(default)]
    sharing: Option<SharingRules>,
    #[serde(default)]
    memory: MemorySection,
    #[serde(default)]
    context: ContextSection,
    #[serde(default)]
    review: Option<ReviewConfig>,
    #[serde(default)]
    providers: BTreeMap<String, ProviderSpec>,
    #[serde(default)]
    primary: Option<PrimaryConfig>,
    #[serde(default)]
    summarizer: Option<SummarizerConfig>,
    #[serde(default)]
    metrics: kira_engine::metrics::MetricsSection,
    #[serde(default)]
    alerts: kira_engine::alerts::AlertsSection,
    #[serde(default)]
    tools: kira_engine::tools::ToolsSection,
    #[serde(default)]
    ui: UiSection,
}

/// `[ui]`: the web dashboards.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UiSection {
    /// Mark the session cookie `Secure` on every response (default false:
    /// kira serves plain HTTP, where a browser drops a Secure cookie;
    /// behind a proxy ending TLS, the proxy's `X-Forwarded-Proto: https`
    /// makes it Secure anyway).
    secure_cookies: Option<bool>,
}

impl FileConfig {
    /// The engine's sections, to be resolved by the engine's own rules.
    fn take_engine(&mut self) -> EngineFile {
        EngineFile {
            budget: std::mem::take(&mut self.budget),
            priority: std::mem::take(&mut self.priority),
            scheduler: std::mem::take(&mut self.scheduler),
            tasks: std::mem::take(&mut self.tasks),
            agents: std::mem::take(&mut self.agents),
            task_types: std::mem::take(&mut self.task_types),
            executor: self.executor.take(),
            prices: std::mem::take(&mut self.prices),
            knowledge: std::mem::take(&mut self.knowledge),
            sharing: self.sharing.take(),
            memory: std::mem::take(&mut self.memory),
            context: std::mem::take(&mut self.context),
            review: self.review.take(),
            providers: std::mem::take(&mut self.providers),
            primary: self.primary.take(),
            summarizer: self.summarizer.take(),
            metrics: std::mem::take(&mut self.metrics),
            alerts: std::mem::take(&mut self.alerts),
            tools: std::mem::take(&mut self.tools),
        }
    }
}

/// One key's value and where it came from.
struct Picked<T> {
    value: T,
    source: Source,
}

/// Where `Config::load` looks a key up: its flag, then its environment
/// variable (empty counts as unset), then the file.
struct Keys<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    file_path: Option<PathBuf>,
    file_text: String,
}

impl Keys<'_> {
    /// The file as a key's source, at the key's line.
    fn file_source(&self, key: &str) -> Source {
        Source::File {
            path: self.file_path.clone().unwrap_or_default(),
            line: key_line(&self.file_text, key),
        }
    }

    /// The first of the flag, the environment variable and the file's value
    /// that is set, with where it came from.
    fn pick(
        &self,
        flag: Option<String>,
        flag_name: &'static str,
        env_name: &'static str,
        file_value: Option<String>,
    ) -> Option<Picked<String>> {
        if let Some(value) = flag {
            return Some(Picked {
                value,
                source: Source::Flag(flag_name),
            });
        }
        if let Some(value) = (self.env)(env_name) {
            return Some(Picked {
                value,
                source: Source::Env(env_name),
            });
        }
        file_value.map(|value| Picked {
            value,
            source: self.file_source(flag_name.replace('-', "_").as_str()),
        })
    }

    fn listen(&self, flags: &Flags, file: &FileConfig) -> Result<SocketAddr, ConfigError> {
        let listen = self
            .pick(
                flags.listen.clone(),
                "listen",
                "KIRA_LISTEN",
                file.listen.clone(),
            )
            .unwrap_or(Picked {
                value: DEFAULT_LISTEN.to_owned(),
                source: Source::Default,
            });
        parse_listen(&listen.value).ok_or_else(|| {
            ConfigError::new(
                "listen",
                &listen.source,
                format!(
                    "'{}' is not ADDR:PORT; give an IP address and a port, \
                     such as 127.0.0.1:8080 or [::1]:8080",
                    listen.value
                ),
            )
        })
    }

    /// The loopback-only metrics listener, if one is asked for.
    fn metrics_listen(&self, file: &FileConfig) -> Result<Option<SocketAddr>, ConfigError> {
        let Some(picked) = self.pick(
            None,
            "metrics-listen",
            "KIRA_METRICS_LISTEN",
            file.metrics_listen.clone(),
        ) else {
            return Ok(None);
        };
        match parse_listen(&picked.value) {
            Some(addr) if addr.ip().is_loopback() => Ok(Some(addr)),
            Some(_) => Err(ConfigError::new(
                "metrics_listen",
                &picked.source,
                "serves /metrics without a key, so it must be a loopback address \
                 (127.0.0.1:PORT or [::1]:PORT); elsewhere scrape the API's /metrics with a key",
            )),
            None => Err(ConfigError::new(
                "metrics_listen",
                &picked.source,
                format!(
                    "'{}' is not ADDR:PORT, such as 127.0.0.1:9464",
                    picked.value
                ),
            )),
        }
    }

    fn data_dir(&self, flags: &Flags, file: &FileConfig) -> Result<PathBuf, ConfigError> {
        let data_dir = self
            .pick(
                flags
                    .data_dir
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned()),
                "data-dir",
                "KIRA_DATA_DIR",
                file.data_dir
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned()),
            )
            .unwrap_or(Picked {
                value: DEFAULT_DATA_DIR.to_owned(),
                source: Source::Default,
            });
        if data_dir.value.trim().is_empty() {
            return Err(ConfigError::new(
                "data_dir",
                &data_dir.source,
                "must not be empty",
            ));
        }
        Ok(PathBuf::from(&data_dir.value))
    }

    /// `database_url` (by default a SQLite file in `data_dir`) and the
    /// optional `app_database_url`, which only PostgreSQL takes.
    fn database_urls(
        &self,
        flags: &Flags,
        file: &FileConfig,
        data_dir: &Path,
    ) -> Result<(String, Option<String>), ConfigError> {
        let database_url = self
            .pick(
                flags.database_url.clone(),
                "database-url",
                "KIRA_DATABASE_URL",
                file.database_url.clone(),
            )
            .unwrap_or_else(|| Picked {
                value: default_database_url(data_dir),
                source: Source::Default,
            });
        let backend = backend_of(&database_url.value).ok_or_else(|| {
            ConfigError::new(
                "database_url",
                &database_url.source,
                format!(
                    "'{}' is not a database URL; it must start with sqlite: or postgres://",
                    redact_url(&database_url.value)
                ),
            )
        })?;
        let app_database_url = self.pick(
            flags.app_database_url.clone(),
            "app-database-url",
            "KIRA_APP_DATABASE_URL",
            file.app_database_url.clone(),
        );
        if let Some(app) = &app_database_url {
            if backend == Backend::Sqlite {
                return Err(ConfigError::new(
                    "app_database_url",
                    &app.source,
                    format!(
                        "applies to PostgreSQL only, but database_url ({}) is SQLite",
                        database_url.source
                    ),
                ));
            }
            if backend_of(&app.value) != Some(Backend::Postgres) {
                return Err(ConfigError::new(
                    "app_database_url",
                    &app.source,
                    format!(
                        "'{}' is not a PostgreSQL URL; it must start with postgres://",
                        redact_url(&app.value)
                    ),
                ));
            }
        }
        Ok((database_url.value, app_database_url.map(|p| p.value)))
    }

    fn max_body_bytes(&self, flags: &Flags, file: &FileConfig) -> Result<usize, ConfigError> {
        let max_body = match self.pick(
            flags.max_body_bytes.clone(),
            "max-body-bytes",
            "KIRA_MAX_BODY_BYTES",
            file.max_body_bytes.map(|n| n.to_string()),
        ) {
            Some(p) => {
                let n = p.value.trim().parse::<u64>().map_err(|_| {
                    ConfigError::new(
                        "max_body_bytes",
                        &p.source,
                        format!("'{}' is not a whole number of bytes", p.value),
                    )
                })?;
                Picked {
                    value: n,
                    source: p.source,
                }
            }
            None => Picked {
                value: DEFAULT_MAX_BODY_BYTES,
                source: Source::Default,
            },
        };
        if !(1..=MAX_MAX_BODY_BYTES).contains(&max_body.value) {
            return Err(ConfigError::new(
                "max_body_bytes",
                &max_body.source,
                format!(
                    "{} is out of range; it must be between 1 and {MAX_MAX_BODY_BYTES} (64 MiB)",
                    max_body.value
                ),
            ));
        }
        usize::try_from(max_body.value)
            .map_err(|_| ConfigError::new("max_body_bytes", &max_body.source, "too large"))
    }

    /// The log filter, checked as `tracing_subscriber` will read it.
    fn log(&self, flags: &Flags, file: &FileConfig) -> Result<String, ConfigError> {
        let log = self
            .pick(flags.log.clone(), "log", "KIRA_LOG", file.log.clone())
            .unwrap_or(Picked {
                value: DEFAULT_LOG.to_owned(),
                source: Source::Default,
            });
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log.value) {
            return Err(ConfigError::new(
                "log",
                &log.source,
                format!(
                    "'{}' is not a log filter such as info or kira_server=debug: {e}",
                    log.value
                ),
            ));
        }
        Ok(log.value)
    }
}

impl Config {
    /// Resolves every key (flag, then env, then file, then default) and
    /// checks the result. `env` reads an environment variable; an empty
    /// variable counts as unset. `default_file` is read only when it exists
    /// and no file is named by flag or env.
    pub fn load(
        flags: &Flags,
        env: &dyn Fn(&str) -> Option<String>,
        default_file: &Path,
    ) -> Result<Config, ConfigError> {
        let env = |name: &str| env(name).filter(|v| !v.is_empty());
        let (mut file, file_path, file_text) = read_file(flags, &env, default_file)?;
        let keys = Keys {
            env: &env,
            file_path,
            file_text,
        };
        let listen = keys.listen(flags, &file)?;
        let metrics_listen = keys.metrics_listen(&file)?;
        let data_dir = keys.data_dir(flags, &file)?;
        let (database_url, app_database_url) = keys.database_urls(flags, &file, &data_dir)?;
        let max_body_bytes = keys.max_body_bytes(flags, &file)?;
        let log = keys.log(flags, &file)?;

        let unauthenticated_audit_per_minute = file
            .unauthenticated_audit_per_minute
            .unwrap_or(kira_server::DEFAULT_UNAUTHENTICATED_AUDIT_PER_MINUTE);
        if unauthenticated_audit_per_minute > 10_000 {
            return Err(ConfigError::new(
                "unauthenticated_audit_per_minute",
                &keys.file_source("unauthenticated_audit_per_minute"),
                "must be between 0 and 10000",
            ));
        }

        // The engine's keys come from the file alone. A refusal names the
        // dotted key; its line is the key's, else its section's.
        let engine = file.take_engine().resolve().map_err(|e| {
            let source = match &keys.file_path {
                Some(_) => keys.file_source(&e.field),
                None => Source::Default,
            };
            ConfigError::new(&e.field, &source, e.message)
        })?;

        let secure_cookies = file.ui.secure_cookies.unwrap_or(false);
        Ok(Config {
            listen,
            metrics_listen,
            database_url,
            app_database_url,
            data_dir,
            max_body_bytes,
            unauthenticated_audit_per_minute,
            log,
            secure_cookies,
            engine,
        })
    }

    pub fn store_config(&self) -> kira_store::StoreConfig {
        kira_store::StoreConfig {
            database_url: self.database_url.clone(),
            app_database_url: self.app_database_url.clone(),
        }
    }

    /// Where the first admin key's token is written.
    pub fn admin_key_path(&self) -> PathBuf {
        self.data_dir.join("admin.key")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

fn backend_of(url: &str) -> Option<Backend> {
    if url.starts_with("sqlite:") && url.len() > "sqlite:".len() {
        Some(Backend::Sqlite)
    } else if ["postgres://", "postgresql://"]
        .iter()
        .any(|p| url.starts_with(p) && url.len() > p.len())
    {
        Some(Backend::Postgres)
    } else {
        None
    }
}

fn default_database_url(data_dir: &Path) -> String {
    format!("sqlite://{}/kira.db", data_dir.display())
}

fn parse_listen(s: &str) -> Option<SocketAddr> {
    s.trim().parse().ok()
}

/// Reads the file named by `--config`, else `KIRA_CONFIG`, else
/// `default_file` when it exists. No file is an empty configuration.
fn read_file(
    flags: &Flags,
    env: &dyn Fn(&str) -> Option<String>,
    default_file: &Path,
) -> Result<(FileConfig, Option<PathBuf>, String), ConfigError> {
    let (path, source) = if let Some(p) = &flags.config {
        (p.clone(), Source::Flag("config"))
    } else if let Some(p) = env("KIRA_CONFIG") {
        (PathBuf::from(p), Source::Env("KIRA_CONFIG"))
    } else if default_file.exists() {
        (default_file.to_path_buf(), Source::Default)
    } else {
        return Ok((FileConfig::default(), None, String::new()));
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        ConfigError::new(
            "config",
            &source,
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let file = parse_file(&text, &path)?;
    Ok((file, Some(path), text))
}

fn parse_file(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
    // Syntax first: an error there is about the text at a place (a header
    // not closed, a value missing), not about a key's value.
    let syntax_ok = toml::from_str::<toml::Table>(text).is_ok();
    toml::from_str::<FileConfig>(text).map_err(|e| {
        let span = e.span();
        let offset = span.as_ref().map(|s| s.start.min(text.len()));
        let line = offset.map(|o| text[..o].matches('\n').count() + 1);
        let source = Source::File {
            path: path.to_path_buf(),
            line,
        };
        let message = e.message().trim_end();
        // The key the error is about, as a dotted path: the key written at
        // the error's place (`budget.total_tokens`), or the section it is
        // in when the error points at a `[section]` header (the executor's
        // keys are read as a whole), or none.
        let at = offset.and_then(|o| path_at(text, o));
        if let Some(unknown) = message
            .strip_prefix("unknown field `")
            .and_then(|m| m.split_once('`'))
            .map(|(k, _)| k)
        {
            let key = match &at {
                // The error points at the key itself, or at the header of
                // the table it is in (the executor's keys are read as one).
                Some(Located::Key(p) | Located::Header(p))
                    if p.last().is_some_and(|k| k == unknown) =>
                {
                    p.join(".")
                }
                Some(Located::Header(p)) => format!("{}.{unknown}", p.join(".")),
                // An inline table: the line is right, the path unknown.
                _ => unknown.to_owned(),
            };
            let known = expected_names(message);
            let why = if known.is_empty() {
                "unknown key".to_owned()
            } else {
                format!("unknown key; the known keys are {}", known.join(", "))
            };
            return ConfigError::new(&key, &source, why);
        }
        let key = match at {
            Some(Located::Key(p)) => p.join("."),
            Some(Located::Header(p)) if syntax_ok => p.join("."),
            _ => "config".to_owned(),
        };
        let why = if key == "config" {
            format!("not valid TOML: {message}")
        } else {
            message.to_owned()
        };
        ConfigError::new(&key, &source, why)
    })
}

/// The names serde lists after "expected" in an unknown-field message:
/// "expected `a`, `b`, or `c`" or "expected one of `a`, `b`".
fn expected_names(message: &str) -> Vec<String> {
    let Some((_, expected)) = message.split_once(", expected ") else {
        return Vec::new();
    };
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// What a file's line holds, as a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Located {
    /// `key = value`, under the section before it: the section's path
    /// followed by the key's.
    Key(Vec<String>),
    /// A `[section]` or `[[section]]` header.
    Header(Vec<String>),
}

/// Each line's key path, from a line-by-line reading of the file: enough to
/// name keys in messages. A value spread over several lines (an array, a
/// multi-line string) has its path on its first line only.
fn line_paths(text: &str) -> Vec<Option<Located>> {
    let mut section: Vec<String> = Vec::new();
    let mut in_multiline: Option<&str> = None;
    let mut depth = 0i32;
    let mut paths = Vec::new();
    for raw in text.lines() {
        let line = raw.trim();
        if let Some(delim) = in_multiline {
            if line.contains(delim) {
                in_multiline = None;
            }
            paths.push(None);
            continue;
        }
        if depth > 0 {
            depth += bracket_depth(line);
            paths.push(None);
            continue;
        }
        if line.starts_with('[') {
            let inner = line.trim_start_matches('[');
            let end = inner.find(']').unwrap_or(inner.len());
            section = split_key(&inner[..end]);
            paths.push(Some(Located::Header(section.clone())));
            continue;
        }
        let Some((key, value)) = split_assignment(line) else {
            paths.push(None);
            continue;
        };
        let mut p = section.clone();
        p.extend(split_key(key));
        paths.push(Some(Located::Key(p)));
        let value = value.trim_start();
        for delim in ["\"\"\"", "'''"] {
            if let Some(rest) = value.strip_prefix(delim)
                && !rest.contains(delim)
            {
                in_multiline = Some(delim);
            }
        }
        if in_multiline.is_none() && value.starts_with('[') {
            depth = bracket_depth(value);
        }
    }
    paths
}

/// `[` minus `]` outside strings and comments, to follow a multi-line array.
fn bracket_depth(s: &str) -> i32 {
    let mut depth = 0;
    let mut quote: Option<char> = None;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '#') => break,
            (None, '[') => depth += 1,
            (None, ']') => depth -= 1,
            _ => {}
        }
    }
    depth
}

/// `key = value` split at the first `=` outside a quoted key; None for a
/// comment or a line that is no assignment.
fn split_assignment(line: &str) -> Option<(&str, &str)> {
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let mut quote: Option<char> = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '=') => return Some((&line[..i], &line[i + 1..])),
            _ => {}
        }
    }
    None
}

/// A dotted key into its parts, quotes removed: `prices."gpt-4.1"` is
/// `["prices", "gpt-4.1"]`.
fn split_key(key: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut part = String::new();
    let mut quote: Option<char> = None;
    for c in key.trim().chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => part.push(c),
            (None, '"' | '\'') => quote = Some(c),
            (None, '.') => parts.push(std::mem::take(&mut part).trim().to_owned()),
            (None, c) => part.push(c),
        }
    }
    parts.push(part.trim().to_owned());
    parts
}

/// The key path on the line holding byte `offset`.
fn path_at(text: &str, offset: usize) -> Option<Located> {
    let line = text[..offset.min(text.len())].matches('\n').count();
    line_paths(text).into_iter().nth(line).flatten()
}

/// The line a dotted key is written on (`listen`, `budget.total_tokens`),
/// for messages about a value that parsed but was refused. A key that is
/// not written (a default refused with another value) gets the line of the
/// nearest section that is: `[budget]` for `budget.base_percent`.
fn key_line(text: &str, key: &str) -> Option<usize> {
    let paths = line_paths(text);
    let joined = |p: &[String]| p.join(".");
    if let Some(i) = paths
        .iter()
        .position(|p| matches!(p, Some(Located::Key(p)) if joined(p) == key))
    {
        return Some(i + 1);
    }
    paths
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let (Located::Key(p) | Located::Header(p)) = p.as_ref()?;
            let p = joined(p);
            let encloses = key == p || key.starts_with(&format!("{p}."));
            encloses.then_some((p.len(), i + 1))
        })
        .max_by_key(|(len, line)| (*len, std::cmp::Reverse(*line)))
        .map(|(_, line)| line)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct Setup {
        dir: tempfile::TempDir,
        env: HashMap<&'static str, String>,
        flags: Flags,
    }

    impl Setup {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().expect("temp dir"),
                env: HashMap::new(),
                flags: Flags::default(),
            }
        }

        /// Writes `kira.toml` in the temp dir, the default file.
        fn file(&self, text: &str) -> PathBuf {
            let p = self.dir.path().join(DEFAULT_CONFIG_FILE);
            std::fs::write(&p, text).expect("write config");
            p
        }

        fn load(&self) -> Result<Config, ConfigError> {
            let env = |k: &str| self.env.get(k).cloned();
            Config::load(
                &self.flags,
                &env,
                &self.dir.path().join(DEFAULT_CONFIG_FILE),
            )
        }

        fn err(&self) -> ConfigError {
            self.load().expect_err("invalid configuration")
        }
    }

    #[test]
    fn defaults() {
        let c = Setup::new().load().expect("valid");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("./kira-data"));
        assert_eq!(c.database_url, "sqlite://./kira-data/kira.db");
        assert_eq!(c.app_database_url, None);
        assert_eq!(c.max_body_bytes, 1_048_576);
        assert_eq!(c.log, "info");
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let mut s = Setup::new();
        s.file(
            "listen = \"127.0.0.1:1001\"\nlog = \"debug\"\nmax_body_bytes = 100\ndata_dir = \"/f\"\n",
        );
        s.env.insert("KIRA_LISTEN", "127.0.0.1:1002".into());
        s.env.insert("KIRA_LOG", "warn".into());
        s.flags.listen = Some("127.0.0.1:1003".into());
        let c = s.load().expect("valid");
        assert_eq!(c.listen.port(), 1003, "flag wins over env and file");
        assert_eq!(c.log, "warn", "env wins over file");
        assert_eq!(c.max_body_bytes, 100, "file wins over default");
        assert_eq!(c.data_dir, PathBuf::from("/f"));
        assert_eq!(
            c.database_url, "sqlite:///f/kira.db",
            "the default database lives in the resolved data dir"
        );
    }

    #[test]
    fn empty_env_counts_as_unset() {
        let mut s = Setup::new();
        s.env.insert("KIRA_LISTEN", String::new());
        assert_eq!(s.load().expect("valid").listen.port(), 8080);
    }

    #[test]
    fn config_file_named_by_flag_then_env() {
        let mut s = Setup::new();
        let a = s.dir.path().join("a.toml");
        let b = s.dir.path().join("b.toml");
        std::fs::write(&a, "listen = \"127.0.0.1:1\"\n").expect("write");
        std::fs::write(&b, "listen = \"127.0.0.1:2\"\n").expect("write");
        s.file("listen = \"127.0.0.1:3\"\n");
        assert_eq!(s.load().expect("valid").listen.port(), 3);
        s.env.insert("KIRA_CONFIG", b.display().to_string());
        assert_eq!(s.load().expect("valid").listen.port(), 2);
        s.flags.config = Some(a);
        assert_eq!(s.load().expect("valid").listen.port(), 1);
    }

    #[test]
    fn postgres_with_app_url() {
        let mut s = Setup::new();
        s.env
            .insert("KIRA_DATABASE_URL", "postgres://owner:pw@db/kira".into());
        s.flags.app_database_url = Some("postgresql://app:pw@db/kira".into());
        let c = s.load().expect("valid");
        assert_eq!(
            c.app_database_url.as_deref(),
            Some("postgresql://app:pw@db/kira")
        );
    }

    #[test]
    fn secure_cookies_is_off_unless_the_ui_section_says_so() {
        assert!(!Setup::new().load().expect("valid").secure_cookies);
        let s = Setup::new();
        s.file("[ui]\nsecure_cookies = true\n");
        assert!(s.load().expect("valid").secure_cookies);
        let s = Setup::new();
        s.file("[ui]\nsecure_cookie = true\n");
        assert!(s.err().to_string().contains("secure_cookie"));
    }

    #[test]
    fn grouping_and_verify_intervals_are_read_and_checked() {
        let s = Setup::new();
        s.file(
            "[alerts]\ngroup_wait_seconds = 30\ngroup_interval_seconds = 600\n\
             [alerts.rules.audit_verify]\ncondition = { type = \"audit_verify\", every_minutes = 15 }\n",
        );
        let a = s.load().expect("valid").engine.alerts;
        assert_eq!(a.grouping.wait, chrono::TimeDelta::seconds(30));
        assert_eq!(a.grouping.interval, chrono::TimeDelta::minutes(10));
        let audit = a
            .rules
            .iter()
            .find(|r| r.name == "audit_verify")
            .expect("rule");
        assert_eq!(
            audit.condition,
            kira_core::alerts::Condition::AuditVerify { every_minutes: 15 }
        );
        let s = Setup::new();
        s.file("[alerts.rules.budget_verify]\ncondition = { type = \"budget_verify\", every_minutes = 0 }\n");
        assert!(s.err().to_string().contains("every_minutes"), "{}", s.err());
        let s = Setup::new();
        s.file("[alerts]\ngroup_wait_seconds = -1\n");
        assert!(s.err().to_string().contains("group_wait_seconds"));
    }

    #[test]
    fn the_metrics_listener_is_loopback_only() {
        let s = Setup::new();
        assert_eq!(s.load().expect("valid").metrics_listen, None);
        let s = Setup::new();
        s.file("metrics_listen = \"0.0.0.0:9464\"\n");
        let e = s.err();
        assert_eq!(e.key, "metrics_listen");
        assert!(e.to_string().contains("loopback"), "{e}");
        let mut s = Setup::new();
        s.env.insert("KIRA_METRICS_LISTEN", "[::1]:9464".into());
        assert_eq!(
            s.load().expect("valid").metrics_listen,
            Some("[::1]:9464".parse().expect("addr"))
        );
        let mut s = Setup::new();
        s.env.insert("KIRA_METRICS_LISTEN", "9464".into());
        assert_eq!(s.err().origin, Source::Env("KIRA_METRICS_LISTEN"));
    }

    #[test]
    fn bad_listen_is_named_with_its_source() {
        let mut s = Setup::new();
        s.flags.listen = Some("localhost".into());
        let e = s.err();
        assert_eq!(
            (e.key.as_str(), &e.origin),
            ("listen", &Source::Flag("listen"))
        );
        assert!(e.to_string().starts_with(
            "invalid configuration: listen (flag --listen): 'localhost' is not ADDR:PORT"
        ));

        let mut s = Setup::new();
        s.env.insert("KIRA_LISTEN", "127.0.0.1".into());
        assert_eq!(s.err().origin, Source::Env("KIRA_LISTEN"));
        assert!(s.err().to_string().contains("(env KIRA_LISTEN)"));

        let s = Setup::new();
        let path = s.file("# comment\nlisten = \"1.2.3.4:99999\"\n");
        let e = s.err();
        assert_eq!(e.key, "listen");
        assert_eq!(
            e.origin,
            Source::File {
                path,
                line: Some(2)
            }
        );
    }

    #[test]
    fn bad_database_urls() {
        let mut s = Setup::new();
        s.flags.database_url = Some("mysql://u:secret@h/db".into());
        let e = s.err();
        assert_eq!(e.key, "database_url");
        assert_eq!(e.origin, Source::Flag("database-url"));
        assert!(!e.to_string().contains("secret"), "{e}");

        for bad in ["sqlite:", "postgres://", "kira.db"] {
            let mut s = Setup::new();
            s.env.insert("KIRA_DATABASE_URL", bad.into());
            assert_eq!(s.err().key, "database_url", "{bad}");
        }
    }

    #[test]
    fn app_database_url_needs_postgres() {
        let mut s = Setup::new();
        s.env
            .insert("KIRA_APP_DATABASE_URL", "postgres://app@db/kira".into());
        let e = s.err();
        assert_eq!(e.key, "app_database_url");
        assert_eq!(e.origin, Source::Env("KIRA_APP_DATABASE_URL"));
        assert!(e.why.contains("PostgreSQL only"), "{e}");

        let mut s = Setup::new();
        s.flags.database_url = Some("postgres://o@db/kira".into());
        s.flags.app_database_url = Some("sqlite://x.db".into());
        assert_eq!(s.err().key, "app_database_url");
    }

    #[test]
    fn max_body_bytes_range() {
        for (bad, why) in [
            ("0", "out of range"),
            ("67108865", "out of range"),
            ("1MiB", "not a whole number"),
            ("-1", "not a whole number"),
        ] {
            let mut s = Setup::new();
            s.flags.max_body_bytes = Some(bad.into());
            let e = s.err();
            assert_eq!(e.key, "max_body_bytes", "{bad}");
            assert!(e.why.contains(why), "{bad}: {e}");
        }
        let mut s = Setup::new();
        s.flags.max_body_bytes = Some("67108864".into());
        assert_eq!(
            s.load().expect("64 MiB is allowed").max_body_bytes,
            64 << 20
        );

        let s = Setup::new();
        s.file("max_body_bytes = 0\n");
        let e = s.err();
        assert_eq!(e.key, "max_body_bytes");
        assert!(matches!(e.origin, Source::File { line: Some(1), .. }));
    }

    #[test]
    fn bad_log_filter() {
        let mut s = Setup::new();
        s.env.insert("KIRA_LOG", "kira=[[".into());
        let e = s.err();
        assert_eq!(e.key, "log");
        assert_eq!(e.origin, Source::Env("KIRA_LOG"));
    }

    #[test]
    fn empty_data_dir() {
        let s = Setup::new();
        s.file("data_dir = \" \"\n");
        assert_eq!(s.err().key, "data_dir");
    }

    #[test]
    fn unknown_key_in_file_is_named_with_its_line() {
        let s = Setup::new();
        let path = s.file("listen = \"127.0.0.1:1\"\nlisten_addr = \"x\"\n");
        let e = s.err();
        assert_eq!(e.key, "listen_addr");
        assert_eq!(
            e.origin,
            Source::File {
                path: path.clone(),
                line: Some(2)
            }
        );
        assert_eq!(
            e.to_string(),
            format!(
                "invalid configuration: listen_addr (file {} line 2): unknown key; the known keys are \
                 listen, metrics_listen, database_url, app_database_url, data_dir, max_body_bytes, log, \
                 unauthenticated_audit_per_minute, budget, priority, scheduler, tasks, agents, task_types, executor, prices, knowledge, sharing, memory, context, \
                 review, providers, primary, summarizer, metrics, alerts, tools, ui",
                path.display()
            )
        );
    }

    #[test]
    fn invalid_toml_names_the_file_and_line() {
        let s = Setup::new();
        let path = s.file("log = \"info\"\n\nlisten = \n");
        let e = s.err();
        assert_eq!(e.key, "listen");
        assert_eq!(
            e.origin,
            Source::File {
                path,
                line: Some(3)
            }
        );

        let s = Setup::new();
        s.file("[server\n");
        let e = s.err();
        assert_eq!(e.key, "config");
        assert!(e.why.starts_with("not valid TOML"), "{e}");
        assert!(matches!(e.origin, Source::File { line: Some(1), .. }));
    }

    #[test]
    fn wrong_type_in_file_names_the_key() {
        let s = Setup::new();
        s.file("max_body_bytes = \"big\"\n");
        let e = s.err();
        assert_eq!(e.key, "max_body_bytes");
        assert!(e.why.contains("invalid type"), "{e}");
    }

    #[test]
    fn unreadable_config_file() {
        let mut s = Setup::new();
        s.flags.config = Some(s.dir.path().join("missing.toml"));
        let e = s.err();
        assert_eq!(e.key, "config");
        assert_eq!(e.origin, Source::Flag("config"));
        assert!(e.why.contains("missing.toml"), "{e}");
    }

    #[test]
    fn the_example_file_is_valid_and_says_the_defaults() {
        let s = Setup::new();
        s.file(include_str!("../../../kira.example.toml"));
        let from_example = s.load().expect("kira.example.toml is valid");
        assert_eq!(from_example, Setup::new().load().expect("defaults"));
    }

    #[test]
    fn engine_sections_are_read_from_the_file() {
        let s = Setup::new();
        s.file(
            "listen = \"127.0.0.1:1\"\n\
             [budget]\ntotal_tokens = 100000\nburst_levels = [\n  \"emergency\",\n]\n\
             [scheduler]\nmax_attempts = 5\n\
             [agents.legal]\nmax_concurrent = 7\n\
             [task_types.tax_filing]\nspecialist = \"financial\"\n\
             [executor]\nkind = \"simulated\"\nlatency_ms_max = 5\n\
             [prices.\"gpt-4.1\"]\ninput_per_million = 2.0\noutput_per_million = 8.0\n",
        );
        let c = s.load().expect("valid");
        assert_eq!(c.listen.port(), 1);
        let e = &c.engine;
        assert_eq!(e.budget.total_tokens, 100_000);
        assert_eq!(e.budget.burst_levels.len(), 1);
        assert_eq!(e.scheduler.max_attempts, 5);
        assert_eq!(e.agents["legal"].max_concurrent, 7);
        assert_eq!(
            e.task_types["tax_filing"].specialist.as_deref(),
            Some("financial")
        );
        assert!(
            e.task_types.contains_key("document_review"),
            "the defaults stay"
        );
        assert!(matches!(
            &e.executor,
            Some(ExecutorConfig::Simulated(sim)) if sim.latency_ms_max == 5
        ));
        assert_eq!(e.prices["gpt-4.1"].output_per_million, 8.0);
        assert!(
            Setup::new()
                .load()
                .expect("defaults")
                .engine
                .executor
                .is_none(),
            "nothing runs tasks unless configured"
        );
    }

    fn file_error(text: &str) -> (ConfigError, PathBuf) {
        let s = Setup::new();
        let path = s.file(text);
        (s.err(), path)
    }

    fn at_line(path: &Path, line: usize) -> Source {
        Source::File {
            path: path.to_path_buf(),
            line: Some(line),
        }
    }

    #[test]
    fn refused_engine_values_name_the_dotted_key_and_line() {
        let (e, path) = file_error("# budget\n[budget]\nbase_percent = 70\n");
        assert_eq!(e.key, "budget.base_percent");
        assert_eq!(e.origin, at_line(&path, 3));
        assert!(
            e.to_string().starts_with(&format!(
                "invalid configuration: budget.base_percent (file {} line 3): base_percent (70)",
                path.display()
            )),
            "{e}"
        );

        // Not written, but refused with the others: its section's line.
        let (e, path) = file_error("log = \"info\"\n[budget]\nburst_percent = 10\n");
        assert_eq!(e.key, "budget.base_percent");
        assert_eq!(e.origin, at_line(&path, 2));

        let (e, path) = file_error("[agents.legal]\nmax_concurrent = 0\n");
        assert_eq!(e.key, "agents.legal.max_concurrent");
        assert_eq!(e.origin, at_line(&path, 2));

        let (e, path) =
            file_error("[task_types.audit]\nmax_output_tokens = 10\nspecialist = \"nobody\"\n");
        assert_eq!(e.key, "task_types.audit.specialist");
        assert_eq!(e.origin, at_line(&path, 3));

        let (e, path) = file_error("[executor]\nkind = \"simulated\"\nconfidence = 2.0\n");
        assert_eq!(e.key, "executor.confidence");
        assert_eq!(e.origin, at_line(&path, 3));

        let (e, path) = file_error("budget.total_tokens = 0\n");
        assert_eq!(e.key, "budget.total_tokens");
        assert_eq!(e.origin, at_line(&path, 1));

        let (e, path) = file_error(
            "[prices.\"gpt-4.1\"]\ninput_per_million = -1.0\noutput_per_million = 1.0\n",
        );
        assert_eq!(e.key, "prices.gpt-4.1.input_per_million");
        assert_eq!(e.origin, at_line(&path, 2));
    }

    #[test]
    fn unknown_engine_keys_are_named_at_every_level() {
        let (e, path) = file_error("[budget]\ntotal_tokens = 1000\ntotl = 5\n");
        assert_eq!(e.key, "budget.totl");
        assert_eq!(e.origin, at_line(&path, 3));
        assert!(
            e.why
                .starts_with("unknown key; the known keys are total_tokens, base_percent"),
            "{e}"
        );

        let (e, path) = file_error("[agents.legal]\nmax_concurent = 5\n");
        assert_eq!(e.key, "agents.legal.max_concurent");
        assert_eq!(e.origin, at_line(&path, 2));

        // The executor's keys are read as a whole: the header's line.
        let (e, path) = file_error("[executor]\nkind = \"simulated\"\nlatency = 5\n");
        assert_eq!(e.key, "executor.latency");
        assert_eq!(e.origin, at_line(&path, 1));
        assert!(e.why.contains("latency_ms_min"), "{e}");

        let (e, _) = file_error("[budgte]\ntotal_tokens = 5\n");
        assert_eq!(e.key, "budgte");
        assert!(e.why.contains("budget, priority, scheduler"), "{e}");

        let (e, path) = file_error("budget.total_tokens = 5\nbudget.foo = 1\n");
        assert_eq!(e.key, "budget.foo");
        assert_eq!(e.origin, at_line(&path, 2));
    }

    #[test]
    fn wrong_engine_values_name_the_dotted_key() {
        let (e, path) = file_error("[budget]\ntotal_tokens = \"lots\"\n");
        assert_eq!(e.key, "budget.total_tokens");
        assert_eq!(e.origin, at_line(&path, 2));
        assert!(e.why.contains("invalid type"), "{e}");

        let (e, _) = file_error("[budget]\nburst_levels = [\"high\", \"whenever\"]\n");
        assert_eq!(e.key, "budget.burst_levels");
        assert!(e.why.contains("whenever"), "{e}");

        let (e, path) = file_error("[executor]\nkind = \"magic\"\n");
        assert_eq!(e.key, "executor.kind");
        assert_eq!(e.origin, at_line(&path, 2));
        assert!(e.why.contains("simulated"), "{e}");
    }

    #[test]
    fn key_lines_follow_sections() {
        let text = "listen = \"x\"\n\
                    [budget]\n\
                    burst_levels = [\n  \"high\",\n  [\"not a header\"],\n]\n\
                    total_tokens = 5 # listen = 1\n\
                    [[odd]]\n\
                    note = \"\"\"\nlisten = 2\n\"\"\"\n\
                    'quoted.key' = 1\n";
        assert_eq!(key_line(text, "listen"), Some(1));
        assert_eq!(key_line(text, "budget.burst_levels"), Some(3));
        assert_eq!(key_line(text, "budget.total_tokens"), Some(7));
        assert_eq!(key_line(text, "budget.base_percent"), Some(2));
        assert_eq!(key_line(text, "odd.note"), Some(9));
        assert_eq!(key_line(text, "odd.quoted.key"), Some(12));
        assert_eq!(key_line(text, "scheduler.batch"), None);
    }
}
