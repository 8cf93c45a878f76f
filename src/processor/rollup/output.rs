//! The write side of a row: its merge with the state already committed
//! (exact, and checked against each column) and the values written, each
//! checked to fit its column. A value that does not fit is an error naming
//! the measure and column, which the runner treats as the entry's fault.

use std::collections::{BTreeMap, HashMap};

use super::agg::{checked, describe, CompiledTable, DbRow, MState, Row, RowKey, SqlVal};
use super::config::MeasureDef;
use crate::sketch::{DdSketch, Hll};
use crate::store::{ms_datetime, ColumnKind};

impl CompiledTable {
    /// Merges the database's state of a row into ours; an error when a
    /// count or integer sum would leave its column's range.
    pub fn merge_db(&self, row: &mut Row, db: &DbRow) -> Result<(), String> {
        for (m, s) in self.def.measures.iter().zip(row.state.iter_mut()) {
            merge_measure(self, m, s, db).map_err(|e| format!("{}: {e}", describe(m)))?;
        }
        Ok(())
    }

    /// Column names (keys first, then measures) of the full row, in write order.
    pub fn write_columns(&self) -> Vec<String> {
        let mut cols: Vec<String> = self.dims.iter().map(|d| d.column.clone()).collect();
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

    /// The time column's value for a bucket start.
    pub fn time_value(&self, start_ms: i64) -> SqlVal {
        match (self.time_kind, ms_datetime(start_ms)) {
            (ColumnKind::Date, Some(d)) => SqlVal::Date(d.date()),
            (_, Some(d)) => SqlVal::DateTime(d),
            (_, None) => SqlVal::Null,
        }
    }

    /// The full row to write: key values, then every measure column; an
    /// error when a value does not fit its column.
    pub fn output(&self, key: &RowKey, row: &Row) -> Result<Vec<SqlVal>, String> {
        let mut out: Vec<SqlVal> = key
            .dims
            .iter()
            .map(|d| SqlVal::Text(d.to_string()))
            .collect();
        self.time.check_time(key.start_ms)?;
        out.push(self.time_value(key.start_ms));
        // Numeric results by column, for ratios.
        let mut numbers: HashMap<&str, f64> = HashMap::new();
        for (m, s) in self.def.measures.iter().zip(&row.state) {
            match (m, s) {
                (MeasureDef::Count { column, .. }, MState::Count(n)) => {
                    numbers.insert(column, *n as f64);
                }
                (MeasureDef::Sum { column, .. }, MState::IntSum(v)) => {
                    numbers.insert(column, *v as f64);
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
        for (m, s) in self.def.measures.iter().zip(&row.state) {
            self.output_measure(m, s, &numbers, &mut out)
                .map_err(|e| format!("{}: {e}", describe(m)))?;
        }
        Ok(out)
    }

    fn output_measure(
        &self,
        m: &MeasureDef,
        s: &MState,
        numbers: &HashMap<&str, f64>,
        out: &mut Vec<SqlVal>,
    ) -> Result<(), String> {
        match (m, s) {
            (MeasureDef::Count { column, .. }, MState::Count(n)) => {
                out.push(self.int(column, i128::from(*n))?)
            }
            (MeasureDef::Sum { column, .. }, MState::IntSum(v)) => out.push(self.int(column, *v)?),
            (MeasureDef::Sum { column, .. }, MState::Sum(v)) => out.push(self.num(column, *v)?),
            (MeasureDef::Min { column, .. }, MState::Min(v))
            | (MeasureDef::Max { column, .. }, MState::Max(v)) => out.push(match v {
                Some(v) => self.num(column, *v)?,
                None => SqlVal::Null,
            }),
            (
                MeasureDef::Quantiles {
                    outputs,
                    sketch_column,
                    ..
                },
                MState::Quantiles(sk),
            ) => {
                out.push(self.bytes(sketch_column, sk.to_bytes())?);
                for (col, q) in outputs {
                    out.push(match sk.quantile(*q) {
                        Some(v) => self.num(col, v)?,
                        None => SqlVal::Null,
                    });
                }
            }
            (
                MeasureDef::Distinct {
                    column,
                    sketch_column,
                    ..
                },
                MState::Distinct(h),
            ) => {
                out.push(self.bytes(sketch_column, h.to_bytes())?);
                out.push(self.int(column, i128::from(h.estimate()))?);
            }
            (MeasureDef::Classify { classes, .. }, MState::Classes(c)) => {
                for (cd, n) in classes.iter().zip(c) {
                    out.push(self.int(&cd.column, i128::from(*n))?);
                }
            }
            (
                MeasureDef::Peak {
                    state_column,
                    at_column,
                    value_column,
                    ..
                },
                MState::Peak(_) | MState::IntPeak(_),
            ) => {
                // Largest sum; the earliest bucket wins ties.
                let (bytes, best) = match s {
                    MState::IntPeak(b) => (
                        serde_json::to_vec(b),
                        peak_of(b).map(|(t, v)| (t, PeakVal::Int(v))),
                    ),
                    MState::Peak(b) => (
                        serde_json::to_vec(b),
                        peak_of(b).map(|(t, v)| (t, PeakVal::Float(v))),
                    ),
                    _ => return Ok(()),
                };
                out.push(self.bytes(state_column, bytes.map_err(|e| e.to_string())?)?);
                match best {
                    Some((t, v)) => {
                        self.fits(at_column, |c| c.check_time(t))?;
                        out.push(ms_datetime(t).map_or(SqlVal::Null, SqlVal::DateTime));
                        out.push(v.into_sql(self, value_column)?);
                    }
                    None => {
                        out.push(SqlVal::Null);
                        out.push(self.num(value_column, 0.0)?);
                    }
                }
            }
            (
                MeasureDef::Ratio {
                    num,
                    den,
                    on_zero,
                    column,
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
                    on_zero.map_or(Ok(SqlVal::Null), |v| self.num(column, v))?
                } else {
                    self.num(column, sum(num) / d)?
                });
            }
            _ => {}
        }
        Ok(())
    }

    /// An exact integer for `col`, checked against its range.
    fn int(&self, col: &str, v: i128) -> Result<SqlVal, String> {
        match self.columns.get(col) {
            Some(c) if c.kind == ColumnKind::Int => {
                c.check_int(v)?;
                Ok(int_sql(v))
            }
            Some(c) => {
                c.check_float(v as f64)?;
                Ok(SqlVal::Float(v as f64))
            }
            None => Ok(int_sql(v)),
        }
    }

    /// A number for `col`: rounded for integer columns; checked either way.
    fn num(&self, col: &str, v: f64) -> Result<SqlVal, String> {
        self.fits(col, |c| c.check_float(v))?;
        Ok(if self.int_column(col) {
            int_sql(v.round() as i128)
        } else {
            SqlVal::Float(v)
        })
    }

    fn bytes(&self, col: &str, b: Vec<u8>) -> Result<SqlVal, String> {
        self.fits(col, |c| c.check_bytes(b.len()))?;
        Ok(SqlVal::Bytes(b))
    }
}

/// An integer as SQL (already checked to fit its column, so within u64 or i64).
fn int_sql(v: i128) -> SqlVal {
    match i64::try_from(v) {
        Ok(i) => SqlVal::Int(i),
        Err(_) => u64::try_from(v).map_or(SqlVal::Null, SqlVal::UInt),
    }
}

/// A peak's value, exact or floating.
#[derive(Clone, Copy)]
enum PeakVal {
    Int(i128),
    Float(f64),
}

impl PeakVal {
    fn into_sql(self, t: &CompiledTable, col: &str) -> Result<SqlVal, String> {
        match self {
            PeakVal::Int(v) => t.int(col, v),
            PeakVal::Float(v) => t.num(col, v),
        }
    }
}

/// The bucket with the largest sum; the earliest wins ties.
fn peak_of<V: Copy + PartialOrd>(b: &BTreeMap<i64, V>) -> Option<(i64, V)> {
    b.iter().fold(None, |acc, (&t, &v)| match acc {
        Some((_, bv)) if bv >= v => acc,
        _ => Some((t, v)),
    })
}

fn db_int(db: &DbRow, col: &str) -> i128 {
    match db.get(col) {
        Some(SqlVal::Int(v)) => i128::from(*v),
        Some(SqlVal::UInt(v)) => i128::from(*v),
        Some(SqlVal::Float(v)) => v.round() as i128,
        _ => 0,
    }
}

fn db_f64(db: &DbRow, col: &str) -> Option<f64> {
    match db.get(col) {
        Some(SqlVal::Float(v)) => Some(*v),
        Some(SqlVal::Int(v)) => Some(*v as f64),
        Some(SqlVal::UInt(v)) => Some(*v as f64),
        _ => None,
    }
}

fn db_bytes<'a>(db: &'a DbRow, col: &str) -> &'a [u8] {
    match db.get(col) {
        Some(SqlVal::Bytes(b)) => b,
        _ => &[],
    }
}

/// Adds a count read back from `col` to `n`, within the column's range.
fn add_count(t: &CompiledTable, col: &str, n: &mut u64, db: &DbRow) -> Result<(), String> {
    let sum = checked(i128::from(*n), db_int(db, col).max(0))?;
    t.fits(col, |c| c.check_int(sum))?;
    *n = u64::try_from(sum).map_err(|_| format!("count {sum} out of range"))?;
    Ok(())
}

fn merge_measure(
    t: &CompiledTable,
    m: &MeasureDef,
    s: &mut MState,
    db: &DbRow,
) -> Result<(), String> {
    match (m, s) {
        (MeasureDef::Count { column, .. }, MState::Count(n)) => add_count(t, column, n, db)?,
        (MeasureDef::Sum { column, .. }, MState::IntSum(acc)) => {
            let sum = checked(*acc, db_int(db, column))?;
            t.fits(column, |c| c.check_int(sum))?;
            *acc = sum;
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
                add_count(t, &c.column, n, db)?;
            }
        }
        (MeasureDef::Peak { state_column, .. }, s @ (MState::Peak(_) | MState::IntPeak(_))) => {
            merge_peak(s, db_bytes(db, state_column), state_column)?
        }
        _ => {}
    }
    Ok(())
}

/// Merges a peak's per-bucket sums read back (JSON; integers or, from
/// rows written before sums were exact, floats) into ours.
fn merge_peak(s: &mut MState, bytes: &[u8], column: &str) -> Result<(), String> {
    if bytes.is_empty() {
        return Ok(());
    }
    let old: BTreeMap<i64, serde_json::Number> = match serde_json::from_slice(bytes) {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(column = %column, error = %e, "unreadable peak state; starting it anew");
            return Ok(());
        }
    };
    for (t, v) in old {
        match s {
            MState::Peak(b) => *b.entry(t).or_insert(0.0) += v.as_f64().unwrap_or(0.0),
            MState::IntPeak(b) => {
                let v = match (v.as_i64(), v.as_u64()) {
                    (Some(i), _) => i128::from(i),
                    (_, Some(u)) => i128::from(u),
                    _ => v.as_f64().unwrap_or(0.0).round() as i128,
                };
                let e = b.entry(t).or_insert(0);
                *e = checked(*e, v)?;
            }
            _ => {}
        }
    }
    Ok(())
}
