//! Exactly once in effect: redelivered and reclaimed entries, two workers
//! racing on one shard, and a worker killed with SIGKILL at random moments
//! never double count or lose an event.

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rand::Rng;

const T0: i64 = 1_772_359_200_000; // 2026-03-01T10:00:00Z

async fn send(client: &reqwest::Client, server_url: &str, from: u64, n: u64) -> (u16, i64) {
    let events: Vec<String> = (from..from + n)
        .map(|i| http_event(i, T0 + (i as i64 % 7200) * 1000).to_string())
        .collect();
    match client
        .post(format!("{server_url}/v1/events"))
        .header("content-type", "application/x-ndjson")
        .body(events.join("\n"))
        .send()
        .await
    {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, if s == 202 { n as i64 } else { 0 })
        }
        Err(_) => (0, 0),
    }
}

async fn total(store: &flowmeter::store::Store) -> i64 {
    scalar(store, "SELECT SUM(requests) FROM http_hourly").await
}

/// Entries left pending by a worker that died before committing are applied
/// once by the next owner; entries redelivered after commit are not applied again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_and_redelivered_entries_count_once() {
    let mut env = TestEnv::new("redeliver");
    env.settings.redis.shards = 2;
    env.migrate().await;
    let ingest = env.start("ingest").await;
    let client = http_client();
    assert_eq!(send(&client, &ingest.url(""), 0, 500).await.0, 202);

    // A "dead worker" took 50 entries of each shard under the shard's consumer name and never committed.
    let mut r = env.redis().await;
    for i in 0..2 {
        let key = format!("{}:{{http:{i}}}", env.name);
        let _: Result<(), _> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&key)
            .arg("rollup")
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut r)
            .await;
        let _: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("rollup")
            .arg(format!("http:{i}"))
            .arg("COUNT")
            .arg(50)
            .arg("STREAMS")
            .arg(&key)
            .arg(">")
            .query_async(&mut r)
            .await
            .expect("xreadgroup");
    }
    let worker = env.start("rollup").await;
    let store = env.store().await;
    wait_until(Duration::from_secs(30), || {
        let s = store.clone();
        async move { total(&s).await == 500 }
    })
    .await;

    // Force redelivery of everything: rewind the group to the start of each stream.
    for i in 0..2 {
        let key = format!("{}:{{http:{i}}}", env.name);
        let _: () = redis::cmd("XGROUP")
            .arg("SETID")
            .arg(&key)
            .arg("rollup")
            .arg("0")
            .query_async(&mut r)
            .await
            .expect("setid");
    }
    assert_eq!(send(&client, &ingest.url(""), 500, 100).await.0, 202);
    wait_until(Duration::from_secs(30), || {
        let s = store.clone();
        async move { total(&s).await >= 600 }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        total(&store).await,
        600,
        "redelivered entries must not count twice"
    );
    // and everything ends acknowledged
    let mut pending = 0i64;
    for i in 0..2 {
        let p: redis::Value = redis::cmd("XPENDING")
            .arg(format!("{}:{{http:{i}}}", env.name))
            .arg("rollup")
            .query_async(&mut r)
            .await
            .expect("xpending");
        if let redis::Value::Array(v) = p {
            if let Some(redis::Value::Int(n)) = v.first() {
                pending += n;
            }
        }
    }
    assert_eq!(pending, 0);
    worker.stop().await;
    ingest.stop().await;
    env.cleanup().await;
}

/// Two workers on one shard, while a chaos task keeps deleting the lease so
/// both believe they own it: the fenced reads and the checkpoint
/// compare-and-set must keep every event counted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_racing_on_one_shard_count_once() {
    let mut env = TestEnv::new("race");
    env.settings.redis.shards = 1;
    env.settings.rollup.flush_interval_ms = 30;
    env.settings.rollup.lease_ms = 600;
    env.settings.rollup.read_count = 50;
    env.migrate().await;
    let ingest = env.start("ingest").await;
    let a = env.start("rollup").await;
    let b = env.start("rollup").await;
    let client = http_client();
    let stop = Arc::new(AtomicBool::new(false));
    let chaos = lease_chaos(&env, "rollup", stop.clone()).await;
    let mut accepted = 0i64;
    for round in 0..60u64 {
        let (s, n) = send(&client, &ingest.url(""), round * 100, 100).await;
        assert_eq!(s, 202);
        accepted += n;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let steals = chaos.await.expect("chaos");
    assert!(steals > 10);
    let store = env.store().await;
    wait_until(Duration::from_secs(60), || {
        let s = store.clone();
        async move { total(&s).await >= accepted }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(total(&store).await, accepted);
    a.stop().await;
    b.stop().await;
    ingest.stop().await;
    env.cleanup().await;
}

/// A `flowmeter serve --roles rollup` child is killed with SIGKILL at random
/// moments (25 cycles) while events stream in through a separate ingest child;
/// afterwards the MySQL totals equal exactly the events accepted with 202.
/// `cluster::sigkill_at_random_moments_on_a_cluster` runs the same on a Redis Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_and_doubles_nothing() {
    let _heavy = common::heavy().await;
    sigkill_cycles(TestEnv::new("crash"), 25).await;
}

/// The body of the SIGKILL test on `env`'s Redis (one server or a cluster):
/// `cycles` rollup children killed at random moments during ingest, then
/// one left alone must commit exactly the events accepted.
pub(crate) async fn sigkill_cycles(mut env: TestEnv, cycles: usize) {
    env.settings.rollup.lease_ms = 800;
    env.settings.rollup.flush_interval_ms = 100;
    env.settings.rollup.read_count = 200;
    env.migrate().await;
    let dir = tempfile::tempdir().expect("tmp");
    let config = env.write_config(dir.path());
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr").port()
    };
    let ingest_url = format!("http://127.0.0.1:{port}");
    let _ingest = spawn_flowmeter(&config, "ingest", &format!("127.0.0.1:{port}"));
    let client = http_client();
    wait_until(Duration::from_secs(20), || {
        let c = client.clone();
        let u = format!("{ingest_url}/healthz");
        async move { c.get(u).send().await.is_ok() }
    })
    .await;

    let accepted = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (accepted, stop, client, url) = (
            accepted.clone(),
            stop.clone(),
            client.clone(),
            ingest_url.clone(),
        );
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (s, n) = send(&client, &url, i, 200).await;
                assert_eq!(s, 202, "ingest must keep accepting while workers die");
                accepted.fetch_add(n, Ordering::Relaxed);
                i += 200;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let started = Instant::now();
    for _ in 0..cycles {
        let kid = spawn_flowmeter(&config, "rollup", "127.0.0.1:0");
        let ms: u64 = rand::rng().random_range(150..1500);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        // SIGKILL: no flush, no ack, no lease release.
        drop(kid);
    }
    stop.store(true, Ordering::Relaxed);
    feeder.await.expect("feeder");
    let accepted = accepted.load(Ordering::Relaxed);
    let killing = started.elapsed();
    assert!(accepted > 10_000, "only {accepted} events were sent");

    // One last worker, left alone, must converge on exactly the accepted
    // count. Its leases are the default's 2 s (the killed workers' 800 ms
    // ones expire as they would): on a loaded machine an 800 ms lease can
    // lapse between two renewals, and the point here is what the kills left.
    let last_dir = tempfile::tempdir().expect("tmp");
    env.settings.rollup.lease_ms = 2_000;
    let last_config = env.write_config(last_dir.path());
    let _last = spawn_flowmeter(&last_config, "rollup", "127.0.0.1:0");
    let store = env.store().await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let t = total(&store).await;
        if t >= accepted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the last worker counted {t} of the {accepted} accepted events in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        total(&store).await,
        accepted,
        "MySQL must hold exactly the accepted events"
    );
    println!(
        "{cycles} SIGKILL cycles in {:.1} s: {accepted} events accepted, {accepted} committed",
        killing.as_secs_f64()
    );
    let expected_bytes: i64 = scalar(&store, "SELECT SUM(bytes_in) FROM http_hourly").await;
    assert!(expected_bytes > 0);
    drop(_last);
    env.cleanup().await;
}
