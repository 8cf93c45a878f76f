//! The `http` event, built from typed fields: no JSON Schema at run time.
//!
//! A [`HttpRecord`] is what the layer measured; [`HttpRecord::to_event`]
//! checks the limits of `schemas/http.v1.json` that the types do not already
//! guarantee, serializes the event with that schema's field names, and
//! hashes its `partition_by` fields (`service`, `endpoint`) the way ingest
//! does. The server's tests run the real schema over these events
//! (`collector_events_pass_the_http_schema` in
//! `tests/integration/collector.rs`), so the two cannot drift apart unnoticed.

use std::borrow::Cow;
use std::sync::Arc;

use flowmeter_core::event::{KindNames, PartitionKey, ValidEvent};
use serde::{Deserialize, Serialize};

/// The kind the collector writes.
pub const HTTP_KIND: &str = "http";
/// The version of `schemas/http.v1.json` its events follow.
pub const HTTP_VERSION: u32 = 1;

/// Longest `ts` the schema accepts (3000-01-01T00:00:00Z, epoch ms).
const MAX_TS_MS: i64 = 32_503_680_000_000;
/// Largest byte count the schema accepts (1 TiB).
const MAX_BYTES: u64 = 1 << 40;
/// Longest `duration_ms` the schema accepts (a day).
const MAX_DURATION_MS: f64 = 86_400_000.0;

/// The kinds of the collector's events, for [`flowmeter_core::stream::Producer`]:
/// [`HTTP_KIND`] at index 0.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpKind;

impl KindNames for HttpKind {
    fn kind_name(&self, kind: usize) -> Option<&str> {
        (kind == 0).then_some(HTTP_KIND)
    }
}

/// One served request, as measured (the typed form of an `http` event
/// without its `service`).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRecord {
    /// When the response ended, epoch milliseconds.
    pub ts_ms: i64,
    /// The route template (never the raw path).
    pub endpoint: Arc<str>,
    pub method: http::Method,
    pub status: u16,
    pub req_bytes: u64,
    pub resp_bytes: u64,
    pub req_header_bytes: u64,
    pub resp_header_bytes: u64,
    pub duration_ms: f64,
    pub user_id: Option<String>,
}

/// An event that would fail `schemas/http.v1.json`. Not retryable: the
/// event is dropped and counted (`dropped_invalid`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the event would fail the http schema: {0}")]
pub struct InvalidHttpEvent(pub String);

impl HttpRecord {
    /// The stream event of this request from service `service`: its JSON
    /// (the fields of `schemas/http.v1.json`, `duration_ms` rounded to
    /// microseconds), version 1, partitioned by `service` and `endpoint`;
    /// its `kind` is an index into [`HttpKind`].
    pub fn to_event(&self, service: &str) -> Result<ValidEvent, InvalidHttpEvent> {
        let ev = HttpEvent::of(service, self);
        ev.check().map_err(InvalidHttpEvent)?;
        let data = serde_json::to_string(&ev).map_err(|e| InvalidHttpEvent(e.to_string()))?;
        let mut key = PartitionKey::new();
        key.push(service).push(&self.endpoint);
        Ok(ValidEvent {
            kind: 0,
            version: HTTP_VERSION,
            ts_ms: self.ts_ms,
            data,
            partition: key.finish(),
        })
    }

    /// A record and its service back from an event's JSON as
    /// [`Self::to_event`] wrote it (a line of the spill file).
    pub fn from_json(json: &str) -> Result<(String, Self), InvalidHttpEvent> {
        let ev: HttpEvent<'_> =
            serde_json::from_str(json).map_err(|e| InvalidHttpEvent(e.to_string()))?;
        if ev.kind != HTTP_KIND {
            return Err(InvalidHttpEvent(format!("kind {:?} is not http", ev.kind)));
        }
        let method = ev
            .method
            .parse()
            .map_err(|_| InvalidHttpEvent(format!("method {:?}", ev.method)))?;
        let record = Self {
            ts_ms: ev.ts,
            endpoint: Arc::from(&*ev.endpoint),
            method,
            status: ev.status,
            req_bytes: ev.req_bytes,
            resp_bytes: ev.resp_bytes,
            req_header_bytes: ev.req_header_bytes,
            resp_header_bytes: ev.resp_header_bytes,
            duration_ms: ev.duration_ms,
            user_id: ev.user_id.map(Cow::into_owned),
        };
        Ok((ev.service.into_owned(), record))
    }
}

/// The event as the ingest API would receive it (the field names of
/// `schemas/http.v1.json`, which allows no others).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpEvent<'a> {
    #[serde(borrow)]
    kind: Cow<'a, str>,
    ts: i64,
    #[serde(borrow)]
    service: Cow<'a, str>,
    #[serde(borrow)]
    endpoint: Cow<'a, str>,
    #[serde(borrow)]
    method: Cow<'a, str>,
    status: u16,
    req_bytes: u64,
    resp_bytes: u64,
    #[serde(default)]
    req_header_bytes: u64,
    #[serde(default)]
    resp_header_bytes: u64,
    duration_ms: f64,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    user_id: Option<Cow<'a, str>>,
}

impl<'a> HttpEvent<'a> {
    fn of(service: &'a str, r: &'a HttpRecord) -> Self {
        Self {
            kind: Cow::Borrowed(HTTP_KIND),
            ts: r.ts_ms,
            service: Cow::Borrowed(service),
            endpoint: Cow::Borrowed(&r.endpoint),
            method: Cow::Borrowed(r.method.as_str()),
            status: r.status,
            req_bytes: r.req_bytes,
            resp_bytes: r.resp_bytes,
            req_header_bytes: r.req_header_bytes,
            resp_header_bytes: r.resp_header_bytes,
            duration_ms: (r.duration_ms * 1000.0).round() / 1000.0,
            user_id: r.user_id.as_deref().map(Cow::Borrowed),
        }
    }

    /// The limits of `schemas/http.v1.json` that the field types do not
    /// already guarantee; the reason names the field.
    fn check(&self) -> Result<(), String> {
        let chars = |field: &str, s: &str, max: usize| {
            let n = s.chars().count();
            if (1..=max).contains(&n) {
                Ok(())
            } else {
                Err(format!("{field} has {n} characters (1 to {max} allowed)"))
            }
        };
        chars("service", &self.service, 128)?;
        chars("endpoint", &self.endpoint, 255)?;
        let m = &*self.method;
        if m.is_empty() || m.len() > 16 || !m.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!("method {m:?} is not 1 to 16 upper-case letters"));
        }
        if self
            .user_id
            .as_ref()
            .is_some_and(|u| u.chars().count() > 128)
        {
            return Err("user_id over 128 characters".into());
        }
        if !(100..=599).contains(&self.status) {
            return Err(format!("status {} is outside 100 to 599", self.status));
        }
        if !(0..=MAX_TS_MS).contains(&self.ts) {
            return Err(format!("ts {} is outside 1970 to 3000", self.ts));
        }
        let bytes = [
            ("req_bytes", self.req_bytes),
            ("resp_bytes", self.resp_bytes),
            ("req_header_bytes", self.req_header_bytes),
            ("resp_header_bytes", self.resp_header_bytes),
        ];
        if let Some((field, n)) = bytes.iter().find(|(_, n)| *n > MAX_BYTES) {
            return Err(format!("{field} {n} is over 1 TiB"));
        }
        if !(0.0..=MAX_DURATION_MS).contains(&self.duration_ms) {
            return Err(format!(
                "duration_ms {} is outside 0 to 86400000",
                self.duration_ms
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(endpoint: &str, method: &str, user: Option<&str>) -> HttpRecord {
        HttpRecord {
            ts_ms: 1_772_359_200_123,
            endpoint: Arc::from(endpoint),
            method: method.parse().expect("method"),
            status: 404,
            req_bytes: 0,
            resp_bytes: 1 << 33,
            req_header_bytes: 120,
            resp_header_bytes: 99,
            duration_ms: 0.0004,
            user_id: user.map(str::to_string),
        }
    }

    #[test]
    fn events_round_trip_through_their_json() {
        let r = record("/api/x/{id}", "GET", Some("u\"1"));
        let ev = r.to_event("svc").expect("valid");
        assert_eq!(HttpKind.kind_name(ev.kind), Some("http"));
        assert_eq!((ev.version, ev.ts_ms), (1, r.ts_ms));
        let (service, back) = HttpRecord::from_json(&ev.data).expect("parses");
        assert_eq!(service, "svc");
        // duration_ms is rounded to microseconds once, then stays put
        assert_eq!(back.duration_ms, 0.0);
        let again = back.to_event(&service).expect("valid");
        assert_eq!((again.data, again.partition), (ev.data, ev.partition));
    }

    #[test]
    fn limits_name_the_field() {
        let bad = |r: HttpRecord, service: &str, field: &str| {
            let e = r.to_event(service).expect_err("refused");
            assert!(e.0.contains(field), "{e}");
        };
        bad(record(&"e".repeat(256), "GET", None), "svc", "endpoint");
        bad(record("/a", "GET", None), "", "service");
        bad(record("/a", "purge", None), "svc", "method");
        bad(
            record("/a", "GET", Some(&"u".repeat(129))),
            "svc",
            "user_id",
        );
        let mut r = record("/a", "GET", None);
        r.status = 600;
        bad(r, "svc", "status");
        let mut r = record("/a", "GET", None);
        r.resp_bytes = MAX_BYTES + 1;
        bad(r, "svc", "resp_bytes");
        let mut r = record("/a", "GET", None);
        r.duration_ms = f64::NAN;
        bad(r, "svc", "duration_ms");
        assert!(HttpRecord::from_json(r#"{"kind":"webrtc"}"#).is_err());
        assert!(HttpRecord::from_json("not json").is_err());
    }
}
