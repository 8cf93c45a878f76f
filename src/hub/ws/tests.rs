//! Connection logic without a socket: a real hub (its worker thread; no
//! streams are read), the connection's outgoing queue read directly.

#![allow(clippy::indexing_slicing)]

use super::*;
use crate::hub::channels::Closed;
use crate::view::Views;

fn hub(cfg: HubConfig) -> Arc<Hub> {
    Hub::new(cfg, Arc::new(Views::of_repo()))
}

/// A connection to `hub` whose outgoing queue holds `queue` messages.
fn connection(hub: &Arc<Hub>, queue: usize) -> (Connection, mpsc::Receiver<Outgoing>) {
    let mut c = Connection::new(hub.clone(), Arc::from("address 192.0.2.1"));
    let (tx, rx) = mpsc::channel(queue);
    c.out = Some(tx);
    (c, rx)
}

/// Every JSON message queued so far.
fn received(rx: &mut mpsc::Receiver<Outgoing>) -> Vec<Value> {
    let mut out = Vec::new();
    while let Ok((m, _)) = rx.try_recv() {
        if let Message::Text(t) = m {
            out.push(serde_json::from_str(t.as_str()).expect("json"));
        }
    }
    out
}

async fn op(c: &mut Connection, v: Value) {
    c.on_text(&v.to_string()).await;
}

/// Each subscription is owed at most once, and only while subscribed.
fn assert_owed_bounded(c: &Connection) {
    let distinct: HashSet<&String> = c.owed.iter().collect();
    assert_eq!(distinct.len(), c.owed.len(), "owed twice: {:?}", c.owed);
    assert!(
        c.owed.iter().all(|n| c.subs.contains_key(n)),
        "owed after unsubscribing: {:?}",
        c.owed
    );
    assert!(c.owed.len() <= c.subs.len());
}

#[tokio::test]
async fn owed_snapshots_stay_within_the_subscriptions_however_a_client_churns() {
    let hub = hub(HubConfig {
        max_subscriptions: 8,
        max_snapshots_per_sec: 2,
        ..HubConfig::default()
    });
    // a client that does not read (its queue is full) and one whose
    // snapshot budget is spent (no second closes here)
    for stalled in [true, false] {
        let (mut c, mut rx) = connection(&hub, if stalled { 1 } else { 100_000 });
        if stalled {
            let _ = c
                .out
                .as_ref()
                .map(|o| o.try_send((Message::Text("{}".into()), None)));
        }
        for round in 0..2_000u32 {
            let other = format!("http:service:b{}", round % 50);
            op(
                &mut c,
                json!({"op": "subscribe", "channels": ["http:service:a", other]}),
            )
            .await;
            assert_owed_bounded(&c);
            op(&mut c, json!({"op": "unsubscribe", "channels": [other]})).await;
            assert_owed_bounded(&c);
            if round % 7 == 0 {
                op(
                    &mut c,
                    json!({"op": "unsubscribe", "channels": ["http:service:a"]}),
                )
                .await;
                assert_owed_bounded(&c);
            }
        }
        let snapshots = received(&mut rx)
            .iter()
            .filter(|v| v["type"] == "snapshot")
            .count();
        assert!(snapshots <= 2, "{snapshots} snapshots past the budget");
    }
}

/// Publishes seconds `from..=to` of channel `name` (one request each) and
/// closes `to`, as the worker would.
fn publish(hub: &Hub, name: &str, from: i64, to: i64) {
    let ch = Views::of_repo().channel(name).expect("channel");
    for sec in from..=to {
        let point: Arc<str> = Arc::from(format!("{{\"t\":{},\"requests\":1}}", sec * 1000));
        let single = update_text(
            &ch,
            sec - 1,
            false,
            sec,
            &[(sec, Some(point.clone()))],
            Some("{}"),
        );
        hub.shared.channels().publish(
            name,
            sec,
            Some(Closed {
                point: Some(point),
                summary: Arc::from("{}"),
                single: single.into(),
            }),
        );
    }
    hub.shared.tick.send_replace(to);
}

#[tokio::test]
async fn resuming_a_watched_channel_costs_no_more_than_subscribing_again() {
    let hub = hub(HubConfig {
        max_snapshots_per_sec: 3,
        ..HubConfig::default()
    });
    let names: Vec<String> = (0..10).map(|i| format!("http:service:s{i}")).collect();
    let (mut c, mut rx) = connection(&hub, 100_000);
    c.subscribe(names.clone(), None, HashMap::new()).await;
    let first = received(&mut rx);
    assert_eq!(first.iter().filter(|v| v["type"] == "snapshot").count(), 3);
    for n in &names {
        publish(&hub, n, 101, 110);
    }
    // the same subscribe with a resume from 100, 500 times in one second
    let resume: HashMap<String, i64> = names.iter().map(|n| (n.clone(), 100)).collect();
    for _ in 0..500 {
        c.subscribe(names.clone(), None, resume.clone()).await;
        assert_owed_bounded(&c);
    }
    let got = received(&mut rx);
    let costly = got.iter().filter(|v| v["type"] != "subscribed").count();
    assert_eq!(costly, 0, "the budget was spent: {:?}", got.first());
    // the next second: the snapshots owed, within the budget
    c.snapshots_left = 3;
    c.send_snapshots().await;
    let got = received(&mut rx);
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got
        .iter()
        .all(|v| v["type"] == "snapshot" && v["reason"] == "subscribe"));

    // a new subscription's resume is still honoured: the seconds missed
    let (mut fresh, mut rx) = connection(&hub, 100);
    let resume = HashMap::from([(names[0].clone(), 105)]);
    fresh.subscribe(vec![names[0].clone()], None, resume).await;
    let u = received(&mut rx)
        .into_iter()
        .find(|v| v["type"] == "update")
        .expect("a resumed update");
    assert_eq!(
        (&u["resumed"], &u["after"], &u["seq"]),
        (&json!(true), &json!(105), &json!(110))
    );
    assert_eq!(u["points"].as_array().map(Vec::len), Some(5));
}

#[tokio::test]
async fn connection_caps_count_an_ipv6_64_and_a_token_as_one_client() {
    let cfg = HubConfig {
        max_connections_per_ip: 2,
        max_connections_per_token: 3,
        ..HubConfig::default()
    };
    let hub = hub(cfg.clone());
    let ip = |s: &str| Some(s.parse::<IpAddr>().expect("ip"));
    let take = |who: Option<IpAddr>| Slots::take(&hub, wants(&cfg, "anonymous", who));
    let a = take(ip("2001:db8:1:2::1")).expect("first");
    let _b = take(ip("2001:db8:1:2:ffff::9")).expect("second");
    let e = take(ip("2001:db8:1:2:abcd::1")).err().expect("same /64");
    assert!(
        e.contains("2001:db8:1:2::/64") && e.contains("hub.max_connections_per_ip"),
        "{e}"
    );
    let _c = take(ip("2001:db8:1:3::1")).expect("another /64");
    let e = take(ip("10.0.0.1"))
        .err()
        .expect("the token's cap binds all");
    assert!(e.contains("hub.max_connections_per_token"), "{e}");
    drop(a);
    let _d = take(ip("2001:db8:1:2::77")).expect("a slot came back");
    // with auth on, a token is one client whatever its addresses
    assert_eq!(client_of("dash", None).as_ref(), "token dash");
    assert_eq!(
        client_of("dash", ip("2001:db8:1:2::1")).as_ref(),
        "address 2001:db8:1:2::/64"
    );
}

#[tokio::test]
async fn subscribed_comes_first_then_each_channels_snapshot_or_resumed_update() {
    let hub = hub(HubConfig::default());
    let (a, b) = ("http:service:order_a", "http:service:order_b");
    publish(&hub, a, 101, 104);
    publish(&hub, b, 101, 104);
    let (mut c, mut rx) = connection(&hub, 1_000);
    // a plain subscription: subscribed, then the snapshots
    op(
        &mut c,
        json!({"op": "subscribe", "channels": [a, "http:overview"]}),
    )
    .await;
    let got = received(&mut rx);
    let types: Vec<&str> = got.iter().filter_map(|v| v["type"].as_str()).collect();
    assert_eq!(types, ["subscribed", "snapshot", "snapshot"], "{got:?}");
    assert_eq!(got[0]["channels"], json!([a, "http:overview"]));
    // a resume: subscribed, then the update with the seconds missed
    op(
        &mut c,
        json!({"op": "subscribe", "channels": [b], "resume": {b: 102}}),
    )
    .await;
    let got = received(&mut rx);
    let types: Vec<&str> = got.iter().filter_map(|v| v["type"].as_str()).collect();
    assert_eq!(types, ["subscribed", "update"], "{got:?}");
    assert_eq!(
        (&got[1]["resumed"], &got[1]["after"]),
        (&json!(true), &json!(102))
    );
}
