//! `/health/live`, `/healthz` and `/health/ready`, and the start of `serve`
//! while Redis or MySQL cannot be reached: live answers throughout, ready
//! says what is missing until it is back, configuration errors still stop
//! the start.

use crate::common;

use std::time::Duration;

use common::servers::PrivateRedis;
use common::*;
use flowmeter::config::HealthConfig;
use serde_json::Value;

/// Short bounds, so outages show within a second or two.
fn quick() -> HealthConfig {
    HealthConfig {
        check_timeout_ms: 500,
        hub_feed_max_age_ms: 3_000,
        max_stall_ms: 30_000,
        startup_retry_max_ms: 200,
    }
}

async fn ready(client: &reqwest::Client, server: &Server) -> (u16, Value) {
    let r = client
        .get(server.url("/health/ready"))
        .send()
        .await
        .expect("ready");
    let code = r.status().as_u16();
    (code, r.json().await.expect("JSON"))
}

/// The check `name` of a readiness answer.
fn check<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["checks"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name} in {body}"))
}

/// Waits until `/health/ready` answers 200.
async fn until_ready(client: &reqwest::Client, server: &Server) {
    wait_until(Duration::from_secs(20), || async {
        ready(client, server).await.0 == 200
    })
    .await;
}

/// The readiness answer once the first attempt to connect has said what
/// it waits for (before it, the only check is `start`: not ready).
async fn first_wait(client: &reqwest::Client, server: &Server) -> (u16, Value) {
    let started = std::time::Instant::now();
    loop {
        let answer = ready(client, server).await;
        if answer.1.to_string().contains("serve retries") {
            return answer;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{}", answer.1);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn live(client: &reqwest::Client, server: &Server) {
    for path in ["/health/live", "/healthz"] {
        let r = client.get(server.url(path)).send().await.expect("live");
        assert_eq!(r.status(), 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_waits_for_redis_and_readiness_follows_an_outage() {
    // a port nobody listens on, where Redis comes up later
    let mut redis = PrivateRedis::start("no");
    redis.kill9();
    let mut env = TestEnv::new("health_redis");
    env.settings.redis.url = redis.url();
    env.settings.redis.shards = 1;
    env.settings.redis.command_timeout_ms = 1_000;
    env.settings.health = quick();
    env.migrate().await;
    let server = env.start("ingest,api,rollup,hub").await;
    let client = http_client();
    live(&client, &server).await;
    let (code, body) = ready(&client, &server).await;
    assert_eq!(code, 503, "before the first attempt ends: {body}");
    let (code, body) = first_wait(&client, &server).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["status"], "not ready", "{body}");
    let redis_check = check(&body, "redis");
    assert_eq!(redis_check["ok"], false, "{body}");
    let reason = redis_check["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("cannot connect (redis.url)"), "{body}");
    assert!(
        !reason.contains("redis://"),
        "no URL to anonymous callers: {body}"
    );
    let events = (0..10)
        .map(|i| http_event(i, chrono::Utc::now().timestamp_millis()).to_string())
        .collect::<Vec<_>>()
        .join("\n");
    let (code, _) = post_ndjson(&client, &server.url("/v1/events"), events.clone()).await;
    assert_eq!(code, 503, "ingest before Redis");

    redis.restart();
    until_ready(&client, &server).await;
    let (_, body) = ready(&client, &server).await;
    assert_eq!(body["status"], "ready", "{body}");
    for name in [
        "redis",
        "mysql",
        "mysql_query",
        "processor:http_rollup",
        "hub_feed",
    ] {
        assert_eq!(check(&body, name)["ok"], true, "{name}: {body}");
    }
    let (code, reply) = post_ndjson(&client, &server.url("/v1/events"), events).await;
    assert_eq!(code, 202, "{reply}");
    // WebSocket upgrades pass through the router that answered the wait
    common::ws::hub_ticking(&server).await;

    // an outage: not ready (Redis, and the hub's feed once it is late),
    // alive throughout
    redis.kill9();
    wait_until(Duration::from_secs(10), || {
        let c = client.clone();
        let s = &server;
        async move {
            let (code, body) = ready(&c, s).await;
            code == 503 && check(&body, "redis")["ok"] == false
        }
    })
    .await;
    live(&client, &server).await;
    wait_until(Duration::from_secs(10), || {
        let c = client.clone();
        let s = &server;
        async move { check(&ready(&c, s).await.1, "hub_feed")["ok"] == false }
    })
    .await;
    redis.restart();
    until_ready(&client, &server).await;
    server.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_waits_for_mysql_but_stops_on_configuration_errors() {
    let mut env = TestEnv::new("health_mysql");
    env.settings.mysql.url = "mysql://root:s3cret@127.0.0.1:1/health_nowhere".into();
    env.settings.health = quick();
    // a rollup worker: its health endpoints on the worker's address
    let server = env.start("rollup").await;
    let client = http_client();
    live(&client, &server).await;
    let (code, body) = first_wait(&client, &server).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(check(&body, "redis")["ok"], true, "{body}");
    let mysql = check(&body, "mysql");
    assert_eq!(mysql["ok"], false, "{body}");
    assert!(
        mysql["reason"]
            .as_str()
            .is_some_and(|r| r.contains("cannot connect (mysql.url)")),
        "{body}"
    );
    assert!(!body.to_string().contains("s3cret"), "{body}");
    server.stop().await;

    // what retrying cannot fix stops the start at once, naming the fix
    let refuse = |url: &str| {
        let mut s = env.settings.clone();
        s.redis.url = url.into();
        async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let stop = tokio_util::sync::CancellationToken::new();
            let _guard = stop.clone().drop_guard();
            tokio::time::timeout(
                Duration::from_secs(10),
                flowmeter::app::serve(s, "ingest".parse().expect("roles"), Some(listener), stop),
            )
            .await
            .expect("refuses at once")
            .expect_err("must not start")
            .to_string()
        }
    };
    let err = refuse("redis://:wrong-password@127.0.0.1:6379").await;
    assert!(err.contains("refused the credentials"), "{err}");
    assert!(!err.contains("wrong-password"), "{err}");
    let err = refuse("rediss-ish://127.0.0.1:6379").await;
    assert!(err.contains("Redis"), "{err}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_down_degrades_an_ingesting_process_and_fails_a_rollup_worker() {
    let mut db = tokio::task::spawn_blocking(common::servers::PrivateMariaDb::start)
        .await
        .expect("mariadb");
    let mut env = TestEnv::new("health_degraded");
    env.settings.mysql.url = db.url(&env.name);
    env.settings.redis.shards = 1;
    env.settings.health = quick();
    env.migrate().await;
    let ingest = env.start("ingest,api").await;
    let rollup = env.start("rollup").await;
    let client = http_client();
    until_ready(&client, &ingest).await;
    until_ready(&client, &rollup).await;

    db.kill();
    // ingest needs only Redis: 200 "degraded", the query pool's check
    // listed as failing and not required
    wait_until(Duration::from_secs(10), || {
        let c = client.clone();
        let s = &ingest;
        async move {
            let (code, body) = ready(&c, s).await;
            code == 200 && body["status"] == "degraded"
        }
    })
    .await;
    let (_, body) = ready(&client, &ingest).await;
    let q = check(&body, "mysql_query");
    assert_eq!(
        (&q["ok"], &q["required"]),
        (&false.into(), &false.into()),
        "{body}"
    );
    assert_eq!(check(&body, "redis")["required"], true, "{body}");
    let events = http_event(1, chrono::Utc::now().timestamp_millis()).to_string();
    let (code, reply) = post_ndjson(&client, &ingest.url("/v1/events"), events).await;
    assert_eq!(
        code, 202,
        "ingest buffers in Redis while MySQL is down: {reply}"
    );
    // a rollup-only worker cannot do its job: not ready
    wait_until(Duration::from_secs(10), || {
        let c = client.clone();
        let s = &rollup;
        async move { ready(&c, s).await.0 == 503 }
    })
    .await;
    let (_, body) = ready(&client, &rollup).await;
    assert_eq!(body["status"], "not ready", "{body}");
    assert_eq!(check(&body, "mysql")["required"], true, "{body}");
    ingest.stop().await;
    rollup.stop().await;
    env.cleanup().await;
}
