//! The collector's background task: batches records, XADDs them through the
//! same [`Producer`] as the ingest API (same streams, same entry fields, same
//! partitioning), and rides out Redis outages with memory, then disk.
//!
//! Order is kept: while the spill file has a backlog, new events go behind it
//! (into memory, then the file), and the backlog is replayed first.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use flowmeter_core::event::ValidEvent;
use flowmeter_core::stream::{Keys, Producer, Redis};

use crate::event::{HttpKind, HttpRecord};
use crate::spill::Spill;
use crate::{CollectorConfig, Counters};

struct Sender {
    cfg: CollectorConfig,
    producer: Option<Producer>,
    spill: Option<Spill>,
    /// Validated events not yet acknowledged, oldest first.
    memory: VecDeque<ValidEvent>,
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
                    while s.memory.len() < s.cfg.max_pipeline {
                        match rx.try_recv() {
                            Ok(r) => s.accept(r),
                            Err(_) => break,
                        }
                    }
                    if s.memory.len() >= s.cfg.batch_size {
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
    while (!s.memory.is_empty() || s.backlog() > 0) && Instant::now() < deadline {
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
    /// partitioned like ingest does; see `event`) goes behind the others.
    fn accept(&mut self, r: HttpRecord) {
        match r.to_event(&self.cfg.service) {
            Ok(ev) => {
                self.memory.push_back(ev);
                self.counters.in_memory.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.counters
                    .dropped_invalid
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(endpoint = %r.endpoint, error = %e, "collector: event dropped");
            }
        }
        if self.memory.len() > self.cfg.memory_max_events {
            self.spill_oldest(self.memory.len() - self.cfg.memory_max_events);
        }
    }

    /// Moves the `n` oldest in-memory events to the spill file (or drops and
    /// counts them when there is no room).
    fn spill_oldest(&mut self, n: usize) {
        let batch: Vec<ValidEvent> = self.memory.drain(..n.min(self.memory.len())).collect();
        self.counters
            .in_memory
            .fetch_sub(batch.len() as u64, Ordering::Relaxed);
        let written = match &mut self.spill {
            Some(sp) => match sp.append(batch.iter().map(|e| e.data.as_str())) {
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
        let dropped = (batch.len() - written) as u64;
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
        let n = self.memory.len();
        if n > 0 {
            self.spill_oldest(n);
        }
    }

    async fn producer(&mut self) -> Option<Producer> {
        if self.producer.is_none() {
            match Redis::connect(&self.cfg.redis_url, self.cfg.redis_timeout).await {
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

    /// Sends the spill backlog, then memory, in batches. Returns false when a
    /// send failed (the next try waits for the backoff).
    async fn flush(&mut self) -> bool {
        if self.memory.is_empty() && self.backlog() == 0 {
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
            let (lines, next) = match sp.peek(self.cfg.max_pipeline.max(1)) {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "collector: cannot read the spill file");
                    return self.failed();
                }
            };
            // Each line is checked again as it is read back: the file may be
            // a predecessor's, or damaged.
            let mut events = Vec::with_capacity(lines.len());
            for l in &lines {
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
            if let Err(e) = producer.append(&HttpKind, &events).await {
                tracing::debug!(error = %e, "collector: replay failed");
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
            if lines.is_empty() {
                break; // only a torn line is left
            }
        }
        // 2. memory
        while !self.memory.is_empty() {
            let n = self
                .memory
                .len()
                .min(self.cfg.max_pipeline.max(self.cfg.batch_size));
            let batch = self.memory.make_contiguous();
            match producer.append(&HttpKind, &batch[..n]).await {
                Ok(()) => {
                    self.memory.drain(..n);
                    self.counters
                        .in_memory
                        .fetch_sub(n as u64, Ordering::Relaxed);
                    self.counters.sent.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "collector: XADD failed");
                    return self.failed();
                }
            }
        }
        self.backoff = self.cfg.backoff_min;
        self.retry_at = None;
        true
    }

    fn failed(&mut self) -> bool {
        self.counters.send_errors.fetch_add(1, Ordering::Relaxed);
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(self.cfg.backoff_max);
        false
    }
}
