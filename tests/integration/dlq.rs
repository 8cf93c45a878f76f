//! A poison entry (undecodable data) goes to the group's dead-letter stream
//! with the error and the original, is acknowledged, and never blocks its
//! shard; `flowmeter dlq` lists, retries and purges it.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_entries_are_dead_lettered_and_the_shard_moves_on() {
    let mut env = TestEnv::new("dlq");
    env.settings.redis.shards = 1;
    env.settings.rollup.flush_interval_ms = 100;
    env.migrate().await;
    let server = env.start("ingest,rollup").await;
    let client = http_client();
    let stream = format!("{}:{{http:0}}", env.name);
    let mut r = env.redis().await;
    let good = |from: u64| {
        (from..from + 50)
            .map(|i| http_event(i, 1_772_359_200_000).to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        post_ndjson(&client, &server.url("/v1/events"), good(0))
            .await
            .0,
        202
    );
    // A foreign producer writes garbage between good events.
    let poison_id: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("kind")
        .arg("http")
        .arg("v")
        .arg(1)
        .arg("data")
        .arg("{not json")
        .query_async(&mut r)
        .await
        .expect("xadd");
    assert_eq!(
        post_ndjson(&client, &server.url("/v1/events"), good(50))
            .await
            .0,
        202
    );

    let store = env.store().await;
    wait_until(Duration::from_secs(20), || {
        let s = store.clone();
        async move { scalar(&s, "SELECT SUM(requests) FROM http_hourly").await == 100 }
    })
    .await;
    let dlq = format!("{}:dlq:rollup", env.name);
    wait_until(Duration::from_secs(10), || {
        let mut r = r.clone();
        let dlq = dlq.clone();
        async move {
            redis::cmd("XLEN")
                .arg(&dlq)
                .query_async::<u64>(&mut r)
                .await
                .unwrap_or(0)
                == 1
        }
    })
    .await;
    // acknowledged: nothing pending on the shard
    wait_until(Duration::from_secs(10), || {
        let mut r = r.clone();
        let stream = stream.clone();
        async move {
            let p: redis::Value = redis::cmd("XPENDING")
                .arg(&stream)
                .arg("rollup")
                .query_async(&mut r)
                .await
                .expect("xpending");
            matches!(p, redis::Value::Array(v) if v.first() == Some(&redis::Value::Int(0)))
        }
    })
    .await;

    let dir = tempfile::tempdir().expect("tmp");
    let config = env.write_config(dir.path());
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_flowmeter"))
            .arg("--config")
            .arg(&config)
            .arg("dlq")
            .args(args)
            .output()
            .expect("flowmeter dlq");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, list, err) = cli(&["list"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(list.contains(&poison_id), "{list}");
    assert!(list.contains("http_rollup"), "{list}");
    assert!(list.contains("not a JSON object"), "{list}");
    assert!(list.contains("1 of 1 dead letters"), "{list}");

    // retry re-appends it to its stream; still undecodable, it comes back
    // to the dead-letter stream with a new original id
    let (code, out, err) = cli(&["retry", "--all"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("1 dead letters re-appended"), "{out}");
    wait_until(Duration::from_secs(10), || {
        let mut r = r.clone();
        let dlq = dlq.clone();
        let poison_id = poison_id.clone();
        async move {
            let v: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                .arg(&dlq)
                .arg("-")
                .arg("+")
                .query_async(&mut r)
                .await
                .unwrap_or_default();
            v.len() == 1 && v[0].1.iter().any(|(k, id)| k == "id" && *id != poison_id)
        }
    })
    .await;
    assert_eq!(
        scalar(&store, "SELECT SUM(requests) FROM http_hourly").await,
        100
    );

    let (code, _, err) = cli(&["purge"]);
    assert_eq!(code, Some(1), "purge without --yes must refuse");
    assert!(err.contains("--yes"), "{err}");
    let (code, out, _) = cli(&["purge", "--yes"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("1 dead letters"), "{out}");
    server.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeatedly_delivered_entries_are_applied_alone_and_only_killers_are_dead_lettered() {
    let mut env = TestEnv::new("dlq_deliveries");
    env.settings.redis.shards = 1;
    env.settings.rollup.max_deliveries = 5;
    env.migrate().await;
    let stream = format!("{}:{{http:0}}", env.name);
    let mut r = env.redis().await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let id: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("kind")
            .arg("http")
            .arg("v")
            .arg(1)
            .arg("data")
            .arg(http_event(i, 1_772_359_200_000).to_string())
            .query_async(&mut r)
            .await
            .expect("xadd");
        ids.push(id);
    }
    // A crash loop: the shard's consumer takes 4 entries and re-reads them
    // from its pending list four times without acknowledging (5 deliveries;
    // the worker's own read makes 6, past max_deliveries).
    crash_loop(&mut r, &stream, "rollup", "http:0", 4, 4).await;
    // …and the first of them already killed three workers applying it alone
    let _: i64 = redis::cmd("HINCRBY")
        .arg(format!("{}:suspects:rollup", env.name))
        .arg(format!("{stream}/{}", ids[0]))
        .arg(3)
        .query_async(&mut r)
        .await
        .expect("hincrby");

    let server = env.start("rollup").await;
    let store = env.store().await;
    let dlq = format!("{}:dlq:rollup", env.name);
    wait_until(Duration::from_secs(20), || {
        let s = store.clone();
        async move { scalar(&s, "SELECT SUM(requests) FROM http_hourly").await == 9 }
    })
    .await;
    let letters: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(&dlq)
        .arg("-")
        .arg("+")
        .query_async(&mut r)
        .await
        .expect("xrange");
    assert_eq!(letters.len(), 1, "only the killer: {letters:?}");
    let field = |k: &str| {
        letters[0]
            .1
            .iter()
            .find(|(f, _)| f == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(field("id"), ids[0]);
    assert!(
        field("error").contains("attempts to apply it alone"),
        "{}",
        field("error")
    );
    assert!(field("data").contains("svc"));
    server.stop().await;
    let pending: (u64, Option<String>, Option<String>, redis::Value) = redis::cmd("XPENDING")
        .arg(&stream)
        .arg("rollup")
        .query_async(&mut r)
        .await
        .expect("xpending");
    assert_eq!(pending.0, 0, "everything acknowledged");
    let left: u64 = redis::cmd("HLEN")
        .arg(format!("{}:suspects:rollup", env.name))
        .query_async(&mut r)
        .await
        .expect("hlen");
    assert_eq!(left, 0, "attempt counters are cleared once committed");
    env.cleanup().await;
}
