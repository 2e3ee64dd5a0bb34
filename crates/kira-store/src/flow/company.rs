//! A company's rows, removed by a forced delete: the lists written once,
//! each statement naming the company as `$1`, and the delete's order
//! across concerns ([`delete_company_rows`]). What differs is a statement
//! away: PostgreSQL opens the partner-cleanup policies first, and moving
//! what the company spent of the base pool onto the pool row is one
//! statement per dialect.

use chrono::{DateTime, SubsecRound, Utc};
use kira_core::CompanyId;

use crate::sql::{Conn, q, q_each};
use crate::{DeletedRows, Result};

/// Removes a deleted company's rows of sharing, memory, agents and work,
/// releasing what it holds first so the pools stay right (the ledger keeps
/// its lines). The transaction holds the company's row, so no work of the
/// company runs meanwhile.
pub(crate) async fn delete_company_rows(
    c: &mut dyn Conn,
    company: &CompanyId,
    now: DateTime<Utc>,
    deleted: &mut DeletedRows,
) -> Result<()> {
    // Before memories, whose deletion would take the items with it.
    crate::flow::sharing::delete_company_sharing(c, company, deleted).await?;
    crate::flow::memory::delete_company_memory(c, company, deleted).await?;
    crate::flow::agents::delete_company_agents(c, company, deleted).await?;
    crate::flow::tools::delete_company_tools(c, company, deleted).await?;
    let now = now.trunc_subsecs(6);
    crate::flow::budget::release_company(c, company, now, "company deleted").await?;
    // What it spent of the base pool stays spent: it moves to the pool row.
    c.exec(
        q_each(
            "UPDATE budget_pools SET spent = spent + COALESCE((SELECT a.spent FROM budget_allocations a \
             WHERE a.period_id = budget_pools.period_id AND a.company_id = $1), 0) WHERE pool = 'base'",
            "UPDATE budget_pools p SET spent = p.spent + a.spent FROM budget_allocations a \
             WHERE p.pool = 'base' AND a.period_id = p.period_id AND a.company_id = $1",
        )
        .arg(company.as_str()),
    )
    .await?;
    delete_rows(c, company, WORK_ROWS, deleted).await
}

/// (the name the delete report gives, the statement).
type Rows = [(&'static str, &'static str)];

/// Traces, reviews and sessions.
pub(crate) const AGENT_ROWS: &Rows = &[
    ("task_steps", "DELETE FROM task_steps WHERE company_id = $1"),
    (
        "task_reviews",
        "DELETE FROM task_reviews WHERE company_id = $1",
    ),
    (
        "agent_sessions",
        "DELETE FROM agent_sessions WHERE company_id = $1",
    ),
];

/// The company's tool registrations and tool configurations.
pub(crate) const TOOL_ROWS: &Rows = &[
    (
        "tool_registrations",
        "DELETE FROM tool_registrations WHERE company_id = $1",
    ),
    (
        "tool_configs",
        "DELETE FROM tool_configs WHERE company_id = $1",
    ),
    (
        "tool_listings",
        "DELETE FROM tool_listings WHERE company_id = $1",
    ),
    (
        "tool_credentials",
        "DELETE FROM tool_credentials WHERE company_id = $1",
    ),
];

/// Memories and what hangs off them.
pub(crate) const MEMORY_ROWS: &Rows = &[
    (
        "compaction_checks",
        "DELETE FROM compaction_checks WHERE company_id = $1",
    ),
    (
        "memory_names",
        "DELETE FROM memory_names WHERE company_id = $1",
    ),
    (
        "memory_vectors",
        "DELETE FROM memory_vectors WHERE company_id = $1",
    ),
    (
        "memory_embed_queue",
        "DELETE FROM memory_embed_queue WHERE company_id = $1",
    ),
    ("memories", "DELETE FROM memories WHERE company_id = $1"),
];

/// Published items and consents, and other companies' consents naming it:
/// a company made later with the same id must not inherit them.
pub(crate) const SHARING_ROWS: &Rows = &[
    (
        "shared_items",
        "DELETE FROM shared_items WHERE company_id = $1",
    ),
    (
        "sharing_consents",
        "DELETE FROM sharing_consents WHERE company_id = $1",
    ),
    (
        "sharing_consents_as_partner",
        "DELETE FROM sharing_consents WHERE partner = $1",
    ),
];

/// Tasks, their queue rows and events, reservations and requests, and the
/// company's allocations (the ledger keeps its lines).
pub(crate) const WORK_ROWS: &Rows = &[
    (
        "emergency_requests",
        "DELETE FROM emergency_requests WHERE company_id = $1",
    ),
    (
        "reservations",
        "DELETE FROM reservations WHERE company_id = $1",
    ),
    ("task_queue", "DELETE FROM task_queue WHERE company_id = $1"),
    (
        "task_events",
        "DELETE FROM task_events WHERE company_id = $1",
    ),
    ("tasks", "DELETE FROM tasks WHERE company_id = $1"),
    (
        "metric_events",
        "DELETE FROM metric_events WHERE company_id = $1",
    ),
    (
        "metric_rollups",
        "DELETE FROM metric_rollups WHERE company_id = $1",
    ),
    (
        "metric_totals",
        "DELETE FROM metric_totals WHERE grouping = 'company' AND company_id = $1",
    ),
    (
        "alert_held_notices",
        "DELETE FROM alert_held_notices WHERE company_id = $1",
    ),
    (
        "alert_sending_notices",
        "DELETE FROM alert_sending_notices WHERE company_id = $1",
    ),
    (
        "alert_groups",
        "DELETE FROM alert_groups WHERE company_id = $1",
    ),
    (
        "alert_notifications",
        "DELETE FROM alert_notifications WHERE company_id = $1",
    ),
    ("alerts", "DELETE FROM alerts WHERE company_id = $1"),
    (
        "budget_allocations",
        "DELETE FROM budget_allocations WHERE company_id = $1",
    ),
];

/// Last, children first: conflict flags naming it, its keys, the company.
pub(crate) const COMPANY_ROWS: &Rows = &[
    (
        "conflicts",
        "DELETE FROM conflicts WHERE company_a = $1 OR company_b = $1",
    ),
    (
        "ui_sessions",
        "DELETE FROM ui_sessions WHERE key_id IN (SELECT key_id FROM api_keys WHERE company_id = $1)",
    ),
    ("api_keys", "DELETE FROM api_keys WHERE company_id = $1"),
    ("companies", "DELETE FROM companies WHERE company_id = $1"),
];

/// Runs `rows` for `company`, counting what each removed in `deleted`.
pub(crate) async fn delete_rows(
    c: &mut dyn Conn,
    company: &CompanyId,
    rows: &Rows,
    deleted: &mut DeletedRows,
) -> Result<()> {
    for (table, sql) in rows {
        let n = c.exec(q(sql).arg(company.as_str())).await?;
        deleted.tables.push(((*table).to_owned(), n));
    }
    Ok(())
}
