//! Who may call what: bearer tokens per scope (`[auth]`) on every data
//! endpoint, and CORS on ingest for the browser collector
//! (`ingest.cors_origins`).
//!
//! - `read` endpoints (rollups, status, alerts, event search) and `ingest`
//!   take the token from `Authorization: Bearer` or the `token` query
//!   parameter (a `sendBeacon` or a browser WebSocket cannot set headers);
//!   on read endpoints the parameter is removed once checked, so handlers
//!   that refuse unknown parameters never see it;
//! - `/metrics` asks for a `metrics` token with `auth.metrics_requires_token`;
//! - a request to `/v1/events` whose `Origin` is neither the server's own nor
//!   listed is refused with 403 before its body is read; listed origins get
//!   `Access-Control-Allow-Origin` on the answer and on preflights.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{capped, MAX_ECHOED_CHARS};
use super::{ApiError, AppState};
use crate::auth::{Auth, Scope};

/// The name of the token a request was let in with (`anonymous` when auth
/// is off), for the layers after this one (the ingest rate limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub String);

/// The `token` query parameter of a request, if any.
fn query_token(req: &Request) -> Option<String> {
    let q = req.uri().query()?;
    url::form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

fn check(st: &AppState, req: &mut Request, scope: Scope) -> Result<(), ApiError> {
    let q = query_token(req);
    let name = st
        .auth
        .check(Auth::token_of(req.headers(), q.as_deref()), scope)
        .map_err(ApiError::Auth)?;
    req.extensions_mut().insert(Caller(name));
    Ok(())
}

/// `uri` without its `token` query parameters (unchanged when it has none).
fn without_token(uri: &Uri) -> Option<Uri> {
    let q = uri.query()?;
    let pairs = || url::form_urlencoded::parse(q.as_bytes());
    if !pairs().any(|(k, _)| k == "token") {
        return None;
    }
    let rest = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs().filter(|(k, _)| k != "token"))
        .finish();
    let path_and_query = if rest.is_empty() {
        uri.path().to_string()
    } else {
        format!("{}?{rest}", uri.path())
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// Middleware of the query endpoints: a token with the `read` scope.
pub async fn read(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    match check(&st, &mut req, Scope::Read) {
        Ok(()) => {
            if let Some(uri) = without_token(req.uri()) {
                *req.uri_mut() = uri;
            }
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// Middleware of `/metrics`: a token with the `metrics` scope when
/// `auth.metrics_requires_token`, else open.
pub async fn metrics(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    if st.auth.metrics_requires_token() {
        if let Err(e) = check(&st, &mut req, Scope::Metrics) {
            return e.into_response();
        }
    }
    next.run(req).await
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
        Origin::Refused(capped(text, MAX_ECHOED_CHARS))
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
pub async fn ingest(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
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
    let mut resp = match check(&st, &mut req, Scope::Ingest) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    };
    if let Some(o) = allow {
        cors_headers(&mut resp, o, max_age);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_parameter_is_removed_and_the_rest_kept() {
        let strip = |u: &str| without_token(&u.parse::<Uri>().expect("uri")).map(|u| u.to_string());
        assert_eq!(
            strip("/v1/rollups/hourly?kind=http&token=abc&service=a%20b"),
            Some("/v1/rollups/hourly?kind=http&service=a+b".into())
        );
        assert_eq!(strip("/v1/status?token=abc"), Some("/v1/status".into()));
        assert_eq!(
            strip("/v1/status?token=a&token=b"),
            Some("/v1/status".into())
        );
        assert_eq!(strip("/v1/status?kind=http"), None);
        assert_eq!(strip("/v1/status"), None);
    }
}
