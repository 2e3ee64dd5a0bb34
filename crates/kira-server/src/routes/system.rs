//! Health, readiness, the API description, and who the caller is.

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use kira_core::CompanyId;
use kira_core::auth::Role;
use kira_core::ids::KeyId;
use serde::Serialize;
use utoipa::ToSchema;

use crate::App;
use crate::error::{ApiError, ApiResult};
use crate::extract::Caller;

#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    pub status: &'static str,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "system", security(()),
    responses((status = 200, body = Status)))]
pub async fn healthz() -> Json<Status> {
    Json(Status { status: "ok" })
}

/// The database answers.
#[utoipa::path(get, path = "/readyz", tag = "system", security(()),
    responses((status = 200, body = Status), (status = 503, body = crate::ErrorBody)))]
pub async fn readyz(State(app): State<App>) -> ApiResult<Json<Status>> {
    app.engine.ping().await.map_err(|e| {
        tracing::warn!(error = %e, "readiness check failed");
        ApiError::unavailable("the database does not answer")
    })?;
    Ok(Json(Status { status: "ready" }))
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "system", security(()),
    responses((status = 200, description = "The OpenAPI 3 document")))]
pub async fn openapi_json(
    Extension(doc): Extension<Arc<utoipa::openapi::OpenApi>>,
) -> Json<utoipa::openapi::OpenApi> {
    Json((*doc).clone())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WhoAmI {
    pub key_id: Option<KeyId>,
    pub role: Role,
    pub company_id: Option<CompanyId>,
}

/// The key this request was made with.
#[utoipa::path(get, path = "/v1/whoami", tag = "system",
    responses((status = 200, body = WhoAmI), (status = 401, body = crate::ErrorBody)))]
pub async fn whoami(caller: Caller) -> Json<WhoAmI> {
    let p = &caller.principal;
    Json(WhoAmI {
        key_id: match p.actor() {
            kira_core::auth::Actor::Key(k) => Some(k.clone()),
            _ => None,
        },
        role: p.role(),
        company_id: p.company().cloned(),
    })
}

pub async fn no_route() -> ApiError {
    ApiError::route_not_found()
}

pub async fn no_method() -> ApiError {
    ApiError::method_not_allowed()
}
