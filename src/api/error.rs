//! The one API error type: a status code and a JSON body that names what is
//! wrong without exposing internals.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::event::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Invalid events: nothing of the request was written. `total` counts
    /// the invalid events, `omitted` the errors left out of `errors` (the
    /// answer's size is bounded; see `api::ingest::ErrorReport`).
    #[error("{message}")]
    Invalid {
        message: String,
        errors: Vec<FieldError>,
        total: usize,
        omitted: usize,
    },
    /// A bad request header.
    #[error("header {header}: {reason}")]
    BadHeader {
        header: &'static str,
        reason: String,
    },
    /// A well-formed request that conflicts with an earlier one (an
    /// idempotency key reused with another body). Not worth retrying.
    #[error("{reason}")]
    Conflict {
        header: &'static str,
        reason: String,
    },
    /// Ingest did not write the request, or cannot tell whether it did
    /// (`unknown`); retry after `retry_after` seconds (with the same
    /// idempotency key when unknown).
    #[error("{reason}")]
    WriteFailed {
        reason: String,
        retry_after: u64,
        unknown: bool,
    },
    /// A bad query parameter.
    #[error("parameter {param}: {reason}")]
    BadParam { param: String, reason: String },
    #[error("request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("{0}")]
    TooManyEvents(String),
    /// A dependency is down; the client should retry after `retry_after` seconds.
    #[error("{reason}")]
    Unavailable { reason: String, retry_after: u64 },
    #[error("{0}")]
    NotFound(String),
    /// No token, an unknown one (401) or one without the scope (403).
    #[error("{0}")]
    Auth(#[from] crate::auth::AuthError),
    /// Refused whatever the token (e.g. an origin not allowed to send events).
    #[error("{0}")]
    Forbidden(String),
    /// Details go to the log, not to the client.
    #[error("internal error")]
    Internal(String),
    /// Past a rate limit; the client should retry after `retry_after` seconds (429).
    #[error("{reason}")]
    RateLimited { reason: String, retry_after: u64 },
    /// The request took longer than `server.request_timeout_ms` (408).
    #[error("the request took longer than {limit_ms} ms (server.request_timeout_ms)")]
    RequestTimeout { limit_ms: u64 },
}

/// Most characters of client-supplied text (a parameter name, an origin)
/// an error answer repeats.
pub const MAX_ECHOED_CHARS: usize = 200;

/// `text` cut to `max` characters (never inside one), marked when cut.
pub fn capped(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((end, _)) => format!("{}…", text.get(..end).unwrap_or_default()),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            ApiError::Invalid {
                message,
                errors,
                total,
                omitted,
            } => (
                StatusCode::BAD_REQUEST,
                json!({"error": message, "accepted": 0, "invalid_events": total,
                       "errors_omitted": omitted, "errors": errors}),
            ),
            ApiError::BadHeader { header, reason } => (
                StatusCode::BAD_REQUEST,
                json!({"error": self.to_string(), "header": header, "reason": reason, "accepted": 0}),
            ),
            ApiError::Conflict { header, .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error": self.to_string(), "header": header, "accepted": 0}),
            ),
            ApiError::WriteFailed { unknown: true, .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": self.to_string(), "outcome": "unknown"}),
            ),
            ApiError::WriteFailed { unknown: false, .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": self.to_string(), "outcome": "not_written", "accepted": 0}),
            ),
            ApiError::BadParam { param, reason } => {
                let param = capped(param, MAX_ECHOED_CHARS);
                (
                    StatusCode::BAD_REQUEST,
                    json!({"error": format!("parameter {param}: {reason}"), "param": param, "reason": reason}),
                )
            }
            ApiError::TooLarge { .. } | ApiError::TooManyEvents(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": self.to_string(), "accepted": 0}),
            ),
            ApiError::Unavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": self.to_string(), "accepted": 0}),
            ),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, json!({"error": m})),
            ApiError::Auth(e) => (
                match e {
                    crate::auth::AuthError::Scope { .. } => StatusCode::FORBIDDEN,
                    _ => StatusCode::UNAUTHORIZED,
                },
                json!({"error": self.to_string()}),
            ),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, json!({"error": m})),
            ApiError::RateLimited { retry_after, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                json!({"error": self.to_string(), "accepted": 0, "retry_after_secs": retry_after}),
            ),
            ApiError::RequestTimeout { .. } => (
                StatusCode::REQUEST_TIMEOUT,
                json!({"error": self.to_string()}),
            ),
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"error": "internal error; see the server log"}),
                )
            }
        };
        let mut resp = (status, Json(body)).into_response();
        if let ApiError::Unavailable { retry_after, .. }
        | ApiError::WriteFailed { retry_after, .. }
        | ApiError::RateLimited { retry_after, .. } = self
        {
            if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

/// A `BadParam` for `param`.
pub fn bad_param(param: &str, reason: impl Into<String>) -> ApiError {
    ApiError::BadParam {
        param: param.to_string(),
        reason: reason.into(),
    }
}

/// Query parameter `name` as a time (RFC 3339), if given.
pub fn time_param(
    params: &std::collections::HashMap<String, String>,
    name: &str,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    params
        .get(name)
        .map(|s| {
            crate::event::parse_ts(s)
                .ok()
                .and_then(chrono::DateTime::from_timestamp_millis)
                .ok_or_else(|| {
                    bad_param(
                        name,
                        "must be an RFC 3339 time such as 2026-03-01T00:00:00Z",
                    )
                })
        })
        .transpose()
}

/// Query parameter `limit` (1..=max), else `default`.
pub fn limit_param(
    params: &std::collections::HashMap<String, String>,
    default: u64,
    max: u64,
) -> Result<u64, ApiError> {
    match params.get("limit") {
        Some(l) => l
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| bad_param("limit", format!("must be an integer from 1 to {max}"))),
        None => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoed_text_is_capped_on_a_char_boundary() {
        assert_eq!(capped("abc", 5), "abc");
        assert_eq!(capped("abcdef", 3), "abc…");
        assert_eq!(capped("ééééé", 2), "éé…");
        assert_eq!(capped("🦀🦀🦀", 1), "🦀…");
    }

    #[tokio::test]
    async fn a_huge_parameter_name_is_not_echoed_whole() {
        let name = "x".repeat(100_000);
        let resp = bad_param(&name, "unknown parameter").into_response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        assert!(
            body.len() < 2 * MAX_ECHOED_CHARS + 200,
            "{} bytes",
            body.len()
        );
    }
}
