//! Events: their kinds, JSON Schemas, validation and timestamps.
//!
//! An event is a JSON object with a `kind` (which names its schema), a `ts`
//! (RFC 3339 string or integer epoch milliseconds) and the fields its schema
//! declares. Adding a kind means adding `schemas/KIND.vN.json`; no Rust.

mod entry;
mod schema;
pub mod subject;
mod time;

pub use entry::decode_entry;
pub use schema::{truncate, KindInfo, SchemaRegistry};
pub use time::{format_rfc3339_ms, parse_ts, parse_ts_value, TS_RULE};

use serde::Serialize;

/// Errors loading schemas. Not retryable: the schema files must be fixed.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("cannot read schema directory {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("schema file {path}: {reason}")]
    BadSchema { path: String, reason: String },
}

/// One problem with one event of a request, as the ingest API reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldError {
    /// Position of the event in the request (array index or NDJSON line, from 0);
    /// `None` when the body as a whole is unreadable.
    pub index: Option<usize>,
    /// The offending field (`kind`, `ts`, `status`, …); `None` when the event as a whole is at fault.
    pub field: Option<String>,
    /// What is wrong, in words a client developer can act on.
    pub reason: String,
}

impl FieldError {
    pub fn new(index: Option<usize>, field: Option<&str>, reason: impl Into<String>) -> Self {
        Self {
            index,
            field: field.map(str::to_owned),
            reason: reason.into(),
        }
    }
}

/// An event that passed validation, ready to append to its stream.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidEvent {
    /// Index of the kind in the registry.
    pub kind: usize,
    /// Schema version it was validated against.
    pub version: u32,
    /// Event time, epoch milliseconds.
    pub ts_ms: i64,
    /// The event as compact JSON (the stream entry's `data` field).
    pub data: String,
    /// Hash of the kind's partition fields; picks the shard.
    pub partition: u64,
}
