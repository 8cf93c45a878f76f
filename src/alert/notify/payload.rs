//! What each notifier sends for an alert transition: the body and the
//! headers. Pure: no I/O, the time passed in.

use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};

use super::config::{Notifier, NotifierKind};
use crate::store::{AlertRow, NotificationTransition as Transition};

/// The header of a webhook's signature: `t=<unix seconds>,v1=<hex>`, where
/// hex is HMAC-SHA256(secret, "<t>.<body>") (docs/alerts.md shows how to
/// check it).
pub const SIGNATURE_HEADER: &str = "X-Flowmeter-Signature";
/// The header of the notification's stable id (`<alert id>-<transition>`),
/// the same in every attempt: receivers drop ids they have seen.
pub const ID_HEADER: &str = "X-Flowmeter-Notification";

/// One request to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

/// The stable id of a notification.
pub fn notification_id(t: Transition, a: &AlertRow) -> String {
    format!("{}-{}", a.id, t.as_str())
}

/// The request telling `n` of transition `t` of `a`, sent at `now`.
/// `refresh_secs` is `alert_delivery.alertmanager_refresh_secs`.
pub fn request(
    n: &Notifier,
    t: Transition,
    a: &AlertRow,
    now: DateTime<Utc>,
    refresh_secs: u64,
) -> Request {
    let id = notification_id(t, a);
    let body = match n.kind {
        NotifierKind::Webhook => webhook(t, a, &id),
        NotifierKind::Slack => slack(t, a),
        NotifierKind::Alertmanager => alertmanager(n, t, a, now, refresh_secs),
    }
    .to_string()
    .into_bytes();
    let mut headers = vec![
        ("Content-Type", "application/json".to_string()),
        (ID_HEADER, id),
    ];
    if let Some(secret) = &n.secret {
        headers.push((SIGNATURE_HEADER, signature(secret, now.timestamp(), &body)));
    }
    Request { body, headers }
}

/// The webhook's body: the hub's `alerts` channel message (`type`, `state`,
/// `alert`) with the notification's `id`.
fn webhook(t: Transition, a: &AlertRow, id: &str) -> Value {
    let mut v = crate::alert::message(t.as_str(), a);
    if let Value::Object(m) = &mut v {
        m.insert("id".into(), Value::from(id));
    }
    v
}

/// `&`, `<` and `>` escaped as Slack's mrkdwn wants.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A Slack incoming-webhook message: `text` (notifications, clients without
/// blocks) and `blocks`.
fn slack(t: Transition, a: &AlertRow) -> Value {
    let sev = a.severity.to_uppercase();
    let rule = slack_escape(&a.rule);
    let message = slack_escape(&a.message);
    let (icon, headline, text) = match t {
        Transition::Fired => (
            ":rotating_light:",
            format!("*[{sev}] {rule}* is firing"),
            format!("[{sev}] {} firing: {}", a.rule, a.message),
        ),
        Transition::Resolved => (
            ":white_check_mark:",
            format!("*[{sev}] {rule}* resolved"),
            format!("[{sev}] {} resolved: {}", a.rule, a.message),
        ),
    };
    let mut context = format!(
        "subject `{}` · since {}",
        slack_escape(&a.subject),
        a.created_at
    );
    if let Some(end) = &a.resolved_at {
        context.push_str(&format!(" · resolved {end}"));
    }
    context.push_str(&format!(" · alert {}", a.id));
    json!({
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": format!("{icon} {headline}\n{message}")}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
        ],
    })
}

/// Alertmanager's `postableAlerts`: one alert, identified by its labels;
/// resolved when `endsAt` has passed. A firing one ends 4 refreshes from
/// now unless re-sent, as Prometheus does.
fn alertmanager(
    n: &Notifier,
    t: Transition,
    a: &AlertRow,
    now: DateTime<Utc>,
    refresh_secs: u64,
) -> Value {
    let mut labels: Map<String, Value> = n
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
        .collect();
    for (k, v) in [
        ("alertname", &a.rule),
        ("severity", &a.severity),
        ("subject", &a.subject),
        ("view", &a.protocol),
        ("measure", &a.metric),
    ] {
        labels.insert(k.into(), Value::from(v.as_str()));
    }
    let ends_at = match (t, &a.resolved_at) {
        (Transition::Resolved, Some(end)) => end.clone(),
        _ => {
            let secs = i64::try_from(refresh_secs.saturating_mul(4)).unwrap_or(i64::MAX / 2);
            (now + chrono::Duration::seconds(secs.min(365 * 86_400)))
                .to_rfc3339_opts(SecondsFormat::Millis, true)
        }
    };
    json!([{
        "labels": labels,
        "annotations": {
            "summary": a.message,
            "value": a.value.to_string(),
            "threshold": a.threshold.to_string(),
            "flowmeter_alert_id": a.id.to_string(),
        },
        "startsAt": a.created_at,
        "endsAt": ends_at,
    }])
}

/// `t=<unix seconds>,v1=<HMAC-SHA256(secret, "<t>.<body>") in hex>`.
pub fn signature(secret: &[u8], unix_secs: i64, body: &[u8]) -> String {
    let mut signed = format!("{unix_secs}.").into_bytes();
    signed.extend_from_slice(body);
    format!("t={unix_secs},v1={}", hmac_hex(secret, &signed))
}

fn hmac_hex(key: &[u8], data: &[u8]) -> String {
    // HMAC takes a key of any length: new_from_slice cannot fail
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(data);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::alert::notify::config::{build, NotifierDef};

    fn alert(resolved: bool) -> AlertRow {
        AlertRow {
            id: 42,
            rule: "errors".into(),
            kind: "threshold".into(),
            severity: "critical".into(),
            protocol: "http".into(),
            subject: "http:service:<bad>".into(),
            metric: "error_rate".into(),
            value: 0.75,
            threshold: 0.5,
            message: "Error rate (4xx + 5xx) on service <bad> is 75 %, above 50 % for 2 s".into(),
            created_at: "2026-12-02T10:00:00.000000Z".into(),
            resolved_at: resolved.then(|| "2026-12-02T10:05:00.000000Z".into()),
            delivery: None,
        }
    }

    fn notifier(text: &str) -> Notifier {
        let def: NotifierDef = toml::from_str(text).expect("def");
        build(&[def], |_| None).expect("built").remove(0)
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-02T10:01:00Z")
            .expect("time")
            .with_timezone(&Utc)
    }

    fn body(r: &Request) -> Value {
        serde_json::from_slice(&r.body).expect("json")
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // test case 2 of RFC 4231
        assert_eq!(
            hmac_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn webhooks_are_the_channel_message_signed_over_time_and_body() {
        let n = notifier(
            "name = \"w\"\ntype = \"webhook\"\nurl = \"http://h/in\"\nsecret = \"0123456789abcdef\"",
        );
        let r = request(&n, Transition::Fired, &alert(false), now(), 60);
        let v = body(&r);
        assert_eq!(v["type"], "alert");
        assert_eq!(v["state"], "fired");
        assert_eq!(v["id"], "42-fired");
        assert_eq!(v["alert"]["rule"], "errors");
        assert_eq!(v["alert"]["value"], 0.75);
        let sig = r
            .headers
            .iter()
            .find(|(h, _)| *h == SIGNATURE_HEADER)
            .map(|(_, v)| v.clone())
            .expect("signed");
        let t = now().timestamp();
        let mut signed = format!("{t}.").into_bytes();
        signed.extend_from_slice(&r.body);
        assert_eq!(
            sig,
            format!("t={t},v1={}", hmac_hex(b"0123456789abcdef", &signed))
        );
        assert!(r.headers.contains(&(ID_HEADER, "42-fired".into())));
        let again = request(&n, Transition::Fired, &alert(false), now(), 60);
        assert_eq!(again.body, r.body, "the body is the same in every attempt");
    }

    #[test]
    fn slack_messages_escape_and_say_the_state() {
        let n = notifier("name = \"s\"\ntype = \"slack\"\nurl = \"https://hooks.slack.com/x\"");
        let v = body(&request(&n, Transition::Resolved, &alert(true), now(), 60));
        let text = v["text"].as_str().expect("text");
        assert!(text.starts_with("[CRITICAL] errors resolved: "), "{text}");
        let section = v["blocks"][0]["text"]["text"].as_str().expect("section");
        assert!(
            section.contains("&lt;bad&gt;") && !section.contains("<bad>"),
            "{section}"
        );
        let context = v["blocks"][1]["elements"][0]["text"].as_str().expect("ctx");
        assert!(
            context.contains("resolved 2026-12-02T10:05:00"),
            "{context}"
        );
        assert!(!request(&n, Transition::Fired, &alert(false), now(), 60)
            .headers
            .iter()
            .any(|(h, _)| *h == SIGNATURE_HEADER));
    }

    #[test]
    fn alertmanager_alerts_carry_labels_and_end_when_resolved() {
        let n = notifier(
            "name = \"am\"\ntype = \"alertmanager\"\nurl = \"http://am:9093\"\nlabels = { team = \"web\" }",
        );
        let fired = body(&request(&n, Transition::Fired, &alert(false), now(), 60));
        let a = &fired[0];
        assert_eq!(a["labels"]["alertname"], "errors");
        assert_eq!(a["labels"]["severity"], "critical");
        assert_eq!(a["labels"]["subject"], "http:service:<bad>");
        assert_eq!(a["labels"]["team"], "web");
        assert_eq!(a["startsAt"], "2026-12-02T10:00:00.000000Z");
        assert_eq!(
            a["endsAt"], "2026-12-02T10:05:00.000Z",
            "4 refreshes from now"
        );
        let resolved = body(&request(&n, Transition::Resolved, &alert(true), now(), 60));
        assert_eq!(resolved[0]["endsAt"], "2026-12-02T10:05:00.000000Z");
    }
}
