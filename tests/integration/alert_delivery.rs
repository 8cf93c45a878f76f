//! Alert delivery against real receivers: an HTTP server in the test that
//! checks the webhook's HMAC signature, is down (connections refused, then
//! 500s) while an alert fires and resolves, then comes back: with two hub
//! instances delivering, each transition reaches each notifier once, fired
//! before resolved, and `GET /v1/alerts` and the metrics say so; a
//! receiver answering 400 gets one attempt. And Debian's
//! prometheus-alertmanager, started here, shows the alert active (kept
//! alive by re-sends) and then no longer.

use crate::alerts::{api_and_two_hubs, burst};
use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use common::browser::free_port;
use common::*;
use flowmeter::store::NewAlert;
use hmac::{Hmac, Mac};
use serde_json::Value;

const SECRET: &str = "test-secret-0123456789";

/// One request the receiver took.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
    /// The status it was answered.
    answered: u16,
}

impl Received {
    fn id(&self) -> String {
        self.headers
            .get("x-flowmeter-notification")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }
}

/// An HTTP receiver on a port chosen before it listens: `/reject` always
/// answers 400, other paths `status` (200 once the test says so).
#[derive(Clone)]
struct Receiver {
    port: u16,
    status: Arc<AtomicU16>,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn new() -> Self {
        Receiver {
            port: free_port(),
            status: Arc::new(AtomicU16::new(500)),
            got: Arc::default(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Starts listening (until then connections are refused).
    async fn listen(&self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("the receiver's port is still free");
        let me = self.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let me = me.clone();
            async move {
                let path = uri.path().to_string();
                let answer = if path == "/reject" {
                    StatusCode::BAD_REQUEST
                } else {
                    StatusCode::from_u16(me.status.load(Ordering::SeqCst))
                        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
                };
                me.got.lock().expect("log").push(Received {
                    path,
                    headers,
                    body,
                    answered: answer.as_u16(),
                });
                (answer, "receiver says so")
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
    }

    /// The requests to `path`, in arrival order.
    fn bodies(&self, path: &str) -> Vec<Received> {
        self.got
            .lock()
            .expect("log")
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}

/// Checks `X-Flowmeter-Signature: t=…,v1=…` over `t.body` with the
/// secret, as a receiver would (docs/alerts.md), and that `t` is recent.
fn verify_signature(r: &Received) {
    let header = r
        .headers
        .get("x-flowmeter-signature")
        .and_then(|v| v.to_str().ok())
        .expect("a signature header");
    let parts: BTreeMap<&str, &str> = header
        .split(',')
        .filter_map(|p| p.split_once('='))
        .collect();
    let t: i64 = parts.get("t").and_then(|t| t.parse().ok()).expect("t=");
    let sig = parts.get("v1").expect("v1=");
    let sig: Vec<u8> = (0..sig.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(sig.get(i..i + 2).expect("hex pair"), 16).expect("hex"))
        .collect();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(format!("{t}.").as_bytes());
    mac.update(&r.body);
    mac.verify_slice(&sig)
        .expect("the signature is the HMAC of t.body");
    let age = chrono::Utc::now().timestamp() - t;
    assert!((0..=60).contains(&age), "timestamp {t} is {age} s old");
}

/// The value of a labelled series `name{labels}` in a `/metrics` text.
fn series(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn rules_with(notifiers: &str) -> String {
    format!(
        r#"
type = "alerts"
[[rule]]
name = "errors"
type = "threshold"
view = "http"
measure = "error_rate"
scope = "service"
window_secs = 2
value = 0.5
severity = "critical"
for = 1
clear_for = 1
min_events = 5
{notifiers}"#
    )
}

fn fast_delivery(env: &mut TestEnv) {
    let d = &mut env.settings.alert_delivery;
    d.poll_ms = 100;
    d.timeout_ms = 2_000;
    d.backoff_initial_ms = 100;
    d.backoff_max_ms = 400;
    d.max_attempts = 1_000;
    env.settings.hub.tick_grace_ms = 200;
}

async fn outbox(store: &flowmeter::store::Store, sql_where: &str) -> i64 {
    scalar(
        store,
        &format!("SELECT COUNT(*) FROM alert_notifications WHERE {sql_where}"),
    )
    .await
}

/// Posts bursts of events answered `status` until `rows` outbox rows
/// match `sql_where` (the evaluator queued the transition).
async fn burst_until(
    client: &reqwest::Client,
    url: &str,
    status: u16,
    store: &flowmeter::store::Store,
    sql_where: &str,
    rows: i64,
) {
    let from = Instant::now();
    while outbox(store, sql_where).await < rows {
        assert!(
            from.elapsed() < Duration::from_secs(15),
            "no {sql_where} after 15 s of events answered {status}"
        );
        burst(client, url, status, 40).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_transition_reaches_each_notifier_once_after_an_outage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env = TestEnv::new("alert_delivery");
    use_copied_definitions(&mut env, dir.path());
    let rx = Receiver::new();
    std::fs::write(
        dir.path().join("processors/alerts.toml"),
        rules_with(&format!(
            r#"
[[notifier]]
name = "hook"
type = "webhook"
url = "{}"
secret_env = "FM_TEST_ALERT_DELIVERY_SECRET"
[[notifier]]
name = "chat"
type = "slack"
url = "{}"
[[notifier]]
name = "strict"
type = "webhook"
url = "{}"
secret = "{SECRET}"
send_resolved = false
"#,
            rx.url("/hook"),
            rx.url("/chat"),
            rx.url("/reject")
        )),
    )
    .expect("rules");
    // the one variable this test sets; nothing else reads it
    std::env::set_var("FM_TEST_ALERT_DELIVERY_SECRET", SECRET);
    fast_delivery(&mut env);
    let (api, hub_a, hub_b) = api_and_two_hubs(&env).await;
    let client = http_client();
    let url = api.url("/v1/events");
    let store = env.store().await;
    let store = &store;
    tokio::time::sleep(Duration::from_millis(1_200)).await;

    // the receiver is down (refused) while the alert fires and resolves
    burst_until(&client, &url, 503, store, "transition = 'fired'", 3).await;
    burst_until(&client, &url, 200, store, "transition = 'resolved'", 2).await;
    assert_eq!(
        outbox(store, "notifier = 'strict'").await,
        1,
        "send_resolved = false: no resolution queued for it"
    );
    // retried while refused, nothing delivered
    wait_until(Duration::from_secs(5), || async move {
        outbox(
            store,
            "attempts >= 2 AND state = 'pending' AND last_error LIKE 'cannot connect%'",
        )
        .await
            >= 2
    })
    .await;
    assert_eq!(outbox(store, "state = 'delivered'").await, 0);

    // back, answering 500 for a while, then 200
    rx.listen().await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert!(
        !rx.bodies("/hook").is_empty(),
        "tried while it answered 500"
    );
    rx.status.store(200, Ordering::SeqCst);
    let back = Instant::now();
    wait_until(Duration::from_secs(10), || async {
        outbox(store, "state = 'delivered'").await == 4
            && outbox(store, "state = 'gave_up'").await == 1
    })
    .await;
    eprintln!(
        "4 notifications delivered {:?} after the receiver answered 200 again (backoff_max_ms 400), after {} failed requests",
        back.elapsed(),
        rx.got.lock().expect("log").iter().filter(|r| r.answered == 500).count()
    );
    // time for a second delivery, if anything would make one
    tokio::time::sleep(Duration::from_millis(1_000)).await;

    for path in ["/hook", "/chat"] {
        let all = rx.bodies(path);
        let ids: Vec<String> = all.iter().map(Received::id).collect();
        let accepted: Vec<String> = all
            .iter()
            .filter(|r| r.answered == 200)
            .map(Received::id)
            .collect();
        assert_eq!(accepted.len(), 2, "{path}: each transition once: {ids:?}");
        assert!(
            accepted[0].ends_with("-fired") && accepted[1].ends_with("-resolved"),
            "{path}: {accepted:?}"
        );
        let resolved_first = ids.iter().position(|i| i.ends_with("-resolved"));
        let fired_done = all.iter().position(|r| r.answered == 200);
        assert!(
            fired_done < resolved_first,
            "{path}: the resolution waits for the firing's delivery: {ids:?}"
        );
        assert!(
            all.iter().any(|r| r.answered == 500),
            "{path}: tried while it answered 500"
        );
    }
    // the webhook's body, signature and id
    let hooks = rx.bodies("/hook");
    for r in &hooks {
        verify_signature(r);
    }
    let last: Value = serde_json::from_slice(&hooks.last().expect("one").body).expect("json");
    assert_eq!(last["state"], "resolved", "{last}");
    assert_eq!(last["alert"]["rule"], "errors");
    assert_eq!(last["alert"]["subject"], "http:service:bad");
    assert!(last["alert"]["resolved_at"].is_string());
    assert_eq!(last["id"], format!("{}-resolved", last["alert"]["id"]));
    let chat: Value = serde_json::from_slice(&rx.bodies("/chat")[0].body).expect("json");
    assert!(
        chat["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("[CRITICAL] errors firing: Error rate")),
        "{chat}"
    );
    assert_eq!(rx.bodies("/reject").len(), 1, "a 400 is not retried");

    // GET /v1/alerts shows each notifier's delivery
    let listed = get_json(&client, api.url("/v1/alerts")).await;
    let delivery = listed["alerts"][0]["delivery"]
        .as_array()
        .expect("delivery")
        .clone();
    assert_eq!(delivery.len(), 5, "{listed}");
    for d in &delivery {
        match d["notifier"].as_str() {
            Some("strict") => {
                assert_eq!(d["state"], "gave_up", "{d}");
                assert!(
                    d["last_error"]
                        .as_str()
                        .is_some_and(|e| e.contains("answered 400")),
                    "{d}"
                );
            }
            _ if d["transition"] == "fired" => {
                assert_eq!(d["state"], "delivered", "{d}");
                assert!(d["delivered_at"].is_string());
                assert!(d["attempts"].as_u64().is_some_and(|a| a >= 2), "{d}");
                assert!(
                    d["last_error"].is_string(),
                    "the outage's error is kept: {d}"
                );
            }
            _ => {
                // the resolution waited for the firing's delivery
                assert_eq!(d["state"], "delivered", "{d}");
                assert_eq!(d["attempts"], 1, "{d}");
            }
        }
    }

    // the two hubs run in this one process and share its counters: one
    // scrape holds both deliverers' attempts
    let text = metrics_text(&client, &hub_b).await;
    let (mut delivered, mut failed, mut gave_up) = (0.0, 0.0, 0.0);
    for n in ["hook", "chat", "strict"] {
        let s = |o: &str| {
            format!("flowmeter_alert_notifications_total{{notifier=\"{n}\",outcome=\"{o}\"}}")
        };
        delivered += series(&text, &s("delivered"));
        failed += series(&text, &s("failed"));
        gave_up += series(&text, &s("gave_up"));
    }
    assert!(
        text.contains("flowmeter_alert_outbox_pending{notifier=\"hook\"} 0"),
        "{text}"
    );
    assert_eq!((delivered, gave_up), (4.0, 1.0));
    assert!(failed >= 4.0, "{failed} failed attempts while down");

    std::env::remove_var("FM_TEST_ALERT_DELIVERY_SECRET");
    hub_a.stop().await;
    hub_b.stop().await;
    api.stop().await;
    env.cleanup().await;
}

const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";

/// Debian's Alertmanager on 127.0.0.1:`port`, one receiver that drops
/// everything, its data in `dir`.
fn start_alertmanager(dir: &Path, port: u16) -> ChildGuard {
    assert!(
        Path::new(ALERTMANAGER).exists(),
        "{ALERTMANAGER} is missing: install Debian's Alertmanager with `sudo apt-get install prometheus-alertmanager`"
    );
    let config = dir.join("alertmanager.yml");
    std::fs::write(
        &config,
        "route:\n  receiver: drop\nreceivers:\n  - name: drop\n",
    )
    .expect("config");
    ChildGuard(
        std::process::Command::new(ALERTMANAGER)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg("--cluster.listen-address=")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start alertmanager"),
    )
}

/// Alertmanager's alerts named `alertname`.
async fn am_alerts(client: &reqwest::Client, port: u16, alertname: &str) -> Vec<Value> {
    let Ok(r) = client
        .get(format!(
            "http://127.0.0.1:{port}/api/v2/alerts?filter=alertname%3D%22{alertname}%22"
        ))
        .send()
        .await
    else {
        return Vec::new();
    };
    r.json::<Vec<Value>>().await.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_alertmanager_shows_the_alert_active_then_resolved() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut env = TestEnv::new("alert_am");
    use_copied_definitions(&mut env, dir.path());
    let port = free_port();
    std::fs::write(
        dir.path().join("processors/alerts.toml"),
        rules_with(&format!(
            "[[notifier]]\nname = \"am\"\ntype = \"alertmanager\"\nurl = \"http://127.0.0.1:{port}\"\nlabels = {{ team = \"web\" }}\n"
        )),
    )
    .expect("rules");
    fast_delivery(&mut env);
    // a firing alert ends 4 s after each sending unless re-sent
    env.settings.alert_delivery.alertmanager_refresh_secs = 1;
    env.migrate().await;
    let hub = env.start("hub").await;
    let store = env.store().await;
    let store = &store;
    let client = http_client();
    let client = &client;

    // Written as the evaluator writes a transition, under a rule the
    // evaluator does not judge (it would resolve a subject without
    // traffic), so the alert stays open as long as the test wants; the
    // other test drives real transitions. Fired while Alertmanager is not
    // up yet: refused, retried.
    let opened = store
        .open_alert(
            &NewAlert {
                rule: "manual",
                kind: "threshold",
                severity: "critical",
                protocol: "http",
                subject: "http:service:am",
                metric: "error_rate",
                value: 0.9,
                threshold: 0.5,
                message: "Error rate (4xx + 5xx) on service am is 90 %, above 50 % for 1 s",
                at: chrono::Utc::now(),
            },
            &["am"],
        )
        .await
        .expect("open")
        .expect("new");
    wait_until(Duration::from_secs(5), || async {
        outbox(store, "attempts >= 1 AND state = 'pending'").await == 1
    })
    .await;
    let _am = start_alertmanager(dir.path(), port);
    let mut active = Vec::new();
    let until = Instant::now() + Duration::from_secs(15);
    while active.is_empty() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        active = am_alerts(client, port, "manual").await;
    }
    let a = active.first().expect("Alertmanager has the alert");
    assert_eq!(a["status"]["state"], "active", "{a}");
    assert_eq!(a["labels"]["severity"], "critical");
    assert_eq!(a["labels"]["subject"], "http:service:am");
    assert_eq!(a["labels"]["team"], "web");
    assert_eq!(
        a["annotations"]["flowmeter_alert_id"],
        opened.id.to_string()
    );
    assert!(a["annotations"]["summary"]
        .as_str()
        .is_some_and(|s| s.contains("90 %")));
    let first_end = a["endsAt"].as_str().expect("endsAt").to_string();

    // past the first endsAt, the re-sends keep it active
    tokio::time::sleep(Duration::from_secs(5)).await;
    let still = am_alerts(client, port, "manual").await;
    let refreshed = outbox(store, "refreshed_at > delivered_at + INTERVAL 2 SECOND").await;
    let a = still
        .first()
        .unwrap_or_else(|| panic!("still there (re-sent {refreshed} s after delivery)"));
    assert_eq!(a["status"]["state"], "active", "{a}");
    assert!(
        a["endsAt"].as_str().is_some_and(|e| e > first_end.as_str()),
        "{a} vs {first_end}"
    );

    store
        .resolve_alert("manual", "http:service:am", chrono::Utc::now(), &["am"])
        .await
        .expect("resolve")
        .expect("was open");
    wait_until(Duration::from_secs(10), || async move {
        am_alerts(client, port, "manual").await.is_empty()
    })
    .await;
    assert_eq!(outbox(store, "state = 'delivered'").await, 2);
    hub.stop().await;
    env.cleanup().await;
}
