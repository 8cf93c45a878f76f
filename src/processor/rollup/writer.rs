//! Writes one table's touched rows inside the flush transaction.
//!
//! For the rows of a flush, sorted by key (so concurrent flushes lock in the
//! same order and cannot deadlock each other):
//! 1. `INSERT IGNORE` the keys, so every row exists and is locked by us;
//! 2. `SELECT … FOR UPDATE` their state columns (latest committed values);
//! 3. merge that state into the in-memory aggregates and write every column
//!    back with one multi-row `INSERT … ON DUPLICATE KEY UPDATE`.

use std::collections::HashMap;

use sqlx::mysql::MySqlRow;
use sqlx::query_builder::Separated;
use sqlx::{MySql, QueryBuilder, Row as _, Transaction};

use super::agg::{CompiledTable, DbRow, Row, RowKey, SqlVal};
use crate::store::{date_ms, datetime_ms, ColumnKind, StoreError};

/// Bind parameters per statement stay below MySQL's 65,535 limit.
const MAX_BINDS_PER_STATEMENT: usize = 30_000;
/// Rows per locking SELECT.
const SELECT_CHUNK_ROWS: usize = 500;

fn bind<'a>(sep: &mut Separated<'_, 'a, MySql, &'static str>, v: SqlVal) {
    match v {
        SqlVal::Null => sep.push_bind(None::<i64>),
        SqlVal::Int(i) => sep.push_bind(i),
        SqlVal::UInt(u) => sep.push_bind(u),
        SqlVal::Float(f) => sep.push_bind(f),
        SqlVal::Text(s) => sep.push_bind(s),
        SqlVal::Bytes(b) => sep.push_bind(b),
        SqlVal::DateTime(d) => sep.push_bind(d),
        SqlVal::Date(d) => sep.push_bind(d),
    };
}

pub(super) fn q(ident: &str) -> String {
    format!("`{}`", ident.replace('`', "``"))
}

/// Merges and writes `rows` (sorted by key) into `table`. The in-memory
/// state is only read: each row is merged with its committed state in a copy
/// that lives until its output values are built, so a failed transaction
/// leaves the flush's state intact for the retry, without cloning it whole.
pub async fn write_table(
    tx: &mut Transaction<'_, MySql>,
    table: &CompiledTable,
    rows: &[(&RowKey, &Row)],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let name = q(&table.def.name);
    let key_cols: Vec<String> = table
        .dims
        .iter()
        .map(|d| q(&d.column))
        .chain(std::iter::once(q(&table.def.time_column)))
        .collect();
    let key_list = key_cols.join(", ");
    let per_row = key_cols.len().max(1);

    // 1. make sure every row exists (and lock it)
    for chunk in rows.chunks(MAX_BINDS_PER_STATEMENT / per_row) {
        let mut qb: QueryBuilder<MySql> =
            QueryBuilder::new(format!("INSERT IGNORE INTO {name} ({key_list}) "));
        qb.push_values(chunk, |mut b, (key, _)| {
            for d in key.dims.iter() {
                b.push_bind(d.to_string());
            }
            bind(&mut b, table.time_value(key.start_ms));
        });
        qb.build().execute(&mut **tx).await?;
    }

    // 2. read the committed state under lock
    let state_cols = table.state_columns();
    // CAST: binary-collated VARCHARs would otherwise decode as VARBINARY;
    // integers come as text so every BIGINT UNSIGNED reads back exactly. The
    // time column is read as it is and converted here (UNIX_TIMESTAMP() is
    // NULL after 2038 on MariaDB).
    let select_list: Vec<String> = table
        .dims
        .iter()
        .map(|d| format!("CAST({} AS CHAR)", q(&d.column)))
        .chain(std::iter::once(q(&table.def.time_column)))
        .chain(state_cols.iter().map(|c| match table.kind_of(c) {
            ColumnKind::Blob => q(c),
            ColumnKind::Int => format!("CAST({} AS CHAR)", q(c)),
            _ => format!("({} + 0E0)", q(c)),
        }))
        .collect();
    let mut existing: HashMap<RowKey, DbRow> = HashMap::with_capacity(rows.len());
    for chunk in rows.chunks(SELECT_CHUNK_ROWS) {
        let mut qb: QueryBuilder<MySql> = QueryBuilder::new(format!(
            "SELECT {} FROM {name} WHERE ({key_list}) IN (",
            select_list.join(", ")
        ));
        for (i, (key, _)) in chunk.iter().enumerate() {
            qb.push(if i == 0 { "(" } else { ", (" });
            for d in key.dims.iter() {
                qb.push_bind(d.to_string());
                qb.push(", ");
            }
            match table.time_value(key.start_ms) {
                SqlVal::DateTime(d) => qb.push_bind(d),
                SqlVal::Date(d) => qb.push_bind(d),
                _ => qb.push_bind(None::<i64>),
            };
            qb.push(")");
        }
        qb.push(") FOR UPDATE");
        let found: Vec<MySqlRow> = qb.build().fetch_all(&mut **tx).await?;
        for r in found {
            let (key, db) = decode_row(table, &state_cols, &r)?;
            existing.insert(key, db);
        }
    }

    // 3. merge and write back
    let cols = table.write_columns();
    let col_list = cols.iter().map(|c| q(c)).collect::<Vec<_>>().join(", ");
    let updates = cols[key_cols.len()..]
        .iter()
        .map(|c| format!("{0} = VALUES({0})", q(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let mut out_rows = Vec::with_capacity(rows.len());
    let rejected = |reason: String| StoreError::Value {
        table: table.def.name.clone(),
        reason,
    };
    for (key, row) in rows {
        let out = match existing.remove(*key) {
            Some(db) => {
                let mut merged = (*row).clone();
                table.merge_db(&mut merged, &db).map_err(rejected)?;
                table.output(key, &merged)
            }
            None => table.output(key, row),
        };
        out_rows.push(out.map_err(rejected)?);
    }
    drop(existing);
    let per_statement = (MAX_BINDS_PER_STATEMENT / cols.len().max(1)).max(1);
    let mut out_rows = out_rows.into_iter().peekable();
    while out_rows.peek().is_some() {
        let chunk: Vec<Vec<SqlVal>> = out_rows.by_ref().take(per_statement).collect();
        let mut qb: QueryBuilder<MySql> =
            QueryBuilder::new(format!("INSERT INTO {name} ({col_list}) "));
        qb.push_values(chunk, |mut b, row| {
            for v in row {
                bind(&mut b, v);
            }
        });
        qb.push(format!(" ON DUPLICATE KEY UPDATE {updates}"));
        qb.build().execute(&mut **tx).await?;
    }
    Ok(())
}

fn decode_row(
    table: &CompiledTable,
    state_cols: &[String],
    r: &MySqlRow,
) -> Result<(RowKey, DbRow), StoreError> {
    let n = table.dims.len();
    let mut dims = Vec::with_capacity(n);
    for i in 0..n {
        let s: String = r.try_get(i)?;
        dims.push(s.into_boxed_str());
    }
    let start_ms = match table.time_kind {
        ColumnKind::Date => date_ms(r.try_get(n)?),
        _ => datetime_ms(r.try_get(n)?),
    };
    let mut db = DbRow::with_capacity(state_cols.len());
    for (i, c) in state_cols.iter().enumerate() {
        let idx = n + 1 + i;
        let v = match table.kind_of(c) {
            ColumnKind::Blob => r
                .try_get::<Option<Vec<u8>>, _>(idx)?
                .map_or(SqlVal::Null, SqlVal::Bytes),
            ColumnKind::Int => match r.try_get::<Option<String>, _>(idx)? {
                None => SqlVal::Null,
                Some(t) => parse_int(&t).ok_or_else(|| StoreError::Value {
                    table: table.def.name.clone(),
                    reason: format!("column {c} holds {t:?}, not an integer"),
                })?,
            },
            _ => r
                .try_get::<Option<f64>, _>(idx)?
                .map_or(SqlVal::Null, SqlVal::Float),
        };
        db.insert(c.clone(), v);
    }
    Ok((
        RowKey {
            dims: dims.into_boxed_slice(),
            start_ms,
        },
        db,
    ))
}

/// An integer column's text, exactly.
fn parse_int(t: &str) -> Option<SqlVal> {
    t.parse::<i64>()
        .map(SqlVal::Int)
        .or_else(|_| t.parse::<u64>().map(SqlVal::UInt))
        .ok()
}
