//! `flowmeter replay`: rebuilding a range's rows from the streams, twice and
//! during live ingest, leaves them equal to an independent fresh computation;
//! a range retention no longer covers is refused.

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use flowmeter::app::{self, AppError};
use flowmeter::processor::rollup::{ReplayError, ReplayOptions};

const T0: i64 = 1_772_359_200_000; // 2026-03-01T10:00:00Z
const HOUR: i64 = 3_600_000;

/// `cluster::replay_on_a_cluster_equals_a_fresh_computation` runs the same
/// on a Redis Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_twice_during_live_ingest_equals_a_fresh_computation() {
    let mut env = TestEnv::new("replay");
    env.settings.redis.shards = 2;
    replay_twice_during_live_ingest(env).await;
}

/// The body of the replay test on `env`'s Redis (one server or a cluster):
/// rows damaged, replayed twice (library and CLI) during live ingest, end
/// equal to an independent rollup's.
pub(crate) async fn replay_twice_during_live_ingest(mut env: TestEnv) {
    let dir = tempfile::tempdir().expect("tempdir");
    use_copied_definitions(&mut env, dir.path());
    // late_rollup computes the same tables independently, from the start
    add_shadow_rollup(dir.path(), "beginning");
    env.migrate().await;
    let server = env.start("ingest,api,rollup").await;
    let client = http_client();
    let url = server.url("/v1/events");
    post_http_range(&client, &url, 0..4_000, T0, 4 * HOUR).await;
    let store = env.store().await;
    let settled = |n: u64| {
        let s = store.clone();
        move || {
            let s = s.clone();
            async move {
                scalar(&s, "SELECT SUM(requests) FROM http_hourly").await == n as i64
                    && scalar(&s, "SELECT SUM(requests) FROM late_hourly").await == n as i64
            }
        }
    };
    wait_until(Duration::from_secs(30), settled(4_000)).await;

    // damage the rows of hours 1-2 and the day: what a bug or a bad manual fix does
    for sql in [
        "UPDATE http_hourly SET requests = requests + 1000, bytes_out = 0 WHERE hour = '2026-03-01 11:00:00'",
        "DELETE FROM http_hourly WHERE hour = '2026-03-01 12:00:00' AND method = 'POST'",
        "UPDATE http_daily SET requests = 1, p95_ms = NULL",
    ] {
        sqlx::query(sql).execute(store.pool()).await.expect(sql);
    }
    assert_ne!(
        table_fingerprint(&store, "http_hourly").await,
        table_fingerprint(&store, "late_hourly").await
    );

    // live ingest keeps going, with events inside the replayed range
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(4_000));
    let live = {
        let (stop, sent, client, url) = (stop.clone(), sent.clone(), client.clone(), url.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let from = sent.load(Ordering::SeqCst);
                post_http_range(&client, &url, from..from + 200, T0, 4 * HOUR).await;
                sent.store(from + 200, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };
    let opts = ReplayOptions {
        from_ms: T0 + HOUR,
        to_ms: T0 + 3 * HOUR,
        skew_ms: HOUR,
    };
    let first = app::replay(&env.settings, "http_rollup", &opts, None)
        .await
        .expect("replay");
    assert!(first.entries_scanned >= 4_000, "{first:?}");
    assert_eq!(first.tables[0].0, "http_hourly");
    assert_eq!(first.tables[0].1, "2026-03-01T11:00:00Z");
    assert_eq!(first.tables[0].2, "2026-03-01T13:00:00Z");
    assert_eq!(first.tables[1].1, "2026-03-01T00:00:00Z", "days widen");

    // the second run goes through the CLI, still during ingest
    let cfg = tempfile::tempdir().expect("tempdir");
    let config = env.write_config(cfg.path());
    let text = cli_ok(
        &config,
        &[
            "replay",
            "--processor",
            "http_rollup",
            "--from",
            "2026-03-01T11:00:00Z",
            "--to",
            "2026-03-01T13:00:00Z",
            "--quiet",
        ],
    );
    assert!(
        text.contains("http_hourly") && text.contains("entries scanned"),
        "{text}"
    );

    stop.store(true, Ordering::SeqCst);
    live.await.expect("live ingest");
    let total = sent.load(Ordering::SeqCst);
    assert!(total > 4_000);
    wait_until(Duration::from_secs(60), settled(total)).await;
    server.stop().await;
    assert_same_rows(&store, "http_hourly", "late_hourly").await;
    assert_same_rows(&store, "http_daily", "late_daily").await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_refuses_what_retention_dropped() {
    let mut env = TestEnv::new("replay_gap");
    env.settings.redis.shards = 1;
    env.migrate().await;
    let mut r = env.redis().await;
    let stream = format!("{}:{{http:0}}", env.name);
    let now = chrono::Utc::now().timestamp_millis();
    let old = now - 72 * HOUR;
    for i in 0..10 {
        let _: String = redis::cmd("XADD")
            .arg(&stream)
            .arg(format!("{}-0", old + i))
            .arg("data")
            .arg(http_event(i as u64, old).to_string())
            .query_async(&mut r)
            .await
            .expect("xadd");
    }
    let _: u64 = redis::cmd("XTRIM")
        .arg(&stream)
        .arg("MINID")
        .arg(format!("{}-0", old + 5))
        .query_async(&mut r)
        .await
        .expect("xtrim");
    let opts = ReplayOptions {
        from_ms: old - 24 * HOUR,
        to_ms: now,
        skew_ms: 0,
    };
    match app::replay(&env.settings, "http_rollup", &opts, None).await {
        Err(AppError::Replay(e @ ReplayError::NotRetained { .. })) => {
            let msg = e.to_string();
            assert!(msg.contains("retention no longer covers"), "{msg}");
            assert!(msg.contains(&stream), "{msg}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // a range whose windows (hours and days) start after the trimmed entries is fine
    let later = ReplayOptions {
        from_ms: now - HOUR,
        ..opts.clone()
    };
    app::replay(&env.settings, "http_rollup", &later, None)
        .await
        .expect("covered range");
    match app::replay(&env.settings, "nope", &later, None).await {
        Err(e @ AppError::UnknownProcessor(..)) => {
            assert!(e.to_string().contains("http_rollup"), "{e}")
        }
        other => panic!("expected unknown processor, got {other:?}"),
    }
    env.cleanup().await;
}
