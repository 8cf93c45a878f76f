//! The hub's worker thread and the windows it owns. Every command (entries
//! to fold, a second to close, a snapshot, an alert query) runs here, one at
//! a time, off the async runtime; the runtime's tasks only wait for room in
//! the bounded queue or for the answer.
//!
//! What a subject adds up and how its channels read come from the views
//! (`processors/*_view.toml`, see `crate::view`); nothing here knows an
//! event kind.
//!
//! Bounds on what it holds: `hub.max_subjects` subjects, of which at most
//! `hub.max_new_subjects_per_hour` new ones per hour (past either, events
//! count in the scopes without dimensions only); `hub.max_peers` members
//! per view, each forgotten `hub.active_secs` after its last event; a top
//! list holds at most `hub.top_endpoints` rows and a list channel
//! `hub.max_meetings_listed`.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};

use super::channels::{update_text, Closed};
use super::window::{Windows, MINUTES, SECONDS};
use super::Shared;
use crate::config::HubConfig;
use crate::event::decode_entry as decode;
use crate::stream::StreamId;
use crate::telemetry::metrics;
use crate::view::{Cells, Channel, MeasureRef, Target, View, Views};

/// Which stream an entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Feed {
    /// Events of the `n`th kind of [`view_kinds`].
    Kind(usize),
    Alerts,
}

/// The event kinds the views read, each with the views reading it.
pub(super) fn view_kinds(views: &Views) -> Vec<(String, Vec<usize>)> {
    let mut kinds: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, v) in views.iter().enumerate() {
        match kinds.iter_mut().find(|(k, _)| *k == v.kind) {
            Some((_, vs)) => vs.push(i),
            None => kinds.push((v.kind.clone(), vec![i])),
        }
    }
    kinds
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
    MeasureValues {
        measure: MeasureRef,
        window_secs: i64,
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

/// A member's key (a meeting's peer: meeting id, peer id).
type MemberKey = Box<[Box<str>]>;

/// Member → last second it sent an event.
type MemberMap = HashMap<MemberKey, i64>;

/// One subject of one view's scope.
#[derive(Debug)]
pub(super) struct Subject {
    pub w: Windows<Cells>,
    view: usize,
    scope: usize,
    dims: Box<[Box<str>]>,
    /// Members seen lately (scopes with dimensions; the view's scope
    /// without dimensions reads the view's own map).
    members: MemberMap,
}

/// Windows of every subject, owned by the worker thread.
pub(super) struct State {
    cfg: HubConfig,
    views: Arc<Views>,
    /// Per [`Feed::Kind`], the views reading it.
    kinds: Vec<Vec<usize>>,
    /// By channel name.
    subjects: HashMap<String, Subject>,
    /// Per view, every member tracked (at most `hub.max_peers`).
    members: Vec<MemberMap>,
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

/// The rows of one top list, per subject of a scope that shows it:
/// (rate, the ranked subject's dimensions).
type TopRows<'a> = HashMap<(usize, Vec<&'a str>), Vec<(f64, &'a [Box<str>])>>;

impl State {
    pub fn new(cfg: HubConfig, views: Arc<Views>) -> Self {
        Self {
            budget: Budget::new(cfg.max_new_subjects_per_hour),
            kinds: view_kinds(&views).into_iter().map(|(_, v)| v).collect(),
            members: vec![MemberMap::new(); views.len()],
            views,
            cfg,
            subjects: HashMap::new(),
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
                        Feed::Kind(k) => self.apply(k, e.id, e.data.as_deref(), recent_from),
                    }
                }
            }
            Command::Close(sec) => self.close(sec, shared),
            Command::CompleteSince(s) => self.complete_since = s,
            Command::Snapshot { channel, reply } => {
                let _ = reply.send(self.snapshot(&channel));
            }
            Command::MeasureValues {
                measure,
                window_secs,
                now,
                reply,
            } => {
                let _ = reply.send(self.measure_values(measure, window_secs, now));
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
        let alert = msg.get("alert").cloned().unwrap_or(Value::Null);
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
        let full = self.subjects.len() >= self.cfg.max_subjects;
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

    /// Folds one stream entry of kind `kind` in, at its id's time, into
    /// every view reading that kind. An event whose own `ts` was already
    /// older than the live windows ([`SECONDS`]) when it arrived is not live
    /// traffic (a back-fill, a replayed sample): counted at arrival it would
    /// draw a spike of old data, so the live windows skip it; the rollups
    /// still place it by its `ts`.
    fn apply(&mut self, kind: usize, id: StreamId, data: Option<&str>, recent_from: i64) {
        let Ok((ev, ts)) = decode(data) else {
            return; // the rollup dead-letters it; a view just skips it
        };
        let ms = i64::try_from(id.ms).unwrap_or(i64::MAX);
        if is_backdated(ts, ms) {
            metrics::HUB_EVENTS_BACKDATED.inc();
            return;
        }
        let views = self.views.clone();
        for i in 0..self.kinds.get(kind).map_or(0, Vec::len) {
            let Some(vi) = self.kinds.get(kind).and_then(|k| k.get(i)).copied() else {
                continue;
            };
            if let Some(view) = views.get(vi) {
                self.apply_view(vi, view, &ev, ms, recent_from);
            }
        }
    }

    fn apply_view(
        &mut self,
        vi: usize,
        view: &View,
        ev: &Map<String, Value>,
        ms: i64,
        recent_from: i64,
    ) {
        let (point, sketch) = view.fold(ev);
        let sec = ms.div_euclid(1000);
        // members matter for `active_secs` only: history read back at start is not tracked
        let tracked = match view.member_of(ev) {
            Some(key) if sec > recent_from => {
                let max = self.cfg.max_peers;
                match self.members.get_mut(vi) {
                    Some(all) if all.contains_key(&key) || all.len() < max => {
                        match all.get_mut(&key) {
                            Some(seen) => *seen = (*seen).max(sec),
                            None => {
                                metrics::HUB_PEERS_TRACKED.inc();
                                all.insert(key.clone(), sec);
                            }
                        }
                        Some(key)
                    }
                    _ => {
                        metrics::HUB_PEERS_UNTRACKED.inc();
                        None
                    }
                }
            }
            _ => None,
        };
        let mut folded = false;
        for (name, scope, dims) in view.subjects(ev) {
            let sub = match self.subjects.get_mut(&name) {
                Some(s) => s,
                None => {
                    if !dims.is_empty() && !self.admit(ms) {
                        folded = true;
                        continue;
                    }
                    self.subjects.entry(name).or_insert(Subject {
                        w: Windows::default(),
                        view: vi,
                        scope,
                        dims,
                        members: MemberMap::new(),
                    })
                }
            };
            sub.w.add(ms, &point, sketch);
            if let (Some(key), false) = (&tracked, sub.dims.is_empty()) {
                match sub.members.get_mut(key) {
                    Some(seen) => *seen = (*seen).max(sec),
                    None => {
                        sub.members.insert(key.clone(), sec);
                    }
                }
            }
        }
        if folded {
            metrics::HUB_EVENTS_FOLDED.inc();
        }
    }

    /// Closes second `sec`: expires what fell out of the windows, publishes
    /// one point per watched channel with data, then wakes the connections.
    fn close(&mut self, sec: i64, shared: &Shared) {
        self.now = sec;
        self.snapshots.clear();
        let active_from = sec - self.cfg.active_secs as i64;
        for sub in self.subjects.values_mut() {
            sub.w.expire(sec);
            sub.members.retain(|_, s| *s > active_from);
        }
        for all in &mut self.members {
            let tracked = all.len();
            all.retain(|_, s| *s > active_from);
            metrics::HUB_PEERS_EXPIRED.add(tracked.saturating_sub(all.len()) as u64);
        }
        self.subjects
            .retain(|_, s| s.dims.is_empty() || !s.w.is_idle(sec));
        let due = shared.channels().due(sec);
        let mut tops = Tops::default();
        let closed: Vec<(String, Option<Closed>)> = due
            .into_iter()
            .map(|(name, ch)| {
                let c = self.closed(&ch, sec, &mut tops);
                (name, c)
            })
            .collect();
        {
            let mut channels = shared.channels();
            for (name, c) in closed {
                channels.publish(&name, sec, c);
            }
        }
        shared
            .subjects
            .store(self.subjects.len(), std::sync::atomic::Ordering::Relaxed);
        *shared.closed_at.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(std::time::Instant::now());
        shared.tick.send_replace(sec);
    }

    fn has_data(&self, ch: &Channel) -> bool {
        match ch.target {
            Target::Scope { .. } => self.subjects.contains_key(ch.name()),
            Target::List { .. } => true,
            Target::Alerts => false,
        }
    }

    /// Second `sec` of a channel, or `None` when it has no data.
    fn closed<'a>(&'a self, ch: &Channel, sec: i64, tops: &mut Tops<'a>) -> Option<Closed> {
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
        let sub = self.subjects.get(ch.name())?;
        let view = self.views.get(sub.view)?;
        Some(view.point_json(sub.w.at(sec)?, sec))
    }

    /// The members of `sub` active since `active_from`.
    fn active_members<'a>(
        &'a self,
        sub: &'a Subject,
        active_from: i64,
    ) -> impl Iterator<Item = &'a MemberKey> + 'a {
        let map = if sub.dims.is_empty() {
            self.members.get(sub.view)
        } else {
            Some(&sub.members)
        };
        map.into_iter()
            .flat_map(|m| m.iter())
            .filter(move |(_, s)| **s > active_from)
            .map(|(k, _)| k)
    }

    /// The summary of a channel at second `now`.
    fn summary<'a>(&'a self, ch: &Channel, now: i64, tops: &mut Tops<'a>) -> Value {
        let Some(view) = self.views_of(ch) else {
            return json!({});
        };
        match ch.target {
            Target::Scope { view: vi, scope } => {
                let Some(sub) = self.subjects.get(ch.name()) else {
                    return ch.empty_summary();
                };
                let mut o = Map::new();
                for (key, secs) in [("1m", 60), ("5m", SECONDS)] {
                    let t = sub.w.total(now, secs);
                    let w = view.window_json(&t, secs, || sub.w.latency(now, secs));
                    o.insert(key.into(), w);
                }
                for (ti, top) in view.tops.iter().enumerate() {
                    if !top.shown_in.contains(&scope) {
                        continue;
                    }
                    let rows = tops.rows(self, vi, ti, now);
                    let mine: Vec<&str> = sub.dims.iter().map(|d| &**d).collect();
                    let list = rows.get(&(scope, mine)).map(|r| top_json(view, top, r));
                    o.insert(top.name.clone(), list.unwrap_or_default().into());
                }
                if let Some(m) = &view.members {
                    let active_from = now - self.cfg.active_secs as i64;
                    let active: Vec<&MemberKey> = self.active_members(sub, active_from).collect();
                    o.insert(m.count.clone(), json!(active.len()));
                    for (name, i) in &m.distinct {
                        let mut vals: Vec<&str> = active
                            .iter()
                            .filter_map(|k| k.get(*i))
                            .map(|v| &**v)
                            .collect();
                        vals.sort_unstable();
                        vals.dedup();
                        o.insert(name.clone(), json!(vals.len()));
                    }
                }
                Value::Object(o)
            }
            Target::List { view: vi, list } => self.list(vi, view, list, now),
            Target::Alerts => json!({}),
        }
    }

    fn views_of(&self, ch: &Channel) -> Option<&View> {
        match ch.target {
            Target::Scope { view, .. } | Target::List { view, .. } => {
                self.views.get(view).map(|v| &**v)
            }
            Target::Alerts => None,
        }
    }

    /// A list channel: every subject of the list's scope with an active
    /// member, with its figures over the list's window, busiest first (the
    /// first `hub.max_meetings_listed`).
    fn list(&self, vi: usize, view: &View, li: usize, now: i64) -> Value {
        let Some(l) = view.lists.get(li) else {
            return json!({});
        };
        let active_from = now - self.cfg.active_secs as i64;
        let scope = view.scopes.get(l.scope);
        let mut rows: Vec<(f64, &[Box<str>], Value)> = self
            .subjects
            .values()
            .filter(|s| s.view == vi && s.scope == l.scope)
            .filter_map(|sub| {
                let members = self.active_members(sub, active_from).count();
                if members == 0 {
                    return None;
                }
                // one total per subject and second; lists show no quantiles
                let t = sub.w.total(now, l.window_secs);
                let mut row = Map::new();
                for (d, v) in scope
                    .map(|s| &s.dims[..])
                    .unwrap_or_default()
                    .iter()
                    .zip(sub.dims.iter())
                {
                    row.insert(d.clone(), json!(v));
                }
                row.insert(l.members.clone(), json!(members));
                for m in l.columns.iter().filter_map(|c| view.measures.get(*c)) {
                    row.insert(m.name.clone(), view.measure(m, &t, l.window_secs, None));
                }
                for (key, f) in &l.dominant {
                    row.insert(key.clone(), view.dominant(*f, &t));
                }
                let order = view
                    .measures
                    .get(l.order_by)
                    .map_or(0.0, |m| view.measure_f64(m, &t, l.window_secs, None));
                Some((order, &sub.dims[..], Value::Object(row)))
            })
            .collect();
        let active = rows.len();
        rows.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
        rows.truncate(self.cfg.max_meetings_listed);
        let mut o = Map::new();
        o.insert(l.count.clone(), json!(active));
        o.insert(
            l.rows.clone(),
            rows.into_iter()
                .map(|(_, _, v)| v)
                .collect::<Vec<_>>()
                .into(),
        );
        if let Some((key, f)) = &l.class_names {
            o.insert(key.clone(), view.class_names(*f));
        }
        Value::Object(o)
    }

    /// A full snapshot of `channel` as of the last closed second (the JSON
    /// of the message without its `reason`), computed once per second.
    fn snapshot(&mut self, channel: &Channel) -> (i64, Arc<str>) {
        if let Some(s) = self.snapshots.get(channel.name()) {
            return s.clone();
        }
        let now = self.now;
        let v = match (channel.target, self.views_of(channel)) {
            (Target::Alerts, _) | (_, None) => json!({
                "type": "snapshot", "channel": "alerts", "seq": now, "full": true,
                "open": self.open_alerts.values().collect::<Vec<_>>(),
            }),
            (target, Some(view)) => {
                let (seconds, minutes) = match target {
                    Target::Scope { .. } => match self.subjects.get(channel.name()) {
                        Some(s) => series(view, &s.w, now),
                        None => series(view, &Windows::default(), now),
                    },
                    _ => (json!({}), json!({})),
                };
                json!({
                    "type": "snapshot",
                    "channel": channel.name(),
                    "seq": now,
                    "full": true,
                    "complete_since": self.complete_since * 1000,
                    "series": {"1s": seconds, "1m": minutes},
                    "summary": self.summary(channel, now, &mut Tops::default()),
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

    /// The measure of an alert rule for each subject of its scope at second
    /// `now` over `secs` seconds: (subject, value, events in the window).
    fn measure_values(&self, r: MeasureRef, secs: i64, now: i64) -> Vec<(String, f64, u64)> {
        let Some((view, _, m)) = self.views.resolve(r) else {
            return Vec::new();
        };
        self.subjects
            .iter()
            .filter(|(_, s)| s.view == r.view && s.scope == r.scope)
            .map(|(k, sub)| {
                let t = sub.w.total(now, secs);
                let n = t.get(view.events) as u64;
                let sk = m.needs_sketch().then(|| sub.w.latency(now, secs));
                let v = view.measure_f64(m, &t, secs, sk.as_ref());
                (k.clone(), v, n)
            })
            .collect()
    }
}

/// Whether an event stamped `ts_ms` that arrived at `arrival_ms` is older
/// than the live windows, and so not live traffic.
fn is_backdated(ts_ms: i64, arrival_ms: i64) -> bool {
    ts_ms < arrival_ms.saturating_sub(SECONDS * 1000)
}

/// The top lists of one close (or snapshot), each computed once, in one
/// pass over the ranked scope's subjects, on first use.
#[derive(Default)]
pub(super) struct Tops<'a> {
    built: HashMap<(usize, usize), TopRows<'a>>,
}

impl<'a> Tops<'a> {
    /// The rows of top `ti` of view `vi`, per showing subject.
    fn rows(&mut self, st: &'a State, vi: usize, ti: usize, now: i64) -> &TopRows<'a> {
        self.built
            .entry((vi, ti))
            .or_insert_with(|| build_top(st, vi, ti, now))
    }
}

fn build_top(st: &State, vi: usize, ti: usize, now: i64) -> TopRows<'_> {
    let mut out: TopRows<'_> = HashMap::new();
    let Some(view) = st.views.get(vi) else {
        return out;
    };
    let Some(top) = view.tops.get(ti) else {
        return out;
    };
    let ranked = view
        .scopes
        .get(top.scope)
        .map(|s| &s.dims[..])
        .unwrap_or_default();
    // where each showing scope's dimensions sit among the ranked scope's
    let picks: Vec<(usize, Vec<usize>)> = top
        .shown_in
        .iter()
        .map(|s| {
            let dims = view.scopes.get(*s).map(|s| &s.dims[..]).unwrap_or_default();
            let at = dims
                .iter()
                .filter_map(|d| ranked.iter().position(|r| r == d))
                .collect();
            (*s, at)
        })
        .collect();
    for sub in st
        .subjects
        .values()
        .filter(|s| s.view == vi && s.scope == top.scope)
    {
        let t = sub.w.total(now, top.window_secs);
        let rate = top.of.iter().map(|s| t.get(*s)).sum::<f64>() / top.window_secs as f64;
        if rate > 0.0 {
            for (scope, at) in &picks {
                let key: Vec<&str> = at
                    .iter()
                    .filter_map(|i| sub.dims.get(*i))
                    .map(|d| &**d)
                    .collect();
                out.entry((*scope, key))
                    .or_default()
                    .push((rate, &sub.dims));
            }
        }
    }
    let n = st.cfg.top_endpoints;
    for rows in out.values_mut() {
        rows.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        rows.truncate(n);
    }
    out
}

/// The JSON rows of a top list: the ranked scope's dimensions and the rate.
fn top_json(view: &View, top: &crate::view::Top, rows: &[(f64, &[Box<str>])]) -> Vec<Value> {
    let dims = view
        .scopes
        .get(top.scope)
        .map(|s| &s.dims[..])
        .unwrap_or_default();
    rows.iter()
        .map(|(rate, vals)| {
            let mut o: Map<String, Value> = dims
                .iter()
                .zip(vals.iter())
                .map(|(d, v)| (d.clone(), json!(v)))
                .collect();
            o.insert(top.by.clone(), json!(rate));
            Value::Object(o)
        })
        .collect()
}

/// Column-oriented series (one array per field, far smaller than one
/// object per point): the 1-s series as `{start, step_ms, <field>: [...]}`,
/// the 1-min series as `{t: [...], <field>: [...], p50/p95/p99: [...]}`.
fn series(view: &View, w: &Windows<Cells>, now: i64) -> (Value, Value) {
    fn columns(points: impl Iterator<Item = Map<String, Value>>) -> Map<String, Value> {
        let mut cols = Map::new();
        for o in points {
            for (k, x) in o {
                if let Value::Array(a) = cols.entry(k).or_insert_with(|| Value::Array(Vec::new())) {
                    a.push(x);
                }
            }
        }
        cols
    }
    let secs = w.seconds(now, SECONDS);
    let start = secs.first().map_or(now * 1000, |(s, _)| s * 1000);
    let mut seconds = columns(secs.iter().map(|(_, p)| view.fields_json(p)));
    seconds.insert("start".into(), json!(start));
    seconds.insert("step_ms".into(), json!(1000));
    let mins = w.minutes();
    let t: Vec<i64> = mins.iter().map(|(t, _, _)| *t).collect();
    let q = |f: fn(&[f64; 3]) -> f64| -> Vec<Option<f64>> {
        mins.iter().map(|(_, _, q)| q.as_ref().map(f)).collect()
    };
    let (p50, p95, p99) = (q(|[a, _, _]| *a), q(|[_, b, _]| *b), q(|[_, _, c]| *c));
    let mut minutes = columns(mins.iter().map(|(_, p, _)| view.fields_json(p)));
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

    /// The shipped views: kind 0 is `http`, kind 1 `webrtc`.
    fn state(cfg: HubConfig) -> State {
        let views = Arc::new(Views::of_repo());
        let kinds = view_kinds(&views);
        assert_eq!(kinds[0].0, "http");
        assert_eq!(kinds[1].0, "webrtc");
        State::new(cfg, views)
    }

    const HTTP: usize = 0;
    const WEBRTC: usize = 1;

    fn entry(feed: usize, ms: u64, data: Value) -> Entry {
        Entry {
            feed: Feed::Kind(feed),
            id: StreamId { ms, seq: 0 },
            data: Some(data.to_string()),
        }
    }

    fn http(ms: u64, service: &str) -> Entry {
        entry(
            HTTP,
            ms,
            json!({"kind": "http", "ts": ms, "service": service, "endpoint": "/a/:id",
                   "method": "GET", "status": 200, "req_bytes": 10, "resp_bytes": 20, "duration_ms": 5.0}),
        )
    }

    fn webrtc(ms: u64, meeting: &str, peer: &str) -> Entry {
        entry(
            WEBRTC,
            ms,
            json!({"kind": "webrtc", "ts": ms, "meeting_id": meeting, "peer_id": peer,
                   "bytes_sent": 1, "bytes_received": 1, "rtt_ms": 10.0, "jitter_ms": 1.0,
                   "packet_loss": 0.0, "candidate_type": "host"}),
        )
    }

    fn fold(st: &mut State, entries: Vec<Entry>, recent_from: i64) {
        for e in entries {
            if let Feed::Kind(k) = e.feed {
                st.apply(k, e.id, e.data.as_deref(), recent_from);
            }
        }
    }

    fn requests(st: &State, name: &str, now: i64) -> Option<f64> {
        st.subjects.get(name).map(|s| s.w.total(now, 60).get(0))
    }

    #[test]
    fn subjects_are_normalized_and_new_ones_budgeted() {
        let cfg = HubConfig {
            max_new_subjects_per_hour: 4,
            ..HubConfig::default()
        };
        let mut st = state(cfg);
        let t = 1_772_359_200_000u64;
        // "a:b " and "a:b" are one service, as in the rollups
        fold(&mut st, vec![http(t, "a:b "), http(t + 1, "a:b")], 0);
        assert!(st.subjects.contains_key("http:service:a:b"));
        assert!(st.subjects.contains_key("http:endpoint:a:b:GET:/a/:id"));
        assert_eq!(st.subjects.len(), 3);
        // two more services fill the budget (service + endpoint each): one fits
        let before = metrics::HUB_EVENTS_FOLDED.get();
        fold(&mut st, vec![http(t + 2, "c"), http(t + 3, "d")], 0);
        assert_eq!(st.subjects.len(), 5);
        assert!(metrics::HUB_EVENTS_FOLDED.get() > before);
        // every event still counts in the overview
        let now = (t / 1000) as i64;
        assert_eq!(requests(&st, "http:overview", now), Some(4.0));
        // the service's top endpoints come from the structure, not the name
        let ch = st.views.channel("http:service:a:b").expect("channel");
        let summary = st.summary(&ch, now, &mut Tops::default());
        let top = &summary["top_endpoints"][0];
        assert_eq!(top["service"], "a:b");
        assert_eq!(top["method"], "GET");
        assert_eq!(top["endpoint"], "/a/:id");
        let none = st.views.channel("http:service:a").expect("channel");
        assert_eq!(
            st.summary(&none, now, &mut Tops::default())["top_endpoints"],
            json!([])
        );
    }

    #[test]
    fn backdated_events_move_no_live_counter_and_current_ones_do() {
        let mut st = state(HubConfig::default());
        let t = 1_796_075_999_000u64;
        let now = (t / 1000) as i64;
        let stamped = |ts: u64, arrival: u64, kind: usize| {
            let mut e = if kind == HTTP {
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
            stamped(t - 250 * 86_400_000, t, HTTP),
            stamped(t - 301_000, t, HTTP),
            stamped(t - 250 * 86_400_000, t, WEBRTC),
        ];
        fold(&mut st, old, now - 30);
        assert!(
            st.subjects.is_empty(),
            "no live subject from back-dated events"
        );
        assert_eq!(metrics::HUB_EVENTS_BACKDATED.get() - before, 3);
        // current, a little late, or from a fast clock: counted at arrival
        let live = vec![
            stamped(t, t, HTTP),
            stamped(t - 299_000, t, HTTP),
            stamped(t + 60_000, t, HTTP),
            stamped(t - 1_000, t, WEBRTC),
        ];
        fold(&mut st, live, now - 30);
        assert_eq!(requests(&st, "http:overview", now), Some(3.0));
        assert_eq!(requests(&st, "webrtc:overview", now), Some(1.0));
    }

    #[test]
    fn peers_are_capped_and_expire() {
        let cfg = HubConfig {
            max_peers: 3,
            active_secs: 30,
            ..HubConfig::default()
        };
        let mut st = state(cfg);
        let t = 1_772_359_200_000u64;
        let sec = (t / 1000) as i64;
        // the counters are process-wide and other lib tests (golden, demo
        // rules) track peers in parallel: they move by at least this test's
        let (tracked0, expired0) = (
            metrics::HUB_PEERS_TRACKED.get(),
            metrics::HUB_PEERS_EXPIRED.get(),
        );
        let samples = (0..10).map(|i| webrtc(t, "m1", &format!("p{i}"))).collect();
        fold(&mut st, samples, sec - 30);
        assert!(metrics::HUB_PEERS_TRACKED.get() - tracked0 >= 3);
        assert_eq!(st.members[1].len(), 3, "capped");
        assert_eq!(
            requests(&st, "webrtc:overview", sec),
            Some(10.0),
            "every sample counts"
        );
        let ch = st.views.channel("webrtc:overview").expect("channel");
        let summary = st.summary(&ch, sec, &mut Tops::default());
        assert_eq!(summary["active_peers"], 3);
        assert_eq!(summary["active_meetings"], 1);
        // history older than active_secs is not tracked at all
        let old = (0..5)
            .map(|i| webrtc(t - 100_000, "m2", &format!("q{i}")))
            .collect();
        fold(&mut st, old, sec - 30);
        assert_eq!(st.members[1].len(), 3);
        assert!(
            st.members[1].keys().all(|k| &*k[0] == "m1"),
            "none replayed"
        );
        let m2 = st
            .subjects
            .get("webrtc:meeting:m2")
            .map(|s| s.members.len());
        assert_eq!(m2, Some(0), "counted in the windows, not tracked");
        let shared = Shared::for_tests();
        st.close(sec + 31, &shared);
        assert!(st.members.iter().all(|m| m.is_empty()), "expired");
        assert!(st.subjects.values().all(|s| s.members.is_empty()));
        assert!(metrics::HUB_PEERS_EXPIRED.get() - expired0 >= 3);
    }
}
