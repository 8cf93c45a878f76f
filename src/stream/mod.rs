//! Redis Streams: every key name, the producer (idempotent and behind
//! backpressure for ingest), fenced consumer-group reads, shard leases, and
//! the memory-pressure figures ([`pressure`]).
//!
//! The wire part (keys and shards, the connection with TLS, the producer,
//! [`pressure`] and [`resp`]) is `flowmeter_core::stream`, shared with the
//! collector crate and re-exported here; this module adds what only the
//! server needs: group reads, leases, where a group starts, and connecting
//! from `[redis]`. Layout of the keys and entries: see `flowmeter_core::stream`.

mod consumer;
mod lease;
mod start;

pub use flowmeter_core::stream::{
    layout, pressure, replication, resp, xinfo, ClusterRetry, Idempotency, Keys, Layout, Producer,
    Redis, RedisTls, SetState, Shard, ShardSet, StreamError, SubmitError, Submitted,
};

pub use consumer::{ack, ensure_group, range, Entry, GroupReader, ReadOutcome, StreamId};
pub use lease::{hold_singleton, release_singleton, LeaseManager, LeaseOutcome};
pub use start::StartFrom;

use std::time::Duration;

use crate::config::RedisConfig;

/// The TLS files of `[redis]`.
pub fn tls_of(cfg: &RedisConfig) -> RedisTls {
    RedisTls {
        ca_file: cfg.tls_ca_file.clone(),
        cert_file: cfg.tls_cert_file.clone(),
        key_file: cfg.tls_key_file.clone(),
    }
}

/// Connects to `[redis]`: its URL, TLS files and command timeout.
pub async fn connect(cfg: &RedisConfig) -> Result<Redis, StreamError> {
    let timeout = Duration::from_millis(cfg.command_timeout_ms);
    if cfg.cluster {
        let mut nodes = vec![cfg.url.clone()];
        nodes.extend(cfg.cluster_nodes.iter().cloned());
        let retry = ClusterRetry {
            retries: cfg.cluster_retries,
            max_wait: Duration::from_millis(cfg.cluster_max_retry_wait_ms),
        };
        return Redis::connect_cluster(&nodes, timeout, retry).await;
    }
    Redis::connect_with(
        &cfg.url,
        &tls_of(cfg),
        Duration::from_millis(cfg.command_timeout_ms),
    )
    .await
}
