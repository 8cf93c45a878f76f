//! The collector's background task: batches records, writes them through
//! the same [`Producer`] as the ingest API (same streams, same entry
//! fields, same partitioning), and rides out Redis outages with memory,
//! then disk.
//!
//! Order is kept: while the spill file has a backlog, new events go behind it
//! (into memory, then the file), and the backlog is replayed first.
//!
//! **Exact retries.** Each batch gets an id when it is formed
//! ([`BatchIds`]: random per process, then a sequence number) and keeps it
//! and its events through every retry and through the spill file. It is
//! written with [`Producer::submit`] under that id as idempotency key: one
//! script per transaction that appends only if the id's record is absent
//! and stores the record with the entries (one record per batch on one
//! server; on a Redis Cluster one per shard, in its slot, written with
//! that shard's entries). A retry after a timeout, a lost connection or a
//! cluster write that failed on some shards therefore adds only what is
//! missing, as long as it comes within `idempotency_window`.
//!
//! The record's fingerprint is the same for every batch: an id names one
//! batch, and what is sent again under it is that batch or, after the
//! spill file's bound cut its tail, the first part of it. Since a shard's
//! record means "every event this batch has for this shard is stored", a
//! part sent again is as exact as the whole.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use flowmeter_core::event::ValidEvent;
use flowmeter_core::stream::{Idempotency, Keys, Producer, Redis, SubmitError};

use crate::event::{HttpKind, HttpRecord};
use crate::spill::Spill;
use crate::{CollectorConfig, Counters};

/// The fingerprint of every batch's record (see the module doc).
const FINGERPRINT: &str = "collector-batch";

/// Ids of batches: `fmc-{random}-{n}`, unique across processes (64 random
/// bits each, from the standard library's hasher seeding) and within one.
struct BatchIds {
    process: u64,
    next: u64,
}

impl BatchIds {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Self {
            process: std::collections::hash_map::RandomState::new()
                .hash_one((nanos, std::process::id())),
            next: 0,
        }
    }

    fn next(&mut self) -> String {
        self.next += 1;
        format!("fmc-{:016x}-{}", self.process, self.next)
    }
}

/// Events sent (and retried) together under one id.
struct Batch {
    id: String,
    events: Vec<ValidEvent>,
    /// Handed to the producer at least once: no event joins it any more.
    tried: bool,
}

struct Sender {
    cfg: CollectorConfig,
    producer: Option<Producer>,
    spill: Option<Spill>,
    /// Batches of validated events not yet acknowledged, oldest first.
    memory: VecDeque<Batch>,
    /// Events in `memory`.
    held: usize,
    ids: BatchIds,
    counters: Arc<Counters>,
    backoff: Duration,
    retry_at: Option<Instant>,
}

pub(crate) async fn run(
    cfg: CollectorConfig,
    mut rx: mpsc::Receiver<HttpRecord>,
    spill: Option<Spill>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    if let Some(s) = &spill {
        counters
            .spill_backlog_bytes
            .store(s.backlog(), Ordering::Relaxed);
    }
    let mut s = Sender {
        backoff: cfg.backoff_min,
        cfg,
        producer: None,
        spill,
        memory: VecDeque::new(),
        held: 0,
        ids: BatchIds::new(),
        counters,
        retry_at: None,
    };
    let mut tick = tokio::time::interval(s.cfg.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            r = rx.recv() => match r {
                Some(r) => {
                    s.accept(r);
                    // take what is already queued without waiting
                    while s.held < s.cfg.max_pipeline {
                        match rx.try_recv() {
                            Ok(r) => s.accept(r),
                            Err(_) => break,
                        }
                    }
                    if s.held >= s.cfg.batch_size {
                        s.flush().await;
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                s.flush().await;
            }
        }
    }
    // Shutdown: take what is queued, try to send it for a while, spill the rest.
    rx.close();
    while let Some(r) = rx.recv().await {
        s.accept(r);
    }
    let deadline = Instant::now() + s.cfg.shutdown_timeout;
    while (s.held > 0 || s.backlog() > 0) && Instant::now() < deadline {
        s.retry_at = None;
        if !s.flush().await {
            tokio::time::sleep(s.backoff.min(deadline - Instant::now())).await;
        }
    }
    s.spill_all();
    if let Some(sp) = &s.spill {
        if let Err(e) = sp.sync() {
            tracing::warn!(error = %e, "collector: cannot sync the spill file");
        }
    }
}

impl Sender {
    fn backlog(&self) -> u64 {
        self.spill.as_ref().map_or(0, Spill::backlog)
    }

    /// Takes a record: its event (serialized straight from the typed record,
    /// partitioned like ingest does; see `event`) goes behind the others,
    /// into the last batch unless that one was tried or is full.
    fn accept(&mut self, r: HttpRecord) {
        match r.to_event(&self.cfg.service) {
            Ok(ev) => {
                let cap = self.cfg.max_pipeline.max(self.cfg.batch_size);
                match self.memory.back_mut() {
                    Some(b) if !b.tried && b.events.len() < cap => b.events.push(ev),
                    _ => self.memory.push_back(Batch {
                        id: self.ids.next(),
                        events: vec![ev],
                        tried: false,
                    }),
                }
                self.held += 1;
                self.counters.in_memory.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.counters
                    .dropped_invalid
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(endpoint = %r.endpoint, error = %e, "collector: event dropped");
            }
        }
        while self.held > self.cfg.memory_max_events {
            self.spill_oldest();
        }
    }

    /// Moves the oldest batch in memory, whole and with its id, to the
    /// spill file (or drops and counts what does not fit).
    fn spill_oldest(&mut self) {
        let Some(batch) = self.memory.pop_front() else {
            return;
        };
        let n = batch.events.len();
        self.held -= n;
        self.counters
            .in_memory
            .fetch_sub(n as u64, Ordering::Relaxed);
        let written = match &mut self.spill {
            Some(sp) => match sp.append(&batch.id, batch.events.iter().map(|e| e.data.as_str())) {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "collector: cannot spill");
                    0
                }
            },
            None => 0,
        };
        self.counters
            .spilled
            .fetch_add(written as u64, Ordering::Relaxed);
        let dropped = (n - written) as u64;
        if dropped > 0 {
            self.counters
                .dropped_disk_full
                .fetch_add(dropped, Ordering::Relaxed);
        }
        self.counters
            .spill_backlog_bytes
            .store(self.backlog(), Ordering::Relaxed);
    }

    fn spill_all(&mut self) {
        while !self.memory.is_empty() {
            self.spill_oldest();
        }
    }

    async fn producer(&mut self) -> Option<Producer> {
        if self.producer.is_none() {
            let connected = if self.cfg.cluster {
                let mut nodes = vec![self.cfg.redis_url.clone()];
                nodes.extend(self.cfg.cluster_nodes.iter().cloned());
                Redis::connect_cluster(&nodes, self.cfg.redis_timeout, self.cfg.cluster_retry).await
            } else {
                Redis::connect(&self.cfg.redis_url, self.cfg.redis_timeout).await
            };
            match connected {
                Ok(r) => {
                    self.producer = Some(Producer::new(
                        r,
                        Keys::new(self.cfg.prefix.clone(), self.cfg.shards),
                    ))
                }
                Err(e) => {
                    tracing::debug!(error = %e, "collector: Redis unreachable");
                }
            }
        }
        self.producer.clone()
    }

    /// Sends the spill backlog, then memory, batch by batch. Returns false
    /// when a send failed (the next try waits for the backoff).
    async fn flush(&mut self) -> bool {
        if self.held == 0 && self.backlog() == 0 {
            return true;
        }
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        let Some(producer) = self.producer().await else {
            return self.failed();
        };
        // 1. the spill backlog, in order
        while self.backlog() > 0 {
            let Some(sp) = &self.spill else { break };
            let (batch, next) = match sp.peek(self.cfg.max_pipeline) {
                Ok(Some(x)) => x,
                Ok(None) => break, // only a torn line is left
                Err(e) => {
                    tracing::warn!(error = %e, "collector: cannot read the spill file");
                    return self.failed();
                }
            };
            // Each line is checked again as it is read back: the file may be
            // a predecessor's, or damaged.
            let mut events = Vec::with_capacity(batch.lines.len());
            for l in &batch.lines {
                match HttpRecord::from_json(l).and_then(|(svc, r)| r.to_event(&svc)) {
                    Ok(ev) => events.push(ev),
                    Err(e) => {
                        self.counters
                            .dropped_invalid
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(error = %e, "collector: spilled event dropped");
                    }
                }
            }
            // lines without a header (an older collector's) get an id now:
            // exact against retries from here on, not across a crash
            let mut id = batch.id.unwrap_or_else(|| self.ids.next());
            if !self.send(&producer, &mut id, &events).await {
                return self.failed();
            }
            let n = events.len() as u64;
            self.counters.sent.fetch_add(n, Ordering::Relaxed);
            self.counters.replayed.fetch_add(n, Ordering::Relaxed);
            if let Some(sp) = &mut self.spill {
                if let Err(e) = sp.consume(next) {
                    tracing::warn!(error = %e, "collector: cannot advance the spill offset");
                }
            }
            self.counters
                .spill_backlog_bytes
                .store(self.backlog(), Ordering::Relaxed);
        }
        // 2. memory
        while let Some(mut batch) = self.memory.pop_front() {
            batch.tried = true;
            if !self.send(&producer, &mut batch.id, &batch.events).await {
                self.memory.push_front(batch);
                return self.failed();
            }
            let n = batch.events.len();
            self.held -= n;
            self.counters
                .in_memory
                .fetch_sub(n as u64, Ordering::Relaxed);
            self.counters.sent.fetch_add(n as u64, Ordering::Relaxed);
        }
        self.backoff = self.cfg.backoff_min;
        self.retry_at = None;
        true
    }

    /// Writes one batch under its id; false when it must be sent again.
    async fn send(&mut self, producer: &Producer, id: &mut String, events: &[ValidEvent]) -> bool {
        if self.cfg.idempotency_window.is_zero() {
            return match producer.append(&HttpKind, events).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!(error = %e, "collector: XADD failed");
                    false
                }
            };
        }
        let idem = Idempotency {
            key: id,
            fingerprint: FINGERPRINT.into(),
            window: self.cfg.idempotency_window,
        };
        match producer.submit(&HttpKind, events, Some(&idem)).await {
            Ok(_) => true,
            Err(SubmitError::KeyReused) => {
                // Another writer used this id (random 64 bits: not expected);
                // the batch goes again under a new one.
                tracing::warn!(id = %id, "collector: batch id in use elsewhere, taking a new one");
                *id = self.ids.next();
                false
            }
            Err(e) => {
                tracing::debug!(error = %e, "collector: batch not written");
                false
            }
        }
    }

    fn failed(&mut self) -> bool {
        self.counters.send_errors.fetch_add(1, Ordering::Relaxed);
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(self.cfg.backoff_max);
        false
    }
}
