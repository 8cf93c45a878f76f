//! `flowmeter bench ws`: many WebSocket subscribers on one hub process while
//! events stream in, measuring delivery lag (from the second's close on the
//! hub to receipt), hub memory, and what a stalled client costs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::{
    bench_settings, free_port, proc_mb, reset, server_exe, spawn_serve, terminate, BenchError,
    TempConfig,
};
use crate::loadgen::{KindMix, LoadOptions, Target};
use flowmeter::config::Settings;
use flowmeter::sketch::DdSketch;
use flowmeter::telemetry::metrics;

/// What to run.
#[derive(Debug, Clone)]
pub struct WsBenchOptions {
    pub subscribers: usize,
    /// Events per second XADDed while measuring.
    pub rate: f64,
    /// Measured seconds (after everyone is connected and a warm-up).
    pub secs: u64,
    /// Seconds a deliberately stalled client stops reading.
    pub stall_secs: u64,
    pub prefix: String,
    /// Draws each phase's progress; `None` draws nothing.
    pub progress: Option<crate::loadgen::BarMaker>,
}

/// What it measured.
#[derive(Debug, Clone, Default)]
pub struct WsBenchReport {
    pub subscribers: usize,
    pub connected: usize,
    pub connect_secs: f64,
    pub events_per_sec: f64,
    pub updates_expected: u64,
    pub updates_received: u64,
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    pub lag_max_ms: f64,
    pub hub_rss_mb: f64,
    pub hub_peak_rss_mb: f64,
    pub stall_rss_before_mb: f64,
    pub stall_rss_after_mb: f64,
    pub stall_dropped: f64,
    pub stall_recovered: bool,
}

#[derive(Deserialize)]
struct Head {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    seq: i64,
    #[serde(default)]
    reason: Option<String>,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn subscribe(url: &str, channels: &[&str]) -> Result<Socket, String> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| e.to_string())?;
    ws.send(Message::Text(
        json!({"op": "subscribe", "channels": channels, "interval_ms": 1000})
            .to_string()
            .into(),
    ))
    .await
    .map_err(|e| e.to_string())?;
    Ok(ws)
}

/// Runs the bench.
pub async fn run(base: &Settings, opts: &WsBenchOptions) -> Result<WsBenchReport, BenchError> {
    if opts.subscribers == 0 || opts.secs == 0 || opts.rate <= 0.0 {
        return Err(BenchError::Setup(
            "--subscribers, --secs and --rate must be positive".into(),
        ));
    }
    server_exe()?;
    let mut settings = bench_settings(base, &opts.prefix)?;
    settings.hub.max_connections_per_token = opts.subscribers + 100;
    settings.hub.max_connections_per_ip = opts.subscribers + 100;
    // the stalled client floods re-subscriptions to measure what a full
    // queue costs: the per-connection caps would stop the flood first
    settings.hub.max_messages_per_sec = 10_000;
    settings.hub.max_snapshots_per_sec = 10_000;
    settings.hub.rebuild_secs = 5;
    reset(&settings).await?;
    let config = TempConfig::write(&settings)?;
    let listen = format!("127.0.0.1:{}", free_port()?);
    let mut hub = spawn_serve(&config.0, "hub", &listen)?;
    let pid = hub.id().unwrap_or(0);
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(format!("http://{listen}/healthz"))
        .send()
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            return Err(BenchError::Setup(
                "the hub did not answer /healthz within 30 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let grace = settings.hub.tick_grace_ms as i64;

    // events flow during the whole bench
    let stop_load = CancellationToken::new();
    let load = {
        let settings = settings.clone();
        let stop = stop_load.clone();
        let opts = LoadOptions {
            rate: opts.rate,
            duration: None,
            kind: KindMix::Mixed,
            batch: 200,
            concurrency: 4,
            seed: 7,
            target: Target::Redis,
            truth: None,
            progress: None,
            incident: None,
            hot: None,
        };
        tokio::spawn(async move { crate::loadgen::run(&settings, &opts, stop).await })
    };

    // subscribers: connect in waves, then each reads and notes the lag of
    // every update received while `measuring` is set
    let url = format!("ws://{listen}/v1/ws");
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let bar = super::spinner(
        opts.progress,
        opts.subscribers as u64,
        "connecting subscribers",
    );
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(opts.subscribers);
    let mut connected = 0usize;
    let mut wave = Vec::new();
    for i in 0..opts.subscribers {
        let url = url.clone();
        let ch: &'static str = if i % 2 == 0 {
            "http:overview"
        } else {
            "webrtc:overview"
        };
        wave.push(tokio::spawn(async move { subscribe(&url, &[ch]).await }));
        if wave.len() == 200 || i + 1 == opts.subscribers {
            for w in wave.drain(..) {
                if let Ok(Ok(ws)) = w.await {
                    connected += 1;
                    bar.inc(1);
                    let (measuring, received, stop) =
                        (measuring.clone(), received.clone(), stop.clone());
                    tasks.push(tokio::spawn(async move {
                        client_loop(ws, grace, measuring, received, stop).await
                    }));
                }
            }
        }
    }
    bar.finish_and_clear();
    let connect_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{connected} of {} subscribers connected in {connect_secs:.1} s; warming up…",
        opts.subscribers
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    // measure
    let bar = super::spinner(opts.progress, opts.secs, "measuring (s)");
    measuring.store(true, Ordering::SeqCst);
    let m0 = Instant::now();
    let mut peak: f64 = 0.0;
    while m0.elapsed() < Duration::from_secs(opts.secs) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        peak = peak.max(proc_mb(pid, "VmRSS:"));
        bar.inc(1);
    }
    measuring.store(false, Ordering::SeqCst);
    bar.finish_and_clear();
    let measured = m0.elapsed().as_secs_f64();
    let hub_rss_mb = proc_mb(pid, "VmRSS:");

    // a client that stops reading: the hub's memory must stay flat
    let mut stalled = subscribe(&url, &["http:overview", "webrtc:overview"])
        .await
        .map_err(BenchError::Run)?;
    for _ in 0..200 {
        // each re-subscription asks for two full snapshots it will not read
        let _ = stalled
            .send(Message::Text(
                json!({"op": "subscribe", "channels": ["http:overview", "webrtc:overview"]})
                    .to_string()
                    .into(),
            ))
            .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stall_rss_before_mb = proc_mb(pid, "VmRSS:");
    tokio::time::sleep(Duration::from_secs(opts.stall_secs)).await;
    let stall_rss_after_mb = proc_mb(pid, "VmRSS:");
    let metrics = http
        .get(format!("http://{listen}/metrics"))
        .send()
        .await
        .map_err(|e| BenchError::Run(e.to_string()))?
        .text()
        .await
        .map_err(|e| BenchError::Run(e.to_string()))?;
    let stall_dropped =
        flowmeter::telemetry::metrics::value_in(&metrics, metrics::HUB_DROPPED.name).unwrap_or(0.0);
    // reading again, it gets a snapshot flagged "slow"
    let recover = async {
        while let Some(Ok(m)) = stalled.next().await {
            if let Message::Text(t) = m {
                if let Ok(h) = serde_json::from_str::<Head>(t.as_str()) {
                    if h.reason.as_deref() == Some("slow") {
                        return true;
                    }
                }
            }
        }
        false
    };
    let stall_recovered = tokio::time::timeout(Duration::from_secs(60), recover)
        .await
        .unwrap_or(false);

    stop.cancel();
    let mut lags = DdSketch::new();
    for t in tasks {
        if let Ok(v) = t.await {
            for l in v {
                lags.add(l.max(0.0));
            }
        }
    }
    stop_load.cancel();
    let load = load
        .await
        .map_err(|e| BenchError::Run(e.to_string()))?
        .map_err(|e| BenchError::Run(e.to_string()))?;
    let hub_peak_rss_mb = proc_mb(pid, "VmHWM:").max(peak);
    terminate(&mut hub).await;
    Ok(WsBenchReport {
        subscribers: opts.subscribers,
        connected,
        connect_secs,
        events_per_sec: load.accepted as f64 / load.elapsed.as_secs_f64().max(0.001),
        updates_expected: (connected as f64 * measured).round() as u64,
        updates_received: received.load(Ordering::SeqCst),
        lag_p50_ms: lags.quantile(0.5).unwrap_or(0.0),
        lag_p99_ms: lags.quantile(0.99).unwrap_or(0.0),
        lag_max_ms: lags.quantile(1.0).unwrap_or(0.0),
        hub_rss_mb,
        hub_peak_rss_mb,
        stall_rss_before_mb,
        stall_rss_after_mb,
        stall_dropped,
        stall_recovered,
    })
}

/// Reads until `stop`; returns the lags (ms) of the updates received while measuring.
async fn client_loop(
    mut ws: Socket,
    grace_ms: i64,
    measuring: Arc<std::sync::atomic::AtomicBool>,
    received: Arc<AtomicU64>,
    stop: CancellationToken,
) -> Vec<f64> {
    let mut lags = Vec::new();
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            m = ws.next() => m,
        };
        let Some(Ok(Message::Text(t))) = msg else {
            if matches!(msg, None | Some(Err(_))) {
                break;
            }
            continue;
        };
        if !measuring.load(Ordering::Relaxed) {
            continue;
        }
        let Ok(h) = serde_json::from_str::<Head>(t.as_str()) else {
            continue;
        };
        if h.kind == "update" {
            // the hub closes second `seq` at (seq + 1) s + grace
            let closed_ms = (h.seq + 1) * 1000 + grace_ms;
            lags.push((chrono::Utc::now().timestamp_millis() - closed_ms) as f64);
            received.fetch_add(1, Ordering::Relaxed);
        }
    }
    let _ = ws.close(None).await;
    lags
}
