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

use super::spill::Spill;
use super::{CollectorConfig, Counters, Record};
use crate::event::{SchemaRegistry, ValidEvent};
use crate::stream::{Keys, Producer, Redis};

/// The `http` schema, compiled in: services embedding the collector need no
/// `schemas/` directory, and their events are validated exactly as at ingest.
const HTTP_SCHEMA: &str = include_str!("../../schemas/http.v1.json");

struct Sender {
    cfg: CollectorConfig,
    registry: SchemaRegistry,
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
    mut rx: mpsc::Receiver<Record>,
    spill: Option<Spill>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    let mut registry = SchemaRegistry::default();
    if let Err(e) = registry.add("http.v1", HTTP_SCHEMA) {
        tracing::error!(error = %e, "collector: the built-in http schema does not load");
        return;
    }
    if let Some(s) = &spill {
        counters
            .spill_backlog_bytes
            .store(s.backlog(), Ordering::Relaxed);
    }
    let mut s = Sender {
        backoff: cfg.backoff_min,
        cfg,
        registry,
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

    fn accept(&mut self, r: Record) {
        // The record's fields are typed; only the free-form strings can break
        // the schema's limits, so they are checked here instead of running
        // the JSON Schema on every event (the tests below keep the two in step).
        let prepared = match check_limits(&r) {
            Ok(()) => self.prepare(&r).ok_or_else(|| "no http kind".to_string()),
            Err(reason) => Err(reason),
        };
        match prepared {
            Ok(ev) => {
                self.memory.push_back(ev);
                self.counters.in_memory.fetch_add(1, Ordering::Relaxed);
            }
            Err(reason) => {
                self.counters
                    .dropped_invalid
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(endpoint = %r.endpoint, %reason, "collector: event dropped, it would fail the http schema");
            }
        }
        if self.memory.len() > self.cfg.memory_max_events {
            self.spill_oldest(self.memory.len() - self.cfg.memory_max_events);
        }
    }

    /// The stream entry of a record: serialized straight from the typed
    /// record (no intermediate JSON tree), partitioned like ingest does.
    fn prepare(&self, r: &Record) -> Option<ValidEvent> {
        let data = serde_json::to_string(&HttpEvent::of(&self.cfg.service, r)).ok()?;
        let service = self.cfg.service.as_str();
        let endpoint = &*r.endpoint;
        self.registry.trusted("http", r.ts_ms, data, |f| match f {
            "service" => Some(service),
            "endpoint" => Some(endpoint),
            _ => None,
        })
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
            let mut events = Vec::with_capacity(lines.len());
            for l in &lines {
                match serde_json::from_str(l)
                    .map_err(|_| ())
                    .and_then(|v| self.registry.validate(0, &v).map_err(|_| ()))
                {
                    Ok(ev) => events.push(ev),
                    Err(()) => {
                        self.counters
                            .dropped_invalid
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if let Err(e) = producer.append(&self.registry, &events).await {
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
            match producer.append(&self.registry, &batch[..n]).await {
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

/// The limits of `schemas/http.v1.json` that typed fields do not already
/// guarantee (`service` is checked once, at start).
fn check_limits(r: &Record) -> Result<(), String> {
    let ep = r.endpoint.chars().count();
    if ep == 0 || ep > 255 {
        return Err(format!("endpoint has {ep} characters (1 to 255 allowed)"));
    }
    let m = r.method.as_str();
    if m.len() > 16 || !m.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(format!("method {m:?} is not 1 to 16 upper-case letters"));
    }
    if r.user_id.as_ref().is_some_and(|u| u.chars().count() > 128) {
        return Err("user_id over 128 characters".into());
    }
    Ok(())
}

/// The event as the ingest API would receive it (field names of
/// `schemas/http.v1.json`).
#[derive(serde::Serialize)]
struct HttpEvent<'a> {
    kind: &'static str,
    ts: i64,
    service: &'a str,
    endpoint: &'a str,
    method: &'a str,
    status: u16,
    req_bytes: u64,
    resp_bytes: u64,
    req_header_bytes: u64,
    resp_header_bytes: u64,
    duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
}

impl<'a> HttpEvent<'a> {
    fn of(service: &'a str, r: &'a Record) -> Self {
        Self {
            kind: "http",
            ts: r.ts_ms,
            service,
            endpoint: &r.endpoint,
            method: r.method.as_str(),
            status: r.status,
            req_bytes: r.req_bytes,
            resp_bytes: r.resp_bytes,
            req_header_bytes: r.req_header_bytes,
            resp_header_bytes: r.resp_header_bytes,
            duration_ms: (r.duration_ms * 1000.0).round() / 1000.0,
            user_id: r.user_id.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(endpoint: &str, method: &str, user: Option<&str>) -> Record {
        Record {
            ts_ms: 1_772_359_200_123,
            endpoint: std::sync::Arc::from(endpoint),
            method: method.parse().expect("method"),
            status: 404,
            req_bytes: 0,
            resp_bytes: 1 << 33,
            req_header_bytes: 120,
            resp_header_bytes: 99,
            duration_ms: 0.0004,
            user_id: user.map(str::to_string),
        }
    }

    fn full_registry() -> SchemaRegistry {
        let mut r = SchemaRegistry::default();
        r.add("http.v1", HTTP_SCHEMA).expect("schema");
        r
    }

    /// What the sender makes of a record.
    fn prepared(r: &Record) -> Option<ValidEvent> {
        let s = Sender {
            cfg: CollectorConfig::new("svc"),
            registry: full_registry(),
            producer: None,
            spill: None,
            memory: VecDeque::new(),
            counters: Arc::default(),
            backoff: Duration::ZERO,
            retry_at: None,
        };
        s.prepare(r)
    }

    /// Whatever `check_limits` lets through passes the full JSON Schema, and
    /// what it refuses the schema refuses too.
    #[test]
    fn limits_agree_with_the_schema() {
        let mut full = SchemaRegistry::default();
        full.add("http.v1", HTTP_SCHEMA).expect("schema");
        let long = "e".repeat(256);
        let cases = [
            (record("/api/x/{id}", "GET", Some("u1")), true),
            (record("/", "PATCH", None), true),
            (
                record(&"é".repeat(255), "DELETE", Some(&"u".repeat(128))),
                true,
            ),
            (record(&long, "GET", None), false),
            (record("", "GET", None), false),
            (record("/a", "purge", None), false),
            (record("/a", "GET", Some(&"u".repeat(129))), false),
        ];
        for (r, ok) in cases {
            let json = serde_json::to_value(HttpEvent::of("svc", &r)).expect("json");
            assert_eq!(check_limits(&r).is_ok(), ok, "{json}");
            assert_eq!(full.validate(0, &json).is_ok(), ok, "{json}");
            if ok {
                let fast = prepared(&r).expect("prepared");
                let slow = full.validate(0, &json).expect("valid");
                assert_eq!(fast.partition, slow.partition, "same shard as ingest");
                assert_eq!(
                    (fast.kind, fast.version, fast.ts_ms),
                    (slow.kind, slow.version, slow.ts_ms)
                );
                let a: serde_json::Value = serde_json::from_str(&fast.data).expect("json");
                let b: serde_json::Value = serde_json::from_str(&slow.data).expect("json");
                assert_eq!(a, b);
            }
        }
    }
}
