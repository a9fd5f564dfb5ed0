//! Form-encoded deliveries: `Content-Type: application/x-www-form-urlencoded` with the
//! JSON payload in a form field named `payload`.
//!
//! GitHub's webhook API defaults `content_type` to `form` ("Creating webhooks": the
//! JSON payload is sent as a form parameter called `payload`), and Gitea and Forgejo
//! offer the same mode (`url.Values{"payload": …}.Encode()` in their
//! `services/webhook/deliver.go`). What is *signed* differs, see [`super::verify`].
//!
//! Decoding is byte-exact (no lossy UTF-8 step): Gitea and Forgejo sign the decoded
//! field, so any change to its bytes would fail an honest signature.

use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;

/// The form field forges put the JSON payload in.
pub const PAYLOAD_FIELD: &str = "payload";

/// Why a form-encoded body carries no usable payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("form-encoded body has no `payload` field")]
    NoPayload,
    /// Two payloads would leave it to chance which one is read after which is signed.
    #[error("form-encoded body has more than one `payload` field")]
    RepeatedPayload,
}

/// `true` when the request says its body is `application/x-www-form-urlencoded`
/// (parameters such as `charset` and the type's case do not matter). Anything else,
/// a missing header included, is treated as JSON, as before form support.
pub fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| {
            media
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// The decoded bytes of the body's single `payload` field. Other fields are ignored
/// (no forge sends any, and nothing reads them).
pub fn payload(body: &[u8]) -> Result<Vec<u8>, FormError> {
    let mut found = None;
    for pair in body.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &[][..]),
        };
        if decode(name) != PAYLOAD_FIELD.as_bytes() {
            continue;
        }
        if found.is_some() {
            return Err(FormError::RepeatedPayload);
        }
        found = Some(decode(value));
    }
    found.ok_or(FormError::NoPayload)
}

/// `application/x-www-form-urlencoded` decoding of one name or value: `+` is a space,
/// `%XX` a byte; a `%` not followed by two hex digits stays as it is (as in the WHATWG
/// URL standard's percent-decode).
fn decode(raw: &[u8]) -> Vec<u8> {
    let spaced: Vec<u8> = raw
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    percent_encoding::percent_decode(&spaced).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_payload_field_is_decoded_byte_for_byte() {
        assert_eq!(
            payload(b"payload=%7B%22a%22%3A+%22b+c%25%22%7D").unwrap(),
            br#"{"a": "b c%"}"#
        );
        // Another field before it, an empty pair, a name that is only encoded as
        // `payload`, and non-UTF-8 bytes kept as they are.
        assert_eq!(
            payload(b"x=1&&%70ayload=%FF%00z").unwrap(),
            b"\xff\x00z".to_vec()
        );
        assert_eq!(payload(b"payload").unwrap(), b"".to_vec());
        assert_eq!(payload(b"x=1"), Err(FormError::NoPayload));
        assert_eq!(payload(b""), Err(FormError::NoPayload));
        assert_eq!(
            payload(b"payload=1&payload=2"),
            Err(FormError::RepeatedPayload)
        );
    }

    #[test]
    fn only_the_form_media_type_counts_as_form() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
            h
        };
        assert!(is_form(&with("application/x-www-form-urlencoded")));
        assert!(is_form(&with(
            "Application/X-WWW-Form-Urlencoded; charset=utf-8"
        )));
        assert!(!is_form(&with("application/json")));
        assert!(!is_form(&with("multipart/form-data; boundary=x")));
        assert!(!is_form(&HeaderMap::new()));
    }
}
