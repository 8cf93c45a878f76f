//! TLS to the data stores, against real servers this test starts: a
//! redis-server that speaks only TLS (`--port 0 --tls-port`) and a MariaDB
//! that accepts only TLS (`require_secure_transport`, a user `REQUIRE SSL`),
//! both with certificates of a CA the test generates (rcgen).
//!
//! - `flowmeter serve` over `rediss://` and verified MySQL TLS ingests and
//!   rolls up every event exactly;
//! - a certificate signed by another CA is refused, the error naming the
//!   setting to fix;
//! - a plain client meeting a TLS-only server fails with an error saying to
//!   turn TLS on;
//! - client certificates (`tls-auth-clients yes`) work when configured and
//!   are asked for when missing.

use crate::common;

use std::time::Duration;

use common::servers::{PrivateMariaDb, PrivateRedis, TestPki};
use common::{http_client, post_http_range, scalar, wait_until, TestEnv};
use flowmeter::config::{MysqlSslMode, Settings};
use flowmeter::store::Store;
use flowmeter::stream::{Redis, RedisTls};

/// Servers of one test, started off the async threads (they block while
/// they come up).
async fn servers(pki: TestPki, client_certs: bool) -> (TestPki, PrivateRedis, PrivateMariaDb) {
    tokio::task::spawn_blocking(move || {
        let redis = PrivateRedis::start_tls(&pki, client_certs);
        let db = PrivateMariaDb::start_tls(&pki);
        (pki, redis, db)
    })
    .await
    .expect("servers start")
}

/// `env`'s settings pointed at the TLS servers, verifying them with `ca`.
fn over_tls(
    s: &mut Settings,
    redis: &PrivateRedis,
    db: &PrivateMariaDb,
    ca: &std::path::Path,
    name: &str,
) {
    s.redis.url = redis.url();
    s.redis.tls_ca_file = Some(ca.to_path_buf());
    s.mysql.url = db.tls_url(name);
    s.mysql.ssl_mode = Some(MysqlSslMode::VerifyIdentity);
    s.mysql.ssl_ca = Some(ca.to_path_buf());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_over_tls_ingests_and_rolls_up_exactly() {
    let (pki, redis, db) = servers(TestPki::new("serve"), false).await;
    let mut env = TestEnv::new("tls_serve");
    let name = env.name.clone();
    over_tls(&mut env.settings, &redis, &db, &pki.ca(), &name);
    env.migrate().await;
    let server = env.start("ingest,api,rollup").await;
    let client = http_client();

    let n = 1_500u64;
    let t0 = chrono::Utc::now().timestamp_millis() - 3_600_000;
    post_http_range(&client, &server.url("/v1/events"), 0..n, t0, 3_000_000).await;
    let store = Store::from_config(&env.settings.mysql, 2)
        .await
        .expect("verified TLS to MariaDB");
    wait_until(Duration::from_secs(60), || {
        let store = store.clone();
        async move { scalar(&store, "SELECT SUM(requests) FROM http_hourly").await == n as i64 }
    })
    .await;
    // exactly: every event once, checked through the query API as well
    let from = chrono::DateTime::from_timestamp_millis(t0 - 3_600_000).expect("time");
    let body = common::get_json(
        &client,
        server.url(&format!(
            "/v1/rollups/hourly?kind=http&from={}&limit=100000",
            from.format("%Y-%m-%dT%H:00:00Z")
        )),
    )
    .await;
    let served: u64 = body["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["requests"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(served, n, "{}", body["truncated"]);
    // the sessions really are TLS (the server would refuse them otherwise,
    // and says which cipher)
    let cipher: (String, String) = sqlx::query_as("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .fetch_one(store.pool())
        .await
        .expect("ssl status");
    assert!(
        !cipher.1.is_empty(),
        "MySQL session without TLS: {cipher:?}"
    );
    let rtls = flowmeter::stream::connect(&env.settings.redis)
        .await
        .expect("rediss");
    let mut conn = rtls.conn.clone();
    let pong: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .expect("PING over TLS");
    assert_eq!(pong, "PONG");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_another_ca_is_refused_naming_the_setting() {
    let (pki, redis, db) = servers(TestPki::new("right"), false).await;
    let other = TestPki::new("other");
    let timeout = Duration::from_secs(5);

    let tls = RedisTls {
        ca_file: Some(other.ca()),
        ..Default::default()
    };
    let err = Redis::connect_with(&redis.url(), &tls, timeout)
        .await
        .err()
        .expect("a server certificate of another CA is refused");
    let text = err.to_string();
    assert!(
        text.contains("TLS handshake with Redis failed")
            && text.contains("not signed by redis.tls_ca_file")
            && text.contains(&other.ca().display().to_string()),
        "{text}"
    );
    assert!(!err.retryable(), "waiting does not fix a CA");

    let mut env = TestEnv::new("tls_wrong_ca");
    let name = env.name.clone();
    over_tls(&mut env.settings, &redis, &db, &other.ca(), &name);
    let err = Store::from_config(&env.settings.mysql, 2)
        .await
        .expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("TLS to MySQL") && text.contains("not signed by mysql.ssl_ca"),
        "{text}"
    );
    assert!(!err.retryable());
    // and the whole server refuses to start, saying the same
    let err = flowmeter::app::migrate(&env.settings)
        .await
        .expect_err("migrate refuses");
    assert!(err.to_string().contains("mysql.ssl_ca"), "{err}");

    drop((pki, redis, db));

    // the right CA, but a certificate for another name than the URL's host
    let named = TestPki::with_server_names("named", &["localhost"]);
    let (named, redis) = tokio::task::spawn_blocking(move || {
        let r = PrivateRedis::start_tls(&named, false);
        (named, r)
    })
    .await
    .expect("redis starts");
    let tls = RedisTls {
        ca_file: Some(named.ca()),
        ..Default::default()
    };
    let err = Redis::connect_with(&redis.url(), &tls, timeout)
        .await
        .err()
        .expect("a certificate for another name is refused");
    assert!(err.to_string().contains("does not name the host"), "{err}");
    let by_name = redis.url().replace("127.0.0.1", "localhost");
    Redis::connect_with(&by_name, &tls, timeout)
        .await
        .map(|_| ())
        .expect("the name the certificate holds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_client_meeting_a_tls_only_server_is_told_to_use_tls() {
    let (pki, redis, db) = servers(TestPki::new("plain"), false).await;
    let plain = format!("redis://127.0.0.1:{}", redis.port);
    let err = Redis::connect(&plain, Duration::from_secs(5))
        .await
        .err()
        .expect("a plain client cannot talk to a TLS port");
    let text = err.to_string();
    assert!(text.contains("rediss://"), "{text}");

    let mut mysql = flowmeter::config::MysqlConfig {
        url: db.tls_url("plain"),
        ..Default::default()
    };
    mysql.ssl_mode = Some(MysqlSslMode::Disabled);
    let err = Store::from_config(&mysql, 2).await.expect_err("refused");
    let text = err.to_string();
    // MariaDB refuses a REQUIRE SSL account before it checks the transport
    assert!(
        text.contains("TLS to MySQL")
            && text.contains("mysql.ssl_mode")
            && (text.contains("accepts only TLS") || text.contains("REQUIRE SSL")),
        "{text}"
    );
    // the same URL with TLS asked for in the URL itself works
    let url = format!(
        "{}?ssl-mode=VERIFY_IDENTITY&ssl-ca={}",
        db.tls_url("plain"),
        pki.ca().display()
    );
    let store = Store::connect(&url, 2)
        .await
        .expect("TLS from the URL's parameters");
    assert_eq!(scalar(&store, "SELECT 1").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_sent_when_configured() {
    let pki = TestPki::new("mtls");
    let (pki, redis) = tokio::task::spawn_blocking(move || {
        let r = PrivateRedis::start_tls(&pki, true);
        (pki, r)
    })
    .await
    .expect("redis starts");
    let timeout = Duration::from_secs(5);
    let mut tls = RedisTls {
        ca_file: Some(pki.ca()),
        ..Default::default()
    };
    let err = Redis::connect_with(&redis.url(), &tls, timeout)
        .await
        .err()
        .expect("no client certificate");
    assert!(
        err.to_string().contains("redis.tls_cert_file")
            || err.to_string().contains("closed the connection"),
        "{err}"
    );
    tls.cert_file = Some(pki.client_cert());
    tls.key_file = Some(pki.client_key());
    let r = Redis::connect_with(&redis.url(), &tls, timeout)
        .await
        .expect("mutual TLS");
    let mut conn = r.conn.clone();
    let _: () = redis::cmd("SET")
        .arg("fm_tls_probe")
        .arg("1")
        .query_async(&mut conn)
        .await
        .expect("SET over mutual TLS");
}
