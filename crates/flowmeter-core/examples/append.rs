//! Appends one `http` event to flowmeter's streams, as the ingest API or the
//! collector would, and prints the stream it went to.
//!
//! ```sh
//! cargo run -p flowmeter-core --example append            # Redis on 127.0.0.1:6379, prefix fm, 4 shards
//! REDIS_URL=rediss://redis:6380 FM_PREFIX=fm cargo run -p flowmeter-core --example append
//! ```
//!
//! `FM_PREFIX` and `FM_SHARDS` must match the server's `redis.prefix` and
//! `redis.shards`, or the event lands in a stream no processor reads.

use std::time::Duration;

use flowmeter_core::event::{KindNames, PartitionKey, ValidEvent};
use flowmeter_core::stream::{Keys, Producer, Redis};

/// The kinds this program writes: `http` at index 0.
struct Kinds;

impl KindNames for Kinds {
    fn kind_name(&self, kind: usize) -> Option<&str> {
        (kind == 0).then_some("http")
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = std::env::var("FM_PREFIX").unwrap_or_else(|_| "fm".into());
    let shards = std::env::var("FM_SHARDS").map_or(Ok(4), |s| s.parse())?;
    let keys = Keys::new(prefix, shards);

    let (service, endpoint) = ("example", "/api/courses/{id}");
    let ts_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    let data = serde_json::json!({
        "kind": "http", "ts": ts_ms, "service": service, "endpoint": endpoint,
        "method": "GET", "status": 200, "req_bytes": 0, "resp_bytes": 512, "duration_ms": 1.5,
    })
    .to_string();
    // partition_by of schemas/http.v1.json: service, then endpoint
    let mut key = PartitionKey::new();
    key.push(service).push(endpoint);
    let event = ValidEvent {
        kind: 0,
        version: 1,
        ts_ms,
        data,
        partition: key.finish(),
    };
    let stream = keys.stream(&keys.shard_for("http", event.partition));

    let redis = Redis::connect(&url, Duration::from_secs(2)).await?;
    Producer::new(redis, keys).append(&Kinds, &[event]).await?;
    println!("appended one http event to {stream}");
    Ok(())
}
