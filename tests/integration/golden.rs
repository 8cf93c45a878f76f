//! Golden test: testdata/golden/events.ndjson (both kinds, several days, late
//! and out-of-order events, mixed timestamp formats) goes through the real
//! ingest API, Redis and the rollup runner into MariaDB; the rows served by the
//! query API must equal testdata/golden/expected.json, which
//! scripts/golden_expected.py computed independently (exact arithmetic).

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Tolerances: sketch quantiles ≤ 1 % relative, HyperLogLog ≤ 2 % (or 1 for
/// tiny sets), everything else exact up to float summation order.
fn tolerance(col: &str, expected: f64) -> f64 {
    let quantile = col.starts_with('p') && col.ends_with("_ms") && col.len() <= 6
        || col.ends_with("_p95_ms")
        || col.ends_with("_p95");
    if quantile {
        0.01 * expected.abs() + 1e-9
    } else if matches!(col, "unique_users" | "peers" | "meetings") {
        (0.02 * expected.abs()).max(1.0)
    } else {
        1e-9 * expected.abs().max(1.0)
    }
}

fn key_of(row: &Value, keys: &[&str]) -> String {
    keys.iter()
        .map(|k| row.get(*k).map(|v| v.to_string()).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("|")
}

async fn compare(
    client: &reqwest::Client,
    server: &Server,
    table: &str,
    expected: &[Value],
) -> Vec<String> {
    let (window, kind, keys): (&str, &str, &[&str]) = match table {
        "http_hourly" => ("hourly", "http", &["service", "endpoint", "method", "hour"]),
        "http_daily" => ("daily", "http", &["service", "day"]),
        "webrtc_hourly" => ("hourly", "webrtc", &["meeting_id", "hour"]),
        "webrtc_daily" => ("daily", "webrtc", &["day"]),
        other => panic!("unknown table {other}"),
    };
    let url = server.url(&format!(
        "/v1/rollups/{window}?kind={kind}&from=2026-02-01T00:00:00Z&to=2026-04-01T00:00:00Z&limit=100000"
    ));
    let body = get_json(client, url).await;
    let rows = body["rows"].as_array().cloned().unwrap_or_default();
    let actual: HashMap<String, &Value> = rows.iter().map(|r| (key_of(r, keys), r)).collect();
    let mut problems = Vec::new();
    if rows.len() != expected.len() {
        problems.push(format!(
            "{table}: {} rows, expected {}",
            rows.len(),
            expected.len()
        ));
    }
    for exp in expected {
        let k = key_of(exp, keys);
        let Some(act) = actual.get(&k) else {
            problems.push(format!("{table}: missing row {k}"));
            continue;
        };
        for (col, ev) in exp.as_object().into_iter().flatten() {
            let av = act.get(col).unwrap_or(&Value::Null);
            let ok = match (ev.as_f64(), av.as_f64()) {
                (Some(e), Some(a)) => (e - a).abs() <= tolerance(col, e),
                (None, None) => ev == av,
                _ => ev.is_null() && av.is_null(),
            };
            if !ok {
                problems.push(format!("{table} {k}: {col} = {av}, expected {ev}"));
            }
        }
    }
    problems
}

/// `cluster::golden_rows_on_a_cluster` runs the same on a Redis Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_rows_match_the_independent_computation() {
    golden_rows_match(TestEnv::new("golden")).await;
}

/// The body of the golden test on `env`'s Redis (one server or a cluster).
pub(crate) async fn golden_rows_match(env: TestEnv) {
    env.migrate().await;
    let server = env.start("ingest,api,rollup").await;
    let client = http_client();

    let events = std::fs::read_to_string(repo().join("testdata/golden/events.ndjson"))
        .expect("golden events");
    let lines: Vec<&str> = events.lines().filter(|l| !l.trim().is_empty()).collect();
    let (mut http, mut webrtc) = (0i64, 0i64);
    for l in &lines {
        if l.contains("\"kind\":\"http\"") || l.contains("\"kind\": \"http\"") {
            http += 1;
        } else {
            webrtc += 1;
        }
    }
    for chunk in lines.chunks(1000) {
        let (status, body) =
            post_ndjson(&client, &server.url("/v1/events"), chunk.join("\n")).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["accepted"], chunk.len());
    }
    let store = env.store().await;
    wait_until(Duration::from_secs(60), || {
        let store = store.clone();
        async move {
            scalar(&store, "SELECT SUM(requests) FROM http_hourly").await == http
                && scalar(&store, "SELECT SUM(samples) FROM webrtc_hourly").await == webrtc
        }
    })
    .await;

    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("testdata/golden/expected.json"))
            .expect("expected.json"),
    )
    .expect("expected json");
    let mut problems = Vec::new();
    for table in ["http_hourly", "http_daily", "webrtc_hourly", "webrtc_daily"] {
        let rows = expected[table].as_array().cloned().unwrap_or_default();
        assert!(!rows.is_empty(), "expected.json has no {table} rows");
        problems.extend(compare(&client, &server, table, &rows).await);
    }
    server.stop().await;
    env.cleanup().await;
    assert!(
        problems.is_empty(),
        "{} mismatches:\n{}",
        problems.len(),
        problems
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
