//! The producer: appends validated events to their shard streams.
//!
//! Two ways in:
//! - [`Producer::append`] (loadgen, tools): one MULTI/EXEC pipeline;
//! - [`Producer::submit`] (`POST /v1/events`, and the collector with a batch
//!   id as idempotency key): the same, behind backpressure
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
//! **Across shard sets** (the shard count changed live, see
//! [`super::layout`]): events go to the oldest set not known to be sealed.
//! A sealed stream refuses the XADDs of a MULTI/EXEC one by one (those
//! events, and only those, are written again to the next set) and makes the
//! idempotent script write nothing. A writer that meets a seal seals the rest
//! of that set, reloads the layout and moves on ([`MAX_SET_HOPS`] at most);
//! a keyed request first looks for its records in the older, sealed sets.
//!
//! **Replicas.** With [`Producer::with_wait_replicas`], a written (or
//! replayed) request is confirmed only once `WAIT` says enough replicas
//! have it ([`super::replication`]); fewer is [`SubmitError::NotReplicated`].

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use crate::event::{KindNames, ValidEvent};

use super::layout::{self, ShardSet};
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
    /// The stored shard layout is read before the first write (a writer
    /// built with `Keys::new` alone must not write to shards of a count
    /// the layout does not have).
    loaded: Arc<tokio::sync::OnceCell<()>>,
    /// One seal sweep at a time in this process (requests meeting the same
    /// seal at once wait for the first one's sweep).
    sealing: Arc<tokio::sync::Mutex<()>>,
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
/// KEYS[1]: the record; then the `n` shard streams; then their `n` seal
/// markers. ARGV[1]: the record's value, ARGV[2]: its lifetime (ms),
/// ARGV[3]: `n`, then four per event: its stream's position in KEYS, kind,
/// version, data. Returns the existing record; 1 (writing nothing) when a
/// stream is sealed; nil once written. A stream key holding another type
/// fails the script before its first write (a script is not rolled back:
/// an XADD failing midway would leave the earlier ones without a record).
const IDEMPOTENT_APPEND: &str = r"
local seen = redis.call('GET', KEYS[1])
if seen then return seen end
local n = tonumber(ARGV[3])
if redis.call('EXISTS', unpack(KEYS, n + 2, 2 * n + 1)) > 0 then return 1 end
for i = 2, n + 1 do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= 'stream' and t ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' holds a ' .. t .. ', not a stream')
  end
end
for i = 4, #ARGV, 4 do
  redis.call('XADD', KEYS[tonumber(ARGV[i])], '*', 'kind', ARGV[i + 1], 'v', ARGV[i + 2], 'data', ARGV[i + 3])
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
";

static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(IDEMPOTENT_APPEND));

/// Most shard sets one write moves through (each move: the set written to
/// was sealed meanwhile). A named bound: more means sets are being
/// changed faster than a request is written.
pub const MAX_SET_HOPS: usize = 4;

/// One row of a request: its stream's position in `streams`, kind,
/// version, data, and the event's position in the request.
type Row<'a> = (usize, &'a str, u32, &'a str, usize);

/// A request's entries in one shard set: the distinct stream keys (with
/// their shards) and the rows.
struct Entries<'a> {
    streams: Vec<String>,
    shards: Vec<super::Shard>,
    rows: Vec<Row<'a>>,
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
                    .map(|&(_, k, v, d, e)| (0, k, v, d, e))
                    .collect(),
            })
            .collect()
    }

    /// The events (positions in the request) of these entries.
    fn events(&self) -> Vec<usize> {
        self.rows.iter().map(|r| r.4).collect()
    }
}

/// What one transaction or script did.
enum Outcome {
    /// Every row was appended.
    Written,
    /// The key's record exists (the rows were written before).
    Replayed(String),
    /// These events (positions in the request) were not written: their
    /// stream is sealed. The others were.
    Sealed(Vec<usize>),
}

impl Producer {
    pub fn new(redis: Redis, keys: Keys) -> Self {
        Self {
            redis,
            keys,
            backlog: None,
            loaded: Arc::default(),
            sealing: Arc::default(),
            wait: None,
        }
    }

    /// Confirms a [`Producer::submit`] only once `replicas` replicas have its
    /// write (`WAIT`, at most `timeout`); 0 = off. See [`super::replication`].
    pub fn with_wait_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait = (replicas > 0).then_some(WaitReplicas { replicas, timeout });
        self
    }

    /// Reads the stored layout into the keys, once.
    async fn load_layout(&self) -> Result<(), StreamError> {
        self.loaded
            .get_or_try_init(|| async {
                layout::load_into(&self.redis, &self.keys).await.map(|_| ())
            })
            .await
            .map(|_| ())
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

    /// The entries of `events` (those at positions `todo`) in `set`.
    fn entries<'a, K: KindNames + ?Sized>(
        &self,
        kinds: &'a K,
        events: &'a [ValidEvent],
        todo: &[usize],
        set: &ShardSet,
    ) -> Result<Entries<'a>, StreamError> {
        let mut streams = Vec::new();
        let mut shards = Vec::new();
        let mut at: HashMap<(usize, u32), usize> = HashMap::new();
        let mut rows = Vec::with_capacity(todo.len());
        for &n in todo {
            let Some(e) = events.get(n) else { continue };
            let kind = kinds
                .kind_name(e.kind)
                .ok_or_else(|| StreamError::Protocol(format!("unknown kind index {}", e.kind)))?;
            let shard = self.keys.shard_in(set, kind, e.partition);
            let i = *at.entry((e.kind, shard.index)).or_insert_with(|| {
                streams.push(self.keys.stream(&shard));
                shards.push(shard.clone());
                streams.len() - 1
            });
            rows.push((i, kind, e.version, e.data.as_str(), n));
        }
        Ok(Entries {
            streams,
            shards,
            rows,
        })
    }

    /// Appends all events; returns once Redis has acknowledged them. `kinds`
    /// names the kinds the events' [`ValidEvent::kind`] index. On one Redis
    /// server the batch is one transaction, except when the shard set
    /// changes under it: the XADDs a seal refused are written to the next
    /// set, so an error after that leaves part of the batch written. On a
    /// Redis Cluster a batch over several shards is one transaction per
    /// shard: a failure past the first leaves the earlier shards written.
    /// A caller that retries a failed batch may therefore write part of it
    /// twice; one that must not uses [`Producer::submit`] with an
    /// idempotency key (see docs/guarantees.md).
    pub async fn append<K: KindNames + ?Sized>(
        &self,
        kinds: &K,
        events: &[ValidEvent],
    ) -> Result<(), StreamError> {
        self.load_layout().await?;
        let mut todo: Vec<usize> = (0..events.len()).collect();
        for _ in 0..MAX_SET_HOPS {
            if todo.is_empty() {
                return Ok(());
            }
            let set = self.keys.write_set();
            let entries = self.entries(kinds, events, &todo, &set)?;
            let mut sealed = Vec::new();
            for one in self.transactions(entries) {
                if let Outcome::Sealed(left) = self.exec(&one).await? {
                    sealed.extend(left);
                }
            }
            if !sealed.is_empty() {
                self.met_seal(kinds, &set).await?;
            }
            todo = sealed;
        }
        if todo.is_empty() {
            return Ok(());
        }
        Err(StreamError::Protocol(format!(
            "{} events not written: the shard set changed {MAX_SET_HOPS} times while writing them",
            todo.len()
        )))
    }

    /// The transactions `entries` is written in: one, or one per stream
    /// on a Redis Cluster (a transaction cannot span slots there).
    fn transactions<'a>(&self, entries: Entries<'a>) -> Vec<Entries<'a>> {
        if self.redis.is_cluster() && entries.streams.len() > 1 {
            entries.per_stream()
        } else {
            vec![entries]
        }
    }

    /// One MULTI/EXEC of XADDs. A sealed stream refuses its XADDs (and only
    /// those): their events come back in `Outcome::Sealed`.
    async fn exec(&self, entries: &Entries<'_>) -> Result<Outcome, StreamError> {
        let mut pipe = redis::pipe();
        pipe.atomic().ignore_errors();
        for &(i, kind, version, data, _) in &entries.rows {
            let stream = entries.streams.get(i).map_or("", String::as_str);
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("kind")
                .arg(kind)
                .arg("v")
                .arg(version)
                .arg("data")
                .arg(data);
        }
        // on a cluster, `entries` is one stream (one slot): see `transactions`
        let first = entries.streams.first().map_or("", String::as_str);
        let replies: Vec<redis::Value> = self.redis.transaction(&pipe, first).await?;
        let mut sealed = Vec::new();
        for (row, reply) in entries.rows.iter().zip(&replies) {
            if let redis::Value::ServerError(e) = reply {
                let e = redis::RedisError::from(e.clone());
                if !layout::is_sealed_error(&e) {
                    return Err(StreamError::Redis(e));
                }
                sealed.push(row.4);
            }
        }
        if replies.len() != entries.rows.len() {
            return Err(StreamError::Protocol(format!(
                "{} replies to a transaction of {} XADDs",
                replies.len(),
                entries.rows.len()
            )));
        }
        Ok(if sealed.is_empty() {
            Outcome::Written
        } else {
            Outcome::Sealed(sealed)
        })
    }

    /// A write met a seal in `set`: seal the rest of the set (every stream
    /// of the kinds known here and in the layout), so that nothing more can
    /// land in it whoever writes, then write to the next set from now on.
    /// Sealing first is what lets an idempotent retry trust a lookup in
    /// the older set (see `older_records`).
    async fn met_seal<K: KindNames + ?Sized>(
        &self,
        kinds: &K,
        set: &ShardSet,
    ) -> Result<(), StreamError> {
        let _one = self.sealing.lock().await;
        if !self.keys.sealed_sets().contains(&set.set) {
            let stored = layout::load(&self.redis, &self.keys.layout_key()).await?;
            let mut names: Vec<String> =
                stored.as_ref().map(|l| l.kinds.clone()).unwrap_or_default();
            names.extend((0..).map_while(|i| kinds.kind_name(i)).map(str::to_string));
            names.sort();
            names.dedup();
            // the set as stored (its shard count), else as this writer knew it
            let sealed = stored
                .as_ref()
                .and_then(|l| l.get(set.set).cloned())
                .unwrap_or_else(|| set.clone());
            for kind in &names {
                for shard in self.keys.shards_in(&sealed, kind) {
                    layout::seal(
                        &self.redis,
                        &self.keys.stream(&shard),
                        &self.keys.sealed(&shard),
                    )
                    .await?;
                }
            }
            tracing::info!(set = set.set, "shard set sealed: writing to the next set");
            self.keys.mark_sealed(set.set);
            if let Some(l) = stored {
                self.keys.set_layout(l);
            }
        }
        let next = self.keys.write_set();
        if next.set <= set.set {
            return Err(StreamError::Protocol(format!(
                "shard set {} is sealed and the stored layout ({}) names no newer set: see `flowmeter shards` (was the layout key deleted or lost in a failover?)",
                set.set,
                self.keys.layout_key()
            )));
        }
        Ok(())
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
        let mut touched = Vec::new();
        let submitted = self
            .write_request(kinds, events, idempotency, &mut touched)
            .await?;
        self.confirm(&touched).await?;
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

    /// The write of [`Producer::submit`]: backpressure, then the request's
    /// transactions (or scripts) in the set written to, moving on to the
    /// next set when one is sealed. `touched`: the streams it wrote to (or
    /// would have, for a replay).
    async fn write_request<K: KindNames + ?Sized>(
        &self,
        kinds: &K,
        events: &[ValidEvent],
        idempotency: Option<&Idempotency<'_>>,
        touched: &mut Vec<String>,
    ) -> Result<Submitted, SubmitError> {
        self.load_layout().await.map_err(SubmitError::NotWritten)?;
        let all: Vec<usize> = (0..events.len()).collect();
        let first_set = self.keys.write_set();
        let first = self
            .entries(kinds, events, &all, &first_set)
            .map_err(SubmitError::NotWritten)?;
        if let Some((backlog, limit)) = &self.backlog {
            let over = first
                .streams
                .iter()
                .map(|s| (s, backlog.of(s)))
                .find(|(_, n)| *limit > 0 && n > limit);
            if let Some((stream, n)) = over {
                // A retry of a request already written is answered even now.
                if let Some(idem) = idempotency {
                    if let Some(done) = self.written_before(kinds, events, idem).await {
                        return done;
                    }
                }
                return Err(SubmitError::Backlog {
                    shard: shard_label(stream),
                    entries: n,
                    limit: *limit,
                });
            }
        }
        touched.extend(first.streams.iter().cloned());
        // the first hop writes the entries just routed, unless the set
        // changed meanwhile or an older set already holds part of them
        let mut routed = Some((first_set.set, first));
        let mut todo = all;
        // whether this call wrote part of the request, and whether part of
        // it is stored (written now or found written before)
        let mut wrote = false;
        let mut stored = false;
        let mut replayed: Option<u64> = None;
        for _ in 0..MAX_SET_HOPS {
            let set = self.keys.write_set();
            if let Some(idem) = idempotency {
                match self.older_records(kinds, events, &todo, &set, idem).await {
                    Ok((left, seen)) => {
                        if let Some(accepted) = seen {
                            replayed = Some(accepted);
                        }
                        if left.is_empty() {
                            return Ok(Submitted::Replayed {
                                accepted: replayed.unwrap_or(events.len() as u64),
                            });
                        }
                        todo = left;
                    }
                    Err(e) => return Err(partial(e, stored)),
                }
            }
            let entries = match routed.take() {
                Some((n, e)) if n == set.set && todo.len() == events.len() => e,
                _ => {
                    let e = self
                        .entries(kinds, events, &todo, &set)
                        .map_err(|e| partial(SubmitError::NotWritten(e), stored))?;
                    for s in &e.streams {
                        if !touched.contains(s) {
                            touched.push(s.clone());
                        }
                    }
                    e
                }
            };
            let mut sealed = Vec::new();
            let mut failed: Option<SubmitError> = None;
            let mut written = 0usize;
            for one in self.transactions(entries) {
                let outcome = match idempotency {
                    Some(idem) => {
                        let record = self.record_key(&one, &set, idem.key);
                        self.exec_idempotent(&one, &record, idem, events.len())
                            .await
                    }
                    None => self.exec(&one).await.map_err(classify),
                };
                match outcome {
                    Ok(Outcome::Written) => written += 1,
                    Ok(Outcome::Replayed(value)) => {
                        let Submitted::Replayed { accepted } = replayed_from(&value, idempotency)?
                        else {
                            continue;
                        };
                        replayed = Some(accepted);
                    }
                    Ok(Outcome::Sealed(left)) => {
                        written += usize::from(left.len() < one.rows.len());
                        sealed.extend(left);
                    }
                    Err(SubmitError::KeyReused) => return Err(SubmitError::KeyReused),
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
            wrote |= written > 0;
            stored |= wrote || replayed.is_some();
            if let Some(e) = failed {
                return Err(partial(e, stored));
            }
            if sealed.is_empty() {
                return Ok(match (wrote, replayed) {
                    (false, Some(accepted)) => Submitted::Replayed { accepted },
                    _ => Submitted::Written,
                });
            }
            self.met_seal(kinds, &set)
                .await
                .map_err(|e| partial(classify(e), stored))?;
            todo = sealed;
        }
        Err(partial(
            SubmitError::NotWritten(StreamError::Protocol(format!(
                "the shard set changed {MAX_SET_HOPS} times while writing the request"
            ))),
            stored,
        ))
    }

    /// The record guarding `entries` in `set`: on one server the request's
    /// home shard's (one record for the whole request); on a cluster the
    /// record of the one shard `entries` writes to, in its slot.
    fn record_key(&self, entries: &Entries<'_>, set: &ShardSet, key: &str) -> String {
        match (self.redis.is_cluster(), entries.shards.first()) {
            (true, Some(shard)) => self.keys.idempotency(shard, key),
            _ => {
                let first_kind = entries.rows.first().map_or("", |r| r.1);
                self.keys
                    .idempotency(&self.keys.home_shard(set, first_kind, key), key)
            }
        }
    }

    /// Whether a keyed request is already stored whole (for an answer
    /// without writing, under backpressure): its record in the set written
    /// to, or in older sealed sets.
    async fn written_before<K: KindNames + ?Sized>(
        &self,
        kinds: &K,
        events: &[ValidEvent],
        idem: &Idempotency<'_>,
    ) -> Option<Result<Submitted, SubmitError>> {
        let all: Vec<usize> = (0..events.len()).collect();
        let set = self.keys.write_set();
        let (left, seen) = self
            .older_records(kinds, events, &all, &set, idem)
            .await
            .ok()?;
        if left.is_empty() {
            return Some(Ok(Submitted::Replayed {
                accepted: seen.unwrap_or(events.len() as u64),
            }));
        }
        if left.len() < all.len() {
            return None;
        }
        let entries = self.entries(kinds, events, &all, &set).ok()?;
        let key = self.record_key(&entries, &set, idem.key);
        let value = self.record(&key).await?;
        Some(replayed(&value, &idem.fingerprint))
    }

    /// The events of `todo` not yet stored by an earlier attempt in an
    /// older, sealed set (none can be written there any more, so what its
    /// records say is final), and the accepted count such a record holds.
    /// On one server a record covers the whole request; on a cluster each
    /// shard's record covers the events that shard took.
    async fn older_records<K: KindNames + ?Sized>(
        &self,
        kinds: &K,
        events: &[ValidEvent],
        todo: &[usize],
        set: &ShardSet,
        idem: &Idempotency<'_>,
    ) -> Result<(Vec<usize>, Option<u64>), SubmitError> {
        let layout = self.keys.layout();
        let sealed = self.keys.sealed_sets();
        let mut left = todo.to_vec();
        let mut accepted = None;
        // a set sealed longer ago than the window holds no record still valid
        let window_ms = i64::try_from(idem.window.as_millis()).unwrap_or(i64::MAX);
        let now_ms = chrono::Utc::now().timestamp_millis();
        for older in layout.sets.iter().filter(|s| {
            s.set < set.set
                && sealed.contains(&s.set)
                // `since_ms` is when it was sealed (draining) or retired,
                // later still: either way no earlier than the seal
                && now_ms.saturating_sub(s.since_ms) <= window_ms.saturating_add(60_000)
        }) {
            if left.is_empty() {
                break;
            }
            let entries = self
                .entries(kinds, events, &left, older)
                .map_err(SubmitError::NotWritten)?;
            let parts = if self.redis.is_cluster() {
                entries.per_stream()
            } else {
                vec![entries]
            };
            for part in parts {
                let key = self.record_key(&part, older, idem.key);
                let mut conn = self.redis.conn.clone();
                let value: Option<String> = self
                    .redis
                    .run(redis::cmd("GET").arg(&key).query_async(&mut conn))
                    .await
                    .map_err(SubmitError::NotWritten)?;
                if let Some(value) = value {
                    if let Submitted::Replayed { accepted: n } =
                        replayed(&value, &idem.fingerprint)?
                    {
                        accepted = Some(n);
                    }
                    let done = part.events();
                    left.retain(|e| !done.contains(e));
                }
            }
        }
        Ok((left, accepted))
    }

    /// Runs the idempotent append of `entries` under `record`.
    async fn exec_idempotent(
        &self,
        entries: &Entries<'_>,
        record: &str,
        idem: &Idempotency<'_>,
        total: usize,
    ) -> Result<Outcome, SubmitError> {
        let mut inv = SCRIPT.prepare_invoke();
        inv.key(record);
        for s in &entries.streams {
            inv.key(s);
        }
        for shard in &entries.shards {
            inv.key(self.keys.sealed(shard));
        }
        inv.arg(format!("{} {}", idem.fingerprint, total))
            .arg(
                u64::try_from(idem.window.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            )
            .arg(entries.streams.len());
        for &(i, kind, version, data, _) in &entries.rows {
            // KEYS is 1-based and starts with the record.
            inv.arg(i + 2).arg(kind).arg(version).arg(data);
        }
        let mut conn = self.redis.conn.clone();
        let reply: redis::Value = self
            .redis
            .run(inv.invoke_async(&mut conn))
            .await
            .map_err(classify)?;
        match reply {
            redis::Value::Nil => Ok(Outcome::Written),
            redis::Value::Int(1) => Ok(Outcome::Sealed(entries.events())),
            redis::Value::BulkString(b) => {
                Ok(Outcome::Replayed(String::from_utf8_lossy(&b).into_owned()))
            }
            other => Err(SubmitError::Unknown(StreamError::Protocol(format!(
                "unexpected reply to the idempotent append: {other:?}"
            )))),
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

/// A failure once part of the request may be stored is `Unknown`: a retry
/// with the same key writes only what is missing.
fn partial(e: SubmitError, stored: bool) -> SubmitError {
    match e {
        SubmitError::NotWritten(e) if stored => SubmitError::Unknown(e),
        other => other,
    }
}

/// The outcome a record found while writing means (with a key).
fn replayed_from(
    value: &str,
    idempotency: Option<&Idempotency<'_>>,
) -> Result<Submitted, SubmitError> {
    match idempotency {
        Some(idem) => replayed(value, &idem.fingerprint),
        None => Ok(Submitted::Written),
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
        | StreamError::Config { .. }
        | StreamError::TlsHandshake { .. }
        | StreamError::Connect { .. }
        | StreamError::Auth { .. } => true,
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
