//! What the hub keeps per subject and the JSON views it sends: the points
//! (additive per-second and per-minute figures) and the summaries (rates,
//! error rates, quantiles, top endpoints, webrtc activity and quality) over
//! the 1-minute and 5-minute windows.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::window::{Point, Windows};
use crate::event::subject::dim_value;
use crate::expr::Expr;

/// Additive figures of http events in one bucket.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct HttpPoint {
    pub requests: u64,
    pub errors_4xx: u64,
    pub errors_5xx: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl Point for HttpPoint {
    fn merge(&mut self, o: &Self) {
        self.requests += o.requests;
        self.errors_4xx += o.errors_4xx;
        self.errors_5xx += o.errors_5xx;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
    }
}

/// Additive figures of webrtc samples in one bucket.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct WebrtcPoint {
    pub samples: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub rtt_sum_ms: f64,
    pub jitter_sum_ms: f64,
    pub loss_sum: f64,
    pub relayed: u64,
    /// Samples per quality class (the classes of the webrtc rollup).
    pub quality: Vec<u64>,
}

impl Point for WebrtcPoint {
    fn merge(&mut self, o: &Self) {
        self.samples += o.samples;
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
        self.rtt_sum_ms += o.rtt_sum_ms;
        self.jitter_sum_ms += o.jitter_sum_ms;
        self.loss_sum += o.loss_sum;
        self.relayed += o.relayed;
        if self.quality.len() < o.quality.len() {
            self.quality.resize(o.quality.len(), 0);
        }
        for (a, b) in self.quality.iter_mut().zip(&o.quality) {
            *a += b;
        }
    }
}

fn u(ev: &Map<String, Value>, k: &str) -> u64 {
    ev.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn f(ev: &Map<String, Value>, k: &str) -> Option<f64> {
    ev.get(k).and_then(Value::as_f64)
}

fn s<'a>(ev: &'a Map<String, Value>, k: &str) -> &'a str {
    ev.get(k).and_then(Value::as_str).unwrap_or("")
}

/// An http event's point and latency.
pub fn http_point(ev: &Map<String, Value>) -> (HttpPoint, Option<f64>) {
    let status = u(ev, "status");
    (
        HttpPoint {
            requests: 1,
            errors_4xx: u64::from((400..500).contains(&status)),
            errors_5xx: u64::from((500..600).contains(&status)),
            bytes_in: u(ev, "req_bytes"),
            bytes_out: u(ev, "resp_bytes"),
        },
        f(ev, "duration_ms"),
    )
}

/// Where an http subject sits. Kept beside the subject so nothing ever
/// splits a channel name back into parts (a service may contain `:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpScope {
    Overview,
    Service(Box<str>),
    Endpoint {
        service: Box<str>,
        method: Box<str>,
        endpoint: Box<str>,
    },
}

/// The subjects an http event counts in, overview first: (channel name,
/// scope). Values are normalized as the rollups' dimensions are.
pub fn http_subjects(ev: &Map<String, Value>) -> [(String, HttpScope); 3] {
    let service = dim_value(ev.get("service"), None);
    let method = dim_value(ev.get("method"), None);
    let endpoint = dim_value(ev.get("endpoint"), None);
    [
        ("http:overview".to_string(), HttpScope::Overview),
        (
            format!("http:service:{service}"),
            HttpScope::Service(service.clone()),
        ),
        (
            format!("http:endpoint:{service}:{method}:{endpoint}"),
            HttpScope::Endpoint {
                service,
                method,
                endpoint,
            },
        ),
    ]
}

/// A webrtc sample's meeting channel, meeting id and peer id (normalized as
/// the rollups' dimensions are).
pub fn webrtc_ids(ev: &Map<String, Value>) -> (String, Box<str>, Box<str>) {
    let meeting = dim_value(ev.get("meeting_id"), None);
    let peer = dim_value(ev.get("peer_id"), None);
    (format!("webrtc:meeting:{meeting}"), meeting, peer)
}

/// Quality classes: (name, condition; None = the rest).
pub type Classes = Vec<(String, Option<Expr>)>;

/// A webrtc sample's point and rtt.
pub fn webrtc_point(ev: &Map<String, Value>, classes: &Classes) -> (WebrtcPoint, Option<f64>) {
    let mut quality = vec![0; classes.len()];
    if let Some(q) = classes
        .iter()
        .position(|(_, w)| w.as_ref().is_none_or(|w| w.eval_bool(ev)))
        .and_then(|i| quality.get_mut(i))
    {
        *q = 1;
    }
    let rtt = f(ev, "rtt_ms");
    (
        WebrtcPoint {
            samples: 1,
            bytes_sent: u(ev, "bytes_sent"),
            bytes_received: u(ev, "bytes_received"),
            rtt_sum_ms: rtt.unwrap_or(0.0),
            jitter_sum_ms: f(ev, "jitter_ms").unwrap_or(0.0),
            loss_sum: f(ev, "packet_loss").unwrap_or(0.0),
            relayed: u64::from(s(ev, "candidate_type") == "relay"),
            quality,
        },
        rtt,
    )
}

/// One http subject.
#[derive(Debug)]
pub struct HttpSubject {
    pub w: Windows<HttpPoint>,
    pub scope: HttpScope,
}

impl HttpSubject {
    pub fn new(scope: HttpScope) -> Self {
        Self {
            w: Windows::default(),
            scope,
        }
    }
}

/// (meeting id, peer id) → last second it sent a sample.
pub type Peers = HashMap<(Box<str>, Box<str>), i64>;

/// One webrtc subject (overview or meeting), with the peers seen lately.
#[derive(Debug, Default)]
pub struct WebrtcSubject {
    pub w: Windows<WebrtcPoint>,
    /// The meeting id (`None` for the overview).
    pub meeting: Option<Box<str>>,
    pub peers: Peers,
}

/// `v` (an object) with `key` set to `x`; other values are returned as they are.
pub fn with_field(mut v: Value, key: &str, x: Value) -> Value {
    if let Value::Object(o) = &mut v {
        o.insert(key.to_string(), x);
    }
    v
}

/// Field `key` of object `v` (`null` when absent).
pub fn field(v: &Value, key: &str) -> Value {
    v.get(key).cloned().unwrap_or(Value::Null)
}

fn rate(n: f64, secs: i64) -> f64 {
    n / secs.max(1) as f64
}

fn quantiles(sk: &crate::sketch::DdSketch) -> Value {
    let q = |x: f64| sk.quantile(x).map(|v| (v * 100.0).round() / 100.0);
    json!({"p50": q(0.5), "p95": q(0.95), "p99": q(0.99)})
}

/// Summary of an http subject over the last `secs` seconds at `now`.
pub fn http_window(w: &Windows<HttpPoint>, now: i64, secs: i64) -> Value {
    let t = w.total(now, secs);
    let errors = t.errors_4xx + t.errors_5xx;
    json!({
        "requests_per_sec": rate(t.requests as f64, secs),
        "bytes_in_per_sec": rate(t.bytes_in as f64, secs),
        "bytes_out_per_sec": rate(t.bytes_out as f64, secs),
        "error_rate": if t.requests == 0 { 0.0 } else { errors as f64 / t.requests as f64 },
        "errors_5xx_rate": if t.requests == 0 { 0.0 } else { t.errors_5xx as f64 / t.requests as f64 },
        "requests": t.requests,
        "latency_ms": quantiles(&w.latency(now, secs)),
    })
}

/// Summary of a webrtc subject over the last `secs` seconds at `now`.
pub fn webrtc_window(w: &Windows<WebrtcPoint>, now: i64, secs: i64, classes: &Classes) -> Value {
    let t = w.total(now, secs);
    let v = webrtc_figures(&t, secs, classes);
    with_field(v, "rtt_ms", quantiles(&w.latency(now, secs)))
}

/// The additive figures of a webrtc total over `secs` seconds (rates,
/// averages, relayed share, samples per quality class); no quantiles.
pub fn webrtc_figures(t: &WebrtcPoint, secs: i64, classes: &Classes) -> Value {
    let n = t.samples.max(1) as f64;
    let quality: Map<String, Value> = classes
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (name.clone(), json!(t.quality.get(i).copied().unwrap_or(0))))
        .collect();
    json!({
        "samples": t.samples,
        "bitrate_bps": rate((t.bytes_sent + t.bytes_received) as f64 * 8.0, secs),
        "rtt_avg_ms": if t.samples == 0 { Value::Null } else { json!(t.rtt_sum_ms / n) },
        "jitter_avg_ms": if t.samples == 0 { Value::Null } else { json!(t.jitter_sum_ms / n) },
        "loss_avg": if t.samples == 0 { Value::Null } else { json!(t.loss_sum / n) },
        "relayed_share": if t.samples == 0 { 0.0 } else { t.relayed as f64 / n },
        "quality": quality,
    })
}
