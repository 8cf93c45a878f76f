//! Reading the body of `POST /v1/events`: one JSON object, a JSON array, or
//! NDJSON, split into events (JSON values) before validation.

use serde_json::Value;

use super::report::{ErrorReport, ReportLimits};
use crate::api::ApiError;
use crate::event::FieldError;

/// Splits the body into events (JSON values), reporting unreadable ones.
/// Unreadable lines are all counted, and listed within `limits`.
pub fn parse_body(
    bytes: &[u8],
    ndjson: bool,
    max_events: usize,
    limits: &ReportLimits,
) -> Result<Vec<Value>, ApiError> {
    let invalid = |error: FieldError, message: String| {
        let mut report = ErrorReport::new(limits);
        report.push(error);
        report.into_error(message, 1)
    };
    if let Err(e) = std::str::from_utf8(bytes) {
        let at = e.valid_up_to();
        let line = bytes
            .get(..at)
            .unwrap_or(bytes)
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        let index = if ndjson { Some(line) } else { None };
        return Err(invalid(
            FieldError::new(
                index,
                None,
                format!("body is not valid UTF-8 (byte {at}, line {})", line + 1),
            ),
            "the request body is not valid UTF-8; nothing was written".into(),
        ));
    }
    let values: Vec<Value> = if ndjson {
        let mut out = Vec::new();
        let mut report = ErrorReport::new(limits);
        for (lineno, line) in bytes.split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let index = out.len() + report.total();
            match serde_json::from_slice::<Value>(line) {
                Ok(v) => out.push(v),
                Err(e) => report.push(FieldError::new(
                    Some(index),
                    None,
                    format!("line {}: invalid JSON: {e}", lineno + 1),
                )),
            }
            if out.len() + report.total() > max_events {
                return Err(ApiError::TooManyEvents(format!(
                    "more than {max_events} events in one request; split it"
                )));
            }
        }
        if !report.is_empty() {
            let n = report.total();
            return Err(report.into_error(
                format!("{n} NDJSON lines are not valid JSON; nothing was written"),
                n,
            ));
        }
        out
    } else {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Array(a)) => a,
            Ok(v @ Value::Object(_)) => vec![v],
            Ok(_) => {
                return Err(invalid(
                    FieldError::new(
                        None,
                        None,
                        "the body must be a JSON object, a JSON array of objects, or NDJSON",
                    ),
                    "unexpected JSON body".into(),
                ))
            }
            Err(e) => {
                return Err(invalid(
                    FieldError::new(
                        None,
                        None,
                        format!(
                        "invalid JSON: {e} (send NDJSON with Content-Type: application/x-ndjson)"
                    ),
                    ),
                    "the request body is not valid JSON; nothing was written".into(),
                ))
            }
        }
    };
    if values.is_empty() {
        return Err(invalid(
            FieldError::new(None, None, "no events in the body"),
            "empty request".into(),
        ));
    }
    if values.len() > max_events {
        return Err(ApiError::TooManyEvents(format!(
            "{} events in one request; the limit is {max_events}, split it",
            values.len()
        )));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ReportLimits {
        ReportLimits::default()
    }

    #[test]
    fn splits_the_three_body_forms() {
        assert_eq!(
            parse_body(br#"{"a":1}"#, false, 10, &limits())
                .expect("object")
                .len(),
            1
        );
        assert_eq!(
            parse_body(br#"[{"a":1},{"b":2}]"#, false, 10, &limits())
                .expect("array")
                .len(),
            2
        );
        assert_eq!(
            parse_body(b"{\"a\":1}\n\n{\"b\":2}\r\n", true, 10, &limits())
                .expect("ndjson")
                .len(),
            2
        );
    }

    #[test]
    fn names_the_broken_line() {
        let Err(ApiError::Invalid { errors, .. }) =
            parse_body(b"{\"a\":1}\n{oops\n", true, 10, &limits())
        else {
            panic!("must fail")
        };
        assert_eq!(errors[0].index, Some(1));
        assert!(errors[0].reason.starts_with("line 2"), "{:?}", errors);
    }

    #[test]
    fn rejects_bad_bodies() {
        assert!(matches!(
            parse_body(b"\xff\xfe", false, 10, &limits()),
            Err(ApiError::Invalid { .. })
        ));
        assert!(matches!(
            parse_body(b"42", false, 10, &limits()),
            Err(ApiError::Invalid { .. })
        ));
        assert!(matches!(
            parse_body(b"[]", false, 10, &limits()),
            Err(ApiError::Invalid { .. })
        ));
        assert!(matches!(
            parse_body(b"[{},{},{}]", false, 2, &limits()),
            Err(ApiError::TooManyEvents(_))
        ));
    }

    #[test]
    fn counts_every_bad_line_and_lists_what_fits() {
        // The 20 KB body that used to answer with 978 KB.
        let body = "x\n".repeat(9_999);
        let Err(ApiError::Invalid {
            errors,
            total,
            omitted,
            ..
        }) = parse_body(body.as_bytes(), true, 10_000, &limits())
        else {
            panic!("must fail")
        };
        assert_eq!(total, 9_999);
        assert_eq!(errors.len(), limits().max_errors);
        assert_eq!(omitted, 9_999 - errors.len());
    }
}
