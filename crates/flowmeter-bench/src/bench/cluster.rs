//! `flowmeter bench cluster`: the Redis Cluster figures (issue 16) in one
//! invocation, set against the single Redis of the configuration.
//!
//! A round runs, each case on a wiped prefix and database:
//! 1. end to end, as `flowmeter bench` without its steady phase: on the
//!    single Redis, then on the cluster with `ingest.wait_replicas` 0, then 1;
//! 2. the rollup alone, for each worker count: every event is ingested with
//!    no worker running, then that many rollup workers start together and
//!    are timed from their start to the last event committed, with the CPU
//!    time (from /proc) the workers, the Redis servers and MariaDB spent;
//!    on the single Redis, then on the cluster.
//!
//! Rounds repeat `runs` times, so the machine's drift hits every case alike;
//! the report gives medians. Every run checks the rollup tables against what
//! was sent, as `flowmeter bench` does. The references, measured in the same
//! invocation: redis-benchmark's pipelined XADD on the single Redis and on
//! the cluster (`--cluster`), and the load average before and after.
//!
//! The cluster is the one `--cluster-nodes` names, else one started for the
//! bench ([`LocalCluster`]).

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::nodes::{self, LocalCluster};
use super::{
    bench_settings, check_truth, cpu_secs, generate, http_client, one_run, post_all,
    reference_xadd, reset, server_exe, start_stack, wait_committed, BenchError, BenchOptions,
    BenchReport, KeyMode, RunFigures, Sending,
};
use crate::loadgen::{BarMaker, KindMix, Truth, TruthTable};
use flowmeter::config::Settings;
use flowmeter::store::Store;

/// What to run.
#[derive(Debug, Clone)]
pub struct ClusterBenchOptions {
    /// Events per run.
    pub events: u64,
    /// Events per POST.
    pub batch: usize,
    /// Concurrent POSTs in flight.
    pub concurrency: usize,
    /// Rounds; the report gives each figure's median.
    pub runs: usize,
    /// Rollup worker counts to time.
    pub workers: Vec<usize>,
    /// Masters of the cluster started for the bench (each with a replica).
    pub masters: usize,
    /// An existing cluster's nodes instead (any of them; more in case some are down).
    pub cluster_nodes: Vec<String>,
    pub seed: u64,
    /// Key prefix and database of the bench (wiped at each run).
    pub prefix: String,
    /// Entries of each redis-benchmark reference.
    pub reference_entries: u64,
    /// Give up when MySQL makes no progress for this long.
    pub stall_timeout: Duration,
    /// Draws each phase's progress; `None` draws nothing.
    pub progress: Option<BarMaker>,
}

/// Which Redis a figure was measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The configuration's `redis.url`.
    Single,
    Cluster,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Single => "single",
            Target::Cluster => "cluster",
        }
    }
}

/// One end-to-end run.
#[derive(Debug, Clone)]
pub struct EndToEnd {
    pub target: Target,
    pub wait_replicas: u32,
    pub figures: RunFigures,
}

/// One run of the rollup alone.
#[derive(Debug, Clone)]
pub struct RollupRun {
    pub target: Target,
    pub workers: usize,
    pub events: u64,
    /// From the workers' start to the last event committed.
    pub secs: f64,
    /// CPU time the workers used, together.
    pub worker_cpu_secs: f64,
    /// CPU time of the Redis servers over the same span (every node of the
    /// cluster); `None` when they do not run on this machine.
    pub redis_cpu_secs: Option<f64>,
    /// CPU time of MariaDB over the same span; `None` when not local.
    pub mysql_cpu_secs: Option<f64>,
}

impl RollupRun {
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.secs.max(f64::MIN_POSITIVE)
    }

    /// Microseconds of CPU per event of `secs` CPU seconds.
    pub fn us_per_event(&self, secs: f64) -> f64 {
        secs * 1e6 / (self.events.max(1) as f64)
    }
}

/// Everything `bench cluster` measured.
#[derive(Debug, Clone)]
pub struct ClusterBenchReport {
    /// Nodes of the cluster (masters and replicas).
    pub cluster_nodes: usize,
    pub events: u64,
    pub end_to_end: Vec<EndToEnd>,
    pub rollup: Vec<RollupRun>,
    /// redis-benchmark pipelined XADD entries/s, same invocation.
    pub reference_single: Option<f64>,
    pub reference_cluster: Option<f64>,
    /// `/proc/loadavg` before and after.
    pub load_before: String,
    pub load_after: String,
}

impl ClusterBenchReport {
    /// The medians of the end-to-end runs of one case.
    pub fn end_to_end_medians(&self, target: Target, wait_replicas: u32) -> RunFigures {
        let runs = self
            .end_to_end
            .iter()
            .filter(|r| r.target == target && r.wait_replicas == wait_replicas)
            .map(|r| r.figures.clone())
            .collect();
        BenchReport {
            runs,
            reference_xadd_per_s: None,
        }
        .medians(false)
    }

    /// The runs of the rollup alone of one case.
    pub fn rollup_runs(&self, target: Target, workers: usize) -> Vec<&RollupRun> {
        self.rollup
            .iter()
            .filter(|r| r.target == target && r.workers == workers)
            .collect()
    }
}

/// The end-to-end cases of a round, in order.
const END_TO_END: [(Target, u32); 3] = [
    (Target::Single, 0),
    (Target::Cluster, 0),
    (Target::Cluster, 1),
];

pub async fn run(
    base: &Settings,
    opts: &ClusterBenchOptions,
) -> Result<ClusterBenchReport, BenchError> {
    if opts.batch == 0 || opts.concurrency == 0 || opts.events == 0 || opts.workers.contains(&0) {
        return Err(BenchError::Setup(
            "--events, --batch, --concurrency and every --workers count must be positive".into(),
        ));
    }
    if base.redis.cluster {
        return Err(BenchError::Setup(
            "the single Redis of the comparison is redis.url: run with redis.cluster = false, and name an existing cluster with --cluster-nodes (else one is started)".into(),
        ));
    }
    server_exe()?;
    let single = bench_settings(base, &opts.prefix)?;
    let started = match opts.cluster_nodes.is_empty() {
        true => {
            eprintln!(
                "starting a Redis Cluster of {} masters with a replica each…",
                opts.masters
            );
            Some(LocalCluster::start(opts.masters, &single.redis.url).await?)
        }
        false => None,
    };
    let urls = started
        .as_ref()
        .map_or_else(|| opts.cluster_nodes.clone(), LocalCluster::urls);
    let mut cluster = single.clone();
    cluster.redis.cluster = true;
    cluster.redis.url = urls.first().cloned().unwrap_or_default();
    cluster.redis.cluster_nodes = urls.iter().skip(1).cloned().collect();
    let settings = |t: Target| match t {
        Target::Single => &single,
        Target::Cluster => &cluster,
    };

    let bench = BenchOptions {
        events: opts.events,
        batch: opts.batch,
        concurrency: opts.concurrency,
        runs: opts.runs,
        kind: KindMix::Mixed,
        seed: opts.seed,
        prefix: opts.prefix.clone(),
        reference_entries: opts.reference_entries,
        stall_timeout: opts.stall_timeout,
        latency_share: 0.0,
        latency_duration: Duration::ZERO,
        progress: opts.progress,
        idempotency_keys: KeyMode::Off,
    };
    eprintln!("generating {} events (seed {})…", opts.events, opts.seed);
    let (bodies, truth, table) = generate(&bench);
    let load_before = loadavg();
    let reference = |r: Result<f64, String>| match r {
        Ok(x) => Some(x),
        Err(e) => {
            eprintln!("reference not measured: {e}");
            None
        }
    };
    let reference_single = reference(reference_xadd(&single, &bench).await);
    let reference_cluster = reference(reference_xadd(&cluster, &bench).await);
    let mut end_to_end = Vec::new();
    let mut rollup = Vec::new();
    let rounds = opts.runs.max(1);
    for round in 1..=rounds {
        for (target, wait_replicas) in END_TO_END {
            eprintln!(
                "round {round}/{rounds}: end to end, {}, wait_replicas {wait_replicas}",
                target.name()
            );
            let mut s = settings(target).clone();
            s.ingest.wait_replicas = wait_replicas;
            let figures = one_run(&s, &bench, &bodies, truth, &table, false).await?;
            end_to_end.push(EndToEnd {
                target,
                wait_replicas,
                figures,
            });
        }
        for &workers in &opts.workers {
            for target in [Target::Single, Target::Cluster] {
                eprintln!(
                    "round {round}/{rounds}: rollup alone, {}, {workers} worker(s)",
                    target.name()
                );
                let traffic = Traffic {
                    bodies: &bodies,
                    truth,
                    table: &table,
                };
                let case = (target, workers);
                rollup.push(rollup_alone(settings(target), &bench, &traffic, case).await?);
            }
        }
    }
    Ok(ClusterBenchReport {
        cluster_nodes: urls.len(),
        events: truth.events(),
        end_to_end,
        rollup,
        reference_single,
        reference_cluster,
        load_before,
        load_after: loadavg(),
    })
}

/// The bodies a run posts and what they add up to.
struct Traffic<'a> {
    bodies: &'a [Bytes],
    truth: Truth,
    table: &'a TruthTable,
}

/// Ingests every event with no rollup worker running, then starts `workers`
/// workers together and times them until MySQL holds every event
/// (`settings` are `target`'s).
async fn rollup_alone(
    settings: &Settings,
    opts: &BenchOptions,
    traffic: &Traffic<'_>,
    (target, workers): (Target, usize),
) -> Result<RollupRun, BenchError> {
    reset(settings).await?;
    let http = http_client(opts.concurrency)?;
    let mut stack = start_stack(settings, &http, 0).await?;
    let store = Store::from_config(&settings.mysql, 2).await?;
    let total = traffic.truth.events();
    let how = Sending {
        concurrency: opts.concurrency,
        keyed: false,
        events: total,
    };
    let posted = post_all(&http, &stack, traffic.bodies, how, opts.progress).await?;
    if posted.accepted != total {
        return Err(BenchError::Run(format!(
            "{} of {total} events accepted",
            posted.accepted
        )));
    }
    let redis_pids = nodes::local_pids(settings).await;
    let mysql_pid = mysql_pid(settings, &store).await;
    let redis_before = cpu_of(&redis_pids);
    let mysql_before = cpu_of(&Vec::from_iter(mysql_pid));
    let start = Instant::now();
    stack.add_rollups(workers)?;
    wait_committed(&store, &mut stack, total, opts.stall_timeout, opts.progress).await?;
    let secs = start.elapsed().as_secs_f64();
    let worker_pids: Vec<u32> = stack.rollups.iter().filter_map(|c| c.id()).collect();
    let worker_cpu_secs = cpu_of(&worker_pids).unwrap_or(0.0);
    let since = |before: Option<f64>, now: Option<f64>| Some(now? - before?);
    let redis_cpu_secs = since(redis_before, cpu_of(&redis_pids));
    let mysql_cpu_secs = since(mysql_before, cpu_of(&Vec::from_iter(mysql_pid)));
    check_truth(&store, &traffic.truth, traffic.table).await?;
    stack.kill().await;
    Ok(RollupRun {
        target,
        workers,
        events: total,
        secs,
        worker_cpu_secs,
        redis_cpu_secs,
        mysql_cpu_secs,
    })
}

/// CPU seconds of `pids` together; `None` without pids or when one cannot be read.
fn cpu_of(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| cpu_secs(*p)).sum()
}

/// MariaDB's process id when it runs on this machine (`@@pid_file`).
async fn mysql_pid(settings: &Settings, store: &Store) -> Option<u32> {
    if !nodes::is_loopback(&settings.mysql.url) {
        return None;
    }
    let file: String = sqlx::query_scalar("SELECT @@pid_file")
        .fetch_one(store.pool())
        .await
        .ok()?;
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// The three load averages of `/proc/loadavg`.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}
