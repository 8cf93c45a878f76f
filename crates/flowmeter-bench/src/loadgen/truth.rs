//! The exact totals a load generator sent, per hour and dimension, and their
//! comparison with the rollup tables.
//!
//! The truth file is NDJSON, one row per (kind, hour, dimensions):
//! `{"kind":"http","hour":"2026-03-01T10:00:00Z","service":"svc-1","endpoint":"/api/r3/:id","method":"GET","requests":12,"bytes_in":4800,"bytes_out":51234}`
//! `{"kind":"webrtc","hour":"…","meeting_id":"m-4","samples":30,"bytes_sent":…,"bytes_received":…}`
//! — the column names of `http_hourly` and `webrtc_hourly`, so any run can be
//! checked against the tables with plain SQL.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};

use flowmeter::event::{format_rfc3339_ms, parse_ts_value};
use flowmeter::store::{datetime_ms, ms_datetime, Store};

const HOUR_MS: i64 = 3_600_000;

/// A truth file that cannot be read: not worth retrying until it is fixed.
#[derive(Debug, thiserror::Error)]
pub enum TruthFileError {
    #[error("reading the truth file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "truth file {path}, line {line}: {reason} (a file written by `flowmeter loadgen --truth`)"
    )]
    Line {
        path: String,
        line: usize,
        reason: String,
    },
}

/// A truth row's key: (kind, hour start ms, dimension values).
type RowKey = (String, i64, Vec<String>);

/// (kind, hour start ms, dimension values) → (count, sum a, sum b).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TruthTable {
    rows: BTreeMap<RowKey, [u64; 3]>,
    /// A sum passed `u64::MAX` (the tables' BIGINT UNSIGNED): the truth is
    /// no longer exact, and [`TruthTable::compare`] says so.
    overflowed: bool,
}

/// Adds exactly, noting an overflow instead of wrapping.
fn add_exact(acc: &mut u64, v: u64, overflowed: &mut bool) {
    match acc.checked_add(v) {
        Some(s) => *acc = s,
        None => {
            *acc = u64::MAX;
            *overflowed = true;
        }
    }
}

/// One way the tables differ from a truth (see [`TruthTable::compare`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// A sent sum passed `u64::MAX`: the truth is not exact.
    Inexact,
    /// One (kind, hour, dimensions) row: its measures in the table and as
    /// sent, `None` on the side that lacks the row.
    Row {
        kind: String,
        hour_ms: i64,
        /// (column, value) of each dimension of the hourly table.
        dims: Vec<(&'static str, String)>,
        /// The measure columns, in the order of `table` and `sent`.
        measures: [&'static str; 3],
        table: Option<[u64; 3]>,
        sent: Option<[u64; 3]>,
    },
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Difference::Row {
            kind,
            hour_ms,
            dims,
            table,
            sent,
            ..
        } = self
        else {
            return write!(f, "a sent sum passed u64::MAX: the truth is not exact");
        };
        let values: Vec<&String> = dims.iter().map(|(_, v)| v).collect();
        write!(f, "{kind} {} {values:?}: ", format_rfc3339_ms(*hour_ms))?;
        match (table, sent) {
            (Some(t), Some(v)) => write!(f, "table {t:?}, sent {v:?}"),
            (None, Some(v)) => write!(f, "missing from the table (sent {v:?})"),
            _ => write!(f, "in the table but never sent"),
        }
    }
}

/// Dimension columns and the three measures of each kind's hourly table.
fn layout(
    kind: &str,
) -> Option<(
    &'static [&'static str],
    [&'static str; 3],
    [&'static str; 2],
)> {
    match kind {
        "http" => Some((
            &["service", "endpoint", "method"],
            ["requests", "bytes_in", "bytes_out"],
            ["req_bytes", "resp_bytes"],
        )),
        "webrtc" => Some((
            &["meeting_id"],
            ["samples", "bytes_sent", "bytes_received"],
            ["bytes_sent", "bytes_received"],
        )),
        _ => None,
    }
}

impl TruthTable {
    /// Adds one generated event (events of other kinds are ignored).
    pub fn add(&mut self, ev: &Value) {
        let Some(kind) = ev.get("kind").and_then(Value::as_str) else {
            return;
        };
        let Some((dims, _, fields)) = layout(kind) else {
            return;
        };
        let Some(ts) = ev.get("ts").and_then(|t| parse_ts_value(t).ok()) else {
            return;
        };
        let key: Vec<String> = dims
            .iter()
            .map(|d| {
                ev.get(*d)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        let row = self
            .rows
            .entry((kind.to_string(), ts.div_euclid(HOUR_MS) * HOUR_MS, key))
            .or_default();
        add_exact(&mut row[0], 1, &mut self.overflowed);
        for (i, f) in fields.iter().enumerate() {
            let v = ev.get(*f).and_then(Value::as_u64).unwrap_or(0);
            add_exact(&mut row[i + 1], v, &mut self.overflowed);
        }
    }

    pub fn merge(&mut self, other: &TruthTable) {
        self.overflowed |= other.overflowed;
        for (k, v) in &other.rows {
            let row = self.rows.entry(k.clone()).or_default();
            for (a, b) in row.iter_mut().zip(v) {
                add_exact(a, *b, &mut self.overflowed);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// No sum passed `u64::MAX`.
    pub fn is_exact(&self) -> bool {
        !self.overflowed
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Events counted.
    pub fn events(&self) -> u64 {
        self.rows.values().map(|r| r[0]).sum()
    }

    fn row_json(kind: &str, hour: i64, dims: &[String], v: &[u64; 3]) -> Value {
        let mut o = json!({"kind": kind, "hour": format_rfc3339_ms(hour)});
        if let Some((names, measures, _)) = layout(kind) {
            for (n, d) in names.iter().zip(dims) {
                o[*n] = json!(d);
            }
            for (m, x) in measures.iter().zip(v) {
                o[*m] = json!(x);
            }
        }
        o
    }

    /// Reads a truth file written by [`TruthTable::write`]; rows repeated
    /// for one key are added up. Says which line is at fault otherwise.
    pub fn read(path: &Path) -> Result<Self, TruthFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TruthFileError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let mut t = TruthTable::default();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let (key, v) = Self::parse_row(line).map_err(|reason| TruthFileError::Line {
                path: path.display().to_string(),
                line: i + 1,
                reason,
            })?;
            let row = t.rows.entry(key).or_default();
            for (a, b) in row.iter_mut().zip(v) {
                add_exact(a, b, &mut t.overflowed);
            }
        }
        Ok(t)
    }

    /// One NDJSON row: its key and measures.
    fn parse_row(line: &str) -> Result<(RowKey, [u64; 3]), String> {
        let o: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
        let kind = o.get("kind").and_then(Value::as_str).ok_or("no \"kind\"")?;
        let (dims, measures, _) =
            layout(kind).ok_or_else(|| format!("unknown kind {kind:?}: http or webrtc"))?;
        let hour = o
            .get("hour")
            .ok_or("no \"hour\"".to_string())
            .and_then(|h| parse_ts_value(h).map_err(|e| format!("hour {e}")))?;
        let mut key = Vec::new();
        for d in dims {
            let v = o.get(*d).and_then(Value::as_str);
            key.push(v.ok_or_else(|| format!("no string {d:?}"))?.to_string());
        }
        let mut v = [0u64; 3];
        for (x, m) in v.iter_mut().zip(measures) {
            *x = o
                .get(m)
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("{m:?} is not a count"))?;
        }
        Ok((
            (kind.to_string(), hour.div_euclid(HOUR_MS) * HOUR_MS, key),
            v,
        ))
    }

    /// Writes the NDJSON truth file.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        for ((kind, hour, dims), v) in &self.rows {
            writeln!(f, "{}", Self::row_json(kind, *hour, dims, v))?;
        }
        f.flush()
    }

    /// Compares with the hourly tables of `store`: every truth row must be
    /// there with equal measures, and the tables must hold nothing else in
    /// the truth's hours. Returns the differences (empty when equal).
    pub async fn compare(&self, store: &Store) -> Result<Vec<Difference>, sqlx::Error> {
        let mut diffs = Vec::new();
        if self.overflowed {
            diffs.push(Difference::Inexact);
        }
        for kind in ["http", "webrtc"] {
            let Some((dims, measures, _)) = layout(kind) else {
                continue;
            };
            let mine: BTreeMap<(i64, Vec<String>), [u64; 3]> = self
                .rows
                .iter()
                .filter(|((k, _, _), _)| k == kind)
                .map(|((_, h, d), v)| ((*h, d.clone()), *v))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let (lo, hi) = (
                mine.keys().map(|k| k.0).min().unwrap_or(0),
                mine.keys().map(|k| k.0).max().unwrap_or(0) + HOUR_MS,
            );
            // Times converted here, not by UNIX_TIMESTAMP()/FROM_UNIXTIME(),
            // which are NULL after 2038 on MariaDB.
            let sql = format!(
                "SELECT hour, {}, {} FROM {kind}_hourly WHERE hour >= ? AND hour < ?",
                dims.iter()
                    .map(|d| format!("CAST({d} AS CHAR)"))
                    .collect::<Vec<_>>()
                    .join(", "),
                measures
                    .iter()
                    .map(|m| format!("CAST({m} AS UNSIGNED)"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let rows = sqlx::query(&sql)
                .bind(ms_datetime(lo))
                .bind(ms_datetime(hi))
                .fetch_all(store.pool())
                .await?;
            let mut theirs: BTreeMap<(i64, Vec<String>), [u64; 3]> = BTreeMap::new();
            for r in rows {
                use sqlx::Row;
                let hour = datetime_ms(r.try_get(0)?);
                let mut d = Vec::new();
                for i in 0..dims.len() {
                    d.push(r.try_get::<String, _>(1 + i)?);
                }
                let mut v = [0u64; 3];
                for (i, x) in v.iter_mut().enumerate() {
                    *x = r.try_get::<u64, _>(1 + dims.len() + i)?;
                }
                theirs.insert((hour, d), v);
            }
            let row = |k: &(i64, Vec<String>), table: Option<[u64; 3]>, sent: Option<[u64; 3]>| {
                Difference::Row {
                    kind: kind.to_string(),
                    hour_ms: k.0,
                    dims: dims.iter().copied().zip(k.1.iter().cloned()).collect(),
                    measures,
                    table,
                    sent,
                }
            };
            for (k, v) in &mine {
                match theirs.get(k) {
                    Some(t) if t == v => {}
                    t => diffs.push(row(k, t.copied(), Some(*v))),
                }
            }
            for (k, t) in theirs.iter().filter(|(k, _)| !mine.contains_key(*k)) {
                diffs.push(row(k, Some(*t), None));
            }
        }
        Ok(diffs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_never_wrap() {
        let mut t = TruthTable::default();
        let ev = json!({"kind": "http", "ts": 0, "service": "s", "endpoint": "/", "method": "GET",
                        "req_bytes": u64::MAX - 1, "resp_bytes": 0});
        t.add(&ev);
        assert!(t.is_exact());
        let mut u = t.clone();
        u.merge(&t);
        assert!(!u.is_exact(), "2 × (u64::MAX − 1) is not a u64");
        t.add(
            &json!({"kind": "http", "ts": 0, "service": "s", "endpoint": "/", "method": "GET",
                      "req_bytes": 1, "resp_bytes": 0}),
        );
        assert!(t.is_exact(), "u64::MAX itself fits");
    }

    #[test]
    fn sums_per_hour_and_dimension() {
        let mut t = TruthTable::default();
        let ev = |ts: i64, ep: &str, b: u64| {
            json!({"kind": "http", "ts": ts, "service": "s", "endpoint": ep, "method": "GET",
                   "status": 200, "req_bytes": 1, "resp_bytes": b, "duration_ms": 1.0})
        };
        t.add(&ev(1_772_359_200_000, "/a", 10));
        t.add(&ev(1_772_359_200_000 + HOUR_MS - 1, "/a", 5));
        t.add(&ev(1_772_359_200_000 + HOUR_MS, "/a", 7));
        t.add(&ev(1_772_359_200_000, "/b", 1));
        t.add(&json!({"kind": "dns"}));
        assert_eq!(t.len(), 3);
        assert_eq!(t.events(), 4);
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("truth.ndjson");
        t.write(&p).expect("write");
        let text = std::fs::read_to_string(&p).expect("read");
        let first: Value = serde_json::from_str(text.lines().next().expect("line")).expect("json");
        assert_eq!(
            first,
            json!({"kind": "http", "hour": "2026-03-01T10:00:00Z", "service": "s", "endpoint": "/a",
                   "method": "GET", "requests": 2, "bytes_in": 2, "bytes_out": 15})
        );
        assert_eq!(TruthTable::read(&p).expect("read back"), t);
    }

    #[test]
    fn a_bad_truth_file_names_its_line() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("truth.ndjson");
        let good = r#"{"kind":"webrtc","hour":"2026-03-01T10:00:00Z","meeting_id":"m","samples":1,"bytes_sent":2,"bytes_received":3}"#;
        for (bad, says) in [
            ("{", "not JSON"),
            (
                r#"{"kind":"dns","hour":"2026-03-01T10:00:00Z"}"#,
                "unknown kind",
            ),
            (
                r#"{"kind":"webrtc","hour":"noon","meeting_id":"m"}"#,
                "hour",
            ),
            (
                r#"{"kind":"webrtc","hour":0,"meeting_id":"m","samples":-1}"#,
                "samples",
            ),
            (r#"{"kind":"http","hour":0,"service":"s"}"#, "endpoint"),
        ] {
            std::fs::write(&p, format!("{good}\n\n{bad}\n")).expect("write");
            let e = TruthTable::read(&p).expect_err(bad).to_string();
            assert!(e.contains("line 3") && e.contains(says), "{bad}: {e}");
        }
        let missing = TruthTable::read(&dir.path().join("none")).expect_err("missing");
        assert!(matches!(missing, TruthFileError::Io { .. }));
    }
}
