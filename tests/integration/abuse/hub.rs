//! The realtime hub under attack: channel churn, many warm channels,
//! multi-byte names, duplicate subscriptions and floods of messages, peer
//! ids and new subjects, and connections reset mid-upgrade. Each test
//! asserts the configured bound, that a bystander still gets every update,
//! that canary events are counted exactly, and that no lease is lost.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::common::ws::{next_where, send};
use crate::common::*;

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// Resident memory of this process (the server runs in it), MB.
fn rss_mb() -> f64 {
    status_kib("VmRSS") as f64 / 1024.0
}

/// A WebSocket to `server` from local address `from` (any 127.x.y.z).
async fn try_connect_from(
    from: &str,
    addr: SocketAddr,
    query: &str,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(format!("{from}:0").parse().expect("local address"))
        .expect("bind");
    let tcp = sock.connect(addr).await.expect("tcp connect");
    tokio_tungstenite::client_async(format!("ws://{addr}/v1/ws{query}"), tcp)
        .await
        .map(|(ws, _)| ws)
}

async fn connect(server: &Server, query: &str) -> Ws {
    try_connect_from("127.0.0.1", server.addr, query)
        .await
        .expect("websocket connects")
}

/// The HTTP status of a refused upgrade (101 when it succeeds).
fn status_of(r: &Result<Ws, tokio_tungstenite::tungstenite::Error>) -> u16 {
    match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => 101,
    }
}

/// Every JSON message received within `d`.
async fn drain(ws: &mut Ws, d: Duration) -> Vec<Value> {
    let end = Instant::now() + d;
    let mut out = Vec::new();
    while let Ok(Some(Ok(m))) =
        tokio::time::timeout(end.saturating_duration_since(Instant::now()), ws.next()).await
    {
        if let Message::Text(t) = m {
            out.push(serde_json::from_str(t.as_str()).expect("json"));
        }
    }
    out
}

fn requests_in(v: &Value) -> u64 {
    match v {
        Value::Array(ps) => ps.iter().map(|p| p["requests"].as_u64().unwrap_or(0)).sum(),
        _ => v["requests"]
            .as_array()
            .map(|c| c.iter().filter_map(Value::as_u64).sum())
            .unwrap_or(0),
    }
}

/// What a bystander subscribed to `http:overview` saw.
#[derive(Debug, Default)]
struct Seen {
    updates: u64,
    /// Updates whose `after` was not the seq received last.
    holes: u64,
    /// Snapshots after the first (a stall or a gap would cause one).
    extra_snapshots: u64,
    /// Requests in every update (not the first snapshot).
    requests: u64,
}

/// A client watching `http:overview` every second, counting what it gets.
struct Bystander {
    seen: Arc<std::sync::Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Bystander {
    async fn start(server: &Server) -> Bystander {
        let mut ws = connect(server, "").await;
        send(
            &mut ws,
            json!({"op": "subscribe", "channels": ["http:overview"], "interval_ms": 1000}),
        )
        .await;
        let first = next_where(&mut ws, Duration::from_secs(5), |v| {
            v["type"] == "snapshot" && v["channel"] == "http:overview"
        })
        .await;
        let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            let mut seq = first["seq"].as_i64().unwrap_or(0);
            while let Some(Ok(m)) = ws.next().await {
                let Message::Text(t) = m else { continue };
                let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                if v["channel"] != "http:overview" {
                    continue;
                }
                let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
                if v["type"] == "snapshot" {
                    s.extra_snapshots += 1;
                } else if v["type"] == "update" {
                    s.updates += 1;
                    if v["after"].as_i64() != Some(seq) {
                        s.holes += 1;
                    }
                    s.requests += requests_in(&v["points"]);
                }
                seq = v["seq"].as_i64().unwrap_or(seq);
            }
        });
        Bystander { seen, task }
    }

    fn requests(&self) -> u64 {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).requests
    }

    /// Waits until the updates carried `n` requests in all (and not more).
    async fn counts_exactly(&self, n: u64) {
        wait_until(Duration::from_secs(10), || async { self.requests() >= n }).await;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(
            self.requests(),
            n,
            "the bystander counted the canaries exactly"
        );
    }

    /// Stops it; asserts it got one update per second without holes over `secs`.
    fn check(self, secs: f64) {
        self.task.abort();
        let s = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        assert_eq!(s.holes, 0, "updates without holes: {s:?}");
        assert_eq!(s.extra_snapshots, 0, "no stall forced a snapshot: {s:?}");
        assert!(
            s.updates as f64 >= secs - 3.0,
            "an update every second over {secs:.0} s: {s:?}"
        );
    }
}

/// Posts `n` http events of service `service` (canaries).
async fn post_canaries(client: &reqwest::Client, server: &Server, service: &str, n: u64) {
    let now = chrono::Utc::now().timestamp_millis();
    let body: Vec<String> = (0..n)
        .map(|i| {
            let mut e = http_event(i, now);
            e["service"] = json!(service);
            e.to_string()
        })
        .collect();
    let (code, reply) = post_ndjson(client, &server.url("/v1/events"), body.join("\n")).await;
    assert_eq!(code, 202, "{reply}");
}

/// Every lease key of the test's prefix and its owner.
async fn leases(env: &TestEnv) -> HashMap<String, String> {
    let mut r = env.redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:lease:*", env.name))
        .query_async(&mut r)
        .await
        .expect("keys");
    let mut out = HashMap::new();
    for k in keys {
        let v: Option<String> = redis::cmd("GET")
            .arg(&k)
            .query_async(&mut r)
            .await
            .unwrap_or(None);
        if let Some(v) = v {
            out.insert(k, v);
        }
    }
    out
}

/// Samples the leases every 250 ms until `stop`; returns the samples where
/// one was missing or had changed owner.
fn watch_leases(
    env: &TestEnv,
    before: HashMap<String, String>,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Vec<String>> {
    let env = env.handle();
    tokio::spawn(async move {
        let mut lost = Vec::new();
        for _ in 0..400 {
            if stop.is_cancelled() {
                break;
            }
            let now = leases(&env).await;
            for (k, v) in &before {
                if now.get(k) != Some(v) {
                    lost.push(format!("{k}: {v} → {:?}", now.get(k)));
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        lost
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_churn_costs_nothing_and_disturbs_nobody() {
    let _one = heavy().await;
    let mut env = TestEnv::new("abuse_hub_churn");
    // no per-connection message cap: this test is about what the table holds
    env.settings.hub.max_messages_per_sec = 1_000_000;
    // The 2 s test lease was lost when other engineers' builds and tests
    // held both cores (load average 10): the claim here is that the churn
    // does not stall the process for seconds, not that renewals survive a
    // starved machine. 6 s is still under the 10 s default.
    env.settings.rollup.lease_ms = 6_000;
    env.migrate().await;
    let server = env.start("ingest,rollup,hub").await;
    let client = http_client();
    post_http_range(
        &client,
        &server.url("/v1/events"),
        0..300,
        chrono::Utc::now().timestamp_millis(),
        1,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let bystander = Bystander::start(&server).await;
    let held = leases(&env).await;
    assert!(
        held.len() >= 2,
        "the rollup's shard leases and the alert lease: {held:?}"
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let lease_watch = watch_leases(&env, held, stop.clone());
    let rss0 = rss_mb();
    let started = Instant::now();

    // 4 clients subscribe to and unsubscribe from random well-formed names
    let mut attackers = Vec::new();
    for a in 0..4u64 {
        let mut ws = connect(&server, "").await;
        attackers.push(tokio::spawn(async move {
            let mut sent = 0u64;
            let end = Instant::now() + Duration::from_secs(8);
            for round in 0..5_000u64 {
                if Instant::now() > end {
                    break;
                }
                let names: Vec<String> = (0..64)
                    .map(|i| {
                        format!(
                            "http:service:churn-{a}-{round}-{i}-{:x}",
                            rand::random::<u32>()
                        )
                    })
                    .collect();
                send(
                    &mut ws,
                    json!({"op": "subscribe", "channels": names, "interval_ms": 250}),
                )
                .await;
                send(&mut ws, json!({"op": "unsubscribe", "channels": names})).await;
                sent += 128;
                // read what came back, so the socket keeps flowing
                while let Ok(Some(_)) =
                    tokio::time::timeout(Duration::from_millis(1), ws.next()).await
                {
                }
            }
            sent
        }));
    }
    let mut messages = 0;
    for a in attackers {
        messages += a.await.expect("attacker");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grown = rss_mb() - rss0;
    eprintln!("churn: {messages} channel (un)subscriptions; hub RSS grew {grown:.1} MB");
    // channels without data cost nothing: what is left is allocator slack
    assert!(grown < 64.0, "RSS grew {grown:.1} MB under channel churn");

    // canaries: counted exactly by the bystander and by the rollup
    let before = bystander.requests();
    post_canaries(&client, &server, "canary", 100).await;
    bystander.counts_exactly(before + 100).await;
    let store = env.store().await;
    wait_until(Duration::from_secs(15), || async {
        scalar(
            &store,
            "SELECT COALESCE(SUM(requests), 0) FROM http_hourly WHERE service = 'canary'",
        )
        .await
            == 100
    })
    .await;
    stop.cancel();
    let lost = lease_watch.await.expect("lease watch");
    assert!(lost.is_empty(), "leases lost during the churn: {lost:?}");
    bystander.check(started.elapsed().as_secs_f64());
    server.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_channels_are_capped_and_idle_ones_given_up_first() {
    let _one = heavy().await;
    let mut env = TestEnv::new("abuse_hub_channels");
    env.settings.hub.max_channels = 50;
    env.settings.hub.max_snapshots_per_sec = 1_000;
    env.settings.hub.max_messages_per_sec = 1_000;
    env.migrate().await;
    let server = env.start("ingest,hub").await;
    let client = http_client();
    let now = chrono::Utc::now().timestamp_millis();
    let body: Vec<String> = (0..200)
        .map(|i| {
            let mut e = http_event(i, now);
            e["service"] = json!(format!("s{i}"));
            e.to_string()
        })
        .collect();
    let (code, _) = post_ndjson(&client, &server.url("/v1/events"), body.join("\n")).await;
    assert_eq!(code, 202);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let names = |r: std::ops::Range<u64>| -> Vec<String> {
        r.map(|i| format!("http:service:s{i}")).collect()
    };
    let rss0 = rss_mb();
    let mut a = connect(&server, "").await;
    send(&mut a, json!({"op": "subscribe", "channels": names(0..40)})).await;
    let ok = next_where(&mut a, Duration::from_secs(5), |v| {
        v["type"] == "subscribed"
    })
    .await;
    assert_eq!(ok["channels"].as_array().map(Vec::len), Some(40));
    let mut b = connect(&server, "").await;
    send(
        &mut b,
        json!({"op": "subscribe", "channels": names(40..60)}),
    )
    .await;
    let got = drain(&mut b, Duration::from_secs(2)).await;
    let refused = got
        .iter()
        .filter(|v| {
            v["type"] == "error"
                && v["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("hub.max_channels"))
        })
        .count();
    assert_eq!(refused, 10, "50 channels at most: {got:?}");
    // `a` leaves 20 channels: they stay warm for resumes, but give way
    send(
        &mut a,
        json!({"op": "unsubscribe", "channels": names(0..20)}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await; // their rings are filled
    let mut c = connect(&server, "").await;
    for round in 0..3u64 {
        let from = 60 + round * 20;
        send(
            &mut c,
            json!({"op": "subscribe", "channels": names(from..from + 20)}),
        )
        .await;
        let ok = next_where(&mut c, Duration::from_secs(5), |v| {
            v["type"] == "subscribed"
        })
        .await;
        assert_eq!(
            ok["channels"].as_array().map(Vec::len),
            Some(20),
            "warm channels nobody watches are given up"
        );
        send(
            &mut c,
            json!({"op": "unsubscribe", "channels": names(from..from + 20)}),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(1_200)).await;
    }
    let grown = rss_mb() - rss0;
    eprintln!("50 warm channels of 200 subjects: RSS grew {grown:.1} MB");
    assert!(grown < 64.0, "RSS grew {grown:.1} MB");
    server.stop().await;
    env.cleanup().await;
}

/// Subscribes `ws` to `names`; returns the channels granted and the error
/// frames, once the `subscribed` answer came.
async fn subscribe_all(ws: &mut Ws, names: Vec<String>) -> (Vec<String>, Vec<String>) {
    send(ws, json!({"op": "subscribe", "channels": names})).await;
    let mut errors = Vec::new();
    loop {
        let v = next_where(ws, Duration::from_secs(5), |v| {
            v["type"] == "subscribed" || v["type"] == "error"
        })
        .await;
        if v["type"] == "error" {
            errors.push(v["error"].as_str().unwrap_or_default().to_string());
            continue;
        }
        let granted = v["channels"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        return (granted, errors);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_lock_the_others_out_of_the_channel_table() {
    let _one = heavy().await;
    let mut env = TestEnv::new("abuse_hub_quota");
    env.settings.hub.max_channels = 20;
    env.settings.hub.max_channels_per_client = 8;
    env.settings.hub.max_messages_per_sec = 1_000;
    env.settings.hub.max_snapshots_per_sec = 1_000;
    env.migrate().await;
    let server = env.start("ingest,hub").await;
    let client = http_client();
    post_canaries(&client, &server, "real", 30).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let random = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| format!("http:service:junk-{:x}", rand::random::<u64>()))
            .collect()
    };
    // one address, three connections, 30 rounds of 20 random names each
    let mut attacker = Vec::new();
    for _ in 0..3 {
        attacker.push(
            try_connect_from("127.0.0.1", server.addr, "")
                .await
                .expect("connects"),
        );
    }
    let (mut granted, mut quota_errors) = (0, 0);
    for round in 0..30 {
        let ws = &mut attacker[round % 3];
        let (ok, errors) = subscribe_all(ws, random(20)).await;
        granted += ok.len();
        quota_errors += errors
            .iter()
            .filter(|e| e.contains("hub.max_channels_per_client"))
            .count();
    }
    assert_eq!(granted, 8, "one client brings in at most its quota");
    assert_eq!(quota_errors, 30 * 20 - 8);
    // another client still gets a real channel, with its data
    let mut other = try_connect_from("127.0.0.2", server.addr, "")
        .await
        .expect("connects");
    let (ok, errors) = subscribe_all(&mut other, vec!["http:service:real".into()]).await;
    assert_eq!((ok.len(), errors.len()), (1, 0), "{errors:?}");
    let snap = next_where(&mut other, Duration::from_secs(5), |v| {
        v["type"] == "snapshot"
    })
    .await;
    assert_eq!(snap["summary"]["1m"]["requests"], 30, "{snap}");
    // the attacker joining a channel already there costs no quota
    let (ok, _) = subscribe_all(&mut attacker[0], vec!["http:service:real".into()]).await;
    assert_eq!(ok.len(), 1);
    // two more addresses fill the table; the overviews still fit
    let mut third = try_connect_from("127.0.0.3", server.addr, "")
        .await
        .expect("connects");
    let (ok, _) = subscribe_all(&mut third, random(20)).await;
    assert_eq!(ok.len(), 8);
    let mut fourth = try_connect_from("127.0.0.4", server.addr, "")
        .await
        .expect("connects");
    let (ok, errors) = subscribe_all(&mut fourth, random(20)).await;
    assert_eq!(ok.len(), 3, "20 = 8 + 1 + 8 + 3");
    assert!(
        errors
            .iter()
            .all(|e| e.contains("hub.max_channels") && !e.contains("max_channels_per_client")),
        "{errors:?}"
    );
    let mut late = try_connect_from("127.0.0.5", server.addr, "")
        .await
        .expect("connects");
    let (ok, errors) = subscribe_all(
        &mut late,
        vec!["http:overview".into(), "webrtc:overview".into()],
    )
    .await;
    assert_eq!((ok.len(), errors.len()), (2, 0), "{errors:?}");
    let snap = next_where(&mut late, Duration::from_secs(5), |v| {
        v["type"] == "snapshot" && v["channel"] == "http:overview"
    })
    .await;
    assert_eq!(snap["summary"]["1m"]["requests"], 30, "{snap}");
    server.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multibyte_names_duplicates_and_floods_are_answered_not_obeyed() {
    let _one = heavy().await;
    let mut env = TestEnv::new("abuse_hub_messages");
    env.settings.hub.max_snapshots_per_sec = 3;
    env.settings.hub.max_messages_per_sec = 10;
    env.migrate().await;
    let server = env.start("ingest,hub").await;
    let client = http_client();
    post_http_range(
        &client,
        &server.url("/v1/events"),
        0..30,
        chrono::Utc::now().timestamp_millis(),
        1,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let bystander = Bystander::start(&server).await;
    let started = Instant::now();

    // multi-byte names: byte 40 falls inside a character; too long is an error
    let mut ws = connect(&server, "").await;
    let long = format!("http:service:{}", "é".repeat(600));
    let fits = format!("http:service:{}", "é".repeat(300));
    let clef = format!("http:service:{}", "𝄞".repeat(200));
    send(
        &mut ws,
        json!({"op": "subscribe", "channels": [long, fits, clef]}),
    )
    .await;
    let e = next_where(&mut ws, Duration::from_secs(3), |v| v["type"] == "error").await;
    assert!(
        e["error"]
            .as_str()
            .is_some_and(|s| s.contains("longer than 512 characters")),
        "{e}"
    );
    let ok = next_where(&mut ws, Duration::from_secs(3), |v| {
        v["type"] == "subscribed"
    })
    .await;
    assert_eq!(ok["channels"].as_array().map(Vec::len), Some(2));
    send(&mut ws, json!({"op": "ping", "id": 1})).await;
    next_where(&mut ws, Duration::from_secs(3), |v| v["type"] == "pong").await;
    drop(ws);

    // one message naming a channel 3,500 times: one subscription, one snapshot
    let mut ws = connect(&server, "").await;
    let many = vec!["http:overview"; 3_500];
    send(&mut ws, json!({"op": "subscribe", "channels": many})).await;
    let got = drain(&mut ws, Duration::from_secs(3)).await;
    let snaps = got.iter().filter(|v| v["type"] == "snapshot").count();
    assert_eq!(snaps, 1, "one snapshot for 3,500 copies");
    let ok = got
        .iter()
        .find(|v| v["type"] == "subscribed")
        .expect("subscribed");
    assert_eq!(ok["channels"], json!(["http:overview"]));
    drop(ws);

    // snapshots per second: 9 channels at 3 per second arrive over >= 3 seconds
    let mut ws = connect(&server, "").await;
    let nine: Vec<String> = (0..9).map(|i| format!("http:service:x{i}")).collect();
    send(&mut ws, json!({"op": "subscribe", "channels": nine})).await;
    let mut seqs = std::collections::BTreeSet::new();
    for _ in 0..9 {
        let s = next_where(&mut ws, Duration::from_secs(8), |v| v["type"] == "snapshot").await;
        seqs.insert(s["seq"].as_i64().unwrap_or(0));
    }
    assert!(seqs.len() >= 3, "snapshots spread over seconds: {seqs:?}");

    // messages per second: a burst of 50 pings gets at most 20 pongs and an error
    for i in 0..50 {
        send(&mut ws, json!({"op": "ping", "id": i})).await;
    }
    let got = drain(&mut ws, Duration::from_secs(2)).await;
    let pongs = got.iter().filter(|v| v["type"] == "pong").count();
    assert!(pongs <= 20, "{pongs} pongs answered of a burst of 50");
    assert!(
        got.iter().any(|v| v["type"] == "error"
            && v["error"]
                .as_str()
                .is_some_and(|e| e.contains("hub.max_messages_per_sec"))),
        "{got:?}"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    send(&mut ws, json!({"op": "ping", "id": "after"})).await;
    let p = next_where(&mut ws, Duration::from_secs(3), |v| v["type"] == "pong").await;
    assert_eq!(p["id"], "after", "the next second's messages are answered");

    let before = bystander.requests();
    post_canaries(&client, &server, "canary", 25).await;
    bystander.counts_exactly(before + 25).await;
    bystander.check(started.elapsed().as_secs_f64());
    server.stop().await;
    env.cleanup().await;
}

async fn webrtc_summary(server: &Server) -> Value {
    let mut ws = connect(server, "").await;
    send(
        &mut ws,
        json!({"op": "subscribe", "channels": ["webrtc:overview"]}),
    )
    .await;
    let s = next_where(&mut ws, Duration::from_secs(5), |v| v["type"] == "snapshot").await;
    s["summary"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_id_flood_is_capped_expires_and_is_not_replayed() {
    let _one = heavy().await;
    let mut env = TestEnv::new("abuse_hub_peers");
    env.settings.hub.max_peers = 500;
    env.settings.hub.active_secs = 4;
    env.migrate().await;
    let ingest = env.start("ingest").await;
    let hub = env.start("hub").await;
    let client = http_client();
    // the counters are process-wide (every server of the test runs in this
    // process, so `ingest` shows the hub's too): compare deltas
    let peers = |name: &'static str| {
        let (client, ingest) = (&client, &ingest);
        async move { metric(client, ingest, &format!("flowmeter_hub_peers_{name}_total")).await }
    };
    let (tracked0, expired0) = (peers("tracked").await, peers("expired").await);
    let untracked0 = peers("untracked").await;
    let now = chrono::Utc::now().timestamp_millis();
    for r in 0..10 {
        let body: Vec<String> = (0..500)
            .map(|i| {
                json!({"kind": "webrtc", "ts": now, "meeting_id": format!("m{}", i % 7),
                       "peer_id": format!("flood-{r}-{i}"), "bytes_sent": 1, "bytes_received": 1,
                       "rtt_ms": 10.0, "jitter_ms": 1.0, "packet_loss": 0.0, "candidate_type": "host"})
                .to_string()
            })
            .collect();
        let (code, reply) = post_ndjson(&client, &ingest.url("/v1/events"), body.join("\n")).await;
        assert_eq!(code, 202, "{reply}");
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let s = webrtc_summary(&hub).await;
    assert!(
        s["active_peers"]
            .as_u64()
            .is_some_and(|n| n <= 500 && n > 0),
        "{s}"
    );
    assert_eq!(s["5m"]["samples"], 5_000, "every sample counts: {s}");
    assert_eq!(
        peers("tracked").await - tracked0,
        500.0,
        "max_peers tracked"
    );
    assert_eq!(peers("untracked").await - untracked0, 4_500.0);
    // peers expire after active_secs: the hub lets go of every one
    tokio::time::sleep(Duration::from_secs(6)).await;
    let s = webrtc_summary(&hub).await;
    assert_eq!(s["active_peers"], 0, "{s}");
    assert_eq!(
        peers("expired").await - expired0,
        500.0,
        "every peer forgotten"
    );
    // a restarted hub reads the samples back but tracks none of their peers
    // (they are older than active_secs), nor counts them as untracked
    hub.stop().await;
    let (tracked1, untracked1) = (peers("tracked").await, peers("untracked").await);
    let hub = env.start("hub").await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let s = webrtc_summary(&hub).await;
    assert_eq!(s["active_peers"], 0, "{s}");
    assert_eq!(s["5m"]["samples"], 5_000, "{s}");
    assert_eq!(peers("tracked").await - tracked1, 0.0, "no peer replayed");
    assert_eq!(peers("untracked").await - untracked1, 0.0, "{s}");
    hub.stop().await;
    ingest.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_subjects_past_the_budget_fold_into_the_overview() {
    let _one = heavy().await;
    let mut env = TestEnv::new("abuse_hub_budget");
    env.settings.redis.shards = 1; // entries fold in order: the first subjects are admitted
    env.settings.hub.max_new_subjects_per_hour = 20;
    env.migrate().await;
    let server = env.start("ingest,hub").await;
    let client = http_client();
    tokio::time::sleep(Duration::from_millis(1_500)).await; // the hub's first second closes
    let bystander = Bystander::start(&server).await;
    let started = Instant::now();
    let folded0 = metric(&client, &server, "flowmeter_hub_events_folded_total").await;
    let now = chrono::Utc::now().timestamp_millis();
    let mut body: Vec<String> = (0..100)
        .map(|i| {
            let mut e = http_event(i, now);
            e["service"] = json!(format!("b{i}"));
            e.to_string()
        })
        .collect();
    // the same service as the rollups see it: trailing spaces trimmed
    for s in ["b0 ", "b0"] {
        let mut e = http_event(0, now);
        e["service"] = json!(s);
        body.push(e.to_string());
    }
    let (code, _) = post_ndjson(&client, &server.url("/v1/events"), body.join("\n")).await;
    assert_eq!(code, 202);
    bystander.counts_exactly(102).await;
    let mut ws = connect(&server, "").await;
    send(
        &mut ws,
        json!({"op": "subscribe", "channels": ["http:service:b0", "http:service:b99", "http:service:b0 "]}),
    )
    .await;
    let mut snaps = HashMap::new();
    for _ in 0..3 {
        let s = next_where(&mut ws, Duration::from_secs(5), |v| v["type"] == "snapshot").await;
        snaps.insert(s["channel"].as_str().unwrap_or("").to_string(), s);
    }
    let b0 = &snaps["http:service:b0"];
    assert_eq!(b0["summary"]["1m"]["requests"], 3, "{b0}");
    assert_eq!(
        snaps["http:service:b0 "]["summary"]["1m"],
        Value::Null,
        "no subject with a trailing space"
    );
    assert_eq!(
        snaps["http:service:b99"]["summary"]["1m"],
        Value::Null,
        "past the budget: counted in the overview only"
    );
    let folded = metric(&client, &server, "flowmeter_hub_events_folded_total").await;
    assert!(folded - folded0 >= 80.0, "{folded}");
    bystander.check(started.elapsed().as_secs_f64());
    server.stop().await;
    env.cleanup().await;
}

/// Sends an upgrade request and resets the connection at once.
async fn reset_mid_upgrade(addr: SocketAddr, query: &str) {
    let Ok(mut tcp) = TcpStream::connect(addr).await else {
        return;
    };
    let req = format!(
        "GET /v1/ws{query} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    let _ = tcp.write_all(req.as_bytes()).await;
    let _ = tcp.set_zero_linger(); // close with RST
    drop(tcp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_come_back_after_resets_and_anonymous_clients_are_capped_per_address() {
    let _one = heavy().await;
    let mut env = TestEnv::new("abuse_hub_slots");
    env.settings.auth.tokens =
        read_and_ingest_tokens("read-token-0123456789", "ingest-token-0123456789");
    env.settings.hub.max_connections_per_token = 2;
    env.migrate().await;
    let server = env.start("hub").await;
    let q = "?token=read-token-0123456789";
    for _ in 0..20 {
        reset_mid_upgrade(server.addr, q).await;
    }
    // every slot comes back: two connections fit, a third does not
    let mut held: Vec<Ws> = Vec::new();
    wait_until(Duration::from_secs(10), || async {
        match try_connect_from("127.0.0.1", server.addr, q).await {
            Ok(ws) => {
                drop(ws);
                true
            }
            Err(_) => false,
        }
    })
    .await;
    for _ in 0..2 {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            match try_connect_from("127.0.0.1", server.addr, q).await {
                Ok(ws) => break held.push(ws),
                Err(e) => assert!(Instant::now() < end, "no slot: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let third = try_connect_from("127.0.0.1", server.addr, q).await;
    assert_eq!(status_of(&third), 429);
    drop(held);
    server.stop().await;

    // without auth: per client address
    let mut env2 = TestEnv::new("abuse_hub_per_ip");
    env2.settings.hub.max_connections_per_ip = 2;
    env2.migrate().await;
    let server = env2.start("hub").await;
    let a = connect(&server, "").await;
    let _b = connect(&server, "").await;
    let c = try_connect_from("127.0.0.1", server.addr, "").await;
    assert_eq!(status_of(&c), 429);
    if let Err(tokio_tungstenite::tungstenite::Error::Http(resp)) = &c {
        let body = resp
            .body()
            .as_ref()
            .map(|b| String::from_utf8_lossy(b).to_string())
            .unwrap_or_default();
        assert!(body.contains("hub.max_connections_per_ip"), "{body}");
    }
    let other = try_connect_from("127.0.0.2", server.addr, "").await;
    assert_eq!(status_of(&other), 101, "another address has its own slots");
    for _ in 0..10 {
        reset_mid_upgrade(server.addr, "").await;
    }
    drop(a);
    wait_until(Duration::from_secs(10), || async {
        try_connect_from("127.0.0.1", server.addr, "").await.is_ok()
    })
    .await;
    server.stop().await;
    env.cleanup().await;
    env2.cleanup().await;
}
