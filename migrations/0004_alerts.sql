-- Alerts fired by the rules of processors/alerts.toml (one evaluator at a
-- time, by Redis lease). `open_flag` is 1 while the alert is open and NULL
-- once resolved, so the unique key allows one open alert per rule and
-- subject (and any number of resolved ones) even if two evaluators race.
CREATE TABLE IF NOT EXISTS alerts (
  id           BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  rule         VARCHAR(128)    NOT NULL,
  type         VARCHAR(16)     NOT NULL,
  severity     VARCHAR(16)     NOT NULL,
  protocol     VARCHAR(16)     NOT NULL,
  subject      VARCHAR(512)    NOT NULL,
  metric       VARCHAR(32)     NOT NULL,
  value        DOUBLE          NOT NULL,
  threshold    DOUBLE          NOT NULL,
  message      VARCHAR(1024)   NOT NULL,
  created_at   DATETIME(3)     NOT NULL,
  resolved_at  DATETIME(3)     NULL,
  open_flag    TINYINT AS (IF(resolved_at IS NULL, 1, NULL)) STORED,
  PRIMARY KEY (id),
  UNIQUE KEY one_open (rule, subject, open_flag),
  KEY by_created (created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
