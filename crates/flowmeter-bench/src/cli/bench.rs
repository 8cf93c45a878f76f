//! `flowmeter bench` and `flowmeter bench ws`: the end-to-end and the
//! WebSocket hub benchmarks, with progress bars and their report tables.

use std::time::Duration;

use clap::{Args, Subcommand};

use crate::bench::cluster::{ClusterBenchOptions, ClusterBenchReport, Target};
use crate::bench::ws::{WsBenchOptions, WsBenchReport};
use crate::bench::{BenchOptions, BenchReport, KeyMode, RunFigures};
use crate::loadgen::KindMix;
use flowmeter::cli::table::table;
use flowmeter::config::Settings;

#[derive(Args)]
pub struct BenchArgs {
    /// `ws`: the WebSocket hub bench instead (see `flowmeter bench ws
    /// --help`); `cluster`: a Redis Cluster beside the single Redis.
    #[command(subcommand)]
    which: Option<BenchWhich>,
    /// Events per run.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Runs; the report gives each and their median.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Event kinds to send.
    #[arg(long, value_enum, default_value = "mixed")]
    kind: KindMix,
    /// Redis key prefix and MySQL database of the bench (deleted first!).
    #[arg(long, default_value = "fmbench")]
    prefix: String,
    #[command(flatten)]
    posting: Posting,
    /// Latency phase: steady load at this share of the run's end-to-end rate…
    #[arg(long, default_value_t = 0.5)]
    latency_share: f64,
    /// …for this many seconds (0 skips it).
    #[arg(long, default_value_t = 15)]
    latency_secs: u64,
    /// Give every POST its own Idempotency-Key (`on`), or run each run
    /// without and then with keys (`both`) to compare the two.
    #[arg(long, value_enum, default_value = "off")]
    idempotency_keys: KeyMode,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

/// How the end-to-end benches post and wait, and their reference.
#[derive(Args)]
struct Posting {
    /// Events per POST /v1/events.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Concurrent POSTs in flight.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Seed of the generated traffic.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Entries written by each redis-benchmark reference.
    #[arg(long, default_value_t = 500_000)]
    reference_entries: u64,
    /// Fail when MySQL makes no progress for this many seconds.
    #[arg(long, default_value_t = 60)]
    stall_secs: u64,
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
    /// The single Redis of the configuration against a Redis Cluster, in one
    /// invocation: end to end on each, `ingest.wait_replicas` 1 against 0 on
    /// the cluster, and the rollup alone with each --workers count on each
    /// (events/s and CPU per event of the workers, Redis and MariaDB), plus
    /// redis-benchmark's pipelined XADD on each. Starts a cluster of
    /// --masters masters with a replica each (redis-server and redis-cli on
    /// the PATH) unless --cluster-nodes names one. Uses its own prefix and
    /// database (--prefix), wiped at every run.
    Cluster(ClusterArgs),
}

#[derive(Args)]
struct ClusterArgs {
    /// Events per run.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    #[command(flatten)]
    posting: Posting,
    /// Rounds (every case once each); the report gives medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Rollup worker counts to time, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    workers: Vec<usize>,
    /// Masters of the cluster started for the bench (each with one replica).
    #[arg(long, default_value_t = 3)]
    masters: usize,
    /// Use this cluster instead (redis:// URLs of some of its nodes,
    /// comma-separated; its masters need a replica each for wait_replicas 1).
    #[arg(long, value_delimiter = ',')]
    cluster_nodes: Vec<String>,
    /// Redis key prefix and MySQL database of the bench (deleted first!).
    #[arg(long, default_value = "fmbenchcl")]
    prefix: String,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

pub async fn run(settings: &Settings, args: BenchArgs) -> anyhow::Result<()> {
    let bars = |quiet: bool| (!quiet).then_some(super::bar as _);
    if let Some(BenchWhich::Ws {
        subscribers,
        rate,
        secs,
        stall_secs,
        prefix,
        quiet,
    }) = args.which
    {
        let opts = WsBenchOptions {
            subscribers,
            rate,
            secs,
            stall_secs,
            prefix,
            progress: bars(quiet),
        };
        let report = crate::bench::ws::run(settings, &opts).await?;
        print!("{}", render_ws(&report));
        return Ok(());
    }
    if let Some(BenchWhich::Cluster(c)) = args.which {
        let opts = ClusterBenchOptions {
            events: c.events,
            batch: c.posting.batch,
            concurrency: c.posting.concurrency,
            runs: c.runs,
            workers: c.workers,
            masters: c.masters,
            cluster_nodes: c.cluster_nodes,
            seed: c.posting.seed,
            prefix: c.prefix,
            reference_entries: c.posting.reference_entries,
            stall_timeout: Duration::from_secs(c.posting.stall_secs),
            progress: bars(c.quiet),
        };
        let report = crate::bench::cluster::run(settings, &opts).await?;
        print!("{}", render_cluster(&report));
        return Ok(());
    }
    let opts = BenchOptions {
        events: args.events,
        batch: args.posting.batch,
        concurrency: args.posting.concurrency,
        runs: args.runs,
        kind: args.kind,
        seed: args.posting.seed,
        prefix: args.prefix,
        reference_entries: args.posting.reference_entries,
        stall_timeout: Duration::from_secs(args.posting.stall_secs),
        latency_share: args.latency_share,
        latency_duration: Duration::from_secs(args.latency_secs),
        progress: bars(args.quiet),
        idempotency_keys: args.idempotency_keys,
    };
    let report = crate::bench::run(settings, &opts).await?;
    print!("{}", render(&report));
    Ok(())
}

/// Two aligned tables (full speed; steady latency phase) of every run
/// and the medians, and the reference; with and without keys apart, and
/// their ingest rates side by side when both were run.
pub fn render(report: &BenchReport) -> String {
    let groups: Vec<bool> = [false, true]
        .into_iter()
        .filter(|k| report.runs.iter().any(|r| r.keyed == *k))
        .collect();
    let mut out = String::new();
    for &keyed in &groups {
        if groups.len() > 1 || keyed {
            out.push_str(if keyed {
                "\n== with Idempotency-Key (one per POST) ==\n"
            } else {
                "== without Idempotency-Key ==\n"
            });
        }
        out.push_str(&render_group(report, keyed));
    }
    if groups.len() > 1 {
        let (off, on) = (report.medians(false), report.medians(true));
        out.push_str(&format!(
            "\nIdempotency-Key: median ingest {:.0} ev/s with, {:.0} without = {:.1} %; p99 {:.1} ms with, {:.1} without\n",
            on.ingest_eps,
            off.ingest_eps,
            100.0 * on.ingest_eps / off.ingest_eps.max(f64::MIN_POSITIVE),
            on.ingest_p99_ms,
            off.ingest_p99_ms
        ));
    }
    let med = report.medians(groups.first().copied().unwrap_or(false));
    match report.reference_xadd_per_s {
        Some(x) => out.push_str(&format!(
            "\nreference: redis-benchmark pipelined XADD {x:.0} entries/s; \
             median end to end = {:.1} % of it\n",
            100.0 * med.e2e_eps / x
        )),
        None => out.push_str("\nreference: not measured (redis-benchmark missing)\n"),
    }
    out
}

/// The two tables of the runs with (`keyed`) or without keys.
fn render_group(report: &BenchReport, keyed: bool) -> String {
    let med = report.medians(keyed);
    let numbered: Vec<(String, &RunFigures)> = report
        .runs
        .iter()
        .filter(|r| r.keyed == keyed)
        .enumerate()
        .map(|(i, f)| ((i + 1).to_string(), f))
        .chain(std::iter::once(("median".to_string(), &med)))
        .collect();
    let full = |name: &String, f: &RunFigures| {
        vec![
            name.clone(),
            f.events.to_string(),
            format!("{:.0}", f.ingest_eps),
            format!("{:.0}", f.e2e_eps),
            format!("{:.1}", f.ingest_p50_ms),
            format!("{:.1}", f.ingest_p99_ms),
            format!("{:.1}", f.rollup_rss_mb),
            format!("{:.1}", f.ingest_rss_mb),
            format!("{:.0}", f.commits_per_min),
        ]
    };
    let steady = |name: &String, f: &RunFigures| {
        vec![
            name.clone(),
            format!("{:.0}", f.steady_eps),
            format!("{:.0}", f.xadd_to_row_p50_ms),
            format!("{:.0}", f.xadd_to_row_p99_ms),
            format!("{:.0}", f.steady_commits_per_min),
        ]
    };
    let head = |cols: &[&str]| cols.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut a = vec![head(&[
        "run",
        "events",
        "ingest ev/s",
        "e2e ev/s",
        "ingest p50 ms",
        "ingest p99 ms",
        "rollup RSS MB",
        "ingest RSS MB",
        "commits/min",
    ])];
    a.extend(numbered.iter().map(|(n, f)| full(n, f)));
    let mut b = vec![head(&[
        "run",
        "steady ev/s",
        "xadd→row p50 ms",
        "xadd→row p99 ms",
        "commits/min",
    ])];
    b.extend(numbered.iter().map(|(n, f)| steady(n, f)));
    let mut out = String::from("full speed (batches posted as fast as accepted):\n");
    out.push_str(&table(&a));
    if report.runs.iter().any(|f| f.steady_eps > 0.0) {
        out.push_str("\nsteady phase (fresh rollup worker, loadgen at a fixed rate):\n");
        out.push_str(&table(&b));
    }
    out
}

/// The cluster bench's tables: end to end per case, the rollup alone per
/// worker count, the wait_replicas comparison and the references.
pub fn render_cluster(report: &ClusterBenchReport) -> String {
    let runs_of = |v: Vec<f64>| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(" · ")
    };
    let head = |cols: &[&str]| cols.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut e2e = vec![head(&[
        "redis",
        "wait_replicas",
        "e2e ev/s (runs)",
        "ingest ev/s",
        "ingest p50 ms",
        "ingest p99 ms",
        "rollup RSS MB",
    ])];
    let mut cases: Vec<(Target, u32)> = Vec::new();
    for r in &report.end_to_end {
        if !cases.contains(&(r.target, r.wait_replicas)) {
            cases.push((r.target, r.wait_replicas));
        }
    }
    for &(target, wait) in &cases {
        let med = report.end_to_end_medians(target, wait);
        let runs = report
            .end_to_end
            .iter()
            .filter(|r| r.target == target && r.wait_replicas == wait)
            .map(|r| r.figures.e2e_eps)
            .collect();
        e2e.push(vec![
            target.name().into(),
            wait.to_string(),
            format!("{:.0} ({})", med.e2e_eps, runs_of(runs)),
            format!("{:.0}", med.ingest_eps),
            format!("{:.1}", med.ingest_p50_ms),
            format!("{:.1}", med.ingest_p99_ms),
            format!("{:.1}", med.rollup_rss_mb),
        ]);
    }
    let mut out = format!(
        "end to end, {} events per run, medians (cluster: {} nodes):\n",
        report.events, report.cluster_nodes
    );
    out.push_str(&table(&e2e));
    let (w0, w1) = (
        report.end_to_end_medians(Target::Cluster, 0),
        report.end_to_end_medians(Target::Cluster, 1),
    );
    if w0.ingest_eps > 0.0 && w1.ingest_eps > 0.0 {
        out.push_str(&format!(
            "wait_replicas 1 against 0 on the cluster: ingest {:.0} against {:.0} ev/s = {:.1} %; p50 {:.1} against {:.1} ms, p99 {:.1} against {:.1} ms\n",
            w1.ingest_eps,
            w0.ingest_eps,
            100.0 * w1.ingest_eps / w0.ingest_eps,
            w1.ingest_p50_ms,
            w0.ingest_p50_ms,
            w1.ingest_p99_ms,
            w0.ingest_p99_ms
        ));
    }
    let mut rollup = vec![head(&[
        "redis",
        "workers",
        "rollup ev/s (runs)",
        "worker CPU µs/event",
        "worker CPU s/s",
        "Redis CPU µs/event",
        "MariaDB CPU µs/event",
    ])];
    let median = crate::bench::median;
    let mut seen: Vec<(Target, usize)> = Vec::new();
    for r in &report.rollup {
        if seen.contains(&(r.target, r.workers)) {
            continue;
        }
        seen.push((r.target, r.workers));
        let runs = report.rollup_runs(r.target, r.workers);
        let of = |f: &dyn Fn(&crate::bench::cluster::RollupRun) -> Option<f64>| -> String {
            let v: Vec<f64> = runs.iter().filter_map(|r| f(r)).collect();
            if v.is_empty() {
                "-".into()
            } else {
                format!("{:.1}", median(v))
            }
        };
        let rates: Vec<f64> = runs.iter().map(|r| r.events_per_sec()).collect();
        rollup.push(vec![
            r.target.name().into(),
            r.workers.to_string(),
            format!("{:.0} ({})", median(rates.clone()), runs_of(rates)),
            of(&|r| Some(r.us_per_event(r.worker_cpu_secs))),
            of(&|r| Some(r.worker_cpu_secs / r.secs.max(f64::MIN_POSITIVE))),
            of(&|r| r.redis_cpu_secs.map(|s| r.us_per_event(s))),
            of(&|r| r.mysql_cpu_secs.map(|s| r.us_per_event(s))),
        ]);
    }
    out.push_str(
        "\nrollup alone (events already in the streams; workers started together; medians):\n",
    );
    out.push_str(&table(&rollup));
    let reference =
        |x: Option<f64>| x.map_or_else(|| "not measured".into(), |x| format!("{x:.0} entries/s"));
    out.push_str(&format!(
        "\nreference: redis-benchmark pipelined XADD: single {}, cluster {}\nload average (1, 5, 15 min): {} before, {} after\n",
        reference(report.reference_single),
        reference(report.reference_cluster),
        report.load_before,
        report.load_after
    ));
    out
}

/// The hub bench's figures, one per row.
pub fn render_ws(report: &WsBenchReport) -> String {
    let rows = vec![
        vec!["figure".to_string(), "value".to_string()],
        vec![
            "subscribers connected".into(),
            format!("{} of {}", report.connected, report.subscribers),
        ],
        vec![
            "connect time s".into(),
            format!("{:.1}", report.connect_secs),
        ],
        vec![
            "events/s flowing in".into(),
            format!("{:.0}", report.events_per_sec),
        ],
        vec![
            "updates received / expected".into(),
            format!("{} / {}", report.updates_received, report.updates_expected),
        ],
        vec![
            "delivery lag p50 ms".into(),
            format!("{:.0}", report.lag_p50_ms),
        ],
        vec![
            "delivery lag p99 ms".into(),
            format!("{:.0}", report.lag_p99_ms),
        ],
        vec![
            "delivery lag max ms".into(),
            format!("{:.0}", report.lag_max_ms),
        ],
        vec![
            "hub RSS MB (end of measurement)".into(),
            format!("{:.1}", report.hub_rss_mb),
        ],
        vec![
            "hub peak RSS MB".into(),
            format!("{:.1}", report.hub_peak_rss_mb),
        ],
        vec![
            "stalled client: hub RSS MB before → after".into(),
            format!(
                "{:.1} → {:.1}",
                report.stall_rss_before_mb, report.stall_rss_after_mb
            ),
        ],
        vec![
            "stalled client: messages dropped".into(),
            format!("{:.0}", report.stall_dropped),
        ],
        vec![
            "stalled client: snapshot after catching up".into(),
            if report.stall_recovered {
                "yes".into()
            } else {
                "NO".into()
            },
        ],
    ];
    table(&rows)
}
