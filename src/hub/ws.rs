//! `GET /v1/ws`: one task per connection reads client messages and, on every
//! closed second, sends each due subscription what it has not seen; a writer
//! task drains a bounded queue into the socket. A full queue never blocks the
//! hub or other clients: the connection's updates are dropped and it gets a
//! fresh snapshot once the queue has room again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::channels::update_text;
use super::{Channel, Hub, Refused, Since};
use crate::auth::{Auth, ClientKey, Scope};
use crate::config::HubConfig;
use crate::telemetry::{families, metrics};

/// What `GET /v1/ws` needs of the server's state: the hub (absent when the
/// hub role does not run in this process) and the tokens. The API builds it
/// from its own state (`FromRef`), so the hub does not depend on the API.
#[derive(Clone)]
pub struct WsState {
    pub hub: Option<Arc<Hub>>,
    pub auth: Auth,
}

#[derive(Debug, Deserialize)]
pub struct WsQuery {
    token: Option<String>,
}

/// A client message (docs/websocket.md).
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientMsg {
    Subscribe {
        channels: Vec<String>,
        #[serde(default)]
        interval_ms: Option<u64>,
        /// channel → last seq the client holds
        #[serde(default)]
        resume: HashMap<String, i64>,
    },
    Unsubscribe {
        channels: Vec<String>,
    },
    Ping {
        #[serde(default)]
        id: Option<Value>,
    },
}

impl ClientMsg {
    /// Reads one client message; the error is the text of the error frame.
    pub fn parse(text: &str) -> Result<ClientMsg, String> {
        serde_json::from_str(text).map_err(|e| {
            format!(
                "bad message: {e} (expected {{\"op\":\"subscribe\"|\"unsubscribe\"|\"ping\", …}})"
            )
        })
    }
}

/// Upgrades after checking the token (read scope) and the connection
/// limits: per token, and per client address when auth is off. The slots
/// are held by a [`Slots`] guard that the connection owns: a failed upgrade,
/// a panic or a close gives them back. The connection's channels are
/// charged to its client (see [`client_of`]).
pub async fn handler(
    State(st): State<WsState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<WsQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let Some(hub) = st.hub.clone() else {
        return (StatusCode::NOT_FOUND, "the hub role is not running here\n").into_response();
    };
    let name = match st
        .auth
        .check(Auth::token_of(&headers, q.token.as_deref()), Scope::Read)
    {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    let cfg = hub.config();
    let anonymous = (!st.auth.enabled()).then(|| peer.ip());
    let client = client_of(&name, anonymous);
    let slots = match Slots::take(&hub, wants(cfg, &name, anonymous)) {
        Ok(s) => s,
        Err(e) => {
            return (StatusCode::TOO_MANY_REQUESTS, Json(json!({"error": e}))).into_response()
        }
    };
    let max = cfg.max_message_bytes.saturating_mul(4).max(1024);
    // Small socket buffers: with the library's defaults (128 KiB each way)
    // 10,000 connections held over 1.8 GB; messages here are a few KiB.
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(SOCKET_READ_BUFFER)
        .write_buffer_size(SOCKET_WRITE_BUFFER)
        .max_write_buffer_size(max.max(64 * 1024))
        .on_upgrade(move |socket| async move {
            let _slots = slots; // given back when this future ends or is dropped
            Connection::new(hub, client).run(socket).await;
        })
}

/// Who a connection is for the per-client limits: its token or, when auth
/// is off (`anonymous` holds the peer's address), its client address as
/// [`ClientKey`] counts it (IPv6 by /64, as the ingest rate limit).
fn client_of(token: &str, anonymous: Option<IpAddr>) -> Arc<str> {
    match anonymous {
        Some(ip) => format!("address {}", ClientKey::from(ip)).into(),
        None => format!("token {token}").into(),
    }
}

/// The connection slots a connection takes: one of its token's and, when
/// auth is off, one of its client address's.
fn wants(cfg: &HubConfig, token: &str, anonymous: Option<IpAddr>) -> Vec<Want> {
    let mut wants = vec![Want {
        key: client_of(token, None).to_string(),
        limit: cfg.max_connections_per_token,
        field: "hub.max_connections_per_token",
    }];
    if anonymous.is_some() {
        wants.push(Want {
            key: client_of(token, anonymous).to_string(),
            limit: cfg.max_connections_per_ip,
            field: "hub.max_connections_per_ip",
        });
    }
    wants
}

/// A connection slot to take: `key` may hold at most `limit` connections.
struct Want {
    key: String,
    limit: usize,
    field: &'static str,
}

/// Connection slots held by one connection, given back on drop: after a
/// close, a failed upgrade (the callback is dropped unrun) or a panic.
pub(crate) struct Slots {
    hub: Arc<Hub>,
    keys: Vec<String>,
}

impl Slots {
    /// Takes one slot of every key, or none when one is at its limit.
    fn take(hub: &Arc<Hub>, wants: Vec<Want>) -> Result<Slots, String> {
        let mut conns = hub.connections.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = wants
            .iter()
            .find(|w| conns.get(&w.key).copied().unwrap_or(0) >= w.limit)
        {
            return Err(format!(
                "{} already has {} connections ({})",
                w.key, w.limit, w.field
            ));
        }
        for w in &wants {
            *conns.entry(w.key.clone()).or_default() += 1;
        }
        hub.open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Slots {
            hub: hub.clone(),
            keys: wants.into_iter().map(|w| w.key).collect(),
        })
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        self.hub
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let mut conns = self
            .hub
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for k in &self.keys {
            if let Some(n) = conns.get_mut(k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    conns.remove(k);
                }
            }
        }
    }
}

/// Per-connection socket buffers (the outgoing queue bounds the rest).
const SOCKET_READ_BUFFER: usize = 4 * 1024;
const SOCKET_WRITE_BUFFER: usize = 0;

/// Slack when deciding whether a subscription's interval has elapsed.
const TICK_SLACK: Duration = Duration::from_millis(250);

struct Sub {
    channel: Channel,
    interval: Duration,
    due: Instant,
    last_seq: i64,
    /// A snapshot is owed, for this reason (`subscribe`, `resume_gap`,
    /// `slow`); sent within the connection's snapshots per second.
    pending: Option<&'static str>,
}

struct Connection {
    hub: Arc<Hub>,
    /// Its client, charged for the channels it brings into the table.
    client: Arc<str>,
    subs: HashMap<String, Sub>,
    out: Option<mpsc::Sender<Outgoing>>,
    /// While delivering what a closed second produced: when the hub closed
    /// it (the delivery lag of what is queued counts from there).
    tick_at: Option<Instant>,
    /// Alert announcements, while subscribed to `alerts`.
    alerts: Option<tokio::sync::broadcast::Receiver<Arc<Value>>>,
    /// Start of the current one-second window and the messages received in it.
    window: (Instant, u32),
    /// Snapshots still allowed until the next closed second.
    snapshots_left: u32,
    /// Subscriptions owed a snapshot, in the order they became owed: a
    /// subscription is here exactly while its `pending` is set, so once at
    /// most, and no more entries than `subs` (`hub.max_subscriptions`).
    owed: VecDeque<String>,
}

/// A message for the socket, with the tick it delivers (if any).
type Outgoing = (Message, Option<Instant>);

/// A connection's subscriptions are given back however it ends.
impl Drop for Connection {
    fn drop(&mut self) {
        for name in self.subs.keys() {
            self.hub.unsubscribe(name);
        }
    }
}

/// The next alert announcement, or never when not subscribed.
async fn next_alert(
    rx: &mut Option<tokio::sync::broadcast::Receiver<Arc<Value>>>,
) -> Result<Arc<Value>, tokio::sync::broadcast::error::RecvError> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

enum Sent {
    Ok,
    Full,
    Closed,
}

/// A snapshot message: `body` (the hub's JSON object) with its `reason`.
fn with_reason(body: &str, reason: &str) -> String {
    match body.strip_prefix('{') {
        Some(rest) => format!("{{\"reason\":{},{rest}", Value::from(reason)),
        None => body.to_string(),
    }
}

impl Connection {
    fn new(hub: Arc<Hub>, client: Arc<str>) -> Self {
        let snapshots_left = hub.config().max_snapshots_per_sec;
        Self {
            hub,
            client,
            subs: HashMap::new(),
            out: None,
            tick_at: None,
            alerts: None,
            window: (Instant::now(), 0),
            snapshots_left,
            owed: VecDeque::new(),
        }
    }

    fn send(&self, v: &Value) -> Sent {
        self.send_text(v.to_string().into())
    }

    fn send_text(&self, text: axum::extract::ws::Utf8Bytes) -> Sent {
        let Some(out) = &self.out else {
            return Sent::Closed;
        };
        match out.try_send((Message::Text(text), self.tick_at)) {
            Ok(()) => Sent::Ok,
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::HUB_DROPPED.inc();
                Sent::Full
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Sent::Closed,
        }
    }

    fn error(&self, msg: impl Into<String>) {
        let _ = self.send(&json!({"type": "error", "error": msg.into()}));
    }

    /// Owes subscription `name` a snapshot for `reason` (a `subscribe`
    /// does not replace a reason already owed).
    fn owe(&mut self, name: &str, reason: &'static str) {
        let Some(sub) = self.subs.get_mut(name) else {
            return;
        };
        if sub.pending.is_none() {
            self.owed.push_back(name.to_string());
        }
        if reason != "subscribe" || sub.pending.is_none() {
            sub.pending = Some(reason);
        }
    }

    async fn run(mut self, socket: WebSocket) {
        let (mut sink, mut stream) = socket.split();
        let (tx, mut rx) = mpsc::channel::<Outgoing>(self.hub.config().send_queue);
        self.out = Some(tx);
        let writer = tokio::spawn(async move {
            while let Some((m, tick)) = rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
                if let Some(t) = tick {
                    families::ws_delivery_lag(t.elapsed().as_secs_f64());
                }
            }
            let _ = sink.close().await;
        });
        let cfg = self.hub.config().clone();
        let mut ticks = self.hub.ticks();
        let mut ping = tokio::time::interval(Duration::from_millis(cfg.ping_interval_ms.max(100)));
        ping.tick().await;
        let mut heard = Instant::now();
        metrics::HUB_CONNECTIONS.inc();
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(Ok(msg)) = msg else { break };
                    heard = Instant::now();
                    match msg {
                        Message::Text(t) => {
                            if self.allowed() {
                                self.on_text(t.as_str()).await;
                            }
                        }
                        Message::Binary(_) => {
                            if self.allowed() {
                                self.error("binary messages are not supported; send JSON text");
                            }
                        }
                        Message::Close(_) => break,
                        Message::Ping(_) | Message::Pong(_) => {}
                    }
                }
                a = next_alert(&mut self.alerts) => match a {
                    Ok(msg) => {
                        if self.subs.contains_key("alerts") {
                            if let Sent::Full = self.send_text(msg.to_string().into()) {
                                self.owe("alerts", "slow");
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        self.owe("alerts", "slow");
                    }
                    Err(_) => self.alerts = None,
                },
                r = ticks.changed() => {
                    if r.is_err() { break }
                    self.snapshots_left = cfg.max_snapshots_per_sec;
                    self.tick_at = self.hub.last_close();
                    self.deliver_due().await;
                    self.tick_at = None;
                }
                _ = ping.tick() => {
                    if heard.elapsed() > Duration::from_millis(cfg.pong_timeout_ms) {
                        tracing::debug!("closing an unresponsive WebSocket");
                        break;
                    }
                    if let Some(out) = &self.out {
                        let _ = out.try_send((Message::Ping(Vec::new().into()), None));
                    }
                }
            }
            if self.out.as_ref().is_none_or(|o| o.is_closed()) {
                break;
            }
        }
        self.out = None; // ends the writer
        writer.abort();
        metrics::HUB_DISCONNECTIONS.inc();
        // dropping `self` gives the subscriptions back
    }

    /// Counts a client message against `hub.max_messages_per_sec`; past it
    /// the message is ignored (one error frame per second says so).
    fn allowed(&mut self) -> bool {
        let max = self.hub.config().max_messages_per_sec;
        let now = Instant::now();
        if now.duration_since(self.window.0) >= Duration::from_secs(1) {
            self.window = (now, 0);
        }
        self.window.1 = self.window.1.saturating_add(1);
        if self.window.1 <= max {
            return true;
        }
        metrics::HUB_CLIENT_MESSAGES_IGNORED.inc();
        if self.window.1 == max.saturating_add(1) {
            self.error(format!(
                "more than {max} messages in one second (hub.max_messages_per_sec): the rest of this second's messages are ignored"
            ));
        }
        false
    }

    async fn on_text(&mut self, text: &str) {
        let cfg = self.hub.config();
        if text.len() > cfg.max_message_bytes {
            return self.error(format!(
                "message of {} bytes exceeds hub.max_message_bytes ({})",
                text.len(),
                cfg.max_message_bytes
            ));
        }
        let msg = match ClientMsg::parse(text) {
            Ok(m) => m,
            Err(e) => return self.error(e),
        };
        match msg {
            ClientMsg::Ping { id } => {
                let _ = self.send(&json!({"type": "pong", "id": id}));
            }
            ClientMsg::Unsubscribe { channels } => {
                for c in channels {
                    if self.subs.remove(&c).is_some() {
                        self.hub.unsubscribe(&c);
                        // a later subscription starts afresh, and is owed once
                        self.owed.retain(|n| *n != c);
                    }
                    if c == "alerts" {
                        self.alerts = None;
                    }
                }
            }
            ClientMsg::Subscribe {
                channels,
                interval_ms,
                resume,
            } => self.subscribe(channels, interval_ms, resume).await,
        }
    }

    /// Subscribes to each channel named (once, however often it is named),
    /// then sends the snapshots owed within the connection's budget. A
    /// `resume` is honoured for channels the connection does not watch yet;
    /// naming one it watches again owes it a snapshot, within the budget.
    async fn subscribe(
        &mut self,
        channels: Vec<String>,
        interval_ms: Option<u64>,
        resume: HashMap<String, i64>,
    ) {
        let cfg = self.hub.config().clone();
        let interval = Duration::from_millis(
            interval_ms
                .unwrap_or(cfg.default_interval_ms)
                .max(cfg.min_interval_ms),
        );
        let mut named = HashSet::new();
        let mut ok = Vec::new();
        let mut resumed = Vec::new();
        let mut over = 0usize;
        for name in channels {
            if !named.insert(name.clone()) {
                continue;
            }
            let channel = match self.hub.views().channel(&name) {
                Ok(c) => c,
                Err(e) => {
                    self.error(e);
                    continue;
                }
            };
            let new = !self.subs.contains_key(&name);
            if new {
                if self.subs.len() >= cfg.max_subscriptions {
                    over += 1;
                    continue;
                }
                // a client resuming a channel without data missed only empty
                // seconds when the hub knows it had none since
                let quiet_from = match resume.get(&name) {
                    Some(&seq) if !channel.is_alerts() => self
                        .hub
                        .quiet_since(&channel, seq)
                        .await
                        .then_some(seq.saturating_add(1)),
                    _ => None,
                };
                if let Err(r) = self
                    .hub
                    .subscribe(&name, &channel, quiet_from, &self.client)
                {
                    metrics::HUB_SUBSCRIPTIONS_REFUSED.inc();
                    self.error(match r {
                        Refused::Full => format!(
                            "channel {name}: the hub already watches {} channels (hub.max_channels); try again later",
                            cfg.max_channels
                        ),
                        Refused::ClientQuota => format!(
                            "channel {name}: this client already brought {} channels into the hub (hub.max_channels_per_client); unsubscribe some first",
                            cfg.max_channels_per_client
                        ),
                    });
                    continue;
                }
            }
            let alerts = channel.is_alerts();
            if alerts {
                // pushed as they happen; a (re)subscription gets the open ones
                self.alerts.get_or_insert_with(|| self.hub.alert_feed());
            }
            let due = Instant::now()
                + if alerts {
                    Duration::from_secs(3600 * 24 * 365)
                } else {
                    interval
                };
            let sub = self.subs.entry(name.clone()).or_insert(Sub {
                channel,
                interval,
                due,
                last_seq: 0,
                pending: None,
            });
            sub.interval = interval;
            match resume.get(&name) {
                // a resume of a channel already watched would compute an
                // update per message outside the snapshot budget
                Some(seq) if new && !alerts => {
                    sub.last_seq = *seq;
                    resumed.push(name.clone());
                }
                _ => self.owe(&name, "subscribe"),
            }
            ok.push(name);
        }
        if over > 0 {
            self.error(format!(
                "{over} channel(s) refused: this connection already watches {} channels (hub.max_subscriptions)",
                cfg.max_subscriptions
            ));
        }
        // `subscribed` first, then what each channel is owed: the resumed
        // ones' updates, then the snapshots (docs/websocket.md, "Protocol")
        let _ = self.send(&json!({"type": "subscribed", "channels": ok, "interval_ms": interval.as_millis() as u64}));
        for name in resumed {
            self.deliver(&name, true);
        }
        self.send_snapshots().await;
    }

    /// Sends subscription `name` what it lacks after its `last_seq`: the
    /// shared one-second update, several seconds in one update, or (owing
    /// a snapshot) nothing now.
    fn deliver(&mut self, name: &str, resumed: bool) {
        let Some(sub) = self.subs.get(name) else {
            return;
        };
        let after = sub.last_seq;
        // a resume is flagged `resumed`, so it never takes the shared message
        let owed = self.hub.since(name, after, !resumed);
        let text: Option<(i64, axum::extract::ws::Utf8Bytes)> = match owed {
            Since::UpToDate => None,
            Since::Gap => {
                self.owe(name, "resume_gap");
                None
            }
            Since::Single(seq, text) => Some((seq, text)),
            Since::Missed {
                seq,
                points,
                summary,
            } => Some((
                seq,
                update_text(
                    &sub.channel,
                    after,
                    resumed,
                    seq,
                    &points,
                    summary.as_deref(),
                )
                .into(),
            )),
        };
        let Some((seq, text)) = text else {
            return;
        };
        match self.send_text(text) {
            Sent::Ok => {
                if let Some(sub) = self.subs.get_mut(name) {
                    sub.last_seq = seq;
                }
            }
            Sent::Full | Sent::Closed => self.owe(name, "slow"),
        }
    }

    /// Sends the snapshots owed, as many as `hub.max_snapshots_per_sec`
    /// still allows this second; the rest wait for the next seconds.
    async fn send_snapshots(&mut self) {
        while let Some(name) = self.owed.front().cloned() {
            let Some((channel, reason)) = self
                .subs
                .get(&name)
                .and_then(|s| Some((s.channel.clone(), s.pending?)))
            else {
                self.owed.pop_front(); // unsubscribed, or served meanwhile
                continue;
            };
            if self.out.as_ref().is_some_and(|o| o.capacity() == 0) {
                // the client is not reading: it gets its snapshots once it does
                for n in &self.owed {
                    if let Some(sub) = self.subs.get_mut(n) {
                        if sub.pending.is_some() {
                            sub.pending = Some("slow");
                        }
                    }
                }
                return;
            }
            if self.snapshots_left == 0 {
                return;
            }
            let Ok((seq, body)) = self.hub.snapshot(&channel).await else {
                return;
            };
            self.snapshots_left -= 1;
            self.owed.pop_front();
            let sent = self.send_text(with_reason(&body, reason).into());
            if let Some(sub) = self.subs.get_mut(&name) {
                sub.pending = None;
                match sent {
                    Sent::Ok => sub.last_seq = seq,
                    Sent::Full | Sent::Closed => self.owe(&name, "slow"),
                }
            }
        }
    }

    /// On a closed second: every subscription whose interval elapsed gets
    /// what it missed, coalesced into one update; then the snapshots owed.
    async fn deliver_due(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .subs
            .iter_mut()
            .filter(|(_, s)| s.due <= now && s.pending.is_none() && !s.channel.is_alerts())
            .map(|(n, s)| {
                // ticks come once a second: a little slack keeps a 1 s
                // interval from slipping to every other tick
                s.due = now + s.interval.saturating_sub(TICK_SLACK);
                n.clone()
            })
            .collect();
        for name in due {
            self.deliver(&name, false);
        }
        self.send_snapshots().await;
    }
}

#[cfg(test)]
mod tests;
