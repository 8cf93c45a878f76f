//! Sliding windows of one subject: per-second points for the last
//! [`SECONDS`], per-minute points for the last [`MINUTES`], and the
//! latencies of each [`SLOT_SECS`]-second slot (a few as values, more as a
//! sketch) for the quantiles of the 1-minute and 5-minute windows. Buckets are keyed by the entry id's time (arrival
//! at Redis), so every hub instance reading the same streams fills the same
//! buckets. Storage is sparse: a quiet subject holds only its busy seconds.

use std::collections::VecDeque;

use crate::sketch::DdSketch;
use crate::view::Cells;

/// Seconds of 1-s points kept (the 5-minute window).
pub const SECONDS: i64 = 300;
/// Minutes of 1-min points kept (the 1-hour window).
pub const MINUTES: i64 = 60;
/// Width of a latency slot.
pub const SLOT_SECS: i64 = 10;

/// p50, p95 and p99 of a minute's latencies (ms).
pub type MinuteQuantiles = Option<[f64; 3]>;

fn minute_quantiles(l: &Latencies) -> MinuteQuantiles {
    let mut sk = DdSketch::new();
    l.merge_into(&mut sk);
    Some([sk.quantile(0.5)?, sk.quantile(0.95)?, sk.quantile(0.99)?])
}

/// Latencies a slot keeps as values before it turns them into a sketch.
const SLOT_VALUES: usize = 32;

/// The latencies of one slot (or minute): the values themselves while
/// there are at most [`SLOT_VALUES`], then a sketch. A sketch's dense bins
/// span its lowest to its highest value (up to 32 KB), so a subject seen a
/// few times a second with spread latencies held ~4 KB per slot; as values
/// it holds 8 B per event. The quantiles are the same either way: the
/// values go into the merged sketch as they would have into the slot's.
#[derive(Debug, Clone)]
enum Latencies {
    Values(Vec<f64>),
    Sketch(DdSketch),
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies::Values(Vec::new())
    }
}

impl Latencies {
    fn add(&mut self, v: f64) {
        match self {
            Latencies::Values(vs) if vs.len() < SLOT_VALUES => vs.push(v),
            Latencies::Values(vs) => {
                let mut sk = DdSketch::new();
                vs.iter().for_each(|x| sk.add(*x));
                sk.add(v);
                *self = Latencies::Sketch(sk);
            }
            Latencies::Sketch(sk) => sk.add(v),
        }
    }

    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        match self {
            Latencies::Values(vs) => vs.capacity() * std::mem::size_of::<f64>(),
            Latencies::Sketch(sk) => sk.heap_bytes(),
        }
    }

    fn merge_into(&self, sk: &mut DdSketch) {
        match self {
            Latencies::Values(vs) => vs.iter().for_each(|x| sk.add(*x)),
            Latencies::Sketch(s) => sk.merge(s),
        }
    }
}

/// Additive figures of one bucket (the views' [`Cells`]).
pub trait Point: Default + Clone {
    fn merge(&mut self, other: &Self);
    /// Bytes it holds on the heap beyond its own size.
    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        0
    }
}

impl Point for Cells {
    fn merge(&mut self, other: &Self) {
        Cells::merge(self, other)
    }
    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        Cells::heap_bytes(self)
    }
}

/// One subject's windows.
#[derive(Debug, Clone, Default)]
pub struct Windows<P: Point> {
    /// (unix second, point), ascending.
    seconds: VecDeque<(i64, P)>,
    /// (unix minute, point, quantiles of the minute's latencies once it closed).
    minutes: VecDeque<(i64, P, MinuteQuantiles)>,
    /// (slot start second, its latencies), ascending.
    slots: VecDeque<(i64, Latencies)>,
    /// Latencies of the current minute (for its quantiles).
    minute_sketch: (i64, Latencies),
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
                    self.minute_sketch = (min, Latencies::default());
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
            s.merge_into(&mut sk);
        }
        sk
    }

    /// Bytes held on the heap (the memory bound of docs/websocket.md).
    #[cfg(test)]
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of_val;
        let deque = |n: usize, one: usize| n * one;
        deque(self.seconds.capacity(), size_of::<(i64, P)>())
            + deque(
                self.minutes.capacity(),
                size_of::<(i64, P, MinuteQuantiles)>(),
            )
            + deque(self.slots.capacity(), size_of::<(i64, Latencies)>())
            + self
                .slots
                .iter()
                .map(|(_, l)| l.heap_bytes())
                .sum::<usize>()
            + self.minute_sketch.1.heap_bytes()
            + self
                .seconds
                .iter()
                .map(|(_, p)| p.heap_bytes())
                .sum::<usize>()
            + self
                .minutes
                .iter()
                .map(|(_, p, _)| p.heap_bytes())
                .sum::<usize>()
            + size_of_val(self)
    }

    pub fn is_idle(&self, now_sec: i64) -> bool {
        self.last_sec <= now_sec - MINUTES * 60
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Clone, PartialEq)]
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

    /// A subject fed `per_sec` events a second (latencies from `lat`) for
    /// an hour, as the hub holds it then.
    fn busy_for_an_hour(per_sec: u32, lat: impl Fn(u32) -> f64) -> Windows<Cells> {
        let t0 = 1_772_359_200i64;
        let mut w = Windows::default();
        for s in 0..3_600 {
            for k in 0..per_sec {
                w.add(
                    (t0 + s) * 1000,
                    &Cells(vec![1.0; 5].into_boxed_slice()),
                    Some(lat(k + s as u32)),
                );
            }
            w.expire(t0 + s);
        }
        w
    }

    #[test]
    fn a_busy_subject_costs_tens_of_kilobytes_whatever_its_latencies() {
        // every second, latencies spread over two decades
        let spread = busy_for_an_hour(1, |i| 5.0 * 10f64.powf(f64::from(i % 97) / 48.0));
        // a latency a second alternating between the extremes of a sketch
        let extremes = busy_for_an_hour(1, |i| if i % 2 == 0 { 1e-6 } else { 1e12 });
        // with a dense sketch per slot they held 150 KB and 1 MB; now the
        // extremes widen only the minute's sketch (32 KB)
        for (what, w, max_kb) in [("spread", spread, 48.0), ("extremes", extremes, 80.0)] {
            let kb = w.heap_bytes() as f64 / 1024.0;
            println!("{what}: {kb:.1} KB");
            assert!(kb < max_kb, "{what}: {kb:.1} KB");
        }
    }

    #[test]
    fn slots_keep_few_latencies_as_values_with_the_same_quantiles() {
        let t0 = 1_772_359_200i64;
        // 10 events a slot (sparse), then 500 (a sketch), spread over 6 decades
        for per_slot in [10u32, 500] {
            let mut w = Windows::<N>::default();
            let mut all = DdSketch::new();
            for i in 0..(per_slot * 6) {
                let sec = t0 + i64::from(i / per_slot) * SLOT_SECS;
                let v = 10f64.powf(f64::from(i % 61) / 10.0) * 0.01;
                w.add(sec * 1000, &N(1), Some(v));
                all.add(v);
            }
            let now = t0 + 6 * SLOT_SECS;
            let got = w.latency(now, 300);
            for q in [0.0, 0.5, 0.95, 0.99, 1.0] {
                assert_eq!(got.quantile(q), all.quantile(q), "q{q} of {per_slot}/slot");
            }
            let sparse = w
                .slots
                .iter()
                .all(|(_, l)| matches!(l, Latencies::Values(v) if v.len() <= SLOT_VALUES));
            assert_eq!(sparse, per_slot as usize <= SLOT_VALUES, "{per_slot}/slot");
            let q = w.minutes().first().and_then(|m| m.2).expect("quantiles");
            assert!(q[0] > 0.0 && q[0] <= q[1] && q[1] <= q[2], "{q:?}");
        }
    }
}
