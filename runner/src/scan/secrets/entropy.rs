//! Whether a token looks random: long enough, mixed alphabet, not made of words or a
//! known hash, and Shannon entropy near that of random base64.

/// Shortest token the entropy rule looks at.
pub(super) const MIN_ENTROPY_LEN: usize = 20;

/// Whether a token looks like random data rather than a word, path, hash or id.
/// `before` is the line up to the token (for context such as `h1:`).
pub(super) fn is_random(tok: &str, before: &str) -> bool {
    let tok = tok.trim_matches('/');
    if tok.len() < MIN_ENTROPY_LEN || tok.len() > 1000 {
        return false;
    }
    let b = tok.as_bytes();
    // Subresource Integrity (`sha512-…`), go.sum (`h1:…`) and wheel RECORD
    // (`sha256=…`) hashes.
    let before = before.to_ascii_lowercase();
    if [
        "sha1-", "sha256-", "sha384-", "sha512-", "h1:", "sha256:", "sha512:", "sha256=", "sha512=",
    ]
    .iter()
    .any(|p| before.ends_with(p))
    {
        return false;
    }
    // Hex (checksums, commit ids, UUIDs) never reaches here: it has no mix of cases.
    if !mixed(tok) {
        return false;
    }
    // Identifiers and paths are made of words: letter runs of one case (or capitalised)
    // of four or more. Random base64 has few: over half the token is a word-made name.
    let worded: usize = words(b).filter(|n| *n >= 4).sum();
    if worded * 2 > b.len() {
        return false;
    }
    shannon(b) >= entropy_threshold(b.len())
}

/// Lengths of the runs of letters that read as words: `[A-Z]?[a-z]+` or `[A-Z]+`.
fn words(b: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < b.len() && !b[i].is_ascii_alphabetic() {
            i += 1;
        }
        if i >= b.len() {
            return None;
        }
        let start = i;
        if b[i].is_ascii_uppercase() {
            i += 1;
            if i < b.len() && b[i].is_ascii_lowercase() {
                while i < b.len() && b[i].is_ascii_lowercase() {
                    i += 1;
                }
            } else {
                while i < b.len() && b[i].is_ascii_uppercase() {
                    i += 1;
                }
                // `HTTPServer`: the last capital starts the next word.
                if i < b.len() && b[i].is_ascii_lowercase() && i - start > 1 {
                    i -= 1;
                }
            }
        } else {
            while i < b.len() && b[i].is_ascii_lowercase() {
                i += 1;
            }
        }
        Some(i - start)
    })
}

/// Upper- and lowercase letters and digits, as random base64 of this length nearly
/// always has.
pub(super) fn mixed(tok: &str) -> bool {
    let b = tok.as_bytes();
    b.iter().any(u8::is_ascii_uppercase)
        && b.iter().any(u8::is_ascii_lowercase)
        && b.iter().any(u8::is_ascii_digit)
}

/// The entropy a token of `len` characters must reach: a little under what random
/// base64 of that length reaches 99 times in 100 (a sample of `len` characters cannot
/// exceed `log2(len)` bits; random base64 sits about half a bit below that for short
/// tokens), capped for long tokens, where random base64 is far above it anyway.
fn entropy_threshold(len: usize) -> f64 {
    ((len as f64).log2() - 0.75).min(4.3)
}

/// Shannon entropy in bits per byte.
pub(super) fn shannon(data: &[u8]) -> f64 {
    if data.is_empty() {
        return 0.0;
    }
    let mut counts = [0usize; 256];
    for &b in data {
        counts[usize::from(b)] += 1;
    }
    let n = data.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_of_identifiers() {
        let w = |s: &str| words(s.as_bytes()).collect::<Vec<_>>();
        assert_eq!(w("HTTPServerConn2x"), [4, 6, 4, 1]);
        assert_eq!(w("ThisIsA"), [4, 2, 1]);
        assert_eq!(w("abc/DEF"), [3, 3]);
        assert_eq!(w(""), Vec::<usize>::new());
    }

    #[test]
    fn shannon_entropy() {
        assert_eq!(shannon(b""), 0.0);
        assert_eq!(shannon(b"aaaa"), 0.0);
        assert!((shannon(b"abcd") - 2.0).abs() < 1e-9);
    }
}
