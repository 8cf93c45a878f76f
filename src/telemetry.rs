//! Logging setup and every metric flowmeter keeps, named once here.
//!
//! The unlabelled counters and gauges are process-wide atomics
//! ([`metrics`]); the labelled counters and histograms are in
//! [`families`], this process' processor workers in [`workers`], the
//! process figures in [`process`]. [`exposition`] puts them in one
//! registry that `GET /metrics` writes as Prometheus text or OpenMetrics
//! (docs/operations.md lists every metric).

use std::sync::atomic::{AtomicU64, Ordering};

pub mod exposition;
pub mod families;
pub mod process;
pub mod workers;

/// Installs the tracing subscriber (log lines on stderr). `RUST_LOG`
/// overrides the default level (`info`). Lines are coloured only when stderr
/// is a terminal and `NO_COLOR` is unset, so files and pipes get plain text.
pub fn init() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(std::io::stderr().is_terminal()))
        .with_target(false)
        .try_init();
}

/// Whether to write colour codes to a stream: only to a terminal, and not
/// when `NO_COLOR` is set to anything but the empty string
/// (<https://no-color.org>).
pub fn colour(is_terminal: bool) -> bool {
    colour_with(is_terminal, std::env::var_os("NO_COLOR").as_deref())
}

fn colour_with(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
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

/// A value that goes up and down (bytes held now).
pub struct Gauge {
    pub name: &'static str,
    pub help: &'static str,
    value: AtomicU64,
}

impl Gauge {
    pub const fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            value: AtomicU64::new(0),
        }
    }
    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }
    pub fn sub(&self, n: u64) {
        self.value.fetch_sub(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// Every counter and gauge.
pub mod metrics {
    use super::{Counter, Gauge};

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
        "ingest requests answered 503 (Redis unreachable, outcome unknown, or backpressure)",
    );
    pub static REQUESTS_UNSUPPORTED_MEDIA_TYPE: Counter = Counter::new(
        "flowmeter_ingest_requests_unsupported_media_type_total",
        "ingest requests answered 415: a Content-Type POST /v1/events does not read (nothing was read or written)",
    );
    pub static REQUESTS_BACKPRESSURE: Counter = Counter::new(
        "flowmeter_ingest_requests_backpressure_total",
        "ingest requests answered 503 because a stream's backlog passed ingest.max_backlog_entries",
    );
    pub static REQUESTS_OUTCOME_UNKNOWN: Counter = Counter::new(
        "flowmeter_ingest_requests_outcome_unknown_total",
        "ingest requests answered 503 with outcome unknown (Redis did not confirm a write it may have applied)",
    );
    pub static REQUESTS_NOT_REPLICATED: Counter = Counter::new(
        "flowmeter_ingest_requests_not_replicated_total",
        "ingest requests stored but answered 503 with outcome unknown because fewer replicas than ingest.wait_replicas confirmed them in time (also counted in outcome_unknown)",
    );
    pub static IDEMPOTENT_REPLAYS: Counter = Counter::new(
        "flowmeter_ingest_idempotent_replays_total",
        "ingest requests whose Idempotency-Key was already written (answered the first outcome, wrote nothing)",
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
    pub static HUB_EVENTS_FOLDED: Counter = Counter::new(
        "flowmeter_hub_events_folded_total",
        "hub events of a new subject counted in the overviews only (hub.max_subjects or hub.max_new_subjects_per_hour reached)",
    );
    pub static HUB_EVENTS_BACKDATED: Counter = Counter::new(
        "flowmeter_hub_events_backdated_total",
        "hub events skipped by the live windows because their ts was older than the 5-minute window when they arrived (the rollups still count them)",
    );
    pub static HUB_PEERS_UNTRACKED: Counter = Counter::new(
        "flowmeter_hub_peers_untracked_total",
        "webrtc samples of a new peer not tracked because hub.max_peers was reached (the samples still count)",
    );
    pub static HUB_PEERS_TRACKED: Counter = Counter::new(
        "flowmeter_hub_peers_tracked_total",
        "webrtc peers the hub started tracking (a recent sample of a peer it did not track); tracked now = this - flowmeter_hub_peers_expired_total",
    );
    pub static HUB_PEERS_EXPIRED: Counter = Counter::new(
        "flowmeter_hub_peers_expired_total",
        "tracked webrtc peers forgotten hub.active_secs after their last sample",
    );
    pub static HUB_SUBSCRIPTIONS_REFUSED: Counter = Counter::new(
        "flowmeter_hub_subscriptions_refused_total",
        "subscriptions refused because hub.max_channels channels are watched",
    );
    pub static HUB_CLIENT_MESSAGES_IGNORED: Counter = Counter::new(
        "flowmeter_hub_client_messages_ignored_total",
        "client messages ignored past hub.max_messages_per_sec",
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
    pub static HTTP_CONNECTIONS_OPENED: Counter = Counter::new(
        "flowmeter_http_connections_opened_total",
        "client connections accepted (HTTP and WebSocket)",
    );
    pub static HTTP_CONNECTIONS_CLOSED: Counter = Counter::new(
        "flowmeter_http_connections_closed_total",
        "client connections closed (opened minus closed = open now)",
    );
    pub static HTTP_CONNECTION_CAP_WAITS: Counter = Counter::new(
        "flowmeter_http_connection_cap_waits_total",
        "times server.max_connections was reached and new connections waited",
    );
    pub static HTTP_HEADER_TIMEOUTS: Counter = Counter::new(
        "flowmeter_http_header_timeouts_total",
        "connections closed for no request (handshake, headers) within server.header_read_timeout_ms",
    );
    pub static HTTP_BODY_TIMEOUTS: Counter = Counter::new(
        "flowmeter_http_body_timeouts_total",
        "requests failed for a pause in their body past server.body_idle_timeout_ms",
    );
    pub static HTTP_REQUEST_TIMEOUTS: Counter = Counter::new(
        "flowmeter_http_request_timeouts_total",
        "requests cut at server.request_timeout_ms",
    );
    pub static HTTP_TLS_FAILURES: Counter = Counter::new(
        "flowmeter_http_tls_failures_total",
        "connections to the TLS port that failed the handshake or spoke plain HTTP",
    );
    pub static INGEST_RATE_LIMITED: Counter = Counter::new(
        "flowmeter_ingest_requests_rate_limited_total",
        "ingest requests answered 429 (server.ingest_rate_limit)",
    );
    pub static INGEST_BODY_BUDGET_REFUSED: Counter = Counter::new(
        "flowmeter_ingest_requests_body_budget_refused_total",
        "ingest requests answered 503 because the bodies in flight held ingest.max_inflight_body_bytes",
    );
    pub static PIPELINE_READ_FAILURES: Counter = Counter::new(
        "flowmeter_metrics_pipeline_read_failures_total",
        "reads of the pipeline gauges from Redis that failed (the last figures were served)",
    );
    pub static INGEST_WRITES_PAST_DEADLINE: Counter = Counter::new(
        "flowmeter_ingest_writes_past_request_timeout_total",
        "ingest requests whose Redis write was still running at server.request_timeout_ms and was let finish",
    );

    /// Request body bytes of `POST /v1/events` held now (read or being
    /// read), at most `ingest.max_inflight_body_bytes`.
    pub static INGEST_BODY_BYTES_IN_FLIGHT: Gauge = Gauge::new(
        "flowmeter_ingest_body_bytes_in_flight",
        "request body bytes of POST /v1/events held now (ingest.max_inflight_body_bytes bounds it)",
    );

    pub static GAUGES: &[&Gauge] = &[&INGEST_BODY_BYTES_IN_FLIGHT];

    pub static ALL: &[&Counter] = &[
        &REQUESTS_ACCEPTED,
        &REQUESTS_REJECTED,
        &REQUESTS_UNAVAILABLE,
        &REQUESTS_UNSUPPORTED_MEDIA_TYPE,
        &REQUESTS_BACKPRESSURE,
        &REQUESTS_OUTCOME_UNKNOWN,
        &REQUESTS_NOT_REPLICATED,
        &IDEMPOTENT_REPLAYS,
        &EVENTS_APPLIED,
        &EVENTS_INVALID,
        &DEAD_LETTERED,
        &RETENTION_TRIMMED,
        &RETENTION_FORCED,
        &HUB_CONNECTIONS,
        &HUB_DISCONNECTIONS,
        &HUB_DROPPED,
        &HUB_EVENTS_FOLDED,
        &HUB_EVENTS_BACKDATED,
        &HUB_PEERS_UNTRACKED,
        &HUB_PEERS_TRACKED,
        &HUB_PEERS_EXPIRED,
        &HUB_SUBSCRIPTIONS_REFUSED,
        &HUB_CLIENT_MESSAGES_IGNORED,
        &ENTRIES_ACKED,
        &FLUSHES,
        &FLUSH_FAILURES,
        &FLUSH_RETRIES,
        &FLUSHES_REFUSED,
        &KEYS_FOLDED,
        &EVENTS_FOLDED,
        &SINK_DELIVERED,
        &SINK_FAILURES,
        &HTTP_CONNECTIONS_OPENED,
        &HTTP_CONNECTIONS_CLOSED,
        &HTTP_CONNECTION_CAP_WAITS,
        &HTTP_HEADER_TIMEOUTS,
        &HTTP_BODY_TIMEOUTS,
        &HTTP_REQUEST_TIMEOUTS,
        &HTTP_TLS_FAILURES,
        &INGEST_RATE_LIMITED,
        &INGEST_BODY_BUDGET_REFUSED,
        &INGEST_WRITES_PAST_DEADLINE,
        &PIPELINE_READ_FAILURES,
    ];

    /// The value of series `name` in a Prometheus text or OpenMetrics
    /// exposition (e.g. a scraped `/metrics`): a bare name, or a name with
    /// its labels as the exposition writes them
    /// (`flowmeter_ingest_requests_total{outcome="accepted"}`).
    pub fn value_in(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    }
}

#[cfg(test)]
mod colour_tests {
    use super::colour_with;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_with(true, None));
        assert!(
            colour_with(true, Some(OsStr::new(""))),
            "empty NO_COLOR is unset"
        );
        assert!(!colour_with(true, Some(OsStr::new("1"))));
        assert!(!colour_with(false, None));
    }
}
