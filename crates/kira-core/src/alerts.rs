//! Alerts (issue 22, SEED 6.1 and 6.2): the rules and their defaults, what
//! each rule observes in the facts the evaluator gathered, and the alert
//! state machine with its routing: pending -> firing (after the rule's
//! `for`) -> acknowledged -> resolved, one open alert per rule and
//! subject, a repeat interval, an escalation schedule per rule kind that an
//! acknowledgement stops, and silences that hold notifications back but
//! keep the alert. Pure: every function takes `now`.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::budget::{Period, projected_period_use};
use crate::metrics::Rollup;
use crate::{CompanyId, ValidationError};

/// How loud an alert is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        Some(match s {
            "info" => Severity::Info,
            "warning" => Severity::Warning,
            "critical" => Severity::Critical,
            _ => return None,
        })
    }
}

/// What a rule watches; routing is per kind (SEED 6.2).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    SlaViolation,
    ResourceExhaustion,
    Budget,
    Security,
    ErrorRate,
    StuckQueue,
    ReviewBacklog,
    /// A model provider answering nothing but errors.
    ProviderFailing,
}

impl RuleKind {
    pub const ALL: [RuleKind; 8] = [
        RuleKind::SlaViolation,
        RuleKind::ResourceExhaustion,
        RuleKind::Budget,
        RuleKind::Security,
        RuleKind::ErrorRate,
        RuleKind::StuckQueue,
        RuleKind::ReviewBacklog,
        RuleKind::ProviderFailing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::SlaViolation => "sla_violation",
            RuleKind::ResourceExhaustion => "resource_exhaustion",
            RuleKind::Budget => "budget",
            RuleKind::Security => "security",
            RuleKind::ErrorRate => "error_rate",
            RuleKind::StuckQueue => "stuck_queue",
            RuleKind::ReviewBacklog => "review_backlog",
            RuleKind::ProviderFailing => "provider_failing",
        }
    }

    pub fn parse(s: &str) -> Option<RuleKind> {
        RuleKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// What an alert is about. A pool is a part of the system: each of the
/// three has its own alert. A key (by its id, never its token) and a
/// client address are the subjects of a burst of authentication failures.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subject {
    System,
    Pool(String),
    Company(CompanyId),
    Agent(String),
    Provider(String),
    Key(String),
    Address(String),
}

impl Subject {
    /// `system`, `pool:base`, `company:acme`, `agent:legal`,
    /// `provider:openai`, `key:k3v9x2m4q8ab`, `address:203.0.113.9`.
    pub fn key(&self) -> String {
        match self {
            Subject::System => "system".into(),
            Subject::Pool(p) => format!("pool:{p}"),
            Subject::Company(c) => format!("company:{c}"),
            Subject::Agent(a) => format!("agent:{a}"),
            Subject::Provider(p) => format!("provider:{p}"),
            Subject::Key(k) => format!("key:{k}"),
            Subject::Address(a) => format!("address:{a}"),
        }
    }

    pub fn parse(s: &str) -> Option<Subject> {
        if s == "system" {
            return Some(Subject::System);
        }
        let (kind, name) = s.split_once(':')?;
        if name.is_empty() {
            return None;
        }
        Some(match kind {
            "pool" => Subject::Pool(name.into()),
            "company" => Subject::Company(CompanyId::parse(name).ok()?),
            "agent" => Subject::Agent(name.into()),
            "provider" => Subject::Provider(name.into()),
            "key" => Subject::Key(name.into()),
            "address" => Subject::Address(name.into()),
            _ => return None,
        })
    }

    /// The company whose data this alert is, if any.
    pub fn company(&self) -> Option<&CompanyId> {
        match self {
            Subject::Company(c) => Some(c),
            _ => None,
        }
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key())
    }
}

/// A rule's condition and its thresholds; each names the subjects it
/// looks at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Condition {
    /// A company's p95 response time over its `sla_response_seconds`
    /// across the window (runs that ended in it).
    SlaP95 { window_seconds: i64 },
    /// A pool used faster than `ratio` of its capacity per period: at the
    /// rate so far, more than `ratio` x capacity by the period's end.
    PoolPace { ratio: f64 },
    /// A pool's remaining tokens below `below` of its capacity.
    PoolRemaining { below: f64 },
    /// A company's base spending past `fraction` of its allocation.
    AllocationUsed { fraction: f64 },
    /// A company projected, at its burn rate so far, to spend more than its
    /// allocation before the period ends (SEED's predictive alerting).
    ProjectedOverrun,
    /// A company in overdraft.
    Overdraft,
    /// A company's emergency request waiting for a decision.
    EmergencyWaiting,
    /// More than `above` denied cross-company reads in the window.
    DeniedReads { above: u64, window_seconds: i64 },
    /// A company's failed share of its ended runs above `above` in the
    /// window, once at least `min_runs` ended.
    ErrorRate {
        above: f64,
        window_seconds: i64,
        min_runs: i64,
    },
    /// The oldest runnable task waiting longer than this.
    StuckQueue { longer_than_seconds: i64 },
    /// A company's results waiting for review above `above`.
    ReviewBacklog { above: i64 },
    /// More than `above` authentication failures in the window for one
    /// key id (a token naming it with a wrong secret, or revoked) or from
    /// one client address.
    AuthFailures { above: u64, window_seconds: i64 },
    /// `audit verify` failing: the evaluator walks the audit chain at most
    /// every `every_minutes`.
    AuditVerify { every_minutes: i64 },
    /// `budget verify` failing: the evaluator replays the token ledger
    /// against the balances at most every `every_minutes`.
    BudgetVerify { every_minutes: i64 },
    /// A provider's failed share of its calls above `above` in the
    /// window, once at least `min_calls` were made.
    ProviderErrorRate {
        above: f64,
        window_seconds: i64,
        min_calls: u64,
    },
    /// A provider failing: its last `errors_in_a_row` calls all errors
    /// (after their retries and fallbacks).
    ProviderFailing { errors_in_a_row: u64 },
}

/// What the evaluator checks on a schedule of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Check {
    /// The audit log's hash chain (`kira audit verify`).
    AuditChain,
    /// The token ledger's replay against the balances (`kira budget verify`).
    Ledger,
}

impl Check {
    pub fn as_str(self) -> &'static str {
        match self {
            Check::AuditChain => "audit verify",
            Check::Ledger => "budget verify",
        }
    }

    pub fn parse(s: &str) -> Option<Check> {
        [Check::AuditChain, Check::Ledger]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

impl Condition {
    pub fn kind(&self) -> RuleKind {
        match self {
            Condition::SlaP95 { .. } => RuleKind::SlaViolation,
            Condition::PoolPace { .. } | Condition::PoolRemaining { .. } => {
                RuleKind::ResourceExhaustion
            }
            Condition::AllocationUsed { .. }
            | Condition::ProjectedOverrun
            | Condition::Overdraft
            | Condition::EmergencyWaiting => RuleKind::Budget,
            Condition::DeniedReads { .. }
            | Condition::AuthFailures { .. }
            | Condition::AuditVerify { .. }
            | Condition::BudgetVerify { .. } => RuleKind::Security,
            Condition::ErrorRate { .. } | Condition::ProviderErrorRate { .. } => {
                RuleKind::ErrorRate
            }
            Condition::ProviderFailing { .. } => RuleKind::ProviderFailing,
            Condition::StuckQueue { .. } => RuleKind::StuckQueue,
            Condition::ReviewBacklog { .. } => RuleKind::ReviewBacklog,
        }
    }

    /// The longest stretch of history it reads (metrics, samples).
    pub fn window(&self) -> TimeDelta {
        match self {
            Condition::SlaP95 { window_seconds }
            | Condition::DeniedReads { window_seconds, .. }
            | Condition::AuthFailures { window_seconds, .. }
            | Condition::ProviderErrorRate { window_seconds, .. }
            | Condition::ErrorRate { window_seconds, .. } => TimeDelta::seconds(*window_seconds),
            _ => TimeDelta::zero(),
        }
    }

    /// What the evaluator must verify for this condition, and at most how
    /// often.
    pub fn verification(&self) -> Option<(Check, TimeDelta)> {
        match self {
            Condition::AuditVerify { every_minutes } => {
                Some((Check::AuditChain, TimeDelta::minutes(*every_minutes)))
            }
            Condition::BudgetVerify { every_minutes } => {
                Some((Check::Ledger, TimeDelta::minutes(*every_minutes)))
            }
            _ => None,
        }
    }

    fn validate(&self) -> Result<(), ValidationError> {
        let day = 86_400 * 31;
        let fraction = |f: &str, v: f64, max: f64| {
            if v.is_finite() && v > 0.0 && v <= max {
                Ok(())
            } else {
                Err(ValidationError::new(f, format!("must be in (0, {max}]")))
            }
        };
        let seconds = |f: &str, v: i64| {
            if (1..=day).contains(&v) {
                Ok(())
            } else {
                Err(ValidationError::new(
                    f,
                    format!("must be between 1 and {day}"),
                ))
            }
        };
        match self {
            Condition::SlaP95 { window_seconds } => seconds("window_seconds", *window_seconds),
            Condition::PoolPace { ratio } => fraction("ratio", *ratio, 10.0),
            Condition::PoolRemaining { below } => fraction("below", *below, 1.0),
            Condition::AllocationUsed { fraction: f } => fraction("fraction", *f, 10.0),
            Condition::DeniedReads { window_seconds, .. } => {
                seconds("window_seconds", *window_seconds)
            }
            Condition::ErrorRate {
                above,
                window_seconds,
                min_runs,
            } => {
                fraction("above", *above, 1.0)?;
                if *min_runs < 1 {
                    return Err(ValidationError::new("min_runs", "must be at least 1"));
                }
                seconds("window_seconds", *window_seconds)
            }
            Condition::StuckQueue {
                longer_than_seconds,
            } => seconds("longer_than_seconds", *longer_than_seconds),
            Condition::ReviewBacklog { above } if *above < 0 => {
                Err(ValidationError::new("above", "must not be negative"))
            }
            Condition::AuthFailures { window_seconds, .. } => {
                seconds("window_seconds", *window_seconds)
            }
            Condition::AuditVerify { every_minutes }
            | Condition::BudgetVerify { every_minutes } => {
                if (1..=10_080).contains(every_minutes) {
                    Ok(())
                } else {
                    Err(ValidationError::new(
                        "every_minutes",
                        "must be between 1 and 10080 (a week)",
                    ))
                }
            }
            Condition::ProviderErrorRate {
                above,
                window_seconds,
                min_calls,
            } => {
                fraction("above", *above, 1.0)?;
                if *min_calls < 1 {
                    return Err(ValidationError::new("min_calls", "must be at least 1"));
                }
                seconds("window_seconds", *window_seconds)
            }
            Condition::ProviderFailing { errors_in_a_row } if *errors_in_a_row < 1 => Err(
                ValidationError::new("errors_in_a_row", "must be at least 1"),
            ),
            _ => Ok(()),
        }
    }
}

/// An alert rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub severity: Severity,
    /// How long the condition must hold before the alert fires.
    pub for_duration: TimeDelta,
    pub labels: BTreeMap<String, String>,
    pub condition: Condition,
}

impl Rule {
    pub fn kind(&self) -> RuleKind {
        self.condition.kind()
    }

    /// Checks the name, the `for` duration, labels and thresholds; errors
    /// name the field under the rule.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let under = |e: ValidationError| e.under(&self.name);
        let ok_name = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !ok_name {
            return Err(ValidationError::new(
                "name",
                "must be 1-64 of a-z, 0-9 and _",
            ));
        }
        if self.for_duration < TimeDelta::zero() || self.for_duration > TimeDelta::days(1) {
            return Err(under(ValidationError::new(
                "for_seconds",
                "must be between 0 and 86400",
            )));
        }
        if self.labels.len() > 16
            || self
                .labels
                .iter()
                .any(|(k, v)| k.is_empty() || k.len() > 64 || v.len() > 200)
        {
            return Err(under(ValidationError::new(
                "labels",
                "at most 16, names of 1-64 and values of at most 200 bytes",
            )));
        }
        self.condition.validate().map_err(under)
    }
}

impl Rule {
    /// A rule without labels that fires after `for_seconds`.
    pub fn new(name: &str, severity: Severity, for_seconds: i64, condition: Condition) -> Self {
        Self {
            name: name.into(),
            severity,
            for_duration: TimeDelta::seconds(for_seconds),
            labels: BTreeMap::new(),
            condition,
        }
    }
}

fn rule(name: &str, severity: Severity, for_seconds: i64, condition: Condition) -> Rule {
    Rule::new(name, severity, for_seconds, condition)
}

/// How far back the per-second counts (denied reads, authentication
/// failures, provider calls) are kept: the longest window a rule reads,
/// and 5 minutes more (the counts of other processes arrive up to a
/// roll-up interval late).
pub fn counts_kept(rules: &[Rule]) -> TimeDelta {
    let longest = rules
        .iter()
        .map(|r| r.condition.window())
        .max()
        .unwrap_or_default();
    longest + TimeDelta::minutes(5)
}

/// SEED 6.1's alerts, with kira's thresholds.
pub fn default_rules() -> Vec<Rule> {
    use Severity::{Critical, Warning};
    vec![
        rule(
            "sla_violation",
            Warning,
            300,
            Condition::SlaP95 {
                window_seconds: 3_600,
            },
        ),
        rule(
            "pool_burn_rate",
            Warning,
            600,
            Condition::PoolPace { ratio: 0.9 },
        ),
        rule(
            "pool_low",
            Critical,
            0,
            Condition::PoolRemaining { below: 0.1 },
        ),
        rule(
            "budget_80",
            Warning,
            0,
            Condition::AllocationUsed { fraction: 0.8 },
        ),
        rule(
            "budget_100",
            Critical,
            0,
            Condition::AllocationUsed { fraction: 1.0 },
        ),
        rule(
            "budget_projected",
            Warning,
            3_600,
            Condition::ProjectedOverrun,
        ),
        rule("budget_overdraft", Critical, 0, Condition::Overdraft),
        rule("emergency_waiting", Warning, 0, Condition::EmergencyWaiting),
        rule(
            "denied_reads",
            Critical,
            0,
            Condition::DeniedReads {
                above: 10,
                window_seconds: 300,
            },
        ),
        rule(
            "error_rate",
            Warning,
            300,
            Condition::ErrorRate {
                above: 0.2,
                window_seconds: 900,
                min_runs: 10,
            },
        ),
        rule(
            "stuck_queue",
            Warning,
            0,
            Condition::StuckQueue {
                longer_than_seconds: 900,
            },
        ),
        rule(
            "review_backlog",
            Warning,
            600,
            Condition::ReviewBacklog { above: 20 },
        ),
        rule(
            "auth_failures",
            Critical,
            0,
            Condition::AuthFailures {
                above: 20,
                window_seconds: 300,
            },
        ),
        rule(
            "audit_verify",
            Critical,
            0,
            Condition::AuditVerify { every_minutes: 60 },
        ),
        rule(
            "budget_verify",
            Critical,
            0,
            Condition::BudgetVerify { every_minutes: 60 },
        ),
        rule(
            "provider_error_rate",
            Warning,
            300,
            Condition::ProviderErrorRate {
                above: 0.2,
                window_seconds: 900,
                min_calls: 10,
            },
        ),
        rule(
            "provider_failing",
            Critical,
            0,
            Condition::ProviderFailing { errors_in_a_row: 5 },
        ),
    ]
}

// ---- facts and observations ----

/// A pool's state this period.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolFacts {
    pub pool: String,
    pub capacity: i64,
    /// Reserved plus spent.
    pub used: i64,
}

/// One company's state.
#[derive(Debug, Clone, PartialEq)]
pub struct CompanyFacts {
    pub id: CompanyId,
    pub sla_response_seconds: i64,
    /// Base allocation, and base tokens spent from it.
    pub allocation: i64,
    pub spent: i64,
    pub overdraft: i64,
    pub emergency_waiting: i64,
    pub reviews_waiting: i64,
    /// Its task metrics per minute bucket (any order).
    pub minutes: Vec<(DateTime<Utc>, Rollup)>,
}

impl CompanyFacts {
    fn window(&self, since: DateTime<Utc>) -> Rollup {
        let mut sum = Rollup::default();
        for (_, r) in self.minutes.iter().filter(|(at, _)| *at >= since) {
            sum.add(r);
        }
        sum
    }
}

/// What the evaluator gathered, all at one `now`.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub period: Period,
    pub pools: Vec<PoolFacts>,
    pub companies: Vec<CompanyFacts>,
    /// When the oldest runnable (queued) task started waiting.
    pub oldest_runnable_since: Option<DateTime<Utc>>,
    /// Samples of the denied cross-company reads counter (which only
    /// grows), oldest first.
    pub denied_reads: Vec<(DateTime<Utc>, u64)>,
    /// The authentication failures of the longest window, per second,
    /// key and address.
    pub auth_failures: Vec<AuthFailure>,
    /// The latest outcome of each scheduled verification.
    pub verifications: Vec<Verification>,
    /// Each provider's calls.
    pub providers: Vec<ProviderFacts>,
}

/// Requests refused for want of a valid key or session, from one
/// address naming one key (or none), at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthFailure {
    pub at: DateTime<Utc>,
    /// The key id the token named, if it named one.
    pub key: Option<String>,
    /// The client's address.
    pub address: String,
    /// How many.
    pub count: u64,
}

/// A scheduled verification's latest outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Verification {
    pub check: Check,
    pub at: DateTime<Utc>,
    /// What failed, in words; None: it passed.
    pub failure: Option<String>,
}

/// One provider's calls (every model of it).
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderFacts {
    pub name: String,
    /// Samples of its answered and failed calls counters (which only
    /// grow), oldest first: (at, answered, failed).
    pub samples: Vec<(DateTime<Utc>, u64, u64)>,
    /// Its latest calls that failed, one after the other.
    pub errors_in_a_row: u64,
}

/// A rule's condition holding for a subject now.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub rule: String,
    pub subject: Subject,
    /// The figure compared with the threshold.
    pub value: f64,
    pub summary: String,
}

/// How much a counter grew over the window ending at `now`: the latest
/// sample less the latest one at or before the window's start (or the
/// oldest, when none is that old).
pub fn growth_in_window(
    samples: &[(DateTime<Utc>, u64)],
    window: TimeDelta,
    now: DateTime<Utc>,
) -> u64 {
    let Some(&(_, last)) = samples.last() else {
        return 0;
    };
    let start = now - window;
    let base = samples
        .iter()
        .rev()
        .find(|(at, _)| *at <= start)
        .or(samples.first())
        .map_or(last, |(_, v)| *v);
    last.saturating_sub(base)
}

/// The subjects for which `rule`'s condition holds now.
pub fn observe(rule: &Rule, facts: &Facts, now: DateTime<Utc>) -> Vec<Observation> {
    let seen = |subject: Subject, value: f64, summary: String| Observation {
        rule: rule.name.clone(),
        subject,
        value,
        summary,
    };
    let companies = facts.companies.iter();
    match &rule.condition {
        Condition::SlaP95 { window_seconds } => companies
            .filter_map(|c| {
                let w = c.window(now - TimeDelta::seconds(*window_seconds));
                let p95 = w.response.quantile(0.95)? / 1_000.0;
                (p95 > c.sla_response_seconds as f64).then(|| {
                    seen(
                        Subject::Company(c.id.clone()),
                        p95,
                        format!(
                            "p95 response {p95:.1}s over the SLA of {}s",
                            c.sla_response_seconds
                        ),
                    )
                })
            })
            .collect(),
        Condition::PoolPace { ratio } => facts
            .pools
            .iter()
            .filter(|p| p.capacity > 0)
            .filter_map(|p| {
                let projected = projected_period_use(p.used, &facts.period, now) as f64;
                let pace = projected / p.capacity as f64;
                (pace > *ratio).then(|| {
                    seen(
                        Subject::Pool(p.pool.clone()),
                        pace,
                        format!(
                            "pool {} on pace for {:.0}% of its capacity by the period's end",
                            p.pool,
                            pace * 100.0
                        ),
                    )
                })
            })
            .collect(),
        Condition::PoolRemaining { below } => facts
            .pools
            .iter()
            .filter(|p| p.capacity > 0)
            .filter_map(|p| {
                let left = (p.capacity - p.used).max(0) as f64 / p.capacity as f64;
                (left < *below).then(|| {
                    seen(
                        Subject::Pool(p.pool.clone()),
                        left,
                        format!("pool {} has {:.1}% left", p.pool, left * 100.0),
                    )
                })
            })
            .collect(),
        Condition::AuthFailures {
            above,
            window_seconds,
        } => {
            let since = now - TimeDelta::seconds(*window_seconds);
            let mut counts: BTreeMap<Subject, u64> = BTreeMap::new();
            for f in facts
                .auth_failures
                .iter()
                .filter(|f| f.at > since && f.at <= now)
            {
                if let Some(k) = &f.key {
                    *counts.entry(Subject::Key(k.clone())).or_default() += f.count;
                }
                *counts
                    .entry(Subject::Address(f.address.clone()))
                    .or_default() += f.count;
            }
            counts
                .into_iter()
                .filter(|(_, n)| n > above)
                .map(|(subject, n)| {
                    let summary =
                        format!("{n} authentication failures for {subject} in {window_seconds}s");
                    seen(subject, n as f64, summary)
                })
                .collect()
        }
        Condition::AuditVerify { .. } | Condition::BudgetVerify { .. } => {
            let Some((check, _)) = rule.condition.verification() else {
                return vec![];
            };
            facts
                .verifications
                .iter()
                .filter(|v| v.check == check)
                .filter_map(|v| {
                    let failure = v.failure.as_ref()?;
                    Some(seen(
                        Subject::System,
                        1.0,
                        format!("{} failed: {failure}", check.as_str()),
                    ))
                })
                .collect()
        }
        Condition::ProviderErrorRate {
            above,
            window_seconds,
            min_calls,
        } => facts
            .providers
            .iter()
            .filter_map(|p| {
                let window = TimeDelta::seconds(*window_seconds);
                let series = |f: fn(&(DateTime<Utc>, u64, u64)) -> u64| -> Vec<_> {
                    p.samples.iter().map(|s| (s.0, f(s))).collect()
                };
                let ok = growth_in_window(&series(|s| s.1), window, now);
                let failed = growth_in_window(&series(|s| s.2), window, now);
                let calls = ok + failed;
                let rate = failed as f64 / calls.max(1) as f64;
                (calls >= *min_calls && rate > *above).then(|| {
                    seen(
                        Subject::Provider(p.name.clone()),
                        rate,
                        format!(
                            "{:.0}% of {calls} calls to {} failed in {window_seconds}s",
                            rate * 100.0,
                            p.name
                        ),
                    )
                })
            })
            .collect(),
        Condition::ProviderFailing { errors_in_a_row } => facts
            .providers
            .iter()
            .filter(|p| p.errors_in_a_row >= *errors_in_a_row)
            .map(|p| {
                seen(
                    Subject::Provider(p.name.clone()),
                    p.errors_in_a_row as f64,
                    format!(
                        "the last {} calls to {} all failed",
                        p.errors_in_a_row, p.name
                    ),
                )
            })
            .collect(),
        _ => observe_company(rule, facts, now),
    }
}

fn observe_company(rule: &Rule, facts: &Facts, now: DateTime<Utc>) -> Vec<Observation> {
    let seen = |c: &CompanyFacts, value: f64, summary: String| Observation {
        rule: rule.name.clone(),
        subject: Subject::Company(c.id.clone()),
        value,
        summary,
    };
    let mut out = Vec::new();
    for c in &facts.companies {
        let hit = match &rule.condition {
            Condition::AllocationUsed { fraction } if c.allocation > 0 => {
                let used = c.spent as f64 / c.allocation as f64;
                (used >= *fraction).then(|| {
                    seen(
                        c,
                        used,
                        format!("{:.0}% of the allocation spent", used * 100.0),
                    )
                })
            }
            Condition::ProjectedOverrun if c.allocation > 0 => {
                let projected = projected_period_use(c.spent, &facts.period, now);
                (projected > c.allocation).then(|| {
                    seen(
                        c,
                        projected as f64,
                        format!(
                            "projected to spend {projected} of an allocation of {} by the period's end",
                            c.allocation
                        ),
                    )
                })
            }
            Condition::Overdraft => (c.overdraft > 0).then(|| {
                seen(
                    c,
                    c.overdraft as f64,
                    format!("overdrawn by {} tokens", c.overdraft),
                )
            }),
            Condition::EmergencyWaiting => (c.emergency_waiting > 0).then(|| {
                seen(
                    c,
                    c.emergency_waiting as f64,
                    format!("{} emergency request(s) waiting", c.emergency_waiting),
                )
            }),
            Condition::ErrorRate {
                above,
                window_seconds,
                min_runs,
            } => {
                let w = c.window(now - TimeDelta::seconds(*window_seconds));
                w.error_rate()
                    .filter(|r| *r > *above && w.ended - w.cancelled >= *min_runs)
                    .map(|r| {
                        seen(
                            c,
                            r,
                            format!("{:.0}% of {} runs failed", r * 100.0, w.ended - w.cancelled),
                        )
                    })
            }
            Condition::ReviewBacklog { above } => (c.reviews_waiting > *above).then(|| {
                seen(
                    c,
                    c.reviews_waiting as f64,
                    format!("{} results waiting for review", c.reviews_waiting),
                )
            }),
            _ => None,
        };
        out.extend(hit);
    }
    match &rule.condition {
        Condition::DeniedReads {
            above,
            window_seconds,
        } => {
            let n = growth_in_window(
                &facts.denied_reads,
                TimeDelta::seconds(*window_seconds),
                now,
            );
            if n > *above {
                out.push(Observation {
                    rule: rule.name.clone(),
                    subject: Subject::System,
                    value: n as f64,
                    summary: format!("{n} denied cross-company reads in {window_seconds}s"),
                });
            }
        }
        Condition::StuckQueue {
            longer_than_seconds,
        } => {
            if let Some(since) = facts.oldest_runnable_since {
                let waited = (now - since).num_seconds();
                if waited > *longer_than_seconds {
                    out.push(Observation {
                        rule: rule.name.clone(),
                        subject: Subject::System,
                        value: waited as f64,
                        summary: format!("the oldest runnable task has waited {waited}s"),
                    });
                }
            }
        }
        _ => {}
    }
    out
}

// ---- alerts ----

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// The condition holds, not yet for the rule's `for` duration.
    Pending,
    /// Notified; escalates and repeats until acknowledged or resolved.
    Firing,
    /// Someone is on it: no escalation and no repeats.
    Acknowledged,
    /// The condition cleared, or someone resolved it. Closed for good.
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Acknowledged => "acknowledged",
            AlertState::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<AlertState> {
        Some(match s {
            "pending" => AlertState::Pending,
            "firing" => AlertState::Firing,
            "acknowledged" => AlertState::Acknowledged,
            "resolved" => AlertState::Resolved,
            _ => return None,
        })
    }

    pub fn is_open(self) -> bool {
        self != AlertState::Resolved
    }

    /// Only a firing alert is acknowledged.
    pub fn may_acknowledge(self) -> bool {
        self == AlertState::Firing
    }
}

/// An alert: one rule's condition for one subject, from the first time it
/// was seen to its resolution.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Alert {
    pub id: Uuid,
    pub rule: String,
    pub kind: RuleKind,
    pub severity: Severity,
    /// `system`, `pool:NAME`, `company:ID`, `agent:NAME`, `provider:NAME`.
    #[serde(serialize_with = "subject_key")]
    #[schema(value_type = String)]
    pub subject: Subject,
    pub labels: BTreeMap<String, String>,
    pub state: AlertState,
    /// The latest observation, in words.
    pub summary: String,
    /// The figure behind it.
    pub value: f64,
    /// When the condition was first seen.
    pub started_at: DateTime<Utc>,
    pub fired_at: Option<DateTime<Utc>>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub acknowledged_by: Option<String>,
    pub escalated_at: Option<DateTime<Utc>>,
    /// The last notification sent (a silenced one is not sent).
    pub last_notified_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// Who resolved it; `evaluator` when the condition cleared.
    pub resolved_by: Option<String>,
    pub updated_at: DateTime<Utc>,
    /// Moves on every change; a write names the version it read.
    pub version: i64,
}

fn subject_key<S: serde::Serializer>(s: &Subject, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(&s.key())
}

impl Alert {
    pub fn company(&self) -> Option<&CompanyId> {
        self.subject.company()
    }
}

/// Who a notification is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    /// A team of the configuration, by name.
    Team(String),
    /// The subject company's primary contact (its profile's first).
    CompanyContact,
}

/// Who hears of a kind of alert, and whom it escalates to when nobody
/// acknowledged it in time.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub immediate: Vec<Audience>,
    pub escalation: Vec<Audience>,
    /// None: never escalates.
    pub escalation_delay: Option<TimeDelta>,
}

/// A route per rule kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing(pub BTreeMap<RuleKind, Route>);

impl Default for Routing {
    /// SEED 6.2's routing; the kinds SEED leaves out go to the operator
    /// team (and the company's contact for a company's own figures).
    fn default() -> Self {
        let team = |t: &str| Audience::Team(t.into());
        let route =
            |immediate: Vec<Audience>, escalation: Vec<Audience>, minutes: Option<i64>| Route {
                immediate,
                escalation,
                escalation_delay: minutes.map(TimeDelta::minutes),
            };
        let mut m = BTreeMap::new();
        m.insert(
            RuleKind::SlaViolation,
            route(
                vec![Audience::CompanyContact],
                vec![team("operator")],
                Some(120),
            ),
        );
        m.insert(
            RuleKind::ResourceExhaustion,
            route(
                vec![team("infrastructure"), team("operator")],
                vec![team("executive")],
                Some(30),
            ),
        );
        m.insert(
            RuleKind::Security,
            route(
                vec![team("security"), Audience::CompanyContact],
                vec![team("legal")],
                Some(15),
            ),
        );
        for kind in [
            RuleKind::Budget,
            RuleKind::ErrorRate,
            RuleKind::ReviewBacklog,
        ] {
            m.insert(
                kind,
                route(
                    vec![team("operator"), Audience::CompanyContact],
                    vec![],
                    None,
                ),
            );
        }
        for kind in [RuleKind::StuckQueue, RuleKind::ProviderFailing] {
            m.insert(
                kind,
                route(vec![team("operator"), team("infrastructure")], vec![], None),
            );
        }
        Routing(m)
    }
}

impl Routing {
    pub fn route(&self, kind: RuleKind) -> Route {
        self.0.get(&kind).cloned().unwrap_or(Route {
            immediate: vec![Audience::Team("operator".into())],
            escalation: vec![],
            escalation_delay: None,
        })
    }
}

// ---- silences ----

/// One matcher of a silence: `rule`, `kind`, `severity`, `subject`, or a
/// label's name, equal to `value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Matcher {
    pub name: String,
    pub value: String,
}

impl Matcher {
    pub fn matches(&self, a: &Alert) -> bool {
        let v = self.value.as_str();
        match self.name.as_str() {
            "rule" => a.rule == v,
            "kind" => a.kind.as_str() == v,
            "severity" => a.severity.as_str() == v,
            "subject" => a.subject.key() == v,
            label => a.labels.get(label).is_some_and(|l| l == v),
        }
    }
}

/// Holds back the notifications of the alerts all its matchers match,
/// from `starts_at` until `ends_at`; the alerts themselves go on.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Silence {
    pub id: Uuid,
    pub matchers: Vec<Matcher>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub created_by: String,
    /// Why.
    pub comment: String,
    pub created_at: DateTime<Utc>,
}

impl Silence {
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.starts_at <= now && now < self.ends_at
    }

    pub fn silences(&self, a: &Alert, now: DateTime<Utc>) -> bool {
        self.is_active(now) && self.matchers.iter().all(|m| m.matches(a))
    }

    /// A new silence's fields: at least one matcher (an empty silence
    /// would hold back everything), an end after its start and after now,
    /// a reason.
    pub fn validate(&self, now: DateTime<Utc>) -> Result<(), ValidationError> {
        if self.matchers.is_empty() || self.matchers.len() > 16 {
            return Err(ValidationError::new(
                "matchers",
                "must hold 1 to 16 matchers",
            ));
        }
        for (i, m) in self.matchers.iter().enumerate() {
            if m.name.is_empty() || m.name.len() > 64 || m.value.is_empty() || m.value.len() > 200 {
                return Err(ValidationError::new(
                    format!("matchers.{i}"),
                    "name of 1-64 and value of 1-200 bytes",
                ));
            }
        }
        if self.ends_at <= self.starts_at || self.ends_at <= now {
            return Err(ValidationError::new(
                "ends_at",
                "must be after starts_at and in the future",
            ));
        }
        if self.ends_at - self.starts_at > TimeDelta::days(365) {
            return Err(ValidationError::new(
                "ends_at",
                "at most a year after starts_at",
            ));
        }
        let comment = self.comment.trim();
        if comment.is_empty() || comment.chars().count() > 1_000 {
            return Err(ValidationError::new(
                "comment",
                "must say why, in 1-1000 characters",
            ));
        }
        Ok(())
    }
}

// ---- the state machine ----

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// The alert fired.
    Firing,
    /// Still firing, a repeat interval after the last notification.
    Repeat,
    /// Nobody acknowledged it within the route's delay.
    Escalation,
    /// The condition cleared.
    Resolved,
}

impl NoticeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Firing => "firing",
            NoticeKind::Repeat => "repeat",
            NoticeKind::Escalation => "escalation",
            NoticeKind::Resolved => "resolved",
        }
    }
}

/// A notification to send about an alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub alert_id: Uuid,
    pub kind: NoticeKind,
    pub audience: Vec<Audience>,
    /// The silence holding it back: not sent.
    pub silenced_by: Option<Uuid>,
}

// ---- grouping ----

/// The notices that go out together: one rule's, of one kind, for one
/// audience (Alertmanager's grouping by `alertname`). A company's contact
/// hears of its own company's alerts only, so its groups are per company.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    pub rule: String,
    pub notice: NoticeKind,
    pub audience: Audience,
    /// Set for [`Audience::CompanyContact`] only: the alerts' company.
    pub company: Option<CompanyId>,
}

impl GroupKey {
    pub fn of(alert: &Alert, notice: NoticeKind, audience: &Audience) -> GroupKey {
        GroupKey {
            rule: alert.rule.clone(),
            notice,
            audience: audience.clone(),
            company: match audience {
                Audience::CompanyContact => alert.company().cloned(),
                Audience::Team(_) => None,
            },
        }
    }
}

/// When grouped notices go out (Alertmanager's `group_wait` and
/// `group_interval`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grouping {
    /// How long a group's first notice waits for others to join it.
    pub wait: TimeDelta,
    /// After a group went out, how long its next notices wait, together.
    pub interval: TimeDelta,
}

/// A notice held for its group: the alert it tells of (sent as it stands
/// when the group goes out) and the alert's company, whose data it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub alert_id: Uuid,
    pub company: Option<CompanyId>,
}

impl From<&Alert> for Held {
    fn from(a: &Alert) -> Self {
        Held {
            alert_id: a.id,
            company: a.company().cloned(),
        }
    }
}

impl From<Alert> for Held {
    fn from(a: Alert) -> Self {
        Held::from(&a)
    }
}

/// One group's state: when it last went out and what it holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Group {
    /// When the group last went out.
    pub sent_at: Option<DateTime<Utc>>,
    /// Since when its first held notice waits.
    pub held_since: Option<DateTime<Utc>>,
    /// Its held notices, in the order they were held.
    pub held: Vec<Held>,
}

/// The notices held for their group, and when each group last went out.
/// The store keeps it (every process's evaluator reads and changes the
/// same one); this is its rule.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outbox {
    pub groups: BTreeMap<GroupKey, Group>,
}

impl Outbox {
    /// Holds a notice of `alert` for its group; an alert already held
    /// there stays in its place (it goes out as it stands then). A resolve
    /// notice takes the alert's notices still held for the same audience
    /// out of their groups (they are stale); if its firing notice was
    /// among them, the audience never heard of it, and is not told it
    /// resolved either.
    pub fn hold(&mut self, key: GroupKey, alert: impl Into<Held>, now: DateTime<Utc>) {
        let alert = alert.into();
        if key.notice == NoticeKind::Resolved {
            let mut unheard = false;
            for (k, g) in &mut self.groups {
                let same = k.rule == key.rule
                    && k.audience == key.audience
                    && k.company == key.company
                    && k.notice != NoticeKind::Resolved;
                if !same {
                    continue;
                }
                let before = g.held.len();
                g.held.retain(|a| a.alert_id != alert.alert_id);
                if g.held.len() != before && k.notice == NoticeKind::Firing {
                    unheard = true;
                }
                if g.held.is_empty() {
                    g.held_since = None;
                }
            }
            if unheard {
                return;
            }
        }
        let g = self.groups.entry(key).or_default();
        g.held_since.get_or_insert(now);
        if !g.held.iter().any(|a| a.alert_id == alert.alert_id) {
            g.held.push(alert);
        }
    }

    /// The groups due at `now`, each with its notices in the order they
    /// were held: a group that never went out once its first notice waited
    /// `wait`; one that did, `interval` after it last went out (and its
    /// first notice waited `wait`). They count as sent now.
    pub fn take_due(&mut self, now: DateTime<Utc>, g: Grouping) -> Vec<(GroupKey, Vec<Held>)> {
        let mut out = Vec::new();
        for (key, group) in &mut self.groups {
            let Some(since) = group.held_since else {
                continue;
            };
            let due = now - since >= g.wait && group.sent_at.is_none_or(|t| now - t >= g.interval);
            if due {
                out.push((key.clone(), std::mem::take(&mut group.held)));
                group.held_since = None;
                group.sent_at = Some(now);
            }
        }
        // A group with nothing held that could send at once is forgotten.
        self.groups.retain(|_, group| {
            group.held_since.is_some() || group.sent_at.is_some_and(|t| now - t < g.interval)
        });
        out
    }

    /// Notices held, over every group.
    pub fn held(&self) -> usize {
        self.groups.values().map(|g| g.held.len()).sum()
    }
}

/// Whether a held notice still goes out when its group is due, by what
/// happened to its alert meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    Send,
    /// A silence matches the alert now: held back, as a silence holds
    /// back a notice at evaluation.
    Silenced(Uuid),
    /// Its alert was resolved (a resolve notice goes out on its own), or
    /// acknowledged: someone is on it, so neither a firing notice nor a
    /// repeat nor an escalation is sent any more.
    Stale,
}

/// [`Due`] for a notice of `kind` about `alert` as it stands `now`.
pub fn still_due(kind: NoticeKind, alert: &Alert, silences: &[Silence], now: DateTime<Utc>) -> Due {
    let stale = match kind {
        NoticeKind::Resolved => alert.state != AlertState::Resolved,
        _ => alert.state != AlertState::Firing,
    };
    if stale {
        return Due::Stale;
    }
    match silences.iter().find(|s| s.silences(alert, now)) {
        Some(s) => Due::Silenced(s.id),
        None => Due::Send,
    }
}

/// What one evaluation changes: alerts to insert and to update (each at
/// the version it was read), and the notifications of those changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub new: Vec<Alert>,
    pub changed: Vec<Alert>,
    pub notices: Vec<Notice>,
}

/// What [`plan`] works with beside the alerts.
#[derive(Debug, Clone)]
pub struct Policy<'a> {
    pub rules: &'a [Rule],
    pub routing: &'a Routing,
    /// Between two notifications of a firing alert.
    pub repeat_interval: TimeDelta,
    pub silences: &'a [Silence],
}

fn union(a: &[Audience], b: &[Audience]) -> Vec<Audience> {
    let set: BTreeSet<Audience> = a.iter().chain(b).cloned().collect();
    set.into_iter().collect()
}

/// One evaluation: `open` are the open alerts as stored (at most one per
/// rule and subject), `observed` the conditions holding now.
pub fn plan(
    policy: &Policy<'_>,
    open: &[Alert],
    observed: &[Observation],
    now: DateTime<Utc>,
    mut new_id: impl FnMut() -> Uuid,
) -> Plan {
    let mut seen: BTreeMap<(String, Subject), &Observation> = BTreeMap::new();
    for o in observed {
        // Two observations of one rule and subject are one alert.
        seen.entry((o.rule.clone(), o.subject.clone())).or_insert(o);
    }
    let mut out = Plan::default();
    let mut have: BTreeSet<(String, Subject)> = BTreeSet::new();
    for a in open.iter().filter(|a| a.state.is_open()) {
        let key = (a.rule.clone(), a.subject.clone());
        if !have.insert(key.clone()) {
            continue;
        }
        let rule = policy.rules.iter().find(|r| r.name == a.rule);
        let obs = rule.and_then(|_| seen.get(&key).copied());
        step(policy, &mut out, a, rule, obs, now);
    }
    for ((rule_name, subject), o) in seen {
        if have.contains(&(rule_name.clone(), subject.clone())) {
            continue;
        }
        let Some(rule) = policy.rules.iter().find(|r| r.name == rule_name) else {
            continue;
        };
        let a = Alert {
            id: new_id(),
            rule: rule.name.clone(),
            kind: rule.kind(),
            severity: rule.severity,
            subject,
            labels: rule.labels.clone(),
            state: AlertState::Pending,
            summary: o.summary.clone(),
            value: o.value,
            started_at: now,
            fired_at: None,
            acknowledged_at: None,
            acknowledged_by: None,
            escalated_at: None,
            last_notified_at: None,
            resolved_at: None,
            resolved_by: None,
            updated_at: now,
            version: 0,
        };
        let mut fresh = Plan::default();
        step(policy, &mut fresh, &a, Some(rule), Some(o), now);
        // A zero `for` fires at once: the new alert is the changed one.
        out.new.push(fresh.changed.pop().unwrap_or(a));
        out.notices.extend(fresh.notices);
    }
    out
}

/// One open alert's step; a change goes to `out.changed` at the version
/// read, its notices beside it.
fn step(
    policy: &Policy<'_>,
    out: &mut Plan,
    a: &Alert,
    rule: Option<&Rule>,
    obs: Option<&Observation>,
    now: DateTime<Utc>,
) {
    let route = policy.routing.route(a.kind);
    let silence = policy
        .silences
        .iter()
        .find(|s| s.silences(a, now))
        .map(|s| s.id);
    let mut next = a.clone();
    let mut notices = Vec::new();
    let mut notify = |next: &mut Alert, kind: NoticeKind, audience: Vec<Audience>| {
        if silence.is_none() {
            next.last_notified_at = Some(now);
        }
        notices.push(Notice {
            alert_id: a.id,
            kind,
            audience,
            silenced_by: silence,
        });
    };
    match (a.state, obs, rule) {
        (_, None, _) | (_, _, None) => {
            next.state = AlertState::Resolved;
            next.resolved_at = Some(now);
            next.resolved_by = Some("evaluator".into());
            // A pending alert told nobody, so nobody hears it cleared.
            if a.state != AlertState::Pending && a.last_notified_at.is_some() {
                let mut audience = route.immediate.clone();
                if a.escalated_at.is_some() {
                    audience = union(&audience, &route.escalation);
                }
                notify(&mut next, NoticeKind::Resolved, audience);
            }
        }
        (AlertState::Pending, Some(o), Some(rule)) => {
            next.summary = o.summary.clone();
            next.value = o.value;
            if now - a.started_at >= rule.for_duration {
                next.state = AlertState::Firing;
                next.fired_at = Some(now);
                notify(&mut next, NoticeKind::Firing, route.immediate.clone());
            }
        }
        (AlertState::Firing, Some(o), Some(_)) => {
            next.summary = o.summary.clone();
            next.value = o.value;
            let fired = a.fired_at.unwrap_or(a.started_at);
            let escalate = a.escalated_at.is_none()
                && !route.escalation.is_empty()
                && route.escalation_delay.is_some_and(|d| now - fired >= d);
            if escalate {
                next.escalated_at = Some(now);
                notify(&mut next, NoticeKind::Escalation, route.escalation.clone());
            } else if a
                .last_notified_at
                .is_none_or(|t| now - t >= policy.repeat_interval)
            {
                let mut audience = route.immediate.clone();
                if a.escalated_at.is_some() {
                    audience = union(&audience, &route.escalation);
                }
                let kind = if a.last_notified_at.is_none() {
                    // Held back by a silence until now: this is its first.
                    NoticeKind::Firing
                } else {
                    NoticeKind::Repeat
                };
                notify(&mut next, kind, audience);
            }
        }
        (AlertState::Acknowledged, Some(o), Some(_)) => {
            next.summary = o.summary.clone();
            next.value = o.value;
        }
        (AlertState::Resolved, _, _) => return,
    }
    if next != *a {
        next.updated_at = now;
        out.changed.push(next);
        out.notices.extend(notices);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0)
            .single()
            .expect("time")
    }

    fn acme() -> CompanyId {
        CompanyId::parse("acme").expect("id")
    }

    fn sla_rule(for_seconds: i64) -> Rule {
        rule(
            "sla_violation",
            Severity::Warning,
            for_seconds,
            Condition::SlaP95 {
                window_seconds: 3_600,
            },
        )
    }

    fn seen(subject: Subject) -> Observation {
        Observation {
            rule: "sla_violation".into(),
            subject,
            value: 42.0,
            summary: "slow".into(),
        }
    }

    /// Applies a plan to the stored set, as the store does.
    fn apply(open: &mut Vec<Alert>, p: &Plan) {
        for c in &p.changed {
            let a = open.iter_mut().find(|a| a.id == c.id).expect("known");
            assert_eq!(a.version, c.version, "written at the version read");
            *a = c.clone();
            a.version += 1;
        }
        open.extend(p.new.iter().cloned());
        open.retain(|a| a.state.is_open());
    }

    struct Run {
        rules: Vec<Rule>,
        routing: Routing,
        silences: Vec<Silence>,
        open: Vec<Alert>,
        next: u128,
    }

    impl Run {
        fn new(rules: Vec<Rule>) -> Run {
            Run {
                rules,
                routing: Routing::default(),
                silences: vec![],
                open: vec![],
                next: 1,
            }
        }

        fn eval(&mut self, obs: &[Observation], now: DateTime<Utc>) -> Plan {
            let policy = Policy {
                rules: &self.rules,
                routing: &self.routing,
                repeat_interval: TimeDelta::hours(4),
                silences: &self.silences,
            };
            let next = &mut self.next;
            let p = plan(&policy, &self.open, obs, now, || {
                *next += 1;
                Uuid::from_u128(*next)
            });
            apply(&mut self.open, &p);
            p
        }

        fn ack(&mut self, now: DateTime<Utc>) {
            for a in &mut self.open {
                if a.state.may_acknowledge() {
                    a.state = AlertState::Acknowledged;
                    a.acknowledged_at = Some(now);
                    a.version += 1;
                }
            }
        }
    }

    fn kinds(p: &Plan) -> Vec<NoticeKind> {
        p.notices.iter().map(|n| n.kind).collect()
    }

    #[test]
    fn fires_only_after_its_for_duration() {
        let mut r = Run::new(vec![sla_rule(300)]);
        let o = [seen(Subject::Company(acme()))];
        let p = r.eval(&o, t0());
        assert_eq!(p.new.len(), 1);
        assert_eq!(p.new[0].state, AlertState::Pending);
        assert!(p.notices.is_empty());
        let p = r.eval(&o, t0() + TimeDelta::seconds(299));
        assert!(p.notices.is_empty());
        assert_eq!(r.open[0].state, AlertState::Pending);
        let p = r.eval(&o, t0() + TimeDelta::seconds(300));
        assert_eq!(kinds(&p), [NoticeKind::Firing]);
        assert_eq!(p.notices[0].audience, [Audience::CompanyContact]);
        assert_eq!(r.open[0].state, AlertState::Firing);
        // Cleared while pending: closed, and nobody is told.
        let mut r = Run::new(vec![sla_rule(300)]);
        r.eval(&o, t0());
        let p = r.eval(&[], t0() + TimeDelta::seconds(60));
        assert!(p.notices.is_empty());
        assert_eq!(p.changed[0].state, AlertState::Resolved);
        assert!(r.open.is_empty());
    }

    #[test]
    fn escalates_at_exactly_the_delay_unless_acknowledged() {
        let o = [seen(Subject::Company(acme()))];
        let mut r = Run::new(vec![sla_rule(0)]);
        assert_eq!(kinds(&r.eval(&o, t0())), [NoticeKind::Firing]);
        let before = t0() + TimeDelta::hours(2) - TimeDelta::seconds(1);
        assert!(r.eval(&o, before).notices.is_empty());
        let p = r.eval(&o, t0() + TimeDelta::hours(2));
        assert_eq!(kinds(&p), [NoticeKind::Escalation]);
        assert_eq!(p.notices[0].audience, [Audience::Team("operator".into())]);
        // Once only.
        assert!(r.eval(&o, t0() + TimeDelta::hours(3)).notices.is_empty());
        // Resolved: the company and the operators hear it.
        let p = r.eval(&[], t0() + TimeDelta::hours(3));
        assert_eq!(kinds(&p), [NoticeKind::Resolved]);
        assert_eq!(
            p.notices[0].audience,
            [Audience::Team("operator".into()), Audience::CompanyContact]
        );

        let mut r = Run::new(vec![sla_rule(0)]);
        r.eval(&o, t0());
        r.ack(t0() + TimeDelta::minutes(119));
        for h in [2, 3, 10] {
            assert!(r.eval(&o, t0() + TimeDelta::hours(h)).notices.is_empty());
        }
        assert_eq!(r.open[0].escalated_at, None);
    }

    #[test]
    fn seeds_routes() {
        let r = Routing::default();
        let res = r.route(RuleKind::ResourceExhaustion);
        assert_eq!(res.escalation_delay, Some(TimeDelta::minutes(30)));
        assert_eq!(res.escalation, [Audience::Team("executive".into())]);
        let sec = r.route(RuleKind::Security);
        assert_eq!(sec.escalation_delay, Some(TimeDelta::minutes(15)));
        assert_eq!(
            sec.immediate,
            [Audience::Team("security".into()), Audience::CompanyContact]
        );
        assert_eq!(sec.escalation, [Audience::Team("legal".into())]);
        for r in default_rules() {
            r.validate().expect("default rules are valid");
        }
    }

    #[test]
    fn repeats_every_interval_while_firing() {
        let o = [seen(Subject::Company(acme()))];
        let mut r = Run::new(vec![sla_rule(0)]);
        r.routing
            .0
            .get_mut(&RuleKind::SlaViolation)
            .expect("route")
            .escalation
            .clear();
        r.eval(&o, t0());
        assert!(
            r.eval(&o, t0() + TimeDelta::minutes(239))
                .notices
                .is_empty()
        );
        assert_eq!(
            kinds(&r.eval(&o, t0() + TimeDelta::hours(4))),
            [NoticeKind::Repeat]
        );
        assert!(r.eval(&o, t0() + TimeDelta::hours(5)).notices.is_empty());
        assert_eq!(
            kinds(&r.eval(&o, t0() + TimeDelta::hours(8))),
            [NoticeKind::Repeat]
        );
    }

    #[test]
    fn a_silence_holds_notices_back_and_keeps_the_alert() {
        let o = [seen(Subject::Company(acme()))];
        let mut r = Run::new(vec![sla_rule(0)]);
        r.silences.push(Silence {
            id: Uuid::from_u128(99),
            matchers: vec![Matcher {
                name: "subject".into(),
                value: "company:acme".into(),
            }],
            starts_at: t0(),
            ends_at: t0() + TimeDelta::hours(1),
            created_by: "admin".into(),
            comment: "maintenance".into(),
            created_at: t0(),
        });
        let p = r.eval(&o, t0());
        assert_eq!(p.new[0].state, AlertState::Firing);
        assert_eq!(p.notices[0].silenced_by, Some(Uuid::from_u128(99)));
        assert_eq!(r.open[0].last_notified_at, None);
        // After the silence, the first evaluation sends what was held back.
        let p = r.eval(&o, t0() + TimeDelta::hours(1));
        assert_eq!(kinds(&p), [NoticeKind::Firing]);
        assert_eq!(p.notices[0].silenced_by, None);
        // Another company is not silenced.
        let other = CompanyId::parse("other").expect("id");
        let both = [o[0].clone(), seen(Subject::Company(other))];
        let p = r.eval(&both, t0() + TimeDelta::minutes(90));
        assert_eq!(kinds(&p), [NoticeKind::Firing]);
        assert_eq!(p.notices[0].alert_id, p.new[0].id);
        assert_eq!(p.notices[0].silenced_by, None);
    }

    #[test]
    fn subjects_round_trip() {
        for s in [
            Subject::System,
            Subject::Pool("base".into()),
            Subject::Company(acme()),
            Subject::Agent("legal".into()),
            Subject::Provider("openai".into()),
            Subject::Key("k3v9x2m4q8ab".into()),
            Subject::Address("::1".into()),
            Subject::Address("203.0.113.9".into()),
        ] {
            assert_eq!(Subject::parse(&s.key()), Some(s));
        }
        assert_eq!(Subject::parse("company:"), None);
        assert_eq!(Subject::parse("galaxy:x"), None);
    }

    fn facts() -> Facts {
        let period = crate::budget::period_of(t0());
        Facts {
            period,
            pools: vec![],
            companies: vec![],
            oldest_runnable_since: None,
            denied_reads: vec![],
            auth_failures: vec![],
            verifications: vec![],
            providers: vec![],
        }
    }

    fn company(spent: i64) -> CompanyFacts {
        CompanyFacts {
            id: acme(),
            sla_response_seconds: 30,
            allocation: 1_000,
            spent,
            overdraft: 0,
            emergency_waiting: 0,
            reviews_waiting: 0,
            minutes: vec![],
        }
    }

    #[test]
    fn conditions_read_their_facts() {
        let rules = default_rules();
        let find = |n: &str| rules.iter().find(|r| r.name == n).expect("rule").clone();
        let mut f = facts();
        f.companies.push(company(850));
        let now = t0();
        assert_eq!(observe(&find("budget_80"), &f, now).len(), 1);
        assert!(observe(&find("budget_100"), &f, now).is_empty());
        // Ten days into March, 850 of 1000 spent: on course to overrun.
        assert_eq!(observe(&find("budget_projected"), &f, now).len(), 1);
        // Slow answers in the last hour, none older.
        let mut slow = Rollup {
            ended: 1,
            ..Rollup::default()
        };
        slow.response.observe(60_000);
        f.companies[0]
            .minutes
            .push((now - TimeDelta::minutes(5), slow));
        let o = observe(&find("sla_violation"), &f, now);
        assert_eq!(o[0].subject, Subject::Company(acme()));
        f.companies[0].minutes[0].0 = now - TimeDelta::hours(2);
        assert!(observe(&find("sla_violation"), &f, now).is_empty());
        // A pool a third used a third of the way in is on pace for ~100%.
        f.pools.push(PoolFacts {
            pool: "base".into(),
            capacity: 3_000,
            used: 1_000,
        });
        assert_eq!(observe(&find("pool_burn_rate"), &f, now).len(), 1);
        assert!(observe(&find("pool_low"), &f, now).is_empty());
        f.oldest_runnable_since = Some(now - TimeDelta::minutes(16));
        assert_eq!(observe(&find("stuck_queue"), &f, now).len(), 1);
        f.denied_reads = vec![
            (now - TimeDelta::minutes(10), 5),
            (now - TimeDelta::minutes(6), 6),
            (now, 17),
        ];
        let o = observe(&find("denied_reads"), &f, now);
        assert_eq!(o[0].value, 11.0);
        assert_eq!(o[0].subject, Subject::System);
    }

    #[test]
    fn security_and_provider_conditions_read_their_facts() {
        let rules = default_rules();
        let find = |n: &str| rules.iter().find(|r| r.name == n).expect("rule").clone();
        let now = t0();
        let mut f = facts();
        // 21 failures from one address in 5 minutes, 20 of them naming one
        // key; an older one out of the window; another address's 3.
        let fail = |secs: i64, key: Option<&str>, address: &str| AuthFailure {
            at: now - TimeDelta::seconds(secs),
            key: key.map(str::to_owned),
            address: address.into(),
            count: 1,
        };
        f.auth_failures.push(fail(301, Some("k1"), "203.0.113.9"));
        for i in 0..18 {
            f.auth_failures.push(fail(i, Some("k1"), "203.0.113.9"));
        }
        // Two in one second, counted as one row.
        f.auth_failures.push(AuthFailure {
            count: 2,
            ..fail(18, Some("k1"), "203.0.113.9")
        });
        f.auth_failures.push(fail(0, None, "203.0.113.9"));
        for i in 0..3 {
            f.auth_failures.push(fail(i, None, "198.51.100.1"));
        }
        let rule = find("auth_failures");
        assert_eq!(rule.kind(), RuleKind::Security);
        let o = observe(&rule, &f, now);
        let got: Vec<_> = o.iter().map(|o| (o.subject.key(), o.value)).collect();
        assert_eq!(got, [("address:203.0.113.9".to_owned(), 21.0)]);
        f.auth_failures.push(fail(1, Some("k1"), "198.51.100.1"));
        let o = observe(&rule, &f, now);
        let got: Vec<_> = o.iter().map(|o| (o.subject.key(), o.value)).collect();
        assert_eq!(
            got,
            [
                ("key:k1".to_owned(), 21.0),
                ("address:203.0.113.9".to_owned(), 21.0)
            ]
        );
        // Five minutes on, the burst is over.
        assert!(observe(&rule, &f, now + TimeDelta::minutes(5)).is_empty());

        // A failed verification, named; a passed one observes nothing.
        let audit = find("audit_verify");
        let ledger = find("budget_verify");
        assert_eq!(
            audit.condition.verification(),
            Some((Check::AuditChain, TimeDelta::hours(1)))
        );
        f.verifications = vec![
            Verification {
                check: Check::AuditChain,
                at: now,
                failure: Some("entry 3: hash mismatch".into()),
            },
            Verification {
                check: Check::Ledger,
                at: now,
                failure: None,
            },
        ];
        let o = observe(&audit, &f, now);
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].subject, Subject::System);
        assert_eq!(o[0].summary, "audit verify failed: entry 3: hash mismatch");
        assert!(observe(&ledger, &f, now).is_empty());
        assert_eq!(audit.severity, Severity::Critical);

        // Providers: 3 of 10 calls failed in the last 15 minutes (the
        // calls before do not count); another failing every call lately.
        f.providers = vec![
            ProviderFacts {
                name: "openai".into(),
                samples: vec![
                    (now - TimeDelta::minutes(20), 100, 50),
                    (now - TimeDelta::minutes(15), 100, 50),
                    (now, 107, 53),
                ],
                errors_in_a_row: 1,
            },
            ProviderFacts {
                name: "local".into(),
                samples: vec![(now, 0, 4)],
                errors_in_a_row: 4,
            },
        ];
        let rate = find("provider_error_rate");
        let o = observe(&rate, &f, now);
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].subject, Subject::Provider("openai".into()));
        assert!((o[0].value - 0.3).abs() < 1e-9);
        // Fewer than `min_calls`: no rate to speak of.
        f.providers[0].samples[2] = (now, 104, 53);
        assert!(observe(&rate, &f, now).is_empty());
        let failing = find("provider_failing");
        assert_eq!(failing.kind(), RuleKind::ProviderFailing);
        assert!(observe(&failing, &f, now).is_empty());
        f.providers[1].errors_in_a_row = 5;
        let o = observe(&failing, &f, now);
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].subject, Subject::Provider("local".into()));
        assert_eq!(o[0].summary, "the last 5 calls to local all failed");
    }

    fn an_alert(rule: &str, subject: Subject) -> Alert {
        Alert {
            id: Uuid::now_v7(),
            rule: rule.into(),
            kind: RuleKind::Security,
            severity: Severity::Critical,
            subject,
            labels: BTreeMap::new(),
            state: AlertState::Firing,
            summary: String::new(),
            value: 1.0,
            started_at: t0(),
            fired_at: Some(t0()),
            acknowledged_at: None,
            acknowledged_by: None,
            escalated_at: None,
            last_notified_at: Some(t0()),
            resolved_at: None,
            resolved_by: None,
            updated_at: t0(),
            version: 1,
        }
    }

    #[test]
    fn grouped_notices_wait_then_go_out_together() {
        let g = Grouping {
            wait: TimeDelta::seconds(30),
            interval: TimeDelta::minutes(5),
        };
        let ops = Audience::Team("operator".into());
        let firing = NoticeKind::Firing;
        let a = an_alert("auth_failures", Subject::Key("k1".into()));
        let b = an_alert("auth_failures", Subject::Address("203.0.113.9".into()));
        let c = an_alert("auth_failures", Subject::Address("198.51.100.1".into()));
        let other = an_alert("denied_reads", Subject::System);
        let mut o = Outbox::default();
        let key = GroupKey::of(&a, firing, &ops);
        o.hold(key.clone(), a.clone(), t0());
        o.hold(GroupKey::of(&other, firing, &ops), other.clone(), t0());
        // The first waits `wait` for others to join.
        assert!(o.take_due(t0() + TimeDelta::seconds(29), g).is_empty());
        o.hold(
            GroupKey::of(&b, firing, &ops),
            b.clone(),
            t0() + TimeDelta::seconds(29),
        );
        let due = o.take_due(t0() + TimeDelta::seconds(30), g);
        let ids: Vec<_> = due
            .iter()
            .map(|(k, v)| {
                (
                    k.rule.as_str(),
                    v.iter().map(|a| a.alert_id).collect::<Vec<_>>(),
                )
            })
            .collect();
        assert_eq!(
            ids,
            [
                ("auth_failures", vec![a.id, b.id]),
                ("denied_reads", vec![other.id])
            ]
        );
        // The next of the group waits for the interval since it went out.
        let sent = t0() + TimeDelta::seconds(30);
        o.hold(key.clone(), c.clone(), sent + TimeDelta::minutes(1));
        assert_eq!(o.held(), 1);
        assert!(
            o.take_due(sent + TimeDelta::minutes(5) - TimeDelta::seconds(1), g)
                .is_empty()
        );
        let due = o.take_due(sent + TimeDelta::minutes(5), g);
        assert_eq!(due.len(), 1);
        assert_eq!(
            due[0].1.iter().map(|a| a.alert_id).collect::<Vec<_>>(),
            [c.id]
        );
        assert_eq!(o.held(), 0);
        // Long after, a group starts afresh: `wait` only.
        let later = sent + TimeDelta::hours(1);
        assert!(o.take_due(later, g).is_empty());
        o.hold(key, a.clone(), later);
        assert_eq!(o.take_due(later + TimeDelta::seconds(30), g).len(), 1);
    }

    #[test]
    fn a_resolve_takes_back_what_was_still_held() {
        let g = Grouping {
            wait: TimeDelta::zero(),
            interval: TimeDelta::minutes(5),
        };
        let ops = Audience::Team("operator".into());
        let a = an_alert("auth_failures", Subject::Key("k1".into()));
        let b = an_alert("auth_failures", Subject::Key("k2".into()));
        let mut o = Outbox::default();
        let firing = |x: &Alert| GroupKey::of(x, NoticeKind::Firing, &ops);
        let resolved = |x: &Alert| GroupKey::of(x, NoticeKind::Resolved, &ops);
        o.hold(firing(&a), a.clone(), t0());
        assert_eq!(o.take_due(t0(), g).len(), 1);
        // b fires while the group waits for its interval, and clears
        // before the group goes out: nobody hears of either.
        let later = t0() + TimeDelta::minutes(1);
        o.hold(firing(&b), b.clone(), later);
        o.hold(resolved(&b), b.clone(), later + TimeDelta::minutes(1));
        assert_eq!(o.held(), 0);
        assert!(o.take_due(t0() + TimeDelta::minutes(10), g).is_empty());
        // a, told of, is told it resolved.
        let at = t0() + TimeDelta::minutes(11);
        o.hold(resolved(&a), a.clone(), at);
        let due = o.take_due(at, g);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0.notice, NoticeKind::Resolved);
    }

    #[test]
    fn a_held_notice_goes_out_only_while_its_alert_calls_for_it() {
        let a = an_alert("auth_failures", Subject::Key("k1".into()));
        let now = t0() + TimeDelta::minutes(5);
        let none: &[Silence] = &[];
        for kind in [
            NoticeKind::Firing,
            NoticeKind::Repeat,
            NoticeKind::Escalation,
        ] {
            assert_eq!(still_due(kind, &a, none, now), Due::Send);
            let acked = Alert {
                state: AlertState::Acknowledged,
                ..a.clone()
            };
            assert_eq!(still_due(kind, &acked, none, now), Due::Stale);
        }
        let resolved = Alert {
            state: AlertState::Resolved,
            ..a.clone()
        };
        assert_eq!(
            still_due(NoticeKind::Firing, &resolved, none, now),
            Due::Stale
        );
        assert_eq!(
            still_due(NoticeKind::Resolved, &resolved, none, now),
            Due::Send
        );
        let silence = Silence {
            id: Uuid::from_u128(7),
            matchers: vec![Matcher {
                name: "rule".into(),
                value: "auth_failures".into(),
            }],
            starts_at: t0(),
            ends_at: now + TimeDelta::minutes(1),
            created_by: "ops".into(),
            comment: "maintenance".into(),
            created_at: t0(),
        };
        let silences = [silence];
        assert_eq!(
            still_due(NoticeKind::Firing, &a, &silences, now),
            Due::Silenced(Uuid::from_u128(7))
        );
        // Once the silence ended, it goes out.
        let after = now + TimeDelta::minutes(1);
        assert_eq!(
            still_due(NoticeKind::Firing, &a, &silences, after),
            Due::Send
        );
    }

    #[test]
    fn a_company_contact_hears_its_own_company_alone() {
        let acme_alert = an_alert("sla_violation", Subject::Company(acme()));
        let beta_alert = an_alert(
            "sla_violation",
            Subject::Company(CompanyId::parse("beta").expect("id")),
        );
        let contact = Audience::CompanyContact;
        let ops = Audience::Team("operator".into());
        let n = NoticeKind::Firing;
        assert_ne!(
            GroupKey::of(&acme_alert, n, &contact),
            GroupKey::of(&beta_alert, n, &contact)
        );
        assert_eq!(
            GroupKey::of(&acme_alert, n, &ops),
            GroupKey::of(&beta_alert, n, &ops)
        );
        let mut o = Outbox::default();
        let now = t0();
        for a in [&acme_alert, &beta_alert] {
            for who in [&contact, &ops] {
                o.hold(GroupKey::of(a, n, who), a.clone(), now);
            }
        }
        let g = Grouping {
            wait: TimeDelta::zero(),
            interval: TimeDelta::minutes(5),
        };
        let due = o.take_due(now, g);
        let shape: Vec<_> = due
            .iter()
            .map(|(k, v)| (k.audience.clone(), k.company.clone(), v.len()))
            .collect();
        assert_eq!(
            shape,
            [
                (ops.clone(), None, 2),
                (contact.clone(), Some(acme()), 1),
                (contact, Some(CompanyId::parse("beta").expect("id")), 1),
            ]
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Eval(Vec<(u8, u8)>),
        Ack,
        Wait(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            prop::collection::vec((0u8..2, 0u8..3), 0..6).prop_map(Op::Eval),
            Just(Op::Ack),
            (1i64..200).prop_map(Op::Wait),
        ]
    }

    proptest! {
        /// Whatever holds when, there is never more than one open alert per
        /// rule and subject, and no alert escalates after it was
        /// acknowledged.
        #[test]
        fn one_open_alert_per_rule_and_subject_and_no_escalation_after_ack(
            ops in prop::collection::vec(op(), 1..60)
        ) {
            let mut rules = vec![sla_rule(0), sla_rule(120)];
            rules[1].name = "slow_later".into();
            let mut r = Run::new(rules);
            let mut now = t0();
            let mut acked: BTreeSet<Uuid> = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Wait(m) => now += TimeDelta::minutes(m),
                    Op::Ack => {
                        r.ack(now);
                        acked.extend(r.open.iter().filter(|a| a.state == AlertState::Acknowledged).map(|a| a.id));
                    }
                    Op::Eval(obs) => {
                        let obs: Vec<Observation> = obs.iter().map(|(rule, c)| Observation {
                            rule: ["sla_violation", "slow_later"][*rule as usize].into(),
                            subject: Subject::Company(CompanyId::parse(&format!("c{c}")).expect("id")),
                            value: 1.0,
                            summary: String::new(),
                        }).collect();
                        let p = r.eval(&obs, now);
                        for n in &p.notices {
                            prop_assert!(!(n.kind == NoticeKind::Escalation && acked.contains(&n.alert_id)));
                        }
                        let mut keys = BTreeSet::new();
                        for a in &r.open {
                            prop_assert!(keys.insert((a.rule.clone(), a.subject.clone())));
                        }
                    }
                }
            }
        }
    }
}
