//! The shard core's guarantees, checked against every processor type: the
//! rollup (MySQL, exactly once), the ClickHouse archive and the Kafka bridge
//! (at least once, duplicates collapsed downstream by stream id). Each
//! scenario is one body, parameterised by [`Type`], with one test per type:
//!
//! - dead letters: an entry without data and an entry that killed three
//!   workers applying it alone are dead-lettered once each, everything else
//!   arrives, nothing stays pending;
//! - replay: a group rewound to the start of its streams (everything
//!   redelivered) still ends with every event once downstream;
//! - racing: two workers on one shard while a chaos task keeps deleting the
//!   lease lose nothing (and the rollup doubles nothing);
//! - kill -9: a worker process killed with SIGKILL at random moments loses
//!   nothing (and the rollup doubles nothing).
//!
//! Outages of each downstream system are in their own files
//! (`outage.rs`, `archive.rs`, `kafka_bridge.rs`).

use crate::common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::servers::{PrivateClickHouse, PrivateKafka};
use common::*;
use rand::Rng;

const T0: i64 = 1_772_359_200_000; // 2026-03-01T10:00:00Z

/// A processor type under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Rollup,
    Archive,
    Kafka,
}

/// Where a type's events end up (its private server, if it needs one).
enum Downstream {
    MySql,
    ClickHouse(PrivateClickHouse),
    Kafka(PrivateKafka),
}

/// One test world: a TestEnv whose processors are the type's (plus the
/// rollups, which every world has), and the downstream system.
struct World {
    ty: Type,
    env: TestEnv,
    down: Downstream,
    _dir: tempfile::TempDir,
}

impl World {
    async fn new(ty: Type, test: &str, edit: impl FnOnce(&mut TestEnv)) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut env = TestEnv::new(&format!("{test}_{ty:?}").to_lowercase());
        use_copied_definitions(&mut env, dir.path());
        let procs = dir.path().join("processors");
        let enable = |file: &str| {
            let p = procs.join(file);
            let text = std::fs::read_to_string(&p).expect("definition");
            std::fs::write(&p, text.replace("enabled = false", "enabled = true")).expect("enable");
        };
        let down = match ty {
            Type::Rollup => Downstream::MySql,
            Type::Archive => {
                let ch = PrivateClickHouse::start();
                enable("clickhouse_archive.toml");
                // Batches as short as the bridge's: a worker killed before
                // its first delivery leaves its whole batch pending, and
                // entries re-read past rollup.max_deliveries are delivered
                // one INSERT each (the suspect policy).
                let p = procs.join("clickhouse_archive.toml");
                let text = std::fs::read_to_string(&p).expect("definition");
                assert!(text.contains("max_wait_ms = 1000"));
                std::fs::write(&p, text.replace("max_wait_ms = 1000", "max_wait_ms = 100"))
                    .expect("edit");
                env.settings.clickhouse.url = ch.url();
                env.settings.clickhouse.database = env.name.clone();
                env.settings.clickhouse.validation = !ch.version().starts_with("18.");
                env.settings.paths.clickhouse_migrations = dir.path().join("migrations/clickhouse");
                Downstream::ClickHouse(ch)
            }
            Type::Kafka => {
                let kafka = PrivateKafka::start();
                enable("kafka_bridge.toml");
                env.settings.kafka.brokers = kafka.bootstrap();
                env.settings.kafka.client_id = env.name.clone();
                Downstream::Kafka(kafka)
            }
        };
        env.settings.redis.shards = 1;
        edit(&mut env);
        env.migrate().await;
        World {
            ty,
            env,
            down,
            _dir: dir,
        }
    }

    /// The consumer group of the type's processor.
    fn group(&self) -> &'static str {
        match self.ty {
            Type::Rollup => "rollup",
            Type::Archive => "archive",
            Type::Kafka => "kafka",
        }
    }

    /// http events downstream, duplicates (same stream id) counted once;
    /// the rollup's count is its committed total, which must be exact.
    async fn count(&self) -> u64 {
        match &self.down {
            Downstream::MySql => {
                let store = self.env.store().await;
                scalar(&store, "SELECT SUM(requests) FROM http_hourly").await as u64
            }
            Downstream::ClickHouse(ch) => {
                let sql = "SELECT count() FROM http_events FINAL";
                clickhouse_number(&ch.url(), &self.env.name, sql).await
            }
            Downstream::Kafka(kafka) => {
                let bootstrap = kafka.bootstrap();
                tokio::task::spawn_blocking(move || kafka_ids(&bootstrap, "flowmeter.http").len())
                    .await
                    .expect("consumer") as u64
            }
        }
    }

    /// Waits until exactly `n` events are downstream and the group has
    /// nothing pending or unread, then checks the count stays `n`.
    async fn converges_to(&self, n: u64, limit: Duration) {
        let mut last = 0;
        let start = std::time::Instant::now();
        loop {
            let (pending, lag) = group_figures(&self.env, self.group()).await;
            last = if pending + lag == 0 {
                self.count().await
            } else {
                last
            };
            if pending + lag == 0 && last >= n {
                break;
            }
            assert!(
                start.elapsed() < limit,
                "{:?}: {last} of {n} events downstream, {pending} pending, {lag} unread after {limit:?}",
                self.ty
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(self.count().await, n, "{:?}: events downstream", self.ty);
    }

    fn stream(&self) -> String {
        format!("{}:{{http:0}}", self.env.name)
    }

    async fn cleanup(self) {
        self.env.cleanup().await;
    }
}

#[cfg(not(feature = "kafka"))]
fn kafka_ids(_: &str, _: &str) -> HashSet<(String, String)> {
    unreachable!("the Kafka tests need the `kafka` feature")
}

/// The distinct (stream, id) pairs of every message in `topic`, read from
/// the start of each partition until it is quiet.
#[cfg(feature = "kafka")]
fn kafka_ids(bootstrap: &str, topic: &str) -> HashSet<(String, String)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("processors-test-{}", rand::random::<u32>()),
        )
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("consumer");
    let Ok(meta) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) else {
        return HashSet::new();
    };
    let partitions = meta
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len());
    if partitions == 0 {
        return HashSet::new();
    }
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p as i32, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut ids = HashSet::new();
    let mut quiet = std::time::Instant::now();
    while quiet.elapsed() < Duration::from_millis(1500) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            quiet = std::time::Instant::now();
            let header = |k: &str| {
                m.headers()
                    .and_then(|h| h.iter().find(|h| h.key == k))
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            ids.insert((header("flowmeter-stream"), header("flowmeter-id")));
        }
    }
    ids
}

/// Posts http events `from..from + n`; returns how many were accepted.
async fn send(client: &reqwest::Client, url: &str, from: u64, n: u64) -> u64 {
    let events: Vec<String> = (from..from + n)
        .map(|i| http_event(i, T0 + (i as i64 % 7200) * 1000).to_string())
        .collect();
    let (code, _) = post_ndjson(client, &format!("{url}/v1/events"), events.join("\n")).await;
    if code == 202 {
        n
    } else {
        0
    }
}

async fn xadd(
    r: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    data: Option<String>,
) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream)
        .arg("*")
        .arg("kind")
        .arg("http")
        .arg("v")
        .arg(1);
    if let Some(d) = data {
        cmd.arg("data").arg(d);
    }
    cmd.query_async(r).await.expect("xadd")
}

async fn letters(
    r: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> Vec<(String, Vec<(String, String)>)> {
    redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(r)
        .await
        .expect("xrange")
}

fn field(letter: &(String, Vec<(String, String)>), k: &str) -> String {
    letter
        .1
        .iter()
        .find(|(f, _)| f == k)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// Ten entries, the first four re-read until they are suspects, the first
/// of those already counted as having killed three workers applying it
/// alone, and an entry without data: exactly those two are dead-lettered,
/// the nine others arrive, nothing stays pending, the counters are cleared.
async fn dead_letters(ty: Type) {
    let w = World::new(ty, "core_dlq", |env| env.settings.rollup.max_deliveries = 5).await;
    let stream = w.stream();
    let group = w.group();
    let mut r = w.env.redis().await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(xadd(&mut r, &stream, Some(http_event(i, T0).to_string())).await);
    }
    let no_data = xadd(&mut r, &stream, None).await;
    // a crash loop: the shard's consumer took 4 entries and re-read them four times
    crash_loop(&mut r, &stream, group, "http:0", 4, 4).await;
    let suspects = format!("{}:suspects:{group}", w.env.name);
    let _: i64 = redis::cmd("HINCRBY")
        .arg(&suspects)
        .arg(format!("{stream}/{}", ids[0]))
        .arg(3)
        .query_async(&mut r)
        .await
        .expect("hincrby");

    let server = w.env.start("rollup").await;
    w.converges_to(9, Duration::from_secs(60)).await;
    let dlq = letters(&mut r, &format!("{}:dlq:{group}", w.env.name)).await;
    assert_eq!(
        dlq.len(),
        2,
        "{ty:?}: the killer and the empty entry: {dlq:?}"
    );
    let by_id = |id: &str| {
        dlq.iter()
            .find(|l| field(l, "id") == id)
            .unwrap_or_else(|| panic!("{ty:?}: no letter for {id}: {dlq:?}"))
    };
    let killer = by_id(&ids[0]);
    assert!(
        field(killer, "error").contains("attempts to apply it alone"),
        "{ty:?}: {}",
        field(killer, "error")
    );
    assert!(field(killer, "data").contains("svc"));
    assert!(field(by_id(&no_data), "error").contains("no data field"));
    server.stop().await;
    let left: u64 = redis::cmd("HLEN")
        .arg(&suspects)
        .query_async(&mut r)
        .await
        .expect("hlen");
    assert_eq!(
        left, 0,
        "{ty:?}: attempt counters are cleared once committed"
    );
    w.cleanup().await;
}

/// Everything delivered, then the group rewound to the start of its
/// stream (a replay of every entry): each event is still downstream once.
async fn replay(ty: Type) {
    let w = World::new(ty, "core_replay", |_| {}).await;
    let server = w.env.start("ingest,rollup").await;
    let client = http_client();
    assert_eq!(send(&client, &server.url(""), 0, 500).await, 500);
    w.converges_to(500, Duration::from_secs(60)).await;
    let mut r = w.env.redis().await;
    let _: () = redis::cmd("XGROUP")
        .arg("SETID")
        .arg(w.stream())
        .arg(w.group())
        .arg("0")
        .query_async(&mut r)
        .await
        .expect("setid");
    assert_eq!(send(&client, &server.url(""), 500, 100).await, 100);
    w.converges_to(600, Duration::from_secs(60)).await;
    server.stop().await;
    w.cleanup().await;
}

/// Two workers on one shard while a chaos task keeps deleting the lease,
/// so both believe they own it.
async fn racing(ty: Type) {
    let w = World::new(ty, "core_race", |env| {
        env.settings.rollup.flush_interval_ms = 30;
        env.settings.rollup.lease_ms = 600;
        env.settings.rollup.read_count = 50;
    })
    .await;
    let ingest = w.env.start("ingest").await;
    let a = w.env.start("rollup").await;
    let b = w.env.start("rollup").await;
    let client = http_client();
    let stop = Arc::new(AtomicBool::new(false));
    let chaos = lease_chaos(&w.env, w.group(), stop.clone()).await;
    let mut accepted = 0;
    for round in 0..40u64 {
        accepted += send(&client, &ingest.url(""), round * 100, 100).await;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop.store(true, Ordering::Relaxed);
    assert!(chaos.await.expect("chaos") > 10);
    assert_eq!(accepted, 4000);
    w.converges_to(accepted, Duration::from_secs(90)).await;
    a.stop().await;
    b.stop().await;
    ingest.stop().await;
    w.cleanup().await;
}

fn spawn_worker(config: &std::path::Path) -> ChildGuard {
    spawn_flowmeter(config, "rollup", "127.0.0.1:0")
}

/// A worker process killed with SIGKILL at random moments (12 cycles)
/// while events stream in; one last worker then converges on every event.
async fn kill9(ty: Type) {
    // one at a time with the other heavy tests: each crash loop leaves a
    // pending list of suspects that the last worker commits one at a time
    let _turn = common::heavy().await;
    let w = World::new(ty, "core_kill", |env| {
        env.settings.rollup.lease_ms = 800;
        env.settings.rollup.flush_interval_ms = 100;
        env.settings.rollup.read_count = 200;
    })
    .await;
    let dir = tempfile::tempdir().expect("tmp");
    let config = w.env.write_config(dir.path());
    let ingest = w.env.start("ingest").await;
    let accepted = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (accepted, stop, url) = (accepted.clone(), stop.clone(), ingest.url(""));
        tokio::spawn(async move {
            let client = http_client();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                accepted.fetch_add(send(&client, &url, i, 100).await, Ordering::Relaxed);
                i += 100;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    for _ in 0..12 {
        let kid = spawn_worker(&config);
        let ms: u64 = rand::rng().random_range(300..2000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        drop(kid); // SIGKILL: no commit, no ack, no lease release
    }
    stop.store(true, Ordering::Relaxed);
    feeder.await.expect("feeder");
    let accepted = accepted.load(Ordering::Relaxed);
    assert!(accepted > 1_000, "only {accepted} events were sent");
    let _last = spawn_worker(&config);
    w.converges_to(accepted, Duration::from_secs(180)).await;
    ingest.stop().await;
    w.cleanup().await;
}

macro_rules! for_every_type {
    ($scenario:ident) => {
        mod $scenario {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rollup() {
                super::$scenario(Type::Rollup).await;
            }

            #[cfg(feature = "clickhouse")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn clickhouse_archive() {
                super::$scenario(Type::Archive).await;
            }

            #[cfg(feature = "kafka")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn kafka_bridge() {
                super::$scenario(Type::Kafka).await;
            }
        }
    };
}

for_every_type!(dead_letters);
for_every_type!(replay);
for_every_type!(racing);
for_every_type!(kill9);
