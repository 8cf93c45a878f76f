//! Mergeable sketches for the rollups.
//!
//! - [`DdSketch`]: quantiles with bounded *relative* error (0.5 % per value,
//!   so every quantile is well within 1 %), mergeable exactly: merging shard
//!   sketches gives the same buckets as one sketch of all values.
//! - [`Hll`]: HyperLogLog distinct counts (precision 14: 2¹⁴ = 16,384
//!   registers, ~0.81 % standard error), with Ertl's estimator, which
//!   behaves as linear counting for small cardinalities (see `hll.rs`).
//!
//! Both serialize to compact, versioned bytes stored in BLOB columns; an empty
//! slice decodes to an empty sketch, and decoding untrusted bytes never
//! panics: anything malformed is a [`SketchError`].

pub mod ddsketch;
pub mod hll;

pub use ddsketch::DdSketch;
pub use hll::Hll;

/// A stored sketch could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SketchError {
    #[error("sketch bytes end early")]
    Truncated,
    #[error("unknown sketch encoding version {0}")]
    BadVersion(u8),
    #[error("corrupt sketch: {0}")]
    Corrupt(&'static str),
}

/// LEB128 varints and zigzag, shared by both encodings.
pub(crate) mod varint {
    use super::SketchError;

    pub fn put(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// Encoded length of `v` in bytes.
    pub fn len(v: u64) -> usize {
        (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
    }

    /// Reads one varint at `*pos`, advancing it. Rejects encodings longer
    /// than ten bytes or overflowing 64 bits.
    pub fn get(b: &[u8], pos: &mut usize) -> Result<u64, SketchError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*pos).ok_or(SketchError::Truncated)?;
            *pos += 1;
            if shift == 63 && byte > 1 {
                return Err(SketchError::Corrupt("varint overflows 64 bits"));
            }
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(SketchError::Corrupt("varint too long"))
    }

    pub fn zigzag(v: i64) -> u64 {
        ((v << 1) ^ (v >> 63)) as u64
    }

    pub fn unzigzag(v: u64) -> i64 {
        ((v >> 1) as i64) ^ -((v & 1) as i64)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn round_trips_and_rejects_overflow() {
            for v in [0u64, 1, 127, 128, 300, 1 << 35, u64::MAX] {
                let mut out = Vec::new();
                put(&mut out, v);
                assert_eq!(out.len(), len(v), "{v}");
                let mut pos = 0;
                assert_eq!(get(&out, &mut pos), Ok(v));
                assert_eq!(pos, out.len());
            }
            for v in [0i64, 1, -1, 63, -64, i64::MAX, i64::MIN] {
                assert_eq!(unzigzag(zigzag(v)), v);
            }
            let mut pos = 0;
            assert!(get(
                &[0xff; 9].iter().chain(&[2]).copied().collect::<Vec<_>>(),
                &mut pos
            )
            .is_err());
            let mut pos = 0;
            assert_eq!(get(&[0x80], &mut pos), Err(SketchError::Truncated));
            let mut pos = 0;
            assert!(get(&[0x80; 11], &mut pos).is_err());
        }
    }
}
