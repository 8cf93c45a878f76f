-- Checkpoints: per consumer group and shard stream, the last entry whose
-- effect is committed. Advanced by compare-and-set inside each flush
-- transaction (see docs/guarantees.md).
CREATE TABLE IF NOT EXISTS fm_checkpoints (
  grp        VARCHAR(128)    NOT NULL,
  stream     VARCHAR(255)    NOT NULL,
  last_ms    BIGINT UNSIGNED NOT NULL DEFAULT 0,
  last_seq   BIGINT UNSIGNED NOT NULL DEFAULT 0,
  owner      VARCHAR(255)    NULL,
  updated_at DATETIME(3)     NOT NULL,
  PRIMARY KEY (grp, stream)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
