//! The channel-churn attack on a running hub, for BENCHMARKS.md: clients
//! subscribe to and unsubscribe from random well-formed channel names
//! (`http:service:<random>`, 64 per message) as fast as the hub lets them,
//! while the hub process' resident memory is sampled from /proc.
//!
//! ```sh
//! flowmeter serve --roles hub --listen 127.0.0.1:8099 &
//! cargo run --example ws_churn -- ws://127.0.0.1:8099/v1/ws $! 10 4
//! #                                 hub URL                   pid secs clients
//! ```
//!
//! Prints the hub's RSS before, at its peak and 5 s after the attack, and
//! the (un)subscriptions sent. It is only a client: it measures any build
//! of the hub, before or after a change.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(url), Some(pid)) = (args.get(1), args.get(2)) else {
        anyhow::bail!("usage: ws_churn WS_URL HUB_PID [SECS=10] [CLIENTS=4]");
    };
    let pid: u32 = pid.parse()?;
    let secs: u64 = args.get(3).map_or(Ok(10), |s| s.parse())?;
    let clients: usize = args.get(4).map_or(Ok(4), |s| s.parse())?;
    let before = rss_mb(pid);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
        tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            let mut round = 0u64;
            while Instant::now() < end {
                let names: Vec<String> = (0..64)
                    .map(|i| {
                        format!(
                            "http:service:churn-{c}-{round}-{i}-{:x}",
                            rand::random::<u32>()
                        )
                    })
                    .collect();
                let sub = json!({"op": "subscribe", "channels": names, "interval_ms": 250});
                let unsub = json!({"op": "unsubscribe", "channels": names});
                for m in [sub, unsub] {
                    if ws.send(Message::Text(m.to_string().into())).await.is_err() {
                        return sent;
                    }
                }
                sent += 128;
                round += 1;
                // read what came back, so the socket keeps flowing
                while let Ok(Some(_)) =
                    tokio::time::timeout(Duration::from_millis(1), ws.next()).await
                {
                }
            }
            sent
        }));
    }
    let mut peak = before;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(250)).await;
        peak = peak.max(rss_mb(pid));
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await.unwrap_or(0);
    }
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        peak = peak.max(rss_mb(pid));
    }
    let after = rss_mb(pid);
    println!(
        "clients {clients}, {secs} s: {sent} channel (un)subscriptions sent; hub RSS {before:.1} MB before, {peak:.1} MB peak, {after:.1} MB 5 s after"
    );
    Ok(())
}
