//! The command line: the top-level [`Cli`] parser, [`dispatch`] to one
//! module per subcommand, and everything that is only for a person at a
//! terminal (tables, progress bars, human text).
//!
//! Each subcommand's file holds its clap arguments, the calls into the
//! library and the rendering of what they return. The library answers in
//! typed data (`Status`, `LoadReport`, `Vec<ShardChange>`…); nothing outside
//! `cli/` imports from here (a test in this module checks it), so the
//! dependencies point one way: library → cli → `main.rs`.
//!
//! `anyhow` is used here, at the binary's edge, and nowhere below.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;

pub mod bench;
pub mod config;
pub mod dlq;
pub mod groups;
pub mod human;
pub mod loadgen;
pub mod migrate;
pub mod query;
pub mod replay;
pub mod serve;
pub mod status;
pub mod table;
pub mod trim;
pub mod verify;

/// flowmeter: traffic and bandwidth metrics, event-sourced.
///
/// Collectors POST events to the ingest API, which appends them to Redis
/// Streams; consumer groups fold them into MySQL hourly and daily rollups,
/// exactly once in effect. See README.md and docs/.
#[derive(Parser)]
#[command(name = "flowmeter", version, about, long_about)]
pub struct Cli {
    /// Config file (TOML). Without it, ./flowmeter.toml is read when present.
    /// Environment variables FLOWMETER__SECTION__KEY override both.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,

    /// A named setup above the config file: `demo` acts on the data of
    /// `make demo` (prefix and database `fmdemo`). Without it,
    /// FLOWMETER_PROFILE names one. FLOWMETER__SECTION__KEY variables still
    /// override it.
    #[arg(long, global = true, value_name = "NAME")]
    profile: Option<String>,

    #[command(subcommand)]
    command: Command,
}

// The doc comments of the variants are the subcommands' `--help` texts
// (the first paragraph their one line in `flowmeter --help`).
#[derive(Subcommand)]
enum Command {
    /// Run the server: ingest API, query API, the processors of processors/
    /// and the realtime WebSocket hub.
    Serve(serve::ServeArgs),
    /// Create the database if missing and apply migrations/.
    Migrate,
    /// Print the effective configuration (passwords masked).
    Config,
    /// Dead letters: entries a group could not process (e.g. undecodable
    /// data), kept in {prefix}:dlq:{group} with the error and the original.
    Dlq(dlq::DlqArgs),
    /// Consumer groups: list them, create one at a position, move one, delete
    /// one. A group exists once per shard stream; these act on all of them.
    Groups(groups::GroupsArgs),
    /// Rebuild one rollup processor's rows for an event-time range from the
    /// retained stream history, while live processing continues. Idempotent:
    /// rows end equal to a fresh computation over the same events. Ranges
    /// widen to whole windows (hours, days). Refuses when retention has
    /// already dropped entries the range needs.
    Replay(replay::ReplayArgs),
    /// Apply retention once now (the rollup role does it every
    /// retention.interval_ms): trim each stream by age and length, never past
    /// what a group still needs, except for retention.hard_max_len.
    Trim(trim::TrimArgs),
    /// Ask the ClickHouse archive about raw events, like GET
    /// /v1/events/search: e.g. the slowest requests of one endpoint
    /// (`--where service=courses --where endpoint=/api/courses/:id
    /// --order-by duration_ms`) or everything one user did (`--where
    /// user_id=u42`). Needs the archive enabled (docs/archive.md).
    Query(query::QueryArgs),
    /// Show streams (length, ids, retention window), consumer groups (lag,
    /// lag age, pending, consumers), shard checkpoints and owners, and rollup
    /// workers, as tables. With --max-lag-secs it is a probe: exit code 2 when
    /// a group's lag age exceeds it.
    Status(status::StatusArgs),
    /// Send realistic generated traffic at a steady rate to the ingest API
    /// (default) or straight into the streams (--redis), and report sent,
    /// accepted, rejected, achieved rate and latency. Ctrl-C stops it.
    Loadgen(loadgen::LoadgenArgs),
    /// Check a truth file written by `loadgen --truth` against the hourly
    /// rollup tables: compare until they match or --wait runs out, print an
    /// aligned table of every difference, exit 0 when they match, 1 when
    /// they differ.
    Verify(verify::VerifyArgs),
    /// End-to-end benchmark: spawn an ingest and a rollup process, post
    /// generated events in batches, wait until MySQL holds them all, check the
    /// totals, and report events/s, latency, RSS and commits/min next to
    /// redis-benchmark's pipelined XADD rate measured in the same run.
    ///
    /// Uses its own key prefix and database (--prefix), wiped at every run.
    /// Build with --release: the children are this same binary.
    /// `flowmeter bench ws` benchmarks the WebSocket hub instead.
    Bench(bench::BenchArgs),
}

/// Runs the parsed command line: exit code 0 on success, 1 with the error
/// and its causes on stderr on failure, or the code a command asks for
/// (`status --max-lag-secs`: 2).
pub async fn main(cli: Cli) -> ExitCode {
    match dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            // each cause once, without the backtrace RUST_BACKTRACE adds to
            // anyhow's Debug form
            eprintln!("{}", human::error_report(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Loads the configuration and runs the subcommand.
pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(cli.config.as_deref(), cli.profile.as_deref())
        .context("loading the configuration")?;
    match cli.command {
        Command::Serve(args) => serve::run(settings, args).await?,
        Command::Migrate => migrate::run(&settings).await?,
        Command::Config => config::run(&settings),
        Command::Dlq(args) => dlq::run(&settings, args).await?,
        Command::Groups(args) => groups::run(&settings, args).await?,
        Command::Replay(args) => replay::run(&settings, args).await?,
        Command::Trim(args) => trim::run(&settings, args).await?,
        Command::Query(args) => query::run(&settings, args).await?,
        Command::Status(args) => return status::run(&settings, args).await,
        Command::Loadgen(args) => loadgen::run(&settings, args).await?,
        Command::Verify(args) => verify::run(&settings, args).await?,
        Command::Bench(args) => bench::run(&settings, args).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// A token cancelled on SIGTERM or Ctrl-C.
fn stop_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    tokio::spawn(cancel_on_signal(token.clone()));
    token
}

async fn cancel_on_signal(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    token.cancel();
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_parser_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every `.rs` file under `dir`, with its text.
    fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                out.extend(sources(&path));
            } else if path.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&path).expect("a source file");
                out.push((path, text));
            }
        }
        out
    }

    /// The code lines (not comments) of the files under `src/{under}` that
    /// name one of `needles`, as `path:line: text`.
    fn offenders(under: &str, skip: &[&str], needles: &[&str]) -> Vec<String> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut found = Vec::new();
        for (path, text) in sources(&src.join(under)) {
            let rel = path.strip_prefix(&src).unwrap_or(&path);
            if skip.iter().any(|s| rel.starts_with(s)) {
                continue;
            }
            for (n, line) in text.lines().enumerate() {
                let code = line.trim_start();
                if code.starts_with("//") {
                    continue;
                }
                if needles.iter().any(|w| code.contains(w)) {
                    found.push(format!("src/{}:{}: {code}", rel.display(), n + 1));
                }
            }
        }
        found
    }

    /// Dependencies point one way: the library returns data and the CLI
    /// renders it, so no module outside `cli/` may use the CLI, its tables
    /// or its human formatting.
    #[test]
    fn no_library_module_imports_the_cli() {
        let found = offenders(
            "",
            &["cli", "main.rs"],
            &[
                "crate::cli",
                "crate::table",
                "crate::human",
                "flowmeter::cli",
            ],
        );
        assert!(
            found.is_empty(),
            "library code importing the CLI (return typed data and render it in src/cli/ instead):\n{}",
            found.join("\n")
        );
    }

    /// The two cycles issue 15 broke stay broken: the hub's WebSocket
    /// handler has its own state and errors (not the API's), and alert rules
    /// are loaded by `alert`, not by the processor registry.
    #[test]
    fn the_hub_does_not_import_the_api_nor_the_processors_the_alerts() {
        let mut found = offenders("hub", &[], &["crate::api"]);
        found.extend(offenders("processor", &[], &["crate::alert"]));
        assert!(found.is_empty(), "{}", found.join("\n"));
    }
}
