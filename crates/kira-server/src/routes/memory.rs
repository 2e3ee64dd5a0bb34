//! A company's episodic memory: add (one or a batch), list, search, show,
//! archive, restore, delete (admin), compact, and the context pack an
//! agent would start from.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use kira_core::CompanyId;
use kira_core::auth::{Access, CompanyScope};
use kira_core::memory::{EventType, Memory, NewMemory, Workstream, check_category};
use kira_engine::memory::compact::CompactionReport;
use kira_engine::memory::{ContextPack, ContextRequest, SearchHit};
use kira_store::memory::{Archived, MemoryCursor, MemoryFilter};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::App;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Caller, json_body, query};

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 500;

fn company(raw: &str) -> ApiResult<CompanyId> {
    CompanyId::parse(raw).map_err(|e| ApiError::bad_request("id", e.message))
}

fn engine_err(e: kira_engine::EngineError) -> ApiError {
    ApiError::from_engine(e, "memory")
}

/// A memory id from the path; a malformed one names nothing here.
fn memory_id(raw: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found("memory", false))
}

/// A batch of memories, stored in one transaction.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemoryBatch {
    /// 1 to 1,000 events.
    pub memories: Vec<NewMemory>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemoryList {
    pub memories: Vec<Memory>,
    /// Pass as `cursor` for the next page; null at the end.
    pub next_cursor: Option<String>,
}

/// Records one memory, or a batch (`{"memories": [...]}`, up to 1,000) in
/// one transaction. Embedding follows in the background.
#[utoipa::path(post, path = "/v1/companies/{id}/memory", tag = "memory", request_body = NewMemory,
    params(("id" = String, Path, description = "Company id")),
    responses(
        (status = 201, body = MemoryList, description = "Stored (a single memory answers with that memory)"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
    ))]
pub async fn add_memory(
    State(app): State<App>,
    caller: Caller,
    Path(raw): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let id = CompanyId::parse(&raw).ok();
    let act = caller.act(&app, "memory.add", format!("company:{raw}"), id.as_ref());
    let result = async {
        let scope = caller.principal.scope(&company(&raw)?, Access::Write)?;
        let limit = app.cfg.max_body_bytes;
        let is_batch = match &body {
            Ok(b) => serde_json::from_slice::<serde_json::Value>(b)
                .ok()
                .is_some_and(|v| v.get("memories").is_some()),
            Err(_) => false,
        };
        let (items, batch) = if is_batch {
            let b: MemoryBatch = json_body(body, limit)?;
            (b.memories, true)
        } else {
            (vec![json_body::<NewMemory>(body, limit)?], false)
        };
        let stored = app
            .engine
            .memory()
            .add(&scope, items, batch, act.ok())
            .await
            .map_err(engine_err)?;
        let out = if batch {
            serde_json::json!({ "memories": stored, "next_cursor": null })
        } else {
            serde_json::to_value(stored.into_iter().next()).map_err(|e| ApiError::internal(&e))?
        };
        Ok((StatusCode::CREATED, Json(out)))
    }
    .await;
    act.done(result).await
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    #[param(value_type = Option<String>)]
    pub event_type: Option<EventType>,
    #[param(value_type = Option<String>)]
    pub workstream: Option<Workstream>,
    pub category: Option<String>,
    /// Happened at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Happened before this time.
    pub until: Option<DateTime<Utc>>,
    pub min_importance: Option<i16>,
    /// A person, counterparty or indexed term, matched exactly.
    pub term: Option<String>,
    /// `exclude` (default), `include` or `only`.
    pub archived: Option<String>,
    /// From `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// 1-500, default 50.
    pub limit: Option<u32>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// What to look for.
    pub q: Option<String>,
    #[param(value_type = Option<String>)]
    pub event_type: Option<EventType>,
    #[param(value_type = Option<String>)]
    pub workstream: Option<Workstream>,
    pub category: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub min_importance: Option<i16>,
    pub term: Option<String>,
    pub archived: Option<String>,
    /// 1-500, default 50.
    pub limit: Option<u32>,
}

struct Filters {
    event_type: Option<EventType>,
    workstream: Option<Workstream>,
    category: Option<String>,
    from: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    min_importance: Option<i16>,
    term: Option<String>,
    archived: Option<String>,
}

fn filter(f: Filters) -> ApiResult<MemoryFilter> {
    if let Some(c) = &f.category {
        check_category(c).map_err(|e| ApiError::bad_request("category", e.message))?;
    }
    if let Some(i) = f.min_importance
        && !(1..=10).contains(&i)
    {
        return Err(ApiError::bad_request(
            "min_importance",
            "must be between 1 and 10",
        ));
    }
    if let (Some(a), Some(b)) = (f.from, f.until)
        && a >= b
    {
        return Err(ApiError::bad_request("until", "must be after from"));
    }
    let archived = match f.archived.as_deref() {
        None | Some("exclude") => Archived::Exclude,
        Some("include") => Archived::Include,
        Some("only") => Archived::Only,
        Some(other) => {
            return Err(ApiError::bad_request(
                "archived",
                format!("'{other}' is not one of exclude, include, only"),
            ));
        }
    };
    Ok(MemoryFilter {
        event_type: f.event_type,
        workstream: f.workstream,
        category: f.category,
        from: f.from,
        until: f.until,
        min_importance: f.min_importance,
        term: f.term.map(|t| t.trim().to_lowercase()),
        archived,
    })
}

fn limit(l: Option<u32>) -> ApiResult<u32> {
    let l = l.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&l) {
        return Err(ApiError::bad_request(
            "limit",
            format!("must be between 1 and {MAX_LIMIT}"),
        ));
    }
    Ok(l)
}

/// Lists a company's memories, the most recent first.
#[utoipa::path(get, path = "/v1/companies/{id}/memory", tag = "memory",
    params(("id" = String, Path, description = "Company id"), ListQuery),
    responses((status = 200, body = MemoryList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn list_memory(
    State(app): State<App>,
    caller: Caller,
    Path(raw): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<MemoryList>> {
    let id = CompanyId::parse(&raw).ok();
    let act = caller.act(&app, "memory.list", format!("company:{raw}"), id.as_ref());
    let result = async {
        let scope = caller.principal.scope(&company(&raw)?, Access::Read)?;
        let q: ListQuery = query(q.as_deref())?;
        let limit = limit(q.limit)?;
        let after = match q.cursor.as_deref() {
            Some(c) => Some(
                MemoryCursor::decode(c)
                    .ok_or_else(|| ApiError::bad_request("cursor", "is not a cursor kira made"))?,
            ),
            None => None,
        };
        let f = filter(Filters {
            event_type: q.event_type,
            workstream: q.workstream,
            category: q.category,
            from: q.from,
            until: q.until,
            min_importance: q.min_importance,
            term: q.term,
            archived: q.archived,
        })?;
        let memories = app
            .engine
            .memory()
            .list(&scope, &f, after, limit)
            .await
            .map_err(engine_err)?;
        let next_cursor = (memories.len() == limit as usize)
            .then(|| memories.last().map(|m| MemoryCursor::of(m).encode()))
            .flatten();
        Ok(Json(MemoryList {
            memories,
            next_cursor,
        }))
    }
    .await;
    act.read(result).await
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResult {
    pub hits: Vec<SearchHit>,
    /// False when no embedding model is loaded: full text only.
    pub semantic: bool,
}

/// Searches a company's memories: full text and meaning, fused, weighed
/// with recency and importance.
#[utoipa::path(get, path = "/v1/companies/{id}/memory/search", tag = "memory",
    params(("id" = String, Path, description = "Company id"), SearchQuery),
    responses((status = 200, body = SearchResult), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn search_memory(
    State(app): State<App>,
    caller: Caller,
    Path(raw): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<SearchResult>> {
    let id = CompanyId::parse(&raw).ok();
    let act = caller.act(&app, "memory.search", format!("company:{raw}"), id.as_ref());
    let result = async {
        let scope = caller.principal.scope(&company(&raw)?, Access::Read)?;
        let q: SearchQuery = query(q.as_deref())?;
        let text = q.q.unwrap_or_default();
        let limit = limit(q.limit)?;
        let f = filter(Filters {
            event_type: q.event_type,
            workstream: q.workstream,
            category: q.category,
            from: q.from,
            until: q.until,
            min_importance: q.min_importance,
            term: q.term,
            archived: q.archived,
        })?;
        let hits = app
            .engine
            .memory()
            .search(&scope, &text, &f, limit)
            .await
            .map_err(engine_err)?;
        Ok(Json(SearchResult {
            hits,
            semantic: app.engine.embeddings().embedder().is_some(),
        }))
    }
    .await;
    act.read(result).await
}

fn scoped(
    caller: &Caller,
    raw: &str,
    raw_mem: &str,
    access: Access,
) -> ApiResult<(CompanyScope, Uuid)> {
    let scope = caller.principal.scope(&company(raw)?, access)?;
    Ok((scope, memory_id(raw_mem)?))
}

/// Shows one memory.
#[utoipa::path(get, path = "/v1/companies/{id}/memory/{memory_id}", tag = "memory",
    params(("id" = String, Path, description = "Company id"), ("memory_id" = String, Path, description = "Memory id")),
    responses((status = 200, body = Memory), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_memory(
    State(app): State<App>,
    caller: Caller,
    Path((raw, raw_mem)): Path<(String, String)>,
) -> ApiResult<Json<Memory>> {
    let id = CompanyId::parse(&raw).ok();
    let act = caller.act(
        &app,
        "memory.show",
        format!("memory:{raw_mem}"),
        id.as_ref(),
    );
    let result = async {
        let (scope, mid) = scoped(&caller, &raw, &raw_mem, Access::Read)?;
        Ok(Json(
            app.engine
                .memory()
                .get(&scope, mid)
                .await
                .map_err(engine_err)?,
        ))
    }
    .await;
    act.read(result).await
}

async fn set_archived(
    app: &App,
    caller: &Caller,
    raw: &str,
    raw_mem: &str,
    archive: bool,
) -> ApiResult<Json<Memory>> {
    let id = CompanyId::parse(raw).ok();
    let action = if archive {
        "memory.archive"
    } else {
        "memory.restore"
    };
    let act = caller.act(app, action, format!("memory:{raw_mem}"), id.as_ref());
    let result = async {
        let (scope, mid) = scoped(caller, raw, raw_mem, Access::Write)?;
        Ok(Json(
            app.engine
                .memory()
                .set_archived(&scope, mid, archive, act.ok())
                .await
                .map_err(engine_err)?,
        ))
    }
    .await;
    act.done(result).await
}

/// Archives a memory: it leaves search and context until restored, and is
/// purged when the retention period has passed.
#[utoipa::path(post, path = "/v1/companies/{id}/memory/{memory_id}/archive", tag = "memory",
    params(("id" = String, Path, description = "Company id"), ("memory_id" = String, Path, description = "Memory id")),
    responses((status = 200, body = Memory), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn archive_memory(
    State(app): State<App>,
    caller: Caller,
    Path((raw, raw_mem)): Path<(String, String)>,
) -> ApiResult<Json<Memory>> {
    set_archived(&app, &caller, &raw, &raw_mem, true).await
}

/// Restores an archived memory.
#[utoipa::path(post, path = "/v1/companies/{id}/memory/{memory_id}/restore", tag = "memory",
    params(("id" = String, Path, description = "Company id"), ("memory_id" = String, Path, description = "Memory id")),
    responses((status = 200, body = Memory), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn restore_memory(
    State(app): State<App>,
    caller: Caller,
    Path((raw, raw_mem)): Path<(String, String)>,
) -> ApiResult<Json<Memory>> {
    set_archived(&app, &caller, &raw, &raw_mem, false).await
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedMemory {
    pub deleted: Uuid,
}

/// Deletes a memory for good (admins only; audited).
#[utoipa::path(delete, path = "/v1/companies/{id}/memory/{memory_id}", tag = "memory",
    params(("id" = String, Path, description = "Company id"), ("memory_id" = String, Path, description = "Memory id")),
    responses((status = 200, body = DeletedMemory), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn delete_memory(
    State(app): State<App>,
    caller: Caller,
    Path((raw, raw_mem)): Path<(String, String)>,
) -> ApiResult<Json<DeletedMemory>> {
    let id = CompanyId::parse(&raw).ok();
    let act = caller.act(
        &app,
        "memory.delete",
        format!("memory:{raw_mem}"),
        id.as_ref(),
    );
    let result = async {
        let c = company(&raw)?;
        let scope = caller.principal.admin()?.company(&c, Access::Write);
        let mid = memory_id(&raw_mem)?;
        app.engine
            .memory()
            .delete(&scope, mid, act.ok())
            .await
            .map_err(engine_err)?;
        Ok(Json(DeletedMemory { deleted: mid }))
    }
    .await;
    act.done(result).await
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompactRequest {
    /// Report what would change and change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// Compacts a company's memory now (SEED 3.3): discards, summaries and
/// purges by each workstream's strategy.
#[utoipa::path(post, path = "/v1/companies/{id}/memory/compact", tag = "memory", request_body = CompactRequest,
    params(("id" = String, Path, description = "Company id")),
    responses((status = 200, body = CompactionReport), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn compact_memory(
    State(app): State<App>,
    caller: Caller,
    Path(raw): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<CompactionReport>> {
    let id = CompanyId::parse(&raw).ok();
    let act = caller.act(
        &app,
        "memory.compact",
        format!("company:{raw}"),
        id.as_ref(),
    );
    let result = async {
        let scope = caller.principal.scope(&company(&raw)?, Access::Write)?;
        let req: CompactRequest = match &body {
            Ok(b) if b.iter().all(u8::is_ascii_whitespace) => CompactRequest::default(),
            _ => json_body(body, app.cfg.max_body_bytes)?,
        };
        let report = app
            .engine
            .memory()
            .compact(&scope, req.dry_run)
            .await
            .map_err(engine_err)?;
        Ok(Json(report))
    }
    .await;
    act.done(result).await
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ContextQuery {
    /// A task type or a workstream: picks the warm section's workstream.
    pub task_type: Option<String>,
    /// The task's text.
    pub q: Option<String>,
    /// Tokens (cl100k); default 4,000.
    pub budget: Option<usize>,
}

/// The context pack an agent working for this company would start from,
/// with each item's provenance.
#[utoipa::path(get, path = "/v1/companies/{id}/context", tag = "memory",
    params(("id" = String, Path, description = "Company id"), ContextQuery),
    responses((status = 200, body = ContextPack), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn get_context(
    State(app): State<App>,
    caller: Caller,
    Path(raw): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<ContextPack>> {
    let id = CompanyId::parse(&raw).ok();
    let act = caller.act(
        &app,
        "memory.context",
        format!("company:{raw}"),
        id.as_ref(),
    );
    let result = async {
        let scope = caller.principal.scope(&company(&raw)?, Access::Read)?;
        let q: ContextQuery = query(q.as_deref())?;
        let req = ContextRequest {
            task_type: q.task_type,
            query: q.q.unwrap_or_default(),
            budget: q.budget,
        };
        Ok(Json(
            app.engine
                .memory()
                .context(&scope, &req)
                .await
                .map_err(engine_err)?,
        ))
    }
    .await;
    act.read(result).await
}
