//! Company profiles: create, list, show, update, archive, delete.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use bytes::Bytes;
use kira_core::CompanyId;
use kira_core::auth::Access;
use kira_core::company::{Company, CompanyPatch, NewCompany};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::App;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Caller, json_body, query};

fn engine_err(e: kira_engine::EngineError) -> ApiError {
    ApiError::from_engine(e, "company")
}

/// A company id from the path; an invalid one cannot exist.
fn path_id(raw: &str) -> ApiResult<CompanyId> {
    CompanyId::parse(raw).map_err(|e| ApiError::bad_request("id", e.message))
}

/// Creates a company (admin).
#[utoipa::path(post, path = "/v1/companies", tag = "companies", request_body = NewCompany,
    responses(
        (status = 201, body = Company),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
    ))]
pub async fn create_company(
    State(app): State<App>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Company>)> {
    let act = caller.act(&app, "company.create", "company", None);
    let result = async {
        let admin = caller.principal.admin()?;
        let new: NewCompany = json_body(body, app.cfg.max_body_bytes)?;
        let company = app
            .engine
            .companies()
            .create(&admin, new, act.ok())
            .await
            .map_err(engine_err)?;
        Ok((StatusCode::CREATED, Json(company)))
    }
    .await;
    act.done(result).await
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Include archived companies.
    #[serde(default)]
    pub include_archived: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CompanyList {
    pub companies: Vec<Company>,
}

/// Lists companies: every company for an admin, the key's own otherwise.
#[utoipa::path(get, path = "/v1/companies", tag = "companies", params(ListQuery),
    responses((status = 200, body = CompanyList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list_companies(
    State(app): State<App>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<CompanyList>> {
    let act = caller.act(&app, "company.list", "companies", None);
    let result = async {
        let q: ListQuery = query(raw.as_deref())?;
        let companies = match caller.principal.admin() {
            Ok(admin) => app
                .engine
                .companies()
                .list(&admin, q.include_archived, act.ok())
                .await
                .map_err(engine_err)?,
            Err(_) => {
                let own = caller.principal.company().ok_or_else(ApiError::forbidden)?;
                let scope = caller.principal.scope(own, Access::Read)?;
                app.engine
                    .companies()
                    .own(&scope, q.include_archived)
                    .await
                    .map_err(engine_err)?
            }
        };
        Ok(Json(CompanyList { companies }))
    }
    .await;
    act.read(result).await
}

/// Shows one company.
#[utoipa::path(get, path = "/v1/companies/{id}", tag = "companies",
    params(("id" = String, Path, description = "Company id")),
    responses((status = 200, body = Company), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_company(
    State(app): State<App>,
    caller: Caller,
    Path(raw): Path<String>,
) -> ApiResult<Json<Company>> {
    let id = CompanyId::parse(&raw).ok();
    let act = caller.act(&app, "company.show", format!("company:{raw}"), id.as_ref());
    let result = async {
        let id = path_id(&raw)?;
        let scope = caller.principal.scope(&id, Access::Read)?;
        Ok(Json(
            app.engine
                .companies()
                .get(&scope)
                .await
                .map_err(engine_err)?,
        ))
    }
    .await;
    act.read(result).await
}

/// Changes a company's profile (admin, or the company's operator).
///
/// An operator may change `name` and `contacts` only. The fields that
/// decide across companies (`industry`, `jurisdiction`, `sharing_consent`,
/// `revenue_usd`, `complexity_score`, `activity_score`,
/// `priority_multiplier`, `sla_response_seconds`) are admin only: an
/// operator key sending any of them gets 403 naming the field, and nothing
/// changes.
#[utoipa::path(patch, path = "/v1/companies/{id}", tag = "companies", request_body = CompanyPatch,
    params(("id" = String, Path, description = "Company id")),
    responses(
        (status = 200, body = Company), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "A viewer key, or an operator key setting an admin-only field (named in `field`)"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
    ))]
pub async fn update_company(
    State(app): State<App>,
    caller: Caller,
    Path(raw): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Company>> {
    let id = CompanyId::parse(&raw).ok();
    let act = caller.act(
        &app,
        "company.update",
        format!("company:{raw}"),
        id.as_ref(),
    );
    let result = async {
        let id = path_id(&raw)?;
        let scope = caller.principal.scope(&id, Access::Write)?;
        let patch: CompanyPatch = json_body(body, app.cfg.max_body_bytes)?;
        Ok(Json(
            app.engine
                .companies()
                .update(&scope, patch, act.ok())
                .await
                .map_err(engine_err)?,
        ))
    }
    .await;
    act.done(result).await
}

/// Archives a company (admin): it stays readable and stops changing.
#[utoipa::path(post, path = "/v1/companies/{id}/archive", tag = "companies",
    params(("id" = String, Path, description = "Company id")),
    responses(
        (status = 200, body = Company), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
    ))]
pub async fn archive_company(
    State(app): State<App>,
    caller: Caller,
    Path(raw): Path<String>,
) -> ApiResult<Json<Company>> {
    let id = CompanyId::parse(&raw).ok();
    let act = caller.act(
        &app,
        "company.archive",
        format!("company:{raw}"),
        id.as_ref(),
    );
    let result = async {
        let id = path_id(&raw)?;
        let scope = caller.principal.admin()?.company(&id, Access::Write);
        let company = app
            .engine
            .companies()
            .archive(&scope, act.ok())
            .await
            .map_err(engine_err)?;
        Ok(Json(company))
    }
    .await;
    act.done(result).await
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Must be true: deleting removes every row of the company.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Deleted {
    pub deleted: CompanyId,
    /// Rows removed, per table. The audit log keeps its entries.
    pub rows: std::collections::BTreeMap<String, u64>,
}

/// Deletes a company and every row it owns, in one transaction (admin).
#[utoipa::path(delete, path = "/v1/companies/{id}", tag = "companies",
    params(("id" = String, Path, description = "Company id"), DeleteQuery),
    responses(
        (status = 200, body = Deleted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ))]
pub async fn delete_company(
    State(app): State<App>,
    caller: Caller,
    Path(raw): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Deleted>> {
    let id = CompanyId::parse(&raw).ok();
    let act = caller.act(
        &app,
        "company.delete",
        format!("company:{raw}"),
        id.as_ref(),
    );
    let result = async {
        let id = path_id(&raw)?;
        let scope = caller.principal.admin()?.company(&id, Access::Write);
        let q: DeleteQuery = query(q.as_deref())?;
        if !q.force {
            return Err(ApiError::bad_request(
                "force",
                "deleting a company removes all of its data: pass force=true",
            ));
        }
        let rows = app
            .engine
            .companies()
            .delete(&scope, act.ok())
            .await
            .map_err(engine_err)?;
        Ok(Json(Deleted {
            deleted: id,
            rows: rows.tables.into_iter().collect(),
        }))
    }
    .await;
    act.done(result).await
}
