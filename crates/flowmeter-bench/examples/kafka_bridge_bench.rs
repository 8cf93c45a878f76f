//! The Kafka bridge's figures for BENCHMARKS.md: how fast it drains a
//! backlog next to the rollup reading the same streams, and the lag it adds
//! at a steady rate.
//!
//! ```sh
//! cargo run --release -p flowmeter-bench --example kafka_bridge_bench            # 3 runs × 200,000 events
//! cargo run --release -p flowmeter-bench --example kafka_bridge_bench -- 100000 1 # events, runs
//! ```
//!
//! Needs Redis and MariaDB on 127.0.0.1 (as the tests) and `tansu` (0.6.0,
//! in `~/.cargo/bin` or on PATH); each run starts a fresh in-memory tansu
//! broker. Uses the prefix and database `fmkbench` (wiped). Everything runs
//! on this machine: flowmeter in this process (ingest + api, then the
//! rollup role with or without the bridge), Redis, MariaDB and tansu.
//!
//! Per run:
//! 1. **rollup alone**: post N events (the loadgen mix, batches of 1,000,
//!    4 connections) with only ingest running, then start the rollup role
//!    without the bridge and time until MySQL holds all N;
//! 2. **rollup + bridge**: the same backlog again, the rollup role with the
//!    bridge enabled; time until MySQL holds all N and, separately, until
//!    the `kafka` group has acknowledged all N (pending 0, lag 0); the
//!    topics are then read back: every event must be there;
//! 3. **steady**: all roles running, 10,000 events/s for 10 s; a consumer
//!    measures, per message, the time from the entry's XADD (its stream id)
//!    to the message reaching it: the lag the bridge adds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use bytes::Bytes;
use flowmeter::app::{self, Roles};
use flowmeter::config::Settings;
use flowmeter::sketch::DdSketch;
use flowmeter::store::Store;
use flowmeter_bench::loadgen::{GenConfig, Generator};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "fmkbench";
const TOPICS: [&str; 2] = ["flowmeter.http", "flowmeter.webrtc"];
const PARTITIONS: i32 = 3;
const BATCH: usize = 1_000;
const CONNECTIONS: usize = 4;
const STEADY_RATE: u64 = 10_000;
const STEADY_SECS: u64 = 10;

fn repo() -> PathBuf {
    // this crate is crates/flowmeter-bench: the repository is two up
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// A private in-memory tansu broker, killed on drop.
struct Tansu {
    child: Child,
    port: u16,
}

impl Tansu {
    fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default();
        let cargo_bin = home.join(".cargo/bin/tansu");
        let exe = if cargo_bin.exists() {
            cargo_bin
        } else {
            PathBuf::from("tansu")
        };
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(exe)
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/", "--silent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting tansu (cargo install tansu --version 0.6.0 --features dynostore)")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("tansu did not listen on {port} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self { child, port })
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `serve` with `roles` in this process.
struct Serve {
    addr: SocketAddr,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl Serve {
    async fn start(settings: &Settings, roles: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let roles: Roles = roles.parse()?;
        let (s, token) = (settings.clone(), stop.clone());
        let handle = tokio::spawn(async move {
            if let Err(e) = app::serve(s, roles, Some(listener), token).await {
                eprintln!("serve failed: {e}");
            }
        });
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while http
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("serve --roles did not answer within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self { addr, stop, handle })
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.handle).await;
    }
}

/// Settings of the bench, with the processors of `dir` (the bridge on or off).
fn settings(dir: &Path, kafka: &str, bridge: bool) -> anyhow::Result<Settings> {
    let procs = dir.join(if bridge { "with" } else { "without" });
    std::fs::create_dir_all(&procs)?;
    for e in std::fs::read_dir(repo().join("processors"))?.flatten() {
        let text = std::fs::read_to_string(e.path())?;
        let text = if e.file_name() == "kafka_bridge.toml" && bridge {
            text.replace("enabled = false", "enabled = true")
        } else {
            text
        };
        std::fs::write(procs.join(e.file_name()), text)?;
    }
    let mut s = Settings::default();
    s.redis.prefix = PREFIX.into();
    s.mysql.url = format!("mysql://root@127.0.0.1:3306/{PREFIX}");
    s.paths.schemas = repo().join("schemas");
    s.paths.migrations = repo().join("migrations");
    s.paths.processors = procs;
    s.kafka.brokers = kafka.into();
    s.kafka.client_id = "fmkbench".into();
    Ok(s)
}

/// Removes the bench's keys and database.
async fn wipe(settings: &Settings) -> anyhow::Result<()> {
    let client = redis::Client::open(settings.redis.url.as_str())?;
    let mut r = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{PREFIX}:*"))
        .query_async(&mut r)
        .await?;
    for chunk in keys.chunks(500) {
        let _: () = redis::cmd("DEL").arg(chunk).query_async(&mut r).await?;
    }
    Store::connect(&settings.mysql.url, 2)
        .await?
        .drop_database()
        .await?;
    Ok(())
}

/// An empty prefix and a migrated database.
async fn reset(settings: &Settings) -> anyhow::Result<()> {
    wipe(settings).await?;
    app::migrate(settings).await?;
    Ok(())
}

/// NDJSON bodies of `n` loadgen events (mixed kinds) over six hours.
fn bodies(n: u64) -> Vec<Bytes> {
    const T0: i64 = 1_772_323_200_000;
    const SPAN: i64 = 6 * 3_600_000;
    let mut g = Generator::new(GenConfig::default());
    let step = (SPAN / n.max(1) as i64).max(1);
    let mut out = Vec::new();
    let mut body = Vec::new();
    for i in 0..n {
        if !body.is_empty() {
            body.push(b'\n');
        }
        let _ = serde_json::to_writer(&mut body, &g.next_event(T0 + (i as i64 * step) % SPAN));
        if (i + 1) % BATCH as u64 == 0 {
            out.push(Bytes::from(std::mem::take(&mut body)));
        }
    }
    if !body.is_empty() {
        out.push(Bytes::from(body));
    }
    out
}

async fn post_all(addr: SocketAddr, bodies: &Arc<Vec<Bytes>>) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let (http, next, bodies) = (http.clone(), next.clone(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(b) = bodies.get(next.fetch_add(1, Ordering::Relaxed)) {
                let r = http
                    .post(format!("http://{addr}/v1/events"))
                    .header("content-type", "application/x-ndjson")
                    .body(b.clone())
                    .send()
                    .await?;
                if r.status().as_u16() != 202 {
                    bail!("POST answered {}", r.status());
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Events in the hourly rollup tables.
async fn rolled_up(store: &Store) -> anyhow::Result<u64> {
    let n: Option<f64> = sqlx::query_scalar(
        "SELECT CAST((SELECT IFNULL(SUM(requests),0) FROM http_hourly) + (SELECT IFNULL(SUM(samples),0) FROM webrtc_hourly) AS DOUBLE)",
    )
    .fetch_one(store.pool())
    .await?;
    Ok(n.unwrap_or(0.0) as u64)
}

/// Pending + lag of the `kafka` group over every shard (u64::MAX if a
/// shard has no group yet).
async fn bridge_backlog(r: &mut redis::aio::MultiplexedConnection, shards: u32) -> u64 {
    let mut total = 0u64;
    for kind in ["http", "webrtc"] {
        for i in 0..shards {
            let groups: redis::Value = match redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(format!("{PREFIX}:{{{kind}:{i}}}"))
                .query_async(r)
                .await
            {
                Ok(v) => v,
                Err(_) => return u64::MAX,
            };
            let redis::Value::Array(groups) = groups else {
                return u64::MAX;
            };
            let mut found = false;
            for g in groups {
                let redis::Value::Array(kv) = g else { continue };
                let field = |name: &str| {
                    kv.chunks(2).find_map(|c| match c {
                        [redis::Value::BulkString(k), v] if k == name.as_bytes() => Some(v.clone()),
                        _ => None,
                    })
                };
                if !matches!(field("name"), Some(redis::Value::BulkString(n)) if n == b"kafka") {
                    continue;
                }
                found = true;
                for f in ["pending", "lag"] {
                    match field(f) {
                        Some(redis::Value::Int(n)) => total += n as u64,
                        _ => return u64::MAX,
                    }
                }
            }
            if !found {
                return u64::MAX;
            }
        }
    }
    total
}

/// Reads the bridge's topics from the start until nothing new comes for
/// 3 s: (messages, distinct (stream, id) headers).
fn consume_all(bootstrap: &str) -> anyhow::Result<(u64, u64)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "fmkbench-verify")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for t in TOPICS {
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(t, p, Offset::Beginning)?;
        }
    }
    c.assign(&tpl)?;
    let mut seen = std::collections::HashSet::new();
    let mut n = 0u64;
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_secs(3) {
        let Some(m) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m?;
        n += 1;
        last = Instant::now();
        let h = |k: &str| {
            m.headers()
                .and_then(|h| h.iter().find(|h| h.key == k).and_then(|h| h.value))
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        seen.insert((h("flowmeter-stream"), h("flowmeter-id")));
    }
    Ok((n, seen.len() as u64))
}

struct Drain {
    rollup_secs: f64,
    bridge_secs: Option<f64>,
}

/// Posts the backlog with ingest alone, then starts the rollup role and
/// times the drain.
async fn drain(
    settings: &Settings,
    bodies: &Arc<Vec<Bytes>>,
    n: u64,
    bridge: bool,
) -> anyhow::Result<Drain> {
    reset(settings).await?;
    let ingest = Serve::start(settings, "ingest,api").await?;
    post_all(ingest.addr, bodies).await?;
    let store = Store::connect(&settings.mysql.url, 2).await?;
    let mut r = redis::Client::open(settings.redis.url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let t0 = Instant::now();
    let rollup = Serve::start(settings, "rollup").await?;
    let (mut rollup_secs, mut bridge_secs) = (None, None);
    while rollup_secs.is_none() || (bridge && bridge_secs.is_none()) {
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("no complete drain within 600 s");
        }
        if rollup_secs.is_none() && rolled_up(&store).await? == n {
            rollup_secs = Some(t0.elapsed().as_secs_f64());
        }
        if bridge
            && bridge_secs.is_none()
            && bridge_backlog(&mut r, settings.redis.shards).await == 0
        {
            bridge_secs = Some(t0.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rollup.stop().await;
    ingest.stop().await;
    Ok(Drain {
        rollup_secs: rollup_secs.unwrap_or_default(),
        bridge_secs,
    })
}

/// Steady load with everything running; XADD → consumer lag quantiles (ms).
/// Returns (p50, p99, distinct events, further copies).
async fn steady(settings: &Settings, bootstrap: &str) -> anyhow::Result<(f64, f64, u64, u64)> {
    reset(settings).await?;
    let server = Serve::start(settings, "ingest,api,rollup").await?;
    let sketch = Arc::new(Mutex::new(DdSketch::new()));
    let received = Arc::new(AtomicU64::new(0));
    let copies = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Only this phase's entries count (tansu resolves Offset::End from a
    // high watermark that can lag behind its data, so older messages may come).
    let since_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as f64;
    let consumer = {
        let (sketch, received, copies, stop) = (
            sketch.clone(),
            received.clone(),
            copies.clone(),
            stop.clone(),
        );
        let bootstrap = bootstrap.to_string();
        std::thread::spawn(move || -> anyhow::Result<()> {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", "fmkbench-lag")
                .set("fetch.wait.max.ms", "10")
                .create()?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while !c
                .fetch_metadata(None, Duration::from_secs(2))
                .map(|m| {
                    TOPICS.iter().all(|t| {
                        m.topics()
                            .iter()
                            .any(|x| x.name() == *t && !x.partitions().is_empty())
                    })
                })
                .unwrap_or(false)
            {
                if Instant::now() > deadline {
                    bail!("the bridge did not create its topics");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let mut tpl = TopicPartitionList::new();
            for t in TOPICS {
                for p in 0..PARTITIONS {
                    tpl.add_partition_offset(t, p, Offset::End)?;
                }
            }
            c.assign(&tpl)?;
            let mut seen = std::collections::HashSet::new();
            while !stop.load(Ordering::SeqCst) {
                let Some(Ok(m)) = c.poll(Duration::from_millis(50)) else {
                    continue;
                };
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis() as f64;
                let header = |k: &str| {
                    m.headers()
                        .and_then(|h| h.iter().find(|h| h.key == k).and_then(|h| h.value))
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                };
                let (Some(stream), Some(id)) = (header("flowmeter-stream"), header("flowmeter-id"))
                else {
                    continue;
                };
                let Some(ms) = id.split('-').next().and_then(|ms| ms.parse::<f64>().ok()) else {
                    continue;
                };
                if ms < since_ms {
                    continue;
                }
                if !seen.insert((stream, id)) {
                    copies.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if let Ok(mut s) = sketch.lock() {
                    s.add((now - ms).max(0.0));
                }
                received.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    };
    // let the consumer find the topics and its positions
    tokio::time::sleep(Duration::from_secs(2)).await;
    let per_tick = STEADY_RATE / 20;
    let mut g = Generator::new(GenConfig::default());
    let http = reqwest::Client::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    for i in 0..(STEADY_SECS * 20) {
        tick.tick().await;
        let body: Vec<String> = (0..per_tick)
            .map(|j| g.next_event(now_ms + (i * per_tick + j) as i64).to_string())
            .collect();
        let r = http
            .post(format!("http://{}/v1/events", server.addr))
            .header("content-type", "application/x-ndjson")
            .body(body.join("\n"))
            .send()
            .await?;
        if r.status().as_u16() != 202 {
            bail!("POST answered {}", r.status());
        }
    }
    let want = STEADY_RATE * STEADY_SECS;
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.load(Ordering::Relaxed) < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // a second more, to count late duplicates
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    consumer
        .join()
        .map_err(|_| anyhow::anyhow!("consumer thread panicked"))??;
    server.stop().await;
    let s = sketch.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    Ok((
        s.quantile(0.5).unwrap_or(f64::NAN),
        s.quantile(0.99).unwrap_or(f64::NAN),
        received.load(Ordering::Relaxed),
        copies.load(Ordering::Relaxed),
    ))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: u64 = args
        .first()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(200_000);
    let runs: usize = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(3);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()),
        ))
        .try_init();
    let dir = tempfile::tempdir()?;
    eprintln!("generating {n} events…");
    let bodies = Arc::new(bodies(n));
    let (mut alone, mut with_rollup, mut with_bridge) = (Vec::new(), Vec::new(), Vec::new());
    let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let kafka = Tansu::start()?;
        let a = drain(
            &settings(dir.path(), &kafka.bootstrap(), false)?,
            &bodies,
            n,
            false,
        )
        .await?;
        let with = settings(dir.path(), &kafka.bootstrap(), true)?;
        let b = drain(&with, &bodies, n, true).await?;
        let bridge_secs = b.bridge_secs.unwrap_or(f64::NAN);
        // every event once in Kafka (tansu's high watermarks lag behind its
        // data, so the messages are read back instead)
        let (marks, distinct) = tokio::task::spawn_blocking({
            let boot = kafka.bootstrap();
            move || consume_all(&boot)
        })
        .await??;
        if distinct != n {
            bail!("the topics hold {distinct} distinct events ({marks} messages), not {n}");
        }
        let (p50, p99, got, served_twice) = steady(&with, &kafka.bootstrap()).await?;
        // what the topics hold: the drain's and the steady phase's events, once each
        let (msgs, distinct) = tokio::task::spawn_blocking({
            let boot = kafka.bootstrap();
            move || consume_all(&boot)
        })
        .await??;
        let steady_n = STEADY_RATE * STEADY_SECS;
        if distinct != n + steady_n {
            bail!(
                "after the steady phase the topics hold {distinct} distinct events, not {}",
                n + steady_n
            );
        }
        println!(
            "run {run}: rollup alone {:.0} ev/s ({:.2} s); with the bridge: rollup {:.0} ev/s ({:.2} s), bridge {:.0} ev/s ({:.2} s, {marks} messages); steady {STEADY_RATE} ev/s: XADD → Kafka consumer p50 {p50:.0} ms, p99 {p99:.0} ms ({got} events; the live consumer was served {served_twice} records twice; the topics hold {msgs} messages for {distinct} events)",
            n as f64 / a.rollup_secs,
            a.rollup_secs,
            n as f64 / b.rollup_secs,
            b.rollup_secs,
            n as f64 / bridge_secs,
            bridge_secs,
        );
        alone.push(n as f64 / a.rollup_secs);
        with_rollup.push(n as f64 / b.rollup_secs);
        with_bridge.push(n as f64 / bridge_secs);
        p50s.push(p50);
        p99s.push(p99);
    }
    println!(
        "medians of {runs}: rollup alone {:.0} ev/s; with the bridge: rollup {:.0} ev/s, bridge {:.0} ev/s; XADD → Kafka consumer at {STEADY_RATE} ev/s p50 {:.0} ms, p99 {:.0} ms",
        median(alone),
        median(with_rollup),
        median(with_bridge),
        median(p50s),
        median(p99s)
    );
    wipe(&settings(dir.path(), "127.0.0.1:9", false)?).await?;
    Ok(())
}
