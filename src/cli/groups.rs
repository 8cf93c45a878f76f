//! `flowmeter groups`: list, create, reset, claim and delete consumer groups
//! on every shard stream.

use clap::{Args, Subcommand};

use super::human::position_or_dash;
use super::table::table;
use crate::config::Settings;
use crate::event::SchemaRegistry;
use crate::groups::{self, ShardChange};
use crate::processor::ProcessorRegistry;
use crate::stream::StartFrom;

#[derive(Args)]
pub struct GroupsArgs {
    #[command(subcommand)]
    action: GroupsAction,
}

#[derive(Subcommand)]
enum GroupsAction {
    /// Table of groups over their shards: processors, shards, position, lag,
    /// lag age, pending, consumers, idle, dead letters.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create a group on every shard of its kinds, reading from --from.
    /// For a processor, adding its file to processors/ (with `start_from`) does
    /// this on start; use this for external consumers.
    Create {
        name: String,
        /// beginning | now | an RFC 3339 time | a stream id.
        #[arg(long, default_value = "now")]
        from: StartFrom,
        /// Event kinds (default: the kinds of the processors using the group, else all).
        #[arg(long = "kind", value_name = "KIND")]
        kinds: Vec<String>,
    },
    /// Move a group's position (last-delivered id) on every shard. Pending
    /// entries stay pending. Rollup groups skip what their checkpoint already
    /// holds, so moving back re-reads without double counting.
    Reset {
        name: String,
        /// beginning | now | an RFC 3339 time | a stream id.
        #[arg(long)]
        to: StartFrom,
        #[arg(long = "kind", value_name = "KIND")]
        kinds: Vec<String>,
    },
    /// Hand every entry pending for at least --idle-secs (its consumer died
    /// or hangs) to another consumer (XAUTOCLAIM), on every shard. For
    /// external consumers; rollup shards need no claiming.
    Claim {
        name: String,
        /// The consumer that takes the entries.
        #[arg(long)]
        to: String,
        /// Only entries idle at least this long.
        #[arg(long, default_value_t = 60)]
        idle_secs: u64,
        #[arg(long = "kind", value_name = "KIND")]
        kinds: Vec<String>,
    },
    /// Delete a group from every shard. Refuses while entries are pending or
    /// a processor in processors/ uses it, unless --force.
    Delete {
        name: String,
        #[arg(long = "kind", value_name = "KIND")]
        kinds: Vec<String>,
        /// Delete even with pending entries or a processor using the group.
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(settings: &Settings, args: GroupsArgs) -> anyhow::Result<()> {
    let schemas = SchemaRegistry::load(&settings.paths.schemas)?;
    let processors = ProcessorRegistry::load(&settings.paths.processors, &schemas)?;
    let (redis, keys) = crate::app::redis_and_keys(settings).await?;
    let streams = |name: &str, kinds: &[String]| {
        groups::streams_for(name, kinds, &keys, &schemas, &processors)
    };
    match args.action {
        GroupsAction::List { json } => {
            let status = crate::status::gather(
                &redis,
                &keys,
                &schemas,
                &processors,
                None,
                &settings.retention,
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status.groups)?);
            } else if status.groups.is_empty() {
                println!("no consumer groups under prefix {}", keys.prefix());
            } else {
                print!("{}", super::status::render_groups(&status.groups));
            }
        }
        GroupsAction::Create { name, from, kinds } => {
            let changes = groups::create(&redis, &streams(&name, &kinds)?, &name, from).await?;
            print!("{}", render(&changes));
            println!(
                "group {name} created on {} streams at {from}",
                changes.len()
            );
        }
        GroupsAction::Reset { name, to, kinds } => {
            let changes = groups::reset(&redis, &streams(&name, &kinds)?, &name, to).await?;
            print!("{}", render(&changes));
            println!("group {name} moved to {to} on {} streams", changes.len());
            if processors.processors.iter().any(|p| p.group() == name) {
                println!("rollup checkpoints skip entries already counted; to rebuild rows use `flowmeter replay`");
            }
        }
        GroupsAction::Claim {
            name,
            to,
            idle_secs,
            kinds,
        } => {
            let done = groups::claim(
                &redis,
                &streams(&name, &kinds)?,
                &name,
                &to,
                idle_secs.saturating_mul(1000),
            )
            .await?;
            let mut rows = vec![["stream", "claimed", "already trimmed"]
                .map(String::from)
                .to_vec()];
            for c in &done {
                rows.push(vec![
                    c.stream.clone(),
                    c.claimed.to_string(),
                    c.deleted.to_string(),
                ]);
            }
            print!("{}", table(&rows));
            let n: u64 = done.iter().map(|c| c.claimed).sum();
            println!("{n} entries of group {name} idle ≥ {idle_secs} s now pending on {to}");
        }
        GroupsAction::Delete { name, kinds, force } => {
            let changes =
                groups::delete(&redis, &streams(&name, &kinds)?, &name, &processors, force).await?;
            print!("{}", render(&changes));
            let dropped: u64 = changes.iter().map(|c| c.pending).sum();
            println!(
                "group {name} deleted from {} streams ({dropped} pending entries dropped)",
                changes.len()
            );
        }
    }
    Ok(())
}

/// The table printed after create/reset/delete.
pub fn render(changes: &[ShardChange]) -> String {
    let mut rows = vec![["stream", "position before", "position after", "pending"]
        .map(String::from)
        .to_vec()];
    for c in changes {
        rows.push(vec![
            c.stream.clone(),
            position_or_dash(&c.before),
            position_or_dash(&c.after),
            c.pending.to_string(),
        ]);
    }
    table(&rows)
}
