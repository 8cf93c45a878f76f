//! The realtime hub over a real WebSocket: snapshots, live updates within
//! two seconds, resume without holes, snapshots after too-old gaps, rebuilt
//! windows after a restart, equal numbers on two instances, auth, limits and
//! slow subscribers.

use crate::common;

use std::time::{Duration, Instant};

use common::ws::*;
use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

async fn post(client: &reqwest::Client, server: &Server, from: u64, n: u64) {
    post_http_range(
        client,
        // the ingest token of `tokens_limits_and_slow_subscribers` (ignored where auth is off)
        &server.url("/v1/events?token=ingest-token-0123456789"),
        from..from + n,
        now_ms(),
        1,
    )
    .await;
}

/// Requests in update points (an array of objects) or a columnar series.
fn requests_in(points: &Value) -> u64 {
    field_total(points, "requests")
}

/// `cluster::hub_snapshot_and_resume_on_a_cluster` runs the same on a
/// Redis Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_live_updates_and_resume_without_holes() {
    let mut env = TestEnv::new("hub_live");
    env.settings.redis.shards = 2;
    snapshot_live_and_resume(env).await;
}

/// The body of the snapshot/resume test on `env`'s Redis (one server or a
/// cluster): a snapshot, live updates without holes, a resume after a
/// disconnect with exactly the missed events, a fresh snapshot past the ring.
pub(crate) async fn snapshot_live_and_resume(mut env: TestEnv) {
    env.settings.hub.tick_grace_ms = 200;
    env.migrate().await; // the alert evaluator of processors/alerts.toml reads its table
    let server = env.start("ingest,hub").await;
    let client = http_client();
    post(&client, &server, 0, 300).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let mut ws = connect(&server, "").await;
    send(&mut ws, json!({"op": "subscribe", "channels": ["http:overview", "http:service:svc1"], "interval_ms": 1000})).await;
    let snap = next_where(
        &mut ws,
        Duration::from_secs(5),
        is("snapshot", "http:overview"),
    )
    .await;
    assert_eq!(snap["full"], true);
    assert_eq!(snap["reason"], "subscribe");
    assert_eq!(
        requests_in(&snap["series"]["1s"]),
        300,
        "{}",
        snap["summary"]
    );
    assert_eq!(snap["summary"]["1m"]["requests"], 300);
    assert_eq!(
        snap["series"]["1s"]["requests"].as_array().map(Vec::len),
        Some(300)
    );
    assert_eq!(snap["series"]["1s"]["step_ms"], 1000);
    for q in ["p50", "p95", "p99"] {
        let col = snap["series"]["1m"][q]
            .as_array()
            .expect("1m quantile column");
        assert!(
            col.iter().any(|v| v.as_f64().is_some_and(|x| x > 0.0)),
            "{q}: {col:?}"
        );
    }
    let svc = next_where(
        &mut ws,
        Duration::from_secs(5),
        is("snapshot", "http:service:svc1"),
    )
    .await;
    assert_eq!(
        svc["summary"]["1m"]["requests"], 100,
        "svc1 is every third event"
    );
    assert!(snap["summary"]["top_endpoints"]
        .as_array()
        .is_some_and(|t| !t.is_empty()));
    let mut seq = snap["seq"].as_i64().expect("seq");

    // live: 120 more events show up in updates within 2 s of being accepted
    let sent_at = Instant::now();
    post(&client, &server, 300, 120).await;
    let mut seen = 0;
    while seen < 120 {
        let u = next_where(
            &mut ws,
            Duration::from_secs(4),
            is("update", "http:overview"),
        )
        .await;
        assert_eq!(
            u["after"].as_i64(),
            Some(seq),
            "updates follow each other without holes"
        );
        seq = u["seq"].as_i64().expect("seq");
        seen += requests_in(&u["points"]);
    }
    let lag = sent_at.elapsed();
    eprintln!("120 events visible on the socket {lag:?} after the POST began");
    assert_eq!(seen, 120);
    assert!(lag < Duration::from_millis(2_500), "{lag:?}");

    // bad input gets an error frame and the connection stays usable
    ws.send(Message::Text("{not json".into()))
        .await
        .expect("send");
    let e = next_where(&mut ws, Duration::from_secs(2), is("error", "")).await;
    assert!(
        e["error"]
            .as_str()
            .is_some_and(|s| s.contains("bad message")),
        "{e}"
    );
    send(
        &mut ws,
        json!({"op": "subscribe", "channels": ["http:nope"]}),
    )
    .await;
    let e = next_where(&mut ws, Duration::from_secs(2), is("error", "")).await;
    assert!(
        e["error"].as_str().is_some_and(|s| s.contains("http:nope")),
        "{e}"
    );
    send(&mut ws, json!({"op": "ping", "id": 7})).await;
    let p = next_where(&mut ws, Duration::from_secs(2), is("pong", "")).await;
    assert_eq!(p["id"], 7);
    drop(ws);

    // reconnect after missing some seconds: the missed points, not a snapshot
    post(&client, &server, 420, 50).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let mut ws = connect(&server, "").await;
    send(
        &mut ws,
        json!({"op": "subscribe", "channels": ["http:overview"], "interval_ms": 1000,
                         "resume": {"http:overview": seq}}),
    )
    .await;
    let first = next_where(&mut ws, Duration::from_secs(3), |v| {
        v["channel"] == "http:overview" && (v["type"] == "update" || v["type"] == "snapshot")
    })
    .await;
    assert_eq!(first["type"], "update", "{}", first["reason"]);
    assert_eq!(first["resumed"], true);
    assert_eq!(first["after"].as_i64(), Some(seq));
    let mut missed = requests_in(&first["points"]);
    let mut seq = first["seq"].as_i64().expect("seq");
    while missed < 50 {
        let u = next_where(
            &mut ws,
            Duration::from_secs(3),
            is("update", "http:overview"),
        )
        .await;
        assert_eq!(u["after"].as_i64(), Some(seq));
        seq = u["seq"].as_i64().expect("seq");
        missed += requests_in(&u["points"]);
    }
    assert_eq!(missed, 50, "exactly the events sent while away");
    drop(ws);

    // a gap older than the ring: a fresh snapshot, flagged
    let mut ws = connect(&server, "").await;
    send(
        &mut ws,
        json!({"op": "subscribe", "channels": ["http:overview"],
                         "resume": {"http:overview": seq - 100_000}}),
    )
    .await;
    let s = next_where(
        &mut ws,
        Duration::from_secs(3),
        is("snapshot", "http:overview"),
    )
    .await;
    assert_eq!(s["reason"], "resume_gap");
    assert_eq!(s["full"], true);
    assert_eq!(s["summary"]["5m"]["requests"], 470);
    server.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_hub_rebuilds_and_two_hubs_agree() {
    let mut env = TestEnv::new("hub_rebuild");
    env.settings.redis.shards = 2;
    env.migrate().await;
    let ingest = env.start("ingest").await;
    let client = http_client();
    for i in 0..5 {
        post(&client, &ingest, i * 100, 100).await;
        let w = json!({"kind": "webrtc", "ts": now_ms(), "meeting_id": format!("m{i}"), "peer_id": "p1",
                       "bytes_sent": 1000, "bytes_received": 2000, "rtt_ms": 80.0, "jitter_ms": 5.0,
                       "packet_loss": 0.0, "candidate_type": if i == 0 { "relay" } else { "host" }});
        let (code, _) = post_ndjson(&client, &ingest.url("/v1/events"), w.to_string()).await;
        assert_eq!(code, 202);
        tokio::time::sleep(Duration::from_millis(1_000)).await;
    }
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    // two hubs started after the events: both rebuild from the streams
    let a = env.start("hub").await;
    let b = env.start("hub").await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut snaps = Vec::new();
    for hub in [&a, &b] {
        let mut ws = connect(hub, "").await;
        send(
            &mut ws,
            json!({"op": "subscribe", "channels": ["http:overview", "webrtc:overview"]}),
        )
        .await;
        let h = next_where(
            &mut ws,
            Duration::from_secs(5),
            is("snapshot", "http:overview"),
        )
        .await;
        let w = next_where(
            &mut ws,
            Duration::from_secs(5),
            is("snapshot", "webrtc:overview"),
        )
        .await;
        snaps.push((h, w));
    }
    let (ha, wa) = &snaps[0];
    let (hb, wb) = &snaps[1];
    assert_eq!(ha["summary"]["5m"]["requests"], 500, "{}", ha["summary"]);
    assert_eq!(
        ha["summary"]["5m"]["requests"],
        hb["summary"]["5m"]["requests"]
    );
    assert_eq!(wa["summary"]["active_meetings"], 5, "{wa}");
    assert_eq!(wa["summary"]["5m"]["relayed_share"], 0.2);
    assert_eq!(wa["summary"]["5m"]["quality"]["excellent"], 5, "{wa}");
    // the same seconds hold the same points on both
    let pts = |s: &Value| -> Vec<(i64, u64)> {
        let start = s["series"]["1s"]["start"].as_i64().unwrap_or(0);
        s["series"]["1s"]["requests"]
            .as_array()
            .map(|c| {
                c.iter()
                    .enumerate()
                    .filter_map(|(i, n)| {
                        n.as_u64()
                            .filter(|n| *n > 0)
                            .map(|n| (start + i as i64 * 1000, n))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(pts(ha), pts(hb));
    assert!(
        pts(ha).len() >= 3,
        "events spread over several seconds: {:?}",
        pts(ha)
    );
    assert_eq!(wa["summary"]["5m"], wb["summary"]["5m"]);
    a.stop().await;
    b.stop().await;
    ingest.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_limits_and_slow_subscribers() {
    let mut env = TestEnv::new("hub_limits");
    env.settings.auth.tokens = vec![
        flowmeter::config::TokenConfig {
            name: "dash".into(),
            token: "read-token-0123456789".into(),
            scopes: vec!["read".into()],
            ..Default::default()
        },
        flowmeter::config::TokenConfig {
            name: "collector".into(),
            token: "ingest-token-0123456789".into(),
            scopes: vec!["ingest".into()],
            ..Default::default()
        },
    ];
    env.settings.hub.max_subscriptions = 3;
    env.settings.hub.max_connections_per_token = 3;
    env.settings.hub.send_queue = 4;
    // the stalled client below floods re-subscriptions: lift the per-second
    // caps so its queue overflows (tests/integration/abuse/hub.rs tests the caps)
    env.settings.hub.max_messages_per_sec = 10_000;
    env.settings.hub.max_snapshots_per_sec = 10_000;
    env.migrate().await;
    let server = env.start("ingest,hub").await;
    let client = http_client();
    post(&client, &server, 0, 600).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;

    let status_of = |r: Result<_, tokio_tungstenite::tungstenite::Error>| match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => 101,
    };
    let url = |q: &str| format!("ws://{}/v1/ws{q}", server.addr);
    assert_eq!(
        status_of(tokio_tungstenite::connect_async(url("")).await),
        401
    );
    assert_eq!(
        status_of(tokio_tungstenite::connect_async(url("?token=wrong")).await),
        401
    );
    assert_eq!(
        status_of(tokio_tungstenite::connect_async(url("?token=ingest-token-0123456789")).await),
        403
    );
    let q = "?token=read-token-0123456789";
    let mut healthy = connect(&server, q).await;
    let mut stalled = connect(&server, q).await;
    let _third = connect(&server, q).await;
    assert_eq!(
        status_of(tokio_tungstenite::connect_async(url(q)).await),
        429
    );

    // subscription limit: the fourth channel is refused with a reason
    send(&mut healthy, json!({"op": "subscribe", "interval_ms": 250,
        "channels": ["http:overview", "http:service:svc0", "http:service:svc1", "http:service:svc2"]})).await;
    let e = next_where(&mut healthy, Duration::from_secs(3), is("error", "")).await;
    assert!(
        e["error"]
            .as_str()
            .is_some_and(|s| s.contains("max_subscriptions")),
        "{e}"
    );

    // a client that stops reading: its queue overflows, it costs nothing to others
    for _ in 0..300 {
        send(&mut stalled, json!({"op": "subscribe", "channels": ["http:overview", "http:service:svc0", "http:service:svc1"]})).await;
    }
    let before = Instant::now();
    let mut updates = 0;
    while before.elapsed() < Duration::from_secs(4) {
        let u = next_where(
            &mut healthy,
            Duration::from_secs(3),
            is("update", "http:overview"),
        )
        .await;
        assert!(u["seq"].as_i64().is_some());
        updates += 1;
    }
    assert!(
        updates >= 3,
        "the healthy client kept getting updates: {updates}"
    );
    let dropped = metric(&client, &server, "flowmeter_hub_messages_dropped_total").await;
    assert!(dropped > 0.0, "no message was dropped");
    // once it reads again it gets a fresh snapshot, flagged "slow"
    let s = next_where(&mut stalled, Duration::from_secs(20), |v| {
        v["reason"] == "slow"
    })
    .await;
    assert_eq!(s["type"], "snapshot");
    assert_eq!(s["full"], true);
    server.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresponsive_connections_are_closed() {
    let mut env = TestEnv::new("hub_pong");
    env.settings.hub.ping_interval_ms = 200;
    env.settings.hub.pong_timeout_ms = 700;
    env.migrate().await;
    let server = env.start("hub").await;
    let mut quiet = connect(&server, "").await;
    let mut lively = connect(&server, "").await;
    // `lively` answers pings (the client library does, whenever it reads);
    // `quiet` reads nothing for 2 s, so it answers nothing
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end {
        let _ = tokio::time::timeout(Duration::from_millis(100), lively.next()).await;
    }
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match quiet.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => continue, // pings queued before the close
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(closed, "the silent connection was closed");
    send(&mut lively, json!({"op": "ping", "id": 1})).await;
    let p = next_where(&mut lively, Duration::from_secs(2), is("pong", "")).await;
    assert_eq!(p["id"], 1, "the responsive one stays open");
    server.stop().await;
    env.cleanup().await;
}
