//! The HTTP server: accepts connections itself so that no client, however
//! slow or however many, can hold it (`[server]`, docs/security.md).
//!
//! - at most `max_connections` connections, HTTP and WebSocket together:
//!   each holds a semaphore slot inside its socket, so the slot is given
//!   back when the socket closes — after the answer, after a WebSocket that
//!   was upgraded from it ends, on error, on panic;
//! - `header_read_timeout_ms`: a connection must finish its TLS handshake
//!   and deliver a request's headers this soon after opening, and the next
//!   request's headers this soon after the previous answer;
//! - `body_idle_timeout_ms` between two chunks of a request body;
//! - `request_timeout_ms` from a request's headers to the last byte of its
//!   answer (a WebSocket, once upgraded, is no longer a request) — except
//!   that a handler past [`Uninterruptible::begin`] (an ingest write sent
//!   to Redis) is let finish: a 408 would hide that the write may have
//!   happened;
//! - `max_header_bytes` per request head;
//! - HTTP/1.1 and HTTP/2 (ALPN over TLS, prior knowledge without), TLS with
//!   rustls when `[server.tls]` names a certificate and key.
//!
//! Handlers get the peer address as `ConnectInfo<SocketAddr>`. On shutdown
//! the listener closes at once and open connections finish their requests.

mod conn;
mod tls;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServerConfig;
use crate::telemetry::metrics;

/// Why the server cannot start; the operator must fix the config or files
/// (nothing here is worth retrying).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("server.tls: cannot read {path}: {source}")]
    TlsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("server.tls: {path} holds no {what} in PEM")]
    TlsPem { path: PathBuf, what: &'static str },
    #[error("server.tls: the certificate and key do not make a TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// A request extension: once a handler calls [`Uninterruptible::begin`],
/// `server.request_timeout_ms` no longer cuts it and its own answer is sent,
/// however late. For work whose outcome a timeout answer would hide (the
/// ingest write: begun, it may land whatever the client is told); such work
/// must be bounded by a timeout of its own (the Redis command timeout).
#[derive(Clone, Debug, Default)]
pub struct Uninterruptible(Arc<AtomicBool>);

impl Uninterruptible {
    /// From now on the request is not cut at its deadline.
    pub fn begin(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn begun(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The limits of `[server]`, as durations.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub body_idle_timeout: Duration,
    pub request_timeout: Duration,
    pub max_header_bytes: usize,
}

impl From<&ServerConfig> for Limits {
    fn from(c: &ServerConfig) -> Self {
        Self {
            max_connections: c.max_connections.max(1),
            header_read_timeout: Duration::from_millis(c.header_read_timeout_ms.max(1)),
            body_idle_timeout: Duration::from_millis(c.body_idle_timeout_ms.max(1)),
            request_timeout: Duration::from_millis(c.request_timeout_ms.max(1)),
            // hyper refuses read buffers under 8 KiB
            max_header_bytes: c.max_header_bytes.clamp(8_192, u32::MAX as usize),
        }
    }
}

/// Open connections of one server and the most there were at once
/// (WebSockets included until they close).
#[derive(Debug, Default)]
pub struct ServerStats {
    open: AtomicUsize,
    peak: AtomicUsize,
}

impl ServerStats {
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
}

/// One connection's place under `max_connections`, given back on drop.
struct Slot {
    _permit: OwnedSemaphorePermit,
    stats: Arc<ServerStats>,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, stats: Arc<ServerStats>) -> Self {
        let now = stats.open.fetch_add(1, Ordering::Relaxed) + 1;
        stats.peak.fetch_max(now, Ordering::Relaxed);
        metrics::HTTP_CONNECTIONS_OPENED.inc();
        Self {
            _permit: permit,
            stats,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
        metrics::HTTP_CONNECTIONS_CLOSED.inc();
    }
}

/// The server of `[server]`: limits, optional TLS, figures.
pub struct HttpServer {
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stats: Arc<ServerStats>,
}

/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop
/// does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// At most one "connection cap reached" warning per this long.
const CAP_WARNING_EVERY: Duration = Duration::from_secs(10);

impl HttpServer {
    /// Reads the TLS certificate and key when configured.
    pub fn new(cfg: &ServerConfig) -> Result<Self, ServerError> {
        Ok(Self {
            limits: Limits::from(cfg),
            tls: tls::acceptor(&cfg.tls)?,
            stats: Arc::default(),
        })
    }

    /// Whether connections speak TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn stats(&self) -> Arc<ServerStats> {
        self.stats.clone()
    }

    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut b = auto::Builder::new(TokioExecutor::new());
        b.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .max_buf_size(self.limits.max_header_bytes);
        b.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.limits.max_header_bytes).unwrap_or(u32::MAX));
        b
    }

    /// Serves `app` on `listener` until `shutdown` is cancelled, then closes
    /// the listener and waits for open connections to finish their requests.
    pub async fn run(self, listener: TcpListener, app: Router, shutdown: CancellationToken) {
        let ctx = Arc::new(conn::Ctx {
            builder: self.builder(),
            app,
            limits: self.limits.clone(),
            tls: self.tls.clone(),
        });
        let slots = Arc::new(Semaphore::new(self.limits.max_connections));
        let conns = TaskTracker::new();
        let mut warned: Option<Instant> = None;
        loop {
            if slots.available_permits() == 0 {
                metrics::HTTP_CONNECTION_CAP_WAITS.inc();
                if warned.is_none_or(|t| t.elapsed() > CAP_WARNING_EVERY) {
                    warned = Some(Instant::now());
                    tracing::warn!(
                        max = self.limits.max_connections,
                        "server.max_connections reached: new connections wait until one closes"
                    );
                }
            }
            let permit = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break, // never closed
                },
            };
            let (tcp, remote) = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                        }
                    }
                },
            };
            let slot = Slot::new(permit, self.stats.clone());
            conns.spawn(conn::serve(
                tcp,
                remote,
                slot,
                ctx.clone(),
                shutdown.clone(),
            ));
        }
        drop(listener);
        conns.close();
        conns.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_config() {
        let mut c = ServerConfig::default();
        let l = Limits::from(&c);
        assert_eq!(l.header_read_timeout, Duration::from_secs(10));
        assert_eq!(l.max_connections, 16_384);
        c.max_header_bytes = 10;
        c.max_connections = 0;
        let l = Limits::from(&c);
        assert_eq!(l.max_header_bytes, 8_192, "hyper's floor");
        assert_eq!(l.max_connections, 1);
    }

    #[tokio::test]
    async fn slots_are_counted_and_given_back() {
        let stats = Arc::new(ServerStats::default());
        let sem = Arc::new(Semaphore::new(2));
        let a = Slot::new(
            sem.clone().acquire_owned().await.expect("permit"),
            stats.clone(),
        );
        let b = Slot::new(
            sem.clone().acquire_owned().await.expect("permit"),
            stats.clone(),
        );
        assert_eq!(
            (stats.open(), stats.peak(), sem.available_permits()),
            (2, 2, 0)
        );
        drop(a);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _held = b;
            panic!("a handler panics");
        }));
        assert!(panicked.is_err());
        assert_eq!(
            (stats.open(), stats.peak(), sem.available_permits()),
            (0, 2, 2)
        );
    }
}
