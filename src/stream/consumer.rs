//! Consumer-group reads, fenced by the shard lease, and acknowledgements.
//!
//! The owner of a shard reads it under the consumer name of the shard
//! (`kind:i`), so whoever owns the shard next finds the previous owner's
//! unacknowledged entries in the same pending list and re-reads them first.
//! Each read runs as a Lua script that checks the lease and calls XREADGROUP
//! atomically: a worker whose lease has expired cannot take entries after the
//! new owner started, which keeps every owner's view of the shard contiguous.

use std::fmt;
use std::str::FromStr;

use redis::Value;

use super::{Redis, StreamError};

/// XACK ids per command; bounds one command's size.
const ACK_CHUNK: usize = 1_000;

const READ_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
return redis.call('XREADGROUP', 'GROUP', ARGV[2], ARGV[3], 'COUNT', ARGV[4], 'STREAMS', KEYS[2], ARGV[5])
"#;

/// A stream entry id `ms-seq`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    /// The smallest id after this one (`XTRIM MINID next` keeps this entry's successors).
    pub fn next(&self) -> StreamId {
        match self.seq.checked_add(1) {
            Some(seq) => StreamId { ms: self.ms, seq },
            None => StreamId {
                ms: self.ms.saturating_add(1),
                seq: 0,
            },
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for StreamId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        match (ms.parse(), seq.parse()) {
            (Ok(ms), Ok(seq)) => Ok(StreamId { ms, seq }),
            _ => Err(format!("not a stream id: {s:?} (expected MS-SEQ)")),
        }
    }
}

/// One entry read from a shard.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: StreamId,
    /// `kind` field.
    pub kind: Option<String>,
    /// `v` field: the schema version the event was validated against.
    pub version: Option<u32>,
    /// `data` field; `None` when the entry was deleted (trimmed) while pending,
    /// or written without `data` by a foreign producer.
    pub data: Option<String>,
    /// Times the group has delivered it, this delivery included (1 for new
    /// entries; read from XPENDING for re-read pending entries).
    pub deliveries: u64,
}

/// Result of one read.
#[derive(Debug)]
pub enum ReadOutcome {
    Entries(Vec<Entry>),
    /// The lease is no longer ours: stop reading this shard.
    LeaseLost,
}

/// Creates the group on a stream at `start` (`0`, `$` or an id), with MKSTREAM.
/// An existing group is left as it is.
pub async fn ensure_group(
    redis: &Redis,
    stream: &str,
    group: &str,
    start: &str,
) -> Result<(), StreamError> {
    let mut conn = redis.conn.clone();
    let res: Result<(), StreamError> = redis
        .run(
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg(group)
                .arg(start)
                .arg("MKSTREAM")
                .query_async::<()>(&mut conn),
        )
        .await;
    match res {
        Err(StreamError::Redis(e)) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// Reads one shard for one group as the shard's owner.
pub struct GroupReader {
    redis: Redis,
    script: redis::Script,
    stream: String,
    lease: String,
    group: String,
    consumer: String,
    worker: String,
    count: usize,
    /// `Some(after)` while re-reading our pending list; `None` once reading new entries.
    pending_after: Option<StreamId>,
    /// Pending entries delivered more often than this come alone (0: never split).
    suspect_after: u64,
}

impl GroupReader {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        redis: Redis,
        stream: String,
        lease: String,
        group: String,
        consumer: String,
        worker: String,
        count: usize,
    ) -> Self {
        Self {
            redis,
            script: redis::Script::new(READ_SCRIPT),
            stream,
            lease,
            group,
            consumer,
            worker,
            count: count.max(1),
            pending_after: Some(StreamId::ZERO),
            suspect_after: 0,
        }
    }

    /// Re-read pending entries delivered more than `n` times are returned
    /// alone, one per read, so the caller can apply and commit each by itself.
    pub fn with_suspects_after(mut self, n: u64) -> Self {
        self.suspect_after = n;
        self
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Reads the next batch: first the pending list (from the start), then new entries.
    pub async fn read(&mut self) -> Result<ReadOutcome, StreamError> {
        loop {
            let (from, count) = match self.pending_after {
                Some(id) => (id.to_string(), self.pending_count(id).await?),
                None => (">".to_string(), self.count),
            };
            let mut conn = self.redis.conn.clone();
            let mut inv = self.script.prepare_invoke();
            inv.key(&self.lease)
                .key(&self.stream)
                .arg(&self.worker)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(count)
                .arg(&from);
            let reply: Value = self.redis.run(inv.invoke_async(&mut conn)).await?;
            if let Value::Int(-1) = reply {
                return Ok(ReadOutcome::LeaseLost);
            }
            let mut entries = parse_xread(reply)?;
            match self.pending_after {
                Some(_) if entries.is_empty() => {
                    self.pending_after = None; // pending list drained: go on with new entries
                    continue;
                }
                Some(_) => {
                    self.count_deliveries(&mut entries).await?;
                    let max = self.suspect_after;
                    match entries.iter().position(|e| max > 0 && e.deliveries > max) {
                        // a suspect first: it alone
                        Some(0) => entries.truncate(1),
                        // entries before the suspect; the next read starts at it
                        Some(i) => entries.truncate(i),
                        None => {}
                    }
                    self.pending_after = entries.last().map(|e| e.id);
                }
                None => {}
            }
            return Ok(ReadOutcome::Entries(entries));
        }
    }
}

impl GroupReader {
    /// How many pending entries after `after` to re-read at once: up to the
    /// first suspect, or the suspect alone. Re-reading a pending entry
    /// counts as a delivery, so reading a whole page to hand over one
    /// suspect would push the entries behind it toward being suspects too;
    /// XPENDING (which counts nothing) looks first.
    async fn pending_count(&self, after: StreamId) -> Result<usize, StreamError> {
        if self.suspect_after == 0 {
            return Ok(self.count);
        }
        let start = if after == StreamId::ZERO {
            "-".to_string()
        } else {
            format!("({after}")
        };
        let details = self.pending_details(&start, "+", self.count).await?;
        // this read is one more delivery of each
        Ok(
            match details
                .iter()
                .position(|(_, _, _, n)| n + 1 > self.suspect_after)
            {
                Some(0) => 1,
                Some(i) => i,
                None => self.count,
            },
        )
    }

    /// Our pending entries from `start` to `end` (at most `count`), each
    /// (id, consumer, idle ms, deliveries). Asking counts as no delivery.
    async fn pending_details(
        &self,
        start: &str,
        end: &str,
        count: usize,
    ) -> Result<Vec<(String, String, u64, u64)>, StreamError> {
        let mut conn = self.redis.conn.clone();
        self.redis
            .run(
                redis::cmd("XPENDING")
                    .arg(&self.stream)
                    .arg(&self.group)
                    .arg(start)
                    .arg(end)
                    .arg(count)
                    .arg(&self.consumer)
                    .query_async(&mut conn),
            )
            .await
    }

    /// Fills `deliveries` of re-read pending entries from XPENDING (one call
    /// per page of the pending list; never on the path of new entries).
    async fn count_deliveries(&self, entries: &mut [Entry]) -> Result<(), StreamError> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(());
        };
        let details = self
            .pending_details(&first.id.to_string(), &last.id.to_string(), entries.len())
            .await?;
        let counts: std::collections::HashMap<StreamId, u64> = details
            .into_iter()
            .filter_map(|(id, _, _, n)| id.parse().ok().map(|id| (id, n)))
            .collect();
        for e in entries.iter_mut() {
            if let Some(n) = counts.get(&e.id) {
                e.deliveries = *n;
            }
        }
        Ok(())
    }
}

/// Acknowledges ids on a stream (chunked, one pipeline).
pub async fn ack(
    redis: &Redis,
    stream: &str,
    group: &str,
    ids: &[StreamId],
) -> Result<(), StreamError> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for chunk in ids.chunks(ACK_CHUNK) {
        let cmd = pipe.cmd("XACK").arg(stream).arg(group);
        for id in chunk {
            cmd.arg(id.to_string());
        }
        cmd.ignore();
    }
    let mut conn = redis.conn.clone();
    redis.run(pipe.query_async::<()>(&mut conn)).await
}

/// Up to `count` entries of `stream` from `start` to `end` (XRANGE syntax:
/// ids, `-`, `+`, `(id` for exclusive), outside any group.
pub async fn range(
    redis: &Redis,
    stream: &str,
    start: &str,
    end: &str,
    count: usize,
) -> Result<Vec<Entry>, StreamError> {
    let mut conn = redis.conn.clone();
    let reply: Value = redis
        .run(
            redis::cmd("XRANGE")
                .arg(stream)
                .arg(start)
                .arg(end)
                .arg("COUNT")
                .arg(count)
                .query_async(&mut conn),
        )
        .await?;
    match reply {
        Value::Array(entries) => entries.into_iter().map(parse_entry).collect(),
        Value::Nil => Ok(Vec::new()),
        other => Err(StreamError::Protocol(format!("XRANGE reply {other:?}"))),
    }
}

/// Parses an XREAD/XREADGROUP reply for a single stream.
fn parse_xread(v: Value) -> Result<Vec<Entry>, StreamError> {
    let streams = match v {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(a) => a,
        Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect::<Vec<_>>(),
        other => return Err(StreamError::Protocol(format!("XREADGROUP reply {other:?}"))),
    };
    let mut out = Vec::new();
    for s in streams {
        let parts = match s {
            Value::Array(p) => p,
            // RESP3 map flattening leaves the stream name and entries as siblings
            Value::BulkString(_) => continue,
            other => return Err(StreamError::Protocol(format!("stream reply {other:?}"))),
        };
        let entries = match parts.into_iter().nth(1) {
            Some(Value::Array(e)) => e,
            Some(Value::Nil) | None => continue,
            Some(other) => return Err(StreamError::Protocol(format!("entries {other:?}"))),
        };
        for e in entries {
            out.push(parse_entry(e)?);
        }
    }
    Ok(out)
}

/// Takes the bytes without copying; invalid UTF-8 (a foreign producer) is
/// replaced, and the entry then fails to decode with a clear reason.
fn utf8(v: Vec<u8>) -> String {
    String::from_utf8(v).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn parse_entry(v: Value) -> Result<Entry, StreamError> {
    let Value::Array(mut parts) = v else {
        return Err(StreamError::Protocol("entry is not an array".into()));
    };
    let fields = if parts.len() > 1 { parts.pop() } else { None };
    let id = match parts.pop() {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(&b)
            .parse::<StreamId>()
            .map_err(StreamError::Protocol)?,
        other => return Err(StreamError::Protocol(format!("entry id {other:?}"))),
    };
    let mut entry = Entry {
        id,
        kind: None,
        version: None,
        data: None,
        deliveries: 1,
    };
    if let Some(Value::Array(f)) = fields {
        let mut it = f.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            let (Value::BulkString(k), Value::BulkString(v)) = (k, v) else {
                continue;
            };
            match k.as_slice() {
                b"data" => entry.data = Some(utf8(v)),
                b"kind" => entry.kind = Some(utf8(v)),
                b"v" => entry.version = std::str::from_utf8(&v).ok().and_then(|v| v.parse().ok()),
                _ => {}
            }
        }
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_order_and_parse() {
        let a: StreamId = "5-1".parse().expect("id");
        let b: StreamId = "5-10".parse().expect("id");
        let c: StreamId = "6".parse().expect("id");
        assert!(a < b && b < c);
        assert_eq!(b.to_string(), "5-10");
        assert!("x-1".parse::<StreamId>().is_err());
    }

    #[test]
    fn parses_replies_including_deleted_entries() {
        let bs = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![Value::Array(vec![
            bs("fm:{http:0}"),
            Value::Array(vec![
                Value::Array(vec![
                    bs("1-0"),
                    Value::Array(vec![
                        bs("kind"),
                        bs("http"),
                        bs("v"),
                        bs("2"),
                        bs("data"),
                        bs("{}"),
                    ]),
                ]),
                Value::Array(vec![bs("2-0"), Value::Nil]),
            ]),
        ])]);
        let e = parse_xread(reply).expect("parses");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].data.as_deref(), Some("{}"));
        assert_eq!(e[0].version, Some(2));
        assert_eq!(e[1].data, None);
        assert_eq!(e[1].version, None);
        assert!(parse_xread(Value::Nil).expect("nil").is_empty());
    }
}
