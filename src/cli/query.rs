//! `flowmeter query`: raw events from the ClickHouse archive, as a table or
//! the JSON of `GET /v1/events/search`.

use clap::Args;

use crate::config::Settings;

#[derive(Args)]
pub struct QueryArgs {
    /// Event kind (its archive table).
    #[arg(long)]
    kind: String,
    /// Start of the event-time range, RFC 3339 (default: an hour before --to).
    #[arg(long)]
    from: Option<String>,
    /// End of the range, RFC 3339 (default: now).
    #[arg(long)]
    to: Option<String>,
    /// Exact filter on a column; repeat for more.
    #[arg(long = "where", value_name = "COLUMN=VALUE")]
    filters: Vec<String>,
    /// Lower bound on a numeric column; repeat for more.
    #[arg(long, value_name = "COLUMN=N")]
    min: Vec<String>,
    /// Sort column (default ts_ms), descending unless --asc.
    #[arg(long)]
    order_by: Option<String>,
    #[arg(long)]
    asc: bool,
    /// Rows at most (at most 10,000).
    #[arg(long, default_value_t = 20)]
    limit: u64,
    /// Print the JSON answer instead of a table.
    #[arg(long)]
    json: bool,
}

#[cfg(not(feature = "clickhouse"))]
pub async fn run(_settings: &Settings, _args: QueryArgs) -> anyhow::Result<()> {
    anyhow::bail!("this flowmeter was built without the `clickhouse` feature")
}

#[cfg(feature = "clickhouse")]
pub async fn run(settings: &Settings, args: QueryArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;

    use super::table::table;
    use crate::api::params::echo_time;
    use crate::processor::clickhouse_archive::client::Search;

    let QueryArgs {
        kind,
        from,
        to,
        filters,
        min,
        order_by,
        asc,
        limit,
        json,
    } = args;
    let time = |name: &str, v: &str| {
        chrono::DateTime::parse_from_rfc3339(v)
            .map(|t| t.with_timezone(&chrono::Utc))
            .with_context(|| format!("--{name} {v:?}: use RFC 3339, e.g. 2026-11-30T10:00:00Z"))
    };
    let to = match &to {
        Some(v) => time("to", v)?,
        None => crate::api::params::now_secs(),
    };
    let from = match &from {
        Some(v) => time("from", v)?,
        None => to - chrono::Duration::hours(1),
    };
    let pair = |flag: &str, s: &str| {
        s.split_once('=')
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .with_context(|| format!("--{flag} {s:?}: use COLUMN=VALUE"))
    };
    let filters = filters
        .iter()
        .map(|f| pair("where", f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let min = min
        .iter()
        .map(|m| {
            let (k, v) = pair("min", m)?;
            let n: f64 = v
                .parse()
                .with_context(|| format!("--min {m:?}: {v:?} is not a number"))?;
            Ok((k, n))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let search = Search {
        table: String::new(),
        from_ms: from.timestamp_millis(),
        to_ms: to.timestamp_millis(),
        filters,
        min,
        order_by,
        ascending: asc,
        limit: limit.clamp(1, 10_000),
        max_bytes: settings.query.max_response_bytes,
    };
    let found = crate::app::query_archive(settings, &kind, search).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "from": echo_time(from), "to": echo_time(to), "total": found.total,
                "columns": found.columns, "rows": found.parsed_rows(),
                "truncated": found.truncated,
            }))?
        );
        return Ok(());
    }
    let mut rows = vec![found.columns.clone()];
    for r in &found.parsed_rows() {
        rows.push(
            found
                .columns
                .iter()
                .map(|c| match r.get(c) {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                    None => String::new(),
                })
                .collect(),
        );
    }
    print!("{}", table(&rows));
    if found.truncated {
        println!("(cut at query.max_response_bytes: narrow the search or lower --limit)");
    }
    println!(
        "{} of {} matching {kind} events from {} to {}",
        found.rows.len(),
        found.total,
        echo_time(from),
        echo_time(to)
    );
    Ok(())
}
