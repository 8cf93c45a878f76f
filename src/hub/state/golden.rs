//! Golden views: a fixed mix of http and webrtc entries (several services,
//! a service with `:` in its name, errors, spread latencies, meetings with
//! peers on every path, a back-dated event and a malformed one) folded over
//! two and a half minutes; the snapshots, one-second updates (with an empty
//! second filled in) and alert-rule values of a set of channels must equal
//! `testdata/views/golden.json`.
//!
//! The file was first written by the hand-coded http/webrtc hub (commit
//! d0d1f3b), then compared with the views read from `processors/*_view.toml`:
//! every number, name and shape matched except three deliberate changes,
//! now in the file: a webrtc point of a second without events shows
//! `quality` as a zero per class (it was `[]`); the empty summary of an
//! `http:endpoint:` channel has no `top_endpoints` (a non-empty one never
//! had); the empty summary of `webrtc:meetings` lists the class names.
//! `FLOWMETER_WRITE_GOLDEN=1 cargo test --lib golden_views` rewrites it.

#![cfg(test)]

use super::*;
use crate::alert::AlertRules;

/// A small deterministic generator (no dependency on the load generator).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

const T0: u64 = 1_796_068_800_000; // 2026-12-01T00:00:00Z
const SECS: u64 = 150;

fn entries() -> Vec<Entry> {
    let mut r = Lcg(42);
    let services = ["svc-0", "a:b", "video"];
    let routes = ["/a/:id", "/b", "/c/:x/d"];
    let methods = ["GET", "POST"];
    let statuses = [200, 200, 200, 201, 304, 404, 429, 500, 503];
    let paths = ["host", "srflx", "relay", "prflx"];
    let mut out = Vec::new();
    for s in 0..SECS {
        for i in 0..(8 + r.next(6)) {
            let ms = T0 + s * 1000 + i * 37 % 1000;
            let ev = json!({
                "kind": "http", "ts": ms,
                "service": services[r.next(3) as usize],
                "endpoint": routes[r.next(3) as usize],
                "method": methods[r.next(2) as usize],
                "status": statuses[r.next(9) as usize],
                "req_bytes": r.next(2_000),
                "resp_bytes": r.next(200_000),
                "duration_ms": 0.5 + r.next(4_000) as f64 / 7.0,
            });
            out.push(entry(HTTP, ms, ev));
        }
        for i in 0..(3 + r.next(3)) {
            let ms = T0 + s * 1000 + 500 + i * 11;
            let meeting = format!("m-{}", r.next(3));
            let ev = json!({
                "kind": "webrtc", "ts": ms,
                "meeting_id": meeting, "peer_id": format!("p-{}", r.next(5)),
                "bytes_sent": r.next(300_000), "bytes_received": r.next(300_000),
                "rtt_ms": 5.0 + r.next(600) as f64 / 3.0,
                "jitter_ms": r.next(80) as f64 / 4.0,
                "packet_loss": r.next(100) as f64 / 1_000.0,
                "candidate_type": paths[r.next(4) as usize],
            });
            out.push(entry(WEBRTC, ms, ev));
        }
    }
    // a back-dated event and a malformed entry: neither counts
    out.push(entry(
        HTTP,
        T0 + 60_000,
        json!({"kind": "http", "ts": T0 - 86_400_000, "service": "old", "endpoint": "/", "method": "GET",
               "status": 200, "req_bytes": 1, "resp_bytes": 1, "duration_ms": 1.0}),
    ));
    out.push(Entry {
        feed: Feed::Kind(HTTP),
        id: StreamId {
            ms: T0 + 61_000,
            seq: 1,
        },
        data: Some("{not json".into()),
    });
    out.sort_by_key(|e| (e.id.ms, e.id.seq));
    out
}

/// The kinds of the shipped views, in [`view_kinds`] order.
const HTTP: usize = 0;
const WEBRTC: usize = 1;

fn entry(kind: usize, ms: u64, data: Value) -> Entry {
    Entry {
        feed: Feed::Kind(kind),
        id: StreamId { ms, seq: 0 },
        data: Some(data.to_string()),
    }
}

const CHANNELS: [&str; 10] = [
    "http:overview",
    "http:service:svc-0",
    "http:service:a:b",
    "http:endpoint:a:b:GET:/a/:id",
    "http:endpoint:video:POST:/c/:x/d",
    "http:service:nobody",
    "webrtc:overview",
    "webrtc:meeting:m-1",
    "webrtc:meeting:nobody",
    "webrtc:meetings",
];

fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).expect("the hub writes JSON")
}

/// Everything the golden file holds, computed by the hub of this tree.
fn outputs() -> Value {
    let views = Arc::new(Views::of_repo());
    let cfg = HubConfig {
        active_secs: 30,
        ..HubConfig::default()
    };
    let mut st = State::new(cfg, views.clone());
    let shared = Shared::for_tests();
    let all = entries();
    let last = (T0 / 1000 + SECS) as i64;
    let mut i = 0;
    for sec in (T0 / 1000) as i64..last {
        let from = i;
        while all.get(i).is_some_and(|e| (e.id.ms / 1000) as i64 <= sec) {
            i += 1;
        }
        for e in all.get(from..i).unwrap_or_default() {
            if let Feed::Kind(k) = e.feed {
                st.apply(k, e.id, e.data.as_deref(), sec - 30);
            }
        }
        st.close(sec, &shared);
    }
    let now = last - 1;
    let snapshots: Vec<Value> = CHANNELS
        .iter()
        .map(|name| json_of(&st.snapshot(&views.channel(name).expect("a channel")).1))
        .collect();
    let mut tops = Tops::default();
    let mut out = serde_json::Map::new();
    for (name, snapshot) in CHANNELS.into_iter().zip(snapshots) {
        let ch = views.channel(name).expect("a channel");
        let single = st.closed(&ch, now, &mut tops).map(|c| json_of(&c.single));
        // a resumed update with an empty second filled in
        let point = st.point(&ch, now).map(|v| Arc::<str>::from(v.to_string()));
        let summary = st.summary(&ch, now, &mut Tops::default()).to_string();
        let resumed = update_text(
            &ch,
            now - 3,
            true,
            now,
            &[(now - 2, None), (now - 1, None), (now, point)],
            Some(&summary),
        );
        let empty = update_text(&ch, now - 1, false, now, &[(now, None)], None);
        out.insert(
            name.into(),
            json!({
                "snapshot": snapshot,
                "update": single,
                "resumed": json_of(&resumed),
                "empty": json_of(&empty),
            }),
        );
    }
    let rules = AlertRules::load(&repo("processors"), &views).expect("rules");
    let mut values = serde_json::Map::new();
    for rule in &rules.rules {
        let target = rule.target.as_ref().expect("checked");
        let mut v = st.measure_values(target.measure, rule.window_secs as i64, now);
        v.sort_by(|a, b| a.0.cmp(&b.0));
        values.insert(rule.name.clone(), json!(v));
    }
    out.insert("rule_values".into(), Value::Object(values));
    Value::Object(out)
}

#[test]
fn golden_views() {
    let path = repo("testdata/views/golden.json");
    let got = outputs();
    if std::env::var_os("FLOWMETER_WRITE_GOLDEN").is_some() {
        let text = serde_json::to_string_pretty(&got).expect("json");
        std::fs::write(&path, text + "\n").expect("write the golden file");
        return;
    }
    let want: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("testdata/views/golden.json"))
            .expect("golden JSON");
    for (name, w) in want.as_object().expect("an object") {
        assert_eq!(
            got.get(name),
            Some(w),
            "{name} differs from the golden file"
        );
    }
    assert_eq!(
        got.as_object().map(|o| o.len()),
        want.as_object().map(|o| o.len())
    );
}
