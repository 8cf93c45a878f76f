//! flowmeter-core: what flowmeter's server and the services that send it
//! events agree on about the wire, and nothing else (no SQL, Kafka,
//! ClickHouse or JSON Schema).
//!
//! # Layout
//!
//! | module | concept |
//! |---|---|
//! | [`event`] | a validated event ([`event::ValidEvent`]), its partition hash, timestamps, subject values |
//! | [`stream`] | Redis: every key name, shard partitioning, the connection (TLS), the producer (XADD; idempotent, behind backpressure), memory-pressure figures |
//! | [`pem`] | PEM files of the TLS settings, read and checked at start |
//!
//! The server (`flowmeter`) re-exports these modules as `flowmeter::event`
//! and `flowmeter::stream`, adding what only it needs (the JSON-Schema
//! registry, consumer-group reads, leases). The in-process collector
//! (`flowmeter-collector`) appends through the same [`stream::Producer`],
//! so its events land in the same streams, with the same entry fields and
//! the same shard choice as `POST /v1/events`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), flowmeter_core::stream::StreamError> {
//! use std::time::Duration;
//! use flowmeter_core::event::{KindNames, PartitionKey, ValidEvent};
//! use flowmeter_core::stream::{Keys, Producer, Redis};
//!
//! /// The one kind this sender writes, index 0.
//! struct Kinds;
//! impl KindNames for Kinds {
//!     fn kind_name(&self, kind: usize) -> Option<&str> {
//!         (kind == 0).then_some("http")
//!     }
//! }
//!
//! let redis = Redis::connect("redis://127.0.0.1:6379", Duration::from_secs(2)).await?;
//! let producer = Producer::new(redis, Keys::new("fm", 4));
//! let mut key = PartitionKey::new();
//! key.push("courses").push("/api/courses/{id}"); // partition_by of schemas/http.v1.json
//! let event = ValidEvent {
//!     kind: 0,
//!     version: 1,
//!     ts_ms: 1_772_359_200_000,
//!     data: r#"{"kind":"http","ts":1772359200000,"service":"courses","endpoint":"/api/courses/{id}","method":"GET","status":200,"req_bytes":0,"resp_bytes":5120,"duration_ms":12.4}"#.into(),
//!     partition: key.finish(),
//! };
//! producer.append(&Kinds, &[event]).await?;
//! # Ok(()) }
//! ```

pub mod event;
pub mod pem;
pub mod stream;

/// `url` with its password replaced by `***`, for logs and error messages
/// (`<unparseable url>` when it is not a URL at all: it may hold a secret).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_passwords() {
        assert_eq!(
            mask_url("mysql://root:secret@db:3306/fm"),
            "mysql://root:***@db:3306/fm"
        );
        assert_eq!(mask_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(mask_url("not a url"), "<unparseable url>");
    }
}
