//! Alert rules, read from `processors/alerts.toml` (`type = "alerts"`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::notify::{self, NotifierDef};
use crate::processor::registry::{
    definition_error, definition_files, definition_type, ALERTS_TYPE,
};
use crate::processor::ProcessorError;
use crate::view::{MeasureRef, Views};

/// The rules file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AlertRules {
    /// Always `alerts`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
    /// Where alerts are sent (`[[notifier]]`; docs/alerts.md#notifiers).
    #[serde(default, rename = "notifier")]
    pub notifiers: Vec<NotifierDef>,
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
    /// The view it watches (`http`, `webrtc`, or another `type = "view"`
    /// file's name); `protocol` is its older name.
    #[serde(alias = "protocol")]
    pub view: String,
    /// One of the view's measures with one value (`error_rate`,
    /// `p95_latency_ms`, …); `metric` is its older name.
    #[serde(alias = "metric")]
    pub measure: String,
    /// The view's scope whose every subject is judged (`overview`,
    /// `service`, `meeting`, …).
    pub scope: String,
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
    /// What `view`, `scope` and `measure` name, once checked against the
    /// views ([`AlertRules::check`]).
    #[serde(skip)]
    pub target: Option<Target>,
}

/// A rule's measure, found in the views.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub measure: MeasureRef,
    /// The measure in a sentence ("Error rate (4xx + 5xx)").
    pub label: String,
    /// How its values are written (see `describe::format`).
    pub unit: Option<String>,
    /// The scope has no dimensions (one subject: all of the view's traffic).
    pub overview: bool,
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
    /// (processors/), in file-name order, against `views`; none is an empty
    /// set. Errors name the file, as the processor registry's do.
    pub fn load(dir: &Path, views: &Views) -> Result<Self, ProcessorError> {
        let mut all = AlertRules {
            kind: ALERTS_TYPE.into(),
            rules: Vec::new(),
            notifiers: Vec::new(),
        };
        for (file, text) in definition_files(dir)? {
            if definition_type(&text).as_deref() != Some(ALERTS_TYPE) {
                continue;
            }
            let mut rules: AlertRules =
                toml::from_str(&text).map_err(|e| definition_error(&file, e.to_string()))?;
            rules
                .check(views)
                .map_err(|reason| definition_error(&file, reason))?;
            all.rules.extend(rules.rules);
            all.notifiers.extend(rules.notifiers);
        }
        all.check(views)
            .map_err(|reason| definition_error(dir, reason))?;
        // notifiers may name the rules of any file
        notify::check(&all.notifiers, &all.rules)
            .map_err(|reason| definition_error(dir, reason))?;
        Ok(all)
    }

    /// Checks every rule and finds its measure in `views`; the message
    /// names the rule and the field.
    pub fn check(&mut self, views: &Views) -> Result<(), String> {
        if self.kind != "alerts" {
            return Err("type must be \"alerts\"".into());
        }
        let mut names = std::collections::HashSet::new();
        for r in &mut self.rules {
            let bad = |m: String| Err(format!("rule {:?}: {m}", r.name));
            if r.name.is_empty() || r.name.len() > 128 {
                return bad("name must be 1 to 128 characters".into());
            }
            if !names.insert(r.name.clone()) {
                return bad("name used twice".into());
            }
            let at = match views.measure_ref(&r.view, &r.scope, &r.measure) {
                Ok(at) => at,
                Err(e) => return bad(e),
            };
            r.target = views.resolve(at).map(|(_, scope, m)| Target {
                measure: at,
                label: m.label.clone(),
                unit: m.unit.clone(),
                overview: scope.dims.is_empty(),
            });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<AlertRules, String> {
        let mut rules: AlertRules = toml::from_str(text).map_err(|e| e.to_string())?;
        rules.check(&Views::of_repo())?;
        Ok(rules)
    }

    #[test]
    fn rules_name_a_view_scope_and_measure_and_the_older_keys_still_work() {
        let new = check(
            "type = \"alerts\"\n[[rule]]\nname = \"a\"\ntype = \"threshold\"\nview = \"http\"\nmeasure = \"error_rate\"\nscope = \"service\"\nvalue = 0.1\nseverity = \"high\"",
        )
        .expect("view/measure");
        let old = check(
            "type = \"alerts\"\n[[rule]]\nname = \"a\"\ntype = \"threshold\"\nprotocol = \"http\"\nmetric = \"error_rate\"\nscope = \"service\"\nvalue = 0.1\nseverity = \"high\"",
        )
        .expect("protocol/metric");
        let (a, b) = (&new.rules[0], &old.rules[0]);
        assert_eq!(a.target, b.target);
        let t = a.target.as_ref().expect("resolved");
        assert_eq!(t.label, "Error rate (4xx + 5xx)");
        assert_eq!(t.unit.as_deref(), Some("percent"));
        assert!(!t.overview);
    }

    #[test]
    fn notifiers_of_any_file_may_name_the_rules_of_another() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rule = "type = \"alerts\"\n[[rule]]\nname = \"a\"\ntype = \"threshold\"\nview = \"http\"\nmeasure = \"error_rate\"\nscope = \"service\"\nvalue = 0.1\nseverity = \"high\"";
        let notifier = |rules: &str| {
            format!("type = \"alerts\"\n[[notifier]]\nname = \"chat\"\ntype = \"slack\"\nurl = \"https://hooks.example/x\"\nrules = [{rules}]")
        };
        std::fs::write(dir.path().join("a_rules.toml"), rule).expect("write");
        std::fs::write(dir.path().join("b_notify.toml"), notifier("\"a\"")).expect("write");
        let loaded = AlertRules::load(dir.path(), &Views::of_repo()).expect("loads");
        assert_eq!((loaded.rules.len(), loaded.notifiers.len()), (1, 1));
        std::fs::write(dir.path().join("b_notify.toml"), notifier("\"b\"")).expect("write");
        let e = AlertRules::load(dir.path(), &Views::of_repo())
            .expect_err("refused")
            .to_string();
        assert!(
            e.contains("notifier \"chat\": rules: no rule named \"b\""),
            "{e}"
        );
    }

    #[test]
    fn errors_say_what_exists() {
        let rule = |view: &str, scope: &str, measure: &str| {
            check(&format!(
                "type = \"alerts\"\n[[rule]]\nname = \"r\"\ntype = \"threshold\"\nview = \"{view}\"\nmeasure = \"{measure}\"\nscope = \"{scope}\"\nseverity = \"low\""
            ))
            .expect_err("refused")
        };
        let e = rule("dns", "overview", "x");
        assert!(
            e.contains("rule \"r\"") && e.contains("http, webrtc"),
            "{e}"
        );
        let e = rule("http", "meeting", "error_rate");
        assert!(e.contains("overview, service, endpoint"), "{e}");
        let e = rule("webrtc", "meeting", "error_rate");
        assert!(e.contains("relayed_share"), "{e}");
        // a measure of many values (quantile lists, classes) cannot be compared
        let e = rule("http", "overview", "latency_ms");
        assert!(e.contains("with one value"), "{e}");
    }
}
