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

use axum::extract::State;
#[cfg(feature = "clickhouse")]
use axum::http::header;
#[cfg(feature = "clickhouse")]
use axum::response::IntoResponse;
use axum::response::Response;
use serde::Deserialize;
#[cfg(feature = "clickhouse")]
use serde_json::json;

use super::error::{bad_param, ParamErrors};
#[cfg(feature = "clickhouse")]
use super::params::echo_time;
use super::params::{now_secs, FromParam, Limit, Order, Param, Params, Rest, Time};
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
        let def = processors
            .enabled()
            .find_map(|p| p.get::<crate::processor::clickhouse_archive::ArchiveDef>())?;
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

/// The parameters of `GET /v1/events/search`; the rest are column filters:
/// `<column>=<value>` for equality, `min_<column>=<number>` for a floor.
#[derive(Debug, Deserialize)]
pub struct SearchParams {
    kind: Option<String>,
    from: Option<Param<Time>>,
    to: Option<Param<Time>>,
    limit: Option<Param<Limit<100, 10_000>>>,
    order_by: Option<String>,
    order: Option<Param<Order>>,
    #[serde(flatten)]
    filters: Rest,
}

pub async fn search(
    State(st): State<AppState>,
    Params(p): Params<SearchParams>,
) -> Result<Response, ApiError> {
    let Some(es) = st.events.clone() else {
        return Err(ApiError::NotFound(
            "the ClickHouse archive is not enabled (processors/clickhouse_archive.toml, docs/archive.md)".into(),
        ));
    };
    // every bad parameter is noted, and answered together
    let mut errs = ParamErrors::default();
    let (from, to) = (errs.param("from", p.from), errs.param("to", p.to));
    // the order of from and to is only checked when both parse
    let times_parse = from.is_some() && to.is_some();
    let (from, to) = (from.flatten(), to.flatten());
    let limit = Limit::or_default(errs.param("limit", p.limit));
    let order_by = p.order_by;
    let ascending = errs.param("order", p.order).flatten() == Some(Order::Asc);
    let kind = p.kind;
    let mut filters = Vec::new();
    let mut min = Vec::new();
    // a map in name order: filters and errors come out sorted
    for (k, v) in errs.rest(p.filters) {
        if k == "token" {
            continue;
        }
        match k.strip_prefix("min_") {
            Some(col) => match f64::from_param(&v) {
                Ok(n) => min.push((col.to_string(), n)),
                Err(reason) => errs.add(&k, reason),
            },
            None => filters.push((k, v)),
        }
    }
    let table = match kind {
        None => {
            errs.add("kind", "is required");
            None
        }
        Some(kind) => errs.take(es.table(&kind).map_err(|reason| bad_param("kind", reason))),
    };
    let to = to.map_or_else(now_secs, |t| t.0);
    let from = from.map_or(to - chrono::Duration::hours(1), |t| t.0);
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
                    reason: "the event archive cannot answer right now (the server log says why); retry after Retry-After seconds".into(),
                    retry_after: st.queries.cfg.retry_after_secs,
                }
            }
        })?;
        // the rows are spliced in as ClickHouse wrote them: one copy
        let head = json!({
            "table": table, "from": echo_time(from), "to": echo_time(to),
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
