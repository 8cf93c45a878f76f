//! flowmeter's in-process collector: a tower [`Layer`](tower::Layer) that
//! records one `http` event per request served by an axum, hyper or tonic
//! service, and a background task that appends them to flowmeter's streams
//! through `flowmeter_core`'s producer (the same streams, entry fields and
//! shard choice as the server's `POST /v1/events`). It compiles none of the
//! server: no SQL, Kafka, ClickHouse or JSON Schema. The server re-exports
//! it as `flowmeter::collector`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), flowmeter_collector::CollectorError> {
//! use axum::{routing::get, Router};
//! use flowmeter_collector::{CollectorConfig, MetricsLayer};
//!
//! let metrics = MetricsLayer::new(CollectorConfig::new("courses"))?;
//! let app: Router = Router::new()
//!     .route("/api/courses/{id}", get(|| async { "ok" }))
//!     .layer(metrics.clone());
//! // … serve `app`; on shutdown:
//! metrics.collector().shutdown().await;
//! # Ok(()) }
//! ```
//!
//! What is recorded (see `layer`): the matched route template (axum's
//! `MatchedPath`, with the default feature `axum`; else `unmatched_endpoint`:
//! never the raw path), method, status, request and response body bytes
//! counted from the frames actually read and sent (streamed, chunked and SSE
//! bodies; an aborted response counts what was handed to the connection),
//! header (and chunk framing) bytes as HTTP/1.1 puts them on the wire, and
//! the time until the last body byte was handed to the connection.
//!
//! The request path never blocks and never fails: the event goes into a
//! bounded queue (`queue_capacity`; when it is full the event is dropped and
//! counted). The sender task (see `sender`) writes batches, each under an
//! id it keeps through its retries, with the producer's idempotent script
//! (one Redis server, or a Redis Cluster: [`CollectorConfig::with_cluster`]),
//! so a batch sent again is stored once; while Redis is unreachable it
//! keeps up to `memory_max_events` in memory, then spills whole batches to
//! an append-only file in `spill_dir` (at most `spill_max_bytes`) and
//! replays them in order once Redis is back. Beyond the disk bound events
//! are dropped, and every drop is counted in [`CollectorStats`].
//!
//! Events are built from typed fields ([`HttpRecord::to_event`]); the limits
//! of `schemas/http.v1.json` the types do not guarantee are checked in code.

mod event;
mod layer;
mod sender;
mod spill;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use event::{HttpKind, HttpRecord, InvalidHttpEvent, HTTP_KIND, HTTP_VERSION};
pub use flowmeter_core::stream::ClusterRetry;
pub use layer::{MetricsLayer, MetricsService, RequestBody, ResponseBody, UserId};
pub use spill::SpillError;

/// Everything the collector needs; [`CollectorConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    /// The `service` field of every event.
    pub service: String,
    /// Redis of the flowmeter deployment; with `cluster`, any one node of
    /// the Redis Cluster.
    pub redis_url: String,
    /// A Redis Cluster rather than one server (the server's
    /// `redis.cluster`): each batch is written one transaction per shard,
    /// in that shard's slot. `redis://` only (no TLS on a cluster yet).
    /// [`CollectorConfig::with_cluster`] sets this and the seed nodes.
    pub cluster: bool,
    /// With `cluster`: further nodes to learn the cluster from when
    /// `redis_url`'s is down (the server's `redis.cluster_nodes`).
    pub cluster_nodes: Vec<String>,
    /// With `cluster`: retries of one command after TRYAGAIN, CLUSTERDOWN,
    /// LOADING or a lost node connection, and the longest wait between two
    /// (the server's `redis.cluster_retries`, default 4, and
    /// `redis.cluster_max_retry_wait_ms`, default 500 ms). Every call,
    /// retries included, stays within `redis_timeout`.
    pub cluster_retry: ClusterRetry,
    /// Key prefix and shard count: must match the ingest side (`redis.prefix`, `redis.shards`).
    pub prefix: String,
    pub shards: u32,
    /// `endpoint` of requests no route matched.
    pub unmatched_endpoint: String,
    /// Request header whose value becomes `user_id` (unless a handler sets [`UserId`]).
    pub user_header: Option<String>,
    /// Bound of the queue between requests and the sender task.
    pub queue_capacity: usize,
    /// A batch is sent as soon as this many events wait.
    pub batch_size: usize,
    /// At most this many events per batch (one round trip, one per shard
    /// on a cluster; the larger of this and `batch_size` is the bound); a
    /// backlog goes out in batches this big, so throughput is not bounded
    /// by `batch_size` per round trip.
    pub max_pipeline: usize,
    /// A partial batch is sent after this long.
    pub flush_interval: Duration,
    /// Events held in memory while Redis is unreachable, before spilling.
    pub memory_max_events: usize,
    /// Directory of the spill file; `None` disables spilling (events past
    /// the memory bound are dropped and counted).
    pub spill_dir: Option<PathBuf>,
    /// Size bound of the spill file.
    pub spill_max_bytes: u64,
    /// Timeout of one Redis command.
    pub redis_timeout: Duration,
    /// How long Redis keeps the record of a batch (one key per batch on
    /// one server, one per shard the batch touched on a cluster, about
    /// 150 bytes each). Every batch carries an id that survives its
    /// retries and the spill file, and is written by the producer's
    /// idempotent script: a batch sent again within this window, after a
    /// timeout or a partial write, adds only what is missing. Zero turns
    /// the records off: plain MULTI/EXEC, and a retried batch may be
    /// stored twice (docs/guarantees.md, section 4).
    pub idempotency_window: Duration,
    /// Retry backoff while Redis is unreachable: from `min` doubling to `max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long [`Collector::shutdown`] tries to send before spilling the rest.
    pub shutdown_timeout: Duration,
}

impl CollectorConfig {
    /// Defaults for a service named `service`, sending to Redis on
    /// 127.0.0.1:6379 with prefix `fm` and 4 shards.
    pub fn new(service: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            cluster: false,
            cluster_nodes: Vec::new(),
            cluster_retry: ClusterRetry::default(),
            prefix: "fm".into(),
            shards: 4,
            unmatched_endpoint: "unmatched".into(),
            user_header: None,
            queue_capacity: 65_536,
            batch_size: 500,
            max_pipeline: 5_000,
            flush_interval: Duration::from_millis(20),
            memory_max_events: 50_000,
            spill_dir: None,
            spill_max_bytes: 256 * 1024 * 1024,
            redis_timeout: Duration::from_secs(2),
            idempotency_window: Duration::from_secs(600),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(5),
        }
    }

    /// Sends to the Redis Cluster that `seeds` belong to (any of its
    /// nodes; more than one in case some are down): the first becomes
    /// `redis_url`, the others `cluster_nodes`.
    pub fn with_cluster<S: Into<String>>(mut self, seeds: impl IntoIterator<Item = S>) -> Self {
        let mut seeds = seeds.into_iter().map(Into::into);
        if let Some(first) = seeds.next() {
            self.redis_url = first;
        }
        self.cluster_nodes = seeds.collect();
        self.cluster = true;
        self
    }

    /// The checks [`Collector::start`] makes before anything runs.
    fn check(&self) -> Result<(), CollectorError> {
        if self.service.is_empty() || self.service.len() > 128 {
            return Err(CollectorError::Config(
                "service must be 1 to 128 characters".into(),
            ));
        }
        if self.queue_capacity == 0 || self.batch_size == 0 || self.max_pipeline == 0 {
            return Err(CollectorError::Config(
                "queue_capacity, batch_size and max_pipeline must be positive".into(),
            ));
        }
        let tls = std::iter::once(&self.redis_url)
            .chain(&self.cluster_nodes)
            .any(|u| u.starts_with("rediss://"));
        if self.cluster && tls {
            return Err(CollectorError::Config(
                "TLS (rediss://) is not supported on a Redis Cluster yet".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// Not retryable: fix the configuration.
    #[error("collector configuration: {0}")]
    Config(String),
    /// Not retryable: `MetricsLayer::new` must run inside a tokio runtime.
    #[error("the collector needs a tokio runtime: create the layer inside #[tokio::main]")]
    NoRuntime,
    #[error(transparent)]
    Spill(#[from] SpillError),
}

/// Counters of one collector (all since start).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub recorded: AtomicU64,
    pub sent: AtomicU64,
    pub spilled: AtomicU64,
    pub replayed: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub dropped_disk_full: AtomicU64,
    pub dropped_invalid: AtomicU64,
    pub send_errors: AtomicU64,
    pub in_memory: AtomicU64,
    pub spill_backlog_bytes: AtomicU64,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CollectorStats {
    /// Events recorded by the layer.
    pub recorded: u64,
    /// Events acknowledged by Redis.
    pub sent: u64,
    /// Events written to the spill file.
    pub spilled: u64,
    /// Spilled events sent after Redis came back.
    pub replayed: u64,
    /// Dropped because the request-path queue was full.
    pub dropped_queue_full: u64,
    /// Dropped because memory and the spill file were both full.
    pub dropped_disk_full: u64,
    /// Dropped because the event would fail the `http` schema (e.g. a route
    /// template over 255 characters), or a spilled line could not be read back.
    pub dropped_invalid: u64,
    /// Failed batch writes (each retried).
    pub send_errors: u64,
    /// Events waiting in memory.
    pub in_memory: u64,
    /// Bytes of the spill file not yet replayed.
    pub spill_backlog_bytes: u64,
}

impl Counters {
    fn snapshot(&self) -> CollectorStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CollectorStats {
            recorded: g(&self.recorded),
            sent: g(&self.sent),
            spilled: g(&self.spilled),
            replayed: g(&self.replayed),
            dropped_queue_full: g(&self.dropped_queue_full),
            dropped_disk_full: g(&self.dropped_disk_full),
            dropped_invalid: g(&self.dropped_invalid),
            send_errors: g(&self.send_errors),
            in_memory: g(&self.in_memory),
            spill_backlog_bytes: g(&self.spill_backlog_bytes),
        }
    }
}

/// The handle shared by the layer and the application: stats and shutdown.
#[derive(Clone)]
pub struct Collector {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub config: CollectorConfig,
    pub tx: mpsc::Sender<HttpRecord>,
    pub counters: Arc<Counters>,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Collector {
    /// Starts the sender task on the current tokio runtime.
    pub fn start(config: CollectorConfig) -> Result<Self, CollectorError> {
        let handle =
            tokio::runtime::Handle::try_current().map_err(|_| CollectorError::NoRuntime)?;
        config.check()?;
        let spill = match &config.spill_dir {
            Some(dir) => Some(spill::Spill::open(
                dir,
                &config.service,
                config.spill_max_bytes,
            )?),
            None => None,
        };
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let counters = Arc::new(Counters::default());
        let stop = CancellationToken::new();
        let task = handle.spawn(sender::run(
            config.clone(),
            rx,
            spill,
            counters.clone(),
            stop.clone(),
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                tx,
                counters,
                stop,
                task: Mutex::new(Some(task)),
            }),
        })
    }

    pub fn stats(&self) -> CollectorStats {
        self.inner.counters.snapshot()
    }

    pub fn config(&self) -> &CollectorConfig {
        &self.inner.config
    }

    /// Sends what is queued (for up to `shutdown_timeout`), spills the rest,
    /// and stops the sender task. Events recorded afterwards are dropped and
    /// counted as `dropped_queue_full`.
    pub async fn shutdown(&self) {
        self.inner.stop.cancel();
        let task = self.inner.task.lock().await.take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Waits until the sender task has taken every recorded event (each is
    /// now sent, held in memory, spilled or dropped); false if `limit` passed
    /// first. For tests and benchmarks.
    pub async fn settle(&self, limit: Duration) -> bool {
        let start = std::time::Instant::now();
        loop {
            let s = self.stats();
            let taken = s.sent - s.replayed
                + s.in_memory
                + s.spilled
                + s.dropped_disk_full
                + s.dropped_invalid
                + s.dropped_queue_full;
            if taken >= s.recorded {
                return true;
            }
            if start.elapsed() > limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Hands a record (cheap to build on the request path; serialized by
    /// the sender task) to the sender task without waiting.
    pub(crate) fn record(&self, r: HttpRecord) {
        let c = &self.inner.counters;
        c.recorded.fetch_add(1, Ordering::Relaxed);
        if self.inner.tx.try_send(r).is_err() {
            c.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
        }
    }
}
