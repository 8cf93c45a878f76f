//! The HTTP server's figures for BENCHMARKS.md: ingest throughput through
//! `serve --roles ingest` with auth and the rate limit on against the
//! unlimited path, and the cost of TLS, all in one invocation.
//!
//! ```sh
//! cargo run --release -p flowmeter-bench --example server_bench                 # 3 rounds × 200,000 events
//! cargo run --release -p flowmeter-bench --example server_bench -- 100000 3 50  # events, rounds, events per request
//! ```
//!
//! Needs Redis on 127.0.0.1:6379 (as the tests); uses the prefix
//! `fmsbench` (wiped before every run). flowmeter runs in this process on
//! its own runtime (2 worker threads), the client on another; Redis shares
//! the same 2 cores.
//!
//! Each round posts the same pre-generated NDJSON bodies (the loadgen mix,
//! batches of 1,000 events unless given, 4 connections, HTTP/1.1
//! keep-alive) to a fresh
//! server in each configuration, in turn:
//!
//! | name | auth | rate limit | TLS |
//! |---|---|---|---|
//! | `axum::serve` (the same router without the server of `[server]`: what `serve` ran before its limits) | no tokens | off | no |
//! | `open` (the unlimited path) | no tokens | off | no |
//! | `auth` | one ingest token, sent as `Bearer` | off | no |
//! | `auth+rate` | as `auth` | on, 100,000 requests/s (never reached) | no |
//! | `https` | no tokens | off | yes (test CA, TLS 1.3) |
//! | `https+auth+rate` | as `auth+rate` | as `auth+rate` | yes |
//!
//! It reports events/s (first POST to the last 202) per run and the median
//! per configuration, and each median as a share of `open`'s (the unlimited
//! path of `serve`). Any answer
//! but 202 fails the bench.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use flowmeter::app::{self, Roles};
use flowmeter::config::{Settings, TokenConfig};
use flowmeter_bench::loadgen::{GenConfig, Generator};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "fmsbench";
/// Events per request unless given.
const BATCH: usize = 1_000;
const CONNECTIONS: usize = 4;
const TOKEN: &str = "server-bench-ingest-token-0123456789";

fn repo() -> PathBuf {
    // this crate is crates/flowmeter-bench: the repository is two up
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[derive(Debug, Clone, Copy)]
struct Variant {
    name: &'static str,
    /// The same router under plain `axum::serve` instead of `app::serve`.
    bare_axum: bool,
    auth: bool,
    rate: bool,
    tls: bool,
}

const fn variant(name: &'static str, auth: bool, rate: bool, tls: bool) -> Variant {
    Variant {
        name,
        bare_axum: false,
        auth,
        rate,
        tls,
    }
}

const VARIANTS: [Variant; 6] = [
    Variant {
        bare_axum: true,
        ..variant("axum::serve", false, false, false)
    },
    variant("open", false, false, false),
    variant("auth", true, false, false),
    variant("auth+rate", true, true, false),
    variant("https", false, false, true),
    variant("https+auth+rate", true, true, true),
];

/// The ingest router served by `axum::serve`, without the server of
/// `[server]` (what `serve` did before its limits).
async fn bare_axum(
    s: Settings,
    listener: TcpListener,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    use flowmeter::api::{AppState, QueryCatalog, RateLimiter};
    use flowmeter::event::SchemaRegistry;
    use flowmeter::processor::ProcessorRegistry;
    use flowmeter::stream::{Keys, Producer, Redis};
    let schemas = Arc::new(SchemaRegistry::load(&s.paths.schemas)?);
    let processors = Arc::new(ProcessorRegistry::load(&s.paths.processors, &schemas)?);
    let redis = Redis::connect(
        &s.redis.url,
        Duration::from_millis(s.redis.command_timeout_ms),
    )
    .await?;
    let keys = Keys::new(s.redis.prefix.clone(), s.redis.shards);
    let state = AppState {
        schemas,
        processors,
        health: flowmeter::api::health::Readiness::new(&s.health, redis.clone()),
        producer: Some(Producer::new(redis.clone(), keys.clone())),
        redis,
        keys,
        store: None,
        catalog: Arc::new(QueryCatalog::default()),
        ingest: s.ingest.clone(),
        ingest_bodies: flowmeter::api::BodyBudget::new(s.ingest.max_inflight_body_bytes),
        retention: s.retention.clone(),
        hub: None,
        auth: flowmeter::auth::Auth::new(&s.auth),
        events: None,
        queries: flowmeter::api::QueryLimits::new(&s.query),
        ingest_limit: Arc::new(RateLimiter::new(&s.server.ingest_rate_limit)),
        metrics: Arc::new(flowmeter::api::MetricsEndpoint::new(
            &s.metrics,
            &["ingest"],
            None,
            None,
        )?),
    };
    axum::serve(listener, flowmeter::api::router(state))
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await?;
    Ok(())
}

/// A test CA and a certificate for 127.0.0.1 it signed, as files.
struct Certs {
    ca_pem: String,
    cert: PathBuf,
    key: PathBuf,
    _dir: tempfile::TempDir,
}

fn certs() -> anyhow::Result<Certs> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])?.signed_by(&key, &issuer)?;
    let dir = tempfile::tempdir()?;
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    Ok(Certs {
        ca_pem: ca_cert.pem(),
        cert: cert_path,
        key: key_path,
        _dir: dir,
    })
}

fn settings(v: Variant, certs: &Certs) -> Settings {
    let mut s = Settings::default();
    s.redis.prefix = PREFIX.into();
    s.paths.schemas = repo().join("schemas");
    s.paths.processors = repo().join("processors");
    s.paths.migrations = repo().join("migrations");
    if v.auth {
        s.auth.tokens = vec![TokenConfig {
            name: "bench".into(),
            token: TOKEN.into(),
            scopes: vec!["ingest".into()],
            ..TokenConfig::default()
        }];
    }
    let rl = &mut s.server.ingest_rate_limit;
    if v.rate {
        rl.requests_per_sec = 100_000.0;
        rl.burst_requests = 100_000;
    } else {
        rl.requests_per_sec = 0.0;
    }
    if v.tls {
        s.server.tls.cert_path = certs.cert.clone();
        s.server.tls.key_path = certs.key.clone();
    }
    s
}

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
    Ok(())
}

/// NDJSON bodies of `batch` events from the loadgen mix.
fn bodies(events: usize, batch: usize) -> Vec<Bytes> {
    const T0: i64 = 1_772_323_200_000; // 2026-03-01T00:00:00Z
    let mut g = Generator::new(GenConfig::default());
    let mut out = Vec::new();
    let mut body = Vec::new();
    for i in 0..events {
        if !body.is_empty() {
            body.push(b'\n');
        }
        let _ = serde_json::to_writer(&mut body, &g.next_event(T0 + i as i64));
        if (i + 1) % batch == 0 {
            out.push(Bytes::from(std::mem::take(&mut body)));
        }
    }
    if !body.is_empty() {
        out.push(Bytes::from(body));
    }
    out
}

/// One run: a fresh server in `v`, every body posted; events/s.
async fn run(
    server_rt: &tokio::runtime::Handle,
    v: Variant,
    certs: &Certs,
    bodies: &Arc<Vec<Bytes>>,
    events: usize,
) -> anyhow::Result<(f64, f64)> {
    let s = settings(v, certs);
    wipe(&s).await?;
    // Bound and served on the server's runtime (its own reactor and workers).
    let (tx, rx) = tokio::sync::oneshot::channel();
    let stop = CancellationToken::new();
    let roles: Roles = "ingest".parse()?;
    let token = stop.clone();
    let server = server_rt.spawn(async move {
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => return eprintln!("bind: {e}"),
        };
        let _ = tx.send(listener.local_addr());
        let res = if v.bare_axum {
            bare_axum(s, listener, token).await
        } else {
            app::serve(s, roles, Some(listener), token)
                .await
                .map_err(anyhow::Error::from)
        };
        if let Err(e) = res {
            eprintln!("serve failed: {e}");
        }
    });
    let addr: SocketAddr = rx.await.context("the server did not bind")??;
    let mut builder = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(CONNECTIONS)
        .timeout(Duration::from_secs(60));
    if v.tls {
        builder =
            builder.add_root_certificate(reqwest::Certificate::from_pem(certs.ca_pem.as_bytes())?);
    }
    let http = builder.build()?;
    let base = format!("{}://{addr}", if v.tls { "https" } else { "http" });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        if Instant::now() > deadline {
            bail!("{}: the server did not answer /healthz within 30 s", v.name);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = format!("{base}/v1/events");
    let next = Arc::new(AtomicUsize::new(0));
    let cpu0 = server_cpu_ns();
    let start = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..CONNECTIONS {
        let (http, url, next, bodies) = (http.clone(), url.clone(), next.clone(), bodies.clone());
        senders.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else {
                    return Ok::<(), anyhow::Error>(());
                };
                let mut req = http
                    .post(&url)
                    .header("content-type", "application/x-ndjson")
                    .body(body.clone());
                if v.auth {
                    req = req.bearer_auth(TOKEN);
                }
                let r = req.send().await.context("POST")?;
                if r.status() != 202 {
                    bail!(
                        "POST answered {}: {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    );
                }
                r.bytes().await?;
            }
        }));
    }
    for s in senders {
        s.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu_ms_per_1000 =
        server_cpu_ns().saturating_sub(cpu0) as f64 / 1e6 / (events as f64 / 1000.0);
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
    Ok((events as f64 / secs, cpu_ms_per_1000))
}

/// CPU time of this process's threads named `server` (the server's
/// runtime), in ns, from /proc (Linux): less disturbed than wall time when
/// other work shares the cores.
fn server_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("server"))
        })
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
}

/// Nanoseconds per call of the two checks auth and the rate limit add to
/// each ingest request (one token of four configured; one bucket).
fn per_request_checks() -> (f64, f64) {
    use flowmeter::auth::{Auth, Scope};
    const CALLS: u32 = 1_000_000;
    let mut cfg = flowmeter::config::AuthConfig::default();
    for i in 0..4 {
        cfg.tokens.push(TokenConfig {
            name: format!("t{i}"),
            token: format!("{TOKEN}-{i}"),
            scopes: vec!["ingest".into()],
            ..TokenConfig::default()
        });
    }
    let auth = Auth::new(&cfg);
    let presented = format!("{TOKEN}-3");
    let t = Instant::now();
    for _ in 0..CALLS {
        let _ =
            std::hint::black_box(auth.check(Some(std::hint::black_box(&presented)), Scope::Ingest));
    }
    let auth_ns = t.elapsed().as_nanos() as f64 / f64::from(CALLS);
    let limiter = flowmeter::api::RateLimiter::new(&flowmeter::config::IngestRateLimitConfig {
        requests_per_sec: 1e9,
        burst_requests: u32::MAX,
        ..Default::default()
    });
    let t = Instant::now();
    for _ in 0..CALLS {
        let _ = std::hint::black_box(limiter.check_token("t3", Instant::now()));
    }
    let rate_ns = t.elapsed().as_nanos() as f64 / f64::from(CALLS);
    (auth_ns, rate_ns)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let events: usize = args.first().map_or(Ok(200_000), |a| a.parse())?;
    let rounds: usize = args.get(1).map_or(Ok(3), |a| a.parse())?;
    let batch: usize = args.get(2).map_or(Ok(BATCH), |a| a.parse())?.max(1);
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("server")
        .enable_all()
        .build()?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("client")
        .enable_all()
        .build()?;
    let certs = certs()?;
    let bodies = Arc::new(bodies(events, batch));
    eprintln!(
        "{events} events in {} requests of {batch}, {CONNECTIONS} connections, {rounds} rounds",
        bodies.len()
    );
    let mut figures: Vec<Vec<(f64, f64)>> = vec![Vec::new(); VARIANTS.len()];
    let server = server_rt.handle().clone();
    client_rt.block_on(async {
        for round in 1..=rounds {
            for (i, v) in VARIANTS.iter().enumerate() {
                let (eps, cpu) = run(&server, *v, &certs, &bodies, events).await?;
                eprintln!(
                    "round {round}: {:<16} {eps:>10.0} events/s  {cpu:>6.2} server CPU ms per 1,000 events",
                    v.name
                );
                if let Some(f) = figures.get_mut(i) {
                    f.push((eps, cpu));
                }
            }
        }
        wipe(&settings(VARIANTS[0], &certs)).await
    })?;
    let medians: Vec<(f64, f64)> = figures
        .iter()
        .map(|f| {
            (
                median(f.iter().map(|x| x.0).collect()),
                median(f.iter().map(|x| x.1).collect()),
            )
        })
        .collect();
    let (auth_ns, rate_ns) = per_request_checks();
    println!(
        "per request: token check {auth_ns:.0} ns (SHA-256 + 4 constant-time compares), rate limit {rate_ns:.0} ns"
    );
    let (open_eps, open_cpu) = medians.get(1).copied().unwrap_or_default();
    let share = |x: f64, of: f64| if of > 0.0 { x / of } else { 0.0 };
    println!(
        "\n| configuration | events/s (median of {rounds}) | vs open | server CPU ms / 1,000 events (median) | vs open | events/s of each run |"
    );
    println!("|---|---:|---:|---:|---:|---|");
    for ((v, f), (eps, cpu)) in VARIANTS.iter().zip(&figures).zip(&medians) {
        let runs: Vec<String> = f.iter().map(|x| format!("{:.0}", x.0)).collect();
        println!(
            "| {} | {eps:.0} | {:.3} | {cpu:.2} | {:.3} | {} |",
            v.name,
            share(*eps, open_eps),
            share(*cpu, open_cpu),
            runs.join(", ")
        );
    }
    Ok(())
}
