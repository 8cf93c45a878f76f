//! One commit of the runner: the dead letters found so far, then the
//! handler's commit (leases kept alive meanwhile, bounded by the commit
//! timeout, lock conflicts retried at once), then the letters the commit
//! produced, then XACK; or, by outcome, a backoff, a re-read, or narrowing
//! a refused commit down to the entry responsible (`policy.rs`).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::runner::Runner;
use super::{CommitError, Committed, Fence, Letter, Move, ShardHandler};
use crate::stream::{ack, StreamError, StreamId};
use crate::telemetry::families::EntryOutcome;
use crate::telemetry::metrics;

impl<H: ShardHandler> Runner<H> {
    /// Commits what is held. Returns whether nothing is held any more.
    pub(super) async fn flush(&mut self) -> bool {
        let moves: Vec<Move> = self
            .shards
            .iter()
            .filter(|(_, s)| s.seen > s.checkpoint)
            .map(|(k, s)| Move {
                shard: k.clone(),
                stream: s.stream.clone(),
                from: s.checkpoint,
                to: s.seen,
            })
            .collect();
        if moves.is_empty() && !self.is_dirty() {
            // nothing held: whatever failed before no longer blocks reading
            self.retry_at = None;
            self.backoff.reset();
            self.oldest = None;
            self.finish_leaving().await;
            return true;
        }
        let letters = std::mem::take(&mut self.letters);
        if let Err(e) = self.dead_letter(&letters, EntryOutcome::Invalid).await {
            self.figures.flush_failed();
            self.letters = letters;
            self.stats
                .record_failure(&format!("cannot write the dead-letter stream: {e}"));
            let wait = self.backoff.next_pause();
            tracing::warn!(processor = %self.spec.name, error = %e, backoff_ms = wait.as_millis() as u64, "cannot write the dead-letter stream; holding state and pausing reads");
            self.retry_at = Some(Instant::now() + wait);
            return false;
        }
        let started = Instant::now();
        let events = self.applied as u64;
        match self.commit(&moves).await {
            Ok(committed) => {
                self.on_committed(&moves, committed, started, events).await;
                true
            }
            Err(CommitError::Moved(reason)) => {
                tracing::warn!(processor = %self.spec.name, %reason, "checkpoint moved under us: dropping uncommitted state and re-reading pending entries");
                self.figures.flush_failed();
                self.stats.record_failure(&reason);
                self.reset_all().await;
                false
            }
            Err(CommitError::Refused(reason)) if self.applied > 0 => {
                self.spec.metrics.failures.inc();
                self.figures.flush_failed();
                self.stats.record_failure(&reason);
                self.on_refused(reason).await;
                false
            }
            Err(e) => {
                self.spec.metrics.failures.inc();
                self.figures.flush_failed();
                self.stats.record_failure(&e.to_string());
                let wait = self.backoff.next_pause();
                tracing::warn!(processor = %self.spec.name, entries = self.applied, error = %e, backoff_ms = wait.as_millis() as u64, "commit failed; holding state and pausing reads");
                self.retry_at = Some(Instant::now() + wait);
                false
            }
        }
    }

    /// The handler's commit with the leases kept alive meanwhile (the
    /// downstream system may make it wait: an unreachable MySQL holds it for
    /// the pool's connect timeout). A commit past the timeout is abandoned;
    /// if it did land, the retry's checkpoint compare-and-set notices (or,
    /// without one, the retry delivers again: at least once). Lock
    /// conflicts are retried at once, `rollup.max_flush_retries` times.
    async fn commit(&mut self, moves: &[Move]) -> Result<Committed, CommitError> {
        let timeout = self.spec.commit_timeout;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = tokio::select! {
                r = tokio::time::timeout(timeout, self.h.commit(moves)) => match r {
                    Ok(r) => r,
                    Err(_) => Err(CommitError::Failed(format!(
                        "commit took longer than {} ms; abandoned",
                        timeout.as_millis()
                    ))),
                },
                // renews the leases while the commit runs; never ends by itself
                _ = self.leases.keepalive() => Err(CommitError::Failed("lease keepalive ended".into())),
            };
            match result {
                Err(CommitError::Conflict(_)) if attempt <= self.ctx.settings.max_flush_retries => {
                    metrics::FLUSH_RETRIES.inc();
                    tokio::time::sleep(Duration::from_millis(10 * u64::from(attempt))).await;
                }
                Err(CommitError::Conflict(reason)) => return Err(CommitError::Failed(reason)),
                other => return other,
            }
        }
    }

    /// After a commit: the letters it produced, the checkpoints, the
    /// acknowledgements, the figures.
    async fn on_committed(
        &mut self,
        moves: &[Move],
        committed: Committed,
        started: Instant,
        events: u64,
    ) {
        // Rejected entries are acknowledged only once their letters are
        // written; if that fails they wait for the next commit's letters.
        let mut hold = HashSet::new();
        if let Err(e) = self
            .dead_letter(&committed.rejected, EntryOutcome::DeadLettered)
            .await
        {
            tracing::warn!(processor = %self.spec.name, error = %e, "cannot write dead letters; the rejected entries stay unacknowledged until they are written");
            self.stats
                .record_failure(&format!("cannot write dead letters: {e}"));
            hold.extend(committed.rejected.iter().map(|l| (l.stream.clone(), l.id)));
            self.letters.extend(committed.rejected);
        }
        for m in moves {
            if let Some(st) = self.shards.get_mut(&m.shard) {
                st.checkpoint = m.to;
                st.applied = 0;
            }
        }
        self.applied = 0;
        self.last_applied = None;
        self.retry_at = None;
        self.backoff.reset();
        self.widen_isolation();
        let acked: Vec<StreamId> = self
            .shards
            .values()
            .flat_map(|st| st.acks.iter().copied())
            .collect();
        self.ack_committed(&hold).await;
        // dead letters still unacknowledged may be read again
        let fenced = self.spec.fence == Fence::Checkpoint;
        let shards = &self.shards;
        self.lettered.retain(|(stream, id)| {
            shards.values().any(|st| {
                st.stream == *stream && ((fenced && *id > st.checkpoint) || st.acks.contains(id))
            })
        });
        self.oldest = (!hold.is_empty()).then(Instant::now);
        self.throughput.record(
            &mut self.stats,
            &acked,
            started.elapsed(),
            events,
            committed.rows,
        );
        self.h.committed(events, committed.rows, &mut self.stats);
        self.gauges.committed();
        // status shows every commit, not only the last lease tick's
        self.publish_stats().await;
        tracing::debug!(
            processor = %self.spec.name,
            events,
            rows = committed.rows,
            ms = self.stats.last_flush_ms,
            "flushed"
        );
        if hold.is_empty() {
            self.finish_leaving().await;
        }
    }

    /// XACK everything committed except `hold`. A failed ack leaves entries
    /// pending: at or below the checkpoint they are acked when re-read;
    /// without a checkpoint they are delivered again (at least once).
    async fn ack_committed(&mut self, hold: &HashSet<(String, StreamId)>) {
        let ctx = &self.ctx;
        for st in self.shards.values_mut() {
            let mut ids: Vec<StreamId> = std::mem::take(&mut st.stale);
            ids.append(&mut st.acks);
            if !hold.is_empty() {
                let (held, rest) = ids
                    .into_iter()
                    .partition(|id| hold.contains(&(st.stream.clone(), *id)));
                st.acks = held;
                ids = rest;
            }
            if ids.is_empty() {
                continue;
            }
            match ack(&ctx.redis, &st.stream, &self.spec.group, &ids).await {
                Ok(()) => metrics::ENTRIES_ACKED.add(ids.len() as u64),
                Err(e) => {
                    tracing::warn!(stream = %st.stream, error = %e, "XACK failed; entries stay pending and are acked on re-read")
                }
            }
        }
    }

    /// Appends `letters` to `{prefix}:dlq:{group}` (one MULTI/EXEC) before
    /// the entries are acknowledged. A crash in between writes them again
    /// on redelivery.
    async fn dead_letter(
        &mut self,
        letters: &[Letter],
        outcome: EntryOutcome,
    ) -> Result<(), StreamError> {
        if letters.is_empty() {
            return Ok(());
        }
        let new: Vec<crate::dlq::NewLetter> = letters
            .iter()
            .map(|l| crate::dlq::NewLetter {
                stream: &l.stream,
                id: l.id,
                error: &l.reason,
                data: l.data.as_deref(),
            })
            .collect();
        crate::dlq::append(
            &self.ctx.redis,
            &self.ctx.keys.dlq(&self.spec.group),
            &self.spec.name,
            &new,
        )
        .await?;
        let n = letters.len() as u64;
        self.figures.entries(outcome, n);
        self.stats.invalid_total += n;
        if let Some(c) = self.spec.metrics.invalid {
            c.add(n);
        }
        self.lettered
            .extend(letters.iter().map(|l| (l.stream.clone(), l.id)));
        Ok(())
    }
}
