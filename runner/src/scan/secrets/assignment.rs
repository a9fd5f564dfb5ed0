//! Hard-coded values assigned to secret-sounding keys (`password = "…"`).

use super::entropy::shannon;
use super::tokens::tokens;

/// Key names whose quoted value is a secret when it looks random.
const SECRET_NAMES: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "api-key",
    "access_key",
    "private_key",
    "auth_key",
];

/// `password = "…"`, `"api_key": "…"`, `token := '…'` with a value that looks random
/// (and, when `unquoted`, `PASSWORD=…` / `password: …` without quotes): the key name
/// and the value's byte range.
pub(super) fn secret_assignment<'a>(
    line: &'a str,
    lower: &str,
    unquoted: bool,
) -> Option<(&'a str, (usize, usize))> {
    let bytes = line.as_bytes();
    for (ks, ke) in tokens(lower.as_bytes(), |b| {
        b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.'
    }) {
        let key = &lower[ks..ke];
        if !SECRET_NAMES.iter().any(|n| key.contains(n)) {
            continue;
        }
        // After the key: an optional closing quote, then `=`, `:`, `:=` or `=>`.
        let mut i = ke;
        if i < bytes.len() && matches!(bytes[i], b'"' | b'\'') {
            i += 1;
        }
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        let op_start = i;
        while i < bytes.len() && matches!(bytes[i], b'=' | b':' | b'>') && i - op_start < 2 {
            i += 1;
        }
        if i == op_start || (bytes[op_start] == b'=' && bytes.get(op_start + 1) == Some(&b'=')) {
            continue; // no assignment, or a comparison
        }
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        let (start, len) = match bytes.get(i) {
            Some(&quote @ (b'"' | b'\'')) => {
                let start = i + 1;
                let Some(len) = bytes[start..].iter().position(|&b| b == quote) else {
                    continue;
                };
                (start, len)
            }
            // Unquoted: the rest of the line (up to a ` #` comment), in configuration
            // files only, where that is the value; in code it is an expression.
            Some(_) if unquoted && !is_comment(line) => {
                let rest = &line[i..];
                let rest = rest.find(" #").map_or(rest, |at| &rest[..at]).trim_end();
                if rest.contains(['(', ')', '[', ']', '{', '}', ',', ';']) {
                    continue;
                }
                (i, rest.len())
            }
            _ => continue,
        };
        let value = &line[start..start + len];
        if looks_like_secret_value(value) {
            return Some((&line[ks..ke], (start, start + len)));
        }
    }
    None
}

/// A comment line of a configuration file: prose, where `key = a|b` documents a
/// setting rather than sets it.
fn is_comment(line: &str) -> bool {
    let t = line.trim_start();
    ["#", ";", "//", "!"].iter().any(|c| t.starts_with(c))
}

fn looks_like_secret_value(v: &str) -> bool {
    if v.len() < 8 || v.len() > 500 || v.bytes().any(|b| b.is_ascii_whitespace()) {
        return false;
    }
    // Templates and references, not values.
    if ["${", "{{", "%(", "<", "$("].iter().any(|p| v.contains(p)) || v.starts_with('$') {
        return false;
    }
    let has = |f: fn(&u8) -> bool| v.as_bytes().iter().any(f);
    let digit = has(u8::is_ascii_digit);
    let upper = has(u8::is_ascii_uppercase);
    let lower = has(u8::is_ascii_lowercase);
    let symbol = has(|b| b.is_ascii_punctuation() && !b"_-.".contains(b));
    (digit || (upper && lower) || symbol) && (lower || upper) && shannon(v.as_bytes()) >= 3.0
}
