//! TLS on the listener: HTTPS ingest (HTTP/2 by ALPN), a WSS subscription
//! that outlives the request timeout, plain HTTP on the TLS port refused
//! with a clear 400, and a client that does not trust the CA refused
//! without harm to the others. The CA and certificate are made by the test.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use super::{token, INGEST, READ};
use crate::common::tls::TestCa;
use crate::common::{self, http_client, http_event, TestEnv};

/// The next message of type `want` (skipping others), within bounds.
async fn next_of<S>(ws: &mut S, want: &str) -> Value
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    for _ in 0..100 {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(t.as_str()).expect("json");
            if v["type"] == want {
                return v;
            }
        }
    }
    panic!("no {want} message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_ingest_and_wss_subscribe_with_a_test_ca() {
    let ca = TestCa::new();
    let mut env = TestEnv::new("abuse_tls");
    env.settings.server.tls.cert_path = ca.cert_path.clone();
    env.settings.server.tls.key_path = ca.key_path.clone();
    env.settings.server.request_timeout_ms = 1_000;
    env.settings.auth.tokens = vec![
        token("reader", READ, &["read"]),
        token("ingester", INGEST, &["ingest"]),
    ];
    env.migrate().await; // the hub's alert evaluator reads its table
                         // (the helper's readiness probe speaks plain HTTP: the 400 it gets
                         // back is an answer, so it returns once the port serves)
    let server = common::start_with(env.settings.clone(), "ingest,hub").await;
    let port = server.addr.port();
    let base = format!("https://localhost:{port}");

    // HTTPS ingest, over HTTP/2 (ALPN)
    let https = ca.client();
    let r = https
        .post(format!("{base}/v1/events"))
        .bearer_auth(INGEST)
        .json(&json!([http_event(
            1,
            chrono::Utc::now().timestamp_millis()
        )]))
        .send()
        .await
        .expect("https post");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 202);
    // HTTP/1.1 over TLS too
    let h1 = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.ca_pem.as_bytes()).expect("pem"))
        .http1_only()
        .build()
        .expect("client");
    let r = h1.get(format!("{base}/healthz")).send().await.expect("h1");
    assert_eq!(
        (r.version(), r.status().as_u16()),
        (reqwest::Version::HTTP_11, 200)
    );

    // WSS: subscribe, and the connection outlives the request timeout
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = tokio_rustls::TlsConnector::from(ca.rustls_client())
        .connect(name, tcp)
        .await
        .expect("tls handshake");
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("wss://localhost:{port}/v1/ws?token={READ}"), tls)
            .await
            .expect("wss upgrade");
    let send = |v: Value| Message::Text(v.to_string().into());
    ws.send(send(
        json!({"op": "subscribe", "channels": ["http:overview"]}),
    ))
    .await
    .expect("subscribe");
    next_of(&mut ws, "snapshot").await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    ws.send(send(json!({"op": "ping", "id": 7})))
        .await
        .expect("ping");
    assert_eq!(next_of(&mut ws, "pong").await["id"], 7);

    // plain HTTP on the TLS port: a 400 that says what to do
    let r = http_client()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .expect("an answer, not a hang");
    assert_eq!(r.status(), 400);
    assert!(r.text().await.expect("text").contains("https://"));

    // a client that does not trust the CA is refused; the others go on
    let stranger = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    assert!(stranger
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_err());
    let r = https
        .post(format!("{base}/v1/events?token={INGEST}"))
        .json(&json!([http_event(
            2,
            chrono::Utc::now().timestamp_millis()
        )]))
        .send()
        .await
        .expect("https post");
    assert_eq!(r.status(), 202);
    let written: usize = common::shard_entries(&env, "http")
        .await
        .iter()
        .map(Vec::len)
        .sum();
    assert_eq!(written, 2);
    drop(ws);
    server.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_certificate_stops_the_start_naming_the_file() {
    let mut env = TestEnv::new("abuse_tls_missing");
    env.settings.server.tls.cert_path = "/nonexistent/flowmeter.pem".into();
    env.settings.server.tls.key_path = "/nonexistent/flowmeter.key".into();
    let err = flowmeter::app::serve(
        env.settings.clone(),
        "ingest".parse().expect("roles"),
        None,
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect_err("must not start");
    assert!(
        err.to_string().contains("/nonexistent/flowmeter.pem"),
        "{err}"
    );
}
