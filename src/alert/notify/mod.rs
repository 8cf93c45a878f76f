//! Notifiers: alert transitions delivered to people's tools, once.
//!
//! - `config.rs`: the `[[notifier]]` tables of the rules files (webhook,
//!   slack, alertmanager) and their checks;
//! - `payload.rs`: what each sends, and the webhook's HMAC signature;
//! - `deliver.rs`: the deliverer, claiming rows of the outbox
//!   (`alert_notifications`, src/store/outbox.rs) and sending them with
//!   retries and backoff;
//! - `metrics.rs`: `flowmeter_alert_notifications_total` and
//!   `flowmeter_alert_outbox_pending`.
//!
//! The evaluator writes one outbox row per transition and notifier in the
//! transaction that records the transition, so none is lost between the
//! table and the notifiers. Every hub instance with notifiers runs a
//! deliverer; a row is sent by the one deliverer whose conditional UPDATE
//! claimed it, so two instances never both send it. What remains is HTTP's
//! own limit: a receiver that took a request but whose answer never arrived
//! (timeout) is sent it again, with the same id (docs/alerts.md).

mod config;
mod deliver;
pub mod metrics;
mod payload;

pub use config::{build, check, Notifier, NotifierDef, NotifierKind, MIN_SECRET_CHARS};
pub use deliver::{Deliverer, SendError};
pub use payload::{notification_id, request, signature, Request, ID_HEADER, SIGNATURE_HEADER};

use super::rules::Rule;
use crate::store::NotificationTransition;

/// The notifiers to tell of transition `t` of an alert of `rule` (for a
/// resolution, the store keeps only those told that it fired).
pub fn recipients<'a>(
    notifiers: &'a [Notifier],
    rule: &Rule,
    t: NotificationTransition,
) -> Vec<&'a str> {
    notifiers
        .iter()
        .filter(|n| n.wants(rule))
        .filter(|n| t == NotificationTransition::Fired || n.send_resolved)
        .map(|n| n.name.as_str())
        .collect()
}
