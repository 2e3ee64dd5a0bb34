//! The shared knowledge base: admins write and delete; every key of every
//! company reads, lists and searches.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use bytes::Bytes;
use kira_core::knowledge::{KnowledgeEntry, NewKnowledge};
use kira_engine::knowledge::{KnowledgeWrite, MAX_SEARCH_LIMIT};
use kira_store::knowledge::{KnowledgeCursor, KnowledgeFilter};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::App;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Caller, json_body, query};

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 500;
const DEFAULT_SEARCH_LIMIT: u32 = 10;

/// A batch write: up to 1,000 entries in one transaction.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KnowledgeBatch {
    pub entries: Vec<NewKnowledge>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KnowledgeEntries {
    /// As stored, in the order written (an update keeps the stored id).
    pub entries: Vec<KnowledgeEntry>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KnowledgeList {
    /// In (domain, key) order.
    pub entries: Vec<KnowledgeEntry>,
    /// Pass as `after` for the next page; null at the end.
    pub next_after: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KnowledgeSearchHit {
    pub entry: KnowledgeEntry,
    /// The database's relevance, higher is better; compares within one query.
    pub relevance: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KnowledgeSearchResult {
    pub hits: Vec<KnowledgeSearchHit>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    pub domain: Option<String>,
    pub tag: Option<String>,
    pub jurisdiction: Option<String>,
    pub industry: Option<String>,
    /// The cursor: `next_after` of the previous page.
    pub after: Option<String>,
    /// 1-500, default 50.
    pub limit: Option<u32>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// The words to look for; any of them matches.
    pub q: String,
    pub domain: Option<String>,
    pub tag: Option<String>,
    pub jurisdiction: Option<String>,
    pub industry: Option<String>,
    /// 1-100, default 10.
    pub limit: Option<u32>,
}

fn entry_id(raw: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found("knowledge entry", false))
}

fn engine_err(e: kira_engine::EngineError) -> ApiError {
    ApiError::from_engine(e, "knowledge entry")
}

/// Adds or updates knowledge entries (admin): one entry, or
/// `{"entries": [...]}` (up to 1,000, all or nothing). An entry whose
/// (domain, key) exists is updated in place.
#[utoipa::path(post, path = "/v1/knowledge", tag = "knowledge", request_body = NewKnowledge,
    responses(
        (status = 201, body = KnowledgeEntries), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ))]
pub async fn add_knowledge(
    State(app): State<App>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<KnowledgeEntries>)> {
    let act = caller.act(&app, "knowledge.upsert", "knowledge", None);
    let result = async {
        let admin = caller.principal.admin()?;
        let limit = app.cfg.max_body_bytes;
        // A batch is an object with `entries`; anything else is one entry,
        // so each shape's errors name its own fields.
        let is_batch = matches!(&body, Ok(b) if serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(b)
            .is_ok_and(|m| m.contains_key("entries")));
        let write = if is_batch {
            KnowledgeWrite::Batch(json_body::<KnowledgeBatch>(body, limit)?.entries)
        } else {
            KnowledgeWrite::One(json_body::<NewKnowledge>(body, limit)?)
        };
        let entries = app
            .engine
            .knowledge().add(&admin, write, act.ok())
            .await
            .map_err(engine_err)?;
        Ok((StatusCode::CREATED, Json(KnowledgeEntries { entries })))
    }
    .await;
    act.done(result).await
}

fn limit(given: Option<u32>, default: u32, max: u32) -> ApiResult<u32> {
    let limit = given.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::bad_request(
            "limit",
            format!("must be between 1 and {max}"),
        ))
    }
}

/// Lists knowledge entries in (domain, key) order (any key).
#[utoipa::path(get, path = "/v1/knowledge", tag = "knowledge", params(ListQuery),
    responses((status = 200, body = KnowledgeList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list_knowledge(
    State(app): State<App>,
    caller: Caller,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<KnowledgeList>> {
    let act = caller.act(&app, "knowledge.list", "knowledge", None);
    let result = async {
        let q: ListQuery = query(q.as_deref())?;
        let limit = limit(q.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
        let after = q
            .after
            .as_deref()
            .map(|a| {
                KnowledgeCursor::decode(a).ok_or_else(|| {
                    ApiError::bad_request("after", "not a cursor this API handed out")
                })
            })
            .transpose()?;
        let filter = KnowledgeFilter {
            domain: q.domain,
            tag: q.tag,
            jurisdiction: q.jurisdiction,
            industry: q.industry,
        };
        let entries = app
            .engine
            .knowledge()
            .list(&filter, after.as_ref(), limit)
            .await
            .map_err(engine_err)?;
        let next_after = (entries.len() == limit as usize)
            .then(|| entries.last().map(|e| KnowledgeCursor::of(e).encode()))
            .flatten();
        Ok(Json(KnowledgeList {
            entries,
            next_after,
        }))
    }
    .await;
    act.read(result).await
}

/// Searches the knowledge base by full text, any word matching, best first (any key).
#[utoipa::path(get, path = "/v1/knowledge/search", tag = "knowledge", params(SearchQuery),
    responses((status = 200, body = KnowledgeSearchResult), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn search_knowledge(
    State(app): State<App>,
    caller: Caller,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<KnowledgeSearchResult>> {
    let act = caller.act(&app, "knowledge.search", "knowledge", None);
    let result = async {
        let q: SearchQuery = query(q.as_deref())?;
        let limit = limit(q.limit, DEFAULT_SEARCH_LIMIT, MAX_SEARCH_LIMIT)?;
        let filter = KnowledgeFilter {
            domain: q.domain,
            tag: q.tag,
            jurisdiction: q.jurisdiction,
            industry: q.industry,
        };
        let hits = app
            .engine
            .knowledge()
            .search(&q.q, &filter, limit)
            .await?
            .into_iter()
            .map(|h| KnowledgeSearchHit {
                entry: h.entry,
                relevance: h.relevance,
            })
            .collect();
        Ok(Json(KnowledgeSearchResult { hits }))
    }
    .await;
    act.read(result).await
}

/// Shows one knowledge entry (any key).
#[utoipa::path(get, path = "/v1/knowledge/{entry_id}", tag = "knowledge",
    params(("entry_id" = String, Path, description = "Entry id (a UUID)")),
    responses((status = 200, body = KnowledgeEntry), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_knowledge(
    State(app): State<App>,
    caller: Caller,
    Path(raw): Path<String>,
) -> ApiResult<Json<KnowledgeEntry>> {
    let act = caller.act(&app, "knowledge.show", format!("knowledge:{raw}"), None);
    let result = async {
        let id = entry_id(&raw)?;
        Ok(Json(
            app.engine.knowledge().get(id).await.map_err(engine_err)?,
        ))
    }
    .await;
    act.read(result).await
}

/// Deletes a knowledge entry and its vectors (admin).
#[utoipa::path(delete, path = "/v1/knowledge/{entry_id}", tag = "knowledge",
    params(("entry_id" = String, Path, description = "Entry id (a UUID)")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn delete_knowledge(
    State(app): State<App>,
    caller: Caller,
    Path(raw): Path<String>,
) -> ApiResult<StatusCode> {
    let act = caller.act(&app, "knowledge.delete", format!("knowledge:{raw}"), None);
    let result = async {
        let admin = caller.principal.admin()?;
        let id = entry_id(&raw)?;
        app.engine
            .knowledge()
            .delete(&admin, id, act.ok())
            .await
            .map_err(engine_err)?;
        Ok(StatusCode::NO_CONTENT)
    }
    .await;
    act.done(result).await
}
