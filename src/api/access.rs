//! Who may call what: bearer tokens per scope (`[auth]`) on every data
//! endpoint, and CORS on ingest for the browser collector
//! (`ingest.cors_origins`).
//!
//! - `read` endpoints (rollups, status, alerts) and `ingest` take the token
//!   from `Authorization: Bearer` or the `token` query parameter (a
//!   `sendBeacon` cannot set headers);
//! - a request to `/v1/events` whose `Origin` is neither the server's own nor
//!   listed is refused with 403 before its body is read; listed origins get
//!   `Access-Control-Allow-Origin` on the answer and on preflights.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::auth::{Auth, Scope};

/// The `token` query parameter of a request, if any.
fn query_token(req: &Request) -> Option<String> {
    let q = req.uri().query()?;
    url::form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

fn check(st: &AppState, req: &Request, scope: Scope) -> Result<(), ApiError> {
    let q = query_token(req);
    st.auth
        .check(Auth::token_of(req.headers(), q.as_deref()), scope)
        .map(|_| ())
        .map_err(ApiError::Auth)
}

/// Middleware of the query endpoints: a token with the `read` scope.
pub async fn read(State(st): State<AppState>, req: Request, next: Next) -> Response {
    match check(&st, &req, Scope::Read) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// How an `Origin` relates to the ingest endpoint.
#[derive(Debug, PartialEq, Eq)]
enum Origin {
    /// No `Origin` header (not a browser), or the server's own origin.
    SameOrNone,
    /// A configured origin: answer with CORS headers.
    Allowed(HeaderValue),
    Refused(String),
}

fn origin(st: &AppState, headers: &HeaderMap) -> Origin {
    let Some(o) = headers.get(header::ORIGIN) else {
        return Origin::SameOrNone;
    };
    let text = o.to_str().unwrap_or("");
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let authority = text.split_once("://").map(|(_, a)| a).unwrap_or("");
    if !host.is_empty() && authority == host {
        return Origin::SameOrNone;
    }
    let allowed = &st.ingest.cors_origins;
    if allowed.iter().any(|a| a == "*" || a == text) {
        Origin::Allowed(o.clone())
    } else {
        Origin::Refused(text.chars().take(200).collect())
    }
}

fn cors_headers(resp: &mut Response, origin: HeaderValue, max_age: u64) {
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("retry-after"),
    );
    if let Ok(v) = HeaderValue::from_str(&max_age.to_string()) {
        h.insert(header::ACCESS_CONTROL_MAX_AGE, v);
    }
}

/// Middleware of `/v1/events`: origin, preflight, then a token with the
/// `ingest` scope.
pub async fn ingest(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let allow = match origin(&st, req.headers()) {
        Origin::Refused(o) => {
            return ApiError::Forbidden(format!(
                "origin {o:?} may not send events: add it to ingest.cors_origins"
            ))
            .into_response()
        }
        Origin::Allowed(v) => Some(v),
        Origin::SameOrNone => None,
    };
    let max_age = st.ingest.cors_max_age_secs;
    if req.method() == Method::OPTIONS {
        let mut resp = StatusCode::NO_CONTENT.into_response();
        if let Some(o) = allow {
            cors_headers(&mut resp, o, max_age);
        }
        return resp;
    }
    let mut resp = match check(&st, &req, Scope::Ingest) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    };
    if let Some(o) = allow {
        cors_headers(&mut resp, o, max_age);
    }
    resp
}
