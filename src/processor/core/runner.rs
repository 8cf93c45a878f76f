//! The runner: one loop per processor and worker. Readers (one per owned
//! shard) send batches over a bounded channel; the loop takes them into the
//! handler's held state until a commit is due (`Cadence`), renews the
//! leases, and on shutdown stops reading, commits what it holds and hands
//! its shards back.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::policy::Isolation;
use super::reader::Batch;
use super::stats::Throughput;
use super::{Backoff, Fence, Letter, Origin, ShardHandler, Spec};
use crate::processor::{ProcessorContext, ProcessorError, RunnerStats};
use crate::stream::{LeaseManager, ReadOutcome, Shard, StreamId};
use crate::telemetry::families::ProcessorMetrics;
use crate::telemetry::workers::WorkerGauges;

/// Longest the graceful stop tries to commit what is held.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// Pause between the graceful stop's commit attempts.
const STOP_RETRY: Duration = Duration::from_millis(200);

pub(super) struct ShardState {
    pub(super) stream: String,
    /// Committed position (everything up to here is durable). Without a
    /// checkpoint fence: the last entry committed by this worker, which
    /// filters nothing.
    pub(super) checkpoint: StreamId,
    /// Last entry taken since (> checkpoint when something is held).
    pub(super) seen: StreamId,
    /// Entries taken (applied or dead-lettered), to ack after the next commit.
    pub(super) acks: Vec<StreamId>,
    /// Entries at or below the checkpoint, to ack without applying.
    pub(super) stale: Vec<StreamId>,
    /// Entries of this shard applied since the last commit.
    pub(super) applied: usize,
    /// The shard's incarnation: batches of an earlier reader are ignored.
    pub(super) generation: u64,
    pub(super) reader: Option<(CancellationToken, JoinHandle<()>)>,
    /// Lease gone or surrendered: stop after the next successful commit.
    pub(super) leaving: Option<Leaving>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Leaving {
    Lost,
    Surplus,
}

pub(super) struct Runner<H: ShardHandler> {
    pub(super) h: H,
    pub(super) spec: Spec,
    pub(super) ctx: ProcessorContext,
    pub(super) leases: LeaseManager,
    pub(super) shards: BTreeMap<Shard, ShardState>,
    /// Shard incarnations started so far (the next one's generation).
    pub(super) generations: u64,
    pub(super) tx: mpsc::Sender<Batch>,
    pub(super) rx: mpsc::Receiver<Batch>,
    pub(super) stats: RunnerStats,
    pub(super) throughput: Throughput,
    /// This processor's labelled series (`/metrics`).
    pub(super) figures: ProcessorMetrics,
    /// This worker's row of the per-worker gauges, for as long as it runs.
    pub(super) gauges: WorkerGauges,
    /// Entries applied since the last commit (all shards).
    pub(super) applied: usize,
    /// When the oldest entry held since the last commit arrived.
    pub(super) oldest: Option<Instant>,
    /// Dead letters to write before the next commit.
    pub(super) letters: Vec<Letter>,
    /// Entries in the dead-letter stream whose acknowledgement is not
    /// committed yet: when re-read (after a refused or moved commit) they are
    /// acked without being applied, so none is dead-lettered twice.
    pub(super) lettered: HashSet<(String, StreamId)>,
    pub(super) retry_at: Option<Instant>,
    pub(super) backoff: Backoff,
    /// A suspect entry waiting to be applied and committed by itself.
    pub(super) suspect: Option<Batch>,
    /// Dead-letter reason forced on the next entry (a suspect past its solo attempts).
    pub(super) force_dead: Option<String>,
    /// Entries per commit while narrowing down a refused commit.
    pub(super) isolation: Isolation,
    /// The rest of a batch held back because the isolation chunk was reached.
    pub(super) carry: Option<Batch>,
    /// The last entry applied since the last commit (stream, id): the one
    /// to blame when a commit holding one entry is refused.
    pub(super) last_applied: Option<(String, StreamId)>,
}

impl<H: ShardHandler> Runner<H> {
    pub(super) fn new(spec: Spec, ctx: ProcessorContext, h: H) -> Self {
        let leases = LeaseManager::new(
            ctx.redis.clone(),
            ctx.keys.clone(),
            spec.group.clone(),
            ctx.worker_id.clone(),
            ctx.settings.lease_ms,
            spec.shards.iter().map(|(s, _)| s.clone()).collect(),
        );
        let (tx, rx) = mpsc::channel(ctx.settings.read_queue_batches.max(1));
        let stats = RunnerStats {
            worker: ctx.worker_id.clone(),
            ..Default::default()
        };
        let backoff = spec.backoff.clone();
        let figures = ProcessorMetrics::new(&spec.name, &spec.group);
        let gauges = WorkerGauges::new(&spec.name, &ctx.worker_id);
        Self {
            h,
            spec,
            ctx,
            leases,
            shards: BTreeMap::new(),
            generations: 0,
            tx,
            rx,
            stats,
            throughput: Throughput::new(figures.clone()),
            figures,
            gauges,
            applied: 0,
            oldest: None,
            letters: Vec::new(),
            lettered: HashSet::new(),
            retry_at: None,
            backoff,
            suspect: None,
            force_dead: None,
            isolation: Isolation::default(),
            carry: None,
            last_applied: None,
        }
    }

    /// Entries held before a commit: `max_events`, or the isolation chunk.
    pub(super) fn batch_limit(&self) -> usize {
        self.isolation.limit(self.spec.cadence.max_events)
    }

    /// Entries held in memory: applied ones and dead letters to write.
    fn held(&self) -> usize {
        self.applied + self.letters.len()
    }

    fn retry_due(&self) -> bool {
        self.retry_at.is_none_or(|t| Instant::now() >= t)
    }

    /// Takes a batch from a reader (or the carried rest of one).
    async fn take_batch(&mut self, batch: Batch) {
        if batch.is_suspect(self.ctx.settings.max_deliveries) {
            self.suspect = Some(batch);
            return;
        }
        self.on_batch(batch);
        if self.held() >= self.batch_limit() {
            self.flush().await;
        }
    }

    pub(super) async fn run(&mut self, shutdown: CancellationToken) -> Result<(), ProcessorError> {
        let s = &self.ctx.settings;
        let mut lease_tick =
            tokio::time::interval(Duration::from_millis((s.lease_ms / 3).max(100)));
        lease_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let cadence = self.spec.cadence;
        let mut flush_tick = tokio::time::interval(cadence.tick.max(Duration::from_millis(10)));
        flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(processor = %self.spec.name, group = %self.spec.group, worker = %self.ctx.worker_id, "{} runner started", self.spec.role);
        loop {
            if self.suspect.is_some() && self.retry_due() {
                self.run_suspect().await;
            }
            let accepting = self.retry_at.is_none()
                && self.held() < self.batch_limit()
                && self.suspect.is_none();
            if accepting {
                if let Some(batch) = self.carry.take() {
                    self.take_batch(batch).await;
                    continue;
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = lease_tick.tick() => self.on_lease_tick().await,
                _ = flush_tick.tick() => {
                    let due = self.retry_at.is_some()
                        || self.oldest.is_none_or(|t| t.elapsed() >= cadence.max_wait);
                    if due && self.retry_due() {
                        self.flush().await;
                    }
                }
                Some(batch) = self.rx.recv(), if accepting => self.take_batch(batch).await,
            }
        }
        self.stop().await;
        Ok(())
    }

    /// Graceful stop: stop reading, commit what is held, ack, hand the
    /// shards back. Only what one commit may hold is taken from the channel
    /// (and only the isolation chunk while narrowing): the rest stays
    /// pending and is read again by the next owner.
    async fn stop(&mut self) {
        self.stop_readers().await;
        if let Some(batch) = self.carry.take() {
            self.on_batch(batch);
        }
        while self.carry.is_none() && self.held() < self.batch_limit() {
            let Ok(batch) = self.rx.try_recv() else { break };
            self.on_batch(batch);
        }
        let deadline = Instant::now() + STOP_DEADLINE;
        while self.is_dirty() && Instant::now() < deadline {
            if self.flush().await {
                break;
            }
            tokio::time::sleep(STOP_RETRY).await;
        }
        if let Err(e) = self.leases.release_all().await {
            tracing::warn!(error = %e, "could not release leases; they expire by themselves");
        }
        tracing::info!(processor = %self.spec.name, "{} runner stopped", self.spec.role);
    }

    pub(super) fn is_dirty(&self) -> bool {
        self.held() > 0
            || self
                .shards
                .values()
                .any(|s| !s.acks.is_empty() || !s.stale.is_empty())
    }

    /// Takes a reader's batch: entries at or below the checkpoint are acked
    /// as they are, entries already dead-lettered are acked without being
    /// applied, the rest go to the handler (or, refused, to the dead letters).
    pub(super) fn on_batch(&mut self, batch: Batch) {
        let Some(st) = self.shards.get_mut(&batch.shard) else {
            return;
        };
        if st.generation != batch.generation || st.leaving.is_some() {
            return; // from a reader we already stopped
        }
        let entries = match batch.outcome {
            ReadOutcome::LeaseLost => {
                self.lose_shard(&batch.shard);
                return;
            }
            ReadOutcome::Entries(e) => e,
        };
        let limit = self.isolation.chunk();
        // Without a checkpoint nothing is filtered: a group rewound by an
        // operator (`XGROUP SETID`) delivers everything again, as asked.
        let fenced = self.spec.fence == Fence::Checkpoint;
        let origin = Origin {
            shard: &batch.shard,
            stream: &st.stream,
        };
        let mut entries = entries.into_iter();
        while let Some(e) = entries.next() {
            if fenced && e.id <= st.checkpoint {
                st.stale.push(e.id); // effect already committed: ack without applying
                continue;
            }
            if fenced && e.id <= st.seen {
                continue; // already held (cannot happen with one reader)
            }
            if !self.lettered.is_empty() && self.lettered.contains(&(st.stream.clone(), e.id)) {
                // Already in the dead-letter stream (re-read after a refused
                // or moved commit): acked with the next commit, never applied
                // again, so never dead-lettered twice.
                st.seen = st.seen.max(e.id);
                st.acks.push(e.id);
                continue;
            }
            if limit.is_some_and(|n| self.applied >= n) {
                // isolating: the rest waits for the next commit
                self.carry = Some(Batch {
                    shard: batch.shard.clone(),
                    generation: batch.generation,
                    outcome: ReadOutcome::Entries(std::iter::once(e).chain(entries).collect()),
                });
                break;
            }
            st.seen = st.seen.max(e.id);
            st.acks.push(e.id);
            let taken = match self.force_dead.take() {
                Some(reason) => Err(reason),
                None => self.h.apply(&origin, &e),
            };
            match taken {
                Ok(()) => {
                    st.applied += 1;
                    self.applied += 1;
                    self.last_applied = Some((st.stream.clone(), e.id));
                }
                Err(reason) => {
                    tracing::warn!(stream = %st.stream, id = %e.id, %reason, "moving entry to the dead-letter stream");
                    self.letters.push(Letter {
                        stream: st.stream.clone(),
                        id: e.id,
                        reason,
                        data: e.data,
                    });
                }
            }
        }
        if self.oldest.is_none() && self.is_dirty() {
            self.oldest = Some(Instant::now());
        }
    }

    pub(super) async fn publish_stats(&mut self) {
        self.stats.shards = self.shards.keys().map(Shard::label).collect();
        self.gauges
            .update(self.stats.stalled_since.is_some(), self.shards.len());
        self.stats.publish(&self.ctx, &self.spec.name).await;
    }
}
