//! `flowmeter loadgen`: sends generated traffic at a steady rate to the
//! ingest API or straight into the streams, and reports what happened.
//!
//! A dispatcher generates one batch every `batch / rate` seconds (event time
//! = now) and hands it to `concurrency` senders through a bounded queue; when
//! the senders cannot keep up the dispatcher waits, so the achieved rate
//! shows the bottleneck instead of an unbounded backlog. Only accepted
//! batches enter the truth.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{GenConfig, Generator, Incident, KindMix, TruthTable};
use flowmeter::config::Settings;
use flowmeter::event::SchemaRegistry;
use flowmeter::sketch::DdSketch;
use flowmeter::stream::{Keys, Producer};

/// Makes the progress bar of a long run: `(steps, what)` → a bar (a spinner
/// without steps). The command line passes one that draws on stderr; the
/// library only advances the bars, it does not style them.
pub type BarMaker = fn(Option<u64>, Meter<'_>) -> ProgressBar;

/// What a progress bar counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meter<'a> {
    /// Events a loadgen run got accepted.
    Accepted,
    /// The steps of a benchmark phase, named.
    Phase(&'a str),
}

/// Where the events go.
#[derive(Debug, Clone)]
pub enum Target {
    /// `POST {url}/v1/events`.
    Api(String),
    /// XADD through the same producer as the ingest API (Redis and prefix of the config).
    Redis,
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Events per second.
    pub rate: f64,
    /// `None`: until stopped.
    pub duration: Option<Duration>,
    pub kind: KindMix,
    pub batch: usize,
    pub concurrency: usize,
    pub seed: u64,
    pub target: Target,
    pub truth: Option<PathBuf>,
    /// Draws the run's progress (accepted events); `None` draws nothing.
    pub progress: Option<BarMaker>,
    /// An outage of `svc-0` (every request to it answers 503) over the
    /// first this-long of the run: trips the shipped `http_error_rate`
    /// alert on purpose (see docs/alerts.md).
    pub incident: Option<Duration>,
    /// A skewed workload: this share (0 to 1) of the http events belongs
    /// to one subject, [`super::HOT_SERVICE`] [`super::HOT_ENDPOINT`].
    pub hot: Option<f64>,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub sent: u64,
    pub accepted: u64,
    /// Refused as invalid (400): not written.
    pub rejected: u64,
    /// Transport errors, timeouts and 5xx: not counted in the truth.
    pub failed: u64,
    pub elapsed: Duration,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub truth: TruthTable,
    /// The first error seen, to say what to fix.
    pub first_error: Option<String>,
}

impl LoadReport {
    pub fn rate(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Setup(String),
    #[error("writing the truth file {path}: {source}")]
    Truth {
        path: String,
        source: std::io::Error,
    },
}

enum Sink {
    Api {
        http: reqwest::Client,
        url: String,
    },
    Redis {
        producer: Producer,
        registry: Arc<SchemaRegistry>,
    },
}

/// Outcome of one batch: accepted, rejected, failed, error text.
type Outcome = (u64, u64, u64, Option<String>);

impl Sink {
    async fn send(&self, events: &[Value]) -> Outcome {
        let n = events.len() as u64;
        match self {
            Sink::Api { http, url } => {
                let mut body = Vec::with_capacity(events.len() * 300);
                for (i, e) in events.iter().enumerate() {
                    if i > 0 {
                        body.push(b'\n');
                    }
                    let _ = serde_json::to_writer(&mut body, e);
                }
                let resp = http
                    .post(url)
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status().as_u16() == 202 => (n, 0, 0, None),
                    Ok(r) if r.status().as_u16() == 400 => {
                        let text = r.text().await.unwrap_or_default();
                        (0, n, 0, Some(format!("400: {}", truncate(&text))))
                    }
                    Ok(r) => {
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        (0, 0, n, Some(format!("{status}: {}", truncate(&text))))
                    }
                    Err(e) => (0, 0, n, Some(format!("POST {url}: {e}"))),
                }
            }
            Sink::Redis { producer, registry } => {
                let mut valid = Vec::with_capacity(events.len());
                for (i, e) in events.iter().enumerate() {
                    match registry.validate(i, e) {
                        Ok(v) => valid.push(v),
                        Err(errs) => {
                            return (0, n, 0, Some(format!("invalid event: {errs:?}")));
                        }
                    }
                }
                match producer.append(registry, &valid).await {
                    Ok(()) => (n, 0, 0, None),
                    Err(e) => (0, 0, n, Some(format!("XADD: {e}"))),
                }
            }
        }
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(300).collect()
}

/// Runs until `duration` passes or `stop` is cancelled.
pub async fn run(
    settings: &Settings,
    opts: &LoadOptions,
    stop: CancellationToken,
) -> Result<LoadReport, LoadError> {
    if !opts.rate.is_finite() || opts.rate <= 0.0 || opts.batch == 0 || opts.concurrency == 0 {
        return Err(LoadError::Setup(
            "--rate, --batch and --concurrency must be positive".into(),
        ));
    }
    let sink = Arc::new(match &opts.target {
        Target::Api(url) => Sink::Api {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .map_err(|e| LoadError::Setup(format!("http client: {e}")))?,
            url: format!("{}/v1/events", url.trim_end_matches('/')),
        },
        Target::Redis => {
            let registry = SchemaRegistry::load(&settings.paths.schemas)
                .map_err(|e| LoadError::Setup(e.to_string()))?;
            let redis = flowmeter::stream::connect(&settings.redis)
                .await
                .map_err(|e| {
                    LoadError::Setup(format!(
                        "cannot reach Redis at {}: {e} (is it running? scripts/services start)",
                        settings.redis.url
                    ))
                })?;
            Sink::Redis {
                producer: Producer::new(
                    redis,
                    Keys::new(settings.redis.prefix.clone(), settings.redis.shards),
                ),
                registry: Arc::new(registry),
            }
        }
    });

    let total = opts
        .duration
        .map(|d| (d.as_secs_f64() * opts.rate).round() as u64);
    let pb = opts
        .progress
        .map_or_else(ProgressBar::hidden, |bar| bar(total, Meter::Accepted));

    // Bounded: the dispatcher waits for free senders.
    let (tx, rx) = mpsc::channel::<(Vec<Value>, TruthTable)>(opts.concurrency * 2);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut senders = Vec::new();
    for _ in 0..opts.concurrency {
        let (rx, sink, pb) = (rx.clone(), sink.clone(), pb.clone());
        senders.push(tokio::spawn(async move {
            let mut report = LoadReport::default();
            let mut lat = DdSketch::new();
            loop {
                let job = rx.lock().await.recv().await;
                let Some((events, truth)) = job else { break };
                let t = Instant::now();
                let (acc, rej, fail, err) = sink.send(&events).await;
                lat.add(t.elapsed().as_secs_f64() * 1000.0);
                report.sent += events.len() as u64;
                report.accepted += acc;
                report.rejected += rej;
                report.failed += fail;
                if acc > 0 {
                    report.truth.merge(&truth);
                }
                if report.first_error.is_none() {
                    report.first_error = err;
                }
                pb.inc(acc);
            }
            (report, lat)
        }));
    }

    let start = Instant::now();
    let from_ms = chrono::Utc::now().timestamp_millis();
    let mut g = Generator::new(GenConfig {
        seed: opts.seed,
        kind: opts.kind,
        incident: opts.incident.map(|d| Incident {
            from_ms,
            until_ms: from_ms.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        }),
        hot: opts.hot,
        ..GenConfig::default()
    });
    let period = Duration::from_secs_f64(opts.batch as f64 / opts.rate);
    let mut tick = tokio::time::interval(period.max(Duration::from_micros(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut generated = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let n = match total {
            Some(t) if generated >= t => break,
            Some(t) => (t - generated).min(opts.batch as u64),
            None => opts.batch as u64,
        };
        let now = chrono::Utc::now().timestamp_millis();
        let mut truth = TruthTable::default();
        let events: Vec<Value> = (0..n)
            .map(|_| {
                let e = g.next_event(now);
                truth.add(&e);
                e
            })
            .collect();
        generated += n;
        if tx.send((events, truth)).await.is_err() {
            break;
        }
    }
    drop(tx);
    let mut report = LoadReport::default();
    let mut lat = DdSketch::new();
    for s in senders {
        let (r, l) = s
            .await
            .map_err(|e| LoadError::Setup(format!("sender task: {e}")))?;
        report.sent += r.sent;
        report.accepted += r.accepted;
        report.rejected += r.rejected;
        report.failed += r.failed;
        report.truth.merge(&r.truth);
        if report.first_error.is_none() {
            report.first_error = r.first_error;
        }
        lat.merge(&l);
    }
    pb.finish_and_clear();
    report.elapsed = start.elapsed();
    report.latency_p50_ms = lat.quantile(0.5).unwrap_or(0.0);
    report.latency_p99_ms = lat.quantile(0.99).unwrap_or(0.0);
    if let Some(path) = &opts.truth {
        report
            .truth
            .write(path)
            .map_err(|source| LoadError::Truth {
                path: path.display().to_string(),
                source,
            })?;
    }
    Ok(report)
}
