//! The dashboards (issue 22, SEED 6.3): the executive view across
//! companies (system health, the cross-company table, the pools over the
//! period, the alert summary) and one company's (overview, 7-day trends,
//! alerts, resource usage, queue and review backlog), in SEED 6.3's shape.
//!
//! Built from what the other services keep: the metrics roll-ups (never a
//! scan of tasks), the budget, the alerts, the queue's gauges and the
//! workers' leases. No state of its own.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use kira_core::alerts::{Alert, AlertState};
use kira_core::auth::{AdminScope, CompanyScope};
use kira_core::budget::{Period, projected_period_use};
use kira_store::alerts::{AlertFilter, AlertReader};
use kira_store::metrics::{QueueGauge, WaitingWork};
use serde::Serialize;
use utoipa::ToSchema;

use crate::metrics::{MetricsSeries, MetricsSummary, SeriesRequest};
use crate::{Ctx, EngineError};

/// Days the company overview covers (SEED 6.3: `days=30`).
pub const OVERVIEW_DAYS: i64 = 30;
/// Days of the company trends.
pub const TREND_DAYS: usize = 7;
/// The most alerts a dashboard lists in each of its lists.
pub const MAX_ALERTS_SHOWN: u32 = 200;

const DAY: i64 = 86_400;

/// SEED 6.3's `overview`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Overview {
    /// Days covered, ending now.
    pub days: i64,
    /// Runs that ended in those days.
    pub total_tasks: i64,
    pub completed: i64,
    pub failed: i64,
    /// Mean response time (submitted to end), seconds.
    pub avg_response_time: Option<f64>,
    pub p95_response_time: Option<f64>,
    pub sla_response_seconds: i64,
    /// Whether the p95 is within the SLA (None: no run ended).
    pub within_sla: Option<bool>,
    /// Completed among the runs that ended other than by cancellation, 0-1.
    pub success_rate: Option<f64>,
    /// Tokens per successful (completed) task.
    pub token_efficiency: Option<f64>,
    /// Completed with no human stepping in, 0-1.
    pub automation_rate: Option<f64>,
    /// Mean rating, 1-5.
    pub satisfaction: Option<f64>,
    /// What the compaction summaries of those days kept of their sources'
    /// facts, 0-1 (None: nothing compacted).
    pub context_retention: Option<f64>,
    pub tokens: i64,
    pub cost_usd: f64,
}

impl Overview {
    fn of(days: i64, t: &MetricsSummary, sla: i64, retention: Option<f64>) -> Overview {
        Overview {
            days,
            total_tasks: t.tasks_ended,
            completed: t.completed,
            failed: t.failed,
            avg_response_time: t.mean_response_seconds,
            p95_response_time: t.p95_response_seconds,
            sla_response_seconds: sla,
            within_sla: t.p95_response_seconds.map(|p| p <= sla as f64),
            success_rate: t.success_rate,
            token_efficiency: t.tokens_per_completed,
            automation_rate: t.automation_rate,
            satisfaction: t.satisfaction,
            context_retention: retention,
            tokens: t.tokens,
            cost_usd: t.cost_usd,
        }
    }
}

/// SEED 6.3's `trends`: one value per day, oldest first, aligned with `days`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Trends {
    /// Each day's start.
    pub days: Vec<DateTime<Utc>>,
    /// Runs that ended each day.
    pub task_volume: Vec<i64>,
    /// Each day's mean response time, seconds (None: no run ended).
    pub response_times: Vec<Option<f64>>,
    /// Each day's mean rating (None: nothing rated).
    pub satisfaction: Vec<Option<f64>>,
}

impl Trends {
    /// The last `n` points of `series`.
    fn last(series: &MetricsSeries, n: usize) -> Trends {
        let points = &series.points[series.points.len().saturating_sub(n)..];
        Trends {
            days: points.iter().map(|p| p.at).collect(),
            task_volume: points.iter().map(|p| p.figures.tasks_ended).collect(),
            response_times: points
                .iter()
                .map(|p| p.figures.mean_response_seconds)
                .collect(),
            satisfaction: points.iter().map(|p| p.figures.satisfaction).collect(),
        }
    }
}

/// SEED 6.3's `alerts`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AlertLists {
    /// Open now (pending, firing, acknowledged), newest first.
    pub active: Vec<Alert>,
    /// Every alert changed in the last 24 hours (opened, fired,
    /// acknowledged, escalated, notified or resolved), newest first.
    pub recent: Vec<Alert>,
}

/// SEED 6.3's `resource_usage`: the company's tokens this budget period.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ResourceUsage {
    pub period_id: String,
    pub period_ends_at: DateTime<Utc>,
    /// Its base allocation.
    pub allocation: i64,
    /// Spent from every pool (base, burst, emergency).
    pub tokens_used: i64,
    /// Held by runs in flight on its allocation.
    pub tokens_reserved: i64,
    /// Of its allocation; negative when overdrawn.
    pub tokens_remaining: i64,
    /// What it will have used by the period's end at its rate so far.
    pub projected_monthly: i64,
    pub overdraft: i64,
    /// What the provider reported this period's calls cost, in US dollars.
    pub cost_usd: f64,
}

/// Unfinished tasks of one status and level.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct QueueLine {
    pub status: String,
    pub priority: String,
    pub tasks: i64,
    /// How long the longest-waiting one has waited, seconds.
    pub oldest_wait_seconds: Option<f64>,
}

/// A queue: its depth per status and level.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct QueueView {
    /// Every unfinished task (queued, running, waiting for budget or approval).
    pub depth: i64,
    /// Runnable and waiting for a slot.
    pub queued: i64,
    pub running: i64,
    /// The longest-waiting runnable task's wait, seconds.
    pub oldest_runnable_wait_seconds: Option<f64>,
    pub lines: Vec<QueueLine>,
}

fn seconds_since(t: DateTime<Utc>, now: DateTime<Utc>) -> f64 {
    (now - t).num_milliseconds().max(0) as f64 / 1_000.0
}

impl QueueView {
    fn of(queue: &[QueueGauge], now: DateTime<Utc>) -> QueueView {
        let count = |status: &str| {
            queue
                .iter()
                .filter(|q| q.status == status)
                .map(|q| q.tasks)
                .sum()
        };
        let w = WaitingWork {
            queue: queue.to_vec(),
            reviews_waiting: vec![],
        };
        QueueView {
            depth: queue.iter().map(|q| q.tasks).sum(),
            queued: count("queued"),
            running: count("running"),
            oldest_runnable_wait_seconds: w.oldest_queued_since().map(|t| seconds_since(t, now)),
            lines: queue
                .iter()
                .map(|q| QueueLine {
                    status: q.status.clone(),
                    priority: q.priority.clone(),
                    tasks: q.tasks,
                    oldest_wait_seconds: q.oldest_waiting_since.map(|t| seconds_since(t, now)),
                })
                .collect(),
        }
    }
}

/// One company's dashboard (SEED 6.3's `generate_company_dashboard`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct CompanyDashboard {
    pub company_id: String,
    pub name: String,
    pub generated_at: DateTime<Utc>,
    pub overview: Overview,
    pub trends: Trends,
    pub alerts: AlertLists,
    pub resource_usage: ResourceUsage,
    /// Its unfinished tasks.
    pub queue: QueueView,
    /// Its results waiting for a human's review.
    pub review_backlog: i64,
}

/// A worker process holding leases, and when it last renewed one.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct WorkerView {
    pub worker: String,
    pub running: i64,
    /// Its latest lease renewal (the lease's expiry less the lease).
    pub last_heartbeat: DateTime<Utc>,
    /// Whether that lease is still live.
    pub live: bool,
}

/// One provider and model's calls, by this process since it started.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ProviderView {
    pub provider: String,
    pub model: String,
    pub calls: u64,
    pub errors: u64,
    pub error_rate: Option<f64>,
    /// Mean latency of answered calls, seconds.
    pub mean_latency_seconds: Option<f64>,
}

/// The executive dashboard's `system_health`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SystemHealth {
    pub queue: QueueView,
    /// Results waiting for review, every company.
    pub reviews_waiting: i64,
    /// Every node that beat in the last day, with its last heartbeat,
    /// and the availability KPI.
    pub nodes: crate::nodes::NodeHealth,
    /// Workers holding leases now, and how many runs each holds.
    pub workers: Vec<WorkerView>,
    pub providers: Vec<ProviderView>,
}

/// A line of the cross-company table, over the budget period.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct CompanyLine {
    pub company_id: String,
    pub name: String,
    pub tasks: i64,
    pub p95_response_seconds: Option<f64>,
    pub sla_response_seconds: i64,
    pub within_sla: Option<bool>,
    pub success_rate: Option<f64>,
    pub tokens_used: i64,
    pub tokens_remaining: i64,
    /// At its rate so far, used by the period's end.
    pub tokens_projected: i64,
    pub satisfaction: Option<f64>,
    pub open_alerts: i64,
}

/// A pool over the period.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PoolUse {
    pub pool: String,
    pub capacity: i64,
    pub reserved: i64,
    pub spent: i64,
    /// Negative when overdrawn.
    pub remaining: i64,
    /// (reserved + spent) / capacity.
    pub utilization: Option<f64>,
    /// Spent by the period's end at its rate so far.
    pub projected: i64,
}

/// The executive dashboard's `resource_utilization`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ResourceUtilization {
    pub period_id: String,
    pub period_starts_at: DateTime<Utc>,
    pub period_ends_at: DateTime<Utc>,
    /// Base, burst, emergency.
    pub pools: Vec<PoolUse>,
    /// Each day of the period so far.
    pub days: Vec<DateTime<Utc>>,
    /// Tokens every company used each day (as the providers reported them).
    pub daily_tokens: Vec<i64>,
}

/// The executive dashboard's `alert_summary`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AlertSummary {
    /// Open alerts (pending, firing, acknowledged).
    pub open: i64,
    pub by_state: BTreeMap<String, i64>,
    pub by_severity: BTreeMap<String, i64>,
    pub by_rule: BTreeMap<String, i64>,
    /// The open ones, newest first.
    pub active: Vec<Alert>,
}

/// The executive dashboard (admin).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ExecutiveDashboard {
    pub generated_at: DateTime<Utc>,
    pub system_health: SystemHealth,
    /// Every active company, over the budget period.
    pub companies: Vec<CompanyLine>,
    pub resource_utilization: ResourceUtilization,
    pub alert_summary: AlertSummary,
}

/// The dashboards: reads over the metrics, budget and alerts services.
pub struct Dashboard {
    ctx: Arc<Ctx>,
    metrics: Arc<crate::metrics::Metrics>,
    budget: Arc<crate::budget::Budget>,
    nodes: Arc<crate::nodes::Nodes>,
}

fn open_filter() -> AlertFilter {
    AlertFilter {
        open_only: true,
        limit: MAX_ALERTS_SHOWN,
        ..AlertFilter::default()
    }
}

impl Dashboard {
    pub(crate) fn new(
        ctx: Arc<Ctx>,
        metrics: Arc<crate::metrics::Metrics>,
        budget: Arc<crate::budget::Budget>,
        nodes: Arc<crate::nodes::Nodes>,
    ) -> Self {
        Self {
            ctx,
            metrics,
            budget,
            nodes,
        }
    }

    /// One company's dashboard: its own key's, or the admin's.
    pub async fn company(&self, scope: &CompanyScope) -> Result<CompanyDashboard, EngineError> {
        let store = &self.ctx.store;
        let now = self.ctx.clock.now();
        let m = self
            .metrics
            .company(
                scope,
                &SeriesRequest {
                    from: Some(now - TimeDelta::days(OVERVIEW_DAYS - 1)),
                    to: Some(now),
                    step_seconds: Some(DAY),
                },
            )
            .await?;
        let company = store.get_company(scope).await?;
        let budget = self.budget.own_period(scope).await?;
        let period = Period {
            id: budget.state.period_id.clone(),
            start: budget.state.starts_at,
            end: budget.state.ends_at,
        };
        let line = budget
            .state
            .companies
            .iter()
            .find(|c| &c.company_id == scope.company());
        let resource_usage = ResourceUsage {
            period_id: period.id.clone(),
            period_ends_at: period.end,
            allocation: line.map_or(0, |c| c.allocation),
            tokens_used: line.map_or(0, |c| c.spent_all_pools),
            tokens_reserved: line.map_or(0, |c| c.reserved),
            tokens_remaining: line.map_or(0, |c| c.allocation - c.reserved - c.spent),
            projected_monthly: line.map_or(0, |c| {
                projected_period_use(c.spent_all_pools, &period, budget.at)
            }),
            overdraft: line.map_or(0, |c| c.overdraft),
            cost_usd: line.map_or(0.0, |c| c.cost_usd),
        };
        let who = AlertReader::Company(scope);
        let active = store.list_alerts(who, &open_filter()).await?;
        let recent = store
            .list_alerts(
                who,
                &AlertFilter {
                    changed_since: Some((now - TimeDelta::hours(24)).trunc_subsecs(6)),
                    limit: MAX_ALERTS_SHOWN,
                    ..AlertFilter::default()
                },
            )
            .await?;
        let waiting = store.company_waiting_work(scope).await?;
        Ok(CompanyDashboard {
            company_id: scope.company().to_string(),
            name: company.profile.name.clone(),
            generated_at: now,
            overview: Overview::of(
                OVERVIEW_DAYS,
                &m.series.totals,
                m.sla_response_seconds,
                m.context_retention.share,
            ),
            trends: Trends::last(&m.series, TREND_DAYS),
            alerts: AlertLists { active, recent },
            resource_usage,
            queue: QueueView::of(&waiting.queue, now),
            review_backlog: waiting.reviews_waiting.iter().map(|(_, n)| n).sum(),
        })
    }

    /// The executive dashboard (admin): every company over the budget
    /// period.
    pub async fn executive(&self, admin: &AdminScope) -> Result<ExecutiveDashboard, EngineError> {
        let store = &self.ctx.store;
        let now = self.ctx.clock.now();
        let budget = self.budget.period(admin).await?;
        let state = &budget.state;
        let period = Period {
            id: state.period_id.clone(),
            start: state.starts_at,
            end: state.ends_at,
        };
        let sys = self
            .metrics
            .system(
                admin,
                &SeriesRequest {
                    from: Some(period.start),
                    to: Some(now.clamp(period.start + TimeDelta::seconds(1), period.end)),
                    step_seconds: Some(DAY),
                },
            )
            .await?;
        let directory = self.metrics.directory(admin).await?;
        let lines: std::collections::HashMap<&kira_core::CompanyId, _> =
            state.companies.iter().map(|l| (&l.company_id, l)).collect();
        let open = store
            .list_alerts(AlertReader::Admin(admin), &open_filter())
            .await?;
        let mut open_per_company: BTreeMap<String, i64> = BTreeMap::new();
        for a in &open {
            if let Some(c) = a.company() {
                *open_per_company.entry(c.to_string()).or_default() += 1;
            }
        }
        let empty = MetricsSummary::default();
        let companies = directory
            .iter()
            .map(|c| {
                let id = c.id.to_string();
                let m = sys.companies.get(&id).unwrap_or(&empty);
                let line = lines.get(&c.id).copied();
                let sla = i64::from(c.profile.sla_response_seconds);
                CompanyLine {
                    name: c.profile.name.clone(),
                    tasks: m.tasks_ended,
                    p95_response_seconds: m.p95_response_seconds,
                    sla_response_seconds: sla,
                    within_sla: m.p95_response_seconds.map(|p| p <= sla as f64),
                    success_rate: m.success_rate,
                    tokens_used: line.map_or(0, |l| l.spent_all_pools),
                    tokens_remaining: line.map_or(0, |l| l.allocation - l.reserved - l.spent),
                    tokens_projected: line.map_or(0, |l| {
                        projected_period_use(l.spent_all_pools, &period, budget.at)
                    }),
                    satisfaction: m.satisfaction,
                    open_alerts: open_per_company.get(&id).copied().unwrap_or(0),
                    company_id: id,
                }
            })
            .collect();
        let waiting = store.waiting_work(admin).await?;
        let lease = self.ctx.config.scheduler.lease;
        let workers = store
            .workers(admin)
            .await?
            .into_iter()
            .map(|w| WorkerView {
                worker: w.worker,
                running: w.running,
                last_heartbeat: w.lease_expires_at - lease,
                live: w.lease_expires_at > now,
            })
            .collect();
        let providers = self
            .metrics
            .provider_calls()
            .await?
            .into_iter()
            .map(|((provider, model), c)| {
                let calls = c.ok + c.errors;
                ProviderView {
                    provider,
                    model,
                    calls,
                    errors: c.errors,
                    error_rate: (calls > 0).then(|| c.errors as f64 / calls as f64),
                    mean_latency_seconds: (c.ok > 0).then(|| c.seconds / c.ok as f64),
                }
            })
            .collect();
        let mut summary = AlertSummary {
            open: open.len() as i64,
            by_state: BTreeMap::new(),
            by_severity: BTreeMap::new(),
            by_rule: BTreeMap::new(),
            active: Vec::new(),
        };
        for a in &open {
            debug_assert!(a.state != AlertState::Resolved);
            *summary
                .by_state
                .entry(a.state.as_str().to_owned())
                .or_default() += 1;
            *summary
                .by_severity
                .entry(a.severity.as_str().to_owned())
                .or_default() += 1;
            *summary.by_rule.entry(a.rule.clone()).or_default() += 1;
        }
        summary.active = open;
        Ok(ExecutiveDashboard {
            generated_at: now,
            system_health: SystemHealth {
                queue: QueueView::of(&waiting.queue, now),
                reviews_waiting: waiting.reviews_waiting.iter().map(|(_, n)| n).sum(),
                nodes: self.nodes.health(admin).await?,
                workers,
                providers,
            },
            companies,
            resource_utilization: ResourceUtilization {
                period_id: period.id.clone(),
                period_starts_at: period.start,
                period_ends_at: period.end,
                pools: state
                    .pools
                    .iter()
                    .map(|p| PoolUse {
                        pool: p.pool.as_str().to_owned(),
                        capacity: p.capacity,
                        reserved: p.reserved,
                        spent: p.spent,
                        remaining: p.capacity - p.reserved - p.spent,
                        utilization: (p.capacity > 0)
                            .then(|| (p.reserved + p.spent) as f64 / p.capacity as f64),
                        projected: projected_period_use(p.spent, &period, budget.at),
                    })
                    .collect(),
                days: sys.series.points.iter().map(|p| p.at).collect(),
                daily_tokens: sys.series.points.iter().map(|p| p.figures.tokens).collect(),
            },
            alert_summary: summary,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, h, 0, 0)
            .single()
            .expect("valid")
    }

    #[test]
    fn a_queue_adds_up_by_status_and_measures_the_oldest_runnable_wait() {
        let g = |status: &str, priority: &str, tasks, since| QueueGauge {
            status: status.into(),
            priority: priority.into(),
            tasks,
            oldest_waiting_since: since,
        };
        let q = QueueView::of(
            &[
                g("queued", "high", 2, Some(t(9))),
                g("queued", "low", 3, Some(t(8))),
                g("running", "high", 1, Some(t(7))),
                g("waiting_budget", "low", 4, Some(t(6))),
            ],
            t(10),
        );
        assert_eq!((q.depth, q.queued, q.running), (10, 5, 1));
        // The running and budget-waiting tasks are not runnable.
        assert_eq!(q.oldest_runnable_wait_seconds, Some(7_200.0));
        assert_eq!(q.lines[3].oldest_wait_seconds, Some(14_400.0));
    }

    #[test]
    fn trends_are_the_last_days_of_the_series() {
        let point = |day: i64, ended: i64| crate::metrics::MetricsPoint {
            at: t(0) + TimeDelta::days(day),
            figures: MetricsSummary {
                tasks_ended: ended,
                ..MetricsSummary::default()
            },
        };
        let series = MetricsSeries {
            from: t(0),
            to: t(0) + TimeDelta::days(10),
            step_seconds: DAY,
            resolution: kira_core::metrics::Resolution::Day,
            totals: MetricsSummary::default(),
            points: (0..10).map(|d| point(d, d * 2)).collect(),
        };
        let tr = Trends::last(&series, TREND_DAYS);
        assert_eq!(tr.task_volume, vec![6, 8, 10, 12, 14, 16, 18]);
        assert_eq!(tr.days[0], t(0) + TimeDelta::days(3));
        assert_eq!(tr.response_times.len(), 7);
    }
}
