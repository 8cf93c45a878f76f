//! The alert state machine, one state per (rule, subject), stepped once per
//! closed second with the metric values of that second. Pure: no I/O.

use std::collections::{HashMap, VecDeque};

use super::describe::{self, Judgement};
use super::rules::{Rule, RuleKind};

/// Samples a spike or anomaly baseline needs before it judges.
const MIN_BASELINE: usize = 30;

#[derive(Debug, Default)]
struct State {
    ewma: Option<f64>,
    /// Values the EWMA has learned (its first ones are averaged evenly, so
    /// a window still filling at start does not become a low baseline).
    learned: usize,
    history: VecDeque<f64>,
    holding_since: Option<i64>,
    clear_since: Option<i64>,
    open: bool,
}

/// A change to report.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Fire {
        rule: String,
        subject: String,
        value: f64,
        threshold: f64,
        message: String,
    },
    Resolve {
        rule: String,
        subject: String,
        value: f64,
    },
}

/// Every rule's states.
#[derive(Debug, Default)]
pub struct Evaluator {
    states: HashMap<(String, String), State>,
}

impl Evaluator {
    /// Marks an alert open (at start, from the alerts table), so it is
    /// neither fired again nor forgotten.
    pub fn restore_open(&mut self, rule: &str, subject: &str) {
        self.states
            .entry((rule.to_string(), subject.to_string()))
            .or_default()
            .open = true;
    }

    /// One second of `rule`: `values` are (subject, metric value, events in
    /// the window). Subjects with open alerts but no value count as clear.
    pub fn step(
        &mut self,
        rule: &Rule,
        now: i64,
        values: &[(String, f64, u64)],
    ) -> Vec<Transition> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (subject, v, events) in values {
            seen.insert(subject.as_str());
            let st = self
                .states
                .entry((rule.name.clone(), subject.clone()))
                .or_default();
            let judged = *events >= rule.min_events && v.is_finite();
            let j = if judged {
                condition(rule, st, *v)
            } else {
                Judgement::default()
            };
            if judged && !j.holds {
                learn(rule, st, *v);
            }
            out.extend(advance(rule, st, now, *v, &j, subject));
        }
        let stale: Vec<String> = self
            .states
            .iter()
            .filter(|((r, s), st)| *r == rule.name && st.open && !seen.contains(s.as_str()))
            .map(|((_, s), _)| s.clone())
            .collect();
        for subject in stale {
            if let Some(st) = self.states.get_mut(&(rule.name.clone(), subject.clone())) {
                out.extend(advance(rule, st, now, 0.0, &Judgement::default(), &subject));
            }
        }
        // forget quiet, closed states (memory stays bounded by active subjects)
        self.states.retain(|(r, s), st| {
            *r != rule.name || st.open || st.holding_since.is_some() || seen.contains(s.as_str())
        });
        out
    }
}

/// Whether the condition holds for `v`, and what it was judged against.
fn condition(rule: &Rule, st: &State, v: f64) -> Judgement {
    let judged = |holds: bool, threshold: f64, baseline: f64| Judgement {
        holds,
        threshold,
        baseline,
    };
    match rule.kind {
        RuleKind::Threshold => {
            let holds = if rule.op == "<" {
                v < rule.value
            } else {
                v > rule.value
            };
            judged(holds, rule.value, rule.value)
        }
        RuleKind::Spike => match st.ewma {
            Some(b) if b > 0.0 && st.learned >= MIN_BASELINE => {
                judged(v > rule.k * b, rule.k * b, b)
            }
            _ => Judgement::default(),
        },
        RuleKind::Anomaly => {
            if st.history.len() < MIN_BASELINE {
                return Judgement::default();
            }
            let n = st.history.len() as f64;
            let mean = st.history.iter().sum::<f64>() / n;
            let var = st.history.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
            let sd = var.sqrt().max(mean.abs() * 1e-3).max(1e-9);
            judged((v - mean) / sd > rule.z, mean + rule.z * sd, mean)
        }
    }
}

/// Updates the baselines with a value judged normal (anomalous values do
/// not teach the baseline, so a long incident stays an incident).
fn learn(rule: &Rule, st: &mut State, v: f64) {
    match rule.kind {
        RuleKind::Threshold => {}
        RuleKind::Spike => {
            // the half-life's weight, or an even average while fewer values
            // than that weight implies have been learned
            st.learned = st.learned.saturating_add(1);
            let alpha = (1.0 - 0.5f64.powf(1.0 / rule.baseline_secs.max(1) as f64))
                .max(1.0 / st.learned as f64);
            st.ewma = Some(st.ewma.map_or(v, |b| b + alpha * (v - b)));
        }
        RuleKind::Anomaly => {
            st.history.push_back(v);
            while st.history.len() > rule.baseline_secs as usize {
                st.history.pop_front();
            }
        }
    }
}

fn advance(
    rule: &Rule,
    st: &mut State,
    now: i64,
    v: f64,
    j: &Judgement,
    subject: &str,
) -> Option<Transition> {
    if j.holds {
        st.clear_since = None;
        let since = *st.holding_since.get_or_insert(now);
        if !st.open && now - since >= rule.for_secs as i64 {
            st.open = true;
            return Some(Transition::Fire {
                rule: rule.name.clone(),
                subject: subject.to_string(),
                value: v,
                threshold: j.threshold,
                message: describe::fired(rule, subject, v, j, now - since),
            });
        }
        None
    } else {
        st.holding_since = None;
        if !st.open {
            return None;
        }
        let since = *st.clear_since.get_or_insert(now);
        if now - since >= rule.clear_for_secs as i64 {
            st.open = false;
            st.clear_since = None;
            return Some(Transition::Resolve {
                rule: rule.name.clone(),
                subject: subject.to_string(),
                value: v,
            });
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::alert::rules::Severity;

    fn rule(kind: RuleKind) -> Rule {
        Rule {
            name: "r".into(),
            kind,
            view: "http".into(),
            measure: "error_rate".into(),
            scope: "service".into(),
            window_secs: 60,
            op: ">".into(),
            value: 0.1,
            k: 3.0,
            baseline_secs: 60,
            z: 3.0,
            severity: Severity::High,
            for_secs: 5,
            clear_for_secs: 3,
            min_events: 10,
            target: None,
        }
    }

    fn run(
        ev: &mut Evaluator,
        r: &Rule,
        from: i64,
        to: i64,
        v: f64,
        events: u64,
    ) -> Vec<(i64, Transition)> {
        (from..to)
            .flat_map(|t| {
                ev.step(r, t, &[("svc".into(), v, events)])
                    .into_iter()
                    .map(move |x| (t, x))
            })
            .collect()
    }

    #[test]
    fn threshold_fires_after_for_and_resolves_after_clear_for_once() {
        let r = rule(RuleKind::Threshold);
        let mut ev = Evaluator::default();
        assert!(run(&mut ev, &r, 0, 10, 0.05, 100).is_empty());
        let fired = run(&mut ev, &r, 10, 30, 0.5, 100);
        assert_eq!(fired.len(), 1, "{fired:?}");
        assert_eq!(fired[0].0, 15, "fires when the condition has held for 5 s");
        assert!(
            run(&mut ev, &r, 30, 31, 0.05, 5).is_empty(),
            "too few events: not judged, clear starts"
        );
        let resolved = run(&mut ev, &r, 31, 40, 0.05, 100);
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].0, 33, "resolves after 3 s clear");
        assert!(matches!(resolved[0].1, Transition::Resolve { .. }));
    }

    #[test]
    fn a_gone_subject_resolves_and_restored_alerts_do_not_refire() {
        let r = rule(RuleKind::Threshold);
        let mut ev = Evaluator::default();
        ev.restore_open("r", "svc");
        assert!(run(&mut ev, &r, 0, 10, 0.5, 100).is_empty(), "already open");
        let out: Vec<Transition> = (10..20).flat_map(|t| ev.step(&r, t, &[])).collect();
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn spike_and_anomaly_need_a_baseline() {
        let mut r = rule(RuleKind::Spike);
        r.for_secs = 0;
        let mut ev = Evaluator::default();
        assert!(run(&mut ev, &r, 0, 120, 100.0, 100).is_empty());
        let f = run(&mut ev, &r, 120, 121, 350.0, 100);
        assert_eq!(f.len(), 1, "3.5× the baseline");
        let mut r = rule(RuleKind::Anomaly);
        r.for_secs = 0;
        let mut ev = Evaluator::default();
        let noisy: Vec<Transition> = (0..100)
            .flat_map(|t| ev.step(&r, t, &[("svc".into(), 100.0 + (t % 7) as f64, 100)]))
            .collect();
        assert!(noisy.is_empty());
        assert_eq!(run(&mut ev, &r, 100, 101, 200.0, 100).len(), 1);
    }
}
