//! `GET /v1/ws`: one task per connection reads client messages and, on every
//! closed second, sends each due subscription what it has not seen; a writer
//! task drains a bounded queue into the socket. A full queue never blocks the
//! hub or other clients: the connection's updates are dropped and it gets a
//! fresh snapshot once the queue has room again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{Channel, Hub};
use crate::api::AppState;
use crate::auth::{Auth, Scope};
use crate::telemetry::metrics;

#[derive(Debug, Deserialize)]
pub struct WsQuery {
    token: Option<String>,
}

/// A client message.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum ClientMsg {
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

/// Upgrades after checking the token (read scope) and the per-token limit.
pub async fn handler(
    State(st): State<AppState>,
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
        Err(e) => return crate::api::ApiError::Auth(e).into_response(),
    };
    {
        let mut conns = hub.connections.lock().unwrap_or_else(|p| p.into_inner());
        let n = conns.entry(name.clone()).or_default();
        if *n >= hub.config().max_connections_per_token {
            let limit = hub.config().max_connections_per_token;
            return (
                StatusCode::TOO_MANY_REQUESTS,
                Json(json!({"error": format!("token {name} already has {limit} connections (hub.max_connections_per_token)")})),
            )
                .into_response();
        }
        *n += 1;
    }
    let max = hub.config().max_message_bytes.saturating_mul(4).max(1024);
    // Small socket buffers: with the library's defaults (128 KiB each way)
    // 10,000 connections held over 1.8 GB; messages here are a few KiB.
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(SOCKET_READ_BUFFER)
        .write_buffer_size(SOCKET_WRITE_BUFFER)
        .max_write_buffer_size(max.max(64 * 1024))
        .on_upgrade(move |socket| async move {
            Connection::new(hub.clone()).run(socket).await;
            let mut conns = hub.connections.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = conns.get_mut(&name) {
                *n = n.saturating_sub(1);
            }
        })
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
    /// Updates were dropped (queue full): send a snapshot next.
    stale: bool,
}

struct Connection {
    hub: Arc<Hub>,
    subs: HashMap<String, Sub>,
    out: Option<mpsc::Sender<Message>>,
    /// Alert announcements, while subscribed to `alerts`.
    alerts: Option<tokio::sync::broadcast::Receiver<Arc<Value>>>,
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

impl Connection {
    fn new(hub: Arc<Hub>) -> Self {
        Self {
            hub,
            subs: HashMap::new(),
            out: None,
            alerts: None,
        }
    }

    fn send(&self, v: &Value) -> Sent {
        self.send_text(v.to_string().into())
    }

    fn send_text(&self, text: axum::extract::ws::Utf8Bytes) -> Sent {
        let Some(out) = &self.out else {
            return Sent::Closed;
        };
        match out.try_send(Message::Text(text)) {
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

    async fn run(mut self, socket: WebSocket) {
        let (mut sink, mut stream) = socket.split();
        let (tx, mut rx) = mpsc::channel::<Message>(self.hub.config().send_queue);
        self.out = Some(tx);
        let writer = tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
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
                        Message::Text(t) => self.on_text(t.as_str()),
                        Message::Binary(_) => self.error("binary messages are not supported; send JSON text"),
                        Message::Close(_) => break,
                        Message::Ping(_) | Message::Pong(_) => {}
                    }
                }
                a = next_alert(&mut self.alerts) => match a {
                    Ok(msg) => {
                        if let Some(sub) = self.subs.get_mut("alerts") {
                            match self.out.as_ref().map(|o| o.try_send(Message::Text(msg.to_string().into()))) {
                                Some(Ok(())) => {}
                                _ => {
                                    metrics::HUB_DROPPED.inc();
                                    sub.stale = true;
                                }
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        if let Some(sub) = self.subs.get_mut("alerts") {
                            sub.stale = true;
                        }
                    }
                    Err(_) => self.alerts = None,
                },
                r = ticks.changed() => {
                    if r.is_err() { break }
                    self.deliver_due();
                }
                _ = ping.tick() => {
                    if heard.elapsed() > Duration::from_millis(cfg.pong_timeout_ms) {
                        tracing::debug!("closing an unresponsive WebSocket");
                        break;
                    }
                    if let Some(out) = &self.out {
                        let _ = out.try_send(Message::Ping(Vec::new().into()));
                    }
                }
            }
            if self.out.as_ref().is_none_or(|o| o.is_closed()) {
                break;
            }
        }
        for name in self.subs.keys() {
            self.hub.unsubscribe(name);
        }
        self.out = None; // ends the writer
        writer.abort();
        metrics::HUB_DISCONNECTIONS.inc();
    }

    fn on_text(&mut self, text: &str) {
        let cfg = self.hub.config();
        if text.len() > cfg.max_message_bytes {
            return self.error(format!(
                "message of {} bytes exceeds hub.max_message_bytes ({})",
                text.len(),
                cfg.max_message_bytes
            ));
        }
        let msg: ClientMsg = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                return self.error(format!(
                "bad message: {e} (expected {{\"op\":\"subscribe\"|\"unsubscribe\"|\"ping\", …}})"
            ))
            }
        };
        match msg {
            ClientMsg::Ping { id } => {
                let _ = self.send(&json!({"type": "pong", "id": id}));
            }
            ClientMsg::Unsubscribe { channels } => {
                for c in channels {
                    if self.subs.remove(&c).is_some() {
                        self.hub.unsubscribe(&c);
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
            } => self.subscribe(channels, interval_ms, resume),
        }
    }

    fn subscribe(
        &mut self,
        channels: Vec<String>,
        interval_ms: Option<u64>,
        resume: HashMap<String, i64>,
    ) {
        let cfg = self.hub.config().clone();
        let interval = interval_ms
            .unwrap_or(cfg.default_interval_ms)
            .max(cfg.min_interval_ms);
        let mut ok = Vec::new();
        for name in channels {
            let channel = match Channel::parse(&name) {
                Ok(c) => c,
                Err(e) => {
                    self.error(e);
                    continue;
                }
            };
            if !self.subs.contains_key(&name) && self.subs.len() >= cfg.max_subscriptions {
                self.error(format!(
                    "channel {name}: this connection already watches {} channels (hub.max_subscriptions)",
                    cfg.max_subscriptions
                ));
                continue;
            }
            if !self.subs.contains_key(&name) {
                self.hub.subscribe(&name);
            }
            if channel == Channel::Alerts {
                // alerts are pushed as they happen; a (re)subscription gets the open ones
                self.alerts.get_or_insert_with(|| self.hub.alert_feed());
                let mut sub = Sub {
                    channel,
                    interval: Duration::from_millis(interval),
                    due: Instant::now() + Duration::from_secs(3600 * 24 * 365),
                    last_seq: 0,
                    stale: false,
                };
                self.send_snapshot(&mut sub, &name, "subscribe");
                self.subs.insert(name.clone(), sub);
                ok.push(name);
                continue;
            }
            let mut sub = Sub {
                channel,
                interval: Duration::from_millis(interval),
                due: Instant::now() + Duration::from_millis(interval),
                last_seq: 0,
                stale: false,
            };
            match resume
                .get(&name)
                .map(|seq| (*seq, self.hub.since(&name, *seq)))
            {
                Some((seq, Some(missed))) => {
                    sub.last_seq = seq;
                    if let Some(msg) = update_message(&name, seq, &missed, true) {
                        match self.send(&msg) {
                            Sent::Ok => sub.last_seq = missed.last().map_or(seq, |u| u.seq),
                            _ => sub.stale = true,
                        }
                    }
                }
                other => {
                    let reason = if other.is_some() {
                        "resume_gap"
                    } else {
                        "subscribe"
                    };
                    self.send_snapshot(&mut sub, &name, reason);
                }
            }
            self.subs.insert(name.clone(), sub);
            ok.push(name);
        }
        let _ = self.send(&json!({"type": "subscribed", "channels": ok, "interval_ms": interval}));
    }

    fn send_snapshot(&self, sub: &mut Sub, name: &str, reason: &str) {
        let mut snap = self.hub.snapshot(&sub.channel, true);
        snap["reason"] = json!(reason);
        let seq = snap["seq"].as_i64().unwrap_or(0);
        match self.send(&snap) {
            Sent::Ok => {
                sub.last_seq = seq;
                sub.stale = false;
            }
            _ => sub.stale = true,
        }
        let _ = name;
    }

    /// On a closed second: every subscription whose interval elapsed gets
    /// what it missed, coalesced into one update (or a snapshot if it fell
    /// behind the ring or its updates were dropped).
    fn deliver_due(&mut self) {
        let now = Instant::now();
        let names: Vec<String> = self
            .subs
            .iter()
            .filter(|(_, s)| s.due <= now || s.stale)
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let Some(mut sub) = self.subs.remove(&name) else {
                continue;
            };
            if sub.channel == Channel::Alerts {
                if sub.stale {
                    self.send_snapshot(&mut sub, &name, "slow");
                }
                self.subs.insert(name, sub);
                continue;
            }
            // ticks come once a second: a little slack keeps a 1 s interval
            // from slipping to every other tick
            sub.due = now + sub.interval.saturating_sub(TICK_SLACK);
            if sub.stale {
                self.send_snapshot(&mut sub, &name, "slow");
            } else {
                match self.hub.since(&name, sub.last_seq) {
                    None => self.send_snapshot(&mut sub, &name, "resume_gap"),
                    Some(missed) if missed.len() == 1 && missed[0].seq == sub.last_seq + 1 => {
                        // the common case: one shared, pre-serialized message
                        match self.send_text(missed[0].single(&name)) {
                            Sent::Ok => sub.last_seq = missed[0].seq,
                            _ => sub.stale = true,
                        }
                    }
                    Some(missed) => {
                        if let Some(msg) = update_message(&name, sub.last_seq, &missed, false) {
                            match self.send(&msg) {
                                Sent::Ok => {
                                    sub.last_seq = missed.last().map_or(sub.last_seq, |u| u.seq)
                                }
                                _ => sub.stale = true,
                            }
                        }
                    }
                }
            }
            self.subs.insert(name, sub);
        }
    }
}

/// One `update` carrying every point after `after` and the newest summary.
fn update_message(
    channel: &str,
    after: i64,
    missed: &[Arc<super::Update>],
    resumed: bool,
) -> Option<Value> {
    let last = missed.last()?;
    Some(json!({
        "type": "update",
        "channel": channel,
        "seq": last.seq,
        "after": after,
        "resumed": resumed,
        "points": missed.iter().map(|u| u.point.clone()).collect::<Vec<_>>(),
        "summary": last.summary,
    }))
}
