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
pub use processor::{check_future, RollupProcessor};
pub use replay::{ReplayError, ReplayOptions, ReplayReport};

crate::processor_type!(RollupDef, "rollup");
