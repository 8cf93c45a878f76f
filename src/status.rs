//! Gathers the figures of `GET /v1/status` (and `flowmeter status`): per
//! stream length and ids, per group pending/lag/consumers, per shard
//! checkpoint and owner, and each runner's last flush and rate.

use std::collections::HashMap;

use redis::Value;
use serde::Serialize;

use crate::event::SchemaRegistry;
use crate::processor::{ProcessorRegistry, RunnerStats};
use crate::store::Store;
use crate::stream::{Keys, LeaseManager, Redis, StreamError};

#[derive(Debug, Serialize)]
pub struct Status {
    pub streams: Vec<StreamStatus>,
    pub processors: Vec<ProcessorStatus>,
}

#[derive(Debug, Serialize)]
pub struct StreamStatus {
    pub stream: String,
    pub kind: String,
    pub shard: u32,
    pub length: u64,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub groups: Vec<GroupStatus>,
}

#[derive(Debug, Serialize)]
pub struct GroupStatus {
    pub group: String,
    pub consumers: u64,
    pub pending: u64,
    /// Entries not yet delivered to the group (Redis 7 `lag`); null when Redis cannot tell.
    pub lag: Option<u64>,
    pub last_delivered_id: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ProcessorStatus {
    pub name: String,
    pub group: String,
    pub enabled: bool,
    pub shards: Vec<ShardStatus>,
    pub workers: Vec<RunnerStats>,
}

#[derive(Debug, Serialize)]
pub struct ShardStatus {
    pub stream: String,
    pub checkpoint: Option<String>,
    pub checkpoint_updated_at: Option<String>,
    pub owner: Option<String>,
}

/// Collects the status. `store` is optional so a Redis-only role can still answer.
pub async fn gather(
    redis: &Redis,
    keys: &Keys,
    schemas: &SchemaRegistry,
    processors: &ProcessorRegistry,
    store: Option<&Store>,
) -> Result<Status, StreamError> {
    let mut streams = Vec::new();
    for kind in schemas.kinds() {
        for shard in keys.shards_of(&kind.name) {
            let key = keys.stream(&shard);
            let mut conn = redis.conn.clone();
            let info: Value = redis
                .run(
                    redis::cmd("XINFO")
                        .arg("STREAM")
                        .arg(&key)
                        .query_async(&mut conn),
                )
                .await
                .or_else(|e| match e {
                    StreamError::Redis(ref r) if r.to_string().contains("no such key") => {
                        Ok(Value::Nil)
                    }
                    other => Err(other),
                })?;
            let info = to_map(info);
            let groups: Value = if info.is_empty() {
                Value::Nil
            } else {
                redis
                    .run(
                        redis::cmd("XINFO")
                            .arg("GROUPS")
                            .arg(&key)
                            .query_async(&mut conn),
                    )
                    .await?
            };
            let groups = match groups {
                Value::Array(gs) => gs
                    .into_iter()
                    .map(to_map)
                    .map(|g| GroupStatus {
                        group: text(g.get("name")).unwrap_or_default(),
                        consumers: int(g.get("consumers")).unwrap_or(0),
                        pending: int(g.get("pending")).unwrap_or(0),
                        lag: int(g.get("lag")),
                        last_delivered_id: text(g.get("last-delivered-id")),
                    })
                    .collect(),
                _ => Vec::new(),
            };
            streams.push(StreamStatus {
                stream: key,
                kind: kind.name.clone(),
                shard: shard.index,
                length: int(info.get("length")).unwrap_or(0),
                first_id: entry_id(info.get("first-entry")),
                last_id: text(info.get("last-generated-id")).filter(|s| s != "0-0"),
                groups,
            });
        }
    }
    let checkpoints = match store {
        Some(s) => s.checkpoints(None).await.unwrap_or_default(),
        None => Vec::new(),
    };
    let mut out = Vec::new();
    for p in &processors.processors {
        let mut shards = Vec::new();
        for kind in p.kinds() {
            for shard in keys.shards_of(kind) {
                let stream = keys.stream(&shard);
                let cp = checkpoints
                    .iter()
                    .find(|c| c.group == p.group() && c.stream == stream);
                shards.push(ShardStatus {
                    owner: LeaseManager::owner(redis, keys, p.group(), &shard).await?,
                    checkpoint: cp.map(|c| c.last.to_string()),
                    checkpoint_updated_at: cp.and_then(|c| c.updated_at.clone()),
                    stream,
                });
            }
        }
        let mut conn = redis.conn.clone();
        let raw: HashMap<String, String> = redis
            .run(
                redis::cmd("HGETALL")
                    .arg(keys.stats(p.name()))
                    .query_async(&mut conn),
            )
            .await?;
        let mut workers: Vec<RunnerStats> = raw
            .values()
            .filter_map(|v| serde_json::from_str::<RunnerStats>(v).ok())
            .collect();
        workers.sort_by(|a, b| a.worker.cmp(&b.worker));
        out.push(ProcessorStatus {
            name: p.name().to_string(),
            group: p.group().to_string(),
            enabled: p.enabled(),
            shards,
            workers,
        });
    }
    Ok(Status {
        streams,
        processors: out,
    })
}

/// A RESP2 flat key/value array (or RESP3 map) as a map.
fn to_map(v: Value) -> HashMap<String, Value> {
    let mut out = HashMap::new();
    match v {
        Value::Array(items) => {
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                if let Some(k) = text(Some(&k)) {
                    out.insert(k, v);
                }
            }
        }
        Value::Map(pairs) => {
            for (k, v) in pairs {
                if let Some(k) = text(Some(&k)) {
                    out.insert(k, v);
                }
            }
        }
        _ => {}
    }
    out
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn int(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => String::from_utf8_lossy(b).parse().ok(),
        _ => None,
    }
}

fn entry_id(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Array(parts) => text(parts.first()),
        _ => None,
    }
}
