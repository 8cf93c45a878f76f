//! The `flowmeter-bench` command line: `loadgen`, `verify` and `bench`, one
//! module each with its clap arguments, the call into the library and the
//! rendering of what it returns, plus the progress bars they draw.
//!
//! `flowmeter loadgen|verify|bench` run this binary with their own argv,
//! so the parser takes `flowmeter`'s global options
//! ([`GlobalArgs`]) and the subcommands keep their names. The tables,
//! human formatting, signal handling and error report are `flowmeter`'s
//! own ([`flowmeter::cli`]), used, not copied.
//!
//! `anyhow` is used here, at the binary's edge, and nowhere below.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flowmeter::cli::human::progress_style;
use flowmeter::cli::GlobalArgs;
use indicatif::ProgressBar;

use crate::loadgen::Meter;

pub mod bench;
pub mod loadgen;
pub mod verify;

/// flowmeter-bench: the load generator and the benchmarks of flowmeter.
///
/// `flowmeter loadgen`, `flowmeter verify` and `flowmeter bench` run this
/// binary; it takes the same --config and --profile, and loads the same
/// configuration. See docs/loadgen-and-bench.md.
#[derive(Parser)]
#[command(name = "flowmeter-bench", version, about, long_about)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,

    #[command(subcommand)]
    command: Command,
}

// The doc comments of the variants are the subcommands' `--help` texts
// (the first paragraph their one line in `flowmeter-bench --help`).
#[derive(Subcommand)]
enum Command {
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
    /// Build with --release: the children are the `flowmeter` binary next
    /// to this one (`flowmeter serve`).
    /// `flowmeter bench ws` benchmarks the WebSocket hub instead, and
    /// `flowmeter bench cluster` a Redis Cluster beside the single Redis.
    Bench(bench::BenchArgs),
}

/// Runs the parsed command line: exit code 0 on success, 1 with the error
/// and its causes on stderr on failure.
pub async fn main(cli: Cli) -> ExitCode {
    flowmeter::cli::exit_code(dispatch(cli).await)
}

/// Loads the configuration and runs the subcommand.
pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = cli.global.settings()?;
    match cli.command {
        Command::Loadgen(args) => loadgen::run(&settings, args).await?,
        Command::Verify(args) => verify::run(&settings, args).await?,
        Command::Bench(args) => bench::run(&settings, args).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The progress bars of `loadgen` and `bench` (see
/// [`BarMaker`](crate::loadgen::BarMaker)): `len` steps, or a spinner.
pub fn bar(len: Option<u64>, meter: Meter<'_>) -> ProgressBar {
    let pb = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    let template = match meter {
        Meter::Accepted => {
            "  loadgen [{bar:30}] {pos:>9}/{len} accepted  {rate:>10}  {elapsed}".to_string()
        }
        Meter::Phase(what) => {
            format!("  {what:<9} [{{bar:30}}] {{pos:>9}}/{{len}} {{rate:>10}} {{elapsed}}")
        }
    };
    pb.set_style(progress_style(&template).progress_chars("=> "));
    pb
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_parser_is_consistent() {
        Cli::command().debug_assert();
    }

    /// `flowmeter` hands its argv over unchanged: the global options parse
    /// before and after the subcommand, as they do there.
    #[test]
    fn it_takes_flowmeters_global_options() {
        for argv in [
            &[
                "flowmeter",
                "--config",
                "x.toml",
                "--profile",
                "demo",
                "loadgen",
            ][..],
            &[
                "flowmeter",
                "bench",
                "ws",
                "--config",
                "x.toml",
                "--profile",
                "demo",
            ][..],
        ] {
            let cli = Cli::try_parse_from(argv).expect("parses");
            assert_eq!(cli.global.config.as_deref(), Some("x.toml".as_ref()));
            assert_eq!(cli.global.profile.as_deref(), Some("demo"));
        }
    }
}
