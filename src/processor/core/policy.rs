//! The suspect, poison and dead-letter policy: no single entry can stop a
//! processor.
//!
//! - An entry that cannot be taken (the handler says why) is dead-lettered
//!   when it is read (`runner.rs`).
//! - An entry the reader re-read more than `rollup.max_deliveries` times
//!   comes alone (a *suspect*: the worker may have died or stalled while
//!   holding it). Everything held before it is committed first; then it is
//!   applied and committed by itself, each such solo attempt counted in
//!   Redis (`{prefix}:suspects:{group}`) before it starts. Past
//!   [`SOLO_ATTEMPTS`] it is dead-lettered instead. Entries that merely
//!   shared crash-looping commits with it commit on their own and are never
//!   dead-lettered.
//! - A commit refused for its data (and it is not known which entry is at
//!   fault) is narrowed down: the held state is dropped, the entries read
//!   again and committed half as many at a time ([`Isolation`]) until a
//!   refused commit holds one entry, which is dead-lettered with the error.

use std::time::Instant;

use super::reader::READ_ERROR_BACKOFF;
use super::runner::Runner;
use super::{Letter, ShardHandler};
use crate::stream::{range, ReadOutcome};
use crate::telemetry::metrics;

/// Solo attempts after which a suspect entry is dead-lettered: the worker
/// died or stalled this often while it held that entry alone.
pub const SOLO_ATTEMPTS: u64 = 3;

/// The dead-letter reason of a suspect at its `attempt`-th solo attempt
/// (counted from 1), or `None` while it may still be tried.
pub fn past_solo_attempts(attempt: u64, deliveries: u64, max_deliveries: u64) -> Option<String> {
    (attempt > SOLO_ATTEMPTS).then(|| {
        format!(
            "delivered {deliveries} times without its effect being committed, and the worker died or stalled in each of {SOLO_ATTEMPTS} attempts to apply it alone (rollup.max_deliveries = {max_deliveries})"
        )
    })
}

/// Entries per commit while a refused commit is narrowed down.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Isolation {
    /// `None`: not narrowing (commits hold up to the normal limit).
    chunk: Option<usize>,
}

impl Isolation {
    /// Entries a commit may hold: the chunk while narrowing, else `normal`.
    pub fn limit(&self, normal: usize) -> usize {
        self.chunk.unwrap_or(normal).max(1)
    }

    pub fn chunk(&self) -> Option<usize> {
        self.chunk
    }

    /// A commit holding `held` entries was refused: half as many next.
    pub fn narrow(&mut self, held: usize) -> usize {
        let chunk = (held / 2).max(1);
        self.chunk = Some(chunk);
        chunk
    }

    /// A commit landed: twice as many next, back to normal once that
    /// reaches `normal`. Returns whether narrowing just ended.
    pub fn widen(&mut self, normal: usize) -> bool {
        let Some(n) = self.chunk else {
            return false;
        };
        let next = n.saturating_mul(2);
        if next >= normal {
            self.chunk = None;
            true
        } else {
            self.chunk = Some(next);
            false
        }
    }
}

impl<H: ShardHandler> Runner<H> {
    /// Applies and commits a suspect entry by itself, after committing what
    /// came before it (see the module docs).
    pub(super) async fn run_suspect(&mut self) {
        if !self.flush().await {
            return; // held state first; retried after the backoff
        }
        let Some(batch) = self.suspect.take() else {
            return;
        };
        let (stream, id, deliveries) = match (&batch.outcome, self.shards.get(&batch.shard)) {
            (ReadOutcome::Entries(e), Some(st)) if e.len() == 1 => {
                (st.stream.clone(), e[0].id, e[0].deliveries)
            }
            _ => return self.on_batch(batch),
        };
        let key = self.ctx.keys.suspects(&self.spec.group);
        let field = format!("{stream}/{id}");
        let mut conn = self.ctx.redis.conn.clone();
        let attempts: Result<i64, _> = self
            .ctx
            .redis
            .run(
                redis::cmd("HINCRBY")
                    .arg(&key)
                    .arg(&field)
                    .arg(1)
                    .query_async(&mut conn),
            )
            .await;
        let attempt = match attempts {
            Ok(n) => u64::try_from(n).unwrap_or(0),
            Err(e) => {
                tracing::warn!(error = %e, "cannot count a suspect entry's attempts; retrying");
                self.suspect = Some(batch);
                self.retry_at = Some(Instant::now() + READ_ERROR_BACKOFF);
                return;
            }
        };
        let max = self.ctx.settings.max_deliveries;
        match past_solo_attempts(attempt, deliveries, max) {
            Some(reason) => self.force_dead = Some(reason),
            None => {
                tracing::info!(%stream, %id, deliveries, attempt, "applying a repeatedly delivered entry by itself")
            }
        }
        self.on_batch(batch);
        self.force_dead = None;
        let mut done = self.flush().await;
        if !done && self.applied == 0 && self.retry_at.is_none() {
            // refused alone: it became a dead letter, which this commits
            done = self.flush().await;
        }
        if done {
            let mut conn = self.ctx.redis.conn.clone();
            let _: Result<(), _> = self
                .ctx
                .redis
                .run(
                    redis::cmd("HDEL")
                        .arg(&key)
                        .arg(&field)
                        .query_async(&mut conn),
                )
                .await;
        }
    }

    /// The commit was refused for its data (`reason`). With one entry's
    /// effect held, that entry is to blame: its effect is dropped and it
    /// becomes a dead letter, committed by the next commit. Otherwise the
    /// state is dropped and the uncommitted entries are read again and
    /// committed half as many at a time.
    pub(super) async fn on_refused(&mut self, reason: String) {
        if self.applied == 1 {
            if let Some((stream, id)) = self.last_applied.clone() {
                if let Some(fault) = self.h.fault().await {
                    tracing::error!(%fault, "not dead-lettering: holding state and pausing reads");
                    self.stats.record_failure(&fault);
                    self.retry_at = Some(Instant::now() + self.backoff.next_pause());
                    return;
                }
                let at = id.to_string();
                let data = match range(&self.ctx.redis, &stream, &at, &at, 1).await {
                    Ok(entries) => entries.into_iter().next().and_then(|e| e.data),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read back a refused entry; retrying");
                        self.retry_at = Some(Instant::now() + READ_ERROR_BACKOFF);
                        return;
                    }
                };
                self.h.discard();
                self.applied = 0;
                for st in self.shards.values_mut() {
                    st.applied = 0;
                }
                self.last_applied = None;
                let reason = format!("the database refused this entry's effect: {reason}");
                tracing::warn!(%stream, %id, %reason, "moving entry to the dead-letter stream");
                self.letters.push(Letter {
                    stream,
                    id,
                    reason,
                    data,
                });
                self.retry_at = None;
                return;
            }
        }
        let chunk = self.isolation.narrow(self.applied);
        tracing::warn!(processor = %self.spec.name, entries = self.applied, chunk, error = %reason, "the database refused a flush's data; re-reading its entries in smaller flushes to find the one(s) responsible");
        metrics::FLUSHES_REFUSED.inc();
        self.reset_all().await;
    }

    /// After a commit while narrowing: twice as many entries per commit.
    pub(super) fn widen_isolation(&mut self) {
        if self.isolation.widen(self.spec.cadence.max_events) {
            tracing::info!(processor = %self.spec.name, "refused entries isolated; back to full flushes");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suspect_is_dead_lettered_only_past_its_solo_attempts() {
        for attempt in 1..=SOLO_ATTEMPTS {
            assert_eq!(past_solo_attempts(attempt, 9, 5), None, "attempt {attempt}");
        }
        let reason = past_solo_attempts(SOLO_ATTEMPTS + 1, 9, 5).expect("dead");
        assert!(reason.contains("delivered 9 times"), "{reason}");
        assert!(reason.contains("attempts to apply it alone"), "{reason}");
        assert!(reason.contains("rollup.max_deliveries = 5"), "{reason}");
        assert!(past_solo_attempts(u64::MAX, 1, 5).is_some());
    }

    #[test]
    fn narrowing_halves_to_one_then_doubles_back_to_normal() {
        let mut iso = Isolation::default();
        assert_eq!(iso.limit(1000), 1000);
        assert_eq!(iso.chunk(), None);
        assert!(!iso.widen(1000), "not narrowing: nothing to widen");
        assert_eq!(iso.narrow(1000), 500);
        assert_eq!(iso.narrow(500), 250);
        assert_eq!(iso.narrow(1), 1, "never below one entry");
        assert_eq!(iso.narrow(0), 1);
        assert_eq!(iso.limit(1000), 1);
        let mut steps = 0;
        while !iso.widen(1000) {
            steps += 1;
            assert!(iso.limit(1000) < 1000);
        }
        assert_eq!(steps, 9, "1 → 512 in nine doublings, then normal");
        assert_eq!(iso.limit(1000), 1000);
    }

    #[test]
    fn a_zero_limit_still_takes_one_entry() {
        assert_eq!(Isolation::default().limit(0), 1);
    }
}
