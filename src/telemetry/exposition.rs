//! What `GET /metrics` writes: one [`Registry`] of every metric, encoded
//! by `fastmetrics` as Prometheus text 0.0.4 (the default) or OpenMetrics
//! 1.0 (when the scrape's `Accept` asks for `application/openmetrics-text`,
//! as Prometheus itself does).
//!
//! [`base_registry`] registers what every process has: the counters and
//! gauges of [`super::metrics`] (read from their atomics at scrape time),
//! the labelled families of [`super::families`], the build and process
//! metrics and this process' processor workers. The API adds what depends
//! on its state (the pipeline gauges read from Redis, the hub's gauges).

use std::sync::Arc;

use fastmetrics::encoder::{EncodeLabelSet, EncodeMetric, LabelSetEncoder, MetricEncoder};
use fastmetrics::format::text::{self, TextProfile};
use fastmetrics::metrics::counter::{ConstCounter, LazyCounter};
use fastmetrics::metrics::gauge::{ConstGauge, LazyGauge};
use fastmetrics::raw::{LabelSetSchema, MetricLabelSet, MetricType, TypedMetric};
pub use fastmetrics::registry::Registry;

/// A metric could not be registered or written (a bug: names are fixed).
#[derive(Debug, thiserror::Error)]
#[error("metrics exposition: {0} (a bug in flowmeter's metric names; please report it)")]
pub struct ExpositionError(String);

impl From<fastmetrics::error::Error> for ExpositionError {
    fn from(e: fastmetrics::error::Error) -> Self {
        Self(e.to_string())
    }
}

/// The label pairs of one series. Every value comes from the config
/// (processor, group and kind names, shard stream keys, worker ids,
/// outcome words), never from event content: docs/operations.md lists the
/// bound of each label.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(pub Vec<(&'static str, String)>);

impl Labels {
    /// Labels from `(name, value)` pairs.
    pub fn of<const N: usize>(pairs: [(&'static str, &str); N]) -> Self {
        Self(pairs.iter().map(|(k, v)| (*k, v.to_string())).collect())
    }
}

impl EncodeLabelSet for Labels {
    fn encode(&self, encoder: &mut dyn LabelSetEncoder) -> fastmetrics::error::Result<()> {
        for (k, v) in &self.0 {
            encoder.encode(&(*k, v.as_str()))?;
        }
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl LabelSetSchema for Labels {
    fn names() -> Option<&'static [&'static str]> {
        None
    }
}

/// A gauge family whose series are computed when it is written (a
/// snapshot of the pipeline, this process' workers).
#[derive(Clone)]
pub struct GaugeSeries {
    collect: Arc<dyn Fn() -> Vec<(Labels, f64)> + Send + Sync>,
}

impl GaugeSeries {
    pub fn new(collect: impl Fn() -> Vec<(Labels, f64)> + Send + Sync + 'static) -> Self {
        Self {
            collect: Arc::new(collect),
        }
    }
}

impl TypedMetric for GaugeSeries {
    const TYPE: MetricType = MetricType::Gauge;
}

impl MetricLabelSet for GaugeSeries {
    type LabelSet = Labels;
}

impl EncodeMetric for GaugeSeries {
    fn encode(&self, encoder: &mut dyn MetricEncoder) -> fastmetrics::error::Result<()> {
        for (labels, value) in (self.collect)() {
            encoder.encode(&labels, &ConstGauge::new(value))?;
        }
        Ok(())
    }

    fn is_empty(&self) -> bool {
        (self.collect)().is_empty()
    }
}

/// A counter family whose series are read when it is written (counts
/// another module keeps).
#[derive(Clone)]
pub struct CounterSeries {
    collect: Arc<dyn Fn() -> Vec<(Labels, u64)> + Send + Sync>,
}

impl CounterSeries {
    pub fn new(collect: impl Fn() -> Vec<(Labels, u64)> + Send + Sync + 'static) -> Self {
        Self {
            collect: Arc::new(collect),
        }
    }
}

impl TypedMetric for CounterSeries {
    const TYPE: MetricType = MetricType::Counter;
}

impl MetricLabelSet for CounterSeries {
    type LabelSet = Labels;
}

impl EncodeMetric for CounterSeries {
    fn encode(&self, encoder: &mut dyn MetricEncoder) -> fastmetrics::error::Result<()> {
        for (labels, value) in (self.collect)() {
            encoder.encode(&labels, &ConstCounter::new(value))?;
        }
        Ok(())
    }

    fn is_empty(&self) -> bool {
        (self.collect)().is_empty()
    }
}

/// The exposition format of one scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`: what curl and older scrapers get.
    Prometheus,
    /// `application/openmetrics-text; version=1.0.0`: ends with `# EOF`.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when `accept` lists `application/openmetrics-text` with
    /// a quality above 0, else Prometheus text.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let wants = accept.is_some_and(|a| {
            a.split(',').any(|part| {
                let mut params = part.split(';').map(str::trim);
                let media = params.next().unwrap_or_default();
                let q = params
                    .filter_map(|p| p.strip_prefix("q="))
                    .find_map(|q| q.parse::<f64>().ok())
                    .unwrap_or(1.0);
                media.eq_ignore_ascii_case("application/openmetrics-text") && q > 0.0
            })
        });
        if wants {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    fn profile(self) -> TextProfile {
        match self {
            Format::Prometheus => TextProfile::PrometheusV0_0_4,
            Format::OpenMetrics => TextProfile::OpenMetricsV1_0_0 {
                escaping_scheme: Default::default(),
            },
        }
    }

    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        self.profile().content_type()
    }
}

/// `registry` written in `format`.
pub fn encode(registry: &Registry, format: Format) -> Result<String, ExpositionError> {
    let mut out = String::with_capacity(16 * 1024);
    text::encode(&mut out, registry, format.profile())?;
    Ok(out)
}

/// The registry of what every process has; the caller adds its own and
/// keeps it for every scrape.
pub fn base_registry(roles: &[&str]) -> Result<Registry, ExpositionError> {
    let mut r = Registry::default();
    for c in super::metrics::ALL {
        r.register(c.name, c.help, LazyCounter::new(move || c.get()))?;
    }
    for g in super::metrics::GAUGES {
        r.register(g.name, g.help, LazyGauge::new(move || g.get() as i64))?;
    }
    super::families::register(&mut r)?;
    super::process::register(&mut r)?;
    super::workers::register(&mut r)?;
    let version = env!("CARGO_PKG_VERSION");
    let build: Vec<(Labels, f64)> = roles
        .iter()
        .map(|role| (Labels::of([("version", version), ("role", role)]), 1.0))
        .collect();
    r.register(
        "flowmeter_build_info",
        "1 per role this process runs, labelled with the flowmeter version",
        GaugeSeries::new(move || build.clone()),
    )?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_of_every_role_registers_and_encodes() {
        // a name or help the crate refuses would stop `serve`
        let r = base_registry(&["ingest", "api", "rollup", "hub"]).expect("registers");
        for format in [Format::Prometheus, Format::OpenMetrics] {
            let text = encode(&r, format).expect("encodes");
            assert!(text.contains("flowmeter_build_info{"), "{text}");
        }
    }

    #[test]
    fn openmetrics_only_when_asked_for() {
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Prometheus);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            Format::Prometheus
        );
        // what Prometheus sends
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text; q=0, text/plain")),
            Format::Prometheus
        );
    }

    #[test]
    fn both_formats_carry_counters_gauges_and_labels() {
        let mut r = Registry::default();
        r.register("t_things_total", "things", LazyCounter::new(|| 3u64))
            .expect("registers");
        r.register(
            "t_level",
            "level",
            GaugeSeries::new(|| vec![(Labels::of([("group", "g")]), 2.5)]),
        )
        .expect("registers");
        let prom = encode(&r, Format::Prometheus).expect("encodes");
        assert!(prom.contains("# TYPE t_things_total counter\n"), "{prom}");
        assert!(prom.contains("\nt_things_total 3\n"), "{prom}");
        assert!(prom.contains("t_level{group=\"g\"} 2.5"), "{prom}");
        assert!(!prom.contains("# EOF"));
        let om = encode(&r, Format::OpenMetrics).expect("encodes");
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("t_things_total 3"), "{om}");
    }
}
