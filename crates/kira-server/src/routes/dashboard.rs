//! The dashboards as JSON, in SEED 6.3's shape: the executive view (admin)
//! and a company's (its own keys, or the admin; another company's answers
//! 404 and is audited as denied, like every company route).

use axum::Json;
use axum::extract::{Path, State};
use kira_core::CompanyId;
use kira_core::auth::Access;
use kira_engine::dashboard::{CompanyDashboard, ExecutiveDashboard};

use crate::App;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::Caller;

/// The executive dashboard (admin): system health (queue, workers and their
/// last heartbeat, providers), every company over the budget period (tasks,
/// p95 response against its SLA, success rate, tokens used, remaining and
/// projected, satisfaction, open alerts), the pools over the period and
/// the alert summary.
#[utoipa::path(get, path = "/v1/dashboard", tag = "dashboards",
    responses((status = 200, body = ExecutiveDashboard), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn executive_dashboard(
    State(app): State<App>,
    caller: Caller,
) -> ApiResult<Json<ExecutiveDashboard>> {
    executive(&app, &caller).await.map(Json)
}

/// The executive dashboard for `caller`, audited like every read (the
/// JSON route and the `/ui/` page alike).
pub(crate) async fn executive(app: &App, caller: &Caller) -> ApiResult<ExecutiveDashboard> {
    let act = caller.act(app, "dashboard.executive", "dashboard", None);
    let result = async {
        let admin = caller.principal.admin()?;
        app.engine
            .dashboard()
            .executive(&admin)
            .await
            .map_err(|e| ApiError::from_engine(e, "dashboard"))
    }
    .await;
    act.read(result).await
}

/// A company's dashboard: overview of the last 30 days (tasks, average
/// response, success rate, tokens per successful task), 7-day trends
/// (task volume, response times, satisfaction), active and last-24-hour
/// alerts, resource usage (used, remaining, projected), its queue and
/// review backlog.
#[utoipa::path(get, path = "/v1/companies/{id}/dashboard", tag = "dashboards",
    params(("id" = String, Path, description = "Company id")),
    responses((status = 200, body = CompanyDashboard), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn company_dashboard(
    State(app): State<App>,
    caller: Caller,
    Path(raw): Path<String>,
) -> ApiResult<Json<CompanyDashboard>> {
    company(&app, &caller, &raw).await.map(Json)
}

/// Company `raw`'s dashboard for `caller`: another company's is refused as
/// not found and audited as a denied cross-company read.
pub(crate) async fn company(app: &App, caller: &Caller, raw: &str) -> ApiResult<CompanyDashboard> {
    let id = CompanyId::parse(raw).ok();
    let act = caller.act(
        app,
        "dashboard.company",
        format!("company:{raw}"),
        id.as_ref(),
    );
    let result = async {
        let id = CompanyId::parse(raw).map_err(|e| ApiError::bad_request("id", e.message))?;
        let scope = caller.principal.scope(&id, Access::Read)?;
        app.engine
            .dashboard()
            .company(&scope)
            .await
            .map_err(|e| ApiError::from_engine(e, "company"))
    }
    .await;
    act.read(result).await
}
