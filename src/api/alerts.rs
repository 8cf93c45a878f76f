//! `GET /v1/alerts?state=open|resolved&from&to&limit&cursor` (role `api`).
//!
//! Newest first. Bounded like the rollups (`[query]`): `from`..`to` at most
//! `max_daily_range_days`, one query slot, and an answer of at most
//! `max_response_bytes` ending with `truncated` and a `cursor` to continue.

use axum::extract::State;
use axum::response::Response;
use chrono::Utc;
use futures::TryStreamExt;
use serde_json::Value;

use super::error::{bad_param, ParamErrors};
use super::limits::{decode_cursor, encode_cursor, json_page, CappedBody};
use super::params::{AlertState, Limit, Param, Params, Rest, Time};
use super::{ApiError, AppState};
use serde::Deserialize;

const DEFAULT_LIMIT: u64 = 500;
const MAX_LIMIT: u64 = 10_000;
/// The cursor's table name.
const CURSOR_TABLE: &str = "alerts";

/// The parameters of `GET /v1/alerts`.
#[derive(Debug, Deserialize)]
pub struct AlertParams {
    state: Option<Param<AlertState>>,
    from: Option<Param<Time>>,
    to: Option<Param<Time>>,
    limit: Option<Param<Limit<DEFAULT_LIMIT, MAX_LIMIT>>>,
    cursor: Option<String>,
    #[serde(flatten)]
    unknown: Rest,
}

pub async fn list(
    State(st): State<AppState>,
    Params(p): Params<AlertParams>,
) -> Result<Response, ApiError> {
    let Some(store) = &st.store else {
        return Err(ApiError::NotFound("api role is not running".into()));
    };
    // every bad parameter is noted, and answered together
    let mut errs = ParamErrors::default();
    let unknown = errs.rest(p.unknown);
    errs.unknown(&unknown, &[], "use state, from, to, limit, cursor");
    let open = match errs.param("state", p.state).flatten() {
        None | Some(AlertState::All) => None,
        Some(AlertState::Open) => Some(true),
        Some(AlertState::Resolved) => Some(false),
    };
    let to = errs.param("to", p.to);
    let from = errs.param("from", p.from);
    let limit = Limit::or_default(errs.param("limit", p.limit));
    let before = errs
        .take(p.cursor.map(|c| before(&c)).transpose())
        .flatten();
    let (Some(to), Some(from)) = (to, from) else {
        return errs.finish().and(Err(ApiError::Internal(
            "a parameter error went unnamed".into(),
        )));
    };
    let to = to.map_or_else(|| Utc::now() + chrono::Duration::minutes(1), |t| t.0);
    let from = from.map_or(to - chrono::Duration::days(7), |t| t.0);
    if from > to {
        errs.add("from", "must not be after `to`");
    } else {
        errs.take(st.queries.check_range(
            from,
            to,
            st.queries.cfg.max_daily_range_days,
            "max_daily_range_days",
        ));
    }
    errs.finish()?;
    let slot = st.queries.admit()?;

    let mut body = CappedBody::new(st.queries.cfg.max_response_bytes, b"{\"alerts\":[");
    let mut rows = Box::pin(store.alerts(open, from, to, before, limit + 1));
    let mut last = None;
    let mut truncated = false;
    while let Some(a) = rows.try_next().await.map_err(|e| {
        // MySQL's own text stays in the log
        tracing::warn!(error = %e, "GET /v1/alerts: cannot read alerts from MySQL");
        ApiError::Unavailable {
            reason: "cannot read alerts from MySQL right now (the server log says why); retry after Retry-After seconds".into(),
            retry_after: st.queries.cfg.retry_after_secs,
        }
    })? {
        if body.rows() as u64 == limit {
            truncated = true;
            break;
        }
        let piece = serde_json::to_vec(&a)
            .map_err(|e| ApiError::Internal(format!("encoding alert {}: {e}", a.id)))?;
        if !body.push_row(b",", &piece) {
            truncated = true;
            break;
        }
        last = Some((a.created_at, a.id));
    }
    drop(rows);
    let cursor = match (truncated, last) {
        (true, Some((at, id))) => Some(encode_cursor(
            CURSOR_TABLE,
            vec![Value::from(at), Value::from(id)],
        )),
        _ => None,
    };
    Ok(json_page(body, truncated, cursor, slot))
}

/// The (created_at, id) of cursor `c`: where the previous page stopped.
fn before(c: &str) -> Result<(chrono::NaiveDateTime, u64), ApiError> {
    let k = decode_cursor(c, CURSOR_TABLE, 2)?;
    let bad = || {
        bad_param(
            "cursor",
            "is damaged: pass the `cursor` of the previous answer unchanged",
        )
    };
    let at = k
        .first()
        .and_then(Value::as_str)
        .and_then(|s| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.fZ").ok())
        .ok_or_else(bad)?;
    let id = k.get(1).and_then(Value::as_u64).ok_or_else(bad)?;
    Ok((at, id))
}
