//! The ingest body parser and the schema validator: whatever the bytes, the
//! answer is a list of events or an error, never a panic; every accepted
//! event re-validates from its own serialized form.
#![no_main]

use std::sync::OnceLock;

use flowmeter::api::{ApiError, ReportLimits};
use flowmeter::config::IngestConfig;
use flowmeter::event::SchemaRegistry;
use libfuzzer_sys::fuzz_target;

fn schemas() -> &'static SchemaRegistry {
    static S: OnceLock<SchemaRegistry> = OnceLock::new();
    S.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
        SchemaRegistry::load(&dir).expect("the repository's schemas load")
    })
}

fuzz_target!(|data: &[u8]| {
    // first byte picks the body form, the rest is the body
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let ndjson = mode & 1 == 1;
    let limits = ReportLimits::from(&IngestConfig::default());
    let values = match flowmeter::api::parse_body(body, ndjson, 1_000, &limits) {
        Ok(v) => v,
        Err(ApiError::Invalid { errors, total, .. }) => {
            assert!(errors.len() <= limits.max_errors && errors.len() <= total.max(1));
            return;
        }
        Err(_) => return,
    };
    assert!(!values.is_empty() && values.len() <= 1_000);
    for (i, v) in values.iter().enumerate() {
        if let Ok(ev) = schemas().validate(i, v) {
            let again: serde_json::Value =
                serde_json::from_str(&ev.data).expect("a valid event serializes to JSON");
            assert!(
                schemas().validate(i, &again).is_ok(),
                "an accepted event must stay valid after its round trip"
            );
        }
    }
});
