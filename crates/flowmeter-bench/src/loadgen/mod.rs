//! Synthetic, reproducible traffic for both event kinds, and the exact totals
//! of what was generated (the "truth" a run is checked against).
//!
//! HTTP: endpoints with Zipf popularity, log-normal request/response sizes and
//! latencies, a status mix with occasional bursts of 5xx, users drawn from a
//! fixed population. WebRTC: meetings with a fixed set of peers, a share of
//! them relayed through TURN, and spells of degraded network.
//!
//! Everything is drawn from one seeded RNG, so a seed and a config give the
//! same events every time.

mod run;
mod truth;
pub mod verify;

pub use run::{run, BarMaker, LoadError, LoadOptions, LoadReport, Meter, Target};
pub use truth::{Difference, TruthFileError, TruthTable};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// Which kinds to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KindMix {
    Http,
    Webrtc,
    /// Four http events for every webrtc sample.
    Mixed,
}

/// Shape of the generated traffic.
#[derive(Debug, Clone)]
pub struct GenConfig {
    pub seed: u64,
    pub kind: KindMix,
    pub services: usize,
    /// Route templates per service.
    pub endpoints: usize,
    pub users: usize,
    pub meetings: usize,
    pub peers_per_meeting: usize,
    /// Share of webrtc peers whose media goes through TURN.
    pub relay_share: f64,
    /// An outage to trip an alert on purpose (`flowmeter loadgen
    /// --incident`): events stamped in `[from, until)` ms are made by it.
    pub incident: Option<Incident>,
    /// A skewed workload (`flowmeter loadgen --hot`): this share of the
    /// http events is [`HOT_SERVICE`]'s [`HOT_ENDPOINT`], one subject.
    pub hot: Option<f64>,
}

/// An outage of [`INCIDENT_SERVICE`] between two event times (unix ms):
/// every request to it answers 503, which the shipped `http_error_rate`
/// rule reports once it has held for its `for`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incident {
    pub from_ms: i64,
    pub until_ms: i64,
}

/// The service that fails during an [`Incident`].
pub const INCIDENT_SERVICE: &str = "svc-0";

/// The hot subject of a skewed workload ([`GenConfig::hot`]): service
/// `svc-0`'s most popular endpoint.
pub const HOT_SERVICE: usize = 0;
pub const HOT_ENDPOINT: usize = 0;

impl Default for GenConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            kind: KindMix::Mixed,
            services: 4,
            endpoints: 50,
            users: 5_000,
            meetings: 40,
            peers_per_meeting: 6,
            relay_share: 0.2,
            incident: None,
            hot: None,
        }
    }
}

/// Exact sums of what a generator produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Truth {
    pub http_requests: u64,
    pub http_bytes_in: u64,
    pub http_bytes_out: u64,
    pub webrtc_samples: u64,
    pub webrtc_bytes_sent: u64,
    pub webrtc_bytes_received: u64,
}

impl Truth {
    pub fn events(&self) -> u64 {
        self.http_requests + self.webrtc_samples
    }
}

const METHODS: [&str; 4] = ["GET", "GET", "POST", "PUT"];
const CANDIDATES: [&str; 3] = ["host", "srflx", "prflx"];
const RELAY_PROTOCOLS: [&str; 3] = ["udp", "tcp", "tls"];

/// A seeded event source.
pub struct Generator {
    cfg: GenConfig,
    rng: StdRng,
    /// Cumulative Zipf(1.1) weights over `endpoints`.
    zipf_cdf: Vec<f64>,
    n: u64,
    /// Events left in the current 5xx burst.
    burst: u32,
    /// Events left in the current degraded-network spell.
    degraded: u32,
    pub truth: Truth,
}

impl Generator {
    pub fn new(cfg: GenConfig) -> Self {
        let endpoints = cfg.endpoints.max(1);
        let mut acc = 0.0;
        let mut zipf_cdf: Vec<f64> = (1..=endpoints)
            .map(|k| {
                acc += 1.0 / (k as f64).powf(1.1);
                acc
            })
            .collect();
        for w in &mut zipf_cdf {
            *w /= acc;
        }
        Self {
            rng: StdRng::seed_from_u64(cfg.seed),
            cfg,
            zipf_cdf,
            n: 0,
            burst: 0,
            degraded: 0,
            truth: Truth::default(),
        }
    }

    /// The next event, stamped `ts_ms`.
    pub fn next_event(&mut self, ts_ms: i64) -> Value {
        self.n += 1;
        let webrtc = match self.cfg.kind {
            KindMix::Http => false,
            KindMix::Webrtc => true,
            KindMix::Mixed => self.n % 5 == 0,
        };
        if webrtc {
            self.webrtc(ts_ms)
        } else {
            self.http(ts_ms)
        }
    }

    fn normal(&mut self) -> f64 {
        // Box-Muller; 1 - u keeps the logarithm finite.
        let u: f64 = 1.0 - self.rng.random::<f64>();
        let v: f64 = self.rng.random();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    fn log_normal(&mut self, median: f64, sigma: f64) -> f64 {
        median * (sigma * self.normal()).exp()
    }

    fn http(&mut self, ts_ms: i64) -> Value {
        let hot = self
            .cfg
            .hot
            .is_some_and(|share| self.rng.random_bool(share.clamp(0.0, 1.0)));
        let u: f64 = self.rng.random();
        let ep = self.zipf_cdf.partition_point(|&c| c < u);
        let service = self.rng.random_range(0..self.cfg.services.max(1));
        let (ep, service) = if hot {
            (HOT_ENDPOINT, HOT_SERVICE)
        } else {
            (ep, service)
        };
        if self.burst == 0 && self.rng.random_ratio(1, 20_000) {
            self.burst = self.rng.random_range(50..500);
        }
        let outage = service == 0
            && self
                .cfg
                .incident
                .is_some_and(|i| (i.from_ms..i.until_ms).contains(&ts_ms));
        let status = if outage {
            503
        } else if self.burst > 0 {
            self.burst -= 1;
            if self.rng.random_bool(0.7) {
                503
            } else {
                200
            }
        } else {
            match self.rng.random_range(0..1000) {
                0..=939 => 200,
                940..=959 => 304,
                960..=984 => 404,
                985..=994 => 401,
                _ => 500,
            }
        };
        let req_bytes = self.log_normal(400.0, 0.6).min(1e7) as u64;
        let resp_bytes = if status == 304 {
            0
        } else {
            self.log_normal(4_000.0, 1.2).min(1e9) as u64
        };
        let duration = (self.log_normal(25.0, 0.8) * 1000.0).round() / 1000.0;
        let user = self.rng.random_range(0..self.cfg.users.max(1));
        let method = METHODS[self.rng.random_range(0..METHODS.len())];
        self.truth.http_requests += 1;
        self.truth.http_bytes_in += req_bytes;
        self.truth.http_bytes_out += resp_bytes;
        json!({
            "kind": "http", "ts": ts_ms,
            "service": format!("svc-{service}"), // svc-0 is INCIDENT_SERVICE
            "endpoint": format!("/api/r{ep}/:id"),
            "method": method, "status": status,
            "req_bytes": req_bytes, "resp_bytes": resp_bytes,
            "duration_ms": duration, "user_id": format!("u{user}"),
        })
    }

    fn webrtc(&mut self, ts_ms: i64) -> Value {
        let meeting = self.rng.random_range(0..self.cfg.meetings.max(1));
        let peer = self.rng.random_range(0..self.cfg.peers_per_meeting.max(1));
        // A peer's path is a property of the peer, not of the sample; the
        // relayed peers are spread evenly over the meetings (every
        // 1/relay_share-th peer in meeting order), so no meeting is mostly
        // relayed by chance and the shipped relayed-share rule stays quiet.
        let idx = (meeting * self.cfg.peers_per_meeting.max(1) + peer) as f64;
        let relayed =
            ((idx + 1.0) * self.cfg.relay_share).floor() > (idx * self.cfg.relay_share).floor();
        if self.degraded == 0 && self.rng.random_ratio(1, 2_000) {
            self.degraded = self.rng.random_range(20..200);
        }
        let bad = if self.degraded > 0 {
            self.degraded -= 1;
            3.0
        } else {
            1.0
        };
        let sent = self.log_normal(60_000.0, 0.5).min(1e9) as u64;
        let received = self.log_normal(55_000.0, 0.5).min(1e9) as u64;
        let rtt =
            (self.log_normal(if relayed { 90.0 } else { 45.0 }, 0.4) * bad * 10.0).round() / 10.0;
        let jitter = (self.log_normal(6.0, 0.5) * bad * 10.0).round() / 10.0;
        let loss = (self.rng.random::<f64>() * 0.01 * bad * bad).min(1.0);
        self.truth.webrtc_samples += 1;
        self.truth.webrtc_bytes_sent += sent;
        self.truth.webrtc_bytes_received += received;
        let mut ev = json!({
            "kind": "webrtc", "ts": ts_ms,
            "meeting_id": format!("m-{meeting}"),
            "peer_id": format!("m-{meeting}-p{peer}"),
            "user_id": format!("u{}", (meeting * 7 + peer) % self.cfg.users.max(1)),
            "bytes_sent": sent, "bytes_received": received,
            "rtt_ms": rtt, "jitter_ms": jitter,
            "packet_loss": (loss * 10_000.0).round() / 10_000.0,
            "candidate_type": if relayed { "relay" } else { CANDIDATES[peer % CANDIDATES.len()] },
        });
        if relayed {
            ev["relay_protocol"] = json!(RELAY_PROTOCOLS[meeting % RELAY_PROTOCOLS.len()]);
        }
        ev
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowmeter::event::SchemaRegistry;

    #[test]
    fn reproducible_and_valid() {
        let schemas = SchemaRegistry::load(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../schemas"
        )))
        .expect("schemas");
        let run = || {
            let mut g = Generator::new(GenConfig::default());
            let evs: Vec<Value> = (0..5_000)
                .map(|i| g.next_event(1_772_359_200_000 + i))
                .collect();
            (evs, g.truth)
        };
        let (a, ta) = run();
        let (b, tb) = run();
        assert_eq!(a, b);
        assert_eq!(ta, tb);
        assert_eq!(ta.events(), 5_000);
        assert_eq!(ta.webrtc_samples, 1_000);
        for (i, e) in a.iter().enumerate() {
            if let Err(errs) = schemas.validate(i, e) {
                panic!("generated event {e} is invalid: {errs:?}");
            }
        }
        let sum_out: u64 = a
            .iter()
            .filter_map(|e| e.get("resp_bytes").and_then(Value::as_u64))
            .sum();
        assert_eq!(sum_out, ta.http_bytes_out);
        // Zipf: the most popular endpoint gets far more than the median one.
        let hits = |ep: &str| a.iter().filter(|e| e["endpoint"] == ep).count();
        assert!(hits("/api/r0/:id") > 5 * hits("/api/r25/:id").max(1));
    }

    #[test]
    fn a_hot_share_goes_to_one_subject() {
        let mut g = Generator::new(GenConfig {
            kind: KindMix::Http,
            hot: Some(0.8),
            ..GenConfig::default()
        });
        let evs: Vec<Value> = (0..10_000).map(|i| g.next_event(i)).collect();
        let hot = evs
            .iter()
            .filter(|e| e["service"] == "svc-0" && e["endpoint"] == "/api/r0/:id")
            .count();
        // 80 % by choice, plus the subject's own share of the other 20 %
        assert!((8_000..8_500).contains(&hot), "{hot}");
    }
}
