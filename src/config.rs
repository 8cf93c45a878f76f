//! The one typed configuration of flowmeter.
//!
//! Precedence, lowest first: the defaults in this file < the TOML file
//! (`flowmeter.toml` in the working directory when present, or `--config PATH`,
//! which must exist) < environment variables `FLOWMETER__SECTION__KEY`
//! (e.g. `FLOWMETER__REDIS__URL`). Unknown keys are an error that names the key.
//! Every field is documented here; `flowmeter.example.toml` repeats these docs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
}

/// The HTTP listener (ingest, query and status API).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the API listens on.
    pub listen: String,
    /// Graceful shutdown: how long in-flight requests and the final flush may take.
    pub shutdown_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            shutdown_timeout_ms: 15_000,
        }
    }
}

/// Redis, where the event streams live.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// Connection URL (`redis://[:password@]host:port[/db]`).
    pub url: String,
    /// Every key flowmeter writes starts with this prefix, so tests and
    /// tenants can share one server.
    pub prefix: String,
    /// Shard streams per event kind (`{prefix}:{kind:0}` … `{prefix}:{kind:S-1}`).
    /// Changing it on a live system strands entries in the removed shards.
    pub shards: u32,
    /// Timeout for one Redis command or pipeline; past it the caller gets an
    /// error (ingest answers 503 with Retry-After).
    pub command_timeout_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "fm".into(),
            shards: 4,
            command_timeout_ms: 5_000,
        }
    }
}

/// MySQL (or MariaDB), where rollups and checkpoints live.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MysqlConfig {
    /// Connection URL; the database is created if it does not exist.
    pub url: String,
    /// Upper bound of the connection pool.
    pub max_connections: u32,
}

impl Default for MysqlConfig {
    fn default() -> Self {
        Self {
            url: "mysql://root@127.0.0.1:3306/flowmeter".into(),
            max_connections: 8,
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
    /// Most events in one request; more gets 413.
    pub max_events_per_request: usize,
    /// Most per-event errors listed in a 400 answer (the count is always exact).
    pub max_reported_errors: usize,
    /// Seconds a client is told to wait (Retry-After) when Redis is unreachable.
    pub retry_after_secs: u64,
    /// Browser origins (e.g. `https://meet.example.com`, or `*`) whose pages
    /// may send events (the WebRTC collector); others get 403. Requests
    /// without an `Origin` (servers) and from the server's own origin pass.
    pub cors_origins: Vec<String>,
    /// How long browsers may cache a preflight answer (`Access-Control-Max-Age`).
    pub cors_max_age_secs: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_events_per_request: 10_000,
            max_reported_errors: 100,
            retry_after_secs: 1,
            cors_origins: Vec::new(),
            cors_max_age_secs: 600,
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
    /// Open connections per token (or per anonymous client when auth is off).
    pub max_connections_per_token: usize,
    /// Outgoing messages queued per connection; past it the connection's
    /// updates are dropped and it gets a fresh snapshot once it catches up.
    pub send_queue: usize,
    /// Ping period; a connection that has not answered (pong or any
    /// message) for `pong_timeout_ms` is closed.
    pub ping_interval_ms: u64,
    pub pong_timeout_ms: u64,
    /// Entries in `top_endpoints`.
    pub top_endpoints: usize,
    /// A meeting or peer counts as active when it sent a sample this recently.
    pub active_secs: u64,
    /// Subjects (services, endpoints, meetings) held; events of further
    /// subjects count in the overviews only.
    pub max_subjects: usize,
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
            max_connections_per_token: 20_000,
            send_queue: 64,
            ping_interval_ms: 15_000,
            pong_timeout_ms: 45_000,
            top_endpoints: 10,
            active_secs: 30,
            max_subjects: 50_000,
        }
    }
}

/// Bearer tokens. With none configured, the API is open (a warning says so
/// at start).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub tokens: Vec<TokenConfig>,
}

impl AuthConfig {
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }
}

/// One token and what it may do.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A name for logs and limits (never the token itself).
    pub name: String,
    pub token: String,
    /// `read` (WebSocket hub, queries), `ingest` (POST /v1/events).
    pub scopes: Vec<String>,
}

impl Settings {
    /// Loads defaults < file < environment. `path` is `--config`; without it
    /// `flowmeter.toml` is read when it exists.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(path, env)
    }

    /// Like [`Settings::load`] with an explicit environment (used by tests).
    pub fn load_from(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
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
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("FLOWMETER__"))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("FLOWMETER")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
        let settings: Settings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.redis.shards == 0 || self.redis.shards > 1024 {
            return bad("redis.shards must be between 1 and 1024");
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
        for t in &self.auth.tokens {
            if t.token.len() < 16 {
                return bad("auth.tokens: every token must be at least 16 characters");
            }
            if let Some(s) = t
                .scopes
                .iter()
                .find(|s| !["read", "ingest"].contains(&s.as_str()))
            {
                return Err(ConfigError::Invalid(format!(
                    "auth.tokens {}: unknown scope {s:?} (read, ingest)",
                    t.name
                )));
            }
        }
        if self.retention.max_scan == 0 {
            return bad("retention.max_scan must be > 0");
        }
        if self.ingest.max_body_bytes == 0 || self.ingest.max_events_per_request == 0 {
            return bad("ingest.max_body_bytes and ingest.max_events_per_request must be > 0");
        }
        Ok(())
    }

    /// The effective configuration as TOML with passwords in URLs masked.
    pub fn to_masked_toml(&self) -> String {
        let mut s = self.clone();
        s.redis.url = mask_url(&s.redis.url);
        s.mysql.url = mask_url(&s.mysql.url);
        for t in &mut s.auth.tokens {
            t.token = "***".into();
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
        toml::to_string_pretty(&s).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// Replaces the password of a URL with `***`.
pub fn mask_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(_) => raw.to_string(),
        Err(_) => "<unparseable url>".to_string(),
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
    fn missing_file_is_an_error() {
        let err = Settings::load_from(Some(Path::new("/nonexistent/fm.toml")), env(&[]))
            .expect_err("must fail");
        assert!(matches!(err, ConfigError::MissingFile(_)));
    }

    #[test]
    fn masks_passwords() {
        assert_eq!(
            mask_url("mysql://root:secret@db:3306/fm"),
            "mysql://root:***@db:3306/fm"
        );
        assert_eq!(mask_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        let mut s = Settings::default();
        s.redis.url = "redis://:hunter2@r:6379".into();
        assert!(!s.to_masked_toml().contains("hunter2"));
    }
}
