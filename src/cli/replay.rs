//! `flowmeter replay`: rebuild one rollup processor's rows for a time range,
//! with a spinner while it scans.

use clap::Args;

use super::human::progress_style;
use super::table::table;
use crate::config::Settings;
use crate::processor::rollup::{ReplayOptions, ReplayReport};

#[derive(Args)]
pub struct ReplayArgs {
    /// Processor name (as in processors/*.toml).
    #[arg(long)]
    processor: String,
    /// Start of the range: RFC 3339 time (inclusive).
    #[arg(long)]
    from: String,
    /// End of the range: RFC 3339 time (exclusive); default now.
    #[arg(long)]
    to: Option<String>,
    /// Events may arrive up to this many seconds before their own ts
    /// (clients with clocks ahead): the scan starts this much earlier.
    #[arg(long, default_value_t = 3600)]
    skew_secs: i64,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub async fn run(settings: &Settings, args: ReplayArgs) -> anyhow::Result<()> {
    crate::telemetry::init();
    let time = |s: &str, what: &str| {
        crate::event::parse_ts(s).map_err(|e| {
            anyhow::anyhow!("--{what} {s:?}: {e} (use RFC 3339, e.g. 2026-11-23T08:00:00Z)")
        })
    };
    let opts = ReplayOptions {
        from_ms: time(&args.from, "from")?,
        to_ms: match &args.to {
            Some(t) => time(t, "to")?,
            None => chrono::Utc::now().timestamp_millis(),
        },
        skew_ms: args.skew_secs.max(0).saturating_mul(1000),
    };
    let bar = (!args.quiet).then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(progress_style(
            "{spinner} replay {msg}: {human_pos} entries scanned ({rate}) {elapsed}",
        ));
        b.set_message(args.processor.clone());
        b.enable_steady_tick(std::time::Duration::from_millis(200));
        b
    });
    let report = crate::app::replay(settings, &args.processor, &opts, bar.as_ref()).await;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    print!("{}", render(&report?));
    Ok(())
}

/// The rebuilt tables and a line of figures.
pub fn render(report: &ReplayReport) -> String {
    let mut rows = vec![["table", "from", "to", "rows rebuilt"]
        .map(String::from)
        .to_vec()];
    for (t, a, b, n) in &report.tables {
        rows.push(vec![t.clone(), a.clone(), b.clone(), n.to_string()]);
    }
    let mut out = table(&rows);
    out.push_str(&format!(
        "{}: {} entries scanned on {} streams in {:.1} s ({:.0} entries/s), {} events in range, {} dead-letter entries (undecodable or refused) skipped, {} transaction attempt(s)\n",
        report.processor,
        report.entries_scanned,
        report.streams,
        report.elapsed_secs,
        report.entries_scanned as f64 / report.elapsed_secs.max(0.001),
        report.events_in_range,
        report.undecodable,
        report.attempts,
    ));
    out
}
