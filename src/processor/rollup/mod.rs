//! The rollup processor: folds events into MySQL hourly/daily tables, exactly
//! once in effect.
//!
//! - `config.rs`: the definition read from `processors/*.toml`;
//! - `agg.rs`: mergeable per-row measure state and derived columns;
//! - `writer.rs`: the per-table SQL of a flush;
//! - `processor.rs`: the runner (leases, fenced shard readers, flush, ack);
//! - `replay.rs`: `flowmeter replay`, rebuilding a time range's rows from the streams.
//!
//! The mechanism is written down in `docs/guarantees.md`.

mod agg;
mod config;
mod processor;
mod replay;
mod writer;

pub use agg::{CompiledTable, MState, RowKey, SqlVal};
pub use config::{ClassDef, Dimension, MeasureDef, RollupDef, TableDef, Window};
pub use processor::{decode, RollupProcessor, RunnerStats};
pub use replay::{ReplayError, ReplayOptions, ReplayReport};
