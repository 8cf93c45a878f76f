//! The `flowmeter-bench` binary, without servers: its commands and the
//! global options it shares with `flowmeter`.
//!
//! Named `integration` like the root crate's test binary on purpose:
//! `cargo test --test integration` at the workspace root then builds this
//! crate's binary (an integration test's package's binaries are built
//! first) next to `flowmeter`, where the root's tests of `flowmeter
//! loadgen|verify|bench` need it.

use std::process::Command;

/// `flowmeter-bench` with `args`: whether it succeeded, stdout, stderr.
fn run(args: &[&str]) -> (bool, String, String) {
    let bin = env!("CARGO_BIN_EXE_flowmeter-bench");
    let out = Command::new(bin).args(args).output().expect("run");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn help_lists_the_three_commands_and_the_global_options() {
    let (ok, stdout, stderr) = run(&["--help"]);
    assert!(ok, "{stderr}");
    for word in ["loadgen", "verify", "bench", "--config", "--profile"] {
        assert!(stdout.contains(word), "no {word} in:\n{stdout}");
    }
}

#[test]
fn the_ws_bench_has_its_own_help() {
    let (ok, stdout, stderr) = run(&["bench", "ws", "--help"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("--subscribers"), "{stdout}");
}

#[test]
fn the_cluster_bench_has_its_own_help() {
    let (ok, stdout, stderr) = run(&["bench", "cluster", "--help"]);
    assert!(ok, "{stderr}");
    for word in ["--workers", "--cluster-nodes", "--masters"] {
        assert!(stdout.contains(word), "no {word} in:\n{stdout}");
    }
}

#[test]
fn a_missing_config_file_is_an_error_naming_it() {
    let (ok, _, stderr) = run(&[
        "--config",
        "/nonexistent/flowmeter.toml",
        "verify",
        "--truth",
        "x",
    ]);
    assert!(!ok);
    assert!(stderr.contains("loading the configuration"), "{stderr}");
}
