//! `flowmeter verify --truth FILE`: checks a truth file written by
//! `flowmeter loadgen --truth` against the hourly rollup tables
//! ([`TruthTable::compare`], plain SQL through the store), waiting up to
//! `--wait` seconds for the workers to catch up, and prints what differs as
//! an aligned table.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Difference, TruthFileError, TruthTable};
use crate::config::Settings;
use crate::event::format_rfc3339_ms;
use crate::store::{Store, StoreError};

/// How often the tables are compared again while they differ.
const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The truth file (`loadgen --truth`).
    pub truth: PathBuf,
    /// Compare again until the tables match or this long has passed (the
    /// rollup workers may still be folding the last events in).
    pub wait: Duration,
}

/// What a check found.
#[derive(Debug)]
pub struct VerifyReport {
    /// Rows of the truth file (kind, hour, dimensions).
    pub rows: usize,
    pub events: u64,
    /// Empty when the tables match the truth.
    pub diffs: Vec<Difference>,
    /// How long it compared before giving its answer.
    pub waited: Duration,
}

/// Why a check could not be made (not a difference: that is the report).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    File(#[from] TruthFileError),
    #[error("MySQL: {0}{hint}", hint = .0.hint())]
    Store(#[from] StoreError),
    /// Worth retrying: the database went away while comparing.
    #[error("comparing with the tables: {0} (run `flowmeter migrate` if a table is missing)")]
    Query(#[from] sqlx::Error),
}

/// Reads the truth and compares it with the tables of `settings.mysql`
/// every [`POLL`] until they match, `opts.wait` has passed or `stop`.
pub async fn run(
    settings: &Settings,
    opts: &VerifyOptions,
    stop: CancellationToken,
) -> Result<VerifyReport, VerifyError> {
    let truth = TruthTable::read(&opts.truth)?;
    let store = Store::from_config(&settings.mysql, 2).await?;
    let start = Instant::now();
    loop {
        let diffs = truth.compare(&store).await?;
        if diffs.is_empty() || start.elapsed() >= opts.wait || stop.is_cancelled() {
            return Ok(VerifyReport {
                rows: truth.len(),
                events: truth.events(),
                diffs,
                waited: start.elapsed(),
            });
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(POLL.min(opts.wait.saturating_sub(start.elapsed()))) => {}
        }
    }
}

impl VerifyReport {
    pub fn matches(&self) -> bool {
        self.diffs.is_empty()
    }

    /// The differences as an aligned table, one line per measure that
    /// differs (at most `show` rows of the truth; the count says how many
    /// there are), then a summary line.
    pub fn render(&self, show: usize) -> String {
        let mut out = String::new();
        if self.matches() {
            out.push_str(&format!(
                "the tables match the truth: {} rows, {} events\n",
                crate::human::count(self.rows as u64),
                crate::human::count(self.events)
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
        for d in self.diffs.iter().take(show) {
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
            out.push_str(&crate::table::table(&rows));
        }
        for n in notes {
            out.push_str(&format!("{n}\n"));
        }
        let rows_differing = self
            .diffs
            .iter()
            .filter(|d| matches!(d, Difference::Row { .. }))
            .count();
        if self.diffs.len() > show {
            out.push_str(&format!("(the first {show} shown; --show N for more)\n"));
        }
        let missing = self.diffs.iter().any(|d| {
            matches!(d, Difference::Row { table, sent, .. } if table.is_none() || sent.is_none())
        });
        out.push_str(&format!(
            "{rows_differing} {} from the truth ({} rows, {} events) after {:.1} s{}\n",
            if rows_differing == 1 {
                "row differs"
            } else {
                "rows differ"
            },
            crate::human::count(self.rows as u64),
            crate::human::count(self.events),
            self.waited.as_secs_f64(),
            if missing {
                "; \"-\": the row is missing on that side"
            } else {
                ""
            }
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            report(Vec::new()).render(50),
            "the tables match the truth: 3 rows, 1,200 events\n"
        );
    }

    #[test]
    fn each_differing_measure_is_a_line_naming_its_row() {
        let text = report(vec![
            row(Some([13, 5, 7]), Some([12, 5, 7])),
            row(None, Some([1, 2, 3])),
        ])
        .render(50);
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
        let text = report(diffs).render(4);
        assert_eq!(text.lines().filter(|l| l.starts_with("http")).count(), 4);
        assert!(text.contains("the first 4 shown"), "{text}");
        assert!(text.contains("10 rows differ"), "{text}");
    }
}
