//! The delivery metrics (names fixed by issue 17's contract):
//! `flowmeter_alert_notifications_total{notifier,outcome}` (outcome
//! delivered | failed | gave_up; Alertmanager re-sends count too) and
//! `flowmeter_alert_outbox_pending{notifier}` (pending rows in the shared
//! outbox, as last read by this process: every hub instance reports the
//! same figure, so aggregate with `max`, not `sum`).
//!
//! Kept in this one file so they move to the labelled registry as a whole.
//! Cardinality: one series per configured notifier (and outcome).

use std::collections::BTreeMap;
use std::sync::Mutex;

/// How an attempt ended, as the `outcome` label says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Delivered,
    /// Failed, to be retried.
    Failed,
    GaveUp,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Failed => "failed",
            Outcome::GaveUp => "gave_up",
        }
    }
}

static NOTIFICATIONS: Mutex<BTreeMap<(String, Outcome), u64>> = Mutex::new(BTreeMap::new());
static PENDING: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

/// Counts an attempt of `notifier`.
pub fn attempt(notifier: &str, outcome: Outcome) {
    if let Ok(mut m) = NOTIFICATIONS.lock() {
        *m.entry((notifier.to_string(), outcome)).or_default() += 1;
    }
}

/// Sets the pending figure of every configured notifier (0 if absent).
pub fn pending(configured: &[String], counts: &[(String, u64)]) {
    if let Ok(mut m) = PENDING.lock() {
        for n in configured {
            let c = counts.iter().find(|(k, _)| k == n).map_or(0, |(_, c)| *c);
            m.insert(n.clone(), c);
        }
    }
}

/// `flowmeter_alert_notifications_total`: (notifier, outcome, attempts).
pub fn notifications() -> Vec<(String, &'static str, u64)> {
    NOTIFICATIONS.lock().map_or_else(
        |_| Vec::new(),
        |m| {
            m.iter()
                .map(|((n, o), v)| (n.clone(), o.label(), *v))
                .collect()
        },
    )
}

/// `flowmeter_alert_outbox_pending`: (notifier, notifications waiting).
pub fn outbox() -> Vec<(String, u64)> {
    PENDING.lock().map_or_else(
        |_| Vec::new(),
        |m| m.iter().map(|(n, v)| (n.clone(), *v)).collect(),
    )
}

/// Prometheus text exposition of both families (nothing before the first
/// notifier is configured).
pub fn render() -> String {
    let mut out = String::new();
    let escape = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"");
    if let Ok(m) = NOTIFICATIONS.lock() {
        if !m.is_empty() {
            out.push_str("# HELP flowmeter_alert_notifications_total alert notification attempts by notifier and outcome (delivered, failed: retried later, gave_up)\n# TYPE flowmeter_alert_notifications_total counter\n");
            for ((n, o), v) in m.iter() {
                out.push_str(&format!(
                    "flowmeter_alert_notifications_total{{notifier=\"{}\",outcome=\"{}\"}} {v}\n",
                    escape(n),
                    o.label()
                ));
            }
        }
    }
    if let Ok(m) = PENDING.lock() {
        if !m.is_empty() {
            out.push_str("# HELP flowmeter_alert_outbox_pending alert notifications waiting in the outbox, by notifier (the same figure from every hub instance)\n# TYPE flowmeter_alert_outbox_pending gauge\n");
            for (n, v) in m.iter() {
                out.push_str(&format!(
                    "flowmeter_alert_outbox_pending{{notifier=\"{}\"}} {v}\n",
                    escape(n)
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_labelled_by_notifier_and_outcome() {
        attempt("metrics-unit", Outcome::Failed);
        attempt("metrics-unit", Outcome::Failed);
        attempt("metrics-unit", Outcome::Delivered);
        pending(&["metrics-unit".into()], &[("other".into(), 3)]);
        let text = render();
        assert!(text.contains(
            "flowmeter_alert_notifications_total{notifier=\"metrics-unit\",outcome=\"failed\"} 2\n"
        ));
        assert!(text.contains(
            "flowmeter_alert_notifications_total{notifier=\"metrics-unit\",outcome=\"delivered\"} 1\n"
        ));
        assert!(text.contains("flowmeter_alert_outbox_pending{notifier=\"metrics-unit\"} 0\n"));
        assert!(
            !text.contains("notifier=\"other\""),
            "only configured notifiers"
        );
    }
}
