//! Events: their kinds, JSON Schemas, validation and timestamps.
//!
//! An event is a JSON object with a `kind` (which names its schema), a `ts`
//! (RFC 3339 string or integer epoch milliseconds) and the fields its schema
//! declares. Adding a kind means adding `schemas/KIND.vN.json`; no Rust.
//!
//! The validated event, its partition hash, timestamps and subject values
//! are `flowmeter_core::event` (shared with the collector crate) and
//! re-exported here; the JSON-Schema registry is the server's own.

mod entry;
mod schema;

pub use entry::decode_entry;
pub use flowmeter_core::event::{
    format_rfc3339_ms, parse_ts, parse_ts_value, subject, truncate, FieldError, KindNames,
    PartitionKey, ValidEvent, TS_RULE,
};
pub use schema::{KindInfo, SchemaRegistry};

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
