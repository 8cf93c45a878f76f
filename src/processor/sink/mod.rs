//! Sinks: processors that hand stream entries to another system (the Kafka
//! bridge, the ClickHouse archive) **at least once**. An entry is
//! acknowledged (XACK) only after its sink said the downstream system has
//! durably taken it; a crash in between delivers it again, so downstream
//! deduplicates on the stream id each entry carries.
//!
//! A sink implements [`Sink`]; [`processor`] puts it on the shard core
//! ([`crate::processor::core`]), which does the rest the same way for every
//! processor: shard leases, fenced reads (pending list first), batching by
//! rows and time, retries with backoff while the downstream system is down
//! (reading stops, so lag grows in Redis and nothing is lost), dead letters
//! for entries the downstream system rejects for good, and the suspect
//! policy for entries that keep killing the worker.

mod processor;

pub use processor::{processor, SinkHandler, SinkProcessor};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::stream::{Shard, StreamId};

/// One entry handed to a sink.
#[derive(Debug, Clone)]
pub struct SinkEntry {
    /// The stream (shard key) it came from.
    pub stream: String,
    pub shard: Shard,
    /// Its kind (from the shard).
    pub kind: String,
    pub id: StreamId,
    /// The schema version ingest validated it against (the entry's `v`).
    pub version: Option<u32>,
    /// The event JSON as ingested.
    pub data: String,
}

/// What became of one entry of a delivered batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Durably taken downstream: acknowledge it.
    Delivered,
    /// Refused for good (e.g. not valid for the target): dead-letter it with
    /// this reason, then acknowledge it.
    Rejected(String),
}

/// A delivery that confirmed nothing: the whole batch is tried again after a
/// backoff (nothing is acknowledged meanwhile).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

/// The downstream side of a sink processor.
pub trait Sink: Send + 'static {
    /// Hands `batch` over and waits until the downstream system confirms it
    /// durably holds it; one verdict per entry, in order. `Err` means nothing
    /// is confirmed.
    fn deliver<'a>(
        &'a mut self,
        batch: &'a [SinkEntry],
    ) -> BoxFuture<'a, Result<Vec<Verdict>, SinkError>>;
}

/// Batching and retries of a sink (`[batch]` in its processor file).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Most entries per delivery; reading pauses while a batch this large waits.
    pub max_rows: usize,
    /// Longest an entry waits for its batch to fill before it is delivered.
    pub max_wait_ms: u64,
    /// First pause after a failed delivery; doubles up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Longest one delivery may take before it counts as failed (and is retried).
    pub timeout_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_rows: 5_000,
            max_wait_ms: 1_000,
            retry_initial_ms: 200,
            retry_max_ms: 10_000,
            timeout_ms: 60_000,
        }
    }
}

impl BatchConfig {
    pub fn check(&self) -> Result<(), String> {
        if self.max_rows == 0 || self.timeout_ms == 0 {
            return Err("batch.max_rows and batch.timeout_ms must be > 0".into());
        }
        if self.retry_initial_ms == 0 || self.retry_max_ms < self.retry_initial_ms {
            return Err("batch.retry_initial_ms must be > 0 and ≤ batch.retry_max_ms".into());
        }
        Ok(())
    }
}

/// The fields every sink definition has, borrowed from it.
pub struct SinkHead<'a> {
    pub name: &'a str,
    pub group: &'a str,
    pub kinds: &'a [String],
    pub start_from: Option<&'a str>,
    pub batch: &'a BatchConfig,
}

impl SinkHead<'_> {
    /// Checks them (the definition checks its own fields besides).
    pub fn check(&self) -> Result<(), String> {
        if self.name.is_empty() || self.group.is_empty() || self.kinds.is_empty() {
            return Err("name, group and kinds must not be empty".into());
        }
        self.group_start()?;
        self.batch.check()
    }

    /// The `XGROUP CREATE` id of `start_from` (default: the beginning).
    pub fn group_start(&self) -> Result<String, String> {
        match self.start_from {
            None => Ok("0".to_string()),
            Some(s) => Ok(s.parse::<crate::stream::StartFrom>()?.group_id()),
        }
    }
}

/// The error of building a sink whose cargo feature this binary lacks.
pub fn missing_feature(processor: &str, feature: &str) -> crate::processor::ProcessorError {
    crate::processor::ProcessorError::Definition {
        file: format!("processor {processor}"),
        reason: format!("this flowmeter was built without the `{feature}` feature; rebuild with default features (or `--features {feature}`) or disable the processor"),
    }
}
