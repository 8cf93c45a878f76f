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
