//! Shard leases and each shard's lifecycle in the runner: acquired (load
//! the checkpoint, read the pending list first), lost, surrendered to a
//! joining worker, regained, and restarted from the pending list. Each
//! start bumps the shard's generation, so batches of an earlier reader are
//! told apart.

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::reader;
use super::runner::{Leaving, Runner, ShardState};
use super::{Fence, ShardHandler};
use crate::processor::ProcessorError;
use crate::stream::{ensure_group, LeaseOutcome, Shard, StreamId};

impl<H: ShardHandler> Runner<H> {
    pub(super) async fn on_lease_tick(&mut self) {
        if self.spec.refresh(&self.ctx.keys) {
            // a shard set was added (its shards are taken like any other)
            // or retired (its shards, read to the end, are handed back)
            tracing::info!(shards = self.spec.shards.len(), "shard layout changed");
            self.leases
                .set_shards(self.spec.shards.iter().map(|(s, _)| s.clone()).collect());
        }
        let outcomes = match self.leases.tick().await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "lease tick failed; retrying");
                return;
            }
        };
        for o in outcomes {
            match o {
                LeaseOutcome::Acquired(shard)
                    if self.shards.get(&shard).is_some_and(|s| s.leaving.is_some()) =>
                {
                    self.resume_shard(&shard);
                }
                LeaseOutcome::Acquired(shard) => {
                    if let Err(e) = self.start_shard(shard.clone()).await {
                        tracing::warn!(shard = %shard, error = %e, "cannot start shard; releasing it");
                        let _ = self.leases.release(&shard).await;
                    }
                }
                LeaseOutcome::Lost(shard) => {
                    tracing::warn!(shard = %shard, "lease lost");
                    self.stop_reader(&shard).await;
                    self.lose_shard(&shard);
                }
                LeaseOutcome::Surplus(shard) => {
                    tracing::info!(shard = %shard, "handing shard to another worker");
                    self.mark_leaving(&shard, Leaving::Surplus).await;
                }
            }
        }
        if self.shards.values().any(|s| s.leaving.is_some()) {
            self.flush().await;
        }
        self.publish_stats().await;
    }

    /// The lease of `shard` is gone. With a checkpoint fence the held state
    /// stays until the next commit (whose compare-and-set refuses it if
    /// another worker committed the shard meanwhile); without one, what is
    /// held of the shard is dropped at once and stays pending in Redis for
    /// the next owner.
    pub(super) fn lose_shard(&mut self, shard: &Shard) {
        match self.spec.fence {
            Fence::Checkpoint => {
                if let Some(st) = self.shards.get_mut(shard) {
                    st.leaving = Some(Leaving::Lost);
                    if let Some((tok, _)) = st.reader.take() {
                        tok.cancel();
                    }
                }
            }
            Fence::Lease => {
                let Some(mut st) = self.shards.remove(shard) else {
                    return;
                };
                if let Some((tok, _)) = st.reader.take() {
                    tok.cancel();
                }
                self.h.discard_shard(shard);
                self.applied -= st.applied;
                self.letters.retain(|l| l.stream != st.stream);
                self.lettered.retain(|(stream, _)| *stream != st.stream);
                if self
                    .last_applied
                    .as_ref()
                    .is_some_and(|(s, _)| *s == st.stream)
                {
                    self.last_applied = None;
                }
                if self.carry.as_ref().is_some_and(|b| &b.shard == shard) {
                    self.carry = None;
                }
                if self.suspect.as_ref().is_some_and(|b| &b.shard == shard) {
                    self.suspect = None;
                }
                if !self.is_dirty() {
                    self.oldest = None;
                }
            }
        }
    }

    /// The lease of a shard we were leaving (lost while a commit could not
    /// land, e.g. MySQL down) is ours again: keep its uncommitted state and
    /// read on from it. Starting it afresh would re-apply entries the held
    /// state already counts. If another worker committed the shard meanwhile,
    /// the next commit's checkpoint compare-and-set fails and all held state
    /// is dropped and re-read.
    fn resume_shard(&mut self, shard: &Shard) {
        let Some(st) = self.shards.get_mut(shard) else {
            return;
        };
        self.generations += 1;
        st.leaving = None;
        st.generation = self.generations;
        if let Some((tok, _)) = st.reader.take() {
            tok.cancel();
        }
        let reader = match self.shards.get(shard) {
            Some(st) => self.spawn_reader(shard, st),
            None => return,
        };
        if let Some(st) = self.shards.get_mut(shard) {
            tracing::info!(shard = %shard, checkpoint = %st.checkpoint, held_up_to = %st.seen, "shard lease regained; keeping its uncommitted state");
            st.reader = Some(reader);
        }
    }

    /// Stops reading `shard`; it leaves after the next successful commit.
    async fn mark_leaving(&mut self, shard: &Shard, how: Leaving) {
        if let Some(st) = self.shards.get_mut(shard) {
            if st.leaving != Some(Leaving::Lost) {
                st.leaving = Some(how);
            }
        }
        self.stop_reader(shard).await;
    }

    async fn stop_reader(&mut self, shard: &Shard) {
        if let Some((tok, h)) = self.shards.get_mut(shard).and_then(|st| st.reader.take()) {
            tok.cancel();
            let _ = h.await;
        }
    }

    /// Makes sure the group exists, loads the checkpoint, starts reading
    /// the pending list.
    pub(super) async fn start_shard(&mut self, shard: Shard) -> Result<(), ProcessorError> {
        let Some(stream) = self
            .spec
            .shards
            .iter()
            .find(|(s, _)| *s == shard)
            .map(|(_, stream)| stream.clone())
        else {
            return Ok(()); // not one of ours (the lease manager only offers ours)
        };
        ensure_group(&self.ctx.redis, &stream, &self.spec.group, &self.spec.start).await?;
        let checkpoint = self.h.checkpoint(&stream).await?.unwrap_or(StreamId::ZERO);
        // Unique across the runner's life, not per shard: a shard dropped and
        // taken again must not accept batches its earlier reader left queued.
        self.generations += 1;
        let generation = self.generations;
        let mut st = ShardState {
            stream,
            checkpoint,
            seen: checkpoint,
            acks: Vec::new(),
            stale: Vec::new(),
            applied: 0,
            generation,
            reader: None,
            leaving: None,
        };
        st.reader = Some(self.spawn_reader(&shard, &st));
        tracing::info!(shard = %shard, checkpoint = %checkpoint, "shard acquired");
        self.shards.insert(shard, st);
        Ok(())
    }

    fn spawn_reader(&self, shard: &Shard, st: &ShardState) -> (CancellationToken, JoinHandle<()>) {
        reader::spawn(
            &self.ctx,
            &self.spec.group,
            shard,
            &st.stream,
            st.generation,
            self.tx.clone(),
        )
    }

    /// Removes shards that were leaving once their work is committed.
    pub(super) async fn finish_leaving(&mut self) {
        let leaving: Vec<(Shard, Leaving)> = self
            .shards
            .iter()
            .filter_map(|(k, s)| s.leaving.map(|l| (k.clone(), l)))
            .collect();
        for (shard, how) in leaving {
            self.stop_reader(&shard).await;
            self.shards.remove(&shard);
            if how == Leaving::Surplus {
                if let Err(e) = self.leases.release(&shard).await {
                    tracing::warn!(shard = %shard, error = %e, "release failed; lease will expire");
                }
            }
        }
    }

    /// Drops all uncommitted state and restarts every shard from its pending list.
    pub(super) async fn reset_all(&mut self) {
        self.h.discard();
        self.retry_at = None;
        self.letters.clear();
        self.applied = 0;
        self.oldest = None;
        self.last_applied = None;
        self.carry = None;
        self.stop_readers().await;
        while self.rx.try_recv().is_ok() {}
        let shards: Vec<(Shard, Option<Leaving>)> = self
            .shards
            .iter()
            .map(|(k, s)| (k.clone(), s.leaving))
            .collect();
        for (shard, leaving) in shards {
            match leaving {
                Some(how) => {
                    self.shards.remove(&shard);
                    if how == Leaving::Surplus {
                        let _ = self.leases.release(&shard).await;
                    }
                }
                None => {
                    if let Err(e) = self.start_shard(shard.clone()).await {
                        tracing::warn!(shard = %shard, error = %e, "restart failed; dropping shard (lease will be retaken)");
                        self.shards.remove(&shard);
                        let _ = self.leases.release(&shard).await;
                    }
                }
            }
        }
    }

    pub(super) async fn stop_readers(&mut self) {
        for st in self.shards.values_mut() {
            if let Some((tok, h)) = st.reader.take() {
                tok.cancel();
                let _ = h.await;
            }
        }
    }
}
