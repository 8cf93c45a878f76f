//! The `alerts` table (migrations/0004_alerts.sql), and the outbox rows
//! written with each transition (`outbox.rs`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;

use super::outbox::{enqueue, Transition, DELIVERY_COLUMN};
use super::{Store, StoreError};

/// One alert row.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AlertRow {
    pub id: u64,
    pub rule: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub severity: String,
    pub protocol: String,
    pub subject: String,
    pub metric: String,
    pub value: f64,
    pub threshold: f64,
    pub message: String,
    pub created_at: String,
    pub resolved_at: Option<String>,
    /// Its notifications (`GET /v1/alerts` only): per notifier and
    /// transition, `state` (pending, delivered, gave_up), `attempts`,
    /// `delivered_at`, `next_attempt_at` (while pending) and `last_error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<serde_json::Value>,
}

/// The columns [`row`] reads, `alerts.`-qualified so joins may use them.
pub(super) const COLUMNS: &str =
    "alerts.id, CAST(alerts.rule AS CHAR), CAST(alerts.type AS CHAR), \
    CAST(alerts.severity AS CHAR), CAST(alerts.protocol AS CHAR), CAST(alerts.subject AS CHAR), \
    CAST(alerts.metric AS CHAR), alerts.value, alerts.threshold, CAST(alerts.message AS CHAR), \
    CAST(DATE_FORMAT(alerts.created_at, '%Y-%m-%dT%H:%i:%s.%fZ') AS CHAR), \
    CAST(DATE_FORMAT(alerts.resolved_at, '%Y-%m-%dT%H:%i:%s.%fZ') AS CHAR)";

/// The alert in the [`COLUMNS`] starting at column `at` of `r`.
pub(super) fn row(r: &sqlx::mysql::MySqlRow, at: usize) -> Result<AlertRow, StoreError> {
    Ok(AlertRow {
        id: r.try_get(at)?,
        rule: r.try_get(at + 1)?,
        kind: r.try_get(at + 2)?,
        severity: r.try_get(at + 3)?,
        protocol: r.try_get(at + 4)?,
        subject: r.try_get(at + 5)?,
        metric: r.try_get(at + 6)?,
        value: r.try_get(at + 7)?,
        threshold: r.try_get(at + 8)?,
        message: r.try_get(at + 9)?,
        created_at: r.try_get(at + 10)?,
        resolved_at: r.try_get(at + 11)?,
        delivery: None,
    })
}

/// The alert of [`row`] followed by its [`DELIVERY_COLUMN`].
fn row_with_delivery(r: &sqlx::mysql::MySqlRow) -> Result<AlertRow, StoreError> {
    let mut a = row(r, 0)?;
    let delivery: Option<String> = r.try_get(12)?;
    a.delivery = Some(match delivery {
        Some(text) => serde_json::from_str(&text).map_err(|e| StoreError::Schema {
            table: "alert_notifications".into(),
            reason: format!("delivery of alert {}: {e}", a.id),
        })?,
        None => serde_json::Value::Array(Vec::new()),
    });
    Ok(a)
}

/// A new alert to open.
#[derive(Debug, Clone)]
pub struct NewAlert<'a> {
    pub rule: &'a str,
    pub kind: &'a str,
    pub severity: &'a str,
    pub protocol: &'a str,
    pub subject: &'a str,
    pub metric: &'a str,
    pub value: f64,
    pub threshold: f64,
    pub message: &'a str,
    pub at: DateTime<Utc>,
}

impl Store {
    /// Opens an alert and queues its notification to each of `notify`, in
    /// one transaction; `None` when one is already open for the rule and
    /// subject (the unique key keeps racing evaluators from doubling it).
    pub async fn open_alert(
        &self,
        a: &NewAlert<'_>,
        notify: &[&str],
    ) -> Result<Option<AlertRow>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query(
            "INSERT IGNORE INTO alerts (rule, type, severity, protocol, subject, metric, value, threshold, message, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(a.rule)
        .bind(a.kind)
        .bind(a.severity)
        .bind(a.protocol)
        .bind(a.subject)
        .bind(a.metric)
        .bind(a.value)
        .bind(a.threshold)
        .bind(a.message)
        .bind(a.at.naive_utc())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        enqueue(&mut tx, done.last_insert_id(), Transition::Fired, notify).await?;
        let r = sqlx::query(&format!("SELECT {COLUMNS} FROM alerts WHERE id = ?"))
            .bind(done.last_insert_id())
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        row(&r, 0).map(Some)
    }

    /// Resolves the open alert of a rule and subject and queues the news
    /// to those of `notify` told that it fired, in one transaction; `None`
    /// when none is open.
    pub async fn resolve_alert(
        &self,
        rule: &str,
        subject: &str,
        at: DateTime<Utc>,
        notify: &[&str],
    ) -> Result<Option<AlertRow>, StoreError> {
        let open = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM alerts WHERE rule = ? AND subject = ? AND resolved_at IS NULL"
        ))
        .bind(rule)
        .bind(subject)
        .fetch_optional(self.pool())
        .await?;
        let Some(open) = open else { return Ok(None) };
        let mut a = row(&open, 0)?;
        let mut tx = self.pool().begin().await?;
        let done =
            sqlx::query("UPDATE alerts SET resolved_at = ? WHERE id = ? AND resolved_at IS NULL")
                .bind(at.naive_utc())
                .bind(a.id)
                .execute(&mut *tx)
                .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        enqueue(&mut tx, a.id, Transition::Resolved, notify).await?;
        tx.commit().await?;
        a.resolved_at = Some(at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string());
        Ok(Some(a))
    }

    /// Alerts with their `delivery`, newest first: `open` (unresolved) or resolved, created in
    /// [from, to) and, with `before` (created_at, id), after that alert in
    /// this order (keyset paging). Rows arrive one at a time as MySQL sends them.
    pub fn alerts<'a>(
        &'a self,
        open: Option<bool>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        before: Option<(chrono::NaiveDateTime, u64)>,
        limit: u64,
    ) -> impl futures::Stream<Item = Result<AlertRow, StoreError>> + Send + 'a {
        use futures::TryStreamExt;
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "SELECT {COLUMNS}, {DELIVERY_COLUMN} FROM alerts WHERE created_at >= ? AND created_at < ? \
                 AND (? IS NULL OR (resolved_at IS NULL) = ?) \
                 AND (? IS NULL OR created_at < ? OR (created_at = ? AND id < ?)) \
                 ORDER BY created_at DESC, id DESC LIMIT ?"
            )
        });
        let (at, id) = before.unzip();
        sqlx::query(SQL.as_str())
            .bind(from.naive_utc())
            .bind(to.naive_utc())
            .bind(open)
            .bind(open)
            .bind(at)
            .bind(at)
            .bind(at)
            .bind(id)
            .bind(limit)
            .fetch(self.pool())
            .map_err(StoreError::from)
            .and_then(|r| async move { row_with_delivery(&r) })
    }

    /// The alert `id`, if it exists.
    pub async fn alert(&self, id: u64) -> Result<Option<AlertRow>, StoreError> {
        let r = sqlx::query(&format!("SELECT {COLUMNS} FROM alerts WHERE id = ?"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        r.map(|r| row(&r, 0)).transpose()
    }

    /// Every open alert (for an evaluator taking over).
    pub async fn open_alerts(&self) -> Result<Vec<AlertRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM alerts WHERE resolved_at IS NULL"
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|r| row(r, 0)).collect()
    }
}
