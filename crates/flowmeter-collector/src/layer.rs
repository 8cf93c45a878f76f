//! The tower layer: wraps the request body to count what the service reads,
//! and the response body to count what it hands to the connection; the event
//! is recorded when the response body ends or is dropped (client abort).
//!
//! Header bytes are computed as HTTP/1.1 writes them: the request line and
//! headers as received; the status line, the headers the service set, and
//! the ones hyper adds itself (`date`, and `content-length` or
//! `transfer-encoding: chunked` with its per-chunk framing). Over HTTP/2 the
//! real header bytes are smaller (HPACK); body bytes are exact either way.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Buf;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::{Collector, CollectorConfig, CollectorError, HttpRecord};

/// Set by a handler (as a response extension) to name the user of the
/// request; takes precedence over `user_header`.
#[derive(Debug, Clone)]
pub struct UserId(pub String);

/// Adds the collector to a service: `.layer(MetricsLayer::new(config)?)`.
#[derive(Clone)]
pub struct MetricsLayer {
    collector: Collector,
    unmatched: Arc<str>,
}

impl MetricsLayer {
    /// Starts the collector's sender task (inside a tokio runtime).
    pub fn new(config: CollectorConfig) -> Result<Self, CollectorError> {
        Ok(Self::with_collector(Collector::start(config)?))
    }

    /// A layer over an existing collector (several routers, one collector).
    pub fn with_collector(collector: Collector) -> Self {
        let unmatched = Arc::from(collector.config().unmatched_endpoint.as_str());
        Self {
            collector,
            unmatched,
        }
    }

    /// The collector: stats and shutdown.
    pub fn collector(&self) -> &Collector {
        &self.collector
    }
}

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service produced by [`MetricsLayer`].
#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    layer: MetricsLayer,
}

/// What is known of a request before its response ends.
struct Pending {
    collector: Collector,
    start: Instant,
    endpoint: Arc<str>,
    method: Method,
    req_header_bytes: u64,
    req_bytes: Arc<AtomicU64>,
    user_id: Option<String>,
}

impl<S, ReqB, ResB> tower::Service<Request<ReqB>> for MetricsService<S>
where
    S: tower::Service<Request<RequestBody<ReqB>>, Response = Response<ResB>>,
    ReqB: Body,
    ResB: Body,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let start = Instant::now();
        let endpoint = route_template(&req).unwrap_or_else(|| self.layer.unmatched.clone());
        let cfg = self.layer.collector.config();
        let user_id = cfg
            .user_header
            .as_deref()
            .and_then(|h| req.headers().get(h))
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .map(str::to_string);
        let req_header_bytes = request_head_bytes(&req);
        let req_bytes = Arc::new(AtomicU64::new(0));
        let pending = Pending {
            collector: self.layer.collector.clone(),
            start,
            endpoint,
            method: req.method().clone(),
            req_header_bytes,
            req_bytes: req_bytes.clone(),
            user_id,
        };
        let req = req.map(|inner| RequestBody {
            inner,
            read: req_bytes,
        });
        ResponseFuture {
            inner: self.inner.call(req),
            pending: Some(pending),
        }
    }
}

pin_project! {
    /// Future of [`MetricsService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        pending: Option<Pending>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = match this.inner.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => r,
        };
        let Some(mut pending) = this.pending.take() else {
            // polled after completion: pass through without recording
            return Poll::Ready(res.map(|r| r.map(ResponseBody::passthrough)));
        };
        match res {
            Ok(resp) => {
                if let Some(UserId(u)) = resp.extensions().get::<UserId>() {
                    pending.user_id = Some(u.clone());
                }
                let head_only = pending.method == Method::HEAD;
                let status = resp.status();
                let (parts, body) = resp.into_parts();
                let (head, chunked) =
                    response_head_bytes(status, &parts.headers, body.size_hint(), head_only);
                let body = ResponseBody {
                    inner: body,
                    state: Some(Counting {
                        pending,
                        status: status.as_u16(),
                        head,
                        chunked: chunked && !head_only,
                        sent: 0,
                        framing: 0,
                    }),
                };
                Poll::Ready(Ok(Response::from_parts(parts, body)))
            }
            Err(e) => {
                // The service failed: the connection gets no response from
                // us; record it as a 500 with what was read.
                Counting {
                    pending,
                    status: 500,
                    head: 0,
                    chunked: false,
                    sent: 0,
                    framing: 0,
                }
                .finish();
                Poll::Ready(Err(e))
            }
        }
    }
}

pin_project! {
    /// The request body, counting the bytes the service reads.
    pub struct RequestBody<B> {
        #[pin]
        inner: B,
        read: Arc<AtomicU64>,
    }
}

impl<B: Body> Body for RequestBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r {
            if let Some(d) = f.data_ref() {
                this.read.fetch_add(d.remaining() as u64, Ordering::Relaxed);
            }
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

struct Counting {
    pending: Pending,
    status: u16,
    head: u64,
    chunked: bool,
    sent: u64,
    framing: u64,
}

impl Counting {
    fn finish(self) {
        let p = self.pending;
        let ts_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        p.collector.record(HttpRecord {
            ts_ms,
            endpoint: p.endpoint,
            method: p.method,
            status: self.status,
            req_bytes: p.req_bytes.load(Ordering::Relaxed),
            resp_bytes: self.sent,
            req_header_bytes: p.req_header_bytes,
            resp_header_bytes: self.head + self.framing,
            duration_ms: p.start.elapsed().as_secs_f64() * 1000.0,
            user_id: p.user_id,
        });
    }
}

pin_project! {
    /// The response body, counting the bytes handed to the connection; records
    /// the event when it ends or is dropped.
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        state: Option<Counting>,
    }
    impl<B> PinnedDrop for ResponseBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(c) = this.project().state.take() {
                c.finish();
            }
        }
    }
}

impl<B> ResponseBody<B> {
    fn passthrough(inner: B) -> Self {
        Self { inner, state: None }
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let r = this.inner.as_mut().poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let (Some(d), Some(c)) = (f.data_ref(), this.state.as_mut()) {
                    let n = d.remaining() as u64;
                    c.sent += n;
                    if c.chunked && n > 0 {
                        // "{len:x}\r\n" … "\r\n"
                        c.framing += hex_len(n) + 4;
                    }
                }
                if this.inner.is_end_stream() {
                    finish(this.state);
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => finish(this.state),
            Poll::Pending => {}
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn finish(state: &mut Option<Counting>) {
    if let Some(mut c) = state.take() {
        if c.chunked {
            c.framing += 5; // "0\r\n\r\n"
        }
        c.finish();
    }
}

/// The route template the router matched (axum's `MatchedPath`).
#[cfg(feature = "axum")]
fn route_template<B>(req: &Request<B>) -> Option<Arc<str>> {
    req.extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| Arc::from(p.as_str()))
}

/// Without axum no router says which route matched.
#[cfg(not(feature = "axum"))]
fn route_template<B>(_req: &Request<B>) -> Option<Arc<str>> {
    None
}

fn hex_len(n: u64) -> u64 {
    u64::from((64 - n.leading_zeros()).div_ceil(4).max(1))
}

fn headers_bytes(h: &HeaderMap) -> u64 {
    h.iter()
        .map(|(k, v)| (k.as_str().len() + v.len() + 4) as u64)
        .sum()
}

/// `METHOD target HTTP/1.1\r\n`, the headers, and the blank line.
fn request_head_bytes<B>(req: &Request<B>) -> u64 {
    let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    (req.method().as_str().len() + 1 + target + 11) as u64 + headers_bytes(req.headers()) + 2
}

/// The response head as hyper writes it, and whether the body goes chunked.
fn response_head_bytes(
    status: StatusCode,
    headers: &HeaderMap,
    hint: SizeHint,
    head_only: bool,
) -> (u64, bool) {
    // "HTTP/1.1 200 OK\r\n"
    let reason = status.canonical_reason().map_or(0, |r| r.len() + 1);
    let mut n = (9 + 3 + reason + 2) as u64 + headers_bytes(headers) + 2;
    if !headers.contains_key(http::header::DATE) {
        n += 37; // "date: Sun, 23 Nov 2026 10:00:00 GMT\r\n"
    }
    let bodyless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut chunked = false;
    if !bodyless
        && !headers.contains_key(http::header::CONTENT_LENGTH)
        && !headers.contains_key(http::header::TRANSFER_ENCODING)
    {
        match hint.exact() {
            Some(len) => n += 18 + len.to_string().len() as u64, // "content-length: N\r\n"
            None if head_only => {}
            None => {
                n += 28; // "transfer-encoding: chunked\r\n"
                chunked = true;
            }
        }
    }
    (n, chunked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_lengths() {
        assert_eq!(hex_len(1), 1);
        assert_eq!(hex_len(15), 1);
        assert_eq!(hex_len(16), 2);
        assert_eq!(hex_len(4096), 4);
        assert_eq!(hex_len(0xffff), 4);
    }

    #[test]
    fn response_heads() {
        let mut h = HeaderMap::new();
        h.insert("content-type", "text/plain".parse().expect("value"));
        // "HTTP/1.1 200 OK\r\n" 17 + "content-type: text/plain\r\n" 26
        // + date 37 + "content-length: 5\r\n" 19 + "\r\n" 2
        let (n, chunked) = response_head_bytes(StatusCode::OK, &h, SizeHint::with_exact(5), false);
        assert_eq!((n, chunked), (17 + 26 + 37 + 19 + 2, false));
        let (_, chunked) = response_head_bytes(StatusCode::OK, &h, SizeHint::default(), false);
        assert!(chunked);
        let (_, chunked) =
            response_head_bytes(StatusCode::NOT_MODIFIED, &h, SizeHint::default(), false);
        assert!(!chunked);
    }
}
