//! The rollup on the shard core ([`crate::processor::core`]): the core
//! reads each owned shard under its lease, takes the entries into this
//! handler and commits; this file says what taking and committing mean for
//! a rollup.
//!
//! Taking an entry decodes it and folds it into per-row state, every value
//! checked against its column in memory first: an entry that cannot be
//! decoded, whose `ts` is too far ahead, or whose values do not fit the
//! tables is refused (the core dead-letters it). Committing is ONE MySQL
//! transaction (`flush.rs`) that moves each touched shard's checkpoint by
//! compare-and-set and upserts every touched row; only after COMMIT does the
//! core XACK, and entries at or below a shard's checkpoint are acked without
//! being applied ([`Fence::Checkpoint`]). A checkpoint that moved under us
//! ([`CommitError::Moved`]) drops all held state and every shard restarts
//! from its pending list; a flush the database refuses for its data
//! ([`CommitError::Refused`]) is narrowed down by the core to the entry
//! responsible; infrastructure errors are retried with backoff.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::agg::{fold_event, CompiledTable, TableRows};
use super::budget::{Fold, KeyBudget};
use super::config::RollupDef;
use crate::event::{decode_entry, format_rfc3339_ms};
use crate::processor::core::{
    Backoff, Cadence, CommitError, Committed, Fence, Metrics, Move, Origin, ShardHandler,
    ShardProcessor, Spec,
};
use crate::processor::{Processor, ProcessorContext, ProcessorError, RunnerStats};
use crate::stream::{Entry, Shard, StreamId};
use crate::telemetry::metrics;

#[path = "flush.rs"]
mod flush;

/// First pause after a failed flush; doubles up to [`MAX_FLUSH_BACKOFF`].
const FIRST_FLUSH_BACKOFF: Duration = Duration::from_millis(100);
/// Most backoff between failed flush attempts.
const MAX_FLUSH_BACKOFF: Duration = Duration::from_secs(5);
/// Longest a flush transaction may take before it is abandoned and retried.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);

/// A built rollup processor.
pub struct RollupProcessor {
    pub(super) def: RollupDef,
    pub(super) tables: Vec<CompiledTable>,
    pub(super) ctx: ProcessorContext,
}

impl RollupDef {
    /// Checks the definition against the database and builds the runner.
    pub async fn build(&self, ctx: ProcessorContext) -> Result<RollupProcessor, ProcessorError> {
        let mut tables = Vec::new();
        for t in &self.tables {
            let cols = ctx.store.columns(&t.name).await?;
            let compiled =
                CompiledTable::compile(t, &cols).map_err(|reason| ProcessorError::Definition {
                    file: format!("processor {}", self.name),
                    reason: format!("table {}: {reason}", t.name),
                })?;
            tables.push(compiled);
        }
        Ok(RollupProcessor {
            def: self.clone(),
            tables,
            ctx,
        })
    }
}

impl Processor for RollupProcessor {
    fn name(&self) -> &str {
        &self.def.name
    }

    fn run(
        self: Box<Self>,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, Result<(), ProcessorError>> {
        let spec = self.spec();
        let ctx = self.ctx.clone();
        Box::new(ShardProcessor::new(spec, ctx, Rollup::new(*self))).run(shutdown)
    }
}

impl RollupProcessor {
    /// What the core needs to run this rollup.
    fn spec(&self) -> Spec {
        let s = &self.ctx.settings;
        Spec {
            name: self.def.name.clone(),
            group: self.def.group.clone(),
            role: "rollup",
            shards: Spec::shards(&self.ctx.keys, &self.def.kinds, &[]),
            kinds: self.def.kinds.clone(),
            extra: Vec::new(),
            start: self
                .def
                .start()
                .map(|s| s.group_id())
                .unwrap_or_else(|_| "0".into()), // checked when the definition loaded
            cadence: Cadence {
                tick: Duration::from_millis(s.flush_interval_ms.max(10)),
                max_wait: Duration::ZERO,
                max_events: s.max_batch_events,
            },
            backoff: Backoff::new(FIRST_FLUSH_BACKOFF, MAX_FLUSH_BACKOFF),
            commit_timeout: COMMIT_TIMEOUT,
            fence: Fence::Checkpoint,
            metrics: Metrics {
                failures: &metrics::FLUSH_FAILURES,
                invalid: Some(&metrics::EVENTS_INVALID),
            },
        }
    }
}

/// The rollup's held state: per-row aggregates of the entries taken since
/// the last commit.
struct Rollup {
    p: RollupProcessor,
    aggs: Vec<TableRows>,
    /// Each table's cardinality budget.
    budgets: Vec<KeyBudget>,
    /// What the budgets did in the last commit, for [`ShardHandler::committed`].
    folds: Vec<Fold>,
    /// `rollup.max_future_secs` in ms (0: no bound).
    max_future_ms: u64,
}

impl Rollup {
    fn new(p: RollupProcessor) -> Self {
        let s = &p.ctx.settings;
        let budgets = p
            .tables
            .iter()
            .map(|t| KeyBudget::new(p.def.key_budget(&t.def, s.max_new_keys_per_hour)))
            .collect();
        Self {
            aggs: p.tables.iter().map(|_| HashMap::new()).collect(),
            budgets,
            folds: Vec::new(),
            max_future_ms: s.max_future_secs.saturating_mul(1000),
            p,
        }
    }
}

impl ShardHandler for Rollup {
    async fn checkpoint(&mut self, stream: &str) -> Result<Option<StreamId>, ProcessorError> {
        let ctx = &self.p.ctx;
        Ok(Some(
            ctx.store.load_checkpoint(&self.p.def.group, stream).await?,
        ))
    }

    fn apply(&mut self, _from: &Origin<'_>, e: &Entry) -> Result<(), String> {
        let (ev, ts) = decode_entry(e.data.as_deref())?;
        check_future(e.id, ts, self.max_future_ms)?;
        fold_event(&self.p.tables, &mut self.aggs, &ev, ts).map(|_| ())
    }

    async fn commit(&mut self, moves: &[Move]) -> Result<Committed, CommitError> {
        self.flush(moves).await
    }

    fn committed(&mut self, events: u64, _rows: u64, stats: &mut RunnerStats) {
        let folds = std::mem::take(&mut self.folds);
        self.note_folds(folds, stats);
        metrics::EVENTS_APPLIED.add(events);
        metrics::FLUSHES.inc();
    }

    fn discard(&mut self) {
        for a in &mut self.aggs {
            a.clear();
        }
    }

    /// Never called: with a checkpoint fence the held state of a lost
    /// shard is committed (or refused by the compare-and-set), not dropped;
    /// one shard's part of merged rows could not be taken out anyway.
    fn discard_shard(&mut self, _shard: &Shard) {}

    async fn fault(&self) -> Option<String> {
        self.schema_drift().await
    }
}

/// Refuses an event whose `ts` is more than `max_future_ms` after its entry
/// was written (the id's time); 0 = no bound.
pub fn check_future(id: StreamId, ts_ms: i64, max_future_ms: u64) -> Result<(), String> {
    let written = i64::try_from(id.ms).unwrap_or(i64::MAX);
    let limit = i64::try_from(max_future_ms).unwrap_or(i64::MAX);
    if max_future_ms == 0 || ts_ms <= written.saturating_add(limit) {
        return Ok(());
    }
    Err(format!(
        "field ts: {} is {} s after the entry was written ({}), beyond rollup.max_future_secs = {}",
        format_rfc3339_ms(ts_ms),
        (ts_ms - written) / 1000,
        format_rfc3339_ms(written),
        max_future_ms / 1000
    ))
}
