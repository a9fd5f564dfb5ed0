//! The one error type of the HTTP API: an HTTP status, a stable machine-readable code,
//! and a message safe to show. Internal details are logged, never returned.
//!
//! A write refused because a disk is full is `507 insufficient_storage` with
//! `Retry-After` ([`ApiError::disk_full`]); the response carries a [`DiskFull`]
//! extension that `api::disk_full` hands to `daemon::disk`, so readiness and the
//! metrics learn of it however deep in a handler it happened.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::daemon::disk::{Part, RETRY_AFTER_SECS};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header (a refusal that will pass later).
    pub retry_after: Option<u64>,
    /// Set when a write failed because `part`'s disk is full (see [`DiskFull`]).
    pub disk_full: Option<DiskFull>,
}

/// On a response: a write to `part` failed because its disk is full (`detail`: the
/// error, for the log — never sent to the client).
#[derive(Debug, Clone)]
pub struct DiskFull {
    pub part: Part,
    pub detail: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            disk_full: None,
        }
    }
    /// 507: `what` was not stored because `part`'s disk is full (`detail`: the error,
    /// logged and reported to `daemon::disk`); retry once there is space.
    pub fn disk_full(part: Part, what: &str, detail: impl std::fmt::Display) -> Self {
        let detail = detail.to_string();
        tracing::warn!(part = part.as_str(), error = %detail, "{what} not stored: the disk is full");
        let mut e = Self::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "insufficient_storage",
            format!(
                "{what} was not stored: the server's {} is out of disk space; nothing \
                 was kept, retry later",
                match part {
                    Part::Database => "database",
                    Part::DataDir => "data directory",
                }
            ),
        )
        .retry_after(RETRY_AFTER_SECS);
        e.disk_full = Some(DiskFull { part, detail });
        e
    }
    /// 507 without a failed write: storing `what` would leave the data disk under
    /// its reserve (`message` says by how much).
    pub fn over_reserve(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "insufficient_storage",
            message,
        )
        .retry_after(RETRY_AFTER_SECS)
    }
    /// With `Retry-After: secs`.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }
    /// An internal failure: `detail` goes to the log, the caller sees a generic message.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }
    /// A dependency (database, forge) is temporarily unavailable; worth retrying.
    pub fn unavailable(detail: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %detail, "service unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "temporarily unavailable; retry later",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
            },
        };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        if let Some(full) = self.disk_full {
            resp.extensions_mut().insert(full);
        }
        resp
    }
}

impl From<crate::store::Error> for ApiError {
    fn from(e: crate::store::Error) -> Self {
        use crate::store::Error as E;
        match e {
            E::NotFound(what) => ApiError::not_found(format!("not found: {what}")),
            E::Conflict(what) => ApiError::conflict(what),
            E::Invalid(what) => ApiError::unprocessable(what),
            E::Refused(what) => ApiError::forbidden(what),
            E::LeaseLost => ApiError::new(
                StatusCode::CONFLICT,
                "lease_lost",
                "the stage is no longer leased with this token",
            ),
            e if e.is_disk_full() => ApiError::disk_full(Part::Database, "the change", e),
            e if e.is_retryable() => ApiError::unavailable(e),
            e => ApiError::internal(e),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// What a request no route matches gets: under `/api/` and `/hooks/`, the documented
/// JSON error (`404 not_found`, or `405 method_not_allowed` for a known path), so
/// clients parse one error shape; elsewhere plain text.
pub async fn no_route(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let path = uri.path();
    if !(path.starts_with("/api/") || path.starts_with("/hooks/")) {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    }
    ApiError::not_found(format!(
        "no such route: {method} {path} (see GET /api/openapi.json)"
    ))
    .into_response()
}

/// A known path asked with a method it does not serve.
pub async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let path = uri.path();
    let message = format!("{path} does not take {method} (see GET /api/openapi.json)");
    if !(path.starts_with("/api/") || path.starts_with("/hooks/")) {
        return (StatusCode::METHOD_NOT_ALLOWED, message).into_response();
    }
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        message,
    )
    .into_response()
}
