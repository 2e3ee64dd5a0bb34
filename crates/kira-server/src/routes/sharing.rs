//! Cross-company sharing: a company's published items (publish and
//! withdraw: admin or the company's operator; list: any key of the
//! company), its consents (admin), the rule explainer and the conflict
//! flags that block sharing until a human resolves them (admin).

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use bytes::Bytes;
use kira_core::CompanyId;
use kira_core::auth::Access;
use kira_core::conflict::{Conflict, ConflictStatus};
use kira_core::sharing::{Consent, Partner};
use kira_engine::sharing::SharingCheck;
use kira_store::sharing::{ConsentRecord, SharedItem};
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
    /// Cross-company reads refused, every kira process on this database
    /// together, all time (another company named by a caller, or shared
    /// context blocked by an open conflict): a security signal, each also
    /// in the audit log.
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
            app.engine.sharing().check(&admin, &a, &b, &q.scope).await?,
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
            .engine
            .sharing()
            .conflicts(&admin, status, act.ok())
            .await
            .map_err(|e| ApiError::from_engine(e, "conflict"))?;
        let denied_cross_company_reads = app
            .engine
            .sharing()
            .denied_reads(&admin)
            .await
            .map_err(|e| ApiError::from_engine(e, "conflict"))?;
        Ok(Json(ConflictList {
            conflicts,
            denied_cross_company_reads,
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
        let flag = app
            .engine
            .sharing()
            .resolve_conflict(&admin, id, &body.note, act.ok())
            .await
            .map_err(|e| ApiError::from_engine(e, "conflict"))?;
        Ok(Json(flag))
    }
    .await;
    act.done(result).await
}

// ---- published items ----

/// A memory to publish for a scope.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    /// One of the company's memories.
    pub memory_id: Uuid,
    /// The scope other companies receive it under, such as process_templates.
    pub scope: String,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PublishedQuery {
    /// Only this scope.
    pub scope: Option<String>,
    /// Withdrawn items too (default false).
    pub withdrawn: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PublishedList {
    /// Newest first.
    pub items: Vec<SharedItem>,
}

/// Publishes one of the company's memories for a scope (admin, or the
/// company's operator): its anonymised text, made now, is all another
/// company may receive of it, and only with both sides' consent.
#[utoipa::path(post, path = "/v1/companies/{id}/shared", tag = "sharing", request_body = PublishBody,
    params(("id" = String, Path, description = "Company id")),
    responses((status = 201, body = SharedItem), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn publish_item(
    State(app): State<App>,
    caller: Caller,
    Path(raw): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<SharedItem>)> {
    let id = CompanyId::parse(&raw).ok();
    let act = caller.act(
        &app,
        "sharing.publish",
        format!("company:{raw}"),
        id.as_ref(),
    );
    let result = async {
        let scope = caller
            .principal
            .scope(&company("id", &raw)?, Access::Write)?;
        let b: PublishBody = json_body(body, app.cfg.max_body_bytes)?;
        let by = caller.principal.actor().to_string();
        let item = app
            .engine
            .sharing()
            .publish(&scope, b.memory_id, &b.scope, &by, act.ok())
            .await
            .map_err(|e| ApiError::from_engine(e, "memory"))?;
        Ok((StatusCode::CREATED, Json(item)))
    }
    .await;
    act.done(result).await
}

/// Lists the company's own published items.
#[utoipa::path(get, path = "/v1/companies/{id}/shared", tag = "sharing",
    params(("id" = String, Path, description = "Company id"), PublishedQuery),
    responses((status = 200, body = PublishedList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn list_published(
    State(app): State<App>,
    caller: Caller,
    Path(raw): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<PublishedList>> {
    let id = CompanyId::parse(&raw).ok();
    let act = caller.act(
        &app,
        "sharing.published",
        format!("company:{raw}"),
        id.as_ref(),
    );
    let result = async {
        let scope = caller
            .principal
            .scope(&company("id", &raw)?, Access::Read)?;
        let q: PublishedQuery = query(q.as_deref())?;
        let items = app
            .engine
            .sharing()
            .published(&scope, q.scope.as_deref(), q.withdrawn.unwrap_or(false))
            .await
            .map_err(|e| ApiError::from_engine(e, "company"))?;
        Ok(Json(PublishedList { items }))
    }
    .await;
    act.read(result).await
}

/// Withdraws a published item (admin, or the company's operator): no
/// context pack holds it from now on.
#[utoipa::path(delete, path = "/v1/companies/{id}/shared/{item_id}", tag = "sharing",
    params(("id" = String, Path, description = "Company id"), ("item_id" = String, Path, description = "Published item id")),
    responses((status = 200, body = SharedItem), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn withdraw_item(
    State(app): State<App>,
    caller: Caller,
    Path((raw, raw_item)): Path<(String, String)>,
) -> ApiResult<Json<SharedItem>> {
    let id = CompanyId::parse(&raw).ok();
    let act = caller.act(
        &app,
        "sharing.withdraw",
        format!("shared:{raw_item}"),
        id.as_ref(),
    );
    let result = async {
        let scope = caller
            .principal
            .scope(&company("id", &raw)?, Access::Write)?;
        let item =
            Uuid::parse_str(&raw_item).map_err(|_| ApiError::not_found("shared item", false))?;
        let by = caller.principal.actor().to_string();
        let item = app
            .engine
            .sharing()
            .withdraw(&scope, item, &by, act.ok())
            .await
            .map_err(|e| ApiError::from_engine(e, "shared item"))?;
        Ok(Json(item))
    }
    .await;
    act.done(result).await
}

// ---- consents ----

#[derive(Debug, Serialize, ToSchema)]
pub struct ConsentList {
    /// By scope, then partner.
    pub consents: Vec<ConsentRecord>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConsentQuery {
    /// The scope of the consent to take back.
    pub scope: String,
    /// Its partner: a company id, or `*`.
    pub partner: String,
}

/// Lists a company's sharing consents (admin).
#[utoipa::path(get, path = "/v1/companies/{id}/sharing/consents", tag = "sharing",
    params(("id" = String, Path, description = "Company id")),
    responses((status = 200, body = ConsentList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_consents(
    State(app): State<App>,
    caller: Caller,
    Path(raw): Path<String>,
) -> ApiResult<Json<ConsentList>> {
    let id = CompanyId::parse(&raw).ok();
    let act = caller.act(
        &app,
        "sharing.consents",
        format!("company:{raw}"),
        id.as_ref(),
    );
    let result = async {
        let admin = caller.principal.admin()?;
        let c = company("id", &raw)?;
        let consents = app
            .engine
            .sharing()
            .consents(&admin, &c)
            .await
            .map_err(|e| ApiError::from_engine(e, "company"))?;
        Ok(Json(ConsentList { consents }))
    }
    .await;
    act.read(result).await
}

/// Records that the company consents to exchange a scope's published items
/// with a partner, or with every company the rules allow (`*`) (admin).
/// Sharing needs such a consent on both sides.
#[utoipa::path(put, path = "/v1/companies/{id}/sharing/consents", tag = "sharing", request_body = Consent,
    params(("id" = String, Path, description = "Company id")),
    responses((status = 200, body = ConsentRecord), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn put_consent(
    State(app): State<App>,
    caller: Caller,
    Path(raw): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<ConsentRecord>> {
    let id = CompanyId::parse(&raw).ok();
    let act = caller.act(
        &app,
        "sharing.consent",
        format!("company:{raw}"),
        id.as_ref(),
    );
    let result = async {
        let admin = caller.principal.admin()?;
        let c = company("id", &raw)?;
        let consent: Consent = json_body(body, app.cfg.max_body_bytes)?;
        let by = caller.principal.actor().to_string();
        let record = app
            .engine
            .sharing()
            .put_consent(&admin, &c, &consent, &by, act.ok())
            .await
            .map_err(|e| ApiError::from_engine(e, "company"))?;
        Ok(Json(record))
    }
    .await;
    act.done(result).await
}

/// Takes back a consent (admin): what it allowed stops being shared with
/// the next context pack.
#[utoipa::path(delete, path = "/v1/companies/{id}/sharing/consents", tag = "sharing",
    params(("id" = String, Path, description = "Company id"), ConsentQuery),
    responses((status = 200, body = ConsentList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn delete_consent(
    State(app): State<App>,
    caller: Caller,
    Path(raw): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<ConsentList>> {
    let id = CompanyId::parse(&raw).ok();
    let act = caller.act(
        &app,
        "sharing.consent_withdraw",
        format!("company:{raw}"),
        id.as_ref(),
    );
    let result = async {
        let admin = caller.principal.admin()?;
        let c = company("id", &raw)?;
        let q: ConsentQuery = query(q.as_deref())?;
        let consent = Consent {
            scope: q.scope,
            partner: Partner::parse(&q.partner)?,
        };
        app.engine
            .sharing()
            .delete_consent(&admin, &c, &consent, act.ok())
            .await
            .map_err(|e| ApiError::from_engine(e, "consent"))?;
        let consents = app
            .engine
            .sharing()
            .consents(&admin, &c)
            .await
            .map_err(|e| ApiError::from_engine(e, "company"))?;
        Ok(Json(ConsentList { consents }))
    }
    .await;
    act.done(result).await
}
