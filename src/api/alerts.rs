//! `GET /v1/alerts?state=open|resolved&from&to&limit` (role `api`).

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::Json;
use chrono::Utc;
use serde_json::{json, Value};

use super::error::{bad_param, limit_param, time_param};
use super::{ApiError, AppState};

const DEFAULT_LIMIT: u64 = 500;
const MAX_LIMIT: u64 = 10_000;

pub async fn list(
    State(st): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let Some(store) = &st.store else {
        return Err(ApiError::NotFound("api role is not running".into()));
    };
    for k in params.keys() {
        if !["state", "from", "to", "limit"].contains(&k.as_str()) {
            return Err(bad_param(
                k,
                "unknown parameter; use state, from, to, limit",
            ));
        }
    }
    let open = match params.get("state").map(String::as_str) {
        None | Some("all") => None,
        Some("open") => Some(true),
        Some("resolved") => Some(false),
        Some(_) => return Err(bad_param("state", "must be open, resolved or all")),
    };
    let to =
        time_param(&params, "to")?.unwrap_or_else(|| Utc::now() + chrono::Duration::minutes(1));
    let from = time_param(&params, "from")?.unwrap_or(to - chrono::Duration::days(7));
    if from > to {
        return Err(bad_param("from", "must not be after `to`"));
    }
    let limit = limit_param(&params, DEFAULT_LIMIT, MAX_LIMIT)?;
    let rows = store
        .alerts(open, from, to, limit)
        .await
        .map_err(|e| ApiError::Unavailable {
            reason: format!("cannot read alerts from MySQL: {e}"),
            retry_after: 1,
        })?;
    Ok(Json(json!({"alerts": rows, "count": rows.len()})))
}
