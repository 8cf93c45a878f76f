//! Events as they travel: a validated event ready for its stream, the hash
//! that picks its shard, timestamps, and subject values.
//!
//! An event is a JSON object with a `kind` (which names its schema), a `ts`
//! (RFC 3339 string or integer epoch milliseconds) and the fields its schema
//! declares. Validating against the JSON Schemas of `schemas/` is the
//! server's job (`flowmeter::event::SchemaRegistry`); typed senders such as
//! the collector build [`ValidEvent`]s from typed fields, and their tests
//! show the result passes the schema.

pub mod subject;
mod time;

pub use time::{format_rfc3339_ms, parse_ts, parse_ts_value, TS_RULE};

use serde::Serialize;
use xxhash_rust::xxh3::xxh3_64;

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
    /// Index of the kind in the [`KindNames`] the producer is given (the
    /// server's schema registry, or a sender's own list of kinds).
    pub kind: usize,
    /// Schema version it was validated against.
    pub version: u32,
    /// Event time, epoch milliseconds.
    pub ts_ms: i64,
    /// The event as compact JSON (the stream entry's `data` field).
    pub data: String,
    /// Hash of the kind's partition fields ([`PartitionKey`]); picks the shard.
    pub partition: u64,
}

/// The names of the kinds [`ValidEvent::kind`] indexes: the stream an event
/// goes to and the `kind` field of its entry.
pub trait KindNames {
    /// The name of kind `kind`; `None` when there is no such kind.
    fn kind_name(&self, kind: usize) -> Option<&str>;
}

impl<T: KindNames + ?Sized> KindNames for &T {
    fn kind_name(&self, kind: usize) -> Option<&str> {
        (**self).kind_name(kind)
    }
}

impl<T: KindNames + ?Sized> KindNames for std::sync::Arc<T> {
    fn kind_name(&self, kind: usize) -> Option<&str> {
        (**self).kind_name(kind)
    }
}

/// The partition hash of an event: the values of its kind's `partition_by`
/// fields (`x-flowmeter` of its schema), in order, each followed by a unit
/// separator, hashed with xxh3. One subject's events thus share a shard
/// (and stay in order); ingest and every typed sender hash the same way.
#[derive(Debug, Clone, Default)]
pub struct PartitionKey {
    key: String,
}

impl PartitionKey {
    pub fn new() -> Self {
        Self {
            key: String::with_capacity(64),
        }
    }

    /// Adds the next field's value: a string as it is, any other JSON value
    /// as its JSON text, a missing field as `""`.
    pub fn push(&mut self, value: &str) -> &mut Self {
        self.key.push_str(value);
        self.key.push('\u{1f}');
        self
    }

    /// The hash that picks the shard (`Keys::shard_for`).
    pub fn finish(&self) -> u64 {
        xxh3_64(self.key.as_bytes())
    }
}

/// `s` cut to `max` characters (never inside one), ending with `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let cut: String = s.chars().take(max).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_keys_separate_their_fields() {
        let h = |a: &str, b: &str| PartitionKey::new().push(a).push(b).finish();
        assert_eq!(h("svc", "/a"), h("svc", "/a"));
        // the separator keeps ("ab", "c") apart from ("a", "bc")
        assert_ne!(h("ab", "c"), h("a", "bc"));
        assert_eq!(h("svc", "/a"), xxh3_64("svc\u{1f}/a\u{1f}".as_bytes()));
    }

    #[test]
    fn truncates_on_characters() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("é𝄞xyz", 2), "é𝄞…");
    }
}
