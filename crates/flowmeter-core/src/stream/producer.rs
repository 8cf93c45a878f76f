//! The producer: appends validated events to their shard streams.
//!
//! Two ways in:
//! - [`Producer::append`] (the collector, loadgen): one MULTI/EXEC pipeline;
//! - [`Producer::submit`] (`POST /v1/events`): the same, behind backpressure
//!   (refused before anything is sent while a target stream's backlog is past
//!   `ingest.max_backlog_entries`), optionally idempotent, and with every
//!   failure classified as "nothing was written" or "outcome unknown".
//!
//! **Idempotent writes.** A request with an `Idempotency-Key` runs one Lua
//! script instead of MULTI/EXEC: it reads the key's record, and only when
//! there is none appends every entry and stores the record (the body's
//! fingerprint and the accepted count, expiring after
//! `ingest.idempotency_window_secs`). A script is a transaction just like
//! MULTI/EXEC — nothing else runs in between, so the record and the entries
//! are written together or not at all (Redis refuses a script's first write
//! when out of memory; once it has written, it may finish) — and it is the one
//! of the options that also makes concurrent duplicates safe in one round
//! trip: MULTI/EXEC cannot make its XADDs depend on a check, WATCH needs a
//! connection of its own per request (the producer shares one multiplexed
//! connection), and an in-flight marker set before the write would outlive a
//! crash between the two. Two requests with one key run one after the other:
//! the second finds the record and writes nothing.
//!
//! **On a Redis Cluster** a transaction cannot span slots, and each shard is
//! a slot: a request over several shards is written one transaction (or
//! script, with a record per shard in its slot) per shard, and a failure
//! after some were written is `Unknown` (docs/guarantees.md).
//!
//! **Replicas.** With [`Producer::with_wait_replicas`], a written (or
//! replayed) request is confirmed only once `WAIT` says enough replicas
//! have it ([`super::replication`]); fewer is [`SubmitError::NotReplicated`].

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use crate::event::{KindNames, ValidEvent};

use super::pressure::Backlog;
use super::replication::{self, WaitReplicas};
use super::{Keys, Redis, StreamError};

/// Appends events with XADD. One request = one MULTI/EXEC pipeline (or one
/// script): one round trip, and all of the request's entries are written or
/// none is.
#[derive(Clone)]
pub struct Producer {
    redis: Redis,
    keys: Keys,
    /// Backpressure: the figures and the limit (0 = off).
    backlog: Option<(Backlog, u64)>,
    /// Replicas a submitted write must reach before it is confirmed.
    wait: Option<WaitReplicas>,
}

/// The idempotency part of a request.
#[derive(Debug, Clone)]
pub struct Idempotency<'a> {
    /// The client's `Idempotency-Key` (already checked: bounded, plain charset).
    pub key: &'a str,
    /// Fingerprint of the request body: a reused key with another body is refused.
    pub fingerprint: String,
    /// How long the record is kept.
    pub window: Duration,
}

/// What a submitted request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// Every event was appended now.
    Written,
    /// The key was seen before with the same body: nothing was written, the
    /// first request accepted `accepted` events.
    Replayed { accepted: u64 },
}

/// Why a request was not (or may not have been) written.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Backpressure: refused before anything was sent. Retry later.
    #[error("shard {shard} holds {entries} entries a consumer group has not acknowledged (limit {limit})")]
    Backlog {
        shard: String,
        entries: u64,
        limit: u64,
    },
    /// Redis refused, or was not reached: nothing was written. Retry later.
    #[error("nothing was written: {0}")]
    NotWritten(#[source] StreamError),
    /// The write may have been applied (a timeout or a lost connection after
    /// it was sent). Retry with the same idempotency key; without one a
    /// retry may count the events twice.
    #[error("the outcome is unknown: {0}")]
    Unknown(#[source] StreamError),
    /// The idempotency key was used before with another body. Never retry:
    /// use a new key for a new request.
    #[error("the idempotency key was used with another body")]
    KeyReused,
    /// Written (or replayed), but fewer than `wanted` replicas confirmed
    /// having it within `timeout` ([`Producer::with_wait_replicas`]): the
    /// events are stored on the master and lost if it fails before a replica
    /// has them. Retry with the same idempotency key (the retry writes
    /// nothing and waits again); without one a retry counts them twice.
    #[error("written, but {confirmed} of {wanted} replicas confirmed it within {timeout:?}")]
    NotReplicated {
        confirmed: u32,
        wanted: u32,
        timeout: Duration,
    },
}

impl SubmitError {
    /// Whether sending the same request again may succeed (with the same
    /// key, for [`SubmitError::Unknown`]).
    pub fn retryable(&self) -> bool {
        !matches!(self, SubmitError::KeyReused)
    }
}

/// Check-and-append of an idempotent request; see the module doc.
/// KEYS[1]: the record; KEYS[2..]: the shard streams. ARGV[1]: the record's
/// value, ARGV[2]: its lifetime (ms), then four per event: its stream's
/// position in KEYS, kind, version, data. Returns the existing record, or
/// nil once written.
const IDEMPOTENT_APPEND: &str = r"
local seen = redis.call('GET', KEYS[1])
if seen then return seen end
for i = 3, #ARGV, 4 do
  redis.call('XADD', KEYS[tonumber(ARGV[i])], '*', 'kind', ARGV[i + 1], 'v', ARGV[i + 2], 'data', ARGV[i + 3])
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
";

static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(IDEMPOTENT_APPEND));

/// A request's entries: the distinct stream keys (with their shards), and
/// per event (position in `streams`, kind, version, data).
struct Entries<'a> {
    streams: Vec<String>,
    shards: Vec<super::Shard>,
    rows: Vec<(usize, &'a str, u32, &'a str)>,
}

impl<'a> Entries<'a> {
    /// One `Entries` per stream (each in one cluster slot), rows in order.
    fn per_stream(&self) -> Vec<Entries<'a>> {
        self.streams
            .iter()
            .zip(&self.shards)
            .enumerate()
            .map(|(i, (stream, shard))| Entries {
                streams: vec![stream.clone()],
                shards: vec![shard.clone()],
                rows: self
                    .rows
                    .iter()
                    .filter(|r| r.0 == i)
                    .map(|&(_, k, v, d)| (0, k, v, d))
                    .collect(),
            })
            .collect()
    }
}

impl Producer {
    pub fn new(redis: Redis, keys: Keys) -> Self {
        Self {
            redis,
            keys,
            backlog: None,
            wait: None,
        }
    }

    /// Confirms a [`Producer::submit`] only once `replicas` replicas have its
    /// write (`WAIT`, at most `timeout`); 0 = off. See [`super::replication`].
    pub fn with_wait_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait = (replicas > 0).then_some(WaitReplicas { replicas, timeout });
        self
    }

    /// Refuses [`Producer::submit`]s to streams whose backlog passes `limit`
    /// (0 = never), as last seen in `backlog`.
    pub fn with_backpressure(mut self, backlog: Backlog, limit: u64) -> Self {
        self.backlog = Some((backlog, limit));
        self
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    fn entries<'a, K: KindNames + ?Sized>(
        &self,
        kinds: &'a K,
        events: &'a [ValidEvent],
    ) -> Result<Entries<'a>, StreamError> {
        let mut streams = Vec::new();
        let mut shards = Vec::new();
        let mut at: HashMap<(usize, u32), usize> = HashMap::new();
        let mut rows = Vec::with_capacity(events.len());
        for e in events {
            let kind = kinds
                .kind_name(e.kind)
                .ok_or_else(|| StreamError::Protocol(format!("unknown kind index {}", e.kind)))?;
            let shard = self.keys.shard_for(kind, e.partition);
            let i = *at.entry((e.kind, shard.index)).or_insert_with(|| {
                streams.push(self.keys.stream(&shard));
                shards.push(shard.clone());
                streams.len() - 1
            });
            rows.push((i, kind, e.version, e.data.as_str()));
        }
        Ok(Entries {
            streams,
            shards,
            rows,
        })
    }

    /// Appends all events atomically; returns once Redis has acknowledged
    /// them. `kinds` names the kinds the events' [`ValidEvent::kind`] index.
    pub async fn append<K: KindNames + ?Sized>(
        &self,
        kinds: &K,
        events: &[ValidEvent],
    ) -> Result<(), StreamError> {
        if events.is_empty() {
            return Ok(());
        }
        let entries = self.entries(kinds, events)?;
        if self.redis.is_cluster() && entries.streams.len() > 1 {
            // one transaction per slot; a failure past the first leaves the
            // earlier shards written (callers retrying the batch may
            // duplicate them: see docs/guarantees.md, "Redis Cluster")
            for one in entries.per_stream() {
                self.exec(&one).await?;
            }
            return Ok(());
        }
        self.exec(&entries).await
    }

    async fn exec(&self, entries: &Entries<'_>) -> Result<(), StreamError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for &(i, kind, version, data) in &entries.rows {
            let stream = entries.streams.get(i).map_or("", String::as_str);
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("kind")
                .arg(kind)
                .arg("v")
                .arg(version)
                .arg("data")
                .arg(data)
                .ignore();
        }
        let mut conn = self.redis.conn.clone();
        self.redis.run(pipe.query_async::<()>(&mut conn)).await
    }

    /// Appends a request's events (all or nothing) behind backpressure, once
    /// per idempotency key within its window. See [`SubmitError`] for what
    /// each failure means to the client.
    pub async fn submit<K: KindNames + ?Sized>(
        &self,
        kinds: &K,
        events: &[ValidEvent],
        idempotency: Option<&Idempotency<'_>>,
    ) -> Result<Submitted, SubmitError> {
        if events.is_empty() {
            return Ok(Submitted::Written);
        }
        let entries = self
            .entries(kinds, events)
            .map_err(SubmitError::NotWritten)?;
        let submitted = self.write(&entries, events.len(), idempotency).await?;
        self.confirm(&entries.streams).await?;
        Ok(submitted)
    }

    /// `ingest.wait_replicas`: WAIT until enough replicas have the writes to
    /// `streams` just made (or, for a replay, this connection's latest).
    async fn confirm(&self, streams: &[String]) -> Result<(), SubmitError> {
        let Some(wait) = self.wait else {
            return Ok(());
        };
        match replication::confirmed(&self.redis, streams, wait).await {
            Ok(n) if n >= wait.replicas => Ok(()),
            Ok(n) => Err(SubmitError::NotReplicated {
                confirmed: n,
                wanted: wait.replicas,
                timeout: wait.timeout,
            }),
            // the write is stored; whether it reached a replica is unknown
            Err(e) => Err(SubmitError::Unknown(e)),
        }
    }

    /// The write of [`Producer::submit`]: backpressure, then one transaction
    /// (or script), or one per slot on a cluster.
    async fn write(
        &self,
        entries: &Entries<'_>,
        total: usize,
        idempotency: Option<&Idempotency<'_>>,
    ) -> Result<Submitted, SubmitError> {
        let first_kind = entries.rows.first().map_or("", |r| r.1);
        let record = idempotency.map(|idem| {
            // on a cluster the record shares the slot of the shard it guards
            // (the first: each shard of a request has its own, see
            // `submit_per_slot`)
            let home = match entries.shards.first() {
                Some(s) if self.redis.is_cluster() => s.clone(),
                _ => self.keys.home_shard(first_kind, idem.key),
            };
            self.keys.idempotency(&home, idem.key)
        });
        if let Some((backlog, limit)) = &self.backlog {
            let over = entries
                .streams
                .iter()
                .map(|s| (s, backlog.of(s)))
                .find(|(_, n)| *limit > 0 && n > limit);
            if let Some((stream, n)) = over {
                // A retry of a request already written is answered even now.
                if let (Some(idem), Some(record)) = (idempotency, &record) {
                    if let Some(seen) = self.record(record).await {
                        return replayed(&seen, &idem.fingerprint);
                    }
                }
                return Err(SubmitError::Backlog {
                    shard: shard_label(stream),
                    entries: n,
                    limit: *limit,
                });
            }
        }
        if self.redis.is_cluster() && entries.streams.len() > 1 {
            return self.submit_per_slot(entries, total, idempotency).await;
        }
        let (Some(idem), Some(record)) = (idempotency, record) else {
            return self
                .exec(entries)
                .await
                .map(|()| Submitted::Written)
                .map_err(classify);
        };
        self.submit_idempotent(entries, &record, idem, total).await
    }

    /// A request whose events go to several shards on a Redis Cluster, where
    /// one transaction cannot span slots: one transaction (or idempotent
    /// script, its record in that shard's slot) per shard. All written:
    /// `Written`. None: the first error, classified. Some: `Unknown`, since
    /// part of the request is stored: a retry with the same idempotency key
    /// writes only the shards still missing; without a key it may count
    /// the written part twice.
    async fn submit_per_slot(
        &self,
        entries: &Entries<'_>,
        total: usize,
        idempotency: Option<&Idempotency<'_>>,
    ) -> Result<Submitted, SubmitError> {
        let mut written = 0usize;
        let mut replayed: Option<u64> = None;
        let mut failed: Option<SubmitError> = None;
        let mut unknown = false;
        for one in entries.per_stream() {
            let outcome = match (idempotency, one.shards.first()) {
                (Some(idem), Some(shard)) => {
                    let record = self.keys.idempotency(shard, idem.key);
                    self.submit_idempotent(&one, &record, idem, total).await
                }
                _ => self
                    .exec(&one)
                    .await
                    .map(|()| Submitted::Written)
                    .map_err(classify),
            };
            match outcome {
                Ok(Submitted::Written) => written += 1,
                Ok(Submitted::Replayed { accepted }) => replayed = Some(accepted),
                Err(SubmitError::KeyReused) => return Err(SubmitError::KeyReused),
                Err(e) => {
                    unknown |= matches!(e, SubmitError::Unknown(_));
                    failed.get_or_insert(e);
                }
            }
        }
        let some_stored = unknown || written > 0 || replayed.is_some();
        match (failed, written, replayed) {
            (None, 0, Some(accepted)) => Ok(Submitted::Replayed { accepted }),
            (None, _, _) => Ok(Submitted::Written),
            (Some(SubmitError::NotWritten(e) | SubmitError::Unknown(e)), _, _) if some_stored => {
                Err(SubmitError::Unknown(e))
            }
            (Some(e), _, _) => Err(e),
        }
    }

    /// Runs the idempotent append of `entries` under `record`.
    async fn submit_idempotent(
        &self,
        entries: &Entries<'_>,
        record: &str,
        idem: &Idempotency<'_>,
        total: usize,
    ) -> Result<Submitted, SubmitError> {
        let mut inv = SCRIPT.prepare_invoke();
        inv.key(record);
        for s in &entries.streams {
            inv.key(s);
        }
        inv.arg(format!("{} {}", idem.fingerprint, total)).arg(
            u64::try_from(idem.window.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        );
        for &(i, kind, version, data) in &entries.rows {
            // KEYS is 1-based and starts with the record.
            inv.arg(i + 2).arg(kind).arg(version).arg(data);
        }
        let mut conn = self.redis.conn.clone();
        let seen: Option<String> = self
            .redis
            .run(inv.invoke_async(&mut conn))
            .await
            .map_err(classify)?;
        match seen {
            None => Ok(Submitted::Written),
            Some(value) => replayed(&value, &idem.fingerprint),
        }
    }

    /// The value of an idempotency record, if it exists and Redis answers.
    async fn record(&self, key: &str) -> Option<String> {
        let mut conn = self.redis.conn.clone();
        self.redis
            .run(redis::cmd("GET").arg(key).query_async(&mut conn))
            .await
            .ok()
            .flatten()
    }
}

/// `{kind:i}` of a stream key, for messages.
fn shard_label(stream: &str) -> String {
    match (stream.find('{'), stream.rfind('}')) {
        (Some(a), Some(b)) if a < b => stream.get(a + 1..b).unwrap_or(stream).to_string(),
        _ => stream.to_string(),
    }
}

/// The outcome of a request whose key has a record (`"{fingerprint} {accepted}"`).
fn replayed(record: &str, fingerprint: &str) -> Result<Submitted, SubmitError> {
    match record.split_once(' ') {
        Some((fp, n)) if fp == fingerprint => n
            .parse()
            .map(|accepted| Submitted::Replayed { accepted })
            .map_err(|_| {
                SubmitError::NotWritten(StreamError::Protocol(format!(
                    "unreadable idempotency record {record:?}"
                )))
            }),
        _ => Err(SubmitError::KeyReused),
    }
}

/// Sorts a failed write into "nothing was written" (Redis refused the command
/// before running it, or could not be reached) and "unknown" (everything
/// else: a timeout or a broken connection may strike after Redis applied it,
/// and an error in the middle of a transaction leaves its earlier writes).
fn classify(e: StreamError) -> SubmitError {
    let refused = match &e {
        StreamError::Redis(r) => {
            r.is_connection_refusal()
                || matches!(
                    r.code(),
                    Some(
                        "OOM"
                            | "EXECABORT"
                            | "NOSCRIPT"
                            | "LOADING"
                            | "BUSY"
                            | "READONLY"
                            | "MASTERDOWN"
                            | "NOPERM"
                            | "NOAUTH"
                            | "WRONGPASS"
                            | "MOVED"
                            | "ASK"
                            | "TRYAGAIN"
                            | "CLUSTERDOWN"
                            | "CROSSSLOT"
                    )
                )
        }
        // TLS fails while connecting, before any command is sent
        StreamError::TlsConfig(_)
        | StreamError::TlsHandshake { .. }
        | StreamError::Connect { .. } => true,
        StreamError::Timeout(_) | StreamError::Protocol(_) => false,
    };
    if refused {
        SubmitError::NotWritten(e)
    } else {
        SubmitError::Unknown(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_replays_only_the_same_body() {
        assert_eq!(
            replayed("abc 12", "abc").ok(),
            Some(Submitted::Replayed { accepted: 12 })
        );
        assert!(matches!(
            replayed("abd 12", "abc"),
            Err(SubmitError::KeyReused)
        ));
        assert!(matches!(
            replayed("abc twelve", "abc"),
            Err(SubmitError::NotWritten(_))
        ));
        assert!(matches!(replayed("", "abc"), Err(SubmitError::KeyReused)));
    }

    #[test]
    fn timeouts_and_broken_connections_are_unknown_refusals_are_not() {
        let unknown = |e: StreamError| matches!(classify(e), SubmitError::Unknown(_));
        assert!(unknown(StreamError::Timeout(Duration::from_secs(1))));
        let io = |k: std::io::ErrorKind| StreamError::Redis(std::io::Error::from(k).into());
        assert!(unknown(io(std::io::ErrorKind::BrokenPipe)));
        assert!(unknown(io(std::io::ErrorKind::ConnectionReset)));
        assert!(!unknown(io(std::io::ErrorKind::ConnectionRefused)));
        // An error reply as Redis sends it.
        let server = |reply: &str| {
            let e = redis::parse_redis_value(format!("-{reply}\r\n").as_bytes())
                .and_then(redis::Value::extract_error)
                .expect_err("an error reply");
            StreamError::Redis(e)
        };
        assert!(!unknown(server(
            "OOM command not allowed when used memory > 'maxmemory'."
        )));
        assert!(!unknown(server(
            "EXECABORT Transaction discarded because of previous errors."
        )));
        assert!(!unknown(server("NOSCRIPT No matching script.")));
        assert!(unknown(server(
            "WRONGTYPE Operation against a key holding the wrong kind of value"
        )));
        assert!(SubmitError::Unknown(StreamError::Timeout(Duration::ZERO)).retryable());
        assert!(!SubmitError::KeyReused.retryable());
    }

    #[test]
    fn shard_labels() {
        assert_eq!(shard_label("fm:{http:2}"), "http:2");
        assert_eq!(shard_label("plain"), "plain");
    }
}
