//! `flowmeter verify`: a truth file against the hourly rollup tables; exit
//! 0 when they match, 1 (with a table of what differs) when not.

use clap::Args;

use crate::loadgen::verify::{VerifyOptions, VerifyReport};
use crate::loadgen::Difference;
use flowmeter::cli::human::count;
use flowmeter::cli::table::table;
use flowmeter::config::Settings;
use flowmeter::event::format_rfc3339_ms;

#[derive(Args)]
pub struct VerifyArgs {
    /// The truth file (`flowmeter loadgen --truth FILE`).
    #[arg(long, value_name = "FILE")]
    truth: std::path::PathBuf,
    /// Seconds to keep comparing while the tables differ (the rollup
    /// workers may still be folding the last events in).
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    wait: f64,
    /// Differing rows printed at most (all are counted).
    #[arg(long, value_name = "N", default_value_t = 50)]
    show: usize,
}

pub async fn run(settings: &Settings, args: VerifyArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let opts = VerifyOptions {
        truth: args.truth,
        wait: std::time::Duration::try_from_secs_f64(args.wait.max(0.0))
            .context("--wait: a number of seconds")?,
    };
    let report =
        crate::loadgen::verify::run(settings, &opts, flowmeter::cli::stop_on_signal()).await?;
    print!("{}", render(&report, args.show));
    if !report.matches() {
        anyhow::bail!(
            "the tables differ from {} (see above)",
            opts.truth.display()
        );
    }
    Ok(())
}

/// The differences as an aligned table, one line per measure that
/// differs (at most `show` rows of the truth; the count says how many
/// there are), then a summary line.
pub fn render(report: &VerifyReport, show: usize) -> String {
    let mut out = String::new();
    if report.matches() {
        out.push_str(&format!(
            "the tables match the truth: {} rows, {} events\n",
            count(report.rows as u64),
            count(report.events)
        ));
        return out;
    }
    let mut rows = vec![[
        "kind",
        "hour",
        "row",
        "measure",
        "table",
        "sent",
        "table - sent",
    ]
    .map(String::from)
    .to_vec()];
    let mut notes = Vec::new();
    for d in report.diffs.iter().take(show) {
        match d {
            Difference::Inexact => notes.push(d.to_string()),
            Difference::Row {
                kind,
                hour_ms,
                dims,
                measures,
                table,
                sent,
            } => {
                let name: Vec<String> = dims.iter().map(|(c, v)| format!("{c}={v}")).collect();
                for (i, m) in measures.iter().enumerate() {
                    let t = table.map(|t| t[i]);
                    let s = sent.map(|s| s[i]);
                    if t == s {
                        continue;
                    }
                    let cell = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
                    let delta = i128::from(t.unwrap_or(0)) - i128::from(s.unwrap_or(0));
                    rows.push(vec![
                        kind.clone(),
                        format_rfc3339_ms(*hour_ms),
                        name.join(" "),
                        m.to_string(),
                        cell(t),
                        cell(s),
                        format!("{delta:+}"),
                    ]);
                }
            }
        }
    }
    if rows.len() > 1 {
        out.push_str(&table(&rows));
    }
    for n in notes {
        out.push_str(&format!("{n}\n"));
    }
    let rows_differing = report
        .diffs
        .iter()
        .filter(|d| matches!(d, Difference::Row { .. }))
        .count();
    if report.diffs.len() > show {
        out.push_str(&format!("(the first {show} shown; --show N for more)\n"));
    }
    let missing = report.diffs.iter().any(
        |d| matches!(d, Difference::Row { table, sent, .. } if table.is_none() || sent.is_none()),
    );
    out.push_str(&format!(
        "{rows_differing} {} from the truth ({} rows, {} events) after {:.1} s{}\n",
        if rows_differing == 1 {
            "row differs"
        } else {
            "rows differ"
        },
        count(report.rows as u64),
        count(report.events),
        report.waited.as_secs_f64(),
        if missing {
            "; \"-\": the row is missing on that side"
        } else {
            ""
        }
    ));
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::loadgen::Difference;

    fn report(diffs: Vec<Difference>) -> VerifyReport {
        VerifyReport {
            rows: 3,
            events: 1_200,
            diffs,
            waited: Duration::from_secs(2),
        }
    }

    fn row(table: Option<[u64; 3]>, sent: Option<[u64; 3]>) -> Difference {
        Difference::Row {
            kind: "http".into(),
            hour_ms: 1_772_359_200_000,
            dims: vec![("service", "svc-1".into()), ("endpoint", "/a".into())],
            measures: ["requests", "bytes_in", "bytes_out"],
            table,
            sent,
        }
    }

    #[test]
    fn a_match_is_one_line() {
        assert_eq!(
            render(&report(Vec::new()), 50),
            "the tables match the truth: 3 rows, 1,200 events\n"
        );
    }

    #[test]
    fn each_differing_measure_is_a_line_naming_its_row() {
        let text = render(
            &report(vec![
                row(Some([13, 5, 7]), Some([12, 5, 7])),
                row(None, Some([1, 2, 3])),
            ]),
            50,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            [
                "http",
                "2026-03-01T10:00:00Z",
                "service=svc-1",
                "endpoint=/a",
                "requests",
                "13",
                "12",
                "+1"
            ],
            "{text}"
        );
        // the missing row: all three measures, "-" in the table column
        assert_eq!(lines.len(), 2 + 1 + 3 + 1, "{text}");
        assert!(
            lines[5].contains("bytes_out") && lines[5].contains("-3"),
            "{text}"
        );
        assert!(lines[6].starts_with("2 rows differ"), "{text}");
    }

    #[test]
    fn show_caps_the_rows_printed_not_the_count() {
        let diffs = (0..10)
            .map(|_| row(Some([2, 0, 0]), Some([1, 0, 0])))
            .collect();
        let text = render(&report(diffs), 4);
        assert_eq!(text.lines().filter(|l| l.starts_with("http")).count(), 4);
        assert!(text.contains("the first 4 shown"), "{text}");
        assert!(text.contains("10 rows differ"), "{text}");
    }
}
