//! Redis Cluster (issue 16): `redis.cluster = true` connects through
//! redis-rs' cluster client, behind the same `Redis` type every module
//! uses, to a real 3-master / 3-replica cluster started for each test
//! (`common::servers::RedisCluster`). A shard's commands reach the node
//! owning its slot and the shards spread over the masters; ingest writes a
//! batch over every shard with one transaction per slot, idempotent per
//! shard; rollup workers count exactly; the hub reads each shard stream on
//! its own; status and the CLI commands read and change every shard; a
//! killed master's replica takes over; slots move under ingest and rollups
//! (`redis-cli --cluster reshard`) without loss or double count; and the
//! single-node crash, replay, hub and golden tests run here on the same
//! bodies, and the shard count changes live. A master killed during ingest
//! doubles nothing, with and without `ingest.wait_replicas` (its loss is
//! printed).

use crate::common;

use common::servers::RedisCluster;
use flowmeter::config::RedisConfig;
use flowmeter::stream::{hold_singleton, Keys};

fn cluster_config(cluster: &RedisCluster, prefix: &str) -> RedisConfig {
    let urls = cluster.urls();
    RedisConfig {
        url: urls[0].clone(),
        cluster: true,
        cluster_nodes: urls[1..].to_vec(),
        prefix: prefix.into(),
        ..RedisConfig::default()
    }
}

/// Keys of `pattern` on the node at `url` alone (a plain connection), and
/// whether that node is a master.
async fn keys_on(url: &str, pattern: &str) -> (Vec<String>, bool) {
    let client = redis::Client::open(url).expect("url");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("node");
    let role: redis::Value = redis::cmd("ROLE").query_async(&mut c).await.expect("ROLE");
    let master = matches!(&role, redis::Value::Array(v)
        if matches!(v.first(), Some(redis::Value::BulkString(b)) if b == b"master"));
    let keys = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut c)
        .await
        .expect("KEYS");
    (keys, master)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_commands_reach_the_node_owning_their_slot() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .expect("cluster");
    let cfg = cluster_config(&cluster, "fmcl");
    let redis = flowmeter::stream::connect(&cfg).await.expect("connects");
    assert!(redis.is_cluster());
    let keys = Keys::new("fmcl", 8);
    let shards = keys.shards_of("http");
    let mut conn = redis.conn.clone();
    for (i, shard) in shards.iter().enumerate() {
        let stream = keys.stream(shard);
        let id: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("data")
            .arg(format!("{{\"n\":{i}}}"))
            .query_async(&mut conn)
            .await
            .expect("XADD through the cluster");
        assert!(id.contains('-'), "{id}");
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg("rollup")
            .arg("0")
            .query_async(&mut conn)
            .await
            .expect("XGROUP CREATE");
        let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("rollup")
            .arg("w1")
            .arg("COUNT")
            .arg(10)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">")
            .query_async(&mut conn)
            .await
            .expect("XREADGROUP");
        let ids: Vec<String> = read
            .keys
            .iter()
            .flat_map(|k| k.ids.iter().map(|e| e.id.clone()))
            .collect();
        assert_eq!(ids, vec![id.clone()], "{stream}");
        let acked: u64 = redis::cmd("XACK")
            .arg(&stream)
            .arg("rollup")
            .arg(&id)
            .query_async(&mut conn)
            .await
            .expect("XACK");
        assert_eq!(acked, 1);
        let pending: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
            .arg(&stream)
            .arg("rollup")
            .query_async(&mut conn)
            .await
            .expect("XPENDING");
        assert_eq!(pending.count(), 0, "{stream}");
        // the lease script takes the shard's lease key (same hash tag)
        let lease = keys.lease("rollup", shard);
        assert!(hold_singleton(&redis, &lease, "w1", 5_000).await, "{lease}");
        assert!(
            !hold_singleton(&redis, &lease, "w2", 5_000).await,
            "{lease} is w1's"
        );
    }
    // the 8 shards (8 hash tags) spread over the masters, each stream beside its lease
    let mut holders = 0;
    let mut found = 0;
    for url in cluster.urls() {
        let (here, master) = keys_on(&url, "fmcl:*").await;
        if !master {
            continue;
        }
        let streams: Vec<&String> = here.iter().filter(|k| !k.contains("lease")).collect();
        for s in &streams {
            let tag = s.split_once('{').map(|(_, t)| t).unwrap_or_default();
            assert!(
                here.iter().any(|k| k.contains("lease") && k.contains(tag)),
                "{s}'s lease is on another node: {here:?}"
            );
        }
        found += streams.len();
        holders += usize::from(!streams.is_empty());
    }
    assert_eq!(found, shards.len(), "every stream on exactly one master");
    assert!(
        holders >= 2,
        "8 shards on at least 2 of the 3 masters: {holders}"
    );
}

/// The kinds the producer test writes: `http` alone.
struct HttpOnly;

impl flowmeter::event::KindNames for HttpOnly {
    fn kind_name(&self, kind: usize) -> Option<&str> {
        (kind == 0).then_some("http")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_replicas_asks_only_the_masters_a_request_wrote_to() {
    use flowmeter::event::ValidEvent;
    use flowmeter::stream::{Producer, SubmitError, Submitted};
    let _heavy = common::heavy().await;
    let mut cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .expect("cluster");
    let cfg = cluster_config(&cluster, "fmwait");
    let redis = flowmeter::stream::connect(&cfg).await.expect("connects");
    let keys = Keys::new("fmwait", 8);
    // one master's replica stops: that master can confirm no write now
    let masters = cluster.masters();
    let replica = *cluster
        .ports
        .iter()
        .find(|p| !masters.contains(p))
        .expect("a replica");
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{replica}"))
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("replica");
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut c)
        .await
        .expect("INFO");
    let alone: u16 = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("master_port:"))
        .and_then(|p| p.parse().ok())
        .expect("the replica's master");
    cluster.kill(replica);
    // long enough for a replica on a busy machine; the master without one
    // waits it out each time
    let producer =
        Producer::new(redis, keys.clone()).with_wait_replicas(1, std::time::Duration::from_secs(2));
    // an event for shard `i` (the middle of its partition range)
    let event = |i: u64| ValidEvent {
        kind: 0,
        version: 1,
        ts_ms: 0,
        data: "{}".into(),
        partition: i * (u64::MAX / 8) + u64::MAX / 16,
    };
    let mut on_alone = Vec::new();
    let mut elsewhere = Vec::new();
    for i in 0..8u64 {
        let shard = keys.shard_for("http", event(i).partition);
        assert_eq!(u64::from(shard.index), i);
        let outcome = producer.submit(&HttpOnly, &[event(i)], None).await;
        // stored either way: where it is says which master took it
        let stream = keys.stream(&shard);
        let (here, _) = keys_on(&format!("redis://127.0.0.1:{alone}"), &stream).await;
        if here.is_empty() {
            assert!(
                matches!(outcome, Ok(Submitted::Written)),
                "{stream}: {outcome:?}"
            );
            elsewhere.push(i);
        } else {
            assert!(
                matches!(
                    outcome,
                    Err(SubmitError::NotReplicated {
                        confirmed: 0,
                        wanted: 1,
                        ..
                    })
                ),
                "{stream} on the master without replica: {outcome:?}"
            );
            on_alone.push(i);
        }
    }
    assert!(
        !on_alone.is_empty() && elsewhere.len() >= 2,
        "8 shards over 3 masters: {on_alone:?} / {elsewhere:?}"
    );
    // a request over several shards waits at each master it wrote to: all
    // confirmed (a bare WAIT, the minimum over every master, would be 0)…
    let several: Vec<ValidEvent> = elsewhere.iter().map(|i| event(*i)).collect();
    let outcome = producer.submit(&HttpOnly, &several, None).await;
    assert!(matches!(outcome, Ok(Submitted::Written)), "{outcome:?}");
    // …and one of them short is the request short
    let mut with_alone = several;
    with_alone.push(event(on_alone[0]));
    let outcome = producer.submit(&HttpOnly, &with_alone, None).await;
    assert!(
        matches!(outcome, Err(SubmitError::NotReplicated { .. })),
        "{outcome:?}"
    );
}

/// The length of every shard stream of `kinds` (through the cluster client).
async fn stream_lengths(redis: &flowmeter::stream::Redis, keys: &Keys, kinds: &[&str]) -> Vec<u64> {
    let mut conn = redis.conn.clone();
    let mut lens = Vec::new();
    for kind in kinds {
        for shard in keys.shards_of(kind) {
            let len: u64 = redis::cmd("XLEN")
                .arg(keys.stream(&shard))
                .query_async(&mut conn)
                .await
                .expect("XLEN");
            lens.push(len);
        }
    }
    lens
}

/// Entries in every shard stream of `kinds`.
async fn entries_in(redis: &flowmeter::stream::Redis, keys: &Keys, kinds: &[&str]) -> u64 {
    stream_lengths(redis, keys, kinds).await.iter().sum()
}

/// A fresh cluster, and a test environment named `name` pointed at it.
async fn on_cluster(name: &str) -> (RedisCluster, common::TestEnv) {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .expect("cluster");
    let mut env = common::TestEnv::new(name);
    let prefix = env.settings.redis.prefix.clone();
    env.settings.redis = cluster_config(&cluster, &prefix);
    (cluster, env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_stores_a_batch_over_every_shard_once_with_or_without_a_key() {
    // six Redis nodes and a server: not beside the browser and crash tests
    let _heavy = common::heavy().await;
    let (_cluster, env) = on_cluster("clusteringest").await;
    let prefix = env.settings.redis.prefix.clone();
    let redis = flowmeter::stream::connect(&env.settings.redis)
        .await
        .expect("connects");
    let keys = Keys::new(prefix.as_str(), env.settings.redis.shards);
    let server = env.start("ingest").await;
    let client = common::http_client();
    let url = server.url("/v1/events");
    let now = chrono::Utc::now().timestamp_millis();
    // both kinds, many services and meetings: every shard stream gets some
    let batch = |tag: &str, n: usize| -> String {
        (0..n)
            .map(|i| {
                if i % 3 == 0 {
                    serde_json::json!({"kind": "webrtc", "ts": now, "meeting_id": format!("{tag}m{i}"),
                        "peer_id": "p", "bytes_sent": 1, "bytes_received": 1, "rtt_ms": 10.0,
                        "jitter_ms": 1.0, "packet_loss": 0.0, "candidate_type": "host"})
                } else {
                    serde_json::json!({"kind": "http", "ts": now, "service": format!("{tag}s{i}"),
                        "endpoint": "/a", "method": "GET", "status": 200, "req_bytes": 1,
                        "resp_bytes": 2, "duration_ms": 3.0})
                }
                .to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (status, body) = common::post_ndjson(&client, &url, batch("a", 120)).await;
    assert_eq!(status, 202, "{body}");
    let used = stream_lengths(&redis, &keys, &["http", "webrtc"])
        .await
        .iter()
        .filter(|n| **n > 0)
        .count();
    assert_eq!(
        used,
        2 * keys.shard_count() as usize,
        "the batch spans every shard"
    );
    assert_eq!(entries_in(&redis, &keys, &["http", "webrtc"]).await, 120);

    // with an Idempotency-Key: written once, replayed once, refused with another body
    let post_keyed = |body: String| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let r = client
                .post(&url)
                .header("content-type", "application/x-ndjson")
                .header("idempotency-key", "cluster-batch-1")
                .body(body)
                .send()
                .await
                .expect("request");
            let status = r.status().as_u16();
            let json: serde_json::Value = r.json().await.unwrap_or_default();
            (status, json)
        }
    };
    let (status, body) = post_keyed(batch("b", 90)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["replayed"], serde_json::Value::Null, "{body}");
    assert_eq!(entries_in(&redis, &keys, &["http", "webrtc"]).await, 210);
    let (status, body) = post_keyed(batch("b", 90)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["replayed"], serde_json::json!(true), "{body}");
    assert_eq!(body["accepted"], 90, "{body}");
    let (status, body) = post_keyed(batch("c", 90)).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        entries_in(&redis, &keys, &["http", "webrtc"]).await,
        210,
        "a replay and a refused reuse write nothing"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollup_workers_on_a_cluster_count_every_event_once() {
    // six Redis nodes and a server: not beside the browser and crash tests
    let _heavy = common::heavy().await;
    let (_cluster, env) = on_cluster("clusterrollup").await;
    env.migrate().await;
    // two workers racing for the 8 shards' leases
    let a = env.start("ingest,rollup").await;
    let b = env.start("rollup").await;
    let client = common::http_client();
    let base = 1_772_359_200_000i64; // 2026-03-01T10:00:00Z
    let mut sent = 0u64;
    for round in 0..5 {
        let body: Vec<String> = (0..200)
            .map(|i| {
                serde_json::json!({"kind": "http", "ts": base + i * 1000, "service": format!("s{}", (i + round) % 13),
                    "endpoint": "/a", "method": "GET", "status": 200, "req_bytes": 1,
                    "resp_bytes": 2, "duration_ms": 3.0})
                .to_string()
            })
            .collect();
        let (status, body) =
            common::post_ndjson(&client, &a.url("/v1/events"), body.join("\n")).await;
        assert_eq!(status, 202, "{body}");
        sent += 200;
    }
    let store = env.store().await;
    common::wait_until(std::time::Duration::from_secs(60), || {
        let s = store.clone();
        async move {
            common::scalar(&s, "SELECT COALESCE(SUM(requests), 0) FROM http_hourly").await
                == sent as i64
        }
    })
    .await;
    // settled: nothing more arrives after both workers flushed again
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(
        common::scalar(&store, "SELECT SUM(requests) FROM http_hourly").await,
        sent as i64
    );
    assert_eq!(
        common::scalar(&store, "SELECT SUM(bytes_out) FROM http_hourly").await,
        2 * sent as i64
    );
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_on_a_cluster_live_view_and_status() {
    // six Redis nodes and a server: not beside the browser and crash tests
    let _heavy = common::heavy().await;
    use common::ws;
    use std::time::Duration;
    let (_cluster, env) = on_cluster("clusterhub").await;
    env.migrate().await;
    let server = env.start("ingest,api,rollup,hub").await;
    ws::hub_ticking(&server).await;
    let mut sock = ws::connect(&server, "").await;
    ws::send(
        &mut sock,
        serde_json::json!({"op": "subscribe", "channels": ["http:overview"]}),
    )
    .await;
    ws::next_where(
        &mut sock,
        Duration::from_secs(10),
        ws::is("snapshot", "http:overview"),
    )
    .await;
    // live events over every shard (many services): the hub reads each
    // shard stream on its own node
    let now = ws::now_ms();
    let body: Vec<String> = (0..64)
        .map(|i| {
            serde_json::json!({"kind": "http", "ts": now, "service": format!("s{i}"),
                "endpoint": "/a", "method": "GET", "status": 200, "req_bytes": 1,
                "resp_bytes": 2, "duration_ms": 3.0})
            .to_string()
        })
        .collect();
    let client = common::http_client();
    let (status, reply) =
        common::post_ndjson(&client, &server.url("/v1/events"), body.join("\n")).await;
    assert_eq!(status, 202, "{reply}");
    let mut seen = 0;
    while seen < 64 {
        let u = ws::next_where(
            &mut sock,
            Duration::from_secs(10),
            ws::is("update", "http:overview"),
        )
        .await;
        seen += ws::field_total(&u["points"], "requests");
    }
    assert_eq!(seen, 64, "every event once in the live view");
    // status reads every shard's stream and groups
    let status = common::get_json(&client, server.url("/v1/status")).await;
    let text = status.to_string();
    assert!(text.contains("http:0") && text.contains("rollup"), "{text}");
    server.stop().await;
}

/// Posts `body` until a 202, for at most 60 s, and returns how many
/// attempts were refused first. With an idempotency `key` a 503 or a lost
/// request is retried with the same key, so its events are accepted once;
/// without one only a 503 saying nothing was written is retried (any other
/// failure fails the test: a retry could count the batch twice).
async fn post_until_accepted(
    client: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    body: &str,
) -> u32 {
    let start = std::time::Instant::now();
    let mut refused = 0;
    loop {
        let mut request = client
            .post(url)
            .header("content-type", "application/x-ndjson")
            .body(body.to_string());
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        match request.send().await {
            Ok(r) if r.status() == 202 => return refused,
            Ok(r) if r.status() == 503 => {
                let reply: serde_json::Value = r.json().await.unwrap_or_default();
                let safe = key.is_some() || reply["outcome"] == "not_written";
                assert!(safe, "batch {key:?}: 503 {reply}");
                refused += 1;
            }
            Err(e) => {
                assert!(key.is_some(), "unkeyed batch: {e}");
                refused += 1;
            }
            Ok(r) => panic!("batch {key:?}: {}", r.status()),
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "batch {key:?} not accepted within 60 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The failover scenario, with `ingest.wait_replicas` as given: a server
/// (ingest, rollup) on a fresh cluster posts 90 keyed batches of 100 http
/// events over every shard, one at a time, each until accepted; once a
/// third is in, a master is killed with kill -9 while the posting goes on,
/// and its replica takes over after the 2 s node timeout. With
/// `wait_replicas` > 0 the killed node is started again once that happened
/// (it rejoins as the new master's replica: without one the new master
/// could confirm no write). Asserts that nothing was double counted and
/// that the rollup went on, prints the loss, and returns (accepted,
/// committed).
async fn failover_loss(name: &str, wait_replicas: u32) -> (i64, i64) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // six Redis nodes and a server: not beside the browser and crash tests
    let _heavy = common::heavy().await;
    let (mut cluster, mut env) = on_cluster(name).await;
    env.settings.ingest.wait_replicas = wait_replicas;
    env.migrate().await;
    let server = env.start("ingest,rollup").await;
    let url = server.url("/v1/events");
    let base = 1_772_359_200_000i64; // 2026-03-01T10:00:00Z
    let batch = move |b: usize| -> String {
        (0..100)
            .map(|i| {
                serde_json::json!({"kind": "http", "ts": base + i * 1000, "service": format!("s{}", (b + i as usize) % 17),
                    "endpoint": "/a", "method": "GET", "status": 200, "req_bytes": 1,
                    "resp_bytes": 2, "duration_ms": 3.0})
                .to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    const BATCHES: usize = 90;
    let posted = std::sync::Arc::new(AtomicUsize::new(0));
    let poster = {
        let (posted, client, url) = (posted.clone(), common::http_client(), url.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut refused = 0;
            for b in 0..BATCHES {
                refused +=
                    post_until_accepted(&client, &url, Some(&format!("failover-{b}")), &batch(b))
                        .await;
                posted.store(b + 1, Ordering::Relaxed);
            }
            (started.elapsed().as_secs_f64(), refused)
        })
    };
    while posted.load(Ordering::Relaxed) < BATCHES / 3 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // kill -9 a master mid-ingest
    let killed = cluster.masters()[0];
    cluster.kill(killed);
    // kept to the end: dropping it stops the nodes
    let _cluster = if wait_replicas == 0 {
        cluster
    } else {
        tokio::task::spawn_blocking(move || {
            let start = std::time::Instant::now();
            while cluster.masters().len() < 3 {
                assert!(
                    start.elapsed() < std::time::Duration::from_secs(30),
                    "no replica took over in 30 s"
                );
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            cluster.restart(killed);
            cluster
        })
        .await
        .expect("restart")
    };
    let (ingest_secs, refused) = poster.await.expect("every batch accepted");
    let accepted = (BATCHES * 100) as i64;
    // wait until the rollup settles (no change for 5 s, 90 s at most)
    let store = env.store().await;
    let sql = "SELECT COALESCE(SUM(requests), 0) FROM http_hourly";
    let (mut last, mut stable) = (-1, 0);
    for _ in 0..90 {
        let now = common::scalar(&store, sql).await;
        if now == last {
            stable += 1;
            if stable >= 5 {
                break;
            }
        } else {
            (last, stable) = (now, 0);
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    let committed = common::scalar(&store, sql).await;
    println!(
        "failover, wait_replicas = {wait_replicas} (master {killed} killed after {} of {BATCHES} batches): {accepted} events answered 202 in {ingest_secs:.1} s ({refused} tries answered 503 or not at all, then retried), {committed} committed, {} lost",
        BATCHES / 3,
        accepted - committed
    );
    assert!(
        committed <= accepted,
        "double counted: {committed} committed of {accepted} accepted"
    );
    assert!(
        committed > accepted / 2,
        "the rollup went on after the failover: {committed} of {accepted}"
    );
    server.stop().await;
    (accepted, committed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_during_ingest_doubles_nothing_and_the_loss_is_measured() {
    failover_loss("clusterfailover", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_replicas_a_master_killed_during_ingest_doubles_nothing() {
    failover_loss("clusterfailoverwait", 1).await;
}

/// Entries of `stream` whose `data` is `data` (through the cluster client).
async fn entries_with_data(redis: &flowmeter::stream::Redis, stream: &str, data: &str) -> usize {
    flowmeter::stream::range(redis, stream, "-", "+", 100_000)
        .await
        .expect("XRANGE")
        .iter()
        .filter(|e| e.data.as_deref() == Some(data))
        .count()
}

/// Dead letters of group `rollup`.
async fn dead_letters(redis: &flowmeter::stream::Redis, keys: &Keys) -> u64 {
    flowmeter::dlq::len(redis, keys, "rollup")
        .await
        .expect("XLEN")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_work_on_a_cluster() {
    use common::{cli, cli_ok, scalar, wait_until};
    use std::time::Duration;
    let (_heavy, _cluster, env) = heavy_on_cluster("clustercli").await;
    env.migrate().await;
    let prefix = env.settings.redis.prefix.clone();
    let redis = flowmeter::stream::connect(&env.settings.redis)
        .await
        .expect("connects");
    let keys = Keys::new(prefix.as_str(), env.settings.redis.shards);
    let server = env.start("ingest,rollup").await;
    let client = common::http_client();
    let t0 = 1_772_359_200_000i64; // 2026-03-01T10:00:00Z
    common::post_http_range(&client, &server.url("/v1/events"), 0..600, t0, 3_600_000).await;
    let store = env.store().await;
    let total = || {
        let s = store.clone();
        async move { scalar(&s, "SELECT COALESCE(SUM(requests), 0) FROM http_hourly").await }
    };
    wait_until(Duration::from_secs(60), || async { total().await == 600 }).await;
    // a poison entry in one shard: the rollup dead-letters it
    let stream = keys.stream(&keys.shards_of("http")[1]);
    let poison = "{not json";
    let mut conn = redis.conn.clone();
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("kind")
        .arg("http")
        .arg("v")
        .arg(1)
        .arg("data")
        .arg(poison)
        .query_async(&mut conn)
        .await
        .expect("XADD");
    wait_until(Duration::from_secs(20), || async {
        dead_letters(&redis, &keys).await == 1
    })
    .await;
    let dir = tempfile::tempdir().expect("tmp");
    let config = env.write_config(dir.path());

    // status: every shard stream (each on its node), the rollup group, its dead letter
    let status: serde_json::Value =
        serde_json::from_str(&cli_ok(&config, &["status", "--json"])).expect("status JSON");
    let streams = status["streams"].as_array().expect("streams");
    assert_eq!(streams.len(), 2 * keys.shard_count() as usize, "{status}");
    let http_len: u64 = streams
        .iter()
        .filter(|s| s["kind"] == "http")
        .filter_map(|s| s["length"].as_u64())
        .sum();
    assert_eq!(http_len, 601, "600 events and the poison entry");
    let rollup = status["groups"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["group"] == "rollup"))
        .expect("rollup group");
    assert_eq!(rollup["dead_letters"], 1, "{rollup}");
    assert_eq!(rollup["lag"], 0, "{rollup}");
    assert!(
        status["redis"]["warning"].is_null(),
        "every node noeviction: {status}"
    );
    let text = cli_ok(&config, &["status"]);
    assert!(text.contains(&stream), "{text}");

    // groups: create, list, reset, delete an external group on every http shard
    let out = cli_ok(
        &config,
        &[
            "groups",
            "create",
            "ext",
            "--from",
            "beginning",
            "--kind",
            "http",
        ],
    );
    assert!(out.contains("group ext created on 8 streams"), "{out}");
    let list = cli_ok(&config, &["groups", "list", "--json"]);
    let groups: serde_json::Value = serde_json::from_str(&list).expect("groups JSON");
    let ext = groups
        .as_array()
        .and_then(|g| g.iter().find(|g| g["group"] == "ext"))
        .expect("ext listed");
    assert_eq!(ext["shards"], 8, "{ext}");
    assert_eq!(ext["lag"], 601, "{ext}");
    let out = cli_ok(
        &config,
        &["groups", "reset", "ext", "--to", "now", "--kind", "http"],
    );
    assert!(out.contains("moved to now on 8 streams"), "{out}");
    let list = cli_ok(&config, &["groups", "list", "--json"]);
    assert!(list.contains("\"ext\""), "{list}");
    let groups: serde_json::Value = serde_json::from_str(&list).expect("groups JSON");
    let ext = groups
        .as_array()
        .and_then(|g| g.iter().find(|g| g["group"] == "ext"))
        .expect("ext listed");
    assert_eq!(ext["lag"], 0, "{ext}");
    let out = cli_ok(&config, &["groups", "delete", "ext", "--kind", "http"]);
    assert!(out.contains("group ext deleted from 8 streams"), "{out}");
    let refused = cli(&config, &["groups", "delete", "ext", "--kind", "http"]);
    assert!(!refused.status.success(), "ext is gone");

    // dlq: list, retry (the entry comes back, still poison), and a retry
    // that died between its two writes, run again: appended once
    let list = cli_ok(&config, &["dlq", "list"]);
    assert!(list.contains("1 of 1 dead letters"), "{list}");
    assert!(list.contains(&stream), "{list}");
    let out = cli_ok(&config, &["dlq", "retry", "--all"]);
    assert!(out.contains("1 dead letters re-appended"), "{out}");
    wait_until(Duration::from_secs(20), || async {
        entries_with_data(&redis, &stream, poison).await == 2
            && dead_letters(&redis, &keys).await == 1
    })
    .await;
    let letters = flowmeter::dlq::list(&redis, &keys, "rollup", "-", 10)
        .await
        .expect("dlq list");
    let [letter] = letters.as_slice() else {
        panic!("one dead letter: {letters:?}")
    };
    let ttl = flowmeter::dlq::RETRY_MARKER_TTL;
    assert!(
        flowmeter::dlq::reappend_once(&redis, &keys, "rollup", letter, ttl)
            .await
            .expect("re-append"),
        "appended"
    );
    // (the process "dies" here: the dead letter is still listed; the
    // re-appended entry is dead-lettered again meanwhile)
    wait_until(Duration::from_secs(20), || async {
        dead_letters(&redis, &keys).await == 2
    })
    .await;
    let out = cli_ok(&config, &["dlq", "retry", "--all"]);
    assert!(out.contains("2 dead letters re-appended"), "{out}");
    wait_until(Duration::from_secs(20), || async {
        dead_letters(&redis, &keys).await == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        entries_with_data(&redis, &stream, poison).await,
        4,
        "the original, the first retry, the interrupted one, and the second run's other letter: the interrupted one was not appended again"
    );
    assert_eq!(dead_letters(&redis, &keys).await, 1);
    let refused = cli(&config, &["dlq", "purge"]);
    assert!(!refused.status.success(), "purge needs --yes");
    let out = cli_ok(&config, &["dlq", "purge", "--yes"]);
    assert!(
        out.contains("1 dead letters of group rollup deleted"),
        "{out}"
    );
    assert_eq!(dead_letters(&redis, &keys).await, 0);

    // replay: damaged rows rebuilt from every shard's stream
    sqlx::query("UPDATE http_hourly SET requests = requests + 1000")
        .execute(store.pool())
        .await
        .expect("damage");
    let out = cli_ok(
        &config,
        &[
            "replay",
            "--processor",
            "http_rollup",
            "--from",
            "2026-03-01T10:00:00Z",
            "--to",
            "2026-03-01T11:00:00Z",
            "--quiet",
        ],
    );
    assert!(
        out.contains("http_hourly") && out.contains("8 streams"),
        "{out}"
    );
    assert_eq!(total().await, 600, "rebuilt: {out}");

    // trim: the plan of every shard stream, then a pass (the defaults keep everything here)
    let out = cli_ok(&config, &["trim", "--dry-run"]);
    for shard in keys
        .shards_of("http")
        .iter()
        .chain(&keys.shards_of("webrtc"))
    {
        assert!(out.contains(&keys.stream(shard)), "{out}");
    }
    let out = cli_ok(&config, &["trim"]);
    assert!(out.contains(&stream), "{out}");
    assert_eq!(
        entries_in(&redis, &keys, &["http"]).await,
        604,
        "600 events and 4 poison entries, nothing trimmed"
    );
    server.stop().await;
}

/// Which master holds each shard stream under `prefix` (`{prefix}:{…}`).
async fn stream_homes(
    cluster: &RedisCluster,
    prefix: &str,
) -> std::collections::BTreeMap<String, u16> {
    let mut homes = std::collections::BTreeMap::new();
    for (url, port) in cluster.urls().iter().zip(&cluster.ports) {
        let (streams, master) = keys_on(url, &format!("{prefix}:{{*}}")).await;
        if master {
            homes.extend(streams.into_iter().map(|s| (s, *port)));
        }
    }
    homes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_during_ingest_and_rollups_loses_and_doubles_nothing() {
    use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let (_heavy, cluster, env) = heavy_on_cluster("clusterreshard").await;
    env.migrate().await;
    let prefix = env.settings.redis.prefix.clone();
    let a = env.start("ingest,rollup").await;
    let b = env.start("rollup").await;
    let client = common::http_client();
    let url = a.url("/v1/events");
    let base = 1_772_359_200_000i64; // 2026-03-01T10:00:00Z
    let event = move |service: String, i: usize| {
        serde_json::json!({"kind": "http", "ts": base + (i as i64 % 3_600) * 1000, "service": service,
            "endpoint": "/a", "method": "GET", "status": 200, "req_bytes": 1,
            "resp_bytes": 2, "duration_ms": 3.0})
        .to_string()
    };
    // The feeder: keyed batches over every shard (one idempotent script per
    // shard) and unkeyed batches of one service (one MULTI/EXEC on one
    // shard), until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU32::new(0));
    let feeder = {
        let (stop, accepted, refused, client, url) = (
            stop.clone(),
            accepted.clone(),
            refused.clone(),
            client.clone(),
            url.clone(),
        );
        tokio::spawn(async move {
            let mut b = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let keyed: Vec<String> = (0..100)
                    .map(|i| event(format!("s{}", (b + i) % 29), i))
                    .collect();
                let n = post_until_accepted(
                    &client,
                    &url,
                    Some(&format!("reshard-{b}")),
                    &keyed.join("\n"),
                )
                .await;
                refused.fetch_add(n, Ordering::SeqCst);
                let one: Vec<String> = (0..50).map(|i| event(format!("u{}", b % 7), i)).collect();
                let n = post_until_accepted(&client, &url, None, &one.join("\n")).await;
                refused.fetch_add(n, Ordering::SeqCst);
                accepted.fetch_add(150, Ordering::SeqCst);
                b += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = stream_homes(&cluster, &prefix).await;
    assert_eq!(
        before.len(),
        16,
        "every shard stream of both kinds: {before:?}"
    );
    let (moved_before, ask_before) = (cluster.errors_sent("MOVED"), cluster.errors_sent("ASK"));
    // wave 1: every slot of the master holding the most shard streams goes
    // to another (which leaves it a replica: Redis 7 turns a master without
    // slots into one); wave 2: as many slots go from there to the third
    let masters = cluster.masters();
    let from = *masters
        .iter()
        .max_by_key(|m| before.values().filter(|p| p == m).count())
        .expect("a master");
    let to = *masters
        .iter()
        .find(|m| **m != from)
        .expect("another master");
    let third = *masters
        .iter()
        .find(|m| **m != from && **m != to)
        .expect("a third master");
    let slots = cluster.slot_count(from);
    let started = Instant::now();
    let cluster = Arc::new(cluster);
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.reshard(from, to, slots))
        .await
        .expect("wave 1");
    let wave1 = started.elapsed();
    let middle = stream_homes(&cluster, &prefix).await;
    assert_eq!(
        cluster.slot_count(from),
        0,
        "wave 1 moved every slot of {from}"
    );
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.reshard(to, third, slots))
        .await
        .expect("wave 2");
    let resharding = started.elapsed();
    let after = stream_homes(&cluster, &prefix).await;
    // a second more of ingest on the new layout
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    feeder.await.expect("feeder");
    let accepted = accepted.load(Ordering::SeqCst) as i64;
    let moved_streams = before
        .iter()
        .filter(|(s, p)| middle.get(*s) != Some(p))
        .count();
    assert!(
        moved_streams > 0,
        "wave 1 moved shard streams: {before:?} → {middle:?}"
    );
    let (moved, ask) = (
        cluster.errors_sent("MOVED") - moved_before,
        cluster.errors_sent("ASK") - ask_before,
    );
    assert!(moved + ask > 0, "clients met MOVED or ASK");
    let store = env.store().await;
    let sql = "SELECT COALESCE(SUM(requests), 0) FROM http_hourly";
    common::wait_until(Duration::from_secs(120), || {
        let s = store.clone();
        async move { common::scalar(&s, sql).await >= accepted }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let committed = common::scalar(&store, sql).await;
    println!(
        "resharding: {slots} slots {from} → {to} in {:.1} s, as many {to} → {third}, {:.1} s in all; {moved_streams} of 16 shard streams moved in wave 1 ({} after both); {moved} MOVED and {ask} ASK replies; {accepted} events accepted ({} attempts refused first), {committed} committed",
        wave1.as_secs_f64(),
        resharding.as_secs_f64(),
        before.iter().filter(|(s, p)| after.get(*s) != Some(p)).count(),
        refused.load(Ordering::SeqCst),
    );
    assert_eq!(committed, accepted, "no loss, no double count");
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_whose_slot_moved_is_sent_again() {
    use flowmeter::stream::{ClusterRetry, Redis};
    use std::time::Duration;
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .expect("cluster");
    let key = "fmtx:{http:0}";
    let xadd = || {
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("XADD").arg(key).arg("*").arg("n").arg(1).ignore();
        pipe
    };
    let timeout = Duration::from_secs(5);
    let urls = cluster.urls();
    let retrying = Redis::connect_cluster(&urls, timeout, ClusterRetry::default())
        .await
        .expect("connects");
    let once = ClusterRetry {
        retries: 0,
        ..ClusterRetry::default()
    };
    let not_retrying = Redis::connect_cluster(&urls, timeout, once)
        .await
        .expect("connects");
    // both learn where the key's slot is
    for r in [&retrying, &not_retrying] {
        r.transaction::<()>(&xadd(), key)
            .await
            .expect("first write");
    }
    let slot = cluster.slot_of(key);
    let mut masters = Vec::new();
    for (url, port) in urls.iter().zip(&cluster.ports) {
        let (keys, master) = keys_on(url, "fmtx:*").await;
        if master {
            masters.push((*port, !keys.is_empty()));
        }
    }
    let from = masters
        .iter()
        .find(|m| m.1)
        .map(|m| m.0)
        .expect("the key's master");
    let to = masters
        .iter()
        .find(|m| !m.1)
        .map(|m| m.0)
        .expect("another master");

    // mid-migration: the key is on `to`, `from` answers ASK inside MULTI,
    // and the transaction is aborted (EXECABORT, which redis-rs does not retry)
    cluster.begin_slot_move(slot, from, to);
    let err = not_retrying
        .transaction::<()>(&xadd(), key)
        .await
        .expect_err("ASK inside MULTI aborts the transaction");
    assert!(err.to_string().contains("Ask"), "{err}");
    // once the slot is `to`'s: MOVED inside MULTI, aborted as well…
    cluster.finish_slot_move(slot, to);
    let err = not_retrying
        .transaction::<()>(&xadd(), key)
        .await
        .expect_err("MOVED inside MULTI aborts the transaction");
    assert!(err.to_string().contains("Moved"), "{err}");
    // …and sent again by a client that retries: written once
    retrying
        .transaction::<()>(&xadd(), key)
        .await
        .expect("retried on the slot's new master");
    let mut conn = retrying.conn.clone();
    let len: u64 = redis::cmd("XLEN")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("XLEN");
    assert_eq!(
        len, 3,
        "two first writes and the retried one; the aborted ones wrote nothing"
    );
    let (on_to, _) = keys_on(&format!("redis://127.0.0.1:{to}"), "fmtx:*").await;
    assert_eq!(on_to, vec![key.to_string()], "the key moved to {to}");
}

// The single-node tests of crashes, replay, the hub and the golden rows,
// run on a cluster: the same bodies, only the environment differs.

/// The heavy-test lock (six Redis nodes beside a server), a fresh cluster,
/// and an environment `name` on it with 8 shards (spread over the masters).
async fn heavy_on_cluster(
    name: &str,
) -> (
    tokio::sync::MutexGuard<'static, ()>,
    RedisCluster,
    common::TestEnv,
) {
    let heavy = common::heavy().await;
    let (cluster, mut env) = on_cluster(name).await;
    env.settings.redis.shards = 8;
    (heavy, cluster, env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_on_a_cluster() {
    let (_heavy, _cluster, env) = heavy_on_cluster("clustercrash").await;
    crate::exactly_once::sigkill_cycles(env, 25).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_on_a_cluster_equals_a_fresh_computation() {
    let (_heavy, _cluster, env) = heavy_on_cluster("clusterreplay").await;
    crate::replay::replay_twice_during_live_ingest(env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_snapshot_and_resume_on_a_cluster() {
    let (_heavy, _cluster, env) = heavy_on_cluster("clusterhublive").await;
    crate::hub::snapshot_live_and_resume(env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_rows_on_a_cluster() {
    let (_heavy, _cluster, env) = heavy_on_cluster("clustergolden").await;
    crate::golden::golden_rows_match(env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_shard_count_live_on_a_cluster_strands_and_doubles_nothing() {
    // six Redis nodes and two servers: not beside the browser and crash tests
    let (_heavy, _cluster, env) = heavy_on_cluster("clustershards").await;
    crate::shards::live_change(env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_batches_failing_on_one_shard_are_retried_exactly() {
    // six Redis nodes: not beside the browser and crash tests
    let _heavy = common::heavy().await;
    let (_cluster, env) = on_cluster("clustercollector").await;
    crate::collector::partial_failure_is_retried_exactly(env).await;
}
