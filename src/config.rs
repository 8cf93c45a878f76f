//! The one typed configuration of flowmeter.
//!
//! Precedence, lowest first: the defaults in this file < the TOML file
//! (`flowmeter.toml` in the working directory when present, or `--config PATH`,
//! which must exist) < the profile (`--profile NAME` or `FLOWMETER_PROFILE=NAME`,
//! see [`Profile`]) < environment variables `FLOWMETER__SECTION__KEY`
//! (e.g. `FLOWMETER__REDIS__URL`; a list setting takes a JSON array or
//! comma-separated strings, see `env_lists`). Unknown keys are an error that
//! names the key.
//! Every field is documented here; `flowmeter.example.toml` repeats these docs.

// `[auth]` is defined beside the code it configures; named here with the
// other sections.
pub use crate::auth::{AuthConfig, TokenConfig};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod env_lists;

/// Replaces the password of a URL with `***` (flowmeter-core's, which the
/// Redis connection uses too).
pub use flowmeter_core::mask_url;

/// Errors while loading the configuration. None of them is worth retrying:
/// the operator has to fix the file or the environment.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: ServerConfig,
    pub redis: RedisConfig,
    pub mysql: MysqlConfig,
    pub paths: PathsConfig,
    pub ingest: IngestConfig,
    pub rollup: RollupConfig,
    pub retention: RetentionConfig,
    pub hub: HubConfig,
    pub auth: AuthConfig,
    pub kafka: KafkaConfig,
    pub clickhouse: ClickhouseConfig,
    pub query: QueryConfig,
    pub metrics: MetricsConfig,
    pub health: HealthConfig,
    pub alert_delivery: AlertDeliveryConfig,
    /// The profile these settings were loaded with (`--profile`,
    /// `FLOWMETER_PROFILE`), if any; not a key of the file.
    #[serde(skip)]
    pub profile: Option<Profile>,
}

/// The HTTP listener (ingest, query and status API, the hub's WebSockets)
/// and the limits that keep slow or abusive clients from holding it; see
/// docs/security.md.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the API listens on. Anything but a loopback address needs
    /// `[auth]` tokens, or `auth.allow_anonymous = true`.
    pub listen: String,
    /// Address of `/healthz` and `/metrics` of a process with none of the
    /// ingest, api and hub roles (`serve --roles rollup`), which serves
    /// nothing else. Default `127.0.0.1:0`: a free port, logged at start, so
    /// several workers on one machine do not collide on `listen`. Set a fixed
    /// one where probes or Prometheus must find it (k8s/base/flowmeter.toml sets
    /// `0.0.0.0:8080`); `serve --listen` overrides it for such a process.
    pub worker_listen: String,
    /// Graceful shutdown: how long in-flight requests and the final flush may take.
    pub shutdown_timeout_ms: u64,
    /// Most open client connections, HTTP and WebSocket together (default
    /// 16,384). Past it new connections wait in the listen backlog until one
    /// closes. Keep it below the process's file limit (`ulimit -n`).
    pub max_connections: usize,
    /// A connection must finish its TLS handshake and send a request's
    /// complete headers within this long of opening, and the next request's
    /// headers within this long of the previous answer (so it is also the
    /// keep-alive idle timeout); else it is closed (default 10,000).
    pub header_read_timeout_ms: u64,
    /// Longest pause between two chunks of a request body; past it the
    /// request fails and the connection is closed (default 10,000).
    pub body_idle_timeout_ms: u64,
    /// Longest one request may take, from its complete headers to the last
    /// byte of the answer; past it the client gets 408 (or the connection is
    /// cut mid-answer). A WebSocket is not cut once upgraded, nor an ingest
    /// request whose Redis write has begun (it ends with the write's answer,
    /// within `redis.command_timeout_ms`) (default 60,000).
    pub request_timeout_ms: u64,
    /// Largest request head (request line and headers) a client may send;
    /// larger heads get 431. At least 8,192 (default 16,384). Connections
    /// still sending their head hold at most `max_connections ×
    /// max_header_bytes` of buffers.
    pub max_header_bytes: usize,
    /// HTTPS and WSS on the same port (`[server.tls]`).
    pub tls: TlsConfig,
    /// Ingest rate limits (`[server.ingest_rate_limit]`).
    pub ingest_rate_limit: IngestRateLimitConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            worker_listen: "127.0.0.1:0".into(),
            shutdown_timeout_ms: 15_000,
            max_connections: 16_384,
            header_read_timeout_ms: 10_000,
            body_idle_timeout_ms: 10_000,
            request_timeout_ms: 60_000,
            max_header_bytes: 16 * 1024,
            tls: TlsConfig::default(),
            ingest_rate_limit: IngestRateLimitConfig::default(),
        }
    }
}

/// TLS for the listener (rustls). With both paths set the port speaks only
/// HTTPS/WSS (HTTP/2 offered by ALPN); a plain-HTTP request gets a 400 that
/// says so. Files are read at start; a change needs a restart.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first. Empty = no TLS.
    pub cert_path: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1). Empty = no TLS.
    pub key_path: PathBuf,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        !self.cert_path.as_os_str().is_empty()
    }
}

/// Token buckets on `POST /v1/events`: one per token, or per client address
/// when auth is off (IPv6 clients by /64). A request past its bucket gets
/// 429 with `Retry-After`. Each request costs one, whatever it carries, so
/// events/s are bounded by `requests_per_sec × ingest.max_events_per_request`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestRateLimitConfig {
    /// Sustained requests per second per token or client; 0 = no limit
    /// (default 1,000).
    pub requests_per_sec: f64,
    /// Requests a token or client may send at once above the sustained rate
    /// (the bucket's size; default 2,000).
    pub burst_requests: u32,
    /// Client addresses tracked when auth is off; memory stays below about
    /// 100 bytes each. Past it the least recently seen half is forgotten
    /// (those clients start again with a full bucket) (default 100,000).
    pub max_clients: usize,
    /// A client address idle this long may be forgotten (default 300).
    pub client_idle_secs: u64,
}

impl Default for IngestRateLimitConfig {
    fn default() -> Self {
        Self {
            requests_per_sec: 1_000.0,
            burst_requests: 2_000,
            max_clients: 100_000,
            client_idle_secs: 300,
        }
    }
}

/// Redis, where the event streams live.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// Connection URL (`redis://[:password@]host:port[/db]`); with
    /// `cluster`, any one node of the cluster.
    pub url: String,
    /// A Redis Cluster rather than one server: commands are routed by their
    /// keys' slots (what is tested there: docs/operations.md, "Redis
    /// Cluster").
    pub cluster: bool,
    /// With `cluster`: further nodes to learn the cluster from when `url`'s
    /// is down.
    pub cluster_nodes: Vec<String>,
    /// With `cluster`: retries of one command after TRYAGAIN, CLUSTERDOWN,
    /// LOADING or a lost node connection (MOVED and ASK are followed at
    /// once), and of a transaction aborted because its slot moved. Each
    /// call, retries included, stays within `command_timeout_ms`.
    pub cluster_retries: u32,
    /// With `cluster`: the longest wait between two such retries (ms); the
    /// waits grow as 10·2^n ms, jittered, up to this.
    pub cluster_max_retry_wait_ms: u64,
    /// Every key flowmeter writes starts with this prefix, so tests and
    /// tenants can share one server.
    pub prefix: String,
    /// Shard streams per event kind (`{prefix}:{kind:0}` … `{prefix}:{kind:S-1}`)
    /// until a layout is stored in Redis. To change it on a live system, use
    /// `flowmeter shards set N` (docs/operations.md, "Changing the shard
    /// count"): once a layout is stored, it wins over this setting.
    pub shards: u32,
    /// How often workers, hubs and ingest's backpressure re-read the stored
    /// shard layout (a change reaches them within this; writers move on at
    /// once when they meet a sealed set).
    pub layout_refresh_ms: u64,
    /// Timeout for one Redis command or pipeline; past it the caller gets an
    /// error (ingest answers 503 with Retry-After). On a cluster it bounds
    /// each attempt and the command with its retries: flowmeter sends no
    /// blocking reads, so no answer legitimately takes longer.
    pub command_timeout_ms: u64,
    /// `rediss://` only: PEM file with the CA certificate(s) the server's
    /// certificate must be signed by. Unset: the system's trust store.
    pub tls_ca_file: Option<PathBuf>,
    /// `rediss://` only, for servers that check client certificates
    /// (`tls-auth-clients yes`): PEM certificate chain and private key of
    /// this client. Both or neither.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            cluster: false,
            cluster_nodes: Vec::new(),
            cluster_retries: 4,
            cluster_max_retry_wait_ms: 500,
            prefix: "fm".into(),
            shards: 4,
            layout_refresh_ms: 1_000,
            command_timeout_ms: 5_000,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

/// MySQL (or MariaDB), where rollups and checkpoints live.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MysqlConfig {
    /// Connection URL. Only `flowmeter migrate` creates the database when it
    /// does not exist; every other command says to run it.
    pub url: String,
    /// Upper bound of the connection pool of the processors (flushes,
    /// checkpoints, alerts). The query API has its own: `query.max_connections`.
    pub max_connections: u32,
    /// TLS to the server: `disabled`, `preferred` (TLS when the server
    /// offers it, its certificate unchecked), `required` (TLS, certificate
    /// unchecked), `verify_ca` (TLS, certificate signed by `ssl_ca` or the
    /// system's trust store) or `verify_identity` (also: the certificate
    /// names the URL's host). Unset: the URL's `ssl-mode`, else `preferred`.
    pub ssl_mode: Option<MysqlSslMode>,
    /// PEM file with the CA certificate(s) of the server, added to the
    /// system's trust store. Unset: the URL's `ssl-ca`, if any.
    pub ssl_ca: Option<PathBuf>,
    /// Client certificate chain and private key (PEM), for users created
    /// `REQUIRE X509`. Both or neither; unset: the URL's `ssl-cert`/`ssl-key`.
    pub ssl_cert: Option<PathBuf>,
    pub ssl_key: Option<PathBuf>,
}

impl Default for MysqlConfig {
    fn default() -> Self {
        Self {
            url: "mysql://root@127.0.0.1:3306/flowmeter".into(),
            max_connections: 8,
            ssl_mode: None,
            ssl_ca: None,
            ssl_cert: None,
            ssl_key: None,
        }
    }
}

/// `mysql.ssl_mode` (the names of MySQL's `--ssl-mode`, in lower case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MysqlSslMode {
    Disabled,
    Preferred,
    Required,
    VerifyCa,
    VerifyIdentity,
}

/// The query API (`/v1/rollups/*`, `/v1/alerts`, `/v1/events/search`):
/// what one query may cost, so queries can neither exhaust memory nor
/// starve the processors' flushes; see docs/api.md#bounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// MySQL connections of the query API: a pool of its own, separate
    /// from the processors' (`mysql.max_connections`), so queries never
    /// take the connections flushes need.
    pub max_connections: u32,
    /// Queries answered at once (rollups, alerts, archive searches); one
    /// more gets 503 with `Retry-After: retry_after_secs`. A query holds its
    /// slot until its answer is sent, so slow readers count.
    pub max_concurrent_queries: usize,
    /// Largest body of one answer. Past it the answer ends at a row
    /// boundary with `truncated: true` and a `cursor` to continue from.
    pub max_response_bytes: usize,
    /// Widest `from`..`to` of one hourly rollup query.
    pub max_hourly_range_days: u64,
    /// Widest `from`..`to` of one daily rollup or alerts query.
    pub max_daily_range_days: u64,
    /// Seconds a client is told to wait (`Retry-After`, and
    /// `retry_after_secs` in the body) when every query slot is taken or a
    /// read endpoint's store cannot answer (Redis for `/v1/status`, MySQL,
    /// the archive).
    pub retry_after_secs: u64,
    /// Browser origins (e.g. `https://grafana.example.com`, or `*`) whose
    /// pages may read the read endpoints (`/v1/rollups/*`, `/v1/status`,
    /// `/v1/alerts`, `/v1/events/search`; a `read` token is still needed):
    /// preflights and answers get CORS headers. Other origins get their
    /// answer without them, which browsers keep from the page. Separate
    /// from `ingest.cors_origins`: a page that sends events need not read.
    pub cors_origins: Vec<String>,
    /// How long browsers may cache a preflight answer of the read endpoints
    /// (`Access-Control-Max-Age`).
    pub cors_max_age_secs: u64,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            max_connections: 4,
            max_concurrent_queries: 8,
            max_response_bytes: 4 * 1024 * 1024,
            max_hourly_range_days: 92,
            max_daily_range_days: 1_830,
            retry_after_secs: 1,
            cors_origins: Vec::new(),
            cors_max_age_secs: 600,
        }
    }
}

/// `GET /metrics` (docs/operations.md#metrics lists every metric).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve the per-stream and per-group gauges read from Redis
    /// (`flowmeter_stream_*`, `flowmeter_group_*`,
    /// `flowmeter_processor_workers`). Every process serving them reports
    /// the same figures: aggregate them with `max`, not `sum`, or turn this
    /// off on all but one deployment (default true).
    pub pipeline: bool,
    /// Shortest time between two Redis reads of those gauges; scrapes in
    /// between get the figures of the last read, so a scrape storm costs
    /// Redis one read per interval (default 5,000).
    pub pipeline_refresh_ms: u64,
    /// Most shard streams whose per-stream and per-group series are
    /// written; the rest are left out and counted in
    /// `flowmeter_metrics_streams_skipped` (default 1,024: 4 kinds of 256
    /// shards).
    pub max_streams: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            pipeline: true,
            pipeline_refresh_ms: 5_000,
            max_streams: 1_024,
        }
    }
}

/// `GET /health/ready` and the start of `serve` (docs/operations.md,
/// "Health and readiness").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Longest one readiness check may take (a Redis `PING`, a MySQL
    /// `SELECT 1`, reading this process's worker figures); a check that
    /// takes longer fails (default 1,000).
    pub check_timeout_ms: u64,
    /// The hub's feed is current while its reader has reached the end of
    /// every stream it tails within this long; past it (Redis slow or
    /// unreachable, or a backlog the hub does not catch up with) readiness
    /// fails (default 10,000).
    pub hub_feed_max_age_ms: u64,
    /// A processor worker of this process whose flushes (deliveries) have
    /// kept failing for longer than this fails readiness; 0: from its first
    /// failure (default 30,000).
    pub max_stall_ms: u64,
    /// While Redis or MySQL cannot be reached at start, `serve` answers
    /// `/health/live` 200 and `/health/ready` 503 and retries, waiting from
    /// 100 ms, doubling up to this (default 5,000).
    pub startup_retry_max_ms: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            check_timeout_ms: 1_000,
            hub_feed_max_age_ms: 10_000,
            max_stall_ms: 30_000,
            startup_retry_max_ms: 5_000,
        }
    }
}

/// Where the declarative parts live. Relative paths are relative to the
/// working directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathsConfig {
    /// Event JSON Schemas, one file per kind and version (`KIND.vN.json`).
    pub schemas: PathBuf,
    /// Processor definitions (`*.toml`).
    pub processors: PathBuf,
    /// sqlx migrations for MySQL 8 / MariaDB 10.11.
    pub migrations: PathBuf,
    /// ClickHouse DDL for the archive (`NNNN_name.sql`), applied by `flowmeter migrate`.
    pub clickhouse_migrations: PathBuf,
}

impl Default for PathsConfig {
    fn default() -> Self {
        Self {
            schemas: "schemas".into(),
            processors: "processors".into(),
            migrations: "migrations".into(),
            clickhouse_migrations: "migrations/clickhouse".into(),
        }
    }
}

/// The ingest endpoint (`POST /v1/events`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Largest accepted request body; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Request body bytes all ingest requests together may hold at once
    /// (declared `Content-Length`s before reading, chunked bodies as they
    /// arrive, until the request is done). A body past it gets 503 with
    /// `Retry-After`, unread. At least `max_body_bytes`.
    pub max_inflight_body_bytes: usize,
    /// Most events in one request; more gets 413.
    pub max_events_per_request: usize,
    /// Most per-event errors listed in a 400 answer (the count is always exact).
    pub max_reported_errors: usize,
    /// Largest body of a 400 answer: errors that would pass it are counted
    /// (`errors_omitted`) but not listed.
    pub max_error_body_bytes: usize,
    /// Longest `field` and `reason` of one listed error; longer ones (and the
    /// values they quote) are cut on a character boundary and end with `…`.
    pub max_error_reason_chars: usize,
    /// Seconds a client is told to wait (Retry-After) with a 503: Redis
    /// unreachable, the outcome unknown, or the backlog past `max_backlog_entries`.
    pub retry_after_secs: u64,
    /// Longest accepted `Idempotency-Key` header (letters, digits and
    /// `-_.:+/=`); longer keys get 400.
    pub max_idempotency_key_bytes: usize,
    /// How long a request's `Idempotency-Key` is remembered: a retry within
    /// it gets the first outcome and writes nothing.
    pub idempotency_window_secs: u64,
    /// Backpressure: past this many unacknowledged entries (lag + pending) of
    /// any consumer group on a shard stream, requests writing to it get 503
    /// with Retry-After. 0 = never refuse.
    pub max_backlog_entries: u64,
    /// How often the backlog figures are refreshed (XINFO GROUPS of every
    /// shard stream); ingest decides on figures at most this old (plus one
    /// Redis round trip).
    pub backlog_poll_ms: u64,
    /// Browser origins (e.g. `https://meet.example.com`, or `*`) whose pages
    /// may send events (the WebRTC collector); others get 403. Requests
    /// without an `Origin` (servers) and from the server's own origin pass.
    pub cors_origins: Vec<String>,
    /// How long browsers may cache a preflight answer (`Access-Control-Max-Age`).
    pub cors_max_age_secs: u64,
    /// Replicas that must confirm a request's write before it is answered
    /// 202: after the write, ingest sends `WAIT wait_replicas
    /// wait_replicas_timeout_ms` to the master that took it (on a cluster,
    /// to each master the request wrote to). Fewer within the timeout: 503
    /// `"outcome": "unknown"` (the events are stored on the master; a retry
    /// with the same `Idempotency-Key` writes nothing). It narrows the
    /// window in which a failover loses acknowledged events; it does not
    /// close it (docs/guarantees.md, "Redis Cluster"). 0 = off (default).
    pub wait_replicas: u32,
    /// How long one `WAIT` may take (ms); below `redis.command_timeout_ms`.
    /// Every request waits this long while a master has fewer replicas
    /// than `wait_replicas`.
    pub wait_replicas_timeout_ms: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_inflight_body_bytes: 64 * 1024 * 1024,
            max_events_per_request: 10_000,
            max_reported_errors: 100,
            max_error_body_bytes: 64 * 1024,
            max_error_reason_chars: 240,
            retry_after_secs: 1,
            max_idempotency_key_bytes: 128,
            idempotency_window_secs: 24 * 3600,
            max_backlog_entries: 500_000,
            backlog_poll_ms: 1_000,
            cors_origins: Vec::new(),
            cors_max_age_secs: 600,
            wait_replicas: 0,
            wait_replicas_timeout_ms: 1_000,
        }
    }
}

/// The rollup runner (consumer groups folding streams into MySQL).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RollupConfig {
    /// Flush aggregates to MySQL at least this often.
    pub flush_interval_ms: u64,
    /// Flush early once this many events are aggregated in memory.
    pub max_batch_events: usize,
    /// COUNT of one XREADGROUP call.
    pub read_count: usize,
    /// Batches buffered between shard readers and the aggregator.
    pub read_queue_batches: usize,
    /// Pause before polling an idle shard again.
    pub idle_poll_ms: u64,
    /// Shard lease lifetime: a dead worker's shards move to others after this.
    pub lease_ms: u64,
    /// Retries of one flush transaction on deadlock or lock-wait timeout.
    pub max_flush_retries: u32,
    /// An entry delivered more than this many times without its effect
    /// being committed (the worker crashed or stalled on it each time) goes
    /// to the dead-letter stream instead of being applied again. 0 = never.
    pub max_deliveries: u64,
    /// Cardinality budget: new dimension keys (a row's dimension values, in
    /// any time bucket) each rollup table takes per wall-clock hour (UTC);
    /// events of further new keys fold into the bucket's `__other__` row
    /// (nothing is lost). 0 = no limit. A processor file may set its own
    /// (`max_new_keys_per_hour` at the top or in a `[[table]]`).
    pub max_new_keys_per_hour: u64,
    /// An event whose `ts` is more than this many seconds after it was
    /// written to its stream (the entry id's time) is dead-lettered instead
    /// of rolled up. 0 = no bound: every `ts` ingest accepts (1970-01-01 ..=
    /// 3000-01-01) is rolled up.
    pub max_future_secs: u64,
}

impl Default for RollupConfig {
    fn default() -> Self {
        Self {
            flush_interval_ms: 1_000,
            max_batch_events: 50_000,
            read_count: 2_000,
            read_queue_batches: 16,
            idle_poll_ms: 50,
            lease_ms: 10_000,
            max_flush_retries: 10,
            max_deliveries: 5,
            max_new_keys_per_hour: 10_000,
            max_future_secs: 0,
        }
    }
}

/// Stream retention, applied by the rollup role (one pass per interval
/// across all workers). Entries a consumer group still needs are never
/// trimmed by `max_age_secs` or `max_len`; see docs/operations.md.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Trim entries older than this many seconds (by entry id); 0 = no age limit.
    pub max_age_secs: u64,
    /// Keep at most this many entries per shard stream; 0 = no length limit.
    pub max_len: u64,
    /// Memory safety: past this many entries per shard stream, trim even
    /// entries a group has not acknowledged, counting each per group. 0 = never.
    pub hard_max_len: u64,
    /// Pause between retention passes.
    pub interval_ms: u64,
    /// Most entries one pass scans per stream for a length limit (an
    /// overdue stream comes down over several passes).
    pub max_scan: usize,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            max_age_secs: 7 * 24 * 3600,
            max_len: 0,
            hard_max_len: 0,
            interval_ms: 10_000,
            max_scan: 10_000,
        }
    }
}

/// The realtime hub (`GET /v1/ws`, role `hub`); see docs/websocket.md.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// History read back at start so the first snapshots are complete.
    pub rebuild_secs: u64,
    /// Most entries read back at start; past it the windows are complete
    /// from then on (snapshots say so in `complete_since`).
    pub rebuild_max_entries: u64,
    /// COUNT of one XREAD over all shard streams.
    pub read_count: usize,
    /// Pause when the streams have nothing new.
    pub poll_ms: u64,
    /// A second is closed (and its updates sent) this long after it ends,
    /// so entries still in flight make it into its point.
    pub tick_grace_ms: u64,
    /// Updates kept per channel for resuming clients (one per second).
    pub ring_secs: usize,
    /// Update interval when a subscription names none.
    pub default_interval_ms: u64,
    /// Smallest update interval a client may ask for.
    pub min_interval_ms: u64,
    /// Largest client message.
    pub max_message_bytes: usize,
    /// Channels one connection may watch.
    pub max_subscriptions: usize,
    /// Open WebSocket connections per token (with auth off, of all
    /// anonymous clients together); past it the upgrade gets 429. Below
    /// `server.max_connections` (which caps every socket, HTTP and
    /// WebSocket, and past which connections wait rather than fail), so one
    /// token's dashboards get a 429 while ingest and other tokens keep the
    /// rest of the server's connections. A token is usually a whole fleet
    /// of dashboards: 8,192 by default, half of `server.max_connections`.
    pub max_connections_per_token: usize,
    /// Outgoing messages queued per connection; past it the connection's
    /// updates are dropped and it gets a fresh snapshot once it catches up.
    pub send_queue: usize,
    /// Ping period; a connection that has not answered (pong or any
    /// message) for `pong_timeout_ms` is closed.
    pub ping_interval_ms: u64,
    pub pong_timeout_ms: u64,
    /// Rows of each view's top list (`top_endpoints` of the http view).
    pub top_endpoints: usize,
    /// A meeting or peer counts as active when it sent a sample this recently.
    pub active_secs: u64,
    /// Subjects (services, endpoints, meetings) held; events of further
    /// subjects count in the overviews only. A subject busy every second
    /// holds ~40 KB (http) to ~70 KB (webrtc): ≈ 0.9–1.3 GB at the default
    /// 20,000 (docs/websocket.md, memory bound).
    pub max_subjects: usize,
    /// New subjects admitted per hour (of the entries' arrival time), like
    /// the rollups' `max_new_keys_per_hour`; past it, events of unknown
    /// subjects count in the overviews only (and in
    /// `flowmeter_hub_events_folded_total`).
    pub max_new_subjects_per_hour: u64,
    /// Channels watched at once in the whole process (by any connection, or
    /// kept warm for resuming clients); past it a subscription to a further
    /// channel gets an error frame. Warm channels nobody watches are given
    /// up first. Each costs at most `ring_secs` points plus one summary.
    /// The three overviews (`http:overview`, `webrtc:overview`,
    /// `webrtc:meetings`) always fit, beyond this.
    pub max_channels: usize,
    /// Channels of the table one client may have brought in (a token, or a
    /// client address when auth is off, IPv6 by /64): a channel counts
    /// against the client whose subscription added it, for as long as it
    /// stays in the table. Subscribing to a channel already there, or to an
    /// overview, is always allowed and charged to nobody. Past it a
    /// subscription to a further channel gets an error frame; the client's
    /// own warm channels nobody watches are given up first.
    pub max_channels_per_client: usize,
    /// Members tracked at once per view (`[members]` of a view file: the
    /// webrtc view's peers, for `active_peers` / `active_meetings`); a
    /// member is forgotten `active_secs` after its last event, and events of
    /// further members still count in every window.
    pub max_peers: usize,
    /// Rows of each list channel (`webrtc:meetings`: the busiest meetings;
    /// `active_meetings` still counts them all).
    pub max_meetings_listed: usize,
    /// Messages one connection may send per second; past it they are
    /// ignored, with one error frame per second saying so.
    pub max_messages_per_sec: u32,
    /// Snapshots one connection is sent per second; further ones wait for
    /// the next seconds (the subscription stands).
    pub max_snapshots_per_sec: u32,
    /// Open connections per client address when auth is off (anonymous
    /// clients; IPv6 by /64, as every per-client limit);
    /// `max_connections_per_token` still caps them all together.
    pub max_connections_per_ip: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            rebuild_secs: 3_600,
            rebuild_max_entries: 5_000_000,
            read_count: 5_000,
            poll_ms: 50,
            tick_grace_ms: 300,
            ring_secs: 300,
            default_interval_ms: 2_000,
            min_interval_ms: 250,
            max_message_bytes: 64 * 1024,
            max_subscriptions: 64,
            max_connections_per_token: 8_192,
            send_queue: 64,
            ping_interval_ms: 15_000,
            pong_timeout_ms: 45_000,
            top_endpoints: 10,
            active_secs: 30,
            max_subjects: 20_000,
            max_new_subjects_per_hour: 10_000,
            max_channels: 1_000,
            max_channels_per_client: 250,
            max_peers: 50_000,
            max_meetings_listed: 1_000,
            max_messages_per_sec: 20,
            max_snapshots_per_sec: 20,
            max_connections_per_ip: 256,
        }
    }
}

/// How hub instances deliver alert transitions to the notifiers of
/// `processors/alerts.toml` (`[[notifier]]`) through the MySQL outbox
/// `alert_notifications`; see docs/alerts.md.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertDeliveryConfig {
    /// How often each deliverer looks for due notifications.
    pub poll_ms: u64,
    /// Notifications one deliverer claims and sends at once (concurrently).
    pub max_in_flight: usize,
    /// Longest one request may take, connecting included; a claim on a
    /// notification lasts this plus 10 s, so no other deliverer sends it
    /// meanwhile. At most 300,000 (5 min).
    pub timeout_ms: u64,
    /// Attempts per notification; after the last failed one it is given up
    /// (`gave_up`, with its last error).
    pub max_attempts: u32,
    /// A notification not delivered this long after its transition is
    /// given up at its next failure.
    pub max_age_secs: u64,
    /// Pause after the first failed attempt; doubled after each further
    /// one, up to `backoff_max_ms`. A receiver's `Retry-After` (429, 503)
    /// is honoured up to `backoff_max_ms`, at most 86,400,000 (a day).
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Largest request body; a larger one (a long message or label set) is
    /// given up at once rather than sent.
    pub max_body_bytes: usize,
    /// Open alerts are re-sent to Alertmanager this often (it forgets an
    /// alert nobody re-sends); each firing alert says it ends 4 × this
    /// from its sending unless re-sent, as Prometheus does. At most 86,400.
    pub alertmanager_refresh_secs: u64,
}

impl Default for AlertDeliveryConfig {
    fn default() -> Self {
        Self {
            poll_ms: 1_000,
            max_in_flight: 16,
            timeout_ms: 10_000,
            max_attempts: 100,
            max_age_secs: 6 * 3_600,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 300_000,
            max_body_bytes: 64 * 1024,
            alertmanager_refresh_secs: 60,
        }
    }
}

/// Largest `alert_delivery.timeout_ms`: 5 minutes.
const MAX_DELIVERY_TIMEOUT_MS: u64 = 300_000;
/// Largest `alert_delivery.backoff_max_ms`: a day.
const MAX_DELIVERY_BACKOFF_MS: u64 = 86_400_000;

impl AlertDeliveryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(format!("alert_delivery.{m}")));
        if self.poll_ms < 10 {
            return bad("poll_ms must be at least 10");
        }
        if self.max_in_flight == 0 || self.max_in_flight > 1_000 {
            return bad("max_in_flight must be 1 to 1000");
        }
        // the claim and the backoff are written as `NOW(3) + INTERVAL ? * 1000
        // MICROSECOND` (store/outbox.rs): past these caps MySQL's product
        // overflows and every claim would fail
        if self.timeout_ms == 0 || self.timeout_ms > MAX_DELIVERY_TIMEOUT_MS {
            return bad("timeout_ms must be 1 to 300000 (5 min)");
        }
        if self.max_attempts == 0 || self.max_age_secs == 0 {
            return bad("max_attempts and max_age_secs must be > 0");
        }
        if self.backoff_initial_ms == 0 || self.backoff_max_ms < self.backoff_initial_ms {
            return bad(
                "backoff_initial_ms must be > 0 and backoff_max_ms at least backoff_initial_ms",
            );
        }
        if self.backoff_max_ms > MAX_DELIVERY_BACKOFF_MS {
            return bad("backoff_max_ms must be at most 86400000 (1 day)");
        }
        if self.max_body_bytes < 1_024 {
            return bad("max_body_bytes must be at least 1024");
        }
        if self.alertmanager_refresh_secs == 0 || self.alertmanager_refresh_secs > 86_400 {
            return bad("alertmanager_refresh_secs must be 1 to 86400 (1 day)");
        }
        Ok(())
    }
}

/// A named set of settings chosen on the command line (`--profile NAME`)
/// or with `FLOWMETER_PROFILE=NAME`. It sits above the file and below the
/// `FLOWMETER__SECTION__KEY` variables, so it moves a whole setup to another
/// place while single variables can still adjust it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// The data of `make demo` (scripts/demo): Redis key prefix `fmdemo` and
    /// MySQL database `fmdemo` on the server of `mysql.url`.
    Demo,
}

impl Profile {
    /// The variable that names a profile when `--profile` is not given.
    pub const ENV: &'static str = "FLOWMETER_PROFILE";
    /// The Redis key prefix and MySQL database of [`Profile::Demo`].
    pub const DEMO_NAME: &'static str = "fmdemo";

    /// The profile called `name`; an unknown name is an error that lists the known ones.
    pub fn parse(name: &str) -> Result<Self, ConfigError> {
        match name.trim() {
            "demo" => Ok(Profile::Demo),
            other => Err(ConfigError::Invalid(format!(
                "unknown profile {other:?}; the profiles are: demo"
            ))),
        }
    }

    /// The keys this profile sets, given the settings below it (defaults and
    /// file): the demo keeps the MySQL server of `mysql.url` and swaps its
    /// database.
    fn overrides(self, below: &config::Config) -> Result<Vec<(&'static str, String)>, ConfigError> {
        match self {
            Profile::Demo => {
                let raw = below
                    .get_string("mysql.url")
                    .map_err(|e| ConfigError::Invalid(e.to_string()))?;
                let mut url = url::Url::parse(&raw).map_err(|e| {
                    ConfigError::Invalid(format!("mysql.url {}: {e}", mask_url(&raw)))
                })?;
                url.set_path(&format!("/{}", Self::DEMO_NAME));
                Ok(vec![
                    ("redis.prefix", Self::DEMO_NAME.to_string()),
                    ("mysql.url", url.to_string()),
                ])
            }
        }
    }
}

impl Settings {
    /// Loads defaults < file < profile < environment. `path` is `--config`;
    /// without it `flowmeter.toml` is read when it exists. `profile` is
    /// `--profile`; without it `FLOWMETER_PROFILE` names one, if set.
    pub fn load(path: Option<&Path>, profile: Option<&str>) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with(path, profile, env)
    }

    /// Like [`Settings::load`] with an explicit environment and no
    /// `--profile` (used by tests).
    pub fn load_from(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::load_with(path, None, env)
    }

    /// Like [`Settings::load`] with an explicit environment.
    pub fn load_with(
        path: Option<&Path>,
        profile: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let profile = match profile {
            Some(p) => Some(p.to_string()),
            None => env
                .iter()
                .find(|(k, v)| k == Profile::ENV && !v.is_empty())
                .map(|(_, v)| v.clone()),
        };
        let profile = profile.as_deref().map(Profile::parse).transpose()?;
        let defaults = config::Config::try_from(&Settings::default())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let mut builder = config::Config::builder().add_source(defaults);
        match path {
            Some(p) => {
                if !p.exists() {
                    return Err(ConfigError::MissingFile(p.to_path_buf()));
                }
                builder =
                    builder.add_source(config::File::from(p).format(config::FileFormat::Toml));
            }
            None => {
                let p = Path::new("flowmeter.toml");
                if p.exists() {
                    builder =
                        builder.add_source(config::File::from(p).format(config::FileFormat::Toml));
                }
            }
        }
        if let Some(profile) = profile {
            let below = builder
                .build_cloned()
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
            let mut layer = config::Config::builder();
            for (key, value) in profile.overrides(&below)? {
                layer = layer
                    .set_override(key, value)
                    .map_err(|e| ConfigError::Invalid(e.to_string()))?;
            }
            let layer = layer
                .build()
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
            builder = builder.add_source(layer);
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("FLOWMETER__"))
            .collect();
        // list settings (a JSON array, or comma-separated strings) are
        // parsed apart: the environment source reads only scalars
        let defaults = serde_json::to_value(Settings::default())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let env = env_lists::split(env, &defaults)?;
        builder = builder.add_source(
            config::Environment::with_prefix("FLOWMETER")
                .separator("__")
                .try_parsing(true)
                .source(Some(env.rest.clone())),
        );
        let settings: Settings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let mut settings = env.apply(settings)?;
        settings.validate()?;
        settings.profile = profile;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.redis.shards == 0 || self.redis.shards > 1024 {
            return bad("redis.shards must be between 1 and 1024");
        }
        if self.redis.layout_refresh_ms == 0 {
            return bad("redis.layout_refresh_ms must be above 0");
        }
        if self.redis.cluster && self.redis.cluster_max_retry_wait_ms == 0 {
            return bad("redis.cluster_max_retry_wait_ms must be > 0");
        }
        if self.redis.prefix.is_empty() || self.redis.prefix.contains(['{', '}', ' ']) {
            return bad("redis.prefix must be non-empty, without braces or spaces");
        }
        if self.rollup.read_count == 0 || self.rollup.max_batch_events == 0 {
            return bad("rollup.read_count and rollup.max_batch_events must be > 0");
        }
        if self.rollup.lease_ms < 300 {
            return bad("rollup.lease_ms must be at least 300");
        }
        if self.rollup.read_queue_batches == 0 {
            return bad("rollup.read_queue_batches must be > 0");
        }
        if self.retention.hard_max_len > 0 && self.retention.hard_max_len < self.retention.max_len {
            return bad("retention.hard_max_len must be 0 (off) or at least retention.max_len");
        }
        if self.hub.min_interval_ms == 0 || self.hub.send_queue == 0 || self.hub.ring_secs == 0 {
            return bad("hub.min_interval_ms, hub.send_queue and hub.ring_secs must be > 0");
        }
        if self.hub.max_channels == 0
            || self.hub.max_channels_per_client == 0
            || self.hub.max_messages_per_sec == 0
            || self.hub.max_snapshots_per_sec == 0
            || self.hub.max_connections_per_ip == 0
        {
            return bad("hub.max_channels, hub.max_channels_per_client, hub.max_messages_per_sec, hub.max_snapshots_per_sec and hub.max_connections_per_ip must be > 0");
        }
        crate::auth::validate(&self.auth).map_err(ConfigError::Invalid)?;
        self.validate_server()?;
        self.alert_delivery.validate()?;
        if self.retention.max_scan == 0 {
            return bad("retention.max_scan must be > 0");
        }
        if self.ingest.max_body_bytes == 0 || self.ingest.max_events_per_request == 0 {
            return bad("ingest.max_body_bytes and ingest.max_events_per_request must be > 0");
        }
        if self.ingest.max_inflight_body_bytes < self.ingest.max_body_bytes {
            return bad("ingest.max_inflight_body_bytes must be at least ingest.max_body_bytes (else no largest body could ever be read)");
        }
        let q = &self.query;
        if q.max_connections == 0 || q.max_concurrent_queries == 0 || q.max_response_bytes == 0 {
            return bad("query.max_connections, query.max_concurrent_queries and query.max_response_bytes must be > 0");
        }
        if q.max_hourly_range_days == 0 || q.max_daily_range_days == 0 {
            return bad("query.max_hourly_range_days and query.max_daily_range_days must be > 0");
        }
        if self.health.check_timeout_ms == 0
            || self.health.hub_feed_max_age_ms == 0
            || self.health.startup_retry_max_ms < 100
        {
            return bad("health.check_timeout_ms and health.hub_feed_max_age_ms must be > 0, health.startup_retry_max_ms at least 100");
        }
        if self.clickhouse.search_max_execution_secs == 0 {
            return bad("clickhouse.search_max_execution_secs must be > 0");
        }
        if self.redis.tls_cert_file.is_some() != self.redis.tls_key_file.is_some() {
            return bad(
                "redis.tls_cert_file and redis.tls_key_file go together: set both or neither",
            );
        }
        if self.mysql.ssl_cert.is_some() != self.mysql.ssl_key.is_some() {
            return bad("mysql.ssl_cert and mysql.ssl_key go together: set both or neither");
        }
        if self.ingest.max_error_body_bytes < 1024 || self.ingest.max_error_reason_chars < 16 {
            return bad("ingest.max_error_body_bytes must be at least 1024 and ingest.max_error_reason_chars at least 16");
        }
        if !(1..=1024).contains(&self.ingest.max_idempotency_key_bytes)
            || self.ingest.idempotency_window_secs == 0
        {
            return bad("ingest.max_idempotency_key_bytes must be 1 to 1024 and ingest.idempotency_window_secs > 0");
        }
        if self.ingest.backlog_poll_ms < 10 {
            return bad("ingest.backlog_poll_ms must be at least 10");
        }
        if self.ingest.wait_replicas > 0
            && (self.ingest.wait_replicas_timeout_ms == 0
                || self.ingest.wait_replicas_timeout_ms >= self.redis.command_timeout_ms)
        {
            return bad("with ingest.wait_replicas > 0, ingest.wait_replicas_timeout_ms must be > 0 and below redis.command_timeout_ms (WAIT is one Redis command)");
        }
        Ok(())
    }

    fn validate_server(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        let s = &self.server;
        if s.max_connections == 0 {
            return bad("server.max_connections must be > 0");
        }
        if s.header_read_timeout_ms == 0 || s.body_idle_timeout_ms == 0 || s.request_timeout_ms == 0
        {
            return bad("server.header_read_timeout_ms, body_idle_timeout_ms and request_timeout_ms must be > 0");
        }
        if s.max_header_bytes < 8_192 || s.max_header_bytes > u32::MAX as usize {
            return bad("server.max_header_bytes must be between 8192 and 4294967295");
        }
        if s.tls.cert_path.as_os_str().is_empty() != s.tls.key_path.as_os_str().is_empty() {
            return bad("server.tls: set both cert_path and key_path, or neither");
        }
        let r = &s.ingest_rate_limit;
        if !r.requests_per_sec.is_finite() || r.requests_per_sec < 0.0 {
            return bad("server.ingest_rate_limit.requests_per_sec must be 0 (off) or positive");
        }
        if r.requests_per_sec > 0.0 && (r.burst_requests == 0 || r.max_clients < 2) {
            return bad(
                "server.ingest_rate_limit: burst_requests must be > 0 and max_clients at least 2",
            );
        }
        Ok(())
    }

    /// The effective configuration as TOML with passwords in URLs masked.
    pub fn to_masked_toml(&self) -> String {
        let mut s = self.clone();
        s.redis.url = mask_url(&s.redis.url);
        s.mysql.url = mask_url(&s.mysql.url);
        for t in &mut s.auth.tokens {
            for secret in [&mut t.token, &mut t.token_sha256] {
                if !secret.is_empty() {
                    *secret = "***".into();
                }
            }
        }
        s.clickhouse.url = mask_url(&s.clickhouse.url);
        if !s.clickhouse.password.is_empty() {
            s.clickhouse.password = "***".into();
        }
        for (k, v) in &mut s.kafka.properties {
            if k.contains("password") || k.contains("secret") {
                *v = "***".into();
            }
        }
        let head = match self.profile {
            Some(Profile::Demo) => format!(
                "# profile demo (--profile / {}): redis.prefix and the database of mysql.url are {}\n",
                Profile::ENV,
                Profile::DEMO_NAME
            ),
            None => String::new(),
        };
        match toml::to_string_pretty(&s) {
            Ok(body) => head + &body,
            Err(e) => format!("# cannot render config: {e}\n"),
        }
    }
}

/// The Kafka cluster the bridge (`processors/kafka_bridge.toml`) produces to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated (`bootstrap.servers`).
    pub brokers: String,
    /// `client.id` of the producer.
    pub client_id: String,
    /// How long librdkafka keeps retrying one message before its delivery
    /// report fails (`message.timeout.ms`); the bridge then retries the batch.
    pub message_timeout_ms: u64,
    /// Further librdkafka producer properties (e.g. `security.protocol`,
    /// `compression.type`), passed through as they are.
    pub properties: std::collections::BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            client_id: "flowmeter".into(),
            message_timeout_ms: 30_000,
            properties: Default::default(),
        }
    }
}

/// The ClickHouse server of the archive (`processors/clickhouse_archive.toml`)
/// and of `GET /v1/events/search`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickhouseConfig {
    /// HTTP interface, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// Database of the archive tables (created by `flowmeter migrate`).
    pub database: String,
    pub user: String,
    pub password: String,
    /// The client's row-type validation against the server's schema. Servers
    /// older than 21.x (e.g. Debian's 18.16) lack what it needs: set false.
    pub validation: bool,
    /// Longest one query or insert may take.
    pub timeout_ms: u64,
    /// `max_execution_time` sent with every archive search: ClickHouse stops
    /// a search running longer (the client gets 400 saying to narrow it).
    pub search_max_execution_secs: u64,
}

impl Default for ClickhouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            database: "flowmeter".into(),
            user: "default".into(),
            password: String::new(),
            validation: true,
            timeout_ms: 30_000,
            search_max_execution_secs: 10,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_docs() {
        let s = Settings::load_from(Some(Path::new("flowmeter.example.toml")), env(&[]))
            .expect("example config loads");
        assert_eq!(s.server.listen, "127.0.0.1:8080");
        assert_eq!(s.redis.prefix, "fm");
        assert_eq!(s.redis.shards, 4);
        assert_eq!(s.rollup.flush_interval_ms, 1000);
        assert_eq!(s.ingest.max_body_bytes, 1 << 20);
        // every [ingest] bound of the example is the default
        assert_eq!(
            toml::to_string(&s.ingest).ok(),
            toml::to_string(&IngestConfig::default()).ok()
        );
    }

    #[test]
    fn alert_delivery_example_is_the_default_and_bounds_are_checked() {
        let s = Settings::load_from(Some(Path::new("flowmeter.example.toml")), env(&[]))
            .expect("example config loads");
        assert_eq!(
            toml::to_string(&s.alert_delivery).ok(),
            toml::to_string(&AlertDeliveryConfig::default()).ok()
        );
        for (key, value, says) in [
            ("TIMEOUT_MS", "0", "timeout_ms"),
            ("TIMEOUT_MS", "300001", "timeout_ms"),
            ("BACKOFF_MAX_MS", "86400001", "backoff_max_ms"),
            ("BACKOFF_MAX_MS", "18446744073709551615", "backoff_max_ms"),
            ("MAX_IN_FLIGHT", "0", "max_in_flight"),
            ("MAX_IN_FLIGHT", "1001", "max_in_flight"),
            ("BACKOFF_MAX_MS", "10", "backoff_max_ms"),
            ("MAX_ATTEMPTS", "0", "max_attempts"),
            ("MAX_BODY_BYTES", "1023", "max_body_bytes"),
            ("POLL_MS", "9", "poll_ms"),
            (
                "ALERTMANAGER_REFRESH_SECS",
                "0",
                "alertmanager_refresh_secs",
            ),
            (
                "ALERTMANAGER_REFRESH_SECS",
                "86401",
                "alertmanager_refresh_secs",
            ),
        ] {
            let e = Settings::load_from(
                None,
                env(&[(&format!("FLOWMETER__ALERT_DELIVERY__{key}"), value)]),
            )
            .expect_err("refused");
            let e = e.to_string();
            assert!(e.contains("alert_delivery.") && e.contains(says), "{e}");
        }
    }

    #[test]
    fn env_overrides_file() {
        let s = Settings::load_from(
            None,
            env(&[
                ("FLOWMETER__REDIS__PREFIX", "tenant1"),
                ("FLOWMETER__REDIS__SHARDS", "8"),
                ("UNRELATED", "x"),
            ]),
        )
        .expect("loads");
        assert_eq!(s.redis.prefix, "tenant1");
        assert_eq!(s.redis.shards, 8);
    }

    #[test]
    fn the_demo_profile_moves_prefix_and_database_and_env_still_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("fm.toml");
        std::fs::write(
            &p,
            "[redis]\nprefix = \"mine\"\n[mysql]\nurl = \"mysql://u:pw@db.example:3307/mine?ssl-mode=DISABLED\"\n",
        )
        .expect("write");
        // --profile beats the file, keeping the file's server and parameters
        let s = Settings::load_with(Some(&p), Some("demo"), env(&[])).expect("loads");
        assert_eq!(s.redis.prefix, "fmdemo");
        assert_eq!(
            s.mysql.url,
            "mysql://u:pw@db.example:3307/fmdemo?ssl-mode=DISABLED"
        );
        // FLOWMETER_PROFILE does the same without the flag
        let s = Settings::load_from(None, env(&[("FLOWMETER_PROFILE", "demo")])).expect("loads");
        assert_eq!(s.redis.prefix, "fmdemo");
        assert_eq!(s.mysql.url, "mysql://root@127.0.0.1:3306/fmdemo");
        // `flowmeter config` says which profile is on, and stays TOML
        let shown = s.to_masked_toml();
        assert!(shown.starts_with("# profile demo"), "{shown}");
        assert!(toml::from_str::<Settings>(&shown).is_ok(), "{shown}");
        // a single variable still overrides the profile
        let s = Settings::load_from(
            None,
            env(&[
                ("FLOWMETER_PROFILE", "demo"),
                ("FLOWMETER__REDIS__PREFIX", "other"),
            ]),
        )
        .expect("loads");
        assert_eq!(s.redis.prefix, "other");
        assert_eq!(s.mysql.url, "mysql://root@127.0.0.1:3306/fmdemo");
        // no profile: the defaults
        let s = Settings::load_from(None, env(&[])).expect("loads");
        assert_eq!(s.redis.prefix, "fm");
        assert!(!s.to_masked_toml().contains("# profile"));
    }

    #[test]
    fn an_unknown_profile_names_the_known_ones() {
        let err = Settings::load_with(None, Some("prod"), env(&[])).expect_err("must fail");
        assert!(
            err.to_string().contains("\"prod\"") && err.to_string().contains("demo"),
            "{err}"
        );
        let err =
            Settings::load_from(None, env(&[("FLOWMETER_PROFILE", "dmo")])).expect_err("must fail");
        assert!(err.to_string().contains("dmo"), "{err}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, "[redis]\nshardz = 3\n").expect("write");
        let err = Settings::load_from(Some(&p), env(&[])).expect_err("must fail");
        assert!(err.to_string().contains("shardz"), "{err}");
        let err = Settings::load_from(None, env(&[("FLOWMETER__RDIS__URL", "x")]))
            .expect_err("must fail");
        assert!(err.to_string().contains("rdis"), "{err}");
    }

    #[test]
    fn wait_replicas_needs_a_timeout_below_the_command_timeout() {
        let load = |pairs: &[(&str, &str)]| Settings::load_from(None, env(pairs));
        let on = ("FLOWMETER__INGEST__WAIT_REPLICAS", "1");
        assert!(
            load(&[on]).is_ok(),
            "1 replica, 1 s of the 5 s command timeout"
        );
        let err = load(&[on, ("FLOWMETER__INGEST__WAIT_REPLICAS_TIMEOUT_MS", "0")])
            .expect_err("no timeout");
        assert!(
            err.to_string().contains("wait_replicas_timeout_ms"),
            "{err}"
        );
        let err = load(&[on, ("FLOWMETER__REDIS__COMMAND_TIMEOUT_MS", "1000")])
            .expect_err("WAIT would outlast the command timeout");
        assert!(err.to_string().contains("command_timeout_ms"), "{err}");
        // off: the timeout is not looked at
        assert!(load(&[("FLOWMETER__INGEST__WAIT_REPLICAS_TIMEOUT_MS", "0")]).is_ok());
    }

    #[test]
    fn list_settings_come_from_the_environment() {
        let sha = "a".repeat(64);
        let tokens = format!(
            r#"[{{"name":"collectors","token_sha256":"{sha}","scopes":["ingest"]}},
                {{"name":"dashboards","token":"a-long-enough-secret","scopes":["read","metrics"]}}]"#
        );
        let s = Settings::load_from(
            None,
            env(&[
                ("FLOWMETER__AUTH__TOKENS", tokens.as_str()),
                (
                    "FLOWMETER__INGEST__CORS_ORIGINS",
                    "https://a.example, https://b.example",
                ),
                ("FLOWMETER__REDIS__CLUSTER_NODES", r#"["redis://n1:6379"]"#),
                ("FLOWMETER__REDIS__PREFIX", "scalar,stays,whole"),
            ]),
        )
        .expect("loads");
        let names: Vec<&str> = s.auth.tokens.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["collectors", "dashboards"]);
        assert_eq!(s.auth.tokens[0].token_sha256, sha);
        assert_eq!(s.auth.tokens[1].scopes, ["read", "metrics"]);
        assert_eq!(
            s.ingest.cors_origins,
            ["https://a.example", "https://b.example"]
        );
        assert_eq!(s.redis.cluster_nodes, ["redis://n1:6379"]);
        assert_eq!(s.redis.prefix, "scalar,stays,whole");
        // the environment wins over the file, lists included
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("fm.toml");
        std::fs::write(
            &p,
            "[ingest]\ncors_origins = [\"https://f1.example\", \"https://f2.example\"]\n",
        )
        .expect("write");
        let s = Settings::load_from(Some(&p), env(&[("FLOWMETER__INGEST__CORS_ORIGINS", "")]))
            .expect("loads");
        assert!(s.ingest.cors_origins.is_empty(), "an empty value clears");
        let s = Settings::load_from(
            Some(&p),
            env(&[("FLOWMETER__INGEST__CORS_ORIGINS", "https://env.example")]),
        )
        .expect("loads");
        assert_eq!(
            s.ingest.cors_origins,
            ["https://env.example"],
            "the whole list is replaced, not merged item by item"
        );
    }

    #[test]
    fn tokens_in_a_comma_list_say_to_use_json() {
        let err = Settings::load_from(None, env(&[("FLOWMETER__AUTH__TOKENS", "abc,def")]))
            .expect_err("tokens are tables");
        let text = err.to_string();
        assert!(
            text.contains("FLOWMETER__AUTH__TOKENS") && text.contains("JSON array"),
            "{text}"
        );
        // the checks of the file apply to tokens from the environment
        let err = Settings::load_from(
            None,
            env(&[(
                "FLOWMETER__AUTH__TOKENS",
                r#"[{"name":"short","token":"tiny","scopes":["read"]}]"#,
            )]),
        )
        .expect_err("a short token");
        assert!(err.to_string().contains("16"), "{err}");
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = Settings::load_from(Some(Path::new("/nonexistent/fm.toml")), env(&[]))
            .expect_err("must fail");
        assert!(matches!(err, ConfigError::MissingFile(_)));
    }

    #[test]
    fn masks_passwords() {
        // mask_url itself is flowmeter-core's, tested there
        let mut s = Settings::default();
        s.redis.url = "redis://:hunter2@r:6379".into();
        assert!(!s.to_masked_toml().contains("hunter2"));
    }
}
