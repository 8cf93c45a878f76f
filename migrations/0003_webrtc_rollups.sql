-- webrtc rollups, filled by processors/webrtc_rollup.toml.
-- Quality classes (first match wins, per sample):
--   excellent: rtt < 150 ms, loss < 1 %, jitter < 20 ms
--   good:      rtt < 300 ms, loss < 3 %, jitter < 50 ms
--   fair:      rtt < 500 ms, loss < 8 %, jitter < 100 ms
--   poor:      everything else
CREATE TABLE IF NOT EXISTS webrtc_hourly (
  meeting_id        VARCHAR(128)    NOT NULL,
  hour              DATETIME        NOT NULL,
  samples           BIGINT UNSIGNED NOT NULL DEFAULT 0,
  bytes_sent        BIGINT UNSIGNED NOT NULL DEFAULT 0,
  bytes_received    BIGINT UNSIGNED NOT NULL DEFAULT 0,
  relay_bytes       BIGINT UNSIGNED NOT NULL DEFAULT 0,
  relay_share       DOUBLE          NULL,
  rtt_sum_ms        DOUBLE          NOT NULL DEFAULT 0,
  rtt_avg_ms        DOUBLE          NULL,
  rtt_p95_ms        DOUBLE          NULL,
  jitter_sum_ms     DOUBLE          NOT NULL DEFAULT 0,
  jitter_avg_ms     DOUBLE          NULL,
  jitter_p95_ms     DOUBLE          NULL,
  loss_sum          DOUBLE          NOT NULL DEFAULT 0,
  loss_avg          DOUBLE          NULL,
  loss_p95          DOUBLE          NULL,
  peers             BIGINT UNSIGNED NOT NULL DEFAULT 0,
  quality_excellent BIGINT UNSIGNED NOT NULL DEFAULT 0,
  quality_good      BIGINT UNSIGNED NOT NULL DEFAULT 0,
  quality_fair      BIGINT UNSIGNED NOT NULL DEFAULT 0,
  quality_poor      BIGINT UNSIGNED NOT NULL DEFAULT 0,
  rtt_sketch        MEDIUMBLOB      NULL,
  jitter_sketch     MEDIUMBLOB      NULL,
  loss_sketch       MEDIUMBLOB      NULL,
  peers_hll         BLOB            NULL,
  PRIMARY KEY (meeting_id, hour),
  KEY by_hour (hour)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS webrtc_daily (
  day               DATE            NOT NULL,
  samples           BIGINT UNSIGNED NOT NULL DEFAULT 0,
  bytes_sent        BIGINT UNSIGNED NOT NULL DEFAULT 0,
  bytes_received    BIGINT UNSIGNED NOT NULL DEFAULT 0,
  relay_bytes       BIGINT UNSIGNED NOT NULL DEFAULT 0,
  relay_share       DOUBLE          NULL,
  rtt_sum_ms        DOUBLE          NOT NULL DEFAULT 0,
  rtt_avg_ms        DOUBLE          NULL,
  rtt_p95_ms        DOUBLE          NULL,
  jitter_sum_ms     DOUBLE          NOT NULL DEFAULT 0,
  jitter_avg_ms     DOUBLE          NULL,
  jitter_p95_ms     DOUBLE          NULL,
  loss_sum          DOUBLE          NOT NULL DEFAULT 0,
  loss_avg          DOUBLE          NULL,
  loss_p95          DOUBLE          NULL,
  peers             BIGINT UNSIGNED NOT NULL DEFAULT 0,
  meetings          BIGINT UNSIGNED NOT NULL DEFAULT 0,
  quality_excellent BIGINT UNSIGNED NOT NULL DEFAULT 0,
  quality_good      BIGINT UNSIGNED NOT NULL DEFAULT 0,
  quality_fair      BIGINT UNSIGNED NOT NULL DEFAULT 0,
  quality_poor      BIGINT UNSIGNED NOT NULL DEFAULT 0,
  rtt_sketch        MEDIUMBLOB      NULL,
  jitter_sketch     MEDIUMBLOB      NULL,
  loss_sketch       MEDIUMBLOB      NULL,
  peers_hll         BLOB            NULL,
  meetings_hll      BLOB            NULL,
  PRIMARY KEY (day)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
