//! The processor workers running in this process, for the
//! `flowmeter_processor_*{processor,worker}` gauges: each runner holds a
//! [`WorkerGauges`] from its start, and its row leaves the table when the
//! runner ends (the guard's `Drop`), so a pod serves the workers it runs,
//! and only those.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::Instant;

use super::exposition::{ExpositionError, GaugeSeries, Labels, Registry};

struct Row {
    processor: String,
    worker: String,
    /// The last commit, else the worker's start.
    last_commit: Instant,
    stalled: bool,
    shards: usize,
}

static ROWS: LazyLock<Mutex<BTreeMap<u64, Row>>> = LazyLock::new(Default::default);
static NEXT: AtomicU64 = AtomicU64::new(0);

fn rows() -> MutexGuard<'static, BTreeMap<u64, Row>> {
    ROWS.lock().unwrap_or_else(|p| p.into_inner())
}

/// One worker's row in the table, removed when dropped.
pub struct WorkerGauges {
    id: u64,
}

impl WorkerGauges {
    pub fn new(processor: &str, worker: &str) -> Self {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        rows().insert(
            id,
            Row {
                processor: processor.to_string(),
                worker: worker.to_string(),
                last_commit: Instant::now(),
                stalled: false,
                shards: 0,
            },
        );
        Self { id }
    }

    /// The worker committed just now.
    pub fn committed(&self) {
        if let Some(r) = rows().get_mut(&self.id) {
            r.last_commit = Instant::now();
        }
    }

    /// What the worker published last: stalled or not, shards owned.
    pub fn update(&self, stalled: bool, shards: usize) {
        if let Some(r) = rows().get_mut(&self.id) {
            r.stalled = stalled;
            r.shards = shards;
        }
    }
}

impl Drop for WorkerGauges {
    fn drop(&mut self) {
        rows().remove(&self.id);
    }
}

fn series(value: impl Fn(&Row) -> f64) -> Vec<(Labels, f64)> {
    rows()
        .values()
        .map(|r| {
            (
                Labels::of([
                    ("processor", r.processor.as_str()),
                    ("worker", r.worker.as_str()),
                ]),
                value(r),
            )
        })
        .collect()
}

pub(super) fn register(r: &mut Registry) -> Result<(), ExpositionError> {
    r.register(
        "flowmeter_processor_last_commit_age_seconds",
        "seconds since this worker's last commit (since its start before the first); grows while idle too, so alert on it together with lag",
        GaugeSeries::new(|| series(|r| r.last_commit.elapsed().as_secs_f64())),
    )?;
    r.register(
        "flowmeter_processor_stalled",
        "1 while this worker's commits (deliveries) fail and it holds its state without reading",
        GaugeSeries::new(|| series(|r| f64::from(u8::from(r.stalled)))),
    )?;
    r.register(
        "flowmeter_processor_owned_shards",
        "shards this worker holds the lease of",
        GaugeSeries::new(|| series(|r| r.shards as f64)),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_is_served_while_it_runs() {
        let mine = |v: Vec<(Labels, f64)>| {
            v.into_iter()
                .find(|(l, _)| l.0.contains(&("worker", "w-test-rows".to_string())))
                .map(|(_, v)| v)
        };
        let g = WorkerGauges::new("p", "w-test-rows");
        g.update(true, 3);
        assert_eq!(mine(series(|r| r.shards as f64)), Some(3.0));
        assert_eq!(mine(series(|r| f64::from(u8::from(r.stalled)))), Some(1.0));
        g.committed();
        assert!(mine(series(|r| r.last_commit.elapsed().as_secs_f64())).is_some_and(|a| a < 5.0));
        drop(g);
        assert_eq!(
            mine(series(|r| r.shards as f64)),
            None,
            "gone with its runner"
        );
    }
}
