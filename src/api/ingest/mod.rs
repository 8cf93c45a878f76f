//! `POST /v1/events`: one JSON object, a JSON array, or NDJSON
//! (`Content-Type: application/x-ndjson`); another media type than
//! [`MEDIA_TYPES`] is refused with 415 before the body is read. All or
//! nothing: any invalid event rejects the whole request (400, every problem counted, the first ones
//! listed within `ingest.max_error_body_bytes`); otherwise every event is
//! appended in one Redis transaction and the answer is `202 {"accepted": N}`
//! once Redis has acknowledged it.
//!
//! - `Idempotency-Key` makes retries safe: within
//!   `ingest.idempotency_window_secs` a request with a key already written
//!   answers the first outcome (`"replayed": true`) and writes nothing; the
//!   same key with another body answers 422.
//! - A 503 says whether anything may have been written: `"outcome":
//!   "not_written"` (Redis refused or was unreachable, or backpressure) or
//!   `"unknown"` (Redis did not confirm a write it may have applied: retry
//!   with the same key). With `ingest.wait_replicas`, a write fewer
//!   replicas confirmed in time is `"unknown"` too: stored on the master,
//!   maybe lost if it fails over.
//! - The bodies being read hold `ingest.max_inflight_body_bytes` between
//!   them ([`BodyBudget`]); a body past it gets 503 + `Retry-After` unread.
//! - Once the write is sent to Redis, `server.request_timeout_ms` no longer
//!   cuts the request (a 408 would hide that the events may be stored): it
//!   ends with the write's own answer, within the Redis command timeout.

mod body;
mod inflight;
mod key;
mod report;

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

pub use body::parse_body;
pub use inflight::BodyBudget;
use inflight::ReadError;
pub use report::{ErrorReport, ReportLimits};

use super::server::Uninterruptible;
use super::{ApiError, AppState};
use crate::stream::{Idempotency, SubmitError, Submitted};
use crate::telemetry::families::{self, IngestOutcome};
use crate::telemetry::metrics;

/// Header on a 202 that repeats an earlier request's outcome.
const REPLAYED_HEADER: &str = "idempotent-replayed";

pub async fn ingest(
    State(st): State<AppState>,
    uninterruptible: Option<Extension<Uninterruptible>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let write = uninterruptible.map(|Extension(u)| u);
    let result = handle(&st, &headers, body, write.as_ref()).await;
    let outcome = match &result {
        Ok(_) => IngestOutcome::Accepted,
        Err(r) => r.outcome,
    };
    match outcome {
        IngestOutcome::Accepted => metrics::REQUESTS_ACCEPTED.inc(),
        IngestOutcome::Unavailable | IngestOutcome::Backpressure => {
            metrics::REQUESTS_UNAVAILABLE.inc()
        }
        IngestOutcome::UnsupportedMediaType => metrics::REQUESTS_UNSUPPORTED_MEDIA_TYPE.inc(),
        _ => metrics::REQUESTS_REJECTED.inc(),
    }
    families::ingest_request(outcome, started.elapsed().as_secs_f64());
    result.map_err(|r| r.error)
}

/// A request not accepted: the answer, and how `/metrics` counts it.
struct Refusal {
    error: ApiError,
    outcome: IngestOutcome,
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        let outcome = match &error {
            ApiError::TooLarge { .. } => IngestOutcome::TooLarge,
            ApiError::UnsupportedMediaType { .. } => IngestOutcome::UnsupportedMediaType,
            ApiError::Unavailable { .. } | ApiError::WriteFailed { .. } => {
                IngestOutcome::Unavailable
            }
            _ => IngestOutcome::Rejected,
        };
        Self { error, outcome }
    }
}

/// The media types `POST /v1/events` reads. `text/plain` is JSON too: what
/// `navigator.sendBeacon` sends for a string, and the one type a browser
/// page may send to another origin without a preflight (the WebRTC SDK).
/// A request without `Content-Type` is read as JSON.
pub const MEDIA_TYPES: &[&str] = &[
    "application/json",
    "application/x-ndjson",
    "application/jsonl",
    "text/plain",
];

/// Whether the body is NDJSON (else JSON), from its `Content-Type`
/// (parameters such as `charset` ignored, case-insensitive); 415 for a
/// type not in [`MEDIA_TYPES`].
fn is_ndjson(headers: &HeaderMap) -> Result<bool, ApiError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(false);
    };
    let text = String::from_utf8_lossy(ct.as_bytes());
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" | "text/plain" => Ok(false),
        "application/x-ndjson" | "application/jsonl" => Ok(true),
        _ => Err(ApiError::UnsupportedMediaType {
            got: super::error::capped(&text, super::error::MAX_ECHOED_CHARS),
            supported: MEDIA_TYPES,
        }),
    }
}

async fn handle(
    st: &AppState,
    headers: &HeaderMap,
    body: Body,
    write: Option<&Uninterruptible>,
) -> Result<Response, Refusal> {
    let cfg = &st.ingest;
    // before the body is read: a type it cannot read costs nothing
    let ndjson = is_ndjson(headers)?;
    let key = key::idempotency_key(headers, cfg.max_idempotency_key_bytes)?;
    let limits = ReportLimits::from(cfg);
    // `_held` keeps the body's bytes counted until the request is done.
    let (bytes, _held) = st
        .ingest_bodies
        .read(body, cfg.max_body_bytes)
        .await
        .map_err(|e| match e {
            ReadError::TooLarge { limit } => ApiError::TooLarge { limit },
            ReadError::Budget { held, max } => {
                metrics::INGEST_BODY_BUDGET_REFUSED.inc();
                ApiError::WriteFailed {
                    reason: format!(
                        "request bodies in flight hold {held} of {max} bytes (ingest.max_inflight_body_bytes); this body was not read and nothing was written: retry after Retry-After, or raise ingest.max_inflight_body_bytes"
                    ),
                    retry_after: cfg.retry_after_secs,
                    unknown: false,
                }
            }
            ReadError::Broken(e) => ErrorReport::new(&limits)
                .into_error(format!("could not read the request body: {e}"), 0),
        })?;
    let values = parse_body(&bytes, ndjson, cfg.max_events_per_request, &limits)?;
    let Some(producer) = &st.producer else {
        return Err(ApiError::NotFound("ingest role is not running".into()).into());
    };
    let mut valid = Vec::with_capacity(values.len());
    let mut report = ErrorReport::new(&limits);
    let mut invalid = 0usize;
    for (i, v) in values.iter().enumerate() {
        match st.schemas.validate(i, v) {
            Ok(e) => valid.push(e),
            Err(errs) => {
                invalid += 1;
                errs.into_iter().for_each(|e| report.push(e));
            }
        }
    }
    if invalid > 0 {
        return Err(report
            .into_error(
                format!(
                    "{invalid} of {} events are invalid; nothing from this request was written",
                    values.len()
                ),
                invalid,
            )
            .into());
    }
    let idempotency = key.map(|key| Idempotency {
        key,
        fingerprint: key::fingerprint(ndjson, &bytes),
        window: std::time::Duration::from_secs(cfg.idempotency_window_secs),
    });
    // From here the events may land in Redis whatever the client hears:
    // the request timeout must not answer 408 over it.
    if let Some(w) = write {
        w.begin();
    }
    match producer
        .submit(&st.schemas, &valid, idempotency.as_ref())
        .await
    {
        Ok(Submitted::Written) => {
            count_by_kind(&st.schemas, &valid);
            Ok(accepted(valid.len() as u64, false))
        }
        Ok(Submitted::Replayed { accepted: n }) => {
            metrics::IDEMPOTENT_REPLAYS.inc();
            Ok(accepted(n, true))
        }
        Err(e) => {
            if matches!(e, SubmitError::NotReplicated { .. }) {
                count_not_replicated(st).await;
            }
            let outcome = match e {
                SubmitError::Backlog { .. } => IngestOutcome::Backpressure,
                _ => IngestOutcome::Unavailable,
            };
            Err(Refusal {
                error: failed(e, key, cfg.retry_after_secs),
                outcome,
            })
        }
    }
}

/// `flowmeter_events_ingested_total{kind}` of a written request (kinds
/// are the configured schemas: validated events name no other).
fn count_by_kind(schemas: &crate::event::SchemaRegistry, valid: &[crate::event::ValidEvent]) {
    let kinds = schemas.kinds();
    let mut by_kind = vec![0u64; kinds.len()];
    for e in valid {
        if let Some(n) = by_kind.get_mut(e.kind) {
            *n += 1;
        }
    }
    for (kind, n) in kinds.iter().zip(by_kind) {
        if n > 0 {
            families::events_ingested(&kind.name, n);
        }
    }
}

/// Adds one to the `not_replicated` figure `status` shows (all ingest
/// processes together); a failure only costs the figure.
async fn count_not_replicated(st: &AppState) {
    let mut conn = st.redis.conn.clone();
    let added = st
        .redis
        .run(
            redis::cmd("HINCRBY")
                .arg(st.keys.ingest_figures())
                .arg("not_replicated")
                .arg(1)
                .query_async::<i64>(&mut conn),
        )
        .await;
    if let Err(e) = added {
        tracing::warn!(error = %e, "cannot count a write short of replicas in Redis");
    }
}

fn accepted(n: u64, replayed: bool) -> Response {
    let body = if replayed {
        json!({"accepted": n, "replayed": true})
    } else {
        json!({"accepted": n})
    };
    let mut resp = (StatusCode::ACCEPTED, Json(body)).into_response();
    if replayed {
        resp.headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    resp
}

/// A `503 "outcome": "unknown"` saying `what` happened and what to do: with
/// a key, retry with it (`retry.0` says what that does); without one,
/// `retry.1` says the risk.
fn unknown(what: String, key: Option<&str>, retry: (&str, &str), retry_after: u64) -> ApiError {
    metrics::REQUESTS_OUTCOME_UNKNOWN.inc();
    let advice = match key {
        Some(_) => format!("retry with the same {} header: {}", key::HEADER, retry.0),
        None => format!(
            "{}; send an {} header to make retries safe",
            retry.1,
            key::HEADER
        ),
    };
    ApiError::WriteFailed {
        reason: format!("{what}; {advice}"),
        retry_after,
        unknown: true,
    }
}

/// The answer to a request the producer did not (or may not have) written.
fn failed(e: SubmitError, key: Option<&str>, retry_after: u64) -> ApiError {
    let not_written = |reason: String| ApiError::WriteFailed {
        reason,
        retry_after,
        unknown: false,
    };
    match e {
        SubmitError::Backlog {
            shard,
            entries,
            limit,
        } => {
            metrics::REQUESTS_BACKPRESSURE.inc();
            not_written(format!(
                "backpressure: shard {shard} holds {entries} events its consumers have not processed yet (ingest.max_backlog_entries = {limit}); nothing from this request was written, retry later"
            ))
        }
        SubmitError::NotWritten(e) => {
            tracing::warn!(error = %e, "ingest: Redis refused or was unreachable; nothing written");
            not_written(
                "the event store (Redis) is unavailable; nothing from this request was written, retry later".into(),
            )
        }
        SubmitError::Unknown(e) => {
            tracing::warn!(error = %e, keyed = key.is_some(), "ingest: the outcome of a write is unknown");
            unknown(
                "the event store (Redis) did not confirm the write in time: the events may or may not have been stored".into(),
                key,
                ("the events are then written at most once", "a retry may count them twice"),
                retry_after,
            )
        }
        SubmitError::NotReplicated {
            confirmed,
            wanted,
            timeout,
        } => {
            tracing::warn!(confirmed, wanted, keyed = key.is_some(), "ingest: fewer replicas than ingest.wait_replicas confirmed a write in time");
            metrics::REQUESTS_NOT_REPLICATED.inc();
            unknown(
                format!(
                    "the events were stored, but {confirmed} of the {wanted} replicas ingest.wait_replicas asks for confirmed them within {} ms: they are lost if the master fails before a replica has them",
                    timeout.as_millis()
                ),
                key,
                ("the retry writes nothing and waits for the replicas again", "a retry counts them twice"),
                retry_after,
            )
        }
        SubmitError::KeyReused => ApiError::Conflict {
            header: key::HEADER,
            reason: format!(
                "{} {:?} was used for a request with another body within ingest.idempotency_window_secs; nothing was written: use a new key for a new request",
                key::HEADER,
                key.unwrap_or_default()
            ),
        },
    }
}
