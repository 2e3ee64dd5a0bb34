//! Tasks: submit (idempotent), list, show, cancel, their events, a live
//! stream of their state changes, and the trace of their runs.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::Stream;
use kira_core::CompanyId;
use kira_core::auth::{Access, Actor, CompanyScope};
use kira_core::ids::KeyId;
use kira_core::task::{Priority, Task, TaskEvent, TaskId, TaskRequest, TaskStatus};
use kira_store::agents::Step;
use kira_store::work::TaskFilter;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::App;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Caller, json_body, query};

pub(crate) const DEFAULT_LIMIT: u32 = 50;
pub(crate) const MAX_LIMIT: u32 = 500;

/// A page size: [`DEFAULT_LIMIT`] when none is given, else 1 to [`MAX_LIMIT`].
pub(crate) fn page_limit(l: Option<u32>) -> ApiResult<u32> {
    let l = l.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&l) {
        return Err(ApiError::bad_request(
            "limit",
            format!("must be between 1 and {MAX_LIMIT}"),
        ));
    }
    Ok(l)
}
/// How often a watch looks for new events.
const WATCH_POLL: Duration = Duration::from_millis(250);
/// Every this many polls (5 s when quiet) a watch checks that its key
/// still works: a revocation in another process sends no signal here.
const WATCH_KEY_CHECK_POLLS: u32 = 20;

pub(crate) fn company(raw: &str) -> ApiResult<CompanyId> {
    CompanyId::parse(raw).map_err(|e| ApiError::bad_request("id", e.message))
}

/// The task id from the path; one of another company is simply not here.
fn task_id(company: &CompanyId, raw: &str) -> ApiResult<TaskId> {
    match TaskId::parse(raw) {
        Ok(id) if id.company_part() == company.as_str() => Ok(id),
        _ => Err(ApiError::not_found("task", false)),
    }
}

pub(crate) fn engine_err(e: kira_engine::EngineError) -> ApiError {
    ApiError::from_engine(e, "task")
}

/// Submits a task. With an `Idempotency-Key` header, a repeat of the same
/// request returns the same task (200); the same key with another body is 409.
#[utoipa::path(post, path = "/v1/companies/{id}/tasks", tag = "tasks", request_body = TaskRequest,
    params(("id" = String, Path, description = "Company id"),
           ("Idempotency-Key" = Option<String>, Header, description = "Makes retries of this request safe")),
    responses(
        (status = 201, body = Task, description = "Queued"), (status = 200, body = Task, description = "A repeat of an earlier request"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ))]
pub async fn submit_task(
    State(app): State<App>,
    caller: Caller,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    let id = CompanyId::parse(&raw).ok();
    let act = caller.act(&app, "task.submit", format!("company:{raw}"), id.as_ref());
    let result = async {
        let scope = caller.principal.scope(&company(&raw)?, Access::Write)?;
        let req: TaskRequest = json_body(body, app.cfg.max_body_bytes)?;
        let key = match headers.get("idempotency-key") {
            Some(v) => Some(v.to_str().map_err(|_| {
                ApiError::bad_request("Idempotency-Key", "must be printable ASCII")
            })?),
            None => None,
        };
        let submitted = app
            .engine
            .tasks()
            .submit(&scope, &req, key, act.ok())
            .await?;
        let status = if submitted.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok((status, Json(submitted.task)))
    }
    .await;
    act.done(result).await
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    #[param(value_type = Option<String>)]
    pub status: Option<TaskStatus>,
    #[param(value_type = Option<String>)]
    pub priority: Option<Priority>,
    #[serde(rename = "type")]
    pub task_type: Option<String>,
    /// Created at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Created before this time.
    pub until: Option<DateTime<Utc>>,
    /// The cursor: tasks older than this sequence number (`next_before`).
    pub before: Option<i64>,
    /// 1-500, default 50.
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskList {
    /// Newest first.
    pub tasks: Vec<Task>,
    /// Pass as `before` for the next page; null at the end.
    pub next_before: Option<i64>,
}

/// Lists a company's tasks, newest first.
#[utoipa::path(get, path = "/v1/companies/{id}/tasks", tag = "tasks",
    params(("id" = String, Path, description = "Company id"), ListQuery),
    responses((status = 200, body = TaskList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn list_tasks(
    State(app): State<App>,
    caller: Caller,
    Path(raw): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<TaskList>> {
    let id = CompanyId::parse(&raw).ok();
    let act = caller.act(&app, "task.list", format!("company:{raw}"), id.as_ref());
    let result = async {
        let scope = caller.principal.scope(&company(&raw)?, Access::Read)?;
        let q: ListQuery = query(q.as_deref())?;
        let limit = page_limit(q.limit)?;
        let filter = TaskFilter {
            status: q.status,
            priority: q.priority,
            task_type: q.task_type,
            created_after: q.since,
            created_before: q.until,
            before_seq: q.before,
            limit,
        };
        let tasks = app
            .engine
            .tasks()
            .list(&scope, &filter)
            .await
            .map_err(engine_err)?;
        let next_before = (tasks.len() == limit as usize)
            .then(|| tasks.last().map(|t| t.task_id.seq()))
            .flatten();
        Ok(Json(TaskList { tasks, next_before }))
    }
    .await;
    act.read(result).await
}

pub(crate) fn scoped(
    caller: &Caller,
    raw: &str,
    raw_task: &str,
    access: Access,
) -> ApiResult<(CompanyScope, TaskId)> {
    let c = company(raw)?;
    let scope = caller.principal.scope(&c, access)?;
    Ok((scope, task_id(&c, raw_task)?))
}

/// Shows a task: SEED 1's response (status, result, confidence,
/// requires_human_review) with its request, tokens, cost and timings.
#[utoipa::path(get, path = "/v1/companies/{id}/tasks/{task_id}", tag = "tasks",
    params(("id" = String, Path, description = "Company id"), ("task_id" = String, Path, description = "Task id")),
    responses((status = 200, body = Task), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_task(
    State(app): State<App>,
    caller: Caller,
    Path((raw, raw_task)): Path<(String, String)>,
) -> ApiResult<Json<Task>> {
    let id = CompanyId::parse(&raw).ok();
    let act = caller.act(&app, "task.show", format!("task:{raw_task}"), id.as_ref());
    let result = async {
        let (scope, tid) = scoped(&caller, &raw, &raw_task, Access::Read)?;
        Ok(Json(
            app.engine
                .tasks()
                .get(&scope, &tid)
                .await
                .map_err(engine_err)?,
        ))
    }
    .await;
    act.read(result).await
}

/// Cancels a task: a waiting one at once, a running one at its next
/// heartbeat (its reservation is released either way).
#[utoipa::path(post, path = "/v1/companies/{id}/tasks/{task_id}/cancel", tag = "tasks",
    params(("id" = String, Path, description = "Company id"), ("task_id" = String, Path, description = "Task id")),
    responses((status = 200, body = Task), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel_task(
    State(app): State<App>,
    caller: Caller,
    Path((raw, raw_task)): Path<(String, String)>,
) -> ApiResult<Json<Task>> {
    let id = CompanyId::parse(&raw).ok();
    let act = caller.act(&app, "task.cancel", format!("task:{raw_task}"), id.as_ref());
    let result = async {
        let (scope, tid) = scoped(&caller, &raw, &raw_task, Access::Write)?;
        Ok(Json(
            app.engine.tasks().cancel(&scope, &tid, act.ok()).await?,
        ))
    }
    .await;
    act.done(result).await
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Trace {
    /// By attempt, then order within the attempt.
    pub steps: Vec<Step>,
}

/// The trace of a task's runs: every LLM call, tool call and message
/// between the primary agent and a specialist, with tokens and latency.
#[utoipa::path(get, path = "/v1/companies/{id}/tasks/{task_id}/trace", tag = "tasks",
    params(("id" = String, Path, description = "Company id"), ("task_id" = String, Path, description = "Task id")),
    responses((status = 200, body = Trace), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn task_trace(
    State(app): State<App>,
    caller: Caller,
    Path((raw, raw_task)): Path<(String, String)>,
) -> ApiResult<Json<Trace>> {
    let id = CompanyId::parse(&raw).ok();
    let act = caller.act(&app, "task.trace", format!("task:{raw_task}"), id.as_ref());
    let result = async {
        let (scope, tid) = scoped(&caller, &raw, &raw_task, Access::Read)?;
        let steps = app
            .engine
            .tasks()
            .trace(&scope, &tid)
            .await
            .map_err(engine_err)?;
        Ok(Json(Trace { steps }))
    }
    .await;
    act.read(result).await
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Events after this id.
    #[serde(default)]
    pub after: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventList {
    pub events: Vec<TaskEvent>,
}

/// A task's state changes, oldest first.
#[utoipa::path(get, path = "/v1/companies/{id}/tasks/{task_id}/events", tag = "tasks",
    params(("id" = String, Path, description = "Company id"), ("task_id" = String, Path, description = "Task id"), EventsQuery),
    responses((status = 200, body = EventList), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn task_events(
    State(app): State<App>,
    caller: Caller,
    Path((raw, raw_task)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<EventList>> {
    let id = CompanyId::parse(&raw).ok();
    let act = caller.act(&app, "task.events", format!("task:{raw_task}"), id.as_ref());
    let result = async {
        let (scope, tid) = scoped(&caller, &raw, &raw_task, Access::Read)?;
        let q: EventsQuery = query(q.as_deref())?;
        let events = app
            .engine
            .tasks()
            .events(&scope, &tid, q.after)
            .await
            .map_err(engine_err)?;
        Ok(Json(EventList { events }))
    }
    .await;
    act.read(result).await
}

/// Follows a task live: one server-sent event (`event: status`, data a
/// TaskEvent) per state change, from the first; the stream ends when the
/// task completes, fails, is cancelled or waits for review, and when the
/// key that opened it is revoked.
#[utoipa::path(get, path = "/v1/companies/{id}/tasks/{task_id}/watch", tag = "tasks",
    params(("id" = String, Path, description = "Company id"), ("task_id" = String, Path, description = "Task id")),
    responses((status = 200, description = "text/event-stream of TaskEvent", content_type = "text/event-stream"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn watch_task(
    State(app): State<App>,
    caller: Caller,
    Path((raw, raw_task)): Path<(String, String)>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let id = CompanyId::parse(&raw).ok();
    let act = caller.act(&app, "task.watch", format!("task:{raw_task}"), id.as_ref());
    let result = async {
        let (scope, tid) = scoped(&caller, &raw, &raw_task, Access::Read)?;
        // Fails now, with a status, if the task is not there.
        app.engine
            .tasks()
            .get(&scope, &tid)
            .await
            .map_err(engine_err)?;
        Ok((scope, tid))
    }
    .await;
    let (scope, tid) = act.read(result).await?;
    struct Watch {
        app: App,
        scope: CompanyScope,
        id: TaskId,
        key: Option<KeyId>,
        revocations: tokio::sync::watch::Receiver<u64>,
        check_key: bool,
        polls: u32,
        after: i64,
        pending: std::collections::VecDeque<TaskEvent>,
        done: bool,
    }
    let key = match caller.principal.actor() {
        Actor::Key(k) => Some(k.clone()),
        Actor::System | Actor::Anonymous => None,
    };
    let start = Watch {
        revocations: app.revocations.subscribe(),
        app,
        scope,
        id: tid,
        key,
        check_key: false,
        polls: 0,
        after: 0,
        pending: Default::default(),
        done: false,
    };
    let stream = futures_util::stream::unfold(start, |mut w| async move {
        loop {
            // The key is checked at once after a revocation here, and every
            // few seconds for one made by another process.
            let revoked_here = w.revocations.has_changed().unwrap_or(true);
            if w.check_key || revoked_here || w.polls >= WATCH_KEY_CHECK_POLLS {
                w.revocations.borrow_and_update();
                w.check_key = false;
                w.polls = 0;
                if !key_works(&w.app, w.key.as_ref()).await {
                    return None;
                }
            }
            if let Some(e) = w.pending.pop_front() {
                w.after = e.event_id;
                if e.to_status.is_final() || e.to_status == TaskStatus::NeedsReview {
                    w.done = true;
                }
                let ev = Event::default()
                    .event("status")
                    .json_data(&e)
                    .unwrap_or_default();
                return Some((Ok(ev), w));
            }
            if w.done || w.app.cfg.stopping.is_triggered() {
                return None;
            }
            w.polls += 1;
            match w.app.engine.tasks().events(&w.scope, &w.id, w.after).await {
                Ok(events) if !events.is_empty() => w.pending.extend(events),
                Ok(_) => {
                    let stopping = w.app.cfg.stopping.clone();
                    tokio::select! {
                        () = tokio::time::sleep(WATCH_POLL) => {}
                        () = stopping.wait() => return None,
                        _ = w.revocations.changed() => w.check_key = true,
                    }
                }
                // The task was deleted with its company, or the database failed: end the stream.
                Err(_) => return None,
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Whether the key behind a stream still authenticates: not revoked, not
/// deleted. A failed lookup counts as no, so a stream never outlives its
/// key because the database was down.
async fn key_works(app: &App, key: Option<&KeyId>) -> bool {
    let Some(key) = key else {
        return true;
    };
    app.engine.keys().is_live(key).await
}
