//! Tools (issue 23): the registry and a test call through the company
//! wrapper. Every key reads what its company is offered; an operator
//! registers, removes and configures its company's tools and tests a
//! tool as its company; infrastructure and domain tools are the admin's.
//! Another company's tools answer 404. Every change is audited by the
//! engine with the change; a test call is audited by the wrapper.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use bytes::Bytes;
use kira_core::CompanyId;
use kira_core::auth::{Access, CompanyScope};
use kira_core::tools::{Layer, NewTool, ToolEntry};
use kira_engine::tools::{CallResult, ToolView};
use kira_store::tools::{CredentialInfo, CredentialWrite, ToolConfig, ToolKey, ToolWriter};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::App;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Caller, json_body, query};

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ToolsQuery {
    /// The company (a company key: its own, the default).
    pub company: Option<String>,
    /// What an agent of this domain is offered (default: every domain).
    pub domain: Option<String>,
    /// Connect to each MCP server (starting a stdio one) and list its
    /// tools now, keeping the new listing; an operator's or the admin's.
    /// Default: the listing kira kept when it last listed them, which
    /// starts or connects to nothing.
    pub refresh: Option<bool>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ShowQuery {
    /// The company (a company key: its own, the default).
    pub company: Option<String>,
    /// As for the list: connect and list the server's tools now.
    pub refresh: Option<bool>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CompanyQuery {
    /// The company (a company key: its own, the default).
    pub company: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RemoveQuery {
    /// infrastructure, domain or company (default: company).
    pub layer: Option<String>,
    /// A domain tool's domain.
    pub domain: Option<String>,
    /// A company tool's company (a company key: its own, the default).
    pub company: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ToolList {
    /// By name: each registration with its layer, source and tools.
    pub tools: Vec<ToolView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestCall {
    /// The tool's arguments (a JSON object).
    #[schema(value_type = Object)]
    pub arguments: serde_json::Value,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigBody {
    /// `{"defaults": {...}, "preferences": {...}}`; null removes it.
    #[schema(value_type = Option<Object>)]
    pub config: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ToolConfigs {
    pub configs: Vec<ToolConfig>,
}

fn company_id(raw: &str) -> ApiResult<CompanyId> {
    CompanyId::parse(raw).map_err(|e| ApiError::bad_request("company", e.message))
}

/// The scope `company` names for the caller: a company key's own company
/// by default (another company's answers 404), the admin's choice (none:
/// no company).
fn scope_of(
    caller: &Caller,
    company: Option<&str>,
    access: Access,
) -> ApiResult<Option<CompanyScope>> {
    let named = company.map(company_id).transpose()?;
    if let Ok(admin) = caller.principal.admin() {
        return Ok(named.map(|c| admin.company(&c, access)));
    }
    let own = caller.principal.company().ok_or_else(ApiError::forbidden)?;
    let id = named.unwrap_or_else(|| own.clone());
    Ok(Some(caller.principal.scope(&id, access)?))
}

/// What a listing needs: to read, or (a refresh, which starts and
/// connects to the company's servers) to write.
fn refreshing(refresh: bool) -> Access {
    if refresh { Access::Write } else { Access::Read }
}

fn required(scope: Option<CompanyScope>) -> ApiResult<CompanyScope> {
    scope.ok_or_else(|| ApiError::bad_request("company", "name the company"))
}

fn engine_err(e: kira_engine::EngineError) -> ApiError {
    ApiError::from_engine(e, "tool")
}

/// What an agent of `domain` working for the company is offered, with
/// each tool's layer and source, and an MCP server's tools as kira last
/// listed them (`listed_at`); `refresh=true` (an operator's or the
/// admin's) connects to the servers and lists them now. The admin without
/// a company sees the shared layers.
#[utoipa::path(get, path = "/v1/tools", tag = "tools", params(ToolsQuery),
    responses((status = 200, body = ToolList), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_tools(
    State(app): State<App>,
    caller: Caller,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<ToolList>> {
    let parsed: ApiResult<ToolsQuery> = query(q.as_deref());
    let named = parsed
        .as_ref()
        .ok()
        .and_then(|q| q.company.as_deref().and_then(|c| CompanyId::parse(c).ok()));
    let act = caller.act(
        &app,
        "tool.list",
        "tools",
        named.as_ref().or(caller.principal.company()),
    );
    let result = async {
        let q = parsed?;
        let refresh = q.refresh.unwrap_or(false);
        let scope = scope_of(&caller, q.company.as_deref(), refreshing(refresh))?;
        let tools = app
            .engine
            .tools()
            .list(scope.as_ref(), q.domain.as_deref(), refresh)
            .await
            .map_err(engine_err)?;
        Ok(Json(ToolList { tools }))
    }
    .await;
    act.read(result).await
}

/// Registers a tool: infrastructure and domain tools by the admin, a
/// company tool by the admin or the company's operator. The source is
/// checked (a JSON schema, a URL template naming only its parameters, a
/// command that exists); nothing is written when a field is refused.
#[utoipa::path(post, path = "/v1/tools", tag = "tools", request_body = NewTool,
    responses((status = 201, body = ToolEntry), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn add_tool(
    State(app): State<App>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<ToolEntry>)> {
    let new: ApiResult<NewTool> = json_body(body, app.cfg.max_body_bytes);
    let named = new
        .as_ref()
        .ok()
        .and_then(|n| n.company.as_deref().and_then(|c| CompanyId::parse(c).ok()));
    let act = caller.act(
        &app,
        "tool.add",
        "tools",
        named.as_ref().or(caller.principal.company()),
    );
    let result = async {
        let new = new?;
        let admin = caller.principal.admin().ok();
        let scope = match (new.layer, &admin) {
            (_, Some(_)) => None,
            (Layer::Company, None) => scope_of(&caller, new.company.as_deref(), Access::Write)?,
            (_, None) => return Err(ApiError::forbidden()),
        };
        let who = match (&admin, &scope) {
            (Some(a), _) => ToolWriter::Admin(a),
            (None, Some(s)) => ToolWriter::Company(s),
            (None, None) => return Err(ApiError::forbidden()),
        };
        let entry = app
            .engine
            .tools()
            .add(who, new, act.ok())
            .await
            .map_err(engine_err)?;
        Ok((StatusCode::CREATED, Json(entry)))
    }
    .await;
    act.done(result).await
}

/// One tool as the company sees it (the registration it would be offered
/// under that name), its tools as for the list.
#[utoipa::path(get, path = "/v1/tools/{name}", tag = "tools",
    params(("name" = String, Path, description = "Registration name"), ShowQuery),
    responses((status = 200, body = ToolView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn show_tool(
    State(app): State<App>,
    caller: Caller,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<ToolView>> {
    let parsed: ApiResult<ShowQuery> = query(q.as_deref());
    let named = parsed
        .as_ref()
        .ok()
        .and_then(|q| q.company.as_deref().and_then(|c| CompanyId::parse(c).ok()));
    let act = caller.act(
        &app,
        "tool.show",
        "tool",
        named.as_ref().or(caller.principal.company()),
    );
    let result = async {
        let q = parsed?;
        let refresh = q.refresh.unwrap_or(false);
        let scope = required(scope_of(
            &caller,
            q.company.as_deref(),
            refreshing(refresh),
        )?)?;
        let view = app
            .engine
            .tools()
            .show(&scope, &name, refresh)
            .await
            .map_err(engine_err)?;
        Ok(Json(view))
    }
    .await;
    act.read(result).await
}

/// Removes a registration (a company's by its operator or the admin; the
/// shared layers' by the admin).
#[utoipa::path(delete, path = "/v1/tools/{name}", tag = "tools",
    params(("name" = String, Path, description = "Registration name"), RemoveQuery),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn remove_tool(
    State(app): State<App>,
    caller: Caller,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<StatusCode> {
    let parsed: ApiResult<RemoveQuery> = query(q.as_deref());
    let named = parsed
        .as_ref()
        .ok()
        .and_then(|q| q.company.as_deref().and_then(|c| CompanyId::parse(c).ok()));
    let act = caller.act(
        &app,
        "tool.remove",
        "tool",
        named.as_ref().or(caller.principal.company()),
    );
    let result = async {
        let q = parsed?;
        let layer = Layer::parse(q.layer.as_deref().unwrap_or("company"))
            .map_err(|e| ApiError::bad_request("layer", e.message))?;
        let admin = caller.principal.admin().ok();
        let scope = match layer {
            Layer::Company => Some(required(scope_of(
                &caller,
                q.company.as_deref(),
                Access::Write,
            )?)?),
            _ if admin.is_some() => None,
            _ => return Err(ApiError::forbidden()),
        };
        let key = ToolKey {
            layer,
            domain: if layer == Layer::Domain {
                q.domain.clone()
            } else {
                None
            },
            company: scope.as_ref().map(|s| s.company().clone()),
            name,
        };
        let who = match (&admin, &scope) {
            (Some(a), _) => ToolWriter::Admin(a),
            (None, Some(s)) => ToolWriter::Company(s),
            (None, None) => return Err(ApiError::forbidden()),
        };
        app.engine
            .tools()
            .remove(who, &key, act.ok())
            .await
            .map_err(engine_err)?;
        Ok(StatusCode::NO_CONTENT)
    }
    .await;
    act.done(result).await
}

/// Calls a tool once with the given arguments as the company (an operator
/// setting it up), through the company wrapper: the result, its outcome,
/// latency and size. The call is audited like an agent's.
#[utoipa::path(post, path = "/v1/tools/{name}/test", tag = "tools",
    params(("name" = String, Path, description = "The tool as a model calls it (`server.tool` for MCP)"), CompanyQuery),
    request_body = TestCall,
    responses((status = 200, body = CallResult), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn test_tool(
    State(app): State<App>,
    caller: Caller,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<CallResult>> {
    let parsed: ApiResult<CompanyQuery> = query(q.as_deref());
    let named = parsed
        .as_ref()
        .ok()
        .and_then(|q| q.company.as_deref().and_then(|c| CompanyId::parse(c).ok()));
    let act = caller.act(
        &app,
        "tool.test",
        "tool",
        named.as_ref().or(caller.principal.company()),
    );
    let result = async {
        let q = parsed?;
        let scope = required(scope_of(&caller, q.company.as_deref(), Access::Write)?)?;
        let call: TestCall = json_body(body, app.cfg.max_body_bytes)?;
        let actor = caller.principal.actor().to_string();
        let r = app
            .engine
            .tools()
            .test(&scope, &name, &call.arguments, &actor, &caller.request_id)
            .await
            .map_err(engine_err)?;
        Ok(Json(r))
    }
    .await;
    act.done(result).await
}

/// The company's tool configurations.
#[utoipa::path(get, path = "/v1/tools/configs", tag = "tools", params(CompanyQuery),
    responses((status = 200, body = ToolConfigs), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_configs(
    State(app): State<App>,
    caller: Caller,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<ToolConfigs>> {
    let parsed: ApiResult<CompanyQuery> = query(q.as_deref());
    let named = parsed
        .as_ref()
        .ok()
        .and_then(|q| q.company.as_deref().and_then(|c| CompanyId::parse(c).ok()));
    let act = caller.act(
        &app,
        "tool.configs",
        "tools",
        named.as_ref().or(caller.principal.company()),
    );
    let result = async {
        let q = parsed?;
        let scope = required(scope_of(&caller, q.company.as_deref(), Access::Read)?)?;
        let configs = app
            .engine
            .tools()
            .configs(&scope)
            .await
            .map_err(engine_err)?;
        Ok(Json(ToolConfigs { configs }))
    }
    .await;
    act.read(result).await
}

/// Sets the company's configuration of a tool (`defaults` are merged under
/// the arguments of its agents' every call); null removes it.
#[utoipa::path(put, path = "/v1/tools/{name}/config", tag = "tools",
    params(("name" = String, Path, description = "A tool or registration name"), CompanyQuery),
    request_body = ConfigBody,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn put_config(
    State(app): State<App>,
    caller: Caller,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<StatusCode> {
    let parsed: ApiResult<CompanyQuery> = query(q.as_deref());
    let named = parsed
        .as_ref()
        .ok()
        .and_then(|q| q.company.as_deref().and_then(|c| CompanyId::parse(c).ok()));
    let act = caller.act(
        &app,
        "tool.configure",
        "tool",
        named.as_ref().or(caller.principal.company()),
    );
    let result = async {
        let q = parsed?;
        let scope = required(scope_of(&caller, q.company.as_deref(), Access::Write)?)?;
        let b: ConfigBody = json_body(body, app.cfg.max_body_bytes)?;
        app.engine
            .tools()
            .configure(&scope, &name, b.config.as_ref(), act.ok())
            .await
            .map_err(engine_err)?;
        Ok(StatusCode::NO_CONTENT)
    }
    .await;
    act.done(result).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialBody {
    /// The secret. Sealed at once; never returned, logged or audited.
    pub value: String,
    /// Replace the credential the tool has (else a second is a conflict).
    #[serde(default)]
    pub rotate: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialList {
    /// Names, who set them and when: never values.
    pub credentials: Vec<CredentialInfo>,
}

/// The company's tool credentials: tools and ages, never values.
#[utoipa::path(get, path = "/v1/tools/credentials", tag = "tools", params(CompanyQuery),
    responses((status = 200, body = CredentialList), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_credentials(
    State(app): State<App>,
    caller: Caller,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<CredentialList>> {
    let parsed: ApiResult<CompanyQuery> = query(q.as_deref());
    let named = parsed
        .as_ref()
        .ok()
        .and_then(|q| q.company.as_deref().and_then(|c| CompanyId::parse(c).ok()));
    let act = caller.act(
        &app,
        "tool.credentials",
        "credentials",
        named.as_ref().or(caller.principal.company()),
    );
    let result = async {
        let q = parsed?;
        let scope = required(scope_of(&caller, q.company.as_deref(), Access::Read)?)?;
        let credentials = app
            .engine
            .tools()
            .credentials(&scope)
            .await
            .map_err(engine_err)?;
        Ok(Json(CredentialList { credentials }))
    }
    .await;
    act.read(result).await
}

/// Sets (or with `rotate`, replaces) the company's credential for a tool
/// registration: sealed with the server's `KIRA_SECRET_KEY`, the company
/// and the tool as associated data; put where the tool's headers or
/// environment say `{credential}`.
#[utoipa::path(put, path = "/v1/tools/{name}/credential", tag = "tools",
    params(("name" = String, Path, description = "The tool registration"), CompanyQuery),
    request_body = CredentialBody,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn put_credential(
    State(app): State<App>,
    caller: Caller,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<StatusCode> {
    let parsed: ApiResult<CompanyQuery> = query(q.as_deref());
    let named = parsed
        .as_ref()
        .ok()
        .and_then(|q| q.company.as_deref().and_then(|c| CompanyId::parse(c).ok()));
    let act = caller.act(
        &app,
        "tool.credential.set",
        "credential",
        named.as_ref().or(caller.principal.company()),
    );
    let result = async {
        let q = parsed?;
        let scope = required(scope_of(&caller, q.company.as_deref(), Access::Write)?)?;
        let b: CredentialBody = json_body(body, app.cfg.max_body_bytes)?;
        let how = if b.rotate {
            CredentialWrite::Rotate
        } else {
            CredentialWrite::Set
        };
        app.engine
            .tools()
            .set_credential(&scope, &name, &b.value, how, act.ok())
            .await
            .map_err(engine_err)?;
        Ok(StatusCode::NO_CONTENT)
    }
    .await;
    act.done(result).await
}

/// Removes the company's credential for a tool.
#[utoipa::path(delete, path = "/v1/tools/{name}/credential", tag = "tools",
    params(("name" = String, Path, description = "The tool registration"), CompanyQuery),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_credential(
    State(app): State<App>,
    caller: Caller,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<StatusCode> {
    let parsed: ApiResult<CompanyQuery> = query(q.as_deref());
    let named = parsed
        .as_ref()
        .ok()
        .and_then(|q| q.company.as_deref().and_then(|c| CompanyId::parse(c).ok()));
    let act = caller.act(
        &app,
        "tool.credential.delete",
        "credential",
        named.as_ref().or(caller.principal.company()),
    );
    let result = async {
        let q = parsed?;
        let scope = required(scope_of(&caller, q.company.as_deref(), Access::Write)?)?;
        app.engine
            .tools()
            .delete_credential(&scope, &name, act.ok())
            .await
            .map_err(engine_err)?;
        Ok(StatusCode::NO_CONTENT)
    }
    .await;
    act.done(result).await
}
