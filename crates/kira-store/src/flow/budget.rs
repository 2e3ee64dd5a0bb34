//! Budget flows, written once for both backends: holding tokens on a pool
//! or allocation, reservations and their ledger lines, settlement (with its
//! overdraft), resizing and release. Each backend opens the transaction
//! (and on PostgreSQL names and locks the company first), then calls these.
//!
//! Lock order on PostgreSQL: a company's allocation row before a shared
//! pool's row, as the batch finish takes them, so two transactions never
//! wait on each other in a cycle.

use chrono::{DateTime, Utc};
use kira_core::CompanyId;
use kira_core::budget::{BudgetConfig, Pool};
use kira_core::task::{Priority, TaskId, TaskStatus};

use crate::flow::tasks::{load_task, set_status};
use crate::sql::{Columns, Conn, q};
use crate::work::{
    Charge, EmergencyRequest, OVERDRAFT_DETAIL, Reservation, ReserveOutcome, debtor,
    overdraft_audit,
};
use crate::{Result, StoreError};

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// Appends one line to the budget ledger.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn ledger(
    c: &mut dyn Conn,
    now: DateTime<Utc>,
    period: &str,
    company: Option<&CompanyId>,
    task: Option<&TaskId>,
    reservation: Option<&str>,
    pool: Option<Pool>,
    kind: &str,
    amount: i64,
    detail: &str,
) -> Result<()> {
    c.exec(
        q("INSERT INTO budget_ledger (at, period_id, company_id, task_id, reservation_id, pool, kind, amount, detail) \
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
        .arg(now)
        .arg(period)
        .arg(company.map(CompanyId::as_str))
        .arg(task.map(TaskId::as_str))
        .arg(reservation)
        .arg(pool.map(Pool::as_str))
        .arg(kind)
        .arg(amount)
        .arg(detail),
    )
    .await?;
    Ok(())
}

/// Appends a ledger line about reservation `r` (its period, company, task
/// and pool).
pub(crate) async fn reservation_ledger(
    c: &mut dyn Conn,
    now: DateTime<Utc>,
    r: &Reservation,
    kind: &str,
    amount: i64,
    detail: &str,
) -> Result<()> {
    ledger(
        c,
        now,
        &r.period_id,
        Some(&r.company_id),
        Some(&r.task_id),
        Some(&r.reservation_id),
        Some(r.pool),
        kind,
        amount,
        detail,
    )
    .await
}

/// Adds `amount` to a pool's (for base, the company's allocation's)
/// reserved tokens if it fits. True when it did.
pub(crate) async fn hold(
    c: &mut dyn Conn,
    period: &str,
    company: &CompanyId,
    pool: Pool,
    amount: i64,
) -> Result<bool> {
    let n = if pool == Pool::Base {
        // The base pool is the sum of the allocations, which never exceeds
        // its capacity: the company's own row is the only one to hold, and
        // no row is shared by every worker.
        c.exec(
            q("UPDATE budget_allocations SET reserved = reserved + $1 \
               WHERE period_id = $2 AND company_id = $3 AND reserved + spent + $1 <= tokens")
            .arg(amount)
            .arg(period)
            .arg(company.as_str()),
        )
        .await?
    } else {
        c.exec(
            q("UPDATE budget_pools SET reserved = reserved + $1 \
               WHERE period_id = $2 AND pool = $3 AND reserved + spent + $1 <= capacity")
            .arg(amount)
            .arg(period)
            .arg(pool.as_str()),
        )
        .await?
    };
    Ok(n == 1)
}

/// Changes reserved and spent of a pool (for base, the company's allocation
/// alone: the base pool's balance is the sum of its allocations) by the
/// given deltas, unconditionally: callers only ever move tokens that a hold
/// already counted, or usage the provider reported.
pub(crate) async fn move_tokens(
    c: &mut dyn Conn,
    period: &str,
    company: &CompanyId,
    pool: Pool,
    reserved: i64,
    spent: i64,
) -> Result<()> {
    if pool == Pool::Base {
        c.exec(
            q(
                "UPDATE budget_allocations SET reserved = reserved + $1, spent = spent + $2 \
               WHERE period_id = $3 AND company_id = $4",
            )
            .arg(reserved)
            .arg(spent)
            .arg(period)
            .arg(company.as_str()),
        )
        .await?;
    } else {
        c.exec(
            q(
                "UPDATE budget_pools SET reserved = reserved + $1, spent = spent + $2 \
               WHERE period_id = $3 AND pool = $4",
            )
            .arg(reserved)
            .arg(spent)
            .arg(period)
            .arg(pool.as_str()),
        )
        .await?;
    }
    Ok(())
}

/// Holds `extra` more tokens on reservation `r` (which then holds
/// `new_amount` in all) and records it, if the pool has room.
pub(crate) async fn hold_more(
    c: &mut dyn Conn,
    r: &mut Reservation,
    extra: i64,
    new_amount: i64,
    now: DateTime<Utc>,
    why: &str,
) -> Result<bool> {
    if !hold(c, &r.period_id, &r.company_id, r.pool, extra).await? {
        return Ok(false);
    }
    c.exec(
        q("UPDATE reservations SET state = 'held', amount = $1, closed_at = NULL WHERE reservation_id = $2")
            .arg(new_amount)
            .arg(&r.reservation_id),
    )
    .await?;
    reservation_ledger(c, now, r, "reserve", extra, why).await?;
    r.amount = new_amount;
    Ok(true)
}

/// Makes the company's allocation in `period` (with no tokens) if it has
/// none yet, so an overdraft always has a row to go on, and locks it.
pub(crate) async fn lock_allocation(
    c: &mut dyn Conn,
    period: &str,
    company: &CompanyId,
) -> Result<()> {
    c.exec(
        q(
            "INSERT INTO budget_allocations (period_id, company_id, factor, share, tokens) \
           VALUES ($1, $2, 0, 0, 0) ON CONFLICT (period_id, company_id) DO NOTHING",
        )
        .arg(period)
        .arg(company.as_str()),
    )
    .await?;
    c.opt(
        q("SELECT 1 FROM budget_allocations WHERE period_id = $1 AND company_id = $2")
            .arg(period)
            .arg(company.as_str())
            .for_update(),
    )
    .await?;
    Ok(())
}

/// What reservation `r`'s balance has free (negative when overdrawn): the
/// company's allocation for base, the pool for burst and emergency.
pub(crate) async fn room(c: &mut dyn Conn, r: &Reservation) -> Result<i64> {
    let free = if r.pool == Pool::Base {
        c.int(
            q("SELECT tokens - reserved - spent FROM budget_allocations WHERE period_id = $1 AND company_id = $2")
                .arg(&r.period_id)
                .arg(r.company_id.as_str()),
        )
        .await?
    } else {
        c.int(
            q("SELECT capacity - reserved - spent FROM budget_pools WHERE period_id = $1 AND pool = $2")
                .arg(&r.period_id)
                .arg(r.pool.as_str()),
        )
        .await?
    };
    Ok(free.unwrap_or(0))
}

pub(crate) fn new_reservation_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Reserves `amount` for `task` from the first pool `priority` may use that
/// has room, in `period` (which the caller made sure exists).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn reserve_in(
    c: &mut dyn Conn,
    period: &str,
    company: &CompanyId,
    task: &TaskId,
    priority: Priority,
    amount: i64,
    cfg: &BudgetConfig,
    now: DateTime<Utc>,
) -> Result<Option<Reservation>> {
    // An overdrawn company waits: its base allocation refuses every hold by
    // itself (its balance is below zero), and the shared pools must not
    // carry it past its overdraft either. Only an approved grant, already
    // held for its task, runs it before the next period.
    let overdrawn = c
        .int(
            q("SELECT 1 FROM budget_allocations \
               WHERE period_id = $1 AND company_id = $2 AND reserved + spent > tokens")
            .arg(period)
            .arg(company.as_str()),
        )
        .await?;
    if overdrawn.is_some() {
        return Ok(None);
    }
    for pool in kira_core::budget::pools_to_try(priority, cfg) {
        if hold(c, period, company, pool, amount).await? {
            let r = Reservation {
                reservation_id: new_reservation_id(),
                task_id: task.clone(),
                company_id: company.clone(),
                period_id: period.to_owned(),
                pool,
                amount,
            };
            insert_reservation(c, &r, now).await?;
            reservation_ledger(c, now, &r, "reserve", amount, "").await?;
            return Ok(Some(r));
        }
    }
    Ok(None)
}

pub(crate) async fn insert_reservation(
    c: &mut dyn Conn,
    r: &Reservation,
    now: DateTime<Utc>,
) -> Result<()> {
    c.exec(
        q("INSERT INTO reservations (reservation_id, company_id, task_id, period_id, pool, amount, state, created_at) \
           VALUES ($1, $2, $3, $4, $5, $6, 'held', $7)")
        .arg(&r.reservation_id)
        .arg(r.company_id.as_str())
        .arg(r.task_id.as_str())
        .arg(&r.period_id)
        .arg(r.pool.as_str())
        .arg(r.amount)
        .arg(now),
    )
    .await?;
    Ok(())
}

pub(crate) fn reservation_from_row<R: Columns + ?Sized>(r: &R) -> Result<Reservation> {
    let task = r.text("task_id")?;
    let company = r.text("company_id")?;
    let pool = r.text("pool")?;
    Ok(Reservation {
        reservation_id: r.text("reservation_id")?,
        task_id: TaskId::parse(&task).map_err(|e| corrupt("task id", e))?,
        company_id: CompanyId::parse(&company).map_err(|e| corrupt("company id", e))?,
        period_id: r.text("period_id")?,
        pool: Pool::parse(&pool).map_err(|e| corrupt("pool", e))?,
        amount: r.int("amount")?,
    })
}

/// The reservations `task` still holds, oldest first.
pub(crate) async fn held_reservations(
    c: &mut dyn Conn,
    company: &CompanyId,
    task: &TaskId,
) -> Result<Vec<Reservation>> {
    let rows = c
        .all(
            q("SELECT reservation_id, task_id, company_id, period_id, pool, amount FROM reservations \
               WHERE company_id = $1 AND task_id = $2 AND state = 'held' ORDER BY created_at, reservation_id")
            .arg(company.as_str())
            .arg(task.as_str()),
        )
        .await?;
    rows.iter().map(reservation_from_row).collect()
}

/// Releases `r` if it is still held; the conditional update decides, so a
/// reservation is never released twice, and gives back the amount as the
/// update finds it: a resize may have changed it since `r` was read (on
/// PostgreSQL the row is locked only from this update on).
pub(crate) async fn release_tx(
    c: &mut dyn Conn,
    r: &Reservation,
    now: DateTime<Utc>,
    why: &str,
) -> Result<()> {
    let held = c
        .int(
            q(
                "UPDATE reservations SET state = 'released', closed_at = $1 \
               WHERE reservation_id = $2 AND state = 'held' RETURNING amount",
            )
            .arg(now)
            .arg(&r.reservation_id),
        )
        .await?;
    if let Some(amount) = held {
        move_tokens(c, &r.period_id, &r.company_id, r.pool, -amount, 0).await?;
        reservation_ledger(c, now, r, "release", amount, why).await?;
    }
    Ok(())
}

/// Releases everything `task` holds.
pub(crate) async fn release_all(
    c: &mut dyn Conn,
    company: &CompanyId,
    task: &TaskId,
    now: DateTime<Utc>,
    why: &str,
) -> Result<()> {
    for r in held_reservations(c, company, task).await? {
        release_tx(c, &r, now, why).await?;
    }
    Ok(())
}

/// Releases everything `company` holds.
pub(crate) async fn release_company(
    c: &mut dyn Conn,
    company: &CompanyId,
    now: DateTime<Utc>,
    why: &str,
) -> Result<()> {
    let rows = c
        .all(
            q("SELECT reservation_id, task_id, company_id, period_id, pool, amount FROM reservations \
               WHERE company_id = $1 AND state = 'held' ORDER BY reservation_id")
            .arg(company.as_str()),
        )
        .await?;
    for r in &rows {
        release_tx(c, &reservation_from_row(r)?, now, why).await?;
    }
    Ok(())
}

/// The reservation and its state, its row locked: a settle and a release
/// of one reservation take turns.
pub(crate) async fn load_reservation(
    c: &mut dyn Conn,
    company: &CompanyId,
    id: &str,
) -> Result<(Reservation, String)> {
    let row = c
        .one(
            q("SELECT reservation_id, task_id, company_id, period_id, pool, amount, state FROM reservations \
               WHERE company_id = $1 AND reservation_id = $2")
            .arg(company.as_str())
            .arg(id)
            .for_update(),
        )
        .await?;
    Ok((reservation_from_row(&row)?, row.text("state")?))
}

/// What the provider reported for one call on reservation `id`.
pub(crate) struct Usage {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_usd: f64,
}

/// Settles reservation `id` with the provider's usage, exactly: what it
/// holds is settled, usage above it takes the room its pool has left, and
/// the rest is an overdraft on the company's own allocation.
pub(crate) async fn settle(
    c: &mut dyn Conn,
    company: &CompanyId,
    id: &str,
    usage: &Usage,
    now: DateTime<Utc>,
) -> Result<()> {
    let (prompt, completion) = (usage.prompt_tokens.max(0), usage.completion_tokens.max(0));
    let used = prompt + completion;
    let (mut r, state) = load_reservation(c, company, id).await?;
    // What the reservation holds now: nothing once the reaper released
    // it (the run outlived its lease, but the provider did bill it).
    let mut held = match state.as_str() {
        "held" => r.amount,
        "released" if used > 0 => 0,
        _ => {
            return Err(StoreError::Conflict(format!(
                "reservation {id} is already {state}"
            )));
        }
    };
    if used > held {
        // Usage above what is held: hold what the pool has room for; the
        // rest is an overdraft, charged all the same, to the company's own
        // allocation (locked first, as a batch finish locks allocations
        // before pools).
        if r.pool != Pool::Base {
            lock_allocation(c, &r.period_id, &r.company_id).await?;
        }
        let fits = (used - held).min(room(c, &r).await?.max(0));
        let why = if held == 0 {
            "usage reported after the lease expired"
        } else {
            "usage above the reservation"
        };
        if fits > 0 && hold_more(c, &mut r, fits, held + fits, now, why).await? {
            held += fits;
        }
    }
    let charge = Charge::of(used, held);
    c.exec(
        q(
            "UPDATE reservations SET state = 'settled', spent = $1, cost_usd = $2, closed_at = $3 \
           WHERE reservation_id = $4",
        )
        .arg(used)
        .arg(usage.cost_usd.max(0.0))
        .arg(now)
        .arg(&r.reservation_id),
    )
    .await?;
    let debt = debtor(&r);
    for (line, kind, amount, detail) in [
        (&r, "settle", charge.settle, ""),
        (&debt, "overdraft", charge.overdraft, OVERDRAFT_DETAIL),
        (&r, "release", charge.release, "unused"),
    ] {
        if amount > 0 || (kind == "settle" && charge.overdraft == 0) {
            reservation_ledger(c, now, line, kind, amount, detail).await?;
        }
    }
    c.exec(
        q("UPDATE tasks SET prompt_tokens = prompt_tokens + $1, completion_tokens = completion_tokens + $2, \
           cost_usd = cost_usd + $3 WHERE company_id = $4 AND task_id = $5")
        .arg(prompt)
        .arg(completion)
        .arg(usage.cost_usd.max(0.0))
        .arg(r.company_id.as_str())
        .arg(r.task_id.as_str()),
    )
    .await?;
    // The balances last, so their row locks (a shared pool's row is every
    // worker's) are held only until the commit that follows; the
    // allocation before the pool.
    if charge.overdraft > 0 {
        move_tokens(
            c,
            &r.period_id,
            &r.company_id,
            Pool::Base,
            0,
            charge.overdraft,
        )
        .await?;
    }
    move_tokens(c, &r.period_id, &r.company_id, r.pool, -held, charge.settle).await?;
    if charge.overdraft > 0 {
        tracing::warn!(reservation = %r.reservation_id, overdraft = charge.overdraft, "usage above a reservation overdrew the company's balance");
        c.audit(overdraft_audit(&r, charge, now)).await?;
    }
    Ok(())
}

/// Sets held reservation `id` to `amount`: a shrink gives tokens back, a
/// raise needs room.
pub(crate) async fn resize(
    c: &mut dyn Conn,
    company: &CompanyId,
    id: &str,
    amount: i64,
    now: DateTime<Utc>,
) -> Result<ReserveOutcome> {
    let (mut r, state) = load_reservation(c, company, id).await?;
    if state != "held" {
        return Err(StoreError::Conflict(format!(
            "reservation {id} is already {state}"
        )));
    }
    if amount < r.amount {
        let back = r.amount - amount;
        c.exec(
            q("UPDATE reservations SET amount = $1 WHERE reservation_id = $2")
                .arg(amount)
                .arg(&r.reservation_id),
        )
        .await?;
        reservation_ledger(c, now, &r, "shrink", back, "lowered to the call's need").await?;
        move_tokens(c, &r.period_id, &r.company_id, r.pool, -back, 0).await?;
        r.amount = amount;
    } else if amount > r.amount {
        let more = amount - r.amount;
        if !hold_more(c, &mut r, more, amount, now, "raised to the call's need").await? {
            return Ok(ReserveOutcome::Denied {
                reason: format!(
                    "the {} pool has no {more} tokens free for this call",
                    r.pool.as_str()
                ),
            });
        }
    }
    Ok(ReserveOutcome::Reserved(r))
}

/// Releases reservation `id` if it is still held.
pub(crate) async fn release(
    c: &mut dyn Conn,
    company: &CompanyId,
    id: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    let (r, state) = load_reservation(c, company, id).await?;
    if state == "held" {
        release_tx(c, &r, now, "released by the caller").await?;
    }
    Ok(())
}

/// The columns [`request_from_row`] reads.
pub(crate) const REQUEST_COLUMNS: &str = "request_id, company_id, task_id, period_id, amount, status, reason, \
     requested_at, decided_at, decided_by, decision";

pub(crate) fn request_from_row<R: Columns + ?Sized>(r: &R) -> Result<EmergencyRequest> {
    let task = r.text("task_id")?;
    let company = r.text("company_id")?;
    Ok(EmergencyRequest {
        request_id: r.text("request_id")?,
        company_id: CompanyId::parse(&company).map_err(|e| corrupt("company id", e))?,
        task_id: TaskId::parse(&task).map_err(|e| corrupt("task id", e))?,
        period_id: r.text("period_id")?,
        amount: r.int("amount")?,
        status: r.text("status")?,
        reason: r.text("reason")?,
        requested_at: r.time("requested_at")?,
        decided_at: r.opt_time("decided_at")?,
        decided_by: r.opt_text("decided_by")?,
        decision: r.opt_text("decision")?,
    })
}

/// Decides pending emergency request `req` (read under the caller's locks):
/// approval holds its tokens on the emergency pool as a grant for its task
/// and queues the task; refusal fails the task. A grant that does not fit
/// is a conflict, with nothing written.
pub(crate) async fn decide_request(
    c: &mut dyn Conn,
    req: &EmergencyRequest,
    approve: bool,
    note: &str,
    decider: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    if req.status != "pending" {
        return Err(StoreError::Conflict(format!(
            "request {} was already {}",
            req.request_id, req.status
        )));
    }
    let task = load_task(c, &req.company_id, &req.task_id, false).await?;
    if approve {
        if !hold(
            c,
            &req.period_id,
            &req.company_id,
            Pool::Emergency,
            req.amount,
        )
        .await?
        {
            let free = c
                .int(
                    q("SELECT capacity - reserved - spent FROM budget_pools \
                       WHERE period_id = $1 AND pool = 'emergency'")
                    .arg(&req.period_id),
                )
                .await?
                .unwrap_or(0);
            return Err(StoreError::Conflict(format!(
                "the emergency pool has {free} tokens free; the request needs {}",
                req.amount
            )));
        }
        let r = Reservation {
            reservation_id: new_reservation_id(),
            task_id: req.task_id.clone(),
            company_id: req.company_id.clone(),
            period_id: req.period_id.clone(),
            pool: Pool::Emergency,
            amount: req.amount,
        };
        insert_reservation(c, &r, now).await?;
        let why = format!("request {} approved by {decider}", req.request_id);
        reservation_ledger(c, now, &r, "grant", r.amount, &why).await?;
        c.exec(
            q("UPDATE task_queue SET status = 'queued', not_before = $1 WHERE task_id = $2")
                .arg(now)
                .arg(req.task_id.as_str()),
        )
        .await?;
        let why = format!("emergency tokens granted by {decider}");
        set_status(c, &task, TaskStatus::Queued, &why, now).await?;
    } else {
        c.exec(q("DELETE FROM task_queue WHERE task_id = $1").arg(req.task_id.as_str()))
            .await?;
        let reason = if note.is_empty() {
            "emergency tokens were refused".to_owned()
        } else {
            format!("emergency tokens were refused: {note}")
        };
        c.exec(
            q("UPDATE tasks SET last_error = $1 WHERE company_id = $2 AND task_id = $3")
                .arg(reason.as_str())
                .arg(req.company_id.as_str())
                .arg(req.task_id.as_str()),
        )
        .await?;
        set_status(c, &task, TaskStatus::Failed, &reason, now).await?;
    }
    c.exec(
        q("UPDATE emergency_requests SET status = $1, decided_at = $2, decided_by = $3, decision = $4 \
           WHERE request_id = $5")
        .arg(if approve { "approved" } else { "rejected" })
        .arg(now)
        .arg(decider)
        .arg(note)
        .arg(req.request_id.as_str()),
    )
    .await?;
    Ok(())
}

/// The request, read (on PostgreSQL, locked) in the caller's transaction.
pub(crate) async fn load_request(
    c: &mut dyn Conn,
    id: &str,
    lock: bool,
) -> Result<EmergencyRequest> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!("SELECT {REQUEST_COLUMNS} FROM emergency_requests WHERE request_id = $1")
    });
    let s = q(SQL.as_str()).arg(id);
    let s = if lock { s.for_update() } else { s };
    request_from_row(&c.one(s).await?)
}

/// Every pool's balances. The base pool's row holds only what companies
/// deleted with `--force` had spent; the rest of its balance is the sum of
/// the allocations, which each reservation updates instead of one shared
/// row. Summing every company's allocation needs the admin read on
/// PostgreSQL, which callers set.
pub(crate) const POOL_BALANCES: &str = "SELECT p.period_id, p.pool, p.capacity, \
       CAST(p.reserved + CASE WHEN p.pool = 'base' THEN \
         (SELECT COALESCE(SUM(a.reserved), 0) FROM budget_allocations a WHERE a.period_id = p.period_id) \
         ELSE 0 END AS BIGINT) AS reserved, \
       CAST(p.spent + CASE WHEN p.pool = 'base' THEN \
         (SELECT COALESCE(SUM(a.spent), 0) FROM budget_allocations a WHERE a.period_id = p.period_id) \
         ELSE 0 END AS BIGINT) AS spent \
     FROM budget_pools p";

fn pool_of(name: &str) -> Result<Pool> {
    Pool::parse(name).map_err(|e| corrupt("pool", e))
}

/// Replays the whole ledger against every balance, in the caller's
/// transaction (one snapshot, admin read on PostgreSQL): the lines and the
/// balances they must add up to are written in the same transactions, so
/// it sees both or neither.
pub(crate) async fn replay_ledger(c: &mut dyn Conn) -> Result<crate::work::LedgerReport> {
    use std::collections::BTreeMap;
    let rows = c
        .all(q(
            "SELECT period_id, company_id, reservation_id, pool, kind, amount FROM budget_ledger ORDER BY entry_id",
        ))
        .await?;
    let mut replay = crate::ledger::Replay::default();
    for r in &rows {
        replay.apply(crate::ledger::Movement {
            period: r.text("period_id")?,
            company: r.opt_text("company_id")?,
            reservation: r.opt_text("reservation_id")?,
            pool: r.opt_text("pool")?.as_deref().map(pool_of).transpose()?,
            kind: r.text("kind")?,
            amount: r.int("amount")?,
        });
    }
    let mut pools: BTreeMap<(String, Pool), [i64; 3]> = BTreeMap::new();
    for r in c.all(q(POOL_BALANCES)).await? {
        pools.insert(
            (r.text("period_id")?, pool_of(&r.text("pool")?)?),
            [r.int("capacity")?, r.int("reserved")?, r.int("spent")?],
        );
    }
    let mut allocations: BTreeMap<(String, String), [i64; 3]> = BTreeMap::new();
    for r in c
        .all(q(
            "SELECT period_id, company_id, tokens, reserved, spent FROM budget_allocations",
        ))
        .await?
    {
        allocations.insert(
            (r.text("period_id")?, r.text("company_id")?),
            [r.int("tokens")?, r.int("reserved")?, r.int("spent")?],
        );
    }
    let mut reservations: BTreeMap<String, [i64; 2]> = BTreeMap::new();
    for r in c
        .all(q(
            "SELECT reservation_id, amount, state, spent FROM reservations",
        ))
        .await?
    {
        let held = if r.text("state")? == "held" {
            r.int("amount")?
        } else {
            0
        };
        reservations.insert(r.text("reservation_id")?, [held, r.int("spent")?]);
    }
    Ok(replay.compare(rows.len() as i64, &pools, &allocations, &reservations))
}
