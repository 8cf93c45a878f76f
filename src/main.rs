//! The `flowmeter` binary: parses the command line, loads the config, starts
//! logging, and calls into the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use flowmeter::app::{self, Roles};

/// mimalloc instead of glibc malloc: the hot paths allocate many small,
/// short-lived objects (JSON values, Redis replies), and profiles showed a
/// quarter of the CPU in glibc's malloc/free (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use flowmeter::config::Settings;

/// flowmeter: traffic and bandwidth metrics, event-sourced.
///
/// Collectors POST events to the ingest API, which appends them to Redis
/// Streams; consumer groups fold them into MySQL hourly and daily rollups,
/// exactly once in effect. See README.md and docs/.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Config file (TOML). Without it, ./flowmeter.toml is read when present.
    /// Environment variables FLOWMETER__SECTION__KEY override both.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,

    /// A named setup above the config file: `demo` acts on the data of
    /// `make demo` (prefix and database `fmdemo`). Without it,
    /// FLOWMETER_PROFILE names one. FLOWMETER__SECTION__KEY variables still
    /// override it.
    #[arg(long, global = true, value_name = "NAME")]
    profile: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: ingest API, query API, the processors of processors/
    /// and the realtime WebSocket hub.
    Serve {
        /// Roles to run, comma separated: ingest, api, rollup, hub.
        #[arg(long, default_value = "ingest,api,rollup,hub")]
        roles: String,
        /// Listen address: overrides server.listen, or server.worker_listen
        /// for a process without the ingest, api and hub roles (a rollup worker).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Create the database if missing and apply migrations/.
    Migrate,
    /// Print the effective configuration (passwords masked).
    Config,
    /// Dead letters: entries a group could not process (e.g. undecodable
    /// data), kept in {prefix}:dlq:{group} with the error and the original.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
        /// Consumer group.
        #[arg(long, default_value = "rollup", global = true)]
        group: String,
    },
    /// Consumer groups: list them, create one at a position, move one, delete
    /// one. A group exists once per shard stream; these act on all of them.
    Groups {
        #[command(subcommand)]
        action: GroupsAction,
    },
    /// Rebuild one rollup processor's rows for an event-time range from the
    /// retained stream history, while live processing continues. Idempotent:
    /// rows end equal to a fresh computation over the same events. Ranges
    /// widen to whole windows (hours, days). Refuses when retention has
    /// already dropped entries the range needs.
    Replay {
        /// Processor name (as in processors/*.toml).
        #[arg(long)]
        processor: String,
        /// Start of the range: RFC 3339 time (inclusive).
        #[arg(long)]
        from: String,
        /// End of the range: RFC 3339 time (exclusive); default now.
        #[arg(long)]
        to: Option<String>,
        /// Events may arrive up to this many seconds before their own ts
        /// (clients with clocks ahead): the scan starts this much earlier.
        #[arg(long, default_value_t = 3600)]
        skew_secs: i64,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Apply retention once now (the rollup role does it every
    /// retention.interval_ms): trim each stream by age and length, never past
    /// what a group still needs, except for retention.hard_max_len.
    Trim {
        /// Show what would be trimmed and who holds it back; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Ask the ClickHouse archive about raw events, like GET
    /// /v1/events/search: e.g. the slowest requests of one endpoint
    /// (`--where service=courses --where endpoint=/api/courses/:id
    /// --order-by duration_ms`) or everything one user did (`--where
    /// user_id=u42`). Needs the archive enabled (docs/archive.md).
    Query {
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
    },
    /// Show streams (length, ids, retention window), consumer groups (lag,
    /// lag age, pending, consumers), shard checkpoints and owners, and rollup
    /// workers, as tables. With --max-lag-secs it is a probe: exit code 2 when
    /// a group's lag age exceeds it.
    Status {
        /// Exit 2 when any group's lag age (seconds from its oldest unacked
        /// entry to the stream's newest) is above this.
        #[arg(long, value_name = "SECS")]
        max_lag_secs: Option<f64>,
        /// Print JSON (the same as GET /v1/status) instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Send realistic generated traffic at a steady rate to the ingest API
    /// (default) or straight into the streams (--redis), and report sent,
    /// accepted, rejected, achieved rate and latency. Ctrl-C stops it.
    Loadgen {
        /// Events per second.
        #[arg(long, default_value_t = 1_000.0)]
        rate: f64,
        /// How long, in seconds; 0 = until Ctrl-C.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Event kinds to send.
        #[arg(long, value_enum, default_value = "mixed")]
        kind: flowmeter::loadgen::KindMix,
        /// Events per request (or per XADD pipeline).
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Requests in flight.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Seed of the generated traffic (same seed, same events).
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Base URL of the ingest API (default: http:// + server.listen).
        #[arg(long, value_name = "URL", conflicts_with = "redis")]
        url: Option<String>,
        /// XADD into Redis directly (redis.url, redis.prefix) instead of the API.
        #[arg(long)]
        redis: bool,
        /// Write the exact totals sent, per hour and dimension, to this NDJSON file.
        #[arg(long, value_name = "FILE")]
        truth: Option<PathBuf>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// Trip an alert on purpose: for the first SECS seconds, service
        /// svc-0 fails (every request to it answers 503), which the shipped
        /// `http_error_rate` rule reports after 30 s. Run it beside the
        /// demo, e.g. `--rate 50 --kind http --duration 120 --incident 90`.
        #[arg(long, value_name = "SECS")]
        incident: Option<f64>,
    },
    /// Check a truth file written by `loadgen --truth` against the hourly
    /// rollup tables: compare until they match or --wait runs out, print an
    /// aligned table of every difference, exit 0 when they match, 1 when
    /// they differ.
    Verify {
        /// The truth file (`flowmeter loadgen --truth FILE`).
        #[arg(long, value_name = "FILE")]
        truth: PathBuf,
        /// Seconds to keep comparing while the tables differ (the rollup
        /// workers may still be folding the last events in).
        #[arg(long, value_name = "SECS", default_value_t = 30.0)]
        wait: f64,
        /// Differing rows printed at most (all are counted).
        #[arg(long, value_name = "N", default_value_t = 50)]
        show: usize,
    },
    /// End-to-end benchmark: spawn an ingest and a rollup process, post
    /// generated events in batches, wait until MySQL holds them all, check the
    /// totals, and report events/s, latency, RSS and commits/min next to
    /// redis-benchmark's pipelined XADD rate measured in the same run.
    ///
    /// Uses its own key prefix and database (--prefix), wiped at every run.
    /// Build with --release: the children are this same binary.
    /// `flowmeter bench ws` benchmarks the WebSocket hub instead.
    Bench {
        /// `ws`: the WebSocket hub bench instead (see `flowmeter bench ws --help`).
        #[command(subcommand)]
        which: Option<BenchWhich>,
        /// Events per run.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Events per POST /v1/events.
        #[arg(long, default_value_t = 1_000)]
        batch: usize,
        /// Concurrent POSTs in flight.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Runs; the report gives each and their median.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Event kinds to send.
        #[arg(long, value_enum, default_value = "mixed")]
        kind: flowmeter::loadgen::KindMix,
        /// Seed of the generated traffic.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Redis key prefix and MySQL database of the bench (deleted first!).
        #[arg(long, default_value = "fmbench")]
        prefix: String,
        /// Entries written by the redis-benchmark reference.
        #[arg(long, default_value_t = 500_000)]
        reference_entries: u64,
        /// Fail when MySQL makes no progress for this many seconds.
        #[arg(long, default_value_t = 60)]
        stall_secs: u64,
        /// Latency phase: steady load at this share of the run's end-to-end rate…
        #[arg(long, default_value_t = 0.5)]
        latency_share: f64,
        /// …for this many seconds (0 skips it).
        #[arg(long, default_value_t = 15)]
        latency_secs: u64,
        /// Give every POST its own Idempotency-Key (`on`), or run each run
        /// without and then with keys (`both`) to compare the two.
        #[arg(long, value_enum, default_value = "off")]
        idempotency_keys: flowmeter::bench::KeyMode,
        /// No progress bars.
        #[arg(long)]
        quiet: bool,
    },
}

#[derive(Subcommand)]
enum BenchWhich {
    /// Many WebSocket subscribers on one hub process (a child `serve --roles
    /// hub`) while events are XADDed at --rate: delivery lag from each
    /// second's close on the hub to receipt (p50/p99), hub RSS, and a client
    /// that stops reading (the hub's memory must stay flat). Uses its own
    /// prefix and database (--prefix), wiped first.
    Ws {
        #[arg(long, default_value_t = 10_000)]
        subscribers: usize,
        /// Events per second flowing in.
        #[arg(long, default_value_t = 20_000.0)]
        rate: f64,
        /// Measured seconds.
        #[arg(long, default_value_t = 30)]
        secs: u64,
        /// Seconds the stalled client does not read.
        #[arg(long, default_value_t = 15)]
        stall_secs: u64,
        #[arg(long, default_value = "fmbenchws")]
        prefix: String,
        #[arg(long)]
        quiet: bool,
    },
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
        from: flowmeter::stream::StartFrom,
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
        to: flowmeter::stream::StartFrom,
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
    },
    /// Delete every dead letter of the group.
    Purge {
        /// Required: purging cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // each cause once, without the backtrace RUST_BACKTRACE adds to
            // anyhow's Debug form
            eprintln!("{}", flowmeter::human::error_report(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut settings = Settings::load(cli.config.as_deref(), cli.profile.as_deref())
        .context("loading the configuration")?;
    match cli.command {
        Command::Config => {
            print!("{}", settings.to_masked_toml());
        }
        Command::Query {
            kind,
            from,
            to,
            filters,
            min,
            order_by,
            asc,
            limit,
            json,
        } => {
            query(
                &settings, kind, from, to, filters, min, order_by, asc, limit, json,
            )
            .await?;
        }
        Command::Status { max_lag_secs, json } => {
            flowmeter::telemetry::init();
            let status = app::status(&settings).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.render());
            }
            if let Some(limit) = max_lag_secs {
                let behind = status.lagging(limit);
                for (stream, group, age) in &behind {
                    eprintln!("group {group} on {stream} is {age:.1} s behind (limit {limit} s)");
                }
                if !behind.is_empty() {
                    eprintln!(
                        "are the groups' workers running and keeping up? see GROUPS and WORKERS above"
                    );
                    std::process::exit(2);
                }
            }
        }
        Command::Replay {
            processor,
            from,
            to,
            skew_secs,
            quiet,
        } => {
            flowmeter::telemetry::init();
            let time = |s: &str, what: &str| {
                flowmeter::event::parse_ts(s).map_err(|e| {
                    anyhow::anyhow!("--{what} {s:?}: {e} (use RFC 3339, e.g. 2026-11-23T08:00:00Z)")
                })
            };
            let opts = flowmeter::processor::rollup::ReplayOptions {
                from_ms: time(&from, "from")?,
                to_ms: match &to {
                    Some(t) => time(t, "to")?,
                    None => chrono::Utc::now().timestamp_millis(),
                },
                skew_ms: skew_secs.max(0).saturating_mul(1000),
            };
            let bar = (!quiet).then(|| {
                let b = indicatif::ProgressBar::new_spinner();
                b.set_style(flowmeter::human::progress_style(
                    "{spinner} replay {msg}: {human_pos} entries scanned ({rate}) {elapsed}",
                ));
                b.set_message(processor.clone());
                b.enable_steady_tick(std::time::Duration::from_millis(200));
                b
            });
            let report = app::replay(&settings, &processor, &opts, bar.as_ref()).await;
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            print!("{}", report?.render());
        }
        Command::Trim { dry_run } => {
            let schemas = flowmeter::event::SchemaRegistry::load(&settings.paths.schemas)?;
            let (redis, keys) = app::redis_and_keys(&settings).await?;
            let streams = flowmeter::retention::all_streams(&keys, &schemas);
            let results = if dry_run {
                let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
                let mut v = Vec::new();
                for s in &streams {
                    let p =
                        flowmeter::retention::plan(&redis, s, &settings.retention, now_ms).await?;
                    let t = flowmeter::retention::would_trim(&redis, &p, 1_000_000).await?;
                    v.push((p, t));
                }
                v
            } else {
                flowmeter::retention::pass(&redis, &keys, &streams, &settings.retention).await?
            };
            print!("{}", flowmeter::retention::render(&results, dry_run));
        }
        Command::Groups { action } => {
            use flowmeter::groups;
            let schemas = flowmeter::event::SchemaRegistry::load(&settings.paths.schemas)?;
            let processors = flowmeter::processor::ProcessorRegistry::load(
                &settings.paths.processors,
                &schemas,
            )?;
            let (redis, keys) = app::redis_and_keys(&settings).await?;
            let streams = |name: &str, kinds: &[String]| {
                groups::streams_for(name, kinds, &keys, &schemas, &processors)
            };
            match action {
                GroupsAction::List { json } => {
                    let status = flowmeter::status::gather(
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
                        print!("{}", flowmeter::status::render_groups(&status.groups));
                    }
                }
                GroupsAction::Create { name, from, kinds } => {
                    let changes =
                        groups::create(&redis, &streams(&name, &kinds)?, &name, from).await?;
                    print!("{}", groups::render(&changes));
                    println!(
                        "group {name} created on {} streams at {from}",
                        changes.len()
                    );
                }
                GroupsAction::Reset { name, to, kinds } => {
                    let changes =
                        groups::reset(&redis, &streams(&name, &kinds)?, &name, to).await?;
                    print!("{}", groups::render(&changes));
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
                    print!("{}", flowmeter::table::table(&rows));
                    let n: u64 = done.iter().map(|c| c.claimed).sum();
                    println!(
                        "{n} entries of group {name} idle ≥ {idle_secs} s now pending on {to}"
                    );
                }
                GroupsAction::Delete { name, kinds, force } => {
                    let changes =
                        groups::delete(&redis, &streams(&name, &kinds)?, &name, &processors, force)
                            .await?;
                    print!("{}", groups::render(&changes));
                    let dropped: u64 = changes.iter().map(|c| c.pending).sum();
                    println!(
                        "group {name} deleted from {} streams ({dropped} pending entries dropped)",
                        changes.len()
                    );
                }
            }
        }
        Command::Dlq { action, group } => {
            let (redis, keys) = app::redis_and_keys(&settings).await?;
            match action {
                DlqAction::List { count } => {
                    let letters = flowmeter::dlq::list(&redis, &keys, &group, "-", count).await?;
                    let total = flowmeter::dlq::len(&redis, &keys, &group).await?;
                    print!("{}", flowmeter::dlq::render(&letters));
                    println!("{} of {total} dead letters of group {group}", letters.len());
                }
                DlqAction::Show { dlq_id } => {
                    let found = flowmeter::dlq::list(&redis, &keys, &group, &dlq_id, 1).await?;
                    match found.first().filter(|d| d.dlq_id == dlq_id) {
                        Some(d) => println!("{}", serde_json::to_string_pretty(d)?),
                        None => anyhow::bail!(
                            "no dead letter {dlq_id} for group {group}; `flowmeter dlq list` shows the ids"
                        ),
                    }
                }
                DlqAction::Retry { dlq_ids, all } => {
                    let letters = if all {
                        flowmeter::dlq::list(&redis, &keys, &group, "-", usize::MAX >> 1).await?
                    } else if dlq_ids.is_empty() {
                        anyhow::bail!("name the dead letters to retry, or pass --all");
                    } else {
                        let mut v = Vec::new();
                        for id in &dlq_ids {
                            let found = flowmeter::dlq::list(&redis, &keys, &group, id, 1).await?;
                            match found.into_iter().find(|d| &d.dlq_id == id) {
                                Some(d) => v.push(d),
                                None => anyhow::bail!("no dead letter {id} for group {group}"),
                            }
                        }
                        v
                    };
                    let n = flowmeter::dlq::retry(&redis, &keys, &group, &letters).await?;
                    println!("{n} dead letters re-appended to their streams");
                }
                DlqAction::Purge { yes } => {
                    if !yes {
                        anyhow::bail!("purging cannot be undone; pass --yes");
                    }
                    let n = flowmeter::dlq::purge(&redis, &keys, &group).await?;
                    println!("{n} dead letters of group {group} deleted");
                }
            }
        }
        Command::Migrate => {
            flowmeter::telemetry::init();
            let clickhouse = app::migrate(&settings).await?;
            println!(
                "migrations applied to {}",
                flowmeter::config::mask_url(&settings.mysql.url)
            );
            if !clickhouse.is_empty() {
                println!(
                    "ClickHouse migrations applied to {} ({}): {}",
                    flowmeter::config::mask_url(&settings.clickhouse.url),
                    settings.clickhouse.database,
                    clickhouse.join(", ")
                );
            }
        }
        Command::Loadgen {
            rate,
            duration,
            kind,
            batch,
            concurrency,
            seed,
            url,
            redis,
            truth,
            quiet,
            incident,
        } => {
            use flowmeter::loadgen::{LoadOptions, Target};
            let target = if redis {
                Target::Redis
            } else {
                Target::Api(url.unwrap_or_else(|| format!("http://{}", settings.server.listen)))
            };
            let opts = LoadOptions {
                rate,
                duration: (duration > 0.0).then(|| std::time::Duration::from_secs_f64(duration)),
                kind,
                batch,
                concurrency,
                seed,
                target,
                truth,
                progress: !quiet,
                incident: match incident {
                    Some(s) if s.is_finite() && s > 0.0 => {
                        Some(std::time::Duration::from_secs_f64(s.min(86_400.0)))
                    }
                    Some(s) => anyhow::bail!(
                        "--incident {s}: give the outage's length in seconds, more than 0"
                    ),
                    None => None,
                },
            };
            let stop = CancellationToken::new();
            tokio::spawn(stop_on_signal(stop.clone()));
            let report = flowmeter::loadgen::run(&settings, &opts, stop).await?;
            print!("{}", report.render());
            if report.accepted == 0 && report.sent > 0 {
                anyhow::bail!("nothing was accepted; see the first error above");
            }
        }
        Command::Verify { truth, wait, show } => {
            let opts = flowmeter::loadgen::verify::VerifyOptions {
                truth,
                wait: std::time::Duration::try_from_secs_f64(wait.max(0.0))
                    .context("--wait: a number of seconds")?,
            };
            let stop = CancellationToken::new();
            tokio::spawn(stop_on_signal(stop.clone()));
            let report = flowmeter::loadgen::verify::run(&settings, &opts, stop).await?;
            print!("{}", report.render(show));
            if !report.matches() {
                anyhow::bail!(
                    "the tables differ from {} (see above)",
                    opts.truth.display()
                );
            }
        }
        Command::Bench {
            which:
                Some(BenchWhich::Ws {
                    subscribers,
                    rate,
                    secs,
                    stall_secs,
                    prefix,
                    quiet,
                }),
            ..
        } => {
            let opts = flowmeter::bench::ws::WsBenchOptions {
                subscribers,
                rate,
                secs,
                stall_secs,
                prefix,
                progress: !quiet,
            };
            let report = flowmeter::bench::ws::run(&settings, &opts).await?;
            print!("{}", report.render());
        }
        Command::Bench {
            which: None,
            events,
            batch,
            concurrency,
            runs,
            kind,
            seed,
            prefix,
            reference_entries,
            stall_secs,
            latency_share,
            latency_secs,
            idempotency_keys,
            quiet,
        } => {
            let opts = flowmeter::bench::BenchOptions {
                events,
                batch,
                concurrency,
                runs,
                kind,
                seed,
                prefix,
                reference_entries,
                stall_timeout: std::time::Duration::from_secs(stall_secs),
                latency_share,
                latency_duration: std::time::Duration::from_secs(latency_secs),
                progress: !quiet,
                idempotency_keys,
            };
            let report = flowmeter::bench::run(&settings, &opts).await?;
            print!("{}", report.render());
        }
        Command::Serve { roles, listen } => {
            flowmeter::telemetry::init();
            let roles: Roles = roles.parse()?;
            if let Some(l) = listen {
                if roles.serves_data() {
                    settings.server.listen = l;
                } else {
                    settings.server.worker_listen = l;
                }
            }
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            app::serve(settings, roles, None, shutdown).await?;
        }
    }
    Ok(())
}

/// Cancels `token` on SIGTERM or Ctrl-C.
async fn stop_on_signal(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    token.cancel();
}

/// `flowmeter query`.
#[allow(clippy::too_many_arguments)]
async fn query(
    settings: &Settings,
    kind: String,
    from: Option<String>,
    to: Option<String>,
    filters: Vec<String>,
    min: Vec<String>,
    order_by: Option<String>,
    asc: bool,
    limit: u64,
    json: bool,
) -> anyhow::Result<()> {
    #[cfg(feature = "clickhouse")]
    {
        use anyhow::Context as _;
        let time = |name: &str, v: &str| {
            chrono::DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&chrono::Utc))
                .with_context(|| format!("--{name} {v:?}: use RFC 3339, e.g. 2026-11-30T10:00:00Z"))
        };
        let to = match &to {
            Some(v) => time("to", v)?,
            None => chrono::Utc::now(),
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
        let search = flowmeter::processor::clickhouse_archive::client::Search {
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
        let found = app::query_archive(settings, &kind, search).await?;
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "from": from.to_rfc3339(), "to": to.to_rfc3339(), "total": found.total,
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
        print!("{}", flowmeter::table::table(&rows));
        if found.truncated {
            println!("(cut at query.max_response_bytes: narrow the search or lower --limit)");
        }
        println!(
            "{} of {} matching {kind} events from {} to {}",
            found.rows.len(),
            found.total,
            from.to_rfc3339(),
            to.to_rfc3339()
        );
        Ok(())
    }
    #[cfg(not(feature = "clickhouse"))]
    {
        let _ = (
            settings, kind, from, to, filters, min, order_by, asc, limit, json,
        );
        anyhow::bail!("this flowmeter was built without the `clickhouse` feature")
    }
}
