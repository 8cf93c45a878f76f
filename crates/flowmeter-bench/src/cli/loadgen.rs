//! `flowmeter loadgen`: generated traffic at a steady rate, with a progress
//! bar and a one-row table of what happened.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::loadgen::{KindMix, LoadOptions, LoadReport, Target};
use flowmeter::cli::table::table;
use flowmeter::config::Settings;

#[derive(Args)]
pub struct LoadgenArgs {
    /// Events per second.
    #[arg(long, default_value_t = 1_000.0)]
    rate: f64,
    /// How long, in seconds; 0 = until Ctrl-C.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Event kinds to send.
    #[arg(long, value_enum, default_value = "mixed")]
    kind: KindMix,
    /// Events per request (or per XADD pipeline).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Seed of the generated traffic (same seed, same events).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Base URL of the ingest API (default: http:// + server.listen).
    #[arg(long, value_name = "URL", conflicts_with = "redis")]
    url: Option<String>,
    /// XADD into Redis directly (redis.url, redis.prefix) instead of the API.
    #[arg(long)]
    redis: bool,
    /// Write the exact totals sent, per hour and dimension, to this NDJSON file.
    #[arg(long, value_name = "FILE")]
    truth: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Trip an alert on purpose: for the first SECS seconds, service
    /// svc-0 fails (every request to it answers 503), which the shipped
    /// `http_error_rate` rule reports after 30 s. Run it beside the
    /// demo, e.g. `--rate 50 --kind http --duration 120 --incident 90`.
    #[arg(long, value_name = "SECS")]
    incident: Option<f64>,
    /// A skewed workload: this share (0 to 1) of the http events goes to
    /// one subject, svc-0's /api/r0/:id (all of them on one shard).
    #[arg(long, value_name = "SHARE")]
    hot: Option<f64>,
}

pub async fn run(settings: &Settings, args: LoadgenArgs) -> anyhow::Result<()> {
    let target = if args.redis {
        Target::Redis
    } else {
        Target::Api(
            args.url
                .unwrap_or_else(|| format!("http://{}", settings.server.listen)),
        )
    };
    let opts = LoadOptions {
        rate: args.rate,
        duration: (args.duration > 0.0).then(|| Duration::from_secs_f64(args.duration)),
        kind: args.kind,
        batch: args.batch,
        concurrency: args.concurrency,
        seed: args.seed,
        target,
        truth: args.truth,
        progress: (!args.quiet).then_some(super::bar as _),
        incident: match args.incident {
            Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s.min(86_400.0))),
            Some(s) => {
                anyhow::bail!("--incident {s}: give the outage's length in seconds, more than 0")
            }
            None => None,
        },
        hot: match args.hot {
            Some(s) if (0.0..=1.0).contains(&s) => Some(s),
            Some(s) => anyhow::bail!("--hot {s}: give a share from 0 to 1"),
            None => None,
        },
    };
    let report = crate::loadgen::run(settings, &opts, flowmeter::cli::stop_on_signal()).await?;
    print!("{}", render(&report));
    if report.accepted == 0 && report.sent > 0 {
        anyhow::bail!("nothing was accepted; see the first error above");
    }
    Ok(())
}

/// One row: sent, accepted, rejected, failed, seconds, rate, latency; then
/// the first error, if any.
pub fn render(report: &LoadReport) -> String {
    let rows = vec![
        vec![
            "sent",
            "accepted",
            "rejected",
            "failed",
            "seconds",
            "accepted/s",
            "p50 ms",
            "p99 ms",
        ]
        .into_iter()
        .map(String::from)
        .collect(),
        vec![
            report.sent.to_string(),
            report.accepted.to_string(),
            report.rejected.to_string(),
            report.failed.to_string(),
            format!("{:.1}", report.elapsed.as_secs_f64()),
            format!("{:.0}", report.rate()),
            format!("{:.2}", report.latency_p50_ms),
            format!("{:.2}", report.latency_p99_ms),
        ],
    ];
    let mut out = table(&rows);
    if let Some(e) = &report.first_error {
        out.push_str(&format!("first error: {e}\n"));
    }
    out
}
