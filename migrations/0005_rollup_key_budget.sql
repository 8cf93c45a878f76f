-- Cardinality budgets of rollup tables (processors' max_new_keys_per_hour):
-- per table and wall-clock hour (UTC), the new dimension keys taken, and the
-- keys and events folded into `__other__` rows once the budget was spent.
-- Updated inside each flush transaction that meets new keys, so the budget
-- holds across workers and restarts (see docs/rollups.md).
CREATE TABLE IF NOT EXISTS fm_key_budget (
  tbl           VARCHAR(64)     NOT NULL,
  hour          DATETIME        NOT NULL,
  new_keys      BIGINT UNSIGNED NOT NULL DEFAULT 0,
  folded_keys   BIGINT UNSIGNED NOT NULL DEFAULT 0,
  folded_events BIGINT UNSIGNED NOT NULL DEFAULT 0,
  PRIMARY KEY (tbl, hour)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
