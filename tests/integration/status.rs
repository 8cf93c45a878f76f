//! `GET /v1/status` and `flowmeter status`: checkpoints, owners, workers,
//! lag and lag age, and the probe's exit code.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_checkpoints_owners_and_lag_age() {
    let mut env = TestEnv::new("status");
    env.settings.redis.shards = 2;
    env.settings.rollup.flush_interval_ms = 100;
    env.migrate().await;
    let server = env.start("ingest,api,rollup").await;
    let client = http_client();
    let events: Vec<String> = (0..200)
        .map(|i| http_event(i, 1_772_359_200_000 + i as i64).to_string())
        .collect();
    let (code, _) = post_ndjson(&client, &server.url("/v1/events"), events.join("\n")).await;
    assert_eq!(code, 202);
    let store = env.store().await;
    wait_until(Duration::from_secs(20), || {
        let s = store.clone();
        async move { scalar(&s, "SELECT SUM(requests) FROM http_hourly").await == 200 }
    })
    .await;
    // workers publish their figures after each flush
    tokio::time::sleep(Duration::from_millis(500)).await;
    let st = get_json(&client, server.url("/v1/status")).await;
    let http = st["processors"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "http_rollup"))
        .cloned()
        .unwrap_or(Value::Null);
    let shards = http["shards"].as_array().cloned().unwrap_or_default();
    assert_eq!(shards.len(), 2, "{st}");
    for sh in &shards {
        assert!(sh["checkpoint"].is_string(), "no checkpoint: {sh}");
        assert!(sh["owner"].is_string(), "no owner: {sh}");
    }
    assert_eq!(http["workers"][0]["events_total"], 200, "{http}");
    for s in st["streams"].as_array().cloned().unwrap_or_default() {
        for g in s["groups"].as_array().cloned().unwrap_or_default() {
            assert_eq!(
                g["lag_age_secs"], 0.0,
                "caught-up group with a lag age: {g}"
            );
        }
    }
    server.stop().await;

    // A group nobody reads falls behind: its lag age grows with new entries.
    let ingest = env.start("ingest").await;
    let mut r = env.redis().await;
    for i in 0..2 {
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(format!("{}:{{http:{i}}}", env.name))
            .arg("laggard")
            .arg("$")
            .query_async(&mut r)
            .await
            .expect("group");
    }
    let one = |i: u64| http_event(i, 1_772_359_200_000).to_string();
    post_ndjson(
        &client,
        &ingest.url("/v1/events"),
        (0..20).map(one).collect::<Vec<_>>().join("\n"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    post_ndjson(
        &client,
        &ingest.url("/v1/events"),
        (20..40).map(one).collect::<Vec<_>>().join("\n"),
    )
    .await;
    ingest.stop().await;

    let dir = tempfile::tempdir().expect("tmp");
    let config = env.write_config(dir.path());
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_flowmeter"))
            .arg("--config")
            .arg(&config)
            .arg("status")
            .args(args)
            .output()
            .expect("flowmeter status")
    };
    let probe = run(&["--max-lag-secs", "1"]);
    let stderr = String::from_utf8_lossy(&probe.stderr);
    assert_eq!(probe.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("laggard"), "{stderr}");
    let ok = run(&["--max-lag-secs", "120"]);
    assert_eq!(ok.status.code(), Some(0));
    let table = String::from_utf8_lossy(&ok.stdout);
    for section in [
        "STREAMS",
        "GROUPS",
        "SHARDS",
        "WORKERS",
        "lag age s",
        "laggard",
    ] {
        assert!(table.contains(section), "no {section} in:\n{table}");
    }
    // stream positions read as times, not ids
    let raw_id = |w: &str| {
        w.split_once('-').is_some_and(|(ms, seq)| {
            ms.len() >= 13
                && ms.chars().all(|c| c.is_ascii_digit())
                && seq.chars().all(|c| c.is_ascii_digit())
        })
    };
    let ids: Vec<&str> = table.split_whitespace().filter(|w| raw_id(w)).collect();
    assert!(ids.is_empty(), "raw stream ids {ids:?} in:\n{table}");
    assert!(table.contains("2026-"), "no times in:\n{table}");
    // disabled processors take one line, not a row per shard
    let shards = table
        .split("\nSHARDS\n")
        .nth(1)
        .and_then(|s| s.split("\nWORKERS\n").next())
        .unwrap_or_default();
    assert!(
        shards.contains("kafka_bridge, clickhouse_archive: disabled")
            || shards.contains("clickhouse_archive, kafka_bridge: disabled"),
        "{shards}"
    );
    assert!(
        !shards.lines().any(|l| l.starts_with("kafka_bridge ")),
        "{shards}"
    );

    // log lines into a pipe carry no colour codes (MySQL unreachable warns)
    let warned = Command::new(env!("CARGO_BIN_EXE_flowmeter"))
        .arg("--config")
        .arg(&config)
        .arg("status")
        .env("FLOWMETER__MYSQL__URL", "mysql://root@127.0.0.1:1/nothing")
        .env_remove("NO_COLOR")
        .output()
        .expect("flowmeter status");
    let stderr = String::from_utf8_lossy(&warned.stderr);
    assert!(stderr.contains("MySQL"), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "colour codes into a pipe: {stderr:?}"
    );
    // the laggard's lag age on each shard, from `status --json`
    let laggard_ages = || {
        let json: Value = serde_json::from_slice(&run(&["--json"]).stdout).expect("json");
        json["streams"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["groups"].as_array().cloned().unwrap_or_default())
            .filter(|g| g["group"] == "laggard")
            .filter_map(|g| g["lag_age_secs"].as_f64())
            .collect::<Vec<f64>>()
    };
    let ages = laggard_ages();
    assert_eq!(ages.len(), 2);
    assert!(ages.iter().any(|a| *a >= 1.5), "{ages:?}");
    // no new traffic: the stuck group's lag age still grows (measured to now)
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let later = laggard_ages();
    for (before, after) in ages.iter().zip(&later) {
        assert!(after - before >= 1.0, "{ages:?} then {later:?}");
    }

    // --watch redraws until stopped (here: after 2 refreshes, not a terminal)
    let started = std::time::Instant::now();
    let watched = run(&["--watch", "--interval", "0.2", "--iterations", "2"]);
    let text = String::from_utf8_lossy(&watched.stdout);
    assert!(watched.status.success(), "{text}");
    assert_eq!(text.matches("flowmeter status at").count(), 2, "{text}");
    assert_eq!(text.matches("\nGROUP TOTALS\n").count(), 2, "{text}");
    assert!(
        !text.contains('\x1b'),
        "no cursor moves into a pipe: {text:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    let refused = run(&["--watch", "--interval", "0.05"]);
    assert_eq!(
        refused.status.code(),
        Some(2),
        "an interval below the floor"
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("0.2"));
    env.cleanup().await;
}

#[test]
fn an_unreachable_redis_or_mysql_is_named_once_with_its_url_and_what_to_do() {
    let env = TestEnv::new("status_noredis");
    let dir = tempfile::tempdir().expect("tmp");
    let config = env.write_config(dir.path());
    // (command, variable, unreachable URL with a password, the URL as shown)
    let cases = [
        (
            "status",
            "FLOWMETER__REDIS__URL",
            "redis://:s3cret@127.0.0.1:1",
            "redis://:***@127.0.0.1:1",
        ),
        (
            "migrate",
            "FLOWMETER__MYSQL__URL",
            "mysql://root:s3cret@127.0.0.1:1/status_nomysql",
            "mysql://root:***@127.0.0.1:1/status_nomysql",
        ),
    ];
    for (command, var, url, shown) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_flowmeter"))
            .arg("--config")
            .arg(&config)
            .arg(command)
            .env(var, url)
            .env("RUST_BACKTRACE", "1")
            .output()
            .expect("run flowmeter");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command}: {stderr}");
        assert!(
            stderr.contains(shown),
            "{command}: the URL tried, password masked: {stderr}"
        );
        assert!(!stderr.contains("s3cret"), "{stderr}");
        assert!(stderr.contains("scripts/services start"), "{stderr}");
        assert_eq!(
            stderr.matches("refused").count(),
            1,
            "{command}: the cause once: {stderr}"
        );
        assert!(
            !stderr.contains("TLS"),
            "a refusal is no TLS matter: {stderr}"
        );
        assert!(!stderr.contains("backtrace"), "{stderr}");
    }
}
