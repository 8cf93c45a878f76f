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
    .map_err(|e| {
        // Redis' own text (addresses, script errors) stays in the log
        tracing::warn!(error = %e, "GET /v1/status: cannot read the streams from Redis");
        ApiError::Unavailable {
            reason: "cannot read the streams' status from Redis right now (the server log says why); retry after Retry-After seconds".into(),
            retry_after: st.queries.cfg.retry_after_secs,
        }
    })
}
