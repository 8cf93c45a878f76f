//! The processor expression language: parsing any text and evaluating the
//! result on a fixed event never panics and never recurses without bound.
#![no_main]

use std::sync::OnceLock;

use flowmeter::expr::Expr;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};

fn event() -> &'static Map<String, Value> {
    static E: OnceLock<Map<String, Value>> = OnceLock::new();
    E.get_or_init(|| {
        let v = json!({
            "kind": "http", "service": "api", "endpoint": "/v1/x", "method": "GET",
            "status": 503, "req_bytes": 18_446_744_073_709_551_615u64, "resp_bytes": -1,
            "duration_ms": 1.5e308, "user_id": "ü😀", "relayed": true, "none": null,
            "list": [1, 2], "obj": {"a": 1}
        });
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(e) = Expr::parse(src) {
        let _ = e.eval_bool(event());
        let _ = e.eval_f64(event());
        let _ = e.fields();
        // the source it keeps parses again to the same fields
        let again = Expr::parse(e.source()).expect("a parsed expression's source parses");
        assert_eq!(again.fields(), e.fields());
    }
});
