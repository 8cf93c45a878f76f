//! Decoding a stream entry's `data` field back into its event: shared by
//! every reader of the streams (the rollup, the ClickHouse archive, the hub).

use serde_json::{Map, Value};

use super::parse_ts_value;

/// Decodes an entry's `data` into the event object and its time (epoch
/// milliseconds). The error says why the entry can never be read, in words
/// fit for a dead letter.
pub fn decode_entry(data: Option<&str>) -> Result<(Map<String, Value>, i64), String> {
    let data = data.ok_or("entry has no data field (deleted or foreign entry)")?;
    let ev: Map<String, Value> =
        serde_json::from_str(data).map_err(|e| format!("data is not a JSON object: {e}"))?;
    let ts = ev
        .get("ts")
        .ok_or("event has no ts")
        .and_then(|v| parse_ts_value(v).map_err(|_| "bad ts"))?;
    Ok((ev, ts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_event_and_its_time_or_says_why_not() {
        let (ev, ts) =
            decode_entry(Some(r#"{"kind":"http","ts":1772359200250,"status":200}"#)).expect("ok");
        assert_eq!(ts, 1_772_359_200_250);
        assert_eq!(ev["status"], 200);
        assert!(decode_entry(None)
            .expect_err("no data")
            .contains("no data field"));
        assert!(decode_entry(Some("[1]"))
            .expect_err("array")
            .contains("not a JSON object"));
        assert_eq!(
            decode_entry(Some(r#"{"kind":"http"}"#)).expect_err("no ts"),
            "event has no ts"
        );
        assert_eq!(
            decode_entry(Some(r#"{"ts":"yesterday"}"#)).expect_err("bad ts"),
            "bad ts"
        );
    }
}
