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
//! `loadgen`, `verify` and `bench` are not here: they live in the
//! `flowmeter-bench` crate, which the server does not depend on, and
//! [`forward`] runs its binary (the sibling of this one) with the same
//! argv. That crate's CLI reuses [`GlobalArgs`], [`table`], [`human`],
//! [`stop_on_signal`] and [`exit_code`] from here.
//!
//! `anyhow` is used here, at the binary's edge, and nowhere below.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;

pub mod config;
pub mod dlq;
pub mod forward;
pub mod groups;
pub mod human;
pub mod migrate;
pub mod query;
pub mod replay;
pub mod serve;
pub mod shards;
pub mod status;
pub mod table;
pub mod trim;

/// flowmeter: traffic and bandwidth metrics, event-sourced.
///
/// Collectors POST events to the ingest API, which appends them to Redis
/// Streams; consumer groups fold them into MySQL hourly and daily rollups,
/// exactly once in effect. See README.md and docs/.
#[derive(Parser)]
#[command(name = "flowmeter", version, about, long_about)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,

    #[command(subcommand)]
    command: Command,
}

/// The options every subcommand takes, before or after its name. The
/// `flowmeter-bench` binary flattens the same struct into its parser, so
/// `flowmeter loadgen …` can hand it its argv unchanged.
#[derive(Args)]
pub struct GlobalArgs {
    /// Config file (TOML). Without it, ./flowmeter.toml is read when present.
    /// Environment variables FLOWMETER__SECTION__KEY override both.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// A named setup above the config file: `demo` acts on the data of
    /// `make demo` (prefix and database `fmdemo`). Without it,
    /// FLOWMETER_PROFILE names one. FLOWMETER__SECTION__KEY variables still
    /// override it.
    #[arg(long, global = true, value_name = "NAME")]
    pub profile: Option<String>,
}

impl GlobalArgs {
    /// The configuration these options name (defaults < file < profile <
    /// environment, as [`Settings::load`] layers them).
    pub fn settings(&self) -> anyhow::Result<Settings> {
        Settings::load(self.config.as_deref(), self.profile.as_deref())
            .context("loading the configuration")
    }
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
    /// Show the shard layout, or change the shard count live (`shards set
    /// N`): new events go to a new set of shards, the old set is sealed,
    /// read to the end by every group and retired; nothing is stranded or
    /// counted twice.
    Shards(shards::ShardsArgs),
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
    /// Send generated traffic at a steady rate and report what was accepted
    /// (run by flowmeter-bench; `flowmeter loadgen --help` for its options).
    Loadgen(forward::Forward),
    /// Check a truth file written by `loadgen --truth` against the hourly
    /// rollup tables (run by flowmeter-bench).
    Verify(forward::Forward),
    /// End-to-end and WebSocket hub benchmarks (run by flowmeter-bench;
    /// `flowmeter bench --help` for its options).
    Bench(forward::Forward),
}

/// Runs the parsed command line: exit code 0 on success, 1 with the error
/// and its causes on stderr on failure, or the code a command asks for
/// (`status --max-lag-secs`: 2).
pub async fn main(cli: Cli) -> ExitCode {
    exit_code(dispatch(cli).await)
}

/// A command's result as the process's exit code: its own code, or 1 with
/// the error and its causes on stderr.
pub fn exit_code(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            // each cause once, without the backtrace RUST_BACKTRACE adds to
            // anyhow's Debug form
            eprintln!("{}", human::error_report(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Loads the configuration and runs the subcommand; hands the ones of
/// `flowmeter-bench` to it before loading anything (it loads the same
/// configuration from the same options).
pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = || cli.global.settings();
    match cli.command {
        Command::Serve(args) => serve::run(settings()?, args).await?,
        Command::Migrate => migrate::run(&settings()?).await?,
        Command::Config => config::run(&settings()?),
        Command::Dlq(args) => dlq::run(&settings()?, args).await?,
        Command::Groups(args) => groups::run(&settings()?, args).await?,
        Command::Replay(args) => replay::run(&settings()?, args).await?,
        Command::Trim(args) => trim::run(&settings()?, args).await?,
        Command::Shards(args) => shards::run(&settings()?, args).await?,
        Command::Query(args) => query::run(&settings()?, args).await?,
        Command::Status(args) => return status::run(&settings()?, args).await,
        Command::Loadgen(_) => return forward::run("loadgen"),
        Command::Verify(_) => return forward::run("verify"),
        Command::Bench(_) => return forward::run("bench"),
    }
    Ok(ExitCode::SUCCESS)
}

/// A token cancelled on SIGTERM or Ctrl-C.
pub fn stop_on_signal() -> CancellationToken {
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
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_parser_is_consistent() {
        Cli::command().debug_assert();
    }
}
