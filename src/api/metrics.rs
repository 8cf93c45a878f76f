//! `GET /metrics` of every role: the process-wide registry of
//! `telemetry::exposition` plus what this server's state knows: the
//! pipeline gauges read from Redis (one `status::gather` pass at most every
//! `metrics.pipeline_refresh_ms`, shared by the scrapes in between) and the
//! hub's gauges. Prometheus text 0.0.4 by default, OpenMetrics when the
//! scrape's `Accept` asks for it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use fastmetrics::metrics::counter::LazyCounter;
use fastmetrics::metrics::gauge::LazyGauge;

use super::{ApiError, AppState};
use crate::config::{MetricsConfig, RetentionConfig};
use crate::event::SchemaRegistry;
use crate::processor::ProcessorRegistry;
use crate::status::Status;
use crate::stream::{Keys, Redis};
use crate::telemetry::exposition::{
    self, base_registry, CounterSeries, ExpositionError, Format, GaugeSeries, Labels, Registry,
};
use crate::telemetry::metrics::PIPELINE_READ_FAILURES;

/// The pipeline gauges: name and help. Labels: `stream` and `kind` per
/// shard stream, `group` per consumer group, `processor` per processor.
const PIPELINE: &[(&str, &str)] = &[
    ("flowmeter_stream_length", "entries in the shard stream (XLEN)"),
    ("flowmeter_group_lag", "entries of the stream not yet delivered to the group (XINFO GROUPS lag; left out when Redis cannot tell)"),
    ("flowmeter_group_lag_age_seconds", "age of the group's oldest unacknowledged entry (pending, else first undelivered), measured to the read: grows while the group is stuck, with or without new traffic; 0 when caught up"),
    ("flowmeter_group_pending", "entries delivered to the group and not yet acknowledged"),
    ("flowmeter_group_oldest_pending_age_seconds", "age of the group's oldest pending entry; 0 when none is pending"),
    ("flowmeter_group_consumers", "consumers of the group on the stream"),
    ("flowmeter_group_unread_trimmed", "entries of the group retention.hard_max_len trimmed before it acknowledged them, ever (all its streams)"),
    ("flowmeter_group_dead_letters", "entries in the group's dead-letter stream"),
    ("flowmeter_processor_workers", "workers holding a shard lease of the processor (0: nobody processes it)"),
];

/// One read of the pipeline gauges.
#[derive(Default)]
struct Snapshot {
    series: BTreeMap<&'static str, Vec<(Labels, f64)>>,
    /// Streams left out past `metrics.max_streams`.
    skipped: usize,
    read_at: Option<Instant>,
}

/// What the pipeline gauges are read with.
pub struct PipelineSource {
    pub redis: Redis,
    pub keys: Keys,
    pub schemas: Arc<SchemaRegistry>,
    pub processors: Arc<ProcessorRegistry>,
    pub retention: RetentionConfig,
}

struct Pipeline {
    source: PipelineSource,
    refresh: Duration,
    max_streams: usize,
    /// The last read attempt; held while reading, so concurrent scrapes
    /// wait for one read instead of each making its own.
    attempted: tokio::sync::Mutex<Option<Instant>>,
    /// Reads made (`flowmeter_metrics_pipeline_reads_total`).
    reads: AtomicU64,
    current: RwLock<Arc<Snapshot>>,
}

impl Pipeline {
    fn current(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads Redis again unless the last read is younger than
    /// `metrics.pipeline_refresh_ms`; a failed read keeps the last figures
    /// (their age shows in `flowmeter_metrics_pipeline_age_seconds`).
    async fn refresh(&self) {
        let mut attempted = self.attempted.lock().await;
        if attempted.is_some_and(|t| t.elapsed() < self.refresh) {
            return;
        }
        *attempted = Some(Instant::now());
        self.reads.fetch_add(1, Ordering::Relaxed);
        let s = &self.source;
        match crate::status::gather(
            &s.redis,
            &s.keys,
            &s.schemas,
            &s.processors,
            None,
            &s.retention,
        )
        .await
        {
            Ok(status) => {
                let snap = Arc::new(snapshot(&status, self.max_streams));
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = snap;
            }
            Err(e) => {
                PIPELINE_READ_FAILURES.inc();
                tracing::warn!(error = %e, "metrics: cannot read the pipeline gauges from Redis; serving the last figures");
            }
        }
    }
}

/// The gauges of one status read, at most `max_streams` shard streams.
fn snapshot(st: &Status, max_streams: usize) -> Snapshot {
    let mut series: BTreeMap<&'static str, Vec<(Labels, f64)>> = BTreeMap::new();
    let mut push = |name: &'static str, labels: Labels, v: f64| {
        series.entry(name).or_default().push((labels, v));
    };
    for s in st.streams.iter().take(max_streams) {
        push(
            "flowmeter_stream_length",
            Labels::of([("stream", &s.stream), ("kind", &s.kind)]),
            s.length as f64,
        );
        for g in &s.groups {
            let l = Labels::of([
                ("group", &g.group),
                ("stream", &s.stream),
                ("kind", &s.kind),
            ]);
            if let Some(lag) = g.lag {
                push("flowmeter_group_lag", l.clone(), lag as f64);
            }
            push("flowmeter_group_lag_age_seconds", l.clone(), g.lag_age_secs);
            push("flowmeter_group_pending", l.clone(), g.pending as f64);
            push(
                "flowmeter_group_oldest_pending_age_seconds",
                l.clone(),
                g.oldest_pending_age_secs,
            );
            push("flowmeter_group_consumers", l, g.consumers as f64);
        }
    }
    for g in &st.groups {
        let l = Labels::of([("group", &g.group)]);
        push(
            "flowmeter_group_dead_letters",
            l.clone(),
            g.dead_letters as f64,
        );
        push("flowmeter_group_unread_trimmed", l, g.unread_trimmed as f64);
    }
    for p in &st.processors {
        let owners: BTreeSet<&str> = p.shards.iter().filter_map(|s| s.owner.as_deref()).collect();
        push(
            "flowmeter_processor_workers",
            Labels::of([("processor", &p.name)]),
            owners.len() as f64,
        );
    }
    Snapshot {
        series,
        skipped: st.streams.len().saturating_sub(max_streams),
        read_at: Some(Instant::now()),
    }
}

/// The registry `GET /metrics` writes, and the pipeline read it refreshes.
pub struct MetricsEndpoint {
    registry: Registry,
    pipeline: Option<Arc<Pipeline>>,
}

impl MetricsEndpoint {
    /// The registry of a server running `roles`: the pipeline gauges when
    /// `pipeline` is given and `metrics.pipeline` is on, the hub's gauges
    /// when it runs.
    pub fn new(
        cfg: &MetricsConfig,
        roles: &[&str],
        pipeline: Option<PipelineSource>,
        hub: Option<Arc<crate::hub::Hub>>,
    ) -> Result<Self, ExpositionError> {
        let mut registry = base_registry(roles)?;
        let pipeline = pipeline.filter(|_| cfg.pipeline).map(|source| {
            Arc::new(Pipeline {
                source,
                refresh: Duration::from_millis(cfg.pipeline_refresh_ms),
                max_streams: cfg.max_streams,
                attempted: tokio::sync::Mutex::new(None),
                reads: AtomicU64::new(0),
                current: RwLock::new(Arc::new(Snapshot::default())),
            })
        });
        if let Some(p) = &pipeline {
            for (name, help) in PIPELINE {
                let p = p.clone();
                registry.register(
                    *name,
                    *help,
                    GaugeSeries::new(move || {
                        p.current().series.get(name).cloned().unwrap_or_default()
                    }),
                )?;
            }
            let p1 = p.clone();
            registry.register(
                "flowmeter_metrics_streams_skipped",
                "shard streams whose series the last read left out (metrics.max_streams)",
                LazyGauge::new(move || p1.current().skipped as i64),
            )?;
            let p3 = p.clone();
            registry.register(
                "flowmeter_metrics_pipeline_reads_total",
                "reads of the pipeline gauges from Redis by this server (at most one per metrics.pipeline_refresh_ms, however many scrapes)",
                LazyCounter::new(move || p3.reads.load(Ordering::Relaxed)),
            )?;
            let p2 = p.clone();
            registry.register(
                "flowmeter_metrics_pipeline_age_seconds",
                "seconds since the pipeline gauges were read from Redis (at most metrics.pipeline_refresh_ms while reads succeed)",
                LazyGauge::new(move || {
                    p2.current()
                        .read_at
                        .map_or(-1.0, |t| t.elapsed().as_secs_f64())
                }),
            )?;
        }
        registry.register(
            "flowmeter_alert_notifications_total",
            "alert notification attempts by notifier and outcome (delivered, failed: retried later, gave_up)",
            CounterSeries::new(|| {
                crate::alert::notify::metrics::notifications()
                    .into_iter()
                    .map(|(n, o, v)| (Labels::of([("notifier", n.as_str()), ("outcome", o)]), v))
                    .collect()
            }),
        )?;
        registry.register(
            "flowmeter_alert_outbox_pending",
            "alert notifications waiting in the outbox, by notifier (the same figure from every hub instance)",
            GaugeSeries::new(|| {
                crate::alert::notify::metrics::outbox()
                    .into_iter()
                    .map(|(n, v)| (Labels::of([("notifier", n.as_str())]), v as f64))
                    .collect()
            }),
        )?;
        if let Some(hub) = hub {
            let (h1, h2, h3) = (hub.clone(), hub.clone(), hub);
            registry.register(
                "flowmeter_hub_connections",
                "open WebSocket connections of this hub",
                LazyGauge::new(move || h1.connections_open() as i64),
            )?;
            registry.register(
                "flowmeter_hub_channels",
                "channels watched now, overviews included (hub.max_channels bounds the rest)",
                LazyGauge::new(move || h2.channels_watched() as i64),
            )?;
            registry.register(
                "flowmeter_hub_subjects",
                "subjects the hub's windows hold (hub.max_subjects bounds them)",
                LazyGauge::new(move || h3.subjects_held() as i64),
            )?;
        }
        Ok(Self { registry, pipeline })
    }

    /// The exposition now, in `format`.
    pub async fn render(&self, format: Format) -> Result<String, ExpositionError> {
        if let Some(p) = &self.pipeline {
            p.refresh().await;
        }
        exposition::encode(&self.registry, format)
    }
}

pub async fn metrics(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let format = Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    match st.metrics.render(format).await {
        Ok(body) => ([(header::CONTENT_TYPE, format.content_type())], body).into_response(),
        Err(e) => ApiError::Internal(e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{GroupStatus, IngestFigures, StreamStatus};

    fn stream(i: u32, groups: &[&str]) -> StreamStatus {
        StreamStatus {
            stream: format!("fm:{{http:{i}}}"),
            kind: "http".into(),
            set: 0,
            shard: i,
            length: 10 + u64::from(i),
            first_id: None,
            last_id: None,
            groups: groups
                .iter()
                .map(|g| GroupStatus {
                    group: g.to_string(),
                    consumers: 1,
                    pending: 2,
                    lag: Some(3),
                    last_delivered_id: None,
                    oldest_unacked_id: None,
                    lag_age_secs: 4.0,
                    oldest_pending_age_secs: 4.0,
                    idle_secs: None,
                    consumer_names: Vec::new(),
                })
                .collect(),
            retention: None,
        }
    }

    #[test]
    fn streams_past_max_streams_are_left_out_and_counted() {
        let st = Status {
            streams: (0..5).map(|i| stream(i, &["rollup", "archive"])).collect(),
            groups: Vec::new(),
            processors: Vec::new(),
            redis: Default::default(),
            ingest: IngestFigures::default(),
        };
        let snap = snapshot(&st, 2);
        assert_eq!(snap.skipped, 3);
        let count = |name: &str| snap.series.get(name).map_or(0, Vec::len);
        assert_eq!(count("flowmeter_stream_length"), 2);
        assert_eq!(count("flowmeter_group_lag"), 4, "2 streams × 2 groups");
        assert_eq!(count("flowmeter_group_lag_age_seconds"), 4);
        let all = snapshot(&st, 1_024);
        assert_eq!(
            (all.skipped, all.series["flowmeter_stream_length"].len()),
            (0, 5)
        );
        assert_eq!(snapshot(&st, 0).series.get("flowmeter_stream_length"), None);
    }
}
