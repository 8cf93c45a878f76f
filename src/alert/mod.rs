//! Alerts: rules (`processors/alerts.toml`) judged every closed second
//! against the hub's windows.
//!
//! - `rules.rs`: the rule file (threshold, spike, anomaly; metric, scope,
//!   severity, `for`, `clear_for`);
//! - `eval.rs`: the per (rule, subject) state machine;
//! - `describe.rs`: alert messages for people (metric names and units);
//! - `notify/`: notifiers (webhook, Slack, Alertmanager) and the deliverer
//!   of the outbox.
//!
//! Among hub instances one evaluates at a time, holding the Redis lease
//! `{prefix}:lease:alerts`. A firing alert is written to the `alerts` table
//! first (its unique key allows one open alert per rule and subject, so even
//! two evaluators racing after a lease loss cannot double it), then appended
//! to the stream `{prefix}:alerts`, which every hub instance tails and
//! pushes at once to its `alerts` subscribers. A new evaluator starts from
//! the open alerts in the table. The transaction that records a transition
//! also queues it for each notifier that wants it (`notify/`).

mod describe;
mod eval;
pub mod notify;
mod rules;

use std::sync::Arc;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

pub use describe::Judgement;
pub use eval::{Evaluator, Transition};
pub use rules::{AlertRules, Rule, RuleKind, Severity, Target};

use crate::event::subject;
use crate::hub::Hub;
use crate::store::{AlertRow, NewAlert, NotificationTransition, Store};
use crate::stream::{hold_singleton, release_singleton, Keys, Redis};

/// Alert messages kept in `{prefix}:alerts` (`XADD MAXLEN ~`).
pub const ALERT_STREAM_LEN: u64 = 10_000;

/// The message pushed on the `alerts` channel (and stored in the stream).
pub fn message(state: &str, a: &AlertRow) -> Value {
    json!({"type": "alert", "state": state, "alert": a})
}

fn name_of<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Runs the evaluator loop of one hub instance until `shutdown`: on every
/// closed second, if it holds (or takes) the lease, steps every rule, and
/// queues each transition for the `notifiers` that want it.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    hub: Arc<Hub>,
    rules: AlertRules,
    notifiers: Arc<[notify::Notifier]>,
    redis: Redis,
    keys: Keys,
    store: Store,
    owner: String,
    shutdown: CancellationToken,
) {
    let mut ticks = hub.ticks();
    let mut evaluator: Option<Evaluator> = None;
    let lease_ms = 5_000u64;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = ticks.changed() => if r.is_err() { break },
        }
        let sec = *ticks.borrow_and_update();
        // take or renew the evaluator's lease
        let held = hold_singleton(&redis, &keys.alerts_lease(), &owner, lease_ms).await;
        if !held {
            evaluator = None;
            continue;
        }
        if evaluator.is_none() {
            match store.open_alerts().await {
                Ok(open) => {
                    let mut ev = Evaluator::default();
                    for a in &open {
                        // as the hub names subjects (trailing spaces trimmed)
                        ev.restore_open(&a.rule, subject::text(&a.subject));
                    }
                    tracing::info!(open = open.len(), "alert evaluator started");
                    evaluator = Some(ev);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "alerts: cannot read open alerts; retrying");
                    continue;
                }
            }
        }
        let Some(ev) = evaluator.as_mut() else {
            continue;
        };
        let mut failed = false;
        for rule in &rules.rules {
            let Some(target) = &rule.target else {
                continue; // not checked against the views (never, once loaded)
            };
            let window = i64::try_from(rule.window_secs).unwrap_or(60);
            let Ok(values) = hub.measure_values(target.measure, window, sec).await else {
                break; // the hub is stopping
            };
            for t in ev.step(rule, sec, &values) {
                if let Err(e) = apply(&t, rule, &notifiers, sec, &store, &redis, &keys).await {
                    tracing::warn!(error = %e, "alerts: cannot record a transition; restarting the evaluator from the table");
                    failed = true;
                }
            }
        }
        if failed {
            evaluator = None;
        }
    }
    let _ = release_singleton(&redis, &keys.alerts_lease(), &owner).await;
}

#[derive(Debug, thiserror::Error)]
enum ApplyError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Stream(#[from] crate::stream::StreamError),
}

/// Records a transition in the table, then announces it on the stream.
async fn apply(
    t: &Transition,
    rule: &Rule,
    notifiers: &[notify::Notifier],
    sec: i64,
    store: &Store,
    redis: &Redis,
    keys: &Keys,
) -> Result<(), ApplyError> {
    let at = chrono::Utc::now();
    let (state, row) = match t {
        Transition::Fire {
            subject,
            value,
            threshold,
            message,
            ..
        } => {
            let row = store
                .open_alert(
                    &NewAlert {
                        rule: &rule.name,
                        kind: &name_of(&rule.kind),
                        severity: &name_of(&rule.severity),
                        protocol: &rule.view,
                        subject,
                        metric: &rule.measure,
                        value: *value,
                        threshold: *threshold,
                        message,
                        at,
                    },
                    &notify::recipients(notifiers, rule, NotificationTransition::Fired),
                )
                .await?;
            ("fired", row)
        }
        Transition::Resolve { subject, .. } => (
            "resolved",
            store
                .resolve_alert(
                    &rule.name,
                    subject,
                    at,
                    &notify::recipients(notifiers, rule, NotificationTransition::Resolved),
                )
                .await?,
        ),
    };
    let Some(row) = row else {
        return Ok(()); // another evaluator recorded it first
    };
    tracing::info!(rule = %rule.name, subject = %row.subject, state, second = sec, "alert");
    let mut conn = redis.conn.clone();
    let _: String = redis
        .run(
            redis::cmd("XADD")
                .arg(keys.alerts())
                .arg("MAXLEN")
                .arg("~")
                .arg(ALERT_STREAM_LEN)
                .arg("*")
                .arg("data")
                .arg(message(state, &row).to_string())
                .query_async(&mut conn),
        )
        .await?;
    Ok(())
}
