//! The shard layout: generation-numbered shard sets, so `redis.shards` can
//! change while events arrive without stranding or double counting one.
//!
//! A layout is a list of **shard sets**, each with its number, its shard
//! count and its state. Set 0's streams are `{prefix}:{kind:i}` (the names
//! flowmeter always used); set `n` ≥ 1's are `{prefix}:{kind:sn.i}`. One
//! set is `Current`. Changing the shard count (`flowmeter shards set N`)
//! adds a set and moves the others along:
//!
//! 1. the new set's streams are created with every consumer group at `0`,
//!    and the layout is stored with the new set `Current` and the old one
//!    `Sealing` (workers and hubs pick the new set up within
//!    `redis.layout_refresh_ms`; writers keep writing the old one);
//! 2. each stream of the old set is **sealed**: a marker key in the
//!    stream's slot is set and the stream's last id is moved to the largest
//!    id there is, in one script, so every later `XADD *` to it fails
//!    ("exhausted the last possible ID"). A writer that meets a seal (or
//!    the marker, in the idempotent script) writes to the next set instead:
//!    no write can land in a sealed stream, so its content is final;
//! 3. the old set is `Draining`: workers read it to the end;
//! 4. once every group has read and acknowledged every entry of every
//!    stream of the set, it is `Retired`: workers stop reading it (hubs and
//!    replays still do); it is kept while retention empties it and for
//!    idempotency lookups, then dropped from the layout, its empty sealed
//!    streams left as tombstones.
//!
//! The layout is stored as JSON at `{prefix}:layout` and changed only by
//! compare-and-set on its `version`. No stored layout means one set 0 of
//! `redis.shards` shards.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use super::{Redis, StreamError};

/// The state of one shard set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetState {
    /// New events go here (once every older set is sealed).
    Current,
    /// Replaced, not yet sealed: writers may still write it.
    Sealing,
    /// Sealed (nothing can be written any more); workers read it to the end.
    Draining,
    /// Sealed and read to the end by every group: no longer read by
    /// workers (hubs and replays still read it), kept for idempotency
    /// lookups until it is empty.
    Retired,
}

impl SetState {
    /// Whether workers and hubs read the set.
    pub fn is_read(self) -> bool {
        !matches!(self, SetState::Retired)
    }

    /// Whether it is known that nothing can be written to the set.
    pub fn is_sealed(self) -> bool {
        matches!(self, SetState::Draining | SetState::Retired)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SetState::Current => "current",
            SetState::Sealing => "sealing",
            SetState::Draining => "draining",
            SetState::Retired => "retired",
        }
    }
}

/// One generation of shards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSet {
    /// The set's number (0 for the streams of before layouts).
    pub set: u32,
    pub shards: u32,
    pub state: SetState,
    /// When the set entered its state (ms since the epoch).
    pub since_ms: i64,
}

/// Every shard set, oldest first, and the version the stored copy had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Bumped by every stored change (compare-and-set).
    pub version: u64,
    pub sets: Vec<ShardSet>,
    /// The kinds whose streams the layout's sets have (sealing and
    /// retiring visit these, besides the kinds the caller knows).
    #[serde(default)]
    pub kinds: Vec<String>,
}

/// Largest shard count of one set (a named bound: each shard is a stream,
/// a lease and a blocking reader per worker).
pub const MAX_SHARDS: u32 = 1024;

impl Layout {
    /// The layout before any change: set 0 of `shards` shards, not stored.
    pub fn single(shards: u32) -> Self {
        Self {
            version: 0,
            sets: vec![ShardSet {
                set: 0,
                shards: shards.clamp(1, MAX_SHARDS),
                state: SetState::Current,
                since_ms: 0,
            }],
            kinds: Vec::new(),
        }
    }

    /// Whether this layout was read from Redis (version 0: built from `redis.shards`).
    pub fn is_stored(&self) -> bool {
        self.version > 0
    }

    /// Parses a stored layout, checking what the code relies on: sets in
    /// ascending order, exactly one `Current` (the newest), shard counts in
    /// `1..=MAX_SHARDS`.
    pub fn parse(json: &str) -> Result<Self, String> {
        let layout: Layout = serde_json::from_str(json)
            .map_err(|e| format!("stored layout is not readable: {e}"))?;
        if layout.sets.is_empty() {
            return Err("stored layout has no shard set".into());
        }
        if !layout.sets.windows(2).all(|w| w[0].set < w[1].set) {
            return Err("stored layout's sets are not in ascending order".into());
        }
        let current: Vec<&ShardSet> = layout
            .sets
            .iter()
            .filter(|s| s.state == SetState::Current)
            .collect();
        match (current.as_slice(), layout.sets.last()) {
            ([one], Some(last)) if one.set == last.set => {}
            _ => return Err("stored layout must have exactly one current set, the newest".into()),
        }
        if let Some(bad) = layout
            .sets
            .iter()
            .find(|s| s.shards == 0 || s.shards > MAX_SHARDS)
        {
            return Err(format!(
                "set {} has {} shards (1 to {MAX_SHARDS})",
                bad.set, bad.shards
            ));
        }
        Ok(layout)
    }

    pub fn to_json(&self) -> String {
        // a plain struct of numbers, strings and enums: cannot fail
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The current set (the newest).
    pub fn current(&self) -> &ShardSet {
        // `parse` and every constructor keep one
        self.sets
            .iter()
            .find(|s| s.state == SetState::Current)
            .or(self.sets.last())
            .unwrap_or(&FALLBACK)
    }

    pub fn get(&self, set: u32) -> Option<&ShardSet> {
        self.sets.iter().find(|s| s.set == set)
    }

    /// The sets workers and hubs read (all but retired ones).
    pub fn read_sets(&self) -> impl Iterator<Item = &ShardSet> {
        self.sets.iter().filter(|s| s.state.is_read())
    }

    /// The set a writer writes to: the oldest one that is neither known to
    /// be sealed (its state, or `sealed` as met by this writer) nor
    /// retired. Writers keep writing a `Sealing` set until they meet its
    /// seal, so a set's seal is the one moment writes move on.
    pub fn write_set(&self, sealed: &BTreeSet<u32>) -> &ShardSet {
        self.sets
            .iter()
            .find(|s| !s.state.is_sealed() && !sealed.contains(&s.set))
            .unwrap_or_else(|| self.current())
    }

    /// The layout with a new current set of `shards` shards; the old
    /// current one is `Sealing`. `now_ms` stamps both.
    pub fn with_new_set(&self, shards: u32, now_ms: i64) -> Result<Self, String> {
        if shards == 0 || shards > MAX_SHARDS {
            return Err(format!(
                "a shard set has 1 to {MAX_SHARDS} shards, not {shards}"
            ));
        }
        if let Some(busy) = self.sets.iter().find(|s| s.state == SetState::Sealing) {
            return Err(format!(
                "set {} is still being sealed; wait until it is draining (flowmeter shards)",
                busy.set
            ));
        }
        let mut next = self.clone();
        let number = self.sets.last().map_or(0, |s| s.set.saturating_add(1));
        if number == u32::MAX {
            return Err("no shard set number left".into());
        }
        for s in &mut next.sets {
            if s.state == SetState::Current {
                s.state = SetState::Sealing;
                s.since_ms = now_ms;
            }
        }
        next.sets.push(ShardSet {
            set: number,
            shards,
            state: SetState::Current,
            since_ms: now_ms,
        });
        Ok(next)
    }

    /// The layout with `set` moved to `state` (if it is in an earlier state).
    pub fn with_state(&self, set: u32, state: SetState, now_ms: i64) -> Self {
        let mut next = self.clone();
        if let Some(s) = next.sets.iter_mut().find(|s| s.set == set) {
            if s.state != SetState::Current && (s.state as u8) < (state as u8) {
                s.state = state;
                s.since_ms = now_ms;
            }
        }
        next
    }

    /// The layout without `set` (a retired set whose streams are gone).
    pub fn without(&self, set: u32) -> Self {
        let mut next = self.clone();
        next.sets
            .retain(|s| s.set != set || s.state == SetState::Current);
        next
    }

    /// The layout with `kinds` added to its list.
    pub fn with_kinds<'a>(&self, kinds: impl IntoIterator<Item = &'a str>) -> Self {
        let mut next = self.clone();
        for k in kinds {
            if !next.kinds.iter().any(|x| x == k) {
                next.kinds.push(k.to_string());
            }
        }
        next.kinds.sort();
        next
    }
}

static FALLBACK: ShardSet = ShardSet {
    set: 0,
    shards: 1,
    state: SetState::Current,
    since_ms: 0,
};

/// The layout a process works with, shared by every clone of its
/// [`super::Keys`]: replaced when the stored one changes, plus the sets this
/// process met sealed before the stored layout said so.
#[derive(Debug)]
pub(super) struct Shared {
    layout: RwLock<(Arc<Layout>, BTreeSet<u32>)>,
}

impl Shared {
    pub(super) fn new(layout: Layout) -> Self {
        Self {
            layout: RwLock::new((Arc::new(layout), BTreeSet::new())),
        }
    }

    pub(super) fn get(&self) -> (Arc<Layout>, BTreeSet<u32>) {
        match self.layout.read() {
            Ok(g) => (g.0.clone(), g.1.clone()),
            Err(p) => {
                let g = p.into_inner();
                (g.0.clone(), g.1.clone())
            }
        }
    }

    pub(super) fn layout(&self) -> Arc<Layout> {
        match self.layout.read() {
            Ok(g) => g.0.clone(),
            Err(p) => p.into_inner().0.clone(),
        }
    }

    /// Replaces the layout unless it is older than the one held.
    pub(super) fn replace(&self, layout: Layout) -> bool {
        let mut g = match self.layout.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if layout.version < g.0.version {
            return false;
        }
        let changed = *g.0 != layout;
        g.0 = Arc::new(layout);
        changed
    }

    pub(super) fn mark_sealed(&self, set: u32) {
        let mut g = match self.layout.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.1.insert(set);
    }
}

/// Reads the stored layout, if there is one.
pub async fn load(redis: &Redis, key: &str) -> Result<Option<Layout>, StreamError> {
    let mut conn = redis.conn.clone();
    let raw: Option<String> = redis
        .run(redis::cmd("GET").arg(key).query_async(&mut conn))
        .await?;
    raw.map(|r| Layout::parse(&r).map_err(StreamError::Protocol))
        .transpose()
}

/// Stores `next` if the stored layout's version is still `expected` (0: no
/// layout stored yet); `next` gets version `expected + 1`. Returns whether
/// it was stored.
pub async fn store(
    redis: &Redis,
    key: &str,
    expected: u64,
    next: &Layout,
) -> Result<bool, StreamError> {
    const CAS: &str = r"
local cur = redis.call('GET', KEYS[1])
local v = 0
if cur then v = tonumber(cjson.decode(cur)['version']) end
if v ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
";
    let mut stored = next.clone();
    stored.version = expected + 1;
    let mut conn = redis.conn.clone();
    let done: i64 = redis
        .run(
            redis::Script::new(CAS)
                .key(key)
                .arg(expected)
                .arg(stored.to_json())
                .invoke_async(&mut conn),
        )
        .await?;
    Ok(done == 1)
}

/// The last id of a sealed stream: the largest there is.
pub const SEALED_ID: &str = "18446744073709551615-18446744073709551615";

/// Seals one stream: moves its last id to [`SEALED_ID`] (creating the
/// stream, empty, if it does not exist) and sets `marker` to the last id it
/// had before (what replays and status show as its end), in one script in
/// the stream's slot. Idempotent: sealing again keeps the first marker.
pub async fn seal(redis: &Redis, stream: &str, marker: &str) -> Result<(), StreamError> {
    const SEAL: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XADD', KEYS[1], '0-1', 'sealed', '1')
  redis.call('XDEL', KEYS[1], '0-1')
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local last = '0-0'
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then last = info[i + 1] end
end
if last ~= ARGV[1] then
  redis.call('XSETID', KEYS[1], ARGV[1])
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[2], last)
end
return 1
";
    let mut conn = redis.conn.clone();
    let _: i64 = redis
        .run(
            redis::Script::new(SEAL)
                .key(stream)
                .key(marker)
                .arg(SEALED_ID)
                .invoke_async(&mut conn),
        )
        .await?;
    Ok(())
}

/// Loads the stored layout into `keys` (every clone), if there is one.
/// Returns the layout in use.
pub async fn load_into(redis: &Redis, keys: &super::Keys) -> Result<Arc<Layout>, StreamError> {
    if let Some(l) = load(redis, &keys.layout_key()).await? {
        keys.set_layout(l);
    }
    Ok(keys.layout())
}

/// Re-reads the stored layout every `every` until `shutdown`, so workers,
/// hubs and backpressure follow a change; logs each change and, once, a
/// failure to read it.
pub async fn follow(
    redis: Redis,
    keys: super::Keys,
    every: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match load(&redis, &keys.layout_key()).await {
            Ok(Some(l)) => {
                failing = false;
                let (version, sets) = (l.version, describe(&l));
                if keys.set_layout(l) {
                    tracing::info!(version, sets = %sets, "shard layout changed");
                }
            }
            Ok(None) => failing = false,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot read the shard layout; keeping the one in use");
                }
                failing = true;
            }
        }
    }
}

/// `set 0: 4 shards (draining), set 1: 8 shards (current)`.
pub fn describe(layout: &Layout) -> String {
    layout
        .sets
        .iter()
        .map(|s| format!("set {}: {} shards ({})", s.set, s.shards, s.state.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a Redis error is an `XADD` refused by a sealed stream.
pub fn is_sealed_error(e: &redis::RedisError) -> bool {
    e.to_string().contains("exhausted the last possible ID")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_set_replaces_the_current_one_and_writers_move_on_its_seal() {
        let l = Layout::single(4);
        assert!(!l.is_stored());
        assert_eq!(l.current().shards, 4);
        let l2 = l.with_new_set(8, 10).expect("a new set");
        assert_eq!(l2.current().set, 1);
        assert_eq!(l2.get(0).map(|s| s.state), Some(SetState::Sealing));
        // writers keep the old set until they meet its seal
        assert_eq!(l2.write_set(&BTreeSet::new()).set, 0);
        assert_eq!(l2.write_set(&BTreeSet::from([0])).set, 1);
        let l3 = l2.with_state(0, SetState::Draining, 20);
        assert_eq!(l3.write_set(&BTreeSet::new()).set, 1);
        // one change at a time
        assert!(l2.with_new_set(2, 30).is_err());
        let l4 = l3.with_new_set(2, 30).expect("a new set");
        assert_eq!(l4.read_sets().map(|s| s.set).collect::<Vec<_>>(), [0, 1, 2]);
        let l5 = l4.with_state(0, SetState::Retired, 40);
        assert_eq!(l5.read_sets().map(|s| s.set).collect::<Vec<_>>(), [1, 2]);
        // states only move forward, the current set never changes state
        assert_eq!(l5.with_state(0, SetState::Draining, 50), l5);
        assert_eq!(l5.with_state(2, SetState::Retired, 50), l5);
        assert_eq!(l5.without(0).sets.len(), 2);
        assert_eq!(l5.without(2).sets.len(), 3);
    }

    #[test]
    fn stored_layouts_are_checked() {
        let l = Layout::single(4)
            .with_new_set(8, 1)
            .expect("a new set")
            .with_kinds(["http", "webrtc"]);
        assert_eq!(Layout::parse(&l.to_json()), Ok(l.clone()));
        assert!(Layout::parse("{}").is_err());
        assert!(Layout::parse("not json").is_err());
        let mut two = l.clone();
        two.sets[0].state = SetState::Current;
        assert!(Layout::parse(&two.to_json())
            .expect_err("refused")
            .contains("exactly one"));
        let mut big = l.clone();
        big.sets[1].shards = MAX_SHARDS + 1;
        assert!(Layout::parse(&big.to_json())
            .expect_err("refused")
            .contains("shards"));
        let mut order = l;
        order.sets.swap(0, 1);
        assert!(Layout::parse(&order.to_json()).is_err());
        assert!(Layout::single(0).with_new_set(0, 1).is_err());
    }
}
