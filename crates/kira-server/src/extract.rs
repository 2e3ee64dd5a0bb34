//! What every handler extracts: the request id, the authenticated caller,
//! and JSON bodies and query strings parsed so that errors name the field.
//! Also [`Act`], which writes each request's outcome to the audit log.

use std::net::{IpAddr, SocketAddr};

use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use kira_core::CompanyId;
use kira_core::audit::{AuditRecord, Outcome, truncated};
use kira_core::auth::{Actor, Principal, token_key_id};
use kira_core::ids::KeyId;
use kira_core::storable::{self, unstorable_json, unstorable_text};
use serde::de::DeserializeOwned;

use crate::App;
use crate::error::{ApiError, ApiResult};

/// The id of one request: in the response's `x-request-id` header and in
/// every audit entry the request writes.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

pub async fn request_id(mut req: Request, next: Next) -> Response {
    // Ours, never the client's: a client-chosen id could forge audit entries.
    let id = uuid::Uuid::now_v7().to_string();
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut res = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert("x-request-id", v);
    }
    res
}

/// An authenticated request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub request_id: String,
}

impl FromRequestParts<App> for Caller {
    type Rejection = ApiError;

    /// Any valid key but a metrics key, which may only scrape
    /// ([`Scraper`]): refused 403 and audited on every other route.
    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let caller = Scraper::from_request_parts(parts, app).await?.0;
        if caller.principal.may_use_api() {
            return Ok(caller);
        }
        let denied = ApiError::forbidden_because("a metrics key may only read GET /metrics");
        let target = format!("{} {}", parts.method, parts.uri.path());
        caller
            .act(app, "auth", truncated(&target, MAX_AUDITED_PATH), None)
            .read(Err(denied))
            .await
    }
}

/// A caller with any valid key, a metrics key included: only `GET
/// /metrics` takes this (and checks [`Principal::metrics`]); every other
/// route takes a [`Caller`].
#[derive(Debug, Clone)]
pub struct Scraper(pub Caller);

impl FromRequestParts<App> for Scraper {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default();
        match authenticate(parts, app).await {
            Ok(principal) => Ok(Scraper(Caller {
                principal,
                request_id,
            })),
            Err((reason, key)) => {
                auth_failed(app, key.as_ref(), peer(parts));
                audit_unauthenticated(parts, app, request_id, reason).await;
                Err(ApiError::unauthorized(
                    "missing or invalid API key: send 'Authorization: Bearer kira_...'",
                ))
            }
        }
    }
}

/// Counts a request refused for want of a valid key or session: in
/// `/metrics` and for the alert rule on bursts of failures per key id and
/// per client address.
pub(crate) fn auth_failed(app: &App, key: Option<&KeyId>, from: IpAddr) {
    app.engine.alerts().auth_failed(key, from);
}

/// The most bytes of a refused request's path the audit log keeps.
pub const MAX_AUDITED_PATH: usize = 256;

/// Audits a request refused for want of a key, within the per-address
/// limit ([`crate::refusals`]): anyone can send these, so none may grow the
/// log by more than a short entry, nor one address by more than a few a
/// minute.
pub(crate) async fn audit_unauthenticated(
    parts: &Parts,
    app: &App,
    request_id: String,
    reason: &str,
) {
    let target = format!("{} {}", parts.method, parts.uri.path());
    audit_refusal(app, request_id, peer(parts), target, reason).await;
}

/// The address a request came from (0.0.0.0 when the server was not
/// told).
pub(crate) fn peer(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip())
}

/// [`audit_unauthenticated`] of a request from `from` for `target`
/// (`METHOD /path`).
pub(crate) async fn audit_refusal(
    app: &App,
    request_id: String,
    from: IpAddr,
    target: String,
    reason: &str,
) {
    let now = app.clock.now();
    let admission = app.refusals.admit(from, now);
    let anonymous = |target: String, detail: String| AuditRecord {
        at: now,
        request_id: request_id.clone(),
        actor: Actor::Anonymous.to_string(),
        company_id: None,
        action: "auth".into(),
        target,
        outcome: Outcome::Denied,
        detail,
    };
    let mut records: Vec<AuditRecord> = admission
        .summaries
        .iter()
        .map(|(addr, n)| {
            anonymous(
                format!("from {addr}"),
                format!("{n} further unauthenticated refusals from {addr}"),
            )
        })
        .collect();
    if admission.record {
        records.push(anonymous(
            truncated(&target, MAX_AUDITED_PATH),
            format!("{reason} (from {from})"),
        ));
    }
    if records.is_empty() {
        return;
    }
    if let Err(e) = app.engine.audit().append(records).await {
        tracing::error!(error = %e, "could not audit a refused request");
    }
}

/// The principal behind the bearer token, or why there is none (for the
/// audit log only: the caller is told nothing more than 401) and the key
/// id the token named, if any.
async fn authenticate(
    parts: &Parts,
    app: &App,
) -> Result<Principal, (&'static str, Option<KeyId>)> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or(("no authorization header", None))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(("authorization is not a bearer token", None))?;
    app.engine
        .keys()
        .authenticate(token)
        .await
        .map_err(|e| (e.reason(), token_key_id(token)))
}

/// One request's audit trail: the record of its success goes into the
/// engine call (written with the change); a failure is appended by
/// [`Act::done`].
pub struct Act {
    app: App,
    request_id: String,
    actor: String,
    action: &'static str,
    target: String,
    company: Option<CompanyId>,
    /// Another company a company key named: its entry shows the caller
    /// only that it was another company; the admin's entry names it.
    foreign: Option<CompanyId>,
}

/// What a company's own log shows of a request that named another company.
const FOREIGN_TARGET: &str = "another company";

impl Caller {
    pub fn act(
        &self,
        app: &App,
        action: &'static str,
        target: impl Into<String>,
        company: Option<&CompanyId>,
    ) -> Act {
        // A company key naming another company is recorded under its own:
        // the other company's log must not show another tenant's key (the
        // admin's view has both, and the target names what was asked for).
        let (company, foreign) = match self.principal.company() {
            Some(own) if company.is_some_and(|c| c != own) => (Some(own.clone()), company.cloned()),
            _ => (company.cloned(), None),
        };
        Act {
            app: app.clone(),
            request_id: self.request_id.clone(),
            actor: self.principal.actor().to_string(),
            action,
            target: target.into(),
            company,
            foreign,
        }
    }
}

impl Act {
    fn record(&self, outcome: Outcome, detail: String) -> AuditRecord {
        AuditRecord {
            at: self.app.clock.now(),
            request_id: self.request_id.clone(),
            actor: self.actor.clone(),
            company_id: self.company.clone(),
            action: self.action.to_owned(),
            target: if self.foreign.is_some() {
                FOREIGN_TARGET.to_owned()
            } else {
                self.target.clone()
            },
            outcome,
            detail,
        }
    }

    /// The entries of a failure: the caller's company's (or the admin's),
    /// and when a company key named another company, the admin's with
    /// the target as asked (no company's log names another company).
    fn failure_records(&self, outcome: Outcome, detail: String) -> Vec<AuditRecord> {
        let own = self.record(outcome, detail);
        match &self.foreign {
            None => vec![own],
            Some(other) => {
                let admin = AuditRecord {
                    company_id: None,
                    target: self.target.clone(),
                    detail: format!("{} (company:{other})", own.detail),
                    ..own.clone()
                };
                vec![own, admin]
            }
        }
    }

    /// The record of success, for the engine to write with the change.
    pub fn ok(&self) -> AuditRecord {
        self.record(Outcome::Ok, String::new())
    }

    /// For a change: audits a failure (a success was audited by the engine).
    pub async fn done<T>(&self, r: ApiResult<T>) -> ApiResult<T> {
        if let Err(e) = &r {
            self.audit_failure(e).await;
        }
        r
    }

    /// For a read: audits only a denial.
    pub async fn read<T>(&self, r: ApiResult<T>) -> ApiResult<T> {
        if let Err(e) = &r
            && e.outcome == Outcome::Denied
        {
            self.audit_failure(e).await;
        }
        r
    }

    async fn audit_failure(&self, e: &ApiError) {
        // A scope refused as "not found" is a caller of one company naming
        // another: a denied cross-company read, a security signal.
        if e.outcome == Outcome::Denied && e.status == StatusCode::NOT_FOUND {
            self.app.engine.sharing().count_denied_read();
        }
        let detail = match &e.field {
            Some(f) => format!("{} ({f})", e.code),
            None => e.code.to_owned(),
        };
        if let Err(err) = self
            .app
            .engine
            .audit()
            .append(self.failure_records(e.outcome, detail))
            .await
        {
            tracing::error!(error = %err, "could not audit a failed request");
        }
    }
}

/// Parses a JSON body. Syntax errors name `body`; type errors and unknown
/// fields name the field, as a dotted path (`contacts.0.email`).
pub fn json_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> ApiResult<T> {
    let bytes = body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(limit)
        } else {
            ApiError::invalid_json("body", rej.body_text())
        }
    })?;
    if bytes.is_empty() {
        return Err(ApiError::invalid_json("body", "a JSON body is required"));
    }
    // serde would also read a struct from an array; the API takes objects only.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid_json(
            "body",
            "the body must be a JSON object",
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid_json("body", format!("malformed JSON: {e}")))?;
    if let Some((field, msg)) = unstorable_json(&value, "") {
        return Err(ApiError::bad_request(
            if field.is_empty() {
                "body".into()
            } else {
                field
            },
            msg,
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = dotted(&e.path().to_string());
        let msg = e.into_inner().to_string();
        // The path already ends at an unknown field; a missing one is named only in the message.
        let field = missing_field(&msg).map_or(path.clone(), |f| join(&path, f));
        ApiError::invalid_json(
            if field.is_empty() {
                "body".into()
            } else {
                field
            },
            msg,
        )
    })
}

/// Parses a query string; unknown parameters and bad values name the parameter.
pub fn query<T: DeserializeOwned>(raw: Option<&str>) -> ApiResult<T> {
    let raw = raw.unwrap_or("");
    for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
        if key.contains('\0') {
            return Err(ApiError::bad_request("query", storable::NUL));
        }
        if let Some(msg) = unstorable_text(&value) {
            return Err(ApiError::bad_request(key.into_owned(), msg));
        }
    }
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(raw.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = dotted(&e.path().to_string());
        let msg = e.into_inner().to_string();
        let field = unknown_field(&msg)
            .or_else(|| missing_field(&msg))
            .map_or(path, str::to_owned);
        ApiError::bad_request(
            if field.is_empty() {
                "query".into()
            } else {
                field
            },
            msg,
        )
    })
}

/// `contacts[0].email` -> `contacts.0.email`; `.` (the root) -> ``.
fn dotted(p: &str) -> String {
    if p == "." {
        return String::new();
    }
    p.replace('[', ".")
        .replace(']', "")
        .trim_start_matches('.')
        .to_owned()
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

fn missing_field(msg: &str) -> Option<&str> {
    msg.strip_prefix("missing field `")?.split('`').next()
}

fn unknown_field(msg: &str) -> Option<&str> {
    msg.strip_prefix("unknown field `")?.split('`').next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kira_core::company::NewCompany;

    fn parse(s: &'static str) -> ApiResult<NewCompany> {
        json_body(Ok(Bytes::from_static(s.as_bytes())), 1000)
    }

    #[test]
    fn json_errors_name_the_field() {
        let field = |s| parse(s).expect_err("invalid").field.unwrap_or_default();
        assert_eq!(
            field(r#"{"id":"ab","name":"A","industry":"x","jurisdiction":"US","colour":1}"#),
            "colour"
        );
        assert_eq!(
            field(
                r#"{"id":"ab","name":"A","industry":"x","jurisdiction":"US","revenue_usd":"lots"}"#
            ),
            "revenue_usd"
        );
        assert_eq!(
            field(
                r#"{"id":"ab","name":"A","industry":"x","jurisdiction":"US","contacts":[{"name":"J","phone":"1"}]}"#
            ),
            "contacts.0.phone"
        );
        assert_eq!(field(r#"{"id":"ab","#), "body");
        assert_eq!(
            field(r#"{"id":"ab","name":"A","industry":"x","jurisdiction":"US"} x"#),
            "body"
        );
        assert_eq!(
            field(r#"{"name":"A","industry":"x","jurisdiction":"US"}"#),
            "id"
        );
        assert_eq!(field(""), "body");
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Q {
        #[serde(default)]
        limit: Option<u32>,
    }

    #[test]
    fn query_errors_name_the_parameter() {
        assert_eq!(query::<Q>(Some("limit=5")).expect("valid").limit, Some(5));
        assert_eq!(query::<Q>(None).expect("valid").limit, None);
        assert_eq!(
            query::<Q>(Some("limit=x"))
                .expect_err("bad")
                .field
                .as_deref(),
            Some("limit")
        );
        assert_eq!(
            query::<Q>(Some("nope=1"))
                .expect_err("bad")
                .field
                .as_deref(),
            Some("nope")
        );
    }
}
