//! The figures every runner (rollup and sinks) publishes for `flowmeter
//! status` and `GET /v1/status`, including whether it is stalled.

use serde::{Deserialize, Serialize};

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
}

#[cfg(test)]
mod tests {
    use super::*;

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
