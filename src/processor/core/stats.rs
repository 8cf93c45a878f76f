//! The figures every runner (rollup and sinks) publishes for `flowmeter
//! status` and `GET /v1/status`, including whether it is stalled, and the
//! one place they are updated after a commit.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::processor::ProcessorContext;
use crate::sketch::DdSketch;
use crate::stream::StreamId;
use crate::telemetry::families::{EntryOutcome, ProcessorMetrics};

/// Longest `last_error` published, in characters.
const MAX_ERROR_CHARS: usize = 500;

/// Figures a runner publishes (read back by `status::gather`; fields
/// missing from an older worker's record take their defaults).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RunnerStats {
    pub worker: String,
    pub shards: Vec<String>,
    pub last_flush_at: Option<String>,
    pub last_flush_ms: u64,
    pub last_flush_events: u64,
    pub last_flush_rows: u64,
    pub events_per_sec: f64,
    pub events_total: u64,
    /// Entries dead-lettered (undecodable, rejected by a column or the
    /// database, refused downstream).
    pub invalid_total: u64,
    pub flushes_total: u64,
    pub flush_failures_total: u64,
    /// Time from XADD (the entry id's milliseconds, Redis' clock) to the
    /// commit of the flush that applied the event (this worker's clock),
    /// over every event applied since the worker started.
    pub xadd_to_commit_p50_ms: f64,
    pub xadd_to_commit_p99_ms: f64,
    pub xadd_to_commit_max_ms: f64,
    /// When the current run of failed flushes (deliveries, for sinks)
    /// began, RFC 3339; `None` once one succeeds. While set, the runner
    /// holds its state and reads nothing new: lag grows.
    pub stalled_since: Option<String>,
    /// Failed attempts since the last success.
    pub consecutive_failures: u64,
    /// The latest failure and when it happened (kept after recovery).
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    /// Rollups: dimension keys folded into `__other__` rows by the
    /// cardinality budget, since the worker started.
    pub keys_folded_total: u64,
    /// Rollups: each table's key budget in the current hour, as this
    /// worker last saw it.
    pub key_budgets: Vec<KeyBudgetStatus>,
}

/// One table's cardinality budget in one hour.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KeyBudgetStatus {
    pub table: String,
    /// The wall-clock hour (UTC, RFC 3339) the figures count.
    pub hour: String,
    pub max_new_keys_per_hour: u64,
    pub new_keys: u64,
    pub folded_keys: u64,
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl RunnerStats {
    /// A flush (delivery) failed with `error`: the runner is stalled from
    /// now until one succeeds.
    pub fn record_failure(&mut self, error: &str) {
        let now = now_rfc3339();
        self.flush_failures_total += 1;
        self.consecutive_failures += 1;
        if self.stalled_since.is_none() {
            self.stalled_since = Some(now.clone());
        }
        self.last_error = Some(error.chars().take(MAX_ERROR_CHARS).collect());
        self.last_error_at = Some(now);
    }

    /// A flush (delivery) succeeded: no longer stalled.
    pub fn record_success(&mut self) {
        self.stalled_since = None;
        self.consecutive_failures = 0;
        self.last_flush_at = Some(now_rfc3339());
    }

    /// Publishes the figures of `processor` for `flowmeter status` and
    /// `GET /v1/status`: one field per worker in `{prefix}:stats:{processor}`,
    /// expiring unless refreshed (a stopped worker drops out).
    pub(crate) async fn publish(&self, ctx: &ProcessorContext, processor: &str) {
        let Ok(json) = serde_json::to_string(self) else {
            return;
        };
        let mut conn = ctx.redis.conn.clone();
        let key = ctx.keys.stats(processor);
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(&key)
            .arg(&ctx.worker_id)
            .arg(json)
            .ignore();
        pipe.cmd("PEXPIRE")
            .arg(&key)
            .arg(ctx.settings.lease_ms * 6)
            .ignore();
        if let Err(e) = ctx.redis.run(pipe.query_async::<()>(&mut conn)).await {
            tracing::debug!(error = %e, "cannot publish stats");
        }
    }
}

/// The running figures behind a runner's commit statistics.
pub(crate) struct Throughput {
    /// XADD-to-commit latency of every entry acknowledged by a commit (ms).
    latency: DdSketch,
    last_commit: Instant,
    /// The same figures as `/metrics` histograms and counters.
    metrics: ProcessorMetrics,
}

impl Throughput {
    pub(crate) fn new(metrics: ProcessorMetrics) -> Self {
        Self {
            latency: DdSketch::new(),
            last_commit: Instant::now(),
            metrics,
        }
    }

    /// A commit of `events` applied entries (`rows` rows downstream) that
    /// took `took` and acknowledged `acked`: the ten figures of a commit.
    pub(crate) fn record(
        &mut self,
        stats: &mut RunnerStats,
        acked: &[StreamId],
        took: Duration,
        events: u64,
        rows: u64,
    ) {
        let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
        for id in acked {
            let ms = now_ms.saturating_sub(id.ms) as f64;
            self.latency.add(ms);
            self.metrics.xadd_to_commit(ms / 1000.0);
        }
        self.metrics.flushed(took.as_secs_f64());
        self.metrics.entries(EntryOutcome::Applied, events);
        stats.xadd_to_commit_p50_ms = self.latency.quantile(0.5).unwrap_or(0.0);
        stats.xadd_to_commit_p99_ms = self.latency.quantile(0.99).unwrap_or(0.0);
        stats.xadd_to_commit_max_ms = self.latency.quantile(1.0).unwrap_or(0.0);
        let since_last = self.last_commit.elapsed().as_secs_f64().max(0.001);
        self.last_commit = Instant::now();
        stats.last_flush_ms = took.as_millis() as u64;
        stats.last_flush_events = events;
        stats.last_flush_rows = rows;
        stats.events_per_sec = events as f64 / since_last;
        stats.events_total += events;
        stats.flushes_total += 1;
        stats.record_success();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_sets_its_figures_and_ends_a_stall() {
        let mut s = RunnerStats::default();
        s.record_failure("down");
        let mut t = Throughput::new(ProcessorMetrics::new("stats-test", "g"));
        let now_ms = chrono::Utc::now().timestamp_millis() as u64;
        let acked = [StreamId {
            ms: now_ms - 250,
            seq: 0,
        }];
        t.record(&mut s, &acked, Duration::from_millis(12), 7, 3);
        t.record(&mut s, &[], Duration::from_millis(5), 2, 1);
        assert_eq!(
            (s.events_total, s.flushes_total, s.last_flush_events),
            (9, 2, 2)
        );
        assert_eq!((s.last_flush_rows, s.last_flush_ms), (1, 5));
        assert!(
            s.xadd_to_commit_p50_ms >= 240.0,
            "{}",
            s.xadd_to_commit_p50_ms
        );
        assert!(s.stalled_since.is_none() && s.last_flush_at.is_some());
        assert_eq!(s.consecutive_failures, 0);
    }

    #[test]
    fn a_failure_stalls_until_a_success() {
        let mut s = RunnerStats::default();
        s.record_failure("mysql: gone");
        let since = s.stalled_since.clone();
        assert!(since.is_some());
        s.record_failure(&"x".repeat(2 * MAX_ERROR_CHARS));
        assert_eq!(s.stalled_since, since, "the first failure dates the stall");
        assert_eq!(s.consecutive_failures, 2);
        assert_eq!(s.flush_failures_total, 2);
        assert_eq!(
            s.last_error.as_deref().map(|e| e.chars().count()),
            Some(MAX_ERROR_CHARS)
        );
        s.record_success();
        assert!(s.stalled_since.is_none());
        assert_eq!(s.consecutive_failures, 0);
        assert!(
            s.last_error.is_some(),
            "the last error stays for the record"
        );
    }

    #[test]
    fn records_of_older_workers_still_parse() {
        let s: RunnerStats =
            serde_json::from_str(r#"{"worker":"w","events_total":3}"#).expect("parses");
        assert_eq!(s.events_total, 3);
        assert!(s.stalled_since.is_none());
    }
}
