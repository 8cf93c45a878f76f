//! The shard core: everything a processor's exactly-once (rollup) or
//! at-least-once (sinks) guarantee rests on, written once.
//!
//! A processor implements [`ShardHandler`]: take one entry into its held
//! state ([`ShardHandler::apply`]), make the held state durable
//! ([`ShardHandler::commit`]: one MySQL transaction, or a delivery the
//! downstream system confirmed), and say what a commit did
//! ([`ShardHandler::committed`]). [`ShardProcessor`] runs it and owns the
//! rest:
//!
//! - `shard.rs`: shard leases and their lifecycle (acquired, lost,
//!   surplus, regained), each shard's generation, restarting every shard
//!   from its pending list;
//! - `reader.rs`: the fenced readers (pending list first, then new entries);
//! - `runner.rs`: the loop, batching by count and time, the graceful stop;
//! - `flush.rs`: one commit, with the leases kept alive, then the dead
//!   letters and the acknowledgements;
//! - `policy.rs`: the suspect, poison and dead-letter policy ([`SOLO_ATTEMPTS`],
//!   narrowing a refused commit down to one entry);
//! - `backoff.rs`: the pause between failed commits;
//! - `stats.rs`: the figures a runner publishes for `flowmeter status`.
//!
//! Entries are acknowledged (XACK) only after the commit that holds their
//! effect. A processor with a [`Fence::Checkpoint`] also moves, in the same
//! transaction, each shard's checkpoint by compare-and-set, so its effects
//! land exactly once; one with [`Fence::Lease`] relies on the lease-fenced
//! reads only and delivers at least once. docs/guarantees.md says why each
//! failure is safe.

mod backoff;
mod flush;
mod policy;
pub mod reader;
mod runner;
mod shard;
mod stats;

use std::future::Future;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

pub use backoff::Backoff;
pub use policy::SOLO_ATTEMPTS;
pub use stats::{KeyBudgetStatus, RunnerStats};

use super::{Processor, ProcessorContext, ProcessorError};
use crate::stream::{Entry, Keys, Shard, StreamId};
use crate::telemetry::Counter;

/// What a processor does with the entries of the shards it owns. Every
/// method runs on the runner's task, one at a time.
pub trait ShardHandler: Send + 'static {
    /// The position of `stream` committed together with the effects, for a
    /// [`Fence::Checkpoint`] processor; entries at or below it are
    /// acknowledged without being applied. `None` when the processor keeps
    /// no such position ([`Fence::Lease`]).
    fn checkpoint<'a>(
        &'a mut self,
        stream: &'a str,
    ) -> impl Future<Output = Result<Option<StreamId>, ProcessorError>> + Send + 'a;

    /// Takes one entry into the held state. `Err` is why it can never be
    /// taken: the core dead-letters it with that reason (and acknowledges
    /// it with the next commit).
    fn apply(&mut self, from: &Origin<'_>, entry: &Entry) -> Result<(), String>;

    /// Makes everything applied since the last commit durable and, on
    /// success, forgets it. `moves` are the shards whose entries it holds,
    /// each with the checkpoint loaded and the last entry applied (for a
    /// [`Fence::Checkpoint`] processor to move in the same transaction).
    /// On `Err` the held state must stay as it was: the core retries, or
    /// calls [`ShardHandler::discard`] and reads again.
    fn commit<'a>(
        &'a mut self,
        moves: &'a [Move],
    ) -> impl Future<Output = Result<Committed, CommitError>> + Send + 'a;

    /// After a commit (and its acknowledgements): the processor's own
    /// metrics, logs and figures. `events` entries were applied, giving
    /// `rows` rows (messages) downstream.
    fn committed(&mut self, events: u64, rows: u64, stats: &mut RunnerStats);

    /// Drops everything held: the entries are read again from the pending lists.
    fn discard(&mut self);

    /// Drops what is held of one shard (its lease was lost). Only called
    /// for [`Fence::Lease`] processors.
    fn discard_shard(&mut self, shard: &Shard);

    /// Before a single entry is blamed for a refused commit: a fault that
    /// would make every entry look guilty (e.g. a table altered under the
    /// processor), which stalls the processor instead.
    fn fault(&self) -> impl Future<Output = Option<String>> + Send + '_ {
        async { None }
    }
}

/// Where an entry came from.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub shard: &'a Shard,
    /// The stream key of the shard.
    pub stream: &'a str,
}

/// One shard a commit holds entries of.
#[derive(Debug, Clone)]
pub struct Move {
    pub shard: Shard,
    pub stream: String,
    /// The checkpoint loaded (or last committed).
    pub from: StreamId,
    /// The last entry taken since.
    pub to: StreamId,
}

/// One entry for the dead-letter stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Letter {
    pub stream: String,
    pub id: StreamId,
    pub reason: String,
    pub data: Option<String>,
}

/// What a successful commit did.
#[derive(Debug, Default)]
pub struct Committed {
    /// Rows written (messages delivered).
    pub rows: u64,
    /// Entries the downstream system refused for good while committing:
    /// dead-lettered before they are acknowledged.
    pub rejected: Vec<Letter>,
}

/// Why a commit did not happen; each variant is what the core does next.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// A lock conflict: the same commit is tried again at once, up to
    /// `rollup.max_flush_retries` times, then it counts as `Failed`.
    #[error("{0}")]
    Conflict(String),
    /// Another worker committed one of the shards (a checkpoint moved): all
    /// held state is dropped and every shard read again from its pending list.
    #[error("{0}")]
    Moved(String),
    /// The data was refused and it is not known which entry is at fault:
    /// the entries are read again and committed in smaller and smaller
    /// commits until the one responsible is alone, then dead-lettered.
    #[error("{0}")]
    Refused(String),
    /// Anything else (infrastructure): the state is held, reading pauses
    /// and the commit is retried after a backoff.
    #[error("{0}")]
    Failed(String),
}

/// How a processor's commits are fenced against a second owner of a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// Each commit moves the shards' checkpoints by compare-and-set in the
    /// same transaction as the effects: the held state of a lost shard may
    /// still be committed (it fails if another worker moved on), and is
    /// kept if the lease comes back before.
    Checkpoint,
    /// Only the reads are fenced: the held entries of a lost shard are
    /// dropped at once (the next owner delivers them from the pending list).
    Lease,
}

/// When the held state is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    /// How often the runner looks whether a commit is due.
    pub tick: Duration,
    /// A commit is due once the oldest held entry waited this long (zero:
    /// at every tick).
    pub max_wait: Duration,
    /// ... or once this many entries are held (reading pauses meanwhile).
    pub max_events: usize,
}

/// The counters a runner moves besides the shared ones.
#[derive(Clone, Copy)]
pub struct Metrics {
    /// Failed commits (retried).
    pub failures: &'static Counter,
    /// Entries dead-lettered, if the processor counts them.
    pub invalid: Option<&'static Counter>,
}

/// What the core needs to know of a processor, fixed when it is built.
#[derive(Clone)]
pub struct Spec {
    pub name: String,
    pub group: String,
    /// Noun for the start and stop logs (`rollup`, `sink`).
    pub role: &'static str,
    /// Every shard it reads, with its stream key: the shards of `kinds` in
    /// every shard set read (see [`Spec::refresh`]), then `extra`.
    pub shards: Vec<(Shard, String)>,
    pub kinds: Vec<String>,
    /// Streams besides the kinds' shards (each the single shard of a
    /// pseudo-kind, e.g. the alerts stream).
    pub extra: Vec<(Shard, String)>,
    /// The `XGROUP CREATE` id of a new group.
    pub start: String,
    pub cadence: Cadence,
    pub backoff: Backoff,
    /// Longest one commit may take before it is abandoned (and retried).
    pub commit_timeout: Duration,
    pub fence: Fence,
    pub metrics: Metrics,
}

impl Spec {
    /// The shards of `kinds`, then `extra` streams (each the single shard
    /// of a pseudo-kind, e.g. the alerts stream).
    pub fn shards(
        keys: &Keys,
        kinds: &[String],
        extra: &[(Shard, String)],
    ) -> Vec<(Shard, String)> {
        kinds
            .iter()
            .flat_map(|k| keys.shards_of(k))
            .map(|s| {
                let stream = keys.stream(&s);
                (s, stream)
            })
            .chain(extra.iter().cloned())
            .collect()
    }

    /// Recomputes `shards` from the layout `keys` has now (a shard set was
    /// added or retired); whether they changed.
    pub fn refresh(&mut self, keys: &Keys) -> bool {
        let now = Self::shards(keys, &self.kinds, &self.extra);
        if now == self.shards {
            return false;
        }
        self.shards = now;
        true
    }
}

/// A processor run by the core: a [`Processor`] for the registry.
pub struct ShardProcessor<H: ShardHandler> {
    spec: Spec,
    ctx: ProcessorContext,
    handler: H,
}

impl<H: ShardHandler> ShardProcessor<H> {
    pub fn new(spec: Spec, ctx: ProcessorContext, handler: H) -> Self {
        Self { spec, ctx, handler }
    }
}

impl<H: ShardHandler> Processor for ShardProcessor<H> {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn run(
        self: Box<Self>,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, Result<(), ProcessorError>> {
        let ShardProcessor { spec, ctx, handler } = *self;
        Box::pin(async move { runner::Runner::new(spec, ctx, handler).run(shutdown).await })
    }
}
