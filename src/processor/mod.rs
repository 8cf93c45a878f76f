//! Processors: consumer groups declared in `processors/*.toml`.
//!
//! A definition names its consumer group and the event kinds it reads; its
//! `type` picks the implementation (one directory each, with the same files:
//! `mod.rs`, `config.rs`, `processor.rs`). Each type's module declares its
//! `TYPE` and implements [`Definition`] for its definition, which builds the
//! component; `registry::TYPES` lists the types. A processor never reads
//! global state.
//!
//! Every type runs on the shard core ([`core`]): leases, fenced reads,
//! the suspect and dead-letter policy, backoff, graceful stop and stats are
//! written once there; a processor implements [`core::ShardHandler`].

pub mod clickhouse_archive;
pub mod core;
pub mod kafka_bridge;
pub mod registry;
pub mod rollup;
pub mod sink;

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::config::RollupConfig as RunnerSettings;
use crate::event::SchemaRegistry;
use crate::store::{Store, StoreError};
use crate::stream::{Keys, Redis, StreamError};

pub use self::core::reader;
pub use self::core::{KeyBudgetStatus, RunnerStats};
pub use registry::{Definition, ProcessorConfig, ProcessorRegistry, ProcessorType};

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
    /// The whole configuration: each type reads its own section (the
    /// bridge `[kafka]`, the archive `[clickhouse]`).
    pub config: Arc<crate::config::Settings>,
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
