//! Ingest under abuse: retries and concurrent duplicates with one
//! `Idempotency-Key` write once and count once, a reused key with another
//! body is refused, an unknown outcome (Redis' reply held back after it
//! wrote) retried with its key counts once, backpressure refuses before Redis
//! fills and lifts when the group catches up, a full Redis writes nothing,
//! error answers stay bounded whatever the body, and no header value breaks
//! anything.

use std::time::{Duration, Instant};

use flowmeter::store::Store;
use serde_json::Value;

use crate::common::*;

pub(crate) const T0: i64 = 1_772_359_200_000;

/// NDJSON of `n` events from id `from` (every fourth a webrtc sample, the
/// rest http) and how many of each.
pub(crate) fn batch(from: u64, n: u64) -> (String, i64, i64) {
    let (mut http, mut webrtc) = (0, 0);
    let lines: Vec<String> = (from..from + n)
        .map(|i| {
            let ts = T0 + i as i64;
            if i % 4 == 0 {
                webrtc += 1;
                webrtc_event(i, ts).to_string()
            } else {
                http += 1;
                http_event(i, ts).to_string()
            }
        })
        .collect();
    (lines.join("\n"), http, webrtc)
}

/// NDJSON of `n` http events from id `from`.
fn http_batch(from: u64, n: u64) -> String {
    (from..from + n)
        .map(|i| http_event(i, T0 + i as i64).to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

pub(crate) struct Reply {
    pub status: u16,
    pub replayed: bool,
    pub retry_after: Option<String>,
    pub bytes: usize,
    pub body: Value,
}

pub(crate) async fn post(
    client: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    body: String,
) -> Reply {
    let mut req = client
        .post(url)
        .header("content-type", "application/x-ndjson")
        .body(body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let r = req.send().await.expect("request");
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let status = r.status().as_u16();
    let replayed = header("idempotent-replayed").as_deref() == Some("true");
    let retry_after = header("retry-after");
    let bytes = r.bytes().await.expect("body");
    let body: Value = serde_json::from_slice(&bytes).expect("the answer is JSON");
    assert_eq!(
        body["replayed"].as_bool().unwrap_or(false),
        replayed,
        "body and header agree"
    );
    Reply {
        status,
        replayed,
        retry_after,
        bytes: bytes.len(),
        body,
    }
}

/// Entries in the streams of both kinds.
pub(crate) async fn stored(env: &TestEnv) -> usize {
    stream_total_on(&mut env.redis().await, env).await as usize
}

/// Waits until the rollups hold exactly (http requests, webrtc samples), and
/// checks they still do a few flushes later (nothing counted twice).
async fn wait_counted(env: &TestEnv, want: (i64, i64)) {
    let store = env.store().await;
    let counted = |store: Store| async move {
        (
            scalar(&store, "SELECT SUM(requests) FROM http_hourly").await,
            scalar(&store, "SELECT SUM(samples) FROM webrtc_hourly").await,
        )
    };
    wait_until(Duration::from_secs(30), || {
        let store = store.clone();
        async move { counted(store).await == want }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(
        3 * env.settings.rollup.flush_interval_ms,
    ))
    .await;
    assert_eq!(counted(store).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_with_one_key_write_once_and_count_once() {
    let env = TestEnv::new("abuse_idem_retry");
    env.migrate().await;
    let server = env.start("ingest,rollup").await;
    let client = http_client();
    let url = server.url("/v1/events");

    let (body, http, webrtc) = batch(0, 40);
    let first = post(&client, &url, Some("order-1"), body.clone()).await;
    assert_eq!(
        (first.status, first.replayed),
        (202, false),
        "{}",
        first.body
    );
    assert_eq!(first.body["accepted"], 40);
    for _ in 0..3 {
        let again = post(&client, &url, Some("order-1"), body.clone()).await;
        assert_eq!(
            (again.status, again.replayed),
            (202, true),
            "{}",
            again.body
        );
        assert_eq!(again.body["accepted"], 40);
    }
    // The same key with another body: 422 naming the header, nothing written.
    let (other, _, _) = batch(100, 5);
    let reused = post(&client, &url, Some("order-1"), other).await;
    assert_eq!(reused.status, 422, "{}", reused.body);
    assert_eq!(reused.body["header"], "Idempotency-Key");
    assert!(reused.body["error"]
        .as_str()
        .is_some_and(|e| e.contains("Idempotency-Key")));
    // A new key is a new request.
    let (second, http2, webrtc2) = batch(200, 10);
    let r = post(&client, &url, Some("order-2"), second).await;
    assert_eq!((r.status, r.replayed), (202, false), "{}", r.body);

    assert_eq!(stored(&env).await, 50);
    wait_counted(&env, (http + http2, webrtc + webrtc2)).await;
    assert!(
        metric(
            &client,
            &server,
            "flowmeter_ingest_idempotent_replays_total"
        )
        .await
            >= 3.0
    );
    server.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_write_once() {
    let env = TestEnv::new("abuse_idem_concurrent");
    let server = env.start("ingest").await;
    let client = http_client();
    let url = server.url("/v1/events");
    let (body, _, _) = batch(0, 200);
    for round in 0..3 {
        let key = format!("dup-{round}");
        let replies = futures::future::join_all(
            (0..16).map(|_| post(&client, &url, Some(&key), body.clone())),
        )
        .await;
        assert!(
            replies.iter().all(|r| r.status == 202),
            "{:?}",
            replies.iter().map(|r| r.status).collect::<Vec<_>>()
        );
        assert_eq!(replies.iter().filter(|r| !r.replayed).count(), 1);
        assert_eq!(stored(&env).await, 200 * (round + 1));
    }
    server.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_bounded_and_expire_with_their_window() {
    let mut env = TestEnv::new("abuse_idem_window");
    env.settings.ingest.idempotency_window_secs = 1;
    env.settings.ingest.max_idempotency_key_bytes = 16;
    let server = env.start("ingest").await;
    let client = http_client();
    let url = server.url("/v1/events");
    let (body, _, _) = batch(0, 8);

    let longest = "k".repeat(16);
    let r = post(&client, &url, Some(&"k".repeat(17)), body.clone()).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["header"], "Idempotency-Key");
    assert_eq!(stored(&env).await, 0);

    let r = post(&client, &url, Some(&longest), body.clone()).await;
    assert_eq!((r.status, r.replayed), (202, false));
    let r = post(&client, &url, Some(&longest), body.clone()).await;
    assert_eq!((r.status, r.replayed), (202, true));
    // Past the window the key is forgotten: the same request writes again.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let r = post(&client, &url, Some(&longest), body).await;
    assert_eq!((r.status, r.replayed), (202, false));
    assert_eq!(stored(&env).await, 16);
    server.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_outcome_retried_with_its_key_counts_once() {
    let env = TestEnv::new("abuse_idem_unknown");
    env.migrate().await;
    let proxy = TcpProxy::start(
        "127.0.0.1:0",
        "127.0.0.1:6379".parse().expect("redis address"),
    )
    .await;
    // Ingest talks to Redis through the proxy; the rollup directly.
    let mut via = env.settings.clone();
    via.redis.url = format!("redis://{}", proxy.addr);
    via.redis.command_timeout_ms = 1_000;
    let ingest = start_with(via, "ingest").await;
    let rollup = env.start("rollup").await;
    let client = http_client();
    let url = ingest.url("/v1/events");

    let (b1, h1, w1) = batch(0, 20);
    let r = post(&client, &url, Some("u-1"), b1).await;
    assert_eq!(r.status, 202, "{}", r.body);

    // Redis writes, its reply does not come back in time.
    proxy.hold_replies(true);
    let (b2, h2, w2) = batch(100, 30);
    let r = post(&client, &url, Some("u-2"), b2.clone()).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.body["outcome"], "unknown");
    assert!(r.retry_after.is_some());
    let said = r.body["error"].as_str().unwrap_or_default().to_string();
    assert!(said.contains("same Idempotency-Key"), "{said}");
    wait_until(Duration::from_secs(5), || async {
        stored(&env).await == 50
    })
    .await;
    // Without a key the answer says a retry may count twice.
    let (b3, h3, w3) = batch(200, 12);
    let r = post(&client, &url, None, b3).await;
    assert_eq!(
        (r.status, &r.body["outcome"]),
        (503, &Value::from("unknown"))
    );
    assert!(r.body["error"]
        .as_str()
        .is_some_and(|e| e.contains("twice")));
    proxy.hold_replies(false);

    // The retry with the key answers the first outcome and writes nothing.
    let start = Instant::now();
    loop {
        let r = post(&client, &url, Some("u-2"), b2.clone()).await;
        if r.status == 202 {
            assert!(r.replayed, "{}", r.body);
            assert_eq!(r.body["accepted"], 30);
            break;
        }
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(start.elapsed() < Duration::from_secs(20), "no recovery");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(stored(&env).await, 62);
    wait_counted(&env, (h1 + h2 + h3, w1 + w2 + w3)).await;
    ingest.stop().await;
    rollup.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_past_the_limit_gets_503_until_the_group_catches_up() {
    let mut env = TestEnv::new("abuse_backpressure");
    env.settings.redis.shards = 1;
    env.settings.ingest.max_backlog_entries = 50;
    env.settings.ingest.backlog_poll_ms = 50;
    env.migrate().await;
    // The rollup group exists while none of its workers runs (all crashed).
    let mut r = env.redis().await;
    for kind in ["http", "webrtc"] {
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(format!("{}:{{{kind}:0}}", env.name))
            .arg("rollup")
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut r)
            .await
            .expect("group");
    }
    let ingest = env.start("ingest").await;
    let client = http_client();
    let url = ingest.url("/v1/events");

    // A keyed request first; its retry is answered even under backpressure.
    let keyed = http_batch(0, 20);
    let r = post(&client, &url, Some("bp-1"), keyed.clone()).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let mut http = 20u64;
    let mut refused = None;
    for _ in 0..40 {
        let r = post(&client, &url, None, http_batch(http, 20)).await;
        if r.status != 202 {
            refused = Some(r);
            break;
        }
        http += 20;
        // let the figures catch up (they are at most backlog_poll_ms old)
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let refused = refused.expect("ingest refused once the backlog passed the limit");
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.retry_after.as_deref(), Some("1"));
    assert_eq!(refused.body["outcome"], "not_written");
    assert!(refused.body["error"]
        .as_str()
        .is_some_and(|e| e.contains("ingest.max_backlog_entries")));
    assert!(http > 50, "refused at {http} entries, before the limit");
    assert_eq!(
        stored(&env).await as u64,
        http,
        "the refused batch wrote nothing"
    );
    let r = post(&client, &url, Some("bp-1"), keyed).await;
    assert_eq!((r.status, r.replayed), (202, true), "{}", r.body);
    // Another stream is not held back.
    let webrtc: String = (0..10)
        .map(|i| webrtc_event(i, T0 + i as i64).to_string())
        .collect::<Vec<_>>()
        .join("\n");
    let r = post(&client, &url, None, webrtc).await;
    assert_eq!(r.status, 202, "{}", r.body);

    // The group's workers come back and catch up: ingest accepts again.
    let rollup = env.start("rollup").await;
    let start = Instant::now();
    loop {
        let r = post(&client, &url, None, http_batch(http, 20)).await;
        if r.status == 202 {
            http += 20;
            break;
        }
        assert_eq!(r.body["outcome"], "not_written");
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "backpressure never lifted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_counted(&env, (http as i64, 10)).await;
    ingest.stop().await;
    rollup.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_writes_nothing_and_status_warns_about_eviction() {
    let redis = servers::PrivateRedis::start("no");
    let mut env = TestEnv::new("abuse_redis_full");
    env.settings.redis.url = redis.url();
    env.migrate().await;
    let mut r = redis::Client::open(redis.url())
        .expect("url")
        .get_multiplexed_async_connection_with_config(&redis_config())
        .await
        .expect("private redis");
    let config =
        |k: &'static str, v: &'static str| redis::cmd("CONFIG").arg("SET").arg(k).arg(v).clone();
    let _: () = config("maxmemory-policy", "allkeys-lru")
        .query_async(&mut r)
        .await
        .expect("policy");
    let server = env.start("ingest,api").await;
    let client = http_client();

    let status = get_json(&client, server.url("/v1/status")).await;
    assert_eq!(status["redis"]["maxmemory_policy"], "allkeys-lru");
    assert!(status["redis"]["warning"]
        .as_str()
        .is_some_and(|w| w.contains("noeviction")));
    let dir = tempfile::tempdir().expect("tempdir");
    let printed = cli_ok(&env.write_config(dir.path()), &["status"]);
    assert!(
        printed.starts_with("WARNING: Redis maxmemory-policy is allkeys-lru"),
        "{printed}"
    );

    // Full, without eviction: Redis refuses every write, nothing is stored.
    let _: () = config("maxmemory-policy", "noeviction")
        .query_async(&mut r)
        .await
        .expect("policy");
    let _: () = config("maxmemory", "1")
        .query_async(&mut r)
        .await
        .expect("maxmemory");
    let url = server.url("/v1/events");
    let (body, http, webrtc) = batch(0, 20);
    for key in [None, Some("full-1")] {
        let reply = post(&client, &url, key, body.clone()).await;
        assert_eq!(reply.status, 503, "{}", reply.body);
        assert_eq!(reply.body["outcome"], "not_written", "{key:?}");
    }
    let _: () = config("maxmemory", "0")
        .query_async(&mut r)
        .await
        .expect("maxmemory");
    let reply = post(&client, &url, Some("full-1"), body).await;
    assert_eq!(
        (reply.status, reply.replayed),
        (202, false),
        "{}",
        reply.body
    );
    let lens = stream_total_on(&mut r, &env).await;
    assert_eq!(lens, http + webrtc);
    server.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_answers_stay_bounded_with_exact_counts() {
    let mut env = TestEnv::new("abuse_error_caps");
    env.settings.ingest.max_body_bytes = 8 << 20;
    env.settings.ingest.max_error_body_bytes = 4_096;
    let server = env.start("ingest").await;
    let client = http_client();
    let url = server.url("/v1/events");
    let limit = env.settings.ingest.max_error_body_bytes;
    let max_chars = env.settings.ingest.max_error_reason_chars;

    // 20 KB of bad NDJSON lines used to answer with 978 KB.
    let r = post(&client, &url, None, "x\n".repeat(9_999)).await;
    assert_eq!(r.status, 400);
    assert!(r.bytes <= limit, "{} bytes", r.bytes);
    assert_eq!(r.body["invalid_events"], 9_999);
    let listed = r.body["errors"].as_array().map_or(0, Vec::len) as u64;
    assert!(listed > 0);
    assert_eq!(r.body["errors_omitted"].as_u64(), Some(9_999 - listed));

    // Events with long unknown field names and values in 4-byte characters.
    let crab = "🦀".repeat(300);
    let bad: Vec<String> = (0..1_000)
        .map(|i| {
            let mut e = http_event(i, T0);
            e[crab.as_str()] = Value::from(i);
            e["service"] = Value::from(crab.clone());
            e.to_string()
        })
        .collect();
    let r = post(&client, &url, None, bad.join("\n")).await;
    assert_eq!(r.status, 400);
    assert!(r.bytes <= limit, "{} bytes", r.bytes);
    assert_eq!(r.body["invalid_events"], 1_000);
    let listed = r.body["errors"].as_array().map_or(0, Vec::len) as u64;
    assert!(listed > 0);
    assert!(r.body["errors_omitted"].as_u64() >= Some(1_000 - listed));
    for e in r.body["errors"].as_array().expect("errors") {
        for part in ["field", "reason"] {
            let n = e[part].as_str().map_or(0, |s| s.chars().count());
            assert!(n <= max_chars + 1, "{part} of {n} characters");
        }
    }
    // Nothing of it was written; a good request still is.
    let r = post(&client, &url, None, http_event(1, T0).to_string()).await;
    assert_eq!(r.status, 202);
    assert_eq!(stored(&env).await, 1);
    server.stop().await;
    env.cleanup().await;
}

/// Sends one raw HTTP/1.1 request; returns the answer's status code.
async fn raw_status(addr: std::net::SocketAddr, key: &[u8], body: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nIdempotency-Key: ",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(key);
    req.extend_from_slice(b"\r\n\r\n");
    req.extend_from_slice(body.as_bytes());
    s.write_all(&req).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
        .await
        .expect("the server answers")
        .expect("read");
    let head = String::from_utf8_lossy(answer.get(..12).unwrap_or(&answer)).into_owned();
    head.get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {head:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_header_value_breaks_ingest() {
    let env = TestEnv::new("abuse_idem_headers");
    let server = env.start("ingest").await;
    let client = http_client();
    let url = server.url("/v1/events");
    let mut written = 0;
    for b in 0u8..=255 {
        let key = [b'k', b, b'k'];
        let plain = b.is_ascii_alphanumeric() || b"-_.:+/=".contains(&b);
        let body = http_event(u64::from(b), T0).to_string();
        match reqwest::header::HeaderValue::from_bytes(&key) {
            Ok(v) => {
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("Idempotency-Key", v)
                    .body(body)
                    .send()
                    .await
                    .expect("request");
                let status = r.status().as_u16();
                let reply: Value = r.json().await.expect("JSON");
                if plain {
                    assert_eq!(status, 202, "byte {b:#x}: {reply}");
                    written += 1;
                } else {
                    assert_eq!(status, 400, "byte {b:#x}: {reply}");
                    assert_eq!(reply["header"], "Idempotency-Key");
                }
            }
            // Bytes no client library sends (controls, line breaks): the
            // HTTP layer answers 4xx.
            Err(_) => {
                let status = raw_status(server.addr, &key, &body).await;
                assert!((400..500).contains(&status), "byte {b:#x}: {status}");
            }
        }
    }
    // Two keys, and one far past any header bound.
    let r = client
        .post(&url)
        .header("Idempotency-Key", "a")
        .header("Idempotency-Key", "b")
        .body(http_event(1, T0).to_string())
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 400);
    let status = raw_status(server.addr, "k".repeat(64 * 1024).as_bytes(), "{}").await;
    assert!((400..500).contains(&status), "{status}");

    assert_eq!(stored(&env).await, written);
    assert_eq!(written, 62 + 7);
    let health = client
        .get(server.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status().as_u16(), 200);
    server.stop().await;
    env.cleanup().await;
}
