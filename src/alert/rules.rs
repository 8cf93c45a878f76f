//! Alert rules, read from `processors/alerts.toml` (`type = "alerts"`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::processor::registry::{
    definition_error, definition_files, definition_type, ALERTS_TYPE,
};
use crate::processor::ProcessorError;

/// The rules file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AlertRules {
    /// Always `alerts`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
}

/// How a rule decides that its condition holds.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// The metric is above (or below, `op = "<"`) `value`.
    Threshold,
    /// The metric is above `k` × its EWMA baseline.
    Spike,
    /// The metric's z-score against its rolling mean and deviation is above `z`.
    Anomaly,
}

/// What is measured.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Bytes per second (http: in + out; webrtc: sent + received).
    Bandwidth,
    RequestsPerSec,
    /// (4xx + 5xx) / requests.
    ErrorRate,
    /// http: request duration; webrtc: rtt.
    P95LatencyMs,
    /// webrtc: share of samples relayed through TURN.
    RelayedShare,
}

/// Over which subjects a rule runs.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// `http:overview` / `webrtc:overview`.
    Overview,
    /// Every `http:service:*`.
    Service,
    /// Every `http:endpoint:*`.
    Endpoint,
    /// Every `webrtc:meeting:*`.
    Meeting,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

/// One rule.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique name; one open alert per rule and subject.
    pub name: String,
    #[serde(rename = "type")]
    pub kind: RuleKind,
    /// `http` or `webrtc`.
    pub protocol: String,
    pub metric: Metric,
    pub scope: Scope,
    /// The metric is computed over the last this many seconds (≤ 300).
    #[serde(default = "sixty")]
    pub window_secs: u64,
    /// threshold: `>` (default) or `<`.
    #[serde(default = "gt")]
    pub op: String,
    /// threshold: the limit.
    #[serde(default)]
    pub value: f64,
    /// spike: factor over the baseline.
    #[serde(default = "three")]
    pub k: f64,
    /// spike: half-life of the EWMA baseline.
    #[serde(default = "five_min")]
    pub baseline_secs: u64,
    /// anomaly: z-score limit (baseline over `baseline_secs`).
    #[serde(default = "three")]
    pub z: f64,
    pub severity: Severity,
    /// The condition must hold this long before the alert fires.
    #[serde(default, rename = "for")]
    pub for_secs: u64,
    /// It must be clear this long before the alert resolves.
    #[serde(default = "sixty", rename = "clear_for")]
    pub clear_for_secs: u64,
    /// Subjects with fewer events than this in the window are not judged
    /// (an error rate over three requests means little).
    #[serde(default)]
    pub min_events: u64,
}

fn sixty() -> u64 {
    60
}
fn gt() -> String {
    ">".into()
}
fn three() -> f64 {
    3.0
}
fn five_min() -> u64 {
    300
}

impl AlertRules {
    /// Reads and checks the rules of every file of type `alerts` in `dir`
    /// (processors/), in file-name order; none is an empty set. Errors name
    /// the file, as the processor registry's do.
    pub fn load(dir: &Path) -> Result<Self, ProcessorError> {
        let mut all = AlertRules {
            kind: ALERTS_TYPE.into(),
            rules: Vec::new(),
        };
        for (file, text) in definition_files(dir)? {
            if definition_type(&text).as_deref() != Some(ALERTS_TYPE) {
                continue;
            }
            let rules: AlertRules =
                toml::from_str(&text).map_err(|e| definition_error(&file, e.to_string()))?;
            rules
                .check()
                .map_err(|reason| definition_error(&file, reason))?;
            all.rules.extend(rules.rules);
        }
        all.check()
            .map_err(|reason| definition_error(dir, reason))?;
        Ok(all)
    }

    /// Checks every rule; the message names the rule and the field.
    pub fn check(&self) -> Result<(), String> {
        if self.kind != "alerts" {
            return Err("type must be \"alerts\"".into());
        }
        let mut names = std::collections::HashSet::new();
        for r in &self.rules {
            let bad = |m: String| Err(format!("rule {:?}: {m}", r.name));
            if r.name.is_empty() || r.name.len() > 128 {
                return bad("name must be 1 to 128 characters".into());
            }
            if !names.insert(r.name.as_str()) {
                return bad("name used twice".into());
            }
            let scope_ok = match r.protocol.as_str() {
                "http" => {
                    matches!(r.scope, Scope::Overview | Scope::Service | Scope::Endpoint)
                        && r.metric != Metric::RelayedShare
                }
                "webrtc" => {
                    matches!(r.scope, Scope::Overview | Scope::Meeting)
                        && !matches!(r.metric, Metric::RequestsPerSec | Metric::ErrorRate)
                }
                p => return bad(format!("protocol {p:?}: use http or webrtc")),
            };
            if !scope_ok {
                return bad(format!(
                    "{:?} over {:?} does not exist for {}: http has overview/service/endpoint and every metric but relayed_share; webrtc has overview/meeting with bandwidth, p95_latency_ms, relayed_share",
                    r.metric, r.scope, r.protocol
                ));
            }
            if r.window_secs == 0 || r.window_secs > 300 {
                return bad("window_secs must be 1 to 300".into());
            }
            if r.op != ">" && r.op != "<" {
                return bad(format!("op {:?}: use > or <", r.op));
            }
            if !r.value.is_finite()
                || !r.k.is_finite()
                || r.k <= 0.0
                || !r.z.is_finite()
                || r.z <= 0.0
            {
                return bad("value, k and z must be finite; k and z positive".into());
            }
            if r.baseline_secs < 10 || r.baseline_secs > 3_600 {
                return bad("baseline_secs must be 10 to 3600".into());
            }
        }
        Ok(())
    }
}
