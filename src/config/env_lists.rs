//! List settings from environment variables.
//!
//! The `config` crate's environment source reads every variable as one
//! string, so a list setting (`auth.tokens`, `redis.cluster_nodes`,
//! `ingest.cors_origins`, …) failed with "expected a sequence". A variable
//! is a list setting when the setting's default is a list; such variables
//! are taken out of the environment source and parsed here:
//!
//! - a value starting with `[` is a JSON array, of strings or of tables
//!   (`FLOWMETER__AUTH__TOKENS='[{"name":"collectors","token_sha256":"…","scopes":["ingest"]}]'`):
//!   the one form for lists of tables, and what a Kubernetes Secret carries;
//! - anything else is a comma-separated list of strings, each trimmed,
//!   empty items dropped (`FLOWMETER__REDIS__CLUSTER_NODES=redis://a:6379,redis://b:6379`);
//!   an empty value is an empty list.
//!
//! The lists replace the settings' whole lists once the other sources are
//! merged (the `config` crate merges arrays element by element: a shorter
//! or empty list from the environment would keep the file's extra items),
//! so the environment still wins (docs/configuration.md, "Lists in
//! environment variables").

use serde_json::Value;

use super::{ConfigError, Settings};

/// The prefix and separator of the `FLOWMETER__SECTION__KEY` variables.
const PREFIX: &str = "FLOWMETER__";
const SEPARATOR: &str = "__";

/// What the list variables became: the other variables, for the
/// environment source, and the lists, applied by [`Split::apply`].
pub(super) struct Split {
    pub rest: config::Map<String, String>,
    lists: Vec<EnvList>,
}

/// One list variable, parsed.
struct EnvList {
    var: String,
    path: Vec<String>,
    value: Value,
    /// Given as comma-separated strings (named in a failure's hint).
    comma: bool,
}

impl Split {
    /// `settings` with each list variable's list in place of the setting's.
    pub fn apply(&self, settings: Settings) -> Result<Settings, ConfigError> {
        if self.lists.is_empty() {
            return Ok(settings);
        }
        let invalid = |e: serde_json::Error| ConfigError::Invalid(e.to_string());
        let mut tree = serde_json::to_value(&settings).map_err(invalid)?;
        let mut out = settings;
        for list in &self.lists {
            if let Value::Object(root) = &mut tree {
                insert(root, &list.path, list.value.clone());
            }
            // one at a time, so an error names its variable
            out = serde_json::from_value(tree.clone()).map_err(|e| {
                let hint = match list.comma {
                    true => "; given as comma-separated strings: a list of tables such as auth.tokens needs a JSON array (docs/configuration.md)",
                    false => "",
                };
                ConfigError::Invalid(format!("{}: {}{hint}", list.var, without_value(&e)))
            })?;
        }
        Ok(out)
    }
}

/// What serde found wrong with a list, without the value itself: serde's
/// messages quote the input (`invalid type: string "…", expected …`,
/// `unknown variant `…``), and the input may be a token. Kept: a missing
/// or duplicate field (a name of the setting's shape) and what was
/// expected; dropped: whatever serde quotes from the value.
fn without_value(e: &serde_json::Error) -> String {
    let text = e.to_string();
    if text.starts_with("missing field `") || text.starts_with("duplicate field `") {
        return text;
    }
    // "expected …" comes last and is written from the setting's type; the
    // last ", expected " is serde's even if the value holds those words
    match text.rfind(", expected ") {
        Some(at) => format!(
            "an item has the wrong type or value, {}",
            &text[at + ", ".len()..]
        ),
        None => "an item does not fit the setting (its value is not shown)".to_string(),
    }
}

/// The setting path of a variable: `FLOWMETER__AUTH__TOKENS` → `["auth", "tokens"]`.
fn path_of(var: &str) -> Option<Vec<String>> {
    let rest = var.strip_prefix(PREFIX)?;
    Some(rest.split(SEPARATOR).map(str::to_ascii_lowercase).collect())
}

/// Whether the setting at `path` is a list (its default is one).
fn is_list(defaults: &Value, path: &[String]) -> bool {
    path.iter()
        .try_fold(defaults, |v, key| v.get(key))
        .is_some_and(Value::is_array)
}

/// The list a variable's value holds (see the module doc).
fn parse(var: &str, value: &str) -> Result<(Value, bool), ConfigError> {
    let trimmed = value.trim();
    if trimmed.starts_with('[') {
        // serde_json's messages give a line and column, never the text:
        // no secret of the variable reaches the error
        return match serde_json::from_str::<Value>(trimmed) {
            Ok(v) => Ok((v, false)),
            Err(e) => Err(ConfigError::Invalid(format!(
                "{var}: a value starting with '[' must be a JSON array: {e}"
            ))),
        };
    }
    let items = trimmed
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| Value::String(s.to_string()))
        .collect();
    Ok((Value::Array(items), true))
}

/// Takes the list settings out of `env` (the `FLOWMETER__` variables),
/// `defaults` being the default settings as JSON.
pub(super) fn split(
    env: config::Map<String, String>,
    defaults: &Value,
) -> Result<Split, ConfigError> {
    let mut rest = config::Map::new();
    let mut lists = Vec::new();
    for (var, value) in env {
        let Some(path) = path_of(&var).filter(|p| is_list(defaults, p)) else {
            rest.insert(var, value);
            continue;
        };
        let (value, comma) = parse(&var, &value)?;
        lists.push(EnvList {
            var,
            path,
            value,
            comma,
        });
    }
    Ok(Split { rest, lists })
}

/// Sets `path` in `tree` to `value`, making the tables on the way.
fn insert(tree: &mut serde_json::Map<String, Value>, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = tree;
    for key in parents {
        let entry = node
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Default::default()));
        if !entry.is_object() {
            *entry = Value::Object(Default::default());
        }
        let Value::Object(next) = entry else { return };
        node = next;
    }
    node.insert(last.clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn defaults() -> Value {
        json!({"auth": {"tokens": [], "allow_anonymous": false}, "redis": {"url": "x", "cluster_nodes": []}})
    }

    fn vars(pairs: &[(&str, &str)]) -> config::Map<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_list_settings_are_taken_out() {
        let s = split(
            vars(&[
                ("FLOWMETER__REDIS__URL", "redis://r:6379"),
                (
                    "FLOWMETER__REDIS__CLUSTER_NODES",
                    " redis://a:1 ,, redis://b:2 ",
                ),
                ("FLOWMETER__AUTH__NOPE", "[1]"),
            ]),
            &defaults(),
        )
        .expect("splits");
        let mut rest: Vec<&String> = s.rest.keys().collect();
        rest.sort();
        assert_eq!(rest, ["FLOWMETER__AUTH__NOPE", "FLOWMETER__REDIS__URL"]);
        assert_eq!(s.lists.len(), 1);
        assert_eq!(s.lists[0].path, ["redis", "cluster_nodes"]);
        assert_eq!(s.lists[0].value, json!(["redis://a:1", "redis://b:2"]));
        assert!(s.lists[0].comma);
    }

    #[test]
    fn json_arrays_carry_tables_and_empty_values_are_empty_lists() {
        let (v, comma) = parse("V", r#" [{"name":"a","scopes":["read"]}] "#).expect("json");
        assert_eq!(v, json!([{"name": "a", "scopes": ["read"]}]));
        assert!(!comma);
        assert_eq!(parse("V", "").expect("empty").0, json!([]));
        assert_eq!(parse("V", " , ").expect("commas").0, json!([]));
    }

    /// A list of tables given as strings: serde's own message quotes the
    /// string, i.e. the token; the error keeps the variable and the
    /// expected type only.
    #[test]
    fn wrong_items_name_the_variable_and_type_not_the_value() {
        let secret = "s3cret-s3cret-s3cret, expected x";
        for (value, comma) in [
            (json!([secret]), true),
            (json!([{"name": "a", "token": secret, "scopes": 7}]), false),
            (
                json!([{"name": "a", "token": 12, "scopes": [secret]}]),
                false,
            ),
        ] {
            let split = Split {
                rest: config::Map::new(),
                lists: vec![EnvList {
                    var: "FLOWMETER__AUTH__TOKENS".into(),
                    path: vec!["auth".into(), "tokens".into()],
                    value,
                    comma,
                }],
            };
            let text = match split.apply(Settings::default()) {
                Ok(_) => panic!("wrong items accepted"),
                Err(e) => e.to_string(),
            };
            assert!(text.contains("FLOWMETER__AUTH__TOKENS"), "{text}");
            assert!(text.contains("expected"), "{text}");
            assert!(!text.contains("s3cret"), "{text}");
        }
        let missing = serde_json::from_value::<crate::auth::TokenConfig>(json!({"name": "a"}))
            .expect_err("no scopes");
        assert_eq!(without_value(&missing), "missing field `scopes`");
    }

    #[test]
    fn broken_json_names_the_variable_not_its_value() {
        let err = parse(
            "FLOWMETER__AUTH__TOKENS",
            r#"[{"token":"s3cret-s3cret-s3cret""#,
        )
        .expect_err("unterminated");
        let text = err.to_string();
        assert!(text.contains("FLOWMETER__AUTH__TOKENS"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
        let err = parse("V", r#"[1"#).expect_err("bad");
        assert!(err.to_string().contains("JSON array"), "{err}");
    }
}
