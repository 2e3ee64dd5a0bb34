//! [`MetricsStore`], written once for every [`Db`]: the roll-up reads the
//! oldest recorded events, adds them up in Rust (`kira_core::metrics`) and
//! writes every touched series row in one statement (a JSON array of rows,
//! read with `json_each` on SQLite and `jsonb_array_elements` on
//! PostgreSQL, each column added to on conflict), then deletes the events.

use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kira_core::auth::{AdminScope, CompanyScope};
use kira_core::metrics::{
    BUCKETS, COUNTERS, EventKind, Histogram, MetricEvent, Outcome, Resolution, ReviewDecision,
    Rollup, SeriesKey, roll_up,
};
use serde_json::{Value, json};

use crate::flow::store::Db;
use crate::metrics::{
    MetricRow, MetricTotals, MetricsQuery, MetricsStore, QueueGauge, RollupReport, WaitingWork,
};
use crate::sql::{Columns, Conn, Lock, Stmt, q, q_each};
use crate::{Result, StoreError};

/// Every value column of `metric_rollups`, in the row arrays' order after
/// the five key columns: the counters, the cost, the two histograms.
static VALUE_COLUMNS: LazyLock<Vec<String>> = LazyLock::new(|| {
    let mut cols: Vec<String> = COUNTERS.iter().map(|c| (*c).to_owned()).collect();
    cols.push("cost_usd".into());
    cols.extend((0..BUCKETS).map(|i| format!("r{i}")));
    cols.extend((0..BUCKETS).map(|i| format!("w{i}")));
    cols
});

/// A series row's key columns, in the row arrays' order.
const KEYS: [&str; 5] = ["company_id", "agent", "priority", "resolution", "bucket"];

/// `metric_rollups`' primary key (0018), in its order.
const ROLLUP_KEY: [&str; 5] = ["resolution", "bucket", "company_id", "agent", "priority"];

/// The upsert of a JSON array of rows into `table` (its `keys`, then every
/// value column), each value column added to on conflict with its primary
/// key `conflict`.
fn upsert_sql(pg: bool, table: &str, keys: &[&str], conflict: &[&str]) -> String {
    let cols = &*VALUE_COLUMNS;
    let mut select = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        select.push(match (pg, *k) {
            (true, "bucket") => format!("(value ->> {i})::timestamptz"),
            _ => format!("value ->> {i}"),
        });
    }
    for (i, c) in cols.iter().enumerate() {
        let n = i + keys.len();
        select.push(match (pg, c.as_str()) {
            (true, "cost_usd") => format!("(value ->> {n})::float8"),
            (true, _) => format!("(value ->> {n})::bigint"),
            (false, _) => format!("value ->> {n}"),
        });
    }
    let from = if pg {
        "jsonb_array_elements($1) AS j(value)"
    } else {
        // `WHERE true`: SQLite's parser needs it before an upsert's ON.
        "json_each($1) WHERE true"
    };
    let set: Vec<String> = cols
        .iter()
        .map(|c| format!("{c} = {table}.{c} + excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO {table} ({}, {}) SELECT {} FROM {from} \
         ON CONFLICT ({}) DO UPDATE SET {}",
        keys.join(", "),
        cols.join(", "),
        select.join(", "),
        conflict.join(", "),
        set.join(", ")
    )
}

static UPSERT_SQLITE: LazyLock<String> =
    LazyLock::new(|| upsert_sql(false, "metric_rollups", &KEYS, &ROLLUP_KEY));
static UPSERT_PG: LazyLock<String> =
    LazyLock::new(|| upsert_sql(true, "metric_rollups", &KEYS, &ROLLUP_KEY));

/// The company of a `metric_totals` row that adds up every company (per
/// agent, per level): never a company's id, nor the empty setting of a
/// PostgreSQL connection that names no company.
const ALL_COMPANIES: &str = "*";

/// A `metric_totals` row's key columns, in the row arrays' order.
const TOTAL_KEYS: [&str; 4] = ["grouping", "company_id", "agent", "priority"];

static TOTALS_UPSERT_SQLITE: LazyLock<String> =
    LazyLock::new(|| upsert_sql(false, "metric_totals", &TOTAL_KEYS, &TOTAL_KEYS));
static TOTALS_UPSERT_PG: LazyLock<String> =
    LazyLock::new(|| upsert_sql(true, "metric_totals", &TOTAL_KEYS, &TOTAL_KEYS));

static SELECT_ROWS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {}, {} FROM metric_rollups WHERE resolution = $1 \
           AND ($2 IS NULL OR bucket >= $2) AND ($3 IS NULL OR bucket < $3) \
           AND ($4 IS NULL OR agent = $4) AND ($5 IS NULL OR company_id = $5) \
         ORDER BY bucket, company_id, agent, priority",
        KEYS.join(", "),
        VALUE_COLUMNS.join(", ")
    )
});

static SELECT_TOTALS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT grouping, company_id, agent, priority, {} FROM metric_totals \
         ORDER BY grouping, company_id, agent, priority",
        VALUE_COLUMNS.join(", ")
    )
});

/// The all-time sums per company, agent and level, as the roll-up keeps
/// them in `metric_totals`: a scrape reads one row per company, agent and
/// level instead of adding up the series.
async fn totals_of(c: &mut dyn Conn) -> Result<MetricTotals> {
    let mut t = MetricTotals::default();
    for r in c.all(q(SELECT_TOTALS.as_str())).await? {
        let grouping = r.text("grouping")?;
        let company_id = r.text("company_id")?;
        let row = MetricRow {
            key: SeriesKey {
                company_id: if company_id == ALL_COMPANIES {
                    String::new()
                } else {
                    company_id
                },
                agent: r.text("agent")?,
                priority: r.text("priority")?,
                resolution: Resolution::Total,
                bucket: DateTime::UNIX_EPOCH,
            },
            sums: sums_from_row(&r)?,
        };
        match grouping.as_str() {
            "company" => t.by_company.push(row),
            "agent" => t.by_agent.push(row),
            "level" => t.by_level.push(row),
            g => return Err(corrupt("metric totals grouping", g)),
        }
    }
    Ok(t)
}

/// What a batch of series rows adds to `metric_totals`: their all-time
/// rows added up per company, per agent and per level, as the upsert's
/// JSON rows.
fn totals_json(series: &[(SeriesKey, Rollup)]) -> Vec<Value> {
    let mut groups: std::collections::BTreeMap<(&str, &str, &str, &str), Rollup> =
        Default::default();
    for (k, sums) in series
        .iter()
        .filter(|(k, _)| k.resolution == Resolution::Total)
    {
        for key in [
            ("company", k.company_id.as_str(), "", ""),
            ("agent", ALL_COMPANIES, k.agent.as_str(), ""),
            ("level", ALL_COMPANIES, "", k.priority.as_str()),
        ] {
            groups.entry(key).or_default().add(sums);
        }
    }
    groups
        .into_iter()
        .map(|((g, company, agent, level), sums)| {
            let mut v = vec![json!(g), json!(company), json!(agent), json!(level)];
            push_sums(&mut v, &sums);
            Value::Array(v)
        })
        .collect()
}

fn corrupt(what: &str, v: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} {v:?}"))
}

fn event_from_row<R: Columns + ?Sized>(r: &R) -> Result<MetricEvent> {
    let kind = match r.text("kind")?.as_str() {
        "task" => EventKind::Task {
            outcome: match r.opt_text("outcome")? {
                Some(o) => Some(Outcome::parse(&o).ok_or_else(|| corrupt("outcome", &o))?),
                None => None,
            },
            created_at: r.time("created_at")?,
            started_at: r.opt_time("started_at")?,
            prompt_tokens: r.int("prompt_tokens")?,
            completion_tokens: r.int("completion_tokens")?,
            cost_usd: r.real("cost_usd")?,
        },
        "tool" => EventKind::ToolCall,
        "review" => EventKind::Review {
            decision: match r.opt_text("decision")?.as_deref() {
                Some("approved") => Some(ReviewDecision::Approved),
                Some("rejected") => Some(ReviewDecision::Rejected),
                Some(d) => return Err(corrupt("review decision", d)),
                None => None,
            },
            rating: r.opt_int("rating")?.map(|v| v as i32),
            previous_rating: r.opt_int("prev_rating")?.map(|v| v as i32),
        },
        k => return Err(corrupt("metric event kind", k)),
    };
    Ok(MetricEvent {
        company_id: r.text("company_id")?,
        agent: r.text("agent")?,
        priority: r.text("priority")?,
        at: r.time("at")?,
        kind,
    })
}

/// A row's value columns.
fn sums_from_row<R: Columns + ?Sized>(r: &R) -> Result<Rollup> {
    let mut counters = [0i64; COUNTERS.len()];
    for (v, c) in counters.iter_mut().zip(COUNTERS) {
        *v = r.int(c)?;
    }
    let mut response = Histogram::default();
    let mut queue_wait = Histogram::default();
    // The value columns after the counters and the cost: r0.., then w0...
    let (r_cols, w_cols) = VALUE_COLUMNS[COUNTERS.len() + 1..].split_at(BUCKETS);
    for i in 0..BUCKETS {
        response.0[i] = r.int(&r_cols[i])?;
        queue_wait.0[i] = r.int(&w_cols[i])?;
    }
    Ok(Rollup::from_counters(
        counters,
        r.real("cost_usd")?,
        response,
        queue_wait,
    ))
}

fn metric_row_from_row<R: Columns + ?Sized>(r: &R) -> Result<MetricRow> {
    let resolution = r.text("resolution")?;
    Ok(MetricRow {
        key: SeriesKey {
            company_id: r.text("company_id")?,
            agent: r.text("agent")?,
            priority: r.text("priority")?,
            resolution: Resolution::parse(&resolution)
                .ok_or_else(|| corrupt("resolution", &resolution))?,
            bucket: r.time("bucket")?,
        },
        sums: sums_from_row(r)?,
    })
}

/// A series row as the upsert's JSON array reads it.
fn row_json(key: &SeriesKey, sums: &Rollup) -> Value {
    let mut v = vec![
        json!(key.company_id),
        json!(key.agent),
        json!(key.priority),
        json!(key.resolution.as_str()),
        json!(crate::sqlite::ts(key.bucket)),
    ];
    push_sums(&mut v, sums);
    Value::Array(v)
}

/// `sums` in [`VALUE_COLUMNS`]' order.
fn push_sums(v: &mut Vec<Value>, sums: &Rollup) {
    v.extend(sums.counters().iter().map(|c| json!(c)));
    v.push(json!(sums.cost_usd));
    v.extend(sums.response.0.iter().map(|c| json!(c)));
    v.extend(sums.queue_wait.0.iter().map(|c| json!(c)));
}

/// Admits every company's metric rows for this transaction (PostgreSQL).
async fn rollup_policy(c: &mut dyn Conn) -> Result<()> {
    c.exec(q("SELECT set_config('app.metrics_rollup', 'on', true)").pg_only())
        .await?;
    Ok(())
}

async fn roll_up_tx(c: &mut dyn Conn, limit: u32) -> Result<RollupReport> {
    rollup_policy(c).await?;
    let rows = c
        .all(
            q("SELECT event_id, company_id, agent, priority, kind, at, outcome, created_at, \
                 started_at, prompt_tokens, completion_tokens, cost_usd, decision, rating, prev_rating \
               FROM metric_events ORDER BY event_id LIMIT $1")
            .arg(i64::from(limit))
            .locked(Lock::UpdateSkipLocked),
        )
        .await?;
    if rows.is_empty() {
        return Ok(RollupReport::default());
    }
    let mut ids = Vec::with_capacity(rows.len());
    let mut events = Vec::with_capacity(rows.len());
    for r in &rows {
        ids.push(json!(r.int("event_id")?));
        events.push(event_from_row(r)?);
    }
    let rolled = roll_up(&events);
    let series: Vec<Value> = rolled.iter().map(|(k, s)| row_json(k, s)).collect();
    c.exec(q_each(UPSERT_SQLITE.as_str(), UPSERT_PG.as_str()).arg(&series[..]))
        .await?;
    let totals = totals_json(&rolled);
    c.exec(q_each(TOTALS_UPSERT_SQLITE.as_str(), TOTALS_UPSERT_PG.as_str()).arg(&totals[..]))
        .await?;
    c.exec(
        q_each(
            "DELETE FROM metric_events WHERE event_id IN (SELECT value FROM json_each($1))",
            "DELETE FROM metric_events \
             WHERE event_id IN (SELECT (jsonb_array_elements_text($1))::bigint)",
        )
        .arg(&ids[..]),
    )
    .await?;
    Ok(RollupReport {
        events: events.len(),
        rows: series.len(),
    })
}

fn select_rows<'a>(query: &'a MetricsQuery, company: Option<&'a str>) -> Stmt<'a> {
    let ranged = query.resolution != Resolution::Total;
    q(SELECT_ROWS.as_str())
        .arg(query.resolution.as_str())
        .arg(query.from.filter(|_| ranged))
        .arg(query.to.filter(|_| ranged))
        .arg(query.agent.as_deref())
        .arg(company)
}

async fn read_rows(c: &mut dyn Conn, s: Stmt<'_>) -> Result<Vec<MetricRow>> {
    c.all(s).await?.iter().map(metric_row_from_row).collect()
}

#[async_trait]
impl<D: Db> MetricsStore for D {
    async fn roll_up_metrics(&self, limit: u32) -> Result<RollupReport> {
        let mut tx = self.write_system().await?;
        match roll_up_tx(&mut tx, limit).await {
            Ok(report) => {
                D::commit(tx).await?;
                Ok(report)
            }
            Err(e) => {
                let _ = D::rollback(tx).await;
                Err(e)
            }
        }
    }

    async fn pending_metric_events(&self) -> Result<i64> {
        let mut r = self.read_all(false).await?;
        let n = r.int(q("SELECT count(*) FROM metric_events")).await;
        D::end_read(r).await?;
        Ok(n?.unwrap_or(0))
    }

    async fn prune_metrics(&self, resolution: Resolution, before: DateTime<Utc>) -> Result<u64> {
        if resolution == Resolution::Total {
            return Ok(0);
        }
        let mut tx = self.write_system().await?;
        rollup_policy(&mut tx).await?;
        let n = tx
            .exec(
                q("DELETE FROM metric_rollups WHERE resolution = $1 AND bucket < $2")
                    .arg(resolution.as_str())
                    .arg(before),
            )
            .await?;
        D::commit(tx).await?;
        Ok(n)
    }

    async fn company_metrics(
        &self,
        scope: &CompanyScope,
        query: &MetricsQuery,
    ) -> Result<Vec<MetricRow>> {
        let company = scope.company();
        let mut r = self.read_for(company).await?;
        let rows = read_rows(&mut r, select_rows(query, Some(company.as_str()))).await;
        D::end_read(r).await?;
        rows
    }

    async fn all_metrics(
        &self,
        _admin: &AdminScope,
        query: &MetricsQuery,
    ) -> Result<Vec<MetricRow>> {
        let mut r = self.read_all(false).await?;
        let rows = read_rows(&mut r, select_rows(query, None)).await;
        D::end_read(r).await?;
        rows
    }

    async fn metric_totals(&self, _admin: &AdminScope) -> Result<MetricTotals> {
        let mut r = self.read_all(false).await?;
        let found = totals_of(&mut r).await;
        D::end_read(r).await?;
        found
    }

    async fn waiting_work(&self, _admin: &AdminScope) -> Result<WaitingWork> {
        let mut r = self.read_all(false).await?;
        let found = waiting_work_of(&mut r).await;
        D::end_read(r).await?;
        found
    }
}

async fn waiting_work_of(c: &mut dyn Conn) -> Result<WaitingWork> {
    let queue = c
        .all(q(
            "SELECT status, priority, count(*) AS n, min(waiting_since) AS oldest \
             FROM task_queue GROUP BY status, priority ORDER BY status, priority",
        ))
        .await?
        .iter()
        .map(|r| {
            Ok(QueueGauge {
                status: r.text("status")?,
                priority: r.text("priority")?,
                tasks: r.int("n")?,
                oldest_waiting_since: r.opt_time("oldest")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    // The partial index `tasks_needs_review` (0018) holds just these.
    let reviews_waiting = c
        .all(q(
            "SELECT company_id, count(*) AS n FROM tasks WHERE status = 'needs_review' \
             GROUP BY company_id ORDER BY company_id",
        ))
        .await?
        .iter()
        .map(|r| Ok((r.text("company_id")?, r.int("n")?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(WaitingWork {
        queue,
        reviews_waiting,
    })
}
