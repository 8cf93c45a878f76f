//! Event timestamps: RFC 3339 strings (any offset, fractional seconds) or
//! integer epoch milliseconds. Rollups use this time, never the wall clock.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

/// Latest accepted timestamp (year 3000), so hour arithmetic never overflows.
const MAX_TS_MS: i64 = 32_503_680_000_000;

/// Parses an RFC 3339 timestamp into epoch milliseconds.
pub fn parse_ts(s: &str) -> Result<i64, String> {
    let dt = DateTime::parse_from_rfc3339(s)
        .map_err(|e| format!("not an RFC 3339 timestamp ({e}), e.g. 2026-03-01T12:00:00Z"))?;
    let ms = dt.timestamp_millis();
    check_range(ms)
}

/// Parses a JSON `ts` value: an RFC 3339 string or integer epoch milliseconds.
pub fn parse_ts_value(v: &Value) -> Result<i64, String> {
    match v {
        Value::String(s) => parse_ts(s),
        Value::Number(n) => match n.as_i64() {
            Some(ms) => check_range(ms),
            None => Err("must be an integer number of epoch milliseconds".into()),
        },
        Value::Null => Err("is required".into()),
        _ => Err("must be an RFC 3339 string or integer epoch milliseconds".into()),
    }
}

fn check_range(ms: i64) -> Result<i64, String> {
    if (0..=MAX_TS_MS).contains(&ms) {
        Ok(ms)
    } else {
        Err("is outside 1970-01-01 .. 3000-01-01".into())
    }
}

/// Formats epoch milliseconds as RFC 3339 UTC with a `Z`.
pub fn format_rfc3339_ms(ms: i64) -> String {
    match DateTime::<Utc>::from_timestamp_millis(ms) {
        Some(dt) => dt.to_rfc3339_opts(SecondsFormat::Secs, true),
        None => String::from("invalid-time"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_both_forms() {
        assert_eq!(parse_ts("1970-01-01T00:00:01Z"), Ok(1000));
        assert_eq!(
            parse_ts("2026-03-02T01:30:00+02:00"),
            parse_ts("2026-03-01T23:30:00Z")
        );
        assert_eq!(parse_ts("1970-01-01T00:00:00.123456789Z"), Ok(123));
        assert_eq!(
            parse_ts_value(&json!(1_700_000_000_000i64)),
            Ok(1_700_000_000_000)
        );
    }

    #[test]
    fn rejects_nonsense() {
        assert!(parse_ts("yesterday").is_err());
        assert!(parse_ts_value(&json!(-5)).is_err());
        assert!(parse_ts_value(&json!(1.5)).is_err());
        assert!(parse_ts_value(&json!(u64::MAX)).is_err());
        assert!(parse_ts_value(&json!(true)).is_err());
        assert!(parse_ts("9999-01-01T00:00:00Z").is_err());
    }

    #[test]
    fn the_accepted_range_is_inclusive_in_both_forms() {
        assert_eq!(parse_ts("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_ts("3000-01-01T00:00:00Z"), Ok(MAX_TS_MS));
        assert_eq!(parse_ts("3000-01-01T01:00:00+01:00"), Ok(MAX_TS_MS));
        assert!(parse_ts("3000-01-01T00:00:00.001Z").is_err());
        assert!(parse_ts("1969-12-31T23:59:59.999Z").is_err());
        assert_eq!(parse_ts_value(&json!(MAX_TS_MS)), Ok(MAX_TS_MS));
        assert!(parse_ts_value(&json!(MAX_TS_MS + 1)).is_err());
        // after 2038 (where MariaDB's UNIX_TIMESTAMP() gives up) is accepted
        assert_eq!(parse_ts("2040-01-01T00:00:00Z"), Ok(2_208_988_800_000));
    }

    #[test]
    fn formats_utc() {
        assert_eq!(format_rfc3339_ms(3_600_000), "1970-01-01T01:00:00Z");
    }
}
