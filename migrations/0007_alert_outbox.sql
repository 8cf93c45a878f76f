-- The alert delivery outbox (docs/alerts.md, "Notifiers"): one row per
-- alert transition (`fired`, `resolved`) and notifier of processors/alerts.toml,
-- written in the transaction that opens or resolves the alert, so a
-- transition recorded is a transition delivered (or given up, visibly).
-- Deliverers (every hub instance with notifiers) claim a due row by setting
-- `claimed_by` / `claimed_until` with one conditional UPDATE, so one of them
-- sends it at a time; a claim left by a crashed deliverer expires.
-- `state`: pending (to send, at `next_attempt_at`), delivered, gave_up
-- (refused by the receiver, or past alert_delivery.max_attempts /
-- max_age_secs). `refreshed_at`: the last re-send of an open alert to
-- Alertmanager (which forgets alerts that are not re-sent).
CREATE TABLE IF NOT EXISTS alert_notifications (
  alert_id        BIGINT UNSIGNED NOT NULL,
  transition      VARCHAR(16)     NOT NULL,
  notifier        VARCHAR(64)     NOT NULL,
  state           VARCHAR(16)     NOT NULL,
  attempts        INT UNSIGNED    NOT NULL DEFAULT 0,
  created_at      DATETIME(3)     NOT NULL,
  next_attempt_at DATETIME(3)     NOT NULL,
  last_attempt_at DATETIME(3)     NULL,
  delivered_at    DATETIME(3)     NULL,
  last_error      VARCHAR(512)    NULL,
  claimed_by      VARCHAR(255)    NULL,
  claimed_until   DATETIME(3)     NULL,
  refreshed_at    DATETIME(3)     NULL,
  PRIMARY KEY (alert_id, transition, notifier),
  KEY due (state, next_attempt_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
