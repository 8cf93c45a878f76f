//! `GET /v1/rollups/hourly` and `/v1/rollups/daily`.
//!
//! Parameters: `kind` (required), `from`, `to` (RFC 3339 or `YYYY-MM-DD`,
//! midnight UTC; default: the last
//! 24 hours for hourly, the last 30 days for daily; `from` inclusive, `to`
//! exclusive), any dimension column of the table as an exact-match filter
//! (`service`, `endpoint`, `method`, `meeting_id`, …), `table` (when several
//! processors fill tables for one kind), `limit` (default 10,000, at most
//! 100,000), `format=json|csv`, `cursor` (from a truncated answer). Rows
//! carry every column but sketch state, in key order (time, dimensions).
//! Every bad parameter is named in one 400 ([`ParamErrors`]).
//!
//! Bounded (`[query]`): `from`..`to` at most `max_hourly_range_days` /
//! `max_daily_range_days`; one query slot of `max_concurrent_queries`; rows
//! are written into the body as the database cursor yields them, and the
//! body stops at a row boundary past `max_response_bytes` (or `limit` rows)
//! with `truncated: true` and a `cursor`: the key of the last row, from
//! which the same request continues (keyset pagination, every row once).

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use futures::TryStreamExt;
use serde_json::{json, Value};
use sqlx::{MySql, QueryBuilder, Row};

use super::error::{bad_param, ParamErrors};
use super::limits::{decode_cursor, encode_cursor, json_page, page_headers, CappedBody};
use super::params::{echo_time, now_secs, Format, Limit, Param, Params, Rest, Time};
use super::{ApiError, AppState};
use crate::processor::rollup::Window;
use crate::processor::ProcessorRegistry;
use crate::store::{ColumnInfo, ColumnKind, Store, StoreError};
use serde::Deserialize;

const DEFAULT_LIMIT: u64 = 10_000;
const MAX_LIMIT: u64 = 100_000;

/// One queryable table.
#[derive(Debug, Clone)]
pub struct RollupTable {
    pub processor: String,
    pub kinds: Vec<String>,
    pub window: Window,
    pub table: String,
    pub time_column: String,
    pub dims: Vec<String>,
    /// Columns returned (all but blobs), in table order.
    pub columns: Vec<ColumnInfo>,
}

/// Every rollup table, read once at start.
#[derive(Debug, Clone, Default)]
pub struct QueryCatalog {
    pub tables: Vec<RollupTable>,
}

impl QueryCatalog {
    pub async fn build(processors: &ProcessorRegistry, store: &Store) -> Result<Self, StoreError> {
        // GET /v1/alerts reads the outbox too: an unmigrated database stops
        // the start here, like a missing rollup table below
        store.require_alert_outbox().await?;
        let mut tables = Vec::new();
        for p in processors.enabled() {
            let Some(def) = p.get::<crate::processor::rollup::RollupDef>() else {
                continue;
            };
            for t in &def.tables {
                let columns = store
                    .columns(&t.name)
                    .await?
                    .into_iter()
                    .filter(|c| c.kind != ColumnKind::Blob)
                    .collect();
                tables.push(RollupTable {
                    processor: def.name.clone(),
                    kinds: def.kinds.clone(),
                    window: t.window,
                    table: t.name.clone(),
                    time_column: t.time_column.clone(),
                    dims: t
                        .dimensions
                        .iter()
                        .map(|d| d.column().to_string())
                        .collect(),
                    columns,
                });
            }
        }
        Ok(Self { tables })
    }

    fn find(&self, kind: &str, window: Window, table: Option<&str>) -> Option<&RollupTable> {
        self.tables.iter().find(|t| {
            t.window == window
                && t.kinds.iter().any(|k| k == kind)
                && table.is_none_or(|n| n == t.table)
        })
    }
}

/// The parameters of `GET /v1/rollups/{hourly,daily}`; the rest are the
/// table's dimension filters.
#[derive(Debug, Deserialize)]
pub struct RollupParams {
    kind: Option<String>,
    table: Option<String>,
    from: Option<Param<Time>>,
    to: Option<Param<Time>>,
    limit: Option<Param<Limit<DEFAULT_LIMIT, MAX_LIMIT>>>,
    format: Option<Param<Format>>,
    cursor: Option<String>,
    #[serde(flatten)]
    filters: Rest,
}

pub async fn hourly(st: State<AppState>, q: Params<RollupParams>) -> Result<Response, ApiError> {
    query(st, q, Window::Hour).await
}

pub async fn daily(st: State<AppState>, q: Params<RollupParams>) -> Result<Response, ApiError> {
    query(st, q, Window::Day).await
}

async fn query(
    State(st): State<AppState>,
    Params(p): Params<RollupParams>,
    window: Window,
) -> Result<Response, ApiError> {
    let Some(store) = &st.store else {
        return Err(ApiError::NotFound("api role is not running".into()));
    };
    // every bad parameter is noted, and answered together below
    let mut errs = ParamErrors::default();
    let table = match &p.kind {
        None => {
            errs.add("kind", "is required (e.g. kind=http)");
            None
        }
        Some(kind) => {
            let t = st.catalog.find(kind, window, p.table.as_deref());
            if t.is_none() {
                errs.add(
                    "kind",
                    format!(
                        "no rollup table for kind {:?} at this window",
                        super::error::capped(kind, super::error::MAX_ECHOED_CHARS)
                    ),
                );
            }
            t
        }
    };
    let to = errs.param("to", p.to);
    let from = errs.param("from", p.from);
    let (span, max_days, setting) = match window {
        Window::Hour => (
            chrono::Duration::hours(24),
            st.queries.cfg.max_hourly_range_days,
            "max_hourly_range_days",
        ),
        Window::Day => (
            chrono::Duration::days(30),
            st.queries.cfg.max_daily_range_days,
            "max_daily_range_days",
        ),
    };
    // only a range whose ends both parse can be checked
    let (from, to) = match (from, to) {
        (Some(from), Some(to)) => {
            let to = to.map_or_else(|| now_secs() + chrono::Duration::hours(1), |t| t.0);
            let from = from.map_or(to - span, |t| t.0);
            if from > to {
                errs.add("from", "must not be after `to`");
            } else {
                errs.take(st.queries.check_range(from, to, max_days, setting));
            }
            (from, to)
        }
        _ => (Utc::now(), Utc::now()),
    };
    let limit = Limit::or_default(errs.param("limit", p.limit));
    let csv = errs.param("format", p.format).flatten() == Some(Format::Csv);
    // the rest are filters on the table's dimensions; a map in name order,
    // so the answer lists unknown parameters in a stable order
    let mut filters = Vec::new();
    let given = errs.rest(p.filters);
    if let Some(t) = table {
        let dims: Vec<&str> = t.dims.iter().map(String::as_str).collect();
        errs.unknown(
            &given,
            &dims,
            &format!("filters for this table: {}", t.dims.join(", ")),
        );
        filters.extend(
            given
                .into_iter()
                .filter(|(k, _)| dims.contains(&k.as_str())),
        );
    }
    // without a table its filters are unknown: `kind` is named
    let (Some(table), true) = (table, errs.is_empty()) else {
        errs.finish()?;
        return Err(ApiError::Internal("a parameter error went unnamed".into()));
    };
    let key = KeyColumns::of(table)?;
    let after = p.cursor.map(|c| key.decode(&c, table)).transpose()?;
    let slot = st.queries.admit()?;

    let mut qb = select(table, from, to, &filters);
    if let Some(after) = &after {
        key.push_after(&mut qb, table, after);
    }
    let order: Vec<String> = std::iter::once(quote(&table.time_column))
        .chain(table.dims.iter().map(|d| quote(d)))
        .collect();
    // one row past the limit tells whether there is more
    qb.push(format!(
        " ORDER BY {} LIMIT {}",
        order.join(", "),
        limit + 1
    ));
    let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
    let mut body = if csv {
        let mut head = csv_line(names.iter().map(|n| Value::from(*n)));
        head.push_str(CSV_EOL);
        CappedBody::new(st.queries.cfg.max_response_bytes, head.as_bytes())
    } else {
        let head = json!({"table": table.table, "from": echo_time(from), "to": echo_time(to),
                          "time_column": table.time_column, "dimensions": table.dims,
                          "columns": names})
        .to_string();
        // the object without its closing brace, then the rows
        let head = format!("{},\"rows\":[", head.trim_end_matches('}'));
        CappedBody::new(st.queries.cfg.max_response_bytes, head.as_bytes())
    };
    // Rows go from the database cursor straight into the body: no list of
    // rows, no JSON tree, one copy of the answer.
    let mut rows = qb.build().fetch(store.pool());
    let mut last: Option<Vec<Value>> = None;
    let mut truncated = false;
    let mut piece = Vec::new();
    while let Some(r) = rows
        .try_next()
        .await
        .map_err(|e| query_failed(&table.table, e, st.queries.cfg.retry_after_secs))?
    {
        if body.rows() as u64 == limit {
            truncated = true;
            break;
        }
        let values = decode_row(table, &r)?;
        piece.clear();
        if csv {
            piece.extend_from_slice(csv_line(values.iter().cloned()).as_bytes());
        } else {
            json_object(&mut piece, &names, &values);
        }
        if !body.push_row(if csv { CSV_EOL.as_bytes() } else { b"," }, &piece) {
            truncated = true;
            break;
        }
        last = Some(key.of_row(&values));
    }
    drop(rows);
    let cursor = match (truncated, last) {
        (true, Some(k)) => Some(encode_cursor(&table.table, k)),
        _ => None,
    };
    if !csv {
        return Ok(json_page(body, truncated, cursor, slot));
    }
    let tail: &[u8] = if body.rows() > 0 {
        CSV_EOL.as_bytes()
    } else {
        b""
    };
    let mut resp = (
        [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
        slot.body(body.finish(tail)),
    )
        .into_response();
    page_headers(&mut resp, truncated, cursor.as_deref());
    Ok(resp)
}

/// A failed rollup query: a busy pool is worth retrying (after
/// `retry_after` seconds), the rest is logged.
fn query_failed(table: &str, e: sqlx::Error, retry_after: u64) -> ApiError {
    match e {
        sqlx::Error::PoolTimedOut => ApiError::Unavailable {
            reason: "every MySQL connection of the query API is busy (query.max_connections); retry shortly".into(),
            retry_after,
        },
        e => ApiError::Internal(format!("rollup query on {table}: {e}")),
    }
}

fn quote(c: &str) -> String {
    format!("`{}`", c.replace('`', "``"))
}

/// `SELECT <every column but blobs> FROM table WHERE time in [from, to) AND filters`.
fn select(
    table: &RollupTable,
    from: chrono::DateTime<Utc>,
    to: chrono::DateTime<Utc>,
    filters: &[(String, String)],
) -> QueryBuilder<'static, MySql> {
    let select: Vec<String> = table
        .columns
        .iter()
        .map(|c| match c.kind {
            ColumnKind::Int => format!("CAST({} AS SIGNED)", quote(&c.name)),
            ColumnKind::Float => format!("({} + 0E0)", quote(&c.name)),
            ColumnKind::DateTime => {
                format!("DATE_FORMAT({}, '%Y-%m-%dT%H:%i:%sZ')", quote(&c.name))
            }
            ColumnKind::Date => format!("DATE_FORMAT({}, '%Y-%m-%d')", quote(&c.name)),
            // CAST: binary-collated VARCHARs would otherwise decode as VARBINARY.
            _ => format!("CAST({} AS CHAR)", quote(&c.name)),
        })
        .collect();
    let tc = quote(&table.time_column);
    let mut qb: QueryBuilder<MySql> = QueryBuilder::new(format!(
        "SELECT {} FROM {} WHERE {tc} >= ",
        select.join(", "),
        quote(&table.table),
    ));
    qb.push_bind(from.naive_utc());
    qb.push(format!(" AND {tc} < "));
    qb.push_bind(to.naive_utc());
    for (col, val) in filters {
        qb.push(format!(" AND {} = ", quote(col)));
        qb.push_bind(val.clone());
    }
    qb
}

/// One row's values, in column order.
fn decode_row(table: &RollupTable, r: &sqlx::mysql::MySqlRow) -> Result<Vec<Value>, ApiError> {
    table
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            match c.kind {
                ColumnKind::Int => r
                    .try_get::<Option<i64>, _>(i)
                    .map(|v| v.map_or(Value::Null, Value::from)),
                ColumnKind::Float => r
                    .try_get::<Option<f64>, _>(i)
                    .map(|v| v.map_or(Value::Null, |x| Value::from(tidy(x)))),
                _ => r
                    .try_get::<Option<String>, _>(i)
                    .map(|v| v.map_or(Value::Null, Value::from)),
            }
            .map_err(|e| ApiError::Internal(format!("decoding {}.{}: {e}", table.table, c.name)))
        })
        .collect()
}

/// `{"name": value, …}` in column order, appended to `out`.
fn json_object(out: &mut Vec<u8>, names: &[&str], values: &[Value]) {
    out.push(b'{');
    for (i, (n, v)) in names.iter().zip(values).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // serializing a str or a Value into a Vec cannot fail
        let _ = serde_json::to_writer(&mut *out, n);
        out.push(b':');
        let _ = serde_json::to_writer(&mut *out, v);
    }
    out.push(b'}');
}

/// The key of a rollup row (time column, then dimensions): unique per row,
/// the answer's order, and what a cursor holds.
struct KeyColumns {
    /// Positions in `RollupTable::columns`.
    idx: Vec<usize>,
}

/// A key part as bound in SQL.
enum KeyPart {
    Time(chrono::NaiveDateTime),
    Date(chrono::NaiveDate),
    Int(i64),
    Float(f64),
    Text(String),
}

impl KeyColumns {
    fn of(table: &RollupTable) -> Result<Self, ApiError> {
        std::iter::once(&table.time_column)
            .chain(&table.dims)
            .map(|k| {
                table
                    .columns
                    .iter()
                    .position(|c| &c.name == k)
                    .ok_or_else(|| {
                        ApiError::Internal(format!(
                            "{}: key column {k} is not readable",
                            table.table
                        ))
                    })
            })
            .collect::<Result<_, _>>()
            .map(|idx| Self { idx })
    }

    fn of_row(&self, values: &[Value]) -> Vec<Value> {
        self.idx
            .iter()
            .map(|i| values.get(*i).cloned().unwrap_or(Value::Null))
            .collect()
    }

    /// The key parts of cursor `c`, typed by column.
    fn decode(&self, c: &str, table: &RollupTable) -> Result<Vec<KeyPart>, ApiError> {
        let raw = decode_cursor(c, &table.table, self.idx.len())?;
        let bad = || {
            bad_param(
                "cursor",
                "is damaged: pass the `cursor` of the previous answer unchanged",
            )
        };
        self.idx
            .iter()
            .zip(raw)
            .map(|(i, v)| {
                let kind = table.columns.get(*i).map(|c| c.kind).ok_or_else(bad)?;
                Ok(match (kind, v) {
                    (ColumnKind::DateTime, Value::String(s)) => KeyPart::Time(
                        chrono::NaiveDateTime::parse_from_str(&s, "%Y-%m-%dT%H:%M:%SZ")
                            .map_err(|_| bad())?,
                    ),
                    (ColumnKind::Date, Value::String(s)) => KeyPart::Date(
                        chrono::NaiveDate::parse_from_str(&s, "%Y-%m-%d").map_err(|_| bad())?,
                    ),
                    (ColumnKind::Int, Value::Number(n)) => {
                        KeyPart::Int(n.as_i64().ok_or_else(bad)?)
                    }
                    (ColumnKind::Float, Value::Number(n)) => {
                        KeyPart::Float(n.as_f64().ok_or_else(bad)?)
                    }
                    (ColumnKind::Text, Value::String(s)) => KeyPart::Text(s),
                    _ => return Err(bad()),
                })
            })
            .collect()
    }

    /// `AND key > after` in the answer's order: `t > a OR (t = a AND (d1 > b OR …))`,
    /// plus `t >= a` so the time index bounds the scan.
    fn push_after(
        &self,
        qb: &mut QueryBuilder<'static, MySql>,
        table: &RollupTable,
        after: &[KeyPart],
    ) {
        let cols: Vec<String> = self
            .idx
            .iter()
            .filter_map(|i| table.columns.get(*i).map(|c| quote(&c.name)))
            .collect();
        let bind = |qb: &mut QueryBuilder<'static, MySql>, p: &KeyPart| match p {
            KeyPart::Time(t) => {
                qb.push_bind(*t);
            }
            KeyPart::Date(d) => {
                qb.push_bind(*d);
            }
            KeyPart::Int(n) => {
                qb.push_bind(*n);
            }
            KeyPart::Float(x) => {
                qb.push_bind(*x);
            }
            KeyPart::Text(s) => {
                qb.push_bind(s.clone());
            }
        };
        let (Some(first_col), Some(first)) = (cols.first(), after.first()) else {
            return;
        };
        qb.push(format!(" AND {first_col} >= "));
        bind(qb, first);
        qb.push(" AND (");
        let n = cols.len().min(after.len());
        for (i, (c, p)) in cols.iter().zip(after).enumerate() {
            qb.push(format!("{c} > "));
            bind(qb, p);
            if i + 1 < n {
                qb.push(format!(" OR ({c} = "));
                bind(qb, p);
                qb.push(" AND (");
            }
        }
        for _ in 1..n {
            qb.push("))");
        }
        qb.push(")");
    }
}

/// The end of a CSV line: CRLF, as RFC 4180 has it (spreadsheets and
/// strict parsers expect it; line-based tools take it too).
const CSV_EOL: &str = "\r\n";

/// One RFC 4180 CSV line (no line end).
fn csv_line(values: impl Iterator<Item = Value>) -> String {
    let field = |v: Value| -> String {
        let raw = match v {
            Value::Null => String::new(),
            Value::String(s) => s,
            other => other.to_string(),
        };
        if raw.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", raw.replace('"', "\"\""))
        } else {
            raw
        }
    };
    values.map(field).collect::<Vec<_>>().join(",")
}

/// Drops binary floating-point noise from sums (36.653999999999996 → 36.654):
/// nine decimals, far below any measure's resolution.
fn tidy(x: f64) -> f64 {
    if x.is_finite() && x.abs() < 1e9 {
        (x * 1e9).round() / 1e9
    } else {
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_it() {
        let line = csv_line([json!("x,\"y\""), json!(1.5), Value::Null, json!("a\nb")].into_iter());
        assert_eq!(line, "\"x,\"\"y\"\"\",1.5,,\"a\nb\"");
    }

    fn table() -> RollupTable {
        let col = |name: &str, kind| ColumnInfo {
            name: name.into(),
            kind,
            max_chars: None,
            nullable: false,
            data_type: String::new(),
            unsigned: false,
            max_bytes: None,
            charset: None,
            precision: None,
            scale: None,
        };
        RollupTable {
            processor: "p".into(),
            kinds: vec!["http".into()],
            window: Window::Hour,
            table: "t".into(),
            time_column: "hour".into(),
            dims: vec!["service".into(), "method".into()],
            columns: vec![
                col("service", ColumnKind::Text),
                col("method", ColumnKind::Text),
                col("hour", ColumnKind::DateTime),
                col("requests", ColumnKind::Int),
            ],
        }
    }

    #[test]
    fn the_keyset_condition_follows_the_key_order() {
        let t = table();
        let key = KeyColumns::of(&t).expect("key columns");
        let row = vec![
            json!("svc"),
            json!("GET"),
            json!("2026-03-01T10:00:00Z"),
            json!(7),
        ];
        let cursor = encode_cursor("t", key.of_row(&row));
        let after = key.decode(&cursor, &t).expect("decodes");
        assert!(matches!(after.first(), Some(KeyPart::Time(_))));
        let mut qb: QueryBuilder<MySql> = QueryBuilder::new("");
        key.push_after(&mut qb, &t, &after);
        assert_eq!(
            qb.sql(),
            " AND `hour` >= ? AND (`hour` > ? OR (`hour` = ? AND (`service` > ? OR (`service` = ? AND (`method` > ?)))))"
        );
        // a cursor whose parts do not fit the columns' types is refused
        let wrong = encode_cursor("t", vec![json!(1), json!("svc"), json!("GET")]);
        assert!(
            matches!(key.decode(&wrong, &t), Err(ApiError::BadParam { ref param, .. }) if param == "cursor")
        );
    }

    #[test]
    fn json_rows_keep_column_order() {
        let mut out = Vec::new();
        json_object(&mut out, &["z", "a"], &[json!(1), json!("é\"")]);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            r#"{"z":1,"a":"é\""}"#
        );
    }

    #[test]
    fn tidy_drops_float_noise_only() {
        assert_eq!(tidy(36.653999999999996), 36.654);
        assert_eq!(tidy(0.000_123_456_789), 0.000_123_457);
        assert_eq!(tidy(2e12 + 0.1), 2e12 + 0.1);
        assert!(tidy(f64::NAN).is_nan());
    }
}
