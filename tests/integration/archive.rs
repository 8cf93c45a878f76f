//! The ClickHouse archive against a real ClickHouse (a private instance of
//! the machine's clickhouse-server, 18.16 on Debian 12): every event lands
//! once (as seen with FINAL) even when redelivered, nothing is acknowledged
//! while ClickHouse is down and everything lands when it is back, and
//! `GET /v1/events/search` answers questions rollups cannot.

use crate::common;

use std::time::{Duration, Instant};

use common::servers::PrivateClickHouse;
use common::{get_json, http_client, use_copied_definitions, wait_until, TestEnv};
use serde_json::{json, Value};

/// A test env with the archive enabled against `ch`, migrated (MySQL and ClickHouse).
async fn archive_env(name: &str, ch: &PrivateClickHouse, dir: &std::path::Path) -> TestEnv {
    let mut env = TestEnv::new(name);
    use_copied_definitions(&mut env, dir);
    let def = dir.join("processors/clickhouse_archive.toml");
    let text = std::fs::read_to_string(&def).expect("archive definition");
    std::fs::write(&def, text.replace("enabled = false", "enabled = true")).expect("enable");
    let kafka = dir.join("processors/kafka_bridge.toml");
    if kafka.exists() {
        std::fs::remove_file(kafka).expect("no bridge here");
    }
    env.settings.clickhouse.url = ch.url();
    env.settings.clickhouse.database = env.name.clone();
    // 18.16 lacks what the client's validation asks for
    env.settings.clickhouse.validation = !ch.version().starts_with("18.");
    env.settings.paths.clickhouse_migrations = dir.join("migrations/clickhouse");
    env.migrate().await;
    env
}

/// A query's single number (TabSeparated).
async fn ch_count(ch: &PrivateClickHouse, db: &str, sql: &str) -> u64 {
    common::clickhouse_number(&ch.url(), db, sql).await
}

fn http(i: u64, ts_ms: i64) -> Value {
    json!({
        "kind": "http", "ts": ts_ms, "service": format!("svc{}", i % 3),
        "endpoint": format!("/api/e{}/:id", i % 5), "method": "GET",
        "status": if i % 13 == 0 { 500 } else { 200 },
        "req_bytes": 100 + i % 50, "resp_bytes": 1000 + (i * 37) % 5000,
        "duration_ms": (i * 7919 % 1000) as f64 / 4.0, "user_id": format!("u{}", i % 20)
    })
}

fn webrtc(i: u64, ts_ms: i64) -> Value {
    json!({
        "kind": "webrtc", "ts": ts_ms, "meeting_id": format!("m{}", i % 4), "peer_id": format!("p{i}"),
        "bytes_sent": 1000 + i, "bytes_received": 2000 + i, "rtt_ms": 40.0, "jitter_ms": 3.5,
        "packet_loss": 0.01, "candidate_type": if i % 2 == 0 { "relay" } else { "host" },
        "relay_protocol": if i % 2 == 0 { json!("udp") } else { Value::Null }
    })
}

async fn post(client: &reqwest::Client, url: &str, events: &[Value]) {
    let r = client
        .post(url)
        .json(&events)
        .send()
        .await
        .expect("ingest answers");
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
}

/// Sum of the archive group's pending and lag over its shards.
async fn unacked(env: &TestEnv) -> u64 {
    let (pending, lag) = common::group_figures(env, "archive").await;
    pending + lag
}

#[tokio::test(flavor = "multi_thread")]
async fn events_are_archived_once_and_searchable() {
    let mut ch = PrivateClickHouse::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let env = archive_env("archive", &ch, dir.path()).await;
    let db = env.name.clone();
    let server = env.start("ingest,api,rollup").await;
    let client = http_client();
    let url = server.url("/v1/events");
    let now = chrono::Utc::now().timestamp_millis();
    let https: Vec<Value> = (0..600).map(|i| http(i, now - 60_000 + i as i64)).collect();
    let rtcs: Vec<Value> = (0..200)
        .map(|i| webrtc(i, now - 30_000 + i as i64))
        .collect();
    post(&client, &url, &https).await;
    post(&client, &url, &rtcs).await;
    wait_until(Duration::from_secs(30), || async {
        ch_count(&ch, &db, "SELECT count() FROM http_events FINAL").await == 600
            && ch_count(&ch, &db, "SELECT count() FROM webrtc_events FINAL").await == 200
    })
    .await;
    // the ack follows the insert, so the rows can be seen a moment before it
    wait_until(Duration::from_secs(10), || async {
        unacked(&env).await == 0
    })
    .await;
    // status shows the archive's worker and what it delivered
    let status = get_json(&client, server.url("/v1/status")).await;
    let archive = status["processors"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "clickhouse_archive"))
        .cloned()
        .expect("the archive in status");
    let delivered: u64 = archive["workers"]
        .as_array()
        .map(|ws| ws.iter().filter_map(|w| w["events_total"].as_u64()).sum())
        .unwrap_or(0);
    assert_eq!(delivered, 800, "{archive}");
    // the fields made it: bytes per kind equal what was posted
    let sent: u64 = https
        .iter()
        .map(|e| e["resp_bytes"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        ch_count(&ch, &db, "SELECT sum(resp_bytes) FROM http_events FINAL").await,
        sent
    );
    let relayed: u64 = rtcs
        .iter()
        .filter(|e| e["candidate_type"] == "relay")
        .map(|e| e["bytes_sent"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        ch_count(
            &ch,
            &db,
            "SELECT sum(bytes_sent) FROM webrtc_events FINAL WHERE candidate_type = 'relay' AND relay_protocol = 'udp'"
        )
        .await,
        relayed
    );

    // redelivery: move the group back to the start of every shard; every
    // entry is inserted again, and FINAL still sees each once
    let mut r = env.redis().await;
    for kind in ["http", "webrtc"] {
        for i in 0..env.settings.redis.shards {
            let key = format!("{}:{{{kind}:{i}}}", env.name);
            let _: Result<(), _> = redis::cmd("XGROUP")
                .arg("SETID")
                .arg(&key)
                .arg("archive")
                .arg("0")
                .query_async(&mut r)
                .await;
        }
    }
    wait_until(Duration::from_secs(30), || async {
        ch_count(&ch, &db, "SELECT count() FROM http_events").await >= 1200
    })
    .await;
    assert_eq!(
        ch_count(&ch, &db, "SELECT count() FROM http_events FINAL").await,
        600,
        "duplicates from redelivery collapse"
    );

    // search: the slowest requests of one endpoint, and one user's traffic
    let q = |p: &str| {
        server.url(&format!(
            "/v1/events/search?kind=http&from={}&to={}&{p}",
            chrono::DateTime::from_timestamp_millis(now - 120_000)
                .expect("time")
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            chrono::DateTime::from_timestamp_millis(now + 60_000)
                .expect("time")
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ))
    };
    let slow = get_json(
        &client,
        q("service=svc1&endpoint=/api/e2/:id&order_by=duration_ms&limit=5"),
    )
    .await;
    let mut want: Vec<f64> = https
        .iter()
        .filter(|e| e["service"] == "svc1" && e["endpoint"] == "/api/e2/:id")
        .map(|e| e["duration_ms"].as_f64().unwrap_or(0.0))
        .collect();
    want.sort_by(|a, b| b.total_cmp(a));
    let got: Vec<f64> = slow["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["duration_ms"].as_f64().unwrap_or(-1.0))
        .collect();
    assert_eq!(got, want[..5].to_vec(), "{slow}");
    assert_eq!(slow["total"].as_u64(), Some(want.len() as u64));
    let user = get_json(&client, q("user_id=u7&limit=1000")).await;
    let mine = https.iter().filter(|e| e["user_id"] == "u7").count();
    assert_eq!(user["total"].as_u64(), Some(mine as u64));
    assert_eq!(user["rows"].as_array().map(Vec::len), Some(mine));
    let slowish = get_json(&client, q("min_duration_ms=200&limit=1")).await;
    let n = https
        .iter()
        .filter(|e| e["duration_ms"].as_f64().unwrap_or(0.0) >= 200.0)
        .count();
    assert_eq!(slowish["total"].as_u64(), Some(n as u64));
    // a bad column names itself
    let bad = client.get(q("nope=1")).send().await.expect("answers");
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.expect("json");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("nope")),
        "{body}"
    );
    // filter values take their column's type: a number for status
    let errors = get_json(&client, q("status=500&limit=1")).await;
    let n500 = https.iter().filter(|e| e["status"] == 500).count();
    assert_eq!(errors["total"].as_u64(), Some(n500 as u64), "{errors}");
    let bad = client.get(q("status=5xx")).send().await.expect("answers");
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.expect("json");
    assert_eq!(body["param"], "status", "{body}");
    // bad parameters are named together
    let bad = client
        .get(q("limit=0&order=sideways&min_duration_ms=fast"))
        .send()
        .await
        .expect("answers");
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.expect("json");
    let named: Vec<&str> = body["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["param"].as_str())
        .collect();
    assert_eq!(named, ["limit", "order", "min_duration_ms"], "{body}");
    // a quote in a value is a value, not SQL
    let sneaky = get_json(&client, q("service=svc1'%20OR%20'1'='1")).await;
    assert_eq!(sneaky["total"].as_u64(), Some(0), "{sneaky}");
    assert_eq!(sneaky["truncated"], false);

    // the same question from the command line
    let config = env.write_config(dir.path());
    let from = chrono::DateTime::from_timestamp_millis(now - 120_000)
        .expect("time")
        .to_rfc3339();
    let out = common::cli_ok(
        &config,
        &[
            "query",
            "--kind",
            "http",
            "--from",
            &from,
            "--where",
            "service=svc1",
            "--where",
            "endpoint=/api/e2/:id",
            "--order-by",
            "duration_ms",
            "--limit",
            "5",
        ],
    );
    assert!(
        out.contains(&format!("5 of {} matching http events", want.len())),
        "{out}"
    );
    assert!(
        out.lines()
            .next()
            .is_some_and(|h| h.contains("duration_ms")),
        "{out}"
    );
    assert!(out.contains(&want[0].to_string()), "{out}");
    let bad = common::cli(&config, &["query", "--kind", "http", "--where", "nope"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("COLUMN=VALUE"));

    // ClickHouse down: 503 with Retry-After, and nothing of ClickHouse's
    // own text, address or SQL in the answer
    ch.kill9();
    let down = client.get(q("user_id=u7")).send().await.expect("answers");
    assert_eq!(down.status(), 503);
    assert!(down.headers().contains_key("retry-after"));
    let text = down.text().await.expect("body");
    for internal in [
        "127.0.0.1",
        "ClickHouse at",
        "SELECT",
        "FINAL",
        "Code:",
        "http_events",
    ] {
        assert!(!text.contains(internal), "{internal:?} leaked: {text}");
    }

    server.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_is_acknowledged_while_clickhouse_is_down() {
    let mut ch = PrivateClickHouse::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let env = archive_env("archive_down", &ch, dir.path()).await;
    let db = env.name.clone();
    let server = env.start("ingest,rollup").await;
    let client = http_client();
    let url = server.url("/v1/events");
    let now = chrono::Utc::now().timestamp_millis();
    post(
        &client,
        &url,
        &(0..300)
            .map(|i| http(i, now + i as i64))
            .collect::<Vec<_>>(),
    )
    .await;
    wait_until(Duration::from_secs(30), || async {
        ch_count(&ch, &db, "SELECT count() FROM http_events FINAL").await == 300
    })
    .await;
    ch.kill9();
    // events keep coming while ClickHouse is down: they wait in Redis
    for round in 0..5u64 {
        let batch: Vec<Value> = (0..200)
            .map(|i| http(1000 + round * 200 + i, now + 1000 + i as i64))
            .collect();
        post(&client, &url, &batch).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let waiting = unacked(&env).await;
    assert_eq!(
        waiting, 1000,
        "all 1,000 events posted while down are unacknowledged"
    );
    let started = Instant::now();
    ch.restart();
    wait_until(Duration::from_secs(60), || async {
        ch_count(&ch, &db, "SELECT count() FROM http_events FINAL").await == 1300
    })
    .await;
    eprintln!(
        "after the restart, the 1,000 waiting events were archived within {:.1} s",
        started.elapsed().as_secs_f64()
    );
    wait_until(Duration::from_secs(10), || async {
        unacked(&env).await == 0
    })
    .await;
    server.stop().await;
    env.cleanup().await;
}

/// The figures of BENCHMARKS.md ("ClickHouse archive"): archive rows/s and
/// bytes per event on disk. A measurement, not a test of speed; run with
/// `cargo test --release --test integration archive:: -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: run explicitly"]
async fn archive_throughput() {
    let ch = PrivateClickHouse::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let env = archive_env("archive_bench", &ch, dir.path()).await;
    let db = env.name.clone();
    let want: u64 = std::env::var("FM_ARCHIVE_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    // the events wait in the streams first, so the archive runs flat out
    let config = env.write_config(dir.path());
    let rate = want.to_string();
    common::cli_ok(
        &config,
        &[
            "loadgen",
            "--redis",
            "--rate",
            &rate,
            "--duration",
            "1",
            "--quiet",
            "--kind",
            "mixed",
        ],
    );
    let mut r = env.redis().await;
    let mut n = 0u64;
    for kind in ["http", "webrtc"] {
        for i in 0..env.settings.redis.shards {
            let len: u64 = redis::cmd("XLEN")
                .arg(format!("{}:{{{kind}:{i}}}", env.name))
                .query_async(&mut r)
                .await
                .expect("xlen");
            n += len;
        }
    }
    let server = env.start("rollup").await;
    let started = Instant::now();
    let count = || async {
        ch_count(&ch, &db, "SELECT count() FROM http_events").await
            + ch_count(&ch, &db, "SELECT count() FROM webrtc_events").await
    };
    // the reference of the same run: the rollup draining the same backlog
    let store = env.store().await;
    let rolled = || async {
        common::scalar(
            &store,
            "SELECT (SELECT COALESCE(SUM(requests), 0) FROM http_hourly) + (SELECT COALESCE(SUM(samples), 0) FROM webrtc_hourly)",
        )
        .await as u64
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    let (mut last, mut secs, mut rollup_secs) = (0, None, None);
    while (secs.is_none() || rollup_secs.is_none()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if secs.is_none() {
            last = count().await;
            if last >= n {
                secs = Some(started.elapsed().as_secs_f64());
            }
        }
        if rollup_secs.is_none() && rolled().await >= n {
            rollup_secs = Some(started.elapsed().as_secs_f64());
        }
    }
    let (Some(secs), Some(rollup_secs)) = (secs, rollup_secs) else {
        panic!("archived {last} of {n} (or the rollup did not finish) in 600 s");
    };
    for t in ["http_events", "webrtc_events"] {
        let r = http_client()
            .post(format!("{}/?database={db}", ch.url()))
            .body(format!("OPTIMIZE TABLE {t} FINAL"))
            .send()
            .await
            .expect("optimize");
        assert!(r.status().is_success());
    }
    let bytes = ch_count(
        &ch,
        &db,
        "SELECT sum(bytes_on_disk) FROM system.parts WHERE database = currentDatabase() AND active",
    )
    .await;
    let rows = ch_count(
        &ch,
        &db,
        "SELECT sum(rows) FROM system.parts WHERE database = currentDatabase() AND active",
    )
    .await;
    let (archive_rate, rollup_rate) = (n as f64 / secs, n as f64 / rollup_secs);
    eprintln!(
        "archive: {n} events in {secs:.1} s = {archive_rate:.0} rows/s; same run, rollup: {rollup_secs:.1} s = {rollup_rate:.0} events/s; archive/rollup = {:.2}; {bytes} bytes on disk for {rows} rows = {:.1} bytes/event (ClickHouse {})",
        archive_rate / rollup_rate,
        bytes as f64 / rows.max(1) as f64,
        ch.version()
    );
    server.stop().await;
    env.cleanup().await;
}
