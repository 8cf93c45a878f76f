//! `GET /v1/events/search` (role `api`, with the ClickHouse archive
//! enabled): ad-hoc questions about raw events the hourly rollups cannot
//! answer — the slowest requests of an endpoint in a time range, everything
//! one user did — answered from the archive's tables.
//!
//! Parameters: `kind` (required), `from`, `to` (RFC 3339 on the event time;
//! default the last hour), any column as an exact filter
//! (`service=courses&endpoint=/api/courses/:id`), `min_<column>=N` (numeric
//! lower bound, e.g. `min_duration_ms=500`), `order_by` (a column, default
//! `ts_ms`), `order` (`desc` default, or `asc`), `limit` (default 100, at
//! most 10,000). Answer: `{"table", "from", "to", "total", "columns", "rows": [...], "truncated"}`;
//! `total` counts every match (duplicates from redelivery collapsed).
//!
//! Bounded: one query slot (`query.max_concurrent_queries`), rows read as
//! ClickHouse sends them up to `query.max_response_bytes` (`truncated: true`
//! past it), `max_execution_time` = `clickhouse.search_max_execution_secs`,
//! filter values typed by column. ClickHouse's own error texts and the SQL
//! go to the log, never to the client.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
#[cfg(feature = "clickhouse")]
use axum::http::header;
#[cfg(feature = "clickhouse")]
use axum::response::IntoResponse;
use axum::response::Response;
#[cfg(feature = "clickhouse")]
use serde_json::json;

use super::error::{bad_param, limit_param, time_param, ParamErrors};
use super::{ApiError, AppState};

/// What the search needs: the archive and its table per kind.
#[derive(Clone)]
pub struct EventSearch {
    #[cfg(feature = "clickhouse")]
    pub archive: crate::processor::clickhouse_archive::client::Archive,
    /// kind → table
    pub tables: BTreeMap<String, String>,
}

impl EventSearch {
    /// From the first archive definition in `processors/`, if any is enabled.
    pub fn from_registry(
        processors: &crate::processor::ProcessorRegistry,
        cfg: &crate::config::ClickhouseConfig,
    ) -> Option<EventSearch> {
        let def = processors.enabled().find_map(|p| match p {
            crate::processor::ProcessorConfig::ClickhouseArchive(d) => Some(d),
            _ => None,
        })?;
        let _ = cfg;
        Some(EventSearch {
            #[cfg(feature = "clickhouse")]
            archive: crate::processor::clickhouse_archive::client::Archive::new(cfg),
            tables: def
                .kinds
                .iter()
                .map(|k| (k.clone(), def.table(k)))
                .collect(),
        })
    }

    /// The archive table of `kind`, or which kinds the archive keeps.
    pub fn table(&self, kind: &str) -> Result<String, String> {
        self.tables.get(kind).cloned().ok_or_else(|| {
            format!(
                "the archive keeps {}, not {kind}",
                self.tables.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }
}

pub async fn search(
    State(st): State<AppState>,
    Query(params): Query<std::collections::HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let Some(es) = st.events.clone() else {
        return Err(ApiError::NotFound(
            "the ClickHouse archive is not enabled (processors/clickhouse_archive.toml, docs/archive.md)".into(),
        ));
    };
    // every bad parameter is noted, and answered together
    let mut errs = ParamErrors::default();
    let (from, to) = (time_param(&params, "from"), time_param(&params, "to"));
    // the order of from and to is only checked when both parse
    let times_parse = from.is_ok() && to.is_ok();
    let from = errs.take(from).flatten();
    let to = errs.take(to).flatten();
    let limit = errs.take(limit_param(&params, 100, 10_000)).unwrap_or(100);
    let order_by = params.get("order_by").cloned();
    let ascending = match params.get("order").map(String::as_str) {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(_) => {
            errs.add("order", "use asc or desc");
            false
        }
    };
    let kind = params.get("kind").cloned();
    let mut filters = Vec::new();
    let mut min = Vec::new();
    for (k, v) in &params {
        if ["kind", "from", "to", "limit", "order_by", "order", "token"].contains(&k.as_str()) {
            continue;
        }
        match k.strip_prefix("min_") {
            Some(col) => match v.parse::<f64>() {
                Ok(n) => min.push((col.to_string(), n)),
                Err(_) => errs.add(
                    k,
                    format!(
                        "{:?} is not a number",
                        super::error::capped(v, super::error::MAX_ECHOED_CHARS)
                    ),
                ),
            },
            None => filters.push((k.clone(), v.clone())),
        }
    }
    filters.sort();
    min.sort_by(|a, b| a.0.cmp(&b.0));
    let table = match kind {
        None => {
            errs.add("kind", "is required");
            None
        }
        Some(kind) => errs.take(es.table(&kind).map_err(|reason| bad_param("kind", reason))),
    };
    let to = to.unwrap_or_else(chrono::Utc::now);
    let from = from.unwrap_or(to - chrono::Duration::hours(1));
    if from >= to && times_parse {
        errs.add("from", "must be before to");
    }
    errs.finish()?;
    let Some(table) = table else {
        return Err(ApiError::Internal("a parameter error went unnamed".into()));
    };
    #[cfg(feature = "clickhouse")]
    {
        use crate::processor::clickhouse_archive::client::{ArchiveError, Search};
        let s = Search {
            table: table.clone(),
            from_ms: from.timestamp_millis(),
            to_ms: to.timestamp_millis(),
            filters,
            min,
            order_by,
            ascending,
            limit,
            max_bytes: st.queries.cfg.max_response_bytes,
        };
        let slot = st.queries.admit()?;
        let found = es.archive.search(&s).await.map_err(|e| match e {
            ArchiveError::BadSearch { param, reason } => bad_param(&param, reason),
            ArchiveError::TooSlow { limit_secs } => bad_param(
                "from",
                format!("the search ran longer than the archive allows ({limit_secs} s, clickhouse.search_max_execution_secs): narrow from/to or add filters"),
            ),
            e => {
                // ClickHouse's text and the SQL stay in the log
                tracing::warn!(error = %e, table = %s.table, "archive search failed");
                ApiError::Unavailable {
                    reason: "the event archive cannot answer right now; retry later".into(),
                    retry_after: 5,
                }
            }
        })?;
        // the rows are spliced in as ClickHouse wrote them: one copy
        let head = json!({
            "table": table, "from": from.to_rfc3339(), "to": to.to_rfc3339(),
            "total": found.total, "columns": found.columns, "truncated": found.truncated,
            "count": found.rows.len(),
        })
        .to_string();
        let size = head.len() + found.rows.iter().map(|r| r.len() + 1).sum::<usize>() + 16;
        let mut body = String::with_capacity(size);
        body.push_str(head.trim_end_matches('}'));
        body.push_str(",\"rows\":[");
        for (i, r) in found.rows.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(r);
        }
        body.push_str("]}");
        let mut resp = (
            [(header::CONTENT_TYPE, "application/json")],
            slot.body(body),
        )
            .into_response();
        super::limits::page_headers(&mut resp, found.truncated, None);
        Ok(resp)
    }
    #[cfg(not(feature = "clickhouse"))]
    {
        let _ = (filters, min, order_by, ascending, limit, table);
        Err(ApiError::NotFound(
            "this flowmeter was built without the `clickhouse` feature".into(),
        ))
    }
}
