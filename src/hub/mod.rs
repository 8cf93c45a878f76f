//! The realtime hub: sliding windows per channel fed from the streams, and
//! the WebSocket protocol of `GET /v1/ws` (docs/websocket.md).
//!
//! - `window.rs`: per-subject 1-s / 1-min buckets and latency slots;
//! - `state.rs`: the worker thread that owns every window: it folds the
//!   entries in, closes each second, answers snapshots and alert queries;
//!   what it adds up and shows comes from the views (`crate::view`,
//!   `processors/*_view.toml`);
//! - `channels.rs`: the watched channels and their rings, shared with the
//!   connections;
//! - `ws.rs`: connections: subscribe, snapshot, coalesced updates, resume,
//!   slow subscribers, limits.
//!
//! The hub **tails** the shard streams with plain `XREAD` (no consumer group:
//! a view needs no acknowledgements, and every instance sees every entry).
//! At start it reads back `hub.rebuild_secs` of history so its first
//! snapshot is complete. Buckets are keyed by entry-id time, so instances
//! reading the same streams hold the same numbers. Every second (after
//! `hub.tick_grace_ms`) it closes the previous second: for each watched
//! channel with data it appends the second's point to the channel's ring of
//! `hub.ring_secs` seconds and wakes the connections.
//!
//! Nothing here works on the async runtime's threads beyond short locks:
//! folding, closing seconds, summaries and snapshots run on one dedicated
//! thread (`flowmeter-hub`) that owns the windows, fed through a bounded
//! queue, so a flood of entries or subscriptions delays the hub, never the
//! runtime (Redis calls, leases, other connections).

mod channels;
mod state;
mod window;
pub mod ws;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::config::HubConfig;
use crate::event::SchemaRegistry;
use crate::stream::{Keys, Redis, StreamError};
pub use crate::view::Channel;
use crate::view::{MeasureRef, Views};
use channels::Channels;
pub(crate) use channels::Refused;
pub(crate) use channels::Since;
use state::{Command, Entry, Feed};

/// What the worker thread shares with the connections.
struct Shared {
    channels: Mutex<Channels>,
    /// The last closed second.
    tick: watch::Sender<i64>,
    /// Alert announcements, pushed at once to `alerts` subscribers.
    alerts: tokio::sync::broadcast::Sender<Arc<Value>>,
    /// Subjects the windows hold, as of the last closed second.
    subjects: AtomicUsize,
    /// When the last second was closed (the delivery lag counts from it).
    closed_at: Mutex<Option<std::time::Instant>>,
}

impl Shared {
    fn channels(&self) -> std::sync::MutexGuard<'_, Channels> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The shared part of a hub for unit tests: a table of 10 channels
    /// (10 per client) with 300 s rings, no subscribers.
    #[cfg(test)]
    fn for_tests() -> Self {
        Self {
            channels: Mutex::new(Channels::new(10, 10, 300)),
            tick: watch::channel(0).0,
            alerts: tokio::sync::broadcast::channel(4).0,
            subjects: AtomicUsize::new(0),
            closed_at: Mutex::new(None),
        }
    }
}

/// The shared hub.
pub struct Hub {
    cfg: HubConfig,
    views: Arc<Views>,
    /// Commands to the worker thread (bounded: senders wait, asynchronously).
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    /// Connections per token or client address (limits; see `ws::Slots`).
    pub(crate) connections: Mutex<HashMap<String, usize>>,
    /// Open WebSocket connections (each holds its `ws::Slots`).
    pub(crate) open: AtomicUsize,
    /// When the feed last reached the end of every stream it tails (unix
    /// ms; 0: not yet): what readiness checks ([`Hub::feed_age`]).
    caught_up_ms: AtomicI64,
}

/// Alert announcements buffered per slow subscriber before it is sent a
/// snapshot of the open alerts instead.
const ALERT_BUFFER: usize = 256;

/// Commands queued for the worker thread.
const COMMAND_QUEUE: usize = 64;

/// Seconds the clock closes late after a stall (older ones leave a hole:
/// resuming clients get a snapshot).
const CATCH_UP_SECS: i64 = 10;

/// How long a snapshot asked before the hub's first closed second waits
/// for it (the clock closes one every second, after `hub.tick_grace_ms`).
const FIRST_TICK_WAIT: Duration = Duration::from_secs(3);

/// The hub's worker is gone (it only stops when the hub is dropped).
#[derive(Debug, thiserror::Error)]
#[error("the hub's worker thread has stopped")]
pub struct WorkerGone;

impl Hub {
    /// Builds the hub over `views` and starts its worker thread (which ends
    /// when the hub is dropped).
    pub fn new(cfg: HubConfig, views: Arc<Views>) -> Arc<Hub> {
        let (tick, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            channels: Mutex::new(Channels::new(
                cfg.max_channels,
                cfg.max_channels_per_client,
                cfg.ring_secs,
            )),
            tick,
            alerts: tokio::sync::broadcast::channel(ALERT_BUFFER).0,
            subjects: AtomicUsize::new(0),
            closed_at: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        state::start(
            state::State::new(cfg.clone(), views.clone()),
            shared.clone(),
            rx,
        );
        Arc::new(Hub {
            cfg,
            views,
            tx,
            shared,
            connections: Mutex::new(HashMap::new()),
            open: AtomicUsize::new(0),
            caught_up_ms: AtomicI64::new(0),
        })
    }

    /// How long ago the feed last read to the end of every stream it tails
    /// (a read in which no stream filled `hub.read_count`); None before the
    /// first such read. It grows while Redis does not answer and while the
    /// hub reads a backlog it has not caught up with.
    pub fn feed_age(&self) -> Option<Duration> {
        let at = self.caught_up_ms.load(Ordering::Relaxed);
        (at > 0).then(|| {
            let now = chrono::Utc::now().timestamp_millis();
            Duration::from_millis(u64::try_from(now - at).unwrap_or(0))
        })
    }

    /// Live alert announcements.
    pub fn alert_feed(&self) -> tokio::sync::broadcast::Receiver<Arc<Value>> {
        self.shared.alerts.subscribe()
    }

    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    /// The views whose channels it serves.
    pub fn views(&self) -> &Views {
        &self.views
    }

    /// Open WebSocket connections (`flowmeter_hub_connections`).
    pub fn connections_open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Channels watched now, overviews included (`flowmeter_hub_channels`,
    /// at most `hub.max_channels` plus the overviews).
    pub fn channels_watched(&self) -> usize {
        self.shared.channels().len()
    }

    /// Subjects the windows hold (`flowmeter_hub_subjects`, at most
    /// `hub.max_subjects`), as of the last closed second.
    pub fn subjects_held(&self) -> usize {
        self.shared.subjects.load(Ordering::Relaxed)
    }

    /// When the last second was closed.
    pub(crate) fn last_close(&self) -> Option<std::time::Instant> {
        *self
            .shared
            .closed_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes on every closed second (its unix time).
    pub fn ticks(&self) -> watch::Receiver<i64> {
        self.shared.tick.subscribe()
    }

    /// Measure `measure` over the last `window_secs` seconds for each
    /// subject of its scope at second `now`: (subject, value, events in the
    /// window). Computed on the worker thread.
    pub async fn measure_values(
        &self,
        measure: MeasureRef,
        window_secs: i64,
        now: i64,
    ) -> Result<Vec<(String, f64, u64)>, WorkerGone> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::MeasureValues {
                measure,
                window_secs,
                now,
                reply,
            })
            .await
            .map_err(|_| WorkerGone)?;
        rx.await.map_err(|_| WorkerGone)
    }

    /// A full snapshot of `channel` as of the last closed second: its seq
    /// and the JSON of the `snapshot` message without its `reason`. Computed on the
    /// worker thread, once per channel and second however many ask.
    pub async fn snapshot(&self, channel: &Channel) -> Result<(i64, Arc<str>), WorkerGone> {
        // a hub that has closed no second yet would answer as of second 0,
        // and the first tick would then owe the client a resume_gap
        // snapshot: wait for that first close (about a second after start)
        let mut ticks = self.shared.tick.subscribe();
        let first = ticks.wait_for(|sec| *sec > 0);
        let _ = tokio::time::timeout(FIRST_TICK_WAIT, first).await;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Snapshot {
                channel: channel.clone(),
                reply,
            })
            .await
            .map_err(|_| WorkerGone)?;
        rx.await.map_err(|_| WorkerGone)
    }

    /// Whether `channel` had no events after second `seq` (it has no data
    /// now and had none then): a client resuming it from `seq` missed only
    /// empty seconds.
    pub(crate) async fn quiet_since(&self, channel: &Channel, seq: i64) -> bool {
        let (reply, rx) = oneshot::channel();
        let asked = self
            .tx
            .send(Command::Quiet {
                channel: channel.clone(),
                seq,
                reply,
            })
            .await;
        asked.is_ok() && rx.await.unwrap_or(false)
    }

    /// What a subscriber of `channel` holding everything up to `seq` is
    /// owed; `single`: the shared one-second update may answer.
    pub(crate) fn since(&self, channel: &str, seq: i64, single: bool) -> Since {
        let now = *self.shared.tick.borrow();
        self.shared.channels().since(channel, seq, now, single)
    }

    /// Counts a subscriber of `channel` from `client` (the hub only
    /// computes updates for channels someone watches). A channel not yet
    /// watched fails when `hub.max_channels` channels are watched, or when
    /// `client` already brought `hub.max_channels_per_client` in.
    /// `quiet_from`: the channel is known to have had no events from this
    /// second on (see [`Hub::quiet_since`]).
    pub(crate) fn subscribe(
        &self,
        name: &str,
        channel: &Channel,
        quiet_from: Option<i64>,
        client: &Arc<str>,
    ) -> Result<(), Refused> {
        if channel.is_alerts() {
            return Ok(()); // pushed as they happen: no ring, no per-second work
        }
        let now = *self.shared.tick.borrow();
        self.shared
            .channels()
            .subscribe(name, channel, now, quiet_from, client)
    }

    pub(crate) fn unsubscribe(&self, name: &str) {
        let now = *self.shared.tick.borrow();
        self.shared.channels().unsubscribe(name, now);
    }

    /// Runs the feed and the clock until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        redis: Redis,
        keys: Keys,
        schemas: Arc<SchemaRegistry>,
        shutdown: CancellationToken,
    ) {
        // the shard streams of every kind a view reads, in every shard set
        // (retired ones too: a hub that had not read a set's tail when it
        // retired, or rebuilds its windows after a restart, still finds the
        // entries there; a retired set gets nothing new, so reading it costs
        // an empty answer), then the alerts stream; again whenever the
        // layout changes
        let kinds: Vec<(usize, String)> = state::view_kinds(&self.views)
            .into_iter()
            .enumerate()
            .filter(|(_, (k, _))| schemas.kind_index(k).is_some())
            .map(|(i, (k, _))| (i, k))
            .collect();
        let plan = move |keys: &Keys| -> Vec<(Feed, String)> {
            kinds
                .iter()
                .flat_map(|(i, k)| {
                    let feed = Feed::Kind(*i);
                    keys.all_shards_of(k).into_iter().map(move |s| (feed, s))
                })
                .map(|(f, s)| (f, keys.stream(&s)))
                .chain(std::iter::once((Feed::Alerts, keys.alerts())))
                .collect()
        };
        let clock = {
            let hub = self.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move { hub.clock(stop).await })
        };
        self.feed(redis, keys, plan, shutdown).await;
        let _ = clock.await;
    }

    async fn clock(&self, shutdown: CancellationToken) {
        let grace = self.cfg.tick_grace_ms as i64;
        let mut last: Option<i64> = None;
        loop {
            let now = chrono::Utc::now().timestamp_millis();
            // wake at the next second boundary + grace
            let next = (now - grace).div_euclid(1000) * 1000 + 1000 + grace;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis((next - now).max(1) as u64)) => {}
            }
            // every second since the last one closed, so a late wake-up
            // leaves no hole in the rings (a long stall: the last CATCH_UP_SECS)
            let closable = (chrono::Utc::now().timestamp_millis() - grace).div_euclid(1000) - 1;
            let from = last.map_or(closable, |l| (l + 1).max(closable - CATCH_UP_SECS));
            for sec in from..=closable {
                if self.tx.send(Command::Close(sec)).await.is_err() {
                    return;
                }
            }
            last = Some(closable.max(last.unwrap_or(i64::MIN)));
        }
    }

    async fn feed(
        &self,
        redis: Redis,
        keys: Keys,
        plan: impl Fn(&Keys) -> Vec<(Feed, String)>,
        shutdown: CancellationToken,
    ) {
        let mut layout = keys.layout().version;
        let mut streams = plan(&keys);
        let start_ms = chrono::Utc::now().timestamp_millis() - self.cfg.rebuild_secs as i64 * 1000;
        // the alert stream is read whole (it is capped), so alerts opened
        // before the rebuild window still count as open
        let mut ids: Vec<String> = streams
            .iter()
            .map(|(f, _)| match f {
                Feed::Alerts => "0-0".to_string(),
                _ => format!("{}-0", start_ms.max(0)),
            })
            .collect();
        let mut rebuilt = 0u64;
        let mut rebuilding = true;
        if self
            .tx
            .send(Command::CompleteSince(start_ms.div_euclid(1000)))
            .await
            .is_err()
        {
            return;
        }
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            if keys.layout().version != layout {
                // a shard set was added (read from its start: it was created
                // empty) or dropped (empty by then)
                layout = keys.layout().version;
                let next = plan(&keys);
                ids = next
                    .iter()
                    .map(|(_, s)| {
                        streams
                            .iter()
                            .position(|(_, old)| old == s)
                            .and_then(|i| ids.get(i).cloned())
                            .unwrap_or_else(|| "0-0".to_string())
                    })
                    .collect();
                streams = next;
                tracing::info!(streams = streams.len(), "hub: shard layout changed");
            }
            match self.read_once(&redis, &streams, &mut ids).await {
                Ok(0) => {
                    if rebuilding {
                        rebuilding = false;
                        tracing::info!(entries = rebuilt, "hub windows rebuilt from the streams");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(self.cfg.poll_ms)) => {}
                    }
                }
                Ok(n) => {
                    if rebuilding {
                        rebuilt += n;
                        if rebuilt > self.cfg.rebuild_max_entries {
                            // too much history: skip ahead, say what is complete
                            let now = chrono::Utc::now().timestamp_millis();
                            for id in ids.iter_mut() {
                                *id = format!("{now}-0");
                            }
                            let _ = self
                                .tx
                                .send(Command::CompleteSince(now.div_euclid(1000)))
                                .await;
                            tracing::warn!(entries = rebuilt, limit = self.cfg.rebuild_max_entries, "hub rebuild stopped at hub.rebuild_max_entries; windows are complete from now on");
                            rebuilding = false;
                        }
                    }
                }
                Err(ReadError::Stream(e)) => {
                    tracing::warn!(error = %e, "hub: reading the streams failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
                Err(ReadError::Worker(_)) => return,
            }
        }
    }

    /// One XREAD over every stream from `ids` (one per stream on a Redis
    /// Cluster); hands the entries to the
    /// worker (waiting for room in its queue) and advances `ids`. Returns
    /// the entries read.
    async fn read_once(
        &self,
        redis: &Redis,
        streams: &[(Feed, String)],
        ids: &mut [String],
    ) -> Result<u64, ReadError> {
        // one XREAD over every stream; on a Redis Cluster, where each shard
        // stream is its own slot, one per stream (in turn, each answering
        // at once: the hub never blocks)
        let groups: Vec<std::ops::Range<usize>> = if redis.is_cluster() {
            (0..streams.len()).map(|i| i..i + 1).collect()
        } else {
            std::iter::once(0..streams.len()).collect()
        };
        let mut reply: XreadReply = Vec::new();
        for range in groups {
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT").arg(self.cfg.read_count).arg("STREAMS");
            for (_, s) in streams.get(range.clone()).unwrap_or_default() {
                cmd.arg(s);
            }
            for id in ids.get(range).unwrap_or_default() {
                cmd.arg(id);
            }
            let mut conn = redis.conn.clone();
            let part: Option<XreadReply> = redis.run(cmd.query_async(&mut conn)).await?;
            reply.extend(part.unwrap_or_default());
        }
        let mut n = 0u64;
        let mut batch = Vec::new();
        let caught_up = reply
            .iter()
            .all(|(_, entries)| entries.len() < self.cfg.read_count);
        for (stream, entries) in reply {
            let Some((i, feed)) = streams
                .iter()
                .enumerate()
                .find(|(_, (_, s))| *s == stream)
                .map(|(i, (f, _))| (i, *f))
            else {
                continue;
            };
            for (id, fields) in entries {
                n += 1;
                let data = fields
                    .into_iter()
                    .find(|(k, _)| k == "data")
                    .map(|(_, v)| v);
                if let Ok(sid) = id.parse() {
                    batch.push(Entry {
                        feed,
                        id: sid,
                        data,
                    });
                }
                if let Some(slot) = ids.get_mut(i) {
                    *slot = id;
                }
            }
        }
        if !batch.is_empty() {
            self.tx
                .send(Command::Fold(batch))
                .await
                .map_err(|_| ReadError::Worker(WorkerGone))?;
        }
        if caught_up {
            self.caught_up_ms
                .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
        }
        Ok(n)
    }
}

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Worker(WorkerGone),
}

/// XREAD: per stream, its (id, field/value pairs) entries.
type XreadReply = Vec<(String, Vec<(String, Vec<(String, String)>)>)>;
