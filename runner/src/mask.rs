//! Secret masking.
//!
//! [`Masker`] holds an Aho–Corasick automaton over every secret value and the forms
//! in which a secret typically leaks into a log:
//! - the value itself, line by line for multi-line secrets (log lines never contain
//!   a newline, so a multi-line secret can only ever appear one line at a time);
//! - its base64 encodings (standard and URL-safe alphabets, padded and unpadded);
//! - the parts of its base64 encoding that are the same whatever surrounds it, for
//!   each of the 3 byte alignments it can have inside a longer base64 blob (e.g. a
//!   secret inside a base64-encoded kubeconfig or `user:password` header);
//! - its hex encoding, lower and upper case (`xxd -p`, `od`, `hexdump`), and, because
//!   `xxd -p` wraps at [`XXD_LINE`] hex characters, every part of it that a line of
//!   such a dump can hold (a prefix ending a line, a suffix starting one, a whole
//!   line inside a long secret), down to [`MIN_PATTERN_LEN`] bytes of the secret;
//! - its URL (percent) encodings, as the usual encoders write them: every byte but
//!   the unreserved ones, or also keeping `/` (Python's `quote`) or `!'()*`
//!   (`encodeURIComponent`), hex digits in either case, space as `%20` or `+`.
//!
//! Patterns shorter than [`MIN_PATTERN_LEN`] bytes or made of whitespace only are
//! ignored: a secret line such as `}` or `  ` would otherwise redact every brace or
//! indentation in the log and make it useless while hiding nothing of value.
//!
//! All occurrences of all patterns are found (overlapping search) and the union of
//! their ranges is replaced. Leftmost-longest would be cheaper, but with two secrets
//! that overlap in the output (`abcdef` and `defghi` in `abcdefghi`) it would mask
//! the first and leave the tail of the second (`ghi`) visible.
//!
//! The masker works on whole lines; [`crate::log::LineAssembler`] feeds it complete
//! lines and holds back enough bytes when it must force-split a long line, so a
//! secret split across read chunks or across a forced split is still caught. Use
//! [`Masker::lines`] to get such a streaming assembler, one per output stream.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

/// What a masked secret is replaced with.
pub const REPLACEMENT: &[u8] = b"********";

/// Patterns shorter than this are not masked (see the module docs for why).
pub const MIN_PATTERN_LEN: usize = 4;

/// Hex characters per line of `xxd -p` output (30 bytes).
pub const XXD_LINE: usize = 60;

/// Longest secret whose every `xxd -p` line is a pattern of its own (one per byte
/// offset); longer values (certificates, kubeconfigs) are covered whole and by the
/// parts at their ends.
const MAX_HEX_INFIX_SECRET: usize = 4096;

/// A compiled set of secrets. Cheap to clone (shared automaton).
#[derive(Clone, Default)]
pub struct Masker {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    ac: AhoCorasick,
    max_len: usize,
    patterns: usize,
}

// Hand-written so that `{:?}` of a masker (or of anything holding one) never prints a
// secret.
impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Masker")
            .field("patterns", &self.inner.as_ref().map_or(0, |i| i.patterns))
            .finish()
    }
}

impl Masker {
    /// Compiles the masker. Empty secrets are ignored.
    pub fn new(secrets: &[String]) -> Self {
        let mut patterns = BTreeSet::new();
        for secret in secrets {
            patterns_for(secret.as_bytes(), &mut patterns);
        }
        if patterns.is_empty() {
            return Masker { inner: None };
        }
        let max_len = patterns.iter().map(Vec::len).max().unwrap_or(0);
        let count = patterns.len();
        let ac = AhoCorasick::builder()
            // Standard semantics are required for overlapping search.
            .match_kind(MatchKind::Standard)
            .build(patterns)
            .expect("a few thousand literal patterns always compile");
        Masker {
            inner: Some(Arc::new(Inner {
                ac,
                max_len,
                patterns: count,
            })),
        }
    }

    /// True when there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.inner.is_none()
    }

    /// Length of the longest pattern: how many bytes a streaming caller must keep
    /// back (minus one) before it can be sure no match is still in the making.
    pub fn max_pattern_len(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| i.max_len)
    }

    /// The byte ranges of `hay` to hide: sorted, non-overlapping (overlapping matches
    /// are merged; adjacent ones are not, so masking a prefix and the rest separately
    /// gives the same output as masking the whole).
    pub fn ranges(&self, hay: &[u8]) -> Vec<Range<usize>> {
        let Some(inner) = &self.inner else {
            return Vec::new();
        };
        let mut found: Vec<Range<usize>> = inner
            .ac
            .find_overlapping_iter(hay)
            .map(|m| m.start()..m.end())
            .collect();
        if found.len() <= 1 {
            return found;
        }
        found.sort_by_key(|r| (r.start, r.end));
        let mut merged: Vec<Range<usize>> = Vec::with_capacity(found.len());
        for r in found {
            match merged.last_mut() {
                Some(last) if r.start < last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        merged
    }

    /// Masks one line (or any complete piece of text).
    pub fn mask<'a>(&self, hay: &'a [u8]) -> Cow<'a, [u8]> {
        let ranges = self.ranges(hay);
        if ranges.is_empty() {
            Cow::Borrowed(hay)
        } else {
            Cow::Owned(apply(hay, &ranges))
        }
    }

    /// Masks a string, e.g. an error message that may quote a URL or a command line.
    pub fn mask_str(&self, s: &str) -> String {
        match self.mask(s.as_bytes()) {
            Cow::Borrowed(_) => s.to_owned(),
            // Every pattern is valid UTF-8 (it comes from a `String` or is base64), so
            // match boundaries are char boundaries; lossy conversion is only a guard.
            Cow::Owned(v) => String::from_utf8_lossy(&v).into_owned(),
        }
    }
}

/// Replaces `ranges` (sorted, non-overlapping, within `hay`) with [`REPLACEMENT`].
pub(crate) fn apply(hay: &[u8], ranges: &[Range<usize>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut pos = 0;
    for r in ranges {
        out.extend_from_slice(&hay[pos..r.start]);
        out.extend_from_slice(REPLACEMENT);
        pos = r.end;
    }
    out.extend_from_slice(&hay[pos..]);
    out
}

fn patterns_for(secret: &[u8], out: &mut BTreeSet<Vec<u8>>) {
    if secret.is_empty() {
        return;
    }
    let lines: Vec<&[u8]> = secret
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect();
    for line in &lines {
        add_plain(line, out);
        // Tools re-indent or trim what they echo (YAML, JSON pretty-printers).
        add_plain(line.trim_ascii(), out);
    }
    // The whole value base64-encoded is how a multi-line secret (a PEM key, a
    // kubeconfig) usually travels; single lines of it are covered too.
    add_base64(secret, out);
    add_hex(secret, out);
    add_url_encoded(secret, out);
    if lines.len() > 1 {
        for line in &lines {
            add_base64(line, out);
            add_hex(line, out);
            add_url_encoded(line, out);
        }
    }
}

fn is_masked_value(value: &[u8]) -> bool {
    value.len() >= MIN_PATTERN_LEN && !value.iter().all(u8::is_ascii_whitespace)
}

/// The hex encoding of `value` and the parts of it an `xxd -p` line can hold, in
/// both cases. xxd cuts between bytes, so every part is the encoding of a run of
/// whole bytes: a prefix (the secret starts late on a line), a suffix (it ends
/// early on the next), or exactly one line's worth from inside a longer secret.
fn add_hex(value: &[u8], out: &mut BTreeSet<Vec<u8>>) {
    if !is_masked_value(value) {
        return;
    }
    let per_line = XXD_LINE / 2;
    let mut parts: Vec<&[u8]> = vec![value];
    for len in MIN_PATTERN_LEN..value.len().min(per_line + 1) {
        parts.push(&value[..len]);
        parts.push(&value[value.len() - len..]);
    }
    if value.len() > per_line && value.len() <= MAX_HEX_INFIX_SECRET {
        parts.extend(value.windows(per_line));
    }
    for part in parts {
        let lower = hex::encode(part);
        out.insert(lower.to_ascii_uppercase().into_bytes());
        out.insert(lower.into_bytes());
    }
}

/// The percent-encodings of `value` the usual encoders produce (module docs). Only
/// added where they differ from the value itself.
fn add_url_encoded(value: &[u8], out: &mut BTreeSet<Vec<u8>>) {
    if !is_masked_value(value) {
        return;
    }
    for keep in ["", "/", "!'()*"] {
        for upper in [true, false] {
            for plus in [false, true] {
                let encoded = percent_encode(value, keep.as_bytes(), upper, plus);
                if encoded != value {
                    out.insert(encoded);
                }
            }
        }
    }
}

fn percent_encode(value: &[u8], keep: &[u8], upper: bool, plus_for_space: bool) -> Vec<u8> {
    let digits: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let mut out = Vec::with_capacity(value.len() * 3);
    for &b in value {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            out.push(b);
        } else if b == b' ' && plus_for_space {
            out.push(b'+');
        } else {
            out.extend_from_slice(&[
                b'%',
                digits[usize::from(b >> 4)],
                digits[usize::from(b & 15)],
            ]);
        }
    }
    out
}

fn add_plain(p: &[u8], out: &mut BTreeSet<Vec<u8>>) {
    if p.len() >= MIN_PATTERN_LEN && !p.iter().all(u8::is_ascii_whitespace) {
        out.insert(p.to_vec());
    }
}

fn add_base64(value: &[u8], out: &mut BTreeSet<Vec<u8>>) {
    // Same threshold as for the raw value: if the value is too short to mask, so
    // is its encoding.
    if value.len() < MIN_PATTERN_LEN || value.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    for (padded, unpadded) in [(&STANDARD, &STANDARD_NO_PAD), (&URL_SAFE, &URL_SAFE_NO_PAD)] {
        let encoded = padded.encode(value);
        add_plain(encoded.as_bytes(), out);
        add_plain(unpadded.encode(value).as_bytes(), out);
        // `base64 file` wraps at 76 columns and PEM/openssl at 64: each wrapped line
        // of an encoding that starts with the secret is then a pattern of its own.
        // (A secret embedded in a longer blob *and* wrapped is not covered.)
        for width in [76, 64] {
            if encoded.len() > width {
                for chunk in encoded.as_bytes().chunks(width) {
                    add_plain(chunk, out);
                }
            }
        }
        for align in 0..3 {
            let fragment = stable_fragment(unpadded, value, align);
            add_plain(fragment.as_bytes(), out);
        }
    }
}

/// The base64 characters that are fully determined by `value` when it starts at byte
/// offset `align` (mod 3) inside a longer blob. Character `i` of the encoding covers
/// bits `6i..6i+6` of the blob; it is stable iff those bits all come from `value`,
/// i.e. lie within `8*align .. 8*(align+len)`.
fn stable_fragment(engine: &impl Engine, value: &[u8], align: usize) -> String {
    let mut blob = vec![0u8; align];
    blob.extend_from_slice(value);
    let encoded = engine.encode(&blob);
    let first = (8 * align).div_ceil(6);
    let last = (8 * (align + value.len())) / 6;
    if last <= first {
        return String::new();
    }
    encoded[first..last].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn masked(m: &Masker, s: &str) -> String {
        m.mask_str(s)
    }

    #[test]
    fn masks_raw_values_everywhere() {
        let m = Masker::new(&["hunter22".into()]);
        assert_eq!(
            masked(&m, "pw=hunter22 and again hunter22!"),
            "pw=******** and again ********!"
        );
        assert_eq!(masked(&m, "nothing here"), "nothing here");
    }

    #[test]
    fn empty_and_short_secrets_are_ignored() {
        let m = Masker::new(&["".into(), "abc".into(), "    ".into()]);
        assert!(m.is_empty());
        assert_eq!(masked(&m, "abc    abc"), "abc    abc");
    }

    #[test]
    fn debug_never_prints_secrets() {
        let m = Masker::new(&["topsecretvalue".into()]);
        let dbg = format!("{m:?}");
        assert!(!dbg.contains("topsecret"), "{dbg}");
    }

    #[test]
    fn multi_line_secrets_are_masked_line_by_line() {
        let secret = "-----BEGIN KEY-----\nMIIEabcdefgh\n  ijklmnopQR\n}\n\n-----END KEY-----\n";
        let m = Masker::new(&[secret.into()]);
        assert_eq!(
            masked(&m, "key line MIIEabcdefgh here"),
            "key line ******** here"
        );
        assert_eq!(masked(&m, "ijklmnopQR"), "********");
        assert_eq!(masked(&m, "  ijklmnopQR"), "********");
        // A lone brace line of the secret must not redact every brace.
        assert_eq!(masked(&m, "fn main() { }"), "fn main() { }");
    }

    #[test]
    fn overlapping_secrets_are_both_fully_hidden() {
        let m = Masker::new(&["abcdef".into(), "defghi".into()]);
        assert_eq!(masked(&m, "xxabcdefghixx"), "xx********xx");
        // Adjacent (touching) matches stay separate replacements.
        assert_eq!(masked(&m, "abcdefdefghi"), "****************");
    }

    #[test]
    fn base64_forms_are_masked() {
        // Chosen so that the standard and URL-safe alphabets differ (`+`, `/`).
        let secret = "??>>??~~s3cret";
        let m = Masker::new(&[secret.into()]);
        for enc in [
            STANDARD.encode(secret),
            STANDARD_NO_PAD.encode(secret),
            URL_SAFE.encode(secret),
            URL_SAFE_NO_PAD.encode(secret),
        ] {
            let out = masked(&m, &format!("value: {enc} end"));
            assert_eq!(out, "value: ******** end", "encoding {enc}");
        }
        assert_ne!(STANDARD.encode(secret), URL_SAFE.encode(secret));
    }

    #[test]
    fn base64_embedded_at_every_alignment_is_masked() {
        let secret = b"correct horse battery staple";
        let m = Masker::new(&[String::from_utf8(secret.to_vec()).unwrap()]);
        for prefix_len in 0..6 {
            for suffix_len in 0..4 {
                let mut blob = b"user:".repeat(3)[..prefix_len].to_vec();
                blob.extend_from_slice(secret);
                blob.extend_from_slice(&b"@@@@"[..suffix_len]);
                for engine in [&STANDARD, &URL_SAFE] {
                    let enc = engine.encode(&blob);
                    let fragment = stable_fragment(engine, secret, prefix_len % 3);
                    assert!(enc.contains(&fragment), "formula: {fragment} in {enc}");
                    let out = masked(&m, &enc);
                    assert!(out.contains("********"), "{out}");
                    assert!(!out.contains(&fragment), "{out} still has {fragment}");
                }
            }
        }
    }

    #[test]
    fn wrapped_base64_is_masked_line_by_line() {
        let secret = "tok_".to_string() + &"0123456789abcdef".repeat(6);
        let m = Masker::new(std::slice::from_ref(&secret));
        let encoded = STANDARD.encode(&secret);
        for width in [76, 64] {
            for line in encoded.as_bytes().chunks(width) {
                let line = std::str::from_utf8(line).unwrap();
                if line.len() >= MIN_PATTERN_LEN {
                    assert_eq!(masked(&m, line), "********", "width {width}: {line}");
                }
            }
        }
    }

    #[test]
    fn hex_forms_are_masked_in_either_case() {
        let secret = "s3cret-Hex-value";
        let m = Masker::new(&[secret.into()]);
        let lower = hex::encode(secret);
        for enc in [lower.clone(), lower.to_ascii_uppercase()] {
            assert_eq!(masked(&m, &format!("dump {enc} end")), "dump ******** end");
        }
    }

    #[test]
    fn xxd_wrapped_hex_is_masked_line_by_line() {
        let secret = "tok_0123456789abcdefghijklmnopqrstuvwxyz";
        let m = Masker::new(&[secret.into()]);
        // The secret at every offset inside a longer blob, dumped as `xxd -p` does.
        for prefix in 0..XXD_LINE / 2 {
            let mut blob = vec![b'='; prefix];
            blob.extend_from_slice(secret.as_bytes());
            blob.extend_from_slice(b"=====");
            let dump = hex::encode(&blob);
            for line in dump.as_bytes().chunks(XXD_LINE) {
                let line = std::str::from_utf8(line).unwrap();
                let out = masked(&m, line);
                // Whatever of the secret the line holds (4 bytes or more) is gone.
                for len in (MIN_PATTERN_LEN..=secret.len()).rev() {
                    for piece in secret.as_bytes().windows(len) {
                        let piece = hex::encode(piece);
                        if line.contains(&piece) && piece.len() >= 2 * MIN_PATTERN_LEN {
                            assert!(!out.contains(&piece), "offset {prefix}: {line} -> {out}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn url_encoded_forms_are_masked() {
        let secret = "p@ss w/rd!(x)";
        let m = Masker::new(&[secret.into()]);
        for enc in [
            "p%40ss%20w%2Frd%21%28x%29",
            "p%40ss+w%2frd%21%28x%29",
            "p%40ss%20w/rd%21%28x%29",
            "p%40ss%20w%2Frd!(x)",
        ] {
            assert_eq!(
                masked(&m, &format!("url=?q={enc}&a=1")),
                "url=?q=********&a=1"
            );
        }
    }

    #[test]
    fn mask_str_handles_unicode() {
        let m = Masker::new(&["pässwörd".into()]);
        assert_eq!(masked(&m, "ünïcode pässwörd ✓"), "ünïcode ******** ✓");
    }

    proptest! {
        #[test]
        fn no_secret_survives_masking(
            secret in "[a-zA-Z0-9+/=_-]{4,24}",
            pre in ".{0,20}",
            post in ".{0,20}",
        ) {
            let m = Masker::new(std::slice::from_ref(&secret));
            let text = format!("{pre}{secret}{post}");
            let out = masked(&m, &text);
            prop_assert!(!out.contains(&secret));
            let b64 = STANDARD.encode(text.as_bytes());
            let out = masked(&m, &b64);
            let fragment = stable_fragment(&STANDARD_NO_PAD, secret.as_bytes(), pre.len() % 3);
            if fragment.len() >= MIN_PATTERN_LEN {
                prop_assert!(!out.contains(&fragment));
            }
        }
    }
}
