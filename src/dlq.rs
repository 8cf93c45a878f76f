//! Dead-letter streams: `{prefix}:dlq:{group}` holds the entries a group
//! could not process (today: entries the rollup cannot decode), each with the
//! original stream and id, the processor, the error and the original `data`.
//! The rollup writes them before the flush that acknowledges the originals,
//! so a poison entry never blocks its shard and is never silently dropped.
//!
//! `flowmeter dlq list|show|retry|purge` manage them.

use std::time::Duration;

use serde::Serialize;

use crate::stream::{Keys, Redis, StreamError, StreamId};

/// Bound of each dead-letter stream (`XADD … MAXLEN ~`): the oldest dead
/// letters go first.
pub const MAX_LEN: u64 = 100_000;

/// An entry to dead-letter.
pub struct NewLetter<'a> {
    pub stream: &'a str,
    pub id: StreamId,
    pub error: &'a str,
    pub data: Option<&'a str>,
}

/// Appends `letters` of `processor` to the dead-letter stream `key` in one
/// MULTI/EXEC; the caller acknowledges the originals only after this.
pub async fn append(
    redis: &Redis,
    key: &str,
    processor: &str,
    letters: &[NewLetter<'_>],
) -> Result<(), StreamError> {
    if letters.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    pipe.atomic();
    for l in letters {
        pipe.cmd("XADD")
            .arg(key)
            .arg("MAXLEN")
            .arg("~")
            .arg(MAX_LEN)
            .arg("*")
            .arg("stream")
            .arg(l.stream)
            .arg("id")
            .arg(l.id.to_string())
            .arg("processor")
            .arg(processor)
            .arg("error")
            .arg(l.error)
            .arg("data")
            .arg(l.data.unwrap_or(""))
            .ignore();
    }
    redis.transaction::<()>(&pipe, key).await?;
    crate::telemetry::metrics::DEAD_LETTERED.add(letters.len() as u64);
    Ok(())
}

/// One dead letter.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeadLetter {
    /// Id in the dead-letter stream.
    pub dlq_id: String,
    /// Original stream and entry id.
    pub stream: String,
    pub id: String,
    pub processor: String,
    pub error: String,
    pub data: String,
}

fn from_fields(dlq_id: String, fields: Vec<(String, String)>) -> DeadLetter {
    let mut d = DeadLetter {
        dlq_id,
        stream: String::new(),
        id: String::new(),
        processor: String::new(),
        error: String::new(),
        data: String::new(),
    };
    for (k, v) in fields {
        match k.as_str() {
            "stream" => d.stream = v,
            "id" => d.id = v,
            "processor" => d.processor = v,
            "error" => d.error = v,
            "data" => d.data = v,
            _ => {}
        }
    }
    d
}

type RawEntries = Vec<(String, Vec<(String, String)>)>;

/// Up to `count` dead letters of `group`, oldest first, from `start` (an id, or "-").
pub async fn list(
    redis: &Redis,
    keys: &Keys,
    group: &str,
    start: &str,
    count: usize,
) -> Result<Vec<DeadLetter>, StreamError> {
    let mut conn = redis.conn.clone();
    let raw: RawEntries = redis
        .run(
            redis::cmd("XRANGE")
                .arg(keys.dlq(group))
                .arg(start)
                .arg("+")
                .arg("COUNT")
                .arg(count)
                .query_async(&mut conn),
        )
        .await?;
    Ok(raw.into_iter().map(|(id, f)| from_fields(id, f)).collect())
}

/// Number of dead letters of `group`.
pub async fn len(redis: &Redis, keys: &Keys, group: &str) -> Result<u64, StreamError> {
    let mut conn = redis.conn.clone();
    redis
        .run(
            redis::cmd("XLEN")
                .arg(keys.dlq(group))
                .query_async(&mut conn),
        )
        .await
}

/// The kind of a shard stream `{prefix}:{kind:i}`.
fn kind_of(stream: &str) -> Option<&str> {
    let tag = stream.rsplit_once(":{")?.1.strip_suffix('}')?;
    Some(tag.rsplit_once(':')?.0)
}

/// How long `dlq retry` on a Redis Cluster remembers that it re-appended a
/// dead letter (the default of `flowmeter dlq retry --marker-ttl-secs`): a
/// run that died between re-appending and removing a dead letter, repeated
/// within this time, does not append it again.
pub const RETRY_MARKER_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Re-appends a dead letter to its stream on a Redis Cluster, where the
/// stream and the dead-letter stream are in different slots: once per
/// marker (KEYS[1], in the stream's slot), which it sets with the append.
/// KEYS[2]: the stream; ARGV: marker lifetime (ms), kind, v, data. Returns
/// 1 when it appended, 0 when the marker says an earlier run did.
const REAPPEND_ONCE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('XADD', KEYS[2], '*', 'kind', ARGV[2], 'v', ARGV[3], 'data', ARGV[4])
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
return 1
";

/// Re-appends a dead letter and removes it from the dead-letter stream, on
/// one server (one script: both or neither). KEYS: the stream, the
/// dead-letter stream; ARGV: kind, v, data, the dead letter's id.
const MOVE_BACK: &str = r"
redis.call('XADD', KEYS[1], '*', 'kind', ARGV[1], 'v', ARGV[2], 'data', ARGV[3])
redis.call('XDEL', KEYS[2], ARGV[4])
return 1
";

/// The kind and schema version a dead letter is re-appended with.
fn kind_and_version(d: &DeadLetter) -> Result<(&str, u64), StreamError> {
    let Some(kind) = kind_of(&d.stream) else {
        return Err(StreamError::Protocol(format!(
            "dead letter {}: {:?} is not a flowmeter shard stream",
            d.dlq_id, d.stream
        )));
    };
    let v = serde_json::from_str::<serde_json::Value>(&d.data)
        .ok()
        .and_then(|e| e.get("v").and_then(serde_json::Value::as_u64))
        .unwrap_or(1);
    Ok((kind, v))
}

/// The first half of [`retry`] on a Redis Cluster: re-appends `d` to its
/// stream unless its marker says that was done (then `false`), and sets
/// the marker, for `marker_ttl`, in the same script.
pub async fn reappend_once(
    redis: &Redis,
    keys: &Keys,
    group: &str,
    d: &DeadLetter,
    marker_ttl: Duration,
) -> Result<bool, StreamError> {
    let (kind, v) = kind_and_version(d)?;
    let marker = keys
        .dlq_retried(group, &d.stream, &d.dlq_id)
        .ok_or_else(|| {
            StreamError::Protocol(format!(
                "dead letter {}: {:?} has no hash tag",
                d.dlq_id, d.stream
            ))
        })?;
    let mut conn = redis.conn.clone();
    let appended: i64 = redis
        .run(
            redis::Script::new(REAPPEND_ONCE)
                .key(&marker)
                .key(&d.stream)
                .arg(
                    u64::try_from(marker_ttl.as_millis())
                        .unwrap_or(u64::MAX)
                        .max(1),
                )
                .arg(kind)
                .arg(v)
                .arg(&d.data)
                .invoke_async(&mut conn),
        )
        .await?;
    Ok(appended == 1)
}

/// Re-appends dead letters to their original streams (new ids, so every
/// group reading that stream sees them again) and removes them from the
/// dead-letter stream. Returns how many moved.
///
/// On one server each moves in one MULTI/EXEC. On a Redis Cluster the two
/// streams are in different slots, so no transaction holds both: each is
/// re-appended by [`reappend_once`] (append and marker in the stream's
/// slot), then removed. A run that dies in between leaves the dead letter
/// and its marker; run again (within `marker_ttl`), it skips the append and
/// removes it. No dead letter is lost, none appended twice.
pub async fn retry(
    redis: &Redis,
    keys: &Keys,
    group: &str,
    letters: &[DeadLetter],
    marker_ttl: Duration,
) -> Result<usize, StreamError> {
    let mut moved = 0;
    crate::stream::layout::load_into(redis, keys).await?;
    for d in letters {
        let (kind, v) = kind_and_version(d)?;
        // a stream of a sealed shard set takes nothing more: the entry goes
        // to the shard of the same position in the set written to now
        let letter = DeadLetter {
            stream: keys
                .shard_of_stream(&d.stream)
                .map(|s| keys.stream(&keys.rewrite_target(&s)))
                .unwrap_or_else(|| d.stream.clone()),
            ..d.clone()
        };
        if redis.is_cluster() {
            reappend_once(redis, keys, group, &letter, marker_ttl).await?;
            let mut conn = redis.conn.clone();
            let _: u64 = redis
                .run(
                    redis::cmd("XDEL")
                        .arg(keys.dlq(group))
                        .arg(&d.dlq_id)
                        .query_async(&mut conn),
                )
                .await?;
        } else {
            // one script: a refused XADD (the stream was sealed meanwhile)
            // stops it before the XDEL, so the dead letter stays
            let mut conn = redis.conn.clone();
            let _: i64 = redis
                .run(
                    redis::Script::new(MOVE_BACK)
                        .key(&letter.stream)
                        .key(keys.dlq(group))
                        .arg(kind)
                        .arg(v)
                        .arg(&d.data)
                        .arg(&d.dlq_id)
                        .invoke_async(&mut conn),
                )
                .await?;
        }
        moved += 1;
    }
    Ok(moved)
}

/// Deletes every dead letter of `group`; returns how many there were.
pub async fn purge(redis: &Redis, keys: &Keys, group: &str) -> Result<u64, StreamError> {
    let n = len(redis, keys, group).await?;
    let mut conn = redis.conn.clone();
    let _: () = redis
        .run(
            redis::cmd("DEL")
                .arg(keys.dlq(group))
                .query_async(&mut conn),
        )
        .await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_of_shard_streams() {
        assert_eq!(kind_of("fm:{http:3}"), Some("http"));
        assert_eq!(kind_of("a:b:{web:rtc:0}"), Some("web:rtc"));
        assert_eq!(kind_of("fm:dlq:rollup"), None);
    }
}
