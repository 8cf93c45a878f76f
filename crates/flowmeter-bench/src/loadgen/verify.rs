//! `flowmeter verify --truth FILE`: checks a truth file written by
//! `flowmeter loadgen --truth` against the hourly rollup tables
//! ([`TruthTable::compare`], plain SQL through the store), waiting up to
//! `--wait` seconds for the workers to catch up, and reports what differs
//! (`cli::verify` prints it as an aligned table).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Difference, TruthFileError, TruthTable};
use flowmeter::config::Settings;
use flowmeter::store::{Store, StoreError};

/// How often the tables are compared again while they differ.
const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The truth file (`loadgen --truth`).
    pub truth: PathBuf,
    /// Compare again until the tables match or this long has passed (the
    /// rollup workers may still be folding the last events in).
    pub wait: Duration,
}

/// What a check found.
#[derive(Debug)]
pub struct VerifyReport {
    /// Rows of the truth file (kind, hour, dimensions).
    pub rows: usize,
    pub events: u64,
    /// Empty when the tables match the truth.
    pub diffs: Vec<Difference>,
    /// How long it compared before giving its answer.
    pub waited: Duration,
}

/// Why a check could not be made (not a difference: that is the report).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    File(#[from] TruthFileError),
    #[error("MySQL: {0}{hint}", hint = .0.hint())]
    Store(#[from] StoreError),
    /// Worth retrying: the database went away while comparing.
    #[error("comparing with the tables: {0} (run `flowmeter migrate` if a table is missing)")]
    Query(#[from] sqlx::Error),
}

/// Reads the truth and compares it with the tables of `settings.mysql`
/// every `POLL` (500 ms) until they match, `opts.wait` has passed or `stop`.
pub async fn run(
    settings: &Settings,
    opts: &VerifyOptions,
    stop: CancellationToken,
) -> Result<VerifyReport, VerifyError> {
    let truth = TruthTable::read(&opts.truth)?;
    let store = Store::from_config(&settings.mysql, 2).await?;
    let start = Instant::now();
    loop {
        let diffs = truth.compare(&store).await?;
        if diffs.is_empty() || start.elapsed() >= opts.wait || stop.is_cancelled() {
            return Ok(VerifyReport {
                rows: truth.len(),
                events: truth.events(),
                diffs,
                waited: start.elapsed(),
            });
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(POLL.min(opts.wait.saturating_sub(start.elapsed()))) => {}
        }
    }
}

impl VerifyReport {
    pub fn matches(&self) -> bool {
        self.diffs.is_empty()
    }
}
