//! One rollup flush: a single MySQL transaction moving the checkpoints,
//! applying the key budgets and writing the rows, and what its error means
//! to the shard core (a moved checkpoint, a lock conflict, refused data,
//! or infrastructure).

use super::{Rollup, RollupProcessor};
use crate::processor::core::{CommitError, Committed, Move};
use crate::processor::rollup::agg::{sorted_rows, Row, RowKey};
use crate::processor::rollup::budget::{Fold, KeyBudget};
use crate::processor::rollup::writer::write_table;
use crate::processor::RunnerStats;
use crate::store::{advance_checkpoint, StoreError};
use crate::telemetry::metrics;

impl Rollup {
    /// Commits the held rows with the checkpoints of `moves`; on success the
    /// held state is cleared and the budgets' work kept for `committed`.
    pub(super) async fn flush(&mut self, moves: &[Move]) -> Result<Committed, CommitError> {
        let rows = sorted_rows(&self.aggs);
        let row_count: usize = rows.iter().map(Vec::len).sum();
        match commit(&self.p, &mut self.budgets, moves, &rows).await {
            Ok(folds) => {
                drop(rows);
                self.folds = folds;
                for a in &mut self.aggs {
                    a.clear();
                }
                Ok(Committed {
                    rows: row_count as u64,
                    rejected: Vec::new(),
                })
            }
            Err(StoreError::CheckpointMoved { group, stream }) => Err(CommitError::Moved(format!(
                "checkpoint of {group} on {stream} moved: another worker committed this shard"
            ))),
            Err(e) if e.is_lock_conflict() => Err(CommitError::Conflict(e.to_string())),
            Err(e) if e.is_data_error() => Err(CommitError::Refused(e.to_string())),
            Err(e) => {
                tracing::debug!(error = %e, retryable = e.retryable(), "flush failed");
                Err(CommitError::Failed(e.to_string()))
            }
        }
    }

    /// Whether a table no longer looks the way it did when the processor
    /// started (its values were checked against that), or cannot be read:
    /// then every entry would look guilty of a refused flush.
    pub(super) async fn schema_drift(&self) -> Option<String> {
        for t in &self.p.tables {
            match self.p.ctx.store.columns(&t.def.name).await {
                Ok(cols) if t.matches(&cols) => {}
                Ok(_) => {
                    return Some(format!(
                        "table {} changed since the processor started; restart the rollup workers",
                        t.def.name
                    ))
                }
                Err(e) => return Some(e.to_string()),
            }
        }
        None
    }

    /// Publishes what the cardinality budgets did in a committed flush.
    pub(super) fn note_folds(&mut self, folds: Vec<Fold>, stats: &mut RunnerStats) {
        for ((t, f), b) in self.p.tables.iter().zip(folds).zip(&self.budgets) {
            let keys = f.keys_folded();
            if keys > 0 {
                metrics::KEYS_FOLDED.add(keys);
                metrics::EVENTS_FOLDED.add(f.events_folded);
                stats.keys_folded_total += keys;
                tracing::warn!(table = %t.def.name, keys, events = f.events_folded, max_new_keys_per_hour = b.max_new_keys_per_hour, "cardinality budget spent: new dimension keys folded into __other__ rows");
            }
            if let Some(st) = f.status {
                match stats.key_budgets.iter_mut().find(|x| x.table == st.table) {
                    Some(x) => *x = st,
                    None => stats.key_budgets.push(st),
                }
            }
        }
    }
}

/// One flush transaction: moves every dirty shard's checkpoint, then folds
/// each table's new keys past its budget and writes its rows. Returns what
/// each table's budget did.
async fn commit(
    p: &RollupProcessor,
    budgets: &mut [KeyBudget],
    moves: &[Move],
    rows: &[Vec<(&RowKey, &Row)>],
) -> Result<Vec<Fold>, StoreError> {
    let ctx = &p.ctx;
    let mut tx = ctx.store.pool().begin().await?;
    // Checkpoints first, in shard order: fails fast on a moved checkpoint and
    // serializes two workers racing on one shard.
    for m in moves {
        advance_checkpoint(
            &mut tx,
            &p.def.group,
            &m.stream,
            m.from,
            m.to,
            &ctx.worker_id,
        )
        .await?;
    }
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut folds = Vec::with_capacity(p.tables.len());
    for ((t, r), budget) in p.tables.iter().zip(rows).zip(budgets.iter_mut()) {
        let fold = budget.fold(&mut tx, t, r, now_ms).await?;
        write_table(&mut tx, t, &fold.apply(r)).await?;
        folds.push(fold);
    }
    tx.commit().await?;
    Ok(folds)
}
