//! The router without a socket: `flowmeter::api::router` over the very state
//! `serve` builds (`app::http_state`), driven request by request with
//! `tower::ServiceExt::oneshot`, against the real Redis and MariaDB. No
//! server process, no port: routes, typed query parameters and their 400s,
//! ingest's answers, auth.

use crate::common;

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use common::TestEnv;
use flowmeter::app::{self, Roles, Shared};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// The router of `roles` over `env`, and what stops its background tasks.
async fn router(env: &TestEnv, roles: &str) -> (Router, CancellationToken) {
    let s = &env.settings;
    let schemas = std::sync::Arc::new(
        flowmeter::event::SchemaRegistry::load(&s.paths.schemas).expect("schemas"),
    );
    let processors = std::sync::Arc::new(
        flowmeter::processor::ProcessorRegistry::load(&s.paths.processors, &schemas)
            .expect("processors"),
    );
    let (redis, keys) = app::redis_and_keys(s).await.expect("redis");
    let roles: Roles = roles.parse().expect("roles");
    let (tracker, stop) = (TaskTracker::new(), CancellationToken::new());
    let shared = Shared {
        schemas,
        processors,
        redis,
        keys,
    };
    let state = app::http_state(s, &roles, shared, None, &tracker, &stop)
        .await
        .expect("state");
    (flowmeter::api::router(state), stop)
}

/// Status, headers and body (JSON when it parses, else the text as a JSON
/// string).
async fn answer(r: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let resp = r.clone().oneshot(req).await.expect("infallible");
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.expect("body");
    let text = String::from_utf8_lossy(&bytes).to_string();
    (
        parts.status,
        parts.headers,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Status and body (JSON when it parses, else the text as a JSON string).
async fn call(r: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let (status, _, body) = answer(r, req).await;
    (status, body)
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).expect("request")
}

fn post(uri: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(uri)
        .header("content-type", "application/json")
        .body(body.into())
        .expect("request")
}

/// The `param`s a 400 names, in its order.
fn named(v: &Value) -> Vec<String> {
    match v["errors"].as_array() {
        Some(errors) => errors
            .iter()
            .map(|e| e["param"].as_str().unwrap_or("?").to_string())
            .collect(),
        None => vec![v["param"].as_str().unwrap_or("?").to_string()],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_follow_the_roles() {
    let env = TestEnv::new("router_routes");
    env.migrate().await;
    let (api, stop) = router(&env, "ingest,api").await;
    let (s, body) = call(&api, get("/healthz")).await;
    assert_eq!((s, body), (StatusCode::OK, Value::from("ok\n")));
    let (s, body) = call(&api, get("/v1/nothing")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("docs/api.md")),
        "{body}"
    );
    let (s, _) = call(&api, get("/v1/rollups/daily?kind=http")).await;
    assert_eq!(s, StatusCode::OK);
    // without the hub role there is no /v1/ws
    assert_eq!(call(&api, get("/v1/ws")).await.0, StatusCode::NOT_FOUND);
    stop.cancel();

    // a rollup worker serves /healthz and /metrics, nothing of the API
    let (worker, stop) = router(&env, "rollup").await;
    assert_eq!(call(&worker, get("/healthz")).await.0, StatusCode::OK);
    assert_eq!(call(&worker, get("/metrics")).await.0, StatusCode::OK);
    for uri in ["/v1/rollups/hourly?kind=http", "/v1/status", "/v1/alerts"] {
        assert_eq!(
            call(&worker, get(uri)).await.0,
            StatusCode::NOT_FOUND,
            "{uri}"
        );
    }
    assert_eq!(
        call(&worker, post("/v1/events", "[]")).await.0,
        StatusCode::NOT_FOUND
    );
    stop.cancel();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_method_a_route_lacks_gets_405_as_a_json_error_with_allow() {
    let env = TestEnv::new("router_405");
    env.migrate().await;
    let (api, stop) = router(&env, "ingest,api").await;
    for (method, uri, allow) in [
        ("GET", "/v1/events", "POST,OPTIONS"),
        ("POST", "/v1/status", "GET,HEAD,OPTIONS"),
        ("DELETE", "/v1/rollups/hourly?kind=http", "GET,HEAD,OPTIONS"),
        ("PUT", "/healthz", "GET,HEAD"),
    ] {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .expect("request");
        let (s, h, v) = answer(&api, req).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}: {v}");
        assert_eq!(h[header::ALLOW], allow, "{method} {uri}");
        assert_eq!(
            h[header::CONTENT_TYPE],
            "application/json",
            "{method} {uri}"
        );
        let error = v["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&format!("method {method} is not allowed"))
                && error.contains(&allow.replace(',', ", ")),
            "{method} {uri}: {v}"
        );
    }
    stop.cancel();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn query_parameters_are_typed_and_every_bad_one_is_named() {
    let env = TestEnv::new("router_params");
    env.migrate().await;
    let (api, stop) = router(&env, "api").await;

    let (s, v) = call(
        &api,
        get("/v1/rollups/hourly?kind=http&from=yesterday&limit=0&format=xml&colour=red"),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(named(&v), ["from", "limit", "format", "colour"], "{v}");
    assert!(v["errors"][3]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("filters for this table: service")));

    // a lost `+` in an offset gets its hint; a missing kind is named
    let (s, v) = call(
        &api,
        get("/v1/rollups/daily?to=2026-03-01T10:00:00%2001:00"),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(named(&v), ["kind", "to"], "{v}");
    assert!(v["errors"][1]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("%2B")));

    // one parameter twice is refused by name, not silently picked
    let (s, v) = call(
        &api,
        get("/v1/rollups/daily?kind=http&from=2026-03-01&from=2026-03-02"),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(
        (v["param"].as_str(), v["reason"].as_str()),
        (Some("from"), Some("is given more than once"))
    );
    // so is a filter given twice: it is not an OR, and the last does not win
    for uri in [
        "/v1/rollups/hourly?kind=http&service=a&service=b",
        "/v1/alerts?colour=a&colour=b",
    ] {
        let (s, v) = call(&api, get(uri)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}: {v}");
        assert!(
            v["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("is given more than once")),
            "{uri}: {v}"
        );
    }

    // dimension filters and dates pass; the answer names its range
    let (s, v) = call(
        &api,
        get("/v1/rollups/daily?kind=http&service=api&from=2026-03-01&to=2026-03-02&format=json&limit=5"),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["rows"], Value::Array(vec![]));
    // in the rows' format: Z, to the second
    assert_eq!(
        (v["from"].as_str(), v["to"].as_str()),
        (Some("2026-03-01T00:00:00Z"), Some("2026-03-02T00:00:00Z"))
    );
    let (_, v) = call(
        &api,
        get("/v1/rollups/hourly?kind=http&from=2026-03-01T11:00:00%2B01:00&to=2026-03-01T12:00:00.5Z"),
    )
    .await;
    assert_eq!(
        (v["from"].as_str(), v["to"].as_str()),
        (
            Some("2026-03-01T10:00:00Z"),
            Some("2026-03-01T12:00:00.500Z")
        ),
        "{v}"
    );
    // the defaults are whole seconds
    let (_, v) = call(&api, get("/v1/rollups/hourly?kind=http")).await;
    for end in ["from", "to"] {
        let t = v[end].as_str().unwrap_or_default();
        assert!(t.len() == 20 && t.ends_with('Z'), "{end}: {v}");
    }

    let (s, v) = call(&api, get("/v1/alerts?state=burning&limit=99999999&since=1")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(named(&v), ["since", "state", "limit"], "{v}");
    assert_eq!(
        call(&api, get("/v1/alerts?state=open&from=2026-03-01"))
            .await
            .0,
        StatusCode::OK
    );
    stop.cancel();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_answers_without_a_socket() {
    let mut env = TestEnv::new("router_ingest");
    env.settings.ingest.max_body_bytes = 4_096;
    env.migrate().await;
    let (api, stop) = router(&env, "ingest").await;
    let now = chrono::Utc::now().timestamp_millis();

    let (s, v) = call(
        &api,
        post("/v1/events", r#"[{"kind":"http","service":"a"}]"#),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["errors"][0]["field"].is_string(), "{v}");

    let big = format!(
        "[{}]",
        vec![common::http_event(0, now).to_string(); 100].join(",")
    );
    assert_eq!(
        call(&api, post("/v1/events", big)).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );

    let one = Value::Array(vec![common::http_event(1, now)]).to_string();
    let (s, v) = call(&api, post("/v1/events", one.clone())).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let mut r = env.redis().await;
    assert_eq!(common::stream_total_on(&mut r, &env).await, 1);

    // media types: JSON (also as text/plain, what sendBeacon sends, and
    // without any), NDJSON; anything else is 415, unread and unwritten
    let with_type = |ct: Option<&str>, body: String| {
        let mut req = Request::post("/v1/events");
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        req.body(Body::from(body)).expect("request")
    };
    let ndjson = format!(
        "{}\n{}\n",
        common::http_event(2, now),
        common::http_event(3, now)
    );
    for (ct, body, n) in [
        (Some("text/plain;charset=UTF-8"), one.clone(), 1),
        (Some("Application/JSON; charset=utf-8"), one.clone(), 1),
        (None, one.clone(), 1),
        (Some("application/x-ndjson"), ndjson, 2),
    ] {
        let (s, v) = call(&api, with_type(ct, body)).await;
        assert_eq!(
            (s, v["accepted"].as_u64()),
            (StatusCode::ACCEPTED, Some(n)),
            "{ct:?}: {v}"
        );
    }
    assert_eq!(common::stream_total_on(&mut r, &env).await, 6);
    let refused = flowmeter::telemetry::metrics::REQUESTS_UNSUPPORTED_MEDIA_TYPE.get();
    for ct in [
        "application/x-www-form-urlencoded",
        "application/xml",
        "multipart/form-data; boundary=x",
    ] {
        let (s, h, v) = answer(&api, with_type(Some(ct), one.clone())).await;
        assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct}: {v}");
        assert_eq!(h[header::CONTENT_TYPE], "application/json");
        assert_eq!(v["content_type"], ct);
        assert_eq!(v["accepted"], 0);
        assert_eq!(
            v["supported"],
            serde_json::json!([
                "application/json",
                "application/x-ndjson",
                "application/jsonl",
                "text/plain"
            ])
        );
        let error = v["error"].as_str().unwrap_or_default();
        assert!(error.contains("nothing was written"), "{v}");
        // the usual way to get here: curl -d without -H
        assert_eq!(
            error.contains("curl -d"),
            ct.contains("form-urlencoded"),
            "{v}"
        );
    }
    assert!(flowmeter::telemetry::metrics::REQUESTS_UNSUPPORTED_MEDIA_TYPE.get() >= refused + 3);
    assert_eq!(
        common::stream_total_on(&mut r, &env).await,
        6,
        "nothing written"
    );
    stop.cancel();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_guard_every_route_but_health() {
    let mut env = TestEnv::new("router_auth");
    env.settings.auth.tokens = common::read_and_ingest_tokens("r-secret", "i-secret");
    env.migrate().await;
    let (api, stop) = router(&env, "ingest,api").await;
    assert_eq!(call(&api, get("/healthz")).await.0, StatusCode::OK);
    assert_eq!(
        call(&api, get("/v1/rollups/daily?kind=http")).await.0,
        StatusCode::UNAUTHORIZED
    );
    // the ingest token cannot read, the read token can
    assert_eq!(
        call(&api, get("/v1/rollups/daily?kind=http&token=i-secret"))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&api, get("/v1/rollups/daily?kind=http&token=r-secret"))
            .await
            .0,
        StatusCode::OK
    );
    let one = Value::Array(vec![common::http_event(1, 0)]).to_string();
    assert_eq!(
        call(&api, post("/v1/events", one)).await.0,
        StatusCode::UNAUTHORIZED
    );
    stop.cancel();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_no_replica_confirms_is_stored_and_answered_unknown() {
    // the shared Redis has no replica: WAIT 1 answers 0 once its timeout passes
    let mut env = TestEnv::new("router_wait");
    env.settings.ingest.wait_replicas = 1;
    env.settings.ingest.wait_replicas_timeout_ms = 150;
    env.migrate().await;
    let (api, stop) = router(&env, "ingest,api").await;
    let now = chrono::Utc::now().timestamp_millis();
    let body: String =
        Value::Array((0..3).map(|i| common::http_event(i, now)).collect()).to_string();
    let send = |key: Option<&str>| {
        let mut req = Request::post("/v1/events").header("content-type", "application/json");
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        let req = req.body(Body::from(body.clone())).expect("request");
        let api = api.clone();
        async move {
            let started = std::time::Instant::now();
            let resp = api.oneshot(req).await.expect("infallible");
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .expect("body");
            let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            (status, retry_after, json, started.elapsed())
        }
    };
    let mut r = env.redis().await;

    // stored, but answered 503 unknown after the WAIT timeout, with Retry-After
    let (status, retry_after, v, took) = send(Some("wait-1")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["outcome"], "unknown", "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("0 of the 1 replicas") && e.contains("Idempotency-Key")),
        "{v}"
    );
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(took >= std::time::Duration::from_millis(150), "{took:?}");
    assert_eq!(common::stream_total_on(&mut r, &env).await, 3, "stored");

    // a retry with the key writes nothing and waits again; without a key it
    // is a new request (stored a second time, as the answer said)
    let (status, _, v, _) = send(Some("wait-1")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(common::stream_total_on(&mut r, &env).await, 3, "replayed");
    let (status, _, v, _) = send(None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(common::stream_total_on(&mut r, &env).await, 6);

    // counted in /metrics (this process) and in status (Redis, all processes)
    let (_, text) = call(&api, get("/metrics")).await;
    let counted = flowmeter::telemetry::metrics::value_in(
        text.as_str().unwrap_or_default(),
        "flowmeter_ingest_requests_not_replicated_total",
    );
    assert!(counted.is_some_and(|n| n >= 3.0), "{text}");
    let (s, v) = call(&api, get("/v1/status")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["ingest"]["not_replicated"], 3, "{}", v["ingest"]);
    stop.cancel();

    // and `serve` refuses the setting on this Redis at start, saying why
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let roles: Roles = "ingest".parse().expect("roles");
    let stop = CancellationToken::new();
    let _stop_on_drop = stop.clone().drop_guard();
    let err = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        app::serve(env.settings.clone(), roles, Some(listener), stop),
    )
    .await
    .expect("serve returns")
    .expect_err("serve refuses wait_replicas on a Redis without replicas");
    assert!(
        err.to_string()
            .contains("ingest.wait_replicas = 1, but this Redis has 0 connected replica"),
        "{err}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn status_answers_a_plain_503_with_retry_after_when_redis_does_not() {
    // Redis through a proxy that can hold its replies back
    let proxy =
        common::TcpProxy::start("127.0.0.1:0", "127.0.0.1:6379".parse().expect("addr")).await;
    let mut env = TestEnv::new("router_status_503");
    env.settings.redis.url = format!("redis://{}", proxy.addr);
    env.settings.redis.command_timeout_ms = 400;
    env.settings.query.retry_after_secs = 7;
    env.migrate().await;
    let (api, stop) = router(&env, "api").await;
    assert_eq!(call(&api, get("/v1/status")).await.0, StatusCode::OK);

    proxy.hold_replies(true);
    let (s, h, v) = answer(&api, get("/v1/status")).await;
    proxy.hold_replies(false);
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(h[header::RETRY_AFTER], "7", "query.retry_after_secs");
    assert_eq!(v["retry_after_secs"], 7, "{v}");
    // a generic reason (Redis' own text is logged), and nothing of ingest
    assert_eq!(
        v["error"],
        "cannot read the streams' status from Redis right now (the server log says why); retry after Retry-After seconds"
    );
    let keys: Vec<&str> = v
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(keys, ["error", "retry_after_secs"], "{v}");
    stop.cancel();
    env.cleanup().await;
}

/// The JSON keys of each object in `rows` of a raw answer, in the order
/// they were written (serde_json's `Value` would sort them).
fn row_keys_as_written(text: &str) -> Vec<Vec<String>> {
    struct Keys(Vec<String>);
    impl<'de> serde::Deserialize<'de> for Keys {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut m: A,
                ) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some((k, _)) = m.next_entry::<String, serde::de::IgnoredAny>()? {
                        keys.push(k);
                    }
                    Ok(Keys(keys))
                }
            }
            d.deserialize_map(V)
        }
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        rows: Vec<Keys>,
    }
    let a: Answer = serde_json::from_str(text).expect("a rollup answer");
    a.rows.into_iter().map(|k| k.0).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn rollup_rows_keep_column_order_and_csv_lines_end_in_crlf() {
    let env = TestEnv::new("router_rows");
    env.migrate().await;
    let store = env.store().await;
    sqlx::query(
        "INSERT INTO http_hourly (service, endpoint, method, hour, requests, duration_sum_ms) VALUES \
         ('a,b', '/x', 'GET', '2026-03-01 10:00:00', 1, 1.5), \
         ('c', '/y \"q\"', 'GET', '2026-03-01 11:00:00', 2, 2.5)",
    )
    .execute(store.pool())
    .await
    .expect("rows");
    let (api, stop) = router(&env, "api").await;
    let q = "/v1/rollups/hourly?kind=http&from=2026-03-01&to=2026-03-02";

    // JSON: each row's keys in the order of `columns` (the table's), not sorted
    let resp = api.clone().oneshot(get(q)).await.expect("infallible");
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    let text = String::from_utf8_lossy(&bytes);
    let v: Value = serde_json::from_str(&text).expect("json");
    let columns: Vec<String> = serde_json::from_value(v["columns"].clone()).expect("columns");
    assert_eq!(
        columns[..4],
        ["service", "endpoint", "method", "hour"],
        "{v}"
    );
    let rows = row_keys_as_written(&text);
    assert_eq!(rows.len(), 2, "{text}");
    for keys in rows {
        assert_eq!(keys, columns, "{text}");
    }

    // CSV: RFC 4180, every line ends in CRLF, quoted fields quoted
    let (s, h, v) = answer(&api, get(&format!("{q}&format=csv"))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h[header::CONTENT_TYPE], "text/csv; charset=utf-8");
    let csv = v.as_str().expect("text");
    let lines: Vec<&str> = csv.split_inclusive('\n').collect();
    assert_eq!(lines.len(), 3, "{csv:?}");
    assert!(lines.iter().all(|l| l.ends_with("\r\n")), "{csv:?}");
    assert!(
        lines[0].starts_with("service,endpoint,method,hour,"),
        "{csv:?}"
    );
    assert!(
        lines[1].starts_with("\"a,b\",/x,GET,2026-03-01T10:00:00Z,"),
        "{csv:?}"
    );
    assert!(lines[2].starts_with("c,\"/y \"\"q\"\"\",GET,"), "{csv:?}");

    // cut by `limit`: said in the body and in the headers, with a cursor
    let (_, h, v) = answer(&api, get(&format!("{q}&limit=1"))).await;
    assert_eq!(
        (&v["truncated"], v["count"].as_u64()),
        (&Value::Bool(true), Some(1))
    );
    assert!(v["cursor"].is_string(), "{v}");
    let (_, h_csv, _) = answer(&api, get(&format!("{q}&limit=1&format=csv"))).await;
    for h in [h, h_csv] {
        assert_eq!(h["x-flowmeter-truncated"], "true");
        assert!(h.contains_key("x-flowmeter-cursor"));
    }
    stop.cancel();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn read_endpoints_answer_listed_origins_with_cors() {
    let mut env = TestEnv::new("router_read_cors");
    env.settings.auth.tokens = common::read_and_ingest_tokens("r-secret", "i-secret");
    env.settings.query.cors_origins = vec!["https://grafana.example.com".into()];
    env.settings.query.cors_max_age_secs = 120;
    env.migrate().await;
    let (api, stop) = router(&env, "ingest,api").await;
    let listed = "https://grafana.example.com";
    let request = |method: &str, uri: &str, origin: &str| {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "authorization")
            .body(Body::empty())
            .expect("request")
    };
    for uri in [
        "/v1/rollups/hourly",
        "/v1/rollups/daily",
        "/v1/status",
        "/v1/alerts",
        "/v1/events/search",
    ] {
        // the preflight: no token needed, the CORS headers of the read endpoints
        let (s, h, _) = answer(&api, request("OPTIONS", uri, listed)).await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{uri}");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], listed, "{uri}");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, OPTIONS");
        assert!(h[header::ACCESS_CONTROL_ALLOW_HEADERS]
            .to_str()
            .is_ok_and(|v| v.contains("authorization")));
        assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "120");
        // an unlisted origin's preflight gets none, so the browser stops there
        let (s, h, _) = answer(&api, request("OPTIONS", uri, "https://evil.example.net")).await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{uri}");
        assert!(
            !h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN),
            "{uri}"
        );
    }
    // the answer, errors included, carries them to a listed origin
    let q = "/v1/rollups/daily?kind=http";
    let (s, h, _) = answer(&api, request("GET", &format!("{q}&token=r-secret"), listed)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], listed);
    assert!(h[header::ACCESS_CONTROL_EXPOSE_HEADERS]
        .to_str()
        .is_ok_and(|v| v.contains("x-flowmeter-cursor") && v.contains("retry-after")));
    let (s, h, _) = answer(&api, request("GET", q, listed)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], listed);
    // an unlisted origin is answered (a read changes nothing) without them
    let (s, h, _) = answer(
        &api,
        request(
            "GET",
            &format!("{q}&token=r-secret"),
            "https://evil.example.net",
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
    // ingest keeps its own list: this origin may read, not send
    let (s, _, v) = answer(&api, request("POST", "/v1/events?token=i-secret", listed)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("ingest.cors_origins")),
        "{v}"
    );
    stop.cancel();
    env.cleanup().await;
}
