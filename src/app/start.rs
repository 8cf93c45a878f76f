//! The start of `serve`: what it needs from Redis and MySQL, which errors
//! it waits out (unreachable servers) and which stop it (the
//! configuration), and what `/health/ready` says while it waits.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{check_replicas, redis_and_keys, AppError, Role, Roles};
use crate::api::health::Startup;
use crate::config::{HealthConfig, Settings};
use crate::event::SchemaRegistry;
use crate::processor::core::Backoff;
use crate::store::{Store, StoreError};
use crate::stream::{Keys, Redis, StreamError};

impl AppError {
    /// Redis or MySQL could not be reached (refused, unreachable, no
    /// answer), as opposed to refusing what the configuration says (a bad
    /// URL, credentials, TLS, a missing database): `serve` waits for the
    /// former and stops on the latter.
    pub(super) fn unreachable(&self) -> bool {
        match self {
            AppError::Stream(e) => e.retryable(),
            AppError::Store(e) => e.retryable() && e.is_connection(),
            _ => false,
        }
    }

    /// What `/health/ready` says while `serve` waits for Redis or MySQL:
    /// the reason without the URL (the endpoint asks for no token).
    pub(super) fn waiting_checks(&self) -> Vec<crate::api::health::Check> {
        use crate::api::health::Check;
        let waiting = |name: &str, reason: String| {
            Check::new(
                name,
                false,
                format!("{reason}; serve retries, and starts the roles once it answers"),
            )
        };
        match self {
            AppError::Stream(StreamError::Connect { reason, .. }) => {
                vec![waiting(
                    "redis",
                    format!("cannot connect (redis.url): {reason}"),
                )]
            }
            AppError::Stream(e) => vec![waiting("redis", e.to_string())],
            AppError::Store(e) => {
                let reason = match e {
                    StoreError::Connect { reason, .. } => {
                        format!("cannot connect (mysql.url): {reason}")
                    }
                    other => other.to_string(),
                };
                vec![
                    Check::new("redis", true, "connected"),
                    waiting("mysql", reason),
                ]
            }
            other => vec![waiting("start", other.to_string())],
        }
    }
}

/// What `serve` does between two attempts to reach Redis and MySQL: says
/// what it waits for (in `/health/ready`, and in the log once per change,
/// not once per attempt) and waits, from 100 ms, doubling up to
/// `health.startup_retry_max_ms`.
pub(super) struct Waiter {
    startup: Arc<Startup>,
    retry: Backoff,
    /// What it last logged waiting for.
    logged: Option<String>,
}

impl Waiter {
    pub fn new(cfg: &HealthConfig) -> Self {
        Self {
            startup: Startup::new(),
            retry: Backoff::new(
                Duration::from_millis(100),
                Duration::from_millis(cfg.startup_retry_max_ms),
            ),
            logged: None,
        }
    }

    /// The router that answers while it waits, then hands over to the
    /// roles' router ([`Waiter::started`]).
    pub fn router(&self) -> axum::Router {
        self.startup.clone().router()
    }

    /// The roles run: every request goes to `app`.
    pub fn started(&self, app: axum::Router) {
        self.startup.started(app);
    }

    /// Whether it ever waited.
    pub fn waited(&self) -> bool {
        self.logged.is_some()
    }

    /// After `e` (an unreachable server): the next pause, or false when
    /// `shutdown` comes first.
    pub async fn wait(&mut self, e: &AppError, shutdown: &CancellationToken) -> bool {
        let checks = e.waiting_checks();
        let now = checks
            .iter()
            .map(|c| format!("{}: {}", c.name, c.reason))
            .collect::<Vec<_>>()
            .join("; ");
        if self.logged.as_deref() != Some(now.as_str()) {
            tracing::warn!(error = %e, "waiting for Redis and MySQL before starting the roles; retrying (GET /health/ready answers 503 meanwhile)");
            self.logged = Some(now);
        }
        self.startup.waiting_for(checks);
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(self.retry.next_pause()) => true,
        }
    }
}

/// What the start of `serve` gets from Redis and MySQL.
pub(super) struct Connected {
    pub redis: Redis,
    pub keys: Keys,
    /// The pool of the processors and alerts (roles rollup, hub with alert
    /// rules: `needs_store`).
    pub store: Option<Store>,
}

/// The part of the start that needs Redis and MySQL, which `serve` retries
/// while they cannot be reached (with [`http_state`], which opens the query
/// API's pool): the connections, the stored shard layout, the replicas
/// `ingest.wait_replicas` asks for. Nothing runs yet.
pub(super) async fn connect(
    settings: &Settings,
    roles: &Roles,
    needs_store: bool,
    schemas: &SchemaRegistry,
) -> Result<Connected, AppError> {
    let (redis, keys) = redis_and_keys(settings).await?;
    if roles.has(Role::Ingest) && settings.ingest.wait_replicas > 0 {
        check_replicas(&redis, settings.ingest.wait_replicas).await?;
    }
    let layout = keys.layout();
    if layout.is_stored() && layout.current().shards != settings.redis.shards {
        tracing::info!(
            configured = settings.redis.shards,
            layout = %crate::stream::layout::describe(&layout),
            "redis.shards differs from the stored shard layout (flowmeter shards); the stored layout is used"
        );
    }
    if layout.is_stored() {
        // the layout lists every kind any process writes, so a change seals
        // and retires the streams of kinds its own host does not know
        let kinds: Vec<String> = schemas.kinds().iter().map(|k| k.name.clone()).collect();
        crate::shards::add_kinds(&redis, &keys, &kinds).await?;
    }
    let store = match needs_store {
        true => Some(Store::from_config(&settings.mysql, settings.mysql.max_connections).await?),
        false => None,
    };
    Ok(Connected { redis, keys, store })
}

/// The listener `serve` was given, else `server.listen` (or
/// `server.worker_listen`, see [`Roles::listen_addr`]) bound now.
pub(super) async fn bind(
    listener: Option<TcpListener>,
    settings: &Settings,
    roles: &Roles,
) -> Result<TcpListener, AppError> {
    if let Some(l) = listener {
        return Ok(l);
    }
    let addr = roles.listen_addr(&settings.server);
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Listen {
            addr: addr.to_string(),
            source,
        })
}

pub(super) fn log_listening(listener: &TcpListener, roles: &Roles, tls: bool) {
    if let Ok(addr) = listener.local_addr() {
        let scheme = if tls { "https" } else { "http" };
        let serves = if roles.serves_data() {
            "the API"
        } else {
            "the health endpoints and /metrics only (server.worker_listen)"
        };
        tracing::info!(%addr, scheme, roles = ?roles.0, serves, "listening");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unreachable_servers_are_waited_for() {
        let redis_down = AppError::Stream(StreamError::Connect {
            url: "redis://:***@r:6379".into(),
            reason: "Connection refused (os error 111)".into(),
        });
        assert!(redis_down.unreachable());
        let checks = redis_down.waiting_checks();
        assert_eq!(checks.len(), 1);
        assert_eq!((checks[0].name.as_str(), checks[0].ok), ("redis", false));
        assert!(checks[0].reason.contains("Connection refused"));
        assert!(!checks[0].reason.contains("r:6379"), "no URL: {checks:?}");

        let mysql_down = AppError::Store(StoreError::Connect {
            url: "mysql://root@db:3306/fm".into(),
            reason: "pool timed out".into(),
        });
        assert!(mysql_down.unreachable());
        let names: Vec<(String, bool)> = mysql_down
            .waiting_checks()
            .into_iter()
            .map(|c| (c.name, c.ok))
            .collect();
        assert_eq!(
            names,
            [("redis".to_string(), true), ("mysql".to_string(), false)]
        );

        // what the configuration says wrong stops the start
        for fatal in [
            AppError::Stream(StreamError::Auth {
                url: "redis://:***@r:6379".into(),
                reason: "Password authentication failed".into(),
            }),
            AppError::Stream(StreamError::TlsConfig("no CA file".into())),
            AppError::Stream(StreamError::Config {
                url: "rediss://r1:6379".into(),
                reason: "TLS (rediss://) is not supported with redis.cluster yet".into(),
            }),
            AppError::Store(StoreError::NoDatabase("fm".into())),
            AppError::Store(StoreError::BadUrl("no database".into())),
            AppError::Store(StoreError::Tls("handshake".into())),
            AppError::TooFewReplicas {
                wanted: 1,
                connected: 0,
            },
        ] {
            assert!(!fatal.unreachable(), "{fatal}");
        }
    }
}
