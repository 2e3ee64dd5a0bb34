//! The command line: every command, flag and its help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kira_core::company::Contact;

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
    /// Manage companies.
    #[command(subcommand)]
    Company(CompanyCommand),
    /// Manage API keys (admin only).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Read and verify the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Show which key the token belongs to.
    Whoami,
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
    /// Change a company's profile: only the fields given change.
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
    /// Withdraw every sharing consent.
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
    /// A sharing scope the company consents to, such as process_templates;
    /// repeat for several. On update, the set given replaces the old one.
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
}

impl RoleArg {
    pub fn as_str(self) -> &'static str {
        match self {
            RoleArg::Admin => "admin",
            RoleArg::Operator => "operator",
            RoleArg::Viewer => "viewer",
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
