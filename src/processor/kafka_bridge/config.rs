//! `type = "kafka_bridge"` definitions: which kinds go to which topic, keyed
//! how, and the topics created at start.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::event::SchemaRegistry;
use crate::processor::sink::{BatchConfig, SinkHead};
use crate::processor::{Processor, ProcessorContext, ProcessorError};

/// Longest topic name Kafka accepts.
const MAX_TOPIC_CHARS: usize = 249;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeDef {
    pub name: String,
    /// Consumer group (its own: the bridge acknowledges independently of the rollups).
    pub group: String,
    /// Event kinds forwarded.
    pub kinds: Vec<String>,
    /// Off unless set: the bridge needs a Kafka cluster (`[kafka]` in the config).
    #[serde(default)]
    pub enabled: bool,
    /// Where a new group starts (`beginning` (default), `now`, a time or an id).
    #[serde(default)]
    pub start_from: Option<String>,
    /// Topic of each kind, a template over `{kind}` (default `flowmeter.{kind}`).
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Message key per kind, a template over the event's top-level fields,
    /// e.g. `"{service}:{endpoint}"`; a missing or null field renders as
    /// nothing. A kind not listed is keyed by its schema's `partition_by`
    /// fields joined with `:` (no key when it declares none).
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
    /// Create missing topics before the first delivery (and after a delivery
    /// failed); an existing topic is left as it is.
    #[serde(default = "yes")]
    pub create_topics: bool,
    /// Partitions of a created topic.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor of a created topic; -1 takes the broker's
    /// `default.replication.factor`.
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    #[serde(default)]
    pub batch: BatchConfig,
    /// Also forward alert transitions (the `{prefix}:alerts` stream the
    /// evaluator writes) to this topic (`{kind}` renders as `alerts`), keyed
    /// `rule:subject`; off when absent.
    #[serde(default)]
    pub alerts_topic: Option<String>,
}

/// The pseudo-kind of forwarded alerts (its single shard is `{prefix}:alerts`).
pub const ALERTS: &str = "alerts";

fn default_topic() -> String {
    "flowmeter.{kind}".into()
}
fn yes() -> bool {
    true
}
fn default_partitions() -> i32 {
    3
}
fn default_replication() -> i32 {
    -1
}

impl BridgeDef {
    /// The fields every sink has.
    pub fn head(&self) -> SinkHead<'_> {
        SinkHead {
            name: &self.name,
            group: &self.group,
            kinds: &self.kinds,
            start_from: self.start_from.as_deref(),
            batch: &self.batch,
        }
    }

    /// The topic of `kind`.
    pub fn topic_of(&self, kind: &str) -> Result<String, String> {
        let template = match (kind, &self.alerts_topic) {
            (ALERTS, Some(t)) => t,
            _ => &self.topic,
        };
        let t = Template::parse(template).map_err(|e| format!("topic: {e}"))?;
        if let Some(f) = t.fields().find(|f| *f != "kind") {
            return Err(format!("topic: only {{kind}} may be used, not {{{f}}}"));
        }
        let name = t.render(|_| Some(kind.to_string()));
        let valid = !name.is_empty()
            && name.len() <= MAX_TOPIC_CHARS
            && name != "."
            && name != ".."
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !valid {
            return Err(format!(
                "topic {name:?} of kind {kind}: use 1-249 letters, digits, '.', '_' and '-'"
            ));
        }
        Ok(name)
    }

    /// The key template of `kind`: its `keys` entry, else the schema's
    /// `partition_by` fields; `None` when neither gives one. Checks the
    /// fields against the newest schema's properties.
    pub fn key_of(&self, kind: &str, schemas: &SchemaRegistry) -> Result<Option<Template>, String> {
        let info = schemas
            .kind_index(kind)
            .and_then(|i| schemas.kind(i))
            .ok_or_else(|| format!("kind {kind:?} has no schema"))?;
        let t = match self.keys.get(kind) {
            Some(s) => Template::parse(s).map_err(|e| format!("keys.{kind}: {e}"))?,
            None if info.partition_by.is_empty() => return Ok(None),
            None => Template::fields_joined(&info.partition_by, ":"),
        };
        if let Some(f) = t.fields().find(|f| !info.properties.iter().any(|p| p == f)) {
            return Err(format!(
                "keys.{kind}: field {f:?} is not a property of the {kind} schema"
            ));
        }
        Ok(Some(t))
    }

    pub fn check(&self) -> Result<(), String> {
        self.head().check()?;
        if self.kinds.iter().any(|k| k == ALERTS) {
            return Err("kind \"alerts\" is reserved: forward alerts with alerts_topic".into());
        }
        if self.alerts_topic.is_some() {
            self.topic_of(ALERTS)?;
        }
        for kind in self.keys.keys() {
            if !self.kinds.contains(kind) {
                return Err(format!("keys.{kind}: kind {kind:?} is not in kinds"));
            }
        }
        for (kind, k) in &self.keys {
            Template::parse(k).map_err(|e| format!("keys.{kind}: {e}"))?;
        }
        for k in &self.kinds {
            self.topic_of(k)?;
        }
        if self.partitions < 1 {
            return Err("partitions must be at least 1".into());
        }
        if self.replication_factor < 1 && self.replication_factor != -1 {
            return Err("replication_factor must be at least 1, or -1 (broker default)".into());
        }
        Ok(())
    }

    /// Builds the processor. Needs the cargo feature `kafka`; does not
    /// contact Kafka (the topics are created in the background and before
    /// the first delivery), so the rollup role starts while Kafka is down.
    pub async fn build(&self, ctx: ProcessorContext) -> Result<Box<dyn Processor>, ProcessorError> {
        #[cfg(feature = "kafka")]
        {
            super::processor::build(self, ctx).await
        }
        #[cfg(not(feature = "kafka"))]
        {
            let _ = ctx;
            Err(crate::processor::sink::missing_feature(&self.name, "kafka"))
        }
    }
}

/// A text with `{field}` placeholders (`{{` and `}}` are literal braces).
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(String),
    Field(String),
}

impl Template {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) if c.is_ascii_alphanumeric() || c == '_' => name.push(c),
                            Some(c) => {
                                return Err(format!("{s:?}: {c:?} in a field name"));
                            }
                            None => return Err(format!("{s:?}: unclosed '{{'")),
                        }
                    }
                    if name.is_empty() {
                        return Err(format!("{s:?}: empty '{{}}'"));
                    }
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Field(name));
                }
                '}' => return Err(format!("{s:?}: unmatched '}}' (write '}}}}')")),
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Self { parts })
    }

    /// `{a}SEP{b}…` over `fields`.
    pub fn fields_joined(fields: &[String], sep: &str) -> Self {
        let mut parts = Vec::new();
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                parts.push(Part::Lit(sep.to_string()));
            }
            parts.push(Part::Field(f.clone()));
        }
        Self { parts }
    }

    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(f) => Some(f.as_str()),
            Part::Lit(_) => None,
        })
    }

    /// Fills the placeholders; `None` from `lookup` renders as nothing.
    pub fn render(&self, lookup: impl Fn(&str) -> Option<String>) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Field(f) => {
                    if let Some(v) = lookup(f) {
                        out.push_str(&v);
                    }
                }
            }
        }
        out
    }

    /// Fills the placeholders from an event's top-level fields: strings as
    /// they are, numbers and booleans as JSON writes them, null or missing
    /// as nothing, objects and arrays as compact JSON.
    pub fn render_event(&self, ev: &Map<String, Value>) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Field(f) => match ev.get(f) {
                    None | Some(Value::Null) => {}
                    Some(Value::String(s)) => out.push_str(s),
                    Some(v) => out.push_str(&v.to_string()),
                },
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> BridgeDef {
        let path = format!(
            "{}/processors/kafka_bridge.toml",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(path).expect("read");
        crate::processor::registry::parse_definition::<BridgeDef>(&text).expect("a bridge")
    }

    fn schemas() -> SchemaRegistry {
        SchemaRegistry::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas"))
            .expect("schemas")
    }

    #[test]
    fn the_shipped_definition_parses_checks_and_is_off() {
        let d = shipped();
        assert!(!d.enabled);
        d.check().expect("valid");
        assert_eq!(d.topic_of("http").expect("topic"), "flowmeter.http");
        let s = schemas();
        let key = d.key_of("http", &s).expect("key").expect("some key");
        let ev: Map<String, Value> =
            serde_json::from_str(r#"{"service":"api","endpoint":"/a/:id","status":200}"#)
                .expect("json");
        assert_eq!(key.render_event(&ev), "api:/a/:id");
        let key = d.key_of("webrtc", &s).expect("key").expect("some key");
        assert_eq!(key.fields().collect::<Vec<_>>(), ["meeting_id"]);
    }

    #[test]
    fn templates_render_and_reject_mistakes() {
        let t = Template::parse("{{x}} {a}-{b}:{c}{d}").expect("parses");
        let ev: Map<String, Value> =
            serde_json::from_str(r#"{"a":"s","b":3,"c":null,"d":[1,2]}"#).expect("json");
        assert_eq!(t.render_event(&ev), "{x} s-3:[1,2]");
        assert_eq!(t.fields().collect::<Vec<_>>(), ["a", "b", "c", "d"]);
        for bad in ["{a", "a}", "{}", "{a b}", "{a.b}"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
        let joined = Template::fields_joined(&["a".into(), "b".into()], ":");
        assert_eq!(joined.render_event(&ev), "s:3");
    }

    #[test]
    fn checks_topics_keys_and_numbers() {
        let base = shipped();
        let mut d = base.clone();
        d.topic = "events.{service}".into();
        assert!(d.check().expect_err("must fail").contains("only {kind}"));
        d.topic = "bad topic/{kind}".into();
        assert!(d
            .check()
            .expect_err("must fail")
            .contains("letters, digits"));
        let mut d = base.clone();
        d.keys.insert("other".into(), "{x}".into());
        assert!(d.check().expect_err("must fail").contains("not in kinds"));
        let mut d = base.clone();
        d.partitions = 0;
        assert!(d.check().is_err());
        let mut d = base.clone();
        d.replication_factor = 0;
        assert!(d.check().is_err());
        let mut d = base;
        d.keys.insert("http".into(), "{servce}".into());
        let err = d.key_of("http", &schemas()).expect_err("must fail");
        assert!(err.contains("servce"), "{err}");
    }
}
