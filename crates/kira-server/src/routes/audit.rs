//! The audit log: list entries, verify the chain.

use axum::Json;
use axum::extract::{RawQuery, State};
use kira_core::CompanyId;
use kira_core::audit::{AuditEntry, ChainReport};
use kira_core::auth::Access;
use kira_store::AuditPage;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::App;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Caller, query};

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this company's entries (required to be your own for non-admin keys).
    pub company: Option<String>,
    /// Entries after this sequence number (the cursor).
    #[serde(default)]
    pub after: i64,
    /// At most this many entries (1-1000, default 100).
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditList {
    pub entries: Vec<AuditEntry>,
    /// Pass as `after` for the next page; null at the end.
    pub next_after: Option<i64>,
}

/// Lists audit entries, oldest first: every company's for an admin, the
/// key's own company's otherwise.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = AuditList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn list_audit(
    State(app): State<App>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<AuditList>> {
    let q: ApiResult<AuditQuery> = query(raw.as_deref());
    let named = q
        .as_ref()
        .ok()
        .and_then(|q| q.company.as_deref())
        .and_then(|c| CompanyId::parse(c).ok());
    let act = caller.act(&app, "audit.list", "audit", named.as_ref());
    let result = async {
        let q = q?;
        let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::bad_request(
                "limit",
                format!("must be between 1 and {MAX_LIMIT}"),
            ));
        }
        if q.after < 0 {
            return Err(ApiError::bad_request("after", "must not be negative"));
        }
        let company = q
            .company
            .as_deref()
            .map(CompanyId::parse)
            .transpose()
            .map_err(|e| ApiError::bad_request("company", e.message))?;
        let page = AuditPage {
            after_seq: q.after,
            limit,
        };
        let entries = match caller.principal.admin() {
            Ok(admin) => {
                app.engine
                    .audit()
                    .list_all(&admin, company.as_ref(), page, act.ok())
                    .await
            }
            Err(_) => {
                let own = caller.principal.company().ok_or_else(ApiError::forbidden)?;
                let scope = caller
                    .principal
                    .scope(company.as_ref().unwrap_or(own), Access::Read)?;
                app.engine.audit().list_company(&scope, page).await
            }
        }
        .map_err(|e| ApiError::from_engine(e, "audit"))?;
        let next_after = (entries.len() == limit as usize)
            .then(|| entries.last().map(|e| e.seq))
            .flatten();
        Ok(Json(AuditList {
            entries,
            next_after,
        }))
    }
    .await;
    act.read(result).await
}

/// Walks the whole chain and reports the first broken link (admin).
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit",
    responses((status = 200, body = ChainReport), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn verify_audit(State(app): State<App>, caller: Caller) -> ApiResult<Json<ChainReport>> {
    let act = caller.act(&app, "audit.verify", "audit", None);
    let result = async {
        let admin = caller.principal.admin()?;
        let report = app
            .engine
            .audit()
            .verify(&admin, act.ok())
            .await
            .map_err(|e| ApiError::from_engine(e, "audit"))?;
        Ok(Json(report))
    }
    .await;
    act.read(result).await
}
