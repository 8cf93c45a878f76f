//! Redis Streams: every key name, the connection (TLS), the producer
//! (idempotent and behind backpressure for ingest), the memory-pressure
//! figures ([`pressure`]), and `WAIT` for replicas ([`replication`]). The server adds fenced consumer-group reads and
//! shard leases (`flowmeter::stream`).
//!
//! Layout: kind `K` goes to `S` shard streams `{prefix}:{K:0}` …
//! `{prefix}:{K:S-1}` (and, after the shard count was changed live, to
//! the streams of a later shard set: [`layout`]). The braces are a Redis Cluster hash tag; every key that
//! belongs to one shard (its lease, the idempotency records of requests whose
//! home it is) carries the same tag, so scripts touching a shard and its
//! lease stay in one slot. Entries have the fields `kind`, `v`
//! and `data` (the event JSON), readable by any Redis client.

mod keys;
pub mod layout;
pub mod pressure;
mod producer;
pub mod replication;
pub mod resp;
mod tls;

use std::time::Duration;

pub use keys::{Keys, Shard};
pub use layout::{Layout, SetState, ShardSet};
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
    /// The first connection failed (refused, unreachable, no answer):
    /// names the URL tried, password masked. Worth retrying.
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    /// Redis refused the credentials of the URL (a wrong password or
    /// user, or a user without the permission): fix `redis.url`; retrying
    /// cannot help.
    #[error("Redis at {url} refused the credentials: {reason} (check the user and password in redis.url)")]
    Auth { url: String, reason: String },
    /// The connection settings cannot work as they are (no cluster node,
    /// `rediss://` with `redis.cluster`, a node list the client refuses):
    /// fix `[redis]`; retrying cannot help.
    #[error("redis settings for {url}: {reason} (fix [redis])")]
    Config { url: String, reason: String },
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
            | StreamError::Auth { .. }
            | StreamError::Config { .. }
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

/// Whether Redis refused the client's credentials (AUTH failed, or the
/// user may not run what it was asked), as opposed to not being reachable.
fn refused_credentials(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
}

/// The shortest wait before a retry of the cluster client (ms). The waits
/// grow as 10·2^n ms (jittered, from this) up to
/// [`ClusterRetry::max_wait`]; redis-rs' own floor (1280 ms) would make
/// every wait 1.28 s whatever the maximum.
pub const CLUSTER_MIN_RETRY_WAIT_MS: u64 = 10;

/// How a Redis Cluster connection retries (`redis.cluster_retries`,
/// `redis.cluster_max_retry_wait_ms`). The cluster client retries one
/// command after TRYAGAIN, CLUSTERDOWN, LOADING or a lost node connection
/// (MOVED and ASK are followed at once, within the same budget); a
/// transaction aborted by a redirect is retried by
/// [`Redis::transaction`] with the same bounds. Every call stays within
/// `redis.command_timeout_ms` overall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterRetry {
    /// Retries of one command or transaction.
    pub retries: u32,
    /// Longest wait between two retries.
    pub max_wait: Duration,
}

impl Default for ClusterRetry {
    fn default() -> Self {
        Self {
            retries: 4,
            max_wait: Duration::from_millis(500),
        }
    }
}

impl ClusterRetry {
    /// The wait before retry `n` (1-based): up to 10·2^n ms, at most
    /// `max_wait`, jittered from [`CLUSTER_MIN_RETRY_WAIT_MS`] (the cluster
    /// client's formula, with this crate's floor).
    fn wait(&self, n: u32) -> Duration {
        let max = u64::try_from(self.max_wait.as_millis()).unwrap_or(u64::MAX);
        let upper = 2u64
            .saturating_pow(n)
            .saturating_mul(10)
            .min(max)
            .max(CLUSTER_MIN_RETRY_WAIT_MS + 1);
        Duration::from_millis(rand_between(CLUSTER_MIN_RETRY_WAIT_MS, upper))
    }
}

/// A number in `[lo, hi)` from the clock's nanoseconds: enough jitter to
/// spread retries, no random-number dependency.
fn rand_between(lo: u64, hi: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    lo + nanos % hi.saturating_sub(lo).max(1)
}

/// A Redis connection (one server or a cluster), plus the per-call timeout.
#[derive(Clone)]
pub struct Redis {
    pub conn: Conn,
    pub timeout: Duration,
    /// The retries of a cluster connection (unused on one server).
    retry: ClusterRetry,
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
            StreamError::Redis(e) if refused_credentials(&e) => StreamError::Auth {
                url: crate::mask_url(url),
                reason: e.to_string(),
            },
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
            retry: ClusterRetry::default(),
        })
    }

    /// Connects to the Redis Cluster that `nodes` (any of its nodes; more
    /// than one in case some are down) belong to. The first connection
    /// must succeed. Each command goes to the node owning its key's slot;
    /// MOVED and ASK redirects are followed, TRYAGAIN and CLUSTERDOWN
    /// retried (`redis-rs`'s cluster client) as `retry` says. TLS
    /// (`rediss://`) is not supported on a cluster yet.
    ///
    /// `timeout` bounds connecting, each attempt of a command, and a
    /// command with all its retries. flowmeter sends no blocking command
    /// (no `XREAD … BLOCK`: the hub and the rollup poll), so no answer
    /// legitimately takes longer, and a blocked read can never make the
    /// client abandon a `>` read and strand its entries as pending.
    pub async fn connect_cluster(
        nodes: &[String],
        timeout: Duration,
        retry: ClusterRetry,
    ) -> Result<Self, StreamError> {
        let shown = nodes
            .iter()
            .map(|n| crate::mask_url(n))
            .collect::<Vec<_>>()
            .join(", ");
        let bad = |reason: String| StreamError::Connect {
            url: shown.clone(),
            reason,
        };
        let config = |reason: String| StreamError::Config {
            url: shown.clone(),
            reason,
        };
        if nodes.is_empty() {
            return Err(config("no cluster node to connect to".into()));
        }
        if nodes.iter().any(|n| n.starts_with("rediss://")) {
            return Err(config(
                "TLS (rediss://) is not supported with redis.cluster yet: use redis:// on a private network".into(),
            ));
        }
        let client = redis::cluster::ClusterClient::builder(nodes.to_vec())
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .overall_response_timeout(Some(timeout))
            .retries(retry.retries)
            .min_retry_wait(CLUSTER_MIN_RETRY_WAIT_MS)
            .max_retry_wait(
                u64::try_from(retry.max_wait.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(CLUSTER_MIN_RETRY_WAIT_MS + 1),
            )
            .build()
            .map_err(|e| config(e.to_string()))?;
        // `get_async_connection` can hang on a node that accepts and never
        // answers: bounded here
        let conn = tokio::time::timeout(timeout, client.get_async_connection())
            .await
            .map_err(|_| bad(format!("no answer within {timeout:?}")))?
            .map_err(|e| match refused_credentials(&e) {
                true => StreamError::Auth {
                    url: shown.clone(),
                    reason: e.to_string(),
                },
                false => bad(e.to_string()),
            })?;
        Ok(Self {
            conn: Conn::Cluster(conn),
            timeout,
            retry,
        })
    }

    /// Whether this is a Redis Cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    /// Runs `pipe`, an atomic (MULTI/EXEC) pipeline whose keys share the
    /// slot of `key`, under the timeout. On a Redis Cluster a slot that
    /// moves while the transaction is queued (MOVED, or ASK during a
    /// migration) aborts it with EXECABORT, which the cluster client does
    /// not retry. Nothing of an aborted transaction was applied, so it is
    /// sent again here: first one keyed command to the slot (following the
    /// redirect refreshes the client's slot map), then the transaction,
    /// at most [`ClusterRetry::retries`] times with the client's waits.
    pub async fn transaction<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
        key: &str,
    ) -> Result<T, StreamError> {
        let mut attempt = 0;
        loop {
            let mut conn = self.conn.clone();
            match self.run(pipe.query_async::<T>(&mut conn)).await {
                Err(StreamError::Redis(e))
                    if self.is_cluster() && attempt < self.retry.retries && redirected(&e) =>
                {
                    attempt += 1;
                    let _: Result<redis::Value, _> = self
                        .run(redis::cmd("TYPE").arg(key).query_async(&mut conn))
                        .await;
                    tokio::time::sleep(self.retry.wait(attempt)).await;
                }
                other => return other,
            }
        }
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

/// Whether `e` is a transaction aborted because its slot moved or is
/// moving (every error queued in it is a redirect or TRYAGAIN).
fn redirected(e: &redis::RedisError) -> bool {
    if !matches!(
        e.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::ExecAbort)
    ) {
        return false;
    }
    e.clone().into_server_errors().is_some_and(|errs| {
        !errs.is_empty()
            && errs.iter().all(|(_, s)| {
                matches!(
                    s.kind(),
                    Some(
                        redis::ServerErrorKind::Moved
                            | redis::ServerErrorKind::Ask
                            | redis::ServerErrorKind::TryAgain
                    )
                )
            })
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A node list that cannot work is a settings error, which `serve`
    /// stops on, not a connection failure it would wait out for ever.
    #[tokio::test]
    async fn unusable_cluster_settings_are_not_retryable() {
        let retry = ClusterRetry {
            retries: 1,
            max_wait: Duration::from_millis(10),
        };
        let timeout = Duration::from_millis(200);
        for nodes in [vec![], vec!["rediss://:pw@r1:6379".to_string()]] {
            let e = match Redis::connect_cluster(&nodes, timeout, retry).await {
                Ok(_) => panic!("{nodes:?} connected"),
                Err(e) => e,
            };
            assert!(matches!(e, StreamError::Config { .. }), "{e}");
            assert!(!e.retryable(), "{e}");
            assert!(!e.to_string().contains("pw"), "{e}");
        }
    }

    #[test]
    fn cluster_retry_waits_grow_up_to_the_maximum() {
        let r = ClusterRetry {
            retries: 8,
            max_wait: Duration::from_millis(100),
        };
        for n in 1..=8 {
            let upper = (10u64 << n).clamp(CLUSTER_MIN_RETRY_WAIT_MS + 1, 100);
            for _ in 0..50 {
                let w = r.wait(n).as_millis() as u64;
                assert!(
                    (CLUSTER_MIN_RETRY_WAIT_MS..upper).contains(&w),
                    "retry {n}: {w} ms"
                );
            }
        }
        // a maximum under the floor still waits the floor, never panics
        let tiny = ClusterRetry {
            retries: 1,
            max_wait: Duration::from_millis(1),
        };
        assert_eq!(tiny.wait(1).as_millis() as u64, CLUSTER_MIN_RETRY_WAIT_MS);
    }

    #[test]
    fn only_aborted_transactions_are_redirects() {
        let server = |reply: &str| {
            redis::parse_redis_value(format!("-{reply}\r\n").as_bytes())
                .and_then(redis::Value::extract_error)
                .expect_err("an error reply")
        };
        // a plain MOVED is the cluster client's to follow, EXECABORT alone
        // (a queued command refused for another reason) is not retried
        assert!(!redirected(&server("MOVED 3999 127.0.0.1:6381")));
        assert!(!redirected(&server(
            "EXECABORT Transaction discarded because of previous errors."
        )));
    }
}
