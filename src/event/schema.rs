//! The schema registry: one compiled JSON Schema (draft 2020-12) per kind and
//! version, loaded from `schemas/KIND.vN.json`.
//!
//! A schema may carry `"x-flowmeter": {"kind", "version", "partition_by": [fields]}`;
//! `partition_by` names the fields whose values pick the shard, so one
//! subject's events stay in one stream (and in order).

use std::collections::BTreeMap;
use std::path::Path;

use jsonschema::error::ValidationErrorKind;
use serde_json::{Map, Value};
use xxhash_rust::xxh3::xxh3_64;

use super::{
    parse_ts_value, truncate, EventError, FieldError, KindNames, PartitionKey, ValidEvent,
};

/// Longest `reason` we echo back; values inside messages can be huge.
const MAX_REASON_CHARS: usize = 240;

/// What the registry knows of one kind.
pub struct KindInfo {
    pub name: String,
    /// Compiled validators by version.
    versions: BTreeMap<u32, jsonschema::Validator>,
    /// Fields hashed to choose the shard.
    pub partition_by: Vec<String>,
    /// Top-level properties declared by the newest schema.
    pub properties: Vec<String>,
}

impl KindInfo {
    /// The newest schema version.
    pub fn latest(&self) -> u32 {
        self.versions.keys().next_back().copied().unwrap_or(1)
    }
}

impl std::fmt::Debug for KindInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KindInfo")
            .field("name", &self.name)
            .field("versions", &self.versions.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// All known kinds, loaded once at start.
#[derive(Debug, Default)]
pub struct SchemaRegistry {
    kinds: Vec<KindInfo>,
}

impl SchemaRegistry {
    /// Loads every `*.json` in `dir`. File names are `KIND.vN.json` (or `KIND.json` for v1).
    pub fn load(dir: &Path) -> Result<Self, EventError> {
        let io = |e| EventError::Io {
            path: dir.display().to_string(),
            source: e,
        };
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        let mut reg = SchemaRegistry::default();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|e| EventError::Io {
                path: path.display().to_string(),
                source: e,
            })?;
            let file_stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            reg.add(&file_stem, &text)
                .map_err(|reason| EventError::BadSchema {
                    path: path.display().to_string(),
                    reason,
                })?;
        }
        if reg.kinds.is_empty() {
            return Err(EventError::BadSchema {
                path: dir.display().to_string(),
                reason: "no schema files (*.json) found".into(),
            });
        }
        Ok(reg)
    }

    /// Adds one schema; `stem` is the file name without `.json`.
    pub fn add(&mut self, stem: &str, text: &str) -> Result<(), String> {
        let schema: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let (stem_kind, stem_version) = match stem.rsplit_once(".v") {
            Some((k, v)) => (k.to_string(), v.parse::<u32>().ok()),
            None => (stem.to_string(), Some(1)),
        };
        let meta = schema.get("x-flowmeter");
        let kind = meta
            .and_then(|m| m.get("kind"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or(stem_kind);
        let version = meta
            .and_then(|m| m.get("version"))
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
            .or(stem_version)
            .ok_or("cannot tell the version: name the file KIND.vN.json")?;
        if kind.is_empty()
            || !kind
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "kind {kind:?} must be non-empty ASCII letters, digits, '_' or '-'"
            ));
        }
        let partition_by = meta
            .and_then(|m| m.get("partition_by"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let properties = schema
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        let validator = jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&schema)
            .map_err(|e| format!("invalid JSON Schema: {e}"))?;
        let idx = match self.kinds.iter().position(|k| k.name == kind) {
            Some(i) => i,
            None => {
                self.kinds.push(KindInfo {
                    name: kind.clone(),
                    versions: BTreeMap::new(),
                    partition_by: Vec::new(),
                    properties: Vec::new(),
                });
                self.kinds.len() - 1
            }
        };
        let info = &mut self.kinds[idx];
        if info.versions.insert(version, validator).is_some() {
            return Err(format!("kind {kind} version {version} is defined twice"));
        }
        if version == info.latest() {
            info.partition_by = partition_by;
            info.properties = properties;
        }
        Ok(())
    }

    pub fn kinds(&self) -> &[KindInfo] {
        &self.kinds
    }

    pub fn kind_index(&self, name: &str) -> Option<usize> {
        self.kinds.iter().position(|k| k.name == name)
    }

    pub fn kind(&self, idx: usize) -> Option<&KindInfo> {
        self.kinds.get(idx)
    }

    fn known_kinds(&self) -> String {
        self.kinds
            .iter()
            .map(|k| k.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Validates one event (position `index` in its request). On success the
    /// event is re-serialized compactly for the stream.
    pub fn validate(&self, index: usize, event: &Value) -> Result<ValidEvent, Vec<FieldError>> {
        let at = Some(index);
        let err = |field: Option<&str>, reason: String| vec![FieldError::new(at, field, reason)];
        let Some(obj) = event.as_object() else {
            return Err(err(
                None,
                format!("an event must be a JSON object, got {}", type_name(event)),
            ));
        };
        let kind_name = match obj.get("kind") {
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(err(Some("kind"), "must be a string".into())),
            None => return Err(err(Some("kind"), "is required".into())),
        };
        let Some(kind) = self.kind_index(kind_name) else {
            return Err(err(
                Some("kind"),
                format!(
                    "unknown kind {:?}; known kinds: {}",
                    truncate(kind_name, 64),
                    self.known_kinds()
                ),
            ));
        };
        let info = &self.kinds[kind];
        let version = match obj.get("v") {
            None => info.latest(),
            Some(v) => match v.as_u64().and_then(|v| u32::try_from(v).ok()) {
                Some(v) if info.versions.contains_key(&v) => v,
                _ => {
                    return Err(err(
                        Some("v"),
                        format!(
                            "unknown schema version for kind {}; known: {:?}",
                            info.name,
                            info.versions.keys().collect::<Vec<_>>()
                        ),
                    ))
                }
            },
        };
        let Some(validator) = info.versions.get(&version) else {
            return Err(err(Some("v"), "unknown schema version".into()));
        };
        // Fast path: valid events (nearly all) skip building error reports.
        let mut errors: Vec<FieldError> = if validator.is_valid(event) {
            Vec::new()
        } else {
            validator
                .iter_errors(event)
                .map(|e| {
                    let (field, reason) = describe(&e);
                    FieldError::new(at, field.as_deref(), reason)
                })
                .collect()
        };
        let ts_ms = match obj.get("ts").map(parse_ts_value) {
            Some(Ok(ms)) => Some(ms),
            Some(Err(reason)) => {
                // ours says why; the schema's oneOf error does not
                errors.retain(|e| e.field.as_deref() != Some("ts"));
                errors.push(FieldError::new(at, Some("ts"), reason));
                None
            }
            None => None, // `required` already reported it
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let Some(ts_ms) = ts_ms else {
            return Err(err(Some("ts"), "is required".into()));
        };
        Ok(ValidEvent {
            kind,
            version,
            ts_ms,
            data: event.to_string(),
            partition: partition_hash(&info.partition_by, obj),
        })
    }
}

/// The producer names an event's stream by its kind's index here.
impl KindNames for SchemaRegistry {
    fn kind_name(&self, kind: usize) -> Option<&str> {
        self.kinds.get(kind).map(|k| k.name.as_str())
    }
}

/// Hash of the partition fields' values (all fields when none are declared
/// would scatter one subject; we hash the whole event instead, which spreads load).
fn partition_hash(fields: &[String], obj: &Map<String, Value>) -> u64 {
    if fields.is_empty() {
        return xxh3_64(Value::Object(obj.clone()).to_string().as_bytes());
    }
    let mut key = PartitionKey::new();
    for f in fields {
        match obj.get(f) {
            Some(Value::String(s)) => key.push(s),
            Some(v) => key.push(&v.to_string()),
            None => key.push(""),
        };
    }
    key.finish()
}

/// Turns a schema violation into (field, reason).
fn describe(e: &jsonschema::ValidationError<'_>) -> (Option<String>, String) {
    let path = e.instance_path().as_str();
    let top = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .filter(|s| !s.is_empty())
        .map(|s| s.replace("~1", "/").replace("~0", "~"));
    if top.as_deref() == Some("ts") {
        // a ts the schema refuses though it parses (e.g. too long)
        return (top, super::TS_RULE.to_string());
    }
    match e.kind() {
        ValidationErrorKind::Required { property } => {
            let name = property
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| property.to_string());
            (Some(name), "is required".into())
        }
        ValidationErrorKind::AdditionalProperties { unexpected } => (
            unexpected.first().cloned(),
            format!(
                "unknown field(s) {}; the schema does not allow them",
                unexpected.join(", ")
            ),
        ),
        _ => {
            let mut reason = e.to_string();
            if let Some(f) = &top {
                reason = format!("{reason} (field {f})");
            }
            (top, truncate(&reason, MAX_REASON_CHARS))
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn registry() -> SchemaRegistry {
        SchemaRegistry::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas")))
            .expect("shipped schemas load")
    }

    fn http() -> Value {
        json!({"kind":"http","ts":"2026-03-01T10:00:00Z","service":"courses","endpoint":"/api/courses/:id",
               "method":"GET","status":200,"req_bytes":120,"resp_bytes":5400,"duration_ms":12.5,"user_id":"u1"})
    }

    #[test]
    fn accepts_valid_events_of_both_kinds() {
        let r = registry();
        let e = r.validate(0, &http()).expect("valid");
        assert_eq!(r.kinds()[e.kind].name, "http");
        assert_eq!(e.version, 1);
        assert_eq!(e.ts_ms, 1_772_359_200_000);
        let w = json!({"kind":"webrtc","ts":1_772_359_200_000i64,"meeting_id":"m1","peer_id":"p1",
                        "bytes_sent":10,"bytes_received":20,"rtt_ms":40.0,"jitter_ms":3.0,
                        "packet_loss":0.0,"candidate_type":"relay","relay_protocol":"tcp"});
        assert!(r.validate(1, &w).is_ok());
    }

    #[test]
    fn names_the_field_and_reason() {
        let r = registry();
        let mut e = http();
        e["status"] = json!("200");
        let errs = r.validate(3, &e).expect_err("invalid");
        assert_eq!(errs[0].index, Some(3));
        assert_eq!(errs[0].field.as_deref(), Some("status"));

        let mut e = http();
        e.as_object_mut().map(|o| o.remove("service"));
        let errs = r.validate(0, &e).expect_err("invalid");
        assert_eq!(errs[0].field.as_deref(), Some("service"));
        assert_eq!(errs[0].reason, "is required");

        let mut e = http();
        e["req_bytes"] = json!(-1);
        assert_eq!(
            r.validate(0, &e).expect_err("neg")[0].field.as_deref(),
            Some("req_bytes")
        );
        e["req_bytes"] = json!(1e300);
        assert_eq!(
            r.validate(0, &e).expect_err("huge")[0].field.as_deref(),
            Some("req_bytes")
        );

        // one error for a bad ts, saying what it must be, not "oneOf"
        for bad in [
            json!("last tuesday"),
            json!(true),
            json!(1.5),
            json!(format!("2026-03-01T10:00:00.{}Z", "0".repeat(40))),
        ] {
            let mut e = http();
            e["ts"] = bad.clone();
            let errs = r.validate(4, &e).expect_err("ts");
            assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
            assert_eq!(errs[0].index, Some(4));
            assert_eq!(errs[0].field.as_deref(), Some("ts"));
            assert!(
                errs[0].reason.starts_with(crate::event::TS_RULE)
                    && !errs[0].reason.contains("oneOf"),
                "{bad}: {errs:?}"
            );
        }

        let mut e = http();
        e["kind"] = json!("smtp");
        let errs = r.validate(0, &e).expect_err("kind");
        assert!(
            errs[0].reason.contains("known kinds: http, webrtc"),
            "{:?}",
            errs
        );

        assert!(r.validate(0, &json!([1, 2])).is_err());
        let mut e = http();
        e["extra"] = json!(1);
        assert_eq!(
            r.validate(0, &e).expect_err("extra")[0].field.as_deref(),
            Some("extra")
        );
    }

    #[test]
    fn partitions_by_declared_fields() {
        let r = registry();
        let a = r.validate(0, &http()).expect("valid");
        let mut other = http();
        other["status"] = json!(500);
        let b = r.validate(0, &other).expect("valid");
        assert_eq!(
            a.partition, b.partition,
            "same service+endpoint → same shard"
        );
        other["endpoint"] = json!("/x");
        let c = r.validate(0, &other).expect("valid");
        assert_ne!(a.partition, c.partition);
    }
}
