//! The hub's worker thread and the windows it owns. Every command (entries
//! to fold, a second to close, a snapshot, an alert query) runs here, one at
//! a time, off the async runtime; the runtime's tasks only wait for room in
//! the bounded queue or for the answer.
//!
//! Bounds on what it holds: `hub.max_subjects` subjects, of which at most
//! `hub.max_new_subjects_per_hour` new ones per hour (past either, events
//! count in the overviews only); `hub.max_peers` peers, each forgotten
//! `hub.active_secs` after its last sample; a summary lists at most
//! `hub.top_endpoints` endpoints and `hub.max_meetings_listed` meetings.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::channels::{update_text, Closed};
use super::view::{self, Classes, HttpScope, HttpSubject, WebrtcSubject};
use super::window::{self, Windows, MINUTES, SECONDS};
use super::{Channel, Shared};
use crate::alert::{Metric, Rule, Scope};
use crate::config::HubConfig;
use crate::processor::{ProcessorConfig, ProcessorRegistry};
use crate::stream::StreamId;
use crate::telemetry::metrics;
use crate::{event::decode_entry as decode, processor::rollup::MeasureDef};

/// Which stream an entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Feed {
    Http,
    Webrtc,
    Alerts,
}

/// One stream entry for the worker.
#[derive(Debug)]
pub(super) struct Entry {
    pub feed: Feed,
    pub id: StreamId,
    pub data: Option<String>,
}

/// What the worker does.
pub(super) enum Command {
    /// Fold entries in (in stream order).
    Fold(Vec<Entry>),
    /// Close this second: compute and publish every watched channel.
    Close(i64),
    /// The windows hold every event since this second.
    CompleteSince(i64),
    Snapshot {
        channel: Channel,
        reply: oneshot::Sender<(i64, Arc<str>)>,
    },
    RuleValues {
        rule: Box<Rule>,
        now: i64,
        reply: oneshot::Sender<Vec<(String, f64, u64)>>,
    },
    /// Whether `channel` is known to have had no events after second `seq`
    /// (for a client resuming a channel without data).
    Quiet {
        channel: Channel,
        seq: i64,
        reply: oneshot::Sender<bool>,
    },
}

/// Snapshots kept for the current second (one per channel however many
/// clients ask); the cache is emptied at each close, or when this full.
const SNAPSHOT_CACHE: usize = 256;

/// Starts the worker thread; it ends when every sender is dropped.
pub(super) fn start(mut st: State, shared: Arc<Shared>, mut rx: mpsc::Receiver<Command>) {
    let spawned = std::thread::Builder::new()
        .name("flowmeter-hub".into())
        .spawn(move || {
            while let Some(cmd) = rx.blocking_recv() {
                let done = std::panic::catch_unwind(AssertUnwindSafe(|| st.handle(cmd, &shared)));
                if done.is_err() {
                    tracing::error!("hub worker: a command panicked; the hub goes on");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the hub's worker thread: the hub answers nothing");
    }
}

/// New subjects admitted per clock hour of the entries' arrival time.
#[derive(Debug)]
pub(super) struct Budget {
    max: u64,
    hour: i64,
    used: u64,
}

impl Budget {
    pub fn new(max: u64) -> Self {
        Self {
            max,
            hour: i64::MIN,
            used: 0,
        }
    }

    /// Takes one new subject at `ms`; false when the hour's budget is spent.
    pub fn admit(&mut self, ms: i64) -> bool {
        let hour = ms.div_euclid(3_600_000);
        if hour != self.hour {
            if hour < self.hour {
                // an entry from an earlier hour (shards read side by side): the current hour pays
                return self.take();
            }
            self.hour = hour;
            self.used = 0;
        }
        self.take()
    }

    fn take(&mut self) -> bool {
        if self.used >= self.max {
            return false;
        }
        self.used += 1;
        true
    }
}

/// Quality classes of the first `classify` measure of a processor reading
/// `webrtc` (the rollup's), so live and historical classes agree.
pub(super) fn quality_classes(processors: &ProcessorRegistry) -> Classes {
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

/// Windows of every subject, owned by the worker thread.
pub(super) struct State {
    cfg: HubConfig,
    http: HashMap<String, HttpSubject>,
    webrtc: HashMap<String, WebrtcSubject>,
    classes: Classes,
    budget: Budget,
    /// The hour a limit was last logged (once per hour).
    warned_hour: i64,
    /// The hub holds every event since this unix second (after its rebuild).
    complete_since: i64,
    /// The last closed second.
    now: i64,
    /// Open alerts by id, from the alert stream.
    open_alerts: BTreeMap<u64, Value>,
    /// Snapshots of the current second, by channel name.
    snapshots: HashMap<String, (i64, Arc<str>)>,
}

const OVERVIEW_WEBRTC: &str = "webrtc:overview";

impl State {
    pub fn new(cfg: HubConfig, classes: Classes) -> Self {
        Self {
            budget: Budget::new(cfg.max_new_subjects_per_hour),
            cfg,
            http: HashMap::new(),
            webrtc: HashMap::new(),
            classes,
            warned_hour: i64::MIN,
            complete_since: 0,
            now: 0,
            open_alerts: BTreeMap::new(),
            snapshots: HashMap::new(),
        }
    }

    fn handle(&mut self, cmd: Command, shared: &Shared) {
        match cmd {
            Command::Fold(entries) => {
                let wall = chrono::Utc::now().timestamp_millis();
                let recent_from = wall.div_euclid(1000) - self.cfg.active_secs as i64;
                for e in entries {
                    match e.feed {
                        Feed::Alerts => self.on_alert(e.id, e.data.as_deref(), wall, shared),
                        feed => self.apply(feed, e.id, e.data.as_deref(), recent_from),
                    }
                }
            }
            Command::Close(sec) => self.close(sec, shared),
            Command::CompleteSince(s) => self.complete_since = s,
            Command::Snapshot { channel, reply } => {
                let _ = reply.send(self.snapshot(&channel));
            }
            Command::RuleValues { rule, now, reply } => {
                let _ = reply.send(self.rule_values(&rule, now));
            }
            Command::Quiet {
                channel,
                seq,
                reply,
            } => {
                // A subject is dropped an hour after its last event, and the
                // windows hold everything since `complete_since`: a channel
                // without a subject had no events after `seq` when `seq` is
                // within both.
                let quiet = !self.has_data(&channel)
                    && seq + 1 >= self.complete_since
                    && self.now - seq < MINUTES * 60;
                let _ = reply.send(quiet);
            }
        }
    }

    /// An announcement from the alert stream: keeps the open set, and pushes
    /// it when it is recent (not history read back at start).
    fn on_alert(&mut self, id: StreamId, data: Option<&str>, wall_ms: i64, shared: &Shared) {
        let Some(msg) = data.and_then(|d| serde_json::from_str::<Value>(d).ok()) else {
            return;
        };
        let alert = view::field(&msg, "alert");
        let Some(aid) = alert.get("id").and_then(Value::as_u64) else {
            return;
        };
        match msg.get("state").and_then(Value::as_str) {
            Some("fired") => {
                self.open_alerts.insert(aid, alert);
            }
            Some("resolved") => {
                self.open_alerts.remove(&aid);
            }
            _ => return,
        }
        self.snapshots.remove("alerts");
        if wall_ms - (id.ms as i64) < 10_000 {
            let _ = shared.alerts.send(Arc::new(msg));
        }
    }

    /// Whether a new subject may be held (logs once an hour when not).
    fn admit(&mut self, ms: i64) -> bool {
        let full = self.http.len() + self.webrtc.len() >= self.cfg.max_subjects;
        if !full && self.budget.admit(ms) {
            return true;
        }
        let hour = ms.div_euclid(3_600_000);
        if self.warned_hour != hour {
            self.warned_hour = hour;
            let limit = if full {
                "hub.max_subjects"
            } else {
                "hub.max_new_subjects_per_hour"
            };
            tracing::warn!(
                limit,
                "the hub holds no more new subjects this hour: their events count in the overviews only (flowmeter_hub_events_folded_total)"
            );
        }
        false
    }

    /// Folds one stream entry in, at its id's time. An event whose own `ts`
    /// was already older than the live windows ([`SECONDS`]) when it
    /// arrived is not live traffic (a back-fill, a replayed sample): counted
    /// at arrival it would draw a spike of old data, so the live windows
    /// skip it; the rollups still place it by its `ts`.
    fn apply(&mut self, feed: Feed, id: StreamId, data: Option<&str>, recent_from: i64) {
        let Ok((ev, ts)) = decode(data) else {
            return; // the rollup dead-letters it; a view just skips it
        };
        let ms = i64::try_from(id.ms).unwrap_or(i64::MAX);
        if is_backdated(ts, ms) {
            metrics::HUB_EVENTS_BACKDATED.inc();
            return;
        }
        match feed {
            Feed::Http => {
                let (p, lat) = view::http_point(&ev);
                let mut folded = false;
                for (key, scope) in view::http_subjects(&ev) {
                    if let Some(sub) = self.http.get_mut(&key) {
                        sub.w.add(ms, &p, lat);
                    } else if scope == HttpScope::Overview || self.admit(ms) {
                        let mut sub = HttpSubject::new(scope);
                        sub.w.add(ms, &p, lat);
                        self.http.insert(key, sub);
                    } else {
                        folded = true;
                    }
                }
                if folded {
                    metrics::HUB_EVENTS_FOLDED.inc();
                }
            }
            Feed::Webrtc => {
                let (p, rtt) = view::webrtc_point(&ev, &self.classes);
                let (key, meeting, peer) = view::webrtc_ids(&ev);
                let sec = ms.div_euclid(1000);
                let overview = self.webrtc.entry(OVERVIEW_WEBRTC.into()).or_default();
                overview.w.add(ms, &p, rtt);
                // peers matter for `active_secs` only: history read back at start is not tracked
                let peer_key = (meeting.clone(), peer);
                let track = sec > recent_from
                    && (overview.peers.contains_key(&peer_key)
                        || overview.peers.len() < self.cfg.max_peers);
                if track {
                    let seen = overview.peers.entry(peer_key.clone()).or_insert_with(|| {
                        metrics::HUB_PEERS_TRACKED.inc();
                        sec
                    });
                    *seen = (*seen).max(sec);
                } else if sec > recent_from {
                    metrics::HUB_PEERS_UNTRACKED.inc();
                }
                if !self.webrtc.contains_key(&key) {
                    if !self.admit(ms) {
                        metrics::HUB_EVENTS_FOLDED.inc();
                        return;
                    }
                    self.webrtc.insert(
                        key.clone(),
                        WebrtcSubject {
                            meeting: Some(meeting),
                            ..Default::default()
                        },
                    );
                }
                if let Some(sub) = self.webrtc.get_mut(&key) {
                    sub.w.add(ms, &p, rtt);
                    if track {
                        let seen = sub.peers.entry(peer_key).or_insert(sec);
                        *seen = (*seen).max(sec);
                    }
                }
            }
            Feed::Alerts => {}
        }
    }

    /// Closes second `sec`: expires what fell out of the windows, publishes
    /// one point per watched channel with data, then wakes the connections.
    fn close(&mut self, sec: i64, shared: &Shared) {
        self.now = sec;
        self.snapshots.clear();
        let active_from = sec - self.cfg.active_secs as i64;
        for sub in self.http.values_mut() {
            sub.w.expire(sec);
        }
        for (key, sub) in self.webrtc.iter_mut() {
            sub.w.expire(sec);
            let tracked = sub.peers.len();
            sub.peers.retain(|_, s| *s > active_from);
            if key == OVERVIEW_WEBRTC {
                metrics::HUB_PEERS_EXPIRED.add(tracked.saturating_sub(sub.peers.len()) as u64);
            }
        }
        self.http
            .retain(|_, s| s.scope == HttpScope::Overview || !s.w.is_idle(sec));
        self.webrtc
            .retain(|_, s| s.meeting.is_none() || !s.w.is_idle(sec));
        let due = shared.channels().due(sec);
        let tops = due
            .iter()
            .any(|(n, _)| n == "http:overview" || n.starts_with("http:service:"))
            .then(|| Tops::build(&self.http, sec, self.cfg.top_endpoints));
        let closed: Vec<(String, Option<Closed>)> = due
            .into_iter()
            .map(|(name, ch)| {
                let c = self.closed(&ch, sec, tops.as_ref());
                (name, c)
            })
            .collect();
        {
            let mut channels = shared.channels();
            for (name, c) in closed {
                channels.publish(&name, sec, c);
            }
        }
        shared.tick.send_replace(sec);
    }

    fn has_data(&self, ch: &Channel) -> bool {
        match ch {
            Channel::Http(n) => self.http.contains_key(n),
            Channel::Webrtc(n) => self.webrtc.contains_key(n),
            Channel::Meetings => true,
            Channel::Alerts => false,
        }
    }

    /// Second `sec` of a channel, or `None` when it has no data.
    fn closed(&self, ch: &Channel, sec: i64, tops: Option<&Tops<'_>>) -> Option<Closed> {
        if !self.has_data(ch) {
            return None;
        }
        let point = self.point(ch, sec).map(|v| Arc::<str>::from(v.to_string()));
        let summary = Arc::<str>::from(self.summary(ch, sec, tops).to_string());
        let single = update_text(
            ch,
            sec - 1,
            false,
            sec,
            &[(sec, point.clone())],
            Some(&summary),
        );
        Some(Closed {
            point,
            summary,
            single: single.into(),
        })
    }

    /// The additive point of `channel` for second `sec` with its time, or
    /// `None` when nothing happened then.
    fn point(&self, ch: &Channel, sec: i64) -> Option<Value> {
        let v = match ch {
            Channel::Http(n) => json!(self.http.get(n)?.w.at(sec)?),
            Channel::Webrtc(n) => json!(self.webrtc.get(n)?.w.at(sec)?),
            Channel::Meetings | Channel::Alerts => return None,
        };
        Some(view::with_field(v, "t", json!(sec * 1000)))
    }

    /// The summary of a channel at second `now`.
    fn summary(&self, ch: &Channel, now: i64, tops: Option<&Tops<'_>>) -> Value {
        match ch {
            Channel::Http(name) => {
                let Some(sub) = self.http.get(name) else {
                    return ch.empty_summary();
                };
                let v = json!({
                    "1m": view::http_window(&sub.w, now, 60),
                    "5m": view::http_window(&sub.w, now, SECONDS),
                });
                let service = match &sub.scope {
                    HttpScope::Overview => None,
                    HttpScope::Service(s) => Some(&**s),
                    HttpScope::Endpoint { .. } => return v,
                };
                let built;
                let tops = match tops {
                    Some(t) => t,
                    None => {
                        built = Tops::build(&self.http, now, self.cfg.top_endpoints);
                        &built
                    }
                };
                view::with_field(v, "top_endpoints", tops.of(service))
            }
            Channel::Webrtc(name) => {
                let Some(sub) = self.webrtc.get(name) else {
                    return ch.empty_summary();
                };
                let active_from = now - self.cfg.active_secs as i64;
                let mut meetings: Vec<&str> = sub
                    .peers
                    .iter()
                    .filter(|(_, s)| **s > active_from)
                    .map(|((m, _), _)| &**m)
                    .collect();
                let peers = meetings.len();
                meetings.sort_unstable();
                meetings.dedup();
                json!({
                    "1m": view::webrtc_window(&sub.w, now, 60, &self.classes),
                    "5m": view::webrtc_window(&sub.w, now, SECONDS, &self.classes),
                    "active_meetings": meetings.len(),
                    "active_peers": peers,
                })
            }
            Channel::Meetings => self.meetings(now),
            Channel::Alerts => json!({}),
        }
    }

    /// Every meeting with a sample within `hub.active_secs` of `now`, with
    /// its last minute's figures and dominant quality class, busiest first
    /// (the first `hub.max_meetings_listed`).
    fn meetings(&self, now: i64) -> Value {
        let active_from = now - self.cfg.active_secs as i64;
        let names: Vec<&str> = self.classes.iter().map(|(n, _)| n.as_str()).collect();
        let mut list: Vec<(f64, &str, Value)> = self
            .webrtc
            .values()
            .filter_map(|sub| {
                let id = sub.meeting.as_deref()?;
                let peers = sub.peers.values().filter(|s| **s > active_from).count();
                if peers == 0 {
                    return None;
                }
                // one total per meeting and second; the list shows no quantiles
                let t = sub.w.total(now, 60);
                let w = view::webrtc_figures(&t, 60, &self.classes);
                let dominant = t
                    .quality
                    .iter()
                    .enumerate()
                    .max_by_key(|(i, n)| (**n, std::cmp::Reverse(*i)))
                    .filter(|(_, n)| **n > 0)
                    .and_then(|(i, _)| names.get(i).copied());
                let bitrate = w.get("bitrate_bps").and_then(Value::as_f64).unwrap_or(0.0);
                let f = |k: &str| view::field(&w, k);
                Some((
                    bitrate,
                    id,
                    json!({
                        "meeting_id": id, "peers": peers, "samples": t.samples,
                        "bitrate_bps": bitrate, "relayed_share": f("relayed_share"),
                        "rtt_avg_ms": f("rtt_avg_ms"), "jitter_avg_ms": f("jitter_avg_ms"),
                        "loss_avg": f("loss_avg"), "quality": dominant,
                    }),
                ))
            })
            .collect();
        let active = list.len();
        list.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
        list.truncate(self.cfg.max_meetings_listed);
        json!({
            "active_meetings": active,
            "classes": names,
            "meetings": list.into_iter().map(|(_, _, v)| v).collect::<Vec<_>>(),
        })
    }

    /// A full snapshot of `channel` as of the last closed second (the JSON
    /// of the message without its `reason`), computed once per second.
    fn snapshot(&mut self, channel: &Channel) -> (i64, Arc<str>) {
        if let Some(s) = self.snapshots.get(channel.name()) {
            return s.clone();
        }
        let now = self.now;
        let v = match channel {
            Channel::Alerts => json!({
                "type": "snapshot", "channel": "alerts", "seq": now, "full": true,
                "open": self.open_alerts.values().collect::<Vec<_>>(),
            }),
            _ => {
                let (seconds, minutes) = match channel {
                    Channel::Http(n) => match self.http.get(n) {
                        Some(s) => series(&s.w, now),
                        None => series(&Windows::<view::HttpPoint>::default(), now),
                    },
                    Channel::Webrtc(n) => match self.webrtc.get(n) {
                        Some(s) => series(&s.w, now),
                        None => series(&Windows::<view::WebrtcPoint>::default(), now),
                    },
                    Channel::Meetings | Channel::Alerts => (json!({}), json!({})),
                };
                json!({
                    "type": "snapshot",
                    "channel": channel.name(),
                    "seq": now,
                    "full": true,
                    "complete_since": self.complete_since * 1000,
                    "series": {"1s": seconds, "1m": minutes},
                    "summary": self.summary(channel, now, None),
                })
            }
        };
        let text = Arc::<str>::from(v.to_string());
        if self.snapshots.len() >= SNAPSHOT_CACHE {
            self.snapshots.clear();
        }
        self.snapshots
            .insert(channel.name().to_string(), (now, text.clone()));
        (now, text)
    }

    /// The metric of `rule` for each subject in its scope at second `now`:
    /// (subject, value, events in the window).
    fn rule_values(&self, rule: &Rule, now: i64) -> Vec<(String, f64, u64)> {
        let secs = rule.window_secs as i64;
        let mut out = Vec::new();
        match rule.protocol.as_str() {
            "http" => {
                let in_scope = |s: &HttpScope| {
                    matches!(
                        (rule.scope, s),
                        (Scope::Overview, HttpScope::Overview)
                            | (Scope::Service, HttpScope::Service(_))
                            | (Scope::Endpoint, HttpScope::Endpoint { .. })
                    )
                };
                for (k, sub) in self.http.iter().filter(|(_, s)| in_scope(&s.scope)) {
                    let t = sub.w.total(now, secs);
                    let n = t.requests;
                    let v = match rule.metric {
                        Metric::Bandwidth => (t.bytes_in + t.bytes_out) as f64 / secs as f64,
                        Metric::RequestsPerSec => n as f64 / secs as f64,
                        Metric::ErrorRate if n > 0 => {
                            (t.errors_4xx + t.errors_5xx) as f64 / n as f64
                        }
                        Metric::ErrorRate => 0.0,
                        Metric::P95LatencyMs => {
                            sub.w.latency(now, secs).quantile(0.95).unwrap_or(0.0)
                        }
                        Metric::RelayedShare => continue,
                    };
                    out.push((k.clone(), v, n));
                }
            }
            "webrtc" => {
                let in_scope = |s: &WebrtcSubject| match rule.scope {
                    Scope::Overview => s.meeting.is_none(),
                    Scope::Meeting => s.meeting.is_some(),
                    Scope::Service | Scope::Endpoint => false,
                };
                for (k, sub) in self.webrtc.iter().filter(|(_, s)| in_scope(s)) {
                    let t = sub.w.total(now, secs);
                    let n = t.samples;
                    let v = match rule.metric {
                        Metric::Bandwidth => (t.bytes_sent + t.bytes_received) as f64 / secs as f64,
                        Metric::RelayedShare if n > 0 => t.relayed as f64 / n as f64,
                        Metric::RelayedShare => 0.0,
                        Metric::P95LatencyMs => {
                            sub.w.latency(now, secs).quantile(0.95).unwrap_or(0.0)
                        }
                        _ => continue,
                    };
                    out.push((k.clone(), v, n));
                }
            }
            _ => {}
        }
        out
    }
}

/// One endpoint's rate: (bytes per second, service, method, endpoint).
type Rate<'a> = (f64, &'a str, &'a str, &'a str);

/// Whether an event stamped `ts_ms` that arrived at `arrival_ms` is older
/// than the live windows, and so not live traffic.
fn is_backdated(ts_ms: i64, arrival_ms: i64) -> bool {
    ts_ms < arrival_ms.saturating_sub(SECONDS * 1000)
}

/// The busiest endpoints over the last minute, overall and per service,
/// computed in one pass over the endpoints.
pub(super) struct Tops<'a> {
    all: Vec<Rate<'a>>,
    by_service: HashMap<&'a str, Vec<Rate<'a>>>,
}

impl<'a> Tops<'a> {
    fn build(http: &'a HashMap<String, HttpSubject>, now: i64, n: usize) -> Self {
        let mut all = Vec::new();
        let mut by_service: HashMap<&str, Vec<Rate<'a>>> = HashMap::new();
        for sub in http.values() {
            let HttpScope::Endpoint {
                service,
                method,
                endpoint,
            } = &sub.scope
            else {
                continue;
            };
            let t = sub.w.total(now, 60);
            let rate = (t.bytes_in + t.bytes_out) as f64 / 60.0;
            if rate > 0.0 {
                let r = (rate, &**service, &**method, &**endpoint);
                all.push(r);
                by_service.entry(service).or_default().push(r);
            }
        }
        let top = |v: &mut Vec<Rate<'a>>| {
            v.sort_by(|a, b| {
                b.0.total_cmp(&a.0)
                    .then_with(|| (a.1, a.2, a.3).cmp(&(b.1, b.2, b.3)))
            });
            v.truncate(n);
        };
        top(&mut all);
        by_service.values_mut().for_each(top);
        Self { all, by_service }
    }

    /// `top_endpoints` of a service, or of everything.
    fn of(&self, service: Option<&str>) -> Value {
        let list = match service {
            None => Some(&self.all),
            Some(s) => self.by_service.get(s),
        };
        list.map(|l| {
            l.iter()
                .map(|(b, s, m, e)| {
                    json!({"service": s, "method": m, "endpoint": e, "bytes_per_sec": b})
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into()
    }
}

/// Column-oriented series (one array per field, far smaller than one
/// object per point): the 1-s series as `{start, step_ms, <field>: [...]}`,
/// the 1-min series as `{t: [...], <field>: [...], p50/p95/p99: [...]}`.
fn series<P: window::Point>(w: &Windows<P>, now: i64) -> (Value, Value) {
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
    let q = |f: fn(&[f64; 3]) -> f64| -> Vec<Option<f64>> {
        mins.iter().map(|(_, _, q)| q.as_ref().map(f)).collect()
    };
    let (p50, p95, p99) = (q(|[a, _, _]| *a), q(|[_, b, _]| *b), q(|[_, _, c]| *c));
    let mut minutes = columns(mins.into_iter().map(|(_, p, _)| json!(p)));
    minutes.insert("t".into(), json!(t));
    minutes.insert("p50".into(), json!(p50));
    minutes.insert("p95".into(), json!(p95));
    minutes.insert("p99".into(), json!(p99));
    (Value::Object(seconds), Value::Object(minutes))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod demo_rules;

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod golden;

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::config::HubConfig;

    #[test]
    fn the_budget_admits_n_new_subjects_per_hour() {
        let mut b = Budget::new(2);
        let h = 3_600_000;
        assert!(b.admit(10 * h));
        assert!(b.admit(10 * h + 5));
        assert!(!b.admit(10 * h + 6));
        assert!(!b.admit(9 * h), "an earlier hour pays from the current one");
        assert!(b.admit(11 * h), "a new hour, a new budget");
    }

    fn entry(feed: Feed, ms: u64, data: Value) -> Entry {
        Entry {
            feed,
            id: StreamId { ms, seq: 0 },
            data: Some(data.to_string()),
        }
    }

    fn http(ms: u64, service: &str) -> Entry {
        entry(
            Feed::Http,
            ms,
            json!({"kind": "http", "ts": ms, "service": service, "endpoint": "/a/:id",
                   "method": "GET", "status": 200, "req_bytes": 10, "resp_bytes": 20, "duration_ms": 5.0}),
        )
    }

    fn webrtc(ms: u64, meeting: &str, peer: &str) -> Entry {
        entry(
            Feed::Webrtc,
            ms,
            json!({"kind": "webrtc", "ts": ms, "meeting_id": meeting, "peer_id": peer,
                   "bytes_sent": 1, "bytes_received": 1, "rtt_ms": 10.0, "jitter_ms": 1.0,
                   "packet_loss": 0.0, "candidate_type": "host"}),
        )
    }

    fn fold(st: &mut State, entries: Vec<Entry>, recent_from: i64) {
        for e in entries {
            st.apply(e.feed, e.id, e.data.as_deref(), recent_from);
        }
    }

    #[test]
    fn subjects_are_normalized_and_new_ones_budgeted() {
        let cfg = HubConfig {
            max_new_subjects_per_hour: 4,
            ..HubConfig::default()
        };
        let mut st = State::new(cfg, Vec::new());
        let t = 1_772_359_200_000u64;
        // "a:b " and "a:b" are one service, as in the rollups
        fold(&mut st, vec![http(t, "a:b "), http(t + 1, "a:b")], 0);
        assert!(st.http.contains_key("http:service:a:b"));
        assert!(st.http.contains_key("http:endpoint:a:b:GET:/a/:id"));
        assert_eq!(st.http.len(), 3);
        // two more services fill the budget (service + endpoint each): one fits
        let before = metrics::HUB_EVENTS_FOLDED.get();
        fold(&mut st, vec![http(t + 2, "c"), http(t + 3, "d")], 0);
        assert_eq!(st.http.len(), 5);
        assert!(metrics::HUB_EVENTS_FOLDED.get() > before);
        // every event still counts in the overview
        let now = (t / 1000) as i64;
        let total = st
            .http
            .get("http:overview")
            .map(|s| s.w.total(now, 60).requests);
        assert_eq!(total, Some(4));
        // the service's top endpoints come from the structure, not the name
        let tops = Tops::build(&st.http, now, 10);
        let a = tops.of(Some("a:b"));
        assert_eq!(a[0]["service"], "a:b");
        assert_eq!(a[0]["method"], "GET");
        assert_eq!(a[0]["endpoint"], "/a/:id");
        assert_eq!(tops.of(Some("a")), json!([]));
    }

    #[test]
    fn backdated_events_move_no_live_counter_and_current_ones_do() {
        let mut st = State::new(HubConfig::default(), Vec::new());
        let t = 1_796_075_999_000u64;
        let now = (t / 1000) as i64;
        let stamped = |ts: u64, arrival: u64, feed: Feed| {
            let mut e = if feed == Feed::Http {
                http(arrival, "svc")
            } else {
                webrtc(arrival, "m", "p")
            };
            let mut v: Value =
                serde_json::from_str(e.data.as_deref().unwrap_or("{}")).expect("json");
            v["ts"] = json!(ts);
            e.data = Some(v.to_string());
            e
        };
        let before = metrics::HUB_EVENTS_BACKDATED.get();
        // months old, and just past the 5-minute window: skipped
        let old = vec![
            stamped(t - 250 * 86_400_000, t, Feed::Http),
            stamped(t - 301_000, t, Feed::Http),
            stamped(t - 250 * 86_400_000, t, Feed::Webrtc),
        ];
        fold(&mut st, old, now - 30);
        assert!(st.http.is_empty(), "no live subject from back-dated events");
        assert!(st.webrtc.is_empty());
        assert_eq!(metrics::HUB_EVENTS_BACKDATED.get() - before, 3);
        // current, a little late, or from a fast clock: counted at arrival
        let live = vec![
            stamped(t, t, Feed::Http),
            stamped(t - 299_000, t, Feed::Http),
            stamped(t + 60_000, t, Feed::Http),
            stamped(t - 1_000, t, Feed::Webrtc),
        ];
        fold(&mut st, live, now - 30);
        let total = st
            .http
            .get("http:overview")
            .map(|s| s.w.total(now, 60).requests);
        assert_eq!(total, Some(3));
        let samples = st
            .webrtc
            .get(OVERVIEW_WEBRTC)
            .map(|s| s.w.total(now, 60).samples);
        assert_eq!(samples, Some(1));
    }

    #[test]
    fn peers_are_capped_and_expire() {
        let cfg = HubConfig {
            max_peers: 3,
            active_secs: 30,
            ..HubConfig::default()
        };
        let mut st = State::new(cfg, Vec::new());
        let t = 1_772_359_200_000u64;
        let sec = (t / 1000) as i64;
        // the only lib test tracking peers: the process-wide counters move by its own
        let (tracked0, expired0) = (
            metrics::HUB_PEERS_TRACKED.get(),
            metrics::HUB_PEERS_EXPIRED.get(),
        );
        let samples = (0..10).map(|i| webrtc(t, "m1", &format!("p{i}"))).collect();
        fold(&mut st, samples, sec - 30);
        assert_eq!(metrics::HUB_PEERS_TRACKED.get() - tracked0, 3);
        let ov = st.webrtc.get(OVERVIEW_WEBRTC).expect("overview");
        assert_eq!(ov.peers.len(), 3, "capped");
        assert_eq!(ov.w.total(sec, 60).samples, 10, "every sample counts");
        // history older than active_secs is not tracked at all
        let old = (0..5)
            .map(|i| webrtc(t - 100_000, "m2", &format!("q{i}")))
            .collect();
        fold(&mut st, old, sec - 30);
        assert_eq!(
            st.webrtc.get(OVERVIEW_WEBRTC).map(|o| o.peers.len()),
            Some(3)
        );
        let shared = Shared::for_tests();
        st.close(sec + 31, &shared);
        assert!(st.webrtc.values().all(|s| s.peers.is_empty()), "expired");
        assert_eq!(metrics::HUB_PEERS_EXPIRED.get() - expired0, 3);
        assert_eq!(
            metrics::HUB_PEERS_TRACKED.get() - tracked0,
            3,
            "none replayed"
        );
    }
}
