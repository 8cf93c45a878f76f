//! Gathers the figures of `GET /v1/status` (and `flowmeter status`): per
//! stream length and ids, per group pending/lag/consumers, per shard
//! checkpoint and owner, and each runner's last flush and rate.

use std::collections::HashMap;

use redis::Value;
use serde::Serialize;

use crate::event::SchemaRegistry;
use crate::processor::{ProcessorRegistry, RunnerStats};
use crate::store::Store;
use crate::stream::{Keys, LeaseManager, Redis, StreamError, StreamId};

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
    /// The group's oldest entry not yet acknowledged: the oldest pending one,
    /// else the first not yet delivered; null when the group is caught up.
    pub oldest_unacked_id: Option<String>,
    /// Seconds from that entry to the stream's newest one (entry-id clocks):
    /// how far behind the group is in time. 0 when caught up.
    pub lag_age_secs: f64,
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
                        oldest_unacked_id: None,
                        lag_age_secs: 0.0,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let last_id = text(info.get("last-generated-id")).filter(|s| s != "0-0");
            let mut groups = groups;
            for g in &mut groups {
                g.oldest_unacked_id = oldest_unacked(redis, &key, g).await?;
                g.lag_age_secs = match (&g.oldest_unacked_id, &last_id) {
                    (Some(old), Some(new)) => {
                        match (old.parse::<StreamId>(), new.parse::<StreamId>()) {
                            (Ok(o), Ok(n)) => n.ms.saturating_sub(o.ms) as f64 / 1000.0,
                            _ => 0.0,
                        }
                    }
                    _ => 0.0,
                };
            }
            streams.push(StreamStatus {
                stream: key,
                kind: kind.name.clone(),
                shard: shard.index,
                length: int(info.get("length")).unwrap_or(0),
                first_id: entry_id(info.get("first-entry")),
                last_id,
                groups,
            });
        }
    }
    let checkpoints = match store {
        Some(s) => match s.checkpoints(None).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read checkpoints");
                Vec::new()
            }
        },
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

/// The oldest pending entry of the group, else its first undelivered one.
async fn oldest_unacked(
    redis: &Redis,
    key: &str,
    g: &GroupStatus,
) -> Result<Option<String>, StreamError> {
    let mut conn = redis.conn.clone();
    if g.pending > 0 {
        let summary: Value = redis
            .run(
                redis::cmd("XPENDING")
                    .arg(key)
                    .arg(&g.group)
                    .query_async(&mut conn),
            )
            .await?;
        if let Value::Array(parts) = summary {
            if let Some(id) = text(parts.get(1)) {
                return Ok(Some(id));
            }
        }
    }
    if g.lag == Some(0) {
        return Ok(None);
    }
    let after = g.last_delivered_id.clone().unwrap_or_else(|| "0-0".into());
    let next: Value = redis
        .run(
            redis::cmd("XRANGE")
                .arg(key)
                .arg(format!("({after}"))
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn),
        )
        .await?;
    Ok(match next {
        Value::Array(entries) => entries.first().and_then(|e| match e {
            Value::Array(parts) => text(parts.first()),
            _ => None,
        }),
        _ => None,
    })
}

impl Status {
    /// Every (stream, group, lag age) whose lag age exceeds `limit` seconds,
    /// furthest behind first.
    pub fn lagging(&self, limit: f64) -> Vec<(&str, &str, f64)> {
        let mut out: Vec<(&str, &str, f64)> = self
            .streams
            .iter()
            .flat_map(|s| {
                s.groups
                    .iter()
                    .map(move |g| (s.stream.as_str(), g.group.as_str(), g.lag_age_secs))
            })
            .filter(|(_, _, age)| *age > limit)
            .collect();
        out.sort_by(|a, b| b.2.total_cmp(&a.2));
        out
    }

    /// Aligned tables: streams, groups, shards (checkpoint, owner), workers.
    pub fn render(&self) -> String {
        let row = |cells: Vec<String>| cells;
        let dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
        let window = |s: &StreamStatus| match (
            s.first_id
                .as_deref()
                .and_then(|i| i.parse::<StreamId>().ok()),
            s.last_id
                .as_deref()
                .and_then(|i| i.parse::<StreamId>().ok()),
        ) {
            (Some(a), Some(b)) => format!("{:.0}", b.ms.saturating_sub(a.ms) as f64 / 1000.0),
            _ => "-".into(),
        };
        let mut streams = vec![row(["stream", "length", "first id", "last id", "window s"]
            .map(String::from)
            .to_vec())];
        let mut groups = vec![row([
            "stream",
            "group",
            "lag",
            "lag age s",
            "pending",
            "consumers",
            "oldest unacked",
        ]
        .map(String::from)
        .to_vec())];
        for s in &self.streams {
            streams.push(vec![
                s.stream.clone(),
                s.length.to_string(),
                dash(&s.first_id),
                dash(&s.last_id),
                window(s),
            ]);
            for g in &s.groups {
                groups.push(vec![
                    s.stream.clone(),
                    g.group.clone(),
                    g.lag.map_or("-".into(), |l| l.to_string()),
                    format!("{:.1}", g.lag_age_secs),
                    g.pending.to_string(),
                    g.consumers.to_string(),
                    dash(&g.oldest_unacked_id),
                ]);
            }
        }
        let mut shards = vec![row(["processor", "stream", "checkpoint", "owner"]
            .map(String::from)
            .to_vec())];
        let mut workers = vec![row([
            "processor",
            "worker",
            "shards",
            "last flush",
            "events/s",
            "events",
            "xadd→row p99 ms",
        ]
        .map(String::from)
        .to_vec())];
        for p in &self.processors {
            for sh in &p.shards {
                shards.push(vec![
                    p.name.clone(),
                    sh.stream.clone(),
                    dash(&sh.checkpoint),
                    dash(&sh.owner),
                ]);
            }
            for w in &p.workers {
                workers.push(vec![
                    p.name.clone(),
                    w.worker.clone(),
                    w.shards.len().to_string(),
                    dash(&w.last_flush_at),
                    format!("{:.0}", w.events_per_sec),
                    w.events_total.to_string(),
                    format!("{:.0}", w.xadd_to_commit_p99_ms),
                ]);
            }
        }
        let mut out = String::from("STREAMS\n");
        out.push_str(&crate::table::table(&streams));
        out.push_str("\nGROUPS\n");
        out.push_str(&crate::table::table(&groups));
        out.push_str("\nSHARDS\n");
        out.push_str(&crate::table::table(&shards));
        out.push_str("\nWORKERS\n");
        if workers.len() == 1 {
            out.push_str("(no rollup worker has published figures in the last minute)\n");
        } else {
            out.push_str(&crate::table::table(&workers));
        }
        out
    }
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
