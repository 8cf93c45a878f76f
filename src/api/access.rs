//! Who may call what: bearer tokens per scope (`[auth]`) on every data
//! endpoint, and CORS for browser pages on other origins: on ingest for the
//! browser collector (`ingest.cors_origins`), on the read endpoints for
//! dashboards (`query.cors_origins`), one code path ([`Cors`]).
//!
//! - `read` endpoints (rollups, status, alerts, event search) and `ingest`
//!   take the token from `Authorization: Bearer` or the `token` query
//!   parameter (a `sendBeacon` or a browser WebSocket cannot set headers);
//!   on read endpoints the parameter is removed once checked, so handlers
//!   that refuse unknown parameters never see it;
//! - `/metrics` asks for a `metrics` token with `auth.metrics_requires_token`;
//! - a request to `/v1/events` whose `Origin` is neither the server's own nor
//!   listed is refused with 403 before its body is read; listed origins get
//!   `Access-Control-Allow-Origin` on the answer and on preflights;
//! - the read endpoints answer listed origins the same way; an unlisted one
//!   is answered without CORS headers (a read changes nothing, and the
//!   browser keeps the answer from the page).

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

/// How a request's `Origin` relates to an endpoint's CORS list.
#[derive(Debug, PartialEq, Eq)]
enum Origin {
    /// No `Origin` header (not a browser), or the server's own origin.
    SameOrNone,
    /// A configured origin: answer with CORS headers.
    Allowed(HeaderValue),
    /// Not listed (capped for echoing).
    Other(String),
}

fn origin(allowed: &[String], headers: &HeaderMap) -> Origin {
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
    if allowed.iter().any(|a| a == "*" || a == text) {
        Origin::Allowed(o.clone())
    } else {
        Origin::Other(capped(text, MAX_ECHOED_CHARS))
    }
}

/// The CORS of one family of endpoints: ingest (`ingest.cors_origins`) or
/// the read endpoints (`query.cors_origins`).
struct Cors<'a> {
    origins: &'a [String],
    max_age_secs: u64,
    /// `Access-Control-Allow-Methods`.
    methods: &'static str,
    /// `Access-Control-Expose-Headers`: what a page may read of the answer.
    expose: &'static str,
    /// For endpoints with side effects: the refusal of an unlisted origin
    /// (the setting to add it to is named), before anything is read. A
    /// read has none: an unlisted origin gets its answer without CORS
    /// headers, which the browser then withholds from the page.
    refuse: Option<(&'static str, &'static str)>,
}

impl Cors<'_> {
    fn headers(&self, resp: &mut Response, origin: HeaderValue) {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(self.methods),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(self.expose),
        );
        if let Ok(v) = HeaderValue::from_str(&self.max_age_secs.to_string()) {
            h.insert(header::ACCESS_CONTROL_MAX_AGE, v);
        }
    }

    /// The origin check, the preflight, then `scope`'s token check and the
    /// handler (`strip_token`: without the `token` parameter), with CORS
    /// headers on whatever is answered to a listed origin (errors too, so
    /// the page can read why).
    async fn guard(
        &self,
        st: &AppState,
        scope: Scope,
        strip_token: bool,
        mut req: Request,
        next: Next,
    ) -> Response {
        let allow = match origin(self.origins, req.headers()) {
            Origin::Other(o) => match self.refuse {
                Some((what, setting)) => {
                    return ApiError::Forbidden(format!(
                        "origin {o:?} may not {what}: add it to {setting}"
                    ))
                    .into_response()
                }
                None => None,
            },
            Origin::Allowed(v) => Some(v),
            Origin::SameOrNone => None,
        };
        if req.method() == Method::OPTIONS {
            let mut resp = StatusCode::NO_CONTENT.into_response();
            if let Some(o) = allow {
                self.headers(&mut resp, o);
            }
            return resp;
        }
        let mut resp = match check(st, &mut req, scope) {
            Ok(()) => {
                if strip_token {
                    if let Some(uri) = without_token(req.uri()) {
                        *req.uri_mut() = uri;
                    }
                }
                next.run(req).await
            }
            Err(e) => e.into_response(),
        };
        if let Some(o) = allow {
            self.headers(&mut resp, o);
        }
        resp
    }
}

/// The handler of `OPTIONS` on a guarded route; [`Cors::guard`] answers
/// preflights before it, so it only makes `OPTIONS` a route's method (and
/// its `Allow` header say so).
pub async fn preflight() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// Middleware of the query endpoints: CORS for `query.cors_origins`, then
/// a token with the `read` scope; the `token` parameter is removed.
pub async fn read(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let cors = Cors {
        origins: &st.queries.cfg.cors_origins,
        max_age_secs: st.queries.cfg.cors_max_age_secs,
        methods: "GET, OPTIONS",
        expose: "retry-after, x-flowmeter-truncated, x-flowmeter-cursor",
        refuse: None,
    };
    cors.guard(&st, Scope::Read, true, req, next).await
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

/// Middleware of `/v1/events`: origin (`ingest.cors_origins`; others are
/// refused before the body is read), preflight, then a token with the
/// `ingest` scope.
pub async fn ingest(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let cors = Cors {
        origins: &st.ingest.cors_origins,
        max_age_secs: st.ingest.cors_max_age_secs,
        methods: "POST, OPTIONS",
        expose: "retry-after",
        refuse: Some(("send events", "ingest.cors_origins")),
    };
    cors.guard(&st, Scope::Ingest, false, req, next).await
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
