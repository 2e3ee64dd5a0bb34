//! Metrics: the Prometheus exposition (admin key) and the task metrics as
//! JSON series, per company (its own keys, or the admin), per agent (the
//! admin across companies; a company key its own runs) and for the system
//! (admin).

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use kira_core::CompanyId;
use kira_core::auth::Access;
use kira_engine::metrics::{AgentMetrics, CompanyMetrics, SeriesRequest, SystemMetrics};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::App;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Caller, Scraper, query};

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SeriesQuery {
    /// Start of the window (RFC 3339; default: a day before `to`), rounded
    /// down to the step's resolution.
    pub from: Option<DateTime<Utc>>,
    /// End of the window (default: now).
    pub to: Option<DateTime<Utc>>,
    /// Seconds per point, a whole number of minutes (default 3600); at
    /// most 2000 points.
    pub step: Option<i64>,
}

impl SeriesQuery {
    fn request(self) -> SeriesRequest {
        SeriesRequest {
            from: self.from,
            to: self.to,
            step_seconds: self.step,
        }
    }
}

fn engine_err(e: kira_engine::EngineError) -> ApiError {
    ApiError::from_engine(e, "metrics")
}

/// Prometheus exposition (OpenMetrics text) of this process's HTTP and
/// authentication counters and the deployment's task, token, cost,
/// review, budget and queue series. Needs an admin key or a `metrics`
/// key (which may read this and nothing else); every company's series
/// are here, so a company's key is refused.
#[utoipa::path(get, path = "/metrics", tag = "metrics",
    responses((status = 200, content_type = "application/openmetrics-text", body = String),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn prometheus(State(app): State<App>, scraper: Scraper) -> ApiResult<Response> {
    let caller = scraper.0;
    let act = caller.act(&app, "metrics.scrape", "metrics", None);
    let result = async {
        let who = caller.principal.metrics()?;
        let scrape = app
            .engine
            .metrics()
            .scrape(&who)
            .await
            .map_err(engine_err)?;
        exposition(&app.process, scrape)
    }
    .await;
    act.read(result).await
}

/// `GET /metrics` on the loopback-only listener: no key, the system's scope.
pub async fn loopback(
    State((engine, process)): State<(
        kira_engine::Engine,
        std::sync::Arc<crate::prom::ProcessMetrics>,
    )>,
) -> ApiResult<Response> {
    let who = kira_core::auth::Principal::system().metrics()?;
    let scrape = engine.metrics().scrape(&who).await.map_err(engine_err)?;
    exposition(&process, scrape)
}

fn exposition(
    process: &crate::prom::ProcessMetrics,
    scrape: kira_engine::metrics::Scrape,
) -> ApiResult<Response> {
    let text = crate::prom::render(process, scrape).map_err(|e| ApiError::internal(&e))?;
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::prom::CONTENT_TYPE),
    );
    Ok(response)
}

/// The whole system's task metrics over a window (admin): totals, a point
/// per step, and a line per company and per agent.
#[utoipa::path(get, path = "/v1/metrics/system", tag = "metrics", params(SeriesQuery),
    responses((status = 200, body = SystemMetrics), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn system_metrics(
    State(app): State<App>,
    caller: Caller,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<SystemMetrics>> {
    let act = caller.act(&app, "metrics.system", "metrics", None);
    let result = async {
        let admin = caller.principal.admin()?;
        let q: SeriesQuery = query(q.as_deref())?;
        let m = app
            .engine
            .metrics()
            .system(&admin, &q.request())
            .await
            .map_err(engine_err)?;
        Ok(Json(m))
    }
    .await;
    act.read(result).await
}

/// A company's task metrics over a window: totals with SEED's KPIs (p95
/// response time against its SLA, success and automation rates, tokens
/// per completed task, satisfaction, cost), a point per step, a line per
/// agent.
#[utoipa::path(get, path = "/v1/companies/{id}/metrics", tag = "metrics",
    params(("id" = String, Path, description = "Company id"), SeriesQuery),
    responses((status = 200, body = CompanyMetrics), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn company_metrics(
    State(app): State<App>,
    caller: Caller,
    Path(raw): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<CompanyMetrics>> {
    let id = CompanyId::parse(&raw).ok();
    let act = caller.act(
        &app,
        "metrics.company",
        format!("company:{raw}"),
        id.as_ref(),
    );
    let result = async {
        let id = CompanyId::parse(&raw).map_err(|e| ApiError::bad_request("id", e.message))?;
        let scope = caller.principal.scope(&id, Access::Read)?;
        let q: SeriesQuery = query(q.as_deref())?;
        let m = app
            .engine
            .metrics()
            .company(&scope, &q.request())
            .await
            .map_err(|e| ApiError::from_engine(e, "company"))?;
        Ok(Json(m))
    }
    .await;
    act.read(result).await
}

/// One agent's task metrics over a window: every company's runs, with a
/// line per company, for an admin; a company key sees its own company's
/// runs only.
#[utoipa::path(get, path = "/v1/agents/{name}/metrics", tag = "metrics",
    params(("name" = String, Path, description = "primary, legal, financial, ..."), SeriesQuery),
    responses((status = 200, body = AgentMetrics), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn agent_metrics(
    State(app): State<App>,
    caller: Caller,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<AgentMetrics>> {
    let act = caller.act(
        &app,
        "metrics.agent",
        format!("agent:{name}"),
        caller.principal.company(),
    );
    let result = async {
        let q: SeriesQuery = query(q.as_deref())?;
        let req = q.request();
        let m = match caller.principal.admin() {
            Ok(admin) => app.engine.metrics().agent(Ok(&admin), &name, &req).await,
            Err(_) => {
                let own = caller.principal.company().ok_or_else(ApiError::forbidden)?;
                let scope = caller.principal.scope(own, Access::Read)?;
                app.engine.metrics().agent(Err(&scope), &name, &req).await
            }
        }
        .map_err(|e| ApiError::from_engine(e, "agent"))?;
        Ok(Json(m))
    }
    .await;
    act.read(result).await
}
