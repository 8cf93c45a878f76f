//! The ClickHouse side of the archive: the client built from `[clickhouse]`,
//! the migrations of `migrations/clickhouse/`, table columns and the search
//! behind `GET /v1/events/search`. Everything here works against
//! ClickHouse 18.16 (Debian's package) as well as current releases: plain
//! column types, client-side binds (`?`), JSONEachRow in and out.

use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::config::ClickhouseConfig;

/// Errors of the archive's ClickHouse calls.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The server is unreachable, slow or answered an error: retry later.
    #[error("ClickHouse at {url}: {reason} (is it running and [clickhouse] right? `scripts/services clickhouse` starts a local one)")]
    Server { url: String, reason: String },
    /// A migration file cannot be applied as it is: fix the file.
    #[error("ClickHouse migration {file}: {reason}")]
    Migration { file: String, reason: String },
    /// A search the archive cannot answer (bad column, bad value): fix
    /// parameter `param` of the request.
    #[error("{param}: {reason}")]
    BadSearch { param: String, reason: String },
    /// ClickHouse stopped the search at `clickhouse.search_max_execution_secs`:
    /// narrow it.
    #[error("the search ran longer than clickhouse.search_max_execution_secs ({limit_secs} s)")]
    TooSlow { limit_secs: u64 },
}

impl ArchiveError {
    pub fn retryable(&self) -> bool {
        matches!(self, ArchiveError::Server { .. })
    }

    fn bad(param: impl Into<String>, reason: impl Into<String>) -> Self {
        ArchiveError::BadSearch {
            param: param.into(),
            reason: reason.into(),
        }
    }
}

/// The archive's client: a connection pool to `cfg.url`, database `cfg.database`.
#[derive(Clone)]
pub struct Archive {
    pub client: clickhouse::Client,
    url: String,
    timeout: Duration,
    /// `max_execution_time` of searches (`clickhouse.search_max_execution_secs`).
    search_secs: u64,
}

impl Archive {
    pub fn new(cfg: &ClickhouseConfig) -> Self {
        Self {
            client: base(cfg).with_database(&cfg.database),
            url: cfg.url.clone(),
            timeout: Duration::from_millis(cfg.timeout_ms.max(1)),
            search_secs: cfg.search_max_execution_secs.max(1),
        }
    }

    pub(crate) fn server_error(&self, reason: impl std::fmt::Display) -> ArchiveError {
        ArchiveError::Server {
            url: self.url.clone(),
            reason: reason.to_string(),
        }
    }

    /// Runs `fut` within the configured timeout.
    pub(crate) async fn timed<T>(
        &self,
        fut: impl std::future::Future<Output = clickhouse::error::Result<T>>,
    ) -> Result<T, ArchiveError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.server_error(e)),
            Err(_) => Err(self.server_error(format!(
                "no answer within clickhouse.timeout_ms ({} ms)",
                self.timeout.as_millis()
            ))),
        }
    }

    /// Rows of `sql` (with its `?` binds applied) as JSON objects.
    pub async fn rows(
        &self,
        query: clickhouse::query::Query,
    ) -> Result<Vec<Map<String, Value>>, ArchiveError> {
        let bytes = self
            .timed(async move { query.fetch_bytes("JSONEachRow")?.collect().await })
            .await?;
        let mut out = Vec::new();
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let row: Map<String, Value> = serde_json::from_slice(line)
                .map_err(|e| self.server_error(format!("unreadable row in the answer: {e}")))?;
            out.push(row);
        }
        Ok(out)
    }

    /// The columns of `table` (name, type), in table order; empty when it does not exist.
    pub async fn columns(&self, table: &str) -> Result<Vec<(String, String)>, ArchiveError> {
        let q = self
            .client
            .query("SELECT name, type FROM system.columns WHERE database = currentDatabase() AND table = ?")
            .bind(table);
        Ok(self
            .rows(q)
            .await?
            .into_iter()
            .filter_map(|r| {
                Some((
                    r.get("name")?.as_str()?.to_string(),
                    r.get("type")?.as_str()?.to_string(),
                ))
            })
            .collect())
    }

    /// Inserts JSONEachRow `body` into `table` (columns not in the body take
    /// their defaults; fields that are not columns are skipped).
    pub async fn insert_json_rows(
        &self,
        table: &str,
        body: bytes::Bytes,
    ) -> Result<(), ArchiveError> {
        let sql = format!("INSERT INTO `{table}` FORMAT JSONEachRow");
        let client = self
            .client
            .clone()
            .with_setting("input_format_skip_unknown_fields", "1");
        self.timed(async move {
            let mut insert = client.insert_formatted_with(sql);
            insert.send(body).await?;
            insert.end().await
        })
        .await
    }
}

fn base(cfg: &ClickhouseConfig) -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(&cfg.url)
        .with_user(&cfg.user)
        .with_password(&cfg.password)
        .with_validation(cfg.validation)
}

/// Creates the database and applies the files of `dir` not applied yet
/// (recorded in `fm_migrations`), in name order; returns the names applied.
pub async fn migrate(cfg: &ClickhouseConfig, dir: &Path) -> Result<Vec<String>, ArchiveError> {
    let server = Archive {
        client: base(cfg),
        ..Archive::new(cfg)
    };
    let db = &cfg.database;
    if db.is_empty() || !db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(ArchiveError::Migration {
            file: "[clickhouse] database".into(),
            reason: format!("{db:?}: use letters, digits and _"),
        });
    }
    server
        .timed(
            server
                .client
                .query(&format!("CREATE DATABASE IF NOT EXISTS `{db}`"))
                .execute(),
        )
        .await?;
    let archive = Archive::new(cfg);
    archive
        .timed(
            archive
                .client
                .query("CREATE TABLE IF NOT EXISTS fm_migrations (name String, applied_at DateTime) ENGINE = TinyLog")
                .execute(),
        )
        .await?;
    let done: Vec<String> = archive
        .rows(archive.client.query("SELECT name FROM fm_migrations"))
        .await?
        .into_iter()
        .filter_map(|r| r.get("name").and_then(Value::as_str).map(String::from))
        .collect();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| ArchiveError::Migration {
            file: dir.display().to_string(),
            reason: e.to_string(),
        })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    let mut applied = Vec::new();
    for file in files {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if done.contains(&name) {
            continue;
        }
        let text = std::fs::read_to_string(&file).map_err(|e| ArchiveError::Migration {
            file: name.clone(),
            reason: e.to_string(),
        })?;
        for stmt in statements(&text) {
            archive
                .timed(archive.client.query(&stmt).execute())
                .await
                .map_err(|e| ArchiveError::Migration {
                    file: name.clone(),
                    reason: e.to_string(),
                })?;
        }
        archive
            .timed(
                archive
                    .client
                    .query("INSERT INTO fm_migrations (name, applied_at) VALUES (?, now())")
                    .bind(&name)
                    .execute(),
            )
            .await?;
        applied.push(name);
    }
    Ok(applied)
}

/// The statements of a migration file: `--` comments dropped, split at `;`
/// ending a line.
fn statements(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let line = match line.find("--") {
            Some(i) => &line[..i],
            None => line,
        };
        let t = line.trim_end();
        if let Some(stmt) = t.strip_suffix(';') {
            cur.push_str(stmt);
            if !cur.trim().is_empty() {
                out.push(cur.trim().to_string());
            }
            cur.clear();
        } else {
            cur.push_str(t);
            cur.push('\n');
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// An ad-hoc question to the archive (`GET /v1/events/search`).
#[derive(Debug, Clone, Default)]
pub struct Search {
    pub table: String,
    /// Event time range, ms (`from ≤ ts_ms < to`).
    pub from_ms: i64,
    pub to_ms: i64,
    /// Exact-match filters on columns, as given: each value is converted to
    /// its column's type (a number for numeric columns) before it is bound.
    pub filters: Vec<(String, String)>,
    /// Lower bounds on numeric columns (`min_duration_ms=500` → duration_ms ≥ 500).
    pub min: Vec<(String, f64)>,
    /// Sort column and direction (default: ts_ms descending).
    pub order_by: Option<String>,
    pub ascending: bool,
    pub limit: u64,
    /// Most bytes of rows read back; past it `Found::truncated` is set.
    /// 0: no cap.
    pub max_bytes: usize,
}

/// Rows and the number of matching events (duplicates from redelivery collapsed).
pub struct Found {
    /// The table's columns, in table order.
    pub columns: Vec<String>,
    /// One JSON object per row, as ClickHouse wrote it (JSONEachRow).
    pub rows: Vec<String>,
    pub total: u64,
    /// The rows stopped at `Search::max_bytes` before `limit`.
    pub truncated: bool,
}

impl Found {
    /// The rows as JSON objects (the command line's table).
    pub fn parsed_rows(&self) -> Vec<Map<String, Value>> {
        self.rows
            .iter()
            .filter_map(|r| serde_json::from_str(r).ok())
            .collect()
    }
}

/// A filter value in its column's type: bound as a number for numeric
/// columns, as a string for string columns (the client escapes it; no value
/// is ever spliced into SQL text).
#[derive(Debug, Clone, PartialEq)]
enum Typed {
    UInt(u64),
    Int(i64),
    Float(f64),
    Str(String),
}

impl Typed {
    /// `v` as a value of column `col` of ClickHouse type `ty`.
    fn parse(col: &str, ty: &str, v: &str) -> Result<Typed, ArchiveError> {
        let base = strip_wrappers(ty);
        let bad = |what: &str| {
            ArchiveError::bad(col, format!("{v:?} is not {what} (column {col} is {ty})"))
        };
        if base.starts_with("UInt") {
            v.trim()
                .parse()
                .map(Typed::UInt)
                .map_err(|_| bad("a whole number ≥ 0"))
        } else if base.starts_with("Int") {
            v.trim()
                .parse()
                .map(Typed::Int)
                .map_err(|_| bad("a whole number"))
        } else if base.starts_with("Float") {
            v.trim()
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .map(Typed::Float)
                .ok_or_else(|| bad("a number"))
        } else if base == "String" || base.starts_with("FixedString") {
            Ok(Typed::Str(v.to_string()))
        } else {
            Err(ArchiveError::bad(
                col,
                format!("column {col} is {ty}: exact filters work on strings and numbers (use from/to for time)"),
            ))
        }
    }

    fn bind(&self, q: clickhouse::query::Query) -> clickhouse::query::Query {
        match self {
            Typed::UInt(n) => q.bind(*n),
            Typed::Int(n) => q.bind(*n),
            Typed::Float(x) => q.bind(*x),
            Typed::Str(s) => q.bind(s.as_str()),
        }
    }
}

/// `Nullable(T)` / `LowCardinality(T)` → `T`.
fn strip_wrappers(ty: &str) -> &str {
    let mut t = ty.trim();
    for w in ["Nullable(", "LowCardinality("] {
        if let Some(inner) = t.strip_prefix(w).and_then(|r| r.strip_suffix(')')) {
            t = inner;
        }
    }
    t
}

fn is_numeric(ty: &str) -> bool {
    let t = strip_wrappers(ty);
    t.starts_with("UInt") || t.starts_with("Int") || t.starts_with("Float")
}

impl Archive {
    /// Answers `s` from its table, reading with FINAL (one row per stream
    /// entry), each query under `max_execution_time`.
    pub async fn search(&self, s: &Search) -> Result<Found, ArchiveError> {
        let cols = self.columns(&s.table).await?;
        if cols.is_empty() {
            return Err(ArchiveError::bad(
                "kind",
                format!(
                    "table {} does not exist in the archive (run `flowmeter migrate` with the archive enabled)",
                    s.table
                ),
            ));
        }
        let type_of = |c: &str| cols.iter().find(|(n, _)| n == c).map(|(_, t)| t.as_str());
        let mut conds = vec!["ts_ms >= ?".to_string(), "ts_ms < ?".to_string()];
        let mut values = Vec::new();
        for (c, v) in &s.filters {
            let Some(ty) = type_of(c) else {
                return Err(ArchiveError::bad(
                    c,
                    format!(
                        "not a column of {} (columns: {})",
                        s.table,
                        cols.iter()
                            .map(|(n, _)| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            };
            values.push(Typed::parse(c, ty, v)?);
            conds.push(format!("`{c}` = ?"));
        }
        for (c, _) in &s.min {
            if !type_of(c).is_some_and(is_numeric) {
                return Err(ArchiveError::bad(
                    format!("min_{c}"),
                    format!("{c} is not a numeric column of {}", s.table),
                ));
            }
            conds.push(format!("`{c}` >= ?"));
        }
        let order = s.order_by.as_deref().unwrap_or("ts_ms");
        if type_of(order).is_none() {
            return Err(ArchiveError::bad(
                "order_by",
                format!("{order} is not a column of {}", s.table),
            ));
        }
        let dir = if s.ascending { "ASC" } else { "DESC" };
        let where_ = conds.join(" AND ");
        let client = self
            .client
            .clone()
            .with_setting("max_execution_time", self.search_secs.to_string());
        let bind_all = |mut q: clickhouse::query::Query| {
            q = q.bind(s.from_ms).bind(s.to_ms);
            for v in &values {
                q = v.bind(q);
            }
            for (_, v) in &s.min {
                q = q.bind(*v);
            }
            q
        };
        let rows_sql = format!(
            "SELECT * FROM `{t}` FINAL WHERE {where_} ORDER BY `{order}` {dir}, stream_id LIMIT {limit}",
            t = s.table,
            limit = s.limit
        );
        let count_sql = format!(
            "SELECT count() AS n FROM `{t}` FINAL WHERE {where_}",
            t = s.table
        );
        let (rows, truncated) = self
            .capped_lines(bind_all(client.query(&rows_sql)), s.max_bytes)
            .await?;
        let total = self
            .rows(bind_all(client.query(&count_sql)))
            .await
            .map_err(|e| self.too_slow(e))?
            .first()
            .and_then(|r| r.get("n"))
            .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
            .unwrap_or(0);
        Ok(Found {
            columns: cols.into_iter().map(|(n, _)| n).collect(),
            rows,
            total,
            truncated,
        })
    }

    /// The JSONEachRow lines of `query`, read as they arrive until
    /// `max_bytes` (0: no cap); whether the cap cut them.
    async fn capped_lines(
        &self,
        query: clickhouse::query::Query,
        max_bytes: usize,
    ) -> Result<(Vec<String>, bool), ArchiveError> {
        let read = async move {
            let mut cursor = query.fetch_bytes("JSONEachRow")?;
            let mut lines = Vec::new();
            let mut pending: Vec<u8> = Vec::new();
            let mut used = 0usize;
            while let Some(chunk) = cursor.next().await? {
                pending.extend_from_slice(&chunk);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let line = String::from_utf8_lossy(&line).trim_end().to_string();
                    if line.is_empty() {
                        continue;
                    }
                    if max_bytes > 0 && used + line.len() > max_bytes && !lines.is_empty() {
                        return Ok((lines, true));
                    }
                    used += line.len();
                    lines.push(line);
                }
                if max_bytes > 0 && used + pending.len() > max_bytes.saturating_mul(2) {
                    // one row larger than twice the cap: stop reading it
                    return Ok((lines, true));
                }
            }
            Ok((lines, false))
        };
        self.timed(read).await.map_err(|e| self.too_slow(e))
    }

    /// `e` as [`ArchiveError::TooSlow`] when ClickHouse stopped the query at
    /// `max_execution_time` (code 159, TIMEOUT_EXCEEDED).
    fn too_slow(&self, e: ArchiveError) -> ArchiveError {
        match &e {
            ArchiveError::Server { reason, .. }
                if reason.contains("TIMEOUT_EXCEEDED") || reason.contains("Code: 159") =>
            {
                ArchiveError::TooSlow {
                    limit_secs: self.search_secs,
                }
            }
            _ => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_at_line_ending_semicolons_without_comments() {
        let s = statements(
            "-- a comment; still\nCREATE TABLE a (x UInt8) -- x;\n ENGINE = Log;\n\nSELECT 1;\n",
        );
        assert_eq!(s.len(), 2);
        assert!(s[0].starts_with("CREATE TABLE a"));
        assert!(s[0].contains("ENGINE = Log"));
        assert_eq!(s[1], "SELECT 1");
        let shipped = std::fs::read_to_string(format!(
            "{}/migrations/clickhouse/0001_events.sql",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("read");
        assert_eq!(statements(&shipped).len(), 2);
    }

    #[test]
    fn filter_values_take_their_column_type() {
        assert_eq!(
            Typed::parse("status", "UInt16", "503").ok(),
            Some(Typed::UInt(503))
        );
        assert_eq!(
            Typed::parse("d", "Nullable(Float64)", "1.5").ok(),
            Some(Typed::Float(1.5))
        );
        assert_eq!(Typed::parse("n", "Int32", "-4").ok(), Some(Typed::Int(-4)));
        assert_eq!(
            Typed::parse("s", "LowCardinality(String)", "x' OR 1=1 --").ok(),
            Some(Typed::Str("x' OR 1=1 --".into()))
        );
        for (ty, v) in [
            ("UInt16", "5xx"),
            ("UInt64", "-1"),
            ("Float64", "NaN"),
            ("Int8", "1 OR 1"),
        ] {
            let e = Typed::parse("status", ty, v).expect_err("refused");
            assert!(
                matches!(e, ArchiveError::BadSearch { ref param, .. } if param == "status"),
                "{e}"
            );
        }
        let e = Typed::parse("ts", "DateTime('UTC')", "2026").expect_err("refused");
        assert!(e.to_string().contains("from/to"), "{e}");
    }

    #[test]
    fn typed_values_are_bound_as_literals_of_their_type() {
        let client = clickhouse::Client::default();
        let q = |t: Typed| t.bind(client.query("SELECT ?")).sql_display().to_string();
        assert_eq!(q(Typed::UInt(503)), "SELECT 503");
        assert_eq!(q(Typed::Float(1.5)), "SELECT 1.5");
        assert_eq!(q(Typed::Str("a'b".into())), "SELECT 'a\\'b'");
    }
}
