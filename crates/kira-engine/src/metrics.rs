//! Task metrics (issue 22, SEED 6.1): the roll-up job that adds what the
//! database recorded at each run's end, settlement, tool call and review
//! to the time series, their retention, and the series as the API serves
//! them: per company, per agent and for the whole system, in steps, with
//! SEED's KPIs (response time against the SLA, success and automation
//! rates, token efficiency, satisfaction, cost).
//!
//! Reads roll up first, so a figure includes every run that ended before
//! the request, whichever process ran it.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use kira_core::ValidationError;
use kira_core::auth::{AdminScope, CompanyScope, MetricsScope, Principal};
use kira_core::metrics::{Resolution, Rollup};
use kira_store::metrics::{MetricRow, MetricTotals, MetricsQuery, RollupReport};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use utoipa::ToSchema;

use std::sync::Arc;

use crate::config::within;
use crate::{Ctx, EngineError, Shutdown};

/// Events one roll-up transaction takes at most.
const ROLLUP_BATCH: u32 = 5_000;

/// The most points a series may have.
pub const MAX_POINTS: i64 = 2_000;

/// `[metrics]`: how often the series are brought up to date and how long
/// each resolution is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// Between two roll-ups by the background job (reads roll up too).
    pub rollup_interval: TimeDelta,
    /// How long per-minute rows are kept.
    pub minute_retention: TimeDelta,
    pub hour_retention: TimeDelta,
    pub day_retention: TimeDelta,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            rollup_interval: TimeDelta::seconds(10),
            minute_retention: TimeDelta::days(2),
            hour_retention: TimeDelta::days(35),
            day_retention: TimeDelta::days(400),
        }
    }
}

/// `[metrics]` as written in `kira.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    pub rollup_interval_seconds: Option<i64>,
    pub minute_retention_hours: Option<i64>,
    pub hour_retention_days: Option<i64>,
    pub day_retention_days: Option<i64>,
}

impl MetricsSection {
    pub fn resolve(self, c: &mut MetricsConfig) -> Result<(), ValidationError> {
        if let Some(v) = self.rollup_interval_seconds {
            c.rollup_interval =
                TimeDelta::seconds(within("metrics.rollup_interval_seconds", v, 1, 3_600)?);
        }
        if let Some(v) = self.minute_retention_hours {
            c.minute_retention =
                TimeDelta::hours(within("metrics.minute_retention_hours", v, 1, 24 * 90)?);
        }
        if let Some(v) = self.hour_retention_days {
            c.hour_retention = TimeDelta::days(within("metrics.hour_retention_days", v, 1, 3_650)?);
        }
        if let Some(v) = self.day_retention_days {
            c.day_retention = TimeDelta::days(within("metrics.day_retention_days", v, 1, 36_500)?);
        }
        Ok(())
    }
}

/// A window and step of a series, as asked (`from`, `to`, `step`); the
/// defaults: the last 24 hours in hours.
#[derive(Debug, Clone, Default)]
pub struct SeriesRequest {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Seconds: a whole number of minutes.
    pub step_seconds: Option<i64>,
}

/// The figures of a window (or of one step of it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct MetricsSummary {
    /// Runs that ended (completed, failed, cancelled or needs_review).
    pub tasks_ended: i64,
    pub completed: i64,
    pub failed: i64,
    pub cancelled: i64,
    /// Runs whose result waited for a human.
    pub needs_review: i64,
    /// Completed among the runs that ended other than by cancellation.
    pub success_rate: Option<f64>,
    pub error_rate: Option<f64>,
    /// Completed with no human stepping in (SEED's target: 0.8).
    pub automation_rate: Option<f64>,
    /// Submitted to end.
    pub mean_response_seconds: Option<f64>,
    /// From the histogram, interpolated within its bucket.
    pub p95_response_seconds: Option<f64>,
    pub mean_queue_wait_seconds: Option<f64>,
    pub p95_queue_wait_seconds: Option<f64>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub tokens: i64,
    /// As the providers reported it.
    pub cost_usd: f64,
    /// Tokens per completed run (SEED's token efficiency).
    pub tokens_per_completed: Option<f64>,
    pub tool_calls: i64,
    pub reviews_approved: i64,
    pub reviews_rejected: i64,
    /// Tasks rated; a task's latest rating counts.
    pub ratings: i64,
    /// Mean rating, 1-5 (SEED's satisfaction score; target 4.5).
    pub satisfaction: Option<f64>,
}

impl From<&Rollup> for MetricsSummary {
    fn from(r: &Rollup) -> Self {
        let secs = |ms: Option<f64>| ms.map(|v| v / 1_000.0);
        MetricsSummary {
            tasks_ended: r.ended,
            completed: r.completed,
            failed: r.failed,
            cancelled: r.cancelled,
            needs_review: r.needs_review,
            success_rate: r.success_rate(),
            error_rate: r.error_rate(),
            automation_rate: r.automation_rate(),
            mean_response_seconds: secs(r.mean_response_ms()),
            p95_response_seconds: secs(r.response.quantile(0.95)),
            mean_queue_wait_seconds: secs(r.mean_queue_wait_ms()),
            p95_queue_wait_seconds: secs(r.queue_wait.quantile(0.95)),
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            tokens: r.tokens(),
            cost_usd: r.cost_usd,
            tokens_per_completed: r.tokens_per_completed(),
            tool_calls: r.tool_calls,
            reviews_approved: r.reviews_approved,
            reviews_rejected: r.reviews_rejected,
            ratings: r.ratings,
            satisfaction: r.satisfaction(),
        }
    }
}

/// One step of a series.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct MetricsPoint {
    /// The step's start.
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub figures: MetricsSummary,
}

/// A window's figures, in total and step by step.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct MetricsSeries {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub step_seconds: i64,
    /// The stored resolution the steps were added up from.
    #[schema(value_type = String)]
    pub resolution: Resolution,
    pub totals: MetricsSummary,
    pub points: Vec<MetricsPoint>,
}

/// A company's series with its SLA (SEED's response-time KPI).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct CompanyMetrics {
    pub company_id: String,
    /// The response time the company's profile promises.
    pub sla_response_seconds: i64,
    /// Whether the window's p95 response time is within the SLA (None:
    /// no run ended).
    pub within_sla: Option<bool>,
    /// Figures per agent over the window.
    pub agents: BTreeMap<String, MetricsSummary>,
    /// Context retention (SEED 6's KPI): what the compaction summaries
    /// written in the window kept of their sources' facts.
    pub context_retention: ContextRetention,
    #[serde(flatten)]
    pub series: MetricsSeries,
}

/// What compaction kept of the facts it summarised: the counts, and the
/// share (None when nothing was checked).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
pub struct ContextRetention {
    pub facts: i64,
    pub kept: i64,
    pub share: Option<f64>,
}

impl From<kira_core::memory::retention::FactCheck> for ContextRetention {
    fn from(c: kira_core::memory::retention::FactCheck) -> Self {
        Self {
            facts: c.facts,
            kept: c.kept,
            share: c.share(),
        }
    }
}

/// An agent's series: every company's runs for the admin, the caller's
/// company's for a company key.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AgentMetrics {
    pub agent: String,
    /// Figures per company over the window (the admin's view only).
    pub companies: BTreeMap<String, MetricsSummary>,
    #[serde(flatten)]
    pub series: MetricsSeries,
}

/// The system's series: every company, with a line per company and per
/// agent.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SystemMetrics {
    pub companies: BTreeMap<String, MetricsSummary>,
    pub agents: BTreeMap<String, MetricsSummary>,
    /// The nodes and the availability KPI.
    pub health: crate::nodes::NodeHealth,
    #[serde(flatten)]
    pub series: MetricsSeries,
}

/// How many steps cover `span` (the last one may be partial).
fn steps(span: TimeDelta, step: TimeDelta) -> i64 {
    let (span, step) = (
        span.num_milliseconds().max(0),
        step.num_milliseconds().max(1),
    );
    (span + step - 1) / step
}

/// The window resolved: its bounds, its step and the resolution to read.
#[derive(Debug, Clone, Copy)]
struct Window {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    step: TimeDelta,
    resolution: Resolution,
}

impl Window {
    fn resolve(req: &SeriesRequest, now: DateTime<Utc>) -> Result<Window, EngineError> {
        let bad = |field: &str, msg: &str| EngineError::Parameter(ValidationError::new(field, msg));
        let step_seconds = req.step_seconds.unwrap_or(3_600);
        if step_seconds < 60 || step_seconds % 60 != 0 {
            return Err(bad(
                "step",
                "must be a whole number of minutes, in seconds (60, 300, 3600, ...)",
            ));
        }
        let step = TimeDelta::seconds(step_seconds);
        let resolution = Resolution::for_step(step);
        let to = req.to.unwrap_or(now);
        let from = req.from.unwrap_or(to - TimeDelta::days(1));
        if from >= to {
            return Err(bad("from", "must be before to"));
        }
        // Steps start on the resolution's buckets.
        let from = resolution.bucket(from);
        let points = steps(to - from, step);
        if points > MAX_POINTS {
            return Err(bad(
                "step",
                "too many points: at most 2000 steps per series",
            ));
        }
        Ok(Window {
            from,
            to,
            step,
            resolution,
        })
    }

    fn query(&self, agent: Option<&str>) -> MetricsQuery {
        MetricsQuery {
            resolution: self.resolution,
            from: Some(self.from),
            to: Some(self.to),
            agent: agent.map(str::to_owned),
        }
    }

    /// The rows added up per step, and in total.
    fn series(&self, rows: &[MetricRow]) -> MetricsSeries {
        let n = steps(self.to - self.from, self.step) as usize;
        let mut steps = vec![Rollup::default(); n];
        let mut total = Rollup::default();
        for r in rows {
            let i = ((r.key.bucket - self.from).num_seconds() / self.step.num_seconds()) as usize;
            if let Some(s) = steps.get_mut(i) {
                s.add(&r.sums);
            }
            total.add(&r.sums);
        }
        MetricsSeries {
            from: self.from,
            to: self.to,
            step_seconds: self.step.num_seconds(),
            resolution: self.resolution,
            totals: (&total).into(),
            points: steps
                .iter()
                .enumerate()
                .map(|(i, s)| MetricsPoint {
                    at: self.from + self.step * i as i32,
                    figures: s.into(),
                })
                .collect(),
        }
    }
}

/// The rows' sums per `by` (company or agent).
fn by(rows: &[MetricRow], key: impl Fn(&MetricRow) -> &str) -> BTreeMap<String, MetricsSummary> {
    let mut sums: BTreeMap<String, Rollup> = BTreeMap::new();
    for r in rows {
        sums.entry(key(r).to_owned()).or_default().add(&r.sums);
    }
    sums.iter().map(|(k, v)| (k.clone(), v.into())).collect()
}

/// One company's budget line as `/metrics` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct CompanyBudgetLine {
    pub company_id: String,
    pub allocation: i64,
    pub reserved: i64,
    pub spent: i64,
    pub overdraft: i64,
    /// Every pool's spending, projected at its rate to the period's end.
    pub projected: i64,
}

/// Everything `/metrics` shows of the database, read at one scrape.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// The all-time sums per company, agent and level.
    pub totals: MetricTotals,
    /// Each active company's `sla_response_seconds`.
    pub slas: Vec<(String, i64)>,
    pub budget: kira_store::work::BudgetState,
    pub companies: Vec<CompanyBudgetLine>,
    pub waiting: kira_store::metrics::WaitingWork,
    /// The longest-waiting queued task's wait, 0 when none waits.
    pub oldest_runnable_wait_seconds: f64,
    /// Refused, every process together, all time.
    pub denied_cross_company_reads: u64,
    /// Requests refused for want of a valid key or session, every process
    /// together, all time.
    pub auth_failures: u64,
    /// Provider calls, every process together, per (provider, model).
    pub providers: Vec<((String, String), ProviderCalls)>,
    /// The nodes and the availability KPI.
    pub health: crate::nodes::NodeHealth,
    /// Each company's compaction checks of all time (context retention).
    pub retention: Vec<(String, kira_core::memory::retention::FactCheck)>,
}

/// The system principal's admin path, for the counts' reads.
fn system_admin() -> Result<AdminScope, EngineError> {
    Principal::system().admin().map_err(|_| {
        EngineError::Invalid(ValidationError::new(
            "principal",
            "the system principal is not an admin",
        ))
    })
}

/// The stored provider totals as `/metrics` and the dashboard read them.
fn provider_calls(
    totals: &[kira_store::counts::ProviderTotal],
) -> Vec<((String, String), ProviderCalls)> {
    totals
        .iter()
        .map(|t| {
            (
                (t.provider.clone(), t.model.clone()),
                ProviderCalls {
                    ok: t.ok,
                    errors: t.errors,
                    seconds: t.latency.seconds,
                    buckets: t.latency.buckets,
                },
            )
        })
        .collect()
}

/// The advisory-lock key of the metrics retention job.
const JOB_METRICS_PRUNE: i64 = 0x6b69_7261_0003;

pub use kira_core::metrics::PROVIDER_BOUNDS;

/// The calls to one provider and model, every process's, all time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProviderCalls {
    pub ok: u64,
    pub errors: u64,
    /// Seconds spent in answered calls.
    pub seconds: f64,
    /// Answered calls per bucket of [`PROVIDER_BOUNDS`] (and above).
    pub buckets: [u64; PROVIDER_BOUNDS.len() + 1],
}

/// Task metrics: the roll-up and retention jobs and the series. The
/// events and the series are the store's; the counts no company's
/// transaction records (denied reads, authentication failures, provider
/// calls) are added up by [`crate::counts`] and written with the roll-up.
pub struct Metrics {
    ctx: Arc<Ctx>,
    sharing: Arc<crate::sharing::Sharing>,
    nodes: Arc<crate::nodes::Nodes>,
}

impl Metrics {
    pub(crate) fn new(
        ctx: Arc<Ctx>,
        sharing: Arc<crate::sharing::Sharing>,
        nodes: Arc<crate::nodes::Nodes>,
    ) -> Self {
        Self {
            ctx,
            sharing,
            nodes,
        }
    }

    /// Every active company, from the directory sharing keeps (read again
    /// only when a company changed).
    pub(crate) async fn directory(
        &self,
        admin: &AdminScope,
    ) -> Result<Arc<crate::sharing::Directory>, EngineError> {
        self.sharing.directory(admin).await
    }

    /// Counts one call to `provider`'s `model`: answered after `latency`,
    /// or failed (after its retries and fallbacks).
    pub fn provider_call(
        &self,
        provider: &str,
        model: &str,
        answered: Option<std::time::Duration>,
    ) {
        self.ctx.counts.provider_call(provider, model, answered);
    }

    /// Writes this process's counts of what no company's transaction
    /// records (also done by the roll-up job, and before each read here).
    pub async fn flush_counts(&self) -> Result<(), EngineError> {
        Ok(self.ctx.counts.flush().await?)
    }

    /// The calls to each provider and model, every process's (this one's
    /// written first), all time.
    pub async fn provider_calls(
        &self,
    ) -> Result<Vec<((String, String), ProviderCalls)>, EngineError> {
        let admin = system_admin()?;
        self.flush_counts().await?;
        Ok(provider_calls(
            &self.ctx.store.count_totals(&admin).await?.providers,
        ))
    }

    /// Adds every event recorded so far to the series (several
    /// transactions of at most 5,000 events).
    pub async fn roll_up(&self) -> Result<RollupReport, EngineError> {
        let mut total = RollupReport::default();
        loop {
            let r = self.ctx.store.roll_up_metrics(ROLLUP_BATCH).await?;
            total.events += r.events;
            total.rows += r.rows;
            if r.events < ROLLUP_BATCH as usize {
                return Ok(total);
            }
        }
    }

    /// Deletes the rows each resolution keeps no longer, and the
    /// per-second counts no alert rule reads any more, on one node at a
    /// time; how many. None: another node holds the job.
    pub async fn prune(&self) -> Result<Option<u64>, EngineError> {
        crate::locked(
            self.ctx.store.as_ref(),
            JOB_METRICS_PRUNE,
            self.prune_locked(),
        )
        .await
    }

    /// [`Metrics::prune`] with its lock held.
    async fn prune_locked(&self) -> Result<u64, EngineError> {
        let (now, c) = (self.ctx.clock.now(), &self.ctx.config.metrics);
        let mut removed = 0;
        for (res, keep) in [
            (Resolution::Minute, c.minute_retention),
            (Resolution::Hour, c.hour_retention),
            (Resolution::Day, c.day_retention),
        ] {
            removed += self.ctx.store.prune_metrics(res, now - keep).await?;
        }
        // The per-second counts as the alert evaluator prunes them, so
        // they stop growing where no process evaluates.
        let kept = kira_core::alerts::counts_kept(&self.ctx.config.alerts.rules);
        removed += self.ctx.store.prune_counts(now - kept).await?;
        Ok(removed)
    }

    /// A company's series (its own key, or the admin).
    pub async fn company(
        &self,
        scope: &CompanyScope,
        req: &SeriesRequest,
    ) -> Result<CompanyMetrics, EngineError> {
        let w = Window::resolve(req, self.ctx.clock.now())?;
        let company = self.ctx.store.get_company(scope).await?;
        self.roll_up().await?;
        let rows = self
            .ctx
            .store
            .company_metrics(scope, &w.query(None))
            .await?;
        let series = w.series(&rows);
        let sla = company.profile.sla_response_seconds;
        let retention = self
            .ctx
            .store
            .retention(scope, series.from, series.to)
            .await?;
        Ok(CompanyMetrics {
            context_retention: retention.into(),
            company_id: scope.company().to_string(),
            sla_response_seconds: i64::from(sla),
            within_sla: series
                .totals
                .p95_response_seconds
                .map(|p95| p95 <= f64::from(sla)),
            agents: by(&rows, |r| &r.key.agent),
            series,
        })
    }

    /// The whole system's series (admin).
    pub async fn system(
        &self,
        admin: &AdminScope,
        req: &SeriesRequest,
    ) -> Result<SystemMetrics, EngineError> {
        let w = Window::resolve(req, self.ctx.clock.now())?;
        self.roll_up().await?;
        let rows = self.ctx.store.all_metrics(admin, &w.query(None)).await?;
        Ok(SystemMetrics {
            health: self.nodes.health(admin).await?,
            companies: by(&rows, |r| &r.key.company_id),
            agents: by(&rows, |r| &r.key.agent),
            series: w.series(&rows),
        })
    }

    /// One agent's series: across companies for the admin (`Ok(admin)`),
    /// the company's own runs for a company key (`Err(scope)`).
    pub async fn agent(
        &self,
        who: Result<&AdminScope, &CompanyScope>,
        agent: &str,
        req: &SeriesRequest,
    ) -> Result<AgentMetrics, EngineError> {
        if !self.ctx.config.agents.contains_key(agent) {
            return Err(EngineError::Store(kira_store::StoreError::NotFound));
        }
        let w = Window::resolve(req, self.ctx.clock.now())?;
        self.roll_up().await?;
        let q = w.query(Some(agent));
        let (rows, companies) = match who {
            Ok(admin) => {
                let rows = self.ctx.store.all_metrics(admin, &q).await?;
                let companies = by(&rows, |r| &r.key.company_id);
                (rows, companies)
            }
            Err(scope) => (
                self.ctx.store.company_metrics(scope, &q).await?,
                BTreeMap::new(),
            ),
        };
        Ok(AgentMetrics {
            agent: agent.to_owned(),
            companies,
            series: w.series(&rows),
        })
    }

    /// The all-time sums per company, agent and level (admin), for
    /// `/metrics`.
    pub async fn totals(&self, admin: &AdminScope) -> Result<MetricTotals, EngineError> {
        self.roll_up().await?;
        Ok(self.ctx.store.metric_totals(admin).await?)
    }

    /// What `/metrics` shows of the database now: every company's series,
    /// for an admin or a metrics key (whose scope reaches nothing else).
    /// The reads are the system's own, across companies.
    pub async fn scrape(&self, _who: &MetricsScope) -> Result<Scrape, EngineError> {
        let system = system_admin()?;
        let admin = &system;
        let totals = self.totals(admin).await?;
        self.flush_counts().await?;
        let counts = self.ctx.store.count_totals(admin).await?;
        let now = self.ctx.clock.now();
        let budget = self
            .ctx
            .store
            .budget_state(admin, &self.ctx.config.budget, now)
            .await?;
        let period = kira_core::budget::Period {
            id: budget.period_id.clone(),
            start: budget.starts_at,
            end: budget.ends_at,
        };
        let companies = budget
            .companies
            .iter()
            .map(|c| CompanyBudgetLine {
                company_id: c.company_id.to_string(),
                allocation: c.allocation,
                reserved: c.reserved,
                spent: c.spent,
                overdraft: c.overdraft,
                projected: kira_core::budget::projected_period_use(c.spent_all_pools, &period, now),
            })
            .collect();
        // The directory sharing keeps, read again only when a company changed.
        let slas = self
            .sharing
            .directory(admin)
            .await?
            .iter()
            .map(|c| (c.id.to_string(), i64::from(c.profile.sla_response_seconds)))
            .collect();
        let waiting = self.ctx.store.waiting_work(admin).await?;
        let oldest = waiting.oldest_queued_since();
        Ok(Scrape {
            totals,
            slas,
            budget,
            companies,
            waiting,
            oldest_runnable_wait_seconds: oldest.map_or(0.0, |t| {
                (now - t).num_milliseconds().max(0) as f64 / 1_000.0
            }),
            denied_cross_company_reads: counts.denied_reads,
            auth_failures: counts.auth_failures,
            providers: provider_calls(&counts.providers),
            health: self.nodes.health(admin).await?,
            retention: self.ctx.store.retention_totals(admin).await?,
        })
    }

    /// Starts the roll-up (every `[metrics] rollup_interval`) and the
    /// retention job (hourly); both stop on `shutdown`.
    pub fn start_jobs(self: &Arc<Self>, shutdown: Shutdown) -> JoinHandle<()> {
        let metrics = self.clone();
        tokio::spawn(async move {
            let every = metrics
                .ctx
                .config
                .metrics
                .rollup_interval
                .to_std()
                .unwrap_or(std::time::Duration::from_secs(10));
            let prune_every = std::time::Duration::from_secs(3_600);
            let mut last_prune: Option<std::time::Instant> = None;
            loop {
                if let Err(e) = metrics.flush_counts().await {
                    tracing::error!(error = %e, "writing the counts failed");
                }
                if let Err(e) = metrics.roll_up().await {
                    tracing::error!(error = %e, "metrics roll-up failed");
                }
                if last_prune.is_none_or(|t| t.elapsed() >= prune_every) {
                    if let Err(e) = metrics.prune().await {
                        tracing::error!(error = %e, "metrics retention failed");
                    }
                    last_prune = Some(std::time::Instant::now());
                }
                tokio::select! {
                    () = shutdown.wait() => break,
                    () = tokio::time::sleep(every) => {}
                }
            }
            // What this process counted since the last write.
            if let Err(e) = metrics.flush_counts().await {
                tracing::error!(error = %e, "writing the counts failed");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use kira_core::metrics::SeriesKey;

    fn t(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, h, m, 0)
            .single()
            .expect("valid")
    }

    fn row(bucket: DateTime<Utc>, completed: i64) -> MetricRow {
        MetricRow {
            key: SeriesKey {
                company_id: "acme".into(),
                agent: "primary".into(),
                priority: "medium".into(),
                resolution: Resolution::Minute,
                bucket,
            },
            sums: Rollup {
                ended: completed,
                completed,
                ..Rollup::default()
            },
        }
    }

    #[test]
    fn a_window_defaults_to_the_last_day_in_hours() {
        let w = Window::resolve(&SeriesRequest::default(), t(12, 30)).expect("valid");
        assert_eq!((w.from, w.to), (t(12, 0) - TimeDelta::days(1), t(12, 30)));
        assert_eq!(w.resolution, Resolution::Hour);
        assert_eq!(w.series(&[]).points.len(), 25);
    }

    #[test]
    fn bad_windows_name_their_field() {
        let now = t(12, 0);
        for (req, field) in [
            (
                SeriesRequest {
                    step_seconds: Some(90),
                    ..Default::default()
                },
                "step",
            ),
            (
                SeriesRequest {
                    step_seconds: Some(60),
                    from: Some(now - TimeDelta::days(30)),
                    ..Default::default()
                },
                "step",
            ),
            (
                SeriesRequest {
                    from: Some(now),
                    to: Some(now),
                    ..Default::default()
                },
                "from",
            ),
        ] {
            match Window::resolve(&req, now) {
                Err(EngineError::Parameter(e)) => assert_eq!(e.field, field),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn rows_add_up_into_their_steps() {
        let req = SeriesRequest {
            from: Some(t(10, 0)),
            to: Some(t(10, 30)),
            step_seconds: Some(600),
        };
        let w = Window::resolve(&req, t(12, 0)).expect("valid");
        assert_eq!(w.resolution, Resolution::Minute);
        let s = w.series(&[row(t(10, 1), 1), row(t(10, 9), 2), row(t(10, 25), 4)]);
        let completed: Vec<i64> = s.points.iter().map(|p| p.figures.completed).collect();
        assert_eq!(completed, vec![3, 0, 4]);
        assert_eq!(s.totals.completed, 7);
        assert_eq!(s.points[1].at, t(10, 10));
    }
}
