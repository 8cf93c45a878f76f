//! Processors: consumer groups declared in `processors/*.toml`.
//!
//! A definition names its consumer group and the event kinds it reads; its
//! `type` picks the implementation (one directory each, with the same files:
//! `mod.rs`, `config.rs`, `processor.rs`). The config builds the component
//! ([`ProcessorConfig::build`]); a processor never reads global state.

pub mod clickhouse_archive;
pub mod kafka_bridge;
pub mod reader;
pub mod registry;
pub mod rollup;
pub mod sink;
mod stats;

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::config::RollupConfig as RunnerSettings;
use crate::event::SchemaRegistry;
use crate::store::{Store, StoreError};
use crate::stream::{Keys, Redis, StreamError};

pub use registry::{ProcessorConfig, ProcessorRegistry};
pub use stats::{KeyBudgetStatus, RunnerStats};

/// Errors of a processor. `retryable()` says whether the runner should back off and try again.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error("processor definition {file}: {reason}")]
    Definition { file: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Stream(#[from] StreamError),
}

impl ProcessorError {
    pub fn retryable(&self) -> bool {
        match self {
            ProcessorError::Definition { .. } => false,
            ProcessorError::Store(e) => e.retryable(),
            ProcessorError::Stream(e) => e.retryable(),
        }
    }
}

/// What a processor may use; handed to [`ProcessorConfig::build`].
#[derive(Clone)]
pub struct ProcessorContext {
    pub redis: Redis,
    pub keys: Keys,
    pub store: Store,
    pub schemas: Arc<SchemaRegistry>,
    pub settings: RunnerSettings,
    /// The Kafka cluster (the bridge).
    pub kafka: crate::config::KafkaConfig,
    /// The ClickHouse server (the archive).
    pub clickhouse: crate::config::ClickhouseConfig,
    /// Unique name of this worker process (`host-pid-random`).
    pub worker_id: String,
}

/// A running consumer group.
pub trait Processor: Send {
    fn name(&self) -> &str;
    /// Runs until `shutdown` is cancelled, then flushes, acks and releases its shards.
    fn run(
        self: Box<Self>,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, Result<(), ProcessorError>>;
}

/// A worker id unique across processes and restarts.
pub fn new_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "host".into());
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// Publishes a runner's figures for `flowmeter status` and `GET /v1/status`:
/// one field per worker in `{prefix}:stats:{processor}`, expiring unless
/// refreshed (a stopped worker drops out).
pub async fn publish_stats(ctx: &ProcessorContext, processor: &str, stats: &RunnerStats) {
    let Ok(json) = serde_json::to_string(stats) else {
        return;
    };
    let mut conn = ctx.redis.conn.clone();
    let key = ctx.keys.stats(processor);
    let mut pipe = redis::pipe();
    pipe.cmd("HSET")
        .arg(&key)
        .arg(&ctx.worker_id)
        .arg(json)
        .ignore();
    pipe.cmd("PEXPIRE")
        .arg(&key)
        .arg(ctx.settings.lease_ms * 6)
        .ignore();
    if let Err(e) = ctx.redis.run(pipe.query_async::<()>(&mut conn)).await {
        tracing::debug!(error = %e, "cannot publish stats");
    }
}
