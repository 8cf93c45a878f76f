//! `GET /v1/rollups/hourly` and `/v1/rollups/daily`.
//!
//! Parameters: `kind` (required), `from`, `to` (RFC 3339; default: the last
//! 24 hours for hourly, the last 30 days for daily; `from` inclusive, `to`
//! exclusive), any dimension column of the table as an exact-match filter
//! (`service`, `endpoint`, `method`, `meeting_id`, …), `table` (when several
//! processors fill tables for one kind), `limit` (default 10,000, at most
//! 100,000), `format=json|csv`. Rows carry every column but sketch state.

use std::collections::HashMap;
use std::fmt::Write as _;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde_json::{json, Map, Value};
use sqlx::{MySql, QueryBuilder, Row};

use super::{ApiError, AppState};
use crate::processor::rollup::Window;
use crate::processor::{ProcessorConfig, ProcessorRegistry};
use crate::store::{ColumnInfo, ColumnKind, Store, StoreError};

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
        let mut tables = Vec::new();
        for p in processors.enabled() {
            let ProcessorConfig::Rollup(def) = p else {
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

pub async fn hourly(
    st: State<AppState>,
    q: Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    query(st, q, Window::Hour).await
}

pub async fn daily(
    st: State<AppState>,
    q: Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    query(st, q, Window::Day).await
}

use super::error::bad_param as bad;

async fn query(
    State(st): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
    window: Window,
) -> Result<Response, ApiError> {
    let Some(store) = &st.store else {
        return Err(ApiError::NotFound("api role is not running".into()));
    };
    let kind = params
        .get("kind")
        .ok_or_else(|| bad("kind", "is required (e.g. kind=http)"))?;
    let table = st
        .catalog
        .find(kind, window, params.get("table").map(String::as_str))
        .ok_or_else(|| {
            bad(
                "kind",
                format!("no rollup table for kind {kind:?} at this window"),
            )
        })?;
    let time = |name: &str| super::error::time_param(&params, name);
    let to = time("to")?.unwrap_or_else(|| Utc::now() + chrono::Duration::hours(1));
    let span = match window {
        Window::Hour => chrono::Duration::hours(24),
        Window::Day => chrono::Duration::days(30),
    };
    let from = time("from")?.unwrap_or(to - span);
    if from > to {
        return Err(bad("from", "must not be after `to`"));
    }
    let limit = super::error::limit_param(&params, DEFAULT_LIMIT, MAX_LIMIT)?;
    let csv = match params.get("format").map(String::as_str) {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(bad("format", "must be json or csv")),
    };
    let mut filters = Vec::new();
    for (k, v) in &params {
        match k.as_str() {
            "kind" | "from" | "to" | "limit" | "format" | "table" => {}
            other if table.dims.iter().any(|d| d == other) => {
                filters.push((other.to_string(), v.clone()))
            }
            other => {
                return Err(bad(
                    other,
                    format!(
                        "unknown parameter; filters for this table: {}",
                        table.dims.join(", ")
                    ),
                ))
            }
        }
    }
    filters.sort();

    let q = |c: &str| format!("`{}`", c.replace('`', "``"));
    let select: Vec<String> = table
        .columns
        .iter()
        .map(|c| match c.kind {
            ColumnKind::Int => format!("CAST({} AS SIGNED)", q(&c.name)),
            ColumnKind::Float => format!("({} + 0E0)", q(&c.name)),
            ColumnKind::DateTime => format!("DATE_FORMAT({}, '%Y-%m-%dT%H:%i:%sZ')", q(&c.name)),
            ColumnKind::Date => format!("DATE_FORMAT({}, '%Y-%m-%d')", q(&c.name)),
            // CAST: binary-collated VARCHARs would otherwise decode as VARBINARY.
            _ => format!("CAST({} AS CHAR)", q(&c.name)),
        })
        .collect();
    let mut qb: QueryBuilder<MySql> = QueryBuilder::new(format!(
        "SELECT {} FROM {} WHERE {tc} >= ",
        select.join(", "),
        q(&table.table),
        tc = q(&table.time_column)
    ));
    qb.push_bind(from.naive_utc());
    qb.push(format!(" AND {} < ", q(&table.time_column)));
    qb.push_bind(to.naive_utc());
    for (col, val) in &filters {
        qb.push(format!(" AND {} = ", q(col)));
        qb.push_bind(val.clone());
    }
    let order: Vec<String> = std::iter::once(q(&table.time_column))
        .chain(table.dims.iter().map(|d| q(d)))
        .collect();
    qb.push(format!(" ORDER BY {} LIMIT {limit}", order.join(", ")));
    let rows = qb
        .build()
        .fetch_all(store.pool())
        .await
        .map_err(|e| ApiError::Internal(format!("rollup query on {}: {e}", table.table)))?;
    let mut out: Vec<Map<String, Value>> = Vec::with_capacity(rows.len());
    for r in &rows {
        let mut m = Map::new();
        for (i, c) in table.columns.iter().enumerate() {
            let v = match c.kind {
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
            .map_err(|e| ApiError::Internal(format!("decoding {}.{}: {e}", table.table, c.name)))?;
            m.insert(c.name.clone(), v);
        }
        out.push(m);
    }
    if csv {
        let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
        return Ok((
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            to_csv(&names, &out),
        )
            .into_response());
    }
    let columns: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
    Ok(Json(
        json!({"table": table.table, "from": from.to_rfc3339(), "to": to.to_rfc3339(),
                   "time_column": table.time_column, "dimensions": table.dims,
                   "columns": columns, "rows": out}),
    )
    .into_response())
}

/// RFC 4180 CSV with a header line.
pub fn to_csv(columns: &[&str], rows: &[Map<String, Value>]) -> String {
    let mut s = String::new();
    let field = |v: &Value| -> String {
        let raw = match v {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if raw.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", raw.replace('"', "\"\""))
        } else {
            raw
        }
    };
    let _ = writeln!(s, "{}", columns.join(","));
    for r in rows {
        let line: Vec<String> = columns
            .iter()
            .map(|c| field(r.get(*c).unwrap_or(&Value::Null)))
            .collect();
        let _ = writeln!(s, "{}", line.join(","));
    }
    s
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
        let mut m = Map::new();
        m.insert("a".into(), json!("x,\"y\""));
        m.insert("b".into(), json!(1.5));
        assert_eq!(
            to_csv(&["a", "b", "c"], &[m]),
            "a,b,c\n\"x,\"\"y\"\"\",1.5,\n"
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
