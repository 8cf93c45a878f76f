//! The shipped alert rules (`processors/alerts.toml`) against the demo's
//! traffic, simulated second by second without sockets: the hub's windows
//! fed by the loadgen's generator at the demo's rate, closed every second,
//! and the evaluator stepped as `alert::run` steps it. Steady traffic (with
//! the demo's back-dated sample posted at the start) must fire nothing; the
//! loadgen's `--incident` must fire the error-rate alert of its service.

#![cfg(test)]

use super::*;
use crate::alert::{AlertRules, Evaluator, Transition};
use flowmeter_bench::loadgen::{GenConfig, Generator, Incident, KindMix, INCIDENT_SERVICE};

/// `make demo`'s loadgen: `--rate 200` (mixed kinds, batches of 100).
const DEMO_RATE: i64 = 200;
const BATCH: i64 = 100;

fn shipped_rules() -> AlertRules {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("processors/alerts.toml");
    let text = std::fs::read_to_string(path).expect("processors/alerts.toml");
    let mut rules: AlertRules = toml::from_str(&text).expect("rules parse");
    rules.check(&Views::of_repo()).expect("rules check");
    rules
}

/// The demo's sample file, as entries arriving at `arrival_ms`.
fn sample(arrival_ms: u64) -> Vec<Entry> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/sample/events.ndjson");
    let text = std::fs::read_to_string(path).expect("sample");
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|ev| Entry {
            feed: Feed::Kind(usize::from(ev["kind"] == "webrtc")),
            id: StreamId {
                ms: arrival_ms,
                seq: 0,
            },
            data: Some(ev.to_string()),
        })
        .collect()
}

/// Runs `secs` seconds of demo traffic from `t0_ms` and returns every
/// transition with its second.
fn simulate(t0_ms: i64, secs: i64, incident: Option<Incident>) -> Vec<(i64, Transition)> {
    let rules = shipped_rules();
    let mut st = State::new(HubConfig::default(), Arc::new(Views::of_repo()));
    let shared = Shared::for_tests();
    let mut ev = Evaluator::default();
    let mut g = Generator::new(GenConfig {
        kind: KindMix::Mixed,
        incident,
        ..GenConfig::default()
    });
    let mut out = Vec::new();
    let period_ms = 1000 * BATCH / DEMO_RATE;
    for s in 0..secs {
        let sec = t0_ms / 1000 + s;
        let mut entries = if s == 0 {
            sample(u64::try_from(t0_ms).unwrap_or(0))
        } else {
            Vec::new()
        };
        for b in 0..(1000 / period_ms) {
            let ms = sec * 1000 + b * period_ms;
            for _ in 0..BATCH {
                let e = g.next_event(ms);
                let feed = Feed::Kind(usize::from(e["kind"] == "webrtc"));
                entries.push(Entry {
                    feed,
                    id: StreamId {
                        ms: u64::try_from(ms).unwrap_or(0),
                        seq: 0,
                    },
                    data: Some(e.to_string()),
                });
            }
        }
        for e in entries {
            if let Feed::Kind(k) = e.feed {
                st.apply(k, e.id, e.data.as_deref(), sec - 30);
            }
        }
        st.close(sec, &shared);
        for rule in &rules.rules {
            let target = rule.target.as_ref().expect("checked");
            let values = st.measure_values(target.measure, rule.window_secs as i64, sec);
            out.extend(ev.step(rule, sec, &values).into_iter().map(|t| (s, t)));
        }
    }
    out
}

const T0: i64 = 1_796_068_800_000; // 2026-12-01T00:00:00Z, months after the sample

#[test]
fn ten_minutes_of_steady_demo_traffic_fire_no_shipped_rule() {
    let fired = simulate(T0, 600, None);
    assert!(
        fired.is_empty(),
        "the demo's steady traffic set off {} transitions: {:#?}",
        fired.len(),
        fired.iter().take(20).collect::<Vec<_>>()
    );
}

#[test]
fn an_incident_fires_the_error_rate_alert_of_its_service_and_resolves() {
    // steady for 2 minutes, then svc-0 fails for 90 s, then steady again
    let incident = Incident {
        from_ms: T0 + 120_000,
        until_ms: T0 + 210_000,
    };
    let out = simulate(T0, 420, Some(incident));
    let subject = format!("http:service:{INCIDENT_SERVICE}");
    let fired: Vec<&(i64, Transition)> = out
        .iter()
        .filter(|(_, t)| matches!(t, Transition::Fire { .. }))
        .collect();
    assert_eq!(fired.len(), 1, "one alert: {out:#?}");
    let (
        at,
        Transition::Fire {
            rule,
            subject: s,
            message,
            ..
        },
    ) = fired[0]
    else {
        unreachable!()
    };
    assert_eq!(rule, "http_error_rate");
    assert_eq!(*s, subject);
    assert!((150..=160).contains(at), "fires after `for` = 30 s: {at}");
    assert!(message.contains('%'), "{message}");
    let resolved = out
        .iter()
        .any(|(_, t)| matches!(t, Transition::Resolve { rule, .. } if rule == "http_error_rate"));
    assert!(resolved, "resolves once the outage ends: {out:#?}");
}
