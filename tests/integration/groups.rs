//! Extra consumer groups: a rollup added later backfills from retained history
//! while live traffic continues and ends equal to the one that ran from the
//! start; `flowmeter groups` creates, moves, lists and deletes groups.

use crate::common;

use std::time::Duration;

use common::*;
use flowmeter::event::SchemaRegistry;
use flowmeter::groups::{self, GroupError};
use flowmeter::processor::ProcessorRegistry;
use flowmeter::stream::{Keys, Redis, StartFrom};

const T0: i64 = 1_772_359_200_000; // 2026-03-01T10:00:00Z

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollup_added_later_backfills_and_ends_equal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env = TestEnv::new("late_group");
    env.settings.redis.shards = 2;
    use_copied_definitions(&mut env, dir.path());
    env.migrate().await;
    let client = http_client();
    let store = env.store().await;
    let total = |n: i64| {
        let s = store.clone();
        move || {
            let s = s.clone();
            async move { scalar(&s, "SELECT SUM(requests) FROM http_hourly").await == n }
        }
    };

    // Phase 1: only the original rollup exists.
    let server = env.start("ingest,api,rollup").await;
    post_http_range(
        &client,
        &server.url("/v1/events"),
        0..3_000,
        T0,
        3 * 3_600_000,
    )
    .await;
    wait_until(Duration::from_secs(30), total(3_000)).await;
    server.stop().await;

    // Phase 2: a second rollup over the same events, in its own group and
    // tables, starting from the beginning of the retained history.
    add_shadow_rollup(dir.path(), "beginning");
    env.migrate().await;
    let server = env.start("ingest,api,rollup").await;
    // live traffic continues while the new group backfills
    post_http_range(
        &client,
        &server.url("/v1/events"),
        3_000..6_000,
        T0,
        3 * 3_600_000,
    )
    .await;
    wait_until(Duration::from_secs(60), total(6_000)).await;
    wait_until(Duration::from_secs(60), || {
        let s = store.clone();
        async move { scalar(&s, "SELECT SUM(requests) FROM late_hourly").await == 6_000 }
    })
    .await;
    server.stop().await;

    assert_same_rows(&store, "http_hourly", "late_hourly").await;
    assert_same_rows(&store, "http_daily", "late_daily").await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_created_moved_listed_and_deleted() {
    let mut env = TestEnv::new("groups_cli");
    env.settings.redis.shards = 2;
    let schemas = SchemaRegistry::load(&env.settings.paths.schemas).expect("schemas");
    let processors =
        ProcessorRegistry::load(&env.settings.paths.processors, &schemas).expect("processors");
    let redis = Redis::connect(REDIS_URL, Duration::from_secs(5))
        .await
        .expect("redis");
    let keys = Keys::new(env.name.clone(), 2);
    let mut r = env.redis().await;

    // entries at three known times on both shards
    let streams = groups::streams_for("ext", &["http".into()], &keys, &schemas, &processors)
        .expect("streams");
    assert_eq!(streams.len(), 2);
    for s in &streams {
        for (i, ms) in [T0, T0 + 60_000, T0 + 120_000].iter().enumerate() {
            let _: String = redis::cmd("XADD")
                .arg(s)
                .arg(format!("{ms}-0"))
                .arg("n")
                .arg(i)
                .query_async(&mut r)
                .await
                .expect("xadd");
        }
    }
    let read_all = |group: &'static str| {
        let streams = streams.clone();
        let mut r = r.clone();
        async move {
            let mut n = 0;
            for s in &streams {
                let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(group)
                    .arg("c1")
                    .arg("COUNT")
                    .arg(100)
                    .arg("STREAMS")
                    .arg(s)
                    .arg(">")
                    .query_async(&mut r)
                    .await
                    .expect("xreadgroup");
                n += reply.keys.iter().map(|k| k.ids.len()).sum::<usize>();
            }
            n
        }
    };

    // created at a time: only entries at or after it are delivered
    let from: StartFrom = "2026-03-01T10:01:00Z".parse().expect("time");
    let made = groups::create(&redis, &streams, "ext", from)
        .await
        .expect("create");
    assert_eq!(made.len(), 2);
    assert!(matches!(
        groups::create(&redis, &streams, "ext", StartFrom::Now).await,
        Err(GroupError::Exists { .. })
    ));
    assert_eq!(read_all("ext").await, 4, "two entries per shard from 10:01");

    // pending entries block a delete
    match groups::delete(&redis, &streams, "ext", &processors, false).await {
        Err(GroupError::Pending { pending, .. }) => assert_eq!(pending, 4),
        other => panic!("delete with pending entries: {other:?}"),
    }

    // reset to the beginning: everything is delivered again
    let moved = groups::reset(&redis, &streams, "ext", StartFrom::Beginning)
        .await
        .expect("reset");
    assert!(moved.iter().all(|c| c.after.as_deref() == Some("0-0")));
    assert_eq!(read_all("ext").await, 6);

    // the CLI lists it with its totals
    let cfg = tempfile::tempdir().expect("tempdir");
    let config = env.write_config(cfg.path());
    let text = cli_ok(&config, &["groups", "list"]);
    let line = text
        .lines()
        .find(|l| l.starts_with("ext "))
        .unwrap_or_else(|| panic!("no ext row:\n{text}"));
    let cells: Vec<&str> = line.split_whitespace().collect();
    // group, processors, shards, position, lag, lag age, pending, consumers, idle, dead letters
    assert_eq!(cells[1], "(external)", "{text}");
    assert_eq!(cells[2], "2", "{text}");
    assert_eq!(cells[6], "6", "pending: {text}");
    assert_eq!(cells[7], "1", "consumers: {text}");
    assert_eq!(
        cells[3], "2026-03-01T10:02:00Z",
        "position as a time: {text}"
    );

    // `groups reset` prints positions as times, not raw stream ids
    let text = cli_ok(
        &config,
        &[
            "groups",
            "reset",
            "ext",
            "--to",
            "2026-03-01T10:01:00Z",
            "--kind",
            "http",
        ],
    );
    assert!(
        text.contains("2026-03-01T10:02:00Z") && text.contains("2026-03-01T10:01:00Z"),
        "before (the last entry read) and after as times:\n{text}"
    );
    assert!(!text.contains("18446744073709551615"), "{text}");

    // a processor's group is protected
    let rollup_streams =
        groups::streams_for("rollup", &[], &keys, &schemas, &processors).expect("streams");
    assert_eq!(rollup_streams.len(), 4, "http and webrtc shards");
    assert!(matches!(
        groups::delete(&redis, &rollup_streams, "rollup", &processors, false).await,
        Err(GroupError::InUse { .. })
    ));

    // the CLI refuses with pending entries, and says what to do
    let out = cli(&config, &["groups", "delete", "ext", "--kind", "http"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("6 pending") && err.contains("--force"),
        "{err}"
    );

    // c1 "died": its entries go to c2
    let claimed = groups::claim(&redis, &streams, "ext", "c2", 0)
        .await
        .expect("claim");
    assert_eq!(claimed.iter().map(|c| c.claimed).sum::<u64>(), 6);
    let on_c2: Vec<(String, u64)> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(&streams[0])
        .arg("ext")
        .query_async::<Vec<std::collections::HashMap<String, redis::Value>>>(&mut r)
        .await
        .expect("consumers")
        .into_iter()
        .filter_map(|c| match (c.get("name"), c.get("pending")) {
            (Some(redis::Value::BulkString(n)), Some(redis::Value::Int(p))) => {
                Some((String::from_utf8_lossy(n).into_owned(), *p as u64))
            }
            _ => None,
        })
        .collect();
    assert!(on_c2.contains(&("c2".to_string(), 3)), "{on_c2:?}");
    assert!(on_c2.contains(&("c1".to_string(), 0)), "{on_c2:?}");

    let gone = groups::delete(&redis, &streams, "ext", &processors, true)
        .await
        .expect("forced delete");
    assert_eq!(gone.iter().map(|c| c.pending).sum::<u64>(), 6);
    assert!(matches!(
        groups::reset(&redis, &streams, "ext", StartFrom::Now).await,
        Err(GroupError::Missing(_))
    ));
    env.cleanup().await;
}
