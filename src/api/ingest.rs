//! `POST /v1/events`: one JSON object, a JSON array, or NDJSON
//! (`Content-Type: application/x-ndjson`). All or nothing: any invalid event
//! rejects the whole request (400, every problem listed); otherwise every
//! event is appended in one MULTI/EXEC pipeline and the answer is
//! `202 {"accepted": N}` once Redis has acknowledged it.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, AppState};
use crate::event::FieldError;
use crate::telemetry::metrics;

pub async fn ingest(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let result = handle(&st, &headers, body).await;
    match &result {
        Ok(_) => metrics::REQUESTS_ACCEPTED.inc(),
        Err(ApiError::Unavailable { .. }) => metrics::REQUESTS_UNAVAILABLE.inc(),
        Err(_) => metrics::REQUESTS_REJECTED.inc(),
    }
    result
}

async fn handle(
    st: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let limit = st.ingest.max_body_bytes;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        // to_bytes fails on the limit, or when the client broke off mid-body.
        if is_length_limit(&e) {
            ApiError::TooLarge { limit }
        } else {
            ApiError::Invalid {
                message: format!("could not read the request body: {e}"),
                errors: Vec::new(),
                total: 0,
            }
        }
    })?;
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.starts_with("application/x-ndjson") || ct.starts_with("application/jsonl")
        });
    let values = parse_body(&bytes, ndjson, st.ingest.max_events_per_request)?;
    let Some(producer) = &st.producer else {
        return Err(ApiError::NotFound("ingest role is not running".into()));
    };
    let mut valid = Vec::with_capacity(values.len());
    let mut errors = Vec::new();
    let mut invalid = 0usize;
    for (i, v) in values.iter().enumerate() {
        match st.schemas.validate(i, v) {
            Ok(e) => valid.push(e),
            Err(errs) => {
                invalid += 1;
                let room = st.ingest.max_reported_errors.saturating_sub(errors.len());
                errors.extend(errs.into_iter().take(room));
            }
        }
    }
    if invalid > 0 {
        return Err(ApiError::Invalid {
            message: format!(
                "{invalid} of {} events are invalid; nothing from this request was written",
                values.len()
            ),
            errors,
            total: invalid,
        });
    }
    producer
        .append(&st.schemas, &valid)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "XADD failed");
            ApiError::Unavailable {
                reason: "the event store (Redis) is unavailable; nothing from this request was written, retry later".into(),
                retry_after: st.ingest.retry_after_secs,
            }
        })?;
    metrics::EVENTS_INGESTED.add(valid.len() as u64);
    Ok((StatusCode::ACCEPTED, Json(json!({"accepted": valid.len()}))))
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        src = s.source();
    }
    false
}

/// Splits the body into events (JSON values), reporting unreadable ones.
pub fn parse_body(bytes: &[u8], ndjson: bool, max_events: usize) -> Result<Vec<Value>, ApiError> {
    let invalid = |errors: Vec<FieldError>, message: String| ApiError::Invalid {
        total: errors.len().max(1),
        errors,
        message,
    };
    if let Err(e) = std::str::from_utf8(bytes) {
        let at = e.valid_up_to();
        let line = bytes[..at].iter().filter(|&&b| b == b'\n').count();
        let index = if ndjson { Some(line) } else { None };
        return Err(invalid(
            vec![FieldError::new(
                index,
                None,
                format!("body is not valid UTF-8 (byte {at}, line {})", line + 1),
            )],
            "the request body is not valid UTF-8; nothing was written".into(),
        ));
    }
    let values: Vec<Value> = if ndjson {
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for (lineno, line) in bytes.split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let index = out.len() + errors.len();
            match serde_json::from_slice::<Value>(line) {
                Ok(v) => out.push(v),
                Err(e) => errors.push(FieldError::new(
                    Some(index),
                    None,
                    format!("line {}: invalid JSON: {e}", lineno + 1),
                )),
            }
            if out.len() + errors.len() > max_events {
                return Err(ApiError::TooManyEvents(format!(
                    "more than {max_events} events in one request; split it"
                )));
            }
        }
        if !errors.is_empty() {
            let n = errors.len();
            return Err(invalid(
                errors,
                format!("{n} NDJSON lines are not valid JSON; nothing was written"),
            ));
        }
        out
    } else {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Array(a)) => a,
            Ok(v @ Value::Object(_)) => vec![v],
            Ok(_) => {
                return Err(invalid(
                    vec![FieldError::new(
                        None,
                        None,
                        "the body must be a JSON object, a JSON array of objects, or NDJSON",
                    )],
                    "unexpected JSON body".into(),
                ))
            }
            Err(e) => {
                return Err(invalid(
                    vec![FieldError::new(
                        None,
                        None,
                        format!(
                        "invalid JSON: {e} (send NDJSON with Content-Type: application/x-ndjson)"
                    ),
                    )],
                    "the request body is not valid JSON; nothing was written".into(),
                ))
            }
        }
    };
    if values.is_empty() {
        return Err(invalid(
            vec![FieldError::new(None, None, "no events in the body")],
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

    #[test]
    fn splits_the_three_body_forms() {
        assert_eq!(
            parse_body(br#"{"a":1}"#, false, 10).expect("object").len(),
            1
        );
        assert_eq!(
            parse_body(br#"[{"a":1},{"b":2}]"#, false, 10)
                .expect("array")
                .len(),
            2
        );
        assert_eq!(
            parse_body(b"{\"a\":1}\n\n{\"b\":2}\r\n", true, 10)
                .expect("ndjson")
                .len(),
            2
        );
    }

    #[test]
    fn names_the_broken_line() {
        let Err(ApiError::Invalid { errors, .. }) = parse_body(b"{\"a\":1}\n{oops\n", true, 10)
        else {
            panic!("must fail")
        };
        assert_eq!(errors[0].index, Some(1));
        assert!(errors[0].reason.starts_with("line 2"), "{:?}", errors);
    }

    #[test]
    fn rejects_bad_bodies() {
        assert!(matches!(
            parse_body(b"\xff\xfe", false, 10),
            Err(ApiError::Invalid { .. })
        ));
        assert!(matches!(
            parse_body(b"42", false, 10),
            Err(ApiError::Invalid { .. })
        ));
        assert!(matches!(
            parse_body(b"[]", false, 10),
            Err(ApiError::Invalid { .. })
        ));
        assert!(matches!(
            parse_body(b"[{},{},{}]", false, 2),
            Err(ApiError::TooManyEvents(_))
        ));
    }
}
