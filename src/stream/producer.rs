//! The producer: appends validated events to their shard streams.

use crate::event::{SchemaRegistry, ValidEvent};

use super::{Keys, Redis, StreamError};

/// Appends events with XADD. One request = one MULTI/EXEC pipeline: one round
/// trip, and all of the request's entries are written or none is.
#[derive(Clone)]
pub struct Producer {
    redis: Redis,
    keys: Keys,
}

impl Producer {
    pub fn new(redis: Redis, keys: Keys) -> Self {
        Self { redis, keys }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Appends all events atomically; returns once Redis has acknowledged them.
    pub async fn append(
        &self,
        registry: &SchemaRegistry,
        events: &[ValidEvent],
    ) -> Result<(), StreamError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for e in events {
            let kind = registry
                .kind(e.kind)
                .map(|k| k.name.as_str())
                .ok_or_else(|| StreamError::Protocol(format!("unknown kind index {}", e.kind)))?;
            let shard = self.keys.shard_for(kind, e.partition);
            pipe.cmd("XADD")
                .arg(self.keys.stream(&shard))
                .arg("*")
                .arg("kind")
                .arg(kind)
                .arg("v")
                .arg(e.version)
                .arg("data")
                .arg(&e.data)
                .ignore();
        }
        let mut conn = self.redis.conn.clone();
        self.redis.run(pipe.query_async::<()>(&mut conn)).await
    }
}
