//! `flowmeter dlq`: list, show, retry and purge a group's dead letters.

use clap::{Args, Subcommand};

use super::table::table;
use crate::config::Settings;
use crate::dlq::{self, DeadLetter};

#[derive(Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    action: DlqAction,
    /// Consumer group.
    #[arg(long, default_value = "rollup", global = true)]
    group: String,
}

#[derive(Subcommand)]
enum DlqAction {
    /// Table of dead letters, oldest first.
    List {
        #[arg(long, default_value_t = 50)]
        count: usize,
    },
    /// One dead letter in full (JSON).
    Show { dlq_id: String },
    /// Re-append dead letters to their original streams (every group on that
    /// stream sees them again) and remove them from the dead-letter stream.
    Retry {
        /// Dead-letter ids; none with --all.
        dlq_ids: Vec<String>,
        #[arg(long)]
        all: bool,
        /// On a Redis Cluster: how long a re-appended dead letter is
        /// remembered, so a run that died before removing it, repeated
        /// within this time, does not append it twice.
        #[arg(long, default_value_t = dlq::RETRY_MARKER_TTL.as_secs())]
        marker_ttl_secs: u64,
    },
    /// Delete every dead letter of the group.
    Purge {
        /// Required: purging cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

pub async fn run(settings: &Settings, args: DlqArgs) -> anyhow::Result<()> {
    let (redis, keys) = crate::app::redis_and_keys(settings).await?;
    let group = args.group;
    match args.action {
        DlqAction::List { count } => {
            let letters = dlq::list(&redis, &keys, &group, "-", count).await?;
            let total = dlq::len(&redis, &keys, &group).await?;
            print!("{}", render(&letters));
            println!("{} of {total} dead letters of group {group}", letters.len());
        }
        DlqAction::Show { dlq_id } => {
            let found = dlq::list(&redis, &keys, &group, &dlq_id, 1).await?;
            match found.first().filter(|d| d.dlq_id == dlq_id) {
                Some(d) => println!("{}", serde_json::to_string_pretty(d)?),
                None => anyhow::bail!(
                    "no dead letter {dlq_id} for group {group}; `flowmeter dlq list` shows the ids"
                ),
            }
        }
        DlqAction::Retry {
            dlq_ids,
            all,
            marker_ttl_secs,
        } => {
            let letters = if all {
                dlq::list(&redis, &keys, &group, "-", usize::MAX >> 1).await?
            } else if dlq_ids.is_empty() {
                anyhow::bail!("name the dead letters to retry, or pass --all");
            } else {
                let mut v = Vec::new();
                for id in &dlq_ids {
                    let found = dlq::list(&redis, &keys, &group, id, 1).await?;
                    match found.into_iter().find(|d| &d.dlq_id == id) {
                        Some(d) => v.push(d),
                        None => anyhow::bail!("no dead letter {id} for group {group}"),
                    }
                }
                v
            };
            let ttl = std::time::Duration::from_secs(marker_ttl_secs.max(1));
            let n = dlq::retry(&redis, &keys, &group, &letters, ttl).await?;
            println!("{n} dead letters re-appended to their streams");
        }
        DlqAction::Purge { yes } => {
            if !yes {
                anyhow::bail!("purging cannot be undone; pass --yes");
            }
            let n = dlq::purge(&redis, &keys, &group).await?;
            println!("{n} dead letters of group {group} deleted");
        }
    }
    Ok(())
}

/// Aligned table of dead letters (data shortened).
pub fn render(letters: &[DeadLetter]) -> String {
    let mut rows = vec![["dlq id", "stream", "id", "processor", "error", "data"]
        .map(String::from)
        .to_vec()];
    let short = |s: &str, n: usize| {
        if s.chars().count() > n {
            format!("{}…", s.chars().take(n).collect::<String>())
        } else {
            s.to_string()
        }
    };
    for d in letters {
        rows.push(vec![
            d.dlq_id.clone(),
            d.stream.clone(),
            d.id.clone(),
            d.processor.clone(),
            short(&d.error, 60),
            short(&d.data, 40),
        ]);
    }
    table(&rows)
}
