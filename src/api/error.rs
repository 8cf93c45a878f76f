//! The one API error type: a status code and a JSON body that names what is
//! wrong without exposing internals.

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
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
    /// Several bad query parameters, each with its reason (built by
    /// [`ParamErrors`]); `omitted` counts those past [`MAX_PARAM_ERRORS`].
    #[error("{} bad parameters", .errors.len() + .omitted)]
    BadParams {
        errors: Vec<(String, String)>,
        omitted: usize,
    },
    #[error("request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// A body in a media type the endpoint does not read (415); `got` is
    /// the request's `Content-Type` (capped), `supported` what it reads.
    /// Not worth retrying as it is.
    #[error("Content-Type {got:?} is not one this endpoint reads: send one of {}; nothing was written{}", .supported.join(", "), form_hint(.got))]
    UnsupportedMediaType {
        got: String,
        supported: &'static [&'static str],
    },
    #[error("{0}")]
    TooManyEvents(String),
    /// A dependency is down or busy; the client should retry after
    /// `retry_after` seconds. `reason` is shown to the client: say what and
    /// what to do, and log the dependency's own error text instead.
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

/// What to do when a form was sent: curl's `-d` sends one unless told.
fn form_hint(got: &str) -> &'static str {
    if got.starts_with("application/x-www-form-urlencoded") {
        " (curl -d sends application/x-www-form-urlencoded: add -H 'Content-Type: application/json')"
    } else {
        ""
    }
}

/// Most characters of client-supplied text (a parameter name, an origin)
/// an error answer repeats.
pub const MAX_ECHOED_CHARS: usize = 200;

/// Most bad parameters one 400 lists (the rest are counted in
/// `errors_omitted`): a query string can hold thousands of unknown names.
pub const MAX_PARAM_ERRORS: usize = 20;

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
            ApiError::WriteFailed {
                unknown: true,
                retry_after,
                ..
            } => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": self.to_string(), "outcome": "unknown",
                       "retry_after_secs": retry_after}),
            ),
            ApiError::WriteFailed {
                unknown: false,
                retry_after,
                ..
            } => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": self.to_string(), "outcome": "not_written", "accepted": 0,
                       "retry_after_secs": retry_after}),
            ),
            ApiError::BadParam { param, reason } => (
                StatusCode::BAD_REQUEST,
                params_body(std::slice::from_ref(&(param.clone(), reason.clone())), 0),
            ),
            ApiError::BadParams { errors, omitted } => {
                (StatusCode::BAD_REQUEST, params_body(errors, *omitted))
            }
            ApiError::UnsupportedMediaType { got, supported } => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                json!({"error": self.to_string(), "accepted": 0, "content_type": got,
                       "supported": supported}),
            ),
            ApiError::TooLarge { .. } | ApiError::TooManyEvents(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": self.to_string(), "accepted": 0}),
            ),
            ApiError::Unavailable { retry_after, .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": self.to_string(), "retry_after_secs": retry_after}),
            ),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, json!({"error": m})),
            ApiError::Auth(e) => (e.status(), json!({"error": self.to_string()})),
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

/// Most bytes of a non-JSON error body (the text of an axum rejection) read
/// to be repeated in the JSON answer; a longer one is not repeated.
const MAX_REJECTION_BODY_BYTES: usize = 4096;

/// Whether `headers` say the body is JSON.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"))
}

/// `app` inside [`json_errors`]: outside its routes, so the middleware sees
/// the router's own answers too (a 405 with the `Allow` its method router
/// sets once it has answered).
pub fn with_json_errors(app: axum::Router) -> axum::Router {
    axum::Router::new()
        .fallback_service(app)
        .layer(axum::middleware::from_fn(json_errors))
}

/// Middleware around the whole router ([`with_json_errors`]): an error
/// answer that is not JSON — axum's own, which [`ApiError`] never sees (a
/// 405 from the router, the 400/413/415/422 of an extractor, a refused
/// WebSocket upgrade) — gets the API's shape, `{"error": "..."}`, with its status and headers kept
/// (`Allow` on a 405, which `error` repeats). Answers to `HEAD` have no body
/// and are left alone.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error())
        || method == Method::HEAD
        || is_json(resp.headers())
    {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, MAX_REJECTION_BODY_BYTES)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let reason = status.canonical_reason().unwrap_or("error").to_lowercase();
    let error = if status == StatusCode::METHOD_NOT_ALLOWED {
        let allow = parts
            .headers
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .replace(',', ", ");
        format!("method {method} is not allowed here; allowed: {allow} (see docs/api.md)")
    } else if text.is_empty() {
        reason
    } else {
        format!("{reason}: {}", capped(&text, MAX_ECHOED_CHARS))
    };
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut out = (status, Json(json!({ "error": error }))).into_response();
    for (name, value) in parts.headers.iter() {
        out.headers_mut().append(name.clone(), value.clone());
    }
    out
}

/// The 400 body of bad parameters: `error` says each, `param` and `reason`
/// are the first's (the shape of one bad parameter, kept), `errors` lists
/// every one as `{"param", "reason"}`, `errors_omitted` those left out.
fn params_body(errors: &[(String, String)], omitted: usize) -> serde_json::Value {
    let errors: Vec<(String, &str)> = errors
        .iter()
        .map(|(p, r)| (capped(p, MAX_ECHOED_CHARS), r.as_str()))
        .collect();
    let mut text = errors
        .iter()
        .map(|(p, r)| format!("parameter {p}: {r}"))
        .collect::<Vec<_>>()
        .join("; ");
    if omitted > 0 {
        text.push_str(&format!("; and {omitted} more"));
    }
    let (param, reason) = errors.first().cloned().unwrap_or_default();
    json!({
        "error": text,
        "param": param,
        "reason": reason,
        "errors": errors
            .iter()
            .map(|(p, r)| json!({"param": p, "reason": r}))
            .collect::<Vec<_>>(),
        "errors_omitted": omitted,
    })
}

/// Collects every bad parameter of a request, so one 400 names them all
/// instead of the first only.
#[derive(Debug, Default)]
pub struct ParamErrors {
    errors: Vec<(String, String)>,
    omitted: usize,
    /// A failure that is not a parameter's (answered as it is).
    other: Option<ApiError>,
}

impl ParamErrors {
    /// Notes a bad parameter.
    pub fn add(&mut self, param: &str, reason: impl Into<String>) {
        if self.errors.len() < MAX_PARAM_ERRORS {
            self.errors.push((param.to_string(), reason.into()));
        } else {
            self.omitted += 1;
        }
    }

    /// The value of `r`, or `None` after noting its error.
    pub fn take<T>(&mut self, r: Result<T, ApiError>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(ApiError::BadParam { param, reason }) => {
                self.add(&param, reason);
                None
            }
            Err(ApiError::BadParams { errors, omitted }) => {
                for (p, r) in errors {
                    self.add(&p, r);
                }
                self.omitted += omitted;
                None
            }
            Err(e) => {
                self.other.get_or_insert(e);
                None
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty() && self.other.is_none()
    }

    /// `Ok` when nothing was noted, else one error naming every parameter.
    pub fn finish(mut self) -> Result<(), ApiError> {
        if let Some(e) = self.other.take() {
            return Err(e);
        }
        match (self.errors.len(), self.omitted) {
            (0, _) => Ok(()),
            (1, 0) => {
                let (param, reason) = self.errors.remove(0);
                Err(ApiError::BadParam { param, reason })
            }
            _ => Err(ApiError::BadParams {
                errors: self.errors,
                omitted: self.omitted,
            }),
        }
    }
}

/// A `BadParam` for `param`.
pub fn bad_param(param: &str, reason: impl Into<String>) -> ApiError {
    ApiError::BadParam {
        param: param.to_string(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(e: ApiError) -> serde_json::Value {
        let bytes = axum::body::to_bytes(e.into_response().into_body(), 1 << 20)
            .await
            .expect("body");
        serde_json::from_slice(&bytes).expect("json")
    }

    #[tokio::test]
    async fn every_bad_parameter_is_named_in_one_answer() {
        let mut errs = ParamErrors::default();
        assert_eq!(errs.take(Ok::<_, ApiError>(1)), Some(1));
        assert!(errs.is_empty());
        errs.take::<()>(Err(bad_param("from", "bad from")));
        errs.add("limit", "bad limit");
        let v = body(errs.finish().expect_err("two")).await;
        assert_eq!(v["param"], "from", "the first, as with one: {v}");
        assert_eq!(v["reason"], "bad from");
        assert_eq!(v["errors"][1]["param"], "limit", "{v}");
        assert_eq!(
            v["error"],
            "parameter from: bad from; parameter limit: bad limit"
        );

        // one keeps the old shape, plus `errors`
        let v = body(bad_param("to", "bad to")).await;
        assert_eq!(v["error"], "parameter to: bad to");
        assert_eq!(v["errors"][0]["param"], "to");

        // past MAX_PARAM_ERRORS they are counted, not listed
        let mut errs = ParamErrors::default();
        for i in 0..MAX_PARAM_ERRORS + 7 {
            errs.add(&format!("p{i}"), "unknown parameter");
        }
        let v = body(errs.finish().expect_err("many")).await;
        assert_eq!(v["errors"].as_array().map(Vec::len), Some(MAX_PARAM_ERRORS));
        assert_eq!(v["errors_omitted"], 7);
        assert!(ParamErrors::default().finish().is_ok());
    }

    /// A router with an extractor that rejects, under [`json_errors`].
    fn rejecting_router() -> axum::Router {
        use axum::routing::{get, post};
        with_json_errors(
            axum::Router::new()
                .route(
                    "/json",
                    post(|Json(v): Json<serde_json::Value>| async move { Json(v) }),
                )
                .route(
                    "/text",
                    get(|| async { (StatusCode::BAD_GATEWAY, "upstream said no") }),
                )
                .route(
                    "/api",
                    get(|| async { ApiError::NotFound("no such thing".into()) }),
                ),
        )
    }

    async fn answer(
        req: axum::http::Request<axum::body::Body>,
    ) -> (StatusCode, HeaderMap, serde_json::Value) {
        use tower::ServiceExt;
        let resp = rejecting_router().oneshot(req).await.expect("infallible");
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.expect("body");
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {bytes:?}", parts.status));
        (parts.status, parts.headers, v)
    }

    #[tokio::test]
    async fn the_routers_own_refusals_answer_the_json_error_shape() {
        use axum::body::Body;
        use axum::http::Request;
        // an extractor's rejections: 415 (not a JSON content type), 400
        // (not JSON)
        let (s, h, v) = answer(
            Request::post("/json")
                .header("content-type", "text/csv")
                .body(Body::from("{}"))
                .expect("request"),
        )
        .await;
        assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{v}");
        assert_eq!(h[header::CONTENT_TYPE], "application/json");
        let e = v["error"].as_str().expect("error");
        assert!(
            e.starts_with("unsupported media type: ") && e.contains("application/json"),
            "{e}"
        );
        let (s, _, v) = answer(
            Request::post("/json")
                .header("content-type", "application/json")
                .body(Body::from("{"))
                .expect("request"),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        // the router's 405 names the methods allowed, and keeps `Allow`
        let (s, h, v) = answer(
            Request::delete("/json")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(h[header::ALLOW], "POST");
        assert_eq!(
            v["error"],
            "method DELETE is not allowed here; allowed: POST (see docs/api.md)"
        );
        // any other non-JSON error: its text, capped, after the reason
        let (s, _, v) = answer(Request::get("/text").body(Body::empty()).expect("request")).await;
        assert_eq!(s, StatusCode::BAD_GATEWAY);
        assert_eq!(v["error"], "bad gateway: upstream said no");
        // the API's own errors pass unchanged
        let (s, _, v) = answer(Request::get("/api").body(Body::empty()).expect("request")).await;
        assert_eq!(
            (s, v),
            (StatusCode::NOT_FOUND, json!({"error": "no such thing"}))
        );
    }

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
        // the name stands in `error`, `param` and `errors[0].param`
        assert!(
            body.len() < 3 * MAX_ECHOED_CHARS + 200,
            "{} bytes",
            body.len()
        );
    }
}
