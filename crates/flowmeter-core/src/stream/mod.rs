//! Redis Streams: every key name, the connection (TLS), the producer
//! (idempotent and behind backpressure for ingest), and the memory-pressure
//! figures ([`pressure`]). The server adds fenced consumer-group reads and
//! shard leases (`flowmeter::stream`).
//!
//! Layout: kind `K` goes to `S` shard streams `{prefix}:{K:0}` …
//! `{prefix}:{K:S-1}`. The braces are a Redis Cluster hash tag; every key that
//! belongs to one shard (its lease, the idempotency records of requests whose
//! home it is) carries the same tag, so scripts touching a shard and its
//! lease stay in one slot. Entries have the fields `kind`, `v`
//! and `data` (the event JSON), readable by any Redis client.

mod keys;
pub mod pressure;
mod producer;
pub mod resp;
mod tls;

use std::time::Duration;

pub use keys::{Keys, Shard};
pub use producer::{Idempotency, Producer, SubmitError, Submitted};
pub use tls::RedisTls;

/// Errors talking to Redis. `retryable()` tells callers whether waiting helps.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
    /// The first connection failed (refused, unreachable, no answer, a
    /// password Redis refused): names the URL tried, password masked.
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    /// The TLS settings cannot work as they are (a file missing or not
    /// PEM, TLS files with a plain URL): fix `[redis]`.
    #[error("TLS to Redis: {0}")]
    TlsConfig(String),
    /// The TLS handshake failed (or a plain client met a TLS port): the
    /// reason names the setting to fix.
    #[error("TLS handshake with Redis failed: {reason}")]
    TlsHandshake { reason: String },
}

impl StreamError {
    /// Whether the same call may succeed later (connection trouble, timeouts).
    pub fn retryable(&self) -> bool {
        match self {
            StreamError::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    || matches!(
                        e.kind(),
                        redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
                    )
            }
            StreamError::Timeout(_) | StreamError::Connect { .. } => true,
            StreamError::Protocol(_)
            | StreamError::TlsConfig(_)
            | StreamError::TlsHandshake { .. } => false,
        }
    }
}

/// A Redis connection that reconnects by itself, plus the per-call timeout.
#[derive(Clone)]
pub struct Redis {
    pub conn: redis::aio::ConnectionManager,
    pub timeout: Duration,
}

impl Redis {
    /// Connects to `url` (`redis://`, or `rediss://` with the system's trust store).
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, StreamError> {
        Self::connect_with(url, &RedisTls::default(), timeout).await
    }

    /// Connects (the first connection must succeed, so misconfiguration
    /// shows at start). `rediss://` URLs use TLS with `tls`'s files; every
    /// Redis connection of flowmeter is made here.
    pub async fn connect_with(
        url: &str,
        tls: &RedisTls,
        timeout: Duration,
    ) -> Result<Self, StreamError> {
        let client = tls::client(url, tls)?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = tokio::time::timeout(
            timeout,
            redis::aio::ConnectionManager::new_with_config(client, cfg),
        )
        .await
        .map_err(|_| StreamError::Timeout(timeout))
        .and_then(|r| r.map_err(|e| tls::explain_connect_error(url, tls, e)))
        .map_err(|e| match e {
            StreamError::Redis(e) => StreamError::Connect {
                url: crate::mask_url(url),
                reason: e.to_string(),
            },
            StreamError::Timeout(t) => StreamError::Connect {
                url: crate::mask_url(url),
                reason: format!("no answer within {t:?}"),
            },
            other => other,
        })?;
        Ok(Self { conn, timeout })
    }

    /// Runs one command or pipeline future under the timeout.
    pub async fn run<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StreamError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(StreamError::Timeout(self.timeout)),
        }
    }
}

/// `XINFO <what> <key>` (`STREAM` or `GROUPS`); `None` when the stream does not exist.
pub async fn xinfo(
    redis: &Redis,
    what: &str,
    key: &str,
) -> Result<Option<redis::Value>, StreamError> {
    let mut conn = redis.conn.clone();
    match redis
        .run(
            redis::cmd("XINFO")
                .arg(what)
                .arg(key)
                .query_async(&mut conn),
        )
        .await
    {
        Ok(v) => Ok(Some(v)),
        Err(StreamError::Redis(e)) if e.to_string().contains("no such key") => Ok(None),
        Err(e) => Err(e),
    }
}
