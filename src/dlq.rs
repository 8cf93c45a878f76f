//! Dead-letter streams: `{prefix}:dlq:{group}` holds the entries a group
//! could not process (today: entries the rollup cannot decode), each with the
//! original stream and id, the processor, the error and the original `data`.
//! The rollup writes them before the flush that acknowledges the originals,
//! so a poison entry never blocks its shard and is never silently dropped.
//!
//! `flowmeter dlq list|show|retry|purge` manage them.

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
    let mut conn = redis.conn.clone();
    redis.run(pipe.query_async::<()>(&mut conn)).await?;
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

/// Re-appends dead letters to their original streams (new ids, so every
/// group reading that stream sees them again) and removes them from the
/// dead-letter stream, each in one MULTI/EXEC. Returns how many moved.
pub async fn retry(
    redis: &Redis,
    keys: &Keys,
    group: &str,
    letters: &[DeadLetter],
) -> Result<usize, StreamError> {
    let mut moved = 0;
    crate::stream::layout::load_into(redis, keys).await?;
    for d in letters {
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
        // a stream of a sealed shard set takes nothing more: the entry goes
        // to the shard of the same position in the set written to now
        let target = keys
            .shard_of_stream(&d.stream)
            .map(|s| keys.stream(&keys.rewrite_target(&s)))
            .unwrap_or_else(|| d.stream.clone());
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("XADD")
            .arg(&target)
            .arg("*")
            .arg("kind")
            .arg(kind)
            .arg("v")
            .arg(v)
            .arg("data")
            .arg(&d.data)
            .ignore();
        pipe.cmd("XDEL")
            .arg(keys.dlq(group))
            .arg(&d.dlq_id)
            .ignore();
        let mut conn = redis.conn.clone();
        redis.run(pipe.query_async::<()>(&mut conn)).await?;
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
