//! Redis memory pressure: the backlog figures ingest's backpressure decides
//! on, and Redis' `maxmemory-policy`.
//!
//! Accepted events are never evicted or trimmed unread by default (retention
//! keeps every entry a group still needs, `retention.hard_max_len` is off), so
//! what bounds Redis' memory when consumers fall behind is ingest refusing
//! more: past `ingest.max_backlog_entries` unacknowledged entries of any group
//! on a shard stream, requests writing to that stream get 503 + Retry-After.
//!
//! Ingest never asks Redis per request: [`watch`] refreshes one figure per
//! shard stream every `ingest.backlog_poll_ms`, and [`Backlog::of`] reads it
//! from memory. A figure is at most one interval plus one Redis round trip
//! old, so a stream can overshoot the limit by what ingest accepts in that
//! time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::Value;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::resp::{int, text, to_map};
use super::{xinfo, Redis, StreamError};

/// The unacknowledged backlog of every shard stream, shared between the
/// [`watch`] task (writer) and ingest (reader). The streams change with the
/// shard layout ([`Backlog::set_streams`]).
#[derive(Clone, Default)]
pub struct Backlog {
    inner: Arc<RwLock<Arc<Inner>>>,
}

#[derive(Default)]
struct Inner {
    /// Stream key → position in `figures`.
    index: HashMap<String, usize>,
    keys: Vec<String>,
    figures: Vec<AtomicU64>,
}

impl Inner {
    /// Figures for `keys`, those also in `before` as they were there.
    fn new(keys: Vec<String>, before: &Inner) -> Self {
        let index = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), i))
            .collect();
        let figures = keys
            .iter()
            .map(|k| {
                let was = before
                    .index
                    .get(k)
                    .and_then(|&i| before.figures.get(i))
                    .map_or(0, |f| f.load(Ordering::Relaxed));
                AtomicU64::new(was)
            })
            .collect();
        Self {
            index,
            keys,
            figures,
        }
    }
}

/// The largest backlog of one stream over its groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamBacklog {
    /// The group furthest behind.
    pub group: String,
    /// Its entries not yet delivered (lag) plus delivered but not acknowledged
    /// (pending).
    pub entries: u64,
}

impl Backlog {
    /// Figures for `streams` (every shard stream of every kind), all 0 until
    /// the first refresh.
    pub fn new(streams: impl IntoIterator<Item = String>) -> Self {
        Self {
            inner: Arc::new(RwLock::new(Arc::new(Inner::new(
                streams.into_iter().collect(),
                &Inner::default(),
            )))),
        }
    }

    fn current(&self) -> Arc<Inner> {
        match self.inner.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Watches `streams` from now on (a stream kept keeps its figure).
    pub fn set_streams(&self, streams: Vec<String>) {
        let now = self.current();
        if now.keys == streams {
            return;
        }
        let next = Arc::new(Inner::new(streams, &now));
        match self.inner.write() {
            Ok(mut g) => *g = next,
            Err(p) => *p.into_inner() = next,
        }
    }

    /// The last known backlog of `stream` (0 for a stream not watched).
    pub fn of(&self, stream: &str) -> u64 {
        let inner = self.current();
        inner
            .index
            .get(stream)
            .and_then(|&i| inner.figures.get(i))
            .map_or(0, |f| f.load(Ordering::Relaxed))
    }

    /// Reads every stream's backlog from Redis once; returns the streams
    /// with their worst group (streams without groups are left out).
    pub async fn refresh(
        &self,
        redis: &Redis,
    ) -> Result<Vec<(String, StreamBacklog)>, StreamError> {
        let mut out = Vec::new();
        let inner = self.current();
        for (key, figure) in inner.keys.iter().zip(&inner.figures) {
            let worst = stream_backlog(redis, key).await?;
            figure.store(worst.as_ref().map_or(0, |w| w.entries), Ordering::Relaxed);
            out.extend(worst.map(|w| (key.clone(), w)));
        }
        Ok(out)
    }
}

/// The group of `stream` with the most unacknowledged entries (lag +
/// pending); `None` without groups. When Redis cannot tell a group's lag
/// (entries deleted mid-stream, or a group created at an arbitrary id that
/// has not caught up yet), the stream's length stands in for it: an upper
/// bound, so backpressure errs on the side of Redis' memory.
pub async fn stream_backlog(
    redis: &Redis,
    stream: &str,
) -> Result<Option<StreamBacklog>, StreamError> {
    let Some(Value::Array(groups)) = xinfo(redis, "GROUPS", stream).await? else {
        return Ok(None);
    };
    let mut length = None;
    let mut worst: Option<StreamBacklog> = None;
    for g in groups.into_iter().map(to_map) {
        let pending = int(g.get("pending")).unwrap_or(0);
        let lag = match int(g.get("lag")) {
            Some(l) => l,
            None => match length {
                Some(n) => n,
                None => {
                    let mut conn = redis.conn.clone();
                    let n: u64 = redis
                        .run(redis::cmd("XLEN").arg(stream).query_async(&mut conn))
                        .await?;
                    length = Some(n);
                    n
                }
            },
        };
        let entries = lag.saturating_add(pending);
        if worst.as_ref().is_none_or(|w| entries > w.entries) {
            worst = Some(StreamBacklog {
                group: text(g.get("name")).unwrap_or_default(),
                entries,
            });
        }
    }
    Ok(worst)
}

/// Refreshes `backlog` every `interval` until `shutdown`, logging each stream
/// that crosses `limit` (0 = backpressure off: figures are still kept) and
/// once at start when Redis may evict data.
pub async fn watch(
    redis: Redis,
    backlog: Backlog,
    streams: impl Fn() -> Vec<String> + Send,
    limit: u64,
    interval: Duration,
    shutdown: CancellationToken,
) {
    match memory(&redis).await {
        Ok(m) => {
            if let Some(w) = m.warning() {
                tracing::warn!("{w}");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read Redis' maxmemory-policy (INFO memory)"),
    }
    let mut over: HashMap<String, bool> = HashMap::new();
    let mut failing = false;
    loop {
        // the shard layout may have changed
        backlog.set_streams(streams());
        match backlog.refresh(&redis).await {
            Ok(figures) => {
                failing = false;
                let now: HashMap<String, StreamBacklog> = figures.into_iter().collect();
                for key in backlog.current().keys.iter() {
                    let b = now.get(key);
                    let is_over = limit > 0 && b.is_some_and(|b| b.entries > limit);
                    let was_over = over.insert(key.clone(), is_over).unwrap_or(false);
                    match (was_over, is_over, b) {
                        (false, true, Some(b)) => tracing::warn!(
                            stream = %key, group = %b.group, backlog = b.entries, limit,
                            "backpressure: group {} has {} unacknowledged entries on {key} (ingest.max_backlog_entries = {limit}); ingest answers 503 for this stream until it catches up",
                            b.group, b.entries
                        ),
                        (true, false, _) => {
                            tracing::info!(stream = %key, "backpressure lifted: the groups of {key} caught up")
                        }
                        _ => {}
                    }
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot refresh the stream backlog; ingest decides on the last figures");
                }
                failing = true;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Redis' memory settings and use (`INFO memory`), shown by status.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RedisMemory {
    /// `maxmemory-policy`; anything but `noeviction` may evict stream entries
    /// (accepted events) or leases when Redis is full.
    pub maxmemory_policy: Option<String>,
    /// `maxmemory` (0 = no limit: Redis grows until the OS stops it).
    pub maxmemory_bytes: u64,
    pub used_memory_bytes: u64,
    /// Why the settings put accepted data at risk, if they do.
    pub warning: Option<String>,
}

impl RedisMemory {
    /// From the text of `INFO memory`.
    pub fn parse(info: &str) -> Self {
        let field = |name: &str| super::resp::info_field(info, name).map(str::to_string);
        let num = |name: &str| field(name).and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut m = Self {
            maxmemory_policy: field("maxmemory_policy"),
            maxmemory_bytes: num("maxmemory"),
            used_memory_bytes: num("used_memory"),
            warning: None,
        };
        m.warning = m.warning();
        m
    }

    /// A cluster's figures from its nodes': memory used and limits added up
    /// (no limit when a node has none), and the policy `noeviction` only
    /// when every node has it (else the first other one, or none).
    pub fn of_nodes(nodes: impl Iterator<Item = RedisMemory>) -> Self {
        let mut all = RedisMemory {
            maxmemory_policy: Some("noeviction".into()),
            maxmemory_bytes: 0,
            used_memory_bytes: 0,
            warning: None,
        };
        let mut unlimited = false;
        let mut any = false;
        for n in nodes {
            any = true;
            all.used_memory_bytes += n.used_memory_bytes;
            all.maxmemory_bytes += n.maxmemory_bytes;
            unlimited |= n.maxmemory_bytes == 0;
            if all.maxmemory_policy.as_deref() == Some("noeviction") {
                all.maxmemory_policy = n.maxmemory_policy;
            }
        }
        if unlimited {
            all.maxmemory_bytes = 0;
        }
        if !any {
            all.maxmemory_policy = None;
        }
        all.warning = all.warning();
        all
    }

    /// A warning unless the policy is `noeviction`.
    pub fn warning(&self) -> Option<String> {
        match self.maxmemory_policy.as_deref() {
            Some("noeviction") => None,
            Some(p) => Some(format!(
                "Redis maxmemory-policy is {p}: when Redis is full it may evict stream entries (accepted events) and leases; set `maxmemory-policy noeviction` (see docs/operations.md)"
            )),
            None => Some(
                "Redis did not report its maxmemory-policy; make sure it is noeviction (see docs/operations.md)".into(),
            ),
        }
    }
}

/// Reads `INFO memory`. On a Redis Cluster every node answers: the result
/// is the cluster's (see [`RedisMemory::of_nodes`]).
pub async fn memory(redis: &Redis) -> Result<RedisMemory, StreamError> {
    let mut conn = redis.conn.clone();
    let info: redis::Value = redis
        .run(redis::cmd("INFO").arg("memory").query_async(&mut conn))
        .await?;
    let text = |v: &redis::Value| redis::from_redis_value_ref::<String>(v).ok();
    match &info {
        redis::Value::Map(nodes) => Ok(RedisMemory::of_nodes(
            nodes
                .iter()
                .filter_map(|(_, v)| text(v))
                .map(|t| RedisMemory::parse(&t)),
        )),
        other => text(other)
            .map(|t| RedisMemory::parse(&t))
            .ok_or_else(|| StreamError::Protocol(format!("INFO memory reply {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_is_noeviction_only_when_every_node_is() {
        let node = |policy: &str, max: u64| {
            RedisMemory::parse(&format!(
                "used_memory:100\r\nmaxmemory:{max}\r\nmaxmemory_policy:{policy}\r\n"
            ))
        };
        let ok =
            RedisMemory::of_nodes([node("noeviction", 10), node("noeviction", 20)].into_iter());
        assert_eq!((ok.used_memory_bytes, ok.maxmemory_bytes), (200, 30));
        assert_eq!(ok.warning, None);
        let bad =
            RedisMemory::of_nodes([node("noeviction", 0), node("allkeys-lru", 5)].into_iter());
        assert_eq!(bad.maxmemory_policy.as_deref(), Some("allkeys-lru"));
        assert_eq!(bad.maxmemory_bytes, 0, "a node without a limit");
        assert!(bad.warning.is_some());
        assert!(RedisMemory::of_nodes(std::iter::empty()).warning.is_some());
    }

    #[test]
    fn reads_the_policy_and_warns_unless_noeviction() {
        let info =
            "# Memory\r\nused_memory:1048576\r\nmaxmemory:0\r\nmaxmemory_policy:noeviction\r\n";
        let m = RedisMemory::parse(info);
        assert_eq!(m.maxmemory_policy.as_deref(), Some("noeviction"));
        assert_eq!(m.used_memory_bytes, 1_048_576);
        assert_eq!(m.warning, None);
        let m = RedisMemory::parse(&info.replace("noeviction", "allkeys-lru"));
        assert!(m
            .warning
            .as_deref()
            .is_some_and(|w| w.contains("allkeys-lru")));
        assert!(RedisMemory::parse("").warning.is_some());
    }

    #[test]
    fn unknown_streams_have_no_backlog() {
        let b = Backlog::new(["fm:{http:0}".to_string()]);
        assert_eq!(b.of("fm:{http:0}"), 0);
        assert_eq!(b.of("fm:{http:9}"), 0);
        b.current().figures[0].store(7, Ordering::Relaxed);
        assert_eq!(b.of("fm:{http:0}"), 7);
    }
}
