//! Every Redis key flowmeter uses is built here, and nowhere else.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use super::layout::{Layout, ShardSet, Shared};

/// One shard stream of one kind, in one shard set (see [`super::layout`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shard {
    pub kind: String,
    /// The shard set (0: the streams of before layouts).
    pub set: u32,
    pub index: u32,
}

impl Shard {
    /// Shard `index` of set 0.
    pub fn new(kind: impl Into<String>, index: u32) -> Self {
        Self::in_set(kind, 0, index)
    }

    pub fn in_set(kind: impl Into<String>, set: u32, index: u32) -> Self {
        Self {
            kind: kind.into(),
            set,
            index,
        }
    }

    /// `kind:index` (set 0) or `kind:sN.index` (set N): the hash tag, the
    /// consumer name of the shard's owner, and the shard's name in status
    /// output.
    pub fn label(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.set {
            0 => write!(f, "{}:{}", self.kind, self.index),
            n => write!(f, "{}:s{n}.{}", self.kind, self.index),
        }
    }
}

/// Key builder bound to the configured prefix, and the shard layout this
/// process works with (shared by every clone: see [`Keys::set_layout`]).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    layout: Arc<Shared>,
}

/// Multiply-shift maps a hash onto `[0, shards)` without modulo bias.
fn index_of(partition: u64, shards: u32) -> u32 {
    ((u128::from(partition) * u128::from(shards.max(1))) >> 64) as u32
}

impl Keys {
    /// Keys with one shard set of `shards` shards, until a stored layout is
    /// loaded ([`Keys::set_layout`]).
    pub fn new(prefix: impl Into<String>, shards: u32) -> Self {
        Self {
            prefix: prefix.into(),
            layout: Arc::new(Shared::new(Layout::single(shards))),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The layout in use.
    pub fn layout(&self) -> Arc<Layout> {
        self.layout.layout()
    }

    /// Uses `layout` from now on, in every clone of these keys (ignored if
    /// older than the one in use). Returns whether anything changed.
    pub fn set_layout(&self, layout: Layout) -> bool {
        self.layout.replace(layout)
    }

    /// A writer met the seal of `set`: write to the next set from now on.
    pub fn mark_sealed(&self, set: u32) {
        self.layout.mark_sealed(set);
    }

    /// The set new events are written to (see [`Layout::write_set`]).
    pub fn write_set(&self) -> ShardSet {
        let (layout, sealed) = self.layout.get();
        layout.write_set(&sealed).clone()
    }

    /// The shard count of the set written to.
    pub fn shard_count(&self) -> u32 {
        self.write_set().shards
    }

    /// The shard a partition hash maps to, in the set written to.
    pub fn shard_for(&self, kind: &str, partition: u64) -> Shard {
        let set = self.write_set();
        Shard::in_set(kind, set.set, index_of(partition, set.shards))
    }

    /// The shard a partition hash maps to in `set`.
    pub fn shard_in(&self, set: &ShardSet, kind: &str, partition: u64) -> Shard {
        Shard::in_set(kind, set.set, index_of(partition, set.shards))
    }

    /// Every shard of a kind that workers and hubs read: those of every
    /// set but retired ones, oldest set first.
    pub fn shards_of(&self, kind: &str) -> Vec<Shard> {
        let layout = self.layout();
        layout
            .read_sets()
            .flat_map(|s| (0..s.shards).map(move |i| Shard::in_set(kind, s.set, i)))
            .collect()
    }

    /// Every shard of a kind in every set of the layout, retired ones
    /// included (status, retention, replay).
    pub fn all_shards_of(&self, kind: &str) -> Vec<Shard> {
        let layout = self.layout();
        layout
            .sets
            .iter()
            .flat_map(|s| (0..s.shards).map(move |i| Shard::in_set(kind, s.set, i)))
            .collect()
    }

    /// The shards of one set.
    pub fn shards_in(&self, set: &ShardSet, kind: &str) -> Vec<Shard> {
        (0..set.shards)
            .map(|i| Shard::in_set(kind, set.set, i))
            .collect()
    }

    /// The sets known to this process to be sealed (stored as such, or met).
    pub fn sealed_sets(&self) -> BTreeSet<u32> {
        let (layout, mut sealed) = self.layout.get();
        sealed.extend(
            layout
                .sets
                .iter()
                .filter(|s| s.state.is_sealed())
                .map(|s| s.set),
        );
        sealed
    }

    /// The shard a stream key of these keys names (`{prefix}:{http:3}`,
    /// `{prefix}:{http:s1.3}`); `None` for any other key.
    pub fn shard_of_stream(&self, stream: &str) -> Option<Shard> {
        let tag = stream
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":{")?
            .strip_suffix('}')?;
        let (kind, place) = tag.rsplit_once(':')?;
        let (set, index) = match place.strip_prefix('s') {
            Some(rest) => {
                let (set, index) = rest.split_once('.')?;
                (set.parse().ok()?, index.parse().ok()?)
            }
            None => (0, place.parse().ok()?),
        };
        let shard = Shard::in_set(kind, set, index);
        (self.stream(&shard) == stream).then_some(shard)
    }

    /// Where an entry of `shard` goes when it is written again (a dead
    /// letter retried): the shard itself unless its set is sealed (or
    /// dropped), else the shard of the same position in the set written to
    /// now.
    pub fn rewrite_target(&self, shard: &Shard) -> Shard {
        // a set no longer listed was dropped: sealed too
        let listed = self.layout().get(shard.set).is_some();
        if listed && !self.sealed_sets().contains(&shard.set) {
            return shard.clone();
        }
        let set = self.write_set();
        Shard::in_set(shard.kind.clone(), set.set, shard.index % set.shards.max(1))
    }

    /// The stored layout: `{prefix}:layout`.
    pub fn layout_key(&self) -> String {
        format!("{}:layout", self.prefix)
    }

    /// Seal marker of a shard's stream, in its slot: `{prefix}:sealed:{kind:i}`.
    pub fn sealed(&self, shard: &Shard) -> String {
        format!("{}:sealed:{{{}}}", self.prefix, shard.label())
    }

    /// `{prefix}:{kind:i}`.
    pub fn stream(&self, shard: &Shard) -> String {
        format!("{}:{{{}}}", self.prefix, shard.label())
    }

    /// The home shard in `set` of an ingest request carrying
    /// `Idempotency-Key: key`: the kind of its first event, the index hashed
    /// from the key (so every retry, whatever its body, finds the same
    /// record as long as its first event has the same kind).
    pub fn home_shard(&self, set: &ShardSet, kind: &str, idempotency_key: &str) -> Shard {
        self.shard_in(
            set,
            kind,
            xxhash_rust::xxh3::xxh3_64(idempotency_key.as_bytes()),
        )
    }

    /// Idempotency record of a request: `{prefix}:idem:{kind:i}:{key}`, kept
    /// `ingest.idempotency_window_secs`. The hash tag is the home shard's, so
    /// on Redis Cluster the record lives in the slot of that shard's stream
    /// (on a cluster each shard a request writes to gets its own record).
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

    /// Marker that dead letter `dlq_id` of `group` was re-appended to
    /// `stream` (`flowmeter dlq retry` on a Redis Cluster):
    /// `{prefix}:dlqretry:{group}:{tag}:{dlq_id}`, with the stream's hash
    /// tag, so it lives in the stream's slot. `None` for a key without a tag.
    pub fn dlq_retried(&self, group: &str, stream: &str, dlq_id: &str) -> Option<String> {
        let open = stream.find('{')?;
        let tag = stream.get(open..)?;
        let close = tag.find('}')?;
        let tag = tag.get(..=close).filter(|t| t.len() > 2)?;
        Some(format!("{}:dlqretry:{group}:{tag}:{dlq_id}", self.prefix))
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
        assert_eq!(
            k.dlq_retried("rollup", "fm:{http:2}", "5-1").as_deref(),
            Some("fm:dlqretry:rollup:{http:2}:5-1")
        );
        assert_eq!(k.dlq_retried("rollup", "fm:dlq:rollup", "5-1"), None);
        assert_eq!(k.dlq_retried("rollup", "fm:{}", "5-1"), None);
    }

    #[test]
    fn idempotency_record_shares_the_home_shards_hash_tag() {
        let k = Keys::new("fm", 4);
        let set = k.write_set();
        let home = k.home_shard(&set, "http", "order-17");
        assert_eq!(home, k.home_shard(&set, "http", "order-17"));
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
            .map(|i| k.home_shard(&set, "http", &format!("k{i}")).index)
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

    #[test]
    fn later_sets_have_their_own_streams_and_writers_follow_seals() {
        let k = Keys::new("fm", 4);
        let other = k.clone();
        assert!(k.set_layout(Layout::single(4).with_new_set(8, 1).expect("a new set")));
        // every clone sees the layout; the old set is still written to
        assert_eq!(other.shard_count(), 4);
        assert_eq!(other.shards_of("http").len(), 12);
        let s = Shard::in_set("http", 1, 7);
        assert_eq!(other.stream(&s), "fm:{http:s1.7}");
        assert_eq!(other.sealed(&s), "fm:sealed:{http:s1.7}");
        assert_eq!(other.stream(&Shard::new("http", 3)), "fm:{http:3}");
        assert_eq!(other.shard_of_stream("fm:{http:s1.7}"), Some(s.clone()));
        assert_eq!(
            other.shard_of_stream("fm:{web:rtc:2}"),
            Some(Shard::new("web:rtc", 2))
        );
        for bad in [
            "fm:{http:x}",
            "fx:{http:1}",
            "fm:{http:s1}",
            "fm:{http:01}",
            "fm:dlq:g",
        ] {
            assert_eq!(other.shard_of_stream(bad), None, "{bad}");
        }
        assert_eq!(
            other.rewrite_target(&Shard::new("http", 3)),
            Shard::new("http", 3)
        );
        other.mark_sealed(0);
        assert_eq!(k.shard_count(), 8);
        assert_eq!(
            k.rewrite_target(&Shard::new("http", 3)),
            Shard::in_set("http", 1, 3)
        );
        assert_eq!(k.shard_for("http", u64::MAX), Shard::in_set("http", 1, 7));
        assert_eq!(k.sealed_sets(), BTreeSet::from([0]));
        // an older layout does not replace a newer one
        let mut stored = k.layout().as_ref().clone();
        stored.version = 5;
        assert!(k.set_layout(stored));
        assert!(!k.set_layout(Layout::single(2)));
        assert_eq!(other.layout().version, 5);
    }
}
