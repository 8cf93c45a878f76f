//! Consumer-group administration (`flowmeter groups create|reset|delete`):
//! a group exists once per shard stream, and these act on every shard of the
//! group's kinds at once. `groups list` is the GROUP TOTALS table of
//! [`crate::status`].
//!
//! Rollup groups are safe to move: their MySQL checkpoint skips entries whose
//! effect is already committed, so a reset backwards re-reads without double
//! counting (use `flowmeter replay` to rebuild rows), and a group deleted and
//! recreated resumes at its checkpoint.

use redis::Value;

use crate::event::SchemaRegistry;
use crate::processor::ProcessorRegistry;
use crate::stream::resp::{int, text, to_map};
use crate::stream::{Keys, Redis, StartFrom, StreamError};

/// Errors of the group commands; the message says what to do instead.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("group {group} already exists on {streams}; move it with `flowmeter groups reset {group} --to …`")]
    Exists { group: String, streams: String },
    #[error("group {0} does not exist on any stream; `flowmeter groups list` shows the groups")]
    Missing(String),
    #[error("group {group} has {pending} pending (delivered, unacknowledged) entries; let its consumers finish, or pass --force to drop them")]
    Pending { group: String, pending: u64 },
    #[error("group {group} is used by processor(s) {processors} in processors/; disable them (enabled = false) and stop their workers first, or pass --force")]
    InUse { group: String, processors: String },
    #[error("unknown event kind {0:?}; the kinds are the schemas in schemas/")]
    UnknownKind(String),
    #[error(transparent)]
    Stream(#[from] StreamError),
}

/// What a command did on one shard stream.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardChange {
    pub stream: String,
    /// The group's last-delivered id before (None: it did not exist).
    pub before: Option<String>,
    /// The id set (None: the group was deleted).
    pub after: Option<String>,
    /// Pending entries the change dropped (delete) or left in place (reset).
    pub pending: u64,
}

/// The streams a group command acts on: the given kinds, else the kinds of
/// the processors using `group`, else every kind.
pub fn streams_for(
    group: &str,
    kinds: &[String],
    keys: &Keys,
    schemas: &SchemaRegistry,
    processors: &ProcessorRegistry,
) -> Result<Vec<String>, GroupError> {
    let mut chosen: Vec<String> = if !kinds.is_empty() {
        kinds.to_vec()
    } else {
        processors
            .processors
            .iter()
            .filter(|p| p.group() == group)
            .flat_map(|p| p.kinds().iter().cloned())
            .collect()
    };
    if chosen.is_empty() {
        chosen = schemas.kinds().iter().map(|k| k.name.clone()).collect();
    }
    chosen.sort();
    chosen.dedup();
    let mut out = Vec::new();
    for kind in &chosen {
        if schemas.kind_index(kind).is_none() {
            return Err(GroupError::UnknownKind(kind.clone()));
        }
        out.extend(keys.shards_of(kind).iter().map(|s| keys.stream(s)));
    }
    Ok(out)
}

/// One consumer group of a stream, as `XINFO GROUPS` tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOn {
    pub name: String,
    pub last_delivered: String,
    pub pending: u64,
    /// Entries not yet delivered, when Redis can tell (7.0+).
    pub lag: Option<u64>,
}

/// The groups of `stream` (none when it does not exist).
pub async fn groups_on(redis: &Redis, stream: &str) -> Result<Vec<GroupOn>, StreamError> {
    let Some(Value::Array(gs)) = crate::stream::xinfo(redis, "GROUPS", stream).await? else {
        return Ok(Vec::new());
    };
    Ok(gs
        .into_iter()
        .map(to_map)
        .map(|g| GroupOn {
            name: text(g.get("name")).unwrap_or_default(),
            last_delivered: text(g.get("last-delivered-id")).unwrap_or_else(|| "0-0".into()),
            pending: int(g.get("pending")).unwrap_or(0),
            lag: int(g.get("lag")),
        })
        .collect())
}

/// (last-delivered id, pending) of `group` on `stream`, None when it has no such group.
async fn group_on(
    redis: &Redis,
    stream: &str,
    group: &str,
) -> Result<Option<(String, u64)>, StreamError> {
    Ok(groups_on(redis, stream)
        .await?
        .into_iter()
        .find(|g| g.name == group)
        .map(|g| (g.last_delivered, g.pending)))
}

/// Creates `group` at `start` on every stream (creating empty streams).
/// Refuses when it exists on any of them, before changing anything.
pub async fn create(
    redis: &Redis,
    streams: &[String],
    group: &str,
    start: StartFrom,
) -> Result<Vec<ShardChange>, GroupError> {
    let mut existing = Vec::new();
    for s in streams {
        if group_on(redis, s, group).await?.is_some() {
            existing.push(s.clone());
        }
    }
    if !existing.is_empty() {
        return Err(GroupError::Exists {
            group: group.into(),
            streams: existing.join(", "),
        });
    }
    let id = start.group_id();
    let mut out = Vec::new();
    for s in streams {
        let mut conn = redis.conn.clone();
        redis
            .run(
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(s)
                    .arg(group)
                    .arg(&id)
                    .arg("MKSTREAM")
                    .query_async::<()>(&mut conn),
            )
            .await?;
        out.push(ShardChange {
            stream: s.clone(),
            before: None,
            after: Some(id.clone()),
            pending: 0,
        });
    }
    Ok(out)
}

/// Moves `group`'s last-delivered id to `to` on every stream it exists on.
/// Pending entries stay pending (their consumers still ack them).
pub async fn reset(
    redis: &Redis,
    streams: &[String],
    group: &str,
    to: StartFrom,
) -> Result<Vec<ShardChange>, GroupError> {
    let mut out = Vec::new();
    for s in streams {
        let Some((before, pending)) = group_on(redis, s, group).await? else {
            continue;
        };
        let id = match to {
            // "$" is resolved by Redis; report the stream's last id instead
            StartFrom::Now => "$".to_string(),
            other => other.group_id(),
        };
        let mut conn = redis.conn.clone();
        redis
            .run(
                redis::cmd("XGROUP")
                    .arg("SETID")
                    .arg(s)
                    .arg(group)
                    .arg(&id)
                    .query_async::<()>(&mut conn),
            )
            .await?;
        let after = group_on(redis, s, group).await?.map(|(id, _)| id);
        out.push(ShardChange {
            stream: s.clone(),
            before: Some(before),
            after,
            pending,
        });
    }
    if out.is_empty() {
        return Err(GroupError::Missing(group.into()));
    }
    Ok(out)
}

/// Destroys `group` on every stream. Refuses while entries are pending, or
/// while a processor in `processors/` uses the group, unless `force`.
pub async fn delete(
    redis: &Redis,
    streams: &[String],
    group: &str,
    processors: &ProcessorRegistry,
    force: bool,
) -> Result<Vec<ShardChange>, GroupError> {
    let users: Vec<&str> = processors
        .enabled()
        .filter(|p| p.group() == group)
        .map(|p| p.name())
        .collect();
    if !users.is_empty() && !force {
        return Err(GroupError::InUse {
            group: group.into(),
            processors: users.join(", "),
        });
    }
    let mut found = Vec::new();
    for s in streams {
        if let Some((last, pending)) = group_on(redis, s, group).await? {
            found.push((s.clone(), last, pending));
        }
    }
    if found.is_empty() {
        return Err(GroupError::Missing(group.into()));
    }
    let pending: u64 = found.iter().map(|f| f.2).sum();
    if pending > 0 && !force {
        return Err(GroupError::Pending {
            group: group.into(),
            pending,
        });
    }
    let mut out = Vec::new();
    for (s, last, pending) in found {
        let mut conn = redis.conn.clone();
        redis
            .run(
                redis::cmd("XGROUP")
                    .arg("DESTROY")
                    .arg(&s)
                    .arg(group)
                    .query_async::<()>(&mut conn),
            )
            .await?;
        out.push(ShardChange {
            stream: s,
            before: Some(last),
            after: None,
            pending,
        });
    }
    Ok(out)
}

/// What `claim` did on one stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub stream: String,
    /// Entries now pending on the new consumer.
    pub claimed: u64,
    /// Pending entries whose data retention had already trimmed; Redis
    /// drops them from the pending list.
    pub deleted: u64,
}

/// Moves every entry of `group` pending for at least `min_idle_ms` (its
/// consumer is gone or stuck) to `consumer` with XAUTOCLAIM, on every stream.
/// flowmeter's rollups never need this (a shard's pending list belongs to
/// the shard, whoever holds its lease); it is for external consumers.
pub async fn claim(
    redis: &Redis,
    streams: &[String],
    group: &str,
    consumer: &str,
    min_idle_ms: u64,
) -> Result<Vec<Claimed>, GroupError> {
    let mut out = Vec::new();
    for s in streams {
        if group_on(redis, s, group).await?.is_none() {
            continue;
        }
        let mut c = Claimed {
            stream: s.clone(),
            claimed: 0,
            deleted: 0,
        };
        let mut cursor = "0-0".to_string();
        loop {
            let mut conn = redis.conn.clone();
            let reply: Value = redis
                .run(
                    redis::cmd("XAUTOCLAIM")
                        .arg(s)
                        .arg(group)
                        .arg(consumer)
                        .arg(min_idle_ms)
                        .arg(&cursor)
                        .arg("COUNT")
                        .arg(1_000)
                        .arg("JUSTID")
                        .query_async(&mut conn),
                )
                .await?;
            let Value::Array(parts) = reply else { break };
            let len = |v: Option<&Value>| match v {
                Some(Value::Array(a)) => a.len() as u64,
                _ => 0,
            };
            c.claimed += len(parts.get(1));
            c.deleted += len(parts.get(2));
            cursor = text(parts.first()).unwrap_or_else(|| "0-0".into());
            if cursor == "0-0" {
                break;
            }
        }
        out.push(c);
    }
    if out.is_empty() {
        return Err(GroupError::Missing(group.into()));
    }
    Ok(out)
}
