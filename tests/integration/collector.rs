//! The collector layer against a real axum app and real Redis: recorded bytes
//! match what a byte-counting TCP proxy sees, and events survive a Redis
//! outage through memory and the spill file, in order.

use crate::common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use common::*;
use flowmeter::collector::{CollectorConfig, MetricsLayer};
use flowmeter::stream::{Keys, Redis};
use futures::StreamExt;
use serde_json::Value;

fn config(env: &TestEnv, redis_url: &str) -> CollectorConfig {
    let mut c = CollectorConfig::new("shop");
    c.redis_url = redis_url.to_string();
    c.prefix = env.name.clone();
    c.shards = env.settings.redis.shards;
    c.flush_interval = Duration::from_millis(5);
    c.backoff_min = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(200);
    c.redis_timeout = Duration::from_millis(500);
    c
}

/// (method, path, extra header, upload size, endpoint expected)
type Case = (
    &'static str,
    &'static str,
    Option<(&'static str, &'static str)>,
    usize,
    &'static str,
);

const CHUNK: usize = 64 * 1024;

fn app(metrics: MetricsLayer) -> Router {
    let download = || async {
        // 10 MB, streamed in 64 KiB frames (no content-length: chunked)
        let s = futures::stream::iter(0..160)
            .map(|i| Ok::<_, Infallible>(Bytes::from(vec![b'a' + (i % 26) as u8; CHUNK])));
        Body::from_stream(s)
    };
    let slow = || async {
        let s = futures::stream::iter(0..10_000).then(|_| async {
            tokio::time::sleep(Duration::from_millis(2)).await;
            Ok::<_, Infallible>(Bytes::from(vec![b'x'; 16 * 1024]))
        });
        Body::from_stream(s)
    };
    let sse = || async {
        let s = futures::stream::iter(0..20).then(|i| async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            Ok::<_, Infallible>(
                Event::default()
                    .event("tick")
                    .data(format!("event number {i}")),
            )
        });
        Sse::new(s)
    };
    let etag = |headers: HeaderMap| async move {
        if headers.get("if-none-match").is_some_and(|v| v == "\"v1\"") {
            (StatusCode::NOT_MODIFIED, [("etag", "\"v1\"")]).into_response()
        } else {
            ([("etag", "\"v1\"")], "fresh content").into_response()
        }
    };
    let text = || async { "flowmeter ".repeat(20_000) };
    Router::new()
        .route(
            "/api/items/{id}",
            get(|| async { axum::Json(serde_json::json!({"id": 1, "name": "lamp"})) }),
        )
        .route("/download", get(download))
        .route("/slow", get(slow))
        .route("/events", get(sse))
        .route("/etag", get(etag))
        .route("/text", get(text))
        .route(
            "/upload",
            post(|body: Bytes| async move { body.len().to_string() }),
        )
        .layer(tower_http::compression::CompressionLayer::new())
        .layer(metrics)
}

async fn serve(router: Router) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(l, router).await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_bytes_match_the_wire() {
    let env = TestEnv::new("collector_bytes");
    let metrics = MetricsLayer::new(config(&env, REDIS_URL)).expect("layer");
    let app_addr = serve(app(metrics.clone())).await;
    let proxy = TcpProxy::start("127.0.0.1:0", app_addr).await;
    let base = format!("http://{}", proxy.addr);
    // one connection per request, so the proxy's counts belong to one request
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");

    let cases: Vec<Case> = vec![
        ("GET", "/api/items/42", None, 0, "/api/items/{id}"),
        ("GET", "/download", None, 0, "/download"),
        ("GET", "/events", None, 0, "/events"),
        (
            "GET",
            "/text",
            Some(("accept-encoding", "gzip")),
            0,
            "/text",
        ),
        ("HEAD", "/api/items/7", None, 0, "/api/items/{id}"),
        (
            "GET",
            "/etag",
            Some(("if-none-match", "\"v1\"")),
            0,
            "/etag",
        ),
        ("POST", "/upload", None, 300_000, "/upload"),
        ("GET", "/no/such/route", None, 0, "unmatched"),
    ];
    let mut wire = Vec::new(); // (endpoint, method, body received, body sent, up, down)
    for (method, path, header, upload, endpoint) in &cases {
        let before = proxy.counts();
        let mut rb = client.request(method.parse().expect("method"), format!("{base}{path}"));
        if let Some((k, v)) = header {
            rb = rb.header(*k, *v);
        }
        if *upload > 0 {
            rb = rb.body(vec![b'u'; *upload]);
        }
        let resp = rb.send().await.expect("request");
        let body = resp.bytes().await.expect("body");
        // let the proxy see the connection close
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after = proxy.counts();
        wire.push((
            endpoint.to_string(),
            method.to_string(),
            body.len() as u64,
            *upload as u64,
            after.0 - before.0,
            after.1 - before.1,
        ));
    }
    // A client that reads about 1 MB of a slow stream and hangs up.
    let before = proxy.counts();
    let mut resp = client
        .get(format!("{base}/slow"))
        .send()
        .await
        .expect("slow");
    let mut got = 0u64;
    while got < 1_000_000 {
        match resp.chunk().await.expect("chunk") {
            Some(c) => got += c.len() as u64,
            None => break,
        }
    }
    drop(resp);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = proxy.counts();

    let want = cases.len() as u64 + 1;
    wait_until(Duration::from_secs(10), || {
        let c = metrics.collector().clone();
        async move { c.stats().sent >= want }
    })
    .await;
    let stats = metrics.collector().stats();
    assert_eq!((stats.recorded, stats.sent), (want, want), "{stats:?}");
    let events: Vec<Value> = stream_events(&env, "http")
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(events.len(), cases.len() + 1);
    let find = |endpoint: &str, method: &str| {
        events
            .iter()
            .find(|e| e["endpoint"] == endpoint && e["method"] == method)
            .unwrap_or_else(|| panic!("no event for {method} {endpoint} in {events:?}"))
            .clone()
    };
    let n = |e: &Value, f: &str| e[f].as_u64().unwrap_or_else(|| panic!("{f} in {e}"));
    let mut total_recorded = 0u64;
    let mut total_wire = 0u64;
    for (endpoint, method, received, sent, up, down) in &wire {
        let e = find(endpoint, method);
        assert_eq!(e["service"], "shop");
        assert_eq!(
            n(&e, "resp_bytes"),
            *received,
            "response body bytes of {method} {endpoint}: {e}"
        );
        assert_eq!(
            n(&e, "req_bytes"),
            *sent,
            "request body bytes of {method} {endpoint}: {e}"
        );
        let rec_up = n(&e, "req_bytes") + n(&e, "req_header_bytes");
        let rec_down = n(&e, "resp_bytes") + n(&e, "resp_header_bytes");
        let close = |a: u64, b: u64| (a as f64 - b as f64).abs() <= 0.01 * b as f64 + 2.0;
        assert!(
            close(rec_up, *up),
            "{method} {endpoint}: recorded {rec_up} request bytes, wire {up}: {e}"
        );
        assert!(
            close(rec_down, *down),
            "{method} {endpoint}: recorded {rec_down} response bytes, wire {down}: {e}"
        );
        total_recorded += rec_up + rec_down;
        total_wire += up + down;
    }
    let err = (total_recorded as f64 - total_wire as f64).abs() / total_wire as f64;
    assert!(err < 0.01, "total bytes off by {:.3} %", err * 100.0);
    assert_eq!(find("/etag", "GET")["status"], 304);
    assert_eq!(find("/api/items/{id}", "HEAD")["resp_bytes"], 0);
    assert_eq!(find("unmatched", "GET")["status"], 404);

    // The abort: the recorded body is what left the server, to within the
    // frames in flight when the client hung up (16 KiB frames).
    let e = find("/slow", "GET");
    let recorded = n(&e, "resp_bytes");
    let down = after.1 - before.1;
    assert!(recorded >= got, "recorded {recorded} < received {got}");
    assert!(
        recorded <= down + 4 * 16 * 1024,
        "recorded {recorded}, proxy saw {down}"
    );
    metrics.collector().shutdown().await;
    env.cleanup().await;
}

/// Redis unreachable: events stay in memory up to the bound, then spill to
/// disk; when Redis comes back the spill is replayed in order and nothing is
/// lost. Past the disk bound, drops are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_spills_and_replays_in_order() {
    let env = TestEnv::new("collector_spill");
    let dir = tempfile::tempdir().expect("tmp");
    // A port where Redis will "come back" later.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr").port()
    };
    let mut cfg = config(&env, &format!("redis://127.0.0.1:{port}"));
    cfg.memory_max_events = 300;
    cfg.spill_dir = Some(dir.path().to_path_buf());
    cfg.user_header = Some("x-seq".into());
    let metrics = MetricsLayer::new(cfg.clone()).expect("layer");
    let addr = serve(app(metrics.clone())).await;
    let client = http_client();
    let send = |from: u32, to: u32| {
        let client = client.clone();
        async move {
            for i in from..to {
                let path = if i % 2 == 0 { "/api/items/1" } else { "/etag" };
                client
                    .get(format!("http://{addr}{path}"))
                    .header("x-seq", format!("{i:06}"))
                    .send()
                    .await
                    .expect("request")
                    .bytes()
                    .await
                    .expect("body");
            }
        }
    };
    send(0, 2_000).await;
    assert!(metrics.collector().settle(Duration::from_secs(10)).await);
    let s = metrics.collector().stats();
    assert_eq!(s.sent, 0);
    assert!(s.spilled >= 1_700, "{s:?}");
    assert!(s.in_memory <= 300, "{s:?}");
    assert!(s.send_errors > 0);

    // Redis is back (a forwarder on the port the collector was pointed at).
    let redis: SocketAddr = "127.0.0.1:6379".parse().expect("addr");
    let _proxy = TcpProxy::start(&format!("127.0.0.1:{port}"), redis).await;
    send(2_000, 2_500).await;
    wait_until(Duration::from_secs(30), || {
        let c = metrics.collector().clone();
        async move { c.stats().sent == 2_500 }
    })
    .await;
    let s = metrics.collector().stats();
    assert_eq!(s.replayed, s.spilled, "{s:?}");
    assert_eq!(s.spill_backlog_bytes, 0);
    assert_eq!(
        s.dropped_disk_full + s.dropped_queue_full + s.dropped_invalid,
        0
    );
    metrics.collector().shutdown().await;

    // Every event once, and in order within each shard (one endpoint maps to one shard).
    let shards = stream_events(&env, "http").await;
    let mut seen: Vec<String> = Vec::new();
    for shard in &shards {
        let seqs: Vec<String> = shard
            .iter()
            .map(|e| e["user_id"].as_str().expect("seq").to_string())
            .collect();
        let mut sorted = seqs.clone();
        sorted.sort();
        assert_eq!(seqs, sorted, "events of a shard out of order");
        seen.extend(seqs);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 2_500);
    env.cleanup().await;
}

/// With Redis away and a tiny disk bound, what does not fit is dropped and
/// counted; shutdown spills what is in memory, and a new process replays it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_bound_drops_are_counted_and_shutdown_spill_is_replayed_after_restart() {
    let env = TestEnv::new("collector_bound");
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = config(&env, "redis://127.0.0.1:1");
    cfg.memory_max_events = 100;
    cfg.spill_dir = Some(dir.path().to_path_buf());
    cfg.spill_max_bytes = 100 * 1024; // a few hundred events
    cfg.shutdown_timeout = Duration::from_millis(300);
    let metrics = MetricsLayer::new(cfg.clone()).expect("layer");
    let addr = serve(app(metrics.clone())).await;
    let client = http_client();
    for _ in 0..1_500 {
        client
            .get(format!("http://{addr}/api/items/3"))
            .send()
            .await
            .expect("request");
    }
    assert!(metrics.collector().settle(Duration::from_secs(10)).await);
    metrics.collector().shutdown().await;
    let s = metrics.collector().stats();
    assert_eq!(s.recorded, 1_500);
    assert!(s.dropped_disk_full > 0, "{s:?}");
    assert_eq!(s.spilled + s.dropped_disk_full, 1_500, "{s:?}");

    // A new process with Redis reachable replays the file on start.
    let mut cfg2 = config(&env, REDIS_URL);
    cfg2.spill_dir = Some(dir.path().to_path_buf());
    replay_in_new_process(cfg2, s.spilled).await;
    let total: usize = stream_events(&env, "http").await.iter().map(Vec::len).sum();
    assert_eq!(total as u64, s.spilled);
    env.cleanup().await;
}

/// 32 routes, `/r0` … `/r31`: one endpoint each, so a batch spreads over every shard.
fn routes(metrics: MetricsLayer) -> Router {
    let mut r = Router::new();
    for i in 0..32 {
        r = r.route(&format!("/r{i}"), get(|| async { "ok" }));
    }
    r.layer(metrics)
}

/// GETs `/r{seq % 32}` with `x-seq: seq` (the event's `user_id`), one after the other.
async fn send_seqs(client: &reqwest::Client, addr: SocketAddr, seqs: std::ops::Range<u32>) {
    for i in seqs {
        client
            .get(format!("http://{addr}/r{}", i % 32))
            .header("x-seq", format!("{i:06}"))
            .send()
            .await
            .expect("request");
    }
}

/// The `user_id` of every `http` entry of `service` in the streams
/// (through `redis`, one server or a cluster).
async fn seqs_stored(redis: &Redis, keys: &Keys, service: &str) -> Vec<String> {
    let mut conn = redis.conn.clone();
    let mut out = Vec::new();
    for shard in keys.shards_of("http") {
        let entries: Vec<(String, Vec<(String, String)>)> = match redis::cmd("XRANGE")
            .arg(keys.stream(&shard))
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
        {
            Ok(entries) => entries,
            // the stream the test broke
            Err(e) if e.code() == Some("WRONGTYPE") => continue,
            Err(e) => panic!("XRANGE: {e}"),
        };
        for (_, fields) in entries {
            let Some((_, data)) = fields.into_iter().find(|(k, _)| k == "data") else {
                continue;
            };
            let ev: Value = serde_json::from_str(&data).expect("data is JSON");
            if ev["service"] == service {
                out.push(ev["user_id"].as_str().expect("seq").to_string());
            }
        }
    }
    out
}

/// Events the first batch holds in [`partial_failure_is_retried_exactly`].
const FIRST_BATCH: u32 = 400;

/// A batch whose write failed on one shard is sent again under its id,
/// from memory and, after a shutdown, from the spill file by a new
/// process: every event ends up in the streams exactly once. The failure
/// is deterministic: one shard stream (the one the batch reaches last)
/// holds a string, so its XADD fails. On a Redis Cluster the batch's other shards are
/// written meanwhile (one transaction per shard: a partial write); on one
/// server the script checks every stream before its first write and
/// writes nothing. `cluster.rs` runs this on a cluster.
pub(crate) async fn partial_failure_is_retried_exactly(env: TestEnv) {
    let rc = &env.settings.redis;
    let redis = flowmeter::stream::connect(rc).await.expect("redis");
    let keys = Keys::new(rc.prefix.as_str(), rc.shards);
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = config(&env, &rc.url);
    cfg.prefix = rc.prefix.clone();
    if rc.cluster {
        cfg = cfg.with_cluster(std::iter::once(&rc.url).chain(&rc.cluster_nodes).cloned());
    }
    // The first batch is the first FIRST_BATCH events exactly (nothing
    // is flushed on a timer); each later request sets off a retry.
    cfg.batch_size = FIRST_BATCH as usize;
    cfg.flush_interval = Duration::from_secs(600);
    cfg.spill_dir = Some(dir.path().to_path_buf());
    cfg.shutdown_timeout = Duration::from_millis(300);
    cfg.user_header = Some("x-seq".into());
    let client = http_client();
    let mut conn = redis.conn.clone();
    for (round, service) in [(0u32, "shop"), (1, "shop2")] {
        cfg.service = service.into();
        // the shard the batch reaches last (a cluster writes the others first)
        let shard_of = |i: u32| {
            let r = flowmeter::collector::HttpRecord {
                ts_ms: 0,
                endpoint: format!("/r{i}").into(),
                method: http::Method::GET,
                status: 200,
                req_bytes: 0,
                resp_bytes: 0,
                req_header_bytes: 0,
                resp_header_bytes: 0,
                duration_ms: 0.0,
                user_id: None,
            };
            keys.shard_for("http", r.to_event(service).expect("valid").partition)
        };
        let mut order = Vec::new();
        for i in 0..32 {
            let shard = shard_of(i);
            if !order.contains(&shard) {
                order.push(shard);
            }
        }
        let broken = keys.stream(order.last().expect("a shard"));
        let _: () = redis::cmd("SET")
            .arg(&broken)
            .arg("not a stream")
            .query_async(&mut conn)
            .await
            .expect("SET");
        let metrics = MetricsLayer::new(cfg.clone()).expect("layer");
        let c = metrics.collector().clone();
        let addr = serve(routes(metrics.clone())).await;
        // the sender's timer ticks once as it starts: let it pass first
        tokio::time::sleep(Duration::from_millis(200)).await;
        let from = round * 10_000;
        send_seqs(&client, addr, from..from + FIRST_BATCH).await;
        let mut next = from + FIRST_BATCH;
        let start = std::time::Instant::now();
        while c.stats().send_errors < 3 {
            assert!(start.elapsed() < Duration::from_secs(30), "{:?}", c.stats());
            send_seqs(&client, addr, next..next + 1).await;
            next += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(c.stats().sent, 0, "the first batch failed: {:?}", c.stats());
        let written = seqs_stored(&redis, &keys, service).await.len();
        if rc.cluster {
            assert!(written > 0, "the batch's other shards are written");
        } else {
            assert_eq!(written, 0, "one server: the script wrote nothing");
        }
        if round == 0 {
            // retried from memory
            let _: () = redis::cmd("DEL")
                .arg(&broken)
                .query_async(&mut conn)
                .await
                .expect("DEL");
            let start = std::time::Instant::now();
            while c.stats().sent < u64::from(next - from) {
                assert!(start.elapsed() < Duration::from_secs(30), "{:?}", c.stats());
                send_seqs(&client, addr, next..next + 1).await;
                next += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            c.shutdown().await;
        } else {
            // spilled at shutdown, replayed by the next process
            c.shutdown().await;
            let s = c.stats();
            assert_eq!(s.spilled, u64::from(next - from), "{s:?}");
            let _: () = redis::cmd("DEL")
                .arg(&broken)
                .query_async(&mut conn)
                .await
                .expect("DEL");
            let mut cfg2 = cfg.clone();
            cfg2.flush_interval = Duration::from_millis(5);
            replay_in_new_process(cfg2, s.spilled).await;
        }
        let mut stored = seqs_stored(&redis, &keys, service).await;
        stored.sort();
        let expected: Vec<String> = (from..next).map(|i| format!("{i:06}")).collect();
        let mut distinct = stored.clone();
        distinct.dedup();
        assert_eq!(
            stored.len(),
            distinct.len(),
            "{service}: {} entries for {} events",
            stored.len(),
            distinct.len()
        );
        assert_eq!(stored, expected, "{service}: every event once");
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_failure_is_retried_exactly_on_one_server() {
    partial_failure_is_retried_exactly(TestEnv::new("collector_exact")).await;
}

/// A new collector on `cfg`'s spill file: waits until it has replayed
/// `spilled` events, then shuts it down.
async fn replay_in_new_process(cfg: CollectorConfig, spilled: u64) {
    let metrics = MetricsLayer::new(cfg).expect("layer");
    wait_until(Duration::from_secs(30), || {
        let c = metrics.collector().clone();
        async move { c.stats().replayed == spilled }
    })
    .await;
    metrics.collector().shutdown().await;
}

/// The collector builds its events from typed fields, with no JSON Schema:
/// whatever it accepts passes the real `schemas/http.v1.json`, lands on the
/// same shard with the same data as ingest's validation would give, and what
/// it refuses the schema refuses too. Spilled lines read back to the same
/// event. No servers needed.
#[test]
fn collector_events_pass_the_http_schema() {
    use std::sync::Arc;

    use flowmeter::collector::{HttpKind, HttpRecord};
    use flowmeter::event::{KindNames, SchemaRegistry};

    let schemas =
        SchemaRegistry::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas"))
            .expect("schemas");
    let record = |endpoint: &str, method: &str, user: Option<&str>| HttpRecord {
        ts_ms: 1_772_359_200_123,
        endpoint: Arc::from(endpoint),
        method: method.parse().expect("method"),
        status: 404,
        req_bytes: 0,
        resp_bytes: 1 << 33,
        req_header_bytes: 120,
        resp_header_bytes: 99,
        duration_ms: 0.0004,
        user_id: user.map(str::to_string),
    };
    let with = |mut r: HttpRecord, f: &dyn Fn(&mut HttpRecord)| {
        f(&mut r);
        r
    };
    let base = record("/api/x/{id}", "GET", Some("u1"));
    let (s128, s129) = ("s".repeat(128), "s".repeat(129));
    let cases = [
        ("svc", base.clone(), true),
        ("svc", record("/", "PATCH", None), true),
        (
            "s",
            record(&"é".repeat(255), "DELETE", Some(&"u".repeat(128))),
            true,
        ),
        (s128.as_str(), base.clone(), true),
        ("svc", with(base.clone(), &|r| r.status = 100), true),
        ("svc", with(base.clone(), &|r| r.status = 599), true),
        ("svc", with(base.clone(), &|r| r.resp_bytes = 1 << 40), true),
        (
            "svc",
            with(base.clone(), &|r| r.duration_ms = 86_400_000.0),
            true,
        ),
        ("svc", with(base.clone(), &|r| r.ts_ms = 0), true),
        ("svc", record(&"e".repeat(256), "GET", None), false),
        ("svc", record("", "GET", None), false),
        ("svc", record("/a", "purge", None), false),
        ("svc", record("/a", "GET", Some(&"u".repeat(129))), false),
        ("", base.clone(), false),
        (s129.as_str(), base.clone(), false),
        ("svc", with(base.clone(), &|r| r.status = 600), false),
        ("svc", with(base.clone(), &|r| r.status = 99), false),
        (
            "svc",
            with(base.clone(), &|r| r.req_bytes = (1 << 40) + 1),
            false,
        ),
        (
            "svc",
            with(base.clone(), &|r| r.resp_header_bytes = (1 << 40) + 1),
            false,
        ),
        (
            "svc",
            with(base.clone(), &|r| r.duration_ms = 86_400_001.0),
            false,
        ),
        ("svc", with(base.clone(), &|r| r.duration_ms = -1.0), false),
        (
            "svc",
            with(base.clone(), &|r| r.ts_ms = 32_503_680_000_001),
            false,
        ),
    ];
    for (service, r, ok) in cases {
        let fast = r.to_event(service);
        assert_eq!(fast.is_ok(), ok, "{service:?} {r:?}: {fast:?}");
        let Ok(fast) = fast else { continue };
        let json: serde_json::Value = serde_json::from_str(&fast.data).expect("json");
        let slow = schemas
            .validate(0, &json)
            .unwrap_or_else(|e| panic!("{json} fails the schema: {e:?}"));
        assert_eq!(fast.partition, slow.partition, "same shard as ingest");
        assert_eq!(HttpKind.kind_name(fast.kind), schemas.kind_name(slow.kind));
        assert_eq!((fast.version, fast.ts_ms), (slow.version, slow.ts_ms));
        let b: serde_json::Value = serde_json::from_str(&slow.data).expect("json");
        assert_eq!(json, b);
        // a spilled line reads back to the same event
        let (svc, back) = HttpRecord::from_json(&fast.data).expect("reads back");
        assert_eq!(back.to_event(&svc).expect("valid"), fast);
    }
    // what the typed checks refuse, the schema refuses too
    let refused = [
        r#"{"kind":"http","ts":1,"service":"svc","endpoint":"/a","method":"GET","status":600,"req_bytes":0,"resp_bytes":0,"duration_ms":1}"#,
        r#"{"kind":"http","ts":1,"service":"svc","endpoint":"/a","method":"purge","status":200,"req_bytes":0,"resp_bytes":0,"duration_ms":1}"#,
        r#"{"kind":"http","ts":1,"service":"","endpoint":"/a","method":"GET","status":200,"req_bytes":0,"resp_bytes":0,"duration_ms":1}"#,
    ];
    for line in refused {
        let json: serde_json::Value = serde_json::from_str(line).expect("json");
        assert!(schemas.validate(0, &json).is_err(), "{line}");
        let typed = HttpRecord::from_json(line).and_then(|(svc, r)| r.to_event(&svc));
        assert!(typed.is_err(), "{line}");
    }
}
