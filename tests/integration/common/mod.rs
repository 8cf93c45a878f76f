//! Shared helpers of the integration tests. Every test gets its own Redis key
//! prefix and its own MariaDB database, so tests run in parallel against the
//! real servers on 127.0.0.1 (`scripts/services start`).
#![allow(dead_code)]

pub mod browser;
pub mod servers;
pub mod tls;
pub mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flowmeter::app::{self, Roles};
use flowmeter::config::Settings;
use flowmeter::store::Store;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The one lock of the tests whose figures or deadlines a busy machine
/// would distort (browsers, benchmarks, hub churn, kill -9 timing, memory
/// probes): they take it first and run one at a time, while the rest of the
/// binary's tests run beside them.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits for [`HEAVY`]; the test holds the guard to its end.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    HEAVY.lock().await
}

/// [`heavy`] for a test that is not async.
pub fn heavy_blocking() -> tokio::sync::MutexGuard<'static, ()> {
    HEAVY.blocking_lock()
}

/// The tests' own Redis connections: redis-rs answers "timed out" after
/// 500 ms by default, which a loaded 2-core machine exceeds for an XRANGE
/// of thousands of entries; the tests check data, not Redis's speed.
pub fn redis_config() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_connection_timeout(Some(Duration::from_secs(5)))
}

pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const MYSQL_SERVER: &str = "mysql://root@127.0.0.1:3306";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One test's isolated world, and its cleanup: dropping the env a test made
/// removes its Redis keys and its database, also when the test fails (a
/// panic unwinds through the drop). [`TestEnv::cleanup`] does it earlier;
/// [`TestEnv::handle`] is a copy that cleans nothing.
pub struct TestEnv {
    pub name: String,
    pub settings: Settings,
    /// Whether dropping this cleans up (false for handles).
    owns: bool,
    cleaned: std::sync::atomic::AtomicBool,
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        if !self.owns || self.cleaned.swap(true, Ordering::SeqCst) {
            return;
        }
        let (name, mysql) = (self.name.clone(), self.settings.mysql.url.clone());
        // A drop may run on a runtime's thread (async tests) or while a
        // panic unwinds: the cleanup gets its own thread and runtime, and
        // nothing in it panics.
        let cleaner = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(20), remove(&name, &mysql)).await;
            });
        });
        let _ = cleaner.join();
    }
}

/// Removes the keys under prefix `name` from the shared Redis, and the
/// database of `mysql_url`.
async fn remove(name: &str, mysql_url: &str) {
    if let Ok(mut r) = async {
        redis::Client::open(REDIS_URL)?
            .get_multiplexed_async_connection_with_config(&redis_config())
            .await
    }
    .await
    {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{name}:*"))
            .query_async(&mut r)
            .await
            .unwrap_or_default();
        for chunk in keys.chunks(500) {
            let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query_async(&mut r).await;
        }
    }
    if let Ok(store) = Store::connect(mysql_url, 2).await {
        let _ = store.drop_database().await;
    }
}

impl TestEnv {
    /// A fresh prefix and database named after the test.
    pub fn new(test: &str) -> Self {
        init_tracing();
        let name = format!("fmt_{}_{:06x}", test, rand::random::<u32>() & 0xff_ffff);
        let mut s = Settings::default();
        s.redis.url = REDIS_URL.into();
        s.redis.prefix = name.clone();
        s.mysql.url = format!("{MYSQL_SERVER}/{name}");
        s.paths.schemas = repo().join("schemas");
        s.paths.processors = repo().join("processors");
        s.paths.migrations = repo().join("migrations");
        s.rollup.flush_interval_ms = 200;
        s.rollup.lease_ms = 2_000;
        s.rollup.idle_poll_ms = 20;
        s.server.shutdown_timeout_ms = 10_000;
        Self {
            name,
            settings: s,
            owns: true,
            cleaned: Default::default(),
        }
    }

    /// A copy of this env (same prefix, database and settings) that cleans
    /// nothing when dropped: for a task that outlives a borrow.
    pub fn handle(&self) -> TestEnv {
        TestEnv {
            name: self.name.clone(),
            settings: self.settings.clone(),
            owns: false,
            cleaned: Default::default(),
        }
    }

    pub async fn migrate(&self) {
        app::migrate(&self.settings)
            .await
            .expect("migrations apply");
    }

    pub async fn store(&self) -> Store {
        Store::connect(&self.settings.mysql.url, 4)
            .await
            .expect("mysql")
    }

    /// Starts `serve` in-process on an ephemeral port.
    pub async fn start(&self, roles: &str) -> Server {
        start_with(self.settings.clone(), roles).await
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(REDIS_URL)
            .expect("url")
            .get_multiplexed_async_connection_with_config(&redis_config())
            .await
            .expect("redis")
    }

    /// Writes `settings` as a TOML file (for child processes).
    pub fn write_config(&self, dir: &Path) -> PathBuf {
        let p = dir.join("flowmeter.toml");
        std::fs::write(&p, toml::to_string(&self.settings).expect("toml")).expect("write config");
        p
    }

    /// Removes the test's keys and database now (the drop does it
    /// otherwise); a handle's cleanup does nothing.
    pub async fn cleanup(&self) {
        if self.owns && !self.cleaned.swap(true, std::sync::atomic::Ordering::SeqCst) {
            remove(&self.name, &self.settings.mysql.url).await;
        }
    }
}

pub async fn start_with(settings: Settings, roles: &str) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let roles: Roles = roles.parse().expect("roles");
    let token = shutdown.clone();
    let handle = tokio::spawn(async move {
        app::serve(settings, roles, Some(listener), token)
            .await
            .expect("serve runs");
    });
    let server = Server {
        addr,
        shutdown,
        handle,
    };
    let client = http_client();
    wait_until(Duration::from_secs(20), || {
        let c = client.clone();
        let url = server.url("/healthz");
        async move { c.get(url).send().await.is_ok() }
    })
    .await;
    // serve listens before it connects, answering a `start` check until
    // its first attempt ends: wait for the roles (or for what it waits for)
    wait_until(Duration::from_secs(20), || {
        let c = client.clone();
        let url = server.url("/health/ready");
        async move {
            let Ok(r) = c.get(url).send().await else {
                return false;
            };
            !r.text()
                .await
                .unwrap_or_default()
                .contains(r#""name":"start""#)
        }
    })
    .await;
    server
}

/// A server running in this process.
pub struct Server {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<()>,
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(20), self.handle).await;
    }
}

/// Logs of the code under test, shown for failing tests; `RUST_LOG` picks the level.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// The tests' HTTP client, with timeouts, so a server that accepts but never
/// answers fails the test instead of hanging it. It lets an idle connection
/// go after 5 s, before the server's keep-alive timeout
/// (`server.header_read_timeout_ms`, 10 s) closes it: a request sent on a
/// connection the server is closing at that moment fails with "incomplete
/// message", which a loaded machine's slow rounds made likely.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// Polls `f` until it returns true; panics after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One integer from MySQL (e.g. `SELECT SUM(requests) FROM http_hourly`); NULL → 0.
pub async fn scalar(store: &Store, sql: &str) -> i64 {
    let v: Option<f64> = sqlx::query_scalar(&format!("SELECT CAST(({sql}) AS DOUBLE)"))
        .fetch_one(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    v.unwrap_or(0.0) as i64
}

/// Copies `from` into `to` (created), subdirectories included.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir").flatten() {
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}

/// Points the env at copies of schemas/, migrations/ and processors/ in
/// `dir`, so a test can add definitions.
pub fn use_copied_definitions(env: &mut TestEnv, dir: &Path) {
    for d in ["schemas", "migrations", "processors"] {
        copy_dir(&repo().join(d), &dir.join(d));
    }
    env.settings.paths.schemas = dir.join("schemas");
    env.settings.paths.migrations = dir.join("migrations");
    env.settings.paths.processors = dir.join("processors");
}

/// Adds a second http rollup `late_rollup` (group `late`, tables
/// `late_hourly`/`late_daily`, same measures as http_rollup) to copied
/// definitions: an independent computation over the same events.
pub fn add_shadow_rollup(dir: &Path, start_from: &str) {
    std::fs::write(
        dir.join("migrations/0100_late_rollup.sql"),
        "CREATE TABLE late_hourly LIKE http_hourly;\nCREATE TABLE late_daily LIKE http_daily;\n",
    )
    .expect("migration");
    let def = std::fs::read_to_string(repo().join("processors/http_rollup.toml"))
        .expect("http_rollup.toml")
        .replace("name = \"http_rollup\"", "name = \"late_rollup\"")
        .replace(
            "group = \"rollup\"",
            &format!("group = \"late\"\nstart_from = \"{start_from}\""),
        )
        .replace("name = \"http_hourly\"", "name = \"late_hourly\"")
        .replace("name = \"http_daily\"", "name = \"late_daily\"");
    assert!(def.contains("late_daily") && def.contains("start_from"));
    std::fs::write(dir.join("processors/late_rollup.toml"), def).expect("processor");
}

/// Asserts two tables with the same columns hold the same rows.
pub async fn assert_same_rows(store: &Store, a: &str, b: &str) {
    let x = table_fingerprint(store, a).await;
    let y = table_fingerprint(store, b).await;
    assert!(!x.is_empty(), "{a} is empty");
    assert_eq!(x.len(), y.len(), "{a} vs {b}: row counts");
    for (r, s) in x.iter().zip(&y) {
        assert_eq!(r, s, "{a} vs {b}");
    }
}

/// Every row of `table` as one `|`-joined string (doubles rounded to 6
/// decimals, blobs in hex, NULL as `NULL`), sorted: two tables with the same
/// columns are equal iff their fingerprints are.
pub async fn table_fingerprint(store: &Store, table: &str) -> Vec<String> {
    let cols: Vec<(String, String)> = sqlx::query_as(
        "SELECT CAST(COLUMN_NAME AS CHAR), CAST(DATA_TYPE AS CHAR) FROM information_schema.COLUMNS
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
    )
    .bind(table)
    .fetch_all(store.pool())
    .await
    .expect("columns");
    assert!(!cols.is_empty(), "table {table} has no columns");
    let exprs: Vec<String> = cols
        .iter()
        .map(|(c, t)| {
            let e = match t.as_str() {
                "double" | "float" | "decimal" => format!("ROUND(`{c}`, 6)"),
                t if t.contains("blob") || t.contains("binary") => format!("HEX(`{c}`)"),
                _ => format!("`{c}`"),
            };
            format!("IFNULL(CAST({e} AS CHAR), 'NULL')")
        })
        .collect();
    let mut rows: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT CONCAT_WS('|', {}) FROM `{table}`",
        exprs.join(", ")
    ))
    .fetch_all(store.pool())
    .await
    .expect("rows");
    rows.sort();
    rows
}

/// Runs the `flowmeter` binary with `--config config` and `args`.
pub fn cli(config: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_flowmeter"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run flowmeter")
}

/// Like [`cli`], asserting success; returns stdout.
pub fn cli_ok(config: &Path, args: &[&str]) -> String {
    let out = cli(config, args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "flowmeter {args:?} failed:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The server's `/metrics` text.
pub async fn metrics_text(client: &reqwest::Client, server: &Server) -> String {
    client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// The value of counter `name` in the server's `/metrics` (0 when absent).
pub async fn metric(client: &reqwest::Client, server: &Server, name: &str) -> f64 {
    let text = metrics_text(client, server).await;
    flowmeter::telemetry::metrics::value_in(&text, name).unwrap_or(0.0)
}

/// GETs `url` and decodes the JSON reply.
pub async fn get_json(client: &reqwest::Client, url: String) -> serde_json::Value {
    client
        .get(url)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json reply")
}

/// POSTs an NDJSON body; returns (status, body).
pub async fn post_ndjson(
    client: &reqwest::Client,
    url: &str,
    body: String,
) -> (u16, serde_json::Value) {
    let r = client
        .post(url)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let v = r.json().await.unwrap_or(serde_json::Value::Null);
    (status, v)
}

/// A valid http event at `ts_ms` (varying fields derived from `i`).
pub fn http_event(i: u64, ts_ms: i64) -> serde_json::Value {
    serde_json::json!({
        "kind": "http", "ts": ts_ms, "service": format!("svc{}", i % 3),
        "endpoint": format!("/api/e{}/:id", i % 5), "method": if i % 4 == 0 { "POST" } else { "GET" },
        "status": if i % 17 == 0 { 503 } else if i % 11 == 0 { 404 } else { 200 },
        "req_bytes": 100 + i % 50, "resp_bytes": 1000 + (i * 37) % 5000,
        "duration_ms": 1.0 + (i % 100) as f64 * 0.5, "user_id": format!("u{}", i % 40)
    })
}

/// A valid webrtc sample at `ts_ms` (varying fields derived from `i`).
pub fn webrtc_event(i: u64, ts_ms: i64) -> serde_json::Value {
    serde_json::json!({
        "kind": "webrtc", "ts": ts_ms, "meeting_id": format!("m{}", i % 4),
        "peer_id": format!("p{}", i % 7), "bytes_sent": 1000 + i, "bytes_received": 2000,
        "rtt_ms": 40.0, "jitter_ms": 3.0, "packet_loss": 0.0, "candidate_type": "host"
    })
}

/// POSTs http events `ids` (see [`http_event`]) in requests of 500, their
/// `ts` spread over `spread_ms` from `t0`; asserts each is accepted.
pub async fn post_http_range(
    client: &reqwest::Client,
    url: &str,
    ids: std::ops::Range<u64>,
    t0: i64,
    spread_ms: i64,
) {
    let mut i = ids.start;
    while i < ids.end {
        let end = (i + 500).min(ids.end);
        let body: Vec<String> = (i..end)
            .map(|n| http_event(n, t0 + (n as i64 * 7_919) % spread_ms).to_string())
            .collect();
        let (code, reply) = post_ndjson(client, url, body.join("\n")).await;
        assert_eq!(code, 202, "{reply}");
        i = end;
    }
}

/// Entries in every shard stream of both kinds (`XLEN`), on the Redis
/// `conn` is connected to (the shared one, or a private server).
pub async fn stream_total_on(conn: &mut redis::aio::MultiplexedConnection, env: &TestEnv) -> i64 {
    let mut total = 0i64;
    for kind in ["http", "webrtc"] {
        for i in 0..env.settings.redis.shards {
            let n: i64 = redis::cmd("XLEN")
                .arg(format!("{}:{{{kind}:{i}}}", env.name))
                .query_async(conn)
                .await
                .expect("xlen");
            total += n;
        }
    }
    total
}

/// Every entry of each shard of `kind`, in stream order: (stream key, id, `data`).
pub async fn shard_entries(env: &TestEnv, kind: &str) -> Vec<Vec<(String, String, String)>> {
    let mut r = env.redis().await;
    let mut out = Vec::new();
    for i in 0..env.settings.redis.shards {
        let key = format!("{}:{{{kind}:{i}}}", env.name);
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .query_async(&mut r)
            .await
            .expect("xrange");
        out.push(
            entries
                .into_iter()
                .filter_map(|(id, fields)| {
                    let (_, d) = fields.into_iter().find(|(k, _)| k == "data")?;
                    Some((key.clone(), id, d))
                })
                .collect(),
        );
    }
    out
}

/// The `data` of every entry of each shard of `kind`, in stream order.
pub async fn stream_events(env: &TestEnv, kind: &str) -> Vec<Vec<serde_json::Value>> {
    shard_entries(env, kind)
        .await
        .into_iter()
        .map(|shard| {
            shard
                .into_iter()
                .map(|(_, _, d)| serde_json::from_str(&d).expect("data is JSON"))
                .collect()
        })
        .collect()
}

/// A TCP forwarder that counts the bytes going each way (client → upstream,
/// upstream → client). `listen` may name a fixed address (e.g. one a client
/// was already pointed at, to make a "server" come back). While
/// [`TcpProxy::hold_replies`] is on, upstream's answers are held back (the
/// upstream has done the work; the client does not hear of it).
pub struct TcpProxy {
    pub addr: SocketAddr,
    pub up: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub down: std::sync::Arc<std::sync::atomic::AtomicU64>,
    hold: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(listen: &str, upstream: SocketAddr) -> TcpProxy {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind(listen).await.expect("proxy bind");
        let addr = listener.local_addr().expect("addr");
        let up = Arc::new(AtomicU64::new(0));
        let down = Arc::new(AtomicU64::new(0));
        let hold = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (u, d, h) = (up.clone(), down.clone(), hold.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let (u, d, h) = (u.clone(), d.clone(), h.clone());
                tokio::spawn(async move {
                    let a = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n) = cr.read(&mut buf).await {
                            if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            u.fetch_add(n as u64, Ordering::SeqCst);
                        }
                    };
                    let b = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n) = sr.read(&mut buf).await {
                            while h.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            if n == 0 || cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            d.fetch_add(n as u64, Ordering::SeqCst);
                        }
                    };
                    // Either side closing ends the connection (a client abort
                    // closes the upstream side too).
                    tokio::select! { _ = a => {}, _ = b => {} }
                });
            }
        });
        TcpProxy {
            addr,
            up,
            down,
            hold,
            task,
        }
    }

    /// Holds back (`true`) or releases upstream's replies.
    pub fn hold_replies(&self, on: bool) {
        self.hold.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// (client → upstream, upstream → client) bytes so far.
    pub fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        (
            self.up.load(Ordering::SeqCst),
            self.down.load(Ordering::SeqCst),
        )
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A consumer group's figures summed over every shard of both kinds:
/// (pending, lag), from `XINFO GROUPS`.
pub async fn group_figures(env: &TestEnv, group: &str) -> (u64, u64) {
    let mut r = env.redis().await;
    let (mut pending, mut lag) = (0, 0);
    for kind in ["http", "webrtc"] {
        for i in 0..env.settings.redis.shards {
            let key = format!("{}:{{{kind}:{i}}}", env.name);
            let groups: redis::Value = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&key)
                .query_async(&mut r)
                .await
                .unwrap_or(redis::Value::Nil);
            let redis::Value::Array(groups) = groups else {
                continue;
            };
            for g in groups {
                let fields: std::collections::HashMap<String, redis::Value> = match g {
                    redis::Value::Array(kv) => kv
                        .chunks(2)
                        .filter_map(|c| match c {
                            [redis::Value::BulkString(k), v] => {
                                Some((String::from_utf8_lossy(k).into_owned(), v.clone()))
                            }
                            _ => None,
                        })
                        .collect(),
                    _ => continue,
                };
                let ours = matches!(fields.get("name"), Some(redis::Value::BulkString(n)) if n == group.as_bytes());
                if !ours {
                    continue;
                }
                if let Some(redis::Value::Int(n)) = fields.get("pending") {
                    pending += *n as u64;
                }
                if let Some(redis::Value::Int(n)) = fields.get("lag") {
                    lag += *n as u64;
                }
            }
        }
    }
    (pending, lag)
}

/// Two tokens: `read` with the read scope and `ingest` with the ingest scope.
pub fn read_and_ingest_tokens(read: &str, ingest: &str) -> Vec<flowmeter::config::TokenConfig> {
    let token = |name: &str, token: &str, scope: &str| flowmeter::config::TokenConfig {
        name: name.into(),
        token: token.into(),
        scopes: vec![scope.into()],
        ..Default::default()
    };
    vec![
        token("reader", read, "read"),
        token("ingester", ingest, "ingest"),
    ]
}

/// One value of /proc/self/status in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(field: &str) -> u64 {
    flowmeter::telemetry::process::status_kb("self", &format!("{field}:")).expect("status field")
}

/// Runs the ignored test `name` (`module::test`) of the running test binary
/// in a process of its own, so no other test adds to the process-wide
/// figures it measures (RSS, gauges); asserts it ran and passed.
pub fn run_alone(name: &str) {
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([name, "--exact", "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .output()
        .expect("run the probe");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "the probe failed:\n{text}");
    assert!(text.contains("1 passed"), "the probe did not run:\n{text}");
}

/// Whether database `name` exists on the shared server (asked without
/// opening it, so asking creates nothing).
pub async fn database_exists(name: &str) -> bool {
    use sqlx::Connection;
    let mut conn = sqlx::MySqlConnection::connect(MYSQL_SERVER)
        .await
        .expect("mysql server");
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
    )
    .bind(name)
    .fetch_one(&mut conn)
    .await
    .expect("schemata");
    n > 0
}

/// Creates database `name` with no tables (an unmigrated one).
pub async fn create_empty_database(name: &str) {
    use sqlx::{Connection, Executor};
    let mut conn = sqlx::MySqlConnection::connect(MYSQL_SERVER)
        .await
        .expect("mysql server");
    conn.execute(format!("CREATE DATABASE `{name}`").as_str())
        .await
        .expect("create database");
}

/// The Redis keys under `prefix` (`{prefix}:*`).
pub async fn keys_under(env: &TestEnv, prefix: &str) -> Vec<String> {
    let mut r = env.redis().await;
    redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut r)
        .await
        .expect("keys")
}

/// A child process that is killed (SIGKILL) and reaped when dropped, so a
/// failing test leaves none behind.
pub struct ChildGuard(pub std::process::Child);

impl ChildGuard {
    /// Still running?
    pub fn running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }

    /// Asks the child to stop with SIGTERM, as `kill` or Kubernetes would,
    /// and returns how it exited.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {}", self.0.id());
        self.0.wait().expect("wait for the child")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `flowmeter --config CONFIG serve --roles ROLES --listen LISTEN` child
/// (the crate's binary), its warnings on the test's stderr.
pub fn spawn_flowmeter(config: &Path, roles: &str, listen: &str) -> ChildGuard {
    ChildGuard(
        std::process::Command::new(env!("CARGO_BIN_EXE_flowmeter"))
            .args(["--config", &config.display().to_string()])
            .args(["serve", "--roles", roles, "--listen", listen])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            // the children's warnings show with the test's output when it fails
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("spawn flowmeter"),
    )
}

/// A crash loop of a dead worker: `group` (created at the start of
/// `stream` if missing) reads `count` entries as consumer `consumer` and
/// re-reads them from its pending list `rereads` times, never
/// acknowledging, so each has `1 + rereads` deliveries.
pub async fn crash_loop(
    r: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    group: &str,
    consumer: &str,
    count: usize,
    rereads: usize,
) {
    let _: Result<(), _> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(r)
        .await;
    for from in std::iter::once(">").chain(std::iter::repeat_n("0", rereads)) {
        let _: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(stream)
            .arg(from)
            .query_async(r)
            .await
            .expect("xreadgroup");
    }
}

/// A single number from ClickHouse at `url` (TabSeparated), in `db`.
pub async fn clickhouse_number(url: &str, db: &str, sql: &str) -> u64 {
    let r = http_client()
        .post(format!("{url}/?database={db}"))
        .body(sql.to_string())
        .send()
        .await
        .expect("clickhouse answers");
    let text = r.text().await.expect("body");
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{sql}: {text}"))
}

/// Keeps deleting `group`'s lease of `{http:0}` (every 20–150 ms) until
/// `stop` is set, so two workers both believe they own the shard; returns
/// how often it did.
pub async fn lease_chaos(
    env: &TestEnv,
    group: &str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> JoinHandle<u32> {
    use rand::Rng;
    let lease = format!("{}:lease:{group}:{{http:0}}", env.name);
    let mut r = env.redis().await;
    tokio::spawn(async move {
        let mut steals = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let _: Result<(), _> = redis::cmd("DEL").arg(&lease).query_async(&mut r).await;
            steals += 1;
            let pause = rand::rng().random_range(20..150);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        steals
    })
}
