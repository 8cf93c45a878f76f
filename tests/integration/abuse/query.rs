//! Queries past their bounds (`[query]`, docs/api.md#bounds):
//!
//! - 8 parallel queries over 14,000 rows with long strings and blobs keep
//!   the process's RSS within a stated bound (measured in a process of its
//!   own, reading /proc/self/status: the server runs in-process);
//! - queries saturating the query API's pool and slots get 503 with
//!   Retry-After, while the processors' flushes keep committing (canary
//!   events counted exactly);
//! - a `from`..`to` wider than the cap is refused with 400 naming `from`
//!   and the cap;
//! - walking a table with `cursor` returns every row exactly once, in JSON
//!   and in CSV, whether pages end at the byte cap or at `limit`;
//! - clients that do not read their answers keep their query slots until
//!   the answers are sent: the next query gets 503.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;

/// Rows of the large table (the 14k-row answers).
const ROWS: u64 = 14_000;

/// Fills `http_hourly` with `rows` rows over the last 48 hours: 50
/// services, a distinct 160-character endpoint per row, and 2 KiB sketch
/// blobs (not served, but read by MySQL like real ones).
async fn fill(env: &TestEnv, rows: u64) {
    let store = env.store().await;
    sqlx::query(&format!(
        "INSERT INTO http_hourly (service, endpoint, method, hour, requests, bytes_out, \
         duration_sum_ms, p50_ms, p95_ms, p99_ms, unique_users, duration_sketch, users_hll) \
         SELECT CONCAT('svc', seq % 50), CONCAT('/api/', REPEAT('long-path-segment/', 8), seq), \
         IF(seq % 3 = 0, 'POST', 'GET'), \
         DATE_SUB(DATE_FORMAT(UTC_TIMESTAMP(), '%Y-%m-%d %H:00:00'), INTERVAL (seq % 48) HOUR), \
         1 + seq % 7, seq * 1000, seq * 1.5, 10.25, 95.5, 99.75, seq % 40, \
         REPEAT('s', 2048), REPEAT('h', 512) FROM seq_0_to_{}",
        rows - 1
    ))
    .execute(store.pool())
    .await
    .expect("fill http_hourly (MariaDB's sequence engine)");
    assert_eq!(
        scalar(&store, "SELECT COUNT(*) FROM http_hourly").await,
        rows as i64
    );
}

/// `from`/`to` covering every filled row.
fn whole_range() -> String {
    let now = chrono::Utc::now();
    let from = now - chrono::Duration::hours(72);
    let to = now + chrono::Duration::hours(2);
    format!(
        "from={}&to={}",
        from.format("%Y-%m-%dT%H:00:00Z"),
        to.format("%Y-%m-%dT%H:00:00Z")
    )
}

/// GETs `url` reading the body in chunks and dropping them (the client
/// holds no answer); (status, bytes).
async fn drain(client: &reqwest::Client, url: &str) -> (u16, u64) {
    let mut r = client.get(url).send().await.expect("answers");
    let status = r.status().as_u16();
    let mut n = 0u64;
    while let Some(c) = r.chunk().await.expect("body") {
        n += c.len() as u64;
    }
    (status, n)
}

/// The RSS bound this test states: every query slot holding one full
/// answer, plus 24 MiB for the pool's connections, socket buffers and
/// allocator slack (measured: +37.6 MiB for 8 slots of 4 MiB).
fn rss_bound_mib(cfg: &flowmeter::config::QueryConfig) -> u64 {
    (cfg.max_concurrent_queries as u64 * cfg.max_response_bytes as u64) / (1 << 20) + 24
}

/// Runs [`rss_probe`] in a process of its own, so no other test of this
/// binary adds to the RSS it measures.
#[test]
fn large_parallel_queries_keep_rss_bounded() {
    let _heavy = heavy_blocking();
    run_alone("abuse::query::rss_probe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by large_parallel_queries_keep_rss_bounded in a process of its own"]
async fn rss_probe() {
    let env = TestEnv::new("abuse_rss");
    env.migrate().await;
    fill(&env, ROWS).await;
    let server = env.start("api").await;
    let client = http_client();
    let url = server.url(&format!(
        "/v1/rollups/hourly?kind=http&limit=100000&{}",
        whole_range()
    ));
    // warm up pools and caches, then take the baseline
    let (code, one) = drain(&client, &url).await;
    assert_eq!(code, 200);
    let baseline = status_kib("VmRSS");
    let peak = Arc::new(AtomicU64::new(baseline));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                peak.fetch_max(status_kib("VmRSS"), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let parallel = 8;
    let rounds = 4;
    let started = Instant::now();
    let mut served = 0u64;
    for _ in 0..rounds {
        let answers = futures::future::join_all((0..parallel).map(|_| drain(&client, &url))).await;
        for (code, bytes) in answers {
            assert_eq!(code, 200);
            served += bytes;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "bounded in time"
        );
    }
    stop.store(true, Ordering::SeqCst);
    sampler.await.expect("sampler");
    let hwm = status_kib("VmHWM");
    let peak = peak.load(Ordering::SeqCst);
    let cfg = &env.settings.query;
    let bound = rss_bound_mib(cfg);
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "rss_probe: {parallel} parallel x {rounds} rounds of {ROWS}-row queries, one answer {:.2} MiB, \
         {:.1} MiB served; RSS baseline {:.1} MiB, sampled peak {:.1} MiB (+{:.1}), VmHWM {:.1} MiB (+{:.1}); bound +{bound} MiB",
        one as f64 / 1048576.0,
        served as f64 / 1048576.0,
        mib(baseline),
        mib(peak),
        mib(peak.saturating_sub(baseline)),
        mib(hwm),
        mib(hwm.saturating_sub(baseline))
    );
    assert!(
        one as usize <= cfg.max_response_bytes + 64 * 1024,
        "one answer is {one} bytes, past query.max_response_bytes"
    );
    assert!(
        hwm.saturating_sub(baseline) / 1024 <= bound,
        "RSS grew by {:.1} MiB, past the stated bound of {bound} MiB",
        mib(hwm.saturating_sub(baseline))
    );
    server.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturating_queries_get_503_while_flushes_keep_committing() {
    let _heavy = heavy().await;
    let mut env = TestEnv::new("abuse_qpool");
    env.settings.query.max_connections = 2;
    env.settings.query.max_concurrent_queries = 3;
    env.migrate().await;
    fill(&env, 4_000).await;
    let server = env.start("ingest,api,rollup").await;
    let client = http_client();
    let url = server.url(&format!(
        "/v1/rollups/hourly?kind=http&limit=100000&{}",
        whole_range()
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, busy, retry_after) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut workers = Vec::new();
    for _ in 0..10 {
        let (client, url, stop) = (client.clone(), url.clone(), stop.clone());
        let (ok, busy, retry_after) = (ok.clone(), busy.clone(), retry_after.clone());
        workers.push(tokio::spawn(async move {
            let started = Instant::now();
            while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(90) {
                let r = client.get(&url).send().await.expect("answers");
                match r.status().as_u16() {
                    200 => ok.fetch_add(1, Ordering::SeqCst),
                    503 => {
                        if r.headers().contains_key("retry-after") {
                            retry_after.fetch_add(1, Ordering::SeqCst);
                        }
                        busy.fetch_add(1, Ordering::SeqCst)
                    }
                    other => panic!("unexpected {other}"),
                };
                let _ = r.bytes().await;
            }
        }));
    }
    // canaries while the query API is saturated
    tokio::time::sleep(Duration::from_millis(500)).await;
    let canaries = 600u64;
    let t0 = chrono::Utc::now().timestamp_millis();
    let body: Vec<String> = (0..canaries)
        .map(|i| {
            let mut e = http_event(i, t0);
            e["service"] = "canary".into();
            e.to_string()
        })
        .collect();
    let (code, reply) = post_ndjson(&client, &server.url("/v1/events"), body.join("\n")).await;
    assert_eq!(code, 202, "{reply}");
    let store = env.store().await;
    wait_until(Duration::from_secs(60), || {
        let store = store.clone();
        async move {
            scalar(
                &store,
                "SELECT SUM(requests) FROM http_hourly WHERE service = 'canary'",
            )
            .await
                == canaries as i64
        }
    })
    .await;
    let saturated_at_commit = busy.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.expect("worker");
    }
    let (ok, busy, retry_after) = (
        ok.load(Ordering::SeqCst),
        busy.load(Ordering::SeqCst),
        retry_after.load(Ordering::SeqCst),
    );
    println!("queries: {ok} answered, {busy} refused with 503 ({saturated_at_commit} before the canaries were committed)");
    assert!(ok > 0, "some queries are answered");
    assert!(
        busy > 0,
        "past query.max_concurrent_queries queries get 503"
    );
    assert_eq!(retry_after, busy, "every 503 says when to retry");
    assert!(
        saturated_at_commit > 0,
        "the API was saturated while the canaries flushed"
    );
    // exactly: no canary lost or doubled
    assert_eq!(
        scalar(
            &store,
            "SELECT SUM(requests) FROM http_hourly WHERE service = 'canary'"
        )
        .await,
        canaries as i64
    );
    server.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_past_the_cap_are_refused_naming_from_and_the_cap() {
    let env = TestEnv::new("abuse_range");
    env.migrate().await;
    let server = env.start("api").await;
    let client = http_client();
    let to = chrono::Utc::now();
    let span = |days: i64| {
        format!(
            "from={}&to={}",
            (to - chrono::Duration::days(days)).format("%Y-%m-%dT%H:%M:%SZ"),
            to.format("%Y-%m-%dT%H:%M:%SZ")
        )
    };
    let cfg = &env.settings.query;
    for (path, cap, setting) in [
        (
            "/v1/rollups/hourly?kind=http",
            cfg.max_hourly_range_days,
            "max_hourly_range_days",
        ),
        (
            "/v1/rollups/daily?kind=http",
            cfg.max_daily_range_days,
            "max_daily_range_days",
        ),
        (
            "/v1/alerts?state=all",
            cfg.max_daily_range_days,
            "max_daily_range_days",
        ),
    ] {
        let cap = cap as i64;
        let r = client
            .get(server.url(&format!("{path}&{}", span(cap + 1))))
            .send()
            .await
            .expect("answers");
        assert_eq!(r.status(), 400, "{path}");
        let body: serde_json::Value = r.json().await.expect("json");
        assert_eq!(body["param"], "from", "{body}");
        let reason = body["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains(&format!("at most {cap} days")) && reason.contains(setting),
            "{body}"
        );
        let r = client
            .get(server.url(&format!("{path}&{}", span(cap))))
            .send()
            .await
            .expect("answers");
        assert_eq!(r.status(), 200, "{path}: the cap itself is allowed");
    }
    // and a `from` alone far back: the default `to` makes the span too wide
    let r = client
        .get(server.url("/v1/rollups/hourly?kind=http&from=2000-01-01T00:00:00Z"))
        .send()
        .await
        .expect("answers");
    assert_eq!(r.status(), 400);
    server.stop().await;
    env.cleanup().await;
}

/// Bad query parameters are named together, each with what to write
/// instead; dates are times; a `+` lost to URL decoding gets a hint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_named_together_and_dates_are_accepted() {
    let env = TestEnv::new("abuse_params");
    env.migrate().await;
    let store = env.store().await;
    // the last hour of March 1st and the first of March 2nd
    for hour in ["2026-03-01 23:00:00", "2026-03-02 00:00:00"] {
        sqlx::query(
            "INSERT INTO http_hourly (service, endpoint, method, hour, requests, bytes_out, \
             duration_sum_ms, p50_ms, p95_ms, p99_ms, unique_users, duration_sketch, users_hll) \
             VALUES ('svc', '/a', 'GET', ?, 1, 1, 1, 1, 1, 1, 1, '', '')",
        )
        .bind(hour)
        .execute(store.pool())
        .await
        .expect("insert");
    }
    let server = env.start("api").await;
    let client = http_client();
    let get = |path: String| {
        let c = client.clone();
        let url = server.url(&path);
        async move {
            let r = c.get(url).send().await.expect("answers");
            let code = r.status().as_u16();
            (code, r.json::<serde_json::Value>().await.expect("json"))
        }
    };

    // a date is its midnight UTC, on both windows; `to` is exclusive
    let (code, v) = get("/v1/rollups/hourly?kind=http&from=2026-03-01&to=2026-03-02".into()).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["count"], 1, "only March 1st's hour: {v}");
    assert_eq!(v["rows"][0]["hour"], "2026-03-01T23:00:00Z", "{v}");
    let (code, v) = get("/v1/rollups/daily?kind=http&from=2026-03-01&to=2026-03-03".into()).await;
    assert_eq!(code, 200, "{v}");

    // a raw + arrives as a space: the answer says to write %2B
    let (code, v) = get("/v1/rollups/hourly?kind=http&from=2026-03-01T10:00:00+01:00".into()).await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["param"], "from", "{v}");
    assert!(
        v["reason"].as_str().is_some_and(|r| r.contains("%2B")),
        "{v}"
    );
    let (code, v) =
        get("/v1/rollups/hourly?kind=http&from=2026-03-01T10:00:00%2B01:00&to=2026-03-02".into())
            .await;
    assert_eq!(code, 200, "{v}");

    // every bad parameter in one answer
    let (code, v) = get(
        "/v1/rollups/hourly?kind=http&from=yesterday&to=2026-03-02&limit=0&format=xml&colour=red"
            .into(),
    )
    .await;
    assert_eq!(code, 400, "{v}");
    let named: Vec<&str> = v["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["param"].as_str())
        .collect();
    for p in ["from", "limit", "format", "colour"] {
        assert!(named.contains(&p), "{p} not named: {v}");
    }
    assert_eq!(named.len(), 4, "{v}");
    assert_eq!(v["param"], "from", "the first, as before: {v}");
    let error = v["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("parameter limit:") && error.contains("parameter colour:"),
        "{v}"
    );
    let (code, v) = get("/v1/alerts?state=maybe&to=nope&from=2026-03-01".into()).await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["errors"].as_array().map(Vec::len), Some(2), "{v}");

    // and past MAX_PARAM_ERRORS they are counted, not listed
    let many: Vec<String> = (0..60).map(|i| format!("x{i}=1")).collect();
    let (code, v) = get(format!("/v1/rollups/hourly?kind=http&{}", many.join("&"))).await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["errors"].as_array().map(Vec::len), Some(20), "{v}");
    assert_eq!(v["errors_omitted"], 40, "{v}");
    server.stop().await;
    env.cleanup().await;
}

/// Walks `first` page by page following `cursor` (JSON) or
/// `x-flowmeter-cursor` (CSV); returns every row's key and the pages.
async fn walk(client: &reqwest::Client, first: &str, csv: bool) -> (Vec<String>, usize) {
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 1..=1_000 {
        let url = match &cursor {
            Some(c) => format!("{first}&cursor={c}"),
            None => first.to_string(),
        };
        let r = client.get(&url).send().await.expect("answers");
        assert_eq!(r.status(), 200, "{url}");
        let header_cursor = r
            .headers()
            .get("x-flowmeter-cursor")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let truncated = r
            .headers()
            .get("x-flowmeter-truncated")
            .and_then(|v| v.to_str().ok())
            == Some("true");
        if csv {
            let text = r.text().await.expect("csv");
            let mut lines = text.lines();
            let header: Vec<&str> = lines.next().expect("header").split(',').collect();
            let col = |n: &str| header.iter().position(|h| *h == n).expect("column");
            let (h, s, e, m) = (col("hour"), col("service"), col("endpoint"), col("method"));
            for l in lines {
                let f: Vec<&str> = l.split(',').collect();
                keys.push(format!("{}\0{}\0{}\0{}", f[h], f[s], f[e], f[m]));
            }
            cursor = header_cursor;
        } else {
            let body: serde_json::Value = r.json().await.expect("json");
            for row in body["rows"].as_array().expect("rows") {
                // NUL-separated: sorts like the tuple (hour, service, endpoint, method)
                keys.push(format!(
                    "{}\0{}\0{}\0{}",
                    row["hour"].as_str().unwrap_or_default(),
                    row["service"].as_str().unwrap_or_default(),
                    row["endpoint"].as_str().unwrap_or_default(),
                    row["method"].as_str().unwrap_or_default()
                ));
            }
            assert_eq!(body["truncated"], truncated, "body and header agree");
            assert_eq!(body["cursor"].as_str().map(String::from), header_cursor);
            cursor = header_cursor;
        }
        assert_eq!(
            truncated,
            cursor.is_some(),
            "a cursor exactly when truncated"
        );
        if cursor.is_none() {
            return (keys, page);
        }
    }
    panic!("the walk did not end within 1,000 pages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_walk_returns_every_row_exactly_once() {
    let mut env = TestEnv::new("abuse_cursor");
    env.settings.query.max_response_bytes = 64 * 1024;
    env.migrate().await;
    let rows = 3_000u64;
    fill(&env, rows).await;
    let server = env.start("api").await;
    let client = http_client();
    let base = server.url(&format!("/v1/rollups/hourly?kind=http&{}", whole_range()));
    for (what, url, csv) in [
        ("json at the byte cap", base.clone(), false),
        ("csv at the byte cap", format!("{base}&format=csv"), true),
        ("json at limit", format!("{base}&limit=100"), false),
        (
            "one service",
            format!("{base}&service=svc7&limit=13"),
            false,
        ),
    ] {
        let (keys, pages) = walk(&client, &url, csv).await;
        let unique: HashSet<&String> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len(), "{what}: a row came twice");
        let want = if what == "one service" {
            rows / 50
        } else {
            rows
        };
        assert_eq!(keys.len() as u64, want, "{what}: rows missing");
        let mut sorted = keys.clone();
        sorted.sort();
        assert!(
            sorted == keys,
            "{what}: key order (hour, service, endpoint, method) across pages"
        );
        assert!(pages > 1, "{what}: the walk took {pages} page(s)");
        println!("{what}: {} rows in {pages} pages", keys.len());
    }
    // a cursor of another table, or a damaged one, is refused by name
    let r = client
        .get(server.url("/v1/rollups/daily?kind=http&cursor=7b2274223a2278227d"))
        .send()
        .await
        .expect("answers");
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["param"], "cursor", "{body}");
    server.stop().await;
    env.cleanup().await;
}

/// Sends `GET path` on a socket with a small receive buffer and reads only
/// the first bytes of the answer (its status line): the handler has answered,
/// the rest of the answer waits for a reader that never comes.
async fn stalled_reader(server: &Server, path: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut tcp = socket.connect(server.addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.expect("send");
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head).await.expect("an answer starts");
    assert_eq!(&head, b"HTTP/1.1 200", "{}", String::from_utf8_lossy(&head));
    tcp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_do_not_read_keep_their_query_slots() {
    let mut env = TestEnv::new("abuse_qslow");
    env.settings.query.max_concurrent_queries = 2;
    // answers (~13 MB) far past what the socket buffers take (the kernel's
    // send buffer grows to tcp_wmem's 4 MiB at most)
    env.settings.query.max_response_bytes = 32 * 1024 * 1024;
    env.migrate().await;
    fill(&env, 30_000).await;
    let server = env.start("api").await;
    let client = http_client();
    let path = format!(
        "/v1/rollups/hourly?kind=http&limit=100000&{}",
        whole_range()
    );
    let a = stalled_reader(&server, &path).await;
    let b = stalled_reader(&server, &path).await;
    // Both handlers have answered; their answers are not sent.
    let r = client.get(server.url(&path)).send().await.expect("answers");
    assert_eq!(
        r.status().as_u16(),
        503,
        "both slots are still held by the unread answers"
    );
    assert!(r.headers().contains_key("retry-after"));
    let said = r.text().await.expect("body");
    assert!(said.contains("query.max_concurrent_queries"), "{said}");
    // The alert list takes the same slots.
    let r = client
        .get(server.url("/v1/alerts"))
        .send()
        .await
        .expect("answers");
    assert_eq!(r.status().as_u16(), 503);
    // Clients gone: their slots come back.
    drop((a, b));
    wait_until(Duration::from_secs(30), || {
        let (client, url) = (client.clone(), server.url(&path));
        async move { drain(&client, &url).await.0 == 200 }
    })
    .await;
    server.stop().await;
    env.cleanup().await;
}
