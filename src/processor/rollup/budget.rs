//! Cardinality budgets: each rollup table takes at most
//! `max_new_keys_per_hour` new dimension keys per wall-clock hour (UTC).
//!
//! A *key* is a row's dimension values without its time bucket; it is *new*
//! when the table has no row with those values in any bucket. Inside the
//! flush transaction, before any row is written, the flush's keys are looked
//! up (keys seen committed before are remembered, up to a bound), and when
//! some are new the table's counter row in `fm_key_budget` for the current
//! hour is locked, the first ones (in key order) are admitted while the
//! budget lasts and the rest fold into the bucket's `__other__` row: every
//! dimension value `__other__`, every event still counted. The counter
//! commits with the rows it admitted, so the budget holds exactly across
//! workers (they serialize on the counter row, only when they have new keys)
//! and across restarts. Two workers seeing the same key as new at once both
//! charge it: the budget can under-admit by that, never over-admit.
//!
//! Keys already in the table are never folded, so a backfill of known keys
//! over many past buckets costs nothing; the budget bounds how fast the set
//! of keys grows, not how many buckets a key spans (the time range and
//! `rollup.max_future_secs` bound that).

use std::collections::{HashMap, HashSet};

use sqlx::{MySql, QueryBuilder, Row as _, Transaction};

use super::agg::{CompiledTable, Row, RowKey};
use super::writer::q;
use crate::processor::KeyBudgetStatus;
use crate::store::{ms_datetime, StoreError};

/// Keys looked up per statement.
const LOOKUP_CHUNK: usize = 200;
/// Keys remembered per table as known, per unit of budget (bounded memory:
/// 10 × `max_new_keys_per_hour` keys, then the memory starts over).
const KNOWN_PER_BUDGET: u64 = 10;
const HOUR_MS: i64 = 3_600_000;

type Dims = Box<[Box<str>]>;

/// One table's budget and the keys it knows to be in the table.
#[derive(Debug)]
pub struct KeyBudget {
    /// Most new keys per hour; 0 = no limit.
    pub max_new_keys_per_hour: u64,
    known: HashSet<Dims>,
}

/// What a budget decided for one flush of one table.
#[derive(Debug, Default)]
pub struct Fold {
    /// The `__other__` rows, each with the state of the keys it took.
    others: Vec<(RowKey, Row)>,
    /// Keys folded (their rows are left out of the write).
    refused: HashSet<Dims>,
    /// New keys admitted, and events folded.
    pub admitted: u64,
    pub events_folded: u64,
    /// The counter after this flush (when it was consulted).
    pub status: Option<KeyBudgetStatus>,
}

impl Fold {
    /// Keys folded into `__other__`.
    pub fn keys_folded(&self) -> u64 {
        self.refused.len() as u64
    }

    /// The rows to write: `rows` without the folded keys (and without an
    /// `__other__` row merged into ours), plus the `__other__` rows, sorted.
    pub fn apply<'a>(&'a self, rows: &[(&'a RowKey, &'a Row)]) -> Vec<(&'a RowKey, &'a Row)> {
        if self.others.is_empty() {
            return rows.to_vec();
        }
        let replaced: HashSet<&RowKey> = self.others.iter().map(|(k, _)| k).collect();
        let mut out: Vec<(&RowKey, &Row)> = rows
            .iter()
            .filter(|(k, _)| !self.refused.contains(&k.dims) && !replaced.contains(k))
            .copied()
            .chain(self.others.iter().map(|(k, r)| (k, r)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(b.0));
        out
    }
}

impl KeyBudget {
    pub fn new(max_new_keys_per_hour: u64) -> Self {
        Self {
            max_new_keys_per_hour,
            known: HashSet::new(),
        }
    }

    /// Decides which of `rows`' keys `table` takes in the hour of `now_ms`
    /// (see the module docs); changes nothing in memory but the known keys.
    pub async fn fold(
        &mut self,
        tx: &mut Transaction<'_, MySql>,
        table: &CompiledTable,
        rows: &[(&RowKey, &Row)],
        now_ms: i64,
    ) -> Result<Fold, StoreError> {
        if self.max_new_keys_per_hour == 0 || table.dims.is_empty() || rows.is_empty() {
            return Ok(Fold::default());
        }
        let other = table.other_key(0).dims;
        let mut unknown: Vec<&Dims> = rows
            .iter()
            .map(|(k, _)| &k.dims)
            .filter(|d| **d != other && !self.known.contains(*d))
            .collect();
        unknown.sort();
        unknown.dedup();
        if unknown.is_empty() {
            return Ok(Fold::default());
        }
        let found = lookup(tx, table, &unknown).await?;
        let cap = usize::try_from(self.max_new_keys_per_hour.saturating_mul(KNOWN_PER_BUDGET))
            .unwrap_or(usize::MAX);
        if self.known.len() + found.len() > cap {
            self.known.clear();
        }
        let mut new: Vec<&Dims> = Vec::new();
        for (i, d) in unknown.iter().enumerate() {
            if found.contains(&i) {
                self.known.insert((*d).clone());
            } else {
                new.push(d);
            }
        }
        if new.is_empty() {
            return Ok(Fold::default());
        }
        let hour = now_ms - now_ms.rem_euclid(HOUR_MS);
        let (taken, folded_before) = lock_counter(tx, &table.def.name, hour).await?;
        let left = self.max_new_keys_per_hour.saturating_sub(taken);
        let admit = new.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let refused: HashSet<Dims> = new.iter().skip(admit).map(|d| (*d).clone()).collect();
        let mut fold = Fold {
            admitted: admit as u64,
            ..Fold::default()
        };
        if !refused.is_empty() {
            let mut others: HashMap<RowKey, Row> = HashMap::new();
            for (k, r) in rows {
                let into_other = refused.contains(&k.dims) || k.dims == other;
                if !into_other {
                    continue;
                }
                if k.dims != other {
                    fold.events_folded += r.events;
                }
                let o = others
                    .entry(table.other_key(k.start_ms))
                    .or_insert_with(|| table.new_row());
                table.merge_rows(o, r).map_err(|reason| StoreError::Value {
                    table: table.def.name.clone(),
                    reason,
                })?;
            }
            fold.others = others.into_iter().collect();
            fold.refused = refused;
        }
        let folded = fold.keys_folded();
        sqlx::query(
            "UPDATE fm_key_budget SET new_keys = new_keys + ?, folded_keys = folded_keys + ?, \
             folded_events = folded_events + ? WHERE tbl = ? AND hour = ?",
        )
        .bind(fold.admitted)
        .bind(folded)
        .bind(fold.events_folded)
        .bind(&table.def.name)
        .bind(ms_datetime(hour))
        .execute(&mut **tx)
        .await?;
        fold.status = Some(KeyBudgetStatus {
            table: table.def.name.clone(),
            hour: crate::event::format_rfc3339_ms(hour),
            max_new_keys_per_hour: self.max_new_keys_per_hour,
            new_keys: taken + fold.admitted,
            folded_keys: folded_before + folded,
        });
        Ok(fold)
    }
}

/// Which of `keys` (by position) have a row in `table`, in any bucket.
async fn lookup(
    tx: &mut Transaction<'_, MySql>,
    table: &CompiledTable,
    keys: &[&Dims],
) -> Result<HashSet<usize>, StoreError> {
    let name = q(&table.def.name);
    let mut found = HashSet::new();
    for (c, chunk) in keys.chunks(LOOKUP_CHUNK).enumerate() {
        let mut qb: QueryBuilder<MySql> = QueryBuilder::new("");
        for (i, dims) in chunk.iter().enumerate() {
            if i > 0 {
                qb.push(" UNION ALL ");
            }
            qb.push(format!(
                "(SELECT CAST({} AS SIGNED) FROM {name} WHERE ",
                c * LOOKUP_CHUNK + i
            ));
            for (j, (d, v)) in table.dims.iter().zip(dims.iter()).enumerate() {
                if j > 0 {
                    qb.push(" AND ");
                }
                qb.push(format!("{} = ", q(&d.column)));
                qb.push_bind(v.to_string());
            }
            qb.push(" LIMIT 1)");
        }
        for r in qb.build().fetch_all(&mut **tx).await? {
            let i: i64 = r.try_get(0)?;
            found.extend(usize::try_from(i).ok());
        }
    }
    Ok(found)
}

/// Locks (creating it) the counter row of `table` for `hour`; returns
/// (new keys taken, keys folded) so far.
async fn lock_counter(
    tx: &mut Transaction<'_, MySql>,
    table: &str,
    hour: i64,
) -> Result<(u64, u64), StoreError> {
    let at = ms_datetime(hour);
    sqlx::query(
        "INSERT INTO fm_key_budget (tbl, hour) VALUES (?, ?) \
         ON DUPLICATE KEY UPDATE new_keys = new_keys",
    )
    .bind(table)
    .bind(at)
    .execute(&mut **tx)
    .await?;
    let (taken, folded): (u64, u64) = sqlx::query_as(
        "SELECT new_keys, folded_keys FROM fm_key_budget WHERE tbl = ? AND hour = ? FOR UPDATE",
    )
    .bind(table)
    .bind(at)
    .fetch_one(&mut **tx)
    .await?;
    Ok((taken, folded))
}
