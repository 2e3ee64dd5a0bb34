//! The agent pool: every agent's configuration, model and current load
//! (counts only, no company's tasks). Any valid key may read it.

use axum::Json;
use axum::extract::{Path, State};
use kira_engine::agent::AgentStatus;
use serde::Serialize;
use utoipa::ToSchema;

use crate::App;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::Caller;

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentList {
    /// The primary agent first, then the specialists by name.
    pub agents: Vec<AgentStatus>,
    /// What runs tasks: `agents`, `simulated`, or none.
    pub executor: Option<String>,
}

async fn all(app: &App) -> ApiResult<Vec<AgentStatus>> {
    let mut agents = app.engine.agents().list().await?;
    agents.sort_by_key(|a| (a.role != "primary", a.name.clone()));
    Ok(agents)
}

/// Every agent with its model, limits and load.
#[utoipa::path(get, path = "/v1/agents", tag = "agents",
    responses((status = 200, body = AgentList), (status = 401, body = ErrorBody)))]
pub async fn list_agents(State(app): State<App>, _caller: Caller) -> ApiResult<Json<AgentList>> {
    Ok(Json(AgentList {
        agents: all(&app).await?,
        executor: app.engine.scheduler().executor_name().map(str::to_owned),
    }))
}

/// One agent, with its system prompt.
#[utoipa::path(get, path = "/v1/agents/{name}", tag = "agents",
    params(("name" = String, Path, description = "primary, legal, financial, ...")),
    responses((status = 200, body = AgentStatus), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_agent(
    State(app): State<App>,
    _caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<AgentStatus>> {
    all(&app)
        .await?
        .into_iter()
        .find(|a| a.name == name)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("agent '{name}'"), false))
}
