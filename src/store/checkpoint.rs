//! Checkpoints: per (group, stream), the id of the last entry whose effect is
//! committed. Advanced only by compare-and-set inside the flush transaction.

use sqlx::{MySql, Row, Transaction};

use super::{Store, StoreError};
use crate::stream::StreamId;

/// One checkpoint row.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub group: String,
    pub stream: String,
    pub last: StreamId,
    pub owner: Option<String>,
    /// When it last moved, RFC 3339.
    pub updated_at: Option<String>,
}

impl Store {
    /// Creates the row at 0-0 if missing and returns the committed position.
    pub async fn load_checkpoint(&self, group: &str, stream: &str) -> Result<StreamId, StoreError> {
        sqlx::query(
            "INSERT IGNORE INTO fm_checkpoints (grp, stream, last_ms, last_seq, updated_at) \
             VALUES (?, ?, 0, 0, UTC_TIMESTAMP(3))",
        )
        .bind(group)
        .bind(stream)
        .execute(self.pool())
        .await?;
        let row = sqlx::query(
            "SELECT last_ms, last_seq FROM fm_checkpoints WHERE grp = ? AND stream = ?",
        )
        .bind(group)
        .bind(stream)
        .fetch_one(self.pool())
        .await?;
        Ok(StreamId {
            ms: row.try_get::<u64, _>(0)?,
            seq: row.try_get::<u64, _>(1)?,
        })
    }

    /// Every checkpoint of a group (for status).
    pub async fn checkpoints(&self, group: Option<&str>) -> Result<Vec<Checkpoint>, StoreError> {
        let rows = sqlx::query(
            // CAST: binary-collated columns would decode as VARBINARY.
            "SELECT CAST(grp AS CHAR), CAST(stream AS CHAR), last_ms, last_seq, CAST(owner AS CHAR), \
             CAST(DATE_FORMAT(updated_at, '%Y-%m-%dT%H:%i:%s.%fZ') AS CHAR) \
             FROM fm_checkpoints WHERE (? IS NULL OR grp = ?) ORDER BY grp, stream",
        )
        .bind(group)
        .bind(group)
        .fetch_all(self.pool())
        .await
        .map_err(super::on_table("fm_checkpoints"))?;
        rows.iter()
            .map(|r| {
                Ok(Checkpoint {
                    group: r.try_get(0)?,
                    stream: r.try_get(1)?,
                    last: StreamId {
                        ms: r.try_get(2)?,
                        seq: r.try_get(3)?,
                    },
                    owner: r.try_get(4)?,
                    updated_at: r.try_get(5)?,
                })
            })
            .collect()
    }
}

/// Moves a checkpoint from `from` to `to` inside the flush transaction; fails
/// with `CheckpointMoved` when someone else moved it first.
pub async fn advance(
    tx: &mut Transaction<'_, MySql>,
    group: &str,
    stream: &str,
    from: StreamId,
    to: StreamId,
    owner: &str,
) -> Result<(), StoreError> {
    let done = sqlx::query(
        "UPDATE fm_checkpoints SET last_ms = ?, last_seq = ?, owner = ?, updated_at = UTC_TIMESTAMP(3) \
         WHERE grp = ? AND stream = ? AND last_ms = ? AND last_seq = ?",
    )
    .bind(to.ms)
    .bind(to.seq)
    .bind(owner)
    .bind(group)
    .bind(stream)
    .bind(from.ms)
    .bind(from.seq)
    .execute(&mut **tx)
    .await?;
    if done.rows_affected() == 1 {
        Ok(())
    } else {
        Err(StoreError::CheckpointMoved {
            group: group.to_string(),
            stream: stream.to_string(),
        })
    }
}
