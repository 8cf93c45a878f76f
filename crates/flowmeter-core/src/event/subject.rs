//! Subject values: how an event field becomes a rollup dimension value, a
//! hub subject and an alert subject. One function, so the three agree on
//! what "the same service" is.

use serde_json::Value;

/// A dimension's value: strings as they are, numbers and booleans as their
/// JSON text, missing/null as `""`; truncated to `max_chars` characters (a
/// column's width, never inside a character), THEN trailing whitespace
/// trimmed. MySQL's PAD SPACE collations compare `"a "` equal to `"a"`: a
/// value that kept a trailing space (as or after its cut) would be a second
/// key for the same row, and the two would overwrite each other's totals.
pub fn dim_value(v: Option<&Value>, max_chars: Option<u64>) -> Box<str> {
    let s: std::borrow::Cow<'_, str> = match v {
        Some(Value::String(s)) => s.as_str().into(),
        Some(Value::Null) | None => "".into(),
        Some(other) => other.to_string().into(),
    };
    let cut = match max_chars.and_then(|m| usize::try_from(m).ok()) {
        // char_indices: the cut is always on a character boundary
        Some(m) => match s.char_indices().nth(m) {
            Some((end, _)) => s.get(..end).unwrap_or_default(),
            None => &s,
        },
        None => &s,
    };
    text(cut).into()
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

    #[test]
    fn a_cut_after_a_space_is_trimmed_to_the_value_pad_space_sees() {
        // cut to 4 characters: "abc " would be a second key for row "abc"
        assert_eq!(&*dim_value(Some(&json!("abc d")), Some(4)), "abc");
        assert_eq!(
            dim_value(Some(&json!("abc d")), Some(4)),
            dim_value(Some(&json!("abc")), Some(4))
        );
        // several spaces before the cut, multi-byte characters around it
        assert_eq!(&*dim_value(Some(&json!("é𝄞  \t x")), Some(5)), "é𝄞");
        assert_eq!(&*dim_value(Some(&json!("é𝄞xyz")), Some(3)), "é𝄞x");
        // a value that is all spaces up to the cut is empty
        assert_eq!(&*dim_value(Some(&json!("    x")), Some(2)), "");
        // no value ever ends in whitespace, cut or not
        for m in 0..8u64 {
            let v = dim_value(Some(&json!(" a  b \u{3000}c ")), Some(m));
            assert_eq!(v.trim_end(), &*v, "cut at {m}: {v:?}");
        }
    }
}
