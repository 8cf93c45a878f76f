//! `flowmeter replay`: rebuilds one rollup processor's rows for a time range
//! from the retained stream history, while live processing continues.
//!
//! The rows of a rollup hold exactly the effect of the entries up to each
//! shard's checkpoint. A replay therefore folds every retained entry up to
//! the checkpoints whose event falls in the range, and then, in ONE
//! transaction that first locks the processor's checkpoint rows (`SELECT …
//! FOR UPDATE`, the rows every live flush moves first), checks the checkpoints
//! have not moved, deletes the range's rows and writes the rebuilt ones. If a
//! live flush committed in between, the transaction rolls back, the replay
//! folds the new entries up to the new checkpoints and tries again. Live
//! flushes after the commit add only entries past those checkpoints, so rows
//! end equal to a fresh computation, however often the replay runs.
//!
//! Each table's range is widened to whole windows (an hourly table from the
//! hour containing `from` to the end of the hour containing `to`'s last
//! millisecond; a daily table to whole days), so no row is half rebuilt.

use std::collections::HashMap;
use std::time::Instant;

use indicatif::ProgressBar;
use serde::Serialize;

use super::agg::{fold_event_where, sorted_rows, RowKey, TableRows};
use super::budget::KeyBudget;
use super::processor::{check_future, RollupProcessor};
use super::writer::write_table;
use crate::event::decode_entry as decode;
use crate::store::StoreError;
use crate::stream::{range, StreamError, StreamId};

/// Entries per XRANGE page.
const PAGE: usize = 5_000;
/// Transactions tried before giving up when live flushes keep moving the checkpoints.
const MAX_ATTEMPTS: u32 = 20;

/// Errors of a replay. None is worth retrying blindly except `Busy` and
/// retryable store/stream errors.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("replay range is empty: --to must be after --from")]
    EmptyRange,
    #[error("retention no longer covers the range: {stream} has lost entries up to {deleted_through} ({deleted_at}), and events from {needed_from} may have been among them; replay from {earliest} or later (or raise retention.max_age_secs for the future)")]
    NotRetained {
        stream: String,
        deleted_through: String,
        deleted_at: String,
        needed_from: String,
        earliest: String,
    },
    #[error("live flushes moved the checkpoints {0} times in a row; try again (or when traffic is lower)")]
    Busy(u32),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Stream(#[from] StreamError),
}

/// What to rebuild.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Event time range [from, to), epoch ms.
    pub from_ms: i64,
    pub to_ms: i64,
    /// How far an event's arrival may precede its own `ts` (clients with
    /// clocks ahead): the scan starts this much before the range.
    pub skew_ms: i64,
}

/// What a replay did.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub processor: String,
    pub streams: usize,
    pub entries_scanned: u64,
    pub events_in_range: u64,
    /// Entries the live path dead-letters (undecodable, or refused by a
    /// column), skipped here too.
    pub undecodable: u64,
    /// (table, first window start, end, rows written)
    pub tables: Vec<(String, String, String, u64)>,
    pub attempts: u32,
    pub elapsed_secs: f64,
}

fn rfc3339(ms: i64) -> String {
    crate::event::format_rfc3339_ms(ms)
}

impl RollupProcessor {
    /// Rebuilds this processor's rows for `opts`' range (see the module docs).
    pub async fn replay(
        &self,
        opts: &ReplayOptions,
        progress: Option<&ProgressBar>,
    ) -> Result<ReplayReport, ReplayError> {
        if opts.to_ms <= opts.from_ms {
            return Err(ReplayError::EmptyRange);
        }
        let started = Instant::now();
        let ctx = &self.ctx;
        let group = &self.def.group;
        // each table's window-aligned range [lo, hi)
        let bounds: Vec<(i64, i64)> = self
            .tables
            .iter()
            .map(|t| {
                let w = t.def.window;
                (w.floor(opts.from_ms), w.floor(opts.to_ms - 1) + w.millis())
            })
            .collect();
        let lo = bounds.iter().map(|b| b.0).min().unwrap_or(opts.from_ms);
        let scan_from = StreamId {
            ms: u64::try_from(lo.saturating_sub(opts.skew_ms)).unwrap_or(0),
            seq: 0,
        };
        let streams: Vec<String> = self
            .def
            .kinds
            .iter()
            // every set's streams: a retired set still holds entries of the range
            .flat_map(|k| ctx.keys.all_shards_of(k))
            .map(|s| ctx.keys.stream(&s))
            .collect();

        // Retention must still hold every entry from scan_from on.
        for s in &streams {
            let gap = trimmed_gap(ctx, s).await?;
            if let Some((lost_before, first)) = gap.filter(|(lost, _)| *lost > scan_from) {
                let earliest_ms = first.map_or(lost_before.ms, |f| f.ms) as i64 + opts.skew_ms;
                return Err(ReplayError::NotRetained {
                    stream: s.clone(),
                    deleted_through: lost_before.to_string(),
                    deleted_at: rfc3339(lost_before.ms as i64),
                    needed_from: rfc3339(scan_from.ms as i64),
                    earliest: rfc3339(earliest_ms),
                });
            }
        }

        let mut aggs: Vec<TableRows> = self.tables.iter().map(|_| HashMap::new()).collect();
        let max_future_ms = ctx.settings.max_future_secs.saturating_mul(1000);
        // per stream: folded up to here (exclusive start of the next scan)
        let mut folded: HashMap<String, Option<StreamId>> =
            streams.iter().map(|s| (s.clone(), None)).collect();
        let mut targets: HashMap<String, StreamId> = HashMap::new();
        for s in &streams {
            targets.insert(s.clone(), ctx.store.load_checkpoint(group, s).await?);
        }
        let (mut scanned, mut in_range, mut undecodable) = (0u64, 0u64, 0u64);
        let mut attempts = 0;
        loop {
            attempts += 1;
            if attempts > MAX_ATTEMPTS {
                return Err(ReplayError::Busy(MAX_ATTEMPTS));
            }
            // fold every entry up to the target checkpoints
            for s in &streams {
                let target = targets.get(s).copied().unwrap_or(StreamId::ZERO);
                loop {
                    let start = match folded.get(s).copied().flatten() {
                        Some(id) if id >= target => break,
                        Some(id) => format!("({id}"),
                        None if scan_from > target => break,
                        None => scan_from.to_string(),
                    };
                    let page = range(&ctx.redis, s, &start, &target.to_string(), PAGE).await?;
                    let Some(last) = page.last().map(|e| e.id) else {
                        folded.insert(s.clone(), Some(target));
                        break;
                    };
                    scanned += page.len() as u64;
                    if let Some(p) = progress {
                        p.inc(page.len() as u64);
                    }
                    for e in page {
                        let in_bounds = |i: usize, k: &RowKey| {
                            bounds
                                .get(i)
                                .is_some_and(|(lo, hi)| (*lo..*hi).contains(&k.start_ms))
                        };
                        let folded = decode(e.data.as_deref())
                            .and_then(|(ev, ts)| {
                                check_future(e.id, ts, max_future_ms).map(|()| (ev, ts))
                            })
                            .and_then(|(ev, ts)| {
                                fold_event_where(&self.tables, &mut aggs, &ev, ts, in_bounds)
                            });
                        match folded {
                            Ok(hit) => in_range += u64::from(hit),
                            // dead-lettered by the live path, not counted there either
                            Err(_) => undecodable += 1,
                        }
                    }
                    folded.insert(s.clone(), Some(last));
                }
            }
            match self.swap_rows(&streams, &targets, &bounds, &aggs).await {
                Ok(None) => break,
                Ok(Some(moved)) => targets = moved, // a live flush committed: fold its entries too
                Err(e) if e.is_lock_conflict() => {
                    tokio::time::sleep(std::time::Duration::from_millis(50 * u64::from(attempts)))
                        .await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(ReplayReport {
            processor: self.def.name.clone(),
            streams: streams.len(),
            entries_scanned: scanned,
            events_in_range: in_range,
            undecodable,
            tables: self
                .tables
                .iter()
                .zip(&bounds)
                .zip(&aggs)
                .map(|((t, (lo, hi)), rows)| {
                    (
                        t.def.name.clone(),
                        rfc3339(*lo),
                        rfc3339(*hi),
                        rows.len() as u64,
                    )
                })
                .collect(),
            attempts,
            elapsed_secs: started.elapsed().as_secs_f64(),
        })
    }

    /// The replay's transaction: lock the checkpoints; if any moved from
    /// `targets`, roll back and return the new ones; else replace the rows.
    async fn swap_rows(
        &self,
        streams: &[String],
        targets: &HashMap<String, StreamId>,
        bounds: &[(i64, i64)],
        aggs: &[TableRows],
    ) -> Result<Option<HashMap<String, StreamId>>, StoreError> {
        let mut tx = self.ctx.store.pool().begin().await?;
        let mut now = HashMap::new();
        for s in streams {
            let (ms, seq): (u64, u64) = sqlx::query_as(
                "SELECT last_ms, last_seq FROM fm_checkpoints WHERE grp = ? AND stream = ? FOR UPDATE",
            )
            .bind(&self.def.group)
            .bind(s)
            .fetch_one(&mut *tx)
            .await?;
            now.insert(s.clone(), StreamId { ms, seq });
        }
        if &now != targets {
            tx.rollback().await?;
            return Ok(Some(now));
        }
        let sorted = sorted_rows(aggs);
        // Budgets first, while the range's old rows still say which keys
        // the table knows: a replay folds what the live path would.
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut folds = Vec::with_capacity(self.tables.len());
        for (t, rows) in self.tables.iter().zip(&sorted) {
            let limit = self
                .def
                .key_budget(&t.def, self.ctx.settings.max_new_keys_per_hour);
            folds.push(KeyBudget::new(limit).fold(&mut tx, t, rows, now_ms).await?);
        }
        for (((t, (lo, hi)), rows), fold) in self.tables.iter().zip(bounds).zip(&sorted).zip(&folds)
        {
            let sql = format!(
                "DELETE FROM `{}` WHERE `{}` >= ? AND `{}` < ?",
                t.def.name.replace('`', "``"),
                t.def.time_column.replace('`', "``"),
                t.def.time_column.replace('`', "``")
            );
            let mut q = sqlx::query(&sql);
            for v in [t.time_value(*lo), t.time_value(*hi)] {
                q = match v {
                    super::SqlVal::Date(d) => q.bind(d),
                    super::SqlVal::DateTime(d) => q.bind(d),
                    _ => q.bind(None::<i64>),
                };
            }
            q.execute(&mut *tx).await?;
            write_table(&mut tx, t, &fold.apply(rows)).await?;
        }
        tx.commit().await?;
        Ok(None)
    }
}

/// When entries were removed from `stream` (trimmed, or deleted): the id
/// below which they may have been, and the first retained id. `None` when
/// the stream holds every entry ever added.
/// The last id a stream generated; for a sealed stream (whose last id was
/// moved to the largest there is) the one it had when it was sealed, kept
/// in its seal marker.
async fn last_generated(
    ctx: &crate::processor::ProcessorContext,
    stream: &str,
    reported: Option<StreamId>,
) -> Result<StreamId, StreamError> {
    let sealed = crate::stream::layout::SEALED_ID.parse::<StreamId>().ok();
    if reported.is_none() || reported != sealed {
        return Ok(reported.unwrap_or(StreamId::ZERO));
    }
    let Some(shard) = ctx.keys.shard_of_stream(stream) else {
        return Ok(StreamId::ZERO);
    };
    let mut conn = ctx.redis.conn.clone();
    let before: Option<String> = ctx
        .redis
        .run(
            redis::cmd("GET")
                .arg(ctx.keys.sealed(&shard))
                .query_async(&mut conn),
        )
        .await?;
    Ok(before
        .and_then(|b| b.parse::<StreamId>().ok())
        .unwrap_or(StreamId::ZERO))
}

async fn trimmed_gap(
    ctx: &crate::processor::ProcessorContext,
    stream: &str,
) -> Result<Option<(StreamId, Option<StreamId>)>, StreamError> {
    use crate::stream::resp::{entry_id, int, text, to_map};
    let Some(info) = crate::stream::xinfo(&ctx.redis, "STREAM", stream).await? else {
        return Ok(None);
    };
    let info = to_map(info);
    let id = |k: &str| text(info.get(k)).and_then(|s| s.parse::<StreamId>().ok());
    let length = int(info.get("length")).unwrap_or(0);
    let added = int(info.get("entries-added")).unwrap_or(length);
    let deleted = id("max-deleted-entry-id").unwrap_or(StreamId::ZERO);
    let first = entry_id(info.get("first-entry")).and_then(|s| s.parse::<StreamId>().ok());
    if added <= length && deleted == StreamId::ZERO {
        return Ok(None);
    }
    // Trimming removes the oldest entries: everything removed is below the
    // first retained entry (or up to the last id when none is left).
    let below = match first {
        Some(f) => f,
        None => last_generated(ctx, stream, id("last-generated-id"))
            .await?
            .next(),
    };
    Ok(Some((below.max(deleted.next()), first)))
}
