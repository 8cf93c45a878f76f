//! Logging setup and every counter flowmeter keeps, named once here.
//!
//! Counters are process-wide atomics exported in Prometheus text format at
//! `GET /metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Installs the tracing subscriber. `RUST_LOG` overrides the default level (`info`).
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// A monotonically increasing counter.
pub struct Counter {
    pub name: &'static str,
    pub help: &'static str,
    value: AtomicU64,
}

impl Counter {
    pub const fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            value: AtomicU64::new(0),
        }
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// Every counter.
pub mod metrics {
    use super::Counter;

    pub static REQUESTS_ACCEPTED: Counter = Counter::new(
        "flowmeter_ingest_requests_accepted_total",
        "ingest requests answered 202",
    );
    pub static REQUESTS_REJECTED: Counter = Counter::new(
        "flowmeter_ingest_requests_rejected_total",
        "ingest requests answered 400 or 413",
    );
    pub static REQUESTS_UNAVAILABLE: Counter = Counter::new(
        "flowmeter_ingest_requests_unavailable_total",
        "ingest requests answered 503 (Redis unreachable)",
    );
    pub static EVENTS_INGESTED: Counter = Counter::new(
        "flowmeter_events_ingested_total",
        "events appended to streams",
    );
    pub static EVENTS_APPLIED: Counter = Counter::new(
        "flowmeter_rollup_events_applied_total",
        "events committed into rollups",
    );
    pub static EVENTS_INVALID: Counter = Counter::new(
        "flowmeter_rollup_events_invalid_total",
        "stream entries the rollup dead-lettered (undecodable, or a value its tables cannot hold), then acked",
    );
    pub static DEAD_LETTERED: Counter = Counter::new(
        "flowmeter_rollup_dead_lettered_total",
        "entries written to a dead-letter stream",
    );
    pub static RETENTION_TRIMMED: Counter = Counter::new(
        "flowmeter_retention_trimmed_total",
        "stream entries removed by retention",
    );
    pub static RETENTION_FORCED: Counter = Counter::new(
        "flowmeter_retention_unread_trimmed_total",
        "entries retention.hard_max_len removed before every group acknowledged them",
    );
    pub static HUB_CONNECTIONS: Counter = Counter::new(
        "flowmeter_hub_connections_total",
        "WebSocket connections opened",
    );
    pub static HUB_DISCONNECTIONS: Counter = Counter::new(
        "flowmeter_hub_disconnections_total",
        "WebSocket connections closed",
    );
    pub static HUB_DROPPED: Counter = Counter::new(
        "flowmeter_hub_messages_dropped_total",
        "hub messages dropped because a client's queue was full (it gets a snapshot later)",
    );
    pub static ENTRIES_ACKED: Counter = Counter::new(
        "flowmeter_rollup_entries_acked_total",
        "stream entries acknowledged",
    );
    pub static FLUSHES: Counter =
        Counter::new("flowmeter_rollup_flushes_total", "committed flushes");
    pub static FLUSH_FAILURES: Counter = Counter::new(
        "flowmeter_rollup_flush_failures_total",
        "failed flushes (retried)",
    );
    pub static FLUSH_RETRIES: Counter = Counter::new(
        "flowmeter_rollup_flush_lock_retries_total",
        "flush transactions retried after a deadlock or lock timeout",
    );
    pub static FLUSHES_REFUSED: Counter = Counter::new(
        "flowmeter_rollup_flushes_refused_total",
        "flushes whose data the database refused; their entries were re-read in smaller flushes to find the one(s) responsible",
    );
    pub static KEYS_FOLDED: Counter = Counter::new(
        "flowmeter_rollup_keys_folded_total",
        "new dimension keys past a table's max_new_keys_per_hour, folded into __other__ rows",
    );
    pub static EVENTS_FOLDED: Counter = Counter::new(
        "flowmeter_rollup_events_folded_total",
        "events counted in __other__ rows because their key was past the table's budget",
    );
    pub static SINK_DELIVERED: Counter = Counter::new(
        "flowmeter_sink_entries_delivered_total",
        "entries a sink (Kafka bridge, ClickHouse archive) delivered and acknowledged",
    );
    pub static SINK_FAILURES: Counter = Counter::new(
        "flowmeter_sink_delivery_failures_total",
        "sink deliveries that failed and were retried",
    );

    pub static ALL: &[&Counter] = &[
        &REQUESTS_ACCEPTED,
        &REQUESTS_REJECTED,
        &REQUESTS_UNAVAILABLE,
        &EVENTS_INGESTED,
        &EVENTS_APPLIED,
        &EVENTS_INVALID,
        &DEAD_LETTERED,
        &RETENTION_TRIMMED,
        &RETENTION_FORCED,
        &HUB_CONNECTIONS,
        &HUB_DISCONNECTIONS,
        &HUB_DROPPED,
        &ENTRIES_ACKED,
        &FLUSHES,
        &FLUSH_FAILURES,
        &FLUSH_RETRIES,
        &FLUSHES_REFUSED,
        &KEYS_FOLDED,
        &EVENTS_FOLDED,
        &SINK_DELIVERED,
        &SINK_FAILURES,
    ];

    /// The value of counter `name` in a Prometheus text exposition (e.g. a
    /// scraped `/metrics`).
    pub fn value_in(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
    }

    /// Prometheus text exposition of every counter.
    pub fn render() -> String {
        let mut out = String::new();
        for c in ALL {
            out.push_str(&format!(
                "# HELP {0} {1}\n# TYPE {0} counter\n{0} {2}\n",
                c.name,
                c.help,
                c.get()
            ));
        }
        out
    }
}
