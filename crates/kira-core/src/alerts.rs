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
}

impl RuleKind {
    pub const ALL: [RuleKind; 7] = [
        RuleKind::SlaViolation,
        RuleKind::ResourceExhaustion,
        RuleKind::Budget,
        RuleKind::Security,
        RuleKind::ErrorRate,
        RuleKind::StuckQueue,
        RuleKind::ReviewBacklog,
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
        }
    }

    pub fn parse(s: &str) -> Option<RuleKind> {
        RuleKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// What an alert is about. A pool is a part of the system: each of the
/// three has its own alert.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subject {
    System,
    Pool(String),
    Company(CompanyId),
    Agent(String),
    Provider(String),
}

impl Subject {
    /// `system`, `pool:base`, `company:acme`, `agent:legal`, `provider:openai`.
    pub fn key(&self) -> String {
        match self {
            Subject::System => "system".into(),
            Subject::Pool(p) => format!("pool:{p}"),
            Subject::Company(c) => format!("company:{c}"),
            Subject::Agent(a) => format!("agent:{a}"),
            Subject::Provider(p) => format!("provider:{p}"),
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
            Condition::DeniedReads { .. } => RuleKind::Security,
            Condition::ErrorRate { .. } => RuleKind::ErrorRate,
            Condition::StuckQueue { .. } => RuleKind::StuckQueue,
            Condition::ReviewBacklog { .. } => RuleKind::ReviewBacklog,
        }
    }

    /// The longest stretch of history it reads (metrics, samples).
    pub fn window(&self) -> TimeDelta {
        match self {
            Condition::SlaP95 { window_seconds }
            | Condition::DeniedReads { window_seconds, .. }
            | Condition::ErrorRate { window_seconds, .. } => TimeDelta::seconds(*window_seconds),
            _ => TimeDelta::zero(),
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

fn rule(name: &str, severity: Severity, for_seconds: i64, condition: Condition) -> Rule {
    Rule {
        name: name.into(),
        severity,
        for_duration: TimeDelta::seconds(for_seconds),
        labels: BTreeMap::new(),
        condition,
    }
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
        m.insert(
            RuleKind::StuckQueue,
            route(vec![team("operator"), team("infrastructure")], vec![], None),
        );
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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
