//! The ClickHouse archive: raw events of every kind in ClickHouse, one
//! MergeTree table per kind (`migrations/clickhouse/`), for ad-hoc questions
//! the hourly rollups cannot answer (`GET /v1/events/search`).
//!
//! - `config.rs`: the definition (`processors/clickhouse_archive.toml`);
//! - `processor.rs`: the [`Sink`](crate::processor::sink::Sink): one
//!   `INSERT … FORMAT JSONEachRow` per table and batch, acknowledged by the
//!   shard core ([`crate::processor::core`]) only after ClickHouse answered;
//! - `client.rs`: the client from `[clickhouse]`, migrations, and search.
//!
//! At least once: a crash between the insert and the XACK inserts the batch
//! again; every row carries its stream id in the tables' sorting key, so
//! ReplacingMergeTree collapses the copies and FINAL reads see one.
//! Needs the cargo feature `clickhouse` (on by default).

#[cfg(feature = "clickhouse")]
pub mod client;
mod config;
#[cfg(feature = "clickhouse")]
mod processor;

pub use config::ArchiveDef;

crate::processor_type!(ArchiveDef, "clickhouse_archive");
