//! The runner every sink shares.
//!
//! One reader task per owned shard (see [`crate::processor::reader`]) sends
//! batches over a bounded channel. The runner buffers entries until
//! `batch.max_rows` or `batch.max_wait_ms`, then calls [`Sink::deliver`]
//! (leases kept alive meanwhile, bounded by `batch.timeout_ms`). Only after
//! it returns does it dead-letter the rejected entries and XACK the batch.
//! A failed delivery keeps the batch and retries it after a backoff
//! (`retry_initial_ms` doubling to `retry_max_ms`); while it waits, nothing
//! more is read, so the readers block on the full channel and the lag grows
//! in Redis — bounded memory, nothing lost.
//!
//! Entries redelivered more than `rollup.max_deliveries` times come alone
//! (the worker died while they were in flight); past three more solo
//! deliveries they are dead-lettered instead of delivered.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{BatchConfig, Sink, SinkEntry, SinkHead, Verdict};
use crate::dlq::NewLetter;
use crate::processor::reader::{self, Batch};
use crate::processor::{Processor, ProcessorContext, ProcessorError, RunnerStats};
use crate::stream::{ack, ensure_group, LeaseManager, LeaseOutcome, ReadOutcome, Shard, StreamId};
use crate::telemetry::metrics;

/// Solo deliveries after which a suspect entry is dead-lettered.
const SOLO_ATTEMPTS: u64 = 3;

/// A sink processor, ready to run.
pub struct SinkProcessor<S: Sink> {
    pub name: String,
    pub group: String,
    pub kinds: Vec<String>,
    /// Where a new group starts (`XGROUP CREATE` id).
    pub start: String,
    pub batch: BatchConfig,
    pub ctx: ProcessorContext,
    pub sink: S,
    /// Streams read besides the kinds' shards, each as the single shard of
    /// a pseudo-kind (e.g. `alerts` → `{prefix}:alerts` for the Kafka bridge).
    pub extra_streams: Vec<(Shard, String)>,
}

impl<S: Sink> SinkProcessor<S> {
    /// The processor of a definition (`head`) handing entries to `sink`;
    /// `extra_streams` as in [`SinkProcessor::extra_streams`].
    pub fn new(
        head: SinkHead<'_>,
        ctx: ProcessorContext,
        sink: S,
        extra_streams: Vec<(Shard, String)>,
    ) -> Result<Self, ProcessorError> {
        let start = head
            .group_start()
            .map_err(|reason| ProcessorError::Definition {
                file: format!("processor {}", head.name),
                reason,
            })?;
        Ok(Self {
            name: head.name.to_string(),
            group: head.group.to_string(),
            kinds: head.kinds.to_vec(),
            start,
            batch: head.batch.clone(),
            ctx,
            sink,
            extra_streams,
        })
    }
}

impl<S: Sink> Processor for SinkProcessor<S> {
    fn name(&self) -> &str {
        &self.name
    }

    fn run(
        self: Box<Self>,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, Result<(), ProcessorError>> {
        Box::pin(async move { Runner::new(*self).run(shutdown).await })
    }
}

struct ShardState {
    stream: String,
    generation: u64,
    reader: Option<(CancellationToken, JoinHandle<()>)>,
    /// Set when the shard goes to another worker after the next delivery.
    surplus: bool,
}

struct Runner<S: Sink> {
    p: SinkProcessor<S>,
    leases: LeaseManager,
    shards: BTreeMap<Shard, ShardState>,
    tx: mpsc::Sender<Batch>,
    rx: mpsc::Receiver<Batch>,
    buffer: Vec<SinkEntry>,
    /// Entries to dead-letter with the next delivery: (entry, reason).
    letters: Vec<(SinkEntry, String)>,
    /// When the oldest buffered entry arrived.
    oldest: Option<Instant>,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Figures for `flowmeter status` (a "flush" here is a delivery).
    stats: RunnerStats,
    /// XADD-to-acknowledgement latency of every delivered entry (ms).
    latency: crate::sketch::DdSketch,
    last_delivery: Instant,
}

impl<S: Sink> Runner<S> {
    fn new(p: SinkProcessor<S>) -> Self {
        let ctx = &p.ctx;
        let all: Vec<Shard> = p
            .kinds
            .iter()
            .flat_map(|k| ctx.keys.shards_of(k))
            .chain(p.extra_streams.iter().map(|(s, _)| s.clone()))
            .collect();
        let leases = LeaseManager::new(
            ctx.redis.clone(),
            ctx.keys.clone(),
            p.group.clone(),
            ctx.worker_id.clone(),
            ctx.settings.lease_ms,
            all,
        );
        let (tx, rx) = mpsc::channel(ctx.settings.read_queue_batches.max(1));
        let backoff = Duration::from_millis(p.batch.retry_initial_ms);
        let stats = RunnerStats {
            worker: ctx.worker_id.clone(),
            ..Default::default()
        };
        Self {
            p,
            leases,
            shards: BTreeMap::new(),
            tx,
            rx,
            buffer: Vec::new(),
            letters: Vec::new(),
            oldest: None,
            retry_at: None,
            backoff,
            stats,
            latency: crate::sketch::DdSketch::new(),
            last_delivery: Instant::now(),
        }
    }

    async fn publish_stats(&mut self) {
        self.stats.shards = self.shards.keys().map(Shard::label).collect();
        crate::processor::publish_stats(&self.p.ctx, &self.p.name, &self.stats).await;
    }

    async fn run(&mut self, shutdown: CancellationToken) -> Result<(), ProcessorError> {
        let s = &self.p.ctx.settings;
        let mut lease_tick =
            tokio::time::interval(Duration::from_millis((s.lease_ms / 3).max(100)));
        lease_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let wait = Duration::from_millis(self.p.batch.max_wait_ms.max(1));
        let mut flush_tick = tokio::time::interval((wait / 4).max(Duration::from_millis(10)));
        flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(processor = %self.p.name, group = %self.p.group, worker = %self.p.ctx.worker_id, "sink runner started");
        loop {
            let accepting = self.retry_at.is_none() && self.held() < self.p.batch.max_rows;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = lease_tick.tick() => self.on_lease_tick().await,
                _ = flush_tick.tick() => {
                    let due = self.oldest.is_some_and(|t| t.elapsed() >= wait);
                    if due || self.retry_at.is_some_and(|t| Instant::now() >= t) {
                        self.deliver().await;
                    }
                }
                Some(batch) = self.rx.recv(), if accepting => {
                    self.on_batch(batch);
                    if self.held() >= self.p.batch.max_rows {
                        self.deliver().await;
                    }
                }
            }
        }
        // Graceful stop: stop reading, deliver what we hold, hand shards back.
        for st in self.shards.values_mut() {
            if let Some((tok, h)) = st.reader.take() {
                tok.cancel();
                let _ = h.await;
            }
        }
        while let Ok(batch) = self.rx.try_recv() {
            self.on_batch(batch);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.held() > 0 && Instant::now() < deadline {
            self.retry_at = None;
            if self.deliver().await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if let Err(e) = self.leases.release_all().await {
            tracing::warn!(error = %e, "could not release leases; they expire by themselves");
        }
        tracing::info!(processor = %self.p.name, "sink runner stopped");
        Ok(())
    }

    fn held(&self) -> usize {
        self.buffer.len() + self.letters.len()
    }

    async fn on_lease_tick(&mut self) {
        let outcomes = match self.leases.tick().await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "lease tick failed; retrying");
                return;
            }
        };
        for o in outcomes {
            match o {
                LeaseOutcome::Acquired(shard) => {
                    if let Err(e) = self.start_shard(shard.clone()).await {
                        tracing::warn!(shard = %shard, error = %e, "cannot start shard; releasing it");
                        let _ = self.leases.release(&shard).await;
                    }
                }
                LeaseOutcome::Lost(shard) => {
                    // its unacknowledged entries stay pending for the next owner
                    tracing::warn!(shard = %shard, "lease lost");
                    self.drop_shard(&shard).await;
                }
                LeaseOutcome::Surplus(shard) => {
                    if let Some(st) = self.shards.get_mut(&shard) {
                        st.surplus = true;
                    }
                }
            }
        }
        if self.shards.values().any(|s| s.surplus) && self.deliver().await {
            let surplus: Vec<Shard> = self
                .shards
                .iter()
                .filter(|(_, s)| s.surplus)
                .map(|(k, _)| k.clone())
                .collect();
            for shard in surplus {
                tracing::info!(shard = %shard, "handing shard to another worker");
                self.drop_shard(&shard).await;
                let _ = self.leases.release(&shard).await;
            }
        }
        self.publish_stats().await;
    }

    async fn start_shard(&mut self, shard: Shard) -> Result<(), ProcessorError> {
        let ctx = &self.p.ctx;
        let stream = self
            .p
            .extra_streams
            .iter()
            .find(|(s, _)| *s == shard)
            .map_or_else(|| ctx.keys.stream(&shard), |(_, key)| key.clone());
        ensure_group(&ctx.redis, &stream, &self.p.group, &self.p.start).await?;
        let generation = self.shards.get(&shard).map_or(0, |s| s.generation + 1);
        let reader = reader::spawn(
            ctx,
            &self.p.group,
            &shard,
            &stream,
            generation,
            self.tx.clone(),
        );
        tracing::info!(shard = %shard, "shard acquired");
        self.shards.insert(
            shard,
            ShardState {
                stream,
                generation,
                reader: Some(reader),
                surplus: false,
            },
        );
        Ok(())
    }

    /// Stops reading `shard` and forgets its unacknowledged entries (they
    /// stay pending in Redis for whoever owns the shard next).
    async fn drop_shard(&mut self, shard: &Shard) {
        if let Some(mut st) = self.shards.remove(shard) {
            if let Some((tok, h)) = st.reader.take() {
                tok.cancel();
                let _ = h.await;
            }
        }
        self.buffer.retain(|e| &e.shard != shard);
        self.letters.retain(|(e, _)| &e.shard != shard);
        if self.held() == 0 {
            self.oldest = None;
        }
    }

    fn on_batch(&mut self, batch: Batch) {
        let Some(st) = self.shards.get(&batch.shard) else {
            return;
        };
        if st.generation != batch.generation {
            return; // from a reader of an earlier incarnation
        }
        let entries = match batch.outcome {
            ReadOutcome::Entries(e) => e,
            ReadOutcome::LeaseLost => return, // the next lease tick drops the shard
        };
        let max = self.p.ctx.settings.max_deliveries;
        for e in entries {
            let missing = e.data.is_none();
            let entry = SinkEntry {
                stream: st.stream.clone(),
                shard: batch.shard.clone(),
                kind: batch.shard.kind.clone(),
                id: e.id,
                version: e.version,
                data: e.data.unwrap_or_default(),
            };
            if missing {
                self.letters.push((
                    entry,
                    "entry has no data field (deleted while pending, or written by a foreign producer)".into(),
                ));
            } else if max > 0 && e.deliveries > max + SOLO_ATTEMPTS {
                let reason = format!(
                    "delivered {} times without being acknowledged: the worker died or stalled during each delivery (rollup.max_deliveries = {max}, then {SOLO_ATTEMPTS} alone)",
                    e.deliveries
                );
                self.letters.push((entry, reason));
            } else {
                self.buffer.push(entry);
            }
        }
        if self.oldest.is_none() && self.held() > 0 {
            self.oldest = Some(Instant::now());
        }
    }

    /// Delivers the buffer, dead-letters what was rejected, acknowledges all.
    /// Returns whether nothing is held any more.
    async fn deliver(&mut self) -> bool {
        if self.held() == 0 {
            self.oldest = None;
            return true;
        }
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        let t0 = Instant::now();
        let timeout = Duration::from_millis(self.p.batch.timeout_ms);
        let n = self.buffer.len();
        let verdicts: Result<Vec<Verdict>, String> = if n == 0 {
            Ok(Vec::new())
        } else {
            tokio::select! {
                r = tokio::time::timeout(timeout, self.p.sink.deliver(&self.buffer)) => match r {
                    Ok(Ok(v)) if v.len() == n => Ok(v),
                    Ok(Ok(v)) => Err(format!("sink returned {} verdicts for {n} entries", v.len())),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!(
                        "delivery took longer than batch.timeout_ms ({} ms)",
                        timeout.as_millis()
                    )),
                },
                // renews the leases while the delivery runs; never ends by itself
                _ = self.leases.keepalive() => Err("lease keepalive ended".into()),
            }
        };
        let verdicts = match verdicts {
            Ok(v) => v,
            Err(reason) => {
                metrics::SINK_FAILURES.inc();
                self.stats.record_failure(&reason);
                tracing::warn!(processor = %self.p.name, entries = self.buffer.len(), retry_in_ms = self.backoff.as_millis() as u64, %reason, "delivery failed; keeping the batch and retrying");
                self.retry_at = Some(Instant::now() + self.backoff);
                self.backoff =
                    (self.backoff * 2).min(Duration::from_millis(self.p.batch.retry_max_ms));
                return false;
            }
        };
        let rejected: Vec<(&SinkEntry, String)> = self
            .buffer
            .iter()
            .zip(verdicts)
            .filter_map(|(e, v)| match v {
                Verdict::Rejected(reason) => Some((e, reason)),
                Verdict::Delivered => None,
            })
            .collect();
        let ctx = &self.p.ctx;
        let letters: Vec<NewLetter> = self
            .letters
            .iter()
            .map(|(e, reason)| (e, reason))
            .chain(rejected.iter().map(|(e, reason)| (*e, reason)))
            .map(|(e, reason)| NewLetter {
                stream: &e.stream,
                id: e.id,
                error: reason,
                data: Some(&e.data),
            })
            .collect();
        if let Err(e) = crate::dlq::append(
            &ctx.redis,
            &ctx.keys.dlq(&self.p.group),
            &self.p.name,
            &letters,
        )
        .await
        {
            // delivered but not acknowledged: the retry delivers again (at least once)
            tracing::warn!(error = %e, "cannot write dead letters; retrying the batch");
            self.stats
                .record_failure(&format!("cannot write dead letters: {e}"));
            self.retry_at = Some(Instant::now() + self.backoff);
            return false;
        }
        let delivered = self.buffer.len() - rejected.len();
        drop(letters);
        drop(rejected);
        let mut by_stream: BTreeMap<&str, Vec<StreamId>> = BTreeMap::new();
        for e in self
            .buffer
            .iter()
            .chain(self.letters.iter().map(|(e, _)| e))
        {
            by_stream.entry(&e.stream).or_default().push(e.id);
        }
        for (stream, ids) in by_stream {
            match ack(&ctx.redis, stream, &self.p.group, &ids).await {
                Ok(()) => metrics::ENTRIES_ACKED.add(ids.len() as u64),
                // left pending: delivered again after a restart (at least once)
                Err(e) => tracing::warn!(%stream, error = %e, "XACK failed"),
            }
        }
        metrics::SINK_DELIVERED.add(delivered as u64);
        let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
        for e in &self.buffer {
            self.latency.add(now_ms.saturating_sub(e.id.ms) as f64);
        }
        let st = &mut self.stats;
        st.xadd_to_commit_p50_ms = self.latency.quantile(0.5).unwrap_or(0.0);
        st.xadd_to_commit_p99_ms = self.latency.quantile(0.99).unwrap_or(0.0);
        st.xadd_to_commit_max_ms = self.latency.quantile(1.0).unwrap_or(0.0);
        let elapsed = self.last_delivery.elapsed().as_secs_f64().max(0.001);
        self.last_delivery = Instant::now();
        st.last_flush_ms = t0.elapsed().as_millis() as u64;
        st.last_flush_events = self.buffer.len() as u64;
        st.last_flush_rows = delivered as u64;
        st.events_per_sec = self.buffer.len() as f64 / elapsed;
        st.events_total += self.buffer.len() as u64;
        st.invalid_total += self.letters.len() as u64 + (self.buffer.len() - delivered) as u64;
        st.flushes_total += 1;
        st.record_success();
        self.buffer.clear();
        self.letters.clear();
        self.oldest = None;
        self.retry_at = None;
        self.backoff = Duration::from_millis(self.p.batch.retry_initial_ms);
        self.publish_stats().await;
        true
    }
}
