//! The realtime hub: sliding windows per channel fed from the streams, and
//! the WebSocket protocol of `GET /v1/ws` (docs/websocket.md).
//!
//! - `window.rs`: per-subject 1-s / 1-min buckets and latency slots;
//! - `view.rs`: points and summaries per kind;
//! - `ws.rs`: connections: subscribe, snapshot, coalesced updates, resume,
//!   slow subscribers, limits.
//!
//! The hub **tails** the shard streams with plain `XREAD` (no consumer group:
//! a view needs no acknowledgements, and every instance sees every entry).
//! At start it reads back `hub.rebuild_secs` of history so its first
//! snapshot is complete. Buckets are keyed by entry-id time, so instances
//! reading the same streams hold the same numbers. Every second (after
//! `hub.tick_grace_ms`) it closes the previous second: for each channel with
//! subscribers it appends an update (sequence number = that second, unix
//! time) to the channel's ring of `hub.ring_secs` updates and wakes the
//! connections.

mod view;
mod window;
pub mod ws;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::HubConfig;
use crate::event::SchemaRegistry;
use crate::processor::rollup::{decode, MeasureDef};
use crate::processor::{ProcessorConfig, ProcessorRegistry};
use crate::stream::{Keys, Redis, StreamError, StreamId};
use view::{Classes, HttpSubject, WebrtcSubject};
use window::{MINUTES, SECONDS};

/// A channel name, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Channel {
    Http(String),
    Webrtc(String),
    /// Every active meeting with its figures (the dashboard's meetings list).
    Meetings,
    Alerts,
}

impl Channel {
    /// Parses `http:overview`, `http:service:<name>`,
    /// `http:endpoint:<service>:<method>:<route>`, `webrtc:overview`,
    /// `webrtc:meeting:<id>`, `webrtc:meetings`, `alerts`.
    pub fn parse(name: &str) -> Result<Channel, String> {
        let bad = || {
            format!("unknown channel {name:?}: use http:overview, http:service:<name>, http:endpoint:<service>:<method>:<route>, webrtc:overview, webrtc:meeting:<id>, webrtc:meetings or alerts")
        };
        if name.len() > 512 {
            return Err(format!(
                "channel name longer than 512 bytes: {}…",
                &name[..40.min(name.len())]
            ));
        }
        match name.split_once(':') {
            _ if name == "alerts" => Ok(Channel::Alerts),
            _ if name == "webrtc:meetings" => Ok(Channel::Meetings),
            Some(("http", "overview")) => Ok(Channel::Http(name.into())),
            Some(("http", rest)) => match rest.split_once(':') {
                Some(("service", s)) if !s.is_empty() => Ok(Channel::Http(name.into())),
                Some(("endpoint", r))
                    if r.splitn(3, ':').filter(|p| !p.is_empty()).count() == 3 =>
                {
                    Ok(Channel::Http(name.into()))
                }
                _ => Err(bad()),
            },
            Some(("webrtc", "overview")) => Ok(Channel::Webrtc(name.into())),
            Some(("webrtc", rest)) => match rest.split_once(':') {
                Some(("meeting", m)) if !m.is_empty() => Ok(Channel::Webrtc(name.into())),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Channel::Http(n) | Channel::Webrtc(n) => n,
            Channel::Meetings => "webrtc:meetings",
            Channel::Alerts => "alerts",
        }
    }
}

/// An update: the points of one closed second (and the minute's point) and
/// the summary after it.
#[derive(Debug)]
pub struct Update {
    pub seq: i64,
    pub point: Value,
    pub summary: Value,
    /// The serialized one-point update (after `seq − 1`), shared by every
    /// connection that is up to date: built once per channel and second.
    text: std::sync::OnceLock<axum::extract::ws::Utf8Bytes>,
}

impl Update {
    /// The `update` message of just this second, serialized once.
    pub fn single(&self, channel: &str) -> axum::extract::ws::Utf8Bytes {
        self.text
            .get_or_init(|| {
                json!({
                    "type": "update", "channel": channel, "seq": self.seq, "after": self.seq - 1,
                    "resumed": false, "points": [self.point], "summary": self.summary,
                })
                .to_string()
                .into()
            })
            .clone()
    }
}

/// Windows of every subject.
struct State {
    http: HashMap<String, HttpSubject>,
    webrtc: HashMap<String, WebrtcSubject>,
    classes: Classes,
    max_subjects: usize,
    /// Events not given a subject of their own because of `max_subjects`.
    subjects_refused: u64,
    /// The hub holds every event since this unix second (after its rebuild).
    complete_since: i64,
    /// Open alerts by id, from the alert stream.
    open_alerts: std::collections::BTreeMap<u64, Value>,
}

/// The shared hub.
pub struct Hub {
    cfg: HubConfig,
    state: Mutex<State>,
    rings: RwLock<HashMap<String, VecDeque<Arc<Update>>>>,
    /// channel → (subscribers, last second it had one). A channel stays
    /// warm (updates computed, ring kept) for `ring_secs` after its last
    /// subscriber leaves, so a reconnecting client can resume.
    subscribers: Mutex<HashMap<String, (usize, i64)>>,
    tick: watch::Sender<i64>,
    /// Connections per token (limits).
    pub(crate) connections: Mutex<HashMap<String, usize>>,
    /// Alert announcements, pushed at once to `alerts` subscribers.
    alerts: tokio::sync::broadcast::Sender<Arc<Value>>,
}

/// Alert announcements buffered per slow subscriber before it is sent a
/// snapshot of the open alerts instead.
const ALERT_BUFFER: usize = 256;

/// Quality classes of the first `classify` measure of a processor reading
/// `webrtc` (the rollup's), so live and historical classes agree.
fn quality_classes(processors: &ProcessorRegistry) -> Classes {
    for p in &processors.processors {
        let ProcessorConfig::Rollup(def) = p else {
            continue;
        };
        if !def.kinds.iter().any(|k| k == "webrtc") {
            continue;
        }
        for t in &def.tables {
            for m in &t.measures {
                if let MeasureDef::Classify { classes, .. } = m {
                    return classes
                        .iter()
                        .map(|c| {
                            (
                                c.column.trim_start_matches("quality_").to_string(),
                                c.filter.clone(),
                            )
                        })
                        .collect();
                }
            }
        }
    }
    Vec::new()
}

impl Hub {
    pub fn new(cfg: HubConfig, processors: &ProcessorRegistry) -> Arc<Hub> {
        let (tick, _) = watch::channel(0);
        Arc::new(Hub {
            state: Mutex::new(State {
                http: HashMap::new(),
                webrtc: HashMap::new(),
                classes: quality_classes(processors),
                max_subjects: cfg.max_subjects,
                subjects_refused: 0,
                complete_since: 0,
                open_alerts: std::collections::BTreeMap::new(),
            }),
            cfg,
            rings: RwLock::new(HashMap::new()),
            subscribers: Mutex::new(HashMap::new()),
            tick,
            connections: Mutex::new(HashMap::new()),
            alerts: tokio::sync::broadcast::channel(ALERT_BUFFER).0,
        })
    }

    /// Live alert announcements.
    pub fn alert_feed(&self) -> tokio::sync::broadcast::Receiver<Arc<Value>> {
        self.alerts.subscribe()
    }

    /// An announcement from the alert stream: keeps the open set, and pushes
    /// it when it is recent (not history read back at start).
    fn on_alert(&self, st: &mut State, id: StreamId, data: Option<&str>) {
        let Some(msg) = data.and_then(|d| serde_json::from_str::<Value>(d).ok()) else {
            return;
        };
        let Some(aid) = msg["alert"]["id"].as_u64() else {
            return;
        };
        match msg["state"].as_str() {
            Some("fired") => {
                st.open_alerts.insert(aid, msg["alert"].clone());
            }
            Some("resolved") => {
                st.open_alerts.remove(&aid);
            }
            _ => return,
        }
        let age = chrono::Utc::now().timestamp_millis() - id.ms as i64;
        if age < 10_000 {
            let _ = self.alerts.send(Arc::new(msg));
        }
    }

    /// The metric of `rule` for each subject in its scope at second `now`:
    /// (subject, value, events in the window).
    pub fn rule_values(&self, rule: &crate::alert::Rule, now: i64) -> Vec<(String, f64, u64)> {
        use crate::alert::{Metric, Scope};
        let st = self.lock();
        let secs = rule.window_secs as i64;
        let prefix = match (rule.protocol.as_str(), rule.scope) {
            ("http", Scope::Overview) => "http:overview",
            ("http", Scope::Service) => "http:service:",
            ("http", Scope::Endpoint) => "http:endpoint:",
            ("webrtc", Scope::Overview) => "webrtc:overview",
            ("webrtc", Scope::Meeting) => "webrtc:meeting:",
            _ => return Vec::new(),
        };
        let mut out = Vec::new();
        if rule.protocol == "http" {
            for (k, sub) in st.http.iter().filter(|(k, _)| k.starts_with(prefix)) {
                let t = sub.w.total(now, secs);
                let n = t.requests;
                let v = match rule.metric {
                    Metric::Bandwidth => (t.bytes_in + t.bytes_out) as f64 / secs as f64,
                    Metric::RequestsPerSec => n as f64 / secs as f64,
                    Metric::ErrorRate if n > 0 => (t.errors_4xx + t.errors_5xx) as f64 / n as f64,
                    Metric::ErrorRate => 0.0,
                    Metric::P95LatencyMs => sub.w.latency(now, secs).quantile(0.95).unwrap_or(0.0),
                    Metric::RelayedShare => continue,
                };
                out.push((k.clone(), v, n));
            }
        } else {
            for (k, sub) in st.webrtc.iter().filter(|(k, _)| k.starts_with(prefix)) {
                let t = sub.w.total(now, secs);
                let n = t.samples;
                let v = match rule.metric {
                    Metric::Bandwidth => (t.bytes_sent + t.bytes_received) as f64 / secs as f64,
                    Metric::RelayedShare if n > 0 => t.relayed as f64 / n as f64,
                    Metric::RelayedShare => 0.0,
                    Metric::P95LatencyMs => sub.w.latency(now, secs).quantile(0.95).unwrap_or(0.0),
                    _ => continue,
                };
                out.push((k.clone(), v, n));
            }
        }
        out
    }

    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    /// Wakes on every closed second (its unix time).
    pub fn ticks(&self) -> watch::Receiver<i64> {
        self.tick.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Folds one stream entry in (kind from the stream), at its id's time.
    fn apply(&self, st: &mut State, kind: &str, id: StreamId, data: Option<&str>) {
        let Ok((ev, _ts)) = decode(data) else {
            return; // the rollup dead-letters it; a view just skips it
        };
        let ms = id.ms as i64;
        let room = st.http.len() + st.webrtc.len() < st.max_subjects;
        match kind {
            "http" => {
                let (p, lat) = view::http_point(&ev);
                for subject in view::http_subjects(&ev) {
                    let known = st.http.contains_key(&subject);
                    if !known && !room && subject != "http:overview" {
                        st.subjects_refused += 1;
                        continue;
                    }
                    st.http.entry(subject).or_default().w.add(ms, &p, lat);
                }
            }
            "webrtc" => {
                let (p, rtt) = view::webrtc_point(&ev, &st.classes);
                let meeting = ev.get("meeting_id").and_then(Value::as_str).unwrap_or("");
                let peer = ev.get("peer_id").and_then(Value::as_str).unwrap_or("");
                let sec = ms.div_euclid(1000);
                for subject in [
                    "webrtc:overview".to_string(),
                    format!("webrtc:meeting:{meeting}"),
                ] {
                    let known = st.webrtc.contains_key(&subject);
                    if !known && !room && subject != "webrtc:overview" {
                        st.subjects_refused += 1;
                        continue;
                    }
                    let sub = st.webrtc.entry(subject).or_default();
                    sub.w.add(ms, &p, rtt);
                    let seen = sub
                        .peers
                        .entry(format!("{meeting}\u{1f}{peer}"))
                        .or_insert_with(|| (meeting.to_string(), sec));
                    seen.1 = seen.1.max(sec);
                }
            }
            _ => {}
        }
    }

    /// The summary of a channel at second `now`.
    fn summary(&self, st: &State, channel: &Channel, now: i64) -> Value {
        match channel {
            Channel::Http(name) => {
                let Some(sub) = st.http.get(name) else {
                    return json!({"1m": Value::Null, "5m": Value::Null, "top_endpoints": []});
                };
                let mut v = json!({
                    "1m": view::http_window(&sub.w, now, 60),
                    "5m": view::http_window(&sub.w, now, SECONDS),
                });
                if !name.starts_with("http:endpoint:") {
                    let scope = match name.strip_prefix("http:service:") {
                        Some(s) => format!("http:endpoint:{s}:"),
                        None => "http:endpoint:".to_string(),
                    };
                    let mut top: Vec<(f64, &str)> = st
                        .http
                        .iter()
                        .filter(|(k, _)| k.starts_with(&scope))
                        .map(|(k, s)| {
                            let t = s.w.total(now, 60);
                            ((t.bytes_in + t.bytes_out) as f64 / 60.0, k.as_str())
                        })
                        .filter(|(b, _)| *b > 0.0)
                        .collect();
                    top.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
                    top.truncate(self.cfg.top_endpoints);
                    v["top_endpoints"] = top
                        .into_iter()
                        .map(|(b, k)| {
                            let parts: Vec<&str> = k.splitn(5, ':').collect();
                            json!({"service": parts.get(2), "method": parts.get(3),
                                   "endpoint": parts.get(4), "bytes_per_sec": b})
                        })
                        .collect();
                }
                v
            }
            Channel::Webrtc(name) => {
                let Some(sub) = st.webrtc.get(name) else {
                    return json!({"1m": Value::Null, "5m": Value::Null, "active_meetings": 0, "active_peers": 0});
                };
                let active_from = now - self.cfg.active_secs as i64;
                let active: Vec<&(String, i64)> = sub
                    .peers
                    .values()
                    .filter(|(_, s)| *s > active_from)
                    .collect();
                let mut meetings: Vec<&str> = active.iter().map(|(m, _)| m.as_str()).collect();
                meetings.sort_unstable();
                meetings.dedup();
                json!({
                    "1m": view::webrtc_window(&sub.w, now, 60, &st.classes),
                    "5m": view::webrtc_window(&sub.w, now, SECONDS, &st.classes),
                    "active_meetings": meetings.len(),
                    "active_peers": active.len(),
                })
            }
            Channel::Meetings => self.meetings(st, now),
            Channel::Alerts => json!({}),
        }
    }

    /// Every meeting with a sample within `hub.active_secs` of `now`, with
    /// its last minute's figures and dominant quality class, busiest first.
    fn meetings(&self, st: &State, now: i64) -> Value {
        let active_from = now - self.cfg.active_secs as i64;
        let names: Vec<&str> = st.classes.iter().map(|(n, _)| n.as_str()).collect();
        let mut list: Vec<(f64, &str, Value)> = st
            .webrtc
            .iter()
            .filter_map(|(k, sub)| {
                let id = k.strip_prefix("webrtc:meeting:")?;
                let peers = sub.peers.values().filter(|(_, s)| *s > active_from).count();
                if peers == 0 {
                    return None;
                }
                // one total per meeting and second; the list shows no quantiles
                let t = sub.w.total(now, 60);
                let w = view::webrtc_figures(&t, 60, &st.classes);
                let dominant = t
                    .quality
                    .iter()
                    .enumerate()
                    .max_by_key(|(i, n)| (**n, std::cmp::Reverse(*i)))
                    .filter(|(_, n)| **n > 0)
                    .and_then(|(i, _)| names.get(i).copied());
                let bitrate = w["bitrate_bps"].as_f64().unwrap_or(0.0);
                Some((
                    bitrate,
                    id,
                    json!({
                        "meeting_id": id, "peers": peers, "samples": t.samples,
                        "bitrate_bps": bitrate, "relayed_share": w["relayed_share"],
                        "rtt_avg_ms": w["rtt_avg_ms"], "jitter_avg_ms": w["jitter_avg_ms"],
                        "loss_avg": w["loss_avg"], "quality": dominant,
                    }),
                ))
            })
            .collect();
        list.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
        json!({
            "active_meetings": list.len(),
            "classes": names,
            "meetings": list.into_iter().map(|(_, _, v)| v).collect::<Vec<_>>(),
        })
    }

    /// The additive point of `channel` for second `sec`, with its time.
    fn point(&self, st: &State, channel: &Channel, sec: i64) -> Value {
        let mut v = match channel {
            Channel::Http(n) => st
                .http
                .get(n)
                .map(|s| json!(s.w.second(sec)))
                .unwrap_or_else(|| json!(view::HttpPoint::default())),
            Channel::Webrtc(n) => st
                .webrtc
                .get(n)
                .map(|s| json!(s.w.second(sec)))
                .unwrap_or_else(|| json!(view::WebrtcPoint::default())),
            Channel::Meetings | Channel::Alerts => json!({}),
        };
        v["t"] = json!(sec * 1000);
        v
    }

    /// A full snapshot of `channel` as of the last closed second.
    pub fn snapshot(&self, channel: &Channel, full: bool) -> Value {
        let now = *self.tick.borrow();
        let st = self.lock();
        if *channel == Channel::Alerts {
            return json!({
                "type": "snapshot", "channel": "alerts", "seq": now, "full": full,
                "open": st.open_alerts.values().collect::<Vec<_>>(),
            });
        }
        let (seconds, minutes) = match channel {
            Channel::Http(n) => match st.http.get(n) {
                Some(s) => series(&s.w, now),
                None => series(&window::Windows::<view::HttpPoint>::default(), now),
            },
            Channel::Webrtc(n) => match st.webrtc.get(n) {
                Some(s) => series(&s.w, now),
                None => series(&window::Windows::<view::WebrtcPoint>::default(), now),
            },
            Channel::Meetings | Channel::Alerts => (json!({}), json!({})),
        };
        json!({
            "type": "snapshot",
            "channel": channel.name(),
            "seq": now,
            "full": full,
            "complete_since": st.complete_since * 1000,
            "series": {"1s": seconds, "1m": minutes},
            "summary": self.summary(&st, channel, now),
        })
    }

    /// Ring entries of `channel` after `seq`: `Some(updates)` (maybe empty)
    /// when the ring still covers `seq + 1`, `None` when the gap is too old.
    pub fn since(&self, channel: &str, seq: i64) -> Option<Vec<Arc<Update>>> {
        let rings = self.rings.read().unwrap_or_else(|p| p.into_inner());
        let now = *self.tick.borrow();
        if seq >= now {
            return Some(Vec::new());
        }
        let ring = rings.get(channel)?;
        let first = ring.front()?.seq;
        if first > seq + 1 {
            return None;
        }
        Some(ring.iter().filter(|u| u.seq > seq).cloned().collect())
    }

    /// Counts a subscriber of `channel` (the hub only computes updates for
    /// channels someone watches).
    pub fn subscribe(&self, channel: &str) {
        let now = *self.tick.borrow();
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        let e = subs.entry(channel.to_string()).or_insert((0, now));
        e.0 += 1;
        e.1 = now;
    }

    pub fn unsubscribe(&self, channel: &str) {
        let now = *self.tick.borrow();
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = subs.get_mut(channel) {
            e.0 = e.0.saturating_sub(1);
            e.1 = now;
        }
    }

    /// Closes second `sec`: one update per watched channel, then wakes the connections.
    fn close_second(&self, sec: i64) {
        let watched: Vec<String> = {
            let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
            let warm_from = sec - self.cfg.ring_secs as i64;
            subs.retain(|_, (n, last)| *n > 0 || *last >= warm_from);
            for (n, last) in subs.values_mut() {
                if *n > 0 {
                    *last = sec;
                }
            }
            subs.keys().cloned().collect()
        };
        let updates: Vec<(String, Update)> = {
            let mut st = self.lock();
            for sub in st.http.values_mut() {
                sub.w.expire(sec);
            }
            for sub in st.webrtc.values_mut() {
                sub.w.expire(sec);
                let from = sec - MINUTES * 60;
                sub.peers.retain(|_, (_, s)| *s > from);
            }
            st.http
                .retain(|k, s| k == "http:overview" || !s.w.is_idle(sec));
            st.webrtc
                .retain(|k, s| k == "webrtc:overview" || !s.w.is_idle(sec));
            watched
                .into_iter()
                .filter_map(|name| {
                    let ch = Channel::parse(&name).ok()?;
                    (ch != Channel::Alerts).then(|| {
                        let u = Update {
                            seq: sec,
                            point: self.point(&st, &ch, sec),
                            summary: self.summary(&st, &ch, sec),
                            text: std::sync::OnceLock::new(),
                        };
                        (name, u)
                    })
                })
                .collect()
        };
        {
            let mut rings = self.rings.write().unwrap_or_else(|p| p.into_inner());
            let keep = self.cfg.ring_secs.max(1);
            let watched: std::collections::HashSet<&String> =
                updates.iter().map(|(n, _)| n).collect();
            rings.retain(|k, _| watched.contains(k));
            for (name, u) in updates {
                let ring = rings.entry(name).or_default();
                if ring.back().is_some_and(|b| b.seq != sec - 1) {
                    ring.clear(); // a hole (the hub stalled): resumes need snapshots
                }
                ring.push_back(Arc::new(u));
                while ring.len() > keep {
                    ring.pop_front();
                }
            }
        }
        self.tick.send_replace(sec);
    }

    /// Runs the feed and the clock until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        redis: Redis,
        keys: Keys,
        schemas: Arc<SchemaRegistry>,
        shutdown: CancellationToken,
    ) {
        let streams: Vec<(String, String)> = ["http", "webrtc"]
            .iter()
            .filter(|k| schemas.kind_index(k).is_some())
            .flat_map(|k| {
                keys.shards_of(k)
                    .into_iter()
                    .map(move |s| (k.to_string(), s))
            })
            .map(|(k, s)| (k, keys.stream(&s)))
            .chain(std::iter::once(("alerts".to_string(), keys.alerts())))
            .collect();
        let clock = {
            let hub = self.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move { hub.clock(stop).await })
        };
        self.feed(redis, streams, shutdown).await;
        let _ = clock.await;
    }

    async fn clock(&self, shutdown: CancellationToken) {
        loop {
            let now = chrono::Utc::now().timestamp_millis();
            let grace = self.cfg.tick_grace_ms as i64;
            // wake at the next second boundary + grace
            let next = (now - grace).div_euclid(1000) * 1000 + 1000 + grace;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis((next - now).max(1) as u64)) => {}
            }
            let closed = (next - grace).div_euclid(1000) - 1;
            self.close_second(closed);
        }
    }

    async fn feed(
        &self,
        redis: Redis,
        streams: Vec<(String, String)>,
        shutdown: CancellationToken,
    ) {
        let start_ms = chrono::Utc::now().timestamp_millis() - self.cfg.rebuild_secs as i64 * 1000;
        // the alert stream is read whole (it is capped), so alerts opened
        // before the rebuild window still count as open
        let mut ids: Vec<String> = streams
            .iter()
            .map(|(k, _)| {
                if k == "alerts" {
                    "0-0".to_string()
                } else {
                    format!("{}-0", start_ms.max(0))
                }
            })
            .collect();
        let mut rebuilt = 0u64;
        let mut rebuilding = true;
        self.lock().complete_since = start_ms.div_euclid(1000);
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            match self.read_once(&redis, &streams, &mut ids).await {
                Ok(0) => {
                    if rebuilding {
                        rebuilding = false;
                        tracing::info!(entries = rebuilt, "hub windows rebuilt from the streams");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(self.cfg.poll_ms)) => {}
                    }
                }
                Ok(n) => {
                    if rebuilding {
                        rebuilt += n;
                        if rebuilt > self.cfg.rebuild_max_entries {
                            // too much history: skip ahead, say what is complete
                            let now = chrono::Utc::now().timestamp_millis();
                            for id in ids.iter_mut() {
                                *id = format!("{now}-0");
                            }
                            self.lock().complete_since = now.div_euclid(1000);
                            tracing::warn!(entries = rebuilt, limit = self.cfg.rebuild_max_entries, "hub rebuild stopped at hub.rebuild_max_entries; windows are complete from now on");
                            rebuilding = false;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "hub: reading the streams failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
    }

    /// One XREAD over every stream from `ids`; folds the entries in and
    /// advances `ids`. Returns the entries read.
    async fn read_once(
        &self,
        redis: &Redis,
        streams: &[(String, String)],
        ids: &mut [String],
    ) -> Result<u64, StreamError> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(self.cfg.read_count).arg("STREAMS");
        for (_, s) in streams {
            cmd.arg(s);
        }
        for id in ids.iter() {
            cmd.arg(id);
        }
        let mut conn = redis.conn.clone();
        let reply: Option<XreadReply> = redis.run(cmd.query_async(&mut conn)).await?;
        let mut n = 0u64;
        let mut st = self.lock();
        for (stream, entries) in reply.unwrap_or_default() {
            let Some(i) = streams.iter().position(|(_, s)| *s == stream) else {
                continue;
            };
            let kind = streams[i].0.clone();
            for (id, fields) in entries {
                n += 1;
                let Ok(sid) = id.parse::<StreamId>() else {
                    continue;
                };
                let data = fields
                    .iter()
                    .find(|(k, _)| k == "data")
                    .map(|(_, v)| v.as_str());
                if kind == "alerts" {
                    self.on_alert(&mut st, sid, data);
                } else {
                    self.apply(&mut st, &kind, sid, data);
                }
                ids[i] = id;
            }
        }
        Ok(n)
    }
}

/// XREAD: per stream, its (id, field/value pairs) entries.
type XreadReply = Vec<(String, Vec<(String, Vec<(String, String)>)>)>;

/// Column-oriented series (one array per field, far smaller than one
/// object per point): the 1-s series as `{start, step_ms, <field>: [...]}`,
/// the 1-min series as `{t: [...], <field>: [...], p50/p95/p99: [...]}`.
fn series<P: window::Point>(w: &window::Windows<P>, now: i64) -> (Value, Value) {
    fn columns(points: impl Iterator<Item = Value>) -> serde_json::Map<String, Value> {
        let mut cols = serde_json::Map::new();
        for p in points {
            if let Value::Object(o) = p {
                for (k, x) in o {
                    if let Value::Array(a) =
                        cols.entry(k).or_insert_with(|| Value::Array(Vec::new()))
                    {
                        a.push(x);
                    }
                }
            }
        }
        cols
    }
    let secs = w.seconds(now, SECONDS);
    let start = secs.first().map_or(now * 1000, |(s, _)| s * 1000);
    let mut seconds = columns(secs.into_iter().map(|(_, p)| json!(p)));
    seconds.insert("start".into(), json!(start));
    seconds.insert("step_ms".into(), json!(1000));
    let mins = w.minutes();
    let t: Vec<i64> = mins.iter().map(|(t, _, _)| *t).collect();
    let q =
        |i: usize| -> Vec<Option<f64>> { mins.iter().map(|(_, _, q)| q.map(|q| q[i])).collect() };
    let (p50, p95, p99) = (q(0), q(1), q(2));
    let mut minutes = columns(mins.into_iter().map(|(_, p, _)| json!(p)));
    minutes.insert("t".into(), json!(t));
    minutes.insert("p50".into(), json!(p50));
    minutes.insert("p95".into(), json!(p95));
    minutes.insert("p99".into(), json!(p99));
    (Value::Object(seconds), Value::Object(minutes))
}
