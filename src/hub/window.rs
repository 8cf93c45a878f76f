//! Sliding windows of one subject: per-second points for the last
//! [`SECONDS`], per-minute points for the last [`MINUTES`], and latency
//! sketches per [`SLOT_SECS`]-second slot for the quantiles of the 1-minute
//! and 5-minute windows. Buckets are keyed by the entry id's time (arrival
//! at Redis), so every hub instance reading the same streams fills the same
//! buckets. Storage is sparse: a quiet subject holds only its busy seconds.

use std::collections::VecDeque;

use serde::Serialize;

use crate::sketch::DdSketch;

/// Seconds of 1-s points kept (the 5-minute window).
pub const SECONDS: i64 = 300;
/// Minutes of 1-min points kept (the 1-hour window).
pub const MINUTES: i64 = 60;
/// Width of a latency slot.
pub const SLOT_SECS: i64 = 10;

/// p50, p95 and p99 of a minute's latencies (ms).
pub type MinuteQuantiles = Option<[f64; 3]>;

fn minute_quantiles(sk: &DdSketch) -> MinuteQuantiles {
    Some([sk.quantile(0.5)?, sk.quantile(0.95)?, sk.quantile(0.99)?])
}

/// Additive figures of one bucket; `P` is the kind's point type.
pub trait Point: Default + Clone + Serialize {
    fn merge(&mut self, other: &Self);
}

/// One subject's windows.
#[derive(Debug, Clone, Default)]
pub struct Windows<P: Point> {
    /// (unix second, point), ascending.
    seconds: VecDeque<(i64, P)>,
    /// (unix minute, point, quantiles of the minute's latencies once it closed).
    minutes: VecDeque<(i64, P, MinuteQuantiles)>,
    /// (slot start second, sketch), ascending.
    slots: VecDeque<(i64, DdSketch)>,
    /// Sketch of the current minute (for its quantiles).
    minute_sketch: (i64, DdSketch),
    /// Newest second with data.
    pub last_sec: i64,
}

/// The bucket of `key`, inserted in order when absent (`None` never
/// happens: the position is either found or just filled).
fn bucket<T: Default>(q: &mut VecDeque<(i64, T)>, key: i64) -> Option<&mut T> {
    // Entries arrive nearly in order: search from the back.
    let i = match q.iter().rposition(|(k, _)| *k <= key) {
        Some(i) if q.get(i).is_some_and(|(k, _)| *k == key) => i,
        Some(i) => {
            q.insert(i + 1, (key, T::default()));
            i + 1
        }
        None => {
            q.push_front((key, T::default()));
            0
        }
    };
    q.get_mut(i).map(|(_, t)| t)
}

impl<P: Point> Windows<P> {
    /// Adds one event at `ms` (entry-id time) with its point and latency.
    pub fn add(&mut self, ms: i64, point: &P, latency: Option<f64>) {
        let sec = ms.div_euclid(1000);
        if let Some(b) = bucket(&mut self.seconds, sec) {
            b.merge(point);
        }
        let min = sec.div_euclid(60);
        let pos = self.minutes.iter().rposition(|(k, _, _)| *k <= min);
        let same = pos
            .and_then(|i| self.minutes.get_mut(i))
            .filter(|m| m.0 == min);
        if let Some(m) = same {
            m.1.merge(point);
        } else {
            let at = pos.map_or(0, |i| i + 1);
            self.minutes.insert(at, (min, point.clone(), None));
        }
        if let Some(l) = latency {
            if let Some(sk) = bucket(&mut self.slots, sec - sec.rem_euclid(SLOT_SECS)) {
                sk.add(l);
            }
            if self.minute_sketch.0 != min {
                if min < self.minute_sketch.0 {
                    // a late event of a closed minute: its quantiles stay as computed
                } else {
                    self.close_minute();
                    self.minute_sketch = (min, DdSketch::new());
                }
            }
            if self.minute_sketch.0 == min {
                self.minute_sketch.1.add(l);
            }
        }
        self.last_sec = self.last_sec.max(sec);
    }

    fn close_minute(&mut self) {
        let (min, sk) = &self.minute_sketch;
        if let Some(m) = self.minutes.iter_mut().find(|(k, _, _)| k == min) {
            m.2 = minute_quantiles(sk);
        }
    }

    /// Drops what fell out of every window at `now_sec`.
    pub fn expire(&mut self, now_sec: i64) {
        while self
            .seconds
            .front()
            .is_some_and(|(s, _)| *s <= now_sec - SECONDS)
        {
            self.seconds.pop_front();
        }
        while self
            .minutes
            .front()
            .is_some_and(|(m, _, _)| *m <= now_sec.div_euclid(60) - MINUTES)
        {
            self.minutes.pop_front();
        }
        while self
            .slots
            .front()
            .is_some_and(|(s, _)| *s + SLOT_SECS <= now_sec - SECONDS)
        {
            self.slots.pop_front();
        }
    }

    /// The point of second `sec`, `None` when nothing arrived.
    pub fn at(&self, sec: i64) -> Option<&P> {
        self.seconds
            .iter()
            .rev()
            .find(|(s, _)| *s == sec)
            .map(|(_, p)| p)
    }

    /// The point of second `sec` (empty when nothing arrived).
    #[cfg(test)]
    pub fn second(&self, sec: i64) -> P {
        self.seconds
            .iter()
            .rev()
            .find(|(s, _)| *s == sec)
            .map(|(_, p)| p.clone())
            .unwrap_or_default()
    }

    /// The 1-s points of `(now − n, now]`, oldest first, gaps filled.
    pub fn seconds(&self, now_sec: i64, n: i64) -> Vec<(i64, P)> {
        let from = now_sec - n + 1;
        let mut it = self.seconds.iter().filter(|(s, _)| *s >= from).peekable();
        (from..=now_sec)
            .map(|s| match it.peek() {
                Some((k, p)) if *k == s => {
                    let p = p.clone();
                    it.next();
                    (s, p)
                }
                _ => (s, P::default()),
            })
            .collect()
    }

    /// Sum of the 1-s points of `(now − n, now]`.
    pub fn total(&self, now_sec: i64, n: i64) -> P {
        let mut t = P::default();
        for (_, p) in self
            .seconds
            .iter()
            .filter(|(s, _)| *s > now_sec - n && *s <= now_sec)
        {
            t.merge(p);
        }
        t
    }

    /// The 1-min points of the last hour (minute start ms, point, latency
    /// quantiles), oldest first.
    pub fn minutes(&self) -> Vec<(i64, P, MinuteQuantiles)> {
        self.minutes
            .iter()
            .map(|(m, p, q)| {
                let q = if *m == self.minute_sketch.0 {
                    minute_quantiles(&self.minute_sketch.1)
                } else {
                    *q
                };
                (m * 60_000, p.clone(), q)
            })
            .collect()
    }

    /// Latency sketch of the slots overlapping `(now − n, now]`.
    pub fn latency(&self, now_sec: i64, n: i64) -> DdSketch {
        let mut sk = DdSketch::new();
        for (_, s) in self
            .slots
            .iter()
            .filter(|(s, _)| *s + SLOT_SECS > now_sec - n && *s <= now_sec)
        {
            sk.merge(s);
        }
        sk
    }

    pub fn is_idle(&self, now_sec: i64) -> bool {
        self.last_sec <= now_sec - MINUTES * 60
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Clone, Serialize, PartialEq)]
    struct N(u64);
    impl Point for N {
        fn merge(&mut self, o: &Self) {
            self.0 += o.0;
        }
    }

    #[test]
    fn buckets_fill_and_expire() {
        let mut w: Windows<N> = Windows::default();
        let t0 = 1_772_359_200; // a minute boundary
        for i in 0..10 {
            w.add((t0 + i) * 1000 + 500, &N(1), Some(10.0 + i as f64));
        }
        w.add((t0 + 3) * 1000, &N(5), None); // out of order
        assert_eq!(w.second(t0 + 3), N(6));
        assert_eq!(w.total(t0 + 9, 60), N(15));
        let s = w.seconds(t0 + 11, 5);
        assert_eq!(s.len(), 5);
        assert_eq!(s.first(), Some(&(t0 + 7, N(1))));
        assert_eq!(s.last(), Some(&(t0 + 11, N(0))));
        assert_eq!(w.latency(t0 + 9, 60).count(), 10);
        assert_eq!(w.minutes().len(), 1);
        // the open minute's quantiles over latencies 10..=19 ms (DDSketch: within 1 %)
        let q = w.minutes().first().and_then(|m| m.2).expect("quantiles");
        let [p50, p95, p99] = q;
        assert!((p50 - 14.0).abs() <= 0.2, "p50 {p50}");
        assert!((17.8..=19.2).contains(&p99), "p99 {p99}");
        assert!(p50 <= p95 && p95 <= p99);
        // a later minute closes this one with the same figures
        w.add((t0 + 61) * 1000, &N(1), Some(1.0));
        assert_eq!(w.minutes().first().and_then(|m| m.2), Some(q));
        w.expire(t0 + 400);
        assert_eq!(w.total(t0 + 400, 300), N(0));
        assert_eq!(w.minutes().len(), 2, "the minutes stay for an hour");
        w.expire(t0 + 3_700);
        assert!(w.minutes().is_empty());
        assert!(w.is_idle(t0 + 3_700));
    }
}
