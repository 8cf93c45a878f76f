//! WebSocket clients of the hub (`GET /v1/ws`) for the integration tests:
//! connect, send a JSON message, wait for the message a test expects.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::Server;

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
