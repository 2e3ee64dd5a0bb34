//! The one place errors become HTTP: status, a stable code, a message, and
//! the field at fault. Also how each failure is recorded in the audit log.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kira_core::ValidationError;
use kira_core::audit::Outcome;
use kira_core::auth::Denied;
use kira_engine::EngineError;
use kira_store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// How the audit log records this failure.
    pub outcome: Outcome,
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
        outcome: Outcome,
    ) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            outcome,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn bad_request(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            message,
            Outcome::Rejected,
        )
        .with_field(field)
    }

    pub fn invalid_json(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            message,
            Outcome::Rejected,
        )
        .with_field(field)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            message,
            Outcome::Denied,
        )
    }

    pub fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "your key's role may not do this",
            Outcome::Denied,
        )
    }

    /// A role refused, saying why.
    pub fn forbidden_because(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message, Outcome::Denied)
    }

    /// A role refused one field (or value) of an otherwise allowed request.
    pub fn forbidden_field(v: ValidationError) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            v.message,
            Outcome::Denied,
        )
        .with_field(v.field)
    }

    /// Something that does not exist, or that the caller may not know exists.
    pub fn not_found(what: impl Into<String>, denied: bool) -> Self {
        let outcome = if denied {
            Outcome::Denied
        } else {
            Outcome::Rejected
        };
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{} not found", what.into()),
            outcome,
        )
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message, Outcome::Rejected)
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than {limit} bytes"),
            Outcome::Rejected,
        )
        .with_field("body")
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            message,
            Outcome::Error,
        )
    }

    pub fn internal(err: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
            Outcome::Error,
        )
    }

    pub fn route_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such route",
            Outcome::Rejected,
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take that method",
            Outcome::Rejected,
        )
    }

    /// A store error in the context of `what` (for "not found" messages).
    pub fn from_store(err: StoreError, what: &str) -> Self {
        match err {
            StoreError::NotFound => Self::not_found(what, false),
            StoreError::Conflict(m) => Self::conflict(m),
            StoreError::Invalid(v) => v.into(),
            e => Self::internal(&e),
        }
    }

    /// An engine error in the context of `what` (for "not found" messages).
    pub fn from_engine(err: EngineError, what: &str) -> Self {
        match err {
            EngineError::Store(s) => Self::from_store(s, what),
            e => e.into(),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Invalid(v) => v.into(),
            EngineError::Parameter(v) => Self::bad_request(v.field, v.message),
            EngineError::Forbidden(v) => Self::forbidden_field(v),
            EngineError::Store(s) => Self::from_store(s, "company"),
            e @ (EngineError::Embed(_) | EngineError::Summarize(_) | EngineError::Audit(_)) => {
                Self::internal(&e)
            }
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(v: ValidationError) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            v.message,
            Outcome::Rejected,
        )
        .with_field(v.field)
    }
}

impl From<Denied> for ApiError {
    fn from(d: Denied) -> Self {
        match d {
            Denied::Forbidden => Self::forbidden(),
            Denied::NotFound => Self::not_found("company", true),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                field: self.field,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
