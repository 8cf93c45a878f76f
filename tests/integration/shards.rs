//! Changing the shard count live (issue 16): `flowmeter shards set N` while
//! events arrive, twice (4 → 32 → 2, or 8 → 36 → 2 on the cluster), with two rollup workers reading. Every
//! event answered 202 is counted exactly once in MySQL; the older sets are
//! sealed (a writer holding the old layout lands in the new set), read to
//! the end and retired; a keyed request retried across the change is
//! replayed, not written again. The same body runs on one Redis here and
//! on a Redis Cluster in `cluster.rs`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common;

use flowmeter::event::SchemaRegistry;
use flowmeter::stream::{Keys, Producer};

/// `flowmeter replay` of http_rollup over the hour the tests' events are in.
const REPLAY_HOUR: [&str; 7] = [
    "replay",
    "--processor",
    "http_rollup",
    "--from",
    "2026-03-01T10:00:00Z",
    "--to",
    "2026-03-01T11:00:00Z",
];

/// A batch of `n` http events numbered from `first`, at `ts`.
fn batch(first: u64, n: u64, ts: i64) -> String {
    (first..first + n)
        .map(|i| common::http_event(i, ts).to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// POSTs `body` with `key` until it is answered 202 (a 503 is retried with
/// the same key, which never writes twice); returns the reply.
async fn post_keyed(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: &str,
) -> serde_json::Value {
    for _ in 0..200 {
        let r = client
            .post(url)
            .header("content-type", "application/x-ndjson")
            .header("idempotency-key", key)
            .body(body.to_string())
            .send()
            .await;
        if let Ok(r) = r {
            let status = r.status().as_u16();
            let json: serde_json::Value = r.json().await.unwrap_or_default();
            if status == 202 {
                return json;
            }
            assert_eq!(status, 503, "{json}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("request {key} never accepted");
}

/// The whole scenario on `env` (its Redis: one server or a cluster).
pub(crate) async fn live_change(env: common::TestEnv) {
    env.migrate().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = env.write_config(dir.path());
    let a = env.start("ingest,rollup").await;
    let b = env.start("rollup").await;
    let client = common::http_client();
    let url = a.url("/v1/events");
    let ts = 1_772_359_200_000i64; // 2026-03-01T10:00:00Z
    let schemas = SchemaRegistry::load(&env.settings.paths.schemas).expect("schemas");

    // one keyed request before any change, retried after both
    let early = batch(1_000_000, 40, ts);
    let first = post_keyed(&client, &url, "early-request", &early).await;
    assert_eq!(first["accepted"], 40, "{first}");

    // a steady writer: keyed batches of 50 until told to stop
    let sent = Arc::new(AtomicU64::new(40));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, url, sent, stop) = (client.clone(), url.clone(), sent.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body = batch(i * 50, 50, ts);
                let reply = post_keyed(&client, &url, &format!("w{i}"), &body).await;
                assert_eq!(reply["accepted"], 50, "{reply}");
                sent.fetch_add(50, Ordering::Relaxed);
                i += 1;
            }
            i
        })
    };
    // a collector whose layout is the one of before (set 0, never reloaded)
    let stale = {
        let redis = flowmeter::stream::connect(&env.settings.redis)
            .await
            .expect("redis");
        Producer::new(
            redis,
            Keys::new(env.settings.redis.prefix.clone(), env.settings.redis.shards),
        )
    };

    tokio::time::sleep(Duration::from_secs(2)).await;
    // more shards, then fewer (the env has 4, or 8 on the cluster); the
    // batches' 15 subjects leave most of 32 shards empty, so sealed streams
    // that never had an entry are part of it
    let more = (env.settings.redis.shards + 28).to_string();
    let out = common::cli_ok(&config, &["shards", "set", &more]);
    assert!(out.contains("current"), "{out}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = common::cli_ok(&config, &["shards", "set", "2"]);
    assert!(out.contains("draining"), "{out}");

    // the stale writer meets set 0's seal and lands in the current set
    let events: Vec<_> = (0..30u64)
        .map(|i| {
            let event = common::http_event(2_000_000 + i, ts);
            schemas.validate(i as usize, &event).expect("valid")
        })
        .collect();
    stale.append(&schemas, &events).await.expect("appended");
    sent.fetch_add(30, Ordering::Relaxed);
    assert_eq!(stale.keys().write_set().set, 2, "moved to the current set");

    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let batches = writer.await.expect("writer");
    assert!(
        batches > 10,
        "the writer kept writing through both changes ({batches} batches)"
    );

    // the early request, retried after the changes: found in sealed set 0
    let again = post_keyed(&client, &url, "early-request", &early).await;
    assert_eq!(again["replayed"], serde_json::json!(true), "{again}");
    assert_eq!(again["accepted"], 40, "{again}");

    let total = sent.load(Ordering::Relaxed) as i64;
    let store = env.store().await;
    common::wait_until(Duration::from_secs(90), || {
        let s = store.clone();
        async move {
            common::scalar(&s, "SELECT COALESCE(SUM(requests), 0) FROM http_hourly").await >= total
        }
    })
    .await;
    // settled: both workers flushed again, nothing more arrives
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        common::scalar(&store, "SELECT SUM(requests) FROM http_hourly").await,
        total,
        "every accepted event counted once over three shard sets"
    );

    // the older sets are read to the end and retired
    let retired = common::cli_ok(&config, &["shards", "wait", "--timeout-secs", "60"]);
    let json = common::cli_ok(&config, &["shards", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&json).expect("json");
    let states: Vec<&str> = report["sets"]
        .as_array()
        .expect("sets")
        .iter()
        .filter_map(|s| s["state"].as_str())
        .collect();
    assert_eq!(
        states,
        ["retired", "retired", "current"],
        "{json}\n{retired}"
    );
    let lengths: u64 = report["sets"]
        .as_array()
        .expect("sets")
        .iter()
        .flat_map(|s| s["streams"].as_array().cloned().unwrap_or_default())
        .filter(|s| s["stream"].as_str().is_some_and(|n| n.contains("{http")))
        .filter_map(|s| s["length"].as_u64())
        .sum();
    assert_eq!(lengths as i64, total, "every entry in exactly one stream");

    // a replay reads every set, sealed and retired ones included, and
    // rebuilds the same rows; status reads sealed streams' real last entry
    let out = common::cli_ok(&config, &REPLAY_HOUR);
    assert!(out.contains("http_rollup"), "{out}");
    assert_eq!(
        common::scalar(&store, "SELECT SUM(requests) FROM http_hourly").await,
        total,
        "the replay over three shard sets rebuilt the same totals"
    );
    let status = common::cli(&config, &["status", "--max-lag-secs", "60"]);
    assert_eq!(
        status.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&status.stdout),
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(!String::from_utf8_lossy(&status.stdout).contains("18446744073709551615"));
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_shard_count_live_strands_and_doubles_nothing() {
    let _heavy = common::heavy().await;
    live_change(common::TestEnv::new("shardslive")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_change_refuses_a_shard_count_below_the_streams() {
    let env = common::TestEnv::new("shardsfirst");
    let redis = flowmeter::stream::connect(&env.settings.redis)
        .await
        .expect("redis");
    // the servers ran 8 shards; this host's redis.shards says 4
    let keys = Keys::new(env.settings.redis.prefix.as_str(), 4);
    let mut conn = env.redis().await;
    let _: String = redis::cmd("XADD")
        .arg(keys.stream(&flowmeter::stream::Shard::new("http", 6)))
        .arg("*")
        .arg("a")
        .arg("1")
        .query_async(&mut conn)
        .await
        .expect("xadd");
    let err = flowmeter::shards::change(&redis, &keys, &["http".into()], &[], 2, 1)
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("redis.shards = 7"), "{err}");
    assert!(!keys.layout().is_stored(), "nothing stored");
    // a set has 1 to 1024 shards (layout::MAX_SHARDS)
    let keys = Keys::new(env.settings.redis.prefix.as_str(), 8);
    for bad in [0, flowmeter::stream::layout::MAX_SHARDS + 1] {
        let err = flowmeter::shards::change(&redis, &keys, &["http".into()], &[], bad, 1)
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("1 to 1024"), "{err}");
    }
    assert!(!keys.layout().is_stored(), "nothing stored");
    flowmeter::shards::change(&redis, &keys, &["http".into()], &[], 1024, 1)
        .await
        .expect("the largest set");
    assert_eq!(keys.layout().current().shards, 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_of_a_sealed_set_is_retried_into_the_current_set() {
    let env = common::TestEnv::new("shardsdlq");
    let redis = flowmeter::stream::connect(&env.settings.redis)
        .await
        .expect("redis");
    let prefix = env.settings.redis.prefix.clone();
    let keys = Keys::new(prefix.as_str(), 4);
    let old = keys.stream(&flowmeter::stream::Shard::new("http", 3));
    let letter = |dlq_id: &str| flowmeter::dlq::DeadLetter {
        dlq_id: dlq_id.into(),
        stream: old.clone(),
        id: "1-0".into(),
        processor: "http_rollup".into(),
        error: "test".into(),
        data: common::http_event(1, 1_772_359_200_000).to_string(),
    };
    let mut conn = env.redis().await;
    let dlq = keys.dlq("rollup");
    let mut ids = Vec::new();
    for _ in 0..2 {
        let id: String = redis::cmd("XADD")
            .arg(&dlq)
            .arg("*")
            .arg("x")
            .arg("1")
            .query_async(&mut conn)
            .await
            .expect("xadd");
        ids.push(id);
    }
    // before any change: back to its own stream
    let retry = |dlq_id: String| {
        let (redis, keys, letter) = (redis.clone(), keys.clone(), letter(&dlq_id));
        async move {
            flowmeter::dlq::retry(&redis, &keys, "rollup", &[letter], Duration::from_secs(60))
                .await
                .expect("retried")
        }
    };
    assert_eq!(retry(ids[0].clone()).await, 1);
    let len = |key: String| {
        let mut c = conn.clone();
        async move {
            redis::cmd("XLEN")
                .arg(key)
                .query_async::<u64>(&mut c)
                .await
                .expect("xlen")
        }
    };
    assert_eq!(len(old.clone()).await, 1);

    // after a change set 0 is sealed: the letter goes to the new set
    flowmeter::shards::change(
        &redis,
        &keys,
        &["http".into()],
        &[("rollup".into(), "http".into())],
        2,
        1,
    )
    .await
    .expect("changed");
    assert_eq!(retry(ids[1].clone()).await, 1);
    assert_eq!(
        len(old.clone()).await,
        1,
        "nothing more in the sealed stream"
    );
    let new = keys.stream(&flowmeter::stream::Shard::in_set("http", 1, 1));
    assert_eq!(
        len(new).await,
        1,
        "in the current set, same position modulo its count"
    );
    assert_eq!(len(dlq).await, 0, "both dead letters removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_after_a_change_reads_sealed_streams_and_their_real_end() {
    let env = common::TestEnv::new("shardsreplay");
    env.migrate().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = env.write_config(dir.path());
    let server = env.start("ingest,rollup").await;
    let client = common::http_client();
    // one subject: one shard of set 0 gets the events, the others stay empty
    let body = (0..20u64)
        .map(|i| {
            let mut e = common::http_event(0, 1_772_359_200_000 + i as i64);
            e["req_bytes"] = serde_json::json!(i);
            e.to_string()
        })
        .collect::<Vec<_>>()
        .join("\n");
    let (code, reply) = common::post_ndjson(&client, &server.url("/v1/events"), body).await;
    assert_eq!(code, 202, "{reply}");
    common::cli_ok(&config, &["shards", "set", "2"]);
    let store = env.store().await;
    common::wait_until(Duration::from_secs(30), || {
        let s = store.clone();
        async move {
            common::scalar(&s, "SELECT COALESCE(SUM(requests), 0) FROM http_hourly").await == 20
        }
    })
    .await;
    let out = common::cli_ok(&config, &REPLAY_HOUR);
    assert!(out.contains("http_rollup"), "{out}");
    assert_eq!(
        common::scalar(&store, "SELECT SUM(requests) FROM http_hourly").await,
        20
    );
    // retention empties the sealed stream that held the events: the replay
    // is refused, naming when they were dropped (the stream's last entry,
    // kept in its seal marker), not the sealed stream's last id
    let mut conn = env.redis().await;
    let mut trimmed = 0u64;
    for i in 0..4 {
        let n: u64 = redis::cmd("XTRIM")
            .arg(format!("{}:{{http:{i}}}", env.name))
            .arg("MAXLEN")
            .arg(0)
            .query_async(&mut conn)
            .await
            .expect("xtrim");
        trimmed += n;
    }
    assert_eq!(trimmed, 20);
    let refused = common::cli(&config, &REPLAY_HOUR);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert!(err.contains(&today) && !err.contains("1969"), "{err}");
    server.stop().await;
}
