//! Tasks, the queue and budgets on SQLite. Every write runs in a
//! `BEGIN IMMEDIATE` transaction, so SQLite's one writer makes each
//! conditional update see the latest balances.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kira_core::CompanyId;
use kira_core::budget::{
    AllocationInput, BudgetConfig, CompanyFactors, Pool, allocate, allocation_factor,
};
use kira_core::task::{Priority, TaskId, TaskStatus, check_transition};
use sqlx::{Row, SqliteConnection};

use super::json_row::{self, JsonRow};
use super::{SqliteStore, company_id, json, parse_opt_ts, parse_ts, to_json, ts};
use crate::flow::batch::{FastClaim, FinishPlan, push_outcomes};
use crate::flow::budget::*;
use crate::flow::store::Db;
pub(super) use crate::flow::tasks::{TASK_COLUMNS, task_from_row};
use crate::work::*;
use crate::{Result, StoreError};

pub(super) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// Recomputes every company's base allocation in `period`.
pub(crate) async fn refresh_tx(
    tx: &mut SqliteConnection,
    period: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    let base: i64 = sqlx::query_scalar(
        "SELECT capacity - spent FROM budget_pools WHERE period_id = ? AND pool = 'base'",
    )
    .bind(period)
    .fetch_one(&mut *tx)
    .await?;
    let rows = sqlx::query(
        "SELECT c.company_id, c.revenue_usd, c.complexity_score, c.activity_score, c.archived_at, \
                a.tokens, a.reserved, a.spent \
         FROM companies c LEFT JOIN budget_allocations a ON a.company_id = c.company_id AND a.period_id = ? \
         ORDER BY c.company_id",
    )
    .bind(period)
    .fetch_all(&mut *tx)
    .await?;
    let mut inputs = Vec::with_capacity(rows.len());
    let mut old = Vec::with_capacity(rows.len());
    for r in &rows {
        let factor = allocation_factor(&CompanyFactors {
            revenue_usd: r.try_get("revenue_usd")?,
            complexity_score: r.try_get("complexity_score")?,
            activity_score: r.try_get("activity_score")?,
        });
        let archived: Option<String> = r.try_get("archived_at")?;
        let tokens: Option<i64> = r.try_get("tokens")?;
        let committed = committed(
            tokens,
            r.try_get::<Option<i64>, _>("reserved")?.unwrap_or(0),
            r.try_get::<Option<i64>, _>("spent")?.unwrap_or(0),
        );
        inputs.push(AllocationInput {
            company: company_id(r.try_get("company_id")?)?,
            factor,
            active: archived.is_none(),
            committed,
        });
        old.push(tokens);
    }
    for (a, old) in allocate(base, &inputs).into_iter().zip(old) {
        let delta = a.tokens - old.unwrap_or(0);
        sqlx::query(
            "INSERT INTO budget_allocations (period_id, company_id, factor, share, tokens) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (period_id, company_id) DO UPDATE SET factor = excluded.factor, share = excluded.share, \
             tokens = excluded.tokens",
        )
        .bind(period)
        .bind(a.company.as_str())
        .bind(a.factor)
        .bind(a.share)
        .bind(a.tokens)
        .execute(&mut *tx)
        .await?;
        if delta != 0 || old.is_none() {
            ledger(
                tx,
                now,
                period,
                Some(&a.company),
                None,
                None,
                Some(Pool::Base),
                "allocate",
                delta,
                "",
            )
            .await?;
        }
    }
    Ok(())
}

/// What both of the queue snapshot's statements start from: what runs,
/// and for each `(name, index)` of `sources` a view `name` of the tasks
/// that could start at ?3, given the agents' slots (?1, a JSON object;
/// NULL: every task), the company limit (?2) and the runs that ended
/// holding none (?4, a JSON array or NULL), read through `index`
/// (`INDEXED BY`) or the one SQLite picks. Left to pick, SQLite reads the
/// oldest and the nearest deadlines through the status index and sorts
/// every runnable task on each pass; told, it walks the window's own
/// index in order and stops at the limit.
fn startable(sources: &[(&str, Option<&str>)]) -> String {
    let views = sources
        .iter()
        .map(|(name, index)| {
            let index = index.map_or(String::new(), |i| format!(" INDEXED BY {i}"));
            format!(
                "{name} AS NOT MATERIALIZED (SELECT * FROM task_queue{index} \
                 WHERE status IN ('queued', 'waiting_budget') AND not_before <= ?3 \
                 AND (?1 IS NULL OR (agent IN open_agents AND company_id NOT IN full_companies)))"
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "WITH running AS MATERIALIZED (SELECT agent, company_id FROM task_queue \
         WHERE lease_owner IS NOT NULL AND status = 'running' \
         AND task_id NOT IN (SELECT value FROM json_each(?4))), \
         open_agents(agent) AS (SELECT j.key FROM json_each(?1) j \
           WHERE j.value > (SELECT count(*) FROM running r WHERE r.agent = j.key)), \
         full_companies(company_id) AS (SELECT company_id FROM running GROUP BY company_id HAVING count(*) >= ?2), \
         {views} "
    )
}

/// A queue entry as JSON, for `json_group_array`.
const ENTRY: &str = "json_array(task_id, company_id, agent, status, priority, multiplier, \
     deadline, waiting_since, estimated_tokens, attempts)";

/// `sql` (the snapshot's statements) with its limit, `?5`, written in.
/// A limit bound as a parameter is one SQLite reads while planning, so
/// every new binding expired the statement and each pass compiled both
/// statements again (`sqlite3Reprepare`, about 2% of the queue
/// benchmark's CPU); written in, a process's statements stay prepared
/// (the limit is its configuration's, the same on every pass).
fn with_limit(sql: &str, limit: u32) -> String {
    sql.replace("?5", &limit.to_string())
}

/// The queue snapshot (see `queue_snapshot`): the ?5 startable tasks
/// waiting longest, and what runs.
static OLDEST_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{} SELECT (SELECT json_group_array({ENTRY} ORDER BY waiting_since, task_id) \
           FROM (SELECT * FROM startable ORDER BY waiting_since, task_id LIMIT ?5)) AS runnable, \
         (SELECT json_group_array(json_array(agent, company_id)) FROM running) AS running",
        startable(&[("startable", Some("task_queue_oldest"))])
    )
});

/// Read only when the first window is full: of each priority level the
/// first ?5 startable tasks by multiplier then waiting time, and the ?5
/// nearest deadlines, so a task that outranks the oldest is never hidden
/// behind them. (A statement of its own: SQLite evaluates a subquery
/// under a CASE that does not need it.)
static WINDOWS_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let windows = Priority::ALL
        .iter()
        .map(|p| {
            format!(
                "SELECT * FROM (SELECT * FROM startable WHERE priority = '{}' \
                 ORDER BY multiplier DESC, waiting_since, task_id LIMIT ?5)",
                p.as_str()
            )
        })
        .chain(std::iter::once(
            "SELECT * FROM (SELECT * FROM by_deadline WHERE deadline IS NOT NULL \
             ORDER BY deadline, task_id LIMIT ?5)"
                .to_owned(),
        ))
        .collect::<Vec<_>>()
        .join(" UNION ");
    format!(
        "{} SELECT json_group_array({ENTRY}) AS urgent FROM ({windows})",
        startable(&[
            ("startable", None),
            ("by_deadline", Some("task_queue_deadline"))
        ])
    )
});

/// Queue entries from a JSON array of [`ENTRY`]s.
fn queue_entries(text: &str) -> Result<Vec<QueueEntry>> {
    type Entry = (
        String,
        String,
        String,
        String,
        String,
        f64,
        Option<String>,
        String,
        i64,
        i32,
    );
    let entries: Vec<Entry> = json(text)?;
    entries
        .into_iter()
        .map(
            |(
                task,
                company,
                agent,
                status,
                priority,
                multiplier,
                deadline,
                since,
                est,
                attempts,
            )| {
                Ok(QueueEntry {
                    task_id: TaskId::parse(&task).map_err(|e| corrupt("task id", e))?,
                    company_id: company_id(&company)?,
                    agent,
                    status: TaskStatus::parse(&status).map_err(|e| corrupt("status", e))?,
                    priority: Priority::parse(&priority).map_err(|e| corrupt("priority", e))?,
                    multiplier,
                    deadline: parse_opt_ts(deadline)?,
                    waiting_since: parse_ts(&since)?,
                    estimated_tokens: est,
                    attempts,
                })
            },
        )
        .collect()
}

#[async_trait]
impl Db for SqliteStore {
    type Sql = sqlx::Sqlite;
    type Tx = super::Tx;
    type Read = sqlx::pool::PoolConnection<sqlx::Sqlite>;
    type Plain = sqlx::pool::PoolConnection<sqlx::Sqlite>;
    type PlainWrite = super::Tx;

    async fn write_for(&self, _company: &CompanyId) -> Result<super::Tx> {
        self.write().await
    }

    async fn write_system(&self) -> Result<super::Tx> {
        self.write().await
    }

    async fn write_queue(&self) -> Result<super::Tx> {
        self.write().await
    }

    async fn snapshot(&self, _company: Option<&CompanyId>) -> Result<super::Tx> {
        self.write().await
    }

    async fn commit(tx: super::Tx) -> Result<()> {
        tx.commit().await
    }

    async fn rollback(tx: super::Tx) -> Result<()> {
        tx.rollback().await
    }

    async fn read_for(&self, _company: &CompanyId) -> Result<Self::Read> {
        Ok(self.pool.acquire().await?)
    }

    async fn read_all(&self, _queue: bool) -> Result<Self::Read> {
        Ok(self.pool.acquire().await?)
    }

    async fn end_read(_r: Self::Read) -> Result<()> {
        Ok(())
    }

    async fn plain(&self) -> Result<Self::Plain> {
        Ok(self.pool.acquire().await?)
    }

    async fn write_plain(&self) -> Result<super::Tx> {
        self.write().await
    }

    async fn end_plain_write(c: super::Tx) -> Result<()> {
        c.commit().await
    }

    async fn read_queue(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        capacity: Option<&Capacity>,
    ) -> Result<QueueSnapshot> {
        // One row of JSON arrays: a pass reads hundreds of entries, and each
        // row sqlx hands over is a message between threads. The statements
        // are built once from constants (the priority names).
        let agents = capacity.map(|c| to_json(&c.agents)).transpose()?;
        let per_company = capacity.map(|c| i64::from(c.per_company));
        let ended = capacity
            .filter(|c| !c.ended.is_empty())
            .map(|c| to_json(&c.ended))
            .transpose()?;
        let row = sqlx::query(sqlx::AssertSqlSafe(with_limit(&OLDEST_SQL, limit)))
            .bind(agents.as_deref())
            .bind(per_company)
            .bind(ts(now))
            .bind(ended.as_deref())
            .fetch_one(&self.pool)
            .await?;
        let mut runnable = queue_entries(row.try_get("runnable")?)?;
        if runnable.len() >= limit as usize {
            let windows: String = sqlx::query_scalar(sqlx::AssertSqlSafe(with_limit(
                &WINDOWS_SQL,
                level_window(limit),
            )))
            .bind(agents.as_deref())
            .bind(per_company)
            .bind(ts(now))
            .bind(ended.as_deref())
            .fetch_one(&self.pool)
            .await?;
            add_windows(&mut runnable, queue_entries(&windows)?);
        }
        let running: Vec<(String, String)> = json(row.try_get("running")?)?;
        let running = running
            .into_iter()
            .map(|(agent, company)| Ok((agent, company_id(&company)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(QueueSnapshot { runnable, running })
    }

    async fn write_run(
        &self,
        company: &CompanyId,
        records: &RunRecords,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let mut audits = Vec::new();
        super::agents::write_run_records(&mut tx, company, records, now, &mut audits).await?;
        super::append_many(&mut tx, audits).await?;
        tx.commit().await
    }
}

#[async_trait]
impl crate::flow::batch::FastPaths for SqliteStore {
    #[allow(clippy::too_many_arguments)]
    async fn claim_fast(
        &self,
        cands: &[Candidate],
        admission: &mut dyn Admission,
        worker: &str,
        lease_until: DateTime<Utc>,
        budget: &BudgetConfig,
        now: DateTime<Utc>,
        out: &mut Vec<(TaskId, ClaimOutcome)>,
    ) -> Result<usize> {
        let t0 = std::time::Instant::now();
        let mut tx = self.write().await?;
        let t_acquired = t0.elapsed().as_micros();
        let ids: Vec<&str> = cands.iter().map(|c| c.entry.task_id.as_str()).collect();
        let ids = to_json(&ids)?;
        // What each candidate is now (the write lock keeps it so until
        // commit), whether the budget period exists and the candidates'
        // companies' room in it, as one row of JSON: each statement and
        // each row sqlx hands over is a message between threads, inside the
        // writer's turn. The unary `+` keeps SQLite on the primary key: the
        // status index would scan every queued task for each batch.
        let period = kira_core::budget::period_of(now).id;
        let companies: Vec<&str> = cands.iter().map(|c| c.scope.company().as_str()).collect();
        let row = sqlx::query(
            "SELECT (SELECT json_group_array(json_array(q.task_id, q.company_id, q.status, q.estimated_tokens, \
                       EXISTS (SELECT 1 FROM reservations r WHERE r.task_id = q.task_id AND r.state = 'held'))) \
                     FROM task_queue q WHERE q.task_id IN (SELECT value FROM json_each(?1)) \
                     AND +q.status IN ('queued', 'waiting_budget') AND +q.not_before <= ?2) AS candidates, \
               EXISTS (SELECT 1 FROM budget_periods WHERE period_id = ?3) AS period, \
               (SELECT json_group_array(json_array(company_id, tokens - reserved - spent)) \
                  FROM budget_allocations \
                  WHERE period_id = ?3 AND company_id IN (SELECT value FROM json_each(?4))) AS free",
        )
        .bind(&ids)
        .bind(ts(now))
        .bind(&period)
        .bind(to_json(&companies)?)
        .fetch_one(&mut *tx)
        .await?;
        let candidates: Vec<(String, String, String, i64, i64)> = json(row.try_get("candidates")?)?;
        let mut now_claimable = std::collections::HashMap::with_capacity(candidates.len());
        for (task, owner, status, amount, granted) in candidates {
            let status = TaskStatus::parse(&status).map_err(|e| corrupt("status", e))?;
            now_claimable.insert(task, (owner, status, amount, granted != 0));
        }
        if !row.try_get::<bool, _>("period")? {
            // A new period: no allocation has room in it yet.
            crate::flow::store::ensure_period(&mut tx, budget, now, None).await?;
        }
        // A forecast only: the conditional update below decides.
        let free: Vec<(String, i64)> = json(row.try_get("free")?)?;
        let mut free: std::collections::HashMap<String, i64> = free.into_iter().collect();
        let mut fast = Vec::new();
        let mut gone = Vec::new();
        let mut done = 0;
        for c in cands {
            if !admission.free(&c.entry) {
                done += 1;
                continue;
            }
            let company = c.scope.company().as_str();
            let Some((owner, from, amount, granted)) = now_claimable.get(c.entry.task_id.as_str())
            else {
                gone.push((fast.len(), c.entry.task_id.clone()));
                done += 1;
                continue;
            };
            let left = free.get_mut(company);
            let fits = matches!(&left, Some(l) if **l >= *amount);
            if owner != company
                || *granted
                || !fits
                || check_transition(*from, TaskStatus::Running).is_err()
            {
                break;
            }
            if let Some(l) = left {
                *l -= amount;
            }
            admission.take(&c.entry);
            fast.push(FastClaim {
                c,
                from: *from,
                amount: *amount,
                reservation_id: new_reservation_id(),
            });
            done += 1;
        }
        let t_planned = t0.elapsed().as_micros();
        let claimed = if fast.is_empty() {
            None
        } else {
            Some(claim_set(&mut tx, &fast, &period, worker, lease_until, now).await?)
        };
        let t_written = t0.elapsed().as_micros();
        tx.commit().await?;
        let t_committed = t0.elapsed().as_micros();
        // Read into tasks once the writer's turn is over.
        let claimed = match claimed {
            Some(c) => c.tasks()?,
            None => BTreeMap::new(),
        };
        push_outcomes(out, &fast, gone, claimed, &period)?;
        tracing::debug!(
            tasks = fast.len(),
            t_acquired,
            t_planned,
            t_written,
            t_committed,
            "claim transaction"
        );
        Ok(done)
    }

    /// Records the plain completions (lease held, settlement within its
    /// reservation) in one transaction; returns the indices of the others.
    ///
    /// The writer's turn is the queue's bottleneck, so what can be decided
    /// before it is: which tasks are still ours and what they hold are read
    /// on a reader connection and the whole command is built from that
    /// reading; in the turn, the command itself checks it (each queue row
    /// ended or requeued must still be this worker's running task, each
    /// reservation closed must still be held), and if anything changed in
    /// between (a lease reaped, say), it rolls back and the careful way
    /// reads again inside the turn. Runs that leave audit entries (their
    /// result memories) need the chain's head, which only the turn may
    /// read: those go the careful way at once.
    async fn finish_fast(
        &self,
        worker: &str,
        cs: &[Completion],
        now: DateTime<Utc>,
        out: &mut [Option<Completed>],
    ) -> Result<Vec<usize>> {
        let ids: Vec<&str> = cs.iter().map(|c| c.task_id.as_str()).collect();
        let ids = to_json(&ids)?;
        if cs.iter().all(|c| c.records.memory.is_none()) {
            let mut reader = self.pool.acquire().await?;
            let state = finish_state(&mut reader, &ids, worker).await?;
            drop(reader);
            if let Some(slow) = self.finish_planned(worker, cs, &state, now, out).await? {
                return Ok(slow);
            }
        }
        let t0 = std::time::Instant::now();
        let mut tx = self.write().await?;
        let t_acquired = t0.elapsed().as_micros();
        let state = finish_state(&mut tx, &ids, worker).await?;
        let mut planned = plan_finish(worker, cs, &state, now)?;
        let t_planned = t0.elapsed().as_micros();
        std::mem::take(&mut planned.script).run(&mut tx).await?;
        let t_written = t0.elapsed().as_micros();
        tx.commit().await?;
        tracing::debug!(
            tasks = planned.recorded.len(),
            t_acquired,
            t_planned,
            t_written,
            t_committed = t0.elapsed().as_micros(),
            "finish transaction"
        );
        Ok(planned.apply(out))
    }
}

impl SqliteStore {
    /// Records a batch finish planned from `state`, read before the
    /// writer's turn: the outcomes in `out` and the indices for the single
    /// way, or None, with nothing written, if the command failed in the
    /// turn because what was read had changed (a count that is off, or a
    /// balance the stale plan would take below zero); the caller then
    /// reads again in the turn, where an error that is not of the reading
    /// recurs.
    async fn finish_planned(
        &self,
        worker: &str,
        cs: &[Completion],
        state: &FinishState,
        now: DateTime<Utc>,
        out: &mut [Option<Completed>],
    ) -> Result<Option<Vec<usize>>> {
        let t0 = std::time::Instant::now();
        let mut planned = plan_finish(worker, cs, state, now)?;
        let t_planned = t0.elapsed().as_micros();
        let mut tx = self.write().await?;
        let t_acquired = t0.elapsed().as_micros();
        if let Err(e) = std::mem::take(&mut planned.script).run(&mut tx).await {
            tracing::debug!(error = %e, "a finish planned before the turn is read again in it");
            tx.rollback().await?;
            return Ok(None);
        }
        tx.commit().await?;
        tracing::debug!(
            tasks = planned.recorded.len(),
            t_planned,
            t_acquired,
            t_committed = t0.elapsed().as_micros(),
            "finish transaction, planned before the turn"
        );
        Ok(Some(planned.apply(out)))
    }
}

/// What a batch finish starts from: of the tasks it ends, those still this
/// worker's running tasks (task id to company), what each holds, and the
/// audit chain's head.
struct FinishState {
    ours: std::collections::HashMap<String, String>,
    held: std::collections::HashMap<String, Vec<Reservation>>,
    head: (i64, String),
}

/// Reads the [`FinishState`] of the tasks `ids` (a JSON array) in one
/// statement.
async fn finish_state(conn: &mut SqliteConnection, ids: &str, worker: &str) -> Result<FinishState> {
    let row = sqlx::query(
        "SELECT (SELECT json_group_array(json_array(task_id, company_id)) FROM task_queue \
           WHERE task_id IN (SELECT value FROM json_each(?1)) AND +lease_owner = ?2 AND +status = 'running') AS ours, \
         (SELECT json_group_array(json_array(reservation_id, task_id, company_id, period_id, pool, amount) \
           ORDER BY created_at, reservation_id) FROM reservations \
           WHERE task_id IN (SELECT value FROM json_each(?1)) AND state = 'held') AS held, \
         (SELECT json_array(seq, hash) FROM audit_head WHERE id = 1) AS head",
    )
    .bind(ids)
    .bind(worker)
    .fetch_one(&mut *conn)
    .await?;
    let ours = json::<Vec<(String, String)>>(row.try_get("ours")?)?
        .into_iter()
        .collect();
    type Held = (String, String, String, String, String, i64);
    let mut held: std::collections::HashMap<String, Vec<Reservation>> = Default::default();
    for (rid, task, company, period, pool, amount) in json::<Vec<Held>>(row.try_get("held")?)? {
        let r = Reservation {
            reservation_id: rid,
            task_id: TaskId::parse(&task).map_err(|e| corrupt("task id", e))?,
            company_id: company_id(&company)?,
            period_id: period,
            pool: Pool::parse(&pool).map_err(|e| corrupt("pool", e))?,
            amount,
        };
        held.entry(task).or_default().push(r);
    }
    let head = json(row.try_get("head")?)?;
    Ok(FinishState { ours, held, head })
}

/// A batch finish decided: the command that records the plain
/// completions, which those are, and the outcomes settled without it.
struct PlannedFinish {
    script: super::Script,
    /// Indices recorded when the command commits.
    recorded: Vec<usize>,
    /// Indices found no longer this worker's, with why.
    lost: Vec<(usize, String)>,
    /// Indices for the single way.
    slow: Vec<usize>,
}

impl PlannedFinish {
    /// Fills `out` as committed; the indices for the single way.
    fn apply(self, out: &mut [Option<Completed>]) -> Vec<usize> {
        for (i, why) in self.lost {
            out[i] = Some(Completed::NotFinished(StoreError::Conflict(why)));
        }
        for i in self.recorded {
            out[i] = Some(Completed::Recorded);
        }
        self.slow
    }
}

/// Decides a batch finish from `state`; nothing is written.
fn plan_finish(
    worker: &str,
    cs: &[Completion],
    state: &FinishState,
    now: DateTime<Utc>,
) -> Result<PlannedFinish> {
    let mut slow = Vec::new();
    let mut lost = Vec::new();
    let mut plan = FinishPlan::new(true);
    for (i, c) in cs.iter().enumerate() {
        let company = c.scope.company();
        let mine = state.ours.get(c.task_id.as_str()).map(String::as_str) == Some(company.as_str());
        if !mine && c.settle.is_none() {
            lost.push((
                i,
                format!("worker {worker} no longer holds the lease on {}", c.task_id),
            ));
            continue;
        }
        let task_held = state
            .held
            .get(c.task_id.as_str())
            .map_or(&[][..], Vec::as_slice);
        if !mine || !plan.add(i, c, task_held) {
            slow.push(i);
        }
    }
    // The rest is one command: the ends, the runs' records and the
    // audit entries of their memories.
    let mut script = super::Script::default();
    if !plan.tasks.is_empty() {
        plan.push(&mut script, worker, now)?;
    }
    let runs: Vec<super::agents::RunWrite<'_>> = plan
        .tasks
        .iter()
        .map(|(i, _)| &cs[*i])
        .filter(|c| !c.records.is_empty())
        .map(|c| super::agents::RunWrite {
            company: c.scope.company(),
            task: Some(&c.task_id),
            records: &c.records,
        })
        .collect();
    let mut audits = Vec::new();
    super::agents::push_run_records(&mut script, &runs, now, &mut audits)?;
    super::push_audits(&mut script, state.head.clone(), audits)?;
    Ok(PlannedFinish {
        script,
        recorded: plan.tasks.iter().map(|(i, _)| *i).collect(),
        lost,
        slow,
    })
}

/// Writes the fast claims: queue rows, base allocations, reservations,
/// ledger, task rows and events, one statement each. Returns the task rows
/// as claimed, for the caller to read after its commit.
async fn claim_set(
    tx: &mut SqliteConnection,
    fast: &[FastClaim<'_>],
    period: &str,
    worker: &str,
    lease_until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Claimed> {
    let rows: Vec<serde_json::Value> = fast
        .iter()
        .map(|f| {
            serde_json::json!({
                "id": f.c.entry.task_id.as_str(),
                "company": f.c.scope.company().as_str(),
                "amount": f.amount,
                "rid": f.reservation_id,
                "from": f.from.as_str(),
                "reason": format!("claimed by {worker}; {} tokens reserved from base", f.amount),
            })
        })
        .collect();
    let rows = to_json(&rows)?;
    let companies = fast
        .iter()
        .map(|f| f.c.scope.company())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    // One command; a count that is off fails the claim and the caller's
    // transaction rolls back, so nothing of it is claimed.
    let mut script = super::Script::default();
    script.push(
        "UPDATE task_queue SET status = 'running', lease_owner = ?, lease_expires_at = ?, attempts = attempts + 1 \
         WHERE (task_id, company_id) IN (SELECT value ->> 'id', value ->> 'company' FROM jsonb_each(?)) \
         AND +status IN ('queued', 'waiting_budget') AND +not_before <= ?;",
        [worker.to_owned(), ts(lease_until), rows.clone(), ts(now)],
        Some((fast.len() as u64, "a batch claim found other claimable tasks")),
    );
    // The reservation: one conditional update per company, for the sum.
    script.push(
        "UPDATE budget_allocations SET reserved = budget_allocations.reserved + j.amount \
         FROM (SELECT value ->> 'company' AS company, SUM(value ->> 'amount') AS amount \
               FROM jsonb_each(?) GROUP BY 1) AS j \
         WHERE budget_allocations.period_id = ? AND budget_allocations.company_id = j.company \
         AND budget_allocations.reserved + budget_allocations.spent + j.amount <= budget_allocations.tokens;",
        [rows.clone(), period.to_owned()],
        Some((companies as u64, "a batch claim found other allocations with room")),
    );
    script.push(
        "INSERT INTO reservations (reservation_id, company_id, task_id, period_id, pool, amount, state, created_at) \
         SELECT value ->> 'rid', value ->> 'company', value ->> 'id', ?, 'base', value ->> 'amount', 'held', ? \
         FROM jsonb_each(?) ORDER BY key;",
        [period.to_owned(), ts(now), rows.clone()],
        None,
    );
    script.push(
        "INSERT INTO budget_ledger (at, period_id, company_id, task_id, reservation_id, pool, kind, amount, detail) \
         SELECT ?, ?, value ->> 'company', value ->> 'id', value ->> 'rid', 'base', 'reserve', value ->> 'amount', '' \
         FROM jsonb_each(?) ORDER BY key;",
        [ts(now), period.to_owned(), rows.clone()],
        None,
    );
    script.push(
        "UPDATE tasks SET status = 'running', status_reason = j.reason, updated_at = ?, attempts = attempts + 1, \
         started_at = COALESCE(started_at, ?) \
         FROM (SELECT value ->> 'id' AS id, value ->> 'company' AS company, value ->> 'reason' AS reason \
               FROM jsonb_each(?)) AS j \
         WHERE tasks.company_id = j.company AND tasks.task_id = j.id;",
        [ts(now), ts(now), rows.clone()],
        Some((fast.len() as u64, "a batch claim found other task rows")),
    );
    script.push(
        "INSERT INTO task_events (company_id, task_id, at, from_status, to_status, reason) \
         SELECT value ->> 'company', value ->> 'id', ?, value ->> 'from', 'running', value ->> 'reason' \
         FROM jsonb_each(?) ORDER BY key;",
        [ts(now), rows.clone()],
        None,
    );
    // The tasks as claimed, and those whose reals JSON cannot carry exactly.
    static CLAIMED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let values: Vec<String> = TASK_COLUMN_NAMES
            .iter()
            .map(|c| {
                if TASK_REAL_COLUMNS.contains(c) {
                    json_row::real(c)
                } else {
                    (*c).to_owned()
                }
            })
            .collect();
        let exact: Vec<String> = TASK_REAL_COLUMNS
            .iter()
            .map(|c| json_row::real_is_exact(c))
            .collect();
        format!(
            "SELECT json_group_array(json_array({})), \
               json_group_array(task_id) FILTER (WHERE NOT ({})) \
             FROM tasks \
             WHERE (company_id, task_id) IN (SELECT value ->> 'company', value ->> 'id' FROM jsonb_each(?));",
            values.join(", "),
            exact.join(" AND ")
        )
    });
    script.push(&CLAIMED, [rows], None);
    let returned = script.run(tx).await?;
    let claimed = returned
        .last()
        .and_then(|rows| rows.first())
        .ok_or_else(|| corrupt("a batch claim", "the claimed tasks were not read back"))?;
    let inexact: String = claimed.try_get(1)?;
    let exact = if inexact == "[]" {
        Vec::new()
    } else {
        static ROWS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE task_id IN (SELECT value FROM json_each(?))"
            )
        });
        sqlx::query(sqlx::AssertSqlSafe(ROWS.as_str()))
            .bind(inexact)
            .fetch_all(&mut *tx)
            .await?
    };
    Ok(Claimed {
        json: claimed.try_get(0)?,
        exact,
    })
}

/// The task rows a batch claim wrote, to be read once the writer's turn is
/// over: one JSON array of [`TASK_COLUMN_NAMES`] arrays (one message where
/// `RETURNING` would send a row each), and, read as rows, those whose reals
/// the JSON does not carry exactly.
struct Claimed {
    json: String,
    exact: Vec<sqlx::sqlite::SqliteRow>,
}

impl Claimed {
    /// The claimed tasks by id.
    fn tasks(&self) -> Result<BTreeMap<String, kira_core::task::Task>> {
        let mut tasks = JsonRow::all(&TASK_COLUMN_NAMES, &self.json)?
            .iter()
            .map(|r| {
                let t = task_from_row(r)?;
                Ok((t.task_id.as_str().to_owned(), t))
            })
            .collect::<Result<BTreeMap<_, _>>>()?;
        for r in &self.exact {
            let t = task_from_row(r)?;
            tasks.insert(t.task_id.as_str().to_owned(), t);
        }
        Ok(tasks)
    }
}

/// The names of [`TASK_COLUMNS`], in order: the columns of a claimed
/// task's [`JsonRow`].
static TASK_COLUMN_NAMES: std::sync::LazyLock<Vec<&'static str>> =
    std::sync::LazyLock::new(|| TASK_COLUMNS.split(',').map(str::trim).collect());

/// The REAL columns of `tasks`.
const TASK_REAL_COLUMNS: [&str; 2] = ["confidence", "cost_usd"];

/// SQLite writes a plan as statements of a one-command script.
trait PushPlan {
    fn push(&self, script: &mut super::Script, worker: &str, now: DateTime<Utc>) -> Result<()>;
}

impl PushPlan for FinishPlan {
    /// One statement per table, whatever the number of completions, added
    /// to `script`: the statements are independent of each other's
    /// results, only their row counts are checked. Each queue row must
    /// still be `worker`'s running task, each reservation closed still
    /// held at the amount read, and no task may hold a reservation the
    /// reading did not see, so a plan made from an earlier reading fails (a
    /// conflict, nothing written) if any of that changed since: a resize or
    /// a reserve in between would otherwise leave tokens held that the
    /// ledger and the balances disagree on.
    fn push(&self, script: &mut super::Script, worker: &str, now: DateTime<Utc>) -> Result<()> {
        if !self.closed.is_empty() {
            let closed = to_json(&self.closed)?;
            script.push(
                "UPDATE reservations SET state = j.state, spent = j.spent, cost_usd = j.cost, closed_at = ? \
                 FROM (SELECT value ->> 'rid' AS rid, value ->> 'state' AS state, value ->> 'spent' AS spent, \
                         value ->> 'cost' AS cost, value ->> 'amount' AS amount \
                       FROM jsonb_each(?)) AS j \
                 WHERE reservations.reservation_id = j.rid AND reservations.state = 'held' \
                 AND reservations.amount = j.amount;",
                [ts(now), closed.clone()],
                Some((
                    self.closed.len() as u64,
                    "a reservation changed during a batch finish",
                )),
            );
            // The balances: base on the companies' allocations, the others on
            // their pool rows, as move_tokens does one by one.
            script.push(
                "UPDATE budget_allocations SET reserved = budget_allocations.reserved - j.amount, spent = budget_allocations.spent + j.spent \
                 FROM (SELECT value ->> 'period' AS period, value ->> 'company' AS company, \
                         SUM(value ->> 'amount') AS amount, SUM(value ->> 'spent') AS spent \
                       FROM jsonb_each(?) WHERE value ->> 'pool' = 'base' GROUP BY 1, 2) AS j \
                 WHERE budget_allocations.period_id = j.period AND budget_allocations.company_id = j.company;",
                [closed.clone()],
                None,
            );
            script.push(
                "UPDATE budget_pools SET reserved = budget_pools.reserved - j.amount, spent = budget_pools.spent + j.spent \
                 FROM (SELECT value ->> 'period' AS period, value ->> 'pool' AS pool, \
                         SUM(value ->> 'amount') AS amount, SUM(value ->> 'spent') AS spent \
                       FROM jsonb_each(?) WHERE value ->> 'pool' <> 'base' GROUP BY 1, 2) AS j \
                 WHERE budget_pools.period_id = j.period AND budget_pools.pool = j.pool;",
                [closed],
                None,
            );
            script.push(
                "INSERT INTO budget_ledger (at, period_id, company_id, task_id, reservation_id, pool, kind, amount, detail) \
                 SELECT ?, value ->> 'period', value ->> 'company', value ->> 'id', value ->> 'rid', value ->> 'pool', \
                   value ->> 'kind', value ->> 'amount', value ->> 'detail' FROM jsonb_each(?) ORDER BY key;",
                [ts(now), to_json(&self.ledger)?],
                None,
            );
        }
        if !self.ended.is_empty() {
            script.push(
                "DELETE FROM task_queue \
                 WHERE (task_id, company_id) IN (SELECT value ->> 'id', value ->> 'company' FROM jsonb_each(?)) \
                 AND +lease_owner = ? AND +status = 'running';",
                [to_json(&self.ended)?, worker.to_owned()],
                Some((
                    self.ended.len() as u64,
                    "a task ended in a batch finish is no longer this worker's",
                )),
            );
        }
        if !self.requeued.is_empty() {
            script.push(
                "UPDATE task_queue SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL, \
                   not_before = COALESCE(j.not_before, ?) \
                 FROM (SELECT value ->> 'id' AS id, value ->> 'company' AS company, value ->> 'not_before' AS not_before \
                       FROM jsonb_each(?)) AS j \
                 WHERE task_queue.task_id = j.id AND task_queue.company_id = j.company \
                 AND task_queue.lease_owner = ? AND task_queue.status = 'running';",
                [ts(now), to_json(&self.requeued)?, worker.to_owned()],
                Some((
                    self.requeued.len() as u64,
                    "a task requeued in a batch finish is no longer this worker's",
                )),
            );
        }
        let tasks: Vec<&serde_json::Value> = self.tasks.iter().map(|(_, t)| t).collect();
        let tasks = to_json(&tasks)?;
        // Every reservation the tasks held was closed above; one still
        // held was taken after the reading.
        script.push(
            "UPDATE reservations SET state = 'held' \
             WHERE (task_id, company_id) IN (SELECT value ->> 'id', value ->> 'company' FROM jsonb_each(?)) \
             AND state = 'held';",
            [tasks.clone()],
            Some((0, "a task ended in a batch finish took a reservation since it was read")),
        );
        script.push(
            "UPDATE tasks SET result = j.result, confidence = j.confidence, requires_human_review = j.review, \
               last_error = COALESCE(j.error, last_error), status = j.status, status_reason = j.reason, \
               updated_at = ?, finished_at = CASE WHEN j.finished THEN ? ELSE finished_at END, \
               prompt_tokens = prompt_tokens + j.p, completion_tokens = completion_tokens + j.c, \
               cost_usd = cost_usd + j.cost \
             FROM (SELECT value ->> 'id' AS id, value ->> 'company' AS company, value ->> 'result' AS result, \
                     value ->> 'confidence' AS confidence, value ->> 'review' AS review, value ->> 'error' AS error, \
                     value ->> 'status' AS status, value ->> 'reason' AS reason, value ->> 'finished' AS finished, \
                     value ->> 'p' AS p, value ->> 'c' AS c, value ->> 'cost' AS cost FROM jsonb_each(?)) AS j \
             WHERE tasks.company_id = j.company AND tasks.task_id = j.id;",
            [ts(now), ts(now), tasks.clone()],
            Some((
                self.tasks.len() as u64,
                "a task row was missing in a batch finish",
            )),
        );
        script.push(
            "INSERT INTO task_events (company_id, task_id, at, from_status, to_status, reason) \
             SELECT value ->> 'company', value ->> 'id', ?, 'running', value ->> 'status', value ->> 'reason' \
             FROM jsonb_each(?) ORDER BY key;",
            [ts(now), tasks],
            None,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store holding the company acme, its write scope, the tests' time
    /// and a budget of 10,000 tokens.
    async fn acme() -> (
        SqliteStore,
        kira_core::auth::CompanyScope,
        DateTime<Utc>,
        kira_core::budget::BudgetConfig,
    ) {
        use crate::CompanyStore;
        use kira_core::auth::{Access, Principal};

        let store = SqliteStore::open("sqlite::memory:").await.expect("open");
        let t0 = chrono::DateTime::parse_from_rfc3339("2026-06-01T12:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let (id, profile) =
            serde_json::from_value::<kira_core::company::NewCompany>(serde_json::json!({
                "id": "acme", "name": "Acme", "industry": "fintech", "jurisdiction": "US-DE",
                "revenue_usd": 1_000_000, "complexity_score": 0.5, "activity_score": 0.5,
            }))
            .expect("new company")
            .validate()
            .expect("valid");
        let scope = Principal::system()
            .scope(&id, Access::Write)
            .expect("scope");
        store
            .create_company(&scope, &profile, t0, record(t0, "company.create"))
            .await
            .expect("create");
        let cfg = kira_core::budget::BudgetConfig {
            total_tokens: 10_000,
            ..kira_core::budget::BudgetConfig::default()
        };
        (store, scope, t0, cfg)
    }

    fn record(at: DateTime<Utc>, action: &str) -> kira_core::audit::AuditRecord {
        kira_core::audit::AuditRecord {
            at,
            request_id: "req".into(),
            actor: "system".into(),
            company_id: Some(CompanyId::parse("acme").expect("id")),
            action: action.into(),
            target: "test".into(),
            outcome: kira_core::audit::Outcome::Ok,
            detail: String::new(),
        }
    }

    /// A task of 100 tokens for acme's legal agent.
    async fn submit(
        store: &SqliteStore,
        scope: &kira_core::auth::CompanyScope,
        t0: DateTime<Utc>,
    ) -> TaskId {
        let new = NewTask {
            label: "legal".into(),
            company_context: serde_json::json!({}),
            task: "review".into(),
            task_type: "quick_question_answer".into(),
            priority: Priority::Medium,
            deadline: None,
            parameters: serde_json::json!({}),
            specialist: None,
            agent: "legal".into(),
            estimated_tokens: 100,
            max_attempts: 3,
            multiplier: 1.0,
            idempotency: None,
            open_limit: None,
        };
        store
            .submit_task(scope, &new, t0, record(t0, "task.submit"))
            .await
            .expect("submit")
            .task
            .task_id
    }

    /// A batch claim hands each task back as stored, its reals bit for
    /// bit: through the JSON the claim reads them in, and, for values JSON
    /// cannot carry exactly, read as rows.
    #[tokio::test]
    async fn a_batch_claim_hands_back_each_task_as_stored() {
        use crate::work::TaskStore;

        struct Free;
        impl Admission for Free {
            fn free(&self, _: &QueueEntry) -> bool {
                true
            }
            fn take(&mut self, _: &QueueEntry) {}
        }
        let (store, scope, t0, cfg) = acme().await;
        // (cost, confidence): one that 15 digits would round, extremes
        // beyond what 17 digits carry, and nulls.
        let values: [(f64, Option<f64>); 4] = [
            (0.1 + 0.2, Some(1.0 / 3.0)),
            (1e300, Some(f64::MIN_POSITIVE)),
            (123.456_789_012_345_67, None),
            (0.0, Some(5e-324)),
        ];
        let mut ids = Vec::new();
        for (cost, confidence) in values {
            let id = submit(&store, &scope, t0).await;
            sqlx::query("UPDATE tasks SET cost_usd = ?, confidence = ? WHERE task_id = ?")
                .bind(cost)
                .bind(confidence)
                .bind(id.as_str())
                .execute(store.pool())
                .await
                .expect("set reals");
            ids.push(id);
        }
        let snap = store.queue_snapshot(t0, 100, None).await.expect("snapshot");
        let cands: Vec<Candidate> = snap
            .runnable
            .into_iter()
            .map(|entry| Candidate {
                scope: kira_core::auth::Principal::system()
                    .scope(&entry.company_id, kira_core::auth::Access::Write)
                    .expect("scope"),
                entry,
            })
            .collect();
        assert_eq!(cands.len(), values.len());
        let out = store
            .claim_batch(
                &cands,
                &mut Free,
                "w1",
                t0 + chrono::TimeDelta::minutes(1),
                &cfg,
                t0,
            )
            .await
            .expect("claim");
        assert_eq!(out.len(), values.len());
        for (id, outcome) in out {
            let ClaimOutcome::Claimed { task, .. } = outcome else {
                panic!("{id} not claimed: {outcome:?}");
            };
            let i = ids.iter().position(|x| *x == id).expect("one of ours");
            let (cost, confidence) = values[i];
            assert_eq!(task.cost_usd.to_bits(), cost.to_bits(), "cost of {id}");
            assert_eq!(
                task.confidence.map(f64::to_bits),
                confidence.map(f64::to_bits),
                "confidence of {id}"
            );
            let stored = store.get_task(&scope, &id).await.expect("get");
            assert_eq!(task.status, TaskStatus::Running);
            assert_eq!(
                serde_json::to_value(&task).expect("json"),
                serde_json::to_value(&stored).expect("json"),
                "{id} as claimed and as stored"
            );
        }
    }

    /// `task`'s run completed, with `result` and `confidence`, settling nothing.
    fn completed(
        scope: &kira_core::auth::CompanyScope,
        task: &TaskId,
        result: Option<serde_json::Value>,
        confidence: Option<f64>,
    ) -> Completion {
        Completion {
            scope: scope.clone(),
            task_id: task.clone(),
            finish: Finish {
                status: TaskStatus::Completed,
                reason: "done".into(),
                result,
                confidence,
                requires_human_review: false,
                error: None,
                retry_at: None,
            },
            settle: None,
            records: RunRecords::default(),
        }
    }

    /// The [`FinishState`] of `task` for worker w1, read on a reader as a
    /// batch finish reads it before the writer's turn.
    async fn read_before_the_turn(store: &SqliteStore, task: &TaskId) -> FinishState {
        let ids = to_json(&[task.as_str()]).expect("ids");
        let mut reader = store.pool.acquire().await.expect("reader");
        finish_state(&mut reader, &ids, "w1").await.expect("read")
    }

    /// Worker w1's finish of `c` as planned from `state`: what the command
    /// returned, and `c`'s outcome.
    async fn finish_as_planned(
        store: &SqliteStore,
        c: &Completion,
        state: &FinishState,
        at: DateTime<Utc>,
    ) -> (Option<Vec<usize>>, Option<Completed>) {
        let mut out = vec![None];
        let done = store
            .finish_planned("w1", std::slice::from_ref(c), state, at, &mut out)
            .await
            .expect("a stale plan is not an error");
        (done, out.pop().flatten())
    }

    /// Worker w1's finish of `c` by the fast path: those for the single
    /// way, and `c`'s outcome.
    async fn finish_fast_one(
        store: &SqliteStore,
        c: &Completion,
        at: DateTime<Utc>,
    ) -> (Vec<usize>, Option<Completed>) {
        let mut out = vec![None];
        let slow = crate::flow::batch::FastPaths::finish_fast(
            store,
            "w1",
            std::slice::from_ref(c),
            at,
            &mut out,
        )
        .await
        .expect("finish");
        (slow, out.pop().flatten())
    }

    /// A batch finish planned from a reading taken before the writer's
    /// turn, whose task's lease was reaped in between: the command fails
    /// (the reservation is no longer held, the queue row no longer this
    /// worker's) and, rolled back, writes nothing; the finish, read again
    /// in the turn, reports the run as not finished.
    #[tokio::test]
    async fn a_finish_planned_from_a_stale_reading_writes_nothing() {
        use kira_core::auth::Principal;

        let (store, scope, t0, cfg) = acme().await;
        let task = submit(&store, &scope, t0).await;
        let claimed = store
            .claim(
                &scope,
                &task,
                "w1",
                t0 + chrono::TimeDelta::minutes(1),
                &cfg,
                t0,
            )
            .await
            .expect("claim");
        assert!(matches!(claimed, ClaimOutcome::Claimed { .. }));
        let completion = completed(
            &scope,
            &task,
            Some(serde_json::json!({"answer": 42})),
            Some(0.9),
        );
        let state = read_before_the_turn(&store, &task).await;
        assert_eq!(state.ours.len(), 1, "read while the lease is held");
        // The lease runs out before the turn: the reaper queues it again.
        let later = t0 + chrono::TimeDelta::minutes(5);
        store
            .reap_expired(later, chrono::TimeDelta::seconds(10))
            .await
            .expect("reap");
        let planned =
            plan_finish("w1", std::slice::from_ref(&completion), &state, later).expect("plan");
        assert_eq!(planned.recorded, [0], "planned as if still ours");
        let (done, out) = finish_as_planned(&store, &completion, &state, later).await;
        assert!(
            done.is_none() && out.is_none(),
            "the stale plan failed in the turn"
        );
        let admin = Principal::system().admin().expect("admin");
        assert!(store.verify_ledger(&admin).await.expect("verify").ok);
        // Through the fast path: read again in the turn, not finished.
        let (slow, out) = finish_fast_one(&store, &completion, later).await;
        assert!(slow.is_empty());
        assert!(
            matches!(out, Some(Completed::NotFinished(StoreError::Conflict(_)))),
            "{out:?}"
        );
        let now = store.get_task(&scope, &task).await.expect("task");
        assert_eq!(
            now.status,
            TaskStatus::Queued,
            "the reaper's requeue stands"
        );
        let admin = Principal::system().admin().expect("admin");
        assert!(store.verify_ledger(&admin).await.expect("verify").ok);
    }

    /// A finish planned from a reading that a resize or a new reservation
    /// made stale writes nothing in the turn (the ledger would otherwise
    /// release the amount read, or leave the new one held on an ended
    /// task); read again in the turn, it releases what is held now.
    #[tokio::test]
    async fn a_finish_planned_before_a_resize_or_a_reserve_writes_nothing() {
        use kira_core::auth::Principal;

        let (store, scope, t0, cfg) = acme().await;
        let admin = Principal::system().admin().expect("admin");
        let later = t0 + chrono::TimeDelta::seconds(1);
        for change in ["resize", "reserve"] {
            let task = submit(&store, &scope, t0).await;
            let lease = t0 + chrono::TimeDelta::minutes(1);
            let ClaimOutcome::Claimed { reservation, .. } = store
                .claim(&scope, &task, "w1", lease, &cfg, t0)
                .await
                .expect("claim")
            else {
                panic!("{change}: not claimed");
            };
            let completion = completed(&scope, &task, None, None);
            let state = read_before_the_turn(&store, &task).await;
            assert_eq!(state.held.get(task.as_str()).map(Vec::len), Some(1));
            // Between the reading and the writer's turn, the run changes
            // what it holds.
            let changed = if change == "resize" {
                store
                    .resize_reservation(&scope, &reservation.reservation_id, 1_700, later)
                    .await
            } else {
                store.reserve(&scope, &task, 300, &cfg, later).await
            };
            assert!(
                matches!(changed, Ok(ReserveOutcome::Reserved(_))),
                "{change}: {changed:?}"
            );
            let (done, _) = finish_as_planned(&store, &completion, &state, later).await;
            assert!(done.is_none(), "{change}: the stale plan wrote");
            assert!(store.verify_ledger(&admin).await.expect("verify").ok);
            let (slow, out) = finish_fast_one(&store, &completion, later).await;
            assert!(slow.is_empty());
            assert!(
                matches!(out, Some(Completed::Recorded)),
                "{change}: {out:?}"
            );
            let report = store.verify_ledger(&admin).await.expect("verify");
            assert!(report.ok, "{change}: {report:?}");
            let budget = store
                .budget_state(&admin, &cfg, later)
                .await
                .expect("budget");
            assert!(
                budget.companies.iter().all(|c| c.reserved == 0),
                "{change}: tokens still held after the run ended: {budget:?}"
            );
        }
    }

    /// How SQLite reads `sql`: its query plan's lines.
    async fn plan(store: &SqliteStore, sql: &str) -> Vec<String> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
            .bind(r#"{"legal": 4}"#)
            .bind(2_i64)
            .bind("2026-01-01T00:00:00.000000Z")
            .bind(r#"["acme_legal_001"]"#)
            .fetch_all(store.pool())
            .await
            .expect("plan");
        rows.iter()
            .map(|r| r.try_get::<String, _>("detail").expect("detail"))
            .collect()
    }

    /// The snapshot's statements read the queue through their indexes:
    /// what runs through the lease index, the runnable tasks in waiting
    /// and deadline order through theirs; none reads the whole queue.
    #[tokio::test]
    async fn the_snapshot_reads_the_queue_through_its_indexes() {
        let store = SqliteStore::open("sqlite::memory:").await.expect("open");
        let oldest = plan(&store, &with_limit(&OLDEST_SQL, 100)).await;
        let windows = plan(&store, &with_limit(&WINDOWS_SQL, 100)).await;
        assert!(!oldest.is_empty() && !windows.is_empty());
        for (name, lines) in [("oldest", &oldest), ("windows", &windows)] {
            assert!(
                lines.iter().any(|l| l.contains("task_queue_lease")),
                "{name}: what runs is not read through the lease index: {lines:#?}"
            );
            assert!(
                !lines.iter().any(|l| l.trim_end() == "SCAN task_queue"),
                "{name}: a statement reads the whole queue: {lines:#?}"
            );
        }
        assert!(
            oldest.iter().any(|l| l.contains("task_queue_oldest")),
            "{oldest:#?}"
        );
        assert!(
            windows.iter().any(|l| l.contains("task_queue_deadline"))
                && windows.iter().any(|l| l.contains("task_queue_level")),
            "{windows:#?}"
        );
    }
}
