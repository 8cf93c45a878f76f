//! Ingest bounds the issue-13 review found open:
//!
//! - the request bodies in flight hold at most
//!   `ingest.max_inflight_body_bytes` between them: hundreds of slow clients
//!   each sending a body of `max_body_bytes` get 503 past it, while the
//!   bytes held (the `flowmeter_ingest_body_bytes_in_flight` gauge, and the
//!   process's RSS) stay under it — measured in a process of its own, the
//!   gauge and RSS being process-wide;
//! - a write to Redis still running at `server.request_timeout_ms` is not
//!   answered 408 (which would hide that it landed): it ends with the
//!   write's own answer, `503 "outcome": "unknown"`, and a retry with its
//!   key writes nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::ingest::{batch, post, stored};
use crate::common::*;

const BODY: usize = 1 << 20;
const BUDGET: usize = 8 << 20;
const CLIENTS: usize = 200;

/// Reads one answer's head (and, for a refusal, its body to the close):
/// `(status, Retry-After present, the text)`.
async fn answer(mut rd: tokio::net::tcp::OwnedReadHalf) -> (u16, bool, String) {
    let mut got = Vec::new();
    let _ = rd.read_to_end(&mut got).await;
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let retry_after = text.to_ascii_lowercase().contains("\r\nretry-after:");
    (status, retry_after, text)
}

/// A POST whose head declares `len` body bytes (or is chunked when `None`);
/// no body sent yet. Its answer is read in the background.
async fn open_post(
    server: &Server,
    len: Option<usize>,
) -> (
    tokio::net::tcp::OwnedWriteHalf,
    JoinHandle<(u16, bool, String)>,
) {
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let (rd, mut wr) = tcp.into_split();
    let length = match len {
        Some(n) => format!("Content-Length: {n}"),
        None => "Transfer-Encoding: chunked".into(),
    };
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n{length}\r\nConnection: close\r\n\r\n"
    );
    wr.write_all(head.as_bytes()).await.expect("head");
    (wr, tokio::spawn(answer(rd)))
}

async fn in_flight(client: &reqwest::Client, server: &Server) -> usize {
    metric(client, server, "flowmeter_ingest_body_bytes_in_flight").await as usize
}

/// Runs [`inflight_bodies_probe`] in a process of its own.
#[test]
fn slow_bodies_past_the_inflight_budget_get_503_and_hold_no_more() {
    run_alone("abuse::ingest_bounds::inflight_bodies_probe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by slow_bodies_past_the_inflight_budget_get_503_and_hold_no_more in a process of its own"]
async fn inflight_bodies_probe() {
    let mut env = TestEnv::new("abuse_inflight");
    env.settings.ingest.max_body_bytes = BODY;
    env.settings.ingest.max_inflight_body_bytes = BUDGET;
    // slow, not idle: the bodies stay open for the whole test
    env.settings.server.body_idle_timeout_ms = 300_000;
    env.settings.server.request_timeout_ms = 300_000;
    let server = env.start("ingest").await;
    let client = http_client();
    let baseline = status_kib("VmRSS");
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(status_kib("VmRSS"), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    // 200 clients each declaring a 1 MiB body: 8 fit the 8 MiB budget.
    let mut conns = Vec::new();
    for _ in 0..CLIENTS {
        conns.push(open_post(&server, Some(BODY)).await);
    }
    let refused =
        |conns: &[(_, JoinHandle<_>)]| conns.iter().filter(|(_, a)| a.is_finished()).count();
    wait_until(Duration::from_secs(60), || {
        let n = refused(&conns);
        let (client, server) = (client.clone(), &server);
        async move { n + in_flight(&client, server).await / BODY == CLIENTS }
    })
    .await;
    let held = in_flight(&client, &server).await;
    assert_eq!(held, BUDGET, "the admitted bodies hold the budget, no more");
    let (admitted, done): (Vec<_>, Vec<_>) = conns.into_iter().partition(|(_, a)| !a.is_finished());
    assert_eq!(
        (admitted.len(), done.len()),
        (BUDGET / BODY, CLIENTS - BUDGET / BODY)
    );
    for (_, a) in done {
        let (status, retry_after, text) = a.await.expect("reader");
        assert_eq!(status, 503, "{text}");
        assert!(retry_after, "{text}");
        assert!(
            text.contains("ingest.max_inflight_body_bytes") && text.contains("\"accepted\":0"),
            "names the bound to raise: {text}"
        );
    }
    // The admitted clients send all of their bodies but the last byte.
    let mut admitted_writers = Vec::new();
    for (mut wr, a) in admitted {
        wr.write_all(&vec![b' '; BODY - 1]).await.expect("body");
        admitted_writers.push((wr, a));
    }
    // A chunked body while the budget is full: refused at its first chunk.
    let (mut wr, a) = open_post(&server, None).await;
    wr.write_all(b"400\r\n").await.expect("chunk size");
    wr.write_all(&[b' '; 0x400]).await.expect("chunk");
    wr.write_all(b"\r\n").await.expect("chunk end");
    let (status, retry_after, text) = a.await.expect("reader");
    assert_eq!((status, retry_after), (503, true), "{text}");
    assert_eq!(in_flight(&client, &server).await, BUDGET);
    let grown_mib = (peak.load(Ordering::SeqCst).saturating_sub(baseline)) as f64 / 1024.0;

    // Clients gone: every byte comes back.
    drop(admitted_writers);
    wait_until(Duration::from_secs(30), || {
        let (client, server) = (client.clone(), &server);
        async move { in_flight(&client, server).await == 0 }
    })
    .await;
    // A bystander's batch once the budget is free again: accepted, and
    // every canary is in the streams (the refused bodies wrote nothing).
    let canaries = 50u64;
    let t0 = chrono::Utc::now().timestamp_millis();
    let body: Vec<String> = (0..canaries)
        .map(|i| http_event(i, t0).to_string())
        .collect();
    let (code, reply) = post_ndjson(&client, &server.url("/v1/events"), body.join("\n")).await;
    assert_eq!(code, 202, "{reply}");
    let mut redis = env.redis().await;
    assert_eq!(stream_total_on(&mut redis, &env).await, canaries as i64);
    // A chunked body is held chunk by chunk as it arrives.
    let (mut wr, a) = open_post(&server, None).await;
    for _ in 0..3 {
        wr.write_all(b"40000\r\n").await.expect("chunk size");
        wr.write_all(&vec![b' '; 0x40000]).await.expect("chunk");
        wr.write_all(b"\r\n").await.expect("chunk end");
    }
    wait_until(Duration::from_secs(30), || {
        let (client, server) = (client.clone(), &server);
        async move { in_flight(&client, server).await == 3 * 0x40000 }
    })
    .await;
    assert!(!a.is_finished(), "three chunks of 256 KiB fit");
    drop((wr, a));
    wait_until(Duration::from_secs(30), || {
        let (client, server) = (client.clone(), &server);
        async move { in_flight(&client, server).await == 0 }
    })
    .await;
    sampler.abort();
    let refused_total = metric(
        &client,
        &server,
        "flowmeter_ingest_requests_body_budget_refused_total",
    )
    .await;
    println!(
        "inflight_bodies_probe: {CLIENTS} clients declaring {} KiB bodies, budget {} MiB: {} admitted, {refused_total} refused with 503; RSS grew by {grown_mib:.1} MiB while the admitted bodies were held (unbounded it would hold {} MiB)",
        BODY / 1024,
        BUDGET >> 20,
        BUDGET / BODY,
        (CLIENTS * BODY) >> 20
    );
    assert_eq!(refused_total as usize, CLIENTS - BUDGET / BODY + 1);
    // the budget plus the connections' buffers and allocator slack
    assert!(
        grown_mib < ((BUDGET >> 20) + 40) as f64,
        "RSS grew by {grown_mib:.1} MiB"
    );
    server.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_past_the_request_timeout_answers_its_outcome_not_408() {
    let env = TestEnv::new("abuse_write_deadline");
    let proxy = TcpProxy::start(
        "127.0.0.1:0",
        "127.0.0.1:6379".parse().expect("redis address"),
    )
    .await;
    let mut via = env.settings.clone();
    via.redis.url = format!("redis://{}", proxy.addr);
    // The request timeout ends before the write's own timeout does.
    via.server.request_timeout_ms = 1_000;
    via.redis.command_timeout_ms = 3_000;
    let server = start_with(via, "ingest").await;
    let client = http_client();
    let url = server.url("/v1/events");
    let (b1, _, _) = batch(0, 10);
    let r = post(&client, &url, Some("late-1"), b1).await;
    assert_eq!(r.status, 202, "{}", r.body);

    // Redis writes; its reply is held past the request timeout.
    proxy.hold_replies(true);
    let (b2, _, _) = batch(100, 10);
    let r = post(&client, &url, Some("late-2"), b2.clone()).await;
    assert_eq!(
        r.status, 503,
        "the write may have happened: not a 408 ({})",
        r.body
    );
    assert_eq!(r.body["outcome"], "unknown", "{}", r.body);
    assert!(r.retry_after.is_some());
    wait_until(Duration::from_secs(10), || async {
        stored(&env).await == 20
    })
    .await;
    proxy.hold_replies(false);
    // the retry with its key writes nothing more
    let r = post(&client, &url, Some("late-2"), b2).await;
    assert_eq!((r.status, r.replayed), (202, true), "{}", r.body);
    assert_eq!(r.body["accepted"], 10);
    assert_eq!(stored(&env).await, 20);
    assert!(
        metric(
            &client,
            &server,
            "flowmeter_ingest_writes_past_request_timeout_total"
        )
        .await
            >= 1.0
    );
    server.stop().await;
    env.cleanup().await;
}
