//! A user adds an event kind with a schema, a migration, a rollup file, a
//! view file and an alerts file, and no Rust: its table fills, its live
//! channels (`dns:overview`, `dns:resolver:<resolver>`) carry exactly the
//! events posted, in snapshots, updates and resumed updates, and a rule on
//! the view's measure fires for the failing resolver with a message in the
//! view's label and unit.

use crate::common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::ws::*;
use common::*;
use serde_json::{json, Value};

const R1: &str = "dns:resolver:r1";
const OVERVIEW: &str = "dns:overview";

/// A live `dns` event (`ts` now, so the hub counts it).
fn live(resolver: &str, rcode: &str, latency_ms: f64) -> String {
    json!({"kind": "dns", "ts": now_ms(), "resolver": resolver, "qtype": "A",
           "rcode": rcode, "latency_ms": latency_ms, "client": "c1"})
    .to_string()
}

async fn post(client: &reqwest::Client, server: &Server, events: Vec<String>) {
    let (status, body) = post_ndjson(client, &server.url("/v1/events"), events.join("\n")).await;
    assert_eq!(status, 202, "{body}");
}

/// Reads updates until each channel of `want` has carried exactly its
/// number of queries (20 s at most). Every message of those channels must
/// be an update following the last seq of its channel in `seqs` (which it
/// advances), and every point carry `t`, `queries` and `failures`. Returns
/// the failures carried per channel.
async fn updates_until(
    ws: &mut Ws,
    seqs: &mut HashMap<&'static str, i64>,
    want: &[(&'static str, u64)],
) -> HashMap<&'static str, u64> {
    let start = Instant::now();
    let mut queries: HashMap<&str, u64> = HashMap::new();
    let mut failures: HashMap<&'static str, u64> = HashMap::new();
    while want
        .iter()
        .any(|(c, n)| queries.get(c).copied().unwrap_or(0) < *n)
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "updates carried {queries:?} queries, want {want:?}"
        );
        let names: Vec<&str> = want.iter().map(|(c, _)| *c).collect();
        let u = next_where(ws, Duration::from_secs(4), |v| {
            names.iter().any(|c| v["channel"] == *c)
        })
        .await;
        assert_eq!(u["type"], "update", "updates, no further snapshot: {u}");
        let (channel, _) = *want
            .iter()
            .find(|(c, _)| u["channel"] == *c)
            .expect("a wanted channel");
        let seq = seqs.get_mut(channel).expect("a seq for every channel");
        assert_eq!(u["after"].as_i64(), Some(*seq), "no holes: {u}");
        *seq = u["seq"].as_i64().expect("seq");
        let points = u["points"].as_array().expect("points");
        assert!(
            points
                .iter()
                .all(|p| p["t"].is_i64() && p["queries"].is_u64() && p["failures"].is_u64()),
            "{u}"
        );
        *queries.entry(channel).or_default() += field_total(&u["points"], "queries");
        *failures.entry(channel).or_default() += field_total(&u["points"], "failures");
    }
    for (c, n) in want {
        assert_eq!(queries[c], *n, "{c}: exactly the queries posted");
    }
    failures
}

/// `a` equals `b` up to rounding.
fn close(a: &Value, b: f64) -> bool {
    a.as_f64().is_some_and(|a| (a - b).abs() < 1e-9)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_kind_needs_no_rust() {
    let dir = tempfile::tempdir().expect("tempdir");
    for d in ["schemas", "migrations", "processors"] {
        copy_dir(&repo().join(d), &dir.path().join(d));
    }
    std::fs::write(
        dir.path().join("schemas/dns.v1.json"),
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "x-flowmeter": {"kind": "dns", "version": 1, "partition_by": ["resolver"]},
            "required": ["kind", "ts", "resolver", "qtype", "rcode", "latency_ms"],
            "additionalProperties": false,
            "properties": {
                "kind": {"const": "dns"},
                "ts": {"type": ["string", "integer"]},
                "resolver": {"type": "string", "maxLength": 64},
                "qtype": {"enum": ["A", "AAAA", "MX", "TXT"]},
                "rcode": {"enum": ["NOERROR", "NXDOMAIN", "SERVFAIL"]},
                "latency_ms": {"type": "number", "minimum": 0},
                "client": {"type": "string"}
            }
        })
        .to_string(),
    )
    .expect("schema");
    std::fs::write(
        dir.path().join("migrations/0100_dns_rollup.sql"),
        "CREATE TABLE dns_hourly (resolver VARCHAR(64) NOT NULL, qtype VARCHAR(8) NOT NULL, hour DATETIME NOT NULL,
           queries BIGINT UNSIGNED NOT NULL DEFAULT 0, failures BIGINT UNSIGNED NOT NULL DEFAULT 0,
           latency_sum_ms DOUBLE NOT NULL DEFAULT 0, latency_max_ms DOUBLE NULL, latency_p99_ms DOUBLE NULL,
           clients BIGINT UNSIGNED NOT NULL DEFAULT 0, latency_sketch MEDIUMBLOB NULL, clients_hll BLOB NULL,
           PRIMARY KEY (resolver, qtype, hour)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;",
    )
    .expect("migration");
    std::fs::write(
        dir.path().join("processors/dns_rollup.toml"),
        r#"
type = "rollup"
name = "dns_rollup"
group = "rollup"
kinds = ["dns"]
[[table]]
name = "dns_hourly"
window = "hour"
time_column = "hour"
dimensions = ["resolver", "qtype"]
  [[table.measure]]
  op = "count"
  column = "queries"
  [[table.measure]]
  op = "count"
  column = "failures"
  where = "rcode != 'NOERROR'"
  [[table.measure]]
  op = "sum"
  column = "latency_sum_ms"
  value = "latency_ms"
  [[table.measure]]
  op = "max"
  column = "latency_max_ms"
  value = "latency_ms"
  [[table.measure]]
  op = "quantiles"
  sketch_column = "latency_sketch"
  value = "latency_ms"
  outputs = { latency_p99_ms = 0.99 }
  [[table.measure]]
  op = "distinct"
  column = "clients"
  sketch_column = "clients_hll"
  value = "client"
"#,
    )
    .expect("processor");
    std::fs::write(
        dir.path().join("processors/dns_view.toml"),
        r#"
type = "view"
name = "dns"
kind = "dns"
events = "queries"

[[scope]]
name = "overview"

[[scope]]
name = "resolver"
dims = ["resolver"]

[[point]]
name = "queries"
op = "count"

[[point]]
name = "failures"
op = "count"
where = "rcode != 'NOERROR'"

[sketch]
value = "latency_ms"

[[measure]]
name = "queries_per_sec"
op = "rate"
of = ["queries"]
label = "Query rate"
unit = "queries/s"

[[measure]]
name = "failure_rate"
op = "ratio"
of = ["failures"]
per = "queries"
label = "Failure rate"
unit = "percent"

[[measure]]
name = "latency_ms"
op = "quantiles"

[[measure]]
name = "p95_latency_ms"
op = "quantile"
q = 0.95
label = "p95 resolution time"
unit = "ms"
"#,
    )
    .expect("view");
    std::fs::write(
        dir.path().join("processors/dns_alerts.toml"),
        r#"
type = "alerts"

[[rule]]
name = "dns_failure_rate"
type = "threshold"
view = "dns"
scope = "resolver"
measure = "failure_rate"
window_secs = 10
op = ">"
value = 0.5
severity = "high"
for = 1
clear_for = 60
min_events = 5
"#,
    )
    .expect("alerts");

    let mut env = TestEnv::new("newkind");
    env.settings.paths.schemas = dir.path().join("schemas");
    env.settings.paths.migrations = dir.path().join("migrations");
    env.settings.paths.processors = dir.path().join("processors");
    env.settings.hub.tick_grace_ms = 200;
    env.migrate().await;
    let server = env.start("ingest,api,rollup,hub").await;
    let client = http_client();
    let base = 1_772_359_200_000i64; // 2026-03-01T10:00:00Z
    let events: Vec<String> = (0..300)
        .map(|i| {
            json!({"kind": "dns", "ts": base + i * 1000, "resolver": if i % 2 == 0 { "r1" } else { "r2" },
                   "qtype": "A", "rcode": if i % 10 == 0 { "SERVFAIL" } else { "NOERROR" },
                   "latency_ms": (i % 50) as f64, "client": format!("c{}", i % 7)})
            .to_string()
        })
        .collect();
    let (status, body) = post_ndjson(&client, &server.url("/v1/events"), events.join("\n")).await;
    assert_eq!(status, 202, "{body}");
    let store = env.store().await;
    wait_until(Duration::from_secs(30), || {
        let s = store.clone();
        async move { scalar(&s, "SELECT SUM(queries) FROM dns_hourly").await == 300 }
    })
    .await;
    assert_eq!(
        scalar(&store, "SELECT SUM(failures) FROM dns_hourly").await,
        30
    );
    assert_eq!(
        scalar(&store, "SELECT MAX(latency_max_ms) FROM dns_hourly").await,
        49
    );
    assert_eq!(
        scalar(&store, "SELECT SUM(clients) FROM dns_hourly").await,
        14
    );
    // queryable through the API like the shipped kinds
    let rows = get_json(
        &client,
        server.url("/v1/rollups/hourly?kind=dns&from=2026-03-01T00:00:00Z&to=2026-03-02T00:00:00Z&resolver=r1"),
    )
    .await;
    assert_eq!(rows["rows"].as_array().map(Vec::len), Some(1), "{rows}");
    assert_eq!(rows["rows"][0]["queries"], 150);

    // Live channels. The batch above is back-dated: the hub skipped it, so
    // the channels start empty.
    hub_ticking(&server).await;
    let mut ws = connect(&server, "").await;
    send(
        &mut ws,
        json!({"op": "subscribe", "channels": [R1, OVERVIEW], "interval_ms": 1000}),
    )
    .await;
    let mut seqs = HashMap::new();
    for channel in [R1, OVERVIEW] {
        let snap = next_where(&mut ws, Duration::from_secs(5), is("snapshot", channel)).await;
        assert_eq!(
            snap["summary"]["1m"],
            Value::Null,
            "back-dated events are not live: {snap}"
        );
        assert_eq!(field_total(&snap["series"]["1s"], "queries"), 0, "{snap}");
        seqs.insert(channel, snap["seq"].as_i64().expect("seq"));
    }
    // r1: 30 queries, latencies 1..=30 ms, 6 NXDOMAIN; r2: 10 good ones
    let mut batch: Vec<String> = (1..=30)
        .map(|i| {
            live(
                "r1",
                if i % 5 == 0 { "NXDOMAIN" } else { "NOERROR" },
                i as f64,
            )
        })
        .collect();
    batch.extend((0..10).map(|_| live("r2", "NOERROR", 5.0)));
    post(&client, &server, batch).await;
    let failures = updates_until(&mut ws, &mut seqs, &[(R1, 30), (OVERVIEW, 40)]).await;
    assert_eq!((failures[R1], failures[OVERVIEW]), (6, 6));

    // a new subscriber's snapshot holds them, and the view's measures
    let mut ws2 = connect(&server, "").await;
    send(
        &mut ws2,
        json!({"op": "subscribe", "channels": [R1, OVERVIEW], "interval_ms": 1000}),
    )
    .await;
    let snap = next_where(&mut ws2, Duration::from_secs(5), is("snapshot", R1)).await;
    assert_eq!(snap["channel"], R1);
    assert_eq!(
        (&snap["full"], &snap["reason"]),
        (&json!(true), &json!("subscribe"))
    );
    let m1 = &snap["summary"]["1m"];
    assert!(close(&m1["queries_per_sec"], 30.0 / 60.0), "{m1}");
    assert!(close(&m1["failure_rate"], 6.0 / 30.0), "{m1}");
    assert!(
        close(&snap["summary"]["5m"]["queries_per_sec"], 30.0 / 300.0),
        "{}",
        snap["summary"]
    );
    let q = |k: &str| {
        m1["latency_ms"][k]
            .as_f64()
            .unwrap_or_else(|| panic!("latency_ms.{k}: {m1}"))
    };
    let (p50, p95, p99) = (q("p50"), q("p95"), q("p99"));
    // DDSketch quantiles of 1..=30 ms, within 1 %
    assert!((14.0..=17.0).contains(&p50), "{m1}");
    assert!((27.0..=30.5).contains(&p95), "{m1}");
    assert!((28.5..=30.5).contains(&p99) && p95 <= p99, "{m1}");
    let p95_measure = m1["p95_latency_ms"].as_f64().expect("p95_latency_ms");
    assert!(
        (p95_measure - p95).abs() < 0.01,
        "the quantile measure and the quantiles agree: {m1}"
    );
    let s1 = &snap["series"]["1s"];
    assert_eq!(s1["step_ms"], 1000);
    assert_eq!(s1["queries"].as_array().map(Vec::len), Some(300));
    assert_eq!(field_total(s1, "queries"), 30, "{s1}");
    assert_eq!(field_total(s1, "failures"), 6, "{s1}");
    let s60 = &snap["series"]["1m"];
    assert_eq!(field_total(s60, "queries"), 30, "{s60}");
    for k in ["t", "p50", "p95", "p99"] {
        assert!(
            s60[k].as_array().is_some_and(|c| !c.is_empty()),
            "1m series {k}: {s60}"
        );
    }
    let over = next_where(&mut ws2, Duration::from_secs(5), is("snapshot", OVERVIEW)).await;
    let o1 = &over["summary"]["1m"];
    assert!(close(&o1["queries_per_sec"], 40.0 / 60.0), "{o1}");
    assert!(close(&o1["failure_rate"], 6.0 / 40.0), "{o1}");
    assert_eq!(field_total(&over["series"]["1s"], "queries"), 40);

    // resume: the first client leaves, 10 queries come while it is away
    // (ws2 sees them closed), it comes back with its last seq and gets them
    // in one resumed update, not a snapshot
    let resume_from = seqs[R1];
    drop(ws);
    post(
        &client,
        &server,
        (0..10).map(|_| live("r1", "NOERROR", 10.0)).collect(),
    )
    .await;
    let mut seqs2 = HashMap::from([(R1, snap["seq"].as_i64().expect("seq"))]);
    updates_until(&mut ws2, &mut seqs2, &[(R1, 10)]).await;
    let mut ws3 = connect(&server, "").await;
    send(
        &mut ws3,
        json!({"op": "subscribe", "channels": [R1], "interval_ms": 1000, "resume": {R1: resume_from}}),
    )
    .await;
    let first = next_where(&mut ws3, Duration::from_secs(3), |v| v["channel"] == R1).await;
    assert_eq!(first["type"], "update", "{first}");
    assert_eq!(
        (&first["resumed"], first["after"].as_i64()),
        (&json!(true), Some(resume_from)),
        "{first}"
    );
    assert_eq!(
        field_total(&first["points"], "queries"),
        10,
        "exactly the queries missed: {first}"
    );
    assert_eq!(field_total(&first["points"], "failures"), 0, "{first}");
    let next = next_where(&mut ws3, Duration::from_secs(3), |v| v["channel"] == R1).await;
    assert_eq!(next["type"], "update", "still no snapshot: {next}");
    assert_eq!(next["after"], first["seq"], "{next}");

    // an unknown channel: the error names the forms the views generate
    send(
        &mut ws3,
        json!({"op": "subscribe", "channels": ["dns:nope:x"]}),
    )
    .await;
    let e = next_where(&mut ws3, Duration::from_secs(3), is("error", "")).await;
    let text = e["error"].as_str().unwrap_or_default();
    assert!(
        text.starts_with("unknown channel \"dns:nope:x\"")
            && text.contains("dns:overview")
            && text.contains("dns:resolver:<resolver>"),
        "{e}"
    );

    // r1 fails: the rule fires for r1 alone, pushed and stored
    send(&mut ws3, json!({"op": "subscribe", "channels": ["alerts"]})).await;
    let open = next_where(&mut ws3, Duration::from_secs(3), is("snapshot", "alerts")).await;
    assert_eq!(
        open["open"],
        json!([]),
        "nothing fired at 20 % failures: {open}"
    );
    let mut batch: Vec<String> = (0..60)
        .map(|i| live("r1", if i % 20 == 0 { "NOERROR" } else { "SERVFAIL" }, 40.0))
        .collect();
    batch.extend((0..20).map(|_| live("r2", "NOERROR", 5.0)));
    post(&client, &server, batch).await;
    let fired = next_where(&mut ws3, Duration::from_secs(15), is("alert", "")).await;
    assert_eq!(fired["state"], "fired", "{fired}");
    let a = &fired["alert"];
    assert_eq!(a["rule"], "dns_failure_rate", "{fired}");
    assert_eq!(a["subject"], R1, "{fired}");
    assert_eq!(
        (&a["protocol"], &a["metric"]),
        (&json!("dns"), &json!("failure_rate"))
    );
    assert_eq!(a["severity"], "high");
    // at most 57 of r1's 60 last queries failed
    assert!(
        a["value"]
            .as_f64()
            .is_some_and(|v| v > 0.5 && v <= 57.0 / 60.0 + 1e-9),
        "{fired}"
    );
    let message = a["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("Failure rate on resolver r1 is ")
            && message.contains(" %, above 50 % for "),
        "{message}"
    );
    let listed = get_json(&client, server.url("/v1/alerts?state=open")).await;
    assert_eq!(listed["count"], 1, "{listed}");
    assert_eq!(listed["alerts"][0]["rule"], "dns_failure_rate", "{listed}");
    assert_eq!(listed["alerts"][0]["subject"], R1, "{listed}");
    assert_eq!(listed["alerts"][0]["id"], a["id"], "{listed}");

    drop((ws2, ws3));
    server.stop().await;
    env.cleanup().await;
}
