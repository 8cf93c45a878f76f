//! `flowmeter status`: streams, groups, retention, shards and workers as
//! aligned tables, or the JSON of `GET /v1/status`; with `--max-lag-secs` a
//! probe that exits 2 when a group falls behind; with `--watch` the tables
//! redrawn every `--interval` seconds until q or Ctrl-C.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::human::position_or_dash;
use super::table::table;
use crate::app::StatusReader;
use crate::config::Settings;
use crate::status::{GroupSummary, Status, StreamStatus};
use crate::stream::StreamId;

/// The shortest `--interval` of `--watch` (seconds): each refresh reads
/// every stream and group of the prefix.
const MIN_WATCH_INTERVAL_SECS: f64 = 0.2;

#[derive(Args)]
pub struct StatusArgs {
    /// Exit 2 when any group's lag age (seconds from its oldest unacked
    /// entry to now) is above this.
    #[arg(long, value_name = "SECS")]
    max_lag_secs: Option<f64>,
    /// Print JSON (the same as GET /v1/status) instead of tables.
    #[arg(long)]
    json: bool,
    /// Redraw the tables every --interval seconds until q or Ctrl-C.
    #[arg(long, conflicts_with_all = ["json", "max_lag_secs"])]
    watch: bool,
    /// Seconds between two refreshes of --watch (at least 0.2).
    #[arg(long, value_name = "SECS", default_value_t = 2.0, value_parser = watch_interval)]
    interval: f64,
    /// Stop --watch after this many refreshes (for tests and scripts).
    #[arg(long, hide = true, value_name = "N")]
    iterations: Option<u64>,
}

fn watch_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= MIN_WATCH_INTERVAL_SECS => Ok(v),
        Ok(_) => Err(format!("at least {MIN_WATCH_INTERVAL_SECS} seconds")),
        Err(e) => Err(e.to_string()),
    }
}

pub async fn run(settings: &Settings, args: StatusArgs) -> anyhow::Result<ExitCode> {
    crate::telemetry::init();
    let reader = StatusReader::connect(settings).await?;
    if args.watch {
        watch(&reader, args.interval, args.iterations).await;
        return Ok(ExitCode::SUCCESS);
    }
    let status = reader.read().await?;
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

/// `--watch`: on a terminal each refresh redraws the screen in place
/// (cursor home, every line cleared to its end, the rest of the screen
/// cleared) and q, Esc or Ctrl-C quits; elsewhere the frames follow one
/// another. A refresh that fails shows why and the next one tries again.
async fn watch(reader: &StatusReader, interval_secs: f64, iterations: Option<u64>) {
    let stop = super::stop_on_signal();
    let term = console::Term::stdout();
    let tty = term.is_term();
    if tty {
        quit_on_key(term, stop.clone());
    }
    let interval = Duration::from_secs_f64(interval_secs);
    let mut done = 0u64;
    loop {
        let body = match reader.read().await {
            Ok(status) => render(&status),
            Err(e) => format!(
                "cannot read the status: {e}
"
            ),
        };
        let head = format!(
            "flowmeter status at {}, every {interval_secs} s{}\n\n",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            if tty { " (q or Ctrl-C quits)" } else { "" },
        );
        let frame = match tty {
            true => redraw(&(head + &body)),
            false => head + &body + "\n",
        };
        let mut out = std::io::stdout().lock();
        if out
            .write_all(frame.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return; // stdout closed (a pipe whose reader left)
        }
        drop(out);
        done += 1;
        if iterations.is_some_and(|n| done >= n) {
            return;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// `text` drawn over the previous frame without clearing the screen first
/// (no flicker): from the top left, each line cleared to its end, then
/// everything below the last line.
fn redraw(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8 * text.lines().count() + 16);
    out.push_str("\x1b[H");
    for line in text.lines() {
        out.push_str(line);
        out.push_str("\x1b[K\n");
    }
    out.push_str("\x1b[J");
    out
}

/// Cancels `stop` when q, Q, Esc or Ctrl-C is pressed. The terminal reads
/// key by key (no echo, no signal from Ctrl-C) only while a key is awaited,
/// on a thread of its own: the runtime never waits for it.
fn quit_on_key(term: console::Term, stop: CancellationToken) {
    let spawned = std::thread::Builder::new()
        .name("status-keys".into())
        .spawn(move || loop {
            match term.read_key() {
                Ok(console::Key::Char('q' | 'Q' | '\u{3}'))
                | Ok(console::Key::Escape | console::Key::CtrlC) => {
                    stop.cancel();
                    return;
                }
                Ok(_) => {}
                // no terminal to read keys from: Ctrl-C still quits (a signal)
                Err(_) => return,
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot read keys: quit --watch with Ctrl-C");
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redraw_clears_each_line_and_what_is_below() {
        assert_eq!(redraw("a\nbb\n"), "\x1b[Ha\x1b[K\nbb\x1b[K\n\x1b[J");
    }

    #[test]
    fn the_watch_interval_has_a_floor() {
        assert_eq!(watch_interval("2"), Ok(2.0));
        assert_eq!(watch_interval("0.5"), Ok(0.5));
        for bad in ["0", "0.1", "-1", "inf", "NaN", "x"] {
            assert!(watch_interval(bad).is_err(), "{bad}");
        }
    }
}
