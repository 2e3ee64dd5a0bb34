//! Cross-company sharing (admin): the rule explainer and the conflict
//! flags that block sharing until a human resolves them.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use bytes::Bytes;
use kira_core::CompanyId;
use kira_core::audit::AuditRecord;
use kira_core::conflict::{Conflict, ConflictStatus};
use kira_engine::sharing::SharingCheck;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::App;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Caller, json_body, query};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CheckQuery {
    /// A company id.
    pub a: String,
    /// Another company id.
    pub b: String,
    /// The scope asked for, such as anonymized_legal_patterns or process_templates.
    pub scope: String,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConflictQuery {
    /// open (the default), resolved, or all.
    pub status: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConflictList {
    /// Newest first.
    pub conflicts: Vec<Conflict>,
    /// Cross-company reads refused since this server started (another
    /// company named by a caller, or shared context blocked by an open
    /// conflict): a security signal, each also in the audit log.
    pub denied_cross_company_reads: u64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveBody {
    /// Why the flag is resolved: the audit log keeps it.
    pub note: String,
}

fn company(field: &str, raw: &str) -> ApiResult<CompanyId> {
    CompanyId::parse(raw).map_err(|e| ApiError::bad_request(field, e.message))
}

/// Says whether two companies may share a scope, which rule decided and
/// why (admin).
#[utoipa::path(get, path = "/v1/sharing/check", tag = "sharing", params(CheckQuery),
    responses((status = 200, body = SharingCheck), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn check_sharing(
    State(app): State<App>,
    caller: Caller,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<SharingCheck>> {
    let act = caller.act(&app, "sharing.check", "sharing", None);
    let result = async {
        let admin = caller.principal.admin()?;
        let q: CheckQuery = query(q.as_deref())?;
        let (a, b) = (company("a", &q.a)?, company("b", &q.b)?);
        Ok(Json(
            app.engine.check_sharing(&admin, &a, &b, &q.scope).await?,
        ))
    }
    .await;
    act.read(result).await
}

/// Lists conflict flags (admin).
#[utoipa::path(get, path = "/v1/conflicts", tag = "sharing", params(ConflictQuery),
    responses((status = 200, body = ConflictList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn list_conflicts(
    State(app): State<App>,
    caller: Caller,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<ConflictList>> {
    let act = caller.act(&app, "conflict.list", "conflicts", None);
    let result = async {
        let admin = caller.principal.admin()?;
        let q: ConflictQuery = query(q.as_deref())?;
        let status =
            match q.status.as_deref().unwrap_or("open") {
                "all" => None,
                s => Some(ConflictStatus::parse(s).ok_or_else(|| {
                    ApiError::bad_request("status", "must be open, resolved or all")
                })?),
            };
        let conflicts = app
            .store
            .list_conflicts(&admin, status, act.ok())
            .await
            .map_err(|e| ApiError::from_store(e, "conflict"))?;
        Ok(Json(ConflictList {
            conflicts,
            denied_cross_company_reads: app.engine.denied_cross_company_reads(),
        }))
    }
    .await;
    act.read(result).await
}

/// Resolves a conflict flag with a note (admin): sharing between the two
/// companies follows the rules again.
#[utoipa::path(post, path = "/v1/conflicts/{conflict_id}/resolve", tag = "sharing", request_body = ResolveBody,
    params(("conflict_id" = String, Path, description = "Conflict id (a UUID)")),
    responses((status = 200, body = Conflict), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn resolve_conflict(
    State(app): State<App>,
    caller: Caller,
    Path(raw): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Conflict>> {
    let act = caller.act(&app, "conflict.resolve", format!("conflict:{raw}"), None);
    let result = async {
        let admin = caller.principal.admin()?;
        let id = Uuid::parse_str(&raw).map_err(|_| ApiError::not_found("conflict", false))?;
        let body: ResolveBody = json_body(body, app.cfg.max_body_bytes)?;
        let note = body.note.trim();
        if note.is_empty() || note.chars().count() > 2000 {
            return Err(
                kira_core::ValidationError::new("note", "must be 1 to 2000 characters").into(),
            );
        }
        let audit = AuditRecord {
            detail: note.to_owned(),
            ..act.ok()
        };
        let flag = app
            .store
            .resolve_conflict(&admin, id, note, app.clock.now(), audit)
            .await
            .map_err(|e| ApiError::from_store(e, "conflict"))?;
        Ok(Json(flag))
    }
    .await;
    act.done(result).await
}
