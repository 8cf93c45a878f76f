//! The Kafka bridge: forwards the events of chosen kinds to Kafka topics,
//! one message per stream entry, at least once.
//!
//! - `config.rs`: the definition (`processors/kafka_bridge.toml`): topic
//!   template, key template per kind, topic creation, batching;
//! - `processor.rs`: the [`Sink`](crate::processor::sink::Sink): every
//!   entry of a batch is handed to an idempotent producer (`acks=all`) in
//!   stream order, then every delivery report is awaited; the shard core
//!   ([`crate::processor::core`]) acknowledges the entries only after that.
//!
//! A message is the event JSON as ingested, keyed by the kind's key
//! template, with headers `flowmeter-kind`, `flowmeter-schema-version`,
//! `flowmeter-stream` and `flowmeter-id`. A crash between a delivery and its
//! XACK sends the entries again; consumers deduplicate on
//! (`flowmeter-stream`, `flowmeter-id`). Ordering and its limits are in
//! docs/kafka-bridge.md. Needs the cargo feature `kafka` (on by default).

mod config;
#[cfg(feature = "kafka")]
mod processor;
#[cfg(all(test, feature = "kafka"))]
mod tests;

pub use config::{BridgeDef, Template};

use crate::processor::sink::SinkError;

/// Header naming the event kind.
pub const HEADER_KIND: &str = "flowmeter-kind";
/// Header with the event's schema version (its `v`, else the kind's newest).
pub const HEADER_SCHEMA_VERSION: &str = "flowmeter-schema-version";
/// Header with the stream (shard key) the entry came from.
pub const HEADER_STREAM: &str = "flowmeter-stream";
/// Header with the entry's stream id (`ms-seq`): with the stream, the
/// deduplication key.
pub const HEADER_ID: &str = "flowmeter-id";

/// What went wrong talking to Kafka. [`BridgeError::retryable`] says
/// whether trying again can help; the shard core retries every failed
/// batch with backoff either way, so a non-retryable error keeps the group
/// waiting (and its lag growing) until an operator fixes the cause.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// librdkafka refused the client configuration (`[kafka]`).
    #[error("kafka client configuration: {0}")]
    Config(String),
    /// Topics could not be created or checked: the cluster is down (retry),
    /// or refuses (set `create_topics = false` and create them yourself).
    #[error("cannot create topics {topics}: {reason}")]
    Topics { topics: String, reason: String },
    /// Some messages of a batch were not confirmed (broker down, timeout,
    /// leader change…): the whole batch is sent again.
    #[error("{failed} of {total} messages not confirmed by Kafka (first: {first})")]
    Delivery {
        failed: usize,
        total: usize,
        first: String,
    },
    /// The producer hit a librdkafka fatal error and cannot be used any
    /// more; a new one is created for the retry.
    #[error("kafka producer fatal error: {0}; a new producer is created for the retry")]
    Fatal(String),
}

impl BridgeError {
    pub fn retryable(&self) -> bool {
        !matches!(self, BridgeError::Config(_))
    }
}

impl From<BridgeError> for SinkError {
    fn from(e: BridgeError) -> Self {
        SinkError(e.to_string())
    }
}

crate::processor_type!(BridgeDef, "kafka_bridge");
