//! The rollup against poison and cardinality attacks: entries no flush can
//! hold, values at every edge, a value the database itself refuses, an
//! event past 2038, thousands of new keys from two requests — and then
//! canary events, which must be counted exactly while the processor never
//! stalls. Plus a property test over generated schema-valid events.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};

use crate::common::*;

/// 2026-03-01T10:00:00Z.
const HOUR: i64 = 1_772_359_200_000;
/// The latest `ts` ingest accepts: 3000-01-01T00:00:00Z.
const MAX_TS: i64 = 32_503_680_000_000;
/// 2038-01-19T03:14:07Z, the last second MariaDB's UNIX_TIMESTAMP() knows.
const Y2038_MS: i64 = 2_147_483_647_000;
/// The schemas' largest byte count (1 TiB).
const MAX_BYTES: u64 = 1_099_511_627_776;

pub(crate) fn http(ts: Value, service: &str, endpoint: &str, req_bytes: u64) -> Value {
    json!({"kind": "http", "ts": ts, "service": service, "endpoint": endpoint, "method": "GET",
           "status": 200, "req_bytes": req_bytes, "resp_bytes": 10, "duration_ms": 1.0})
}

pub(crate) fn ndjson(events: &[Value]) -> String {
    events
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// An exact number from MySQL (`SUM` of BIGINT UNSIGNED columns may pass
/// 2^53, where `scalar`'s DOUBLE is no longer exact); NULL → 0.
pub(crate) async fn exact(store: &flowmeter::store::Store, sql: &str) -> u128 {
    let v: Option<String> = sqlx::query_scalar(&format!("SELECT CAST(({sql}) AS CHAR)"))
        .fetch_one(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    v.map_or(0, |s| {
        s.parse().unwrap_or_else(|e| panic!("{sql}: {s}: {e}"))
    })
}

/// The dead letters of `group`: each entry's fields.
pub(crate) async fn dead_letters(env: &TestEnv, group: &str) -> Vec<HashMap<String, String>> {
    let mut r = env.redis().await;
    let raw: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(format!("{}:dlq:{group}", env.name))
        .arg("-")
        .arg("+")
        .query_async(&mut r)
        .await
        .expect("xrange dlq");
    raw.into_iter()
        .map(|(_, f)| f.into_iter().collect())
        .collect()
}

/// Waits until the group has nothing pending or unread on any shard.
pub(crate) async fn caught_up(env: &TestEnv, group: &str, limit: Duration) {
    wait_until(limit, || async {
        group_figures(env, group).await == (0, 0)
    })
    .await;
}

/// The workers `GET /v1/status` lists for `processor`.
async fn workers(client: &reqwest::Client, server: &Server, processor: &str) -> Vec<Value> {
    let st = get_json(client, server.url("/v1/status")).await;
    st["processors"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == processor))
        .and_then(|p| p["workers"].as_array().cloned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_is_dead_lettered_and_canaries_are_counted_exactly() {
    let mut env = TestEnv::new("abuse_poison");
    env.settings.redis.shards = 2;
    env.settings.rollup.flush_interval_ms = 100;
    env.migrate().await;
    let store = env.store().await;
    // A value the database itself refuses, standing for a CHECK constraint
    // or a column type the runner cannot check in advance.
    sqlx::query(
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON http_hourly FOR EACH ROW \
         IF NEW.endpoint = '/db-refuses-me' THEN \
         SIGNAL SQLSTATE '22003' SET MESSAGE_TEXT = 'refused by a trigger'; END IF",
    )
    .execute(store.pool())
    .await
    .expect("trigger");
    // A committed row 615 bytes short of BIGINT UNSIGNED's end: an event
    // adding 1,000 to it fits in memory and overflows only once merged.
    sqlx::query(
        "INSERT INTO http_hourly (service, endpoint, method, hour, requests, bytes_in) \
         VALUES ('full', '/full', 'GET', '2026-03-01 10:00:00', 1, 18446744073709551000)",
    )
    .execute(store.pool())
    .await
    .expect("seed");
    let server = env.start("ingest,api,rollup").await;
    let client = http_client();
    let url = server.url("/v1/events");

    let emoji_service: String = "😀".repeat(128);
    let good = vec![
        http(json!("2040-01-01T00:00:00Z"), "y2040", "/after-2038", 1),
        http(json!(0), "epoch", "/first", 2),
        http(json!(MAX_TS), "y3000", "/last", 3),
        http(json!(Y2038_MS), "y2038", "/edge", 4),
        http(json!(Y2038_MS + 1000), "y2038", "/edge", 5),
        http(json!("2999-12-31T23:00:00-01:00"), "y3000", "/offset", 6),
        http(json!(HOUR), &emoji_service, &"𝄞".repeat(255), MAX_BYTES),
        http(json!(HOUR), "svc   ", "/trailing", MAX_BYTES),
        json!({"kind": "http", "ts": HOUR, "service": "edges", "endpoint": "/e", "method": "ABCDEFGHIJKLMNOP",
               "status": 599, "req_bytes": 0, "resp_bytes": MAX_BYTES, "duration_ms": 86_400_000.0,
               "user_id": "😀".repeat(128)}),
        json!({"kind": "http", "ts": HOUR, "service": "edges", "endpoint": "/e", "method": "GET",
               "status": 100, "req_bytes": 7, "resp_bytes": 0, "duration_ms": 0, "user_id": null}),
    ];
    let good_bytes: u128 = good
        .iter()
        .map(|e| u128::from(e["req_bytes"].as_u64().unwrap_or(0)))
        .sum();
    let (code, reply) = post_ndjson(&client, &url, ndjson(&good)).await;
    assert_eq!(code, 202, "{reply}");
    // Poison the schema accepts: refused by the database, or overflowing a
    // committed row.
    let refused = http(json!(HOUR), "db", "/db-refuses-me", 1);
    let overflow = http(json!(HOUR + 1_800_000), "full", "/full", 1_000);
    let (code, reply) = post_ndjson(&client, &url, ndjson(&[refused, overflow])).await;
    assert_eq!(code, 202, "{reply}");
    // Poison only a foreign producer can write: not JSON, and a value no
    // column holds.
    let mut r = env.redis().await;
    let shard = format!("{}:{{http:0}}", env.name);
    let huge = http(json!(HOUR), "huge", "/huge", 0)
        .to_string()
        .replace("\"req_bytes\":0", "\"req_bytes\":1e300");
    for data in ["{not json".to_string(), huge] {
        let _: String = redis::cmd("XADD")
            .arg(&shard)
            .arg("*")
            .arg("kind")
            .arg("http")
            .arg("v")
            .arg(1)
            .arg("data")
            .arg(data)
            .query_async(&mut r)
            .await
            .expect("xadd");
    }
    // Canaries, sent after all the poison.
    post_http_range(&client, &url, 0..300, HOUR, 3_600_000).await;
    let canary_bytes: u128 = (0..300u64).map(|i| u128::from(100 + i % 50)).sum();

    let expected = good.len() as u128 + 300;
    let s = store.clone();
    wait_until(Duration::from_secs(60), || {
        let s = s.clone();
        async move { exact(&s, "SELECT SUM(requests) FROM http_daily").await == expected }
    })
    .await;
    caught_up(&env, "rollup", Duration::from_secs(30)).await;
    assert_eq!(
        exact(&store, "SELECT SUM(requests) FROM http_hourly").await,
        expected + 1,
        "every good event and canary once in the hourly rows (plus the seeded row)"
    );
    assert_eq!(
        exact(&store, "SELECT SUM(bytes_in) FROM http_daily").await,
        good_bytes + canary_bytes,
        "byte sums exact"
    );
    assert_eq!(
        exact(
            &store,
            "SELECT bytes_in FROM http_hourly WHERE service = 'full' AND endpoint = '/full'"
        )
        .await,
        18_446_744_073_709_551_000,
        "the overflowing event was not added"
    );
    for (hour, n) in [
        ("2040-01-01 00:00:00", 1),
        ("1970-01-01 00:00:00", 1),
        ("3000-01-01 00:00:00", 2),
        ("2038-01-19 03:00:00", 2),
    ] {
        let sql = format!("SELECT SUM(requests) FROM http_hourly WHERE hour = '{hour}'");
        assert_eq!(exact(&store, &sql).await, n, "{hour}");
    }
    assert_eq!(
        exact(
            &store,
            "SELECT COUNT(*) FROM http_daily WHERE day = '2040-01-01' AND service = 'y2040'"
        )
        .await,
        1
    );

    let letters = dead_letters(&env, "rollup").await;
    let errors: Vec<&str> = letters
        .iter()
        .map(|l| l.get("error").map_or("", String::as_str))
        .collect();
    assert_eq!(letters.len(), 4, "{errors:#?}");
    let has = |needle: &str, data: &str| {
        letters.iter().any(|l| {
            l.get("error").is_some_and(|e| e.contains(needle))
                && l.get("data").is_some_and(|d| d.contains(data))
        })
    };
    assert!(has("refused by a trigger", "/db-refuses-me"), "{errors:#?}");
    assert!(has("bytes_in", "/full"), "{errors:#?}");
    assert!(has("not a JSON object", "{not json"), "{errors:#?}");
    assert!(
        has("1e300 does not fit integer column bytes_in", "/huge"),
        "{errors:#?}"
    );
    assert!(
        metric(&client, &server, "flowmeter_rollup_flushes_refused_total").await >= 1.0,
        "the database's refusals were narrowed down"
    );
    let ws = workers(&client, &server, "http_rollup").await;
    assert!(!ws.is_empty());
    for w in &ws {
        assert!(w["stalled_since"].is_null(), "{w}");
    }
    assert!(
        ws.iter().any(|w| w["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("trigger") || e.contains("bytes_in"))),
        "the refusals are on record: {ws:?}"
    );

    // and after a restart nothing is stuck either
    server.stop().await;
    let server = env.start("ingest,rollup").await;
    post_http_range(
        &client,
        &server.url("/v1/events"),
        300..350,
        HOUR,
        3_600_000,
    )
    .await;
    let s = store.clone();
    wait_until(Duration::from_secs(30), || {
        let s = s.clone();
        async move { exact(&s, "SELECT SUM(requests) FROM http_daily").await == expected + 50 }
    })
    .await;
    assert_eq!(dead_letters(&env, "rollup").await.len(), 4);
    server.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_too_far_in_the_future_are_dead_lettered_when_bounded() {
    let mut env = TestEnv::new("abuse_future");
    env.settings.redis.shards = 1;
    env.settings.rollup.flush_interval_ms = 100;
    env.settings.rollup.max_future_secs = 86_400;
    env.migrate().await;
    let server = env.start("ingest,rollup").await;
    let client = http_client();
    let url = server.url("/v1/events");
    let now = chrono::Utc::now().timestamp_millis();
    let events = [
        http(json!("2040-01-01T00:00:00Z"), "future", "/2040", 1),
        http(json!(now + 3_600_000), "soon", "/in-an-hour", 1),
    ];
    let (code, reply) = post_ndjson(&client, &url, ndjson(&events)).await;
    assert_eq!(code, 202, "{reply}");
    post_http_range(&client, &url, 0..20, HOUR, 3_600_000).await;
    let store = env.store().await;
    wait_until(Duration::from_secs(30), || {
        let s = store.clone();
        async move { exact(&s, "SELECT SUM(requests) FROM http_daily").await == 21 }
    })
    .await;
    caught_up(&env, "rollup", Duration::from_secs(20)).await;
    let letters = dead_letters(&env, "rollup").await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let error = letters[0].get("error").cloned().unwrap_or_default();
    assert!(
        error.contains("rollup.max_future_secs = 86400") && error.contains("2040-01-01"),
        "{error}"
    );
    server.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_rollup_shows_since_when_and_why_then_recovers() {
    let mut env = TestEnv::new("abuse_stall");
    env.settings.redis.shards = 1;
    env.settings.rollup.flush_interval_ms = 100;
    // readiness fails from the first failed flush
    env.settings.health.max_stall_ms = 0;
    env.migrate().await;
    let store = env.store().await;
    let server = env.start("ingest,api,rollup").await;
    let client = http_client();
    // An infrastructure fault (the table is gone) is retried, not dead-lettered.
    sqlx::query("RENAME TABLE http_hourly TO http_hourly_away")
        .execute(store.pool())
        .await
        .expect("rename");
    post_http_range(&client, &server.url("/v1/events"), 0..20, HOUR, 3_600_000).await;
    wait_until(Duration::from_secs(30), || async {
        workers(&client, &server, "http_rollup")
            .await
            .iter()
            .any(|w| {
                w["stalled_since"].is_string()
                    && w["last_error"]
                        .as_str()
                        .is_some_and(|e| e.contains("http_hourly"))
                    && w["consecutive_failures"].as_u64().unwrap_or(0) >= 2
            })
    })
    .await;
    let dir = tempfile::tempdir().expect("tmp");
    let config = env.write_config(dir.path());
    let text = cli_ok(&config, &["status"]);
    assert!(
        text.contains("STALLED http_rollup") && text.contains("http_hourly"),
        "{text}"
    );
    // the processor's check fails, naming it and since when (not the error,
    // which may quote stored values: that is for GET /v1/status); this
    // process also ingests, which needs only Redis, so it stays in its
    // Service: 200 "degraded" (a rollup-only worker would answer 503, as
    // health::mysql_down_degrades_an_ingesting_process_and_fails_a_rollup_worker
    // shows); alive all the same
    let ready = client
        .get(server.url("/health/ready"))
        .send()
        .await
        .expect("ready");
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.expect("JSON");
    assert_eq!(body["status"], "degraded", "{body}");
    let stalled = body["checks"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "processor:http_rollup"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (&stalled["ok"], &stalled["required"]),
        (&false.into(), &false.into()),
        "{body}"
    );
    assert!(
        stalled["reason"]
            .as_str()
            .is_some_and(|r| r.contains("stalled for") && !r.contains("http_hourly")),
        "{body}"
    );
    let live = client
        .get(server.url("/healthz"))
        .send()
        .await
        .expect("live");
    assert_eq!(live.status(), 200);
    sqlx::query("RENAME TABLE http_hourly_away TO http_hourly")
        .execute(store.pool())
        .await
        .expect("rename back");
    wait_until(Duration::from_secs(30), || {
        let s = store.clone();
        async move { exact(&s, "SELECT SUM(requests) FROM http_hourly").await == 20 }
    })
    .await;
    wait_until(Duration::from_secs(10), || async {
        workers(&client, &server, "http_rollup")
            .await
            .iter()
            .all(|w| w["stalled_since"].is_null())
    })
    .await;
    let ready = client
        .get(server.url("/health/ready"))
        .send()
        .await
        .expect("ready");
    assert_eq!(ready.status(), 200, "ready again once it flushes");
    let body: serde_json::Value = ready.json().await.expect("JSON");
    assert_eq!(body["status"], "ready", "{body}");
    assert!(dead_letters(&env, "rollup").await.is_empty());
    server.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_altered_under_the_rollup_stalls_it_instead_of_dead_lettering_all() {
    let mut env = TestEnv::new("abuse_drift");
    env.settings.redis.shards = 1;
    env.settings.rollup.flush_interval_ms = 100;
    env.migrate().await;
    let store = env.store().await;
    let server = env.start("ingest,api,rollup").await;
    let client = http_client();
    // Narrowed after the processor checked its definition: the database now
    // refuses what the processor's checks let through.
    sqlx::query("ALTER TABLE http_hourly MODIFY bytes_in INT UNSIGNED NOT NULL DEFAULT 0")
        .execute(store.pool())
        .await
        .expect("alter");
    let big = 5_000_000_000u64;
    let events: Vec<Value> = (0..5)
        .map(|i| http(json!(HOUR), &format!("s{i}"), "/x", big))
        .collect();
    let (code, reply) = post_ndjson(&client, &server.url("/v1/events"), ndjson(&events)).await;
    assert_eq!(code, 202, "{reply}");
    wait_until(Duration::from_secs(30), || async {
        workers(&client, &server, "http_rollup")
            .await
            .iter()
            .any(|w| {
                w["stalled_since"].is_string()
                    && w["last_error"]
                        .as_str()
                        .is_some_and(|e| e.contains("changed since the processor started"))
            })
    })
    .await;
    assert!(
        dead_letters(&env, "rollup").await.is_empty(),
        "a schema change is not the data's fault"
    );
    // Restarted, the processor knows the new column: the events that do
    // not fit it are dead-lettered, the ones that do are counted.
    server.stop().await;
    let server = env.start("ingest,rollup").await;
    let fits = http(json!(HOUR), "small", "/x", 1);
    let (code, reply) = post_ndjson(&client, &server.url("/v1/events"), ndjson(&[fits])).await;
    assert_eq!(code, 202, "{reply}");
    caught_up(&env, "rollup", Duration::from_secs(30)).await;
    let letters = dead_letters(&env, "rollup").await;
    assert_eq!(letters.len(), 5, "{letters:?}");
    assert!(letters
        .iter()
        .all(|l| l.get("error").is_some_and(|e| e.contains("INT UNSIGNED"))));
    assert_eq!(
        exact(&store, "SELECT SUM(requests) FROM http_daily").await,
        1
    );
    server.stop().await;
    env.cleanup().await;
}

/// Waits (at most a little over two minutes) until the wall-clock hour has
/// at least three minutes left, so one attack fits in one budget hour.
async fn away_from_the_hour_boundary() {
    for _ in 0..30 {
        let into_hour = chrono::Utc::now().timestamp() % 3_600;
        if into_hour < 3_600 - 180 {
            return;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_requests_of_new_keys_stay_within_the_cardinality_budget() {
    let mut env = TestEnv::new("abuse_cardinality");
    env.settings.redis.shards = 4;
    env.settings.rollup.flush_interval_ms = 100;
    assert_eq!(
        env.settings.rollup.max_new_keys_per_hour, 10_000,
        "the default"
    );
    env.migrate().await;
    let store = env.store().await;
    away_from_the_hour_boundary().await;
    // two workers share the shards (and the budget)
    let a = env.start("ingest,api,rollup").await;
    let b = env.start("rollup").await;
    let client = http_client();
    // The reported attack: 2 requests, 14,000 distinct services, which made
    // 14,000 hourly and 14,000 daily rows, each with sketch blobs.
    for r in 0..2 {
        let events: Vec<Value> = (0..7_000)
            .map(|i| http(json!(HOUR), &format!("a{r}-{i}"), "/x", 1))
            .collect();
        let (code, reply) = post_ndjson(&client, &a.url("/v1/events"), ndjson(&events)).await;
        assert_eq!(code, 202, "{reply}");
    }
    let s = store.clone();
    wait_until(Duration::from_secs(120), || {
        let s = s.clone();
        async move { exact(&s, "SELECT SUM(requests) FROM http_daily").await == 14_000 }
    })
    .await;
    caught_up(&env, "rollup", Duration::from_secs(30)).await;
    for table in ["http_hourly", "http_daily"] {
        let admitted = exact(
            &store,
            &format!("SELECT COUNT(*) FROM {table} WHERE service <> '__other__'"),
        )
        .await;
        let budget_hours = exact(
            &store,
            &format!("SELECT COUNT(*) FROM fm_key_budget WHERE tbl = '{table}'"),
        )
        .await;
        let most = exact(
            &store,
            &format!("SELECT MAX(new_keys) FROM fm_key_budget WHERE tbl = '{table}'"),
        )
        .await;
        let charged = exact(
            &store,
            &format!("SELECT SUM(new_keys) FROM fm_key_budget WHERE tbl = '{table}'"),
        )
        .await;
        assert!(most <= 10_000, "{table}: {most} new keys in one hour");
        assert_eq!(admitted, charged, "{table}: one row per admitted key");
        assert_eq!(budget_hours, 1, "{table}: the attack fit in one hour");
        assert_eq!(admitted, 10_000, "{table}: the budget, no more");
        let other = exact(
            &store,
            &format!("SELECT SUM(requests) FROM {table} WHERE service = '__other__'"),
        )
        .await;
        let folded = exact(
            &store,
            &format!("SELECT SUM(folded_events) FROM fm_key_budget WHERE tbl = '{table}'"),
        )
        .await;
        assert_eq!(other, 4_000, "{table}: the rest folded, nothing lost");
        assert_eq!(folded, 4_000, "{table}: and counted as folded");
        let rows = exact(&store, &format!("SELECT COUNT(*) FROM {table}")).await;
        assert_eq!(rows, 10_001, "{table}: 10,000 keys and one __other__ row");
    }
    assert!(
        metric(&client, &a, "flowmeter_rollup_keys_folded_total").await >= 8_000.0,
        "both tables folded 4,000 keys"
    );
    // the status says how many, per table
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ws = workers(&client, &a, "http_rollup").await;
    let folded: u64 = ws
        .iter()
        .map(|w| w["keys_folded_total"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(folded, 8_000, "{ws:?}");
    assert!(
        ws.iter().any(|w| w["key_budgets"]
            .as_array()
            .is_some_and(|b| b.iter().any(|t| t["max_new_keys_per_hour"] == 10_000
                && t["folded_keys"].as_u64().unwrap_or(0) > 0))),
        "{ws:?}"
    );
    a.stop().await;
    b.stop().await;

    // The budget holds across restarts: a fresh worker finds it spent.
    let c = env.start("ingest,rollup").await;
    let events: Vec<Value> = (0..100)
        .map(|i| http(json!(HOUR), &format!("late-{i}"), "/x", 1))
        .collect();
    let (code, reply) = post_ndjson(&client, &c.url("/v1/events"), ndjson(&events)).await;
    assert_eq!(code, 202, "{reply}");
    let s = store.clone();
    wait_until(Duration::from_secs(30), || {
        let s = s.clone();
        async move { exact(&s, "SELECT SUM(requests) FROM http_daily").await == 14_100 }
    })
    .await;
    let same_hour = exact(
        &store,
        "SELECT COUNT(*) FROM fm_key_budget WHERE tbl = 'http_daily'",
    )
    .await
        == 1;
    let late = exact(
        &store,
        "SELECT COUNT(*) FROM http_daily WHERE service LIKE 'late-%'",
    )
    .await;
    if same_hour {
        assert_eq!(late, 0, "the spent budget survived the restart");
    }
    let most = exact(&store, "SELECT MAX(new_keys) FROM fm_key_budget").await;
    assert!(most <= 10_000);
    c.stop().await;
    env.cleanup().await;
}

/// Strings up to `max` characters, from a pool with 1- to 4-byte UTF-8,
/// spaces and NUL; the longest length included.
fn text(max: usize) -> impl Strategy<Value = String> {
    let chars = prop_oneof![
        Just('a'),
        Just('Z'),
        Just(' '),
        Just('\u{0}'),
        Just('é'),
        Just('€'),
        Just('😀'),
        Just('𝄞'),
        any::<char>(),
    ];
    prop_oneof![
        proptest::collection::vec(chars.clone(), 1..=max),
        proptest::collection::vec(chars, max..=max),
    ]
    .prop_map(|v| v.into_iter().collect())
}

/// `ts` at the edges or anywhere in range, as epoch ms or RFC 3339 with
/// an offset.
fn ts() -> impl Strategy<Value = Value> {
    let ms = prop_oneof![
        Just(0i64),
        Just(MAX_TS),
        Just(Y2038_MS),
        Just(Y2038_MS + 1_000),
        Just(HOUR),
        0i64..=MAX_TS,
    ];
    (ms, -12i32..=14, any::<bool>()).prop_map(|(ms, offset_h, as_text)| {
        if !as_text {
            return json!(ms);
        }
        let tz = chrono::FixedOffset::east_opt(offset_h * 3_600)
            .unwrap_or_else(|| chrono::FixedOffset::east_opt(0).expect("UTC"));
        match chrono::DateTime::from_timestamp_millis(ms) {
            Some(t) => json!(t
                .with_timezone(&tz)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, false)),
            None => json!(ms),
        }
    })
}

fn bytes() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0), Just(MAX_BYTES), 0..=MAX_BYTES]
}

fn http_event() -> impl Strategy<Value = Value> {
    (
        ts(),
        text(128),
        text(255),
        "[A-Z]{1,16}",
        100u16..=599,
        (bytes(), bytes()),
        prop_oneof![Just(0.0), Just(86_400_000.0), 0.0..=86_400_000.0f64],
        proptest::option::of(text(128)),
    )
        .prop_map(
            |(ts, service, endpoint, method, status, (rq, rs), d, user)| {
                json!({"kind": "http", "ts": ts, "service": service, "endpoint": endpoint,
                   "method": method, "status": status, "req_bytes": rq, "resp_bytes": rs,
                   "duration_ms": d, "user_id": user})
            },
        )
}

fn webrtc_event() -> impl Strategy<Value = Value> {
    let ms = prop_oneof![Just(0.0), Just(600_000.0), 0.0..=600_000.0f64];
    (
        ts(),
        (text(128), text(128)),
        (bytes(), bytes()),
        (ms.clone(), ms),
        prop_oneof![Just(0.0), Just(1.0), 0.0..=1.0f64],
        prop_oneof![Just("host"), Just("srflx"), Just("prflx"), Just("relay")],
    )
        .prop_map(
            |(ts, (meeting, peer), (sent, recv), (rtt, jitter), loss, cand)| {
                json!({"kind": "webrtc", "ts": ts, "meeting_id": meeting, "peer_id": peer,
                   "bytes_sent": sent, "bytes_received": recv, "rtt_ms": rtt,
                   "jitter_ms": jitter, "packet_loss": loss, "candidate_type": cand})
            },
        )
}

/// Every accepted schema-valid event is counted in the rollup tables or
/// dead-lettered, exactly (and with the default configuration none is
/// dead-lettered: every accepted time and value fits), and the rollup never
/// stalls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_valid_events_are_all_counted_or_dead_lettered() {
    let mut env = TestEnv::new("abuse_props");
    env.settings.redis.shards = 2;
    env.settings.rollup.flush_interval_ms = 50;
    env.migrate().await;
    let server = env.start("ingest,api,rollup").await;
    let client = http_client();
    let store = env.store().await;
    let url = server.url("/v1/events");
    let handle = tokio::runtime::Handle::current();
    let events = proptest::collection::vec(prop_oneof![http_event(), webrtc_event()], 1..24);
    let mut runner = TestRunner::new(Config {
        cases: 32,
        failure_persistence: None,
        // a failing case waits for the rollup; keep shrinking bounded too
        max_shrink_iters: 16,
        max_shrink_time: 60_000,
        ..Config::default()
    });
    // (http, webrtc) events accepted so far
    let sent = std::cell::Cell::new((0u128, 0u128));
    let bytes_sent = std::cell::Cell::new(0u128);
    let result = runner.run(&events, |events| {
        tokio::task::block_in_place(|| {
            handle.block_on(async {
                let (code, reply) = post_ndjson(&client, &url, ndjson(&events)).await;
                if code != 202 {
                    return Err(TestCaseError::fail(format!("ingest said {code}: {reply}")));
                }
                let http = events.iter().filter(|e| e["kind"] == "http").count() as u128;
                let (h, w) = sent.get();
                sent.set((h + http, w + events.len() as u128 - http));
                let req: u128 = events
                    .iter()
                    .filter(|e| e["kind"] == "http")
                    .map(|e| u128::from(e["req_bytes"].as_u64().unwrap_or(0)))
                    .sum();
                bytes_sent.set(bytes_sent.get() + req);
                let start = std::time::Instant::now();
                while group_figures(&env, "rollup").await != (0, 0) {
                    if start.elapsed() > Duration::from_secs(30) {
                        return Err(TestCaseError::fail("the rollup did not catch up in 30 s"));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let (h, w) = sent.get();
                let dead = dead_letters(&env, "rollup").await;
                let dead_http = dead
                    .iter()
                    .filter(|l| l.get("stream").is_some_and(|s| s.contains("{http:")))
                    .count() as u128;
                let dead_webrtc = dead.len() as u128 - dead_http;
                let counted = [
                    ("SELECT SUM(requests) FROM http_hourly", h - dead_http),
                    ("SELECT SUM(requests) FROM http_daily", h - dead_http),
                    ("SELECT SUM(samples) FROM webrtc_hourly", w - dead_webrtc),
                    ("SELECT SUM(samples) FROM webrtc_daily", w - dead_webrtc),
                ];
                for (sql, want) in counted {
                    let got = exact(&store, sql).await;
                    if got != want {
                        return Err(TestCaseError::fail(format!(
                            "{sql} = {got}, want {want}; dead letters: {dead:?}"
                        )));
                    }
                }
                // With the default configuration every schema-valid event
                // fits: none may end as a dead letter.
                if !dead.is_empty() {
                    return Err(TestCaseError::fail(format!(
                        "schema-valid events were dead-lettered: {dead:?}"
                    )));
                }
                {
                    let got = exact(&store, "SELECT SUM(bytes_in) FROM http_daily").await;
                    if got != bytes_sent.get() {
                        return Err(TestCaseError::fail(format!(
                            "bytes_in {got}, sent {}",
                            bytes_sent.get()
                        )));
                    }
                }
                Ok(())
            })
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let (h, w) = sent.get();
    assert!(h + w >= 16, "the cases sent events");
    for w in workers(&client, &server, "http_rollup").await {
        assert!(w["stalled_since"].is_null(), "{w}");
    }
    server.stop().await;
    env.cleanup().await;
}
