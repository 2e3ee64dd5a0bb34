//! The command line: every command, flag and its help text.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand, ValueEnum};
use kira_core::company::Contact;
use kira_core::task::{Priority, TaskStatus};
use serde_json::Value;

#[derive(Debug, Parser)]
#[command(
    name = "kira",
    version,
    about = "Run the kira server, or manage it through its HTTP API",
    propagate_version = true
)]
pub struct Cli {
    /// The server's base URL.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "KIRA_URL",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    pub url: String,

    /// The API token [default: the contents of <data dir>/admin.key].
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "KIRA_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    /// The data directory: where `serve` keeps its data, and where clients
    /// find admin.key [env: KIRA_DATA_DIR] [default: ./kira-data].
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "DIR"
    )]
    pub data_dir: Option<PathBuf>,

    /// Print the server's JSON instead of tables, for scripts.
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server.
    Serve(ServeArgs),
    /// Run only the scheduler and its workers (no HTTP), beside `kira serve`
    /// processes on the same PostgreSQL database. Needs an [executor].
    Worker(ServeArgs),
    /// Manage companies.
    #[command(subcommand)]
    Company(CompanyCommand),
    /// Manage API keys (admin only).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Read and verify the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Submit tasks, follow them, cancel them and read their traces.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Review results waiting for a human: list, show, approve, reject,
    /// and rate completed tasks.
    #[command(subcommand)]
    Review(crate::commands::review::ReviewCommand),
    /// Token budgets: the period, its pools, each company's allocation,
    /// and emergency token requests.
    #[command(subcommand)]
    Budget(BudgetCommand),
    /// A company's episodic memory: record, import, list, search, show,
    /// archive, restore, delete and compact.
    #[command(subcommand)]
    Memory(MemoryCommand),
    /// Show the context pack an agent working for a company would start
    /// from, and why each item is in it.
    Context(ContextArgs),
    /// The shared knowledge base: legal frameworks, business patterns,
    /// industry standards. Admins write; every key reads.
    #[command(subcommand)]
    Knowledge(crate::commands::knowledge::KnowledgeCommand),
    /// Cross-company sharing: publish, list and withdraw a company's shared
    /// items; consents (admin); which rule decides for two companies (admin).
    #[command(subcommand)]
    Sharing(crate::commands::sharing::SharingCommand),
    /// The agent pool: models, limits, load and system prompts.
    #[command(subcommand)]
    Agents(crate::commands::agents::AgentsCommand),
    /// Task metrics over a window: a company's (against its SLA), the
    /// system's (admin) or an agent's.
    #[command(subcommand)]
    Metrics(crate::commands::metrics::MetricsCommand),
    /// The executive dashboard (admin), or a company's with its id (SEED
    /// 6.3); in the browser at /ui/.
    Dashboard(crate::commands::dashboard::DashboardCommand),
    /// Alerts: list, show, acknowledge, resolve; silences (admin).
    #[command(subcommand)]
    Alerts(crate::commands::alerts::AlertsCommand),
    /// Tools: the registry (infrastructure, domain, company layers), the
    /// company's tool configurations, and test calls.
    #[command(subcommand)]
    Tools(crate::commands::tools::ToolsCommand),
    /// A company's tool credentials: set and rotate (from stdin), list
    /// (names and ages), delete.
    #[command(subcommand)]
    Credentials(crate::commands::credentials::CredentialsCommand),
    /// Conflict flags between companies naming the same counterparty (admin).
    #[command(subcommand)]
    Conflicts(crate::commands::sharing::ConflictsCommand),
    /// Show kira at work: three companies with their memories, a small
    /// knowledge base and a set of tasks, sent to a running server (admin);
    /// then which agent ran each task and what it cost.
    Demo(crate::commands::demo::DemoArgs),
    /// Encrypted API keys for the configuration file: make a master key,
    /// seal a provider's key.
    #[command(subcommand)]
    Secret(crate::commands::secret::SecretCommand),
    /// Show which key the token belongs to.
    Whoami,
    /// Measure kira on this machine (runs in-process against a database of its own).
    #[command(subcommand)]
    Bench(kira_bench::BenchCommand),
    /// Print a shell completion script to stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Flags are taken as text and checked by the configuration loader, so a
/// bad value gets the same message whether it came from a flag, the
/// environment or the file.
#[derive(Debug, Args)]
#[command(
    after_help = "Each setting is taken from its flag, else its KIRA_* environment variable, \
else the configuration file (--config, KIRA_CONFIG, else ./kira.toml if it exists), else the default."
)]
pub struct ServeArgs {
    /// Address to listen on [env: KIRA_LISTEN] [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// sqlite:PATH or postgres://... [env: KIRA_DATABASE_URL]
    /// [default: sqlite://<data dir>/kira.db].
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// PostgreSQL only: the URL the server works with, when it should not
    /// use the owner's [env: KIRA_APP_DATABASE_URL].
    #[arg(long, value_name = "URL")]
    pub app_database_url: Option<String>,
    /// Largest request body accepted [env: KIRA_MAX_BODY_BYTES] [default: 1048576].
    #[arg(long, value_name = "N")]
    pub max_body_bytes: Option<String>,
    /// Log filter, such as info or kira_server=debug [env: KIRA_LOG] [default: info].
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
    /// Configuration file [env: KIRA_CONFIG] [default: ./kira.toml if it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum CompanyCommand {
    /// Create a company.
    Add(AddArgs),
    /// List companies.
    List {
        /// Include archived companies.
        #[arg(long)]
        all: bool,
    },
    /// Show one company.
    Show { id: String },
    /// Change a company's profile: only the fields given change. An
    /// operator key may change --name and the contacts only; the rest
    /// (industry, jurisdiction, consent, revenue, complexity, activity,
    /// priority multiplier, SLA) decide across companies and need an admin key.
    Update(UpdateArgs),
    /// Archive a company: it stays readable but can no longer change.
    Archive { id: String },
    /// Delete a company and every row it owns. The audit log keeps its entries.
    Delete {
        id: String,
        /// Required: deleting cannot be undone.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// The company's id: lowercase letters, digits and '-', such as acme.
    pub id: String,
    /// The company's display name.
    #[arg(long)]
    pub name: String,
    /// Its industry, in your own words, such as fintech.
    #[arg(long)]
    pub industry: String,
    /// ISO 3166 code such as US-DE or GB.
    #[arg(long)]
    pub jurisdiction: String,
    #[command(flatten)]
    pub profile: ProfileArgs,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    pub id: String,
    /// The company's display name.
    #[arg(long)]
    pub name: Option<String>,
    /// Its industry, in your own words, such as fintech.
    #[arg(long)]
    pub industry: Option<String>,
    /// ISO 3166 code such as US-DE or GB.
    #[arg(long)]
    pub jurisdiction: Option<String>,
    #[command(flatten)]
    pub profile: ProfileArgs,
    /// Remove every contact.
    #[arg(long, conflicts_with = "contacts")]
    pub clear_contacts: bool,
    /// Empty the old sharing list (it grants nothing; see `kira sharing consent`).
    #[arg(long, conflicts_with = "consent")]
    pub clear_consent: bool,
}

/// The optional profile fields shared by `add` and `update`. Only the ones
/// given are sent; the server applies its defaults to the rest.
#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// Annual revenue in US dollars.
    #[arg(long, value_name = "USD")]
    pub revenue: Option<i64>,
    /// In [0, 1].
    #[arg(long, value_name = "F")]
    pub complexity: Option<f64>,
    /// In [0, 1].
    #[arg(long, value_name = "F")]
    pub activity: Option<f64>,
    /// In [0.1, 3.0]; scales the priority of this company's tasks.
    #[arg(long, value_name = "F")]
    pub priority_multiplier: Option<f64>,
    /// Response time the company is promised, in seconds.
    #[arg(long, value_name = "N")]
    pub sla_seconds: Option<i32>,
    /// A contact, as 'name=Jane Doe,email=jane@x.com,webhook=https://...';
    /// repeat for several. On update, the list given replaces the old one.
    #[arg(long = "contact", value_name = "CONTACT", value_parser = parse_contact)]
    pub contacts: Vec<Contact>,
    /// The profile's old list of sharing scopes; repeat for several. It
    /// grants nothing any more: consents are given per scope and partner
    /// with `kira sharing consent give` (admin).
    #[arg(long, value_name = "SCOPE")]
    pub consent: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create an API key and print its token (shown only once).
    CreateKey {
        /// A name saying who or what uses the key.
        #[arg(long)]
        name: String,
        /// What the key may do.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// The company an operator or viewer key belongs to.
        #[arg(long, value_name = "ID")]
        company: Option<String>,
    },
    /// List API keys.
    ListKeys,
    /// Revoke an API key: its token stops working at once.
    RevokeKey { key_id: String },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// Every company, and key management.
    Admin,
    /// One company, read and write.
    Operator,
    /// One company, read only.
    Viewer,
    /// Scraping `GET /metrics` only (every company's series), nothing else.
    Metrics,
}

impl RoleArg {
    pub fn as_str(self) -> &'static str {
        match self {
            RoleArg::Admin => "admin",
            RoleArg::Operator => "operator",
            RoleArg::Viewer => "viewer",
            RoleArg::Metrics => "metrics",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit entries, oldest first.
    List {
        /// Only this company's entries.
        #[arg(long, value_name = "ID")]
        company: Option<String>,
        /// Only entries after this sequence number (for paging).
        #[arg(long, value_name = "SEQ")]
        after: Option<i64>,
        /// At most this many entries.
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
    },
    /// Check the audit log's hash chain; exits 1 if it was tampered with.
    Verify,
}

#[derive(Debug, Subcommand)]
pub enum MemoryCommand {
    /// Record one memory.
    Add(MemoryAddArgs),
    /// Record memories from a JSON Lines file (one memory object per line),
    /// up to 1,000 per request, each request all or nothing.
    Import {
        company: String,
        /// The .jsonl file; - reads standard input.
        file: PathBuf,
    },
    /// List memories, the most recent first.
    List(MemoryListArgs),
    /// Search memories by words and meaning.
    Search(MemorySearchArgs),
    /// Show one memory.
    Show { company: String, memory_id: String },
    /// Archive a memory (it leaves search and context until restored).
    Archive { company: String, memory_id: String },
    /// Restore an archived memory.
    Restore { company: String, memory_id: String },
    /// Delete a memory for good (admins only).
    Delete { company: String, memory_id: String },
    /// Compact a company's memory now by each workstream's strategy.
    Compact {
        company: String,
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Args)]
pub struct MemoryAddArgs {
    pub company: String,
    /// What happened, in words.
    #[arg(value_name = "TEXT")]
    pub text: String,
    /// decision, meeting, context, person, goal, issue, contract, progress,
    /// task_result or note.
    #[arg(long = "type", value_name = "TYPE", default_value = "note")]
    pub event_type: String,
    /// legal, financial, operational, technical, content, research or general.
    #[arg(long, value_name = "NAME")]
    pub workstream: Option<String>,
    /// Free text compaction keys on, such as key_decisions or routine_reviews.
    #[arg(long, value_name = "NAME")]
    pub category: Option<String>,
    /// 1-10 [default: 5].
    #[arg(long, value_name = "N")]
    pub importance: Option<i16>,
    /// When it happened (RFC 3339) [default: now].
    #[arg(long, value_name = "TIME")]
    pub occurred_at: Option<chrono::DateTime<chrono::Utc>>,
    /// A person involved (repeatable).
    #[arg(long = "person", value_name = "NAME")]
    pub people: Vec<String>,
    /// A counterparty involved (repeatable).
    #[arg(long = "counterparty", value_name = "NAME")]
    pub counterparties: Vec<String>,
    /// Where it came from, such as a task id.
    #[arg(long, value_name = "TEXT")]
    pub source: Option<String>,
}

#[derive(Debug, Args, Default)]
pub struct MemoryFilterArgs {
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: Option<String>,
    #[arg(long, value_name = "NAME")]
    pub workstream: Option<String>,
    #[arg(long, value_name = "NAME")]
    pub category: Option<String>,
    /// Happened at or after (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub from: Option<String>,
    /// Happened before (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    #[arg(long, value_name = "N")]
    pub min_importance: Option<i16>,
    /// A person, counterparty or indexed term.
    #[arg(long, value_name = "TERM")]
    pub term: Option<String>,
    /// exclude (default), include or only.
    #[arg(long, value_name = "WHICH")]
    pub archived: Option<String>,
    /// At most this many [default: 50].
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
}

#[derive(Debug, Args)]
pub struct MemoryListArgs {
    pub company: String,
    #[command(flatten)]
    pub filter: MemoryFilterArgs,
    /// Continue after this cursor (printed at the end of a full page).
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<String>,
}

#[derive(Debug, Args)]
pub struct MemorySearchArgs {
    pub company: String,
    /// What to look for.
    pub query: String,
    #[command(flatten)]
    pub filter: MemoryFilterArgs,
}

#[derive(Debug, Args)]
pub struct ContextArgs {
    pub company: String,
    /// A task type or a workstream, such as legal or document_review.
    #[arg(long, value_name = "TYPE")]
    pub task_type: Option<String>,
    /// The task's text.
    #[arg(long, value_name = "TEXT")]
    pub q: Option<String>,
    /// Tokens (cl100k) [default: 4000].
    #[arg(long, value_name = "N")]
    pub budget: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Submit a task to a company's queue.
    Submit(SubmitArgs),
    /// List a company's tasks, newest first.
    List(TaskListArgs),
    /// Show a task: its response, usage, timings and request, and the
    /// messages between the primary agent and a specialist, if any.
    Show {
        /// Such as acme_legal_001; the company is the part before the first '_'.
        task_id: String,
    },
    /// Show what a task's runs did, step by step: each LLM call, tool call
    /// and message, with its tokens and latency (--json for every detail).
    Trace {
        /// Such as acme_legal_001.
        task_id: String,
    },
    /// Cancel a task: a waiting one at once, a running one when its worker
    /// next checks in. Its reserved tokens are released.
    Cancel {
        /// Such as acme_legal_001.
        task_id: String,
    },
    /// Follow a task's status changes as they happen, until it finishes.
    Watch {
        /// Such as acme_legal_001.
        task_id: String,
    },
}

#[derive(Debug, Args)]
#[command(
    after_help = "Parameters: --param key=text sends a string; --param key:=JSON sends \
any JSON value, such as --param pages:=12 or --param 'tags:=[\"nda\"]'. --param values \
are added to (and replace keys of) the object in --parameters-file."
)]
pub struct SubmitArgs {
    /// The company the task is for, such as acme.
    pub company: String,
    /// What to do, in words.
    #[arg(value_name = "TEXT")]
    pub text: String,
    /// A configured task type, such as complex_legal_analysis or
    /// quick_question_answer.
    #[arg(long = "type", value_name = "TYPE")]
    pub task_type: String,
    /// How urgent it is.
    #[arg(long, default_value = "medium", value_name = "LEVEL", value_parser = priority_parser())]
    pub priority: Priority,
    /// When the result is needed, in RFC 3339, such as 2026-01-15T17:00:00Z.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub deadline: Option<DateTime<Utc>>,
    /// Ask for this specialist (legal, financial, ...) instead of the type's.
    #[arg(long, value_name = "NAME")]
    pub specialist: Option<String>,
    /// A parameter, as key=text or key:=JSON; repeat for several.
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, Value)>,
    /// A JSON object of parameters, such as a document to review.
    #[arg(long, value_name = "FILE")]
    pub parameters_file: Option<PathBuf>,
    /// Submitting again with the same key (and the same request) returns
    /// the first task instead of making another.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Args)]
pub struct TaskListArgs {
    /// The company whose tasks to list, such as acme.
    pub company: String,
    /// Only tasks in this status.
    #[arg(long, value_name = "STATUS", value_parser = status_parser())]
    pub status: Option<TaskStatus>,
    /// Only tasks of this priority level.
    #[arg(long, value_name = "LEVEL", value_parser = priority_parser())]
    pub priority: Option<Priority>,
    /// Only tasks of this type.
    #[arg(long = "type", value_name = "TYPE")]
    pub task_type: Option<String>,
    /// Only tasks created at or after this time (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Only tasks created before this time (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
    /// At most this many tasks.
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Only tasks older than this sequence number (for paging).
    #[arg(long, value_name = "SEQ")]
    pub before: Option<i64>,
}

#[derive(Debug, Subcommand)]
pub enum BudgetCommand {
    /// The current period: pools, each company's allocation and use, and
    /// pending emergency requests.
    Show,
    /// List emergency token requests (pending ones unless --all).
    Requests {
        /// Include decided requests.
        #[arg(long)]
        all: bool,
    },
    /// Grant an emergency request's tokens; its task goes back to the queue.
    Approve {
        request_id: String,
        /// Why, for the audit log.
        #[arg(long, value_name = "TEXT")]
        note: Option<String>,
    },
    /// Refuse an emergency request; its task fails with the note as reason.
    Reject {
        request_id: String,
        /// Why: the task's failure reason and the audit log say it.
        #[arg(long, value_name = "TEXT")]
        note: String,
    },
    /// Recompute every balance from the ledger; exits 1 on any difference.
    Verify,
}

/// Priority levels, named as the API names them, most urgent first.
fn priority_parser() -> impl TypedValueParser<Value = Priority> {
    PossibleValuesParser::new(Priority::ALL.map(Priority::as_str)).try_map(|s| Priority::parse(&s))
}

fn status_parser() -> impl TypedValueParser<Value = TaskStatus> {
    PossibleValuesParser::new(TaskStatus::ALL.map(TaskStatus::as_str))
        .try_map(|s| TaskStatus::parse(&s))
}

/// An RFC 3339 time, in any offset, as UTC.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("'{s}' is not an RFC 3339 time such as 2026-01-15T17:00:00Z ({e})"))
}

/// `key=text` (a string) or `key:=JSON` (any JSON value), httpie's
/// spelling, so a number or a list can be sent without a file.
pub fn parse_param(s: &str) -> Result<(String, Value), String> {
    let Some((key, value)) = s.split_once('=') else {
        return Err(format!("'{s}' is not key=value (or key:=JSON)"));
    };
    let (key, value) = match key.strip_suffix(':') {
        Some(key) => {
            let json = serde_json::from_str(value)
                .map_err(|e| format!("the value of '{key}' is not JSON ({e})"))?;
            (key, json)
        }
        None => (key, Value::String(value.to_owned())),
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("'{s}' has no key before '='"));
    }
    Ok((key.to_owned(), value))
}

/// Parses `name=Jane Doe,email=jane@x.com,webhook=https://...`. A comma
/// not followed by a known key belongs to the value before it, so a name
/// or a webhook URL may contain commas; outside a webhook URL, an unknown
/// `key=` is refused rather than swallowed into the value.
pub fn parse_contact(s: &str) -> Result<Contact, String> {
    const KEYS: [&str; 3] = ["name", "email", "webhook"];
    let mut fields: Vec<(String, String)> = Vec::new();
    for piece in s.split(',') {
        let key = piece
            .split_once('=')
            .map(|(k, _)| k.trim())
            .filter(|k| KEYS.contains(k));
        match (key, fields.last_mut()) {
            (Some(key), _) => {
                if fields.iter().any(|(k, _)| k == key) {
                    return Err(format!("'{key}' is given twice"));
                }
                let value = piece.split_once('=').map_or("", |(_, v)| v);
                fields.push((key.to_owned(), value.trim().to_owned()));
            }
            (None, Some((prev, value))) => {
                if prev != "webhook"
                    && let Some((unknown, _)) = piece.split_once('=')
                {
                    return Err(format!(
                        "unknown contact field '{}'; the fields are name, email, webhook",
                        unknown.trim()
                    ));
                }
                value.push(',');
                value.push_str(piece);
            }
            (None, None) => {
                return Err(format!(
                    "expected key=value pairs with keys name, email, webhook; got '{piece}'"
                ));
            }
        }
    }
    let take = |key: &str| {
        fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.trim().to_owned())
    };
    let name = take("name").ok_or("a contact needs name=...")?;
    Ok(Contact {
        name,
        email: take("email"),
        webhook: take("webhook"),
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn contacts_parse() {
        let c = parse_contact("name=Jane Doe,email=jane@x.com,webhook=https://h/x?a=1,b=2")
            .expect("valid");
        assert_eq!(c.name, "Jane Doe");
        assert_eq!(c.email.as_deref(), Some("jane@x.com"));
        assert_eq!(c.webhook.as_deref(), Some("https://h/x?a=1,b=2"));

        let c = parse_contact("name=Ops").expect("valid");
        assert_eq!((c.email, c.webhook), (None, None));

        assert!(parse_contact("email=a@b.c").is_err(), "name is required");
        assert!(parse_contact("Jane").is_err());
        assert!(parse_contact("name=a,name=b").is_err());
        assert!(parse_contact("name=a,phone=1").is_err());
        let c = parse_contact("name=Doe, Jane,email=j@x.com").expect("valid");
        assert_eq!(c.name, "Doe, Jane");
    }

    #[test]
    fn params_are_text_or_json() {
        assert_eq!(
            parse_param("doc=a=b").expect("valid"),
            ("doc".into(), Value::String("a=b".into()))
        );
        assert_eq!(
            parse_param("pages:=12").expect("valid"),
            ("pages".into(), serde_json::json!(12))
        );
        assert_eq!(
            parse_param("tags:=[\"nda\"]").expect("valid"),
            ("tags".into(), serde_json::json!(["nda"]))
        );
        assert_eq!(
            parse_param("empty=").expect("valid"),
            ("empty".into(), Value::String(String::new()))
        );
        assert!(parse_param("novalue").is_err());
        assert!(parse_param("=x").is_err());
        assert!(parse_param("n:=not json").is_err());
    }

    #[test]
    fn times_are_rfc3339_in_any_offset() {
        assert_eq!(
            parse_time("2026-01-15T18:00:00+01:00")
                .expect("valid")
                .to_rfc3339(),
            "2026-01-15T17:00:00+00:00"
        );
        let e = parse_time("tomorrow").expect_err("not a time");
        assert!(e.contains("RFC 3339"), "{e}");
    }

    #[test]
    fn submit_levels_come_from_the_core() {
        let parse = |args: &[&str]| {
            let mut all = vec!["kira", "task", "submit", "acme", "do it", "--type", "x"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all)
        };
        let Command::Task(TaskCommand::Submit(a)) = parse(&[]).expect("valid").command else {
            panic!("not task submit");
        };
        assert_eq!(a.priority, Priority::Medium, "the default level");
        let Command::Task(TaskCommand::Submit(a)) =
            parse(&["--priority", "emergency"]).expect("valid").command
        else {
            panic!("not task submit");
        };
        assert_eq!(a.priority, Priority::Emergency);
        let e = parse(&["--priority", "whenever"]).expect_err("unknown level");
        assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue);
        assert!(e.to_string().contains("--priority"), "{e}");
        assert!(
            Cli::try_parse_from(["kira", "budget", "reject", "r1"]).is_err(),
            "a rejection needs a note"
        );
    }

    #[test]
    fn update_refuses_contacts_and_clear_together() {
        let r = Cli::try_parse_from([
            "kira",
            "company",
            "update",
            "acme",
            "--contact",
            "name=a",
            "--clear-contacts",
        ]);
        assert!(r.is_err());
    }
}
