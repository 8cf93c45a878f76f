//! The test harness itself, checked on its own so a failure in a processor
//! test is never a failure of the harness: the private ClickHouse and Kafka
//! (tansu) servers of tests/integration/common/servers.rs start, answer, die on SIGKILL
//! and come back; a test's env is cleaned up even when the test fails.

use crate::common;

use std::time::Instant;

use common::servers::{PrivateClickHouse, PrivateKafka};

/// Runs `sql` (followed by `data`, for an INSERT) over HTTP and returns the
/// answer, failing the test on any error status. All of it goes in the POST
/// body: 18.16 answers 411 to a POST without Content-Length, which is what
/// reqwest sends for an empty body.
async fn ch(http: &reqwest::Client, server: &PrivateClickHouse, sql: &str, data: &str) -> String {
    let res = http
        .post(server.url())
        .body(format!("{sql}\n{data}"))
        .send()
        .await
        .expect("clickhouse reachable");
    let status = res.status();
    let text = res.text().await.expect("clickhouse answer");
    assert!(status.is_success(), "{sql}: {status} {text}");
    text
}

#[tokio::test]
async fn clickhouse_keeps_inserted_rows_across_kill9() {
    let t = Instant::now();
    let mut server = PrivateClickHouse::start();
    eprintln!(
        "clickhouse {} up in {:?} at {}",
        server.version(),
        t.elapsed(),
        server.url()
    );
    assert!(
        server.version().starts_with(|c: char| c.is_ascii_digit()),
        "version: {}",
        server.version()
    );
    let http = reqwest::Client::new();
    // Plain MergeTree syntax and types, as 18.16 (Debian 12) understands them.
    ch(
        &http,
        &server,
        "CREATE TABLE flows (ts DateTime, src String, bytes UInt64) \
         ENGINE = MergeTree ORDER BY (src, ts)",
        "",
    )
    .await;
    ch(
        &http,
        &server,
        "INSERT INTO flows FORMAT TabSeparated",
        "2026-03-01 10:00:00\ta\t100\n2026-03-01 10:00:01\tb\t250\n",
    )
    .await;
    let select = "SELECT src, sum(bytes) FROM flows GROUP BY src ORDER BY src FORMAT TabSeparated";
    assert_eq!(ch(&http, &server, select, "").await, "a\t100\nb\t250\n");

    server.kill9();
    assert!(http.get(server.url()).send().await.is_err(), "still up");
    let t = Instant::now();
    server.restart();
    eprintln!("clickhouse restarted in {:?}", t.elapsed());
    assert_eq!(ch(&http, &server, select, "").await, "a\t100\nb\t250\n");
}

#[tokio::test]
async fn clickhouse_instances_run_side_by_side() {
    let (a, b) = (PrivateClickHouse::start(), PrivateClickHouse::start());
    assert_ne!(a.http_port, b.http_port);
    let http = reqwest::Client::new();
    ch(
        &http,
        &a,
        "CREATE TABLE only_a (x UInt8) ENGINE = Memory",
        "",
    )
    .await;
    let tables = "SELECT count() FROM system.tables WHERE name = 'only_a'";
    assert_eq!(ch(&http, &a, tables, "").await, "1\n");
    assert_eq!(ch(&http, &b, tables, "").await, "0\n");
}

#[test]
fn kafka_broker_creates_topics_and_restarts_on_its_port() {
    let t = Instant::now();
    let mut broker = PrivateKafka::start();
    eprintln!(
        "tansu up in {:?} at {}, keeps data: {}",
        t.elapsed(),
        broker.bootstrap(),
        broker.keeps_data()
    );
    broker.create_topic("events", 3);
    broker.create_topic("alerts", 1);
    let mut topics = broker.topics();
    topics.sort();
    assert_eq!(
        topics,
        [("alerts".to_string(), 1), ("events".to_string(), 3)]
    );

    broker.kill9();
    assert!(std::net::TcpStream::connect(broker.bootstrap()).is_err());
    broker.restart();
    std::net::TcpStream::connect(broker.bootstrap()).expect("broker back on its port");
    let mut after = broker.topics();
    after.sort();
    if broker.keeps_data() {
        assert_eq!(after, topics, "sqlite storage keeps topics");
    } else {
        // memory storage: the restarted broker starts empty (see PrivateKafka)
        assert_eq!(after, []);
        broker.create_topic("events", 3);
        assert_eq!(broker.topics(), [("events".to_string(), 3)]);
    }
}

/// A test that panics after writing keys and migrating its database leaves
/// neither behind: the env's drop cleans up while the panic unwinds.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_test_leaves_no_keys_and_no_database() {
    let failing = tokio::spawn(async move {
        let owner = common::TestEnv::new("guard_owner");
        owner.migrate().await;
        let mut r = owner.redis().await;
        let _: () = redis::cmd("SET")
            .arg(format!("{}:left", owner.name))
            .arg(1)
            .query_async(&mut r)
            .await
            .expect("set");
        drop(owner.handle());
        assert!(
            common::database_exists(&owner.name).await,
            "a handle cleans nothing"
        );
        panic!("{}", owner.name);
    });
    let err = failing.await.expect_err("the test body panicked");
    let owner: String = match err.into_panic().downcast::<String>() {
        Ok(name) => *name,
        Err(_) => panic!("the panic names the env"),
    };
    assert!(owner.starts_with("fmt_guard_owner_"), "{owner}");
    assert!(
        !common::database_exists(&owner).await,
        "database {owner} left behind"
    );
    let env = common::TestEnv::new("guard_check");
    assert_eq!(common::keys_under(&env, &owner).await, Vec::<String>::new());
}
