//! Human review: the tasks waiting for a reviewer, a decision on one
//! (approve, with an edited result if need be, or reject with feedback), a
//! 1-5 rating, and a task's reviews. Viewers read; operators and admins
//! decide and rate.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use bytes::Bytes;
use kira_core::CompanyId;
use kira_core::auth::Access;
use kira_core::task::Task;
use kira_engine::review::ReviewRequest;
use kira_store::agents::Review;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::tasks::{TaskList, company, engine_err, page_limit, scoped};
use crate::App;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{Caller, json_body, query};

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReviewsQuery {
    /// The cursor: tasks older than this sequence number (`next_before`).
    pub before: Option<i64>,
    /// 1-500, default 50.
    pub limit: Option<u32>,
}

/// The tasks of a company waiting for a reviewer (`needs_review`), newest
/// first.
#[utoipa::path(get, path = "/v1/companies/{id}/reviews", tag = "reviews",
    params(("id" = String, Path, description = "Company id"), ReviewsQuery),
    responses((status = 200, body = TaskList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn list_reviews(
    State(app): State<App>,
    caller: Caller,
    Path(raw): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<TaskList>> {
    let id = CompanyId::parse(&raw).ok();
    let act = caller.act(&app, "review.list", format!("company:{raw}"), id.as_ref());
    let result = async {
        let scope = caller.principal.scope(&company(&raw)?, Access::Read)?;
        let q: ReviewsQuery = query(q.as_deref())?;
        let limit = page_limit(q.limit)?;
        let tasks = app
            .engine
            .reviews()
            .queue(&scope, q.before, limit)
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

/// Decides on a task waiting for review: approve (it completes, with
/// `result` instead of the agent's when given, and its result is
/// remembered) or reject (it goes back to the queue with the feedback, or
/// fails when rejected too often). 409 when the task is not in
/// needs_review.
#[utoipa::path(post, path = "/v1/companies/{id}/tasks/{task_id}/review", tag = "reviews",
    request_body = ReviewRequest,
    params(("id" = String, Path, description = "Company id"), ("task_id" = String, Path, description = "Task id")),
    responses((status = 200, body = Task), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody)))]
pub async fn review_task(
    State(app): State<App>,
    caller: Caller,
    Path((raw, raw_task)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Task>> {
    let id = CompanyId::parse(&raw).ok();
    let act = caller.act(&app, "task.review", format!("task:{raw_task}"), id.as_ref());
    let result = async {
        let (scope, tid) = scoped(&caller, &raw, &raw_task, Access::Write)?;
        let req: ReviewRequest = json_body(body, app.cfg.max_body_bytes)?;
        let reviewer = caller.principal.actor().to_string();
        let task = app
            .engine
            .reviews()
            .decide(&scope, &tid, req, reviewer, act.ok())
            .await
            .map_err(engine_err)?;
        Ok(Json(task))
    }
    .await;
    act.done(result).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RatingRequest {
    /// 1 (poor) to 5 (excellent).
    pub rating: u8,
}

/// Rates a completed task, or one in review, 1 to 5. Each rating is kept;
/// the latest counts. 409 for a task in any other status.
#[utoipa::path(post, path = "/v1/companies/{id}/tasks/{task_id}/rating", tag = "reviews",
    request_body = RatingRequest,
    params(("id" = String, Path, description = "Company id"), ("task_id" = String, Path, description = "Task id")),
    responses((status = 201, body = Review), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn rate_task(
    State(app): State<App>,
    caller: Caller,
    Path((raw, raw_task)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Review>)> {
    let id = CompanyId::parse(&raw).ok();
    let act = caller.act(&app, "task.rate", format!("task:{raw_task}"), id.as_ref());
    let result = async {
        let (scope, tid) = scoped(&caller, &raw, &raw_task, Access::Write)?;
        let req: RatingRequest = json_body(body, app.cfg.max_body_bytes)?;
        let review = app
            .engine
            .reviews()
            .rate(
                &scope,
                &tid,
                req.rating,
                &caller.principal.actor().to_string(),
                act.ok(),
            )
            .await
            .map_err(engine_err)?;
        Ok((StatusCode::CREATED, Json(review)))
    }
    .await;
    act.done(result).await
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReviewList {
    /// Decisions and ratings, oldest first.
    pub reviews: Vec<Review>,
}

/// A task's reviews: decisions, feedback, edited results and ratings.
#[utoipa::path(get, path = "/v1/companies/{id}/tasks/{task_id}/reviews", tag = "reviews",
    params(("id" = String, Path, description = "Company id"), ("task_id" = String, Path, description = "Task id")),
    responses((status = 200, body = ReviewList), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn task_reviews(
    State(app): State<App>,
    caller: Caller,
    Path((raw, raw_task)): Path<(String, String)>,
) -> ApiResult<Json<ReviewList>> {
    let id = CompanyId::parse(&raw).ok();
    let act = caller.act(
        &app,
        "task.reviews",
        format!("task:{raw_task}"),
        id.as_ref(),
    );
    let result = async {
        let (scope, tid) = scoped(&caller, &raw, &raw_task, Access::Read)?;
        let reviews = app
            .engine
            .reviews()
            .list(&scope, &tid)
            .await
            .map_err(engine_err)?;
        Ok(Json(ReviewList { reviews }))
    }
    .await;
    act.read(result).await
}
