//! In-memory aggregation of one flush interval, and the merge with the rows
//! already in the database.
//!
//! Every measure state is mergeable (counts and sums add, min/max compare,
//! sketches merge), so events of any shard and any order combine exactly; the
//! derived columns (quantiles, distinct counts, ratios, peaks) are computed
//! from the merged state at each flush, never by averaging averages.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, NaiveDate, NaiveDateTime};
use serde_json::{Map, Value};

use super::config::{Dimension, MeasureDef, TableDef, Window};
use crate::sketch::{DdSketch, Hll};
use crate::store::{ColumnInfo, ColumnKind};

/// A value bound into SQL.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlVal {
    Null,
    Int(i64),
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
    Sum(f64),
    Min(Option<f64>),
    Max(Option<f64>),
    Quantiles(DdSketch),
    Distinct(Hll),
    Classes(Vec<u64>),
    Peak(BTreeMap<i64, f64>),
    Ratio,
}

/// Values of a row as read back from the database, by column name.
pub type DbRow = HashMap<String, SqlVal>;

/// A table definition checked against the real table.
#[derive(Debug, Clone)]
pub struct CompiledTable {
    pub def: TableDef,
    pub time_kind: ColumnKind,
    /// (column, field, max chars)
    pub dims: Vec<(String, String, Option<u64>)>,
    pub kinds: HashMap<String, ColumnKind>,
}

impl CompiledTable {
    /// Checks every column the definition names against the table's columns.
    pub fn compile(def: &TableDef, columns: &[ColumnInfo]) -> Result<Self, String> {
        let find = |name: &str| columns.iter().find(|c| c.name == name);
        let mut kinds = HashMap::new();
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
            dims.push((c.name.clone(), Dimension::field(d).to_string(), c.max_chars));
        }
        for m in &def.measures {
            for col in m.columns() {
                let c = find(col).ok_or_else(|| format!("column {col} does not exist"))?;
                kinds.insert(col.to_string(), c.kind);
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
        Ok(Self {
            def: def.clone(),
            time_kind,
            dims,
            kinds,
        })
    }

    /// A fresh row state.
    pub fn new_row(&self) -> Vec<MState> {
        self.def
            .measures
            .iter()
            .map(|m| match m {
                MeasureDef::Count { .. } => MState::Count(0),
                MeasureDef::Sum { .. } => MState::Sum(0.0),
                MeasureDef::Min { .. } => MState::Min(None),
                MeasureDef::Max { .. } => MState::Max(None),
                MeasureDef::Quantiles { .. } => MState::Quantiles(DdSketch::new()),
                MeasureDef::Distinct { .. } => MState::Distinct(Hll::new()),
                MeasureDef::Classify { classes, .. } => MState::Classes(vec![0; classes.len()]),
                MeasureDef::Peak { .. } => MState::Peak(BTreeMap::new()),
                MeasureDef::Ratio { .. } => MState::Ratio,
            })
            .collect()
    }

    /// The row key of an event, or `None` when the table's filter excludes it.
    pub fn key(&self, ev: &Map<String, Value>, ts_ms: i64) -> Option<RowKey> {
        if let Some(f) = &self.def.filter {
            if !f.eval_bool(ev) {
                return None;
            }
        }
        let dims = self
            .dims
            .iter()
            .map(|(_, field, max)| crate::event::subject::dim_value(ev.get(field), *max))
            .collect();
        Some(RowKey {
            dims,
            start_ms: self.def.window.floor(ts_ms),
        })
    }

    /// Folds one event into a row state.
    pub fn apply(&self, row: &mut [MState], ev: &Map<String, Value>, ts_ms: i64) {
        for (m, s) in self.def.measures.iter().zip(row.iter_mut()) {
            apply_measure(m, s, ev, ts_ms);
        }
    }

    /// Merges the database's state of a row into ours.
    pub fn merge_db(&self, row: &mut [MState], db: &DbRow) {
        for (m, s) in self.def.measures.iter().zip(row.iter_mut()) {
            merge_measure(m, s, db);
        }
    }

    /// Column names (keys first, then measures) of the full row, in write order.
    pub fn write_columns(&self) -> Vec<String> {
        let mut cols: Vec<String> = self.dims.iter().map(|(c, _, _)| c.clone()).collect();
        cols.push(self.def.time_column.clone());
        for m in &self.def.measures {
            cols.extend(m.columns().into_iter().map(str::to_string));
        }
        cols
    }

    /// Columns holding state to read back before merging, by measure order.
    pub fn state_columns(&self) -> Vec<String> {
        let mut cols = Vec::new();
        for m in &self.def.measures {
            match m {
                MeasureDef::Count { column, .. }
                | MeasureDef::Sum { column, .. }
                | MeasureDef::Min { column, .. }
                | MeasureDef::Max { column, .. } => cols.push(column.clone()),
                MeasureDef::Quantiles { sketch_column, .. }
                | MeasureDef::Distinct { sketch_column, .. } => cols.push(sketch_column.clone()),
                MeasureDef::Classify { classes, .. } => {
                    cols.extend(classes.iter().map(|c| c.column.clone()))
                }
                MeasureDef::Peak { state_column, .. } => cols.push(state_column.clone()),
                MeasureDef::Ratio { .. } => {}
            }
        }
        cols
    }

    pub fn kind_of(&self, col: &str) -> ColumnKind {
        self.kinds.get(col).copied().unwrap_or(ColumnKind::Float)
    }

    /// The time column's value for a bucket start.
    pub fn time_value(&self, start_ms: i64) -> SqlVal {
        let dt = DateTime::from_timestamp_millis(start_ms).map(|d| d.naive_utc());
        match (self.time_kind, dt) {
            (ColumnKind::Date, Some(d)) => SqlVal::Date(d.date()),
            (_, Some(d)) => SqlVal::DateTime(d),
            (_, None) => SqlVal::Null,
        }
    }

    /// The full row to write: key values, then every measure column.
    pub fn output(&self, key: &RowKey, row: &[MState]) -> Vec<SqlVal> {
        let mut out: Vec<SqlVal> = key
            .dims
            .iter()
            .map(|d| SqlVal::Text(d.to_string()))
            .collect();
        out.push(self.time_value(key.start_ms));
        // Numeric results by column, for ratios.
        let mut numbers: HashMap<&str, f64> = HashMap::new();
        for (m, s) in self.def.measures.iter().zip(row) {
            match (m, s) {
                (MeasureDef::Count { column, .. }, MState::Count(n)) => {
                    numbers.insert(column, *n as f64);
                }
                (MeasureDef::Sum { column, .. }, MState::Sum(v)) => {
                    numbers.insert(column, *v);
                }
                (MeasureDef::Classify { classes, .. }, MState::Classes(c)) => {
                    for (cd, n) in classes.iter().zip(c) {
                        numbers.insert(&cd.column, *n as f64);
                    }
                }
                _ => {}
            }
        }
        for (m, s) in self.def.measures.iter().zip(row) {
            match (m, s) {
                (MeasureDef::Count { column, .. }, MState::Count(n)) => {
                    out.push(self.num(column, *n as f64))
                }
                (MeasureDef::Sum { column, .. }, MState::Sum(v)) => out.push(self.num(column, *v)),
                (MeasureDef::Min { column, .. }, MState::Min(v))
                | (MeasureDef::Max { column, .. }, MState::Max(v)) => {
                    out.push(v.map_or(SqlVal::Null, |v| self.num(column, v)))
                }
                (MeasureDef::Quantiles { outputs, .. }, MState::Quantiles(sk)) => {
                    out.push(SqlVal::Bytes(sk.to_bytes()));
                    for (col, q) in outputs {
                        out.push(sk.quantile(*q).map_or(SqlVal::Null, |v| self.num(col, v)));
                    }
                }
                (MeasureDef::Distinct { column, .. }, MState::Distinct(h)) => {
                    out.push(SqlVal::Bytes(h.to_bytes()));
                    out.push(self.num(column, h.estimate() as f64));
                }
                (MeasureDef::Classify { classes, .. }, MState::Classes(c)) => {
                    for (cd, n) in classes.iter().zip(c) {
                        out.push(self.num(&cd.column, *n as f64));
                    }
                }
                (MeasureDef::Peak { value_column, .. }, MState::Peak(buckets)) => {
                    out.push(SqlVal::Bytes(
                        serde_json::to_vec(buckets).unwrap_or_default(),
                    ));
                    // Largest sum; the earliest bucket wins ties.
                    let best = buckets
                        .iter()
                        .fold(None::<(i64, f64)>, |acc, (&t, &v)| match acc {
                            Some((_, bv)) if bv >= v => acc,
                            _ => Some((t, v)),
                        });
                    match best {
                        Some((t, v)) => {
                            let at = DateTime::from_timestamp_millis(t).map(|d| d.naive_utc());
                            out.push(at.map_or(SqlVal::Null, SqlVal::DateTime));
                            out.push(self.num(value_column, v));
                        }
                        None => {
                            out.push(SqlVal::Null);
                            out.push(self.num(value_column, 0.0));
                        }
                    }
                }
                (
                    MeasureDef::Ratio {
                        num, den, on_zero, ..
                    },
                    MState::Ratio,
                ) => {
                    let sum = |cols: &[String]| {
                        cols.iter()
                            .map(|c| numbers.get(c.as_str()).copied().unwrap_or(0.0))
                            .sum::<f64>()
                    };
                    let d = sum(den);
                    out.push(if d == 0.0 {
                        on_zero.map_or(SqlVal::Null, SqlVal::Float)
                    } else {
                        SqlVal::Float(sum(num) / d)
                    });
                }
                _ => {}
            }
        }
        out
    }

    fn num(&self, col: &str, v: f64) -> SqlVal {
        match self.kind_of(col) {
            ColumnKind::Int => {
                SqlVal::Int(v.round().clamp(i64::MIN as f64, i64::MAX as f64) as i64)
            }
            _ => SqlVal::Float(v),
        }
    }
}

fn apply_measure(m: &MeasureDef, s: &mut MState, ev: &Map<String, Value>, ts_ms: i64) {
    if m.filter().is_some_and(|f| !f.eval_bool(ev)) {
        return;
    }
    let finite = |e: &crate::expr::Expr| e.eval_f64(ev).filter(|v| v.is_finite());
    match (m, s) {
        (MeasureDef::Count { .. }, MState::Count(n)) => *n += 1,
        (MeasureDef::Sum { value, .. }, MState::Sum(acc)) => *acc += finite(value).unwrap_or(0.0),
        (MeasureDef::Min { value, .. }, MState::Min(acc)) => {
            if let Some(v) = finite(value) {
                *acc = Some(acc.map_or(v, |a| a.min(v)));
            }
        }
        (MeasureDef::Max { value, .. }, MState::Max(acc)) => {
            if let Some(v) = finite(value) {
                *acc = Some(acc.map_or(v, |a| a.max(v)));
            }
        }
        (MeasureDef::Quantiles { value, .. }, MState::Quantiles(sk)) => {
            if let Some(v) = finite(value) {
                sk.add(v);
            }
        }
        (MeasureDef::Distinct { value, .. }, MState::Distinct(h)) => match value.eval(ev) {
            crate::expr::Value::Str(s) => h.add_str(&s),
            crate::expr::Value::Num(n) => h.add_str(&n.to_string()),
            crate::expr::Value::Bool(b) => h.add_str(if b { "true" } else { "false" }),
            crate::expr::Value::Null => {}
        },
        (MeasureDef::Classify { classes, .. }, MState::Classes(counts)) => {
            let first = classes
                .iter()
                .position(|c| c.filter.as_ref().is_none_or(|f| f.eval_bool(ev)));
            if let Some(i) = first {
                counts[i] += 1;
            }
        }
        (MeasureDef::Peak { value, by, .. }, MState::Peak(buckets)) => {
            if let Some(v) = finite(value) {
                *buckets.entry(by.floor(ts_ms)).or_insert(0.0) += v;
            }
        }
        _ => {}
    }
}

fn db_f64(db: &DbRow, col: &str) -> Option<f64> {
    match db.get(col) {
        Some(SqlVal::Float(v)) => Some(*v),
        Some(SqlVal::Int(v)) => Some(*v as f64),
        _ => None,
    }
}

fn db_bytes<'a>(db: &'a DbRow, col: &str) -> &'a [u8] {
    match db.get(col) {
        Some(SqlVal::Bytes(b)) => b,
        _ => &[],
    }
}

fn merge_measure(m: &MeasureDef, s: &mut MState, db: &DbRow) {
    match (m, s) {
        (MeasureDef::Count { column, .. }, MState::Count(n)) => {
            *n += db_f64(db, column).unwrap_or(0.0).max(0.0).round() as u64;
        }
        (MeasureDef::Sum { column, .. }, MState::Sum(acc)) => {
            *acc += db_f64(db, column).unwrap_or(0.0)
        }
        (MeasureDef::Min { column, .. }, MState::Min(acc)) => {
            if let Some(v) = db_f64(db, column) {
                *acc = Some(acc.map_or(v, |a| a.min(v)));
            }
        }
        (MeasureDef::Max { column, .. }, MState::Max(acc)) => {
            if let Some(v) = db_f64(db, column) {
                *acc = Some(acc.map_or(v, |a| a.max(v)));
            }
        }
        (MeasureDef::Quantiles { sketch_column, .. }, MState::Quantiles(sk)) => {
            // An unreadable sketch would silently lose history; it only comes from
            // outside tampering, so it is logged and replaced.
            match DdSketch::from_bytes(db_bytes(db, sketch_column)) {
                Ok(old) => sk.merge(&old),
                Err(e) => {
                    tracing::error!(column = %sketch_column, error = %e, "unreadable sketch in database; starting it anew")
                }
            }
        }
        (MeasureDef::Distinct { sketch_column, .. }, MState::Distinct(h)) => {
            match Hll::from_bytes(db_bytes(db, sketch_column)) {
                Ok(old) => h.merge(&old),
                Err(e) => {
                    tracing::error!(column = %sketch_column, error = %e, "unreadable HLL in database; starting it anew")
                }
            }
        }
        (MeasureDef::Classify { classes, .. }, MState::Classes(counts)) => {
            for (c, n) in classes.iter().zip(counts.iter_mut()) {
                *n += db_f64(db, &c.column).unwrap_or(0.0).max(0.0).round() as u64;
            }
        }
        (MeasureDef::Peak { state_column, .. }, MState::Peak(buckets)) => {
            let bytes = db_bytes(db, state_column);
            if !bytes.is_empty() {
                match serde_json::from_slice::<BTreeMap<i64, f64>>(bytes) {
                    Ok(old) => {
                        for (t, v) in old {
                            *buckets.entry(t).or_insert(0.0) += v;
                        }
                    }
                    Err(e) => {
                        tracing::error!(column = %state_column, error = %e, "unreadable peak state; starting it anew")
                    }
                }
            }
        }
        _ => {}
    }
}
