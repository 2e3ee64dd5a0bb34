//! Tasks, the queue and budgets on PostgreSQL: the SQLite implementation
//! (`sqlite/work.rs`) ported statement for statement, with what SQLite's one
//! writer gave for free made explicit.
//!
//! Transactions run at READ COMMITTED. A reservation stays safe because it is
//! a conditional update (`reserved + spent + n <= capacity` in the WHERE):
//! an UPDATE that waited for a row lock re-checks its WHERE against the row
//! as the other transaction left it. No balance is read and then written.
//!
//! Every other read-then-write holds a row lock, and locks are taken in one
//! order so two transactions never wait on each other in a circle:
//!
//! 1. the company row: `FOR KEY SHARE` for work on its tasks and budget
//!    (a forced delete, which takes `FOR UPDATE`, waits for that work and
//!    that work waits for it), `FOR NO KEY UPDATE` for a submit (one at a
//!    time per company, for the sequence number);
//! 2. the task's queue row: every status change holds it, so one task
//!    changes state once at a time;
//! 3. the task's emergency request, then its reservations;
//! 4. allocations (several only in a refresh, then in company order);
//! 5. pools;
//! 6. the task row (its counters and status are written last);
//! 7. the audit head.
//!
//! Row-level security binds every company table. A transaction for one
//! company names it once; the system paths read across companies with
//! `app.admin_read` and name each row's company before writing it.
//!
//! Batches (`claim_batch`, `finish_batch`) are set-based: one transaction of
//! two calls to the SECURITY INVOKER functions of `0004_queue_batching.sql`,
//! a first that locks and reads, a second that writes what the store planned
//! from it, one statement per table and company. The functions name each
//! company before touching its rows and keep the order above, by class
//! first and then by company, so a batch and a single claim or finish never
//! wait on each other in a circle.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use kira_core::CompanyId;
use kira_core::budget::{
    AllocationInput, BudgetConfig, CompanyFactors, Pool, allocate, allocation_factor, period_of,
};
use kira_core::task::{Priority, TaskId, TaskStatus, check_transition};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgConnection, Row};

use super::{PgStore, Tx, UNIQUE_VIOLATION, company_id, set_company};
use crate::flow::batch::{FastClaim, FinishPlan, push_outcomes};
use crate::flow::budget::*;
use crate::flow::store::Db;
pub(super) use crate::flow::tasks::task_from_row;
use crate::work::*;
use crate::{Result, StoreError};

/// Serialises allocation refreshes (within a transaction): two refreshes
/// would both see a new company without an allocation and both log its
/// first one. "kiraallo" in ASCII.
const REFRESH_LOCK: i64 = 0x6b69_7261_616c_6c6f;

pub(super) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

pub(super) fn task_id(s: &str) -> Result<TaskId> {
    TaskId::parse(s).map_err(|e| corrupt("task id", e))
}

/// Lets the row-level policies admit every company's rows for reading, or
/// stops them, until the transaction ends.
async fn set_admin_read(tx: &mut PgConnection, on: bool) -> Result<()> {
    sqlx::query("SELECT set_config('app.admin_read', $1, true)")
        .bind(if on { "on" } else { "off" })
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Locks the company row against a forced delete for the rest of the
/// transaction (step 1 of the lock order). False when it does not exist.
async fn lock_company(tx: &mut PgConnection, company: &CompanyId) -> Result<bool> {
    let found: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM companies WHERE company_id = $1 FOR KEY SHARE")
            .bind(company.as_str())
            .fetch_optional(&mut *tx)
            .await?;
    Ok(found.is_some())
}

/// Recomputes every company's base allocation in `period`, then names
/// `company` again (or none) for the rest of the transaction.
///
/// Each allocation is locked before its spent and reserved tokens are read,
/// so a reservation cannot slip in between and leave the new allocation
/// below what the company holds.
pub(crate) async fn refresh_tx(
    tx: &mut PgConnection,
    period: &str,
    now: DateTime<Utc>,
    company: Option<&CompanyId>,
) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(REFRESH_LOCK)
        .execute(&mut *tx)
        .await?;
    let base: i64 = sqlx::query_scalar(
        "SELECT capacity - spent FROM budget_pools WHERE period_id = $1 AND pool = 'base'",
    )
    .bind(period)
    .fetch_one(&mut *tx)
    .await?;
    set_admin_read(tx, true).await?;
    let companies = sqlx::query(
        "SELECT company_id, revenue_usd, complexity_score, activity_score, archived_at \
         FROM companies ORDER BY company_id",
    )
    .fetch_all(&mut *tx)
    .await?;
    set_admin_read(tx, false).await?;
    let mut inputs = Vec::with_capacity(companies.len());
    let mut old = Vec::with_capacity(companies.len());
    for r in &companies {
        let id = company_id(r.try_get("company_id")?)?;
        set_company(tx, id.as_str()).await?;
        // A company deleted since the read above is skipped: its delete
        // held the row, and the lock returns nothing once it committed.
        if !lock_company(tx, &id).await? {
            continue;
        }
        let held: Option<(i64, i64, i64)> = sqlx::query_as(
            "SELECT tokens, reserved, spent FROM budget_allocations \
             WHERE period_id = $1 AND company_id = $2 FOR UPDATE",
        )
        .bind(period)
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let archived: Option<DateTime<Utc>> = r.try_get("archived_at")?;
        inputs.push(AllocationInput {
            company: id,
            factor: allocation_factor(&CompanyFactors {
                revenue_usd: r.try_get("revenue_usd")?,
                complexity_score: r.try_get("complexity_score")?,
                activity_score: r.try_get("activity_score")?,
            }),
            active: archived.is_none(),
            committed: held.map_or(0, |(tokens, reserved, spent)| {
                committed(Some(tokens), reserved, spent)
            }),
        });
        old.push(held.map(|(tokens, _, _)| tokens));
    }
    for (a, old) in allocate(base, &inputs).into_iter().zip(old) {
        let delta = a.tokens - old.unwrap_or(0);
        set_company(tx, a.company.as_str()).await?;
        sqlx::query(
            "INSERT INTO budget_allocations (period_id, company_id, factor, share, tokens) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (period_id, company_id) DO UPDATE SET factor = excluded.factor, \
             share = excluded.share, tokens = excluded.tokens",
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
    set_company(tx, company.map_or("", CompanyId::as_str)).await
}

fn queue_from_row(r: &PgRow) -> Result<QueueEntry> {
    let status: &str = r.try_get("status")?;
    let priority: &str = r.try_get("priority")?;
    Ok(QueueEntry {
        task_id: task_id(r.try_get("task_id")?)?,
        company_id: company_id(r.try_get("company_id")?)?,
        agent: r.try_get("agent")?,
        status: TaskStatus::parse(status).map_err(|e| corrupt("status", e))?,
        priority: Priority::parse(priority).map_err(|e| corrupt("priority", e))?,
        multiplier: r.try_get("multiplier")?,
        deadline: r.try_get("deadline")?,
        waiting_since: r.try_get("waiting_since")?,
        estimated_tokens: r.try_get("estimated_tokens")?,
        attempts: r.try_get("attempts")?,
    })
}

/// True when `e` is the unique violation of one company's idempotency key.
fn is_idempotency_race(e: &StoreError) -> bool {
    match e {
        StoreError::Database(sqlx::Error::Database(d)) => {
            d.code().as_deref() == Some(UNIQUE_VIOLATION)
                && d.constraint() == Some("tasks_company_idempotency_key")
        }
        _ => false,
    }
}

/// What both of the queue snapshot's statements start from: the tasks that
/// could start at $1, given the agents and their slots ($3, $4; NULL: every
/// task), the company limit ($5) and the runs that ended holding none ($6).
const STARTABLE: &str = "WITH running AS MATERIALIZED (SELECT agent, company_id FROM task_queue \
       WHERE status = 'running' AND task_id <> ALL ($6::text[])), \
     open_agents AS (SELECT c.agent FROM unnest($3::text[], $4::bigint[]) AS c(agent, slots) \
       WHERE c.slots > (SELECT count(*) FROM running r WHERE r.agent = c.agent)), \
     full_companies AS (SELECT company_id FROM running GROUP BY company_id HAVING count(*) >= $5), \
     startable AS NOT MATERIALIZED (SELECT * FROM task_queue \
       WHERE status IN ('queued', 'waiting_budget') AND not_before <= $1 \
       AND ($3::text[] IS NULL OR (agent IN (SELECT agent FROM open_agents) \
            AND company_id NOT IN (SELECT company_id FROM full_companies)))) ";

const QUEUE_COLUMNS: &str = "task_id, company_id, agent, status, priority, multiplier, deadline, \
     waiting_since, estimated_tokens, attempts";

/// The queue snapshot (see `queue_snapshot`): the $2 startable tasks
/// waiting longest.
static OLDEST_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{STARTABLE} SELECT {QUEUE_COLUMNS} FROM startable ORDER BY waiting_since, task_id LIMIT $2"
    )
});

/// Read only when the first window is full: of each priority level the
/// first $2 startable tasks by multiplier then waiting time, and the $2
/// nearest deadlines, so a task that outranks the oldest is never hidden
/// behind them.
static WINDOWS_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let windows = Priority::ALL
        .iter()
        .map(|p| {
            format!(
                "(SELECT {QUEUE_COLUMNS} FROM startable WHERE priority = '{}' \
                 ORDER BY multiplier DESC, waiting_since, task_id LIMIT $2)",
                p.as_str()
            )
        })
        .chain(std::iter::once(format!(
            "(SELECT {QUEUE_COLUMNS} FROM startable WHERE deadline IS NOT NULL \
             ORDER BY deadline, task_id LIMIT $2)"
        )))
        .collect::<Vec<_>>()
        .join(" UNION ");
    format!("{STARTABLE} {windows}")
});

#[async_trait]
impl Db for PgStore {
    type Sql = sqlx::Postgres;
    type Tx = Tx;
    type Read = Tx;
    type Plain = sqlx::pool::PoolConnection<sqlx::Postgres>;
    type PlainWrite = sqlx::pool::PoolConnection<sqlx::Postgres>;

    async fn write_for(&self, company: &CompanyId) -> Result<Tx> {
        self.scoped(company).await
    }

    async fn write_system(&self) -> Result<Tx> {
        Ok(self.pool.begin().await?)
    }

    async fn write_queue(&self) -> Result<Tx> {
        Ok(self.queue.begin().await?)
    }

    /// A read-only snapshot: several statements see one moment, as the
    /// ledger check and the budget views need.
    async fn snapshot(&self, company: Option<&CompanyId>) -> Result<Tx> {
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        match company {
            Some(c) => set_company(&mut tx, c.as_str()).await?,
            None => set_admin_read(&mut tx, true).await?,
        }
        Ok(tx)
    }

    async fn commit(tx: Tx) -> Result<()> {
        tx.commit().await?;
        Ok(())
    }

    async fn rollback(tx: Tx) -> Result<()> {
        tx.rollback().await?;
        Ok(())
    }

    async fn read_for(&self, company: &CompanyId) -> Result<Tx> {
        self.scoped(company).await
    }

    async fn read_all(&self, queue: bool) -> Result<Tx> {
        if queue {
            return Ok(self.queue.begin().await?);
        }
        self.admin_read().await
    }

    async fn end_read(r: Tx) -> Result<()> {
        r.commit().await?;
        Ok(())
    }

    fn lost_submit_race(e: &StoreError) -> bool {
        is_idempotency_race(e)
    }

    async fn plain(&self) -> Result<Self::Plain> {
        Ok(self.pool.acquire().await?)
    }

    async fn write_plain(&self) -> Result<Self::PlainWrite> {
        Ok(self.pool.acquire().await?)
    }

    async fn end_plain_write(_c: Self::PlainWrite) -> Result<()> {
        Ok(())
    }

    fn unique_violation(e: &StoreError) -> bool {
        match e {
            StoreError::Database(e) => {
                super::sqlstate(e).as_deref() == Some(super::UNIQUE_VIOLATION)
            }
            _ => false,
        }
    }

    async fn read_queue(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        capacity: Option<&Capacity>,
    ) -> Result<QueueSnapshot> {
        // With a capacity ($3, $4: the agents and their slots; $5: a
        // company's), agents whose slots are all taken and companies at
        // their limit are left out.
        let (agents, slots): (Option<Vec<&str>>, Option<Vec<i64>>) = capacity
            .map(|c| {
                c.agents
                    .iter()
                    .map(|(a, n)| (a.as_str(), i64::from(*n)))
                    .unzip()
            })
            .unzip();
        let ended: Vec<&str> = capacity
            .map(|c| c.ended.iter().map(TaskId::as_str).collect())
            .unwrap_or_default();
        // Built once from constants (the priority names).
        let read = |sql: &'static str, limit: u32| {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(now.trunc_subsecs(6))
                .bind(i64::from(limit))
                .bind(agents.clone())
                .bind(slots.clone())
                .bind(capacity.map(|c| i64::from(c.per_company)))
                .bind(&ended)
                .fetch_all(&self.queue)
        };
        let mut runnable = read(OLDEST_SQL.as_str(), limit)
            .await?
            .iter()
            .map(queue_from_row)
            .collect::<Result<Vec<_>>>()?;
        if runnable.len() >= limit as usize {
            let windows = read(WINDOWS_SQL.as_str(), level_window(limit))
                .await?
                .iter()
                .map(queue_from_row)
                .collect::<Result<Vec<_>>>()?;
            add_windows(&mut runnable, windows);
        }
        let running =
            sqlx::query(
                "SELECT agent, company_id FROM task_queue WHERE status = 'running' AND task_id <> ALL ($1)",
            )
            .bind(&ended)
            .fetch_all(&self.queue)
                .await?
                .iter()
                .map(|r| Ok((r.try_get("agent")?, company_id(r.try_get("company_id")?)?)))
                .collect::<Result<Vec<_>>>()?;
        Ok(QueueSnapshot { runnable, running })
    }

    async fn write_run(
        &self,
        company: &CompanyId,
        records: &RunRecords,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.scoped(company).await?;
        let done = async {
            super::agents::write_run_records(&mut tx, company, records, now).await?;
            super::agents::write_run_memory(&mut tx, company, records).await
        }
        .await;
        crate::flow::store::commit_or_roll_back::<Self, _>(tx, done).await
    }
}

/// The rows `kira_claim_write` takes: one per fast claim, in rank order.
fn claim_rows(fast: &[FastClaim<'_>], worker: &str) -> Vec<serde_json::Value> {
    fast.iter()
        .enumerate()
        .map(|(n, f)| {
            serde_json::json!({
                "n": n,
                "id": f.c.entry.task_id.as_str(),
                "company": f.c.scope.company().as_str(),
                "amount": f.amount,
                "rid": f.reservation_id,
                "from": f.from.as_str(),
                "reason": format!("claimed by {worker}; {} tokens reserved from base", f.amount),
            })
        })
        .collect()
}

/// The SQLSTATE the batch functions of `0004_queue_batching.sql` raise when
/// a row is not as their first phase found and locked it (which the locks
/// make a bug, not a race): the batch is rolled back.
const BATCH_CHANGED: &str = "KR001";

/// A batch function's refusal as a Conflict; other errors as they are.
fn batch_error(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.code().as_deref() == Some(BATCH_CHANGED) => {
            StoreError::Conflict(format!("{}; nothing was recorded", d.message()))
        }
        _ => e.into(),
    }
}

#[async_trait]
impl crate::flow::batch::FastPaths for PgStore {
    /// One transaction, two calls: `kira_claim_prepare` locks the company
    /// rows, the claimable queue rows and the allocations and says what it
    /// found; the plan is made here (the admission is the caller's); then
    /// `kira_claim_write` writes it. An allocation of a period not yet made
    /// is missing, so nothing fits and the single claim makes the period.
    async fn claim_fast(
        &self,
        cands: &[Candidate],
        admission: &mut dyn Admission,
        worker: &str,
        lease_until: DateTime<Utc>,
        _budget: &BudgetConfig,
        now: DateTime<Utc>,
        out: &mut Vec<(TaskId, ClaimOutcome)>,
    ) -> Result<usize> {
        let period = period_of(now).id;
        let ids: Vec<&str> = cands.iter().map(|c| c.entry.task_id.as_str()).collect();
        let companies: Vec<&str> = cands.iter().map(|c| c.scope.company().as_str()).collect();
        let mut tx = self.queue.begin().await?;
        let rows = sqlx::query(
            "SELECT id, company, from_status, tokens, granted, free \
             FROM kira_claim_prepare($1, $2, $3, $4)",
        )
        .bind(&ids)
        .bind(&companies)
        .bind(&period)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        // Claimable now and the company's, by id; the locks keep it so.
        let mut claimable = std::collections::HashMap::with_capacity(rows.len());
        // A forecast only: the conditional update in the write decides.
        let mut free: std::collections::HashMap<String, i64> = Default::default();
        for r in &rows {
            let status: &str = r.try_get("from_status")?;
            let company: String = r.try_get("company")?;
            if let Some(f) = r.try_get::<Option<i64>, _>("free")? {
                free.insert(company, f);
            }
            claimable.insert(
                r.try_get::<String, _>("id")?,
                (
                    TaskStatus::parse(status).map_err(|e| corrupt("status", e))?,
                    r.try_get::<i64, _>("tokens")?,
                    r.try_get::<bool, _>("granted")?,
                ),
            );
        }
        let mut fast = Vec::new();
        let mut gone = Vec::new();
        let mut done = 0;
        for c in cands {
            if !admission.free(&c.entry) {
                done += 1;
                continue;
            }
            let Some((from, amount, granted)) = claimable.get(c.entry.task_id.as_str()) else {
                gone.push((fast.len(), c.entry.task_id.clone()));
                done += 1;
                continue;
            };
            let left = free.get_mut(c.scope.company().as_str());
            let fits = matches!(&left, Some(l) if **l >= *amount);
            if *granted || !fits || check_transition(*from, TaskStatus::Running).is_err() {
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
        let mut claimed = BTreeMap::new();
        if !fast.is_empty() {
            let rows = claim_rows(&fast, worker);
            for r in sqlx::query("SELECT * FROM kira_claim_write($1, $2, $3, $4, $5)")
                .bind(Json(&rows))
                .bind(&period)
                .bind(worker)
                .bind(lease_until)
                .bind(now)
                .fetch_all(&mut *tx)
                .await
                .map_err(batch_error)?
            {
                let t = task_from_row(&r)?;
                claimed.insert(t.task_id.as_str().to_owned(), t);
            }
            if claimed.len() != fast.len() {
                return Err(StoreError::Conflict(format!(
                    "a batch claim wrote {} task rows where it expected {}; nothing was claimed",
                    claimed.len(),
                    fast.len()
                )));
            }
        }
        tx.commit().await?;
        if !fast.is_empty() {
            let c = &self.set_based;
            c.claim_batches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            c.claimed
                .fetch_add(fast.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        push_outcomes(out, &fast, gone, claimed, &period)?;
        Ok(done)
    }

    /// Records the plain completions (lease held, settlement within its
    /// reservation) in one transaction of two calls (`kira_finish_prepare`
    /// locks and reads, `kira_finish_write` writes); returns the indices of
    /// the others.
    async fn finish_fast(
        &self,
        worker: &str,
        cs: &[Completion],
        now: DateTime<Utc>,
        out: &mut [Option<Completed>],
    ) -> Result<Vec<usize>> {
        let ids: Vec<&str> = cs.iter().map(|c| c.task_id.as_str()).collect();
        let companies: Vec<&str> = cs.iter().map(|c| c.scope.company().as_str()).collect();
        let mut tx = self.queue.begin().await?;
        let rows = sqlx::query(
            "SELECT id, company, reservation_id, period_id, pool, amount \
             FROM kira_finish_prepare($1, $2, $3)",
        )
        .bind(worker)
        .bind(&ids)
        .bind(&companies)
        .fetch_all(&mut *tx)
        .await?;
        // The tasks the worker still runs, each with its company, and what they hold.
        let mut ours: std::collections::HashMap<String, String> = Default::default();
        let mut held: std::collections::HashMap<String, Vec<Reservation>> = Default::default();
        for r in &rows {
            let id: String = r.try_get("id")?;
            let company: String = r.try_get("company")?;
            if let Some(rid) = r.try_get::<Option<String>, _>("reservation_id")? {
                let pool: &str = r.try_get("pool")?;
                held.entry(id.clone()).or_default().push(Reservation {
                    reservation_id: rid,
                    task_id: task_id(&id)?,
                    company_id: super::company_id(&company)?,
                    period_id: r.try_get("period_id")?,
                    pool: Pool::parse(pool).map_err(|e| corrupt("pool", e))?,
                    amount: r.try_get("amount")?,
                });
            }
            ours.insert(id, company);
        }
        let mut slow = Vec::new();
        let mut plan = FinishPlan::new(false);
        for (i, c) in cs.iter().enumerate() {
            let mine = ours
                .get(c.task_id.as_str())
                .is_some_and(|co| co == c.scope.company().as_str());
            if !mine && c.settle.is_none() {
                out[i] = Some(Completed::NotFinished(StoreError::Conflict(format!(
                    "worker {worker} no longer holds the lease on {}",
                    c.task_id
                ))));
                continue;
            }
            let task_held = held.get(c.task_id.as_str()).map_or(&[][..], Vec::as_slice);
            if !mine || !plan.add(i, c, task_held) {
                slow.push(i);
            }
        }
        if !plan.tasks.is_empty() {
            plan.write(&mut tx, now).await?;
        }
        // What the runs left behind, by company: sessions, then the audit
        // head (see `agents::write_run_records`).
        let mut recorded: Vec<&Completion> = plan
            .tasks
            .iter()
            .map(|(i, _)| &cs[*i])
            .filter(|c| !c.records.is_empty())
            .collect();
        recorded.sort_by(|a, b| a.scope.company().cmp(b.scope.company()));
        for c in &recorded {
            super::agents::write_run_records(&mut tx, c.scope.company(), &c.records, now).await?;
        }
        for c in &recorded {
            super::agents::write_run_memory(&mut tx, c.scope.company(), &c.records).await?;
        }
        tx.commit().await?;
        if !plan.tasks.is_empty() {
            let c = &self.set_based;
            c.finish_batches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            c.finished.fetch_add(
                plan.tasks.len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        for (i, _) in &plan.tasks {
            out[*i] = Some(Completed::Recorded);
        }
        Ok(slow)
    }
}

/// PostgreSQL writes a plan with one call of `kira_finish_write`.
trait WritePlan {
    async fn write(&self, tx: &mut PgConnection, now: DateTime<Utc>) -> Result<()>;
}

impl WritePlan for FinishPlan {
    /// One call, whatever the number of completions.
    async fn write(&self, tx: &mut PgConnection, now: DateTime<Utc>) -> Result<()> {
        let tasks: Vec<&serde_json::Value> = self.tasks.iter().map(|(_, t)| t).collect();
        let n: i64 = sqlx::query_scalar("SELECT kira_finish_write($1, $2, $3, $4, $5, $6)")
            .bind(now)
            .bind(Json(&self.closed))
            .bind(Json(&self.ledger))
            .bind(Json(&self.ended))
            .bind(Json(&self.requeued))
            .bind(Json(&tasks))
            .fetch_one(&mut *tx)
            .await
            .map_err(batch_error)?;
        if n != tasks.len() as i64 {
            return Err(StoreError::Conflict(format!(
                "a batch finish wrote {n} task rows where it expected {}; nothing was recorded",
                tasks.len()
            )));
        }
        Ok(())
    }
}
