//! WebSocket clients of the hub (`GET /v1/ws`) for the integration tests:
//! connect, send a JSON message, wait for the message a test expects, and
//! add up a point field of what came.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{wait_until, Server};

/// A plain `ws://` client connection.
pub type Ws = WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket to `server`'s hub; `query` starts with `?` or is empty.
pub async fn connect(server: &Server, query: &str) -> Ws {
    let url = format!("ws://{}/v1/ws{query}", server.addr);
    tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket connects")
        .0
}

/// Sends `v` as one text frame.
pub async fn send<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, v: Value) {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .expect("send");
}

/// The next JSON message matching `pred`, within `limit` (panics past it).
pub async fn next_where<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    limit: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let end = Instant::now() + limit;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no matching message within {limit:?}"))
            .expect("stream open")
            .expect("frame");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(t.as_str()).expect("json");
            if pred(&v) {
                return v;
            }
        }
    }
}

/// Matches messages of type `kind` on `channel` (any channel when empty),
/// for [`next_where`].
pub fn is(kind: &'static str, channel: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["type"] == kind && (channel.is_empty() || v["channel"] == channel)
}

/// Now in unix milliseconds: the `ts` of live events (the hub skips events
/// more than 5 minutes old when they arrive).
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The total of point field `field` in update points (an array of objects)
/// or in a columnar series (`series["1s"]`).
pub fn field_total(points: &Value, field: &str) -> u64 {
    let col = points[field].as_array();
    points
        .as_array()
        .map(|ps| ps.iter().map(|p| p[field].as_u64().unwrap_or(0)).sum())
        .or_else(|| col.map(|c| c.iter().filter_map(Value::as_u64).sum()))
        .unwrap_or(0)
}

/// Waits (20 s at most) until `server`'s hub has closed its first second.
/// Before that its snapshots are as of second 0 (`"seq": 0`), and the
/// first tick sends their subscribers a second full snapshot with `"reason":
/// "resume_gap"` instead of an update.
pub async fn hub_ticking(server: &Server) {
    wait_until(Duration::from_secs(20), || async move {
        let mut ws = connect(server, "").await;
        send(&mut ws, json!({"op": "subscribe", "channels": ["alerts"]})).await;
        let s = next_where(&mut ws, Duration::from_secs(5), is("snapshot", "alerts")).await;
        s["seq"].as_i64().is_some_and(|seq| seq > 0)
    })
    .await;
}
