//! `flowmeter status`: streams, groups, retention, shards and workers as
//! aligned tables, or the JSON of `GET /v1/status`; with `--max-lag-secs` a
//! probe that exits 2 when a group falls behind.

use std::process::ExitCode;

use clap::Args;

use super::human::position_or_dash;
use super::table::table;
use crate::config::Settings;
use crate::status::{GroupSummary, Status, StreamStatus};
use crate::stream::StreamId;

#[derive(Args)]
pub struct StatusArgs {
    /// Exit 2 when any group's lag age (seconds from its oldest unacked
    /// entry to the stream's newest) is above this.
    #[arg(long, value_name = "SECS")]
    max_lag_secs: Option<f64>,
    /// Print JSON (the same as GET /v1/status) instead of tables.
    #[arg(long)]
    json: bool,
}

pub async fn run(settings: &Settings, args: StatusArgs) -> anyhow::Result<ExitCode> {
    crate::telemetry::init();
    let status = crate::app::status(settings).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status));
    }
    if let Some(limit) = args.max_lag_secs {
        let behind = status.lagging(limit);
        for (stream, group, age) in &behind {
            eprintln!("group {group} on {stream} is {age:.1} s behind (limit {limit} s)");
        }
        if !behind.is_empty() {
            eprintln!(
                "are the groups' workers running and keeping up? see GROUPS and WORKERS above"
            );
            return Ok(ExitCode::from(2));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Aligned tables: streams, groups, shards (checkpoint, owner), workers.
pub fn render(status: &Status) -> String {
    let row = |cells: Vec<String>| cells;
    let dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    let time = position_or_dash;
    let window = |s: &StreamStatus| match (
        s.first_id
            .as_deref()
            .and_then(|i| i.parse::<StreamId>().ok()),
        s.last_id
            .as_deref()
            .and_then(|i| i.parse::<StreamId>().ok()),
    ) {
        (Some(a), Some(b)) => format!("{:.0}", b.ms.saturating_sub(a.ms) as f64 / 1000.0),
        _ => "-".into(),
    };
    let mut streams = vec![row([
        "stream",
        "length",
        "first entry",
        "last entry",
        "window s",
    ]
    .map(String::from)
    .to_vec())];
    let mut groups = vec![row([
        "stream",
        "group",
        "lag",
        "lag age s",
        "pending",
        "consumers",
        "oldest unacked",
    ]
    .map(String::from)
    .to_vec())];
    for s in &status.streams {
        streams.push(vec![
            s.stream.clone(),
            s.length.to_string(),
            time(&s.first_id),
            time(&s.last_id),
            window(s),
        ]);
        for g in &s.groups {
            groups.push(vec![
                s.stream.clone(),
                g.group.clone(),
                g.lag.map_or("-".into(), |l| l.to_string()),
                format!("{:.1}", g.lag_age_secs),
                g.pending.to_string(),
                g.consumers.to_string(),
                time(&g.oldest_unacked_id),
            ]);
        }
    }
    let mut shards = vec![row(["processor", "stream", "checkpoint", "owner"]
        .map(String::from)
        .to_vec())];
    let mut workers = vec![row([
        "processor",
        "worker",
        "shards",
        "last flush",
        "events/s",
        "events",
        "xadd→row p99 ms",
    ]
    .map(String::from)
    .to_vec())];
    // a disabled processor reads nothing: one line for all of them
    // instead of a row per shard
    let disabled: Vec<&str> = status
        .processors
        .iter()
        .filter(|p| !p.enabled)
        .map(|p| p.name.as_str())
        .collect();
    for p in status.processors.iter().filter(|p| p.enabled) {
        for sh in &p.shards {
            shards.push(vec![
                p.name.clone(),
                sh.stream.clone(),
                time(&sh.checkpoint),
                dash(&sh.owner),
            ]);
        }
    }
    for p in &status.processors {
        for w in &p.workers {
            workers.push(vec![
                p.name.clone(),
                w.worker.clone(),
                w.shards.len().to_string(),
                dash(&w.last_flush_at),
                format!("{:.0}", w.events_per_sec),
                w.events_total.to_string(),
                format!("{:.0}", w.xadd_to_commit_p99_ms),
            ]);
        }
    }
    let mut out = String::new();
    if let Some(w) = &status.redis.warning {
        out.push_str(&format!("WARNING: {w}\n\n"));
    }
    if status.ingest.not_replicated > 0 {
        out.push_str(&format!(
            "INGEST: {} requests were stored but answered 503 \"unknown\": fewer replicas than ingest.wait_replicas confirmed them in time\n\n",
            status.ingest.not_replicated
        ));
    }
    out.push_str("STREAMS\n");
    out.push_str(&table(&streams));
    out.push_str("\nGROUPS\n");
    out.push_str(&table(&groups));
    out.push_str("\nRETENTION\n");
    out.push_str(&render_retention(&status.streams));
    out.push_str("\nGROUP TOTALS\n");
    out.push_str(&render_groups(&status.groups));
    out.push_str("\nSHARDS\n");
    if shards.len() > 1 {
        out.push_str(&table(&shards));
    }
    if !disabled.is_empty() {
        out.push_str(&format!(
            "{}: disabled (enabled = false in processors/)\n",
            disabled.join(", ")
        ));
    }
    out.push_str("\nWORKERS\n");
    if workers.len() == 1 {
        out.push_str("(no rollup worker has published figures in the last minute)\n");
    } else {
        out.push_str(&table(&workers));
    }
    out.push_str(&render_health(status));
    out
}

/// Stalled workers (since when, the last error) and the key budgets
/// of rollup tables; empty when there is neither.
fn render_health(status: &Status) -> String {
    let mut out = String::new();
    let mut budgets = vec![[
        "processor",
        "table",
        "hour",
        "new keys",
        "max",
        "folded keys",
    ]
    .map(String::from)
    .to_vec()];
    for p in &status.processors {
        for w in &p.workers {
            if let Some(since) = &w.stalled_since {
                out.push_str(&format!(
                    "STALLED {} on {} since {since} ({} failed attempts): {}\n",
                    p.name,
                    w.worker,
                    w.consecutive_failures,
                    w.last_error.as_deref().unwrap_or("-")
                ));
            }
            for b in &w.key_budgets {
                budgets.push(vec![
                    p.name.clone(),
                    b.table.clone(),
                    b.hour.clone(),
                    b.new_keys.to_string(),
                    b.max_new_keys_per_hour.to_string(),
                    b.folded_keys.to_string(),
                ]);
            }
        }
    }
    if budgets.len() > 1 {
        out.push_str("\nKEY BUDGETS (as each worker last saw them)\n");
        out.push_str(&table(&budgets));
    }
    out
}

/// Per stream: what the limits ask to keep, the oldest entry a group needs,
/// and the group holding retention back (by how many seconds).
pub fn render_retention(streams: &[StreamStatus]) -> String {
    let dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    let time = position_or_dash;
    let mut rows = vec![[
        "stream",
        "keep from",
        "needed from",
        "by group",
        "held back by",
        "held s",
        "next trim to",
    ]
    .map(String::from)
    .to_vec()];
    for s in streams {
        let Some(p) = &s.retention else { continue };
        rows.push(vec![
            s.stream.clone(),
            time(&p.wanted),
            time(&p.floor),
            dash(&p.floor_group),
            dash(&p.held_by),
            format!("{:.0}", p.held_secs),
            time(&p.trim_to),
        ]);
    }
    table(&rows)
}

/// The `groups list` table.
pub fn render_groups(groups: &[GroupSummary]) -> String {
    let mut rows = vec![[
        "group",
        "processors",
        "shards",
        "position",
        "lag",
        "lag age s",
        "pending",
        "consumers",
        "idle s",
        "dead letters",
        "trimmed unread",
    ]
    .map(String::from)
    .to_vec()];
    for g in groups {
        rows.push(vec![
            g.group.clone(),
            if g.processors.is_empty() {
                "(external)".into()
            } else {
                g.processors.join(",")
            },
            g.shards.to_string(),
            position_or_dash(&g.position),
            g.lag.map_or("-".into(), |l| l.to_string()),
            format!("{:.1}", g.lag_age_secs),
            g.pending.to_string(),
            g.consumers.to_string(),
            g.idle_secs.map_or("-".into(), |i| format!("{i:.1}")),
            g.dead_letters.to_string(),
            g.unread_trimmed.to_string(),
        ]);
    }
    table(&rows)
}
