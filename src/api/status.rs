//! `GET /v1/status`.

use axum::extract::State;
use axum::Json;

use super::{ApiError, AppState};
use crate::status::{gather, Status};

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
