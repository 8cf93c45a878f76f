//! DDSketch (Masson, Rim, Lee, VLDB 2019): a mergeable quantile sketch with
//! bounded *relative* error.
//!
//! # Algorithm
//! With `α` = [`DdSketch::RELATIVE_ACCURACY`] (0.5 %) and `γ = (1+α)/(1−α)`,
//! a value `v` goes to bucket `i = ⌈ln v / ln γ⌉`, i.e. `γ^(i−1) < v ≤ γ^i`.
//! The bucket's representative `2γ^i/(γ+1)` is within `α` (relative) of every
//! value in the bucket, so the value returned for any rank is within 0.5 % of
//! the exact value at that rank — comfortably inside the promised 1 %.
//! Zero, negative, tiny (`< 1e-9`) and non-finite values (NaN, ±∞) are
//! counted in a separate zero bucket whose representative is exactly `0`
//! (an `∞` kept as `f64::MAX` would collapse every other bucket, see below).
//!
//! Buckets live in a dense `Vec<u64>` window starting at bucket `offset`, so
//! an add is one `ln` and one increment once the window has grown. Merging
//! adds bucket counts, so shard sketches merge into *exactly* the buckets of
//! one sketch of all values (and in any order).
//!
//! # Memory bound
//! The window holds at most [`MAX_BUCKETS`] (4096) buckets, which spans a
//! ratio of `γ^4096 ≈ 6·10¹⁷` between the smallest and largest non-zero value.
//! Only if values spread wider do the *lowest* buckets collapse into the
//! lowest kept one: that only affects the lowest quantiles, which are then
//! over-estimated (a single outlier like `1e300` among latencies would wreck
//! everything below ~`1e282`); the higher quantiles keep the relative-error
//! guarantee. With collapsing in play, merge results may depend on merge order.
//!
//! # Encoding
//! `[version = 1] [varint zero_count] [varint n]` followed by `n` pairs
//! `(zigzag varint index delta, varint count)` for the non-empty buckets in
//! increasing index order (the first delta is from index 0). The total count
//! is the sum of all counts. An empty slice decodes to an empty sketch;
//! decoding checks every field and never panics.

use super::{varint, SketchError};

const VERSION: u8 = 1;
/// Widest bucket window kept in memory (and accepted when decoding).
pub const MAX_BUCKETS: usize = 4096;
/// Values below this (and NaN, negatives) count as zero.
const MIN_VALUE: f64 = 1e-9;
const ALPHA: f64 = DdSketch::RELATIVE_ACCURACY;
const GAMMA: f64 = (1.0 + ALPHA) / (1.0 - ALPHA);
/// `ln γ = 2·atanh(α)`, from its (fast-converging) series so it is a constant.
const LN_GAMMA: f64 = {
    let x2 = ALPHA * ALPHA;
    2.0 * ALPHA * (1.0 + x2 / 3.0 + x2 * x2 / 5.0 + x2 * x2 * x2 / 7.0)
};
const INV_LN_GAMMA: f64 = 1.0 / LN_GAMMA;

/// Mergeable quantile sketch; see the module docs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DdSketch {
    /// Values counted as zero.
    zero: u64,
    /// Total values (zero bucket included).
    count: u64,
    /// Bucket index of `bins[0]`.
    offset: i32,
    /// Dense counts of buckets `offset ..= offset + bins.len() − 1`.
    bins: Vec<u64>,
}

/// Bucket index of a finite value `v ≥ MIN_VALUE`.
fn index(v: f64) -> i32 {
    (v.ln() * INV_LN_GAMMA).ceil() as i32
}

/// Representative value of bucket `i`.
fn value(i: i32) -> f64 {
    ((f64::from(i) * LN_GAMMA).exp() * (2.0 / (GAMMA + 1.0))).min(f64::MAX)
}

/// The range of bucket indexes any value can map to.
fn index_range() -> (i32, i32) {
    (index(MIN_VALUE), index(f64::MAX))
}

impl DdSketch {
    /// Relative accuracy of every bucket; quantiles are within it of the
    /// exact values, so within 1 % with margin.
    pub const RELATIVE_ACCURACY: f64 = 0.005;

    pub fn new() -> Self {
        Self::default()
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes its buckets hold on the heap (at most `MAX_BUCKETS` × 8).
    pub fn heap_bytes(&self) -> usize {
        self.bins.capacity() * std::mem::size_of::<u64>()
    }

    /// Adds one value. Zero, negative, non-finite (NaN, ±∞) and values below
    /// `1e-9` go to the zero bucket.
    pub fn add(&mut self, v: f64) {
        self.count = self.count.saturating_add(1);
        if !v.is_finite() || v < MIN_VALUE {
            self.zero = self.zero.saturating_add(1);
        } else {
            self.add_bin(index(v), 1);
        }
    }

    /// Adds `n` to bucket `i` (which lies in `index_range()`), growing the
    /// window or collapsing its lowest buckets to stay within `MAX_BUCKETS`.
    fn add_bin(&mut self, i: i32, n: u64) {
        if self.bins.is_empty() {
            self.offset = i;
            self.bins.push(n);
            return;
        }
        if i < self.offset {
            let grow = (self.offset - i) as usize;
            if grow + self.bins.len() > MAX_BUCKETS {
                // Too wide: the lowest kept bucket absorbs the new low value.
                self.bins[0] = self.bins[0].saturating_add(n);
                return;
            }
            self.bins.splice(0..0, std::iter::repeat_n(0, grow));
            self.offset = i;
        }
        let pos = (i - self.offset) as usize;
        if pos >= MAX_BUCKETS {
            // Collapse the lowest buckets so that bucket `i` becomes the top.
            let shift = pos + 1 - MAX_BUCKETS;
            let keep_from = shift.min(self.bins.len() - 1);
            let folded = self.bins[..=keep_from]
                .iter()
                .fold(0u64, |a, &c| a.saturating_add(c));
            self.bins.drain(..keep_from);
            self.bins[0] = folded;
            self.offset += shift as i32;
            self.bins.resize(MAX_BUCKETS, 0);
            self.bins[MAX_BUCKETS - 1] = n;
            return;
        }
        if pos >= self.bins.len() {
            self.bins.resize(pos + 1, 0);
        }
        self.bins[pos] = self.bins[pos].saturating_add(n);
    }

    /// Adds every value of `other` to this sketch.
    pub fn merge(&mut self, other: &DdSketch) {
        self.zero = self.zero.saturating_add(other.zero);
        self.count = self.count.saturating_add(other.count);
        for (j, &n) in other.bins.iter().enumerate() {
            if n > 0 {
                self.add_bin(other.offset + j as i32, n);
            }
        }
    }

    /// Value at 0-based rank `⌊q·(count−1)⌋` in sorted order, within
    /// [`Self::RELATIVE_ACCURACY`]; `None` when empty. `q` is clamped to
    /// `[0, 1]` (NaN counts as 0).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        let rank = (q * (self.count - 1) as f64).floor() as u64;
        if rank < self.zero {
            return Some(0.0);
        }
        let mut seen = self.zero;
        let mut last = None;
        for (j, &n) in self.bins.iter().enumerate() {
            if n == 0 {
                continue;
            }
            last = Some(j);
            seen = seen.saturating_add(n);
            if seen > rank {
                break;
            }
        }
        Some(last.map_or(0.0, |j| value(self.offset + j as i32)))
    }

    /// Compact, versioned encoding; see the module docs.
    pub fn to_bytes(&self) -> Vec<u8> {
        let nonzero = self.bins.iter().filter(|&&n| n > 0).count();
        let mut out = Vec::with_capacity(12 + nonzero * 3);
        out.push(VERSION);
        varint::put(&mut out, self.zero);
        varint::put(&mut out, nonzero as u64);
        let mut prev = 0i64;
        for (j, &n) in self.bins.iter().enumerate() {
            if n > 0 {
                let idx = i64::from(self.offset) + j as i64;
                varint::put(&mut out, varint::zigzag(idx - prev));
                varint::put(&mut out, n);
                prev = idx;
            }
        }
        out
    }

    /// Decodes [`Self::to_bytes`] output; an empty slice is an empty sketch.
    pub fn from_bytes(b: &[u8]) -> Result<Self, SketchError> {
        let Some(&version) = b.first() else {
            return Ok(Self::new());
        };
        if version != VERSION {
            return Err(SketchError::BadVersion(version));
        }
        let (lo, hi) = index_range();
        let mut pos = 1;
        let zero = varint::get(b, &mut pos)?;
        let n = varint::get(b, &mut pos)?;
        if n > MAX_BUCKETS as u64 {
            return Err(SketchError::Corrupt("too many buckets"));
        }
        let mut count = zero;
        let mut buckets: Vec<(i32, u64)> = Vec::new();
        let mut idx = 0i64;
        for k in 0..n {
            let delta = varint::unzigzag(varint::get(b, &mut pos)?);
            if k > 0 && delta <= 0 {
                return Err(SketchError::Corrupt("bucket indexes not increasing"));
            }
            idx = idx
                .checked_add(delta)
                .ok_or(SketchError::Corrupt("bucket index overflow"))?;
            let i = i32::try_from(idx)
                .ok()
                .filter(|i| (lo..=hi).contains(i))
                .ok_or(SketchError::Corrupt("bucket index out of range"))?;
            let c = varint::get(b, &mut pos)?;
            if c == 0 {
                return Err(SketchError::Corrupt("empty bucket"));
            }
            count = count
                .checked_add(c)
                .ok_or(SketchError::Corrupt("count overflow"))?;
            buckets.push((i, c));
        }
        if pos != b.len() {
            return Err(SketchError::Corrupt("trailing bytes"));
        }
        let mut s = Self {
            zero,
            count,
            ..Self::default()
        };
        if let (Some(&(first, _)), Some(&(last, _))) = (buckets.first(), buckets.last()) {
            let width = (last - first) as usize + 1;
            if width > MAX_BUCKETS {
                return Err(SketchError::Corrupt("bucket window too wide"));
            }
            s.offset = first;
            s.bins = vec![0; width];
            for (i, c) in buckets {
                s.bins[(i - first) as usize] = c;
            }
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const QS: [f64; 8] = [0.0, 0.01, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0];

    fn sketch_of(values: &[f64]) -> DdSketch {
        let mut s = DdSketch::new();
        values.iter().for_each(|&v| s.add(v));
        s
    }

    /// Asserts every quantile of `sk` is within α (and so within 1 %) of the
    /// exact value at rank ⌊q·(n−1)⌋ of `values`.
    fn assert_accurate(sk: &DdSketch, values: &[f64], what: &str) {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        for q in QS {
            let exact = sorted[(q * (sorted.len() - 1) as f64).floor() as usize];
            let got = sk.quantile(q).expect("non-empty");
            let err = (got - exact).abs() / exact;
            assert!(err <= 0.01, "{what} q={q}: {got} vs exact {exact}");
            assert!(err <= ALPHA * (1.0 + 1e-9), "{what} q={q}: error {err}");
        }
    }

    fn lognormal(rng: &mut StdRng, n: usize) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let (u1, u2): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                (3.0 + 1.5 * z).exp()
            })
            .collect()
    }

    #[test]
    fn constants_and_mapping() {
        assert!((LN_GAMMA - GAMMA.ln()).abs() < 1e-15);
        for v in [1e-9, 0.3, 1.0, 7.5, 1e6, 1e300, f64::MAX] {
            let rep = value(index(v));
            assert!((rep - v).abs() / v <= ALPHA * (1.0 + 1e-9), "{v} -> {rep}");
        }
    }

    #[test]
    fn within_one_percent_on_varied_data() {
        let mut rng = StdRng::seed_from_u64(7);
        let data = lognormal(&mut rng, 100_000);
        assert_accurate(&sketch_of(&data), &data, "log-normal");
        let data: Vec<f64> = (0..100_000)
            .map(|_| rng.random_range(0.001..1000.0))
            .collect();
        assert_accurate(&sketch_of(&data), &data, "uniform");
        // Pareto with shape 1.1: heavy tail reaching ~10^4–10^5.
        let data: Vec<f64> = (0..100_000)
            .map(|_| rng.random_range(1e-12..1.0f64).powf(-1.0 / 1.1))
            .collect();
        assert_accurate(&sketch_of(&data), &data, "pareto");
    }

    #[test]
    fn merged_shards_equal_one_sketch() {
        let mut rng = StdRng::seed_from_u64(3);
        let values = lognormal(&mut rng, 100_000);
        let mut shards = vec![DdSketch::new(); 8];
        // Shard by value range too, so merging must grow windows both ways.
        for (k, &v) in values.iter().enumerate() {
            shards[(k + (v as usize)) % 8].add(v);
        }
        let all = sketch_of(&values);
        let mut merged = DdSketch::new();
        for s in shards.iter().rev() {
            merged.merge(s);
        }
        assert_eq!(merged, all, "bucket state differs");
        assert_accurate(&merged, &values, "merged");
        for q in QS {
            assert_eq!(merged.quantile(q), all.quantile(q));
        }
        let mut again = DdSketch::new();
        again.merge(&DdSketch::new());
        assert!(again.is_empty());
    }

    #[test]
    fn round_trips() {
        let mut rng = StdRng::seed_from_u64(9);
        let mut s = sketch_of(&lognormal(&mut rng, 1000));
        let back = DdSketch::from_bytes(&s.to_bytes()).expect("decode");
        assert_eq!(back, s);
        s.add(0.0);
        s.add(f64::INFINITY);
        s.add(1e-9);
        assert_eq!(DdSketch::from_bytes(&s.to_bytes()).expect("decode"), s);
        let empty = DdSketch::new();
        assert_eq!(DdSketch::from_bytes(&empty.to_bytes()), Ok(empty.clone()));
        assert_eq!(DdSketch::from_bytes(&[]), Ok(empty));
        let zeros = sketch_of(&[0.0, -1.0]);
        assert_eq!(DdSketch::from_bytes(&zeros.to_bytes()), Ok(zeros));
    }

    #[test]
    fn zeros_nan_and_empty() {
        let mut s = DdSketch::new();
        assert_eq!(s.quantile(0.5), None);
        assert!(s.is_empty());
        for v in [0.0, f64::NAN, -3.0, 1e-12, f64::NEG_INFINITY] {
            s.add(v);
        }
        assert_eq!(s.quantile(1.0), Some(0.0));
        s.add(f64::INFINITY);
        s.add(10.0);
        assert_eq!(s.count(), 7);
        assert_eq!(s.quantile(0.5), Some(0.0));
        let q = s.quantile(1.0).expect("q");
        assert!((q - 10.0).abs() / 10.0 <= ALPHA * (1.0 + 1e-9), "{q}");
        s.add(f64::MAX);
        let top = s.quantile(2.0).expect("q");
        assert!((top - f64::MAX).abs() / f64::MAX <= ALPHA * (1.0 + 1e-9));
        assert_eq!(s.quantile(-1.0), Some(0.0));
        assert_eq!(s.quantile(f64::NAN), Some(0.0));
    }

    #[test]
    fn extreme_ranges_collapse_only_the_lowest_buckets() {
        let mut s = DdSketch::new();
        for e in -9..=300 {
            s.add(10f64.powi(e));
        }
        s.add(1e-9);
        assert!(s.bins.len() <= MAX_BUCKETS);
        assert_eq!(s.count(), 311);
        let mut sorted: Vec<f64> = (-9..=300).map(|e| 10f64.powi(e)).collect();
        sorted.insert(0, 1e-9);
        // The top quantiles (values within 4096 buckets of the maximum) keep
        // the guarantee; the lowest ones are over-estimated.
        for q in [0.99, 1.0] {
            let exact = sorted[(q * 310.0) as usize];
            let got = s.quantile(q).expect("q");
            assert!((got - exact).abs() / exact <= ALPHA * (1.0 + 1e-9), "q={q}");
        }
        assert!(s.quantile(0.0).expect("q") > 1e280);
        assert_eq!(DdSketch::from_bytes(&s.to_bytes()), Ok(s));
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = StdRng::seed_from_u64(11);
        let s = sketch_of(&lognormal(&mut rng, 1000));
        let good = s.to_bytes();
        for cut in 1..good.len() {
            assert!(DdSketch::from_bytes(&good[..cut]).is_err(), "cut {cut}");
        }
        for _ in 0..5000 {
            let mut b = good.clone();
            for _ in 0..rng.random_range(1..4) {
                let k = rng.random_range(0..b.len());
                b[k] = rng.random();
            }
            if let Ok(d) = DdSketch::from_bytes(&b) {
                let _ = (d.quantile(0.5), d.to_bytes());
            }
            let n = rng.random_range(0..64);
            let mut b: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            if let Some(v) = b.first_mut() {
                *v = VERSION;
            }
            if let Ok(mut d) = DdSketch::from_bytes(&b) {
                let _ = d.quantile(0.99);
                d.merge(&d.clone());
            }
        }
        let mut evil = vec![VERSION, 0, 2];
        varint::put(&mut evil, varint::zigzag(i64::from(i32::MIN)));
        evil.push(1);
        varint::put(&mut evil, varint::zigzag(i64::from(u32::MAX)));
        evil.push(1);
        assert!(DdSketch::from_bytes(&evil).is_err());
        let mut wide = vec![VERSION, 0, 2, 0, 1];
        varint::put(&mut wide, varint::zigzag(MAX_BUCKETS as i64));
        wide.push(1);
        assert!(DdSketch::from_bytes(&wide).is_err());
        let mut big = vec![VERSION];
        varint::put(&mut big, u64::MAX);
        big.extend([1, 0, 1]);
        assert!(DdSketch::from_bytes(&big).is_err());
        assert_eq!(DdSketch::from_bytes(&[2]), Err(SketchError::BadVersion(2)));
    }
}
