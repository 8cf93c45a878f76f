//! Numbers and times for people: the one place the CLI formats rates, counts
//! and stream positions, and styles its progress bars. (Whether log lines
//! are coloured is decided with the logging, in `telemetry`.)
//!
//! The JSON answers (`--json`, `GET /v1/status`) keep raw stream ids; these
//! helpers are for the tables and lines a person reads.

use chrono::{DateTime, SecondsFormat, Utc};

use crate::stream::StreamId;

/// `n` with a comma every three digits: `10267` → `10,267`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate per second, rounded for people: `10,267/s`; one decimal below 10
/// (`2.5/s`), `-` when there is no rate (not finite or negative).
pub fn rate(per_sec: f64) -> String {
    if !per_sec.is_finite() || per_sec < 0.0 {
        return "-".into();
    }
    if per_sec < 9.95 {
        return format!("{per_sec:.1}/s");
    }
    // the largest integer an f64 holds exactly is far above any event rate;
    // `as` saturates instead of wrapping
    format!("{}/s", count(per_sec.round() as u64))
}

/// Epoch milliseconds as RFC 3339 UTC, with milliseconds only when there
/// are some: `2026-11-30T12:00:00Z`, `2026-11-30T11:59:59.999Z`.
pub fn time_ms(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// A stream entry id (an entry, a group's last-delivered id, a checkpoint,
/// a trim point) as a person reads it: its time, with the id only when it
/// names one entry inside that millisecond.
///
/// - `0`, `0-0`: `beginning`
/// - `1796040000000-0`: `2026-11-30T12:00:00Z`
/// - `1796039999999-18446744073709551615` (what `--to 2026-11-30T12:00:00Z`
///   sets: everything before that time): `2026-11-30T12:00:00Z`
/// - `1796039999999-3`: `2026-11-30T11:59:59.999Z (id 1796039999999-3)`
///
/// Anything else is returned as it is.
pub fn position(id: &str) -> String {
    let Ok(id) = id.parse::<StreamId>() else {
        return id.to_string();
    };
    match (id.ms, id.seq) {
        (0, 0) => "beginning".into(),
        (ms, u64::MAX) => time_ms(ms.saturating_add(1)),
        (ms, 0) => time_ms(ms),
        (ms, _) => format!("{} (id {id})", time_ms(ms)),
    }
}

/// [`position`] of an optional id, `-` for none.
pub fn position_or_dash(id: &Option<String>) -> String {
    id.as_deref().map_or_else(|| "-".into(), position)
}

/// A progress-bar style from `template`, which may use `{rate}`: the bar's
/// steps per second through [`rate`]. (indicatif's own `{per_sec:>N}` takes
/// N as the number of decimals, which printed `10,267.028652483261/s`.)
/// Bars draw on stderr and hide themselves when it is not a terminal.
pub fn progress_style(template: &str) -> indicatif::ProgressStyle {
    let rate_key = |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = w.write_str(&rate(s.per_sec()));
    };
    indicatif::ProgressStyle::with_template(template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .with_key("rate", rate_key)
}

/// An error and its causes for the terminal, each said once: a cause whose
/// text the message before it already holds (most of ours quote theirs) is
/// left out, so `Redis: … refused …` is not followed by `refused` again.
pub fn error_report(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = format!("error: {err}");
    let mut said = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !said.contains(&text) {
            out.push_str("\n  caused by: ");
            out.push_str(&text);
        }
        said = text;
        next = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_get_thousands_separators() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1,000");
        assert_eq!(count(10_267), "10,267");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(u64::MAX), "18,446,744,073,709,551,615");
    }

    #[test]
    fn rates_are_rounded() {
        assert_eq!(rate(10_267.028_652_483), "10,267/s");
        assert_eq!(rate(999.5), "1,000/s");
        assert_eq!(rate(12.4), "12/s");
        assert_eq!(rate(2.54), "2.5/s");
        assert_eq!(rate(9.96), "10/s");
        assert_eq!(rate(0.0), "0.0/s");
        assert_eq!(rate(f64::NAN), "-");
        assert_eq!(rate(f64::INFINITY), "-");
        assert_eq!(rate(-1.0), "-");
        assert_eq!(rate(1e300), "18,446,744,073,709,551,615/s");
    }

    #[test]
    fn positions_read_as_times() {
        assert_eq!(position("0"), "beginning");
        assert_eq!(position("0-0"), "beginning");
        assert_eq!(position("1796040000000-0"), "2026-11-30T12:00:00Z");
        assert_eq!(
            position("1796039999999-18446744073709551615"),
            "2026-11-30T12:00:00Z"
        );
        assert_eq!(
            position("1796039999999-3"),
            "2026-11-30T11:59:59.999Z (id 1796039999999-3)"
        );
        assert_eq!(position("$"), "$");
        assert_eq!(position("not-an-id"), "not-an-id");
        assert_eq!(position_or_dash(&None), "-");
        assert_eq!(
            position("18446744073709551615-18446744073709551615"),
            "18446744073709551615 ms"
        );
    }

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("Redis: cannot connect: {0} (is Redis running?)")]
        Quoting(#[source] Inner),
        #[error("loading the configuration")]
        Context(#[source] Inner),
    }

    #[derive(Debug, thiserror::Error)]
    #[error("Connection refused")]
    struct Inner;

    #[test]
    fn errors_say_each_cause_once() {
        assert_eq!(
            error_report(&Outer::Quoting(Inner)),
            "error: Redis: cannot connect: Connection refused (is Redis running?)"
        );
        assert_eq!(
            error_report(&Outer::Context(Inner)),
            "error: loading the configuration\n  caused by: Connection refused"
        );
    }
}
