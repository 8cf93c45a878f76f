//! Ingest: every kind of bad input gets a clear error naming the event, field
//! and reason, and nothing else is lost; oversized bodies get 413; an
//! unreachable Redis gets 503 with Retry-After; a request is all or nothing.

use crate::common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

async fn stream_total(env: &TestEnv) -> i64 {
    stream_total_on(&mut env.redis().await, env).await
}

async fn post(client: &reqwest::Client, url: &str, ct: &str, body: Vec<u8>) -> (u16, Value) {
    let r = client
        .post(url)
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .expect("send");
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// (body, content type, index of the first error, its field)
type Case = (Vec<u8>, &'static str, Option<u64>, Option<&'static str>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_named_and_loses_nothing_else() {
    let env = TestEnv::new("ingest_bad");
    let server = env.start("ingest").await;
    let client = http_client();
    let url = server.url("/v1/events");
    let good = http_event(1, 1_772_359_200_000);

    let with = |field: &str, v: Value| {
        let mut e = good.clone();
        e[field] = v;
        e
    };
    let without = |field: &str| {
        let mut e = good.clone();
        e.as_object_mut().map(|o| o.remove(field));
        e
    };
    // (body, content-type, expected index, expected field)
    let cases: Vec<Case> = vec![
        (
            b"{\"kind\": \"http\",".to_vec(),
            "application/json",
            None,
            None,
        ),
        (
            b"{not json}\n".to_vec(),
            "application/x-ndjson",
            Some(0),
            None,
        ),
        (
            json!([good, with("status", json!("200"))])
                .to_string()
                .into_bytes(),
            "application/json",
            Some(1),
            Some("status"),
        ),
        (
            json!([without("service")]).to_string().into_bytes(),
            "application/json",
            Some(0),
            Some("service"),
        ),
        (
            json!([good, good, with("req_bytes", json!(-5))])
                .to_string()
                .into_bytes(),
            "application/json",
            Some(2),
            Some("req_bytes"),
        ),
        (
            json!([with("resp_bytes", json!(1e30))])
                .to_string()
                .into_bytes(),
            "application/json",
            Some(0),
            Some("resp_bytes"),
        ),
        (
            json!([with("duration_ms", json!(-0.5))])
                .to_string()
                .into_bytes(),
            "application/json",
            Some(0),
            Some("duration_ms"),
        ),
        (
            json!([with("kind", json!("smtp"))])
                .to_string()
                .into_bytes(),
            "application/json",
            Some(0),
            Some("kind"),
        ),
        (
            json!([without("kind")]).to_string().into_bytes(),
            "application/json",
            Some(0),
            Some("kind"),
        ),
        (
            json!([with("ts", json!("yesterday"))])
                .to_string()
                .into_bytes(),
            "application/json",
            Some(0),
            Some("ts"),
        ),
        (
            json!([with("surprise", json!(1))]).to_string().into_bytes(),
            "application/json",
            Some(0),
            Some("surprise"),
        ),
        (
            json!(42).to_string().into_bytes(),
            "application/json",
            None,
            None,
        ),
        (
            [good.to_string().as_bytes(), b"\n\xff\xfe{}\n"].concat(),
            "application/x-ndjson",
            Some(1),
            None,
        ),
    ];
    for (i, (body, ct, index, field)) in cases.into_iter().enumerate() {
        let (status, v) = post(&client, &url, ct, body).await;
        assert_eq!(status, 400, "case {i}: {v}");
        assert_eq!(v["accepted"], 0, "case {i}: {v}");
        let first = &v["errors"][0];
        assert_eq!(first["index"].as_u64(), index, "case {i}: {v}");
        assert_eq!(first["field"].as_str(), field, "case {i}: {v}");
        assert!(
            first["reason"].as_str().is_some_and(|r| r.len() > 5),
            "case {i}: {v}"
        );
    }
    assert_eq!(
        stream_total(&env).await,
        0,
        "a rejected request must write nothing"
    );

    // a bad ts says what it must be, not the schema's "oneOf"
    let (status, v) = post(
        &client,
        &url,
        "application/json",
        json!([good, with("ts", json!("yesterday"))])
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["errors"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["errors"][0]["index"], 1, "{v}");
    assert_eq!(v["errors"][0]["field"], "ts", "{v}");
    let reason = v["errors"][0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("RFC 3339")
            && reason.contains("epoch milliseconds")
            && reason.contains("yesterday")
            && !reason.contains("oneOf"),
        "{v}"
    );

    // Oversized body: 413, nothing written.
    let big = vec![b' '; env.settings.ingest.max_body_bytes + 1];
    let (status, _) = post(&client, &url, "application/json", big).await;
    assert_eq!(status, 413);

    // A good request still works and writes exactly its events.
    let batch: Vec<Value> = (0..25)
        .map(|i| http_event(i, 1_772_359_200_000 + i as i64))
        .collect();
    let (status, v) = post(
        &client,
        &url,
        "application/json",
        json!(batch).to_string().into_bytes(),
    )
    .await;
    assert_eq!((status, v["accepted"].as_u64()), (202, Some(25)), "{v}");
    let (status, v) = post(
        &client,
        &url,
        "application/json",
        good.to_string().into_bytes(),
    )
    .await;
    assert_eq!((status, v["accepted"].as_u64()), (202, Some(1)), "{v}");
    assert_eq!(stream_total(&env).await, 26);

    // Entries are readable by any client: fields kind, v, data.
    let mut r = env.redis().await;
    let mut found = false;
    for i in 0..env.settings.redis.shards {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(format!("{}:{{http:{i}}}", env.name))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut r)
            .await
            .expect("xrange");
        if let Some(e) = reply.ids.first() {
            assert_eq!(e.get::<String>("kind").as_deref(), Some("http"));
            assert_eq!(e.get::<String>("v").as_deref(), Some("1"));
            let data: Value =
                serde_json::from_str(&e.get::<String>("data").expect("data")).expect("json");
            assert_eq!(data["kind"], "http");
            found = true;
        }
    }
    assert!(found);
    server.stop().await;
    env.cleanup().await;
}

struct PrivateRedis(Child);
impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_means_503_with_retry_after() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr").port()
    };
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server is installed (scripts/services start)");
    let mut redis = PrivateRedis(child);
    let url = format!("redis://127.0.0.1:{port}");
    wait_until(Duration::from_secs(10), || {
        let url = url.clone();
        async move {
            match redis::Client::open(url.as_str()) {
                Ok(c) => c.get_multiplexed_async_connection().await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await;
    let mut env = TestEnv::new("ingest_503");
    env.settings.redis.url = url;
    env.settings.redis.command_timeout_ms = 1_000;
    let server = env.start("ingest").await;
    let client = http_client();
    let body = json!([http_event(1, 1_772_359_200_000)])
        .to_string()
        .into_bytes();
    let (status, _) = post(
        &client,
        &server.url("/v1/events"),
        "application/json",
        body.clone(),
    )
    .await;
    assert_eq!(status, 202);

    let _ = redis.0.kill();
    let _ = redis.0.wait();
    let r = client
        .post(server.url("/v1/events"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let v: Value = r.json().await.expect("json");
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("retry")),
        "{v}"
    );
    server.stop().await;
}
