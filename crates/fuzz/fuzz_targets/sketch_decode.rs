//! The DDSketch and HyperLogLog decoders read blobs back from MySQL: any
//! bytes decode to a sketch or an error; a decoded sketch answers queries,
//! merges, and encodes to bytes that decode to the same sketch.
#![no_main]

use flowmeter::sketch::{DdSketch, Hll};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = DdSketch::from_bytes(data) {
        for q in [0.0, 0.5, 0.99, 1.0] {
            if let Some(v) = s.quantile(q) {
                assert!(!v.is_nan(), "quantile {q} is NaN");
            }
        }
        let mut m = DdSketch::new();
        m.add(1.0);
        m.merge(&s);
        let bytes = s.to_bytes();
        let back = DdSketch::from_bytes(&bytes).expect("own encoding decodes");
        assert_eq!(back.count(), s.count());
        assert_eq!(back.to_bytes(), bytes);
    }
    if let Ok(h) = Hll::from_bytes(data) {
        let _ = h.estimate();
        let mut m = Hll::new();
        m.add_str("x");
        m.merge(&h);
        let bytes = h.to_bytes();
        let back = Hll::from_bytes(&bytes).expect("own encoding decodes");
        assert_eq!(back.estimate(), h.estimate());
    }
});
