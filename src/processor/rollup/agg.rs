//! In-memory aggregation of one flush interval, and the merge with the rows
//! already in the database.
//!
//! Every measure state is mergeable (counts and sums add, min/max compare,
//! sketches merge), so events of any shard and any order combine exactly; the
//! derived columns (quantiles, distinct counts, ratios, peaks) are computed
//! from the merged state at each flush, never by averaging averages.
//!
//! Sums into integer columns are exact (`i128`, each value rounded to the
//! nearest integer) and checked: an event is folded into a row only when
//! every value it adds still fits its column (range, character set, time
//! range), else the whole event is refused with the reason and the runner
//! dead-letters it. Nothing wraps, saturates or is clamped silently.

use std::collections::{BTreeMap, HashMap};

use chrono::{NaiveDate, NaiveDateTime};
use serde_json::{Map, Value};
use xxhash_rust::xxh3::xxh3_64;

use super::config::{Dimension, MeasureDef, TableDef, Window};
use crate::event::subject::dim_value;
use crate::sketch::{DdSketch, Hll};
use crate::store::{ColumnInfo, ColumnKind};

/// The dimension value of rows that take the events of keys past a table's
/// cardinality budget (see `budget.rs`).
pub const OTHER: &str = "__other__";

/// A value bound into SQL.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlVal {
    Null,
    Int(i64),
    /// Integers above `i64::MAX` (BIGINT UNSIGNED).
    UInt(u64),
    Float(f64),
    Text(String),
    Bytes(Vec<u8>),
    DateTime(NaiveDateTime),
    Date(NaiveDate),
}

/// Key of one table row: dimension values and bucket start.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowKey {
    pub dims: Box<[Box<str>]>,
    pub start_ms: i64,
}

/// State of one measure in one row.
#[derive(Debug, Clone, PartialEq)]
pub enum MState {
    Count(u64),
    /// Sum into a floating-point column.
    Sum(f64),
    /// Exact sum into an integer column.
    IntSum(i128),
    Min(Option<f64>),
    Max(Option<f64>),
    Quantiles(DdSketch),
    Distinct(Hll),
    Classes(Vec<u64>),
    /// Per-`by`-bucket sums for a floating-point value column.
    Peak(BTreeMap<i64, f64>),
    /// Exact per-`by`-bucket sums for an integer value column.
    IntPeak(BTreeMap<i64, i128>),
    Ratio,
}

/// One row in memory: how many events it holds and each measure's state.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub events: u64,
    pub state: Vec<MState>,
}

/// The rows of one table in memory.
pub type TableRows = HashMap<RowKey, Row>;

/// A borrowed view of each table's rows, sorted by key (so concurrent
/// flushes lock rows in the same order); nothing is cloned.
pub fn sorted_rows(aggs: &[TableRows]) -> Vec<Vec<(&RowKey, &Row)>> {
    aggs.iter()
        .map(|rows| {
            let mut v: Vec<(&RowKey, &Row)> = rows.iter().collect();
            v.sort_by(|a, b| a.0.cmp(b.0));
            v
        })
        .collect()
}

/// Values of a row as read back from the database, by column name.
pub type DbRow = HashMap<String, SqlVal>;

/// A dimension column and the event field feeding it.
#[derive(Debug, Clone)]
pub struct DimColumn {
    pub column: String,
    pub field: String,
    pub info: ColumnInfo,
}

/// A table definition checked against the real table.
#[derive(Debug, Clone)]
pub struct CompiledTable {
    pub def: TableDef,
    pub time_kind: ColumnKind,
    pub time: ColumnInfo,
    pub dims: Vec<DimColumn>,
    /// Every column a measure writes.
    pub columns: HashMap<String, ColumnInfo>,
    /// By measure: the columns its values are checked against, looked up
    /// once here rather than by name for every event.
    checks: Vec<MeasureCols>,
}

/// The columns one measure's values are checked against.
#[derive(Debug, Clone, Default)]
struct MeasureCols {
    /// Its column (count, sum, min, max), or a peak's value column.
    main: Option<ColumnInfo>,
    /// Quantile outputs, class columns (by class), or a peak's `at` column.
    more: Vec<ColumnInfo>,
}

impl MeasureCols {
    fn of(m: &MeasureDef, columns: &HashMap<String, ColumnInfo>) -> Self {
        let get = |c: &String| columns.get(c).cloned();
        let (main, more) = match m {
            MeasureDef::Count { column, .. }
            | MeasureDef::Sum { column, .. }
            | MeasureDef::Min { column, .. }
            | MeasureDef::Max { column, .. } => (get(column), Vec::new()),
            MeasureDef::Quantiles { outputs, .. } => {
                (None, outputs.keys().filter_map(get).collect())
            }
            MeasureDef::Classify { classes, .. } => (
                None,
                classes.iter().filter_map(|c| get(&c.column)).collect(),
            ),
            MeasureDef::Peak {
                value_column,
                at_column,
                ..
            } => (get(value_column), get(at_column).into_iter().collect()),
            MeasureDef::Distinct { .. } | MeasureDef::Ratio { .. } => (None, Vec::new()),
        };
        Self { main, more }
    }

    fn is_int(&self) -> bool {
        self.main
            .as_ref()
            .is_some_and(|c| c.kind == ColumnKind::Int)
    }
}

/// Runs `check` on the column, when there is one.
fn check_with(
    c: Option<&ColumnInfo>,
    check: impl FnOnce(&ColumnInfo) -> Result<(), String>,
) -> Result<(), String> {
    c.map_or(Ok(()), check)
}

/// What one event adds to one measure, computed once, checked, then folded.
#[derive(Debug, Clone, Copy)]
enum Delta {
    Skip,
    One,
    Int(i128),
    Float(f64),
    Hash(u64),
    Class(usize),
    PeakInt(i64, i128),
    PeakFloat(i64, f64),
}

/// An event's row and contributions in one table, checked to fit.
#[derive(Debug)]
pub struct Planned {
    key: RowKey,
    deltas: Vec<Delta>,
}

pub(super) fn checked(a: i128, b: i128) -> Result<i128, String> {
    a.checked_add(b)
        .ok_or_else(|| format!("{a} + {b} overflows"))
}

/// Checks a flush's partial sum: above the column's range it can only grow
/// (values would have to be negative to come back), so it is refused at
/// once; below zero in an UNSIGNED column it may still be lifted by the
/// row's committed value, so only its magnitude is checked here and the
/// merged result when the row is written.
fn check_partial(c: &ColumnInfo, sum: i128) -> Result<(), String> {
    if sum < 0 && c.unsigned {
        c.check_int(sum.saturating_neg())
    } else {
        c.check_int(sum)
    }
}

impl CompiledTable {
    /// Checks every column the definition names against the table's columns.
    pub fn compile(def: &TableDef, columns: &[ColumnInfo]) -> Result<Self, String> {
        let find = |name: &str| columns.iter().find(|c| c.name == name);
        let time = find(&def.time_column)
            .ok_or_else(|| format!("time column {} does not exist", def.time_column))?;
        let time_kind = match (def.window, time.kind) {
            (_, ColumnKind::DateTime) => ColumnKind::DateTime,
            (Window::Day, ColumnKind::Date) => ColumnKind::Date,
            (w, k) => {
                return Err(format!(
                    "time column {} is {k:?}, which cannot hold a {w:?} bucket",
                    def.time_column
                ))
            }
        };
        let mut dims = Vec::new();
        for d in &def.dimensions {
            let c = find(d.column())
                .ok_or_else(|| format!("dimension column {} does not exist", d.column()))?;
            if c.kind != ColumnKind::Text {
                return Err(format!("dimension column {} must be VARCHAR/TEXT", c.name));
            }
            dims.push(DimColumn {
                column: c.name.clone(),
                field: Dimension::field(d).to_string(),
                info: c.clone(),
            });
        }
        let mut cols = HashMap::new();
        for m in &def.measures {
            for col in m.columns() {
                let c = find(col).ok_or_else(|| format!("column {col} does not exist"))?;
                cols.insert(col.to_string(), c.clone());
            }
            let blob = |col: &str| match find(col).map(|c| c.kind) {
                Some(ColumnKind::Blob) => Ok(()),
                _ => Err(format!("sketch/state column {col} must be a BLOB")),
            };
            match m {
                MeasureDef::Quantiles { sketch_column, .. }
                | MeasureDef::Distinct { sketch_column, .. } => blob(sketch_column)?,
                MeasureDef::Peak {
                    state_column,
                    at_column,
                    ..
                } => {
                    blob(state_column)?;
                    if find(at_column).map(|c| c.kind) != Some(ColumnKind::DateTime) {
                        return Err(format!("peak column {at_column} must be DATETIME"));
                    }
                }
                _ => {}
            }
        }
        let checks = def
            .measures
            .iter()
            .map(|m| MeasureCols::of(m, &cols))
            .collect();
        Ok(Self {
            def: def.clone(),
            time_kind,
            time: time.clone(),
            dims,
            columns: cols,
            checks,
        })
    }

    /// Whether every column this table was compiled against is still the
    /// same in `columns`.
    pub fn matches(&self, columns: &[ColumnInfo]) -> bool {
        let same = |c: &ColumnInfo| columns.iter().any(|x| x == c);
        same(&self.time)
            && self.dims.iter().all(|d| same(&d.info))
            && self.columns.values().all(same)
    }

    pub fn kind_of(&self, col: &str) -> ColumnKind {
        self.columns.get(col).map_or(ColumnKind::Float, |c| c.kind)
    }

    pub(super) fn int_column(&self, col: &str) -> bool {
        self.kind_of(col) == ColumnKind::Int
    }

    /// Checks a value for `col` (columns the table does not describe pass).
    pub(super) fn fits(
        &self,
        col: &str,
        check: impl Fn(&ColumnInfo) -> Result<(), String>,
    ) -> Result<(), String> {
        self.columns.get(col).map_or(Ok(()), check)
    }

    /// A fresh row state.
    pub fn new_row(&self) -> Row {
        let state = self
            .def
            .measures
            .iter()
            .map(|m| match m {
                MeasureDef::Count { .. } => MState::Count(0),
                MeasureDef::Sum { column, .. } if self.int_column(column) => MState::IntSum(0),
                MeasureDef::Sum { .. } => MState::Sum(0.0),
                MeasureDef::Min { .. } => MState::Min(None),
                MeasureDef::Max { .. } => MState::Max(None),
                MeasureDef::Quantiles { .. } => MState::Quantiles(DdSketch::new()),
                MeasureDef::Distinct { .. } => MState::Distinct(Hll::new()),
                MeasureDef::Classify { classes, .. } => MState::Classes(vec![0; classes.len()]),
                MeasureDef::Peak { value_column, .. } if self.int_column(value_column) => {
                    MState::IntPeak(BTreeMap::new())
                }
                MeasureDef::Peak { .. } => MState::Peak(BTreeMap::new()),
                MeasureDef::Ratio { .. } => MState::Ratio,
            })
            .collect();
        Row { events: 0, state }
    }

    /// The row key of an event, or `None` when the table's filter excludes
    /// it; an error when its bucket or a dimension value does not fit.
    pub fn key(&self, ev: &Map<String, Value>, ts_ms: i64) -> Result<Option<RowKey>, String> {
        if let Some(f) = &self.def.filter {
            if !f.eval_bool(ev) {
                return Ok(None);
            }
        }
        let start_ms = self.def.window.floor(ts_ms);
        self.time.check_time(start_ms)?;
        let mut dims = Vec::with_capacity(self.dims.len());
        for d in &self.dims {
            let v = dim_value(ev.get(&d.field), d.info.max_chars);
            d.info
                .check_text(&v)
                .map_err(|e| format!("field {}: {e}", d.field))?;
            dims.push(v);
        }
        Ok(Some(RowKey {
            dims: dims.into_boxed_slice(),
            start_ms,
        }))
    }

    /// The key of the row taking the events of keys past the budget.
    pub fn other_key(&self, start_ms: i64) -> RowKey {
        let other = |d: &DimColumn| dim_value(Some(&Value::String(OTHER.into())), d.info.max_chars);
        RowKey {
            dims: self.dims.iter().map(other).collect(),
            start_ms,
        }
    }

    /// What an event adds to this table, checked against the columns and
    /// the row it goes to (in `rows`); `None` when the table's filter
    /// excludes it. Nothing is changed: [`Self::commit`] folds it.
    pub fn plan(
        &self,
        rows: &TableRows,
        ev: &Map<String, Value>,
        ts_ms: i64,
    ) -> Result<Option<Planned>, String> {
        let Some(key) = self.key(ev, ts_ms)? else {
            return Ok(None);
        };
        let row = rows.get(&key);
        let mut deltas = Vec::with_capacity(self.def.measures.len());
        for (i, (m, cols)) in self.def.measures.iter().zip(&self.checks).enumerate() {
            let state = row.and_then(|r| r.state.get(i));
            let d = self
                .delta(m, cols, state, ev, ts_ms)
                .map_err(|e| format!("{}: {e}", describe(m)))?;
            deltas.push(d);
        }
        Ok(Some(Planned { key, deltas }))
    }

    /// One measure's contribution, checked against its column and the
    /// row's current state (`None`: a new row).
    fn delta(
        &self,
        m: &MeasureDef,
        cols: &MeasureCols,
        state: Option<&MState>,
        ev: &Map<String, Value>,
        ts_ms: i64,
    ) -> Result<Delta, String> {
        if m.filter().is_some_and(|f| !f.eval_bool(ev)) {
            return Ok(Delta::Skip);
        }
        let finite = |e: &crate::expr::Expr| e.eval_f64(ev).filter(|v| v.is_finite());
        // For integer columns: a bare integer field exactly, anything else
        // rounded; `None` when there is no number.
        let exact = |e: &crate::expr::Expr, col: &str| -> Result<Option<i128>, String> {
            if let Some(i) = e.eval_exact_int(ev) {
                return Ok(Some(i));
            }
            match finite(e) {
                Some(v) if v.abs() < 1e38 => Ok(Some(v.round() as i128)),
                Some(v) => Err(format!("{v:e} does not fit integer column {col}")),
                None => Ok(None),
            }
        };
        Ok(match (m, state) {
            (MeasureDef::Count { .. }, s) => {
                let n = match s {
                    Some(MState::Count(n)) => i128::from(*n),
                    _ => 0,
                };
                check_with(cols.main.as_ref(), |c| c.check_int(n + 1))?;
                Delta::One
            }
            (MeasureDef::Sum { column, value, .. }, s) => {
                if cols.is_int() {
                    let Some(v) = exact(value, column)? else {
                        return Ok(Delta::Skip);
                    };
                    let now = match s {
                        Some(MState::IntSum(n)) => *n,
                        _ => 0,
                    };
                    let sum = checked(now, v)?;
                    check_with(cols.main.as_ref(), |c| check_partial(c, sum))?;
                    Delta::Int(v)
                } else {
                    let Some(v) = finite(value) else {
                        return Ok(Delta::Skip);
                    };
                    let now = match s {
                        Some(MState::Sum(x)) => *x,
                        _ => 0.0,
                    };
                    check_with(cols.main.as_ref(), |c| c.check_float(now + v))?;
                    Delta::Float(v)
                }
            }
            (MeasureDef::Min { value, .. } | MeasureDef::Max { value, .. }, _) => {
                let Some(v) = finite(value) else {
                    return Ok(Delta::Skip);
                };
                check_with(cols.main.as_ref(), |c| c.check_float(v))?;
                Delta::Float(v)
            }
            (MeasureDef::Quantiles { value, .. }, _) => {
                let Some(v) = finite(value) else {
                    return Ok(Delta::Skip);
                };
                for c in &cols.more {
                    c.check_float(v)?;
                }
                Delta::Float(v)
            }
            (MeasureDef::Distinct { value, .. }, _) => match value.eval(ev) {
                crate::expr::Value::Str(s) => Delta::Hash(xxh3_64(s.as_bytes())),
                crate::expr::Value::Num(n) => Delta::Hash(xxh3_64(n.to_string().as_bytes())),
                crate::expr::Value::Bool(b) => {
                    Delta::Hash(xxh3_64(if b { b"true" as &[u8] } else { b"false" }))
                }
                crate::expr::Value::Null => Delta::Skip,
            },
            (MeasureDef::Classify { classes, .. }, s) => {
                let first = classes
                    .iter()
                    .position(|c| c.filter.as_ref().is_none_or(|f| f.eval_bool(ev)));
                let Some(i) = first else {
                    return Ok(Delta::Skip);
                };
                let n = match s {
                    Some(MState::Classes(c)) => c.get(i).copied().map_or(0, i128::from),
                    _ => 0,
                };
                check_with(cols.more.get(i), |c| c.check_int(n + 1))?;
                Delta::Class(i)
            }
            (
                MeasureDef::Peak {
                    value,
                    by,
                    value_column,
                    ..
                },
                s,
            ) => {
                let bucket = by.floor(ts_ms);
                match s {
                    Some(MState::IntPeak(_)) | None if cols.is_int() => {
                        let Some(v) = exact(value, value_column)? else {
                            return Ok(Delta::Skip);
                        };
                        check_with(cols.more.first(), |c| c.check_time(bucket))?;
                        let now = match s {
                            Some(MState::IntPeak(b)) => b.get(&bucket).copied().unwrap_or(0),
                            _ => 0,
                        };
                        let sum = checked(now, v)?;
                        check_with(cols.main.as_ref(), |c| check_partial(c, sum))?;
                        Delta::PeakInt(bucket, v)
                    }
                    _ => {
                        let Some(v) = finite(value) else {
                            return Ok(Delta::Skip);
                        };
                        check_with(cols.more.first(), |c| c.check_time(bucket))?;
                        let now = match s {
                            Some(MState::Peak(b)) => b.get(&bucket).copied().unwrap_or(0.0),
                            _ => 0.0,
                        };
                        check_with(cols.main.as_ref(), |c| c.check_float(now + v))?;
                        Delta::PeakFloat(bucket, v)
                    }
                }
            }
            (MeasureDef::Ratio { .. }, _) => Delta::Skip,
        })
    }

    /// Folds a planned event into `rows`.
    pub fn commit(&self, rows: &mut TableRows, p: Planned) {
        let row = rows.entry(p.key).or_insert_with(|| self.new_row());
        row.events += 1;
        for (s, d) in row.state.iter_mut().zip(p.deltas) {
            match (s, d) {
                (_, Delta::Skip) => {}
                (MState::Count(n), Delta::One) => *n += 1, // checked in plan
                (MState::IntSum(n), Delta::Int(v)) => *n += v,
                (MState::Sum(x), Delta::Float(v)) => *x += v,
                (MState::Min(acc), Delta::Float(v)) => *acc = Some(acc.map_or(v, |a| a.min(v))),
                (MState::Max(acc), Delta::Float(v)) => *acc = Some(acc.map_or(v, |a| a.max(v))),
                (MState::Quantiles(sk), Delta::Float(v)) => sk.add(v),
                (MState::Distinct(h), Delta::Hash(x)) => h.add_hash(x),
                (MState::Classes(c), Delta::Class(i)) => {
                    if let Some(n) = c.get_mut(i) {
                        *n += 1;
                    }
                }
                (MState::IntPeak(b), Delta::PeakInt(t, v)) => *b.entry(t).or_insert(0) += v,
                (MState::Peak(b), Delta::PeakFloat(t, v)) => *b.entry(t).or_insert(0.0) += v,
                _ => {}
            }
        }
    }

    /// Adds the state of `from` to `into` (rows folded into `__other__`).
    pub fn merge_rows(&self, into: &mut Row, from: &Row) -> Result<(), String> {
        into.events = into.events.saturating_add(from.events);
        for ((m, a), b) in self
            .def
            .measures
            .iter()
            .zip(into.state.iter_mut())
            .zip(&from.state)
        {
            let overflow = || format!("{}: the merged row overflows", describe(m));
            match (a, b) {
                (MState::Count(x), MState::Count(y)) => {
                    *x = x.checked_add(*y).ok_or_else(overflow)?
                }
                (MState::IntSum(x), MState::IntSum(y)) => {
                    *x = x.checked_add(*y).ok_or_else(overflow)?
                }
                (MState::Sum(x), MState::Sum(y)) => *x += y,
                (MState::Min(x), MState::Min(Some(y))) => *x = Some(x.map_or(*y, |v| v.min(*y))),
                (MState::Max(x), MState::Max(Some(y))) => *x = Some(x.map_or(*y, |v| v.max(*y))),
                (MState::Quantiles(x), MState::Quantiles(y)) => x.merge(y),
                (MState::Distinct(x), MState::Distinct(y)) => x.merge(y),
                (MState::Classes(x), MState::Classes(y)) => {
                    for (a, b) in x.iter_mut().zip(y) {
                        *a = a.checked_add(*b).ok_or_else(overflow)?;
                    }
                }
                (MState::Peak(x), MState::Peak(y)) => {
                    for (t, v) in y {
                        *x.entry(*t).or_insert(0.0) += v;
                    }
                }
                (MState::IntPeak(x), MState::IntPeak(y)) => {
                    for (t, v) in y {
                        let e = x.entry(*t).or_insert(0);
                        *e = e.checked_add(*v).ok_or_else(overflow)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// `op column` of a measure, for error messages.
pub(super) fn describe(m: &MeasureDef) -> String {
    let (op, col) = match m {
        MeasureDef::Count { column, .. } => ("count", column.as_str()),
        MeasureDef::Sum { column, value, .. } => return format!("sum of {value} into {column}"),
        MeasureDef::Min { column, value, .. } => return format!("min of {value} into {column}"),
        MeasureDef::Max { column, value, .. } => return format!("max of {value} into {column}"),
        MeasureDef::Quantiles {
            sketch_column,
            value,
            ..
        } => return format!("quantiles of {value} into {sketch_column}"),
        MeasureDef::Distinct { column, .. } => ("distinct", column.as_str()),
        MeasureDef::Classify { .. } => ("classify", "classes"),
        MeasureDef::Peak {
            value_column,
            value,
            ..
        } => return format!("peak of {value} into {value_column}"),
        MeasureDef::Ratio { column, .. } => ("ratio", column.as_str()),
    };
    format!("{op} into {col}")
}

/// Folds one event into every table, or into none: each table's row and
/// values are planned and checked first. `Ok(false)` when every table's
/// filter excludes it; `Err` names the table, measure and reason.
pub fn fold_event(
    tables: &[CompiledTable],
    aggs: &mut [TableRows],
    ev: &Map<String, Value>,
    ts_ms: i64,
) -> Result<bool, String> {
    fold_event_where(tables, aggs, ev, ts_ms, |_, _| true)
}

/// [`fold_event`] folding only into the tables (by index) whose row `keep`
/// accepts; every table still checks the event (a replay refuses what the
/// live path refuses).
pub fn fold_event_where(
    tables: &[CompiledTable],
    aggs: &mut [TableRows],
    ev: &Map<String, Value>,
    ts_ms: i64,
    keep: impl Fn(usize, &RowKey) -> bool,
) -> Result<bool, String> {
    let mut plans = Vec::with_capacity(tables.len());
    for (t, rows) in tables.iter().zip(aggs.iter()) {
        plans.push(
            t.plan(rows, ev, ts_ms)
                .map_err(|e| format!("table {}: {e}", t.def.name))?,
        );
    }
    let mut hit = false;
    for (i, ((t, rows), p)) in tables.iter().zip(aggs.iter_mut()).zip(plans).enumerate() {
        if let Some(p) = p.filter(|p| keep(i, &p.key)) {
            t.commit(rows, p);
            hit = true;
        }
    }
    Ok(hit)
}

#[cfg(test)]
#[path = "agg_tests.rs"]
mod tests;
