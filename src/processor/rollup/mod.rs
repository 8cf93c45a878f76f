//! The rollup processor: folds events into MySQL hourly/daily tables, exactly
//! once in effect.
//!
//! - `config.rs`: the definition read from `processors/*.toml`;
//! - `agg.rs`: mergeable per-row measure state and derived columns, every
//!   value checked against its column before it is folded in;
//! - `output.rs`: a row merged with its committed state, and the values written;
//! - `budget.rs`: each table's cardinality budget (new keys per hour);
//! - `writer.rs`: the per-table SQL of a flush;
//! - `processor.rs`: the rollup's [`ShardHandler`](crate::processor::core::ShardHandler)
//!   (decode, check and fold an entry; commit) on the shard core;
//! - `flush.rs`: one flush transaction and what its errors mean to the core;
//! - `replay.rs`: `flowmeter replay`, rebuilding a time range's rows from the streams.
//!
//! The mechanism is written down in `docs/guarantees.md`.

mod agg;
mod budget;
mod config;
mod output;
mod processor;
mod replay;
mod writer;

pub use agg::{fold_event, CompiledTable, MState, Row, RowKey, SqlVal, TableRows, OTHER};
pub use config::{ClassDef, Dimension, MeasureDef, RollupDef, TableDef, Window};

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::processor::registry::{parse_definition, Definition, ProcessorType};
use crate::processor::{Processor, ProcessorContext, ProcessorError};
pub use processor::{check_future, RollupProcessor};
pub use replay::{ReplayError, ReplayOptions, ReplayReport};

/// The `rollup` processor type (listed in `processor::registry::TYPES`).
pub const TYPE: ProcessorType = ProcessorType {
    name: "rollup",
    parse: |text| Ok(Arc::new(parse_definition::<RollupDef>(text)?)),
};

impl Definition for RollupDef {
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
        RollupDef::check(self)
    }
    fn build(
        &self,
        ctx: ProcessorContext,
    ) -> BoxFuture<'_, Result<Box<dyn Processor>, ProcessorError>> {
        Box::pin(
            async move { Ok(Box::new(RollupDef::build(self, ctx).await?) as Box<dyn Processor>) },
        )
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
