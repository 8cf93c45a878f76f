//! What one query may cost (`[query]`): a slot among
//! `max_concurrent_queries`, held from admission until the answer's last
//! byte is handed to the connection; a `from`..`to` span within the
//! window's cap; an answer of at most `max_response_bytes` built row by row;
//! and the keyset cursor that continues a truncated answer. Shared by the
//! rollup, alert and archive-search endpoints.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body::{Frame, SizeHint};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::bad_param;
use super::ApiError;
use crate::config::QueryConfig;

/// The query bounds of one API process.
#[derive(Clone)]
pub struct QueryLimits {
    slots: Arc<Semaphore>,
    pub cfg: QueryConfig,
}

impl QueryLimits {
    pub fn new(cfg: &QueryConfig) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(cfg.max_concurrent_queries.max(1))),
            cfg: cfg.clone(),
        }
    }

    /// A query slot; 503 with Retry-After when all are taken. The handler
    /// moves it into its answer ([`QuerySlot::body`]), so it is held until
    /// the answer is sent, not only until it is built: a client that does
    /// not read keeps its slot (and the answer's memory) to itself, and
    /// `max_concurrent_queries × max_response_bytes` bounds both.
    pub fn admit(&self) -> Result<QuerySlot, ApiError> {
        self.slots
            .clone()
            .try_acquire_owned()
            .map(|p| QuerySlot { _permit: p })
            .map_err(|_| ApiError::Unavailable {
                reason: format!(
                    "{} queries are running (query.max_concurrent_queries); retry shortly",
                    self.cfg.max_concurrent_queries
                ),
                retry_after: self.cfg.retry_after_secs,
            })
    }

    /// Refuses a `from`..`to` wider than `max_days` (setting `query.{setting}`),
    /// naming `from`, the span and the cap.
    pub fn check_range(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        max_days: u64,
        setting: &str,
    ) -> Result<(), ApiError> {
        let max = chrono::Duration::days(i64::try_from(max_days).unwrap_or(i64::MAX / 86_400_000));
        if to - from > max {
            let days = (to - from).num_hours() as f64 / 24.0;
            return Err(bad_param(
                "from",
                format!(
                    "from..to spans {days:.1} days; one query may span at most {max_days} days (query.{setting}): split the range"
                ),
            ));
        }
        Ok(())
    }
}

/// A slot among `query.max_concurrent_queries`, given back when dropped.
#[derive(Debug)]
pub struct QuerySlot {
    _permit: OwnedSemaphorePermit,
}

/// Most bytes of an answer handed to the connection at a time: hyper asks
/// for the next piece only once its write buffer has room, so the slot is
/// held while a slow reader's answer waits in memory.
const SEND_CHUNK_BYTES: usize = 64 * 1024;

impl QuerySlot {
    /// `answer` as a response body holding this slot until its last piece is
    /// taken, or until it is dropped (client gone, `server.request_timeout_ms`).
    pub fn body(self, answer: impl Into<Bytes>) -> Body {
        Body::new(SlotBody {
            rest: answer.into(),
            _slot: self,
        })
    }
}

/// An answer in memory, served in pieces, with its query slot.
struct SlotBody {
    rest: Bytes,
    _slot: QuerySlot,
}

impl http_body::Body for SlotBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.rest.is_empty() {
            return Poll::Ready(None);
        }
        let piece = this.rest.split_to(this.rest.len().min(SEND_CHUNK_BYTES));
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
}

/// An answer body built row by row, at most `max` bytes (one row more when
/// the first alone is larger, so every page makes progress).
pub struct CappedBody {
    buf: Vec<u8>,
    max: usize,
    rows: usize,
}

impl CappedBody {
    pub fn new(max: usize, head: &[u8]) -> Self {
        let mut buf = Vec::with_capacity(head.len().max(max.min(64 * 1024)));
        buf.extend_from_slice(head);
        Self { buf, max, rows: 0 }
    }

    /// Appends one row (with `sep` before it unless it is the first);
    /// false, appending nothing, when it would pass the cap.
    pub fn push_row(&mut self, sep: &[u8], row: &[u8]) -> bool {
        let sep = if self.rows == 0 { &[][..] } else { sep };
        if self.rows > 0 && self.buf.len() + sep.len() + row.len() > self.max {
            return false;
        }
        self.buf.extend_from_slice(sep);
        self.buf.extend_from_slice(row);
        self.rows += 1;
        true
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn finish(mut self, tail: &[u8]) -> Vec<u8> {
        self.buf.extend_from_slice(tail);
        self.buf
    }
}

/// A cursor: where a truncated answer stopped (the key of its last row) and
/// which table it belongs to, as hex of `{"t": table, "k": [key…]}` (URL-safe).
pub fn encode_cursor(table: &str, key: Vec<Value>) -> String {
    let json = serde_json::json!({"t": table, "k": key}).to_string();
    json.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The key of cursor `s`, checked to belong to `table` and to have `len` parts.
pub fn decode_cursor(s: &str, table: &str, len: usize) -> Result<Vec<Value>, ApiError> {
    let bad = || {
        bad_param(
            "cursor",
            "is not a cursor of this endpoint: pass the `cursor` of the previous answer unchanged",
        )
    };
    if s.len() % 2 != 0 || s.len() > 8192 {
        return Err(bad());
    }
    let bytes = (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad)?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if v.get("t").and_then(Value::as_str) != Some(table) {
        return Err(bad_param(
            "cursor",
            format!("belongs to another table than {table}: repeat the request that returned it"),
        ));
    }
    match v.get("k") {
        Some(Value::Array(k)) if k.len() == len => Ok(k.clone()),
        _ => Err(bad()),
    }
}

/// The response of a JSON page whose body holds `…"rows":[` (or another
/// array) and its rows: closed with `"count"`, `"truncated"` and `"cursor"`,
/// with the page headers; `slot` is held until it is sent.
pub fn json_page(
    body: CappedBody,
    truncated: bool,
    cursor: Option<String>,
    slot: QuerySlot,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let count = body.rows();
    let tail = format!(
        "],\"count\":{count},\"truncated\":{truncated},\"cursor\":{}}}",
        cursor
            .as_ref()
            .map_or(Value::Null, |c| Value::from(c.as_str()))
    );
    let mut resp = (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        slot.body(body.finish(tail.as_bytes())),
    )
        .into_response();
    page_headers(&mut resp, truncated, cursor.as_deref());
    resp
}

/// Response headers telling whether the answer was cut (for CSV, whose body
/// cannot say it): `x-flowmeter-truncated` and `x-flowmeter-cursor`.
pub fn page_headers(resp: &mut axum::response::Response, truncated: bool, cursor: Option<&str>) {
    use axum::http::HeaderValue;
    let h = resp.headers_mut();
    h.insert(
        "x-flowmeter-truncated",
        HeaderValue::from_static(if truncated { "true" } else { "false" }),
    );
    if let Some(c) = cursor.and_then(|c| HeaderValue::from_str(c).ok()) {
        h.insert("x-flowmeter-cursor", c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_stops_at_a_row_boundary_but_always_takes_one_row() {
        let mut b = CappedBody::new(10, b"[");
        assert!(
            b.push_row(b",", b"\"0123456789abc\""),
            "the first row goes in"
        );
        assert!(!b.push_row(b",", b"1"), "past the cap");
        assert_eq!(b.rows(), 1);
        assert_eq!(b.finish(b"]"), b"[\"0123456789abc\"]");
        let mut b = CappedBody::new(8, b"[");
        assert!(b.push_row(b",", b"1"));
        assert!(b.push_row(b",", b"22"));
        assert!(b.push_row(b",", b"33"));
        assert!(!b.push_row(b",", b"4"), "[1,22,33,4 is 10 bytes");
        assert_eq!(b.finish(b"]"), b"[1,22,33]");
    }

    #[test]
    fn cursors_round_trip_and_refuse_what_is_not_theirs() {
        let c = encode_cursor(
            "http_hourly",
            vec![Value::from("2026-03-01T10:00:00Z"), Value::from("a,b é")],
        );
        assert!(c.bytes().all(|b| b.is_ascii_hexdigit()));
        let k = decode_cursor(&c, "http_hourly", 2).expect("decodes");
        assert_eq!(k[1], "a,b é");
        for bad in [&c[1..], "zz", "", "7b7d"] {
            let e = decode_cursor(bad, "http_hourly", 2).expect_err("refused");
            assert!(matches!(e, ApiError::BadParam { ref param, .. } if param == "cursor"));
        }
        let e = decode_cursor(&c, "http_daily", 2).expect_err("another table");
        assert!(e.to_string().contains("another table"), "{e}");
        assert!(decode_cursor(&c, "http_hourly", 3).is_err());
    }

    #[test]
    fn ranges_past_the_cap_name_from_and_the_setting() {
        let l = QueryLimits::new(&QueryConfig::default());
        let to = Utc::now();
        l.check_range(
            to - chrono::Duration::days(92),
            to,
            92,
            "max_hourly_range_days",
        )
        .expect("at the cap");
        let e = l
            .check_range(
                to - chrono::Duration::days(93),
                to,
                92,
                "max_hourly_range_days",
            )
            .expect_err("past it");
        let text = e.to_string();
        assert!(
            text.contains("parameter from")
                && text.contains("query.max_hourly_range_days")
                && text.contains("92"),
            "{text}"
        );
    }

    #[test]
    fn slots_are_given_back_when_the_guard_drops() {
        let l = QueryLimits::new(&QueryConfig {
            max_concurrent_queries: 1,
            ..Default::default()
        });
        let held = l.admit().expect("first");
        let e = l.admit().expect_err("second waits");
        assert!(matches!(e, ApiError::Unavailable { retry_after: 1, .. }));
        drop(held);
        assert!(l.admit().is_ok());
    }

    #[tokio::test]
    async fn an_answer_holds_its_slot_until_its_last_piece_is_taken() {
        use http_body::Body as _;
        use http_body_util::BodyExt;
        let l = QueryLimits::new(&QueryConfig {
            max_concurrent_queries: 1,
            ..Default::default()
        });
        let answer: Vec<u8> = (0..3 * SEND_CHUNK_BYTES + 7).map(|i| i as u8).collect();
        let mut body = l.admit().expect("slot").body(answer.clone());
        assert_eq!(body.size_hint().exact(), Some(answer.len() as u64));
        let mut got = Vec::new();
        for _ in 0..3 {
            let piece = body.frame().await.expect("a piece").expect("infallible");
            let piece = piece.into_data().expect("data");
            assert_eq!(piece.len(), SEND_CHUNK_BYTES, "served in pieces");
            got.extend_from_slice(&piece);
            assert!(!body.is_end_stream());
            assert!(l.admit().is_err(), "held while the answer is being sent");
        }
        let last = body.frame().await.expect("last").expect("infallible");
        got.extend_from_slice(&last.into_data().expect("data"));
        assert!(body.is_end_stream());
        assert_eq!(got, answer);
        drop(body);
        assert!(l.admit().is_ok(), "given back once sent");
        // a client that goes away mid-answer gives the slot back too
        let mut body = l.admit().expect("slot").body(answer);
        let _ = body.frame().await;
        assert!(l.admit().is_err());
        drop(body);
        assert!(l.admit().is_ok());
    }
}
