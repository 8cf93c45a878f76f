//! `GET /metrics` of every role: `promtool check metrics` accepts each
//! scrape, the contract's names are there with figures that agree with
//! Redis (a held-back group's lag is XINFO GROUPS' lag, its lag age grows
//! with no new traffic), and OpenMetrics is served when asked for.
//!
//! The servers run in this test's process, so the process-wide series
//! (counters, this process' workers) of one role's scrape include what the
//! others did: per-role figures are checked where only that role makes them.

use crate::common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use flowmeter::telemetry::metrics::value_in;

/// The scrape of `server` (Prometheus text unless `accept` says otherwise):
/// (content type, body).
async fn scrape(
    client: &reqwest::Client,
    server: &Server,
    accept: Option<&str>,
) -> (String, String) {
    let mut req = client.get(server.url("/metrics"));
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let resp = req.send().await.expect("scrape");
    assert_eq!(resp.status(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (ct, resp.text().await.expect("body"))
}

/// `promtool check metrics` on `text`: its complaints, empty when clean.
fn promtool(text: &str) -> String {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (scripts/services test-deps installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        String::new()
    } else {
        format!("exit {:?}: {said}", out.status.code())
    }
}

/// XINFO GROUPS' lag of `group` on `stream`.
async fn xinfo_lag(r: &mut redis::aio::MultiplexedConnection, stream: &str, group: &str) -> u64 {
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(r)
        .await
        .expect("xinfo groups");
    groups
        .iter()
        .find(
            |g| matches!(g.get("name"), Some(redis::Value::BulkString(n)) if n == group.as_bytes()),
        )
        .and_then(|g| match g.get("lag") {
            Some(redis::Value::Int(n)) => Some(*n as u64),
            _ => None,
        })
        .expect("the group's lag")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_serves_the_contract_and_promtool_accepts_it() {
    let mut env = TestEnv::new("metrics");
    env.settings.redis.shards = 2;
    env.settings.rollup.flush_interval_ms = 100;
    env.settings.metrics.pipeline_refresh_ms = 100;
    env.migrate().await;
    let roles = ["ingest", "api", "rollup", "hub"];
    let mut servers = Vec::new();
    for role in roles {
        servers.push(env.start(role).await);
    }
    let [ingest, api, rollup, hub] = &servers[..] else {
        unreachable!("four servers")
    };
    let client = http_client();
    let events: Vec<String> = (0..50)
        .map(|i| http_event(i, chrono::Utc::now().timestamp_millis()).to_string())
        .collect();
    let (code, _) = post_ndjson(&client, &ingest.url("/v1/events"), events.join("\n")).await;
    assert_eq!(code, 202);
    let store = env.store().await;
    wait_until(Duration::from_secs(20), || {
        let s = store.clone();
        async move { scalar(&s, "SELECT SUM(requests) FROM http_hourly").await == 50 }
    })
    .await;
    // a group that reads nothing: everything is lag, and its age grows
    let mut r = env.redis().await;
    let stream = format!("{}:{{http:0}}", env.name);
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("held")
        .arg("0")
        .query_async(&mut r)
        .await
        .expect("group");
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", hub.addr))
        .await
        .expect("websocket");

    for (role, server) in roles.iter().zip(&servers) {
        let (ct, text) = scrape(&client, server, None).await;
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{role}: {ct}");
        assert_eq!(promtool(&text), "", "{role}: promtool on:\n{text}");
        let build = format!(
            "flowmeter_build_info{{version=\"{}\",role=\"{role}\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(value_in(&text, &build), Some(1.0), "{role}:\n{text}");
        for name in [
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(
                value_in(&text, name).is_some_and(|v| v > 0.0),
                "{role}: {name}"
            );
        }
        // the pipeline gauges, read from Redis, by every role
        let held = format!("{{group=\"held\",stream=\"{stream}\",kind=\"http\"}}");
        let lag = value_in(&text, &format!("flowmeter_group_lag{held}"));
        assert_eq!(
            lag,
            Some(xinfo_lag(&mut r, &stream, "held").await as f64),
            "{role}:\n{text}"
        );
        let length = value_in(
            &text,
            &format!("flowmeter_stream_length{{stream=\"{stream}\",kind=\"http\"}}"),
        );
        assert_eq!(lag, length, "the held group has read nothing");
        assert_eq!(
            value_in(
                &text,
                "flowmeter_processor_workers{processor=\"http_rollup\"}"
            ),
            Some(1.0),
            "{role}"
        );
        for name in [
            "flowmeter_group_pending",
            "flowmeter_group_consumers",
            "flowmeter_group_oldest_pending_age_seconds",
        ] {
            assert!(
                text.contains(&format!("{name}{{group=\"rollup\",stream=\"{stream}\"")),
                "{role}: {name}"
            );
        }
        assert_eq!(
            value_in(&text, "flowmeter_group_dead_letters{group=\"rollup\"}"),
            Some(0.0),
            "{role}"
        );
        assert_eq!(
            value_in(&text, "flowmeter_metrics_streams_skipped"),
            Some(0.0),
            "{role}"
        );
    }

    let refused = client
        .post(ingest.url("/v1/events"))
        .header("content-type", "application/xml")
        .body("<event/>")
        .send()
        .await
        .expect("post");
    assert_eq!(refused.status(), 415);
    let (_, text) = scrape(&client, ingest, None).await;
    let refused = "flowmeter_ingest_requests_total{outcome=\"unsupported_media_type\"}";
    assert!(value_in(&text, refused).is_some_and(|v| v >= 1.0), "{text}");
    assert!(value_in(
        &text,
        "flowmeter_ingest_requests_total{outcome=\"accepted\"}"
    )
    .is_some_and(|v| v >= 1.0));
    assert!(
        value_in(&text, "flowmeter_events_ingested_total{kind=\"http\"}")
            .is_some_and(|v| v >= 50.0)
    );
    assert!(text
        .contains("flowmeter_ingest_request_duration_seconds_bucket{outcome=\"accepted\",le=\""));
    let (_, text) = scrape(&client, rollup, None).await;
    assert!(
        value_in(
            &text,
            "flowmeter_xadd_to_commit_seconds_count{processor=\"http_rollup\"}"
        )
        .is_some_and(|v| v >= 50.0),
        "{text}"
    );
    assert!(value_in(
        &text,
        "flowmeter_flush_duration_seconds_count{processor=\"http_rollup\"}"
    )
    .is_some_and(|v| v >= 1.0));
    assert!(value_in(&text, "flowmeter_processor_events_total{processor=\"http_rollup\",group=\"rollup\",outcome=\"applied\"}").is_some_and(|v| v >= 50.0));
    assert!(value_in(
        &text,
        "flowmeter_processor_flushes_total{processor=\"http_rollup\",outcome=\"ok\"}"
    )
    .is_some_and(|v| v >= 1.0));
    // this env's worker (other tests' workers share the process)
    let st = get_json(&client, api.url("/v1/status")).await;
    let worker = st["processors"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "http_rollup"))
        .and_then(|p| p["workers"][0]["worker"].as_str())
        .unwrap_or_else(|| panic!("no http_rollup worker in {st}"))
        .to_string();
    let of = |name: &str| {
        value_in(
            &text,
            &format!("{name}{{processor=\"http_rollup\",worker=\"{worker}\"}}"),
        )
    };
    assert_eq!(of("flowmeter_processor_owned_shards"), Some(2.0), "{text}");
    assert_eq!(of("flowmeter_processor_stalled"), Some(0.0));
    assert!(
        of("flowmeter_processor_last_commit_age_seconds").is_some_and(|a| (0.0..30.0).contains(&a))
    );
    let (_, text) = scrape(&client, hub, None).await;
    assert!(
        value_in(&text, "flowmeter_hub_connections").is_some_and(|v| v >= 1.0),
        "{text}"
    );
    assert!(value_in(&text, "flowmeter_hub_channels").is_some());
    assert!(value_in(&text, "flowmeter_hub_subjects").is_some());
    let _ = ws.close(None).await;

    // no new traffic: the held group's lag age grows between two scrapes
    let age_of = |text: &str| {
        value_in(text, &format!("flowmeter_group_lag_age_seconds{{group=\"held\",stream=\"{stream}\",kind=\"http\"}}")).unwrap_or(-1.0)
    };
    let first = age_of(&scrape(&client, api, None).await.1);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let second = age_of(&scrape(&client, api, None).await.1);
    assert!(
        first >= 0.0 && second >= first + 1.0,
        "{first} then {second}"
    );

    // OpenMetrics when the scrape asks for it, as Prometheus does
    let (ct, text) = scrape(
        &client,
        api,
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    )
    .await;
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(text.contains("flowmeter_group_lag{"));

    for s in servers {
        s.stop().await;
    }

    // a scrape storm costs Redis one read per metrics.pipeline_refresh_ms
    let mut slow = env.settings.clone();
    slow.metrics.pipeline_refresh_ms = 60_000;
    let api = start_with(slow, "api").await;
    let storm: Vec<_> = (0..30)
        .map(|_| {
            let (c, url) = (client.clone(), api.url("/metrics"));
            tokio::spawn(async move { c.get(url).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    for s in storm {
        assert_eq!(s.await.expect("scrape task").ok(), Some(200));
    }
    let (_, text) = scrape(&client, &api, None).await;
    assert_eq!(
        value_in(&text, "flowmeter_metrics_pipeline_reads_total"),
        Some(1.0),
        "{text}"
    );
    assert!(value_in(&text, "flowmeter_metrics_pipeline_age_seconds").is_some_and(|a| a >= 0.0));
    api.stop().await;
    env.cleanup().await;
}
