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

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::processor::registry::{parse_definition, Definition, ProcessorType};
use crate::processor::{Processor, ProcessorContext, ProcessorError};

/// The `clickhouse_archive` processor type (listed in `processor::registry::TYPES`).
pub const TYPE: ProcessorType = ProcessorType {
    name: "clickhouse_archive",
    parse: |text| Ok(Arc::new(parse_definition::<ArchiveDef>(text)?)),
};

impl Definition for ArchiveDef {
    fn name(&self) -> &str {
        &self.name
    }
    fn group(&self) -> &str {
        &self.group
    }
    fn kinds(&self) -> &[String] {
        &self.kinds
    }
    fn enabled(&self) -> bool {
        self.enabled
    }
    fn check(&self) -> Result<(), String> {
        ArchiveDef::check(self)
    }
    fn build(
        &self,
        ctx: ProcessorContext,
    ) -> BoxFuture<'_, Result<Box<dyn Processor>, ProcessorError>> {
        Box::pin(async move { ArchiveDef::build(self, ctx).await })
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
