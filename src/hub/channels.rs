//! The channels being watched and, for each warm one, the ring of its recent
//! points. Shared between the hub's worker thread, which appends one closed
//! second to every warm channel, and the connections, which read what they
//! missed. One short lock; no JSON is computed under it.
//!
//! Bounds: at most `hub.max_channels` entries (channels with a subscriber,
//! plus warm ones kept `hub.ring_secs` after their last subscriber left so a
//! reconnecting client can resume; those are given up first when the table
//! is full), plus the three overviews, which always fit. Of those, at most
//! `hub.max_channels_per_client` were brought in by one client (a token,
//! or an address when auth is off): one client cannot lock the others out.
//! A ring holds at most `ring_secs` points, and only of seconds that had
//! events. A channel whose subject has no data has no ring: it costs its
//! entry while someone watches it and nothing after.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use serde_json::Value;

use super::Channel;

/// One closed second of a channel with data, as the worker computed it.
pub(super) struct Closed {
    /// The point's JSON (`None`: no events that second).
    pub point: Option<Arc<str>>,
    /// The summary's JSON as of that second.
    pub summary: Arc<str>,
    /// The one-second `update` message of that second.
    pub single: Utf8Bytes,
}

#[derive(Debug)]
struct Ring {
    /// Every second from `start` to `seq` is covered; those absent from
    /// `points` had no events.
    start: i64,
    /// (second, point JSON), ascending.
    points: VecDeque<(i64, Arc<str>)>,
    /// The newest closed second, its summary and one-second update.
    seq: i64,
    summary: Arc<str>,
    single: Utf8Bytes,
}

#[derive(Debug)]
struct Watch {
    channel: Channel,
    /// The client that brought it into the table, charged for it while it
    /// is there (`None`: an overview, charged to nobody).
    creator: Option<Arc<str>>,
    subscribers: usize,
    /// Last second it had a subscriber.
    last_seen: i64,
    /// Without a ring: the seconds from here on are known to be empty.
    empty_since: i64,
    /// The last closed second at which the worker found it without data.
    checked_empty: Option<i64>,
    ring: Option<Ring>,
}

/// The table of watched channels.
#[derive(Debug)]
pub(super) struct Channels {
    map: HashMap<String, Watch>,
    max: usize,
    max_per_client: usize,
    /// Entries each client brought in (see [`Watch::creator`]).
    created: HashMap<Arc<str>, usize>,
    ring_secs: i64,
}

/// What a subscriber who holds everything up to some second is owed.
#[derive(Debug)]
pub(crate) enum Since {
    /// Nothing newer yet.
    UpToDate,
    /// The seconds it lacks are no longer held: it needs a snapshot.
    Gap,
    /// Exactly the newest second: the shared, pre-serialized update.
    Single(i64, Utf8Bytes),
    /// Several seconds: (second, point JSON or `None` for no events), and
    /// the newest summary (`None`: the channel has no data).
    Missed {
        seq: i64,
        points: Vec<(i64, Option<Arc<str>>)>,
        summary: Option<Arc<str>>,
    },
}

/// Why a channel was not added to the table.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `hub.max_channels` channels with subscribers are there.
    Full,
    /// The client already brought `hub.max_channels_per_client` channels in
    /// (none of them idle).
    ClientQuota,
}

impl Channels {
    pub fn new(max: usize, max_per_client: usize, ring_secs: usize) -> Self {
        Self {
            map: HashMap::new(),
            max: max.max(1),
            max_per_client: max_per_client.max(1),
            created: HashMap::new(),
            ring_secs: i64::try_from(ring_secs.max(1)).unwrap_or(i64::MAX),
        }
    }

    /// Channels in the table (`flowmeter_hub_channels`).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Channels in the table that `client` brought in.
    #[cfg(test)]
    pub fn created_by(&self, client: &str) -> usize {
        self.created.get(client).copied().unwrap_or(0)
    }

    /// Counts a subscriber of `name` from `client` at second `now`: a
    /// channel already in the table always; a new one within the table's
    /// and the client's room. `quiet_from`: the channel had no events from
    /// that second on (a resuming client is owed only empty seconds from
    /// there).
    pub fn subscribe(
        &mut self,
        name: &str,
        channel: &Channel,
        now: i64,
        quiet_from: Option<i64>,
        client: &Arc<str>,
    ) -> Result<(), Refused> {
        let empty_since = quiet_from.map_or(now, |q| q.min(now));
        if let Some(w) = self.map.get_mut(name) {
            w.subscribers += 1;
            w.last_seen = now;
            if w.ring.is_none() {
                w.empty_since = w.empty_since.min(empty_since);
            }
            return Ok(());
        }
        // the overviews are three fixed names every dashboard shows: they
        // always fit, and are nobody's doing
        let creator = (!channel.is_overview()).then(|| client.clone());
        if let Some(c) = &creator {
            if self.created.get(c).copied().unwrap_or(0) >= self.max_per_client {
                // the client's own warm channel nobody has watched for longest
                let idle = self.idle(|w| w.creator.as_ref() == Some(c));
                self.forget(&idle.ok_or(Refused::ClientQuota)?);
            }
            if self.map.len() >= self.max {
                // any warm channel nobody has watched for longest
                let idle = self.idle(|_| true);
                self.forget(&idle.ok_or(Refused::Full)?);
            }
            *self.created.entry(c.clone()).or_default() += 1;
        }
        self.map.insert(
            name.to_string(),
            Watch {
                channel: channel.clone(),
                creator,
                subscribers: 1,
                last_seen: now,
                empty_since,
                checked_empty: None,
                ring: None,
            },
        );
        Ok(())
    }

    /// The channel without subscribers, among those `which` picks, that
    /// nobody has watched for longest.
    fn idle(&self, which: impl Fn(&Watch) -> bool) -> Option<String> {
        self.map
            .iter()
            .filter(|(_, w)| w.subscribers == 0 && which(w))
            .min_by_key(|(_, w)| w.last_seen)
            .map(|(k, _)| k.clone())
    }

    /// Drops `name` from the table, giving its creator's charge back.
    fn forget(&mut self, name: &str) {
        if let Some(w) = self.map.remove(name) {
            uncharge(&mut self.created, w.creator.as_ref());
        }
    }

    /// Removes a subscriber; a channel without data is forgotten at once, one
    /// with a ring stays warm for `ring_secs`.
    pub fn unsubscribe(&mut self, name: &str, now: i64) {
        let Some(w) = self.map.get_mut(name) else {
            return;
        };
        w.subscribers = w.subscribers.saturating_sub(1);
        w.last_seen = now;
        if w.subscribers == 0 && w.ring.is_none() {
            self.forget(name);
        }
    }

    /// At the close of second `sec`: drops warm channels nobody watched for
    /// `ring_secs`, and returns the rest for the worker to compute.
    pub fn due(&mut self, sec: i64) -> Vec<(String, Channel)> {
        let warm_from = sec - self.ring_secs;
        let created = &mut self.created;
        self.map.retain(|_, w| {
            let keep = w.subscribers > 0 || (w.ring.is_some() && w.last_seen >= warm_from);
            if !keep {
                uncharge(created, w.creator.as_ref());
            }
            keep
        });
        self.map
            .iter_mut()
            .map(|(k, w)| {
                if w.subscribers > 0 {
                    w.last_seen = sec;
                }
                (k.clone(), w.channel.clone())
            })
            .collect()
    }

    /// Records closed second `sec` of `name`: its point and summary when the
    /// channel has data, `None` when it has none (its ring is dropped).
    pub fn publish(&mut self, name: &str, sec: i64, closed: Option<Closed>) {
        let ring_secs = self.ring_secs;
        let Some(w) = self.map.get_mut(name) else {
            return;
        };
        let Some(c) = closed else {
            if w.ring.take().is_some() {
                w.empty_since = sec;
            }
            w.checked_empty = Some(sec);
            if w.subscribers == 0 {
                self.forget(name);
            }
            return;
        };
        let start = match &w.ring {
            Some(r) if r.seq == sec - 1 => r.start,
            // a ring that did not get the previous second (the hub stalled): holes are not kept
            Some(_) => sec,
            // it was watched without data up to the previous close: those seconds were empty
            None if w.checked_empty == Some(sec - 1) => w.empty_since,
            None => sec,
        };
        let ring = w.ring.get_or_insert_with(|| Ring {
            start,
            points: VecDeque::new(),
            seq: sec,
            summary: c.summary.clone(),
            single: c.single.clone(),
        });
        if start == sec {
            ring.points.clear();
        }
        ring.start = start.max(sec - ring_secs + 1);
        if let Some(p) = c.point {
            ring.points.push_back((sec, p));
        }
        while ring.points.front().is_some_and(|(s, _)| *s < ring.start) {
            ring.points.pop_front();
        }
        ring.seq = sec;
        ring.summary = c.summary;
        ring.single = c.single;
        w.checked_empty = None;
    }

    /// What a subscriber of `name` holding everything up to `seq` is owed,
    /// the last closed second being `now`; `single`: the shared one-second
    /// update may answer (not for a resume, which is flagged).
    pub fn since(&self, name: &str, seq: i64, now: i64, single: bool) -> Since {
        let Some(w) = self.map.get(name) else {
            return Since::Gap;
        };
        match &w.ring {
            Some(r) => {
                if seq >= r.seq {
                    return Since::UpToDate;
                }
                if seq + 1 < r.start {
                    return Since::Gap;
                }
                if single && seq + 1 == r.seq {
                    return Since::Single(r.seq, r.single.clone());
                }
                let mut held = r.points.iter().filter(|(s, _)| *s > seq).peekable();
                let points = (seq + 1..=r.seq)
                    .map(|s| match held.next_if(|(k, _)| *k == s) {
                        Some((_, p)) => (s, Some(p.clone())),
                        None => (s, None),
                    })
                    .collect();
                Since::Missed {
                    seq: r.seq,
                    points,
                    summary: Some(r.summary.clone()),
                }
            }
            None => {
                if seq >= now {
                    return Since::UpToDate;
                }
                if seq + 1 < w.empty_since || now - seq > self.ring_secs {
                    return Since::Gap;
                }
                Since::Missed {
                    seq: now,
                    points: (seq + 1..=now).map(|s| (s, None)).collect(),
                    summary: None,
                }
            }
        }
    }
}

/// Gives back one channel of `creator`'s charge.
fn uncharge(created: &mut HashMap<Arc<str>, usize>, creator: Option<&Arc<str>>) {
    let Some(c) = creator else { return };
    if let Some(n) = created.get_mut(c) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            created.remove(c);
        }
    }
}

/// The `update` message of `channel` with every point after `after` up to
/// `seq` (`None` points: no events that second) and the summary as of `seq`
/// (`None`: the channel has no data). Built from JSON pieces, so shared
/// points are not parsed again.
pub(super) fn update_text(
    channel: &Channel,
    after: i64,
    resumed: bool,
    seq: i64,
    points: &[(i64, Option<Arc<str>>)],
    summary: Option<&str>,
) -> String {
    let name = Value::from(channel.name()).to_string();
    let mut out = format!(
        r#"{{"type":"update","channel":{name},"seq":{seq},"after":{after},"resumed":{resumed},"points":["#
    );
    for (i, (s, p)) in points.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match p {
            Some(p) => out.push_str(p),
            None => out.push_str(&channel.zero_point(*s).to_string()),
        }
    }
    out.push_str(r#"],"summary":"#);
    match summary {
        Some(s) => out.push_str(s),
        None => out.push_str(&channel.empty_summary().to_string()),
    }
    out.push('}');
    out
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn http(name: &str) -> Channel {
        Channel::for_tests(name)
    }

    fn me() -> Arc<str> {
        Arc::from("address 192.0.2.1")
    }

    fn closed(ch: &Channel, sec: i64, point: Option<&str>) -> Closed {
        let points = [(sec, point.map(Arc::from))];
        Closed {
            point: point.map(Arc::from),
            summary: Arc::from("{}"),
            single: update_text(ch, sec - 1, false, sec, &points, Some("{}")).into(),
        }
    }

    #[test]
    fn a_channel_without_data_costs_an_entry_and_leaves_nothing() {
        let mut c = Channels::new(4, 4, 300);
        let ch = http("http:service:nobody");
        c.subscribe(ch.name(), &ch, 100, None, &me()).expect("room");
        assert_eq!(c.due(101).len(), 1);
        c.publish(ch.name(), 101, None);
        // zero points for the seconds since it is watched
        match c.since(ch.name(), 100, 101, true) {
            Since::Missed {
                seq,
                points,
                summary,
            } => {
                assert_eq!(seq, 101);
                assert_eq!(points, vec![(101, None)]);
                assert!(summary.is_none());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(c.since(ch.name(), 90, 101, true), Since::Gap));
        c.unsubscribe(ch.name(), 101);
        assert_eq!(c.len(), 0, "nothing left behind");
    }

    #[test]
    fn a_resumed_channel_known_quiet_owes_empty_seconds_not_a_snapshot() {
        let mut c = Channels::new(4, 4, 300);
        let ch = http("http:service:quiet");
        // left at 95, back at 100: the hub found no events since 96
        c.subscribe(ch.name(), &ch, 100, Some(96), &me())
            .expect("room");
        match c.since(ch.name(), 95, 100, false) {
            Since::Missed { seq, points, .. } => {
                assert_eq!(seq, 100);
                assert_eq!(points.len(), 5);
                assert!(points.iter().all(|(_, p)| p.is_none()));
            }
            other => panic!("{other:?}"),
        }
        // without that knowledge, the same resume needs a snapshot
        let other = http("http:service:unknown");
        c.subscribe(other.name(), &other, 100, None, &me())
            .expect("room");
        assert!(matches!(c.since(other.name(), 95, 100, false), Since::Gap));
    }

    #[test]
    fn rings_keep_busy_seconds_and_fill_quiet_ones() {
        let mut c = Channels::new(4, 4, 5);
        let ch = http("http:overview");
        c.subscribe(ch.name(), &ch, 10, None, &me()).expect("room");
        c.publish(ch.name(), 11, None); // watched, no data yet
        c.publish(ch.name(), 12, Some(closed(&ch, 12, Some("{\"n\":1}"))));
        c.publish(ch.name(), 13, Some(closed(&ch, 13, None)));
        c.publish(ch.name(), 14, Some(closed(&ch, 14, Some("{\"n\":2}"))));
        match c.since(ch.name(), 10, 14, true) {
            Since::Missed { seq, points, .. } => {
                assert_eq!(seq, 14);
                let got: Vec<(i64, Option<&str>)> =
                    points.iter().map(|(s, p)| (*s, p.as_deref())).collect();
                assert_eq!(
                    got,
                    vec![
                        (11, None),
                        (12, Some("{\"n\":1}")),
                        (13, None),
                        (14, Some("{\"n\":2}"))
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            c.since(ch.name(), 13, 14, true),
            Since::Single(14, _)
        ));
        assert!(matches!(c.since(ch.name(), 14, 14, true), Since::UpToDate));
        // the ring keeps ring_secs seconds
        for s in 15..30 {
            c.publish(ch.name(), s, Some(closed(&ch, s, Some("{}"))));
        }
        assert!(matches!(c.since(ch.name(), 20, 29, true), Since::Gap));
        assert!(matches!(
            c.since(ch.name(), 24, 29, true),
            Since::Missed { .. }
        ));
        // a missed close leaves a hole: resumes before it need a snapshot
        c.publish(ch.name(), 31, Some(closed(&ch, 31, Some("{}"))));
        assert!(matches!(c.since(ch.name(), 29, 31, true), Since::Gap));
    }

    #[test]
    fn the_table_is_bounded_and_gives_up_idle_warm_channels_first() {
        let mut c = Channels::new(2, 10, 300);
        let (a, b, x) = (http("http:a"), http("http:b"), http("http:x"));
        c.subscribe(a.name(), &a, 1, None, &me()).expect("room");
        c.subscribe(b.name(), &b, 1, None, &me()).expect("room");
        assert_eq!(
            c.subscribe(x.name(), &x, 1, None, &me()),
            Err(Refused::Full)
        );
        // b gets data, then its subscriber leaves: warm, but evictable
        c.publish(b.name(), 2, Some(closed(&b, 2, Some("{}"))));
        c.unsubscribe(b.name(), 2);
        assert_eq!(c.len(), 2);
        c.subscribe(x.name(), &x, 3, None, &me())
            .expect("b given up");
        assert!(matches!(c.since(b.name(), 1, 3, true), Since::Gap));
        // warm channels expire after ring_secs
        c.unsubscribe(x.name(), 3);
        c.unsubscribe(a.name(), 3);
        assert!(c.due(400).is_empty());
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn one_client_brings_in_at_most_its_quota_and_gets_it_back() {
        let mut c = Channels::new(10, 3, 300);
        let (a, b) = (me(), Arc::<str>::from("address 192.0.2.2"));
        let names: Vec<Channel> = (0..6)
            .map(|i| http(&format!("http:service:a{i}")))
            .collect();
        for ch in &names[..3] {
            c.subscribe(ch.name(), ch, 1, None, &a)
                .expect("within quota");
        }
        for ch in &names[3..] {
            assert_eq!(
                c.subscribe(ch.name(), ch, 1, None, &a),
                Err(Refused::ClientQuota)
            );
        }
        assert_eq!((c.created_by(&a), c.len()), (3, 3));
        // another client still has room; a channel already there and the
        // overviews are open to everyone and charged to nobody
        let theirs = http("http:service:b0");
        c.subscribe(theirs.name(), &theirs, 1, None, &b)
            .expect("room");
        c.subscribe(theirs.name(), &theirs, 1, None, &a)
            .expect("already there");
        let overview = http("http:overview");
        c.subscribe(overview.name(), &overview, 1, None, &a)
            .expect("overview");
        assert_eq!((c.created_by(&a), c.created_by(&b)), (3, 1));
        // its own warm channel gives way to its next one
        let a0 = &names[0];
        c.publish(a0.name(), 2, Some(closed(a0, 2, Some("{}"))));
        c.unsubscribe(a0.name(), 2);
        c.subscribe(names[3].name(), &names[3], 3, None, &a)
            .expect("a0 given up");
        assert!(matches!(c.since(a0.name(), 1, 3, true), Since::Gap));
        assert_eq!(c.created_by(&a), 3);
        // the charge comes back when its channels leave the table
        for ch in &names[1..4] {
            c.unsubscribe(ch.name(), 3);
        }
        assert_eq!(c.created_by(&a), 0);
        c.unsubscribe(theirs.name(), 3);
        c.unsubscribe(theirs.name(), 3);
        assert_eq!(c.created_by(&b), 0);
        assert!(c.created.is_empty(), "no client is remembered for nothing");
    }

    #[test]
    fn the_overviews_fit_in_a_full_table() {
        let mut c = Channels::new(2, 2, 300);
        let (x, y, z) = (http("http:a"), http("http:b"), http("http:c"));
        c.subscribe(x.name(), &x, 1, None, &me()).expect("room");
        c.subscribe(y.name(), &y, 1, None, &me()).expect("room");
        let other = Arc::<str>::from("token other");
        assert_eq!(
            c.subscribe(z.name(), &z, 1, None, &other),
            Err(Refused::Full)
        );
        for ch in [
            http("http:overview"),
            http("webrtc:overview"),
            http("webrtc:meetings"),
        ] {
            c.subscribe(ch.name(), &ch, 1, None, &other)
                .expect("always fits");
        }
        assert_eq!(c.len(), 5, "max_channels plus the three overviews");
    }

    #[test]
    fn update_text_is_json_with_zero_points_filled_in() {
        let ch = http("http:service:a:b");
        let t = update_text(
            &ch,
            9,
            true,
            11,
            &[
                (10, None),
                (11, Some(Arc::from("{\"requests\":3,\"t\":11000}"))),
            ],
            None,
        );
        let v: Value = serde_json::from_str(&t).expect("json");
        assert_eq!(v["channel"], "http:service:a:b");
        assert_eq!(v["after"], 9);
        assert_eq!(v["points"][0]["requests"], 0);
        assert_eq!(v["points"][0]["t"], 10_000);
        assert_eq!(v["points"][1]["requests"], 3);
        assert_eq!(v["summary"]["1m"], Value::Null);
    }
}
