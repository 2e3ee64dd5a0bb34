//! Alerts: the admin sees every alert, a company key its company's own
//! (another company's, or the system's, answers 404 and is audited);
//! acknowledging and resolving need a key that may write; silences are
//! the admin's. Every change is audited by the engine with the change.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use bytes::Bytes;
use kira_core::alerts::{Alert, AlertState, Silence};
use kira_core::auth::{Access, AdminScope, CompanyScope};
use kira_engine::alerts::NewSilence;
use kira_store::alerts::{AlertDetail, AlertFilter, AlertReader};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::App;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Caller, json_body, query};

/// The caller as an alert reader: the admin, or a key's own company.
pub(crate) enum Reader {
    Admin(AdminScope),
    Company(CompanyScope),
}

impl Reader {
    pub(crate) fn of(caller: &Caller, access: Access) -> ApiResult<Reader> {
        if let Ok(admin) = caller.principal.admin() {
            return Ok(Reader::Admin(admin));
        }
        let company = caller.principal.company().ok_or_else(ApiError::forbidden)?;
        Ok(Reader::Company(caller.principal.scope(company, access)?))
    }

    pub(crate) fn as_store(&self) -> AlertReader<'_> {
        match self {
            Reader::Admin(a) => AlertReader::Admin(a),
            Reader::Company(s) => AlertReader::Company(s),
        }
    }

    /// A company key asking for an alert not its company's is refused as
    /// not found, and audited as denied.
    pub(crate) fn error(&self, e: kira_engine::EngineError) -> ApiError {
        match (self, e) {
            (
                Reader::Company(_),
                kira_engine::EngineError::Store(kira_store::StoreError::NotFound),
            ) => ApiError::not_found("alert", true),
            (_, e) => ApiError::from_engine(e, "alert"),
        }
    }
}

/// The audit target naming `raw`: only a well-formed id is echoed, so a
/// path never writes arbitrary text (another company's name) into the log.
fn target(kind: &str, raw: &str) -> String {
    match Uuid::parse_str(raw) {
        Ok(id) => format!("{kind}:{id}"),
        Err(_) => format!("{kind}:(malformed id)"),
    }
}

fn alert_id(raw: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found("alert", false))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AlertsQuery {
    /// Only open alerts (pending, firing, acknowledged).
    pub open: Option<bool>,
    /// pending, firing, acknowledged or resolved.
    pub state: Option<String>,
    /// One rule's alerts.
    pub rule: Option<String>,
    /// At most this many, newest first (1-1000, default 100).
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AlertList {
    /// Newest first.
    pub alerts: Vec<Alert>,
}

/// Alerts, newest first: every alert for the admin, the company's own for
/// its keys.
#[utoipa::path(get, path = "/v1/alerts", tag = "alerts", params(AlertsQuery),
    responses((status = 200, body = AlertList), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_alerts(
    State(app): State<App>,
    caller: Caller,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<AlertList>> {
    let act = caller.act(&app, "alert.list", "alerts", caller.principal.company());
    let result = async {
        let who = Reader::of(&caller, Access::Read)?;
        let q: AlertsQuery = query(q.as_deref())?;
        let state = match q.state.as_deref() {
            None => None,
            Some(s) => Some(AlertState::parse(s).ok_or_else(|| {
                ApiError::bad_request("state", "must be pending, firing, acknowledged or resolved")
            })?),
        };
        let limit = q.limit.unwrap_or(100);
        if !(1..=1_000).contains(&limit) {
            return Err(ApiError::bad_request("limit", "must be between 1 and 1000"));
        }
        let filter = AlertFilter {
            open_only: q.open.unwrap_or(false),
            state,
            rule: q.rule,
            changed_since: None,
            limit,
        };
        let alerts = app
            .engine
            .alerts()
            .list(who.as_store(), &filter)
            .await
            .map_err(|e| who.error(e))?;
        Ok(Json(AlertList { alerts }))
    }
    .await;
    act.read(result).await
}

/// An alert and every notification attempt made for it.
#[utoipa::path(get, path = "/v1/alerts/{id}", tag = "alerts",
    params(("id" = String, Path, description = "Alert id")),
    responses((status = 200, body = AlertDetail), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_alert(
    State(app): State<App>,
    caller: Caller,
    Path(raw): Path<String>,
) -> ApiResult<Json<AlertDetail>> {
    let act = caller.act(
        &app,
        "alert.show",
        target("alert", &raw),
        caller.principal.company(),
    );
    let result = async {
        let who = Reader::of(&caller, Access::Read)?;
        let id = alert_id(&raw)?;
        let detail = app
            .engine
            .alerts()
            .get(who.as_store(), id)
            .await
            .map_err(|e| who.error(e))?;
        Ok(Json(detail))
    }
    .await;
    act.read(result).await
}

pub(crate) async fn change(
    app: &App,
    caller: &Caller,
    raw: &str,
    action: &'static str,
) -> ApiResult<Json<Alert>> {
    let act = caller.act(
        app,
        action,
        target("alert", raw),
        caller.principal.company(),
    );
    let result = async {
        let who = Reader::of(caller, Access::Write)?;
        let id = alert_id(raw)?;
        let by = caller.principal.actor().to_string();
        let alerts = app.engine.alerts();
        let done = if action == "alert.ack" {
            alerts.acknowledge(who.as_store(), id, &by, act.ok()).await
        } else {
            alerts.resolve(who.as_store(), id, &by, act.ok()).await
        };
        Ok(Json(done.map_err(|e| who.error(e))?))
    }
    .await;
    act.done(result).await
}

/// Acknowledges a firing alert: someone is on it, so it neither escalates
/// nor repeats. 409 when it is not firing.
#[utoipa::path(post, path = "/v1/alerts/{id}/ack", tag = "alerts",
    params(("id" = String, Path, description = "Alert id")),
    responses((status = 200, body = Alert), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn ack_alert(
    State(app): State<App>,
    caller: Caller,
    Path(raw): Path<String>,
) -> ApiResult<Json<Alert>> {
    change(&app, &caller, &raw, "alert.ack").await
}

/// Resolves an open alert by hand; if its condition still holds, the
/// evaluator opens a new one. 409 when already resolved.
#[utoipa::path(post, path = "/v1/alerts/{id}/resolve", tag = "alerts",
    params(("id" = String, Path, description = "Alert id")),
    responses((status = 200, body = Alert), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn resolve_alert(
    State(app): State<App>,
    caller: Caller,
    Path(raw): Path<String>,
) -> ApiResult<Json<Alert>> {
    change(&app, &caller, &raw, "alert.resolve").await
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SilencesQuery {
    /// Ended silences too.
    pub expired: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SilenceList {
    /// Newest first.
    pub silences: Vec<Silence>,
}

/// Silences (admin): those not yet ended, or all with `expired=true`.
#[utoipa::path(get, path = "/v1/alerts/silences", tag = "alerts", params(SilencesQuery),
    responses((status = 200, body = SilenceList), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_silences(
    State(app): State<App>,
    caller: Caller,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<SilenceList>> {
    let act = caller.act(&app, "alert.silences", "silences", None);
    let result = async {
        let admin = caller.principal.admin()?;
        let q: SilencesQuery = query(q.as_deref())?;
        let silences = app
            .engine
            .alerts()
            .silences(&admin, q.expired.unwrap_or(false))
            .await
            .map_err(|e| ApiError::from_engine(e, "silence"))?;
        Ok(Json(SilenceList { silences }))
    }
    .await;
    act.read(result).await
}

/// Holds back the notifications of the alerts every matcher matches
/// (`rule`, `kind`, `severity`, `subject` or a label) until `ends_at`
/// (admin); the alerts themselves go on.
#[utoipa::path(post, path = "/v1/alerts/silences", tag = "alerts", request_body = NewSilence,
    responses((status = 201, body = Silence), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_silence(
    State(app): State<App>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Silence>)> {
    let act = caller.act(&app, "alert.silence", "silences", None);
    let result = async {
        let admin = caller.principal.admin()?;
        let new: NewSilence = json_body(body, app.cfg.max_body_bytes)?;
        let by = caller.principal.actor().to_string();
        let silence = app
            .engine
            .alerts()
            .silence(&admin, new, &by, act.ok())
            .await
            .map_err(|e| ApiError::from_engine(e, "silence"))?;
        Ok((StatusCode::CREATED, Json(silence)))
    }
    .await;
    act.done(result).await
}

/// Ends a silence now (admin); it stays listed with `expired=true`.
#[utoipa::path(delete, path = "/v1/alerts/silences/{id}", tag = "alerts",
    params(("id" = String, Path, description = "Silence id")),
    responses((status = 200, body = Silence), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_silence(
    State(app): State<App>,
    caller: Caller,
    Path(raw): Path<String>,
) -> ApiResult<Json<Silence>> {
    let act = caller.act(&app, "alert.unsilence", target("silence", &raw), None);
    let result = async {
        let admin = caller.principal.admin()?;
        let id = Uuid::parse_str(&raw).map_err(|_| ApiError::not_found("silence", false))?;
        let silence = app
            .engine
            .alerts()
            .unsilence(&admin, id, act.ok())
            .await
            .map_err(|e| ApiError::from_engine(e, "silence"))?;
        Ok(Json(silence))
    }
    .await;
    act.done(result).await
}
