//! `GET /v1/status` and `GET /metrics`.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;

use super::{ApiError, AppState};
use crate::status::{gather, Status};
use crate::telemetry::metrics as counters;

pub async fn status(State(st): State<AppState>) -> Result<Json<Status>, ApiError> {
    gather(
        &st.redis,
        &st.keys,
        &st.schemas,
        &st.processors,
        st.store.as_ref(),
        &st.retention,
    )
    .await
    .map(Json)
    .map_err(|e| ApiError::Unavailable {
        reason: format!("cannot read stream status from Redis: {e}"),
        retry_after: 1,
    })
}

pub async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        // the alert delivery families keep their own labelled series
        counters::render() + &crate::alert::notify::metrics::render(),
    )
}
