//! The alert delivery outbox, table `alert_notifications`
//! (migrations/0007_alert_outbox.sql): one row per alert transition and
//! notifier, written in the transaction of the transition, claimed by one
//! deliverer at a time with a conditional UPDATE (no transaction held over
//! the HTTP request), finished as delivered, retried later, or given up.

use serde::Serialize;
use sqlx::{MySql, Row, Transaction};

use super::alerts::{row as alert_row, COLUMNS as ALERT_COLUMNS};
use super::{AlertRow, Store, StoreError};

/// Which transition of an alert a notification tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    Fired,
    Resolved,
}

impl Transition {
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Fired => "fired",
            Transition::Resolved => "resolved",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "fired" => Ok(Transition::Fired),
            "resolved" => Ok(Transition::Resolved),
            other => Err(StoreError::Schema {
                table: "alert_notifications".into(),
                reason: format!("unknown transition {other:?}"),
            }),
        }
    }
}

/// The key of one outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationKey {
    pub alert_id: u64,
    pub transition: Transition,
    pub notifier: String,
}

/// A due notification, with the alert it tells of.
#[derive(Debug, Clone)]
pub struct DueNotification {
    pub key: NotificationKey,
    /// Attempts made before this one.
    pub attempts: u32,
    /// Seconds since the transition was recorded (by the database clock).
    pub age_secs: u64,
    pub alert: AlertRow,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    Delivered,
    /// Failed; try again in `retry_in_ms`.
    Retry {
        error: String,
        retry_in_ms: u64,
    },
    /// Failed for good (refused, or out of attempts or time).
    GaveUp {
        error: String,
    },
}

/// Longest `last_error` kept (the column's size).
pub const MAX_ERROR_CHARS: usize = 512;

/// Outbox rows telling `notifiers` of transition `t` of `alert_id`, in
/// the transaction that records it. A resolution is queued only for those
/// of `notifiers` queued the firing.
pub(super) async fn enqueue(
    tx: &mut Transaction<'_, MySql>,
    alert_id: u64,
    t: Transition,
    notifiers: &[&str],
) -> Result<(), StoreError> {
    let sql = match t {
        Transition::Fired => {
            "INSERT IGNORE INTO alert_notifications \
             (alert_id, transition, notifier, state, created_at, next_attempt_at) \
             SELECT ?, 'fired', ?, 'pending', NOW(3), NOW(3)"
        }
        Transition::Resolved => {
            "INSERT IGNORE INTO alert_notifications \
             (alert_id, transition, notifier, state, created_at, next_attempt_at) \
             SELECT alert_id, 'resolved', notifier, 'pending', NOW(3), NOW(3) \
             FROM alert_notifications WHERE alert_id = ? AND transition = 'fired' AND notifier = ?"
        }
    };
    for n in notifiers {
        sqlx::query(sql)
            .bind(alert_id)
            .bind(n)
            .execute(&mut **tx)
            .await
            .map_err(super::on_table("alert_notifications"))?;
    }
    Ok(())
}

/// The `delivery` list of an alert in `GET /v1/alerts`: a JSON array, one
/// object per notification (NULL without any), as a column of the alerts
/// query.
pub(super) const DELIVERY_COLUMN: &str = "(SELECT CAST(JSON_ARRAYAGG(JSON_OBJECT(\
    'notifier', n.notifier, 'transition', n.transition, 'state', n.state, \
    'attempts', n.attempts, \
    'delivered_at', DATE_FORMAT(n.delivered_at, '%Y-%m-%dT%H:%i:%s.%fZ'), \
    'next_attempt_at', IF(n.state = 'pending', DATE_FORMAT(n.next_attempt_at, '%Y-%m-%dT%H:%i:%s.%fZ'), NULL), \
    'last_error', n.last_error)) AS CHAR) \
    FROM alert_notifications n WHERE n.alert_id = alerts.id)";

/// `?, ?, …` for `n` values (at least one: `IN ()` is not SQL).
fn marks(n: usize) -> String {
    vec!["?"; n.max(1)].join(", ")
}

impl Store {
    /// Stops a start on a database migrated before the outbox (0007): the
    /// alert list joins it and every alert transition writes to it, so
    /// without it GET /v1/alerts and the alert evaluator would fail at each
    /// use. The same check as a rollup table's ([`Store::columns`]), which
    /// says to run `flowmeter migrate`.
    pub async fn require_alert_outbox(&self) -> Result<(), StoreError> {
        self.columns("alert_notifications").await.map(drop)
    }

    /// Due notifications of `notifiers` (rows of others are left to the
    /// instances that know them), oldest due first. A `resolved` row waits
    /// while its `fired` row is still pending, so receivers hear of an
    /// alert's end after its start.
    pub async fn due_notifications(
        &self,
        notifiers: &[String],
        limit: u64,
    ) -> Result<Vec<DueNotification>, StoreError> {
        let sql = format!(
            "SELECT n.alert_id, CAST(n.transition AS CHAR), CAST(n.notifier AS CHAR), n.attempts, \
               CAST(GREATEST(TIMESTAMPDIFF(SECOND, n.created_at, NOW(3)), 0) AS UNSIGNED), \
               {ALERT_COLUMNS} \
             FROM alert_notifications n JOIN alerts ON alerts.id = n.alert_id \
             WHERE n.state = 'pending' AND n.next_attempt_at <= NOW(3) \
               AND (n.claimed_until IS NULL OR n.claimed_until < NOW(3)) \
               AND n.notifier IN ({}) \
               AND (n.transition = 'fired' OR NOT EXISTS (SELECT 1 FROM alert_notifications f \
                    WHERE f.alert_id = n.alert_id AND f.notifier = n.notifier \
                    AND f.transition = 'fired' AND f.state = 'pending')) \
             ORDER BY n.next_attempt_at LIMIT ?",
            marks(notifiers.len())
        );
        let mut q = sqlx::query(&sql);
        for n in notifiers {
            q = q.bind(n);
        }
        if notifiers.is_empty() {
            q = q.bind("");
        }
        let rows = q
            .bind(limit)
            .fetch_all(self.pool())
            .await
            .map_err(super::on_table("alert_notifications"))?;
        rows.iter()
            .map(|r| {
                let transition: String = r.try_get(1)?;
                Ok(DueNotification {
                    key: NotificationKey {
                        alert_id: r.try_get(0)?,
                        transition: Transition::parse(&transition)?,
                        notifier: r.try_get(2)?,
                    },
                    attempts: r.try_get(3)?,
                    age_secs: r.try_get(4)?,
                    alert: alert_row(r, 5)?,
                })
            })
            .collect()
    }

    /// Claims a due row for `claim_ms` as `owner`; false when another
    /// deliverer claimed or finished it first.
    pub async fn claim_notification(
        &self,
        key: &NotificationKey,
        owner: &str,
        claim_ms: u64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE alert_notifications SET claimed_by = ?, \
               claimed_until = NOW(3) + INTERVAL ? * 1000 MICROSECOND \
             WHERE alert_id = ? AND transition = ? AND notifier = ? AND state = 'pending' \
               AND next_attempt_at <= NOW(3) \
               AND (claimed_until IS NULL OR claimed_until < NOW(3))",
        )
        .bind(owner)
        .bind(claim_ms)
        .bind(key.alert_id)
        .bind(key.transition.as_str())
        .bind(&key.notifier)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records how an attempt on a row claimed by `owner` ended; false when
    /// the claim was no longer `owner`'s (it expired and another took it).
    pub async fn finish_notification(
        &self,
        key: &NotificationKey,
        owner: &str,
        finish: &Finish,
    ) -> Result<bool, StoreError> {
        let (state, error, retry_in_ms) = match finish {
            Finish::Delivered => ("delivered", None, 0),
            Finish::Retry { error, retry_in_ms } => ("pending", Some(error), *retry_in_ms),
            Finish::GaveUp { error } => ("gave_up", Some(error), 0),
        };
        let error = error.map(|e| e.chars().take(MAX_ERROR_CHARS).collect::<String>());
        let done = sqlx::query(
            "UPDATE alert_notifications SET state = ?, attempts = attempts + 1, \
               last_attempt_at = NOW(3), \
               delivered_at = IF(? = 'delivered', NOW(3), delivered_at), \
               refreshed_at = IF(? = 'delivered', NOW(3), refreshed_at), \
               last_error = COALESCE(?, last_error), \
               next_attempt_at = NOW(3) + INTERVAL ? * 1000 MICROSECOND, \
               claimed_by = NULL, claimed_until = NULL \
             WHERE alert_id = ? AND transition = ? AND notifier = ? AND claimed_by = ?",
        )
        .bind(state)
        .bind(state)
        .bind(state)
        .bind(error)
        .bind(retry_in_ms)
        .bind(key.alert_id)
        .bind(key.transition.as_str())
        .bind(&key.notifier)
        .bind(owner)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Pending notifications per notifier (every notifier with rows).
    pub async fn pending_notifications(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT CAST(notifier AS CHAR), COUNT(*) FROM alert_notifications \
             WHERE state = 'pending' GROUP BY notifier",
        )
        .fetch_all(self.pool())
        .await
        .map_err(super::on_table("alert_notifications"))?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get::<i64, _>(1)?.unsigned_abs())))
            .collect()
    }

    /// Open alerts told to `notifier` (their `fired` row delivered) and not
    /// re-sent for `every_secs`, each claimed here for the next re-send (a
    /// conditional UPDATE of `refreshed_at`, so one deliverer re-sends each).
    pub async fn claim_refreshes(
        &self,
        notifier: &str,
        every_secs: u64,
        limit: u64,
    ) -> Result<Vec<AlertRow>, StoreError> {
        let sql = format!(
            "SELECT {ALERT_COLUMNS} FROM alert_notifications n JOIN alerts ON alerts.id = n.alert_id \
             WHERE n.notifier = ? AND n.transition = 'fired' AND n.state = 'delivered' \
               AND alerts.resolved_at IS NULL \
               AND n.refreshed_at < NOW(3) - INTERVAL ? SECOND \
             ORDER BY n.refreshed_at LIMIT ?"
        );
        let rows = sqlx::query(&sql)
            .bind(notifier)
            .bind(every_secs)
            .bind(limit)
            .fetch_all(self.pool())
            .await?;
        let mut claimed = Vec::new();
        for r in &rows {
            let a = alert_row(r, 0)?;
            let done = sqlx::query(
                "UPDATE alert_notifications SET refreshed_at = NOW(3) \
                 WHERE alert_id = ? AND transition = 'fired' AND notifier = ? \
                   AND refreshed_at < NOW(3) - INTERVAL ? SECOND",
            )
            .bind(a.id)
            .bind(notifier)
            .bind(every_secs)
            .execute(self.pool())
            .await?;
            if done.rows_affected() == 1 {
                claimed.push(a);
            }
        }
        Ok(claimed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_never_make_an_empty_list() {
        assert_eq!(marks(0), "?");
        assert_eq!(marks(3), "?, ?, ?");
    }

    #[test]
    fn transitions_round_trip() {
        for t in [Transition::Fired, Transition::Resolved] {
            assert_eq!(Transition::parse(t.as_str()).ok(), Some(t));
        }
        assert!(Transition::parse("maybe").is_err());
    }
}
