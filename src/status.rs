//! Gathers the figures of `GET /v1/status` (and `flowmeter status`): per
//! stream length and ids, per group pending/lag/consumers, per shard
//! checkpoint and owner, and each runner's last flush and rate.

use std::collections::HashMap;

use redis::Value;
use serde::Serialize;

use crate::config::RetentionConfig;
use crate::event::SchemaRegistry;
use crate::processor::{ProcessorRegistry, RunnerStats};
use crate::retention::TrimPlan;
use crate::store::Store;
use crate::stream::pressure::RedisMemory;
use crate::stream::resp::{entry_id, int, text, to_map};
use crate::stream::{Keys, LeaseManager, Redis, StreamError, StreamId};

#[derive(Debug, Serialize)]
pub struct Status {
    pub streams: Vec<StreamStatus>,
    /// Each consumer group over all its shards (`flowmeter groups list`).
    pub groups: Vec<GroupSummary>,
    pub processors: Vec<ProcessorStatus>,
    /// Redis' memory settings; `warning` when accepted events could be evicted.
    pub redis: RedisMemory,
    /// What ingest processes counted in Redis.
    pub ingest: IngestFigures,
}

/// Figures every ingest process adds to (kept in Redis, never reset).
#[derive(Debug, Default, Serialize)]
pub struct IngestFigures {
    /// Requests stored but answered 503 `"outcome": "unknown"` because
    /// fewer replicas than `ingest.wait_replicas` confirmed them in time.
    pub not_replicated: u64,
}

/// One consumer group summed over the shards it exists on.
#[derive(Debug, Serialize)]
pub struct GroupSummary {
    pub group: String,
    /// Processors of `processors/` reading with this group (empty: an external consumer).
    pub processors: Vec<String>,
    /// Shard streams the group exists on.
    pub shards: u32,
    /// The furthest-behind last-delivered id over the shards where it has
    /// entries left to read or acknowledge; where it has none anywhere, the
    /// furthest-ahead one. Null when nothing was ever delivered to it and
    /// nothing waits (a shard it sits at `0-0` on because the shard is
    /// empty is not "behind").
    pub position: Option<String>,
    /// Entries not yet delivered, summed; null when Redis cannot tell for a shard.
    pub lag: Option<u64>,
    /// The largest lag age over its shards.
    pub lag_age_secs: f64,
    pub pending: u64,
    /// Distinct consumer names over its shards.
    pub consumers: u64,
    /// Seconds since any consumer of the group last read or acked; null without consumers.
    pub idle_secs: Option<f64>,
    /// Entries in its dead-letter stream.
    pub dead_letters: u64,
    /// Unacknowledged entries `retention.hard_max_len` trimmed before it read them (ever).
    pub unread_trimmed: u64,
}

#[derive(Debug, Serialize)]
pub struct StreamStatus {
    pub stream: String,
    pub kind: String,
    /// The shard set (0 unless the shard count was changed: `flowmeter shards`).
    pub set: u32,
    pub shard: u32,
    pub length: u64,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub groups: Vec<GroupStatus>,
    /// What retention would trim now, and which group holds it back.
    pub retention: Option<TrimPlan>,
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
    /// Seconds from that entry (its id's time) to now: how long the group
    /// has been behind. It grows while the group is stuck, with or without
    /// new traffic. 0 when caught up.
    pub lag_age_secs: f64,
    /// Seconds from the oldest entry delivered but not yet acknowledged to
    /// now; 0 when nothing is pending.
    pub oldest_pending_age_secs: f64,
    /// Seconds since a consumer of the group last interacted with this
    /// stream; null without consumers.
    pub idle_secs: Option<f64>,
    /// Consumer names (per-shard owners for rollups).
    #[serde(skip)]
    pub consumer_names: Vec<String>,
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
    retention: &RetentionConfig,
) -> Result<Status, StreamError> {
    let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let mut streams = Vec::new();
    for kind in schemas.kinds() {
        for shard in keys.shards_of(&kind.name) {
            let key = keys.stream(&shard);
            let mut conn = redis.conn.clone();
            let info = to_map(
                crate::stream::xinfo(redis, "STREAM", &key)
                    .await?
                    .unwrap_or(Value::Nil),
            );
            let groups: Value = if info.is_empty() {
                Value::Nil
            } else {
                crate::stream::xinfo(redis, "GROUPS", &key)
                    .await?
                    .unwrap_or(Value::Nil)
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
                        oldest_pending_age_secs: 0.0,
                        idle_secs: None,
                        consumer_names: Vec::new(),
                    })
                    .collect(),
                _ => Vec::new(),
            };
            // a sealed stream's last id is the largest there is: its last
            // entry is what a person (and the lag age) wants
            let last_id = text(info.get("last-generated-id"))
                .filter(|s| s != "0-0")
                .and_then(|s| {
                    if s == crate::stream::layout::SEALED_ID {
                        crate::stream::resp::entry_id(info.get("last-entry"))
                    } else {
                        Some(s)
                    }
                });
            let mut groups = groups;
            for g in &mut groups {
                g.oldest_unacked_id = oldest_unacked(redis, &key, g).await?;
                if g.consumers > 0 {
                    let consumers: Value = redis
                        .run(
                            redis::cmd("XINFO")
                                .arg("CONSUMERS")
                                .arg(&key)
                                .arg(&g.group)
                                .query_async(&mut conn),
                        )
                        .await?;
                    if let Value::Array(cs) = consumers {
                        for c in cs.into_iter().map(to_map) {
                            if let Some(idle) = int(c.get("idle")) {
                                let idle = idle as f64 / 1000.0;
                                g.idle_secs = Some(g.idle_secs.map_or(idle, |m: f64| m.min(idle)));
                            }
                            g.consumer_names.extend(text(c.get("name")));
                        }
                    }
                }
                g.lag_age_secs = lag_age(g.oldest_unacked_id.as_deref(), now_ms);
                // pending entries are older than undelivered ones: with any
                // pending, the oldest unacknowledged entry is the oldest pending
                if g.pending > 0 {
                    g.oldest_pending_age_secs = g.lag_age_secs;
                }
            }
            let retention = if info.is_empty() {
                None
            } else {
                Some(crate::retention::plan(redis, &key, retention, now_ms).await?)
            };
            streams.push(StreamStatus {
                stream: key,
                kind: kind.name.clone(),
                set: shard.set,
                shard: shard.index,
                length: int(info.get("length")).unwrap_or(0),
                first_id: entry_id(info.get("first-entry")),
                last_id,
                groups,
                retention,
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
    let groups = summarize(redis, keys, &streams, processors).await?;
    let mut conn = redis.conn.clone();
    let not_replicated: Option<u64> = redis
        .run(
            redis::cmd("HGET")
                .arg(keys.ingest_figures())
                .arg("not_replicated")
                .query_async(&mut conn),
        )
        .await?;
    Ok(Status {
        streams,
        groups,
        processors: out,
        redis: crate::stream::pressure::memory(redis)
            .await
            .unwrap_or_else(|e| RedisMemory {
                warning: Some(format!(
                    "cannot read Redis' maxmemory-policy (INFO memory: {e}); make sure it is noeviction"
                )),
                ..RedisMemory::default()
            }),
        ingest: IngestFigures {
            not_replicated: not_replicated.unwrap_or(0),
        },
    })
}

/// Sums each group over its shards and adds its dead-letter count.
async fn summarize(
    redis: &Redis,
    keys: &Keys,
    streams: &[StreamStatus],
    processors: &ProcessorRegistry,
) -> Result<Vec<GroupSummary>, StreamError> {
    let mut by_name: std::collections::BTreeMap<&str, Vec<&GroupStatus>> = Default::default();
    for s in streams {
        for g in &s.groups {
            by_name.entry(g.group.as_str()).or_default().push(g);
        }
    }
    let forced = crate::retention::forced_totals(redis, keys).await?;
    let mut out = Vec::new();
    for (name, gs) in by_name {
        let mut consumers: Vec<&str> = gs
            .iter()
            .flat_map(|g| g.consumer_names.iter().map(String::as_str))
            .collect();
        consumers.sort_unstable();
        consumers.dedup();
        let position = position(&gs).map(|id| id.to_string());
        out.push(GroupSummary {
            group: name.to_string(),
            processors: processors
                .processors
                .iter()
                .filter(|p| p.group() == name)
                .map(|p| p.name().to_string())
                .collect(),
            shards: gs.len() as u32,
            position,
            lag: gs.iter().map(|g| g.lag).sum(),
            lag_age_secs: gs.iter().map(|g| g.lag_age_secs).fold(0.0, f64::max),
            pending: gs.iter().map(|g| g.pending).sum(),
            consumers: consumers.len() as u64,
            idle_secs: gs
                .iter()
                .filter_map(|g| g.idle_secs)
                .min_by(|a, b| a.total_cmp(b)),
            dead_letters: crate::dlq::len(redis, keys, name).await?,
            unread_trimmed: forced.get(name).copied().unwrap_or(0),
        });
    }
    Ok(out)
}

/// Seconds from the entry `oldest` (its id's milliseconds, Redis' clock)
/// to `now_ms`; 0 without one.
fn lag_age(oldest: Option<&str>, now_ms: u64) -> f64 {
    oldest
        .and_then(|id| id.parse::<StreamId>().ok())
        .map_or(0.0, |o| now_ms.saturating_sub(o.ms) as f64 / 1000.0)
}

/// A group's position over its shards (see [`GroupSummary::position`]).
fn position(shards: &[&GroupStatus]) -> Option<StreamId> {
    let id = |g: &&GroupStatus| {
        g.last_delivered_id
            .as_deref()
            .and_then(|id| id.parse::<StreamId>().ok())
    };
    // lag unknown (a stream with deleted entries) counts as behind
    let behind = |g: &&&GroupStatus| g.lag != Some(0) || g.pending > 0;
    shards
        .iter()
        .filter(behind)
        .filter_map(id)
        .min()
        .or_else(|| {
            shards
                .iter()
                .filter_map(id)
                .filter(|id| *id != StreamId::ZERO)
                .max()
        })
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(last: &str, lag: Option<u64>, pending: u64) -> GroupStatus {
        GroupStatus {
            group: "g".into(),
            consumers: 0,
            pending,
            lag,
            last_delivered_id: Some(last.into()),
            oldest_unacked_id: None,
            lag_age_secs: 0.0,
            oldest_pending_age_secs: 0.0,
            idle_secs: None,
            consumer_names: Vec::new(),
        }
    }

    #[test]
    fn lag_age_is_measured_to_now() {
        assert_eq!(lag_age(None, 10_000), 0.0);
        assert_eq!(lag_age(Some("4000-3"), 10_000), 6.0);
        // an id from a clock ahead of this one: not negative
        assert_eq!(lag_age(Some("12000-0"), 10_000), 0.0);
        assert_eq!(lag_age(Some("not-an-id"), 10_000), 0.0);
    }

    #[test]
    fn an_empty_shard_at_zero_does_not_hold_the_position_back() {
        let id = |s: &str| s.parse::<StreamId>().ok();
        let (empty, done, behind) = (
            on("0-0", Some(0), 0),
            on("900-0", Some(0), 0),
            on("500-1", Some(3), 0),
        );
        assert_eq!(position(&[&empty, &done]), id("900-0"));
        assert_eq!(position(&[&empty, &done, &behind]), id("500-1"));
        // pending entries, or a lag Redis cannot tell, count as behind
        let pending = on("100-0", Some(0), 2);
        assert_eq!(position(&[&done, &pending]), id("100-0"));
        let unknown = on("200-0", None, 0);
        assert_eq!(position(&[&done, &unknown]), id("200-0"));
        // never delivered anything, nothing to read: no position
        assert_eq!(position(&[&empty]), None);
        // never delivered anything on a shard with entries: the beginning
        let fresh = on("0-0", Some(5), 0);
        assert_eq!(position(&[&fresh, &done]), id("0-0"));
    }
}
