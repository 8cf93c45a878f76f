//! Safe retention: trims shard streams by age (`retention.max_age_secs`) and
//! length (`retention.max_len`), but never past the oldest entry a consumer
//! group still needs — its oldest pending entry, or the first entry it has not
//! been delivered yet. Only the memory-safety cap `retention.hard_max_len` may
//! trim entries a group has not acknowledged, and each such entry is counted
//! per group (`{prefix}:retention` hash, `/metrics`, an error log) — never
//! silently.
//!
//! The floor only moves forward between planning and `XTRIM MINID` (groups
//! ack and read, producers append newer ids), so a pass can trim less than it
//! could but never more than it may.

use std::collections::BTreeMap;

use redis::Value;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::RetentionConfig;
use crate::event::SchemaRegistry;
use crate::stream::resp::{int, text, to_map};
use crate::stream::{Keys, Redis, StreamError, StreamId};
use crate::telemetry::metrics;

/// What retention would do to one stream now (`flowmeter status` shows it;
/// the trimmer applies it).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TrimPlan {
    pub stream: String,
    pub length: u64,
    /// What the age and length limits ask for: keep entries with ids >= this.
    pub wanted: Option<String>,
    /// The oldest entry any group still needs, and that group.
    pub floor: Option<String>,
    pub floor_group: Option<String>,
    /// Where this pass trims to (`XTRIM MINID`); None: nothing to trim.
    pub trim_to: Option<String>,
    /// The group keeping entries the limits would drop, and by how many
    /// seconds of stream time.
    pub held_by: Option<String>,
    pub held_secs: f64,
    /// Unacknowledged entries the hard cap drops, per group.
    pub forced: BTreeMap<String, u64>,
}

/// One group's needs on a stream.
#[derive(Debug, Clone)]
struct GroupNeed {
    group: String,
    last_delivered: StreamId,
    oldest_pending: Option<StreamId>,
}

impl GroupNeed {
    /// The oldest entry the group still needs.
    fn floor(&self) -> StreamId {
        let next = self.last_delivered.next();
        self.oldest_pending.map_or(next, |p| p.min(next))
    }
}

async fn group_needs(redis: &Redis, stream: &str) -> Result<Vec<GroupNeed>, StreamError> {
    let mut conn = redis.conn.clone();
    let Some(Value::Array(gs)) = crate::stream::xinfo(redis, "GROUPS", stream).await? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for g in gs.into_iter().map(to_map) {
        let Some(group) = text(g.get("name")) else {
            continue;
        };
        let last_delivered = text(g.get("last-delivered-id"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(StreamId::ZERO);
        let oldest_pending = if int(g.get("pending")).unwrap_or(0) > 0 {
            let summary: Value = redis
                .run(
                    redis::cmd("XPENDING")
                        .arg(stream)
                        .arg(&group)
                        .query_async(&mut conn),
                )
                .await?;
            match summary {
                Value::Array(parts) => text(parts.get(1)).and_then(|s| s.parse().ok()),
                _ => None,
            }
        } else {
            None
        };
        out.push(GroupNeed {
            group,
            last_delivered,
            oldest_pending,
        });
    }
    Ok(out)
}

/// Ids of up to `count` entries from `start` (XRANGE syntax) to `end`.
async fn ids(
    redis: &Redis,
    stream: &str,
    start: &str,
    end: &str,
    count: usize,
) -> Result<Vec<StreamId>, StreamError> {
    Ok(crate::stream::range(redis, stream, start, end, count)
        .await?
        .into_iter()
        .map(|e| e.id)
        .collect())
}

/// The MINID that leaves at most `keep` entries, scanning at most `max_scan`
/// (a long-overdue stream is brought down over several passes).
async fn minid_for_len(
    redis: &Redis,
    stream: &str,
    length: u64,
    keep: u64,
    max_scan: usize,
) -> Result<Option<StreamId>, StreamError> {
    if keep == 0 || length <= keep {
        return Ok(None);
    }
    let drop = usize::try_from(length - keep)
        .unwrap_or(usize::MAX)
        .min(max_scan.max(1));
    Ok(ids(redis, stream, "-", "+", drop)
        .await?
        .last()
        .map(StreamId::next))
}

/// Plans one stream's trim at `now_ms`.
pub async fn plan(
    redis: &Redis,
    stream: &str,
    cfg: &RetentionConfig,
    now_ms: u64,
) -> Result<TrimPlan, StreamError> {
    let mut conn = redis.conn.clone();
    let length: u64 = redis
        .run(redis::cmd("XLEN").arg(stream).query_async(&mut conn))
        .await?;
    let mut plan = TrimPlan {
        stream: stream.to_string(),
        length,
        wanted: None,
        floor: None,
        floor_group: None,
        trim_to: None,
        held_by: None,
        held_secs: 0.0,
        forced: BTreeMap::new(),
    };
    if length == 0 {
        return Ok(plan);
    }
    let by_age = (cfg.max_age_secs > 0).then(|| StreamId {
        ms: now_ms.saturating_sub(cfg.max_age_secs.saturating_mul(1000)),
        seq: 0,
    });
    let by_len = minid_for_len(redis, stream, length, cfg.max_len, cfg.max_scan).await?;
    let wanted = by_age.max(by_len);
    let needs = group_needs(redis, stream).await?;
    let floor = needs.iter().min_by_key(|n| n.floor());
    // what the group needs as it exists: a group created at 0, or behind
    // entries already trimmed, needs nothing older than the first entry
    // (measured from 0-0 it held retention back by ~57 years)
    let first = match floor {
        Some(_) => ids(redis, stream, "-", "+", 1).await?.first().copied(),
        None => None,
    };
    let floor_id = floor.map(|n| first.map_or(n.floor(), |f| n.floor().max(f)));
    plan.wanted = wanted.map(|w| w.to_string());
    plan.floor = floor_id.map(|f| f.to_string());
    plan.floor_group = floor.map(|n| n.group.clone());
    let mut trim_to = match (wanted, floor, floor_id) {
        (Some(w), Some(f), Some(needed)) if w > needed => {
            plan.held_by = Some(f.group.clone());
            plan.held_secs = w.ms.saturating_sub(needed.ms) as f64 / 1000.0;
            Some(needed)
        }
        (w, _, _) => w,
    };
    let hard = minid_for_len(redis, stream, length, cfg.hard_max_len, cfg.max_scan).await?;
    if let Some(h) = hard.filter(|h| Some(*h) > trim_to) {
        // Memory safety wins: count, per group, what it loses unread.
        for n in needs.iter().filter(|n| n.floor() < h) {
            let below = format!("({h}");
            let undelivered = if n.last_delivered.next() < h {
                ids(
                    redis,
                    stream,
                    &format!("({}", n.last_delivered),
                    &below,
                    cfg.max_scan,
                )
                .await?
                .len() as u64
            } else {
                0
            };
            let pending: Value = redis
                .run(
                    redis::cmd("XPENDING")
                        .arg(stream)
                        .arg(&n.group)
                        .arg("-")
                        .arg(&below)
                        .arg(cfg.max_scan)
                        .query_async(&mut conn),
                )
                .await?;
            let pending = match pending {
                Value::Array(p) => p.len() as u64,
                _ => 0,
            };
            if undelivered + pending > 0 {
                plan.forced.insert(n.group.clone(), undelivered + pending);
            }
        }
        trim_to = Some(h);
    }
    plan.trim_to = trim_to.map(|t| t.to_string());
    Ok(plan)
}

/// What one pass did to one stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trimmed {
    pub entries: u64,
    /// Unacknowledged entries dropped by the hard cap, per group.
    pub forced: BTreeMap<String, u64>,
}

/// Applies a plan: `XTRIM MINID`, then records forced drops.
pub async fn apply(redis: &Redis, keys: &Keys, plan: &TrimPlan) -> Result<Trimmed, StreamError> {
    let Some(to) = &plan.trim_to else {
        return Ok(Trimmed::default());
    };
    let mut conn = redis.conn.clone();
    let entries: u64 = redis
        .run(
            redis::cmd("XTRIM")
                .arg(&plan.stream)
                .arg("MINID")
                .arg(to)
                .query_async(&mut conn),
        )
        .await?;
    if !plan.forced.is_empty() {
        let mut pipe = redis::pipe();
        for (group, n) in &plan.forced {
            pipe.cmd("HINCRBY")
                .arg(keys.retention())
                .arg(format!("unread_trimmed:{group}"))
                .arg(*n)
                .ignore();
            metrics::RETENTION_FORCED.add(*n);
            tracing::error!(
                stream = %plan.stream, %group, entries = n,
                "retention.hard_max_len trimmed entries this group had not acknowledged; they are lost to it"
            );
        }
        redis.run(pipe.query_async::<()>(&mut conn)).await?;
    }
    metrics::RETENTION_TRIMMED.add(entries);
    Ok(Trimmed {
        entries,
        forced: plan.forced.clone(),
    })
}

/// What a plan would trim, counted up to `cap` entries (for `trim --dry-run`).
pub async fn would_trim(
    redis: &Redis,
    plan: &TrimPlan,
    cap: usize,
) -> Result<Trimmed, StreamError> {
    let entries = match &plan.trim_to {
        Some(to) => ids(redis, &plan.stream, "-", &format!("({to}"), cap)
            .await?
            .len() as u64,
        None => 0,
    };
    Ok(Trimmed {
        entries,
        forced: plan.forced.clone(),
    })
}

/// Unacknowledged entries the hard cap has dropped so far, per group.
pub async fn forced_totals(
    redis: &Redis,
    keys: &Keys,
) -> Result<BTreeMap<String, u64>, StreamError> {
    let mut conn = redis.conn.clone();
    let raw: BTreeMap<String, u64> = redis
        .run(
            redis::cmd("HGETALL")
                .arg(keys.retention())
                .query_async(&mut conn),
        )
        .await?;
    Ok(raw
        .into_iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("unread_trimmed:")
                .map(|g| (g.to_string(), v))
        })
        .collect())
}

/// Every shard stream of every kind.
pub fn all_streams(keys: &Keys, schemas: &SchemaRegistry) -> Vec<String> {
    schemas
        .kinds()
        .iter()
        .flat_map(|k| keys.all_shards_of(&k.name))
        .map(|s| keys.stream(&s))
        .collect()
}

/// One pass over every stream: plan and apply. Returns the plans and results.
pub async fn pass(
    redis: &Redis,
    keys: &Keys,
    streams: &[String],
    cfg: &RetentionConfig,
) -> Result<Vec<(TrimPlan, Trimmed)>, StreamError> {
    each_stream(redis, Some(keys), streams, cfg).await
}

/// What [`pass`] would do now, changing nothing: the plans, and per stream
/// the entries a trim would drop (counted up to a million per stream).
pub async fn dry_run(
    redis: &Redis,
    streams: &[String],
    cfg: &RetentionConfig,
) -> Result<Vec<(TrimPlan, Trimmed)>, StreamError> {
    each_stream(redis, None, streams, cfg).await
}

/// Plans each stream and applies the plan (with `keys`) or counts what it
/// would trim (without).
async fn each_stream(
    redis: &Redis,
    apply_with: Option<&Keys>,
    streams: &[String],
    cfg: &RetentionConfig,
) -> Result<Vec<(TrimPlan, Trimmed)>, StreamError> {
    let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let mut out = Vec::new();
    for s in streams {
        let p = plan(redis, s, cfg, now_ms).await?;
        let t = match apply_with {
            Some(keys) => {
                if let Some(group) = &p.held_by {
                    tracing::warn!(
                        stream = %s, %group, held_secs = p.held_secs,
                        "retention held back by a group that has not read or acknowledged older entries"
                    );
                }
                apply(redis, keys, &p).await?
            }
            None => would_trim(redis, &p, 1_000_000).await?,
        };
        out.push((p, t));
    }
    Ok(out)
}

/// Runs a pass every `retention.interval_ms` until `shutdown`. Among several
/// workers one pass per interval runs (a short Redis lock), so they do not
/// repeat each other's scans. Each pass first moves older shard sets along
/// ([`crate::shards::advance`]: seal, retire, drop), then plans every
/// stream of the layout in use.
pub async fn run(
    redis: Redis,
    keys: Keys,
    schemas: std::sync::Arc<SchemaRegistry>,
    cfg: RetentionConfig,
    keep_sets_ms: i64,
    owner: String,
    shutdown: CancellationToken,
) {
    let kinds: Vec<String> = schemas.kinds().iter().map(|k| k.name.clone()).collect();
    let interval = std::time::Duration::from_millis(cfg.interval_ms.max(100));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let mut conn = redis.conn.clone();
        let lock: Result<Option<String>, StreamError> = redis
            .run(
                redis::cmd("SET")
                    .arg(keys.retention_lock())
                    .arg(&owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(cfg.interval_ms.max(100))
                    .query_async(&mut conn),
            )
            .await;
        match lock {
            Ok(Some(_)) => {}
            Ok(None) => continue, // another worker runs this interval's pass
            Err(e) => {
                tracing::warn!(error = %e, "retention: cannot take the pass lock; retrying next interval");
                continue;
            }
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        if let Err(e) = crate::shards::advance(&redis, &keys, &kinds, keep_sets_ms, now_ms).await {
            tracing::warn!(error = %e, "shard sets: cannot move older sets along; retrying next interval");
        }
        let streams = all_streams(&keys, &schemas);
        if let Err(e) = pass(&redis, &keys, &streams, &cfg).await {
            tracing::warn!(error = %e, "retention pass failed; retrying next interval");
        }
    }
}
