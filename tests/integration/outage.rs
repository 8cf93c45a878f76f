//! Outages of the real servers (private instances, so other tests keep theirs):
//! MySQL killed while ingest continues — workers stop taking entries, pending
//! stays bounded, the backlog waits in the streams and drains after MySQL
//! returns, exactly; Redis killed with SIGKILL and restarted from its AOF —
//! no acknowledged event is lost or counted twice.

use crate::common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::servers::{PrivateMariaDb, PrivateRedis};
use common::*;

const T0: i64 = 1_772_359_200_000;

/// Pending entries of the rollup group over `streams`.
async fn pending(r: &mut redis::aio::MultiplexedConnection, streams: &[String]) -> u64 {
    let mut total = 0;
    for s in streams {
        let summary: redis::Value = redis::cmd("XPENDING")
            .arg(s)
            .arg("rollup")
            .query_async(r)
            .await
            .expect("xpending");
        if let redis::Value::Array(parts) = summary {
            if let Some(redis::Value::Int(n)) = parts.first() {
                total += *n as u64;
            }
        }
    }
    total
}

async fn xlen_sum(r: &mut redis::aio::MultiplexedConnection, streams: &[String]) -> u64 {
    let mut total = 0;
    for s in streams {
        let n: u64 = redis::cmd("XLEN")
            .arg(s)
            .query_async(r)
            .await
            .expect("xlen");
        total += n;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_outage_pauses_reading_and_the_backlog_drains_exactly() {
    let mut db = tokio::task::spawn_blocking(PrivateMariaDb::start)
        .await
        .expect("mariadb");
    let mut env = TestEnv::new("mysql_outage");
    env.settings.mysql.url = db.url(&env.name);
    env.settings.redis.shards = 2;
    env.settings.rollup.max_batch_events = 1_000;
    env.settings.rollup.read_count = 200;
    env.settings.rollup.read_queue_batches = 2;
    // held entries: the aggregate (a batch past max_batch_events at most),
    // the queue, and one blocked batch per shard reader
    let bound = 1_000 + 200 * (1 + 2 + 2);
    env.migrate().await;
    let server = env.start("ingest,api,rollup").await;
    let client = http_client();
    let url = server.url("/v1/events");
    let store = env.store().await;
    post_http_range(&client, &url, 0..2_000, T0, 3_600_000).await;
    wait_until(Duration::from_secs(30), || {
        let s = store.clone();
        async move { scalar(&s, "SELECT SUM(requests) FROM http_hourly").await == 2_000 }
    })
    .await;

    db.kill();
    let mut r = env.redis().await;
    let streams: Vec<String> = (0..2)
        .map(|i| format!("{}:{{http:{i}}}", env.name))
        .collect();
    let mut max_pending = 0;
    let outage = Instant::now();
    let mut sent = 2_000;
    let leases: Vec<String> = (0..2)
        .map(|i| format!("{}:lease:rollup:{{http:{i}}}", env.name))
        .collect();
    while sent < 22_000 {
        post_http_range(&client, &url, sent..sent + 500, T0, 3_600_000).await;
        sent += 500;
        if sent % 5_000 == 0 {
            // leases lost while the worker holds state it cannot commit, then
            // regained: it must neither drop nor re-apply that state
            let _: u64 = redis::cmd("DEL")
                .arg(&leases)
                .query_async(&mut r)
                .await
                .expect("del");
        }
        max_pending = max_pending.max(pending(&mut r, &streams).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    while outage.elapsed() < Duration::from_secs(12) {
        max_pending = max_pending.max(pending(&mut r, &streams).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let backlog = xlen_sum(&mut r, &streams).await;
    eprintln!(
        "mysql down {:.1} s: {sent} events accepted, max pending {max_pending} (bound {bound}), {backlog} entries in the streams",
        outage.elapsed().as_secs_f64()
    );
    assert!(max_pending <= bound, "pending {max_pending} > {bound}");
    assert!(
        max_pending > 0,
        "the workers read until they could not flush"
    );
    assert_eq!(backlog, 22_000, "every accepted event waits in the streams");

    let db = tokio::task::spawn_blocking(move || {
        db.restart();
        db
    })
    .await
    .expect("restart mariadb");
    let back = Instant::now();
    let store = env.store().await;
    wait_until(Duration::from_secs(120), || {
        let s = store.clone();
        async move { scalar(&s, "SELECT SUM(requests) FROM http_hourly").await >= 22_000 }
    })
    .await;
    eprintln!(
        "backlog of 20,000 drained {:.1} s after MySQL returned",
        back.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        scalar(&store, "SELECT SUM(requests) FROM http_hourly").await,
        22_000,
        "no loss, no double count"
    );
    assert_eq!(
        scalar(&store, "SELECT SUM(requests) FROM http_daily").await,
        22_000
    );
    assert_eq!(pending(&mut r, &streams).await, 0);
    server.stop().await;
    env.cleanup().await;
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sigkill_and_aof_restart_lose_no_acknowledged_event() {
    let mut redis_server = PrivateRedis::start("everysec");
    let mut env = TestEnv::new("redis_restart");
    env.settings.redis.url = redis_server.url();
    env.settings.redis.shards = 2;
    env.settings.redis.command_timeout_ms = 1_000;
    env.migrate().await;
    let server = env.start("ingest,api,rollup").await;
    let client = http_client();
    let url = server.url("/v1/events");

    // Every event carries a unique ts; remember the ones answered 202.
    let mut accepted: HashSet<i64> = HashSet::new();
    let mut rejected = 0;
    let mut next: i64 = 0;
    let mut send = |n: i64| {
        let batch: Vec<i64> = (next..next + n).collect();
        next += n;
        batch
    };
    for round in 0..60 {
        if round == 20 {
            redis_server.kill9();
        }
        if round == 35 {
            redis_server.restart();
        }
        let batch = send(100);
        let body: Vec<String> = batch
            .iter()
            .map(|i| http_event(*i as u64, T0 + i).to_string())
            .collect();
        let reply = client
            .post(&url)
            .header("content-type", "application/x-ndjson")
            .body(body.join("\n"))
            .send()
            .await
            .expect("request");
        match reply.status().as_u16() {
            202 => accepted.extend(batch),
            503 => rejected += batch.len(),
            other => panic!("unexpected status {other}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        rejected > 0,
        "Redis was down for a while: some requests got 503"
    );
    assert!(accepted.len() >= 4_000, "{}", accepted.len());

    // every acknowledged event is in the streams after the restart…
    let mut r = redis::Client::open(redis_server.url())
        .expect("url")
        .get_multiplexed_async_connection_with_config(&redis_config())
        .await
        .expect("redis");
    let mut stored: HashSet<i64> = HashSet::new();
    for i in 0..2 {
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(format!("{}:{{http:{i}}}", env.name))
            .arg("-")
            .arg("+")
            .query_async(&mut r)
            .await
            .expect("xrange");
        for (_, fields) in entries {
            let data = fields
                .into_iter()
                .find(|(k, _)| k == "data")
                .map(|(_, v)| v)
                .expect("data");
            let ev: serde_json::Value = serde_json::from_str(&data).expect("json");
            stored.insert(ev["ts"].as_i64().expect("ts") - T0);
        }
    }
    let lost: Vec<&i64> = accepted.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );

    // …and the rollup counts each stored event exactly once
    let store = env.store().await;
    let want = stored.len() as i64;
    wait_until(Duration::from_secs(60), || {
        let s = store.clone();
        async move { scalar(&s, "SELECT SUM(requests) FROM http_hourly").await >= want }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(
        scalar(&store, "SELECT SUM(requests) FROM http_hourly").await,
        want
    );
    eprintln!(
        "{} accepted, {rejected} answered 503 while Redis was down, {} stored, 0 lost",
        accepted.len(),
        stored.len()
    );
    server.stop().await;
    env.cleanup().await;
}
