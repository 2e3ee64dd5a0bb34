//! Prometheus exposition (`GET /metrics`, OpenMetrics text) with the
//! `prometheus-client` crate: the HTTP requests this process served
//! (counted here, per process), and what the database knows for the whole
//! deployment at the scrape (tasks, response times, tokens, cost, tool
//! calls, reviews, budgets, the queue, and every process's authentication
//! failures, denied cross-company reads and provider calls), written from
//! the engine's [`Scrape`] by a collector.
//!
//! The database's series are the same on every kira process of one
//! PostgreSQL (sum them with `max without (instance)`); the process series
//! are per process (sum them). Labels are bounded: company ids, agent
//! names, levels, pools, route templates, status classes.

use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use kira_core::metrics::{BOUNDS_MS, Histogram as Buckets, Rollup};
use kira_engine::metrics::Scrape;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::App;

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

/// What this process counts itself.
#[derive(Debug)]
pub struct ProcessMetrics {
    registry: Registry,
    http_requests: Family<Labels, Counter>,
    http_seconds: Family<Labels, Histogram>,
}

impl Default for ProcessMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let http_requests = Family::<Labels, Counter>::default();
        let http_seconds = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
        });
        registry.register(
            "kira_http_requests",
            "HTTP requests served, by route template, method and status class",
            http_requests.clone(),
        );
        registry.register(
            "kira_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template",
            http_seconds.clone(),
        );
        ProcessMetrics {
            registry,
            http_requests,
            http_seconds,
        }
    }
}

/// Counts a routed request (its route's template, never its path).
pub async fn record_request(State(app): State<App>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(req).await;
    let class = format!("{}xx", response.status().as_u16() / 100);
    let m = &app.process;
    m.http_requests
        .get_or_create(&vec![
            ("route", route.clone()),
            ("method", method),
            ("status", class),
        ])
        .inc();
    m.http_seconds
        .get_or_create(&vec![("route", route)])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The exposition: this process's series, then the scrape's.
pub fn render(process: &ProcessMetrics, scrape: Scrape) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode_registry(&mut out, &process.registry)?;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ScrapeCollector(Mutex::new(Some(scrape)))));
    prometheus_client::encoding::text::encode_registry(&mut out, &registry)?;
    prometheus_client::encoding::text::encode_eof(&mut out)?;
    Ok(out)
}

/// One scrape's data, written once.
#[derive(Debug)]
struct ScrapeCollector(Mutex<Option<Scrape>>);

/// A histogram whose buckets were counted elsewhere.
#[derive(Debug)]
struct ConstHistogram {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl ConstHistogram {
    /// From stored bucket counts and their sum in milliseconds.
    fn of(b: &Buckets, sum_ms: i64) -> ConstHistogram {
        let counts: Vec<u64> = b.0.iter().map(|n| u64::try_from(*n).unwrap_or(0)).collect();
        let bounds: Vec<f64> = BOUNDS_MS.iter().map(|ms| *ms as f64 / 1_000.0).collect();
        ConstHistogram::from_parts(sum_ms as f64 / 1_000.0, &counts, &bounds)
    }

    /// From per-bucket counts (one more than `bounds`: the overflow) and
    /// their sum.
    fn from_parts(sum: f64, counts: &[u64], bounds: &[f64]) -> ConstHistogram {
        let mut cumulative = 0u64;
        let mut buckets = Vec::with_capacity(counts.len());
        for (i, n) in counts.iter().enumerate() {
            cumulative += n;
            buckets.push((bounds.get(i).copied().unwrap_or(f64::INFINITY), cumulative));
        }
        ConstHistogram {
            sum,
            count: cumulative,
            buckets,
        }
    }
}

impl prometheus_client::metrics::TypedMetric for ConstHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ConstHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.sum,
            self.count,
            &self.buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Writes one family: its descriptor, then each labelled value.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    values: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in values {
        v.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A row's key and sums: the company, agent or level it was added up by.
fn keyed(
    rows: &[kira_store::metrics::MetricRow],
    key: fn(&kira_core::metrics::SeriesKey) -> &String,
) -> impl Iterator<Item = (&String, &Rollup)> + Clone {
    rows.iter().map(move |r| (key(&r.key), &r.sums))
}

impl Collector for ScrapeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = self.0.lock().map_err(|_| std::fmt::Error)?.take() else {
            return Ok(());
        };
        tasks(&mut e, &s)?;
        usage(&mut e, &s)?;
        budget(&mut e, &s)?;
        queue(&mut e, &s)?;
        providers(&mut e, &s)?;
        nodes(&mut e, &s.health)?;
        family(
            &mut e,
            "kira_context_facts",
            "Facts of the memories compaction summarised (checked) and those the summaries kept, by company",
            MetricType::Counter,
            s.retention.iter().flat_map(|(c, f)| {
                [("checked", f.facts), ("kept", f.kept)]
                    .into_iter()
                    .map(move |(state, n)| {
                        (
                            vec![("company", c.clone()), ("state", state.to_owned())],
                            ConstCounter::new(u(n)),
                        )
                    })
            }),
        )?;
        family(
            &mut e,
            "kira_auth_failures",
            "Requests refused for a missing, unknown, revoked or expired key",
            MetricType::Counter,
            [(Labels::new(), ConstCounter::new(s.auth_failures))],
        )?;
        family(
            &mut e,
            "kira_denied_cross_company_reads",
            "Reads of another company's data refused",
            MetricType::Counter,
            [(
                Labels::new(),
                ConstCounter::new(s.denied_cross_company_reads),
            )],
        )
    }
}

/// A counter family per company and its twin per agent (`kira_agent_`
/// prefix): the same figures added up both ways, so a scrape has
/// companies + agents series, not their product.
fn both<V, const N: usize>(
    e: &mut DescriptorEncoder,
    s: &Scrape,
    name: &str,
    help: &str,
    extra: &'static str,
    values: fn(&Rollup) -> [(&'static str, V); N],
) -> Result<(), std::fmt::Error>
where
    V: prometheus_client::encoding::EncodeCounterValue + std::fmt::Debug + 'static,
{
    let lines = |label: &'static str, rows: &[kira_store::metrics::MetricRow], key| {
        keyed(rows, key)
            .flat_map(move |(k, r)| {
                values(r).into_iter().map(move |(x, v)| {
                    let mut l = vec![(label, k.clone())];
                    if !extra.is_empty() {
                        l.push((extra, x.to_owned()));
                    }
                    (l, ConstCounter::new(v))
                })
            })
            .collect::<Vec<_>>()
    };
    family(
        e,
        name,
        &format!("{help}, by company"),
        MetricType::Counter,
        lines("company", &s.totals.by_company, |k| &k.company_id),
    )?;
    family(
        e,
        &name.replacen("kira_", "kira_agent_", 1),
        &format!("{help}, by agent"),
        MetricType::Counter,
        lines("agent", &s.totals.by_agent, |k| &k.agent),
    )
}

/// Ends, response times and queue waits.
fn tasks(e: &mut DescriptorEncoder, s: &Scrape) -> Result<(), std::fmt::Error> {
    both(
        e,
        s,
        "kira_tasks_ended",
        "Runs that ended, by outcome",
        "outcome",
        |r| {
            [
                ("completed", u(r.completed)),
                ("failed", u(r.failed)),
                ("cancelled", u(r.cancelled)),
                ("needs_review", u(r.needs_review)),
            ]
        },
    )?;
    family(
        e,
        "kira_task_response_seconds",
        "Submitted to end, per company (compare with its sla_response_seconds)",
        MetricType::Histogram,
        keyed(&s.totals.by_company, |k| &k.company_id).map(|(c, r)| {
            (
                vec![("company", c.clone())],
                ConstHistogram::of(&r.response, r.response_ms),
            )
        }),
    )?;
    family(
        e,
        "kira_company_sla_response_seconds",
        "The response time each company's profile promises",
        MetricType::Gauge,
        s.slas
            .iter()
            .map(|(c, v)| (vec![("company", c.clone())], ConstGauge::new(*v))),
    )?;
    family(
        e,
        "kira_task_queue_wait_seconds",
        "Submitted to the last claim, per priority level",
        MetricType::Histogram,
        keyed(&s.totals.by_level, |k| &k.priority).map(|(l, r)| {
            (
                vec![("level", l.clone())],
                ConstHistogram::of(&r.queue_wait, r.queue_wait_ms),
            )
        }),
    )
}

/// Tokens, cost, tool calls, reviews and ratings.
fn usage(e: &mut DescriptorEncoder, s: &Scrape) -> Result<(), std::fmt::Error> {
    both(
        e,
        s,
        "kira_tokens",
        "Tokens the providers reported, by kind",
        "kind",
        |r| {
            [
                ("prompt", u(r.prompt_tokens)),
                ("completion", u(r.completion_tokens)),
            ]
        },
    )?;
    both(
        e,
        s,
        "kira_cost_usd",
        "Cost the providers' usage came to",
        "",
        |r| [("", r.cost_usd.max(0.0))],
    )?;
    both(e, s, "kira_tool_calls", "Tool calls agents made", "", |r| {
        [("", u(r.tool_calls))]
    })?;
    let by_company = || keyed(&s.totals.by_company, |k| &k.company_id);
    family(
        e,
        "kira_reviews",
        "Human review decisions, by company and decision",
        MetricType::Counter,
        by_company().flat_map(|(c, r)| {
            [
                ("approved", r.reviews_approved),
                ("rejected", r.reviews_rejected),
            ]
            .into_iter()
            .map(move |(d, n)| {
                (
                    vec![("company", c.clone()), ("decision", d.to_owned())],
                    ConstCounter::new(u(n)),
                )
            })
        }),
    )?;
    family(
        e,
        "kira_ratings",
        "Tasks rated (a task's latest rating counts), by company",
        MetricType::Gauge,
        by_company().map(|(c, r)| (vec![("company", c.clone())], ConstGauge::new(r.ratings))),
    )?;
    family(
        e,
        "kira_rating_sum",
        "Sum of the latest ratings (1-5); divided by kira_ratings: satisfaction",
        MetricType::Gauge,
        by_company().map(|(c, r)| (vec![("company", c.clone())], ConstGauge::new(r.rating_sum))),
    )
}

/// The period's pools and allocations.
fn budget(e: &mut DescriptorEncoder, s: &Scrape) -> Result<(), std::fmt::Error> {
    let b = &s.budget;
    family(
        e,
        "kira_budget_pool_tokens",
        "The period's pools: capacity, reserved, spent and overdraft tokens",
        MetricType::Gauge,
        b.pools.iter().flat_map(|p| {
            [
                ("capacity", p.capacity),
                ("reserved", p.reserved),
                ("spent", p.spent),
                ("overdraft", p.overdraft),
            ]
            .into_iter()
            .map(move |(state, v)| {
                (
                    vec![
                        ("pool", p.pool.as_str().to_owned()),
                        ("state", state.to_owned()),
                    ],
                    ConstGauge::new(v),
                )
            })
        }),
    )?;
    family(
        e,
        "kira_budget_company_tokens",
        "Each company's base allocation: allocated, reserved, spent, and projected to the period's end",
        MetricType::Gauge,
        s.companies.iter().flat_map(|c| {
            [
                ("allocated", c.allocation),
                ("reserved", c.reserved),
                ("spent", c.spent),
                ("overdraft", c.overdraft),
                ("projected", c.projected),
            ]
            .into_iter()
            .map(move |(state, v)| {
                (
                    vec![
                        ("company", c.company_id.clone()),
                        ("state", state.to_owned()),
                    ],
                    ConstGauge::new(v),
                )
            })
        }),
    )
}

/// The queue and the review backlog.
fn queue(e: &mut DescriptorEncoder, s: &Scrape) -> Result<(), std::fmt::Error> {
    family(
        e,
        "kira_queue_tasks",
        "Unfinished tasks, by status and level",
        MetricType::Gauge,
        s.waiting.queue.iter().map(|q| {
            (
                vec![("status", q.status.clone()), ("level", q.priority.clone())],
                ConstGauge::new(q.tasks),
            )
        }),
    )?;
    family(
        e,
        "kira_queue_oldest_runnable_wait_seconds",
        "How long the longest-waiting queued task has waited",
        MetricType::Gauge,
        [(
            Labels::new(),
            ConstGauge::new(s.oldest_runnable_wait_seconds),
        )],
    )?;
    family(
        e,
        "kira_reviews_waiting",
        "Results waiting for a human, by company",
        MetricType::Gauge,
        s.waiting
            .reviews_waiting
            .iter()
            .map(|(c, n)| (vec![("company", c.clone())], ConstGauge::new(*n))),
    )
}

/// The calls to each provider and model, every process's.
fn providers(e: &mut DescriptorEncoder, s: &Scrape) -> Result<(), std::fmt::Error> {
    let labels = |p: &String, m: &String| vec![("provider", p.clone()), ("model", m.clone())];
    family(
        e,
        "kira_provider_calls",
        "Model calls made, by provider, model and outcome (an error after retries and fallbacks)",
        MetricType::Counter,
        s.providers.iter().flat_map(|((p, m), c)| {
            [("ok", c.ok), ("error", c.errors)]
                .into_iter()
                .map(move |(o, n)| {
                    let mut l = labels(p, m);
                    l.push(("outcome", o.to_owned()));
                    (l, ConstCounter::new(n))
                })
        }),
    )?;
    family(
        e,
        "kira_provider_call_seconds",
        "Latency of the model calls that were answered",
        MetricType::Histogram,
        s.providers.iter().map(|((p, m), c)| {
            (
                labels(p, m),
                ConstHistogram::from_parts(
                    c.seconds,
                    &c.buckets,
                    &kira_engine::metrics::PROVIDER_BOUNDS,
                ),
            )
        }),
    )
}

/// The nodes beating now, by role, and the availability KPI.
fn nodes(
    e: &mut DescriptorEncoder,
    h: &kira_engine::nodes::NodeHealth,
) -> Result<(), std::fmt::Error> {
    family(
        e,
        "kira_nodes_live",
        "kira processes beating now, by role (serve, worker)",
        MetricType::Gauge,
        ["serve", "worker"].into_iter().map(|role| {
            let n = h.nodes.iter().filter(|n| n.live && n.role == role).count();
            (vec![("role", role.to_owned())], ConstGauge::new(n as i64))
        }),
    )?;
    family(
        e,
        "kira_availability_ratio",
        "Share of the window with a live kira serve node (from the nodes' heartbeats)",
        MetricType::Gauge,
        [("24h", h.availability_24h), ("30d", h.availability_30d)]
            .into_iter()
            .filter_map(|(w, v)| Some((vec![("window", w.to_owned())], ConstGauge::new(v?)))),
    )
}
