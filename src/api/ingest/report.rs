//! The error list of a 400 answer, bounded whatever the body holds: every
//! error is counted, the first ones that fit are listed, each `field` and
//! `reason` (and so every value they quote) is cut on a character boundary.
//! Without it, 20 KB of bad NDJSON lines answered with 978 KB.

use crate::api::ApiError;
use crate::config::IngestConfig;
use crate::event::{truncate, FieldError};

/// Bounds of a 400 answer (from `[ingest]`).
#[derive(Debug, Clone)]
pub struct ReportLimits {
    /// `ingest.max_reported_errors`: errors listed at most.
    pub max_errors: usize,
    /// `ingest.max_error_reason_chars`: longest `field` and `reason`.
    pub max_reason_chars: usize,
    /// `ingest.max_error_body_bytes`: the whole answer's size.
    pub max_body_bytes: usize,
}

impl From<&IngestConfig> for ReportLimits {
    fn from(c: &IngestConfig) -> Self {
        Self {
            max_errors: c.max_reported_errors,
            max_reason_chars: c.max_error_reason_chars,
            max_body_bytes: c.max_error_body_bytes,
        }
    }
}

impl Default for ReportLimits {
    fn default() -> Self {
        Self::from(&IngestConfig::default())
    }
}

/// Room kept in `max_body_bytes` for the answer's other fields (the message
/// — always flowmeter's own words and numbers — and the counts).
const ENVELOPE_BYTES: usize = 512;

/// Collects the errors of one request within [`ReportLimits`].
#[derive(Debug)]
pub struct ErrorReport {
    limits: ReportLimits,
    listed: Vec<FieldError>,
    total: usize,
    bytes: usize,
    full: bool,
}

impl ErrorReport {
    pub fn new(limits: &ReportLimits) -> Self {
        Self {
            limits: limits.clone(),
            listed: Vec::new(),
            total: 0,
            bytes: ENVELOPE_BYTES,
            full: false,
        }
    }

    /// Counts `e`, and lists it (cut to size) while the answer has room.
    pub fn push(&mut self, mut e: FieldError) {
        self.total += 1;
        if self.full {
            return;
        }
        let max = self.limits.max_reason_chars;
        e.field = e.field.map(|f| truncate(&f, max));
        e.reason = truncate(&e.reason, max);
        // A FieldError always serializes; its length plus the comma.
        let size = serde_json::to_vec(&e).map_or(usize::MAX, |v| v.len()) + 1;
        if self.listed.len() >= self.limits.max_errors
            || self.bytes.saturating_add(size) > self.limits.max_body_bytes
        {
            self.full = true;
            return;
        }
        self.bytes += size;
        self.listed.push(e);
    }

    /// Errors counted so far (listed or not).
    pub fn total(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The 400 answer: `message`, the exact count of invalid events, the
    /// listed errors and how many were left out.
    pub fn into_error(self, message: String, invalid_events: usize) -> ApiError {
        ApiError::Invalid {
            message,
            omitted: self.total - self.listed.len(),
            errors: self.listed,
            total: invalid_events,
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::response::IntoResponse;

    use super::*;

    async fn body_of(e: ApiError) -> (usize, serde_json::Value) {
        let bytes = axum::body::to_bytes(e.into_response().into_body(), usize::MAX)
            .await
            .expect("body");
        (bytes.len(), serde_json::from_slice(&bytes).expect("JSON"))
    }

    #[tokio::test]
    async fn a_flood_of_long_errors_stays_within_the_answer_bound() {
        let limits = ReportLimits {
            max_errors: 1_000,
            max_reason_chars: 50,
            max_body_bytes: 4_096,
        };
        let mut r = ErrorReport::new(&limits);
        // 4-byte characters: a cut inside one would not be valid UTF-8.
        let long = "🦀".repeat(10_000);
        for i in 0..5_000 {
            r.push(FieldError::new(Some(i), Some(&long), format!("bad {long}")));
        }
        assert_eq!(r.total(), 5_000);
        let (len, v) = body_of(r.into_error("5000 of 5000 events are invalid".into(), 5_000)).await;
        assert!(len <= limits.max_body_bytes, "{len} bytes");
        assert_eq!(v["invalid_events"], 5_000);
        let listed = v["errors"].as_array().map_or(0, Vec::len);
        assert!(listed > 0);
        assert_eq!(v["errors_omitted"].as_u64(), Some(5_000 - listed as u64));
        let first = &v["errors"][0];
        assert_eq!(first["index"], 0);
        assert_eq!(first["field"].as_str().map(|f| f.chars().count()), Some(51));
        assert!(first["reason"].as_str().is_some_and(|r| r.ends_with('…')));
    }

    #[tokio::test]
    async fn lists_at_most_max_errors_and_keeps_short_ones_whole() {
        let limits = ReportLimits {
            max_errors: 3,
            ..ReportLimits::default()
        };
        let mut r = ErrorReport::new(&limits);
        for i in 0..10 {
            r.push(FieldError::new(
                Some(i),
                Some("status"),
                "must be an integer",
            ));
        }
        let (_, v) = body_of(r.into_error("10 of 10 events are invalid".into(), 10)).await;
        assert_eq!(v["errors"].as_array().map(Vec::len), Some(3));
        assert_eq!(v["errors_omitted"], 7);
        assert_eq!(v["errors"][2]["reason"], "must be an integer");
    }
}
