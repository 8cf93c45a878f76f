//! The HTTP API.
//!
//! - `POST /v1/events`: ingest (role `ingest`);
//! - `GET /v1/rollups/hourly`, `GET /v1/rollups/daily`: rollup rows as JSON or CSV (role `api`);
//! - `GET /v1/status`: streams, groups, checkpoints, runners (role `api`);
//! - `GET /v1/events/search`: raw events from the ClickHouse archive (role `api`);
//! - `GET /health/live` (and its alias `GET /healthz`), `GET /health/ready`
//!   ([`health`]), `GET /metrics`: always, every role (`/metrics` with a
//!   token when `auth.metrics_requires_token`; the health endpoints never).
//!
//! [`router`] builds the whole thing from an [`AppState`] (built by
//! `app::http_state`), so tests drive it with `tower::ServiceExt::oneshot`
//! and no socket (tests/integration/router.rs); [`server`] serves it with the
//! connection limits, timeouts and TLS of `[server]`. Query parameters are
//! typed ([`params`]).

mod access;
mod alerts;
mod error;
mod events;
pub mod health;
mod ingest;
mod limits;
mod metrics;
pub mod params;
mod rate;
mod rollups;
pub mod server;
mod status;

use std::sync::Arc;

use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use axum::Router;

pub use error::ApiError;
pub use events::EventSearch;
pub use ingest::{parse_body, BodyBudget, ErrorReport, ReportLimits};
pub use limits::QueryLimits;
pub use metrics::{MetricsEndpoint, PipelineSource};
pub use rate::RateLimiter;
pub use rollups::{QueryCatalog, RollupTable};

use crate::config::IngestConfig;
use crate::event::SchemaRegistry;
use crate::processor::ProcessorRegistry;
use crate::store::Store;
use crate::stream::{Keys, Producer, Redis};

/// Everything the handlers use.
#[derive(Clone)]
pub struct AppState {
    pub schemas: Arc<SchemaRegistry>,
    pub processors: Arc<ProcessorRegistry>,
    pub redis: Redis,
    pub keys: Keys,
    /// Present when the `ingest` role runs.
    pub producer: Option<Producer>,
    /// Present when the `api` role runs: the query API's own pool
    /// (`query.max_connections`), not the processors'.
    pub store: Option<Store>,
    /// What one query may cost (`[query]`).
    pub queries: QueryLimits,
    pub catalog: Arc<QueryCatalog>,
    pub ingest: IngestConfig,
    /// `ingest.max_inflight_body_bytes`: what the ingest bodies in flight hold.
    pub ingest_bodies: BodyBudget,
    /// Shown in status (what retention would trim and who holds it back).
    pub retention: crate::config::RetentionConfig,
    /// Present when the `hub` role runs.
    pub hub: Option<Arc<crate::hub::Hub>>,
    pub auth: crate::auth::Auth,
    /// Present when the `api` role runs and the ClickHouse archive is enabled.
    pub events: Option<EventSearch>,
    /// `server.ingest_rate_limit` on `POST /v1/events`.
    pub ingest_limit: Arc<RateLimiter>,
    /// What `GET /metrics` writes.
    pub metrics: Arc<MetricsEndpoint>,
    /// What `GET /health/ready` checks for these roles.
    pub health: health::Readiness,
}

/// The WebSocket handler's part of the state (the hub takes only what it
/// needs, and does not import the API).
impl axum::extract::FromRef<AppState> for crate::hub::ws::WsState {
    fn from_ref(st: &AppState) -> Self {
        Self {
            hub: st.hub.clone(),
            auth: st.auth.clone(),
        }
    }
}

/// Builds the router for the roles present in `state`.
pub fn router(state: AppState) -> Router {
    let mut r = Router::new()
        .route("/health/live", get(health::live))
        .route("/healthz", get(health::live))
        .route("/health/ready", get(health::ready))
        .route(
            "/metrics",
            get(metrics::metrics).route_layer(from_fn_with_state(state.clone(), access::metrics)),
        )
        .merge(crate::web::router());
    if state.producer.is_some() {
        let mut events = Router::new().route(
            "/v1/events",
            post(ingest::ingest).options(access::preflight),
        );
        // Layers run outside in: the access check (origin, token), then the
        // rate limit of the token it found.
        if state.ingest_limit.enabled() {
            events = events.route_layer(from_fn_with_state(state.clone(), rate::ingest));
        }
        r = r.merge(events.route_layer(from_fn_with_state(state.clone(), access::ingest)));
    }
    if state.hub.is_some() {
        r = r.route("/v1/ws", get(crate::hub::ws::handler));
    }
    if state.store.is_some() {
        r = r.merge(
            Router::new()
                .route(
                    "/v1/rollups/hourly",
                    get(rollups::hourly).options(access::preflight),
                )
                .route(
                    "/v1/rollups/daily",
                    get(rollups::daily).options(access::preflight),
                )
                .route("/v1/status", get(status::status).options(access::preflight))
                .route("/v1/alerts", get(alerts::list).options(access::preflight))
                .route(
                    "/v1/events/search",
                    get(events::search).options(access::preflight),
                )
                .route_layer(from_fn_with_state(state.clone(), access::read)),
        );
    }
    error::with_json_errors(
        r.fallback(|| async { ApiError::NotFound("no such endpoint; see docs/api.md".into()) })
            .with_state(state),
    )
}
