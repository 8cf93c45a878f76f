//! The browser WebRTC collector (`/sdk/webrtc-stats.js`, docs/collector.md)
//! in headless Chromium against a real `flowmeter serve`, Redis and MariaDB.
//! Each test runs a node script (`tests/browser/webrtc_*.mjs`) that serves a
//! meeting page from its own origin (listed in `ingest.cors_origins`), makes
//! calls between two `RTCPeerConnection`s of that page (fake camera and
//! microphone) and hands them to the collector; the checks here compare what
//! landed in the stream and in `webrtc_hourly` with the peers' own counters:
//!
//! - direct path: non-relay candidate types, throttling (interval, budget,
//!   change-triggered events), bytes exact per peer, a beacon when the page is
//!   hidden and when it closes;
//! - relay through a private coturn: `relay`/`udp`, relayed bytes exact in
//!   `relay_bytes`;
//! - tolerance: closed connections, odd and missing stats, a flapping path,
//!   failing getStats, a 400 for one peer, a refused origin, no workers (CSP).

use crate::common;

use std::collections::BTreeMap;

use common::browser::{free_port, BrowserRun};
use common::*;
use flowmeter::event::SchemaRegistry;
use serde_json::Value;

const INGEST_TOKEN: &str = "ingest-token-0123456789";
const READ_TOKEN: &str = "read-token-0123456789";
/// The SDK's defaults the tests keep: one regular event per 6 s, 10 a minute.
const EVENT_INTERVAL_MS: i64 = 6_000;
const BUDGET: usize = 10;
/// Reasons of events that do not count against the budget's limit.
const FLUSHES: [&str; 3] = ["final", "hidden", "pagehide"];

/// A test env with an ingest and a read token, the meeting page's origin
/// allowed, migrated, and its browser run.
struct Setup {
    /// Browser runs take [`common::heavy`]: one at a time.
    _heavy: tokio::sync::MutexGuard<'static, ()>,
    env: TestEnv,
    run: BrowserRun,
    page_port: u16,
    meeting: String,
}

async fn setup(name: &str) -> Setup {
    let heavy = common::heavy().await;
    let mut env = TestEnv::new(name);
    let page_port = free_port();
    env.settings.ingest.cors_origins = vec![format!("http://127.0.0.1:{page_port}")];
    env.settings.auth.tokens = common::read_and_ingest_tokens(READ_TOKEN, INGEST_TOKEN);
    env.migrate().await;
    let run = BrowserRun::new(&mut env);
    let meeting = format!("{}-meeting", env.name);
    Setup {
        _heavy: heavy,
        env,
        run,
        page_port,
        meeting,
    }
}

impl Setup {
    /// Runs the node script (blocking this worker thread, not the runtime).
    fn node(&self, script: &str, extra: &[(&str, String)]) -> Value {
        let mut vars = vec![
            ("FM_PAGE_PORT", self.page_port.to_string()),
            ("FM_MEETING", self.meeting.clone()),
            ("FM_INGEST_TOKEN", INGEST_TOKEN.to_string()),
            ("FM_READ_TOKEN", READ_TOKEN.to_string()),
        ];
        vars.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
        let results = tokio::task::block_in_place(|| self.run.node(script, &vars));
        assert!(results.is_object(), "{script} wrote no results.json");
        results
    }

    /// Every webrtc event of `meeting` in the stream (what ingest accepted).
    async fn stream(&self, meeting: &str) -> Vec<Value> {
        let schemas = SchemaRegistry::load(&repo().join("schemas")).expect("schemas load");
        let events: Vec<Value> = stream_events(&self.env, "webrtc")
            .await
            .into_iter()
            .flatten()
            .filter(|e| e["meeting_id"] == meeting)
            .collect();
        for (i, e) in events.iter().enumerate() {
            assert_exact_shape(e);
            if let Err(errs) = schemas.validate(i, e) {
                panic!("{e} does not match the webrtc schema: {errs:?}");
            }
        }
        events
    }

    /// Σ of `column` over the meeting's `webrtc_hourly` rows, from MariaDB.
    async fn hourly(&self, column: &str) -> i64 {
        let store = self.env.store().await;
        scalar(
            &store,
            &format!(
                "SELECT SUM({column}) FROM webrtc_hourly WHERE meeting_id = '{}'",
                self.meeting
            ),
        )
        .await
    }
}

/// The SDK sends exactly the schema's fields, `v` pinned to 1.
fn assert_exact_shape(e: &Value) {
    let obj = e.as_object().expect("an event is an object");
    let required = [
        "kind",
        "v",
        "ts",
        "meeting_id",
        "peer_id",
        "bytes_sent",
        "bytes_received",
        "rtt_ms",
        "jitter_ms",
        "packet_loss",
        "candidate_type",
    ];
    for k in required {
        assert!(obj.contains_key(k), "{e} lacks {k}");
    }
    for k in obj.keys() {
        assert!(
            required.contains(&k.as_str()) || k == "user_id" || k == "relay_protocol",
            "{e} has an unexpected field {k}"
        );
    }
    assert_eq!(e["v"], 1, "{e}");
    assert!(e["ts"].is_u64(), "ts in epoch ms: {e}");
    assert!(
        e["bytes_sent"].is_u64() && e["bytes_received"].is_u64(),
        "{e}"
    );
    if e.get("relay_protocol").is_some() {
        assert_eq!(e["candidate_type"], "relay", "{e}");
    }
}

fn text(v: &Value) -> String {
    v.as_str().map(str::to_owned).unwrap_or_default()
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

/// (Σ bytes_sent, Σ bytes_received, events) per peer.
fn sums(events: &[Value]) -> BTreeMap<String, (i64, i64, usize)> {
    let mut out: BTreeMap<String, (i64, i64, usize)> = BTreeMap::new();
    for e in events {
        let s = out.entry(text(&e["peer_id"])).or_default();
        s.0 += int(&e["bytes_sent"]);
        s.1 += int(&e["bytes_received"]);
        s.2 += 1;
    }
    out
}

/// Each peer of `expected` ({peer: {sent, received}}) has events adding up
/// to exactly its counters; returns the total bytes.
fn assert_bytes_exact(events: &[Value], expected: &Value) -> i64 {
    let got = sums(events);
    let mut total = 0;
    let peers = expected.as_object().expect("expected is an object");
    for (peer, want) in peers {
        let (sent, received, n) = got.get(peer).copied().unwrap_or_default();
        eprintln!(
            "{peer}: {n} events, {sent}/{received} bytes sent/received, counters {}/{}",
            want["sent"], want["received"]
        );
        assert_eq!(sent, int(&want["sent"]), "{peer}: Σ bytes_sent");
        assert_eq!(received, int(&want["received"]), "{peer}: Σ bytes_received");
        total += sent + received;
    }
    total
}

/// The quality class of the `classify` measure in processors/webrtc_rollup.toml.
fn quality(e: &Value) -> &'static str {
    let f = |k: &str| e[k].as_f64().unwrap_or(f64::NAN);
    let (rtt, loss, jitter) = (f("rtt_ms"), f("packet_loss"), f("jitter_ms"));
    if rtt < 150.0 && loss < 0.01 && jitter < 20.0 {
        "excellent"
    } else if rtt < 300.0 && loss < 0.03 && jitter < 50.0 {
        "good"
    } else if rtt < 500.0 && loss < 0.08 && jitter < 100.0 {
        "fair"
    } else {
        "poor"
    }
}

/// Throttling, from the page's log of events with their reasons (onEvent):
/// regular events ≥ 6 s after the peer's previous one (flushes of a hidden
/// page aside: one may cross an event already under way); quality events
/// change the class; never more than the budget in 60 s (flushes aside).
/// Returns the most events one peer had in a 60 s window.
fn assert_throttled(log: &[Value]) -> usize {
    let mut by_peer: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for e in log {
        by_peer.entry(text(&e["peer_id"])).or_default().push(e);
    }
    let mut most = 0;
    for (peer, evs) in &by_peer {
        let mut prev: Option<&Value> = None;
        let mut prev_regular: Option<&Value> = None;
        for e in evs {
            let reason = text(&e["reason"]);
            if let (Some(p), "interval") = (prev, reason.as_str()) {
                let gap = int(&e["ts"]) - int(&p["ts"]);
                assert!(
                    gap >= EVENT_INTERVAL_MS,
                    "{peer}: a regular event {gap} ms after the previous one"
                );
            }
            if let (Some(p), "quality") = (prev_regular, reason.as_str()) {
                assert_ne!(
                    quality(p),
                    quality(e),
                    "{peer}: a quality event without a change"
                );
            }
            if !FLUSHES.contains(&reason.as_str()) {
                prev = Some(e);
            }
            if !FLUSHES.contains(&reason.as_str()) && reason != "previous-path" {
                prev_regular = Some(e);
            }
        }
        let counted: Vec<i64> = evs
            .iter()
            .filter(|e| !FLUSHES.contains(&text(&e["reason"]).as_str()))
            .map(|e| int(&e["ts"]))
            .collect();
        for (i, t) in counted.iter().enumerate() {
            let in_window = counted[i..].iter().take_while(|&&u| u < t + 60_000).count();
            assert!(
                in_window <= BUDGET,
                "{peer}: {in_window} events within 60 s (budget {BUDGET})"
            );
            most = most.max(in_window);
        }
    }
    most
}

/// Console errors all match one of `allowed`.
fn assert_only_errors(errors: &Value, allowed: &[&str]) {
    let page = errors["page"].as_array().expect("page errors");
    assert!(page.is_empty(), "uncaught errors in the page: {page:?}");
    for msg in errors["console"].as_array().expect("console errors") {
        let m = text(msg);
        assert!(
            allowed.iter().any(|a| m.contains(a)),
            "unexpected console error: {m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_call_events_throttling_beacons_and_rollup() {
    let s = setup("webrtc_direct").await;
    let r = s.node("webrtc_direct.mjs", &[]);
    let events = s.stream(&s.meeting).await;
    let log = r["atClose"]["events"].as_array().expect("event log");

    // Bytes: every peer's events add up to its counters at the last poll,
    // including what only the pagehide beacon carried.
    let total = assert_bytes_exact(&events, &r["expected"]);
    let pending_at_close = int(&r["atClose"]["stats"]["pendingBytes"]);
    assert!(
        pending_at_close > 0,
        "nothing was pending when the page closed: the beacon is not tested"
    );
    assert!(
        events.len() > log.len(),
        "the pagehide beacon delivered no event"
    );
    for e in log {
        assert!(
            events.iter().any(|x| x["peer_id"] == e["peer_id"]
                && x["ts"] == e["ts"]
                && x["bytes_sent"] == e["bytes_sent"]),
            "an event the page queued never landed: {e}"
        );
    }
    // The hidden tab: what was pending left by beacon, then the call went on.
    assert!(int(&r["hidden"]["beacons"]) >= 1, "{}", r["hidden"]);
    assert!(int(&r["hidden"]["beaconEvents"]) >= 1, "{}", r["hidden"]);
    assert!(log.iter().any(|e| e["reason"] == "hidden"));

    for e in &events {
        assert_ne!(e["candidate_type"], "relay", "loopback is direct: {e}");
        assert_eq!(e["user_id"], "u-1");
    }
    let most = assert_throttled(log);
    let secs = int(&r["runMs"]) as f64 / 1000.0;
    for (peer, (_, _, n)) in sums(&events) {
        eprintln!(
            "{peer}: {n} events in {secs:.1} s, beacons included; \
             most counted against the budget in 60 s: {most}"
        );
        assert!(n <= BUDGET + 3, "{peer}: {n} events");
    }
    assert!(
        log.iter().filter(|e| e["reason"] == "interval").count() >= 2,
        "no regular events: {log:?}"
    );

    // The rollup holds exactly what the peers moved.
    assert_eq!(
        s.hourly("bytes_sent").await + s.hourly("bytes_received").await,
        total
    );
    assert_eq!(s.hourly("samples").await, events.len() as i64);
    assert_eq!(s.hourly("relay_bytes").await, 0);

    // A cross-origin page, computed in a worker, simple requests only.
    assert_eq!(r["atClose"]["stats"]["mode"], "worker");
    for q in r["requests"].as_array().expect("requests") {
        assert_eq!(q["method"], "POST", "{q}");
        assert_eq!(q["token"], true, "token in the query: {q}");
        assert_eq!(
            q["authorization"], false,
            "no header that needs a preflight: {q}"
        );
        assert!(text(&q["contentType"]).starts_with("text/plain"), "{q}");
    }
    assert_only_errors(&r["errors"], &[]);
    s.env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_call_lands_in_relay_bytes() {
    let s = setup("webrtc_relay").await;
    let r = s.node("webrtc_relay.mjs", &[]);
    let events = s.stream(&s.meeting).await;
    assert!(!events.is_empty());
    for e in &events {
        assert_eq!(e["candidate_type"], "relay", "{e}");
        assert_eq!(e["relay_protocol"], "udp", "{e}");
    }
    let total = assert_bytes_exact(&events, &r["expected"]);
    assert!(total > 100_000, "the call moved only {total} bytes");
    let log = r["events"].as_array().expect("event log");
    assert_eq!(log.len(), events.len(), "stop() delivered everything");
    assert_throttled(log);
    assert_eq!(s.hourly("relay_bytes").await, total);
    assert_eq!(
        s.hourly("bytes_sent").await + s.hourly("bytes_received").await,
        total
    );
    assert_eq!(int(&r["stopped"]["sent"]), events.len() as i64);
    assert_eq!(r["stopped"]["mode"], "worker");
    assert_only_errors(&r["errors"], &[]);
    s.env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_odd_flapping_and_refused_peers_break_nothing() {
    let s = setup("webrtc_tolerance").await;
    let bad_port = free_port();
    let r = s.node(
        "webrtc_tolerance.mjs",
        &[("FM_BAD_PORT", bad_port.to_string())],
    );
    let events = s.stream(&s.meeting).await;
    let page1 = &r["page1"];
    let log = page1["events"].as_array().expect("event log");

    // Exact bytes for every peer that could send, whatever its stats held.
    assert_bytes_exact(&events, &r["expected"]);
    let long_id = text(&r["longId"]);
    assert!(
        !events.iter().any(|e| e["peer_id"] == long_id.as_str()),
        "the rejected peer's events were written"
    );
    assert!(int(&page1["stopped"]["rejected"]) >= 1);
    // The closed connection and the one whose getStats failed and closed
    // were retired with a final event before stop().
    assert_eq!(page1["peersBeforeStop"], 5, "{}", page1["stopped"]);
    for peer in ["live-b", "rejecting"] {
        assert!(
            log.iter()
                .any(|e| e["peer_id"] == peer && e["reason"] == "final"),
            "{peer} had no final event"
        );
    }
    assert!(int(&page1["stopped"]["pollErrors"]) >= 1);
    // Missing fields: last known or 0, a path never seen reads as host.
    for e in events.iter().filter(|e| e["peer_id"] == "sparse") {
        assert_eq!(e["candidate_type"], "host", "{e}");
        assert_eq!(e["rtt_ms"], 0.0, "{e}");
        assert_eq!(e["jitter_ms"], 0.0, "{e}");
        assert_eq!(e["bytes_received"], 0, "{e}");
    }
    // The flapping peer: budget held, both paths reported with their bytes.
    let most = assert_throttled(log);
    eprintln!("most events of one peer in 60 s: {most}");
    assert!(int(&page1["stopped"]["throttled"]) > 0);
    let flaps: Vec<&Value> = events
        .iter()
        .filter(|e| e["peer_id"] == "flapper")
        .collect();
    assert!(flaps
        .iter()
        .any(|e| e["candidate_type"] == "relay" && e["relay_protocol"] == "tcp"));
    assert!(flaps.iter().any(|e| e["candidate_type"] == "host"));
    let flapper_counted = log
        .iter()
        .filter(|e| e["peer_id"] == "flapper" && e["reason"] != "final")
        .count();
    assert_eq!(flapper_counted, BUDGET, "the flapping peer used its budget");

    // No worker under `worker-src 'none'`: the main thread did the work.
    assert_eq!(page1["mode"], "main-thread");
    for m in r["setup"]["misuse"].as_array().expect("misuse") {
        assert!(m.is_string(), "misuse did not throw: {m}");
    }
    assert_only_errors(
        &r["errors"]["page1"],
        &[
            "violates the following Content Security Policy directive",
            "status of 400 (Bad Request)",
            "[flowmeter] flowmeter rejected",
        ],
    );
    assert!(r["errors"]["page1"]["console"]
        .as_array()
        .expect("console")
        .iter()
        .any(|m| text(m).contains("[flowmeter] flowmeter rejected")
            && text(m).contains("field peer_id")));

    // The refused origin: 403 on the server, a network error in the page,
    // retried with backoff and logged; polling goes on, the queue is bounded.
    assert_eq!(r["refusedStatus"], 403, "{}", r["refusedBody"]);
    let page2 = &r["page2"];
    assert_eq!(page2["mode"], "worker");
    assert!(s.stream(&text(&r["badMeeting"])).await.is_empty());
    assert_eq!(page2["stopped"]["sent"], 0);
    assert!(int(&page2["before"]["retries"]) >= 3, "{}", page2["before"]);
    assert!(int(&page2["before"]["queued"]) <= 5);
    assert!(int(&page2["before"]["dropped"]) > 0);
    assert!(int(&page2["before"]["polls"]) > int(&page2["mid"]["polls"]));
    assert!(text(&page2["before"]["lastError"]).contains("ingest.cors_origins"));
    // Stats the worker could not be handed as they were still count fully.
    let nc = &page2["stopped"]["perPeer"]["nc"];
    assert_eq!(nc["bytesSent"], page2["truth"]["sent"]);
    assert_eq!(nc["bytesReceived"], page2["truth"]["received"]);
    assert_only_errors(
        &r["errors"]["page2"],
        &[
            "blocked by CORS policy",
            "net::ERR_FAILED",
            "status of 403 (Forbidden)",
            "[flowmeter] queue full",
        ],
    );
    assert!(r["errors"]["page2"]["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .any(|m| text(m).contains("ingest.cors_origins")));

    let total: i64 = sums(&events).values().map(|(a, b, _)| a + b).sum();
    assert_eq!(
        s.hourly("bytes_sent").await + s.hourly("bytes_received").await,
        total
    );
    s.env.cleanup().await;
}
