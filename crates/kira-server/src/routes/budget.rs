//! Token budgets: the period's pools and allocations, emergency requests
//! and their decisions, and the ledger check.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use kira_core::CompanyId;
use kira_core::auth::Access;
use kira_core::budget::{Period, Pool, burn_rate_per_day, projected_period_use};
use kira_store::work::{BudgetState, EmergencyRequest, LedgerReport};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::App;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Caller, json_body, query};

#[derive(Debug, Serialize, ToSchema)]
pub struct PoolView {
    #[schema(value_type = String)]
    pub pool: Pool,
    pub capacity: i64,
    pub reserved: i64,
    /// Every token the provider reported, overdrafts included.
    pub spent: i64,
    /// Negative when overdrawn.
    pub remaining: i64,
    /// How far the pool is overdrawn (0 when within its capacity).
    pub overdraft: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CompanyBudgetView {
    pub company_id: CompanyId,
    /// SEED 4.1's allocation factor.
    pub factor: f64,
    /// The factor normalised over active companies: its share of the base pool.
    pub share: f64,
    /// Base tokens allocated this period.
    pub allocation: i64,
    pub reserved: i64,
    /// Every base token the provider reported, overdrafts included.
    pub spent: i64,
    /// Negative when overdrawn.
    pub remaining: i64,
    /// Usage the provider reported beyond the allocation. While above zero
    /// the company's work waits for budget: the next period, or an approved
    /// emergency grant.
    pub overdraft: i64,
    /// Spent from every pool.
    pub spent_all_pools: i64,
    pub burn_rate_per_day: f64,
    /// At this rate, spent by the end of the period.
    pub projected_period_use: i64,
    /// What the provider reported this period's calls cost, in US dollars.
    pub cost_usd: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RequestView {
    pub request_id: String,
    pub company_id: CompanyId,
    pub task_id: String,
    pub period_id: String,
    pub amount: i64,
    pub status: String,
    pub reason: String,
    pub requested_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
    pub decided_by: Option<String>,
    pub decision: Option<String>,
}

impl From<EmergencyRequest> for RequestView {
    fn from(r: EmergencyRequest) -> Self {
        Self {
            request_id: r.request_id,
            company_id: r.company_id,
            task_id: r.task_id.to_string(),
            period_id: r.period_id,
            amount: r.amount,
            status: r.status,
            reason: r.reason,
            requested_at: r.requested_at,
            decided_at: r.decided_at,
            decided_by: r.decided_by,
            decision: r.decision,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BudgetView {
    pub period_id: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub total_tokens: i64,
    pub pools: Vec<PoolView>,
    pub companies: Vec<CompanyBudgetView>,
    pub pending_requests: Vec<RequestView>,
}

fn view(s: BudgetState, now: DateTime<Utc>) -> BudgetView {
    let period = Period {
        id: s.period_id.clone(),
        start: s.starts_at,
        end: s.ends_at,
    };
    BudgetView {
        pools: s
            .pools
            .into_iter()
            .map(|p| PoolView {
                pool: p.pool,
                capacity: p.capacity,
                reserved: p.reserved,
                spent: p.spent,
                remaining: p.capacity - p.reserved - p.spent,
                overdraft: p.overdraft,
            })
            .collect(),
        companies: s
            .companies
            .into_iter()
            .map(|c| CompanyBudgetView {
                remaining: c.allocation - c.reserved - c.spent,
                burn_rate_per_day: burn_rate_per_day(c.spent_all_pools, &period, now),
                projected_period_use: projected_period_use(c.spent_all_pools, &period, now),
                company_id: c.company_id,
                factor: c.factor,
                share: c.share,
                allocation: c.allocation,
                reserved: c.reserved,
                spent: c.spent,
                overdraft: c.overdraft,
                spent_all_pools: c.spent_all_pools,
                cost_usd: c.cost_usd,
            })
            .collect(),
        pending_requests: s
            .pending_requests
            .into_iter()
            .map(RequestView::from)
            .collect(),
        period_id: s.period_id,
        starts_at: s.starts_at,
        ends_at: s.ends_at,
        total_tokens: s.total_tokens,
    }
}

/// The current period: for an admin, the pools, every company's
/// allocation and usage, and pending emergency requests; for a company
/// key, its own company's line and requests only (no pools: their totals
/// would show what other companies spend).
#[utoipa::path(get, path = "/v1/budget", tag = "budget",
    responses((status = 200, body = BudgetView), (status = 401, body = ErrorBody)))]
pub async fn show_budget(State(app): State<App>, caller: Caller) -> ApiResult<Json<BudgetView>> {
    let act = caller.act(&app, "budget.show", "budget", caller.principal.company());
    let result = async {
        let snapshot = match caller.principal.admin() {
            Ok(admin) => app.engine.budget().period(&admin).await,
            Err(_) => {
                let own = caller.principal.company().ok_or_else(ApiError::forbidden)?;
                let scope = caller.principal.scope(own, Access::Read)?;
                app.engine.budget().own_period(&scope).await
            }
        }
        .map_err(|e| ApiError::from_engine(e, "budget"))?;
        Ok(Json(view(snapshot.state, snapshot.at)))
    }
    .await;
    act.read(result).await
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RequestsQuery {
    /// Only pending requests (default true).
    pub pending: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RequestList {
    pub requests: Vec<RequestView>,
}

/// Emergency token requests (admin).
#[utoipa::path(get, path = "/v1/budget/requests", tag = "budget", params(RequestsQuery),
    responses((status = 200, body = RequestList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_requests(
    State(app): State<App>,
    caller: Caller,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<RequestList>> {
    let act = caller.act(&app, "budget.requests", "budget", None);
    let result = async {
        let admin = caller.principal.admin()?;
        let q: RequestsQuery = query(q.as_deref())?;
        let requests = app
            .engine
            .budget()
            .emergencies(&admin, q.pending.unwrap_or(true))
            .await
            .map_err(|e| ApiError::from_engine(e, "request"))?;
        Ok(Json(RequestList {
            requests: requests.into_iter().map(RequestView::from).collect(),
        }))
    }
    .await;
    act.read(result).await
}

#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// Why; shown on the task when rejected.
    #[serde(default)]
    pub note: String,
}

async fn decide(
    app: App,
    caller: Caller,
    raw: String,
    body: Result<Bytes, BytesRejection>,
    approve: bool,
) -> ApiResult<Json<RequestView>> {
    let action = if approve {
        "budget.approve"
    } else {
        "budget.reject"
    };
    let act = caller.act(&app, action, format!("request:{raw}"), None);
    let result = async {
        let admin = caller.principal.admin()?;
        let d: Decision = match body {
            Ok(b) if b.is_empty() => Decision::default(),
            b => json_body(b, app.cfg.max_body_bytes)?,
        };
        let r = app
            .engine
            .budget()
            .decide(&admin, &raw, approve, &d.note, act.ok())
            .await
            .map_err(|e| ApiError::from_engine(e, "request"))?;
        Ok(Json(RequestView::from(r)))
    }
    .await;
    act.done(result).await
}

/// Grants a pending request's tokens from the emergency pool (admin); the
/// task is queued again and runs on them.
#[utoipa::path(post, path = "/v1/budget/requests/{request_id}/approve", tag = "budget", request_body = Option<Decision>,
    params(("request_id" = String, Path, description = "Request id")),
    responses((status = 200, body = RequestView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn approve_request(
    State(app): State<App>,
    caller: Caller,
    Path(raw): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<RequestView>> {
    decide(app, caller, raw, body, true).await
}

/// Refuses a pending request (admin); the task fails with the note.
#[utoipa::path(post, path = "/v1/budget/requests/{request_id}/reject", tag = "budget", request_body = Decision,
    params(("request_id" = String, Path, description = "Request id")),
    responses((status = 200, body = RequestView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn reject_request(
    State(app): State<App>,
    caller: Caller,
    Path(raw): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<RequestView>> {
    decide(app, caller, raw, body, false).await
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LedgerView {
    pub entries: i64,
    pub ok: bool,
    pub differences: Vec<String>,
}

/// Replays the token ledger and compares every balance (admin).
#[utoipa::path(get, path = "/v1/budget/verify", tag = "budget",
    responses((status = 200, body = LedgerView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn verify_ledger(State(app): State<App>, caller: Caller) -> ApiResult<Json<LedgerView>> {
    let act = caller.act(&app, "budget.verify", "budget", None);
    let result = async {
        let admin = caller.principal.admin()?;
        let LedgerReport {
            entries,
            ok,
            differences,
        } = app
            .engine
            .budget()
            .verify_ledger(&admin)
            .await
            .map_err(|e| ApiError::from_engine(e, "ledger"))?;
        Ok(Json(LedgerView {
            entries,
            ok,
            differences,
        }))
    }
    .await;
    act.read(result).await
}
