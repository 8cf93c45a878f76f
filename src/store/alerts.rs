//! The `alerts` table (migrations/0004_alerts.sql).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;

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
}

const COLUMNS: &str = "id, CAST(rule AS CHAR), CAST(type AS CHAR), CAST(severity AS CHAR), \
    CAST(protocol AS CHAR), CAST(subject AS CHAR), CAST(metric AS CHAR), value, threshold, \
    CAST(message AS CHAR), CAST(DATE_FORMAT(created_at, '%Y-%m-%dT%H:%i:%s.%fZ') AS CHAR), \
    CAST(DATE_FORMAT(resolved_at, '%Y-%m-%dT%H:%i:%s.%fZ') AS CHAR)";

fn row(r: &sqlx::mysql::MySqlRow) -> Result<AlertRow, StoreError> {
    Ok(AlertRow {
        id: r.try_get(0)?,
        rule: r.try_get(1)?,
        kind: r.try_get(2)?,
        severity: r.try_get(3)?,
        protocol: r.try_get(4)?,
        subject: r.try_get(5)?,
        metric: r.try_get(6)?,
        value: r.try_get(7)?,
        threshold: r.try_get(8)?,
        message: r.try_get(9)?,
        created_at: r.try_get(10)?,
        resolved_at: r.try_get(11)?,
    })
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
    /// Opens an alert; `None` when one is already open for the rule and
    /// subject (the unique key keeps racing evaluators from doubling it).
    pub async fn open_alert(&self, a: &NewAlert<'_>) -> Result<Option<AlertRow>, StoreError> {
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
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        let r = sqlx::query(&format!("SELECT {COLUMNS} FROM alerts WHERE id = ?"))
            .bind(done.last_insert_id())
            .fetch_one(self.pool())
            .await?;
        row(&r).map(Some)
    }

    /// Resolves the open alert of a rule and subject; `None` when none is open.
    pub async fn resolve_alert(
        &self,
        rule: &str,
        subject: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<AlertRow>, StoreError> {
        let open = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM alerts WHERE rule = ? AND subject = ? AND resolved_at IS NULL"
        ))
        .bind(rule)
        .bind(subject)
        .fetch_optional(self.pool())
        .await?;
        let Some(open) = open else { return Ok(None) };
        let mut a = row(&open)?;
        let done =
            sqlx::query("UPDATE alerts SET resolved_at = ? WHERE id = ? AND resolved_at IS NULL")
                .bind(at.naive_utc())
                .bind(a.id)
                .execute(self.pool())
                .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        a.resolved_at = Some(at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string());
        Ok(Some(a))
    }

    /// Alerts, newest first: `open` (unresolved) or resolved, created in
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
                "SELECT {COLUMNS} FROM alerts WHERE created_at >= ? AND created_at < ? \
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
            .and_then(|r| async move { row(&r) })
    }

    /// Every open alert (for an evaluator taking over).
    pub async fn open_alerts(&self) -> Result<Vec<AlertRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM alerts WHERE resolved_at IS NULL"
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(row).collect()
    }
}
