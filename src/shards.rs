//! Changing the shard count live (`flowmeter shards`): shard sets are
//! added, sealed, drained and retired as `flowmeter_core::stream::layout`
//! describes. [`change`] starts a change; [`advance`] (run by every
//! retention pass, and by `flowmeter shards` itself) moves older sets
//! along once it is safe; [`report`] shows where each set is.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::groups::groups_on;
use crate::stream::layout::{self, Layout, SetState, ShardSet};
use crate::stream::{Keys, Redis, StreamError};

/// Errors of the shard commands; the message says what to do instead.
#[derive(Debug, thiserror::Error)]
pub enum ShardsError {
    /// The change itself cannot be made (out of range, one still under way).
    #[error("{0}")]
    Refused(String),
    /// Another process changed the stored layout meanwhile: run the command again.
    #[error("the shard layout was changed by another process meanwhile; run the command again")]
    Raced,
    #[error(transparent)]
    Stream(#[from] StreamError),
}

/// How long a set may stay `Sealing` before [`advance`] seals it (a
/// `flowmeter shards set` that stopped half-way): long enough that a
/// running command is not overtaken.
pub const SEALING_GRACE_MS: i64 = 30_000;

/// One stream of a set, as [`report`] shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SetStream {
    pub stream: String,
    pub length: u64,
    /// Entries not yet read or acknowledged by the group furthest behind.
    pub unread: u64,
    pub sealed: bool,
}

/// One shard set with its streams' figures.
#[derive(Debug, Clone, Serialize)]
pub struct SetReport {
    pub set: u32,
    pub shards: u32,
    pub state: SetState,
    pub since_ms: i64,
    pub streams: Vec<SetStream>,
}

impl SetReport {
    pub fn length(&self) -> u64 {
        self.streams.iter().map(|s| s.length).sum()
    }

    pub fn unread(&self) -> u64 {
        self.streams.iter().map(|s| s.unread).sum()
    }
}

/// The layout and every set's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ShardsReport {
    /// Whether a layout is stored (else `redis.shards` decides).
    pub stored: bool,
    pub version: u64,
    pub sets: Vec<SetReport>,
}

/// The kinds a layout's sets have streams of: the layout's list and `known`.
fn kinds_of(layout: &Layout, known: &[String]) -> Vec<String> {
    let mut all: BTreeSet<String> = layout.kinds.iter().cloned().collect();
    all.extend(known.iter().cloned());
    all.into_iter().collect()
}

/// The streams of `set` for `kinds`.
fn streams_of(keys: &Keys, set: &ShardSet, kinds: &[String]) -> Vec<(String, String)> {
    kinds
        .iter()
        .flat_map(|k| keys.shards_in(set, k))
        .map(|s| (keys.stream(&s), keys.sealed(&s)))
        .collect()
}

/// Most entries counted one by one for a group whose lag Redis cannot
/// tell (a named bound: past it a set simply is not drained yet).
const MAX_COUNTED: u64 = 10_000;

/// What is left to read of `stream`: its length, and the entries the group
/// furthest behind has not read or not acknowledged (0 once every group
/// has read past the last entry and acknowledged everything).
async fn unread(redis: &Redis, stream: &str) -> Result<(u64, u64), StreamError> {
    let mut conn = redis.conn.clone();
    let length: u64 = redis
        .run(redis::cmd("XLEN").arg(stream).query_async(&mut conn))
        .await?;
    let mut worst = 0u64;
    for g in groups_on(redis, stream).await? {
        let behind = match g.lag {
            Some(lag) => lag,
            None => {
                // Redis cannot tell (entries deleted mid-stream): count
                let at = g.last_delivered;
                let v: Vec<redis::Value> = redis
                    .run(
                        redis::cmd("XRANGE")
                            .arg(stream)
                            .arg(format!("({at}"))
                            .arg("+")
                            .arg("COUNT")
                            .arg(MAX_COUNTED)
                            .query_async(&mut conn),
                    )
                    .await?;
                v.len() as u64
            }
        };
        worst = worst.max(behind + g.pending);
    }
    Ok((length, worst))
}

/// Every set of the layout in use with its streams' figures (`known`: the
/// kinds of the schemas, besides those the layout lists).
pub async fn report(
    redis: &Redis,
    keys: &Keys,
    known: &[String],
) -> Result<ShardsReport, StreamError> {
    let layout = layout::load_into(redis, keys).await?;
    let kinds = kinds_of(&layout, known);
    let mut sets = Vec::new();
    for set in &layout.sets {
        let mut streams = Vec::new();
        for (stream, marker) in streams_of(keys, set, &kinds) {
            let (length, left) = unread(redis, &stream).await?;
            let mut conn = redis.conn.clone();
            let sealed: bool = redis
                .run(redis::cmd("EXISTS").arg(&marker).query_async(&mut conn))
                .await?;
            streams.push(SetStream {
                stream,
                length,
                unread: left,
                sealed,
            });
        }
        sets.push(SetReport {
            set: set.set,
            shards: set.shards,
            state: set.state,
            since_ms: set.since_ms,
            streams,
        });
    }
    Ok(ShardsReport {
        stored: layout.is_stored(),
        version: layout.version,
        sets,
    })
}

/// Stores `next` over `from` (compare-and-set), and uses it here.
async fn store(
    redis: &Redis,
    keys: &Keys,
    from: &Layout,
    next: Layout,
) -> Result<Layout, ShardsError> {
    if !layout::store(redis, &keys.layout_key(), from.version, &next).await? {
        return Err(ShardsError::Raced);
    }
    let stored = Layout {
        version: from.version + 1,
        ..next
    };
    keys.set_layout(stored.clone());
    Ok(stored)
}

/// The highest shard index of set 0 that has a stream, for any of `kinds`
/// (probing up to [`crate::stream::layout::MAX_SHARDS`]): what set 0
/// really is before a layout was ever stored.
async fn set0_extent(redis: &Redis, keys: &Keys, kinds: &[String]) -> Result<u32, StreamError> {
    let mut extent = 0;
    for kind in kinds {
        let mut i = layout::MAX_SHARDS;
        while i > extent {
            let stream = keys.stream(&crate::stream::Shard::new(kind.as_str(), i - 1));
            let mut conn = redis.conn.clone();
            let exists: bool = redis
                .run(redis::cmd("EXISTS").arg(&stream).query_async(&mut conn))
                .await?;
            if exists {
                extent = i;
                break;
            }
            i -= 1;
        }
    }
    Ok(extent)
}

/// Starts a change to `shards` shards per kind: stores the layout (new set
/// current, old one sealing), creates the new set's streams with the
/// groups reading each kind at `0`, seals the old set and stores it
/// draining. The old set is retired by [`advance`] once every group has
/// read it to the end. `kinds`: every kind of the schemas; `groups`: the
/// enabled processors' (group, kind) pairs, created on the new set even
/// where no worker has created them on the old one yet.
pub async fn change(
    redis: &Redis,
    keys: &Keys,
    kinds: &[String],
    groups: &[(String, String)],
    shards: u32,
    now_ms: i64,
) -> Result<Layout, ShardsError> {
    let before = layout::load_into(redis, keys).await?;
    if !before.is_stored() {
        // the first change: set 0 must be what the streams say, not what
        // this host's redis.shards says
        let extent = set0_extent(redis, keys, &kinds_of(&before, kinds)).await?;
        if extent > before.current().shards {
            return Err(ShardsError::Refused(format!(
                "set 0 has streams up to shard {} but redis.shards here is {}: set redis.shards = {extent} (what the servers run) and run the command again",
                extent - 1,
                before.current().shards
            )));
        }
    }
    let before = before
        .as_ref()
        .clone()
        .with_kinds(kinds.iter().map(String::as_str));
    if before.current().shards == shards {
        return Err(ShardsError::Refused(format!(
            "the current set already has {shards} shards"
        )));
    }
    let next = before
        .with_new_set(shards, now_ms)
        .map_err(ShardsError::Refused)?;
    let new = next.current().clone();
    let old = before.current().clone();
    let all_kinds = kinds_of(&next, kinds);
    // stored first: a racing change loses here, before it created anything.
    // Nothing is written to the new set before the old one is sealed, so a
    // worker that creates its group there first (at its `start_from`)
    // misses nothing.
    let stored = store(redis, keys, &before, next).await?;
    for kind in &all_kinds {
        // per kind: the groups on its old streams, and the processors reading it
        let mut wanted: BTreeSet<String> = groups
            .iter()
            .filter(|(_, k)| k == kind)
            .map(|(g, _)| g.clone())
            .collect();
        for shard in keys.shards_in(&old, kind) {
            let stream = keys.stream(&shard);
            wanted.extend(groups_on(redis, &stream).await?.into_iter().map(|g| g.name));
        }
        for shard in keys.shards_in(&new, kind) {
            let stream = keys.stream(&shard);
            for group in &wanted {
                crate::stream::ensure_group(redis, &stream, group, "0").await?;
            }
        }
    }
    seal_set(redis, keys, &old, &all_kinds).await?;
    let draining = stored.with_state(old.set, SetState::Draining, now_ms);
    store(redis, keys, &stored, draining).await
}

/// Adds `kinds` to the stored layout's list (a stored layout only), so
/// changes seal and retire their streams too.
pub async fn add_kinds(redis: &Redis, keys: &Keys, kinds: &[String]) -> Result<(), ShardsError> {
    for _ in 0..MAX_RACES {
        let l = layout::load_into(redis, keys).await?;
        if !l.is_stored() || kinds.iter().all(|k| l.kinds.contains(k)) {
            return Ok(());
        }
        let next = l
            .as_ref()
            .clone()
            .with_kinds(kinds.iter().map(String::as_str));
        match store(redis, keys, &l, next).await {
            Err(ShardsError::Raced) => continue,
            other => return other.map(|_| ()),
        }
    }
    Err(ShardsError::Raced)
}

/// Seals every stream of `set` (idempotent).
async fn seal_set(
    redis: &Redis,
    keys: &Keys,
    set: &ShardSet,
    kinds: &[String],
) -> Result<(), StreamError> {
    for (stream, marker) in streams_of(keys, set, kinds) {
        layout::seal(redis, &stream, &marker).await?;
    }
    Ok(())
}

/// What [`advance`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advanced {
    Sealed(u32),
    Retired(u32),
    Dropped(u32),
}

/// Moves older sets along: seals a set left `Sealing` for
/// [`SEALING_GRACE_MS`]; retires a `Draining` set once every group has read
/// and acknowledged it to the end (sealing it again first, so a seal lost
/// in a failover is restored before the check, and counting a stream that
/// still has entries but lacks a group its kind has elsewhere as unread);
/// drops a `Retired` set whose streams are empty (retention trimmed them)
/// once `keep_ms` (the idempotency window) has passed. A dropped set's
/// empty, sealed streams and markers stay as tombstones (a few hundred
/// bytes each), so a writer that never learnt of the change still meets a
/// seal. A change stored meanwhile by another process is read and the pass
/// goes on with it.
pub async fn advance(
    redis: &Redis,
    keys: &Keys,
    kinds: &[String],
    keep_ms: i64,
    now_ms: i64,
) -> Result<Vec<Advanced>, ShardsError> {
    let mut done = Vec::new();
    for _ in 0..MAX_RACES {
        match advance_once(redis, keys, kinds, keep_ms, now_ms, &mut done).await {
            Err(ShardsError::Raced) => continue,
            other => return other.map(|()| done),
        }
    }
    Err(ShardsError::Raced)
}

/// Times [`advance`] reloads the layout after losing a compare-and-set.
const MAX_RACES: usize = 5;

async fn advance_once(
    redis: &Redis,
    keys: &Keys,
    kinds: &[String],
    keep_ms: i64,
    now_ms: i64,
    done: &mut Vec<Advanced>,
) -> Result<(), ShardsError> {
    let mut l = layout::load_into(redis, keys).await?.as_ref().clone();
    if !l.is_stored() {
        return Ok(());
    }
    let all_kinds = kinds_of(&l, kinds);
    for set in l.sets.clone() {
        match set.state {
            SetState::Sealing if now_ms.saturating_sub(set.since_ms) >= SEALING_GRACE_MS => {
                seal_set(redis, keys, &set, &all_kinds).await?;
                let next = l.with_state(set.set, SetState::Draining, now_ms);
                l = store(redis, keys, &l, next).await?;
                done.push(Advanced::Sealed(set.set));
            }
            SetState::Draining => {
                seal_set(redis, keys, &set, &all_kinds).await?;
                let mut left = 0;
                for kind in &all_kinds {
                    // the groups of this kind on any stream still read
                    let mut expected = BTreeSet::new();
                    for s in keys.shards_of(kind) {
                        let stream = keys.stream(&s);
                        expected
                            .extend(groups_on(redis, &stream).await?.into_iter().map(|g| g.name));
                    }
                    for shard in keys.shards_in(&set, kind) {
                        let stream = keys.stream(&shard);
                        let (length, unread_here) = unread(redis, &stream).await?;
                        let present: BTreeSet<String> = groups_on(redis, &stream)
                            .await?
                            .into_iter()
                            .map(|g| g.name)
                            .collect();
                        let missing = expected.difference(&present).count() as u64;
                        left += unread_here + if length > 0 { missing * length } else { 0 };
                    }
                }
                if left == 0 {
                    let next = l.with_state(set.set, SetState::Retired, now_ms);
                    l = store(redis, keys, &l, next).await?;
                    tracing::info!(
                        set = set.set,
                        "shard set read to the end by every group: retired"
                    );
                    done.push(Advanced::Retired(set.set));
                }
            }
            SetState::Retired if now_ms.saturating_sub(set.since_ms) >= keep_ms => {
                let mut length = 0;
                for (stream, _) in streams_of(keys, &set, &all_kinds) {
                    length += unread(redis, &stream).await?.0;
                }
                if length == 0 {
                    let next = l.without(set.set);
                    l = store(redis, keys, &l, next).await?;
                    tracing::info!(
                        set = set.set,
                        "retired shard set emptied by retention: dropped (its sealed, empty streams stay)"
                    );
                    done.push(Advanced::Dropped(set.set));
                }
            }
            _ => {}
        }
    }
    Ok(())
}
