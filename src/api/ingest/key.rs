//! The `Idempotency-Key` header and the body fingerprint stored with it.

use axum::http::HeaderMap;

use crate::api::ApiError;

/// The header's name, as errors name it.
pub const HEADER: &str = "Idempotency-Key";

/// Characters a key may hold besides ASCII letters and digits: enough for
/// UUIDs, ULIDs, base64 (url) and `order:123`-style keys, and nothing that
/// could end or change a Redis key's hash tag (`{`, `}`) or a log line.
const PUNCTUATION: &[char] = &['-', '_', '.', ':', '+', '/', '='];

/// The request's idempotency key, checked; `None` without the header. Any
/// value is answered (400 naming the header and the rule), never echoed.
pub fn idempotency_key(headers: &HeaderMap, max_bytes: usize) -> Result<Option<&str>, ApiError> {
    let bad = |reason: String| ApiError::BadHeader {
        header: HEADER,
        reason,
    };
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(bad("send it once".into()));
    }
    let rule = format!(
        "must be 1 to {max_bytes} characters: ASCII letters, digits and - _ . : + / = (a UUID is a good key)"
    );
    let key = value.to_str().map_err(|_| bad(rule.clone()))?;
    let plain = key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || PUNCTUATION.contains(&c));
    if key.is_empty() || key.len() > max_bytes || !plain {
        return Err(bad(rule));
    }
    Ok(Some(key))
}

/// Fingerprint of a request body as ingest reads it (the NDJSON flag and
/// the bytes). It tells a retry from a different request that reuses a key;
/// it is not a MAC: a client that can send events can write anything anyway.
pub fn fingerprint(ndjson: bool, body: &[u8]) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&[u8::from(ndjson)]);
    h.update(body);
    format!("{:032x}", h.digest128())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn with(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(HEADER, HeaderValue::from_bytes(v).expect("header value"));
        }
        h
    }

    #[test]
    fn accepts_plain_keys_up_to_the_bound() {
        assert_eq!(idempotency_key(&HeaderMap::new(), 8).ok(), Some(None));
        let uuid = b"9b2f6c1e-8d4a-4f7e-b3a1-0c5d2e7f9a13";
        assert_eq!(
            idempotency_key(&with(&[uuid]), 36).ok().flatten(),
            Some("9b2f6c1e-8d4a-4f7e-b3a1-0c5d2e7f9a13")
        );
        assert!(idempotency_key(&with(&[b"order:17/a+b="]), 64).is_ok());
        assert!(idempotency_key(&with(&[&[b'k'; 8]]), 8).is_ok());
    }

    #[test]
    fn refuses_every_other_value_naming_the_header() {
        let bad: &[&[u8]] = &[
            b"",
            &[b'k'; 9],
            b"has space",
            b"{tag}",
            b"caf\xc3\xa9",
            b"\xff\xfe",
            b"tab\there",
            b"quote\"",
        ];
        for v in bad {
            match idempotency_key(&with(&[v]), 8) {
                Err(ApiError::BadHeader { header, reason }) => {
                    assert_eq!(header, HEADER);
                    assert!(reason.contains("1 to 8"), "{reason}");
                }
                other => panic!("{v:?}: {other:?}"),
            }
        }
        assert!(matches!(
            idempotency_key(&with(&[b"a", b"b"]), 8),
            Err(ApiError::BadHeader { .. })
        ));
    }

    #[test]
    fn fingerprints_tell_bodies_and_forms_apart() {
        assert_eq!(fingerprint(true, b"{}"), fingerprint(true, b"{}"));
        assert_ne!(fingerprint(true, b"{}"), fingerprint(false, b"{}"));
        assert_ne!(fingerprint(true, b"{}"), fingerprint(true, b"{} "));
        assert_eq!(fingerprint(false, b"").len(), 32);
    }
}
