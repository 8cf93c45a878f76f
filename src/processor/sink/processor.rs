//! A sink on the shard core: entries are buffered as they are taken,
//! handed to [`Sink::deliver`] when the core commits, and acknowledged by
//! the core only after the sink confirmed them; rejected entries are
//! dead-lettered first. A failed delivery keeps the buffer; the core
//! retries it after a backoff (`retry_initial_ms` doubling to
//! `retry_max_ms`) and reads nothing more meanwhile, so the lag grows in
//! Redis — bounded memory, nothing lost. Without a checkpoint, the sink's
//! commits are fenced by the lease only ([`Fence::Lease`]): the entries of
//! a shard whose lease is lost are dropped and delivered by its next owner.

use std::time::Duration;

use super::{Sink, SinkEntry, SinkHead, Verdict};
use crate::processor::core::{
    Backoff, Cadence, CommitError, Committed, Fence, Letter, Metrics, Move, Origin, ShardHandler,
    ShardProcessor, Spec,
};
use crate::processor::{ProcessorContext, ProcessorError, RunnerStats};
use crate::stream::{Entry, Shard, StreamId};
use crate::telemetry::metrics;

/// A sink processor, ready to run.
pub type SinkProcessor<S> = ShardProcessor<SinkHandler<S>>;

/// The processor of a definition (`head`) handing entries to `sink`.
/// `extra_streams` are read besides the kinds' shards, each as the single
/// shard of a pseudo-kind (e.g. `alerts` → `{prefix}:alerts` for the Kafka
/// bridge).
pub fn processor<S: Sink>(
    head: SinkHead<'_>,
    ctx: ProcessorContext,
    sink: S,
    extra_streams: Vec<(Shard, String)>,
) -> Result<SinkProcessor<S>, ProcessorError> {
    let start = head
        .group_start()
        .map_err(|reason| ProcessorError::Definition {
            file: format!("processor {}", head.name),
            reason,
        })?;
    let batch = head.batch;
    let max_wait = Duration::from_millis(batch.max_wait_ms.max(1));
    let spec = Spec {
        name: head.name.to_string(),
        group: head.group.to_string(),
        role: "sink",
        shards: Spec::shards(&ctx.keys, head.kinds, &extra_streams),
        kinds: head.kinds.to_vec(),
        extra: extra_streams.clone(),
        start,
        cadence: Cadence {
            tick: (max_wait / 4).max(Duration::from_millis(10)),
            max_wait,
            max_events: batch.max_rows,
        },
        backoff: Backoff::new(
            Duration::from_millis(batch.retry_initial_ms),
            Duration::from_millis(batch.retry_max_ms),
        ),
        commit_timeout: Duration::from_millis(batch.timeout_ms),
        fence: Fence::Lease,
        metrics: Metrics {
            failures: &metrics::SINK_FAILURES,
            invalid: None,
        },
    };
    let handler = SinkHandler {
        sink,
        buffer: Vec::new(),
    };
    Ok(ShardProcessor::new(spec, ctx, handler))
}

/// The entries taken since the last delivery, and where they go.
pub struct SinkHandler<S: Sink> {
    sink: S,
    buffer: Vec<SinkEntry>,
}

impl<S: Sink> ShardHandler for SinkHandler<S> {
    async fn checkpoint(&mut self, _stream: &str) -> Result<Option<StreamId>, ProcessorError> {
        Ok(None)
    }

    fn apply(&mut self, from: &Origin<'_>, e: &Entry) -> Result<(), String> {
        let data = e.data.clone().ok_or(
            "entry has no data field (deleted while pending, or written by a foreign producer)",
        )?;
        self.buffer.push(SinkEntry {
            stream: from.stream.to_string(),
            shard: from.shard.clone(),
            kind: from.shard.kind.clone(),
            id: e.id,
            version: e.version,
            data,
        });
        Ok(())
    }

    async fn commit(&mut self, _moves: &[Move]) -> Result<Committed, CommitError> {
        let n = self.buffer.len();
        if n == 0 {
            return Ok(Committed::default());
        }
        let verdicts = match self.sink.deliver(&self.buffer).await {
            Ok(v) if v.len() == n => v,
            Ok(v) => {
                return Err(CommitError::Failed(format!(
                    "sink returned {} verdicts for {n} entries",
                    v.len()
                )))
            }
            Err(e) => return Err(CommitError::Failed(e.to_string())),
        };
        let rejected: Vec<Letter> = std::mem::take(&mut self.buffer)
            .into_iter()
            .zip(verdicts)
            .filter_map(|(e, v)| match v {
                Verdict::Rejected(reason) => Some(Letter {
                    stream: e.stream,
                    id: e.id,
                    reason,
                    data: Some(e.data),
                }),
                Verdict::Delivered => None,
            })
            .collect();
        Ok(Committed {
            rows: (n - rejected.len()) as u64,
            rejected,
        })
    }

    fn committed(&mut self, _events: u64, rows: u64, _stats: &mut RunnerStats) {
        metrics::SINK_DELIVERED.add(rows);
    }

    fn discard(&mut self) {
        self.buffer.clear();
    }

    fn discard_shard(&mut self, shard: &Shard) {
        self.buffer.retain(|e| &e.shard != shard);
    }
}
