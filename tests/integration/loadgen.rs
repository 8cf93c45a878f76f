//! `flowmeter loadgen` against a running stack: its truth (exact totals per
//! hour and dimension of what was accepted) equals the rollup tables.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::*;
use flowmeter_bench::loadgen::{KindMix, LoadOptions, Target};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truth_equals_the_rollup_tables() {
    let mut env = TestEnv::new("loadgen");
    env.settings.rollup.flush_interval_ms = 100;
    env.migrate().await;
    let server = env.start("ingest,api,rollup").await;
    let opts = LoadOptions {
        rate: 4_000.0,
        duration: Some(Duration::from_secs(2)),
        kind: KindMix::Mixed,
        batch: 200,
        concurrency: 2,
        seed: 9,
        target: Target::Api(server.url("")),
        truth: None,
        progress: None,
        incident: None,
        hot: None,
    };
    let report = flowmeter_bench::loadgen::run(&env.settings, &opts, CancellationToken::new())
        .await
        .expect("loadgen");
    assert_eq!(report.sent, 8_000);
    assert_eq!(
        report.accepted,
        8_000,
        "{}",
        flowmeter_bench::cli::loadgen::render(&report)
    );
    assert_eq!(report.truth.events(), 8_000);
    assert!(
        report.truth.len() > 50,
        "too few distinct rows: {}",
        report.truth.len()
    );
    let store = env.store().await;
    wait_until(Duration::from_secs(30), || {
        let s = store.clone();
        async move {
            scalar(&s, "SELECT (SELECT COALESCE(SUM(requests),0) FROM http_hourly) + (SELECT COALESCE(SUM(samples),0) FROM webrtc_hourly)").await
                >= 8_000
        }
    })
    .await;
    let diffs = report.truth.compare(&store).await.expect("compare");
    assert!(
        diffs.is_empty(),
        "{} differences, first: {:?}",
        diffs.len(),
        &diffs[..diffs.len().min(5)]
    );
    server.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn cli_sends_into_redis_and_writes_the_truth_file() {
    let env = TestEnv::new("loadgen_cli");
    let dir = tempfile::tempdir().expect("tmp");
    let config = env.write_config(dir.path());
    let truth = dir.path().join("truth.ndjson");
    let out = Command::new(env!("CARGO_BIN_EXE_flowmeter"))
        .arg("--config")
        .arg(&config)
        .args([
            "loadgen",
            "--redis",
            "--rate",
            "5000",
            "--duration",
            "1",
            "--kind",
            "http",
            "--truth",
        ])
        .arg(&truth)
        .output()
        .expect("run loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // not a terminal: no progress bar, no escape codes, nothing to redraw
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !format!("{stdout}{stderr}").contains(['\x1b', '\r']),
        "{stdout:?}\n{stderr:?}"
    );
    let row = stdout.lines().nth(2).unwrap_or_default();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells.get(..2), Some(&["5000", "5000"][..]), "{stdout}");
    let in_streams: usize = stream_events(&env, "http").await.iter().map(Vec::len).sum();
    assert_eq!(in_streams, 5_000);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&truth)
        .expect("truth file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let requests: u64 = lines.iter().filter_map(|l| l["requests"].as_u64()).sum();
    assert_eq!(requests, 5_000);
    env.cleanup().await;
}
