//! `flowmeter trim`: one retention pass now, or with `--dry-run` what it
//! would trim and who holds it back.

use clap::Args;

use super::human::position_or_dash;
use super::table::table;
use crate::config::Settings;
use crate::event::SchemaRegistry;
use crate::retention::{self, TrimPlan, Trimmed};

#[derive(Args)]
pub struct TrimArgs {
    /// Show what would be trimmed and who holds it back; change nothing.
    #[arg(long)]
    dry_run: bool,
}

pub async fn run(settings: &Settings, args: TrimArgs) -> anyhow::Result<()> {
    let schemas = SchemaRegistry::load(&settings.paths.schemas)?;
    let (redis, keys) = crate::app::redis_and_keys(settings).await?;
    let streams = retention::all_streams(&keys, &schemas);
    let results = if args.dry_run {
        retention::dry_run(&redis, &streams, &settings.retention).await?
    } else {
        retention::pass(&redis, &keys, &streams, &settings.retention).await?
    };
    print!("{}", render(&results, args.dry_run));
    Ok(())
}

/// The table printed by `flowmeter trim`.
pub fn render(results: &[(TrimPlan, Trimmed)], dry_run: bool) -> String {
    let dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    let time = position_or_dash;
    let mut rows = vec![[
        "stream",
        "length",
        "trim to",
        if dry_run { "would trim" } else { "trimmed" },
        "held back by",
        "held s",
        "unread dropped",
    ]
    .map(String::from)
    .to_vec()];
    for (p, t) in results {
        let forced = &t.forced;
        rows.push(vec![
            p.stream.clone(),
            p.length.to_string(),
            time(&p.trim_to),
            t.entries.to_string(),
            dash(&p.held_by),
            format!("{:.0}", p.held_secs),
            if forced.is_empty() {
                "0".into()
            } else {
                forced
                    .iter()
                    .map(|(g, n)| format!("{g}:{n}"))
                    .collect::<Vec<_>>()
                    .join(",")
            },
        ]);
    }
    let mut out = table(&rows);
    if results.iter().any(|(p, _)| p.held_by.is_some()) {
        out.push_str("a group holds retention back: it has not read or acknowledged older entries (see `flowmeter groups list`)\n");
    }
    out
}
