//! kira's HTTP API: routes, the auth extractor, error mapping, OpenAPI.
//!
//! API boundary: this crate is the only one that knows HTTP. Handlers
//! extract, call one engine service's method, and map the error; the
//! server holds no store handle, so every rule the engine owns holds here
//! too.
//! Every route is registered through `utoipa_axum::routes!`, so the OpenAPI
//! document at `/v1/openapi.json` is generated from the same handlers that
//! serve and cannot leave a route out.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, header};
use kira_core::clock::Clock;
use kira_engine::Engine;
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub mod error;
pub mod extract;
pub mod prom;
pub mod refusals;
mod routes;
pub mod ui;

pub use error::{ApiError, ErrorBody};

/// Default request body limit: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// Default audit entries of unauthenticated refusals per source address
/// and minute; the rest are counted in one summary entry.
pub const DEFAULT_UNAUTHENTICATED_AUDIT_PER_MINUTE: u32 = 10;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub max_body_bytes: usize,
    /// Unauthenticated refusals recorded per source address and minute
    /// (see [`refusals`]); the rest are counted.
    pub unauthenticated_audit_per_minute: u32,
    /// Triggered when the server stops: open `watch` streams end, so a
    /// graceful shutdown is not held up by a client that follows a task.
    pub stopping: kira_engine::Shutdown,
    /// What this process counts for `/metrics`; shared with
    /// [`metrics_router`] when a loopback listener serves it too.
    pub process: Arc<prom::ProcessMetrics>,
    /// The dashboard's session cookie always carries `Secure` (`[ui]
    /// secure_cookies`); without it, only on a request that came over
    /// https (as a proxy in front says, `X-Forwarded-Proto`).
    pub secure_cookies: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            unauthenticated_audit_per_minute: DEFAULT_UNAUTHENTICATED_AUDIT_PER_MINUTE,
            stopping: kira_engine::Shutdown::new(),
            process: Arc::default(),
            secure_cookies: false,
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct App {
    pub engine: Engine,
    pub clock: Arc<dyn Clock>,
    pub cfg: ServerConfig,
    /// Which unauthenticated refusals are written to the audit log.
    pub refusals: Arc<refusals::RefusalLimiter>,
    /// Bumped by every key revocation here: open `watch` streams check
    /// their key at once (and every few seconds, for other processes').
    pub revocations: Arc<tokio::sync::watch::Sender<u64>>,
    /// What this process counts for `/metrics` (HTTP, auth failures).
    pub process: Arc<prom::ProcessMetrics>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "kira", description = "Infrastructure for one AI operator running many companies."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "system", description = "Health and the API description"),
        (name = "companies", description = "Company profiles"),
        (name = "keys", description = "API keys (admin)"),
        (name = "audit", description = "The hash-chained audit log"),
        (name = "tasks", description = "Tasks: SEED 1's messages, queued, scheduled and run"),
        (name = "reviews", description = "Human review of results: decisions, feedback and ratings"),
        (name = "budget", description = "Token budgets: pools, allocations, emergency requests, the ledger"),
        (name = "memory", description = "Episodic memory, search, compaction and context packs"),
        (name = "knowledge", description = "The shared knowledge base every company reads"),
        (name = "sharing", description = "Cross-company sharing rules and conflict flags (admin)"),
        (name = "agents", description = "The agent pool: models, limits and load"),
        (name = "metrics", description = "Task metrics per system, company and agent; the Prometheus exposition"),
        (name = "dashboards", description = "The executive and company dashboards (SEED 6.3) as JSON"),
        (name = "alerts", description = "Alerts: rules evaluated over the metrics, budgets and queue; acknowledgement, resolution, silences"),
        (name = "tools", description = "Tools: the three-layer registry (infrastructure, domain, company), company tool configurations, and test calls through the company wrapper"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every route, each registered with its OpenAPI description.
fn routes() -> OpenApiRouter<App> {
    OpenApiRouter::<App>::with_openapi(ApiDoc::openapi())
        .routes(routes!(routes::system::healthz))
        .routes(routes!(routes::system::readyz))
        .routes(routes!(routes::system::openapi_json))
        .routes(routes!(routes::system::whoami))
        .routes(routes!(
            routes::companies::create_company,
            routes::companies::list_companies
        ))
        .routes(routes!(
            routes::companies::get_company,
            routes::companies::update_company,
            routes::companies::delete_company
        ))
        .routes(routes!(routes::companies::archive_company))
        .routes(routes!(routes::keys::create_key, routes::keys::list_keys))
        .routes(routes!(routes::keys::revoke_key))
        .routes(routes!(routes::audit::list_audit))
        .routes(routes!(routes::audit::verify_audit))
        .routes(routes!(
            routes::tasks::submit_task,
            routes::tasks::list_tasks
        ))
        .routes(routes!(routes::tasks::get_task))
        .routes(routes!(routes::tasks::cancel_task))
        .routes(routes!(routes::tasks::task_events))
        .routes(routes!(routes::tasks::watch_task))
        .routes(routes!(routes::tasks::task_trace))
        .routes(routes!(routes::reviews::list_reviews))
        .routes(routes!(routes::reviews::review_task))
        .routes(routes!(routes::reviews::rate_task))
        .routes(routes!(routes::reviews::task_reviews))
        .routes(routes!(routes::budget::show_budget))
        .routes(routes!(routes::budget::list_requests))
        .routes(routes!(routes::budget::approve_request))
        .routes(routes!(routes::budget::reject_request))
        .routes(routes!(routes::budget::verify_ledger))
        .routes(routes!(
            routes::memory::add_memory,
            routes::memory::list_memory
        ))
        .routes(routes!(routes::memory::search_memory))
        .routes(routes!(routes::memory::compact_memory))
        .routes(routes!(
            routes::memory::get_memory,
            routes::memory::delete_memory
        ))
        .routes(routes!(routes::memory::archive_memory))
        .routes(routes!(routes::memory::restore_memory))
        .routes(routes!(routes::memory::get_context))
        .routes(routes!(
            routes::knowledge::add_knowledge,
            routes::knowledge::list_knowledge
        ))
        .routes(routes!(routes::knowledge::search_knowledge))
        .routes(routes!(
            routes::knowledge::get_knowledge,
            routes::knowledge::delete_knowledge
        ))
        .routes(routes!(routes::agents::list_agents))
        .routes(routes!(routes::agents::get_agent))
        .routes(routes!(routes::metrics::prometheus))
        .routes(routes!(routes::metrics::system_metrics))
        .routes(routes!(routes::metrics::company_metrics))
        .routes(routes!(routes::metrics::agent_metrics))
        .routes(routes!(routes::dashboard::executive_dashboard))
        .routes(routes!(routes::dashboard::company_dashboard))
        .routes(routes!(routes::alerts::list_alerts))
        .routes(routes!(
            routes::alerts::list_silences,
            routes::alerts::create_silence
        ))
        .routes(routes!(routes::alerts::delete_silence))
        .routes(routes!(routes::alerts::get_alert))
        .routes(routes!(routes::alerts::ack_alert))
        .routes(routes!(routes::alerts::resolve_alert))
        .routes(routes!(routes::tools::list_tools, routes::tools::add_tool))
        .routes(routes!(routes::tools::list_configs))
        .routes(routes!(
            routes::tools::show_tool,
            routes::tools::remove_tool
        ))
        .routes(routes!(routes::tools::test_tool))
        .routes(routes!(routes::tools::put_config))
        .routes(routes!(routes::tools::list_credentials))
        .routes(routes!(
            routes::tools::put_credential,
            routes::tools::delete_credential
        ))
        .routes(routes!(routes::sharing::check_sharing))
        .routes(routes!(routes::sharing::list_conflicts))
        .routes(routes!(routes::sharing::resolve_conflict))
        .routes(routes!(
            routes::sharing::publish_item,
            routes::sharing::list_published
        ))
        .routes(routes!(routes::sharing::withdraw_item))
        .routes(routes!(
            routes::sharing::list_consents,
            routes::sharing::put_consent,
            routes::sharing::delete_consent
        ))
}

/// `GET /metrics` alone, with no key, for a loopback-only listener
/// (`metrics_listen`): the same exposition as the API's, read as the
/// system's own admin scope. Whoever can reach the port can read it, so
/// the binary binds it to loopback only.
pub fn metrics_router(engine: Engine, process: Arc<prom::ProcessMetrics>) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(routes::metrics::loopback))
        .with_state((engine, process))
}

/// The OpenAPI document of every route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().split_for_parts().1
}

/// The HTTP application over `engine` (and its clock).
pub fn router(engine: Engine, cfg: ServerConfig) -> Router {
    let clock = engine.clock().clone();
    let limit = cfg.max_body_bytes;
    let (router, doc) = routes().split_for_parts();
    let refusals = Arc::new(refusals::RefusalLimiter::new(
        cfg.unauthenticated_audit_per_minute,
    ));
    let app = App {
        engine,
        clock,
        refusals,
        revocations: Arc::new(tokio::sync::watch::Sender::new(0)),
        process: cfg.process.clone(),
        cfg,
    };
    router
        .merge(ui::routes())
        // Counted per route template, so only routed requests.
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            prom::record_request,
        ))
        .fallback(routes::system::no_route)
        .method_not_allowed_fallback(routes::system::no_method)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::Extension(Arc::new(doc)))
        .layer(axum::middleware::from_fn(extract::request_id))
        // API answers are one caller's data: never cached on the way, never
        // sniffed into another type by a browser. The dashboard's static
        // files alone say otherwise (`ui::asset`), so only an answer that
        // set no policy gets `no-store`.
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(app)
}
