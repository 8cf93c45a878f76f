//! `GET /health/live`, its alias `GET /healthz`, and `GET /health/ready`
//! (docs/operations.md, "Health and readiness").
//!
//! - live: 200 `ok` while the process answers HTTP, whatever Redis or MySQL
//!   do (a liveness probe restarts a process; a dependency's outage is no
//!   reason to).
//! - ready: 200 when every required check of this process's roles passes
//!   (`ready`, or `degraded` when a check that is not required fails),
//!   else 503 (`not ready`, also with no check yet); the JSON names each
//!   check, whether it is required, and a reason. MySQL and processor
//!   checks are not required in a process that ingests (ingest needs only
//!   Redis), nor the alerts' MySQL in a hub. The checks, each bounded by
//!   `health.check_timeout_ms` and run together:
//!   - `redis`: a `PING` answered (every role);
//!   - `mysql`: a `SELECT 1` on the pool of the processors and alerts
//!     (roles rollup, and hub with alert rules); `mysql_query`: the same on
//!     the query API's own pool (role api);
//!   - `processor:NAME`: this process's worker of each enabled processor
//!     has not been stalled (failing every flush) for longer than
//!     `health.max_stall_ms`, and its task has not ended (role rollup);
//!   - `hub_feed`: the hub's reader reached the end of every stream it
//!     tails within `health.hub_feed_max_age_ms` (role hub).
//!
//! Neither asks for a token (probes carry none) and neither says more than
//! whether a dependency answers: no data, no URL, no password, no error
//! text (a stalled processor's error is in `/v1/status`, behind a token).
//!
//! While `serve` waits for Redis or MySQL at start, [`Startup`] answers in
//! place of the router: live 200, ready 503 with what it waits for, every
//! other path 503; once the roles run it hands every request to them.

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::Serialize;
use tower::ServiceExt;

use super::{ApiError, AppState};
use crate::config::HealthConfig;
use crate::hub::Hub;
use crate::processor::RunnerStats;
use crate::store::Store;
use crate::stream::{Keys, Redis};

/// One readiness check's outcome.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Check {
    /// `redis`, `mysql`, `mysql_query`, `processor:NAME`, `hub_feed`.
    pub name: String,
    pub ok: bool,
    /// Whether a failure makes the process not ready (503); a failing check
    /// that is not required only makes it `degraded` (still 200).
    pub required: bool,
    /// Why it passed or failed, for a person.
    pub reason: String,
}

impl Check {
    pub(crate) fn new(name: impl Into<String>, ok: bool, reason: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ok,
            required: true,
            reason: reason.into(),
        }
    }

    /// This check with `required` set.
    fn required(mut self, required: bool) -> Self {
        self.required = required;
        self
    }
}

/// The answer of `GET /health/ready`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `ready` (every check passes), `degraded` (only checks that are not
    /// required fail: still 200) or `not ready`.
    pub status: &'static str,
    pub checks: Vec<Check>,
}

impl Report {
    fn of(checks: Vec<Check>) -> Self {
        let status = match (all_required_pass(&checks), checks.iter().all(|c| c.ok)) {
            (false, _) => "not ready",
            (true, false) => "degraded",
            (true, true) => "ready",
        };
        Self { status, checks }
    }

    /// Every required check passes (and there is one: no checks at all
    /// means nothing has been checked yet, not ready).
    pub fn ready(&self) -> bool {
        all_required_pass(&self.checks)
    }
}

fn all_required_pass(checks: &[Check]) -> bool {
    !checks.is_empty() && checks.iter().all(|c| c.ok || !c.required)
}

impl IntoResponse for Report {
    fn into_response(self) -> Response {
        let code = match self.ready() {
            true => StatusCode::OK,
            false => StatusCode::SERVICE_UNAVAILABLE,
        };
        (code, Json(self)).into_response()
    }
}

/// The workers of this process: which processors it runs, under which
/// worker id their figures are published.
#[derive(Clone)]
struct Workers {
    keys: Keys,
    names: Vec<String>,
    worker_id: String,
    exits: ProcessorExits,
    required: bool,
}

/// The processors of this process whose task ended while it was not
/// shutting down (`serve` records them): their check fails from then on,
/// whatever the figures in Redis say (other workers keep that hash alive).
#[derive(Clone, Default)]
pub struct ProcessorExits(Arc<Mutex<std::collections::HashMap<String, String>>>);

impl ProcessorExits {
    /// The task of processor `name` ended now.
    pub fn record(&self, name: &str) {
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), at);
    }

    /// When the task of processor `name` ended, if it did.
    fn ended_at(&self, name: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }
}

#[derive(Clone)]
struct Checks {
    cfg: HealthConfig,
    redis: Redis,
    /// Each pool's check name, pool, and whether it is required.
    mysql: Vec<(&'static str, Store, bool)>,
    workers: Option<Workers>,
    hub: Option<Arc<Hub>>,
}

/// What `/health/ready` checks for the roles of this process (see the
/// module doc); built by `app::http_state` and completed by `serve`.
#[derive(Clone)]
pub struct Readiness(Arc<Checks>);

impl Readiness {
    /// Checks Redis alone.
    pub fn new(cfg: &HealthConfig, redis: Redis) -> Self {
        Self(Arc::new(Checks {
            cfg: cfg.clone(),
            redis,
            mysql: Vec::new(),
            workers: None,
            hub: None,
        }))
    }

    /// Also checks the MySQL pool `store`, reported as check `name`;
    /// `required`: whether its failure makes the process not ready (else
    /// only `degraded`).
    pub fn with_mysql(mut self, name: &'static str, store: Store, required: bool) -> Self {
        Arc::make_mut(&mut self.0)
            .mysql
            .push((name, store, required));
        self
    }

    /// Also checks that none of this process's workers (`worker_id`) of the
    /// processors `names` is stalled or has ended (`exits`); `required` as
    /// for [`Readiness::with_mysql`].
    pub fn with_processors(
        mut self,
        keys: Keys,
        names: Vec<String>,
        worker_id: String,
        exits: ProcessorExits,
        required: bool,
    ) -> Self {
        Arc::make_mut(&mut self.0).workers = Some(Workers {
            keys,
            names,
            worker_id,
            exits,
            required,
        });
        self
    }

    /// Also checks that `hub`'s feed is current.
    pub fn with_hub(mut self, hub: Arc<Hub>) -> Self {
        Arc::make_mut(&mut self.0).hub = Some(hub);
        self
    }

    /// Runs every check (together, each within `health.check_timeout_ms`).
    pub async fn report(&self) -> Report {
        let c = &*self.0;
        let limit = Duration::from_millis(c.cfg.check_timeout_ms);
        let redis = within(limit, "redis", redis_check(&c.redis));
        let mysql =
            futures::future::join_all(c.mysql.iter().map(|(name, store, required)| async move {
                within(limit, name, mysql_check(name, store))
                    .await
                    .required(*required)
            }));
        let workers = async {
            let Some(w) = &c.workers else {
                return Vec::new();
            };
            tokio::time::timeout(limit, worker_checks(&c.redis, w, &c.cfg))
                .await
                .unwrap_or_else(|_| {
                    vec![Check::new("processors", false, late(limit)).required(w.required)]
                })
        };
        let (redis, mysql, workers) = tokio::join!(redis, mysql, workers);
        let mut checks = vec![redis];
        checks.extend(mysql);
        checks.extend(workers);
        if let Some(hub) = &c.hub {
            checks.push(hub_check(hub, &c.cfg));
        }
        Report::of(checks)
    }
}

/// `check`, or a failed check `name` when it takes longer than `limit`.
async fn within(limit: Duration, name: &str, check: impl Future<Output = Check>) -> Check {
    tokio::time::timeout(limit, check)
        .await
        .unwrap_or_else(|_| Check::new(name, false, late(limit)))
}

fn late(limit: Duration) -> String {
    format!(
        "no answer within {} ms (health.check_timeout_ms)",
        limit.as_millis()
    )
}

async fn redis_check(redis: &Redis) -> Check {
    let mut conn = redis.conn.clone();
    let started = std::time::Instant::now();
    match redis
        .run(redis::cmd("PING").query_async::<String>(&mut conn))
        .await
    {
        Ok(_) => Check::new(
            "redis",
            true,
            format!("PING answered in {:.1} ms", ms(started.elapsed())),
        ),
        Err(e) => Check::new("redis", false, format!("PING failed: {e}")),
    }
}

async fn mysql_check(name: &str, store: &Store) -> Check {
    let started = std::time::Instant::now();
    match sqlx::query("SELECT 1").execute(store.pool()).await {
        Ok(_) => Check::new(
            name,
            true,
            format!("SELECT 1 answered in {:.1} ms", ms(started.elapsed())),
        ),
        Err(e) => Check::new(name, false, format!("SELECT 1 failed: {e}")),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One check per processor: this process's worker of it, from the figures
/// it publishes (`RunnerStats`, one pipelined read).
async fn worker_checks(redis: &Redis, w: &Workers, cfg: &HealthConfig) -> Vec<Check> {
    let mut pipe = redis::pipe();
    for name in &w.names {
        pipe.cmd("HGET").arg(w.keys.stats(name)).arg(&w.worker_id);
    }
    let mut conn = redis.conn.clone();
    let raw: Vec<Option<String>> = match redis.run(pipe.query_async(&mut conn)).await {
        Ok(r) => r,
        Err(e) => {
            return vec![Check::new(
                "processors",
                false,
                format!("cannot read this process's worker figures: {e}"),
            )
            .required(w.required)]
        }
    };
    let now = chrono::Utc::now();
    w.names
        .iter()
        .zip(raw)
        .map(|(name, json)| {
            let stats = json.and_then(|j| serde_json::from_str::<RunnerStats>(&j).ok());
            worker_check(name, w.exits.ended_at(name), stats.as_ref(), now, cfg)
                .required(w.required)
        })
        .collect()
}

/// The check of this process's worker of processor `name`: failed once its
/// task has ended (`ended_at`), else as [`stall`] says.
fn worker_check(
    name: &str,
    ended_at: Option<String>,
    stats: Option<&RunnerStats>,
    now: chrono::DateTime<chrono::Utc>,
    cfg: &HealthConfig,
) -> Check {
    let name = format!("processor:{name}");
    if let Some(at) = ended_at {
        return Check::new(
            name,
            false,
            format!("its task stopped with an error at {at} and does not run any more: the log says why (\"processor stopped with an error\"); restart the process"),
        );
    }
    let (ok, reason) = stall(stats, now, cfg.max_stall_ms);
    Check::new(name, ok, reason)
}

/// Whether a worker with figures `stats` passes at `now`, and why.
fn stall(
    stats: Option<&RunnerStats>,
    now: chrono::DateTime<chrono::Utc>,
    max_stall_ms: u64,
) -> (bool, String) {
    let Some(s) = stats else {
        return (true, "no figures published yet (the worker publishes them after its first flush or shard change)".into());
    };
    let Some(since) = &s.stalled_since else {
        return (
            true,
            match &s.last_flush_at {
                Some(at) => format!("last flush {at}, {} shard(s)", s.shards.len()),
                None => format!("not stalled, {} shard(s)", s.shards.len()),
            },
        );
    };
    let stalled_ms = chrono::DateTime::parse_from_rfc3339(since)
        .map(|t| {
            (now - t.with_timezone(&chrono::Utc))
                .num_milliseconds()
                .max(0) as u64
        })
        .unwrap_or(u64::MAX);
    // the error itself may quote stored values: it is shown only with a
    // token (GET /v1/status, flowmeter status)
    let what = format!(
        "stalled for {:.1} s, since {since} ({} failed attempts; the error: GET /v1/status or flowmeter status)",
        stalled_ms as f64 / 1000.0,
        s.consecutive_failures,
    );
    if stalled_ms > max_stall_ms {
        (
            false,
            format!("{what}; longer than health.max_stall_ms = {max_stall_ms}"),
        )
    } else {
        (
            true,
            format!("{what}; within health.max_stall_ms = {max_stall_ms}"),
        )
    }
}

fn hub_check(hub: &Hub, cfg: &HealthConfig) -> Check {
    let max = cfg.hub_feed_max_age_ms;
    match hub.feed_age() {
        Some(age) if age.as_millis() <= u128::from(max) => Check::new(
            "hub_feed",
            true,
            format!("read to the end of its streams {:.1} s ago", age.as_secs_f64()),
        ),
        Some(age) => Check::new(
            "hub_feed",
            false,
            format!(
                "has not read to the end of its streams for {:.1} s (health.hub_feed_max_age_ms = {max}): Redis slow or unreachable, or a backlog it does not catch up with",
                age.as_secs_f64()
            ),
        ),
        None => Check::new(
            "hub_feed",
            false,
            "has not read to the end of its streams yet (rebuilding its windows from them, or Redis unreachable)",
        ),
    }
}

/// `GET /health/live` and `GET /healthz`.
pub(super) async fn live() -> &'static str {
    "ok\n"
}

/// `GET /health/ready`.
pub(super) async fn ready(State(st): State<AppState>) -> Report {
    st.health.report().await
}

/// What `serve` answers while it waits for Redis or MySQL at start, then
/// the roles' router once they run.
pub struct Startup {
    waiting: Mutex<Vec<Check>>,
    app: OnceLock<Router>,
    /// Whether the first attempt to reach Redis and MySQL has ended (in a
    /// wait or with the roles running): until then a request other than
    /// the health endpoints waits for it, as it did in the listen backlog.
    settled: tokio::sync::watch::Sender<bool>,
}

impl Startup {
    /// Not ready until the first attempt to reach Redis and MySQL says
    /// what it waits for ([`Startup::waiting_for`]) or the roles run.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            waiting: Mutex::new(vec![Check::new(
                "start",
                false,
                "connecting to Redis and MySQL (the roles start once they answer)",
            )]),
            app: OnceLock::new(),
            settled: tokio::sync::watch::Sender::new(false),
        })
    }

    /// What readiness reports while waiting.
    pub fn waiting_for(&self, checks: Vec<Check>) {
        *self.waiting.lock().unwrap_or_else(|p| p.into_inner()) = checks;
        self.settled.send_replace(true);
    }

    /// From now on every request goes to `app` (once; later calls are ignored).
    pub fn started(&self, app: Router) {
        let _ = self.app.set(app);
        self.settled.send_replace(true);
    }

    /// The router to serve from the start: answers as the module doc says
    /// until [`Startup::started`], then hands each request to the roles.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new().fallback(move |req: Request| {
            let me = self.clone();
            async move { me.answer(req).await }
        })
    }

    async fn answer(&self, req: Request) -> Response {
        let health = matches!(
            req.uri().path(),
            "/health/live" | "/healthz" | "/health/ready"
        );
        if !health {
            // the sender lives as long as `self`: this ends when it settles
            let _ = self.settled.subscribe().wait_for(|s| *s).await;
        }
        if let Some(app) = self.app.get() {
            return match app.clone().oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
        }
        match req.uri().path() {
            "/health/live" | "/healthz" => live().await.into_response(),
            "/health/ready" => {
                let checks = self
                    .waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                Report::of(checks).into_response()
            }
            _ => ApiError::Unavailable {
                reason: "flowmeter is starting: it waits for Redis or MySQL (GET /health/ready says which)".into(),
                retry_after: 1,
            }
            .into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(stalled_secs_ago: Option<i64>) -> RunnerStats {
        RunnerStats {
            stalled_since: stalled_secs_ago.map(|s| {
                (chrono::Utc::now() - chrono::Duration::seconds(s))
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            }),
            consecutive_failures: 3,
            last_error: Some("mysql: table gone".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_worker_fails_readiness_once_stalled_past_the_bound() {
        let now = chrono::Utc::now();
        assert!(stall(None, now, 0).0, "nothing published yet");
        assert!(stall(Some(&stats(None)), now, 0).0);
        let (ok, reason) = stall(Some(&stats(Some(5))), now, 30_000);
        assert!(ok, "{reason}");
        let (ok, reason) = stall(Some(&stats(Some(60))), now, 30_000);
        assert!(!ok);
        assert!(
            reason.contains("stalled for 60.") && reason.contains("health.max_stall_ms"),
            "{reason}"
        );
        // the error may quote stored values: only behind a token
        assert!(!reason.contains("table gone"), "{reason}");
        let (ok, _) = stall(
            Some(&stats(Some(0))),
            now + chrono::Duration::milliseconds(5),
            0,
        );
        assert!(!ok, "0: from the first failure");
    }

    #[test]
    fn a_worker_whose_task_ended_fails_whatever_its_figures_say() {
        let cfg = HealthConfig::default();
        let now = chrono::Utc::now();
        let c = worker_check("r", None, Some(&stats(None)), now, &cfg);
        assert!(c.ok, "{c:?}");
        let c = worker_check("r", Some("2026-12-02T10:00:00Z".into()), None, now, &cfg);
        assert!(!c.ok && c.required, "{c:?}");
        assert_eq!(c.name, "processor:r");
        assert!(c
            .reason
            .contains("stopped with an error at 2026-12-02T10:00:00Z"));
        let exits = ProcessorExits::default();
        assert_eq!(exits.ended_at("r"), None);
        exits.record("r");
        assert!(exits.ended_at("r").is_some() && exits.ended_at("s").is_none());
    }

    #[test]
    fn only_required_checks_decide_and_no_checks_is_not_ready() {
        let r = Report::of(vec![]);
        assert!(!r.ready());
        assert_eq!(r.status, "not ready");
        let up = Check::new("redis", true, "PING");
        let down = |required| Check::new("mysql_query", false, "refused").required(required);
        let r = Report::of(vec![up.clone(), down(false)]);
        assert!(r.ready());
        assert_eq!(r.status, "degraded");
        assert_eq!(r.into_response().status(), StatusCode::OK);
        let r = Report::of(vec![up.clone(), down(true)]);
        assert_eq!((r.ready(), r.status), (false, "not ready"));
        assert_eq!(r.into_response().status(), StatusCode::SERVICE_UNAVAILABLE);
        let r = Report::of(vec![up]);
        assert_eq!((r.ready(), r.status), (true, "ready"));
        let json = serde_json::to_value(Report::of(vec![down(false)])).expect("json");
        assert_eq!(json["checks"][0]["required"], false, "{json}");
    }

    #[tokio::test]
    async fn startup_answers_live_and_not_ready_then_hands_over() {
        let s = Startup::new();
        let app = s.clone().router();
        let call = |path: &'static str| {
            let app = app.clone();
            async move {
                let req = Request::builder()
                    .uri(path)
                    .body(axum::body::Body::empty())
                    .expect("request");
                let resp = app.oneshot(req).await.expect("infallible");
                let code = resp.status();
                let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
                    .await
                    .expect("body");
                (code, String::from_utf8_lossy(&body).into_owned())
            }
        };
        let (code, body) = call("/health/ready").await;
        assert_eq!(
            code,
            StatusCode::SERVICE_UNAVAILABLE,
            "before the first attempt"
        );
        assert!(body.contains("connecting to Redis and MySQL"), "{body}");
        // other paths wait for the first attempt to end
        let early = tokio::spawn(call("/v1/events"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !early.is_finished(),
            "answered before the first attempt ended"
        );
        s.waiting_for(vec![]);
        let (code, body) = early.await.expect("early request");
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("starting"), "{body}");
        assert_eq!(
            call("/health/ready").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        s.waiting_for(vec![Check::new("redis", false, "cannot connect")]);
        assert_eq!(call("/healthz").await, (StatusCode::OK, "ok\n".into()));
        assert_eq!(call("/health/live").await.0, StatusCode::OK);
        let (code, body) = call("/health/ready").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body.contains("cannot connect") && body.contains("not ready"),
            "{body}"
        );
        let (code, body) = call("/v1/events").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("starting"), "{body}");
        s.started(Router::new().fallback(|| async { (StatusCode::IM_A_TEAPOT, "roles") }));
        assert_eq!(
            call("/health/ready").await,
            (StatusCode::IM_A_TEAPOT, "roles".into())
        );
    }
}
