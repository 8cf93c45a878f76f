//! Every Redis key flowmeter uses is built here, and nowhere else.

use std::fmt;

/// One shard stream of one kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shard {
    pub kind: String,
    pub index: u32,
}

impl Shard {
    pub fn new(kind: impl Into<String>, index: u32) -> Self {
        Self {
            kind: kind.into(),
            index,
        }
    }

    /// `kind:index`: the hash tag, the consumer name of the shard's owner, and
    /// the shard's name in status output.
    pub fn label(&self) -> String {
        format!("{}:{}", self.kind, self.index)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.index)
    }
}

/// Key builder bound to the configured prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    shards: u32,
}

impl Keys {
    pub fn new(prefix: impl Into<String>, shards: u32) -> Self {
        Self {
            prefix: prefix.into(),
            shards: shards.max(1),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn shard_count(&self) -> u32 {
        self.shards
    }

    /// The shard a partition hash maps to.
    pub fn shard_for(&self, kind: &str, partition: u64) -> Shard {
        // Multiply-shift maps the hash onto [0, shards) without modulo bias.
        let idx = ((u128::from(partition) * u128::from(self.shards)) >> 64) as u32;
        Shard::new(kind, idx)
    }

    /// All shards of a kind.
    pub fn shards_of(&self, kind: &str) -> Vec<Shard> {
        (0..self.shards).map(|i| Shard::new(kind, i)).collect()
    }

    /// `{prefix}:{kind:i}`.
    pub fn stream(&self, shard: &Shard) -> String {
        format!("{}:{{{}}}", self.prefix, shard.label())
    }

    /// The home shard of an ingest request carrying `Idempotency-Key: key`:
    /// the kind of its first event, the index hashed from the key (so every
    /// retry, whatever its body, finds the same record as long as its first
    /// event has the same kind).
    pub fn home_shard(&self, kind: &str, idempotency_key: &str) -> Shard {
        self.shard_for(kind, xxhash_rust::xxh3::xxh3_64(idempotency_key.as_bytes()))
    }

    /// Idempotency record of a request: `{prefix}:idem:{kind:i}:{key}`, kept
    /// `ingest.idempotency_window_secs`. The hash tag is the home shard's, so
    /// on Redis Cluster the record lives in the slot of that shard's stream.
    ///
    /// Issue 16 (Redis Cluster) must keep the record in the same slot as the
    /// entries written with it: either route a keyed request's events to its
    /// home shard alone (one slot, one script: the record and the XADDs), or
    /// write per-shard transactions that each carry the record of their own
    /// shard (`idempotency(&shard, key)` for every shard touched). Today one
    /// request may span several shards in one script, which a cluster would
    /// reject with CROSSSLOT.
    pub fn idempotency(&self, home: &Shard, key: &str) -> String {
        format!("{}:idem:{{{}}}:{key}", self.prefix, home.label())
    }

    /// Lease of a shard for a group: `{prefix}:lease:{group}:{kind:i}` (same slot as the stream).
    pub fn lease(&self, group: &str, shard: &Shard) -> String {
        format!("{}:lease:{}:{{{}}}", self.prefix, group, shard.label())
    }

    /// Hash of retention figures (`unread_trimmed:{group}` counters).
    pub fn retention(&self) -> String {
        format!("{}:retention", self.prefix)
    }

    /// Hash of ingest figures every ingest process adds to
    /// (`not_replicated`: requests fewer replicas than `ingest.wait_replicas`
    /// confirmed in time).
    pub fn ingest_figures(&self) -> String {
        format!("{}:ingest", self.prefix)
    }

    /// Stream of alert announcements (fired / resolved), tailed by every hub.
    pub fn alerts(&self) -> String {
        format!("{}:alerts", self.prefix)
    }

    /// Lease of the one alert evaluator.
    pub fn alerts_lease(&self) -> String {
        format!("{}:lease:alerts", self.prefix)
    }

    /// Hash of solo attempts of suspect entries of a group (`stream/id` → n).
    pub fn suspects(&self, group: &str) -> String {
        format!("{}:suspects:{}", self.prefix, group)
    }

    /// Lock taken for one retention pass.
    pub fn retention_lock(&self) -> String {
        format!("{}:lease:retention", self.prefix)
    }

    /// Sorted set of live workers of a group (score: heartbeat expiry, ms).
    pub fn workers(&self, group: &str) -> String {
        format!("{}:workers:{}", self.prefix, group)
    }

    /// Dead-letter stream of a group: `{prefix}:dlq:{group}`.
    pub fn dlq(&self, group: &str) -> String {
        format!("{}:dlq:{}", self.prefix, group)
    }

    /// Hash of per-worker runner statistics of a processor.
    pub fn stats(&self, processor: &str) -> String {
        format!("{}:stats:{}", self.prefix, processor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_layout() {
        let k = Keys::new("fm", 4);
        let s = Shard::new("http", 2);
        assert_eq!(k.stream(&s), "fm:{http:2}");
        assert_eq!(k.lease("rollup", &s), "fm:lease:rollup:{http:2}");
        assert_eq!(k.shards_of("webrtc").len(), 4);
    }

    #[test]
    fn idempotency_record_shares_the_home_shards_hash_tag() {
        let k = Keys::new("fm", 4);
        let home = k.home_shard("http", "order-17");
        assert_eq!(home, k.home_shard("http", "order-17"));
        assert_eq!(home.kind, "http");
        let record = k.idempotency(&home, "order-17");
        let stream = k.stream(&home);
        let tag = |key: &str| {
            let open = key.find('{').map(|i| i + 1);
            let close = key.find('}');
            open.zip(close)
                .map(|(a, b)| key.get(a..b).map(str::to_owned))
        };
        assert_eq!(tag(&record), tag(&stream));
        assert_eq!(record, format!("fm:idem:{{http:{}}}:order-17", home.index));
        // keys spread over the shards like partitions do
        let used: std::collections::BTreeSet<u32> = (0..64)
            .map(|i| k.home_shard("http", &format!("k{i}")).index)
            .collect();
        assert_eq!(used.len(), 4);
    }

    #[test]
    fn shards_spread_and_stay_in_range() {
        let k = Keys::new("fm", 4);
        let mut seen = [0u32; 4];
        for i in 0..10_000u64 {
            let h = xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes());
            seen[k.shard_for("http", h).index as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 2_000), "{seen:?}");
        assert_eq!(k.shard_for("http", u64::MAX).index, 3);
    }
}
