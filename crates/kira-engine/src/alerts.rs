//! Alerts (issue 22, SEED 6.1 and 6.2): the evaluator, which gathers the
//! facts (task metrics, budgets, the queue and review backlog, denied
//! cross-company reads), asks the core rules what holds, moves each alert
//! through its states and sends what the plan says through the channels,
//! recording every attempt; and the alerts and silences as the API serves
//! them, every change audited.
//!
//! One evaluator at a time across processes (an advisory job lock, like
//! compaction's); the notices held for their group are in the database,
//! so whichever process evaluates next sends them, and a group taken to
//! be sent stays marked until its delivery is recorded, so a process that
//! dies meanwhile loses none (the next evaluator sends it once the mark's
//! lease ran out). The scheduled `audit verify` and `budget verify` are a
//! job of their own (one process at a time too), whose latest outcomes,
//! in the database, the evaluator reads.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use kira_core::ValidationError;
use kira_core::alerts::{
    Alert, Audience, AuthFailure, Check, CompanyFacts, Condition, Due, Facts, GroupKey, Grouping,
    Held, Matcher, NoticeKind, Policy, PoolFacts, ProviderFacts, Routing, Rule, Severity, Silence,
    Verification, counts_kept, default_rules, observe, plan, still_due,
};
use kira_core::audit::{AuditRecord, Outcome};
use kira_core::auth::{AdminScope, Principal};
use kira_core::company::Company;
use kira_core::ids::KeyId;
use kira_core::metrics::Resolution;
use kira_store::alerts::{AlertDetail, AlertFilter, AlertReader, Delivery, NotificationAttempt};
use kira_store::counts::{CountKey, CountKind, Tally};
use kira_store::metrics::MetricsQuery;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::config::within;
use crate::{Ctx, EngineError, Shutdown};

mod channels;

pub use channels::{
    AlertmanagerChannel, Channel, ChannelSpec, EmailChannel, LogChannel, Message, SmtpConfig,
    SmtpSection, SmtpSecurity, WebhookChannel, WebhookFormat,
};
use channels::{Unavailable, smtp_transport};

/// The advisory-lock key of the alerts evaluator.
const JOB_ALERTS: i64 = 0x6b69_7261_0004;

/// The advisory-lock key of the scheduled verifications' job.
const JOB_VERIFY: i64 = 0x6b69_7261_0022;

/// A sample of one provider's counters: (at, answered, failed).
type ProviderSample = (DateTime<Utc>, u64, u64);

/// `[alerts]`: the rules, the teams and their channels, the intervals.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertsConfig {
    pub evaluate_interval: TimeDelta,
    /// Between two notifications of an alert still firing.
    pub repeat_interval: TimeDelta,
    /// How the notices of one rule, kind and audience go out together
    /// (`group_wait`, `group_interval`).
    pub grouping: Grouping,
    pub rules: Vec<Rule>,
    /// SEED 6.2's by default.
    pub routing: Routing,
    pub teams: BTreeMap<String, Vec<ChannelSpec>>,
    /// The SMTP server email channels send through (`[alerts.smtp]`).
    pub smtp: Option<SmtpConfig>,
    /// Tries per notification and target, and the wait before the second
    /// (doubling after each).
    pub delivery_attempts: u32,
    pub retry_backoff: Duration,
    /// How long a group taken out of the outbox is marked as being sent:
    /// if its delivery is not recorded by then (the process died), the
    /// next evaluator sends it again. Longer than the slowest delivery.
    pub delivery_lease: TimeDelta,
    /// Audit entries older than the scheduled check's checkpoint that
    /// each run walks again, from where the last run's slice ended.
    pub audit_sweep: i64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            evaluate_interval: TimeDelta::seconds(30),
            repeat_interval: TimeDelta::hours(4),
            // SEED 6.2 says "immediately": a group's first notice waits
            // for nothing; what joins a group that went out waits for
            // Alertmanager's default interval, to go out together.
            grouping: Grouping {
                wait: TimeDelta::zero(),
                interval: TimeDelta::minutes(5),
            },
            rules: default_rules(),
            routing: Routing::default(),
            teams: BTreeMap::new(),
            smtp: None,
            delivery_attempts: 3,
            retry_backoff: Duration::from_millis(500),
            delivery_lease: TimeDelta::minutes(5),
            audit_sweep: 10_000,
        }
    }
}

/// `[alerts]` as written in `kira.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsSection {
    pub evaluate_interval_seconds: Option<i64>,
    pub repeat_interval_minutes: Option<i64>,
    /// How long a rule's first notice waits for other subjects to join it.
    pub group_wait_seconds: Option<i64>,
    /// After a rule's notice went out, how long the next ones wait.
    pub group_interval_seconds: Option<i64>,
    pub delivery_attempts: Option<u32>,
    pub retry_backoff_ms: Option<u64>,
    /// How long a group being sent waits for its delivery's record before
    /// the next evaluator sends it again.
    pub delivery_lease_seconds: Option<i64>,
    /// Older audit entries each scheduled `audit verify` walks again.
    pub audit_sweep_entries: Option<i64>,
    /// `[alerts.teams.NAME] channels = [...]`.
    #[serde(default)]
    pub teams: BTreeMap<String, TeamSection>,
    /// `[alerts.smtp]`: the server email channels send through.
    pub smtp: Option<SmtpSection>,
    /// `[alerts.rules.NAME]`: changes a default rule or adds one.
    #[serde(default)]
    pub rules: BTreeMap<String, RuleSection>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamSection {
    #[serde(default)]
    pub channels: Vec<ChannelSpec>,
}

/// A rule as written: what is given replaces the default's; a new rule
/// needs its `condition` (`{ type = "sla_p95", window_seconds = 3600 }`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSection {
    /// false: the rule is off.
    pub enabled: Option<bool>,
    pub severity: Option<Severity>,
    pub for_seconds: Option<i64>,
    pub labels: Option<BTreeMap<String, String>>,
    pub condition: Option<Condition>,
}

impl AlertsSection {
    pub fn resolve(self, c: &mut AlertsConfig) -> Result<(), ValidationError> {
        if let Some(v) = self.evaluate_interval_seconds {
            c.evaluate_interval =
                TimeDelta::seconds(within("alerts.evaluate_interval_seconds", v, 1, 3_600)?);
        }
        if let Some(v) = self.repeat_interval_minutes {
            c.repeat_interval =
                TimeDelta::minutes(within("alerts.repeat_interval_minutes", v, 1, 10_080)?);
        }
        if let Some(v) = self.group_wait_seconds {
            c.grouping.wait = TimeDelta::seconds(within("alerts.group_wait_seconds", v, 0, 3_600)?);
        }
        if let Some(v) = self.group_interval_seconds {
            c.grouping.interval =
                TimeDelta::seconds(within("alerts.group_interval_seconds", v, 0, 86_400)?);
        }
        if let Some(v) = self.delivery_attempts {
            c.delivery_attempts = within("alerts.delivery_attempts", i64::from(v), 1, 10)? as u32;
        }
        if let Some(v) = self.retry_backoff_ms {
            let ms = within(
                "alerts.retry_backoff_ms",
                v.min(i64::MAX as u64) as i64,
                1,
                60_000,
            )?;
            c.retry_backoff = Duration::from_millis(ms as u64);
        }
        if let Some(v) = self.delivery_lease_seconds {
            c.delivery_lease =
                TimeDelta::seconds(within("alerts.delivery_lease_seconds", v, 10, 86_400)?);
        }
        if let Some(v) = self.audit_sweep_entries {
            c.audit_sweep = within("alerts.audit_sweep_entries", v, 1, 100_000_000)?;
        }
        c.smtp = self.smtp.unwrap_or_default().resolve()?;
        for (name, team) in self.teams {
            for (i, ch) in team.channels.iter().enumerate() {
                ch.validate(
                    &format!("alerts.teams.{name}.channels.{i}"),
                    c.smtp.is_some(),
                )?;
            }
            c.teams.insert(name, team.channels);
        }
        for (name, r) in self.rules {
            resolve_rule(c, name, r)?;
        }
        Ok(())
    }
}

fn resolve_rule(c: &mut AlertsConfig, name: String, r: RuleSection) -> Result<(), ValidationError> {
    let field = |f: &str| format!("alerts.rules.{name}.{f}");
    let at = c.rules.iter().position(|x| x.name == name);
    if r.enabled == Some(false) {
        if let Some(i) = at {
            c.rules.remove(i);
        }
        return Ok(());
    }
    let mut rule = match (at, r.condition.clone()) {
        (Some(i), _) => c.rules.remove(i),
        (None, Some(condition)) => Rule {
            name: name.clone(),
            severity: Severity::Warning,
            for_duration: TimeDelta::zero(),
            labels: BTreeMap::new(),
            condition,
        },
        (None, None) => {
            return Err(ValidationError::new(
                field("condition"),
                "a new rule needs its condition",
            ));
        }
    };
    if let Some(cond) = r.condition {
        rule.condition = cond;
    }
    if let Some(s) = r.severity {
        rule.severity = s;
    }
    if let Some(f) = r.for_seconds {
        rule.for_duration = TimeDelta::seconds(f);
    }
    if let Some(l) = r.labels {
        rule.labels = l;
    }
    rule.validate()
        .map_err(|e| ValidationError::new(format!("alerts.rules.{}", e.field), e.message))?;
    c.rules.push(rule);
    Ok(())
}

// ---- the service ----

/// What one evaluation did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct EvaluationReport {
    /// Conditions holding now (rule x subject).
    pub observed: usize,
    pub opened: usize,
    pub changed: usize,
    /// Grouped notices sent (one per rule, kind and audience that went
    /// out), and notices held by a silence.
    pub notices_sent: usize,
    pub notices_silenced: usize,
    /// Notices waiting for their group to go out.
    pub notices_held: usize,
    pub attempts_failed: usize,
}

/// A new silence as asked for.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSilence {
    pub matchers: Vec<Matcher>,
    /// Default: now.
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: DateTime<Utc>,
    /// Why.
    pub comment: String,
}

/// Alerts: the evaluator and its channels, alerts and silences.
pub struct Alerts {
    ctx: Arc<Ctx>,
    metrics: Arc<crate::metrics::Metrics>,
    sharing: Arc<crate::sharing::Sharing>,
    http: reqwest::Client,
    /// For a company contact's webhook: held to `[tools]`'s address
    /// policy, and following redirects within the URL's origin only.
    company_http: reqwest::Client,
    /// `[alerts.smtp]`'s transport, or why it cannot be made.
    smtp: Option<
        Result<
            (
                lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
                lettre::message::Mailbox,
            ),
            String,
        >,
    >,
}

/// What the rules read of the counts no company's transaction records.
struct Counted {
    denied_reads: Vec<(DateTime<Utc>, u64)>,
    auth_failures: Vec<AuthFailure>,
    providers: Vec<ProviderFacts>,
}

/// The per-second counts after `since` as the rules read them: the
/// denied reads and each provider's calls as samples of counters that
/// start at 0 at `since` and grow second by second to `now`; the
/// authentication failures per second, key and address; each provider's
/// failures in a row (`streaks`, every process's).
fn counted_facts(
    counted: &[(CountKey, Tally)],
    streaks: &[(String, u64)],
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Counted {
    let mut denied = vec![(since, 0u64)];
    let mut auth_failures = Vec::new();
    let mut samples: BTreeMap<&str, Vec<ProviderSample>> = BTreeMap::new();
    for (k, t) in counted {
        match k.kind {
            CountKind::DeniedRead => {
                let total = denied.last().map_or(0, |s| s.1) + t.n;
                denied.push((k.at, total));
            }
            CountKind::AuthFailure => auth_failures.push(AuthFailure {
                at: k.at,
                key: (!k.subject.is_empty()).then(|| k.subject.clone()),
                address: k.detail.clone(),
                count: t.n,
            }),
            CountKind::ProviderCall => {
                let s = samples
                    .entry(k.subject.as_str())
                    .or_insert_with(|| vec![(since, 0, 0)]);
                let (_, ok, failed) = s.last().copied().unwrap_or((since, 0, 0));
                s.push((k.at, ok + t.n, failed + t.errors));
            }
        }
    }
    let last = denied.last().map_or(0, |s| s.1);
    denied.push((now, last));
    let mut providers: BTreeMap<&str, ProviderFacts> = BTreeMap::new();
    for (name, mut s) in samples {
        let (_, ok, failed) = s.last().copied().unwrap_or((since, 0, 0));
        s.push((now, ok, failed));
        providers.insert(
            name,
            ProviderFacts {
                name: name.to_owned(),
                samples: s,
                errors_in_a_row: 0,
            },
        );
    }
    for (name, n) in streaks {
        providers
            .entry(name.as_str())
            .or_insert_with(|| ProviderFacts {
                name: name.clone(),
                samples: vec![(since, 0, 0), (now, 0, 0)],
                errors_in_a_row: 0,
            })
            .errors_in_a_row = *n;
    }
    Counted {
        denied_reads: denied,
        auth_failures,
        providers: providers.into_values().collect(),
    }
}

fn system_admin() -> Result<AdminScope, EngineError> {
    Principal::system().admin().map_err(|_| {
        EngineError::Invalid(ValidationError::new(
            "principal",
            "the system principal is not an admin",
        ))
    })
}

impl Alerts {
    pub(crate) fn new(
        ctx: Arc<Ctx>,
        metrics: Arc<crate::metrics::Metrics>,
        sharing: Arc<crate::sharing::Sharing>,
    ) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        let company_http = crate::outbound::client(
            Some(ctx.config.tools.outbound.clone()),
            &ctx.config.tools.resolver,
            reqwest::Client::builder().timeout(Duration::from_secs(10)),
            true,
        );
        let smtp = ctx
            .config
            .alerts
            .smtp
            .as_ref()
            .map(|c| smtp_transport(c).map(|t| (t, c.from.clone())));
        Self {
            ctx,
            metrics,
            sharing,
            smtp,
            http,
            company_http,
        }
    }

    fn config(&self) -> &AlertsConfig {
        &self.ctx.config.alerts
    }

    /// One evaluation, on one node at a time. None: another node holds it.
    pub async fn evaluate(&self) -> Result<Option<EvaluationReport>, EngineError> {
        // None: the node holding it sends what is held, in the database.
        crate::locked(self.ctx.store.as_ref(), JOB_ALERTS, self.evaluate_locked()).await
    }

    /// [`Alerts::evaluate`] with its lock held.
    async fn evaluate_locked(&self) -> Result<EvaluationReport, EngineError> {
        let now = self.ctx.clock.now().trunc_subsecs(6);
        let admin = system_admin()?;
        let (facts, directory) = self.facts(&admin, now).await?;
        let cfg = self.config();
        let observed: Vec<_> = cfg
            .rules
            .iter()
            .flat_map(|r| observe(r, &facts, now))
            .collect();
        let open = self.ctx.store.open_alerts().await?;
        let silences = self.ctx.store.list_silences(&admin, now, false).await?;
        let policy = Policy {
            rules: &cfg.rules,
            routing: &cfg.routing,
            repeat_interval: cfg.repeat_interval,
            silences: &silences,
        };
        let p = plan(&policy, &open, &observed, now, Uuid::now_v7);
        let alerts: HashMap<Uuid, &Alert> =
            p.new.iter().chain(&p.changed).map(|a| (a.id, a)).collect();
        let mut held = Vec::new();
        for n in p.notices.iter().filter(|n| n.silenced_by.is_none()) {
            let Some(alert) = alerts.get(&n.alert_id) else {
                continue;
            };
            for who in &n.audience {
                held.push((GroupKey::of(alert, n.kind, who), Held::from(*alert)));
            }
        }
        // The notices are held in the database with the alerts they tell
        // of, in one transaction: whichever process evaluates next sends
        // them if this one stops first.
        let written: HashSet<Uuid> = self
            .ctx
            .store
            .write_evaluation(&p.new, &p.changed, &held, now)
            .await?
            .into_iter()
            .collect();
        let mut report = EvaluationReport {
            observed: observed.len(),
            opened: p.new.iter().filter(|a| written.contains(&a.id)).count(),
            changed: p.changed.iter().filter(|a| written.contains(&a.id)).count(),
            notices_silenced: p
                .notices
                .iter()
                .filter(|n| n.silenced_by.is_some() && written.contains(&n.alert_id))
                .count(),
            ..EvaluationReport::default()
        };
        self.flush(now, &silences, &directory, &mut report).await?;
        Ok(report)
    }

    /// Sends every group due now, and every group another evaluator took
    /// and never recorded (its lease run out): each taken out of the
    /// stored outbox marked as being sent (so no other evaluator sends it
    /// meanwhile), one notice per group listing its alerts as they stand
    /// now, each attempt recorded on every alert of the group with the
    /// mark's removal. An alert acknowledged or resolved since its notice
    /// was held, or silenced now, is left out of its notice.
    async fn flush(
        &self,
        now: DateTime<Utc>,
        silences: &[Silence],
        directory: &HashMap<String, Company>,
        report: &mut EvaluationReport,
    ) -> Result<(), EngineError> {
        let cfg = self.config();
        let (due, held) = self
            .ctx
            .store
            .take_due_notices(now, cfg.grouping, cfg.delivery_lease)
            .await?;
        report.notices_held = held;
        for group in due {
            let mut told = Vec::with_capacity(group.alerts.len());
            for a in group.alerts {
                match still_due(group.key.notice, &a, silences, now) {
                    Due::Send => told.push(a),
                    Due::Silenced(_) => report.notices_silenced += 1,
                    Due::Stale => {}
                }
            }
            let mut attempts = Vec::new();
            if !told.is_empty() {
                attempts = self
                    .deliver(&told, group.key.notice, &group.key.audience, directory)
                    .await;
                report.attempts_failed += attempts
                    .iter()
                    .filter(|a| a.outcome == Delivery::Failed)
                    .count();
                report.notices_sent += 1;
            }
            self.ctx.store.finish_sending(group.id, &attempts).await?;
        }
        Ok(())
    }

    /// The company directory (contacts), by id.
    async fn directory(&self, admin: &AdminScope) -> Result<HashMap<String, Company>, EngineError> {
        Ok(self
            .sharing
            .directory(admin)
            .await?
            .iter()
            .map(|c| (c.id.to_string(), c.clone()))
            .collect())
    }

    /// What the rules look at, now, and the company directory (contacts).
    async fn facts(
        &self,
        admin: &AdminScope,
        now: DateTime<Utc>,
    ) -> Result<(Facts, HashMap<String, Company>), EngineError> {
        let store = &self.ctx.store;
        let cfg = self.config();
        let longest = cfg
            .rules
            .iter()
            .map(|r| r.condition.window())
            .max()
            .unwrap_or_default();
        self.metrics.roll_up().await?;
        // Every process's counts: this one's written now, the others'
        // within their roll-up interval.
        self.ctx.counts.flush().await?;
        let since = now - counts_kept(&cfg.rules);
        let counted = store.counts_since(admin, since).await?;
        let streaks = store.count_totals(admin).await?.errors_in_a_row;
        let counted = counted_facts(&counted, &streaks, since, now);
        // The seconds no window reaches any more.
        store.prune_counts(since).await?;
        let q = MetricsQuery {
            resolution: Resolution::Minute,
            from: Some(Resolution::Minute.bucket(now - longest)),
            to: None,
            agent: None,
        };
        let mut minutes: HashMap<String, Vec<_>> = HashMap::new();
        for row in store.all_metrics(admin, &q).await? {
            minutes
                .entry(row.key.company_id)
                .or_default()
                .push((row.key.bucket, row.sums));
        }
        let budget = store
            .budget_state(admin, &self.ctx.config.budget, now)
            .await?;
        let waiting = store.waiting_work(admin).await?;
        let reviews: HashMap<&str, i64> = waiting
            .reviews_waiting
            .iter()
            .map(|(c, n)| (c.as_str(), *n))
            .collect();
        // The directory sharing keeps, read again only when a company changed.
        let directory = self.directory(admin).await?;
        let mut companies = Vec::new();
        for line in &budget.companies {
            let id = line.company_id.to_string();
            let Some(company) = directory.get(&id) else {
                continue;
            };
            companies.push(CompanyFacts {
                id: line.company_id.clone(),
                sla_response_seconds: i64::from(company.profile.sla_response_seconds),
                allocation: line.allocation,
                spent: line.spent,
                overdraft: line.overdraft,
                emergency_waiting: budget
                    .pending_requests
                    .iter()
                    .filter(|r| r.company_id == line.company_id)
                    .count() as i64,
                reviews_waiting: reviews.get(id.as_str()).copied().unwrap_or(0),
                minutes: minutes.remove(&id).unwrap_or_default(),
            });
        }
        let facts = Facts {
            period: kira_core::budget::Period {
                id: budget.period_id.clone(),
                start: budget.starts_at,
                end: budget.ends_at,
            },
            pools: budget
                .pools
                .iter()
                .map(|p| PoolFacts {
                    pool: p.pool.as_str().to_owned(),
                    capacity: p.capacity,
                    used: p.reserved + p.spent,
                })
                .collect(),
            companies,
            oldest_runnable_since: waiting.oldest_queued_since(),
            denied_reads: counted.denied_reads,
            auth_failures: counted.auth_failures,
            verifications: self.verified().await?,
            providers: counted.providers,
        };
        Ok((facts, directory))
    }

    /// Counts a request refused for want of a valid key or session, for
    /// the `auth_failures` rule: the key id its token named (never the
    /// token), if any, and the client's address. Written to the database
    /// with this process's other counts ([`crate::counts`]).
    pub fn auth_failed(&self, key: Option<&KeyId>, from: IpAddr) {
        self.ctx.counts.auth_failure(key, from);
    }

    /// Each verification a rule asks for, at its shortest interval.
    fn scheduled(&self) -> BTreeMap<Check, TimeDelta> {
        let mut due: BTreeMap<Check, TimeDelta> = BTreeMap::new();
        for (check, every) in self
            .config()
            .rules
            .iter()
            .filter_map(|r| r.condition.verification())
        {
            let e = due.entry(check).or_insert(every);
            *e = (*e).min(every);
        }
        due
    }

    /// The scheduled verifications' job, on one process at a time: runs
    /// each verification a rule asks for whose interval has passed since
    /// its last run (by any process) and records its outcome, which the
    /// evaluator reads. An evaluation never runs one, nor waits for one.
    /// None: another process holds the job; else the runs made.
    pub async fn verify_due(&self) -> Result<Option<Vec<Verification>>, EngineError> {
        crate::locked(
            self.ctx.store.as_ref(),
            JOB_VERIFY,
            self.verify_due_locked(),
        )
        .await
    }

    /// [`Alerts::verify_due`] with its lock held.
    async fn verify_due_locked(&self) -> Result<Vec<Verification>, EngineError> {
        let now = self.ctx.clock.now().trunc_subsecs(6);
        let admin = system_admin()?;
        let last: BTreeMap<Check, Verification> = self
            .ctx
            .store
            .verifications()
            .await?
            .into_iter()
            .map(|v| (v.check, v))
            .collect();
        let mut ran = Vec::new();
        for (check, every) in self.scheduled() {
            if last.get(&check).is_some_and(|v| now - v.at < every) {
                continue;
            }
            let failure = match self.verify(check, &admin, now).await {
                Ok(failure) => failure,
                Err(e) => Some(format!("could not run: {e}")),
            };
            if let Some(f) = &failure {
                tracing::error!(check = check.as_str(), failure = %f, "a scheduled verification failed");
            }
            let run = Verification {
                check,
                at: now,
                failure,
            };
            self.ctx.store.record_verification(&run).await?;
            ran.push(run);
        }
        Ok(ran)
    }

    /// The latest run of each verification a rule asks for.
    async fn verified(&self) -> Result<Vec<Verification>, EngineError> {
        let due = self.scheduled();
        Ok(self
            .ctx
            .store
            .verifications()
            .await?
            .into_iter()
            .filter(|v| due.contains_key(&v.check))
            .collect())
    }

    /// One verification: what failed, in words, or None.
    async fn verify(
        &self,
        check: Check,
        admin: &AdminScope,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, EngineError> {
        Ok(match check {
            Check::AuditChain => {
                let audit = AuditRecord {
                    at: now,
                    request_id: format!("alerts-{}", now.timestamp_millis()),
                    actor: Principal::system().actor().to_string(),
                    company_id: None,
                    action: "audit.verify".into(),
                    target: "audit".into(),
                    outcome: Outcome::Ok,
                    detail: "scheduled verification".into(),
                };
                let r = self
                    .ctx
                    .store
                    .verify_audit_scheduled(admin, self.config().audit_sweep, audit)
                    .await?;
                match (r.ok, r.first_broken) {
                    (true, _) => None,
                    (false, Some(b)) => Some(format!("entry {}: {}", b.seq, b.reason)),
                    (false, None) => Some("the chain does not verify".into()),
                }
            }
            Check::Ledger => {
                let r = self.ctx.store.verify_ledger(admin).await?;
                if r.ok {
                    None
                } else {
                    let shown: Vec<_> = r.differences.iter().take(3).cloned().collect();
                    let more = r.differences.len().saturating_sub(shown.len());
                    let mut text = shown.join("; ");
                    if more > 0 {
                        text.push_str(&format!("; and {more} more"));
                    }
                    if text.is_empty() {
                        text = "the ledger does not match the balances".into();
                    }
                    Some(text)
                }
            }
        })
    }

    /// The channels an audience is reached by, for this alert.
    fn channels(
        &self,
        alert: &Alert,
        audience: &Audience,
        directory: &HashMap<String, Company>,
    ) -> Vec<Box<dyn Channel>> {
        let unavailable = |kind: &'static str, target: String, why: &str| -> Box<dyn Channel> {
            Box::new(Unavailable {
                kind,
                target,
                why: why.into(),
            })
        };
        match audience {
            Audience::Team(name) => match self.config().teams.get(name) {
                Some(specs) if !specs.is_empty() => {
                    specs.iter().map(|s| self.channel(s, name)).collect()
                }
                // A team with no channels still hears it in the log.
                _ => vec![Box::new(LogChannel {
                    team: Some(name.clone()),
                })],
            },
            Audience::CompanyContact => {
                let Some(company) = alert.company() else {
                    return vec![];
                };
                let contact = directory
                    .get(company.as_str())
                    .and_then(|c| c.profile.contacts.first());
                match contact {
                    Some(c) if c.webhook.is_some() => vec![Box::new(WebhookChannel::company(
                        self.company_http.clone(),
                        c.webhook.clone().unwrap_or_default(),
                        self.ctx.config.tools.outbound.clone(),
                    ))],
                    Some(c) if c.email.is_some() => {
                        vec![self.email(vec![c.email.clone().unwrap_or_default()])]
                    }
                    _ => vec![unavailable(
                        "contact",
                        format!("company:{company}"),
                        "the company's profile names no contact",
                    )],
                }
            }
        }
    }

    /// A team's channel as configured.
    fn channel(&self, spec: &ChannelSpec, team: &str) -> Box<dyn Channel> {
        match spec {
            ChannelSpec::Log => Box::new(LogChannel {
                team: Some(team.to_owned()),
            }),
            ChannelSpec::Webhook { url, format } => {
                Box::new(WebhookChannel::new(self.http.clone(), url.clone(), *format))
            }
            ChannelSpec::Email { to } => self.email(to.clone()),
            ChannelSpec::Alertmanager { url } => {
                Box::new(AlertmanagerChannel::new(self.http.clone(), url.clone()))
            }
        }
    }

    /// Email to `to` through `[alerts.smtp]`, or why it cannot be sent.
    fn email(&self, to: Vec<String>) -> Box<dyn Channel> {
        match &self.smtp {
            Some(Ok((transport, from))) => Box::new(EmailChannel {
                transport: transport.clone(),
                from: from.clone(),
                to,
            }),
            Some(Err(why)) => Box::new(Unavailable {
                kind: "email",
                target: to.join(", "),
                why: why.clone(),
            }),
            None => Box::new(Unavailable {
                kind: "email",
                target: to.join(", "),
                why: "no [alerts.smtp] is configured".into(),
            }),
        }
    }

    /// Sends one notice about `alerts` (one group: one rule, and for a
    /// company's contact one company) to every target of `who`, each with
    /// retries and backoff; every attempt returned for the record, once per
    /// alert.
    async fn deliver(
        &self,
        alerts: &[Alert],
        notice: NoticeKind,
        who: &Audience,
        directory: &HashMap<String, Company>,
    ) -> Vec<NotificationAttempt> {
        let cfg = self.config();
        let mut out = Vec::new();
        let Some(first) = alerts.first() else {
            return out;
        };
        let message = Message {
            notice,
            audience: match who {
                Audience::Team(t) => format!("team:{t}"),
                Audience::CompanyContact => "company_contact".into(),
            },
            alert: first,
            alerts: alerts.iter().collect(),
            text: Message::group_line(alerts, notice),
            at: self.ctx.clock.now(),
            active_for: cfg.repeat_interval + cfg.evaluate_interval * 2,
        };
        for channel in self.channels(first, who, directory) {
            let mut wait = cfg.retry_backoff;
            for attempt in 1..=cfg.delivery_attempts {
                let sent = channel.send(&message).await;
                let failed = sent.is_err();
                let at = self.ctx.clock.now().trunc_subsecs(6);
                for alert in alerts {
                    out.push(NotificationAttempt {
                        alert_id: alert.id,
                        company_id: alert.company().cloned(),
                        notice,
                        channel: channel.kind().into(),
                        target: channel.target(),
                        attempt: attempt as i32,
                        at,
                        outcome: if failed {
                            Delivery::Failed
                        } else {
                            Delivery::Sent
                        },
                        error: sent.clone().err(),
                    });
                }
                // An unavailable channel is not retried: it cannot change.
                if !failed || attempt == cfg.delivery_attempts || !channel.retries() {
                    break;
                }
                tokio::time::sleep(wait).await;
                wait = wait.saturating_mul(2);
            }
        }
        out
    }

    /// Runs `evaluate` every `[alerts] evaluate_interval` and, beside it
    /// (so an evaluation never waits for one), the scheduled
    /// verifications' job, which looks for what is due as often; both
    /// until `shutdown`.
    pub fn start_jobs(self: &Arc<Self>, shutdown: Shutdown) -> JoinHandle<()> {
        let every = self
            .config()
            .evaluate_interval
            .to_std()
            .unwrap_or(Duration::from_secs(30));
        let verifier = {
            let alerts = self.clone();
            tokio::spawn(repeat_until(
                every,
                shutdown.clone(),
                "the scheduled verifications could not run",
                move || {
                    let alerts = alerts.clone();
                    async move { alerts.verify_due().await }
                },
            ))
        };
        let alerts = self.clone();
        tokio::spawn(async move {
            repeat_until(every, shutdown, "alert evaluation failed", move || {
                let alerts = alerts.clone();
                async move { alerts.evaluate().await }
            })
            .await;
            let _ = verifier.await;
        })
    }

    // ---- what the API serves ----

    /// Alerts, newest first: every alert for the admin, the company's own
    /// for its key.
    pub async fn list(
        &self,
        who: AlertReader<'_>,
        filter: &AlertFilter,
    ) -> Result<Vec<Alert>, EngineError> {
        Ok(self.ctx.store.list_alerts(who, filter).await?)
    }

    /// An alert and its notification attempts.
    pub async fn get(&self, who: AlertReader<'_>, id: Uuid) -> Result<AlertDetail, EngineError> {
        Ok(self.ctx.store.get_alert(who, id).await?)
    }

    /// Someone is on it: no escalation, no repeats.
    pub async fn acknowledge(
        &self,
        who: AlertReader<'_>,
        id: Uuid,
        by: &str,
        audit: AuditRecord,
    ) -> Result<Alert, EngineError> {
        let now = self.ctx.clock.now().trunc_subsecs(6);
        let audit = AuditRecord {
            detail: format!("alert {id} acknowledged"),
            ..audit
        };
        Ok(self
            .ctx
            .store
            .acknowledge_alert(who, id, by, now, audit)
            .await?)
    }

    /// Closes an alert; if its condition still holds, the next evaluation
    /// opens a new one.
    pub async fn resolve(
        &self,
        who: AlertReader<'_>,
        id: Uuid,
        by: &str,
        audit: AuditRecord,
    ) -> Result<Alert, EngineError> {
        let now = self.ctx.clock.now().trunc_subsecs(6);
        let audit = AuditRecord {
            detail: format!("alert {id} resolved"),
            ..audit
        };
        Ok(self
            .ctx
            .store
            .resolve_alert(who, id, by, now, audit)
            .await?)
    }

    /// Silences (admin): live ones, or all with `expired`.
    pub async fn silences(
        &self,
        admin: &AdminScope,
        expired: bool,
    ) -> Result<Vec<Silence>, EngineError> {
        let now = self.ctx.clock.now();
        Ok(self.ctx.store.list_silences(admin, now, expired).await?)
    }

    /// Holds back the notifications of matching alerts (admin).
    pub async fn silence(
        &self,
        admin: &AdminScope,
        new: NewSilence,
        by: &str,
        audit: AuditRecord,
    ) -> Result<Silence, EngineError> {
        let now = self.ctx.clock.now().trunc_subsecs(6);
        let silence = Silence {
            id: Uuid::now_v7(),
            matchers: new.matchers,
            starts_at: new.starts_at.unwrap_or(now).trunc_subsecs(6),
            ends_at: new.ends_at.trunc_subsecs(6),
            created_by: by.to_owned(),
            comment: new.comment.trim().to_owned(),
            created_at: now,
        };
        silence.validate(now)?;
        let audit = AuditRecord {
            target: format!("silence:{}", silence.id),
            detail: format!("until {}", silence.ends_at.to_rfc3339()),
            ..audit
        };
        Ok(self
            .ctx
            .store
            .create_silence(admin, &silence, audit)
            .await?)
    }

    /// Ends a silence now (admin); kept for the record.
    pub async fn unsilence(
        &self,
        admin: &AdminScope,
        id: Uuid,
        audit: AuditRecord,
    ) -> Result<Silence, EngineError> {
        let now = self.ctx.clock.now().trunc_subsecs(6);
        Ok(self.ctx.store.end_silence(admin, id, now, audit).await?)
    }
}

/// Runs `job` now and then every `every` until `shutdown`, logging a
/// failure as `what` (the next run still comes).
async fn repeat_until<T, F, Fut>(
    every: Duration,
    shutdown: Shutdown,
    what: &'static str,
    mut job: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, EngineError>>,
{
    loop {
        if let Err(e) = job().await {
            tracing::error!(error = %e, "{what}");
        }
        tokio::select! {
            () = shutdown.wait() => break,
            () = tokio::time::sleep(every) => {}
        }
    }
}
