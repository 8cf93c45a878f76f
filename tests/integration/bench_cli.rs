//! `flowmeter bench` end to end on a small load: it spawns its own ingest and
//! rollup processes, and exits non-zero unless every rollup total equals what
//! it sent. And, without servers, how `flowmeter` hands `bench`, `loadgen`
//! and `verify` to the `flowmeter-bench` binary next to it.

use crate::common;

use std::process::Command;

use common::*;

/// Runs `flowmeter bench` with a small load and `extra` options in the
/// env's own prefix; asserts it succeeded (every total matched); returns stdout.
fn small_bench(env: &TestEnv, events: &str, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tmp");
    let config = env.write_config(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_flowmeter"))
        .arg("--config")
        .arg(&config)
        .args(["bench", "--events", events, "--batch", "500", "--runs", "1"])
        .args(extra)
        .args(["--quiet", "--prefix", &env.name])
        .output()
        .expect("run flowmeter bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed:\n{stdout}\n{stderr}");
    stdout
}

#[tokio::test]
async fn bench_runs_and_checks_the_totals() {
    let _heavy = common::heavy().await;
    let env = TestEnv::new("bench");
    let stdout = small_bench(&env, "6000", &["--reference-entries", "2000"]);
    let medians: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.starts_with("median"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        medians.len(),
        2,
        "two tables with a median row each:\n{stdout}"
    );
    assert_eq!(medians[0].get(1), Some(&"6000"), "{stdout}");
    // the latency phase ran: a steady rate and an XADD-to-row p99 were measured
    let steady: f64 = medians[1]
        .get(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0.0);
    assert!(steady > 0.0, "{stdout}");
    assert_eq!(medians[1].len(), 5, "{stdout}");
    assert!(stdout.contains("reference: redis-benchmark"), "{stdout}");
    env.cleanup().await;
}

#[tokio::test]
async fn bench_compares_ingest_with_and_without_idempotency_keys() {
    let _heavy = common::heavy().await;
    let env = TestEnv::new("benchkeys");
    // Both runs pass the totals check: a keyed run that wrote a batch twice
    // or not at all fails the bench.
    let stdout = small_bench(
        &env,
        "3000",
        &[
            "--latency-secs",
            "0",
            "--reference-entries",
            "1000",
            "--idempotency-keys",
            "both",
        ],
    );
    assert!(stdout.contains("== with Idempotency-Key"), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("Idempotency-Key: median ingest"))
        .unwrap_or_else(|| panic!("no comparison line:\n{stdout}"));
    assert!(line.contains(" %; p99"), "{line}");
    env.cleanup().await;
}

#[tokio::test]
async fn ws_bench_measures_lag_memory_and_a_stalled_client() {
    let _heavy = common::heavy().await;
    let env = TestEnv::new("benchws");
    let dir = tempfile::tempdir().expect("tmp");
    let config = env.write_config(dir.path());
    let stdout = cli_ok(
        &config,
        &[
            "bench",
            "ws",
            "--subscribers",
            "40",
            "--rate",
            "300",
            "--secs",
            "3",
            "--stall-secs",
            "1",
            "--quiet",
            "--prefix",
            &env.name,
        ],
    );
    let row = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l[name.len()..].trim().to_string())
            .unwrap_or_else(|| panic!("no {name:?} row:\n{stdout}"))
    };
    assert_eq!(row("subscribers connected"), "40 of 40");
    let p99: f64 = row("delivery lag p99 ms").parse().expect("a number");
    assert!(p99 > 0.0, "{stdout}");
    let received: u64 = row("updates received / expected")
        .split(" / ")
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(received >= 40, "every subscriber got updates:\n{stdout}");
    assert_eq!(row("stalled client: snapshot after catching up"), "yes");
    env.cleanup().await;
}

#[tokio::test]
async fn cluster_bench_sets_a_cluster_beside_the_single_redis() {
    // starts six Redis nodes and its children: not beside the heavy tests
    let _heavy = common::heavy().await;
    let env = TestEnv::new("benchcluster");
    let dir = tempfile::tempdir().expect("tmp");
    let config = env.write_config(dir.path());
    // every run checks its totals: a case that lost or doubled an event fails
    let stdout = cli_ok(
        &config,
        &[
            "bench",
            "cluster",
            "--events",
            "3000",
            "--batch",
            "500",
            "--runs",
            "1",
            "--workers",
            "1,2",
            "--reference-entries",
            "2000",
            "--quiet",
            "--prefix",
            &env.name,
        ],
    );
    let rows = |first: &str| -> Vec<Vec<String>> {
        stdout
            .lines()
            .filter(|l| l.starts_with(first))
            .map(|l| l.split_whitespace().map(str::to_owned).collect())
            .collect()
    };
    // end to end: single, cluster with wait_replicas 0 and 1; rollup alone:
    // 1 and 2 workers on each
    let (single, cluster) = (rows("single "), rows("cluster "));
    assert_eq!((single.len(), cluster.len()), (3, 4), "{stdout}");
    let wait: Vec<&str> = cluster.iter().take(2).map(|r| r[1].as_str()).collect();
    assert_eq!(wait, ["0", "1"], "{stdout}");
    let rate: f64 = single[1][2].parse().unwrap_or(0.0);
    assert!(rate > 0.0, "a rollup rate:\n{stdout}");
    let cpu: f64 = single[1][4].parse().unwrap_or(0.0);
    assert!(cpu > 0.0, "the workers' CPU per event:\n{stdout}");
    assert!(stdout.contains("wait_replicas 1 against 0"), "{stdout}");
    assert!(stdout.contains("load average"), "{stdout}");
    env.cleanup().await;
}

/// `bin` (a `flowmeter`) with `args`, without a config.
fn flowmeter(bin: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(bin)
        .args(args)
        .output()
        .expect("run flowmeter")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_bench_commands_are_forwarded_with_their_own_help() {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_flowmeter"));
    let top = text(&flowmeter(bin, &["--help"]).stdout);
    for sub in ["loadgen", "verify", "bench"] {
        assert!(
            top.lines().any(|l| l.trim_start().starts_with(sub)),
            "no {sub} in:\n{top}"
        );
    }
    // the help is flowmeter-bench's, under the name the user typed
    let out = flowmeter(bin, &["bench", "--help"]);
    let help = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(help.contains("--reference-entries"), "{help}");
    assert!(help.contains("Usage: flowmeter bench"), "{help}");
    let help = text(&flowmeter(bin, &["--profile", "demo", "bench", "ws", "--help"]).stdout);
    assert!(help.contains("--subscribers"), "{help}");
    // its exit code comes back: 2 for a usage error
    let out = flowmeter(bin, &["loadgen", "--no-such-option"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--no-such-option"), "{err}");
}

#[test]
fn a_missing_flowmeter_bench_binary_is_one_clear_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let alone = dir.path().join("flowmeter");
    std::fs::copy(env!("CARGO_BIN_EXE_flowmeter"), &alone).expect("copy flowmeter");
    let out = flowmeter(&alone, &["loadgen", "--rate", "5"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let wanted = dir.path().join("flowmeter-bench");
    assert!(err.contains(&*wanted.to_string_lossy()), "{err}");
    assert!(
        err.contains("cargo build --release -p flowmeter-bench"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}
