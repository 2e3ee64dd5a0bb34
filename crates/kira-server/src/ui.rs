//! The web dashboards at `/ui/` (issue 22, SEED 6.3): server-rendered pages
//! (askama templates, escaped by default) over the same calls as the JSON
//! dashboards, with charts drawn by uPlot, vendored under `assets/` and
//! embedded in the binary, so the pages work offline.
//!
//! Sign-in takes an API key once and keeps a server-side session
//! (`Keys::start_session`): the cookie (HttpOnly, SameSite=Strict, path
//! `/ui`) holds the session's random token, never the key; sign-out
//! deletes the session. Every form sends the session's form token too,
//! and a cross-site POST (by `Sec-Fetch-Site` or `Origin`) is refused.
//! Every `/ui` response carries a strict Content-Security-Policy: scripts
//! and styles from this origin only, no inline script; chart data travel
//! in `data-` attributes, read by `assets/dashboard.js`.

use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use kira_core::alerts::Alert;
use kira_core::audit::{AuditRecord, Outcome};
use kira_core::auth::{Access, Principal, Role, StoredSession};
use kira_engine::dashboard::{CompanyDashboard, ExecutiveDashboard};
use kira_store::alerts::AlertFilter;
use rust_embed::RustEmbed;
use serde::{Deserialize, Serialize};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::App;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Caller, RequestId};
use crate::routes::{alerts, dashboard};

/// The session cookie's name.
pub const COOKIE: &str = "kira_session";

/// Every `/ui` response's policy: nothing but this origin's scripts,
/// styles and images (and uPlot's canvas), no inline script, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; font-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// The most alerts the alerts page lists.
const ALERTS_SHOWN: u32 = 200;

#[derive(RustEmbed)]
#[folder = "assets/"]
struct Assets;

/// The `/ui` pages and their static files; every response with the CSP.
pub fn routes() -> Router<App> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(home))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/companies/{id}", get(company_page))
        .route("/ui/alerts", get(alerts_page))
        .route("/ui/alerts/{id}/ack", post(ack))
        .route("/ui/static/{*path}", get(asset))
        .route("/ui/{*rest}", get(not_found))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            // Not `no-referrer`: that makes a browser send `Origin: null`
            // with the pages' own forms.
            HeaderValue::from_static("same-origin"),
        ))
}

// ---- the signed-in caller ----

/// A request from a signed-in browser: the caller its session acts as,
/// and the session (its form token).
pub struct Ui {
    pub caller: Caller,
    pub session: StoredSession,
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl FromRequestParts<App> for Ui {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default();
        let Some(token) = cookie(&parts.headers, COOKIE) else {
            return Err(Redirect::to("/ui/login").into_response());
        };
        match app.engine.keys().session(token).await {
            Ok((principal, session)) => Ok(Ui {
                caller: Caller {
                    principal,
                    request_id,
                },
                session,
            }),
            Err(reason) => {
                // A cookie that names no live session: expired, signed out,
                // its key revoked, or forged. Audited like a bad key.
                crate::extract::auth_failed(app, None, crate::extract::peer(parts));
                crate::extract::audit_unauthenticated(
                    parts,
                    app,
                    request_id,
                    &format!("dashboard session: {}", reason.reason()),
                )
                .await;
                Err((
                    [(
                        header::SET_COOKIE,
                        clear_cookie(secure_cookie(app, &parts.headers)),
                    )],
                    Redirect::to("/ui/login"),
                )
                    .into_response())
            }
        }
    }
}

/// Whether the session cookie is `Secure`: always with `[ui]
/// secure_cookies`, else when the request came over https (kira serves
/// plain HTTP; a proxy in front that ends TLS says so in
/// `X-Forwarded-Proto` or `Forwarded`). A client that claims https
/// falsely only loses its own cookie over plain HTTP.
pub fn secure_cookie(app: &App, headers: &HeaderMap) -> bool {
    if app.cfg.secure_cookies {
        return true;
    }
    let forwarded_https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    let forwarded = headers
        .get(header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|first| {
            first.split(';').any(|kv| {
                kv.trim().split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("proto")
                        && v.trim().trim_matches('"').eq_ignore_ascii_case("https")
                })
            })
        });
    forwarded_https || forwarded
}

fn session_cookie(token: &str, max_age: i64, secure: bool) -> HeaderValue {
    let flag = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}{flag}"
    ))
    .unwrap_or_else(|_| clear_cookie(secure))
}

fn clear_cookie(secure: bool) -> HeaderValue {
    if secure {
        HeaderValue::from_static(
            "kira_session=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0; Secure",
        )
    } else {
        HeaderValue::from_static("kira_session=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0")
    }
}

/// Why a POST another site made the browser send is refused: the browser
/// says so in `Sec-Fetch-Site`, or its `Origin` is not this host.
fn cross_site(headers: &HeaderMap) -> Option<&'static str> {
    const REFUSED: &str = "cross-site request refused";
    // The browser's own word, where it gives it; else its Origin.
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return (!matches!(site, "same-origin" | "none")).then_some(REFUSED);
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())?;
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let bare = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    (bare != host).then_some(REFUSED)
}

/// Why a form is refused when the token it carries is not its session's.
fn stale_form(ui: &Ui, sent: &str) -> Option<&'static str> {
    use subtle::ConstantTimeEq;
    let same: bool = sent.as_bytes().ct_eq(ui.session.csrf.as_bytes()).into();
    (!same).then_some("the form is stale: reload the page")
}

fn forbidden(why: &'static str) -> Response {
    (StatusCode::FORBIDDEN, why).into_response()
}

fn form<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> ApiResult<T> {
    let bytes = body.map_err(|_| ApiError::bad_request("body", "unreadable form"))?;
    serde_urlencoded::from_bytes(&bytes).map_err(|e| ApiError::bad_request("body", e.to_string()))
}

// ---- pages ----

/// What every page's frame shows: who is signed in and the links they have.
pub struct Nav {
    pub who: String,
    pub admin: bool,
    /// The company key's own company.
    pub company: Option<String>,
    pub csrf: String,
}

impl Nav {
    fn of(ui: &Ui) -> Nav {
        let p = &ui.caller.principal;
        Nav {
            who: format!("{} ({})", p.actor(), p.role().as_str()),
            admin: p.role() == Role::Admin,
            company: p.company().map(ToString::to_string),
            csrf: ui.session.csrf.clone(),
        }
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "login.html")]
struct LoginPage {
    error: Option<String>,
}

#[derive(Template, WebTemplate)]
#[template(path = "error.html")]
struct ErrorPage {
    nav: Option<Nav>,
    status: u16,
    message: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "executive.html")]
struct ExecutivePage {
    nav: Nav,
    d: ExecutiveDashboard,
    tokens_chart: Chart,
}

#[derive(Template, WebTemplate)]
#[template(path = "company.html")]
struct CompanyPage {
    nav: Nav,
    d: CompanyDashboard,
    charts: Vec<Chart>,
}

#[derive(Template, WebTemplate)]
#[template(path = "alerts.html")]
struct AlertsPage {
    nav: Nav,
    alerts: Vec<Alert>,
    /// The caller may acknowledge (an admin or an operator).
    can_ack: bool,
}

/// A chart as `assets/dashboard.js` reads it from the element's `data-`
/// attributes: x as Unix seconds, one series of y values (null: no value).
pub struct Chart {
    pub id: &'static str,
    pub title: &'static str,
    pub label: &'static str,
    /// JSON array of Unix seconds.
    pub x: String,
    /// JSON array of numbers or nulls.
    pub y: String,
    pub points: usize,
}

impl Chart {
    fn new<T: Serialize>(
        id: &'static str,
        title: &'static str,
        label: &'static str,
        x: &[chrono::DateTime<chrono::Utc>],
        y: &[T],
    ) -> Chart {
        let xs: Vec<i64> = x.iter().map(chrono::DateTime::timestamp).collect();
        Chart {
            id,
            title,
            label,
            x: serde_json::to_string(&xs).unwrap_or_else(|_| "[]".into()),
            y: serde_json::to_string(y).unwrap_or_else(|_| "[]".into()),
            points: xs.len(),
        }
    }
}

/// A number for people: `-` when there is none.
pub fn num(v: impl std::borrow::Borrow<Option<f64>>, decimals: usize) -> String {
    v.borrow()
        .map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

/// A share 0-1 as a percentage.
pub fn pct(v: impl std::borrow::Borrow<Option<f64>>) -> String {
    v.borrow()
        .map_or_else(|| "-".into(), |v| format!("{:.1}%", v * 100.0))
}

fn error_page(nav: Option<Nav>, e: &ApiError) -> Response {
    let page = ErrorPage {
        nav,
        status: e.status.as_u16(),
        message: e.message.clone(),
    };
    (e.status, page).into_response()
}

async fn home(State(app): State<App>, ui: Ui) -> Response {
    match ui.caller.principal.company() {
        Some(own) => Redirect::to(&format!("/ui/companies/{own}")).into_response(),
        None => executive_page(&app, ui).await,
    }
}

async fn executive_page(app: &App, ui: Ui) -> Response {
    let nav = Nav::of(&ui);
    match dashboard::executive(app, &ui.caller).await {
        Ok(d) => {
            let r = &d.resource_utilization;
            let tokens_chart = Chart::new(
                "daily-tokens",
                "Tokens per day this period",
                "tokens",
                &r.days,
                &r.daily_tokens,
            );
            ExecutivePage {
                nav,
                d,
                tokens_chart,
            }
            .into_response()
        }
        Err(e) => error_page(Some(nav), &e),
    }
}

async fn company_page(State(app): State<App>, ui: Ui, Path(raw): Path<String>) -> Response {
    let nav = Nav::of(&ui);
    match dashboard::company(&app, &ui.caller, &raw).await {
        Ok(d) => {
            let t = &d.trends;
            let charts = vec![
                Chart::new(
                    "task-volume",
                    "Tasks per day",
                    "tasks",
                    &t.days,
                    &t.task_volume,
                ),
                Chart::new(
                    "response-times",
                    "Mean response time per day (s)",
                    "seconds",
                    &t.days,
                    &t.response_times,
                ),
                Chart::new(
                    "satisfaction",
                    "Satisfaction per day (1-5)",
                    "rating",
                    &t.days,
                    &t.satisfaction,
                ),
            ];
            CompanyPage { nav, d, charts }.into_response()
        }
        Err(e) => error_page(Some(nav), &e),
    }
}

async fn alerts_page(State(app): State<App>, ui: Ui) -> Response {
    let nav = Nav::of(&ui);
    let caller = &ui.caller;
    let act = caller.act(&app, "alert.list", "alerts", caller.principal.company());
    let result = async {
        let who = alerts::Reader::of(caller, Access::Read)?;
        let filter = AlertFilter {
            limit: ALERTS_SHOWN,
            ..AlertFilter::default()
        };
        app.engine
            .alerts()
            .list(who.as_store(), &filter)
            .await
            .map_err(|e| who.error(e))
    }
    .await;
    match act.read(result).await {
        Ok(list) => AlertsPage {
            can_ack: caller.principal.role() != Role::Viewer,
            nav,
            alerts: list,
        }
        .into_response(),
        Err(e) => error_page(Some(nav), &e),
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn ack(
    State(app): State<App>,
    ui: Ui,
    headers: HeaderMap,
    Path(raw): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Some(why) = cross_site(&headers) {
        return forbidden(why);
    }
    let nav = Nav::of(&ui);
    let f: CsrfForm = match form(body) {
        Ok(f) => f,
        Err(e) => return error_page(Some(nav), &e),
    };
    if let Some(why) = stale_form(&ui, &f.csrf) {
        return forbidden(why);
    }
    match alerts::change(&app, &ui.caller, &raw, "alert.ack").await {
        Ok(_) => Redirect::to("/ui/alerts").into_response(),
        Err(e) => error_page(Some(nav), &e),
    }
}

async fn login_form() -> Response {
    LoginPage { error: None }.into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    key: String,
}

/// Where a request came from, for the audit log of a refused sign-in.
struct RequestOrigin {
    request_id: String,
    peer: std::net::IpAddr,
    target: String,
}

impl FromRequestParts<App> for RequestOrigin {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _app: &App) -> Result<Self, Self::Rejection> {
        Ok(RequestOrigin {
            request_id: parts
                .extensions
                .get::<RequestId>()
                .map(|r| r.0.clone())
                .unwrap_or_default(),
            peer: crate::extract::peer(parts),
            target: format!("{} {}", parts.method, parts.uri.path()),
        })
    }
}

async fn login(
    State(app): State<App>,
    headers: HeaderMap,
    from: RequestOrigin,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Some(why) = cross_site(&headers) {
        return forbidden(why);
    }
    let refused = |status: StatusCode, message: &str| {
        (
            status,
            LoginPage {
                error: Some(message.to_owned()),
            },
        )
            .into_response()
    };
    let Ok(f) = form::<LoginForm>(body) else {
        return refused(StatusCode::BAD_REQUEST, "key: paste an API key");
    };
    let principal: Principal = match app.engine.keys().authenticate(f.key.trim()).await {
        Ok(p) => p,
        Err(reason) => {
            crate::extract::auth_failed(
                &app,
                kira_core::auth::token_key_id(f.key.trim()).as_ref(),
                from.peer,
            );
            crate::extract::audit_refusal(
                &app,
                from.request_id.clone(),
                from.peer,
                from.target.clone(),
                &format!("dashboard sign-in: {}", reason.reason()),
            )
            .await;
            return refused(StatusCode::UNAUTHORIZED, "key: not a valid API key");
        }
    };
    let mut audit = AuditRecord {
        at: app.clock.now(),
        request_id: from.request_id,
        actor: principal.actor().to_string(),
        company_id: principal.company().cloned(),
        action: "ui.sign_in".into(),
        target: String::new(),
        outcome: Outcome::Ok,
        detail: String::new(),
    };
    if !principal.may_use_api() {
        // A scraper's key opens no page: it may read /metrics only.
        const WHY: &str = "a metrics key may only read GET /metrics";
        audit.outcome = Outcome::Denied;
        audit.detail = WHY.into();
        if let Err(e) = app.engine.audit().append(vec![audit]).await {
            tracing::error!(error = %e, "could not audit a refused sign-in");
        }
        return refused(StatusCode::FORBIDDEN, &format!("key: {WHY}"));
    }
    match app.engine.keys().start_session(&principal, audit).await {
        Ok(issued) => (
            [(
                header::SET_COOKIE,
                session_cookie(
                    &issued.token,
                    kira_engine::keys::SESSION_TTL.num_seconds(),
                    secure_cookie(&app, &headers),
                ),
            )],
            Redirect::to("/ui/"),
        )
            .into_response(),
        Err(e) => error_page(None, &ApiError::from_engine(e, "key")),
    }
}

async fn logout(
    State(app): State<App>,
    ui: Ui,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Some(why) = cross_site(&headers) {
        return forbidden(why);
    }
    let f: CsrfForm = match form(body) {
        Ok(f) => f,
        Err(e) => return error_page(Some(Nav::of(&ui)), &e),
    };
    if let Some(why) = stale_form(&ui, &f.csrf) {
        return forbidden(why);
    }
    let act = ui.caller.act(
        &app,
        "ui.sign_out",
        "session",
        ui.caller.principal.company(),
    );
    if let Err(e) = app.engine.keys().end_session(&ui.session, act.ok()).await {
        return error_page(None, &ApiError::from_engine(e, "session"));
    }
    (
        [(
            header::SET_COOKIE,
            clear_cookie(secure_cookie(&app, &headers)),
        )],
        Redirect::to("/ui/login"),
    )
        .into_response()
}

async fn not_found() -> Response {
    error_page(None, &ApiError::route_not_found())
}

/// The URL a page names a static file by: its content's hash in the path,
/// so it can be cached for good (a new build's file has another URL).
pub fn asset_url(name: &str) -> String {
    match Assets::get(name) {
        Some(f) => format!("/ui/static/{}/{name}", content_hash(&f)),
        None => format!("/ui/static/{name}"),
    }
}

/// The first 16 hex digits of the file's SHA-256.
fn content_hash(f: &rust_embed::EmbeddedFile) -> String {
    f.metadata.sha256_hash()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A year: what "for good" means to a cache.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// A static file asked for by its plain name (a link from elsewhere):
/// cached briefly, since the name does not change with the content.
const SHORT_LIVED: &str = "public, max-age=300";

/// A static file: `HASH/NAME` (the pages' links: cached for good; a hash
/// that is not this build's is not found) or `NAME` (cached five minutes).
async fn asset(Path(path): Path<String>) -> Response {
    let hashed = path
        .split_once('/')
        .filter(|(h, _)| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    let (name, cache) = match hashed {
        Some((hash, name)) => match Assets::get(name) {
            Some(f) if content_hash(&f) == hash => (name, IMMUTABLE),
            _ => return (StatusCode::NOT_FOUND, "no such file").into_response(),
        },
        None => (path.as_str(), SHORT_LIVED),
    };
    let Some(file) = Assets::get(name) else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    let path = name;
    let kind = match path.rsplit('.').next() {
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => "text/plain; charset=utf-8",
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        ],
        file.data.into_owned(),
    )
        .into_response()
}
