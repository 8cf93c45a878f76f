//! Safe retention: age and length limits never trim what a group still needs;
//! only the hard cap does, and then every unread entry is counted; the
//! trimmer running inside `serve` loses nothing.

use crate::common;

use std::time::Duration;

use common::*;
use flowmeter::config::RetentionConfig;
use flowmeter::event::SchemaRegistry;
use flowmeter::processor::ProcessorRegistry;
use flowmeter::retention;
use flowmeter::stream::{Keys, Redis};

async fn xadd(r: &mut redis::aio::MultiplexedConnection, stream: &str, id: &str) {
    let _: String = redis::cmd("XADD")
        .arg(stream)
        .arg(id)
        .arg("data")
        .arg("{}")
        .query_async(r)
        .await
        .expect("xadd");
}

async fn read(
    r: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    group: &str,
    count: usize,
) -> Vec<String> {
    let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg("c")
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(r)
        .await
        .expect("xreadgroup");
    reply
        .keys
        .into_iter()
        .flat_map(|k| k.ids.into_iter().map(|i| i.id))
        .collect()
}

async fn ack(r: &mut redis::aio::MultiplexedConnection, stream: &str, group: &str, ids: &[String]) {
    let _: u64 = redis::cmd("XACK")
        .arg(stream)
        .arg(group)
        .arg(ids)
        .query_async(r)
        .await
        .expect("xack");
}

async fn xlen(r: &mut redis::aio::MultiplexedConnection, stream: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(stream)
        .query_async(r)
        .await
        .expect("xlen")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_stop_at_what_groups_need_and_the_hard_cap_counts_what_it_drops() {
    let env = TestEnv::new("retention");
    let redis = Redis::connect(REDIS_URL, Duration::from_secs(5))
        .await
        .expect("redis");
    let keys = Keys::new(env.name.clone(), env.settings.redis.shards);
    let mut r = env.redis().await;
    let stream = format!("{}:{{http:0}}", env.name);
    let now = chrono::Utc::now().timestamp_millis() as u64;
    let old = now - 10 * 86_400_000;
    for i in 0..100 {
        xadd(&mut r, &stream, &format!("{}-0", old + i)).await;
    }
    for i in 0..100 {
        xadd(&mut r, &stream, &format!("{}-0", now - 3_600_000 + i)).await;
    }
    for g in ["fast", "slow"] {
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg(g)
            .arg("0")
            .query_async(&mut r)
            .await
            .expect("group");
    }
    let all = read(&mut r, &stream, "fast", 1000).await;
    assert_eq!(all.len(), 200);
    ack(&mut r, &stream, "fast", &all).await;
    // slow: 30 delivered, 20 acked, 10 pending, 170 not yet read
    let first = read(&mut r, &stream, "slow", 30).await;
    ack(&mut r, &stream, "slow", &first[..20]).await;

    let week = RetentionConfig {
        max_age_secs: 7 * 86_400,
        ..RetentionConfig::default()
    };
    let plan = retention::plan(&redis, &stream, &week, now)
        .await
        .expect("plan");
    assert_eq!(plan.held_by.as_deref(), Some("slow"), "{plan:?}");
    assert_eq!(
        plan.trim_to.as_deref(),
        Some(first[20].as_str()),
        "{plan:?}"
    );
    // the limit wants 7 days; slow holds entries from 10 days ago: 3 days held
    assert!((3.0 * 86_400.0 - plan.held_secs).abs() < 1.0, "{plan:?}");
    assert!(plan.forced.is_empty());
    let done = retention::apply(&redis, &keys, &plan).await.expect("apply");
    assert_eq!(done.entries, 20);
    assert_eq!(xlen(&mut r, &stream).await, 180);
    // nothing slow still needs is gone: its pending entries and the rest
    let pending: (u64, Option<String>, Option<String>, redis::Value) = redis::cmd("XPENDING")
        .arg(&stream)
        .arg("slow")
        .query_async(&mut r)
        .await
        .expect("xpending");
    assert_eq!(pending.0, 10);
    assert_eq!(read(&mut r, &stream, "slow", 1000).await.len(), 170);

    // status and `trim --dry-run` name the group holding retention back
    let cfg_dir = tempfile::tempdir().expect("tempdir");
    let mut settings = env.settings.clone();
    settings.retention = week.clone();
    let config = cfg_dir.path().join("flowmeter.toml");
    std::fs::write(&config, toml::to_string(&settings).expect("toml")).expect("config");
    let text = cli_ok(&config, &["trim", "--dry-run"]);
    let row = text
        .lines()
        .find(|l| l.starts_with(&stream))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("slow"), "{text}");
    assert_eq!(
        xlen(&mut r, &stream).await,
        180,
        "a dry run changes nothing"
    );

    // once slow has acknowledged everything, the age limit applies fully
    let pending: Vec<String> = {
        let reply: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&stream)
            .arg("slow")
            .arg("-")
            .arg("+")
            .arg(1000)
            .query_async(&mut r)
            .await
            .expect("xpending");
        reply.ids.into_iter().map(|p| p.id).collect()
    };
    ack(&mut r, &stream, "slow", &pending).await;
    assert_eq!(pending.len(), 180);
    assert!(read(&mut r, &stream, "slow", 1000).await.is_empty());
    let plan = retention::plan(&redis, &stream, &week, now)
        .await
        .expect("plan");
    assert_eq!(plan.held_by, None, "{plan:?}");
    retention::apply(&redis, &keys, &plan).await.expect("apply");
    assert_eq!(
        xlen(&mut r, &stream).await,
        100,
        "the 10-day-old entries are gone"
    );

    // a group that reads nothing holds the length limit back…
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("stuck")
        .arg("0")
        .query_async(&mut r)
        .await
        .expect("group");
    let capped = RetentionConfig {
        max_age_secs: 0,
        max_len: 50,
        hard_max_len: 80,
        ..RetentionConfig::default()
    };
    let plan = retention::plan(&redis, &stream, &capped, now)
        .await
        .expect("plan");
    assert_eq!(plan.held_by.as_deref(), Some("stuck"), "{plan:?}");
    // …until the hard cap, which trims 20 entries stuck never read, and counts them
    assert_eq!(plan.forced.get("stuck"), Some(&20), "{plan:?}");
    assert_eq!(plan.forced.len(), 1, "fast and slow had read everything");
    retention::apply(&redis, &keys, &plan).await.expect("apply");
    assert_eq!(xlen(&mut r, &stream).await, 80);
    assert_eq!(read(&mut r, &stream, "stuck", 1000).await.len(), 80);
    let schemas = SchemaRegistry::load(&env.settings.paths.schemas).expect("schemas");
    let processors =
        ProcessorRegistry::load(&env.settings.paths.processors, &schemas).expect("processors");
    let status = flowmeter::status::gather(&redis, &keys, &schemas, &processors, None, &capped)
        .await
        .expect("status");
    let stuck = status
        .groups
        .iter()
        .find(|g| g.group == "stuck")
        .expect("stuck group");
    assert_eq!(stuck.unread_trimmed, 20);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trimmer_in_serve_loses_nothing() {
    let mut env = TestEnv::new("retention_serve");
    env.settings.redis.shards = 2;
    env.settings.retention.max_len = 20;
    env.settings.retention.interval_ms = 100;
    env.migrate().await;
    let server = env.start("ingest,api,rollup").await;
    let client = http_client();
    for batch in 0..10u64 {
        let body: Vec<String> = (batch * 200..(batch + 1) * 200)
            .map(|i| http_event(i, 1_772_359_200_000 + i as i64).to_string())
            .collect();
        let (code, _) = post_ndjson(&client, &server.url("/v1/events"), body.join("\n")).await;
        assert_eq!(code, 202);
    }
    let store = env.store().await;
    wait_until(Duration::from_secs(30), || {
        let s = store.clone();
        async move { scalar(&s, "SELECT SUM(requests) FROM http_hourly").await == 2_000 }
    })
    .await;
    let mut r = env.redis().await;
    let streams = [
        format!("{}:{{http:0}}", env.name),
        format!("{}:{{http:1}}", env.name),
    ];
    wait_until(Duration::from_secs(10), || {
        let mut r = r.clone();
        let streams = streams.clone();
        async move {
            let mut ok = true;
            for s in &streams {
                ok &= xlen(&mut r, s).await <= 20;
            }
            ok
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        scalar(&store, "SELECT SUM(requests) FROM http_hourly").await,
        2_000
    );
    assert!(
        metric(&client, &server, "flowmeter_retention_trimmed_total").await > 0.0,
        "the trimmer trimmed"
    );
    let _ = xlen(&mut r, &streams[0]).await;
    server.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_created_at_zero_on_an_empty_shard_is_not_decades_behind() {
    let env = TestEnv::new("retention_zero");
    let redis = Redis::connect(REDIS_URL, Duration::from_secs(5))
        .await
        .expect("redis");
    let keys = Keys::new(env.name.clone(), env.settings.redis.shards);
    let mut r = env.redis().await;
    let shard = |i: u32| format!("{}:{{http:{i}}}", env.name);
    let conn = r.clone();
    let create = |stream: String, group: &'static str| {
        let mut r = conn.clone();
        async move {
            let _: () = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg(group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut r)
                .await
                .expect("group");
        }
    };
    // `groups create audit --from 0` on empty shards; entries arrive on
    // shard 0 only, and audit reads and acknowledges them
    for i in 0..env.settings.redis.shards {
        create(shard(i), "audit").await;
    }
    for _ in 0..10 {
        xadd(&mut r, &shard(0), "*").await;
    }
    let got = read(&mut r, &shard(0), "audit", 100).await;
    ack(&mut r, &shard(0), "audit", &got).await;
    // another group created at 0 reads nothing
    create(shard(0), "idle").await;
    let now = chrono::Utc::now().timestamp_millis() as u64;
    let week = RetentionConfig {
        max_age_secs: 7 * 86_400,
        ..RetentionConfig::default()
    };
    // every entry is younger than a week: nothing is held back (measured
    // from 0-0, idle held it back by ~57 years)
    let plan = retention::plan(&redis, &shard(0), &week, now)
        .await
        .expect("plan");
    assert_eq!(
        (plan.held_by.as_deref(), plan.held_secs),
        (None, 0.0),
        "{plan:?}"
    );
    assert_eq!(
        plan.floor.as_deref(),
        got.first().map(String::as_str),
        "{plan:?}"
    );
    // the length limit: idle holds it back, by seconds of the stream's own entries
    let short = RetentionConfig {
        max_age_secs: 0,
        max_len: 5,
        ..RetentionConfig::default()
    };
    let plan = retention::plan(&redis, &shard(0), &short, now)
        .await
        .expect("plan");
    assert_eq!(plan.held_by.as_deref(), Some("idle"), "{plan:?}");
    assert!(plan.held_secs < 60.0, "{plan:?}");

    // groups list: audit is where it read to on shard 0, not at 0-0 of
    // the shards that stayed empty
    let schemas = SchemaRegistry::load(&env.settings.paths.schemas).expect("schemas");
    let processors =
        ProcessorRegistry::load(&env.settings.paths.processors, &schemas).expect("processors");
    let status = flowmeter::status::gather(&redis, &keys, &schemas, &processors, None, &week)
        .await
        .expect("status");
    let position = |name: &str| {
        status
            .groups
            .iter()
            .find(|g| g.group == name)
            .and_then(|g| g.position.clone())
    };
    assert_eq!(position("audit"), got.last().cloned());
    assert_eq!(
        position("idle").as_deref(),
        Some("0-0"),
        "it read nothing yet"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = env.write_config(dir.path());
    let table = cli_ok(&config, &["groups", "list"]);
    let audit = table
        .lines()
        .find(|l| l.starts_with("audit "))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(!audit.contains("beginning"), "{table}");
    env.cleanup().await;
}
