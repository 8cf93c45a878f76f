//! One flush of the rollup runner: a single transaction moving the
//! checkpoints, applying the key budgets and writing the rows; then, by
//! outcome, acknowledging (commit), retrying with backoff (infrastructure),
//! re-reading (a moved checkpoint) or narrowing a refused flush down to the
//! entry responsible (a data error, see the runner's module docs).

use std::time::{Duration, Instant};

use super::{Poison, RollupProcessor, Runner, COMMIT_TIMEOUT, MAX_FLUSH_BACKOFF};
use crate::processor::reader::READ_ERROR_BACKOFF;
use crate::processor::rollup::agg::{sorted_rows, Row, RowKey};
use crate::processor::rollup::budget::{Fold, KeyBudget};
use crate::processor::rollup::writer::write_table;
use crate::store::{advance_checkpoint, StoreError};
use crate::stream::{ack, range, Shard, StreamError, StreamId};
use crate::telemetry::metrics;

impl Runner {
    /// The database refused the current flush's data (`reason`). With one
    /// entry's effect held, that entry is to blame: its effect is dropped and
    /// it becomes a dead letter, committed by the next flush. Otherwise the
    /// state is dropped and the uncommitted entries are read again and
    /// flushed half as many at a time.
    async fn on_refused(&mut self, reason: String) {
        if self.pending_events == 1 {
            if let Some((stream, id)) = self.last_applied.clone() {
                // A table altered under the running processor makes every
                // entry look guilty: that is a fault to fix, not data to drop.
                if let Some(fault) = self.schema_drift().await {
                    tracing::error!(%fault, "not dead-lettering: holding state and pausing reads");
                    self.stats.record_failure(&fault);
                    self.retry_at = Some(Instant::now() + self.backoff);
                    self.backoff = (self.backoff * 2).min(MAX_FLUSH_BACKOFF);
                    return;
                }
                let ctx = &self.p.ctx;
                let at = id.to_string();
                let data = match range(&ctx.redis, &stream, &at, &at, 1).await {
                    Ok(entries) => entries.into_iter().next().and_then(|e| e.data),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read back a refused entry; retrying");
                        self.retry_at = Some(Instant::now() + READ_ERROR_BACKOFF);
                        return;
                    }
                };
                for a in &mut self.aggs {
                    a.clear();
                }
                self.pending_events = 0;
                self.last_applied = None;
                self.stats.invalid_total += 1;
                metrics::EVENTS_INVALID.inc();
                let reason = format!("the database refused this entry's effect: {reason}");
                tracing::warn!(%stream, %id, %reason, "moving entry to the dead-letter stream");
                self.poison.push(Poison {
                    stream,
                    id,
                    data,
                    reason,
                });
                self.retry_at = None;
                return;
            }
        }
        let chunk = (self.pending_events / 2).max(1);
        tracing::warn!(entries = self.pending_events, chunk, error = %reason, "the database refused a flush's data; re-reading its entries in smaller flushes to find the one(s) responsible");
        metrics::FLUSHES_REFUSED.inc();
        self.isolate = Some(chunk);
        self.reset_all().await;
    }

    /// Whether a table no longer looks the way it did when the processor
    /// started (its values were checked against that), or cannot be read.
    async fn schema_drift(&self) -> Option<String> {
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

    /// Commits the current state. Returns whether everything held was flushed.
    pub(super) async fn flush(&mut self) -> bool {
        let dirty_shards: Vec<(Shard, String, StreamId, StreamId)> = self
            .shards
            .iter()
            .filter(|(_, s)| s.seen > s.checkpoint)
            .map(|(k, s)| (k.clone(), s.stream.clone(), s.checkpoint, s.seen))
            .collect();
        let has_acks = self
            .shards
            .values()
            .any(|s| !s.acks.is_empty() || !s.stale.is_empty());
        if dirty_shards.is_empty() && !has_acks {
            // nothing held: whatever failed before no longer blocks reading
            self.retry_at = None;
            self.backoff = Duration::from_millis(100);
            self.finish_leaving().await;
            return true;
        }
        if let Err(e) = self.dead_letter().await {
            self.stats
                .record_failure(&format!("cannot write the dead-letter stream: {e}"));
            tracing::warn!(error = %e, "cannot write the dead-letter stream; holding state and pausing reads");
            self.retry_at = Some(Instant::now() + self.backoff);
            self.backoff = (self.backoff * 2).min(MAX_FLUSH_BACKOFF);
            return false;
        }
        let started = Instant::now();
        let events = self.pending_events as u64;
        let rows = sorted_rows(&self.aggs);
        let row_count: usize = rows.iter().map(Vec::len).sum();
        let mut attempt = 0;
        // The leases are kept alive while the commit runs (MySQL may make it
        // wait: an unreachable server holds it for the pool's connect
        // timeout). A commit past COMMIT_TIMEOUT is abandoned; if it did
        // land, the retry's checkpoint compare-and-set notices and re-reads.
        let result = loop {
            attempt += 1;
            let commit = commit(&self.p, &mut self.budgets, &dirty_shards, &rows);
            let attempt_result = tokio::select! {
                r = tokio::time::timeout(COMMIT_TIMEOUT, commit) => match r {
                    Ok(r) => r,
                    Err(_) => Err(StoreError::Timeout(COMMIT_TIMEOUT)),
                },
                _ = self.leases.keepalive() => Err(StoreError::Timeout(COMMIT_TIMEOUT)),
            };
            match attempt_result {
                Err(e)
                    if e.is_lock_conflict() && attempt <= self.p.ctx.settings.max_flush_retries =>
                {
                    metrics::FLUSH_RETRIES.inc();
                    tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt))).await;
                }
                other => break other,
            }
        };
        drop(rows);
        match result {
            Ok(folds) => {
                for (shard, _, _, to) in &dirty_shards {
                    if let Some(st) = self.shards.get_mut(shard) {
                        st.checkpoint = *to;
                    }
                }
                for a in &mut self.aggs {
                    a.clear();
                }
                self.pending_events = 0;
                self.last_applied = None;
                // dead letters still beyond a checkpoint may be read again
                let shards = &self.shards;
                self.lettered.retain(|(stream, id)| {
                    shards
                        .values()
                        .any(|st| st.stream == *stream && *id > st.checkpoint)
                });
                self.retry_at = None;
                self.backoff = Duration::from_millis(100);
                self.widen_isolation();
                self.note_folds(folds);
                let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
                for st in self.shards.values() {
                    for id in &st.acks {
                        self.latency.add(now_ms.saturating_sub(id.ms) as f64);
                    }
                }
                self.stats.xadd_to_commit_p50_ms = self.latency.quantile(0.5).unwrap_or(0.0);
                self.stats.xadd_to_commit_p99_ms = self.latency.quantile(0.99).unwrap_or(0.0);
                self.stats.xadd_to_commit_max_ms = self.latency.quantile(1.0).unwrap_or(0.0);
                self.ack_committed().await;
                let elapsed = self.last_flush.elapsed().as_secs_f64().max(0.001);
                self.last_flush = Instant::now();
                self.stats.last_flush_ms = started.elapsed().as_millis() as u64;
                self.stats.last_flush_events = events;
                self.stats.last_flush_rows = row_count as u64;
                self.stats.events_per_sec = events as f64 / elapsed;
                self.stats.events_total += events;
                self.stats.flushes_total += 1;
                self.stats.record_success();
                metrics::EVENTS_APPLIED.add(events);
                metrics::FLUSHES.inc();
                // status shows every flush, not only the last lease tick's
                self.publish_stats().await;
                tracing::debug!(
                    events,
                    rows = row_count,
                    ms = self.stats.last_flush_ms,
                    "flushed"
                );
                self.finish_leaving().await;
                true
            }
            Err(StoreError::CheckpointMoved { group, stream }) => {
                tracing::warn!(%group, %stream, "checkpoint moved under us: dropping uncommitted state and re-reading pending entries");
                self.stats.record_failure(&format!(
                    "checkpoint of {group} on {stream} moved: another worker committed this shard"
                ));
                self.reset_all().await;
                false
            }
            Err(e) if e.is_data_error() && self.pending_events > 0 => {
                metrics::FLUSH_FAILURES.inc();
                self.stats.record_failure(&e.to_string());
                self.on_refused(e.to_string()).await;
                false
            }
            Err(e) => {
                metrics::FLUSH_FAILURES.inc();
                self.stats.record_failure(&e.to_string());
                tracing::warn!(error = %e, retryable = e.retryable(), backoff_ms = self.backoff.as_millis() as u64, "flush failed; holding state and pausing reads");
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(MAX_FLUSH_BACKOFF);
                false
            }
        }
    }

    /// After a commit while isolating: twice as many entries per flush,
    /// back to normal once that reaches `max_batch_events`.
    fn widen_isolation(&mut self) {
        if let Some(n) = self.isolate {
            let next = n.saturating_mul(2);
            if next >= self.p.ctx.settings.max_batch_events {
                tracing::info!(processor = %self.p.def.name, "refused entries isolated; back to full flushes");
                self.isolate = None;
            } else {
                self.isolate = Some(next);
            }
        }
    }

    /// Publishes what the cardinality budgets did in a committed flush.
    fn note_folds(&mut self, folds: Vec<Fold>) {
        for ((t, f), b) in self.p.tables.iter().zip(folds).zip(&self.budgets) {
            let keys = f.keys_folded();
            if keys > 0 {
                metrics::KEYS_FOLDED.add(keys);
                metrics::EVENTS_FOLDED.add(f.events_folded);
                self.stats.keys_folded_total += keys;
                tracing::warn!(table = %t.def.name, keys, events = f.events_folded, max_new_keys_per_hour = b.max_new_keys_per_hour, "cardinality budget spent: new dimension keys folded into __other__ rows");
            }
            if let Some(st) = f.status {
                match self
                    .stats
                    .key_budgets
                    .iter_mut()
                    .find(|x| x.table == st.table)
                {
                    Some(x) => *x = st,
                    None => self.stats.key_budgets.push(st),
                }
            }
        }
    }

    /// Appends this flush's undecodable entries to `{prefix}:dlq:{group}`
    /// (one MULTI/EXEC) before the commit that lets them be acknowledged. A
    /// crash between the two writes them again on redelivery.
    async fn dead_letter(&mut self) -> Result<(), StreamError> {
        if self.poison.is_empty() {
            return Ok(());
        }
        let ctx = &self.p.ctx;
        let letters: Vec<crate::dlq::NewLetter> = self
            .poison
            .iter()
            .map(|p| crate::dlq::NewLetter {
                stream: &p.stream,
                id: p.id,
                error: &p.reason,
                data: p.data.as_deref(),
            })
            .collect();
        crate::dlq::append(
            &ctx.redis,
            &ctx.keys.dlq(&self.p.def.group),
            &self.p.def.name,
            &letters,
        )
        .await?;
        self.lettered
            .extend(self.poison.drain(..).map(|p| (p.stream, p.id)));
        Ok(())
    }

    /// XACK everything committed. A failed ack leaves entries pending; they sit
    /// at or below the checkpoint and are acked when re-read.
    async fn ack_committed(&mut self) {
        let ctx = &self.p.ctx;
        for st in self.shards.values_mut() {
            let mut ids: Vec<StreamId> = std::mem::take(&mut st.stale);
            ids.append(&mut st.acks);
            if ids.is_empty() {
                continue;
            }
            match ack(&ctx.redis, &st.stream, &self.p.def.group, &ids).await {
                Ok(()) => metrics::ENTRIES_ACKED.add(ids.len() as u64),
                Err(e) => {
                    tracing::warn!(stream = %st.stream, error = %e, "XACK failed; entries stay pending and are acked on re-read")
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
    dirty: &[(Shard, String, StreamId, StreamId)],
    rows: &[Vec<(&RowKey, &Row)>],
) -> Result<Vec<Fold>, StoreError> {
    let ctx = &p.ctx;
    let mut tx = ctx.store.pool().begin().await?;
    // Checkpoints first, in shard order: fails fast on a moved checkpoint and
    // serializes two workers racing on one shard.
    for (_, stream, from, to) in dirty {
        advance_checkpoint(&mut tx, &p.def.group, stream, *from, *to, &ctx.worker_id).await?;
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
