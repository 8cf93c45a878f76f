//! Two ways the rollup once counted a row wrong: a dimension value cut at
//! its column's width just after a space (under MariaDB's PAD SPACE
//! collation a second key for the same row, so the two overwrote each
//! other's totals), and an entry the database refused dead-lettered again
//! when the flush that carried its dead letter was itself refused and the
//! uncommitted entries were read again.

use std::time::Duration;

use serde_json::json;

use super::rollup::{caught_up, dead_letters, exact, http, ndjson};
use crate::common::*;

/// 2026-03-01T10:00:00Z.
const HOUR: i64 = 1_772_359_200_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_cut_after_a_space_is_the_same_row_everywhere() {
    let mut env = TestEnv::new("abuse_padspace");
    env.settings.redis.shards = 1;
    env.settings.rollup.flush_interval_ms = 100;
    env.migrate().await;
    let store = env.store().await;
    // An operator narrowed the column (the rollup takes a dimension's width
    // from the table): "/api/v1 x" is cut to 8 characters, "/api/v1 ".
    sqlx::query("ALTER TABLE http_hourly MODIFY endpoint VARCHAR(8) NOT NULL")
        .execute(store.pool())
        .await
        .expect("alter");
    let server = env.start("ingest,api,rollup").await;
    let client = http_client();
    // Two flushes: the cut key meets the committed row as well as its twin
    // in one flush.
    for (cut, whole) in [(3, 2), (4, 1)] {
        let mut events: Vec<_> = (0..cut)
            .map(|_| http(json!(HOUR), "pad", "/api/v1 x", 1))
            .collect();
        events.extend((0..whole).map(|_| http(json!(HOUR), "pad", "/api/v1", 1)));
        let (code, reply) = post_ndjson(&client, &server.url("/v1/events"), ndjson(&events)).await;
        assert_eq!(code, 202, "{reply}");
        caught_up(&env, "rollup", Duration::from_secs(30)).await;
    }
    let s = store.clone();
    wait_until(Duration::from_secs(30), || {
        let s = s.clone();
        async move { exact(&s, "SELECT SUM(requests) FROM http_daily").await == 10 }
    })
    .await;
    assert_eq!(
        exact(
            &store,
            "SELECT COUNT(*) FROM http_hourly WHERE service = 'pad'"
        )
        .await,
        1,
        "one row: the cut value and the whole one are the same key"
    );
    assert_eq!(
        exact(&store, "SELECT SUM(requests) FROM http_hourly").await,
        10,
        "no flush overwrote the other key's total"
    );
    assert_eq!(
        exact(
            &store,
            "SELECT COUNT(*) FROM http_hourly WHERE BINARY endpoint = '/api/v1'"
        )
        .await,
        1,
        "stored without the trailing space"
    );
    // The query API answers the one row, with the value as stored, and
    // filtering on either spelling finds it.
    for filter in ["/api/v1", "/api/v1%20"] {
        let url = server.url(&format!(
            "/v1/rollups/hourly?kind=http&service=pad&endpoint={filter}&from=2026-03-01T00:00:00Z&to=2026-03-02T00:00:00Z"
        ));
        let page = get_json(&client, url).await;
        let rows = page["rows"].as_array().cloned().unwrap_or_default();
        assert_eq!(rows.len(), 1, "{filter}: {page}");
        assert_eq!(rows[0]["endpoint"], "/api/v1", "{page}");
        assert_eq!(rows[0]["requests"], 10, "{page}");
    }
    server.stop().await;
    env.cleanup().await;
}

/// Waits until a statement of database `db` moving a checkpoint is running
/// (waiting for the row lock the test holds).
async fn checkpoint_update_waiting(store: &flowmeter::store::Store, db: &str) {
    let db = db.to_string();
    wait_until(Duration::from_secs(30), || {
        let (store, db) = (store.clone(), db.clone());
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                 WHERE DB = ? AND ID <> CONNECTION_ID() AND INFO LIKE '%UPDATE fm_checkpoints%'",
            )
            .bind(db)
            .fetch_one(store.pool())
            .await
            .expect("processlist");
            n > 0
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_entry_is_dead_lettered_once_when_its_letter_flush_is_refused() {
    let mut env = TestEnv::new("abuse_dlq_once");
    env.settings.redis.shards = 1;
    // Flushes come on the tick only (and when a chunk of a refused flush
    // is full): /bad-1 is flushed alone, the next request lands before the
    // next tick. The test takes well under a tick between the two.
    env.settings.rollup.flush_interval_ms = 5_000;
    env.migrate().await;
    let store = env.store().await;
    sqlx::query(
        "CREATE TRIGGER refuse_bad BEFORE INSERT ON http_hourly FOR EACH ROW \
         IF NEW.endpoint IN ('/bad-1', '/bad-2') THEN \
         SIGNAL SQLSTATE '22003' SET MESSAGE_TEXT = 'refused by a trigger'; END IF",
    )
    .execute(store.pool())
    .await
    .expect("trigger");
    let server = env.start("ingest,api,rollup").await;
    let client = http_client();
    let url = server.url("/v1/events");
    let post = |events: Vec<serde_json::Value>| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let (code, reply) = post_ndjson(&client, &url, ndjson(&events)).await;
            assert_eq!(code, 202, "{reply}");
        }
    };
    let stream = format!("{}:{{http:0}}", env.name);
    let s = store.clone();
    wait_until(Duration::from_secs(30), || {
        let (s, stream) = (s.clone(), stream.clone());
        async move {
            let sql = format!("SELECT COUNT(*) FROM fm_checkpoints WHERE stream = '{stream}'");
            exact(&s, &sql).await == 1
        }
    })
    .await;

    // Hold the shard's checkpoint row: the next flush, holding /bad-1 alone,
    // waits for it while the next request lands behind it.
    let mut hold = store.pool().begin().await.expect("begin");
    sqlx::query("SELECT * FROM fm_checkpoints WHERE grp = 'rollup' AND stream = ? FOR UPDATE")
        .bind(&stream)
        .fetch_all(&mut *hold)
        .await
        .expect("lock the checkpoint");
    post(vec![http(json!(HOUR), "bad", "/bad-1", 1)]).await;
    checkpoint_update_waiting(&store, &env.name).await;
    let mut next: Vec<_> = (0..3).map(|_| http(json!(HOUR), "ok", "/x", 1)).collect();
    next.push(http(json!(HOUR), "bad", "/bad-2", 1));
    next.extend((0..3).map(|_| http(json!(HOUR), "ok", "/y", 1)));
    post(next).await;
    // The held flush is refused with one entry: /bad-1 becomes a dead
    // letter, written by the next flush — which holds /bad-2 and six good
    // events, is refused too, and re-reads everything not yet committed.
    hold.rollback().await.expect("release");

    let s = store.clone();
    wait_until(Duration::from_secs(60), || {
        let s = s.clone();
        async move { exact(&s, "SELECT SUM(requests) FROM http_daily").await == 6 }
    })
    .await;
    caught_up(&env, "rollup", Duration::from_secs(30)).await;
    let letters = dead_letters(&env, "rollup").await;
    let of = |endpoint: &str| {
        letters
            .iter()
            .filter(|l| l.get("data").is_some_and(|d| d.contains(endpoint)))
            .count()
    };
    assert_eq!(
        (of("/bad-1"), of("/bad-2"), letters.len()),
        (1, 1, 2),
        "each refused entry once: {letters:#?}"
    );
    assert_eq!(
        exact(&store, "SELECT SUM(requests) FROM http_hourly").await,
        6,
        "every good event once"
    );
    server.stop().await;
    env.cleanup().await;
}
