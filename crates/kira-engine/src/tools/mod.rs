//! Tools (SEED 5, issue 23): the registry in three layers and the company
//! wrapper every tool call goes through.
//!
//! The registry is the built-ins ([`builtin`], domain entries of `memory`
//! and `knowledge`), the entries shipped in `[tools.registry]`, and the
//! database's (`kira_store::tools`): infrastructure and domain entries,
//! and each company's own. [`Tools::offer`] computes, at the start of each
//! run, what an agent of some domains working for a company is offered
//! (`kira_core::tools::available`: a company entry overrides a lower one of
//! the same name), with each MCP server's tools listed by the supervised
//! server ([`mcp`]) and namespaced `SERVER.TOOL`, and the company's tool
//! configurations. So a change to the registry or a configuration takes
//! effect on the next run, without a restart.
//!
//! Architecture invariant: every tool call, built-in or not, goes through
//! [`Tools::call`], which refuses a tool the offer does not hold (another
//! company's, another domain's, one that does not exist), applies the
//! company's rate limit, merges the company's defaults under the model's
//! arguments and passes its preferences, bounds the call by its timeout,
//! cuts the result to its cap and to what the run has left of its tokens,
//! and appends exactly one audit entry (arguments with secrets redacted,
//! outcome, latency, size) to the company's trail. A result reaches a
//! prompt only fenced as data (`kira_core::tools::fence_result`).
//!
//! Architecture invariant: a call returns once its audit entry is handed
//! to the group writer, not once it is committed (the commit is not on the
//! call's path); the entry is counted as [`Unwritten`] by the call's offer
//! and by the wrapper until it is written (or its write failed, logged by
//! company and tool). What must follow the entry waits for those counts: a
//! run's end is recorded only after its offer's entries are
//! (`executor::Run::end_after_audits`, awaited by the worker before the
//! end's transaction), `test` (an operator's call) returns only after its
//! entry is, and `stop` (kira stopping) writes every entry handed over.
//!
//! Architecture invariant: a URL a company chose (its registrations'; a
//! shared registration's too unless `[tools] trust_shared_tools`) is
//! reached only through a client of [`crate::outbound`], so no call for a
//! company connects to an address the operator's policy forbids.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use kira_core::audit::{AuditRecord, Outcome};
use kira_core::auth::CompanyScope;
use kira_core::outbound::OutboundPolicy;
use kira_core::seal::MasterKey;
use kira_core::tools::{BUILTIN_DOMAINS, DOMAINS, Layer, NewTool, ToolEntry, ToolSource};
use kira_core::{CompanyId, ValidationError};
use kira_llm::ToolSpec;
use kira_store::tools::{
    CredentialInfo, CredentialWrite, ToolConfig, ToolKey, ToolListing, ToolWriter,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;
use utoipa::ToSchema;

use crate::config::within;
use crate::{Ctx, Engine, EngineError, Services};

pub mod builtin;
pub mod http;
pub mod mcp;

/// The `[tools]` section as resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolsConfig {
    /// A call's timeout unless its registration sets one.
    pub call_timeout: Duration,
    /// A result's cap in bytes; past it the result is cut with a marker.
    pub max_result_bytes: usize,
    /// Tool calls per company per minute, every tool together.
    pub calls_per_minute: u32,
    /// How long an offer waits for an MCP server to start.
    pub start_timeout: Duration,
    pub max_restarts_per_minute: u32,
    pub restart_backoff: Duration,
    /// Infrastructure and domain tools shipped with the deployment.
    pub shipped: Vec<ToolEntry>,
    /// Where a company's URLs may lead (its HTTP tools and MCP servers
    /// over HTTP, its contact's webhook): the public internet unless the
    /// operator allows more.
    pub outbound: Arc<OutboundPolicy>,
    /// How the names in those URLs are resolved (the policy judges the
    /// answers): the system's resolver; tests set their own.
    pub resolver: crate::outbound::Resolver,
}

impl Default for ToolsConfig {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(30),
            max_result_bytes: 16_384,
            calls_per_minute: 600,
            start_timeout: Duration::from_secs(20),
            max_restarts_per_minute: 5,
            restart_backoff: Duration::from_millis(200),
            shipped: Vec::new(),
            outbound: Arc::default(),
            resolver: crate::outbound::Resolver::System,
        }
    }
}

/// `[tools]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsSection {
    pub call_timeout_ms: Option<u64>,
    pub max_result_bytes: Option<u64>,
    pub calls_per_minute: Option<u32>,
    pub start_timeout_ms: Option<u64>,
    pub max_restarts_per_minute: Option<u32>,
    pub restart_backoff_ms: Option<u64>,
    /// Company URLs may reach loopback, private and link-local addresses.
    pub allow_private_networks: Option<bool>,
    /// Networks (`10.1.0.0/16`), addresses or host names company URLs may
    /// reach although private.
    #[serde(default)]
    pub allow_outbound: Vec<String>,
    /// The admin's infrastructure and domain tools are not held to the
    /// address policy.
    pub trust_shared_tools: Option<bool>,
    /// `[tools.registry.NAME]`: infrastructure and domain tools.
    #[serde(default)]
    pub registry: BTreeMap<String, ShippedTool>,
}

/// One `[tools.registry.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShippedTool {
    pub layer: Layer,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub description: String,
    pub source: ToolSource,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

impl ToolsSection {
    pub fn resolve(self, c: &mut ToolsConfig) -> Result<(), ValidationError> {
        let ms = |field: &str, v: u64, min: i64, max: i64| {
            within(field, i64::try_from(v).unwrap_or(i64::MAX), min, max)
                .map(|v| Duration::from_millis(v.unsigned_abs()))
        };
        if let Some(v) = self.call_timeout_ms {
            c.call_timeout = ms("tools.call_timeout_ms", v, 1, 600_000)?;
        }
        if let Some(v) = self.max_result_bytes {
            let v = within(
                "tools.max_result_bytes",
                i64::try_from(v).unwrap_or(i64::MAX),
                64,
                16 << 20,
            )?;
            c.max_result_bytes = usize::try_from(v).unwrap_or(16_384);
        }
        if let Some(v) = self.calls_per_minute {
            c.calls_per_minute = u32::try_from(within(
                "tools.calls_per_minute",
                i64::from(v),
                1,
                1_000_000,
            )?)
            .unwrap_or(600);
        }
        if let Some(v) = self.start_timeout_ms {
            c.start_timeout = ms("tools.start_timeout_ms", v, 1, 300_000)?;
        }
        if let Some(v) = self.max_restarts_per_minute {
            c.max_restarts_per_minute = u32::try_from(within(
                "tools.max_restarts_per_minute",
                i64::from(v),
                0,
                1_000,
            )?)
            .unwrap_or(5);
        }
        if let Some(v) = self.restart_backoff_ms {
            c.restart_backoff = ms("tools.restart_backoff_ms", v, 1, 60_000)?;
        }
        let policy = OutboundPolicy {
            allow_private_networks: self.allow_private_networks.unwrap_or(false),
            trust_shared_tools: self.trust_shared_tools.unwrap_or(false),
            ..OutboundPolicy::default()
        }
        .with_allowed("tools.allow_outbound", &self.allow_outbound)?;
        c.outbound = Arc::new(policy);
        for (name, t) in self.registry {
            if t.layer == Layer::Company {
                return Err(ValidationError::new(
                    format!("tools.registry.{name}.layer"),
                    "a deployment ships infrastructure and domain tools; register company tools with `kira tools add`",
                ));
            }
            let entry = NewTool {
                name: name.clone(),
                layer: t.layer,
                domain: t.domain,
                company: None,
                description: t.description,
                source: t.source,
                timeout_ms: t.timeout_ms,
            }
            .validate("config", DateTime::<Utc>::UNIX_EPOCH)
            .map_err(|e| e.under(&format!("tools.registry.{name}")))?;
            c.shipped.push(ToolEntry {
                created_at: None,
                ..entry
            });
        }
        Ok(())
    }
}

/// A tool as `kira tools list` shows it: its registration, and for an MCP
/// server the tools it offered when kira last listed them (kept in the
/// database; listed again when kira connects, on the server's
/// `list_changed`, and on a refresh), or why it offers none now.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ToolView {
    pub name: String,
    pub layer: Layer,
    pub domain: Option<String>,
    #[schema(value_type = Option<String>)]
    pub company_id: Option<CompanyId>,
    /// `builtin`, `mcp_stdio`, `mcp_http` or `http`.
    pub source: String,
    /// `builtin`, `config` (shipped in `[tools]`) or who registered it.
    pub registered_by: String,
    pub description: String,
    /// What a model calls: the name itself, or `NAME.TOOL` for each tool
    /// of an MCP server (as last listed; none when never listed).
    pub tools: Vec<String>,
    /// When an MCP server's tools were listed (None: never yet; a run or
    /// a refresh connects to it and lists them).
    pub listed_at: Option<DateTime<Utc>>,
    /// Why an MCP server offers nothing now (a refresh that could not
    /// reach it; its last listing, if any, is shown with it).
    pub error: Option<String>,
}

impl ToolView {
    /// A registration's view before any tool of it is known.
    fn of(entry: &ToolEntry) -> ToolView {
        ToolView {
            name: entry.name.clone(),
            layer: entry.layer,
            domain: entry.domain.clone(),
            company_id: entry.company_id.clone(),
            source: entry.source.kind().to_owned(),
            registered_by: entry.created_by.clone(),
            description: entry.description.clone(),
            tools: Vec::new(),
            listed_at: None,
            error: None,
        }
    }
}

/// How a registration's MCP server is reached, as its listing records it
/// (a digest: the source may hold header values).
fn source_digest(source: &ToolSource) -> String {
    use sha2::{Digest, Sha256};
    let text = serde_json::to_string(source).unwrap_or_default();
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Whose server runs `entry` for `company`: the company's own for its
/// registration or for a shared one carrying its credential, else the
/// shared one (None). [`Tools::server`] keys its pool the same way.
fn listing_owner(
    entry: &ToolEntry,
    company: Option<&CompanyId>,
    has_credential: bool,
) -> Option<CompanyId> {
    match (entry.layer, company) {
        (Layer::Company, _) => entry.company_id.clone(),
        (Layer::Infrastructure | Layer::Domain, Some(c)) if has_credential => Some(c.clone()),
        _ => None,
    }
}

/// A server's tools as a listing keeps them.
fn listing_json(tools: &[rmcp::model::Tool]) -> Value {
    Value::Array(
        tools
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "description": t.description,
                    "input_schema": Value::Object((*t.input_schema).clone()),
                })
            })
            .collect(),
    )
}

/// How an offered tool is reached.
#[derive(Clone)]
enum Route {
    Builtin,
    Mcp {
        server: Arc<mcp::McpServer>,
        tool: String,
    },
    Http(http::HttpTool),
}

/// One tool a run may call.
#[derive(Clone)]
struct Offered {
    spec: ToolSpec,
    entry: Arc<ToolEntry>,
    route: Route,
    timeout: Duration,
}

/// What one run (or one test call) is offered: the tools by the name a
/// model calls them, the company's tool configurations, and the
/// registrations that offer nothing now (an MCP server that is down).
pub struct Offer {
    /// None: the admin's listing of the shared layers, which no call uses.
    company: Option<CompanyId>,
    tools: BTreeMap<String, Offered>,
    configs: BTreeMap<String, Value>,
    views: Vec<ToolView>,
    /// The company's opened credentials by registration: injected into
    /// the calls, redacted from everything a call leaves behind.
    credentials: BTreeMap<String, String>,
    /// The audit entries of this offer's calls not yet written.
    unwritten: Unwritten,
}

/// Audit entries of tool calls handed to the writer and not yet written:
/// an offer's (one run's calls) or the wrapper's (every call). Cloned
/// handles count the same entries.
#[derive(Clone)]
pub struct Unwritten(Arc<watch::Sender<Pending>>);

#[derive(Debug, Clone, Copy, Default)]
struct Pending {
    left: usize,
    failed: usize,
}

impl Default for Unwritten {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(Pending::default())))
    }
}

impl Unwritten {
    fn handed(&self) {
        self.0.send_modify(|p| p.left += 1);
    }

    fn done(&self, written: bool) {
        self.0.send_modify(|p| {
            p.left = p.left.saturating_sub(1);
            if !written {
                p.failed += 1;
            }
        });
    }

    /// Entries handed over and not yet written.
    pub fn left(&self) -> usize {
        self.0.borrow().left
    }

    /// Waits until every entry handed over so far is written; an error
    /// says how many of them could not be (each was logged when it
    /// failed).
    pub async fn written(&self) -> Result<(), String> {
        let mut rx = self.0.subscribe();
        let failed = match rx.wait_for(|p| p.left == 0).await {
            Ok(p) => p.failed,
            // The sender lives as long as `self`: never closed here.
            Err(_) => 0,
        };
        match failed {
            0 => Ok(()),
            n => Err(format!("{n} tool call audit entries could not be written")),
        }
    }
}

impl Offer {
    /// `args` with secret-looking values and the company's credentials
    /// redacted (for audit rows and traces).
    pub fn redact(&self, args: &Value) -> Value {
        let secrets: Vec<&str> = self.credentials.values().map(String::as_str).collect();
        kira_core::tools::redact(args, &secrets)
    }

    /// `text` with every credential of the company replaced.
    fn scrub(&self, text: String) -> String {
        let mut text = text;
        for secret in self.credentials.values() {
            if !secret.is_empty() && text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), "[redacted]");
            }
        }
        text
    }
}

/// Where a credential goes: `{credential}` in an HTTP tool's header values
/// and an MCP server's environment values.
pub const CREDENTIAL_PLACEHOLDER: &str = "{credential}";

/// The associated data of a company's credential for a tool: moved to
/// another company or tool, the sealed value does not open.
pub fn credential_aad(company: &CompanyId, tool: &str) -> String {
    format!("tool-credential:{}:{tool}", company.as_str())
}

impl Offer {
    /// The specs a model is given.
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.tools.values().map(|o| o.spec.clone()).collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.tools.keys().cloned().collect()
    }

    /// The registrations behind the offer.
    pub fn views(&self) -> &[ToolView] {
        &self.views
    }

    /// The audit entries of this offer's calls not yet written: a run's
    /// end waits for them ([`crate::executor::Run::end_after_audits`]).
    pub fn unwritten(&self) -> Unwritten {
        self.unwritten.clone()
    }
}

/// Who makes a call and for what.
#[derive(Debug, Clone)]
pub struct CallContext<'a> {
    pub scope: &'a CompanyScope,
    /// The audit entry's actor (`agent:legal`, a key's name).
    pub actor: &'a str,
    /// The task (or request) the call is made for.
    pub request_id: &'a str,
    /// Tokens the run has left: a result is cut to fit them.
    pub tokens_left: Option<i64>,
}

/// What a call gave back, as the wrapper leaves it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct CallResult {
    pub tool: String,
    /// The result's text (cut to its cap), not yet fenced.
    pub content: String,
    pub error: bool,
    /// `ok`, `error` (the tool said so), `failed` (it could not be
    /// reached), `timeout`, `refused` (not offered, or the rate limit).
    pub outcome: String,
    pub latency_ms: u64,
    /// The wrapper's own time, in microseconds: the call's time less the
    /// time spent waiting on its source (the MCP server, the HTTP
    /// endpoint, the built-in). It covers the checks, the company's
    /// configuration and credentials, the caps, the token count and
    /// handing the audit entry to the writer.
    pub wrapper_us: u64,
    /// Bytes of the result before any cut.
    pub result_bytes: usize,
    /// cl100k tokens of what is handed on.
    pub result_tokens: i64,
    pub cut: bool,
    pub layer: Option<Layer>,
}

impl CallResult {
    /// The result as it goes into a prompt: fenced as the tool's data.
    pub fn for_prompt(&self) -> String {
        kira_core::tools::fence_result(&self.tool, &self.content)
    }
}

/// The registry and the wrapper.
pub struct Tools {
    ctx: Arc<Ctx>,
    engine: Weak<Services>,
    pool: mcp::Pool,
    /// HTTP tools and MCP servers over HTTP: held to `[tools]`'s address
    /// policy (guarded), or trusted (the admin's shared tools, when the
    /// operator says so).
    http: Clients,
    /// Call times per company in the last minute (the rate limit).
    calls: Mutex<HashMap<CompanyId, VecDeque<DateTime<Utc>>>>,
    /// The calls' audit entries, written in groups.
    audits: Arc<crate::group::Group<AuditRecord, Result<(), String>>>,
    /// Every call's audit entry not yet written (`stop` writes them).
    unwritten: Unwritten,
    /// What seals and opens the companies' credentials (`KIRA_SECRET_KEY`).
    master: std::sync::RwLock<Option<Arc<MasterKey>>>,
}

/// The default domains an unnamed listing covers: every one.
fn every_domain() -> Vec<String> {
    BUILTIN_DOMAINS
        .iter()
        .chain(DOMAINS.iter())
        .map(|d| (*d).to_owned())
        .collect()
}

fn builtin_entries() -> Vec<ToolEntry> {
    builtin::specs()
        .into_iter()
        .map(|(spec, domain)| ToolEntry {
            name: spec.name,
            layer: Layer::Domain,
            domain: Some(domain.to_owned()),
            company_id: None,
            description: spec.description,
            source: ToolSource::Builtin,
            timeout_ms: None,
            created_by: "builtin".into(),
            created_at: None,
        })
        .collect()
}

/// The HTTP clients of tools.
struct Clients {
    guarded: reqwest::Client,
    trusted: reqwest::Client,
    mcp_guarded: reqwest::Client,
    mcp_trusted: reqwest::Client,
}

impl Clients {
    fn new(policy: &Arc<OutboundPolicy>, resolver: &crate::outbound::Resolver) -> Self {
        use crate::outbound::client;
        // MCP over HTTP as rmcp's own client: no idle connections kept (a
        // stale one stalls on delayed ACKs). Every client follows
        // redirects within the origin only: an HTTP tool follows one to
        // another origin itself, without its headers (`http::call`); an
        // MCP server's is refused.
        let mcp = || reqwest::Client::builder().pool_max_idle_per_host(0);
        let plain = reqwest::Client::builder;
        Self {
            guarded: client(Some(policy.clone()), resolver, plain(), true),
            trusted: client(None, resolver, plain(), true),
            mcp_guarded: client(Some(policy.clone()), resolver, mcp(), true),
            mcp_trusted: client(None, resolver, mcp(), true),
        }
    }
}

impl Tools {
    pub(crate) fn new(ctx: Arc<Ctx>, engine: Weak<Services>) -> Self {
        let http = Clients::new(&ctx.config.tools.outbound, &ctx.config.tools.resolver);
        Self {
            ctx,
            engine,
            pool: mcp::Pool::default(),
            http,
            calls: Mutex::new(HashMap::new()),
            audits: Arc::default(),
            unwritten: Unwritten::default(),
            master: std::sync::RwLock::new(None),
        }
    }

    /// Turns the companies' tool credentials on, sealed with `key`.
    pub fn set_master_key(&self, key: MasterKey) {
        if let Ok(mut m) = self.master.write() {
            *m = Some(Arc::new(key));
        }
    }

    fn master(&self) -> Option<Arc<MasterKey>> {
        self.master.read().ok().and_then(|m| m.clone())
    }

    /// The company's credentials, opened. One that does not open (another
    /// master key, or moved from another company or tool) is left out and
    /// logged by its tool's name, never its value.
    async fn open_credentials(
        &self,
        scope: &CompanyScope,
    ) -> Result<BTreeMap<String, String>, EngineError> {
        let sealed = self.ctx.store.sealed_credentials(scope).await?;
        let mut out = BTreeMap::new();
        if sealed.is_empty() {
            return Ok(out);
        }
        let Some(key) = self.master() else {
            tracing::warn!(company = %scope.company(), "tool credentials are stored but KIRA_SECRET_KEY is not set: calls go without them");
            return Ok(out);
        };
        for (tool, s) in sealed {
            match key.open(&credential_aad(scope.company(), &tool), &s) {
                Ok(v) => {
                    out.insert(tool, v);
                }
                Err(e) => {
                    tracing::warn!(company = %scope.company(), tool = %tool, "a tool credential does not open: {e}");
                }
            }
        }
        Ok(out)
    }

    /// Seals `value` for the company and registration `tool` and stores it
    /// (a new one, or a rotation). The value is never returned, logged or
    /// audited.
    pub async fn set_credential(
        &self,
        scope: &CompanyScope,
        tool: &str,
        value: &str,
        how: CredentialWrite,
        audit: AuditRecord,
    ) -> Result<(), EngineError> {
        kira_core::tools::check_name("tool", tool).map_err(EngineError::Parameter)?;
        let value = value.trim_end_matches(['\n', '\r']);
        if value.is_empty() || value.len() > 8_192 {
            return Err(EngineError::Parameter(ValidationError::new(
                "value",
                "must be 1 to 8192 bytes",
            )));
        }
        let Some(key) = self.master() else {
            return Err(EngineError::Invalid(ValidationError::new(
                "value",
                "the server has no KIRA_SECRET_KEY to seal credentials with",
            )));
        };
        let sealed = key.seal(&credential_aad(scope.company(), tool), value);
        let audit = AuditRecord {
            action: match how {
                CredentialWrite::Set => "tool.credential.set",
                CredentialWrite::Rotate => "tool.credential.rotate",
            }
            .into(),
            target: format!("credential:{tool}"),
            detail: String::new(),
            ..audit
        };
        let by = audit.actor.clone();
        Ok(self
            .ctx
            .store
            .put_credential(scope, tool, &sealed, how, &by, self.ctx.clock.now(), audit)
            .await?)
    }

    /// The company's credentials: tools, who set them, ages; no values.
    pub async fn credentials(
        &self,
        scope: &CompanyScope,
    ) -> Result<Vec<CredentialInfo>, EngineError> {
        Ok(self.ctx.store.list_credentials(scope).await?)
    }

    pub async fn delete_credential(
        &self,
        scope: &CompanyScope,
        tool: &str,
        audit: AuditRecord,
    ) -> Result<(), EngineError> {
        let audit = AuditRecord {
            action: "tool.credential.delete".into(),
            target: format!("credential:{tool}"),
            ..audit
        };
        Ok(self.ctx.store.delete_credential(scope, tool, audit).await?)
    }

    fn config(&self) -> &ToolsConfig {
        &self.ctx.config.tools
    }

    /// Every registration a company may see: built-ins, shipped, and the
    /// database's (with a scope, its company's too).
    pub async fn entries(
        &self,
        scope: Option<&CompanyScope>,
    ) -> Result<Vec<ToolEntry>, EngineError> {
        let mut all = builtin_entries();
        all.extend(self.config().shipped.iter().cloned());
        all.extend(self.ctx.store.list_tools(scope).await?);
        Ok(all)
    }

    /// What an agent with `domains` working for `scope`'s company is
    /// offered now (see the module's comment).
    pub async fn offer(
        &self,
        scope: &CompanyScope,
        domains: &[String],
    ) -> Result<Offer, EngineError> {
        let entries = self.entries(Some(scope)).await?;
        let chosen = kira_core::tools::available(&entries, Some(scope.company()), domains);
        let configs = self
            .ctx
            .store
            .tool_configs(scope)
            .await?
            .into_iter()
            .map(|c: ToolConfig| (c.tool, c.config))
            .collect();
        let mut offer = Offer {
            company: Some(scope.company().clone()),
            tools: BTreeMap::new(),
            configs,
            views: Vec::new(),
            credentials: self.open_credentials(scope).await?,
            unwritten: Unwritten::default(),
        };
        for e in chosen {
            self.add_to_offer(&mut offer, e).await;
        }
        Ok(offer)
    }

    async fn add_to_offer(&self, offer: &mut Offer, e: ToolEntry) {
        let timeout = e
            .timeout_ms
            .map_or(self.config().call_timeout, Duration::from_millis);
        let credential = offer.credentials.get(&e.name).cloned();
        let inject = |v: &String| match &credential {
            Some(c) => v.replace(CREDENTIAL_PLACEHOLDER, c),
            None => v.clone(),
        };
        let guard = self.guard(&e);
        let entry = Arc::new(e);
        let mut view = ToolView::of(&entry);
        let company = offer.company.clone();
        let mut error = None;
        let mut add = |name: String, spec: ToolSpec, route: Route| {
            view.tools.push(name.clone());
            offer.tools.insert(
                name,
                Offered {
                    spec,
                    entry: entry.clone(),
                    route,
                    timeout,
                },
            );
        };
        match &entry.source {
            ToolSource::Builtin => {
                let spec = builtin::specs()
                    .into_iter()
                    .map(|(s, _)| s)
                    .find(|s| s.name == entry.name);
                if let Some(spec) = spec {
                    add(entry.name.clone(), spec, Route::Builtin);
                }
            }
            ToolSource::Http {
                method,
                url,
                parameters,
                headers,
                result,
            } => {
                let spec = ToolSpec {
                    name: entry.name.clone(),
                    description: entry.description.clone(),
                    parameters: parameters.clone(),
                };
                let route = Route::Http(http::HttpTool {
                    method: method.clone(),
                    url: url.clone(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.clone(), inject(v)))
                        .collect(),
                    result: result.clone(),
                    guard: guard.clone(),
                });
                add(entry.name.clone(), spec, route);
            }
            ToolSource::McpStdio { command, args, env } => {
                let connect = mcp::Connect::Stdio(mcp::Spawn {
                    command: command.clone(),
                    args: args.clone(),
                    env: env.iter().map(|(k, v)| (k.clone(), inject(v))).collect(),
                    secrets: credential.iter().cloned().collect(),
                });
                let server = self.server(&entry, &company, &credential, &connect);
                match self.server_tools(&entry, &server).await {
                    Ok(tools) => tools.into_iter().for_each(|(n, s, r)| add(n, s, r)),
                    Err(e) => error = Some(e),
                }
            }
            ToolSource::McpHttp { url, headers } => {
                if let Some(policy) = &guard
                    && let Err(e) = crate::outbound::check_url(policy, url)
                {
                    view.error = Some(e.to_string());
                    offer.views.push(view);
                    return;
                }
                let connect = mcp::Connect::Http(mcp::Remote {
                    url: url.clone(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.clone(), inject(v)))
                        .collect(),
                    guard: guard.clone(),
                    resolver: self.config().resolver.clone(),
                });
                let server = self.server(&entry, &company, &credential, &connect);
                match self.server_tools(&entry, &server).await {
                    Ok(tools) => tools.into_iter().for_each(|(n, s, r)| add(n, s, r)),
                    Err(e) => error = Some(e),
                }
            }
        }
        view.error = error;
        offer.views.push(view);
    }

    /// The supervised server of a registration: one for every company,
    /// or the company's own when a shared registration carries the
    /// company's credential.
    fn server(
        &self,
        entry: &ToolEntry,
        company: &Option<CompanyId>,
        credential: &Option<String>,
        connect: &mcp::Connect,
    ) -> Arc<mcp::McpServer> {
        let key = ToolKey::of(entry);
        let own = match (credential, entry.layer, company) {
            (Some(_), Layer::Infrastructure | Layer::Domain, Some(c)) => {
                format!("@{}", c.as_str())
            }
            _ => String::new(),
        };
        let client = match connect {
            mcp::Connect::Http(r) if r.guard.is_some() => &self.http.mcp_guarded,
            _ => &self.http.mcp_trusted,
        };
        let owner = listing_owner(entry, company.as_ref(), credential.is_some());
        self.pool.get(
            &format!("{}/{}{own}", key.slot(), key.name),
            &entry.name,
            connect,
            self.supervision(),
            client,
            || Some(self.keep_listing(entry, owner)),
        )
    }

    /// What a server of `entry` does with its tools each time it lists
    /// them: keeps them in the database as `owner`'s listing (a company's
    /// under its scope, a shared server's as the system), for
    /// [`Tools::list`]. A write that fails is logged; the server serves on.
    fn keep_listing(&self, entry: &ToolEntry, owner: Option<CompanyId>) -> mcp::OnListed {
        let store = self.ctx.store.clone();
        let clock = self.ctx.clock.clone();
        let key = ToolKey::of(entry);
        let (slot, name) = (key.slot(), key.name);
        let digest = source_digest(&entry.source);
        Arc::new(move |tools| {
            let listing = ToolListing {
                slot: slot.clone(),
                name: name.clone(),
                company_id: owner.clone(),
                source_digest: digest.clone(),
                tools: listing_json(&tools),
                listed_at: clock.now(),
            };
            let store = store.clone();
            Box::pin(async move {
                let system = kira_core::auth::Principal::system();
                let written = match &listing.company_id {
                    Some(c) => match system.scope(c, kira_core::auth::Access::Write) {
                        Ok(scope) => {
                            store
                                .put_tool_listing(ToolWriter::Company(&scope), &listing)
                                .await
                        }
                        Err(_) => Ok(()),
                    },
                    None => match system.admin() {
                        Ok(admin) => {
                            store
                                .put_tool_listing(ToolWriter::Admin(&admin), &listing)
                                .await
                        }
                        Err(_) => Ok(()),
                    },
                };
                if let Err(e) = written {
                    tracing::warn!(server = %listing.name, error = %e, "could not keep the MCP server's tool listing");
                }
            })
        })
    }

    /// A server's tools, named `SERVER.TOOL`, once it is up (or why not).
    async fn server_tools(
        &self,
        entry: &ToolEntry,
        server: &Arc<mcp::McpServer>,
    ) -> Result<Vec<(String, ToolSpec, Route)>, String> {
        server
            .wait_up(self.config().start_timeout)
            .await
            .map_err(|e| e.to_string())?;
        Ok(server
            .tools()
            .into_iter()
            .map(|t| {
                let name = format!("{}.{}", entry.name, t.name);
                let spec = ToolSpec {
                    name: name.clone(),
                    description: t.description.as_deref().unwrap_or_default().to_owned(),
                    parameters: Value::Object((*t.input_schema).clone()),
                };
                let route = Route::Mcp {
                    server: server.clone(),
                    tool: t.name.to_string(),
                };
                (name, spec, route)
            })
            .collect())
    }

    /// The address policy a registration's URLs are held to: every
    /// company's registration; the admin's shared ones unless `[tools]
    /// trust_shared_tools`.
    fn guard(&self, entry: &ToolEntry) -> Option<Arc<OutboundPolicy>> {
        let policy = &self.config().outbound;
        let trusted = policy.trust_shared_tools && entry.layer != Layer::Company;
        (!trusted).then(|| policy.clone())
    }

    fn supervision(&self) -> mcp::Supervision {
        mcp::Supervision {
            max_restarts_per_minute: self.config().max_restarts_per_minute,
            backoff: self.config().restart_backoff,
            max_backoff: Duration::from_secs(10),
        }
    }

    /// The wrapper: runs `name` from `offer` with `args` for the context's
    /// company (see the module's comment), and hands its audit entry to
    /// the writer ([`Tools::audit_call`]).
    pub async fn call(
        &self,
        offer: &Offer,
        cx: &CallContext<'_>,
        name: &str,
        args: &Value,
    ) -> CallResult {
        let t0 = Instant::now();
        let now = self.ctx.clock.now();
        let ran = self.run_call(offer, cx, name, args, now).await;
        let latency_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
        let Ran {
            text,
            error,
            outcome,
            layer,
            sent: args_seen,
            preferences,
            source,
        } = ran;
        let result_bytes = text.len();
        let content = offer.scrub(text);
        // The cap first, then what the run can still pay for.
        let (mut content, mut cut) =
            kira_core::tools::cap_result(&content, self.config().max_result_bytes);
        let mut tokens = count(&content);
        if let Some(left) = cx.tokens_left
            && tokens > left.max(0)
        {
            // About four bytes a token: cut, then count what is left.
            let bytes = usize::try_from(left.max(0).saturating_mul(3)).unwrap_or(0);
            let (c, _) = kira_core::tools::cap_result(&content, bytes);
            content = c;
            cut = true;
            tokens = count(&content);
        }
        let mut r = CallResult {
            tool: name.to_owned(),
            content,
            error,
            outcome: outcome.to_owned(),
            latency_ms,
            // Set last, once the audit entry is handed over.
            wrapper_us: 0,
            result_bytes,
            result_tokens: tokens,
            cut,
            layer,
        };
        let detail = json!({
            "layer": layer.map(Layer::as_str),
            "arguments": offer.redact(&args_seen),
            "outcome": r.outcome,
            "latency_ms": r.latency_ms,
            "result_bytes": r.result_bytes,
            "result_tokens": r.result_tokens,
            "cut": r.cut,
            "preferences": preferences.map(Preferences::as_str),
        });
        let audit = AuditRecord {
            at: now,
            request_id: cx.request_id.to_owned(),
            actor: cx.actor.to_owned(),
            company_id: Some(cx.scope.company().clone()),
            action: "tool.call".into(),
            target: name.chars().take(200).collect(),
            outcome: match outcome {
                "ok" => Outcome::Ok,
                "refused" => Outcome::Denied,
                _ => Outcome::Error,
            },
            detail: detail.to_string(),
        };
        self.audit_call(offer, cx.scope.company(), name, audit);
        let wrapper = t0.elapsed().saturating_sub(source);
        r.wrapper_us = u64::try_from(wrapper.as_micros()).unwrap_or(u64::MAX);
        r
    }

    /// Hands a call's audit entry to the writer, which appends it with
    /// those of the calls finishing at the same moment in one transaction
    /// ([`crate::group`]): each company's chain stays whole (the store
    /// chains a batch entry by entry). The call does not wait for the
    /// commit: the entry is [`Unwritten`] in the offer's and the
    /// wrapper's counts until it is written (see the module's comment).
    fn audit_call(&self, offer: &Offer, company: &CompanyId, tool: &str, audit: AuditRecord) {
        let counts = [offer.unwritten.clone(), self.unwritten.clone()];
        for c in &counts {
            c.handed();
        }
        // In line now, so a run's entries keep the order of its calls.
        let line = self.audits.enqueue(audit);
        let (group, store) = (self.audits.clone(), self.ctx.store.clone());
        let (company, tool) = (company.clone(), tool.to_owned());
        tokio::spawn(async move {
            let store = &store;
            let r = group
                .written(
                    line,
                    |batch| async move {
                        let n = batch.len();
                        let r = store
                            .append_audits(batch)
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string());
                        vec![r; n]
                    },
                    || Err("the audit entry was not written".into()),
                )
                .await;
            if let Err(e) = &r {
                tracing::error!(company = %company, tool = %tool, error = %e, "could not audit a tool call");
            }
            for c in &counts {
                c.done(r.is_ok());
            }
        });
    }

    /// Every call's audit entry not yet written.
    pub fn unwritten(&self) -> Unwritten {
        self.unwritten.clone()
    }

    /// The call itself.
    async fn run_call(
        &self,
        offer: &Offer,
        cx: &CallContext<'_>,
        name: &str,
        args: &Value,
        now: DateTime<Utc>,
    ) -> Ran {
        let refused = |m: String| Ran {
            text: format!("error: {m}"),
            error: true,
            outcome: "refused",
            layer: None,
            sent: args.clone(),
            preferences: None,
            source: Duration::ZERO,
        };
        if offer.company.as_ref() != Some(cx.scope.company()) {
            return refused("this offer is another company's".into());
        }
        let Some(tool) = offer.tools.get(name) else {
            return refused(format!(
                "no tool named '{name}' is offered to this agent for this company"
            ));
        };
        let layer = Some(tool.entry.layer);
        if !self.admit(cx.scope.company(), now) {
            return Ran {
                layer,
                ..refused(format!(
                    "rate limit: at most {} tool calls a minute for this company",
                    self.config().calls_per_minute
                ))
            };
        }
        // The company's defaults, for the tool or its whole registration.
        let mut sent = args.clone();
        for key in [name, tool.entry.name.as_str()] {
            if let Some(d) = offer.configs.get(key).and_then(|c| c.get("defaults")) {
                sent = kira_core::tools::with_defaults(&sent, d);
            }
        }
        // The company's preferences go where the tool takes them: an
        // argument its schema names `preferences` (the company's keys over
        // the model's), else an MCP request's `_meta`, else an HTTP
        // tool's `Kira-Preferences` header; the built-ins take none.
        let mut preferences = Value::Null;
        for key in [tool.entry.name.as_str(), name] {
            if let Some(p) = offer.configs.get(key).and_then(|c| c.get("preferences")) {
                preferences = kira_core::tools::with_defaults(p, &preferences);
            }
        }
        let prefs_to = match (&preferences, &tool.route) {
            (Value::Null, _) | (_, Route::Builtin) => None,
            _ if tool
                .spec
                .parameters
                .pointer("/properties/preferences")
                .is_some() =>
            {
                let model = sent.get("preferences").cloned().unwrap_or(Value::Null);
                if let Value::Object(m) = &mut sent {
                    m.insert(
                        "preferences".into(),
                        kira_core::tools::with_defaults(&preferences, &model),
                    );
                }
                Some(Preferences::Argument)
            }
            (_, Route::Mcp { .. }) => Some(Preferences::Meta),
            (_, Route::Http(_)) => Some(Preferences::Header),
        };
        // From here on the call waits on its source.
        let at_source = Instant::now();
        let (text, error, outcome) = match &tool.route {
            Route::Builtin => match Engine::upgrade(&self.engine) {
                Some(engine) => {
                    let fut =
                        builtin::call(&engine, cx.scope, name, &sent, cx.request_id, cx.actor);
                    match tokio::time::timeout(tool.timeout, fut).await {
                        Ok(out) => (
                            out.content,
                            out.error,
                            if out.error { "error" } else { "ok" },
                        ),
                        Err(_) => timeout_text(tool.timeout),
                    }
                }
                None => ("error: kira is stopping".into(), true, "failed"),
            },
            Route::Http(h) => {
                let client = if h.guard.is_some() {
                    &self.http.guarded
                } else {
                    &self.http.trusted
                };
                let header = (prefs_to == Some(Preferences::Header))
                    .then(|| (PREFERENCES_HEADER, preferences.to_string()));
                let (text, ended) = http::call(client, h, &sent, header, tool.timeout).await;
                let outcome = match ended {
                    http::Ended::Ok => "ok",
                    http::Ended::Failed => "failed",
                    http::Ended::Timeout => "timeout",
                    http::Ended::Refused => "refused",
                };
                match ended {
                    http::Ended::Ok => (text, false, outcome),
                    _ => (format!("error: {text}"), true, outcome),
                }
            }
            Route::Mcp { server, tool: t } => {
                let meta = (prefs_to == Some(Preferences::Meta))
                    .then(|| json!({ PREFERENCES_META: preferences }));
                match server.call_with_meta(t, &sent, meta, tool.timeout).await {
                    Ok(r) => {
                        let is_error = r.is_error.unwrap_or(false);
                        let text = mcp::result_text(&r);
                        if is_error {
                            (format!("error: {text}"), true, "error")
                        } else {
                            (text, false, "ok")
                        }
                    }
                    Err(mcp::McpError::Timeout { .. }) => timeout_text(tool.timeout),
                    Err(e) => (format!("error: {e}"), true, "failed"),
                }
            }
        };
        Ran {
            text,
            error,
            outcome,
            layer,
            sent,
            preferences: prefs_to,
            source: at_source.elapsed(),
        }
    }

    /// Counts a call against the company's minute; false when it is full.
    fn admit(&self, company: &CompanyId, now: DateTime<Utc>) -> bool {
        let mut calls = match self.calls.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        let window = calls.entry(company.clone()).or_default();
        while window
            .front()
            .is_some_and(|t| now - *t >= TimeDelta::minutes(1))
        {
            window.pop_front();
        }
        if window.len() >= self.config().calls_per_minute as usize {
            return false;
        }
        window.push_back(now);
        true
    }

    /// `kira tools list`: the registrations an agent of `domain` (every
    /// domain when none) working for `scope`'s company would be offered;
    /// without a scope (the admin's), the infrastructure and domain
    /// layers. Each MCP server's tools are its stored listing (when kira
    /// last listed them): a listing starts or connects to nothing. With
    /// `refresh`, kira connects to each server (starting a stdio one) and
    /// lists its tools now, which updates the stored listing.
    pub async fn list(
        &self,
        scope: Option<&CompanyScope>,
        domain: Option<&str>,
        refresh: bool,
    ) -> Result<Vec<ToolView>, EngineError> {
        let domains = match domain {
            Some(d) => {
                if !DOMAINS.contains(&d) && !BUILTIN_DOMAINS.contains(&d) {
                    return Err(EngineError::Parameter(ValidationError::new(
                        "domain",
                        format!(
                            "must be one of {}, {}",
                            DOMAINS.join(", "),
                            BUILTIN_DOMAINS.join(", ")
                        ),
                    )));
                }
                vec![d.to_owned()]
            }
            None => every_domain(),
        };
        let entries = self.entries(scope).await?;
        let company = scope.map(CompanyScope::company);
        let chosen = kira_core::tools::available(&entries, company, &domains);
        let mut views = match (refresh, scope) {
            (true, Some(s)) => self.offer(s, &domains).await?.views,
            (true, None) => {
                let mut offer = Offer {
                    company: None,
                    tools: BTreeMap::new(),
                    configs: BTreeMap::new(),
                    views: Vec::new(),
                    credentials: BTreeMap::new(),
                    unwritten: Unwritten::default(),
                };
                for e in chosen.iter().cloned() {
                    self.add_to_offer(&mut offer, e).await;
                }
                offer.views
            }
            (false, _) => chosen.iter().map(|e| self.stored_view(e)).collect(),
        };
        self.with_listings(scope, &chosen, &mut views).await?;
        Ok(views)
    }

    /// A registration's view without reaching it: a built-in or HTTP tool
    /// is itself; an MCP server's tools come from its listing
    /// ([`Tools::with_listings`]), its URL checked against the address
    /// policy as a call would.
    fn stored_view(&self, entry: &ToolEntry) -> ToolView {
        let mut view = ToolView::of(entry);
        match &entry.source {
            ToolSource::Builtin | ToolSource::Http { .. } => view.tools.push(entry.name.clone()),
            ToolSource::McpHttp { url, .. } => {
                if let Some(policy) = self.guard(entry)
                    && let Err(e) = crate::outbound::check_url(&policy, url)
                {
                    view.error = Some(e.to_string());
                }
            }
            ToolSource::McpStdio { .. } => {}
        }
        view
    }

    /// Each MCP server's view with its stored listing: when it was listed,
    /// and its tools where the view has none of its own now (not
    /// refreshed, or the refresh could not reach it).
    async fn with_listings(
        &self,
        scope: Option<&CompanyScope>,
        chosen: &[ToolEntry],
        views: &mut [ToolView],
    ) -> Result<(), EngineError> {
        let mcp = |e: &ToolEntry| {
            matches!(
                e.source,
                ToolSource::McpStdio { .. } | ToolSource::McpHttp { .. }
            )
        };
        if !chosen.iter().any(mcp) {
            return Ok(());
        }
        let listings = self.ctx.store.tool_listings(scope).await?;
        let credentials: std::collections::HashSet<String> = match scope {
            Some(s) => self
                .ctx
                .store
                .list_credentials(s)
                .await?
                .into_iter()
                .map(|c| c.tool)
                .collect(),
            None => Default::default(),
        };
        let company = scope.map(CompanyScope::company);
        for entry in chosen.iter().filter(|e| mcp(e)) {
            let Some(view) = views.iter_mut().find(|v| v.name == entry.name) else {
                continue;
            };
            let owner = listing_owner(entry, company, credentials.contains(&entry.name));
            let key = ToolKey::of(entry);
            let digest = source_digest(&entry.source);
            let Some(listing) = listings.iter().find(|l| {
                l.slot == key.slot()
                    && l.name == key.name
                    && l.company_id == owner
                    && l.source_digest == digest
            }) else {
                continue;
            };
            view.listed_at = Some(listing.listed_at);
            if view.tools.is_empty() {
                view.tools = listing
                    .tools
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.get("name").and_then(Value::as_str))
                    .map(|t| format!("{}.{t}", entry.name))
                    .collect();
            }
        }
        Ok(())
    }

    /// Registers a tool. A stdio command must exist (an absolute path, or
    /// a name found in `PATH`).
    pub async fn add(
        &self,
        who: ToolWriter<'_>,
        new: NewTool,
        audit: AuditRecord,
    ) -> Result<ToolEntry, EngineError> {
        let entry = new
            .validate(&audit.actor, self.ctx.clock.now())
            .map_err(EngineError::Parameter)?;
        // A command kira runs on its host is the admin's to choose: a
        // company's operator registers HTTP tools.
        if matches!(entry.source, ToolSource::McpStdio { .. })
            && matches!(who, ToolWriter::Company(_))
        {
            return Err(EngineError::Forbidden(ValidationError::new(
                "source.kind",
                "only an admin key registers a command kira runs (mcp_stdio); register an http tool",
            )));
        }
        // A URL whose host is a forbidden address is refused now; a name
        // is checked on what it resolves to at every call.
        let url = match &entry.source {
            ToolSource::Http { url, .. } | ToolSource::McpHttp { url, .. } => Some(url),
            _ => None,
        };
        if let (Some(url), Some(policy)) = (url, self.guard(&entry)) {
            // A template's placeholders stand in as a name; a URL that does
            // not parse then is left to the call.
            let filled = url.replace(['{', '}'], "");
            if let Some(why) = crate::outbound::forbidden_literal(&policy, &filled) {
                return Err(EngineError::Forbidden(ValidationError::new(
                    "source.url",
                    why,
                )));
            }
        }
        if let ToolSource::McpStdio { command, .. } = &entry.source
            && find_command(command).is_none()
        {
            return Err(EngineError::Parameter(ValidationError::new(
                "source.command",
                format!("'{command}' is not an executable file here (nor a name found in PATH)"),
            )));
        }
        let audit = AuditRecord {
            company_id: entry.company_id.clone(),
            action: "tool.add".into(),
            target: format!("tool:{}:{}", entry.layer.as_str(), entry.name),
            detail:
                json!({"layer": entry.layer, "domain": entry.domain, "source": entry.source.kind()})
                    .to_string(),
            ..audit
        };
        Ok(self.ctx.store.add_tool(who, &entry, audit).await?)
    }

    /// Removes a registration (the built-ins and shipped ones are not the
    /// database's: NotFound).
    pub async fn remove(
        &self,
        who: ToolWriter<'_>,
        key: &ToolKey,
        audit: AuditRecord,
    ) -> Result<(), EngineError> {
        let audit = AuditRecord {
            company_id: key.company.clone(),
            action: "tool.remove".into(),
            target: format!("tool:{}:{}", key.layer.as_str(), key.name),
            ..audit
        };
        Ok(self.ctx.store.remove_tool(who, key, audit).await?)
    }

    /// One registration as the scope's company sees it (the one it would
    /// be offered under that name), with its tools (as [`Tools::list`]:
    /// stored, or listed now with `refresh`).
    pub async fn show(
        &self,
        scope: &CompanyScope,
        name: &str,
        refresh: bool,
    ) -> Result<ToolView, EngineError> {
        self.list(Some(scope), None, refresh)
            .await?
            .into_iter()
            .find(|v| v.name == name)
            .ok_or(EngineError::Store(kira_store::StoreError::NotFound))
    }

    /// `kira tools test`: calls `tool` once with `args` as the scope's
    /// company would (every domain's tools offered), through the wrapper;
    /// returns once the call's audit entry is written (an operator's
    /// action is on the trail when it is answered).
    pub async fn test(
        &self,
        scope: &CompanyScope,
        tool: &str,
        args: &Value,
        actor: &str,
        request_id: &str,
    ) -> Result<CallResult, EngineError> {
        if !args.is_object() {
            return Err(EngineError::Parameter(ValidationError::new(
                "arguments",
                "must be a JSON object",
            )));
        }
        let offer = self.offer(scope, &every_domain()).await?;
        let cx = CallContext {
            scope,
            actor,
            request_id,
            tokens_left: None,
        };
        let r = self.call(&offer, &cx, tool, args).await;
        // A failed write was logged with the company and the tool.
        let _ = offer.unwritten.written().await;
        Ok(r)
    }

    /// Sets (or removes, with None) the company's configuration of a tool:
    /// an object whose `defaults` are merged under every call's arguments
    /// and whose `preferences` go with every call (see `run_call`).
    pub async fn configure(
        &self,
        scope: &CompanyScope,
        tool: &str,
        config: Option<&Value>,
        audit: AuditRecord,
    ) -> Result<(), EngineError> {
        if tool.is_empty() || tool.len() > 200 {
            return Err(EngineError::Parameter(ValidationError::new(
                "tool",
                "1 to 200 bytes",
            )));
        }
        if let Some(c) = config {
            let ok = c.as_object().is_some_and(|o| {
                o.keys().all(|k| k == "defaults" || k == "preferences")
                    && o.get("defaults").is_none_or(Value::is_object)
                    && o.get("preferences").is_none_or(Value::is_object)
            });
            if !ok {
                return Err(EngineError::Parameter(ValidationError::new(
                    "config",
                    "must be an object with `defaults` (an object of arguments) and `preferences` (an object)",
                )));
            }
        }
        let audit = AuditRecord {
            action: "tool.configure".into(),
            target: format!("tool:{tool}"),
            ..audit
        };
        let by = audit.actor.clone();
        Ok(self
            .ctx
            .store
            .put_tool_config(scope, tool, config, &by, self.ctx.clock.now(), audit)
            .await?)
    }

    /// The company's tool configurations.
    pub async fn configs(&self, scope: &CompanyScope) -> Result<Vec<ToolConfig>, EngineError> {
        Ok(self.ctx.store.tool_configs(scope).await?)
    }

    /// The running MCP servers (their registration, status, starts).
    pub fn servers(&self) -> Vec<(String, Arc<mcp::McpServer>)> {
        self.pool.servers()
    }

    /// Writes the calls' audit entries handed over (kira stopping; ten
    /// seconds at most), then stops every MCP server and waits, a few
    /// seconds at most, until each has exited.
    pub async fn stop(&self) {
        let left = self.unwritten.clone();
        if tokio::time::timeout(Duration::from_secs(10), left.written())
            .await
            .is_err()
        {
            tracing::error!(
                entries = left.left(),
                "tool call audit entries were not written before kira stopped"
            );
        }
        let servers = self.pool.servers();
        self.pool.shutdown();
        for (_, s) in servers {
            s.wait_stopped(Duration::from_secs(5)).await;
        }
    }
}

impl Drop for Tools {
    fn drop(&mut self) {
        self.pool.shutdown();
    }
}

/// A call as run, before the wrapper cuts and audits it.
struct Ran {
    text: String,
    error: bool,
    /// `ok`, `error`, `failed`, `timeout` or `refused`.
    outcome: &'static str,
    layer: Option<Layer>,
    /// The arguments as sent (the company's defaults and preferences in).
    sent: Value,
    preferences: Option<Preferences>,
    /// The time spent waiting on the source.
    source: Duration,
}

/// Where the company's preferences for a tool went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Preferences {
    /// The tool's `preferences` argument.
    Argument,
    /// An MCP request's `_meta`, under [`PREFERENCES_META`].
    Meta,
    /// An HTTP tool's [`PREFERENCES_HEADER`] (JSON).
    Header,
}

impl Preferences {
    fn as_str(self) -> &'static str {
        match self {
            Preferences::Argument => "argument",
            Preferences::Meta => "meta",
            Preferences::Header => "header",
        }
    }
}

/// The `_meta` key of the company's preferences in an MCP tools/call.
pub const PREFERENCES_META: &str = "kira/preferences";
/// The header of the company's preferences (JSON) to an HTTP tool.
pub const PREFERENCES_HEADER: &str = "kira-preferences";

fn timeout_text(d: Duration) -> (String, bool, &'static str) {
    (
        format!("error: the tool did not answer within {} ms", d.as_millis()),
        true,
        "timeout",
    )
}

fn count(text: &str) -> i64 {
    i64::try_from(crate::memory::pack::count_tokens(text)).unwrap_or(i64::MAX)
}

/// `command` as an executable file: a path as given, or found in `PATH`.
pub fn find_command(command: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if command.contains('/') {
        let p = std::path::PathBuf::from(command);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(command))
        .find(|p| executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_policy_is_read_from_tools_and_checked_entry_by_entry() {
        let section: ToolsSection = serde_json::from_value(json!({
            "allow_outbound": ["10.1.0.0/16", "Tools.Internal"],
            "trust_shared_tools": true,
        }))
        .expect("section");
        let mut c = ToolsConfig::default();
        section.resolve(&mut c).expect("valid");
        let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("ip");
        assert!(c.outbound.trust_shared_tools && !c.outbound.allow_private_networks);
        assert!(c.outbound.check("x", ip("10.1.2.3")).is_ok());
        assert!(c.outbound.check("tools.internal", ip("127.0.0.1")).is_ok());
        assert!(c.outbound.check("x", ip("127.0.0.1")).is_err());
        assert_eq!(ToolsConfig::default().outbound, Arc::default());

        let bad: ToolsSection =
            serde_json::from_value(json!({"allow_outbound": ["10.0.0.0/8", "not a host"]}))
                .expect("section");
        let e = bad
            .resolve(&mut ToolsConfig::default())
            .expect_err("refused");
        assert_eq!(e.field, "tools.allow_outbound.1");
    }
}
