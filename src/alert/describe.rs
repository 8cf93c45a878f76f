//! Alert messages written for people: each measure's label and unit (from
//! its view file), the subject as "service svc-0" rather than its channel
//! name, and values in the unit a person reads (bits/s, ms, %, req/s). The
//! alert JSON keeps the machine fields (`metric`, `value`, `threshold`,
//! `subject`) as they are.

use super::rules::{Rule, RuleKind};

/// What a rule was judged against in one second.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Judgement {
    /// Whether the condition holds.
    pub holds: bool,
    /// The value the metric was compared with.
    pub threshold: f64,
    /// spike: the EWMA baseline; anomaly: the rolling mean; threshold: the limit.
    pub baseline: f64,
}

/// The measure of `rule` in a sentence: its label, or its name.
fn label(rule: &Rule) -> &str {
    rule.target
        .as_ref()
        .map_or(rule.measure.as_str(), |t| t.label.as_str())
}

/// `v` in a measure's `unit` as a person reads it: `bytes/s` and `bits/s`
/// as `2.47 Mb/s`, `percent` (a ratio) as `58 %`, `ms` as `312 ms` or
/// `1.20 s`, any other unit after three significant figures (`312 req/s`).
pub fn format(unit: Option<&str>, v: f64) -> String {
    match unit {
        Some("bytes/s") => bits_per_sec(v * 8.0),
        Some("bits/s") => bits_per_sec(v),
        Some("percent") => percent(v),
        Some("ms") if v >= 1_000.0 => format!("{:.2} s", v / 1_000.0),
        Some("ms") => format!("{} ms", significant(v)),
        Some(u) => format!("{} {u}", significant(v)),
        None => significant(v),
    }
}

fn unit(rule: &Rule) -> Option<&str> {
    rule.target.as_ref().and_then(|t| t.unit.as_deref())
}

/// Three significant figures (whole numbers in full, with thousands
/// separators).
fn significant(v: f64) -> String {
    let a = v.abs();
    if a >= 1_000.0 {
        let digits = format!("{a:.0}");
        let n = digits.len();
        let grouped: String = digits
            .chars()
            .enumerate()
            .flat_map(|(i, c)| {
                let sep = (i > 0 && (n - i) % 3 == 0).then_some(',');
                sep.into_iter().chain(std::iter::once(c))
            })
            .collect();
        format!("{}{grouped}", if v < 0.0 { "-" } else { "" })
    } else if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn percent(ratio: f64) -> String {
    let p = ratio * 100.0;
    if p.abs() < 10.0 && p.fract() != 0.0 {
        format!("{p:.1} %")
    } else {
        format!("{p:.0} %")
    }
}

fn bits_per_sec(bits: f64) -> String {
    const UNITS: [(f64, &str); 4] = [(1e9, "Gb/s"), (1e6, "Mb/s"), (1e3, "kb/s"), (1.0, "b/s")];
    let (div, unit) = UNITS
        .iter()
        .copied()
        .find(|(d, _)| bits.abs() >= *d)
        .unwrap_or((1.0, "b/s"));
    format!("{} {unit}", significant(bits / div))
}

/// "5 min", "90 s", "1 h".
fn span(secs: u64) -> String {
    if secs >= 3_600 && secs % 3_600 == 0 {
        format!("{} h", secs / 3_600)
    } else if secs >= 60 && secs % 60 == 0 {
        format!("{} min", secs / 60)
    } else {
        format!("{secs} s")
    }
}

/// The subject of a channel name, in words: `on service svc-0`,
/// `on meeting m-3`, `across all http traffic`.
pub fn subject_words(rule: &Rule, subject: &str) -> String {
    if rule.target.as_ref().is_some_and(|t| t.overview) {
        return format!("across all {} traffic", rule.view);
    }
    let prefix = format!("{}:{}:", rule.view, rule.scope);
    let rest = subject.strip_prefix(&prefix).unwrap_or(subject);
    format!("on {} {rest}", rule.scope)
}

/// The message of an alert that fires: `value` has held past the rule's
/// condition for `held_secs`.
pub fn fired(rule: &Rule, subject: &str, value: f64, j: &Judgement, held_secs: i64) -> String {
    let f = |v: f64| format(unit(rule), v);
    let what = format!(
        "{} {} is {}",
        label(rule),
        subject_words(rule, subject),
        f(value)
    );
    let why = match rule.kind {
        RuleKind::Threshold => format!(
            "{} {}",
            if rule.op == "<" { "below" } else { "above" },
            f(rule.value)
        ),
        RuleKind::Spike => format!(
            "{:.1}× its {} baseline ({})",
            value / j.baseline.max(f64::MIN_POSITIVE),
            span(rule.baseline_secs),
            f(j.baseline)
        ),
        RuleKind::Anomaly => {
            let sd = (j.threshold - j.baseline) / rule.z;
            let z = if sd > 0.0 {
                (value - j.baseline) / sd
            } else {
                rule.z
            };
            format!(
                "{z:.1} standard deviations above its {} mean ({})",
                span(rule.baseline_secs),
                f(j.baseline)
            )
        }
    };
    format!("{what}, {why} for {held_secs} s")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::Severity;

    /// A rule checked against the shipped views.
    fn rule(kind: RuleKind, view: &str, measure: &str, scope: &str) -> Rule {
        let mut rules = crate::alert::AlertRules {
            kind: "alerts".into(),
            rules: vec![Rule {
                name: "r".into(),
                kind,
                view: view.into(),
                measure: measure.into(),
                scope: scope.into(),
                window_secs: 60,
                op: ">".into(),
                value: 0.5,
                k: 3.0,
                baseline_secs: 300,
                z: 4.0,
                severity: Severity::Low,
                for_secs: 60,
                clear_for_secs: 60,
                min_events: 0,
                target: None,
            }],
            notifiers: Vec::new(),
        };
        rules
            .check(&crate::view::Views::of_repo())
            .expect("a shipped measure");
        rules.rules.remove(0)
    }

    fn j(threshold: f64, baseline: f64) -> Judgement {
        Judgement {
            holds: true,
            threshold,
            baseline,
        }
    }

    #[test]
    fn messages_name_the_metric_and_subject_in_words_with_units() {
        let r = rule(RuleKind::Threshold, "webrtc", "relayed_share", "meeting");
        assert_eq!(
            fired(&r, "webrtc:meeting:m-3", 0.58, &j(0.5, 0.5), 60),
            "Relayed (TURN) share of calls on meeting m-3 is 58 %, above 50 % for 60 s"
        );
        let r = rule(RuleKind::Spike, "http", "bandwidth", "service");
        assert_eq!(
            fired(&r, "http:service:a:b", 309_084.5, &j(150_000.0, 50_000.0), 20),
            "Bandwidth (in + out) on service a:b is 2.47 Mb/s, 6.2× its 5 min baseline (400 kb/s) for 20 s"
        );
        let mut r = rule(RuleKind::Anomaly, "http", "requests_per_sec", "overview");
        r.baseline_secs = 600;
        assert_eq!(
            fired(&r, "http:overview", 312.0, &j(240.0, 200.0), 30),
            "Request rate across all http traffic is 312 req/s, 11.2 standard deviations above its 10 min mean (200 req/s) for 30 s"
        );
        let mut r = rule(RuleKind::Threshold, "http", "p95_latency_ms", "endpoint");
        r.op = "<".into();
        r.value = 1_000.0;
        assert_eq!(
            fired(&r, "http:endpoint:svc:GET:/a/:id", 12.345, &j(1e3, 1e3), 5),
            "p95 latency on endpoint svc:GET:/a/:id is 12.3 ms, below 1.00 s for 5 s"
        );
    }

    #[test]
    fn units_scale() {
        let bytes = |v| format(Some("bytes/s"), v);
        assert_eq!(bytes(0.0), "0 b/s");
        assert_eq!(bytes(125.0), "1.00 kb/s");
        assert_eq!(bytes(75e6), "600 Mb/s");
        assert_eq!(bytes(2e9), "16.0 Gb/s");
        assert_eq!(format(Some("bits/s"), 2e6), "2.00 Mb/s");
        assert_eq!(format(Some("percent"), 0.031), "3.1 %");
        assert_eq!(format(Some("percent"), 1.0), "100 %");
        assert_eq!(format(Some("req/s"), 10_267.028), "10,267 req/s");
        assert_eq!(format(Some("req/s"), 1_234_567.0), "1,234,567 req/s");
        assert_eq!(format(Some("ms"), 432.1), "432 ms");
        assert_eq!(format(Some("ms"), 1_432.1), "1.43 s");
        assert_eq!(format(None, 0.5), "0.50");
    }
}
