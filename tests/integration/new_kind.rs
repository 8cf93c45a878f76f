//! A user adds an event kind with a schema, a migration and a processor file,
//! and no Rust: its table fills.

use crate::common;

use std::time::Duration;

use common::*;
use serde_json::json;

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

    let mut env = TestEnv::new("newkind");
    env.settings.paths.schemas = dir.path().join("schemas");
    env.settings.paths.migrations = dir.path().join("migrations");
    env.settings.paths.processors = dir.path().join("processors");
    env.migrate().await;
    let server = env.start("ingest,api,rollup").await;
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
    server.stop().await;
    env.cleanup().await;
}
