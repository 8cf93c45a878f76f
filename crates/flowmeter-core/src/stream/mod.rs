//! Redis Streams: every key name, the connection (TLS), the producer
//! (idempotent and behind backpressure for ingest), the memory-pressure
//! figures ([`pressure`]), and `WAIT` for replicas ([`replication`]). The server adds fenced consumer-group reads and
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
pub mod replication;
pub mod resp;
mod tls;

use std::time::Duration;

pub use keys::{Keys, Shard};
pub use producer::{Idempotency, Producer, SubmitError, Submitted};
pub use replication::WaitReplicas;
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

/// A connection to one Redis server (reconnecting by itself) or to a Redis
/// Cluster (routing each command by its key's slot, following MOVED and
/// ASK). Both are used the same way (`query_async(&mut conn)`); clones
/// share the connection.
#[derive(Clone)]
pub enum Conn {
    Single(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A Redis connection (one server or a cluster), plus the per-call timeout.
#[derive(Clone)]
pub struct Redis {
    pub conn: Conn,
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
        Ok(Self {
            conn: Conn::Single(conn),
            timeout,
        })
    }

    /// Connects to the Redis Cluster that `nodes` (any of its nodes; more
    /// than one in case some are down) belong to. The first connection
    /// must succeed. Each command goes to the node owning its key's slot;
    /// MOVED and ASK redirects are followed, TRYAGAIN and CLUSTERDOWN
    /// retried (`redis-rs`'s cluster client). TLS (`rediss://`) is not
    /// supported on a cluster yet.
    pub async fn connect_cluster(nodes: &[String], timeout: Duration) -> Result<Self, StreamError> {
        let shown = nodes
            .iter()
            .map(|n| crate::mask_url(n))
            .collect::<Vec<_>>()
            .join(", ");
        let bad = |reason: String| StreamError::Connect {
            url: shown.clone(),
            reason,
        };
        if nodes.is_empty() {
            return Err(bad("no cluster node to connect to".into()));
        }
        if nodes.iter().any(|n| n.starts_with("rediss://")) {
            return Err(bad(
                "TLS (rediss://) is not supported with redis.cluster yet: use redis:// on a private network".into(),
            ));
        }
        let client = redis::cluster::ClusterClient::builder(nodes.to_vec())
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(4)
            .max_retry_wait(500)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        // `get_async_connection` can hang on a node that accepts and never
        // answers: bounded here
        let conn = tokio::time::timeout(timeout, client.get_async_connection())
            .await
            .map_err(|_| bad(format!("no answer within {timeout:?}")))?
            .map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            conn: Conn::Cluster(conn),
            timeout,
        })
    }

    /// Whether this is a Redis Cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
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
