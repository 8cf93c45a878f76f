//! Shard readers shared by every runner: one task per owned shard reads
//! entries (first the shard's pending list, then new ones) under the lease
//! fence and sends them as [`Batch`]es over a bounded channel to the runner.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::processor::ProcessorContext;
use crate::stream::{GroupReader, ReadOutcome, Shard};

/// Pause after a failed read before trying the shard again.
pub const READ_ERROR_BACKOFF: Duration = Duration::from_millis(500);

/// What a shard reader sends to its runner.
pub struct Batch {
    pub shard: Shard,
    /// The shard's incarnation in the runner (bumped on each restart), so
    /// batches of a previous reader can be told apart.
    pub generation: u64,
    pub outcome: ReadOutcome,
}

impl Batch {
    /// A pending entry delivered more than `max_deliveries` times, which the
    /// reader hands over alone.
    pub fn is_suspect(&self, max: u64) -> bool {
        match &self.outcome {
            ReadOutcome::Entries(e) => max > 0 && e.len() == 1 && e[0].deliveries > max,
            ReadOutcome::LeaseLost => false,
        }
    }
}

/// Starts the reader of `shard` (its stream key `stream`) for `group`;
/// cancel the token to stop it.
pub fn spawn(
    ctx: &ProcessorContext,
    group: &str,
    shard: &Shard,
    stream: &str,
    generation: u64,
    tx: mpsc::Sender<Batch>,
) -> (CancellationToken, JoinHandle<()>) {
    let mut reader = GroupReader::new(
        ctx.redis.clone(),
        stream.to_string(),
        ctx.keys.lease(group, shard),
        group.to_string(),
        shard.label(),
        ctx.worker_id.clone(),
        ctx.settings.read_count,
    )
    .with_suspects_after(ctx.settings.max_deliveries);
    let tok = CancellationToken::new();
    let stop = tok.clone();
    let shard = shard.clone();
    let idle = Duration::from_millis(ctx.settings.idle_poll_ms.max(1));
    let handle = tokio::spawn(async move {
        loop {
            let res = tokio::select! {
                _ = stop.cancelled() => return,
                r = reader.read() => r,
            };
            match res {
                Ok(ReadOutcome::Entries(e)) if e.is_empty() => {
                    tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(idle) => {} }
                }
                Ok(outcome) => {
                    let lost = matches!(outcome, ReadOutcome::LeaseLost);
                    let batch = Batch {
                        shard: shard.clone(),
                        generation,
                        outcome,
                    };
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        r = tx.send(batch) => if r.is_err() { return },
                    }
                    if lost {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(shard = %shard, error = %e, "read failed; retrying");
                    tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(READ_ERROR_BACKOFF) => {} }
                }
            }
        }
    });
    (tok, handle)
}
