//! Reading untyped Redis replies (XINFO and friends), RESP2 or RESP3.

use std::collections::HashMap;

use redis::Value;

/// The value of `name` in the text of an `INFO` section (`name:value` lines).
pub fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .filter_map(|l| l.trim_end().split_once(':'))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A RESP2 flat key/value array (or RESP3 map) as a map.
pub fn to_map(v: Value) -> HashMap<String, Value> {
    let mut out = HashMap::new();
    match v {
        Value::Array(items) => {
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                if let Some(k) = text(Some(&k)) {
                    out.insert(k, v);
                }
            }
        }
        Value::Map(pairs) => {
            for (k, v) in pairs {
                if let Some(k) = text(Some(&k)) {
                    out.insert(k, v);
                }
            }
        }
        _ => {}
    }
    out
}

/// A bulk/simple string or integer as text.
pub fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// An integer (or a numeric string).
pub fn int(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => String::from_utf8_lossy(b).parse().ok(),
        _ => None,
    }
}

/// The id of an `[id, fields]` entry.
pub fn entry_id(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Array(parts) => text(parts.first()),
        _ => None,
    }
}
