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

/// What an event's `ts` must be: the start of every error about one (the
/// JSON Schema's own words for it, "is not valid under any of the schemas
/// listed in the 'oneOf' keyword", help nobody).
pub const TS_RULE: &str =
    "must be an RFC 3339 time (e.g. 2026-03-01T10:00:00Z) or integer epoch milliseconds";

/// Parses a JSON `ts` value: an RFC 3339 string or integer epoch milliseconds.
pub fn parse_ts_value(v: &Value) -> Result<i64, String> {
    match v {
        Value::String(s) => parse_ts(s).map_err(|_| {
            let got = super::truncate(s, 64);
            match DateTime::parse_from_rfc3339(s) {
                // a time, but out of range: parse_ts said which range
                Ok(_) => format!("{got:?} is outside 1970-01-01 .. 3000-01-01"),
                Err(e) => format!("{TS_RULE}; {got:?} is not one ({e})"),
            }
        }),
        Value::Number(n) => match n.as_i64() {
            Some(ms) => check_range(ms),
            None => Err(format!("{TS_RULE}; {n} is not an integer in range")),
        },
        Value::Null => Err("is required".into()),
        _ => Err(format!("{TS_RULE}; got {}", kind_of(v))),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "a boolean",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
        _ => "another type",
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
    fn errors_say_what_a_ts_must_be() {
        for bad in [
            json!("yesterday"),
            json!(1.5),
            json!(true),
            json!("2026-03-01 10:00"),
        ] {
            let e = parse_ts_value(&bad).expect_err("refused");
            assert!(e.starts_with(TS_RULE), "{bad}: {e}");
        }
        let e = parse_ts_value(&json!("9999-01-01T00:00:00Z")).expect_err("refused");
        assert!(e.contains("outside 1970-01-01 .. 3000-01-01"), "{e}");
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
