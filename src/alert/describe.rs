//! Alert messages written for people: each metric's name and unit, the
//! subject as "service svc-0" rather than its channel name, and values in
//! the unit a person reads (bits/s, ms, %, req/s). The alert JSON keeps the
//! machine fields (`metric`, `value`, `threshold`, `subject`) as they are.

use super::rules::{Metric, Rule, RuleKind, Scope};

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

impl Metric {
    /// The metric's name in a sentence, for `protocol`.
    pub fn label(self, protocol: &str) -> &'static str {
        match (self, protocol) {
            (Metric::Bandwidth, "webrtc") => "Media bandwidth (sent + received)",
            (Metric::Bandwidth, _) => "Bandwidth (in + out)",
            (Metric::RequestsPerSec, _) => "Request rate",
            (Metric::ErrorRate, _) => "Error rate (4xx + 5xx)",
            (Metric::P95LatencyMs, "webrtc") => "p95 round-trip time",
            (Metric::P95LatencyMs, _) => "p95 latency",
            (Metric::RelayedShare, _) => "Relayed (TURN) share of calls",
        }
    }

    /// `v` (in the metric's own unit: bytes/s, req/s, a ratio, ms) as a
    /// person reads it: `2.47 Mb/s`, `312 req/s`, `58 %`, `1.20 s`.
    pub fn format(self, v: f64) -> String {
        match self {
            Metric::Bandwidth => bits_per_sec(v * 8.0),
            Metric::RequestsPerSec => format!("{} req/s", significant(v)),
            Metric::ErrorRate | Metric::RelayedShare => percent(v),
            Metric::P95LatencyMs if v >= 1_000.0 => format!("{:.2} s", v / 1_000.0),
            Metric::P95LatencyMs => format!("{} ms", significant(v)),
        }
    }
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
    let strip = |prefix: &str| subject.strip_prefix(prefix).unwrap_or(subject).to_string();
    match rule.scope {
        Scope::Overview => format!("across all {} traffic", rule.protocol),
        Scope::Service => format!("on service {}", strip("http:service:")),
        Scope::Endpoint => format!("on endpoint {}", strip("http:endpoint:")),
        Scope::Meeting => format!("on meeting {}", strip("webrtc:meeting:")),
    }
}

/// The message of an alert that fires: `value` has held past the rule's
/// condition for `held_secs`.
pub fn fired(rule: &Rule, subject: &str, value: f64, j: &Judgement, held_secs: i64) -> String {
    let m = rule.metric;
    let what = format!(
        "{} {} is {}",
        m.label(&rule.protocol),
        subject_words(rule, subject),
        m.format(value)
    );
    let why = match rule.kind {
        RuleKind::Threshold => format!(
            "{} {}",
            if rule.op == "<" { "below" } else { "above" },
            m.format(rule.value)
        ),
        RuleKind::Spike => format!(
            "{:.1}× its {} baseline ({})",
            value / j.baseline.max(f64::MIN_POSITIVE),
            span(rule.baseline_secs),
            m.format(j.baseline)
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
                m.format(j.baseline)
            )
        }
    };
    format!("{what}, {why} for {held_secs} s")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::Severity;

    fn rule(kind: RuleKind, protocol: &str, metric: Metric, scope: Scope) -> Rule {
        Rule {
            name: "r".into(),
            kind,
            protocol: protocol.into(),
            metric,
            scope,
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
        }
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
        let r = rule(
            RuleKind::Threshold,
            "webrtc",
            Metric::RelayedShare,
            Scope::Meeting,
        );
        assert_eq!(
            fired(&r, "webrtc:meeting:m-3", 0.58, &j(0.5, 0.5), 60),
            "Relayed (TURN) share of calls on meeting m-3 is 58 %, above 50 % for 60 s"
        );
        let r = rule(RuleKind::Spike, "http", Metric::Bandwidth, Scope::Service);
        assert_eq!(
            fired(&r, "http:service:a:b", 309_084.5, &j(150_000.0, 50_000.0), 20),
            "Bandwidth (in + out) on service a:b is 2.47 Mb/s, 6.2× its 5 min baseline (400 kb/s) for 20 s"
        );
        let mut r = rule(
            RuleKind::Anomaly,
            "http",
            Metric::RequestsPerSec,
            Scope::Overview,
        );
        r.baseline_secs = 600;
        assert_eq!(
            fired(&r, "http:overview", 312.0, &j(240.0, 200.0), 30),
            "Request rate across all http traffic is 312 req/s, 11.2 standard deviations above its 10 min mean (200 req/s) for 30 s"
        );
        let mut r = rule(
            RuleKind::Threshold,
            "http",
            Metric::P95LatencyMs,
            Scope::Endpoint,
        );
        r.op = "<".into();
        r.value = 1_000.0;
        assert_eq!(
            fired(&r, "http:endpoint:svc:GET:/a/:id", 12.345, &j(1e3, 1e3), 5),
            "p95 latency on endpoint svc:GET:/a/:id is 12.3 ms, below 1.00 s for 5 s"
        );
    }

    #[test]
    fn units_scale() {
        assert_eq!(Metric::Bandwidth.format(0.0), "0 b/s");
        assert_eq!(Metric::Bandwidth.format(125.0), "1.00 kb/s");
        assert_eq!(Metric::Bandwidth.format(75e6), "600 Mb/s");
        assert_eq!(Metric::Bandwidth.format(2e9), "16.0 Gb/s");
        assert_eq!(Metric::ErrorRate.format(0.031), "3.1 %");
        assert_eq!(Metric::ErrorRate.format(1.0), "100 %");
        assert_eq!(Metric::RequestsPerSec.format(10_267.028), "10,267 req/s");
        assert_eq!(
            Metric::RequestsPerSec.format(1_234_567.0),
            "1,234,567 req/s"
        );
        assert_eq!(Metric::P95LatencyMs.format(432.1), "432 ms");
    }
}
