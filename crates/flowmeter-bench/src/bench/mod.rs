//! `flowmeter bench`: the end-to-end benchmark.
//!
//! Each run starts from an empty prefix and database, spawns two child
//! processes of the `flowmeter` binary next to this one (`serve --roles
//! ingest,api` and `serve --roles rollup`), posts pre-generated NDJSON batches with several
//! concurrent connections, and waits until MySQL holds every event. It then
//! checks the rollup totals against the generator's truth (a mismatch fails
//! the bench) and reports:
//!
//! - ingest events/s (first POST to last 202) and end-to-end events/s (first
//!   POST to the last event committed in MySQL);
//! - ingest latency p50/p99 per request;
//! - peak RSS (VmHWM) of the rollup worker and of the ingest process;
//! - MySQL commits per minute while draining (server-wide `Com_commit`);
//! - then, through a fresh rollup worker, a steady phase at `latency_share`
//!   (default 50 %) of that run's end-to-end rate: the time from XADD to the
//!   commit of the row (p50/p99, from the worker's own figures) and MySQL
//!   commits per minute at that rate (to set against the full-speed phase);
//! - as the reference, redis-benchmark's pipelined XADD rate for an entry of
//!   the same shape, measured in the same invocation, and the ratio.
//!
//! With `--idempotency-keys on`, every POST carries its own
//! `Idempotency-Key` (the idempotent write path); with `both`, each run is
//! made once without and once with keys, alternating, and the report sets
//! the two ingest rates side by side.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use indicatif::ProgressBar;
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::loadgen::{BarMaker, GenConfig, Generator, KindMix, Meter, Truth, TruthTable};
use flowmeter::config::Settings;
use flowmeter::sketch::DdSketch;
use flowmeter::store::Store;

pub mod cluster;
pub mod nodes;
pub mod ws;

use nodes::{masters, plain_redis};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Events per run.
    pub events: u64,
    /// Events per POST.
    pub batch: usize,
    /// Concurrent POSTs in flight.
    pub concurrency: usize,
    pub runs: usize,
    pub kind: KindMix,
    pub seed: u64,
    /// Key prefix and database name of the bench (wiped at each run).
    pub prefix: String,
    /// Entries of the redis-benchmark reference.
    pub reference_entries: u64,
    /// Give up when MySQL makes no progress for this long.
    pub stall_timeout: Duration,
    /// Latency phase: steady load at this share of the run's end-to-end rate…
    pub latency_share: f64,
    /// …for this long (zero skips the phase).
    pub latency_duration: Duration,
    /// Draws each phase's progress; `None` draws nothing.
    pub progress: Option<BarMaker>,
    /// Whether POSTs carry an `Idempotency-Key`.
    pub idempotency_keys: KeyMode,
}

/// Runs without, with, or alternately without and with `Idempotency-Key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyMode {
    Off,
    On,
    Both,
}

impl KeyMode {
    /// Whether each run of a round is keyed, in order.
    fn rounds(self) -> &'static [bool] {
        match self {
            KeyMode::Off => &[false],
            KeyMode::On => &[true],
            KeyMode::Both => &[false, true],
        }
    }
}

/// Figures of one run.
#[derive(Debug, Clone, Default)]
pub struct RunFigures {
    /// Whether its POSTs carried an `Idempotency-Key`.
    pub keyed: bool,
    pub events: u64,
    pub ingest_eps: f64,
    pub e2e_eps: f64,
    pub ingest_p50_ms: f64,
    pub ingest_p99_ms: f64,
    pub rollup_rss_mb: f64,
    pub ingest_rss_mb: f64,
    pub commits_per_min: f64,
    /// Latency phase: its steady rate, XADD-to-commit p50/p99 of its events,
    /// and MySQL commits/min during it.
    pub steady_eps: f64,
    pub xadd_to_row_p50_ms: f64,
    pub xadd_to_row_p99_ms: f64,
    pub steady_commits_per_min: f64,
}

/// Everything `bench` measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub runs: Vec<RunFigures>,
    pub reference_xadd_per_s: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Setup(String),
    #[error("the stack failed during the run: {0}")]
    Run(String),
    #[error("rollup totals differ from what was sent (the bench fails): {0}")]
    Mismatch(String),
    #[error(transparent)]
    Store(#[from] flowmeter::store::StoreError),
    #[error(transparent)]
    App(#[from] flowmeter::app::AppError),
}

/// Runs `opts.runs` runs and the reference measurement.
pub async fn run(base: &Settings, opts: &BenchOptions) -> Result<BenchReport, BenchError> {
    if opts.batch == 0 || opts.concurrency == 0 || opts.events == 0 {
        return Err(BenchError::Setup(
            "--events, --batch and --concurrency must be positive".into(),
        ));
    }
    // the server it measures is there: said now, not after generating
    server_exe()?;
    let settings = bench_settings(base, &opts.prefix)?;
    eprintln!("generating {} events (seed {})…", opts.events, opts.seed);
    let (bodies, truth, table) = generate(opts);
    let reference = reference_xadd(&settings, opts).await;
    if let Err(e) = &reference {
        eprintln!("reference not measured: {e}");
    }
    let mut runs = Vec::new();
    for i in 0..opts.runs.max(1) {
        for &keyed in opts.idempotency_keys.rounds() {
            let with = if keyed { " with Idempotency-Key" } else { "" };
            eprintln!("run {}/{}{with}", i + 1, opts.runs.max(1));
            runs.push(one_run(&settings, opts, &bodies, truth, &table, keyed).await?);
        }
    }
    Ok(BenchReport {
        runs,
        reference_xadd_per_s: reference.ok(),
    })
}

fn bench_settings(base: &Settings, prefix: &str) -> Result<Settings, BenchError> {
    if prefix.is_empty()
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(BenchError::Setup(format!(
            "--prefix {prefix:?}: use letters, digits and '_' (it names a database too)"
        )));
    }
    let mut s = base.clone();
    s.redis.prefix = prefix.to_string();
    let mut url =
        url::Url::parse(&s.mysql.url).map_err(|e| BenchError::Setup(format!("mysql.url: {e}")))?;
    url.set_path(prefix);
    s.mysql.url = url.to_string();
    Ok(s)
}

/// NDJSON bodies of `opts.batch` events, spread evenly over six hours of
/// 2026-03-01 so the tables get a realistic number of rows.
fn generate(opts: &BenchOptions) -> (Vec<Bytes>, Truth, TruthTable) {
    const T0: i64 = 1_772_323_200_000; // 2026-03-01T00:00:00Z
    const SPAN: i64 = 6 * 3_600_000;
    let mut g = Generator::new(GenConfig {
        seed: opts.seed,
        kind: opts.kind,
        ..GenConfig::default()
    });
    let step = (SPAN / opts.events.max(1) as i64).max(1);
    let mut bodies = Vec::new();
    let mut body = Vec::with_capacity(opts.batch * 320);
    let mut in_body = 0;
    let mut table = TruthTable::default();
    for i in 0..opts.events {
        let ev = g.next_event(T0 + (i as i64 * step) % SPAN);
        table.add(&ev);
        if in_body > 0 {
            body.push(b'\n');
        }
        // Serializing a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut body, &ev);
        in_body += 1;
        if in_body == opts.batch {
            bodies.push(Bytes::from(std::mem::take(&mut body)));
            in_body = 0;
        }
    }
    if in_body > 0 {
        bodies.push(Bytes::from(body));
    }
    (bodies, g.truth, table)
}

/// Wipes the bench's keys (on every master, on a cluster) and database and
/// applies the migrations.
async fn reset(settings: &Settings) -> Result<(), BenchError> {
    let pattern = format!("{}:*", settings.redis.prefix);
    for url in masters(settings).await? {
        let mut r = plain_redis(&url).await?;
        let keys: Vec<String> = {
            use futures::StreamExt;
            let iter: redis::AsyncIter<String> = redis::cmd("SCAN")
                .cursor_arg(0)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .clone()
                .iter_async(&mut r)
                .await
                .map_err(|e| BenchError::Setup(format!("SCAN: {e}")))?;
            iter.filter_map(|k| async move { k.ok() }).collect().await
        };
        for chunk in keys.chunks(500) {
            // one UNLINK per key: a cluster node's keys lie in many slots
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.cmd("UNLINK").arg(key).ignore();
            }
            let _: () = pipe
                .query_async(&mut r)
                .await
                .map_err(|e| BenchError::Setup(format!("UNLINK: {e}")))?;
        }
    }
    let store = Store::create_from_config(&settings.mysql, 2).await?;
    store.drop_database().await?;
    flowmeter::app::migrate(settings).await?;
    Ok(())
}

/// The child `flowmeter serve` processes: one with the ingest and api roles,
/// and rollup workers.
struct Stack {
    ingest: Child,
    rollups: Vec<Child>,
    url: String,
    config: TempConfig,
}

impl Stack {
    /// Starts `n` more rollup workers.
    fn add_rollups(&mut self, n: usize) -> Result<(), BenchError> {
        for _ in 0..n {
            let listen = format!("127.0.0.1:{}", free_port()?);
            self.rollups
                .push(spawn_serve(&self.config.0, "rollup", &listen)?);
        }
        Ok(())
    }

    /// An error when a rollup worker has exited.
    fn check_rollups(&mut self) -> Result<(), BenchError> {
        for w in &mut self.rollups {
            if let Ok(Some(status)) = w.try_wait() {
                return Err(BenchError::Run(format!("a rollup worker exited: {status}")));
            }
        }
        Ok(())
    }

    async fn kill(mut self) {
        let _ = self.ingest.kill().await;
        for w in &mut self.rollups {
            let _ = w.kill().await;
        }
    }
}

struct TempConfig(PathBuf);

impl TempConfig {
    /// Writes `settings` to a temporary TOML file (removed on drop) for children.
    fn write(settings: &Settings) -> Result<Self, BenchError> {
        let path = std::env::temp_dir().join(format!(
            "flowmeter-bench-{}-{}.toml",
            std::process::id(),
            rand::random::<u32>()
        ));
        let text = toml::to_string(settings)
            .map_err(|e| BenchError::Setup(format!("cannot write the bench config: {e}")))?;
        std::fs::write(&path, text)
            .map_err(|e| BenchError::Setup(format!("{}: {e}", path.display())))?;
        Ok(Self(path))
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn free_port() -> Result<u16, BenchError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| BenchError::Setup(format!("no free port: {e}")))
}

/// The `flowmeter` binary in the directory of this one (`flowmeter-bench`,
/// which `flowmeter bench` runs): the server the bench measures.
fn server_exe() -> Result<PathBuf, BenchError> {
    let this = std::env::current_exe()
        .map_err(|e| BenchError::Setup(format!("cannot find this binary: {e}")))?;
    let server = this.with_file_name(format!("flowmeter{}", std::env::consts::EXE_SUFFIX));
    if !server.is_file() {
        return Err(BenchError::Setup(format!(
            "the bench runs `flowmeter serve` from {}, which is missing: build it with \
             `cargo build --release` (make build does)",
            server.display()
        )));
    }
    Ok(server)
}

fn spawn_serve(config: &Path, roles: &str, listen: &str) -> Result<Child, BenchError> {
    Command::new(server_exe()?)
        .arg("--config")
        .arg(config)
        .args(["serve", "--roles", roles, "--listen", listen])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BenchError::Setup(format!("cannot start `serve --roles {roles}`: {e}")))
}

/// The ingest process (answering `/healthz`) and `rollups` rollup workers.
async fn start_stack(
    settings: &Settings,
    http: &reqwest::Client,
    rollups: usize,
) -> Result<Stack, BenchError> {
    let config = TempConfig::write(settings)?;
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let ingest = spawn_serve(&config.0, "ingest,api", &listen)?;
    let url = format!("http://{listen}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get(format!("{url}/healthz")).send().await.is_err() {
        if Instant::now() > deadline {
            return Err(BenchError::Setup(
                "the ingest process did not answer /healthz within 30 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut stack = Stack {
        ingest,
        rollups: Vec::new(),
        url,
        config,
    };
    stack.add_rollups(rollups)?;
    Ok(stack)
}

/// SIGTERM (graceful: flush, ack, release leases) and wait.
async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    if tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// A memory field (`VmRSS:`, `VmHWM:`) of process `pid`, from /proc (Linux), in MB.
fn proc_mb(pid: u32, field: &str) -> f64 {
    flowmeter::telemetry::process::status_kb(&pid.to_string(), field)
        .map_or(0.0, |kb| kb as f64 / 1024.0)
}

/// CPU time (user + system) process `pid` has used, in seconds, from
/// /proc (Linux); `None` when it cannot be read.
fn cpu_secs(pid: u32) -> Option<f64> {
    flowmeter::telemetry::process::cpu_secs(&pid.to_string())
}

/// Peak resident set of a child, in MB.
fn peak_rss_mb(child: &Child) -> f64 {
    child.id().map_or(0.0, |pid| proc_mb(pid, "VmHWM:"))
}

async fn commits(store: &Store) -> Result<f64, BenchError> {
    let row: (String, String) = sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Com_commit'")
        .fetch_one(store.pool())
        .await
        .map_err(|e| BenchError::Run(format!("Com_commit: {e}")))?;
    Ok(row.1.parse().unwrap_or(0.0))
}

/// Totals in the rollup tables, in the order of [`Truth`]'s fields.
async fn totals(store: &Store, hourly: bool) -> Result<[u64; 6], BenchError> {
    let (h, w) = if hourly {
        ("http_hourly", "webrtc_hourly")
    } else {
        ("http_daily", "webrtc_daily")
    };
    let sql = format!(
        "SELECT \
         CAST(COALESCE((SELECT SUM(requests) FROM {h}),0) AS UNSIGNED), \
         CAST(COALESCE((SELECT SUM(bytes_in) FROM {h}),0) AS UNSIGNED), \
         CAST(COALESCE((SELECT SUM(bytes_out) FROM {h}),0) AS UNSIGNED), \
         CAST(COALESCE((SELECT SUM(samples) FROM {w}),0) AS UNSIGNED), \
         CAST(COALESCE((SELECT SUM(bytes_sent) FROM {w}),0) AS UNSIGNED), \
         CAST(COALESCE((SELECT SUM(bytes_received) FROM {w}),0) AS UNSIGNED)"
    );
    let r: (u64, u64, u64, u64, u64, u64) = sqlx::query_as(&sql)
        .fetch_one(store.pool())
        .await
        .map_err(|e| BenchError::Run(format!("reading totals: {e}")))?;
    Ok([r.0, r.1, r.2, r.3, r.4, r.5])
}

fn truth_array(t: &Truth) -> [u64; 6] {
    [
        t.http_requests,
        t.http_bytes_in,
        t.http_bytes_out,
        t.webrtc_samples,
        t.webrtc_bytes_sent,
        t.webrtc_bytes_received,
    ]
}

/// A progress bar of `len` steps (hidden without a `BarMaker`).
fn spinner(progress: Option<BarMaker>, len: u64, what: &str) -> ProgressBar {
    progress.map_or_else(ProgressBar::hidden, |bar| {
        bar(Some(len), Meter::Phase(what))
    })
}

async fn one_run(
    settings: &Settings,
    opts: &BenchOptions,
    bodies: &[Bytes],
    truth: Truth,
    table: &TruthTable,
    keyed: bool,
) -> Result<RunFigures, BenchError> {
    reset(settings).await?;
    let http = http_client(opts.concurrency)?;
    let mut stack = start_stack(settings, &http, 1).await?;
    let store = Store::from_config(&settings.mysql, 2).await?;
    let commits_before = commits(&store).await?;

    let total = truth.events();
    let start = Instant::now();
    let how = Sending {
        concurrency: opts.concurrency,
        keyed,
        events: total,
    };
    let posted = post_all(&http, &stack, bodies, how, opts.progress).await?;
    if posted.accepted != total {
        return Err(BenchError::Run(format!(
            "{} of {total} events accepted",
            posted.accepted
        )));
    }
    wait_committed(&store, &mut stack, total, opts.stall_timeout, opts.progress).await?;
    let e2e_secs = start.elapsed().as_secs_f64();
    let commits_after = commits(&store).await?;
    let mut figures = RunFigures {
        keyed,
        events: total,
        ingest_eps: total as f64 / posted.secs,
        e2e_eps: total as f64 / e2e_secs,
        ingest_p50_ms: posted.latency.quantile(0.5).unwrap_or(0.0),
        ingest_p99_ms: posted.latency.quantile(0.99).unwrap_or(0.0),
        rollup_rss_mb: stack.rollups.iter().map(peak_rss_mb).fold(0.0, f64::max),
        ingest_rss_mb: peak_rss_mb(&stack.ingest),
        commits_per_min: (commits_after - commits_before) / (e2e_secs / 60.0),
        ..RunFigures::default()
    };
    check_truth(&store, &truth, table).await?;
    if !opts.latency_duration.is_zero() {
        latency_phase(settings, opts, &mut stack, &store, total, &mut figures).await?;
    }
    stack.kill().await;
    Ok(figures)
}

fn http_client(concurrency: usize) -> Result<reqwest::Client, BenchError> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| BenchError::Setup(format!("http client: {e}")))
}

/// What [`post_all`] measured.
struct Posted {
    /// Events the 202s accepted.
    accepted: u64,
    /// First POST to the last 202.
    secs: f64,
    /// Per request, in ms.
    latency: DdSketch,
}

/// How [`post_all`] sends.
#[derive(Debug, Clone, Copy)]
struct Sending {
    /// Concurrent POSTs.
    concurrency: usize,
    /// Each POST with its own `Idempotency-Key`.
    keyed: bool,
    /// Events in all bodies (the progress bar's length).
    events: u64,
}

/// POSTs every body to the stack's ingest process; any answer but 202
/// fails the run.
async fn post_all(
    http: &reqwest::Client,
    stack: &Stack,
    bodies: &[Bytes],
    how: Sending,
    progress: Option<BarMaker>,
) -> Result<Posted, BenchError> {
    let Sending {
        concurrency,
        keyed,
        events,
    } = how;
    let sent_bar = spinner(progress, events, "ingested");
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let bodies: Arc<Vec<Bytes>> = Arc::new(bodies.to_vec());
    let url = format!("{}/v1/events", stack.url);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (next, accepted, bodies, http, url, pb) = (
            next.clone(),
            accepted.clone(),
            bodies.clone(),
            http.clone(),
            url.clone(),
            sent_bar.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = DdSketch::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let t = Instant::now();
                let mut req = http
                    .post(&url)
                    .header("content-type", "application/x-ndjson");
                if keyed {
                    req = req.header("idempotency-key", format!("bench-{i}"));
                }
                let resp = req
                    .body(body.clone())
                    .send()
                    .await
                    .map_err(|e| format!("POST: {e}"))?;
                let status = resp.status();
                let reply: Value = resp.json().await.unwrap_or(Value::Null);
                if status.as_u16() != 202 {
                    return Err(format!("POST answered {status}: {reply}"));
                }
                lat.add(t.elapsed().as_secs_f64() * 1000.0);
                let n = reply["accepted"].as_u64().unwrap_or(0);
                accepted.fetch_add(n, Ordering::Relaxed);
                pb.inc(n);
            }
            Ok::<DdSketch, String>(lat)
        }));
    }
    let mut latency = DdSketch::new();
    for t in tasks {
        let sketch = t
            .await
            .map_err(|e| BenchError::Run(format!("sender task: {e}")))?
            .map_err(BenchError::Run)?;
        latency.merge(&sketch);
    }
    let secs = start.elapsed().as_secs_f64();
    sent_bar.finish_and_clear();
    Ok(Posted {
        accepted: accepted.load(Ordering::Relaxed),
        secs,
        latency,
    })
}

/// Waits until the hourly tables hold `total` events; fails when MySQL makes
/// no progress for `stall` or a rollup worker exits.
async fn wait_committed(
    store: &Store,
    stack: &mut Stack,
    total: u64,
    stall: Duration,
    progress: Option<BarMaker>,
) -> Result<(), BenchError> {
    let commit_bar = spinner(progress, total, "committed");
    let mut last = 0;
    let mut last_progress = Instant::now();
    loop {
        let got = totals(store, true).await?;
        let done = got[0] + got[3];
        commit_bar.set_position(done.min(total));
        if done >= total {
            break;
        }
        if done > last {
            last = done;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > stall {
            return Err(BenchError::Run(format!(
                "MySQL stopped at {done} of {total} events for {stall:?}"
            )));
        }
        stack.check_rollups()?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    commit_bar.finish_and_clear();
    Ok(())
}

/// Lets a late flush land (there must be none: the totals already match),
/// then checks every sum of the hourly and daily tables and every hourly
/// row against what was sent.
async fn check_truth(store: &Store, truth: &Truth, table: &TruthTable) -> Result<(), BenchError> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let want = truth_array(truth);
    for hourly in [true, false] {
        let got = totals(store, hourly).await?;
        if got != want {
            return Err(BenchError::Mismatch(format!(
                "{} tables: got {got:?}, sent {want:?} (requests, bytes_in, bytes_out, samples, bytes_sent, bytes_received)",
                if hourly { "hourly" } else { "daily" }
            )));
        }
    }
    let diffs = table
        .compare(store)
        .await
        .map_err(|e| BenchError::Run(format!("comparing with the truth: {e}")))?;
    if let Some(first) = diffs.first() {
        return Err(BenchError::Mismatch(format!(
            "{} hourly rows differ from the truth, first: {first}",
            diffs.len()
        )));
    }
    Ok(())
}

/// Steady load at `latency_share` of the measured rate through a fresh
/// rollup worker: XADD-to-commit latency, commits/min, and the truth check.
async fn latency_phase(
    settings: &Settings,
    opts: &BenchOptions,
    stack: &mut Stack,
    store: &Store,
    already: u64,
    figures: &mut RunFigures,
) -> Result<(), BenchError> {
    // A fresh worker, so its latency figures cover this phase only; SIGTERM
    // releases the leases at once.
    for w in &mut stack.rollups {
        terminate(w).await;
    }
    stack.rollups.clear();
    forget_worker_stats(settings).await?;
    stack.add_rollups(1)?;
    let rate = (figures.e2e_eps * opts.latency_share).max(100.0);
    let load = crate::loadgen::LoadOptions {
        rate,
        duration: Some(opts.latency_duration),
        kind: opts.kind,
        batch: opts.batch.min((rate / 20.0).max(1.0) as usize),
        concurrency: opts.concurrency,
        seed: opts.seed + 1,
        target: crate::loadgen::Target::Api(stack.url.clone()),
        truth: None,
        progress: opts.progress,
        incident: None,
        hot: None,
    };
    let commits_before = commits(store).await?;
    let start = Instant::now();
    let report = crate::loadgen::run(settings, &load, tokio_util::sync::CancellationToken::new())
        .await
        .map_err(|e| BenchError::Run(format!("latency phase: {e}")))?;
    if report.failed + report.rejected > 0 {
        return Err(BenchError::Run(format!(
            "latency phase: {} events failed or were rejected: {}",
            report.failed + report.rejected,
            report.first_error.unwrap_or_default()
        )));
    }
    let want = already + report.accepted;
    let deadline = Instant::now() + opts.stall_timeout;
    loop {
        let got = totals(store, true).await?;
        if got[0] + got[3] >= want {
            break;
        }
        if Instant::now() > deadline {
            return Err(BenchError::Run(format!(
                "latency phase: MySQL holds {} of {want} events",
                got[0] + got[3]
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    figures.steady_eps = report.rate();
    figures.steady_commits_per_min = (commits(store).await? - commits_before) / (secs / 60.0);
    let diffs = report
        .truth
        .compare(store)
        .await
        .map_err(|e| BenchError::Run(format!("comparing with the truth: {e}")))?;
    if let Some(first) = diffs.first() {
        return Err(BenchError::Mismatch(format!(
            "latency phase: {} rows differ, first: {first}",
            diffs.len()
        )));
    }
    // The workers publish their stats after each flush; wait for the last one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (p50, p99) = worker_latency(settings).await?;
    figures.xadd_to_row_p50_ms = p50;
    figures.xadd_to_row_p99_ms = p99;
    Ok(())
}

const ROLLUPS: [&str; 2] = ["http_rollup", "webrtc_rollup"];

/// The bench's Redis as the server connects to it (one server or a cluster).
async fn bench_redis(settings: &Settings) -> Result<flowmeter::stream::Redis, BenchError> {
    flowmeter::stream::connect(&settings.redis)
        .await
        .map_err(|e| BenchError::Run(format!("Redis: {e}")))
}

/// Drops the published stats of stopped workers, so the next figures are the
/// fresh worker's alone.
async fn forget_worker_stats(settings: &Settings) -> Result<(), BenchError> {
    let redis = bench_redis(settings).await?;
    let mut r = redis.conn.clone();
    let keys = flowmeter::stream::Keys::new(settings.redis.prefix.clone(), settings.redis.shards);
    for name in ROLLUPS {
        let _: () = redis::cmd("DEL")
            .arg(keys.stats(name))
            .query_async(&mut r)
            .await
            .map_err(|e| BenchError::Run(format!("worker stats: {e}")))?;
    }
    Ok(())
}

/// The largest XADD-to-commit p50 and p99 among the rollup workers' stats.
async fn worker_latency(settings: &Settings) -> Result<(f64, f64), BenchError> {
    let redis = bench_redis(settings).await?;
    let mut r = redis.conn.clone();
    let keys = flowmeter::stream::Keys::new(settings.redis.prefix.clone(), settings.redis.shards);
    let (mut p50, mut p99) = (0.0f64, 0.0f64);
    for name in ROLLUPS {
        let raw: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(keys.stats(name))
            .query_async(&mut r)
            .await
            .map_err(|e| BenchError::Run(format!("worker stats: {e}")))?;
        for v in raw.values() {
            if let Ok(s) = serde_json::from_str::<flowmeter::processor::RunnerStats>(v) {
                p50 = p50.max(s.xadd_to_commit_p50_ms);
                p99 = p99.max(s.xadd_to_commit_p99_ms);
            }
        }
    }
    Ok((p50, p99))
}

/// redis-benchmark's pipelined XADD rate for an entry shaped like ours; on
/// a cluster (`--cluster`) into one stream per master (`{tag}` stands for a
/// hash tag of each node's).
async fn reference_xadd(settings: &Settings, opts: &BenchOptions) -> Result<f64, String> {
    let url = url::Url::parse(&settings.redis.url).map_err(|e| e.to_string())?;
    let host = url.host_str().unwrap_or("127.0.0.1").to_string();
    let port = url.port().unwrap_or(6379).to_string();
    let mut g = Generator::new(GenConfig {
        seed: opts.seed,
        kind: KindMix::Http,
        ..GenConfig::default()
    });
    let payload = g.next_event(1_772_323_200_000).to_string();
    let cluster = settings.redis.cluster;
    let key = match cluster {
        true => format!("{}:reference:{{tag}}", settings.redis.prefix),
        false => format!("{}:reference", settings.redis.prefix),
    };
    let mode = if cluster { "--cluster " } else { "" };
    eprintln!(
        "reference: redis-benchmark {mode}-P 64 -c 4 -n {} XADD … ({} byte entry)",
        opts.reference_entries,
        payload.len()
    );
    let mut cmd = Command::new("redis-benchmark");
    if cluster {
        cmd.arg("--cluster");
    }
    let out = cmd
        .args(["-h", &host, "-p", &port, "-q", "-P", "64", "-c", "4", "-n"])
        .arg(opts.reference_entries.to_string())
        .args([
            "XADD", &key, "*", "kind", "http", "v", "1", "data", &payload,
        ])
        .output()
        .await
        .map_err(|e| format!("cannot run redis-benchmark (apt-get install redis-tools): {e}"))?;
    // on a cluster the streams are the next reset's to remove
    if let (false, Ok(mut r)) = (cluster, plain_redis(&settings.redis.url).await) {
        let _: Result<(), _> = redis::cmd("DEL").arg(&key).query_async(&mut r).await;
    }
    parse_redis_benchmark(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| "could not read redis-benchmark's output".to_string())
}

/// The requests-per-second figure of `redis-benchmark -q` output.
fn parse_redis_benchmark(out: &str) -> Option<f64> {
    // The line may carry progress output separated by '\r'.
    let line = out.rsplit('\r').next().unwrap_or(out);
    let before = line.split(" requests per second").next()?;
    before.rsplit([' ', ':']).next()?.trim().parse().ok()
}

/// The median of `v` (0 when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl BenchReport {
    /// The median of one figure over the runs with (`keyed`) or without keys.
    pub fn median(&self, keyed: bool, f: impl Fn(&RunFigures) -> f64) -> f64 {
        median(
            self.runs
                .iter()
                .filter(|r| r.keyed == keyed)
                .map(f)
                .collect(),
        )
    }

    /// The medians of every figure over the runs with (`keyed`) or without keys.
    pub fn medians(&self, keyed: bool) -> RunFigures {
        let median = |f: fn(&RunFigures) -> f64| self.median(keyed, f);
        RunFigures {
            keyed,
            events: self.runs.first().map(|f| f.events).unwrap_or(0),
            ingest_eps: median(|f| f.ingest_eps),
            e2e_eps: median(|f| f.e2e_eps),
            ingest_p50_ms: median(|f| f.ingest_p50_ms),
            ingest_p99_ms: median(|f| f.ingest_p99_ms),
            rollup_rss_mb: median(|f| f.rollup_rss_mb),
            ingest_rss_mb: median(|f| f.ingest_rss_mb),
            commits_per_min: median(|f| f.commits_per_min),
            steady_eps: median(|f| f.steady_eps),
            xadd_to_row_p50_ms: median(|f| f.xadd_to_row_p50_ms),
            xadd_to_row_p99_ms: median(|f| f.xadd_to_row_p99_ms),
            steady_commits_per_min: median(|f| f.steady_commits_per_min),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_redis_benchmark_output() {
        let out = "XADD fm:ref * kind http: rps=0.0 (overall: nan) avg_msec=nan\r\
                   XADD fm:ref * kind http v 1 data {\"a\":1}: 412371.12 requests per second, p50=0.559 msec\n";
        assert_eq!(parse_redis_benchmark(out), Some(412371.12));
        assert_eq!(parse_redis_benchmark("garbage"), None);
    }

    #[test]
    fn reads_this_process_cpu_time() {
        let pid = std::process::id();
        let spent = cpu_secs(pid).expect("/proc/self/stat");
        assert!(spent >= 0.0);
        assert_eq!(cpu_secs(u32::MAX), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }

    #[test]
    fn bodies_hold_every_event_once() {
        let opts = BenchOptions {
            events: 2_500,
            batch: 1_000,
            concurrency: 1,
            runs: 1,
            kind: KindMix::Mixed,
            seed: 7,
            prefix: "x".into(),
            reference_entries: 1,
            stall_timeout: Duration::from_secs(1),
            latency_share: 0.5,
            latency_duration: Duration::ZERO,
            progress: None,
            idempotency_keys: KeyMode::Off,
        };
        let (bodies, truth, table) = generate(&opts);
        assert_eq!(table.events(), 2_500);
        assert_eq!(bodies.len(), 3);
        let lines: usize = bodies
            .iter()
            .map(|b| b.split(|&c| c == b'\n').count())
            .sum();
        assert_eq!(lines, 2_500);
        assert_eq!(truth.events(), 2_500);
    }
}
