-- http rollups, filled by processors/http_rollup.toml.
-- Sketch columns (*_sketch, *_hll, *_state) hold mergeable state so later
-- events and other shards merge exactly; the percentile and distinct columns
-- are derived from them at every flush.
CREATE TABLE IF NOT EXISTS http_hourly (
  service          VARCHAR(128)    NOT NULL,
  endpoint         VARCHAR(255)    NOT NULL,
  method           VARCHAR(16)     NOT NULL,
  hour             DATETIME        NOT NULL,
  requests         BIGINT UNSIGNED NOT NULL DEFAULT 0,
  status_4xx       BIGINT UNSIGNED NOT NULL DEFAULT 0,
  status_5xx       BIGINT UNSIGNED NOT NULL DEFAULT 0,
  bytes_in         BIGINT UNSIGNED NOT NULL DEFAULT 0,
  bytes_out        BIGINT UNSIGNED NOT NULL DEFAULT 0,
  duration_sum_ms  DOUBLE          NOT NULL DEFAULT 0,
  duration_min_ms  DOUBLE          NULL,
  duration_max_ms  DOUBLE          NULL,
  p50_ms           DOUBLE          NULL,
  p95_ms           DOUBLE          NULL,
  p99_ms           DOUBLE          NULL,
  unique_users     BIGINT UNSIGNED NOT NULL DEFAULT 0,
  duration_sketch  MEDIUMBLOB      NULL,
  users_hll        BLOB            NULL,
  PRIMARY KEY (service, endpoint, method, hour),
  KEY by_hour (hour)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS http_daily (
  day              DATE            NOT NULL,
  service          VARCHAR(128)    NOT NULL,
  requests         BIGINT UNSIGNED NOT NULL DEFAULT 0,
  status_4xx       BIGINT UNSIGNED NOT NULL DEFAULT 0,
  status_5xx       BIGINT UNSIGNED NOT NULL DEFAULT 0,
  bytes_in         BIGINT UNSIGNED NOT NULL DEFAULT 0,
  bytes_out        BIGINT UNSIGNED NOT NULL DEFAULT 0,
  duration_sum_ms  DOUBLE          NOT NULL DEFAULT 0,
  avg_ms           DOUBLE          NULL,
  p95_ms           DOUBLE          NULL,
  peak_hour        DATETIME        NULL,
  peak_hour_bytes  BIGINT UNSIGNED NOT NULL DEFAULT 0,
  unique_users     BIGINT UNSIGNED NOT NULL DEFAULT 0,
  duration_sketch  MEDIUMBLOB      NULL,
  users_hll        BLOB            NULL,
  hour_bytes_state BLOB            NULL,
  PRIMARY KEY (service, day),
  KEY by_day (day)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
