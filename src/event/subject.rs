//! Subject values: how an event field becomes a rollup dimension value, a
//! hub subject and an alert subject. One function, so the three agree on
//! what "the same service" is.

use serde_json::Value;

/// A dimension's value: strings as they are with trailing whitespace
/// trimmed (MySQL's PAD SPACE collations would otherwise fold `"a "` into
/// `"a"`), numbers and booleans as their JSON text, missing/null as `""`.
/// Truncated to `max_chars` characters (a column's width), never inside a
/// character.
pub fn dim_value(v: Option<&Value>, max_chars: Option<u64>) -> Box<str> {
    let s: std::borrow::Cow<'_, str> = match v {
        Some(Value::String(s)) => text(s).into(),
        Some(Value::Null) | None => "".into(),
        Some(other) => other.to_string().into(),
    };
    match max_chars.and_then(|m| usize::try_from(m).ok()) {
        Some(m) if s.chars().count() > m => s.chars().take(m).collect::<String>().into_boxed_str(),
        _ => s.into_owned().into_boxed_str(),
    }
}

/// A subject string as stored (e.g. read back from the alerts table):
/// trailing whitespace trimmed, as [`dim_value`] does.
pub fn text(s: &str) -> &str {
    s.trim_end()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_trimmed_stringified_and_cut_on_characters() {
        assert_eq!(&*dim_value(Some(&json!("svc  ")), None), "svc");
        assert_eq!(&*dim_value(Some(&json!("a:b ")), None), "a:b");
        assert_eq!(&*dim_value(Some(&json!(7)), None), "7");
        assert_eq!(&*dim_value(Some(&json!(true)), None), "true");
        assert_eq!(&*dim_value(Some(&Value::Null), None), "");
        assert_eq!(&*dim_value(None, None), "");
        // four 4-byte characters cut to three characters, not bytes
        assert_eq!(&*dim_value(Some(&json!("𝄞𝄞𝄞𝄞")), Some(3)), "𝄞𝄞𝄞");
        assert_eq!(text("x \t"), "x");
    }
}
