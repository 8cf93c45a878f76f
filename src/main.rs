//! The `flowmeter` binary: parses the command line, loads the config, starts
//! logging, and calls into the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use flowmeter::app::{self, Roles};
use flowmeter::config::Settings;

/// flowmeter: traffic and bandwidth metrics, event-sourced.
///
/// Collectors POST events to the ingest API, which appends them to Redis
/// Streams; consumer groups fold them into MySQL hourly and daily rollups,
/// exactly once in effect. See README.md and docs/.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Config file (TOML). Without it, ./flowmeter.toml is read when present.
    /// Environment variables FLOWMETER__SECTION__KEY override both.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: ingest API, query API and the processors of processors/.
    Serve {
        /// Roles to run, comma separated: ingest, api, rollup.
        #[arg(long, default_value = "ingest,api,rollup")]
        roles: String,
        /// Listen address (overrides server.listen).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Create the database if missing and apply migrations/.
    Migrate,
    /// Print the effective configuration (passwords masked).
    Config,
    /// End-to-end benchmark: spawn an ingest and a rollup process, post
    /// generated events in batches, wait until MySQL holds them all, check the
    /// totals, and report events/s, latency, RSS and commits/min next to
    /// redis-benchmark's pipelined XADD rate measured in the same run.
    ///
    /// Uses its own key prefix and database (--prefix), wiped at every run.
    /// Build with --release: the children are this same binary.
    Bench {
        /// Events per run.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Events per POST /v1/events.
        #[arg(long, default_value_t = 1_000)]
        batch: usize,
        /// Concurrent POSTs in flight.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Runs; the report gives each and their median.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Event kinds to send.
        #[arg(long, value_enum, default_value = "mixed")]
        kind: flowmeter::loadgen::KindMix,
        /// Seed of the generated traffic.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Redis key prefix and MySQL database of the bench (deleted first!).
        #[arg(long, default_value = "fmbench")]
        prefix: String,
        /// Entries written by the redis-benchmark reference.
        #[arg(long, default_value_t = 500_000)]
        reference_entries: u64,
        /// Fail when MySQL makes no progress for this many seconds.
        #[arg(long, default_value_t = 60)]
        stall_secs: u64,
        /// No progress bars.
        #[arg(long)]
        quiet: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut settings =
        Settings::load(cli.config.as_deref()).context("loading the configuration")?;
    match cli.command {
        Command::Config => {
            print!("{}", settings.to_masked_toml());
        }
        Command::Migrate => {
            flowmeter::telemetry::init();
            app::migrate(&settings).await?;
            println!(
                "migrations applied to {}",
                flowmeter::config::mask_url(&settings.mysql.url)
            );
        }
        Command::Bench {
            events,
            batch,
            concurrency,
            runs,
            kind,
            seed,
            prefix,
            reference_entries,
            stall_secs,
            quiet,
        } => {
            let opts = flowmeter::bench::BenchOptions {
                events,
                batch,
                concurrency,
                runs,
                kind,
                seed,
                prefix,
                reference_entries,
                stall_timeout: std::time::Duration::from_secs(stall_secs),
                progress: !quiet,
            };
            let report = flowmeter::bench::run(&settings, &opts).await?;
            print!("{}", report.render());
        }
        Command::Serve { roles, listen } => {
            flowmeter::telemetry::init();
            if let Some(l) = listen {
                settings.server.listen = l;
            }
            let roles: Roles = roles.parse()?;
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            app::serve(settings, roles, None, shutdown).await?;
        }
    }
    Ok(())
}

/// Cancels `token` on SIGTERM or Ctrl-C.
async fn stop_on_signal(token: CancellationToken) {
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
