//! The rollup runner.
//!
//! One task per owned shard reads entries (first the shard's pending list,
//! then new entries) under a Lua-fenced XREADGROUP and sends batches over a
//! bounded channel to the aggregator (this task). The aggregator folds events
//! into per-row state and, every `flush_interval_ms` or `max_batch_events`,
//! runs ONE transaction that moves each touched shard's checkpoint by
//! compare-and-set and upserts every touched row; only after COMMIT does it
//! XACK. Entries at or below a shard's checkpoint are acked without being
//! applied. When a checkpoint moved under us (another worker committed the
//! shard), the transaction rolls back, all in-memory state is dropped, and
//! every owned shard restarts from its pending list.
//!
//! No single entry can stop the runner. An entry that cannot be decoded, or
//! whose values do not fit the tables' columns (checked in memory before
//! anything is sent), is dead-lettered with the reason when it is read. If
//! the database still refuses a flush's data (a data error, see
//! [`StoreError::is_data_error`]), the runner drops its state, re-reads the
//! uncommitted entries and flushes them in halves (then quarters …) until
//! the refused flush holds a single entry: that entry is dead-lettered with
//! the database's error and everything else commits. Only infrastructure
//! errors (connection, timeout, lock conflicts) are retried, with backoff.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::agg::{fold_event, CompiledTable, TableRows};
use super::budget::KeyBudget;
use super::config::RollupDef;
use crate::event::{format_rfc3339_ms, parse_ts_value};
use crate::processor::reader::{self, Batch, READ_ERROR_BACKOFF};
use crate::processor::{Processor, ProcessorContext, ProcessorError, RunnerStats};
use crate::stream::{ensure_group, LeaseManager, LeaseOutcome, ReadOutcome, Shard, StreamId};
use crate::telemetry::metrics;

#[path = "flush.rs"]
mod flush;

/// Most backoff between failed flush attempts.
const MAX_FLUSH_BACKOFF: Duration = Duration::from_secs(5);
/// Longest a flush transaction may take before it is abandoned and retried.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Solo attempts after which a suspect entry is dead-lettered: it crashed or
/// stalled the worker while applied and committed by itself this often.
const SOLO_ATTEMPTS: i64 = 3;

/// An entry that cannot be decoded: it goes to the group's dead-letter
/// stream before the flush that acknowledges it commits.
struct Poison {
    stream: String,
    id: StreamId,
    data: Option<String>,
    reason: String,
}

struct ShardState {
    stream: String,
    /// Committed position (all effects up to here are in MySQL).
    checkpoint: StreamId,
    /// Last entry applied to the in-memory state (> checkpoint when dirty).
    seen: StreamId,
    /// Applied entries to ack after the next commit.
    acks: Vec<StreamId>,
    /// Entries at or below the checkpoint, to ack without applying.
    stale: Vec<StreamId>,
    generation: u64,
    reader: Option<(CancellationToken, JoinHandle<()>)>,
    /// Lease gone or surrendered: stop after the next successful flush.
    leaving: Option<Leaving>,
}

#[derive(Clone, Copy, PartialEq)]
enum Leaving {
    Lost,
    Surplus,
}

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
        Box::pin(async move {
            let mut runner = Runner::new(*self);
            runner.run(shutdown).await
        })
    }
}

struct Runner {
    p: RollupProcessor,
    leases: LeaseManager,
    shards: BTreeMap<Shard, ShardState>,
    aggs: Vec<TableRows>,
    pending_events: usize,
    tx: mpsc::Sender<Batch>,
    rx: mpsc::Receiver<Batch>,
    stats: RunnerStats,
    /// XADD-to-commit latency of every applied event (ms).
    latency: crate::sketch::DdSketch,
    /// Undecodable entries of this flush, for the dead-letter stream.
    poison: Vec<Poison>,
    retry_at: Option<Instant>,
    backoff: Duration,
    last_flush: Instant,
    /// A suspect entry waiting to be applied and committed by itself.
    suspect: Option<Batch>,
    /// Dead-letter reason forced on the next batch (a suspect past its solo attempts).
    force_dead: Option<String>,
    /// Each table's cardinality budget.
    budgets: Vec<KeyBudget>,
    /// Entries per flush while narrowing down a flush the database refused
    /// (halved on each refusal, doubled on each commit); `None`: normal.
    isolate: Option<usize>,
    /// The rest of a batch held back because `isolate` was reached.
    carry: Option<Batch>,
    /// The last entry applied since the last commit (stream, id): the one
    /// to blame when a flush holding one entry is refused.
    last_applied: Option<(String, StreamId)>,
    /// Entries in the dead-letter stream whose acknowledgement is not
    /// committed yet: when re-read (after a refused or moved flush) they are
    /// acked without being applied, so none is dead-lettered twice.
    lettered: HashSet<(String, StreamId)>,
}

impl Runner {
    fn new(p: RollupProcessor) -> Self {
        let ctx = &p.ctx;
        let all: Vec<Shard> = p
            .def
            .kinds
            .iter()
            .flat_map(|k| ctx.keys.shards_of(k))
            .collect();
        let leases = LeaseManager::new(
            ctx.redis.clone(),
            ctx.keys.clone(),
            p.def.group.clone(),
            ctx.worker_id.clone(),
            ctx.settings.lease_ms,
            all,
        );
        let (tx, rx) = mpsc::channel(ctx.settings.read_queue_batches);
        let aggs = p.tables.iter().map(|_| HashMap::new()).collect();
        let budgets = p
            .tables
            .iter()
            .map(|t| KeyBudget::new(p.def.key_budget(&t.def, ctx.settings.max_new_keys_per_hour)))
            .collect();
        let stats = RunnerStats {
            worker: ctx.worker_id.clone(),
            ..Default::default()
        };
        Self {
            p,
            leases,
            shards: BTreeMap::new(),
            aggs,
            pending_events: 0,
            tx,
            rx,
            stats,
            latency: crate::sketch::DdSketch::new(),
            poison: Vec::new(),
            retry_at: None,
            backoff: Duration::from_millis(100),
            last_flush: Instant::now(),
            suspect: None,
            force_dead: None,
            budgets,
            isolate: None,
            carry: None,
            last_applied: None,
            lettered: HashSet::new(),
        }
    }

    /// Events held in memory before a flush: `max_batch_events`, or the
    /// isolation chunk.
    fn batch_limit(&self) -> usize {
        self.isolate
            .unwrap_or(self.p.ctx.settings.max_batch_events)
            .max(1)
    }

    /// Takes a batch from a reader (or the carried rest of one).
    async fn take_batch(&mut self, batch: Batch) {
        if batch.is_suspect(self.p.ctx.settings.max_deliveries) {
            self.suspect = Some(batch);
            return;
        }
        self.on_batch(batch);
        if self.pending_events >= self.batch_limit() {
            self.flush().await;
        }
    }

    async fn run(&mut self, shutdown: CancellationToken) -> Result<(), ProcessorError> {
        let s = &self.p.ctx.settings;
        let mut lease_tick =
            tokio::time::interval(Duration::from_millis((s.lease_ms / 3).max(100)));
        lease_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flush_tick =
            tokio::time::interval(Duration::from_millis(s.flush_interval_ms.max(10)));
        flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(processor = %self.p.def.name, group = %self.p.def.group, worker = %self.p.ctx.worker_id, "rollup runner started");
        loop {
            if self.suspect.is_some() && self.retry_at.is_none_or(|t| Instant::now() >= t) {
                self.run_suspect().await;
            }
            let accepting = self.retry_at.is_none()
                && self.pending_events < self.batch_limit()
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
                    if self.retry_at.is_none_or(|t| Instant::now() >= t) {
                        self.flush().await;
                    }
                }
                Some(batch) = self.rx.recv(), if accepting => self.take_batch(batch).await,
            }
        }
        // Graceful stop: stop reading, flush what we hold, ack, hand shards back.
        self.stop_readers().await;
        // Apply only what the current isolation chunk allows: the rest stays
        // pending and is read again by the next owner.
        if let Some(batch) = self.carry.take() {
            self.on_batch(batch);
        }
        while self.carry.is_none() && self.pending_events < self.batch_limit() {
            let Ok(batch) = self.rx.try_recv() else { break };
            self.on_batch(batch);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.is_dirty() && Instant::now() < deadline {
            if self.flush().await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if let Err(e) = self.leases.release_all().await {
            tracing::warn!(error = %e, "could not release leases; they expire by themselves");
        }
        tracing::info!(processor = %self.p.def.name, "rollup runner stopped");
        Ok(())
    }

    fn is_dirty(&self) -> bool {
        self.pending_events > 0
            || self
                .shards
                .values()
                .any(|s| !s.acks.is_empty() || !s.stale.is_empty())
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
                    self.mark_leaving(&shard, Leaving::Lost).await;
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

    /// Applies and commits a suspect entry by itself, after committing what
    /// came before it. Each solo attempt is counted in Redis first; past
    /// [`SOLO_ATTEMPTS`] (the worker died or stalled during each) the entry
    /// is dead-lettered instead. Entries that merely shared crash-looping
    /// flushes with others commit here and are never dead-lettered.
    async fn run_suspect(&mut self) {
        if !self.flush().await {
            return; // held state first; retried after the backoff
        }
        let Some(batch) = self.suspect.take() else {
            return;
        };
        let (stream, id, deliveries) = match &batch.outcome {
            ReadOutcome::Entries(e) if e.len() == 1 => (
                self.p.ctx.keys.stream(&batch.shard),
                e[0].id,
                e[0].deliveries,
            ),
            _ => return self.on_batch(batch),
        };
        let ctx = &self.p.ctx;
        let key = ctx.keys.suspects(&self.p.def.group);
        let field = format!("{stream}/{id}");
        let mut conn = ctx.redis.conn.clone();
        let attempts: Result<i64, _> = ctx
            .redis
            .run(
                redis::cmd("HINCRBY")
                    .arg(&key)
                    .arg(&field)
                    .arg(1)
                    .query_async(&mut conn),
            )
            .await;
        let attempts = match attempts {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot count a suspect entry's attempts; retrying");
                self.suspect = Some(batch);
                self.retry_at = Some(Instant::now() + READ_ERROR_BACKOFF);
                return;
            }
        };
        if attempts > SOLO_ATTEMPTS {
            self.force_dead = Some(format!(
                "delivered {deliveries} times without its effect being committed, and the worker died or stalled in each of {SOLO_ATTEMPTS} attempts to apply it alone (rollup.max_deliveries = {})",
                ctx.settings.max_deliveries
            ));
        } else {
            tracing::info!(%stream, %id, deliveries, attempt = attempts, "applying a repeatedly delivered entry by itself");
        }
        self.on_batch(batch);
        self.force_dead = None;
        let mut done = self.flush().await;
        if !done && self.pending_events == 0 && self.retry_at.is_none() {
            // refused alone: it became a dead letter, which this commits
            done = self.flush().await;
        }
        if done {
            let mut conn = self.p.ctx.redis.conn.clone();
            let _: Result<(), _> = self
                .p
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

    /// The lease of a shard we were leaving (lost while a flush could not
    /// commit, e.g. MySQL down) is ours again: keep its uncommitted state and
    /// read on from it. Starting it afresh would re-apply entries the held
    /// state already counts. If another worker committed the shard meanwhile,
    /// the next flush's checkpoint compare-and-set fails and all held state is
    /// dropped and re-read.
    fn resume_shard(&mut self, shard: &Shard) {
        let Some(st) = self.shards.get_mut(shard) else {
            return;
        };
        st.leaving = None;
        st.generation += 1;
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

    async fn mark_leaving(&mut self, shard: &Shard, how: Leaving) {
        if let Some(st) = self.shards.get_mut(shard) {
            if st.leaving != Some(Leaving::Lost) {
                st.leaving = Some(how);
            }
            if let Some((tok, h)) = st.reader.take() {
                tok.cancel();
                let _ = h.await;
            }
        }
    }

    /// Loads the checkpoint, makes sure the group exists, starts reading the pending list.
    async fn start_shard(&mut self, shard: Shard) -> Result<(), ProcessorError> {
        let ctx = &self.p.ctx;
        let stream = ctx.keys.stream(&shard);
        let start = self
            .p
            .def
            .start()
            .map(|s| s.group_id())
            .unwrap_or_else(|_| "0".into()); // checked when the definition loaded
        ensure_group(&ctx.redis, &stream, &self.p.def.group, &start).await?;
        let checkpoint = ctx
            .store
            .load_checkpoint(&self.p.def.group, &stream)
            .await?;
        let generation = self.shards.get(&shard).map_or(0, |s| s.generation + 1);
        let mut st = ShardState {
            stream,
            checkpoint,
            seen: checkpoint,
            acks: Vec::new(),
            stale: Vec::new(),
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
            &self.p.ctx,
            &self.p.def.group,
            shard,
            &st.stream,
            st.generation,
            self.tx.clone(),
        )
    }

    fn on_batch(&mut self, batch: Batch) {
        let Some(st) = self.shards.get_mut(&batch.shard) else {
            return;
        };
        if st.generation != batch.generation || st.leaving.is_some() {
            return; // from a reader we already stopped
        }
        let entries = match batch.outcome {
            ReadOutcome::LeaseLost => {
                st.leaving = Some(Leaving::Lost);
                st.reader = None;
                return;
            }
            ReadOutcome::Entries(e) => e,
        };
        let limit = self.isolate;
        let max_future_ms = self.p.ctx.settings.max_future_secs.saturating_mul(1000);
        let mut entries = entries.into_iter();
        while let Some(e) = entries.next() {
            if e.id <= st.checkpoint {
                st.stale.push(e.id); // effect already committed: ack without applying
                continue;
            }
            if e.id <= st.seen {
                continue; // already in this flush's state (cannot happen with one reader)
            }
            if self.lettered.contains(&(st.stream.clone(), e.id)) {
                // Already in the dead-letter stream (re-read after a refused
                // flush): acked with the next commit, never applied again —
                // applied, the database would refuse it and it would be
                // dead-lettered a second time.
                st.seen = e.id;
                st.acks.push(e.id);
                continue;
            }
            if limit.is_some_and(|n| self.pending_events >= n) {
                // isolating: the rest waits for the next flush
                self.carry = Some(Batch {
                    shard: batch.shard,
                    generation: batch.generation,
                    outcome: ReadOutcome::Entries(std::iter::once(e).chain(entries).collect()),
                });
                return;
            }
            st.seen = e.id;
            st.acks.push(e.id);
            let decoded = match self.force_dead.take() {
                Some(reason) => Err(reason),
                None => decode(e.data.as_deref())
                    .and_then(|(ev, ts)| check_future(e.id, ts, max_future_ms).map(|()| (ev, ts))),
            };
            let folded =
                decoded.and_then(|(ev, ts)| fold_event(&self.p.tables, &mut self.aggs, &ev, ts));
            match folded {
                Ok(_) => {
                    self.pending_events += 1;
                    self.last_applied = Some((st.stream.clone(), e.id));
                }
                Err(reason) => {
                    self.stats.invalid_total += 1;
                    metrics::EVENTS_INVALID.inc();
                    tracing::warn!(stream = %st.stream, id = %e.id, %reason, "moving entry to the dead-letter stream");
                    self.poison.push(Poison {
                        stream: st.stream.clone(),
                        id: e.id,
                        data: e.data,
                        reason,
                    });
                }
            }
        }
    }

    /// Removes shards that were leaving once their work is committed.
    async fn finish_leaving(&mut self) {
        let leaving: Vec<(Shard, Leaving)> = self
            .shards
            .iter()
            .filter_map(|(k, s)| s.leaving.map(|l| (k.clone(), l)))
            .collect();
        for (shard, how) in leaving {
            if let Some(mut st) = self.shards.remove(&shard) {
                if let Some((tok, h)) = st.reader.take() {
                    tok.cancel();
                    let _ = h.await;
                }
            }
            if how == Leaving::Surplus {
                if let Err(e) = self.leases.release(&shard).await {
                    tracing::warn!(shard = %shard, error = %e, "release failed; lease will expire");
                }
            }
        }
    }

    /// Drops all uncommitted state and restarts every shard from its pending list.
    async fn reset_all(&mut self) {
        for a in &mut self.aggs {
            a.clear();
        }
        self.retry_at = None;
        self.poison.clear();
        self.pending_events = 0;
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

    async fn stop_readers(&mut self) {
        for st in self.shards.values_mut() {
            if let Some((tok, h)) = st.reader.take() {
                tok.cancel();
                let _ = h.await;
            }
        }
    }

    async fn publish_stats(&mut self) {
        self.stats.shards = self.shards.keys().map(Shard::label).collect();
        crate::processor::publish_stats(&self.p.ctx, &self.p.def.name, &self.stats).await;
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

/// Decodes an entry's `data` into the event object and its time.
pub fn decode(data: Option<&str>) -> Result<(Map<String, Value>, i64), String> {
    let data = data.ok_or("entry has no data field (deleted or foreign entry)")?;
    let ev: Map<String, Value> =
        serde_json::from_str(data).map_err(|e| format!("data is not a JSON object: {e}"))?;
    let ts = ev
        .get("ts")
        .ok_or("event has no ts")
        .and_then(|v| parse_ts_value(v).map_err(|_| "bad ts"))?;
    Ok((ev, ts))
}
