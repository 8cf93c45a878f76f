//! One connection: its socket (holding the connection slot), the watchdog
//! that closes it when no request arrives in time, and the per-request
//! deadlines on the request body and the answer.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use http::Request;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use super::{Limits, Slot, Uninterruptible};
use crate::api::ApiError;
use crate::telemetry::metrics;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What every connection of a server shares.
pub(super) struct Ctx {
    pub builder: auto::Builder<TokioExecutor>,
    pub app: Router,
    pub limits: Limits,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Serves one accepted connection to its end.
pub(super) async fn serve(
    tcp: TcpStream,
    remote: SocketAddr,
    slot: Slot,
    ctx: Arc<Ctx>,
    shutdown: CancellationToken,
) {
    let limits = &ctx.limits;
    let opened = Instant::now();
    let _ = tcp.set_nodelay(true);
    let io = match &ctx.tls {
        None => Either::Left(tcp),
        Some(acceptor) => {
            match super::tls::accept(acceptor, tcp, opened + limits.header_read_timeout).await {
                Some(s) => Either::Right(s),
                None => return,
            }
        }
    };
    // The slot lives in the socket: an upgraded WebSocket takes the socket
    // over, so it holds the slot until it closes.
    let io = SlotIo { io, _slot: slot };
    let activity = Arc::new(Activity::new(opened));
    let service = ConnService {
        app: ctx.app.clone(),
        remote,
        limits: limits.clone(),
        activity: activity.clone(),
    };
    let conn = ctx
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    // Once closing, how long the connection may take to wind down.
    let mut closing: Option<Instant> = None;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    // a timeout after the watchdog's is the same one, counted
                    note_error(&*e, remote, closing.is_none());
                }
                break;
            }
            () = activity.idle_for(limits.header_read_timeout), if closing.is_none() => {
                metrics::HTTP_HEADER_TIMEOUTS.inc();
                tracing::debug!(%remote, "no request within server.header_read_timeout_ms: closing");
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now() + limits.header_read_timeout);
            }
            () = shutdown.cancelled(), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now() + limits.request_timeout);
            }
            () = tokio::time::sleep_until(closing.unwrap_or(opened)), if closing.is_some() => break,
        }
    }
}

/// Logs a connection's end by error; a header timeout is counted when `count`.
fn note_error(e: &(dyn std::error::Error + 'static), remote: SocketAddr, count: bool) {
    let timeout = e
        .downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_timeout);
    if timeout && count {
        metrics::HTTP_HEADER_TIMEOUTS.inc();
    }
    tracing::debug!(%remote, error = %e, "connection ended with an error");
}

/// The socket and the connection's slot.
struct SlotIo {
    io: Either<TcpStream, TlsStream<TcpStream>>,
    _slot: Slot,
}

impl AsyncRead for SlotIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for SlotIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Requests in flight on a connection and since when it has had none.
struct Activity {
    state: Mutex<(usize, Instant)>,
    changed: Notify,
}

impl Activity {
    fn new(now: Instant) -> Self {
        Self {
            state: Mutex::new((0, now)),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, Instant)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks a request in flight until the guard drops (its answer sent).
    fn start(self: &Arc<Self>) -> InFlight {
        self.lock().0 += 1;
        self.changed.notify_waiters();
        InFlight(self.clone())
    }

    /// Resolves once the connection has had no request in flight for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let (in_flight, since) = *self.lock();
            if in_flight > 0 {
                changed.await;
                continue;
            }
            let deadline = since + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = changed => {}
            }
        }
    }
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        {
            let mut s = self.0.lock();
            s.0 = s.0.saturating_sub(1);
            if s.0 == 0 {
                s.1 = Instant::now();
            }
        }
        self.0.changed.notify_waiters();
    }
}

/// The hyper service of one connection: the router, with the peer address,
/// the body idle timeout and the whole-request deadline.
#[derive(Clone)]
struct ConnService {
    app: Router,
    remote: SocketAddr,
    limits: Limits,
    activity: Arc<Activity>,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<DeadlineBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.start();
        let deadline = Instant::now() + self.limits.request_timeout;
        let idle = self.limits.body_idle_timeout;
        let mut req = req.map(|b| Body::new(IdleBody::new(b, idle)));
        req.extensions_mut().insert(ConnectInfo(self.remote));
        let uninterruptible = Uninterruptible::default();
        req.extensions_mut().insert(uninterruptible.clone());
        let mut app = self.app.clone();
        let limit = self.limits.request_timeout;
        Box::pin(async move {
            let answer = tower::Service::call(&mut app, req);
            tokio::pin!(answer);
            let resp = match tokio::time::timeout_at(deadline, answer.as_mut()).await {
                Ok(Ok(r)) => r,
                Ok(Err(never)) => match never {},
                Err(_) if uninterruptible.begun() => {
                    metrics::INGEST_WRITES_PAST_DEADLINE.inc();
                    tracing::debug!("request past server.request_timeout_ms: its write has begun, letting it finish");
                    match answer.await {
                        Ok(r) => r,
                        Err(never) => match never {},
                    }
                }
                Err(_) => {
                    metrics::HTTP_REQUEST_TIMEOUTS.inc();
                    ApiError::RequestTimeout {
                        limit_ms: limit.as_millis().try_into().unwrap_or(u64::MAX),
                    }
                    .into_response()
                }
            };
            Ok(resp.map(|body| DeadlineBody::new(body, deadline, in_flight)))
        })
    }
}

/// A request body has not sent anything for `server.body_idle_timeout_ms`.
#[derive(Debug, thiserror::Error)]
#[error("no request body data for {ms} ms (server.body_idle_timeout_ms)")]
pub struct BodyIdle {
    ms: u128,
}

/// An answer was still being sent at the request's deadline.
#[derive(Debug, thiserror::Error)]
#[error("answer not sent within server.request_timeout_ms")]
pub struct AnswerTimeout;

pin_project_lite::pin_project! {
    /// A request body that fails when no data arrives for `idle` while it is
    /// being read.
    struct IdleBody {
        #[pin]
        inner: Incoming,
        #[pin]
        timer: Sleep,
        idle: Duration,
        armed: bool,
    }
}

impl IdleBody {
    fn new(inner: Incoming, idle: Duration) -> Self {
        Self {
            inner,
            timer: tokio::time::sleep(idle),
            idle,
            armed: false,
        }
    }
}

impl HttpBody for IdleBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            *this.armed = false;
            return Poll::Ready(frame.map(|f| f.map_err(BoxError::from)));
        }
        if !*this.armed {
            *this.armed = true;
            this.timer.as_mut().reset(Instant::now() + *this.idle);
        }
        if this.timer.poll(cx).is_ready() {
            metrics::HTTP_BODY_TIMEOUTS.inc();
            let ms = this.idle.as_millis();
            return Poll::Ready(Some(Err(BodyIdle { ms }.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// An answer that fails at the request's deadline, and marks the request
    /// done when it is dropped.
    pub(super) struct DeadlineBody {
        #[pin]
        inner: Body,
        #[pin]
        deadline: Sleep,
        in_flight: InFlight,
    }
}

impl DeadlineBody {
    fn new(inner: Body, deadline: Instant, in_flight: InFlight) -> Self {
        Self {
            inner,
            deadline: tokio::time::sleep_until(deadline),
            in_flight,
        }
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(BoxError::from)));
        }
        if this.deadline.poll(cx).is_ready() {
            metrics::HTTP_REQUEST_TIMEOUTS.inc();
            return Poll::Ready(Some(Err(AnswerTimeout.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_counts_from_the_last_answer() {
        let a = Arc::new(Activity::new(Instant::now()));
        let limit = Duration::from_millis(50);
        let bound = Duration::from_secs(10);
        // no request: idle from the start
        assert!(tokio::time::timeout(bound, a.idle_for(limit)).await.is_ok());
        // a request in flight is never idle, however long it takes
        let req = a.start();
        let waited = tokio::time::timeout(limit * 6, a.idle_for(limit)).await;
        assert!(waited.is_err(), "idle while a request was in flight");
        let since = Instant::now();
        drop(req);
        assert!(tokio::time::timeout(bound, a.idle_for(limit)).await.is_ok());
        assert!(since.elapsed() >= limit, "idle counts from the answer");
    }
}
