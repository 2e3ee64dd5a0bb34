//! API keys (admin): create, list, revoke. A token is shown once, at creation.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bytes::Bytes;
use kira_core::auth::{ApiKey, NewKey};
use kira_core::ids::KeyId;
use kira_engine::EngineError;
use serde::Serialize;
use utoipa::ToSchema;

use crate::App;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Caller, json_body};

#[derive(Serialize, ToSchema)]
pub struct CreatedKey {
    pub key: ApiKey,
    /// The bearer token. Shown only in this response; kira keeps its hash.
    pub token: String,
}

#[derive(Serialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<ApiKey>,
}

/// Creates a key (admin). Operator and viewer keys belong to one company;
/// a `metrics` key to none, and it may read `GET /metrics` only.
#[utoipa::path(post, path = "/v1/keys", tag = "keys", request_body = NewKey,
    responses(
        (status = 201, body = CreatedKey), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody),
    ))]
pub async fn create_key(
    State(app): State<App>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    let act = caller.act(&app, "key.create", "key", None);
    let result = async {
        let admin = caller.principal.admin()?;
        let new: NewKey = json_body(body, app.cfg.max_body_bytes)?;
        let created = app
            .engine
            .keys()
            .create(&admin, new, act.ok())
            .await
            .map_err(|e| match e {
                // The one thing a new key refers to is its company.
                EngineError::Store(s) => {
                    ApiError::from_store(s, "company").with_field("company_id")
                }
                e => e.into(),
            })?;
        Ok((
            StatusCode::CREATED,
            Json(CreatedKey {
                key: created.key,
                token: created.token,
            }),
        ))
    }
    .await;
    act.done(result).await
}

/// Lists every key (admin). Tokens are never shown again.
#[utoipa::path(get, path = "/v1/keys", tag = "keys",
    responses((status = 200, body = KeyList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_keys(State(app): State<App>, caller: Caller) -> ApiResult<Json<KeyList>> {
    let act = caller.act(&app, "key.list", "keys", None);
    let result = async {
        let admin = caller.principal.admin()?;
        let keys = app
            .engine
            .keys()
            .list(&admin, act.ok())
            .await
            .map_err(|e| ApiError::from_engine(e, "key"))?;
        Ok(Json(KeyList { keys }))
    }
    .await;
    act.read(result).await
}

/// Revokes a key (admin): it stops working at once.
#[utoipa::path(post, path = "/v1/keys/{key_id}/revoke", tag = "keys",
    params(("key_id" = String, Path, description = "Key id")),
    responses(
        (status = 200, body = ApiKey), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
    ))]
pub async fn revoke_key(
    State(app): State<App>,
    caller: Caller,
    Path(raw): Path<String>,
) -> ApiResult<Json<ApiKey>> {
    let act = caller.act(&app, "key.revoke", format!("key:{raw}"), None);
    let result = async {
        let admin = caller.principal.admin()?;
        let id = KeyId::parse(&raw).map_err(|_| ApiError::not_found("key", false))?;
        let key = app
            .engine
            .keys()
            .revoke(&admin, &id, act.ok())
            .await
            .map_err(|e| ApiError::from_engine(e, "key"))?;
        // Streams the key holds open end now, not at their next request.
        app.revocations.send_modify(|n| *n = n.wrapping_add(1));
        Ok(Json(key))
    }
    .await;
    act.done(result).await
}
