//! Wiring: builds every component from the [`Settings`] and runs the roles.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, AppState, QueryCatalog};
use crate::config::Settings;
use crate::event::{EventError, SchemaRegistry};
use crate::processor::{new_worker_id, ProcessorContext, ProcessorError, ProcessorRegistry};
use crate::store::{Store, StoreError};
use crate::stream::{Keys, Producer, Redis, StreamError};

mod start;
use start::{bind, connect, log_listening, Connected, Waiter};

/// What can stop `serve` or `migrate`; each says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Schemas(#[from] EventError),
    #[error(transparent)]
    Processor(#[from] ProcessorError),
    #[error("MySQL: {0}{hint}", hint = .0.hint())]
    Store(#[from] StoreError),
    #[error("Redis: {0} (is Redis running and redis.url right? `scripts/services start` starts a local one)")]
    Stream(#[from] StreamError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Exposed(#[from] crate::auth::ExposedError),
    #[error("shard layout: {0}")]
    Shards(#[from] crate::shards::ShardsError),
    #[error(transparent)]
    Server(#[from] crate::api::server::ServerError),
    #[error(transparent)]
    Metrics(#[from] crate::telemetry::exposition::ExpositionError),
    /// `ingest.wait_replicas` asks more of a single Redis than it has.
    #[error("ingest.wait_replicas = {wanted}, but this Redis has {connected} connected replica(s) (INFO replication): every request would wait ingest.wait_replicas_timeout_ms and be answered 503; attach replicas (replicaof) or lower ingest.wait_replicas (0 = off)")]
    TooFewReplicas { wanted: u32, connected: u32 },
    /// A `[[notifier]]` cannot be built (an unset variable, no TLS roots).
    #[error("alert notifiers (processors/*.toml, [[notifier]]): {0}")]
    Notifier(String),
    #[error("unknown role {0:?}; roles are ingest, api, rollup, hub")]
    UnknownRole(String),
    #[error("no processor named {0:?} in processors/; the names are: {1}")]
    UnknownProcessor(String, String),
    #[error("processor {0:?} is not a rollup: only rollups can be replayed (sinks re-deliver with `flowmeter groups reset`)")]
    NotRollup(String),
    #[error(transparent)]
    Replay(#[from] crate::processor::rollup::ReplayError),
    #[cfg(feature = "clickhouse")]
    #[error(transparent)]
    Archive(#[from] crate::processor::clickhouse_archive::client::ArchiveError),
}

/// A part of `flowmeter serve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// `POST /v1/events` into Redis.
    Ingest,
    /// Rollup queries and status.
    Api,
    /// The processors of `processors/` (consumer groups).
    Rollup,
    /// The realtime WebSocket hub (`GET /v1/ws`).
    Hub,
}

impl Role {
    /// Its name in `--roles` (and the `role` label of `flowmeter_build_info`).
    pub fn name(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Api => "api",
            Role::Rollup => "rollup",
            Role::Hub => "hub",
        }
    }
}

impl FromStr for Role {
    type Err = AppError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "ingest" => Ok(Role::Ingest),
            "api" => Ok(Role::Api),
            "rollup" => Ok(Role::Rollup),
            "hub" => Ok(Role::Hub),
            other => Err(AppError::UnknownRole(other.to_string())),
        }
    }
}

/// A set of roles, parsed from `ingest,api,rollup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles(pub BTreeSet<Role>);

impl Roles {
    pub fn all() -> Self {
        Roles(
            [Role::Ingest, Role::Api, Role::Rollup, Role::Hub]
                .into_iter()
                .collect(),
        )
    }
    pub fn has(&self, r: Role) -> bool {
        self.0.contains(&r)
    }

    /// Whether these roles answer clients (ingest, api or hub), on
    /// `server.listen`. Without them a process (a rollup worker) serves only
    /// `/healthz` and `/metrics`, on `server.worker_listen`.
    pub fn serves_data(&self) -> bool {
        self.has(Role::Ingest) || self.has(Role::Api) || self.has(Role::Hub)
    }

    /// The address these roles bind: `server.listen`, or
    /// `server.worker_listen` for a worker (see [`Roles::serves_data`]).
    pub fn listen_addr<'a>(&self, server: &'a crate::config::ServerConfig) -> &'a str {
        if self.serves_data() {
            &server.listen
        } else {
            &server.worker_listen
        }
    }
}

impl FromStr for Roles {
    type Err = AppError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(Role::from_str)
            .collect::<Result<_, _>>()
            .map(Roles)
    }
}

/// Redis and the keys of the config, with the stored shard layout if there
/// is one (for the CLI's stream commands).
pub async fn redis_and_keys(settings: &Settings) -> Result<(Redis, Keys), AppError> {
    let redis = crate::stream::connect(&settings.redis).await?;
    let keys = Keys::new(settings.redis.prefix.clone(), settings.redis.shards);
    crate::stream::layout::load_into(&redis, &keys).await?;
    Ok((redis, keys))
}

/// What `flowmeter status` reads the figures of `GET /v1/status` from,
/// straight from Redis and MySQL, connected once (`--watch` reads again
/// and again). Without MySQL the checkpoints are left out and a warning is
/// logged.
pub struct StatusReader {
    schemas: SchemaRegistry,
    processors: ProcessorRegistry,
    redis: Redis,
    keys: Keys,
    store: Option<Store>,
    retention: crate::config::RetentionConfig,
}

impl StatusReader {
    pub async fn connect(settings: &Settings) -> Result<Self, AppError> {
        let schemas = SchemaRegistry::load(&settings.paths.schemas)?;
        let processors = ProcessorRegistry::load(&settings.paths.processors, &schemas)?;
        let (redis, keys) = redis_and_keys(settings).await?;
        let store = match Store::from_config(&settings.mysql, 2).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "MySQL: checkpoints are not shown");
                None
            }
        };
        Ok(Self {
            schemas,
            processors,
            redis,
            keys,
            store,
            retention: settings.retention.clone(),
        })
    }

    /// The figures now.
    pub async fn read(&self) -> Result<crate::status::Status, AppError> {
        Ok(crate::status::gather(
            &self.redis,
            &self.keys,
            &self.schemas,
            &self.processors,
            self.store.as_ref(),
            &self.retention,
        )
        .await?)
    }
}

/// The figures of `GET /v1/status`, read once (see [`StatusReader`]).
pub async fn status(settings: &Settings) -> Result<crate::status::Status, AppError> {
    StatusReader::connect(settings).await?.read().await
}

/// `flowmeter replay`: rebuilds processor `name`'s rows for the range while
/// live processing continues (see `processor::rollup::replay`).
pub async fn replay(
    settings: &Settings,
    name: &str,
    opts: &crate::processor::rollup::ReplayOptions,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<crate::processor::rollup::ReplayReport, AppError> {
    let schemas = Arc::new(SchemaRegistry::load(&settings.paths.schemas)?);
    let processors = ProcessorRegistry::load(&settings.paths.processors, &schemas)?;
    let def = match processors.get(name) {
        Some(p) => match p.get::<crate::processor::rollup::RollupDef>() {
            Some(d) => d.clone(),
            None => return Err(AppError::NotRollup(name.into())),
        },
        None => {
            let names: Vec<&str> = processors.processors.iter().map(|p| p.name()).collect();
            return Err(AppError::UnknownProcessor(name.into(), names.join(", ")));
        }
    };
    let (redis, keys) = redis_and_keys(settings).await?;
    let store = Store::from_config(&settings.mysql, 2).await?;
    let ctx = ProcessorContext {
        redis,
        keys,
        store,
        schemas,
        settings: settings.rollup.clone(),
        config: Arc::new(settings.clone()),
        worker_id: format!("replay-{}", new_worker_id()),
    };
    let processor = def.build(ctx).await?;
    Ok(processor.replay(opts, progress).await?)
}

/// Opens the database named in the config (creating it: the only command
/// that does) and applies migrations.
///
/// With the ClickHouse archive enabled in `processors/`, also applies
/// `paths.clickhouse_migrations` to `[clickhouse]` and returns the files applied.
pub async fn migrate(settings: &Settings) -> Result<Vec<String>, AppError> {
    let store = Store::create_from_config(&settings.mysql, settings.mysql.max_connections).await?;
    store.migrate(&settings.paths.migrations).await?;
    let schemas = SchemaRegistry::load(&settings.paths.schemas)?;
    let processors = ProcessorRegistry::load(&settings.paths.processors, &schemas)?;
    let archive = processors.enabled().any(|p| {
        p.get::<crate::processor::clickhouse_archive::ArchiveDef>()
            .is_some()
    });
    if !archive {
        return Ok(Vec::new());
    }
    #[cfg(feature = "clickhouse")]
    {
        Ok(crate::processor::clickhouse_archive::client::migrate(
            &settings.clickhouse,
            &settings.paths.clickhouse_migrations,
        )
        .await?)
    }
    #[cfg(not(feature = "clickhouse"))]
    {
        Err(AppError::Processor(ProcessorError::Definition {
            file: "processors/".into(),
            reason: "the ClickHouse archive is enabled but this flowmeter was built without the `clickhouse` feature".into(),
        }))
    }
}

/// The addresses `serve` would listen on: the given listener's, else what
/// `server.listen` resolves to.
async fn listen_addrs(
    settings: &Settings,
    listener: Option<&TcpListener>,
) -> Result<Vec<std::net::SocketAddr>, AppError> {
    let listen_err = |source| AppError::Listen {
        addr: settings.server.listen.clone(),
        source,
    };
    match listener {
        Some(l) => Ok(vec![l.local_addr().map_err(listen_err)?]),
        None => Ok(tokio::net::lookup_host(&settings.server.listen)
            .await
            .map_err(listen_err)?
            .collect()),
    }
}

/// Runs the given roles until `shutdown` is cancelled. `listener` lets tests
/// bind port 0; without it `server.listen` is bound.
///
/// Refuses to start, before touching anything, when a role that serves data
/// (ingest, api, hub) would be open to anyone on an address that is not
/// loopback (see [`crate::auth::check_exposure`]); any other error of the
/// configuration or the files stops it too. Redis or MySQL out of reach
/// does not: it serves `/health/live` (200) and `/health/ready` (503,
/// saying what it waits for) and retries, waiting up to
/// `health.startup_retry_max_ms`, until they answer, then runs the roles.
pub async fn serve(
    settings: Settings,
    roles: Roles,
    listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    if roles.serves_data() {
        let addrs = listen_addrs(&settings, listener.as_ref()).await?;
        crate::auth::check_exposure(&settings.auth, &addrs)?;
    }
    let http = crate::api::server::HttpServer::new(&settings.server)?;
    let schemas = Arc::new(SchemaRegistry::load(&settings.paths.schemas)?);
    let processors = Arc::new(ProcessorRegistry::load(
        &settings.paths.processors,
        &schemas,
    )?);
    // read (and checked) by every role, as the processors are
    let views = Arc::new(crate::view::Views::load(
        &settings.paths.processors,
        &schemas,
        &processors,
    )?);
    let alerts = crate::alert::AlertRules::load(&settings.paths.processors, &views)?;
    let alerting = roles.has(Role::Hub) && !alerts.rules.is_empty();
    // urls and secrets named by `url_env` / `secret_env` are read here, once
    let notifiers: Arc<[crate::alert::notify::Notifier]> = if alerting {
        crate::alert::notify::build(&alerts.notifiers, |var| std::env::var(var).ok())
            .map_err(AppError::Notifier)?
            .into()
    } else {
        Arc::from(Vec::new())
    };
    let hub = roles.has(Role::Hub).then(|| {
        if views.is_empty() {
            tracing::warn!(
                processors = %settings.paths.processors.display(),
                "no view files (type = \"view\") in the processors directory: the hub serves only the alerts channel; copy processors/http_view.toml and webrtc_view.toml there (docs/views.md)"
            );
        }
        crate::hub::Hub::new(settings.hub.clone(), views.clone())
    });
    let tracker = TaskTracker::new();
    // the HTTP server stops with `shutdown`, or when the start fails
    let http_stop = shutdown.child_token();
    let stop_on_error = http_stop.clone().drop_guard();
    let mut waiter = Waiter::new(&settings.health);
    // listen before the first attempt: probes get live 200 and ready 503
    // while it connects, then the roles' router once they run
    let l = bind(listener, &settings, &roles).await?;
    log_listening(&l, &roles, http.tls());
    tracker.spawn(http.run(l, waiter.router(), http_stop.clone()));
    let needs_store = roles.has(Role::Rollup) || alerting;
    let (Connected { redis, keys, store }, mut state) = loop {
        let attempt = async {
            let c = connect(&settings, &roles, needs_store, &schemas).await?;
            if let (true, Some(store)) = (alerting, &c.store) {
                store.require_alert_outbox().await?;
            }
            let shared = Shared {
                schemas: schemas.clone(),
                processors: processors.clone(),
                redis: c.redis.clone(),
                keys: c.keys.clone(),
            };
            let state =
                http_state(&settings, &roles, shared, hub.clone(), &tracker, &shutdown).await?;
            Ok::<_, AppError>((c, state))
        }
        .await;
        let e = match attempt {
            Ok(c) => break c,
            Err(e) if e.unreachable() => e,
            Err(e) => return Err(e),
        };
        if !waiter.wait(&e, &shutdown).await {
            tracker.close();
            tracker.wait().await;
            return Ok(());
        }
    };
    if waiter.waited() {
        tracing::info!("Redis and MySQL answer: starting the roles");
    }
    // workers, hubs and backpressure follow a change of the layout
    tracker.spawn(crate::stream::layout::follow(
        redis.clone(),
        keys.clone(),
        Duration::from_millis(settings.redis.layout_refresh_ms),
        shutdown.child_token(),
    ));
    if let Some(store) = &store {
        // required only for a rollup process that does not ingest: ingest
        // needs only Redis, and the hub's alerts wait for MySQL on their own
        // (docs/operations.md, "Health and readiness")
        let required = roles.has(Role::Rollup) && !roles.has(Role::Ingest);
        state.health = state
            .health
            .clone()
            .with_mysql("mysql", store.clone(), required);
    }

    if roles.has(Role::Rollup) {
        let store = store.clone().ok_or_else(|| {
            AppError::Store(StoreError::BadUrl(
                "no MySQL connection for the rollup role".into(),
            ))
        })?;
        let ctx = ProcessorContext {
            redis: redis.clone(),
            keys: keys.clone(),
            store,
            schemas: schemas.clone(),
            settings: settings.rollup.clone(),
            config: Arc::new(settings.clone()),
            worker_id: new_worker_id(),
        };
        tracker.spawn(crate::retention::run(
            redis.clone(),
            keys.clone(),
            schemas.clone(),
            settings.retention.clone(),
            i64::try_from(settings.ingest.idempotency_window_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX),
            ctx.worker_id.clone(),
            shutdown.child_token(),
        ));
        let mut names = Vec::new();
        let exits = crate::api::health::ProcessorExits::default();
        for def in processors.enabled() {
            let p = def.build(ctx.clone()).await?;
            let token = shutdown.child_token();
            let name = def.name().to_string();
            names.push(name.clone());
            let exits = exits.clone();
            tracker.spawn(async move {
                let ended = p.run(token.clone()).await;
                if let Err(e) = &ended {
                    tracing::error!(processor = %name, error = %e, "processor stopped with an error");
                }
                if ended.is_err() || !token.is_cancelled() {
                    // /health/ready fails its check from now on
                    exits.record(&name);
                }
            });
        }
        state.health = state.health.clone().with_processors(
            keys.clone(),
            names,
            ctx.worker_id.clone(),
            exits,
            !roles.has(Role::Ingest),
        );
    }

    // every hub instance with notifiers delivers (one sender per row)
    let mut deliverer = match (&store, notifiers.is_empty()) {
        (Some(store), false) => Some(
            crate::alert::notify::Deliverer::new(
                store.clone(),
                notifiers.to_vec(),
                settings.alert_delivery.clone(),
                new_worker_id(),
            )
            .map_err(AppError::Notifier)?,
        ),
        _ => None,
    };
    if let Some(hub) = &hub {
        tracker.spawn(hub.clone().run(
            redis.clone(),
            keys.clone(),
            schemas.clone(),
            shutdown.child_token(),
        ));
        if let (true, Some(store)) = (alerting, store.clone()) {
            if let Some(deliverer) = deliverer.take() {
                tracker.spawn(Arc::new(deliverer).run(shutdown.child_token()));
            }
            tracker.spawn(crate::alert::run(
                hub.clone(),
                alerts,
                notifiers.clone(),
                redis.clone(),
                keys.clone(),
                store,
                new_worker_id(),
                shutdown.child_token(),
            ));
        }
    }
    // Every role serves HTTP: the health endpoints and `/metrics` always
    // (probes and Prometheus reach rollup-only workers too), the ingest and
    // query endpoints only with their roles. Workers bind
    // `server.worker_listen` (a free port by default), so several run side
    // by side on one machine.
    waiter.started(api::router(state));
    stop_on_error.disarm();
    tracker.close();
    shutdown.cancelled().await;
    tracing::info!("shutting down: flushing and acknowledging");
    let grace = Duration::from_millis(settings.server.shutdown_timeout_ms);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("shutdown took longer than server.shutdown_timeout_ms; exiting anyway (unacked entries are redelivered)");
    }
    Ok(())
}

/// `ingest.wait_replicas` against the replicas connected now. A single
/// Redis with too few is refused: every request would wait the timeout and
/// get 503. On a cluster a master short of them is warned about: requests
/// to its slots get 503 until it has them again (a failover leaves the new
/// master without a replica until the old one returns), the others are
/// served.
async fn check_replicas(redis: &Redis, wanted: u32) -> Result<(), AppError> {
    let masters = crate::stream::replication::masters(redis).await?;
    if !redis.is_cluster() {
        let connected = masters.first().map_or(0, |m| m.replicas);
        if connected < wanted {
            return Err(AppError::TooFewReplicas { wanted, connected });
        }
        return Ok(());
    }
    for m in masters.iter().filter(|m| m.replicas < wanted) {
        tracing::warn!(
            node = %m.node,
            replicas = m.replicas,
            wanted,
            "a cluster master has fewer connected replicas than ingest.wait_replicas: requests writing to its slots are answered 503 until it has them"
        );
    }
    Ok(())
}

/// What every role shares: the event schemas, the processor definitions,
/// the Redis connection and its key names.
#[derive(Clone)]
pub struct Shared {
    pub schemas: Arc<SchemaRegistry>,
    pub processors: Arc<ProcessorRegistry>,
    pub redis: Redis,
    pub keys: Keys,
}

/// The HTTP handlers' state for `roles`: the query API's own MySQL pool
/// (`api`), the producer with its backpressure watch (`ingest`, a task on
/// `tracker` until `shutdown`), the hub when it runs. `serve` serves it;
/// router tests drive it with `tower::ServiceExt::oneshot`.
pub async fn http_state(
    settings: &Settings,
    roles: &Roles,
    shared: Shared,
    hub: Option<Arc<crate::hub::Hub>>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<AppState, AppError> {
    let Shared {
        schemas,
        processors,
        redis,
        keys,
    } = shared;
    let api_store = match roles.has(Role::Api) {
        true => Some(Store::from_config(&settings.mysql, settings.query.max_connections).await?),
        false => None,
    };
    let catalog = match &api_store {
        Some(s) => QueryCatalog::build(&processors, s).await?,
        None => QueryCatalog::default(),
    };
    // WAIT holds the connection it is sent on until the replicas confirm
    // (up to its timeout): with ingest.wait_replicas, ingest writes on a
    // connection of its own, so the other roles' commands do not queue
    // behind it
    let ingest_redis = match (roles.has(Role::Ingest), settings.ingest.wait_replicas) {
        (true, 1..) => crate::stream::connect(&settings.redis).await?,
        _ => redis.clone(),
    };
    let producer = roles.has(Role::Ingest).then(|| {
        // Backpressure decides on figures a background task refreshes.
        let streams = crate::retention::all_streams(&keys, &schemas);
        let backlog = crate::stream::pressure::Backlog::new(streams);
        let (watched, known) = (keys.clone(), schemas.clone());
        tracker.spawn(crate::stream::pressure::watch(
            redis.clone(),
            backlog.clone(),
            move || crate::retention::all_streams(&watched, &known),
            settings.ingest.max_backlog_entries,
            Duration::from_millis(settings.ingest.backlog_poll_ms),
            shutdown.child_token(),
        ));
        Producer::new(ingest_redis, keys.clone())
            .with_backpressure(backlog, settings.ingest.max_backlog_entries)
            .with_wait_replicas(
                settings.ingest.wait_replicas,
                Duration::from_millis(settings.ingest.wait_replicas_timeout_ms),
            )
    });
    let mut health = crate::api::health::Readiness::new(&settings.health, redis.clone());
    if let Some(s) = &api_store {
        // ingest needs only Redis: the query API's MySQL does not take an
        // ingesting process out of its Service
        health = health.with_mysql("mysql_query", s.clone(), !roles.has(Role::Ingest));
    }
    if let Some(h) = &hub {
        health = health.with_hub(h.clone());
    }
    let role_names: Vec<&str> = roles.0.iter().map(|r| r.name()).collect();
    let metrics = crate::api::MetricsEndpoint::new(
        &settings.metrics,
        &role_names,
        Some(crate::api::PipelineSource {
            redis: redis.clone(),
            keys: keys.clone(),
            schemas: schemas.clone(),
            processors: processors.clone(),
            retention: settings.retention.clone(),
        }),
        hub.clone(),
    )?;
    Ok(AppState {
        health,
        metrics: Arc::new(metrics),
        producer,
        // The query API's own pool: queries never take the connections
        // the processors flush with.
        store: api_store,
        queries: crate::api::QueryLimits::new(&settings.query),
        catalog: Arc::new(catalog),
        ingest: settings.ingest.clone(),
        ingest_bodies: crate::api::BodyBudget::new(settings.ingest.max_inflight_body_bytes),
        retention: settings.retention.clone(),
        hub,
        events: if roles.has(Role::Api) {
            crate::api::EventSearch::from_registry(&processors, &settings.clickhouse)
        } else {
            None
        },
        auth: crate::auth::Auth::new(&settings.auth),
        ingest_limit: Arc::new(crate::api::RateLimiter::new(
            &settings.server.ingest_rate_limit,
        )),
        schemas,
        processors,
        redis,
        keys,
    })
}

/// Answers an archive search from the command line (`flowmeter query`): the
/// same as `GET /v1/events/search`, with `search.table` taken from `kind`.
#[cfg(feature = "clickhouse")]
pub async fn query_archive(
    settings: &Settings,
    kind: &str,
    mut search: crate::processor::clickhouse_archive::client::Search,
) -> Result<crate::processor::clickhouse_archive::client::Found, AppError> {
    use crate::processor::clickhouse_archive::client::ArchiveError;
    let schemas = SchemaRegistry::load(&settings.paths.schemas)?;
    let processors = ProcessorRegistry::load(&settings.paths.processors, &schemas)?;
    let es = crate::api::EventSearch::from_registry(&processors, &settings.clickhouse).ok_or(
        ArchiveError::BadSearch {
            param: "archive".into(),
            reason: "the ClickHouse archive is not enabled: set enabled = true in processors/clickhouse_archive.toml (docs/archive.md)".into(),
        },
    )?;
    search.table = es.table(kind).map_err(|reason| ArchiveError::BadSearch {
        param: "--kind".into(),
        reason,
    })?;
    Ok(es.archive.search(&search).await?)
}
