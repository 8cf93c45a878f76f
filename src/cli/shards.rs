//! `flowmeter shards`: the shard layout (every shard set, its state and
//! what is left to read of it), and `shards set N` to change the shard
//! count while events arrive (docs/operations.md, "Changing the shard
//! count").

use std::time::Duration;

use clap::{Args, Subcommand};

use super::human::{count, time_ms};
use super::table::table;
use crate::config::Settings;
use crate::event::SchemaRegistry;
use crate::processor::ProcessorRegistry;
use crate::shards::{self, ShardsReport};
use crate::stream::SetState;

#[derive(Args)]
pub struct ShardsArgs {
    #[command(subcommand)]
    command: Option<ShardsCommand>,
    /// Print the layout as JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum ShardsCommand {
    /// Show every shard set: shards, state, entries, entries still unread.
    Show,
    /// Change the shard count: new events go to a new set of N shards per
    /// kind; the current set is sealed (nothing more can be written to it)
    /// and read to the end by every group, then retired. No entry is
    /// stranded or counted twice.
    Set {
        /// Shards per kind in the new set (1 to 1024).
        shards: u32,
        /// Wait until the old set is read to the end and retired.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds (the change goes on).
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// Wait until every older set is read to the end and retired (moving
    /// them along now rather than at the workers' next retention pass).
    Wait {
        /// Give up after this many seconds (exit code 1; nothing is undone).
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
}

pub async fn run(settings: &Settings, args: ShardsArgs) -> anyhow::Result<()> {
    let schemas = SchemaRegistry::load(&settings.paths.schemas)?;
    let kinds: Vec<String> = schemas.kinds().iter().map(|k| k.name.clone()).collect();
    let (redis, keys) = crate::app::redis_and_keys(settings).await?;
    let keep_ms = i64::try_from(settings.ingest.idempotency_window_secs.saturating_mul(1000))
        .unwrap_or(i64::MAX);
    let wait_for = match args.command.unwrap_or(ShardsCommand::Show) {
        ShardsCommand::Show => None,
        ShardsCommand::Wait { timeout_secs } => Some(timeout_secs),
        ShardsCommand::Set {
            shards: n,
            wait,
            timeout_secs,
        } => {
            let processors = ProcessorRegistry::load(&settings.paths.processors, &schemas)?;
            let mut groups: Vec<(String, String)> = processors
                .enabled()
                .flat_map(|p| p.kinds().iter().map(|k| (p.group().to_string(), k.clone())))
                .collect();
            groups.sort();
            groups.dedup();
            let now = chrono::Utc::now().timestamp_millis();
            let layout = shards::change(&redis, &keys, &kinds, &groups, n, now).await?;
            eprintln!(
                "new events now go to set {} ({} shards per kind); the older set is sealed and read to the end by every group, then retired",
                layout.current().set,
                layout.current().shards
            );
            wait.then_some(timeout_secs)
        }
    };
    if let Some(timeout_secs) = wait_for {
        let deadline = std::time::Instant::now() + Duration::from_secs(timeout_secs);
        loop {
            let now = chrono::Utc::now().timestamp_millis();
            match shards::advance(&redis, &keys, &kinds, keep_ms, now).await {
                // a retention pass stores its moves too: look again
                Ok(_) | Err(shards::ShardsError::Raced) => {}
                Err(e) => return Err(e.into()),
            }
            let l = keys.layout();
            if l.sets
                .iter()
                .all(|s| matches!(s.state, SetState::Current | SetState::Retired))
            {
                eprintln!("every older set is read to the end and retired");
                break;
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!(
                    "older sets are not read to the end after {timeout_secs} s (are the workers running? `flowmeter shards` shows what is left); nothing is undone"
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let report = shards::report(&redis, &keys, &kinds).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report, settings.redis.shards));
    }
    Ok(())
}

/// The table printed by `flowmeter shards`.
pub fn render(report: &ShardsReport, configured: u32) -> String {
    let mut rows = vec![[
        "set",
        "shards",
        "state",
        "since",
        "entries",
        "unread",
        "sealed streams",
    ]
    .map(String::from)
    .to_vec()];
    for s in &report.sets {
        let sealed = s.streams.iter().filter(|x| x.sealed).count();
        rows.push(vec![
            s.set.to_string(),
            s.shards.to_string(),
            s.state.as_str().to_string(),
            if s.since_ms > 0 {
                time_ms(u64::try_from(s.since_ms).unwrap_or(0))
            } else {
                "-".into()
            },
            count(s.length()),
            count(s.unread()),
            format!("{sealed}/{}", s.streams.len()),
        ]);
    }
    let mut out = table(&rows);
    if !report.stored {
        out.push_str(&format!(
            "no layout stored: redis.shards ({configured}) decides; `flowmeter shards set N` changes it live\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shards::{SetReport, SetStream};

    #[test]
    fn the_table_shows_each_set_and_what_is_left() {
        let stream = |unread, sealed| SetStream {
            stream: "fm:{http:0}".into(),
            length: 1_500,
            unread,
            sealed,
        };
        let report = ShardsReport {
            stored: true,
            version: 3,
            sets: vec![
                SetReport {
                    set: 0,
                    shards: 1,
                    state: SetState::Draining,
                    since_ms: 1_796_040_000_000,
                    streams: vec![stream(1_200, true)],
                },
                SetReport {
                    set: 1,
                    shards: 1,
                    state: SetState::Current,
                    since_ms: 1_796_040_000_000,
                    streams: vec![stream(0, false)],
                },
            ],
        };
        let out = render(&report, 4);
        assert!(out.contains("draining"), "{out}");
        assert!(out.contains("1,200"), "{out}");
        assert!(out.contains("1/1"), "{out}");
        assert!(out.contains("2026-11-30T12:00:00Z"), "{out}");
        assert!(!out.contains("no layout stored"));
        let unstored = ShardsReport {
            stored: false,
            ..report
        };
        assert!(render(&unstored, 4).contains("redis.shards (4)"));
    }
}
