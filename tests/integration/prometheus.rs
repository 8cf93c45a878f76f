//! A real Prometheus (Debian's `prometheus`, which `scripts/services
//! test-deps` installs) scrapes a running flowmeter every second with
//! flowmeter's own alert rules (deploy/prometheus/flowmeter-rules.yml)
//! loaded: the target is up, a flowmeter series is queryable, every rule
//! loaded and evaluates, and the no-worker rule reacts to a setup with no
//! rollup worker. The rules' thresholds are unit-tested by promtool
//! (deploy/prometheus/flowmeter-rules.test.yml, scripts/check-deploy).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::browser::free_port;
use common::*;
use serde_json::Value;

/// The Prometheus binary: `$PROMETHEUS`, else Debian's.
fn prometheus_bin() -> PathBuf {
    let bin = std::env::var_os("PROMETHEUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"));
    assert!(
        bin.exists(),
        "{} is missing: `scripts/services monitoring-deps` installs Debian's prometheus",
        bin.display()
    );
    bin
}

/// A Prometheus child on a free loopback port, its data and log in a
/// temporary directory; the log is printed when the test fails.
struct PrometheusRun {
    child: ChildGuard,
    dir: tempfile::TempDir,
    port: u16,
}

impl PrometheusRun {
    /// Scrapes `target` (host:port) every second, evaluating `rules` every
    /// second.
    fn start(target: &str, rules: &Path) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: flowmeter\n    static_configs:\n      - targets: ['{target}']\n",
                rules = rules.display()
            ),
        )
        .expect("write prometheus.yml");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(prometheus_bin())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Self {
            child: ChildGuard(child),
            dir,
            port,
        }
    }

    fn api(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/api/v1/{path}", self.port)
    }

    /// GETs an API path; its `data` once Prometheus answers "success".
    async fn get(&mut self, client: &reqwest::Client, path: &str) -> Option<Value> {
        assert!(self.child.running(), "prometheus exited");
        let reply: Value = client
            .get(self.api(path))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (reply["status"] == "success").then(|| reply["data"].clone())
    }
}

impl Drop for PrometheusRun {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.path().join("prometheus.log"));
            eprintln!("prometheus log:\n{}", log.unwrap_or_default());
        }
    }
}

/// Polls `path` until `accept` takes its data; returns that data.
async fn poll(
    prom: &mut PrometheusRun,
    client: &reqwest::Client,
    path: &str,
    accept: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    let found = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Some(data) = prom.get(client, path).await {
                if accept(&data) {
                    return data;
                }
                last = data;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("{path}: not as expected within 15 s; last answer: {last}"))
}

/// The names of the alerting rules in deploy/prometheus/flowmeter-rules.yml.
fn alert_names(rules: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(rules).expect("rules file");
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_flowmeter_with_the_alert_rules_loaded() {
    let env = TestEnv::new("prometheus");
    // ingest alone: /metrics and a counter that moves, no MySQL, and no
    // rollup worker for this prefix
    let server = env.start("ingest").await;
    let client = http_client();
    let event = http_event(1, chrono::Utc::now().timestamp_millis()).to_string();
    let (code, body) = post_ndjson(&client, &server.url("/v1/events"), event).await;
    assert_eq!(code, 202, "{body}");

    let rules = repo().join("deploy/prometheus/flowmeter-rules.yml");
    let alerts = alert_names(&rules);
    assert!(alerts.len() >= 7, "{alerts:?}");
    let mut prom = PrometheusRun::start(&server.addr.to_string(), &rules);

    let targets = poll(&mut prom, &client, "targets", |d| {
        d["activeTargets"][0]["health"] == "up"
    })
    .await;
    assert_eq!(
        targets["activeTargets"][0]["labels"]["job"], "flowmeter",
        "{targets}"
    );
    // a counter that exists on every flowmeter: summed, so it reads the same
    // whether it carries labels (kind) or not
    let query = "query?query=sum(flowmeter_events_ingested_total)";
    let data = poll(&mut prom, &client, query, |d| {
        d["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| v >= 1.0)
    })
    .await;
    assert_eq!(data["resultType"], "vector", "{data}");

    // every alert loaded from the file, each evaluated without error
    let loaded = poll(&mut prom, &client, "rules?type=alert", |d| {
        let rules: Vec<&Value> = d["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        rules.len() == alerts.len() && rules.iter().all(|r| r["health"] == "ok")
    })
    .await;
    let names: Vec<&str> = loaded["groups"][0]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, alerts, "{loaded}");
    // nothing processes this flowmeter's streams: the no-worker rule is on
    // its way to firing (pending for its `for`)
    let no_worker = poll(&mut prom, &client, "rules?type=alert", |d| {
        d["groups"][0]["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["name"] == "FlowmeterNoRollupWorker" && r["state"] != "inactive")
    })
    .await;
    assert!(no_worker.to_string().contains("pending"), "{no_worker}");
    server.stop().await;
}
