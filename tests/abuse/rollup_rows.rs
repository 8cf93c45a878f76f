//! A way the rollup once counted a row wrong: a dimension value cut at its
//! column's width just after a space (under MariaDB's PAD SPACE collation a
//! second key for the same row, so the two overwrote each other's totals).

use std::time::Duration;

use serde_json::json;

use super::rollup::{caught_up, exact, http, ndjson};
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
