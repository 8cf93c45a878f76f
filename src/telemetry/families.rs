//! The labelled counters and histograms, process-wide like the counters
//! of [`super::metrics`]. Their labels are outcome words fixed here and
//! names from the config (kinds, processors, groups), so each family has
//! at most (outcomes × configured names) series.

use std::sync::LazyLock;

use fastmetrics::metrics::counter::Counter;
use fastmetrics::metrics::family::Family;
use fastmetrics::metrics::histogram::Histogram;

use super::exposition::{ExpositionError, Labels, Registry};

/// Seconds buckets of the request, flush and delivery histograms: 1 ms to
/// 10 s.
const FAST_SECS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Seconds buckets of XADD-to-commit: a flush interval is seconds, a stall
/// minutes to hours.
const LAG_SECS: [f64; 14] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

type Counters = Family<Labels, Counter>;
type Histograms = Family<Labels, Histogram>;

fn histograms(buckets: &'static [f64]) -> Histograms {
    Family::new(move || Histogram::new(buckets.iter().copied()))
}

/// What an ingest request was answered (`flowmeter_ingest_requests_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestOutcome {
    /// 202.
    Accepted,
    /// 400, 409, 422: the request itself is wrong.
    Rejected,
    /// 503: Redis unreachable, the write's outcome unknown, the body budget full.
    Unavailable,
    /// 503: a shard's backlog passed `ingest.max_backlog_entries`.
    Backpressure,
    /// 429: `server.ingest_rate_limit`.
    RateLimited,
    /// 415.
    UnsupportedMediaType,
    /// 413: past `ingest.max_body_bytes`.
    TooLarge,
}

impl IngestOutcome {
    pub const ALL: [IngestOutcome; 7] = [
        Self::Accepted,
        Self::Rejected,
        Self::Unavailable,
        Self::Backpressure,
        Self::RateLimited,
        Self::UnsupportedMediaType,
        Self::TooLarge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Rejected => "rejected",
            Self::Unavailable => "unavailable",
            Self::Backpressure => "backpressure",
            Self::RateLimited => "rate_limited",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::TooLarge => "too_large",
        }
    }
}

/// Every labelled family.
pub struct Families {
    ingest_requests: Counters,
    ingest_seconds: Histograms,
    events_ingested: Counters,
    processor_events: Counters,
    processor_flushes: Counters,
    dead_lettered: Counters,
    flush_seconds: Histograms,
    xadd_to_commit: Histograms,
    ws_delivery_lag: Histogram,
}

static FAMILIES: LazyLock<Families> = LazyLock::new(|| {
    let f = Families {
        ingest_requests: Counters::default(),
        ingest_seconds: histograms(&FAST_SECS),
        events_ingested: Counters::default(),
        processor_events: Counters::default(),
        processor_flushes: Counters::default(),
        dead_lettered: Counters::default(),
        flush_seconds: histograms(&FAST_SECS),
        xadd_to_commit: histograms(&LAG_SECS),
        ws_delivery_lag: Histogram::new(FAST_SECS),
    };
    // every outcome from the start, so rate() sees the first one
    for o in IngestOutcome::ALL {
        f.ingest_requests
            .with_or_new(&Labels::of([("outcome", o.as_str())]), |_| ());
    }
    f
});

/// An ingest request answered `outcome` after `secs`.
pub fn ingest_request(outcome: IngestOutcome, secs: f64) {
    let labels = Labels::of([("outcome", outcome.as_str())]);
    FAMILIES.ingest_requests.with_or_new(&labels, |c| c.inc());
    FAMILIES
        .ingest_seconds
        .with_or_new(&labels, |h| h.observe(secs));
}

/// `n` events of `kind` appended to its streams.
pub fn events_ingested(kind: &str, n: u64) {
    FAMILIES
        .events_ingested
        .with_or_new(&Labels::of([("kind", kind)]), |c| c.inc_by(n));
}

/// What a processor did with the entries it read
/// (`flowmeter_processor_events_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryOutcome {
    /// Committed downstream.
    Applied,
    /// The processor could not apply it (undecodable, a value its tables
    /// cannot hold, a suspect past its attempts): dead-lettered.
    Invalid,
    /// Refused downstream at commit (the database, a sink): dead-lettered.
    DeadLettered,
}

impl EntryOutcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Invalid => "invalid",
            Self::DeadLettered => "dead_lettered",
        }
    }
}

/// The handles of one processor's series, looked up once when its runner
/// starts so the hot path does no label lookups.
#[derive(Clone)]
pub struct ProcessorMetrics {
    group: String,
    processor: String,
    flush_seconds: Histogram,
    xadd_to_commit: Histogram,
}

impl ProcessorMetrics {
    pub fn new(processor: &str, group: &str) -> Self {
        let p = Labels::of([("processor", processor)]);
        let f = &*FAMILIES;
        for o in [
            EntryOutcome::Applied,
            EntryOutcome::Invalid,
            EntryOutcome::DeadLettered,
        ] {
            f.processor_events.with_or_new(
                &Labels::of([
                    ("processor", processor),
                    ("group", group),
                    ("outcome", o.as_str()),
                ]),
                |_| (),
            );
        }
        for o in ["ok", "failed"] {
            f.processor_flushes.with_or_new(
                &Labels::of([("processor", processor), ("outcome", o)]),
                |_| (),
            );
        }
        f.dead_lettered
            .with_or_new(&Labels::of([("group", group)]), |_| ());
        Self {
            group: group.to_string(),
            processor: processor.to_string(),
            flush_seconds: f.flush_seconds.with_or_new(&p, Histogram::clone),
            xadd_to_commit: f.xadd_to_commit.with_or_new(&p, Histogram::clone),
        }
    }

    /// `n` entries ended with `outcome`; dead-lettered ones also count in
    /// `flowmeter_dead_lettered_total{group}`.
    pub fn entries(&self, outcome: EntryOutcome, n: u64) {
        if n == 0 {
            return;
        }
        let labels = Labels::of([
            ("processor", self.processor.as_str()),
            ("group", self.group.as_str()),
            ("outcome", outcome.as_str()),
        ]);
        FAMILIES
            .processor_events
            .with_or_new(&labels, |c| c.inc_by(n));
        if outcome != EntryOutcome::Applied {
            FAMILIES
                .dead_lettered
                .with_or_new(&Labels::of([("group", self.group.as_str())]), |c| {
                    c.inc_by(n)
                });
        }
    }

    /// A flush (a sink's delivery) committed in `secs`.
    pub fn flushed(&self, secs: f64) {
        self.flush(true);
        self.flush_seconds.observe(secs);
    }

    /// A flush (a sink's delivery) failed; it is retried.
    pub fn flush_failed(&self) {
        self.flush(false);
    }

    fn flush(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        FAMILIES.processor_flushes.with_or_new(
            &Labels::of([("processor", self.processor.as_str()), ("outcome", outcome)]),
            |c| c.inc(),
        );
    }

    /// An entry appended `secs` before the commit that applied it.
    pub fn xadd_to_commit(&self, secs: f64) {
        self.xadd_to_commit.observe(secs);
    }
}

/// A hub update sent `secs` after the view tick that produced it.
pub fn ws_delivery_lag(secs: f64) {
    FAMILIES.ws_delivery_lag.observe(secs);
}

pub(super) fn register(r: &mut Registry) -> Result<(), ExpositionError> {
    let f = &*FAMILIES;
    let counters = [
        (
            "flowmeter_ingest_requests_total",
            "POST /v1/events requests by answer: accepted (202), rejected (400/409/422), unavailable (503), backpressure (503, ingest.max_backlog_entries), rate_limited (429), unsupported_media_type (415), too_large (413)",
            &f.ingest_requests,
        ),
        (
            "flowmeter_events_ingested_total",
            "events appended to the streams, by kind",
            &f.events_ingested,
        ),
        (
            "flowmeter_processor_events_total",
            "stream entries a processor worker of this process finished: applied (committed), invalid (could not be applied), dead_lettered (refused downstream); the last two go to the group's dead-letter stream",
            &f.processor_events,
        ),
        (
            "flowmeter_processor_flushes_total",
            "commits (sink deliveries) of this process' processor workers: ok, or failed (retried)",
            &f.processor_flushes,
        ),
        (
            "flowmeter_dead_lettered_total",
            "entries this process' workers wrote to the group's dead-letter stream",
            &f.dead_lettered,
        ),
    ];
    for (name, help, family) in counters {
        r.register(name, help, family.clone())?;
    }
    let histograms = [
        (
            "flowmeter_ingest_request_duration_seconds",
            "time to answer POST /v1/events, by outcome",
            &f.ingest_seconds,
        ),
        (
            "flowmeter_flush_duration_seconds",
            "time one commit (sink delivery) took, by processor",
            &f.flush_seconds,
        ),
        (
            "flowmeter_xadd_to_commit_seconds",
            "time from an entry's XADD (its id, Redis' clock) to the commit that applied it (the worker's clock), by processor",
            &f.xadd_to_commit,
        ),
    ];
    for (name, help, family) in histograms {
        r.register(name, help, family.clone())?;
    }
    r.register(
        "flowmeter_ws_delivery_lag_seconds",
        "time from a hub tick (a closed second) to the socket write of an update it produced",
        f.ws_delivery_lag.clone(),
    )?;
    Ok(())
}
