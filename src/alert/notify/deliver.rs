//! The deliverer: every `poll_ms`, claims due notifications of the outbox
//! (one deliverer per row, by a conditional UPDATE), sends them at once,
//! and records each outcome: delivered, retried after a backoff, or given
//! up. Then re-sends open alerts to Alertmanager, which forgets alerts that
//! are not re-sent.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::future::join_all;
use tokio_util::sync::CancellationToken;

use super::config::{Notifier, NotifierKind};
use super::metrics::{self, Outcome};
use super::payload::{self, Request};
use crate::config::AlertDeliveryConfig;
use crate::processor::core::Backoff;
use crate::store::{AlertRow, DueNotification, Finish, NotificationTransition, Store, StoreError};

/// A claim lasts the request timeout plus this, so a deliverer that is
/// still waiting for an answer keeps its row.
const CLAIM_MARGIN_MS: u64 = 10_000;
/// Bytes of a failed answer's body kept in `last_error`.
const ERROR_BODY_BYTES: usize = 200;

/// Why a request did not deliver.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SendError {
    /// No answer, or 408, 429 or 5xx: worth another attempt, after
    /// `retry_after` if the receiver said so.
    #[error("{reason}")]
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Any other answer but 2xx: the same request would be refused again.
    #[error("{0} (not retried: fix the notifier's url or the receiver)")]
    Refused(String),
}

/// Sends notifications for one process.
pub struct Deliverer {
    store: Store,
    notifiers: Vec<Notifier>,
    names: Vec<String>,
    cfg: AlertDeliveryConfig,
    client: reqwest::Client,
    owner: String,
}

impl Deliverer {
    /// A deliverer claiming rows as `owner`; fails when no HTTP client can
    /// be made (no TLS roots).
    pub fn new(
        store: Store,
        notifiers: Vec<Notifier>,
        cfg: AlertDeliveryConfig,
        owner: String,
    ) -> Result<Self, String> {
        let client = http_client(cfg.timeout_ms)?;
        let names = notifiers.iter().map(|n| n.name.clone()).collect();
        Ok(Self {
            store,
            notifiers,
            names,
            cfg,
            client,
            owner,
        })
    }

    /// Delivers until `shutdown`; a round under way finishes first (its
    /// requests are bounded by `timeout_ms`), so no claim is left to expire.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let poll = Duration::from_millis(self.cfg.poll_ms);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(poll) => {}
            }
            if let Err(e) = self.round().await {
                tracing::warn!(error = %e, "alert delivery: cannot read the outbox; retrying in the next round");
            }
        }
    }

    async fn round(&self) -> Result<(), StoreError> {
        let counts = self.store.pending_notifications().await?;
        metrics::pending(&self.names, &counts);
        let due = self
            .store
            .due_notifications(&self.names, self.cfg.max_in_flight as u64)
            .await?;
        let claim_ms = self.cfg.timeout_ms.saturating_add(CLAIM_MARGIN_MS);
        let mut claimed = Vec::new();
        for d in due {
            if self
                .store
                .claim_notification(&d.key, &self.owner, claim_ms)
                .await?
            {
                claimed.push(d);
            }
        }
        join_all(claimed.iter().map(|d| self.deliver(d))).await;
        for n in &self.notifiers {
            if n.kind != NotifierKind::Alertmanager {
                continue;
            }
            let open = self
                .store
                .claim_refreshes(
                    &n.name,
                    self.cfg.alertmanager_refresh_secs,
                    self.cfg.max_in_flight as u64,
                )
                .await?;
            join_all(open.iter().map(|a| self.refresh(n, a))).await;
        }
        Ok(())
    }

    /// One attempt at a claimed notification, and its outcome recorded.
    async fn deliver(&self, d: &DueNotification) {
        let Some(n) = self.notifiers.iter().find(|n| n.name == d.key.notifier) else {
            return; // only configured notifiers' rows are claimed
        };
        let req = payload::request(
            n,
            d.key.transition,
            &d.alert,
            Utc::now(),
            self.cfg.alertmanager_refresh_secs,
        );
        let finish = match too_large(&self.cfg, req.body.len()) {
            Some(given_up) => given_up,
            None => match self.send(n, &req).await {
                Ok(()) => Finish::Delivered,
                Err(e) => after_failure(&self.cfg, d.attempts, d.age_secs, e),
            },
        };
        let outcome = match &finish {
            Finish::Delivered => Outcome::Delivered,
            Finish::Retry { .. } => Outcome::Failed,
            Finish::GaveUp { .. } => Outcome::GaveUp,
        };
        metrics::attempt(&n.name, outcome);
        let id = payload::notification_id(d.key.transition, &d.alert);
        let attempts = d.attempts.saturating_add(1);
        match &finish {
            Finish::Delivered => {
                tracing::info!(notifier = %n.name, notification = %id, attempts, "alert notification delivered")
            }
            Finish::Retry { error, retry_in_ms } => {
                tracing::warn!(notifier = %n.name, notification = %id, attempts, retry_in_ms, %error, "alert notification failed; will retry")
            }
            Finish::GaveUp { error } => {
                tracing::error!(notifier = %n.name, notification = %id, attempts, %error, "alert notification given up")
            }
        }
        match self
            .store
            .finish_notification(&d.key, &self.owner, &finish)
            .await
        {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                notifier = %n.name, notification = %id,
                "alert notification: the claim expired before its outcome was recorded (alert_delivery.timeout_ms too close to MySQL's delays?)"
            ),
            Err(e) => tracing::warn!(
                notifier = %n.name, notification = %id, error = %e,
                "alert notification: cannot record the outcome; the claim expires and it is sent again"
            ),
        }
    }

    /// Re-sends an open alert to Alertmanager (a failure waits for the next
    /// refresh; the alert's `endsAt` leaves room for three).
    async fn refresh(&self, n: &Notifier, a: &AlertRow) {
        let req = payload::request(
            n,
            NotificationTransition::Fired,
            a,
            Utc::now(),
            self.cfg.alertmanager_refresh_secs,
        );
        match self.send(n, &req).await {
            Ok(()) => {
                metrics::attempt(&n.name, Outcome::Delivered);
                self.after_refresh(n, a).await;
            }
            Err(e) => {
                metrics::attempt(&n.name, Outcome::Failed);
                tracing::warn!(notifier = %n.name, alert = a.id, error = %e, "alert re-send to Alertmanager failed; next try in alert_delivery.alertmanager_refresh_secs");
            }
        }
    }

    /// A re-send that raced the alert's resolution may have reached
    /// Alertmanager after the resolution did, and revived it there: if the
    /// alert is resolved by now, its resolution is sent once more (a repeat
    /// changes nothing in Alertmanager).
    async fn after_refresh(&self, n: &Notifier, a: &AlertRow) {
        let Ok(Some(now)) = self.store.alert(a.id).await else {
            return;
        };
        if now.resolved_at.is_none() {
            return;
        }
        let req = payload::request(
            n,
            NotificationTransition::Resolved,
            &now,
            Utc::now(),
            self.cfg.alertmanager_refresh_secs,
        );
        if let Err(e) = self.send(n, &req).await {
            tracing::warn!(notifier = %n.name, alert = a.id, error = %e, "alert re-send raced its resolution, and the resolution could not be sent again: Alertmanager may show it firing until its endsAt");
        }
    }

    /// One request; 2xx delivers.
    async fn send(&self, n: &Notifier, req: &Request) -> Result<(), SendError> {
        send(&self.client, &n.url, req, self.cfg.timeout_ms).await
    }
}

/// The notifiers' client: `timeout_ms` per request, connecting included,
/// and no redirects (a receiver is where its URL says).
fn http_client(timeout_ms: u64) -> Result<reqwest::Client, String> {
    let timeout = Duration::from_millis(timeout_ms);
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("flowmeter/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot make the alert notifiers' HTTP client: {e}"))
}

/// POSTs `req` to `url`; 2xx delivers, 408, 429, 5xx and no answer are
/// worth a retry, any other answer is refused.
async fn send(
    client: &reqwest::Client,
    url: &url::Url,
    req: &Request,
    timeout_ms: u64,
) -> Result<(), SendError> {
    let mut rb = client.post(url.clone()).body(req.body.clone());
    for (h, v) in &req.headers {
        rb = rb.header(*h, v);
    }
    let mut resp = match rb.send().await {
        Ok(r) => r,
        Err(e) => {
            return Err(SendError::Retry {
                reason: describe(&e, url, timeout_ms),
                retry_after: None,
            })
        }
    };
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    // a few bytes of the answer say why; the rest is not read
    let mut said = Vec::new();
    while said.len() < ERROR_BODY_BYTES {
        match resp.chunk().await {
            Ok(Some(c)) => said.extend_from_slice(&c),
            _ => break,
        }
    }
    said.truncate(ERROR_BODY_BYTES);
    let said = String::from_utf8_lossy(&said);
    let reason = format!("answered {status}: {}", said.trim());
    if status.is_server_error()
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
    {
        Err(SendError::Retry {
            reason,
            retry_after,
        })
    } else {
        Err(SendError::Refused(reason))
    }
}

/// Gives up a body over `max_body_bytes` without sending it.
fn too_large(cfg: &AlertDeliveryConfig, len: usize) -> Option<Finish> {
    (len > cfg.max_body_bytes).then(|| Finish::GaveUp {
        error: format!(
            "the body is {len} bytes, over alert_delivery.max_body_bytes ({})",
            cfg.max_body_bytes
        ),
    })
}

/// After attempt `attempts + 1` failed, `age_secs` after the transition:
/// retry after the backoff (or the receiver's `Retry-After`, both capped at
/// `backoff_max_ms`), or give up when refused or out of attempts or time.
fn after_failure(cfg: &AlertDeliveryConfig, attempts: u32, age_secs: u64, e: SendError) -> Finish {
    let attempts = attempts.saturating_add(1);
    let (error, retry_after) = match e {
        SendError::Refused(_) => {
            return Finish::GaveUp {
                error: e.to_string(),
            }
        }
        SendError::Retry {
            reason,
            retry_after,
        } => (reason, retry_after),
    };
    let max = Duration::from_millis(cfg.backoff_max_ms);
    let pause =
        Backoff::after_failures(Duration::from_millis(cfg.backoff_initial_ms), max, attempts)
            .max(retry_after.unwrap_or_default().min(max));
    if attempts >= cfg.max_attempts {
        return Finish::GaveUp {
            error: format!("{error} (gave up after alert_delivery.max_attempts = {attempts})"),
        };
    }
    if age_secs.saturating_add(pause.as_secs()) > cfg.max_age_secs {
        return Finish::GaveUp {
            error: format!(
                "{error} (gave up: older than alert_delivery.max_age_secs = {})",
                cfg.max_age_secs
            ),
        };
    }
    Finish::Retry {
        error,
        retry_in_ms: u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
    }
}

/// A failed request in words, without the URL's path or query (a Slack
/// URL holds its token).
fn describe(e: &reqwest::Error, url: &url::Url, timeout_ms: u64) -> String {
    let host = format!(
        "{}:{}",
        url.host_str().unwrap_or("?"),
        url.port_or_known_default().unwrap_or(0)
    );
    if e.is_timeout() {
        return format!("no answer from {host} within alert_delivery.timeout_ms ({timeout_ms} ms)");
    }
    let mut cause = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if e.is_connect() {
        format!("cannot connect to {host}: {cause}")
    } else {
        format!("request to {host} failed: {cause}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AlertDeliveryConfig {
        AlertDeliveryConfig {
            max_attempts: 4,
            max_age_secs: 60,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 8_000,
            max_body_bytes: 1_024,
            ..AlertDeliveryConfig::default()
        }
    }

    fn down() -> SendError {
        SendError::Retry {
            reason: "cannot connect".into(),
            retry_after: None,
        }
    }

    fn retry_in(f: Finish) -> u64 {
        match f {
            Finish::Retry { retry_in_ms, .. } => retry_in_ms,
            other => panic!("not retried: {other:?}"),
        }
    }

    fn gave_up(f: Finish) -> String {
        match f {
            Finish::GaveUp { error } => error,
            other => panic!("not given up: {other:?}"),
        }
    }

    #[test]
    fn failures_back_off_then_give_up_at_max_attempts() {
        let c = cfg();
        let pauses: Vec<u64> = (0..3)
            .map(|done| retry_in(after_failure(&c, done, 0, down())))
            .collect();
        assert_eq!(pauses, [1_000, 2_000, 4_000]);
        let e = gave_up(after_failure(&c, 3, 0, down()));
        assert!(
            e.contains("max_attempts = 4") && e.starts_with("cannot connect"),
            "{e}"
        );
    }

    #[test]
    fn failures_give_up_past_max_age() {
        let c = cfg();
        assert_eq!(retry_in(after_failure(&c, 0, 58, down())), 1_000);
        let e = gave_up(after_failure(&c, 1, 59, down()));
        assert!(e.contains("max_age_secs = 60"), "{e}");
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap_and_refusals_are_final() {
        let c = cfg();
        let said = |secs| SendError::Retry {
            reason: "answered 429".into(),
            retry_after: Some(Duration::from_secs(secs)),
        };
        assert_eq!(retry_in(after_failure(&c, 0, 0, said(5))), 5_000);
        assert_eq!(retry_in(after_failure(&c, 0, 0, said(3_600))), 8_000);
        let e = gave_up(after_failure(
            &c,
            0,
            0,
            SendError::Refused("answered 400".into()),
        ));
        assert!(e.contains("not retried"), "{e}");
    }

    /// A one-connection server on 127.0.0.1 that reads a request and
    /// writes `answer` (nothing, and holds the connection, when empty).
    async fn server(answer: &'static str) -> url::Url {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            if answer.is_empty() {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            let _ = s.write_all(answer.as_bytes()).await;
        });
        url::Url::parse(&format!("http://{addr}/hook")).expect("url")
    }

    async fn send_to(answer: &'static str, timeout_ms: u64) -> Result<(), SendError> {
        let req = Request {
            body: b"{}".to_vec(),
            headers: vec![("Content-Type", "application/json".into())],
        };
        let client = http_client(timeout_ms).expect("client");
        send(&client, &server(answer).await, &req, timeout_ms).await
    }

    #[tokio::test]
    async fn answers_are_delivered_retried_or_refused() {
        assert_eq!(
            send_to(
                "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
                2_000
            )
            .await,
            Ok(())
        );
        assert_eq!(
            send_to(
                "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 4\r\n\r\nslow",
                2_000
            )
            .await,
            Err(SendError::Retry {
                reason: "answered 429 Too Many Requests: slow".into(),
                retry_after: Some(Duration::from_secs(7)),
            })
        );
        let e = send_to("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", 2_000).await;
        assert!(
            matches!(&e, Err(SendError::Refused(r)) if r.starts_with("answered 404")),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn a_receiver_that_never_answers_is_cut_at_timeout_ms() {
        let from = std::time::Instant::now();
        let e = send_to("", 300).await;
        let took = from.elapsed();
        let Err(SendError::Retry { reason, .. }) = e else {
            panic!("not a retry: {e:?}");
        };
        assert!(
            reason.contains("within alert_delivery.timeout_ms (300 ms)"),
            "{reason}"
        );
        assert!(took < Duration::from_secs(2), "{took:?}");
        // a closed port: refused, retried, the URL's path not in the error
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let url = url::Url::parse(&format!("http://{closed}/T000/secret-token")).expect("url");
        let req = Request {
            body: Vec::new(),
            headers: Vec::new(),
        };
        let e = send(&http_client(300).expect("client"), &url, &req, 300).await;
        let Err(SendError::Retry { reason, .. }) = e else {
            panic!("not a retry: {e:?}");
        };
        assert!(
            reason.starts_with("cannot connect to 127.0.0.1:"),
            "{reason}"
        );
        assert!(!reason.contains("secret-token"), "{reason}");
    }

    #[test]
    fn bodies_over_max_body_bytes_are_not_sent() {
        assert_eq!(too_large(&cfg(), 1_024), None);
        let e = gave_up(too_large(&cfg(), 1_025).expect("too large"));
        assert!(e.contains("max_body_bytes (1024)"), "{e}");
    }
}
