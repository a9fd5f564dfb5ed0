//! The built-in secret rules, applied line by line to a text file.
//!
//! Two families:
//! * **Known formats** (severity `high`): token prefixes with a fixed shape (GitHub,
//!   GitLab, Slack, Stripe, Google, AWS key ids), AWS secret keys on a line that says
//!   so, private key PEM headers, and `password|secret|token|api_key = "<value>"`
//!   assignments whose value looks random (unquoted values too in `.env`, YAML, TOML,
//!   INI and properties files).
//! * **High-entropy strings** (severity `medium`): base64-ish tokens of at least
//!   [`MIN_ENTROPY_LEN`] characters whose Shannon entropy is close to that of random
//!   text of the same length.
//!
//! Tuned against false positives in ordinary repositories: hex strings (sha256 of lock
//! files, commit ids, UUIDs) are never flagged by entropy alone (their alphabet caps
//! them at 4 bits a character, and they are overwhelmingly checksums); Subresource
//! Integrity hashes (`sha512-…` in `package-lock.json`, `yarn.lock`), go.sum `h1:`
//! hashes, `data:…;base64,` URIs and the bodies of PEM certificates and public keys are
//! skipped; identifiers and paths are recognised by their runs of lowercase letters.
//!
//! A finding never holds the secret: the message names the rule and at most a
//! redacted preview of the token's public prefix (`ghp_****`).

use crate::spec::Severity;

/// Shortest token the entropy rule looks at.
pub(crate) const MIN_ENTROPY_LEN: usize = 20;
/// At most this many findings per file: a generated file full of random strings is
/// reported, not flooded.
pub(crate) const MAX_PER_FILE: usize = 50;

/// One hit in a file, before it becomes a [`crate::Finding`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hit {
    pub rule: &'static str,
    pub severity: Severity,
    /// 1-based.
    pub line: u32,
    pub message: String,
}

/// A token with a fixed prefix and a body of allowed characters.
struct Prefixed {
    rule: &'static str,
    what: &'static str,
    prefix: &'static str,
    /// Body length: at least `min`, at most `max`.
    min: usize,
    max: usize,
    body: fn(u8) -> bool,
}

fn alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}
fn alnum_underscore(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}
fn alnum_dash_underscore(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}
fn upper_digit(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit()
}

const PREFIXED: &[Prefixed] = &[
    // Fine-grained personal access tokens: `github_pat_` + 22 + `_` + 59.
    Prefixed {
        rule: "github-token",
        what: "GitHub fine-grained token",
        prefix: "github_pat_",
        min: 50,
        max: 120,
        body: alnum_underscore,
    },
    Prefixed {
        rule: "github-token",
        what: "GitHub personal access token",
        prefix: "ghp_",
        min: 36,
        max: 36,
        body: alnum,
    },
    Prefixed {
        rule: "github-token",
        what: "GitHub OAuth token",
        prefix: "gho_",
        min: 36,
        max: 36,
        body: alnum,
    },
    Prefixed {
        rule: "github-token",
        what: "GitHub app token",
        prefix: "ghs_",
        min: 36,
        max: 36,
        body: alnum,
    },
    Prefixed {
        rule: "github-token",
        what: "GitHub user-to-server token",
        prefix: "ghu_",
        min: 36,
        max: 36,
        body: alnum,
    },
    Prefixed {
        rule: "github-token",
        what: "GitHub refresh token",
        prefix: "ghr_",
        min: 36,
        max: 76,
        body: alnum,
    },
    Prefixed {
        rule: "gitlab-token",
        what: "GitLab personal access token",
        prefix: "glpat-",
        min: 20,
        max: 64,
        body: alnum_dash_underscore,
    },
    Prefixed {
        rule: "stripe-secret-key",
        what: "Stripe live secret key",
        prefix: "sk_live_",
        min: 24,
        max: 247,
        body: alnum,
    },
    Prefixed {
        rule: "stripe-secret-key",
        what: "Stripe live restricted key",
        prefix: "rk_live_",
        min: 24,
        max: 247,
        body: alnum,
    },
    Prefixed {
        rule: "google-api-key",
        what: "Google API key",
        prefix: "AIza",
        min: 35,
        max: 35,
        body: alnum_dash_underscore,
    },
];

/// Slack tokens: `xoxb-`, `xoxp-`, `xoxa-`, `xoxr-`, `xoxs-`, `xoxe-` then digits,
/// letters and dashes.
const SLACK_KINDS: &[u8] = b"bparse";
/// AWS access key id prefixes (the fourth letter says the key's kind).
const AWS_KEY_PREFIXES: &[&str] = &[
    "AKIA", "ASIA", "ABIA", "ACCA", "AGPA", "AIDA", "AROA", "AIPA", "ANPA", "ANVA",
];
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

/// What a file holds, by its name: in configuration files (`.env`, YAML, TOML, INI,
/// properties) a value after `=` or `:` needs no quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    Config,
    Other,
}

impl FileKind {
    pub(crate) fn of(file_name: &str) -> FileKind {
        let name = file_name.to_ascii_lowercase();
        let config = name == ".env"
            || name.starts_with(".env.")
            || [
                ".env",
                ".yml",
                ".yaml",
                ".toml",
                ".ini",
                ".cfg",
                ".conf",
                ".properties",
            ]
            .iter()
            .any(|ext| name.ends_with(ext));
        if config {
            FileKind::Config
        } else {
            FileKind::Other
        }
    }
}

/// Scans one file's text; `hits` are in line order, at most one per rule and line.
pub(crate) fn scan_text(text: &str, kind: FileKind) -> Vec<Hit> {
    let mut hits = Vec::new();
    let mut pem: Option<PemBlock> = None;
    for (i, line) in text.lines().enumerate() {
        let line_no = u32::try_from(i + 1).unwrap_or(u32::MAX);
        if hits.len() >= MAX_PER_FILE {
            break;
        }
        // Inside a PEM block: the base64 body is not a finding of its own (a private
        // key was reported at its header; certificates and public keys are public).
        if let Some(block) = &pem {
            if line.contains("-----END ") {
                pem = None;
            } else if block.lines < MAX_PEM_LINES {
                pem = Some(PemBlock {
                    lines: block.lines + 1,
                });
                continue;
            } else {
                pem = None;
            }
        }
        if let Some(kind) = pem_begin(line) {
            pem = Some(PemBlock { lines: 0 });
            if let Some(kind) = kind.strip_suffix("PRIVATE KEY") {
                let kind = kind.trim();
                hits.push(Hit {
                    rule: "private-key",
                    severity: Severity::High,
                    line: line_no,
                    message: if kind.is_empty() {
                        "private key".into()
                    } else {
                        format!("private key ({kind})")
                    },
                });
            }
            continue;
        }
        scan_line(line, line_no, kind, &mut hits);
    }
    hits.truncate(MAX_PER_FILE);
    hits
}

/// A PEM block never runs longer than this; past it, the `END` line was lost.
const MAX_PEM_LINES: usize = 1000;

struct PemBlock {
    lines: usize,
}

/// `-----BEGIN <KIND>-----` → `<KIND>`.
fn pem_begin(line: &str) -> Option<&str> {
    let start = line.find("-----BEGIN ")?;
    let rest = &line[start + "-----BEGIN ".len()..];
    let end = rest.find("-----")?;
    let kind = &rest[..end];
    kind.bytes()
        .all(|b| b.is_ascii_uppercase() || b == b' ' || b.is_ascii_digit())
        .then_some(kind.trim_end_matches(" BLOCK"))
}

fn scan_line(line: &str, line_no: u32, kind: FileKind, hits: &mut Vec<Hit>) {
    let bytes = line.as_bytes();
    // Byte ranges already reported on this line, so the generic and entropy rules do
    // not report the same token again.
    let mut taken: Vec<(usize, usize)> = Vec::new();
    let push = |hits: &mut Vec<Hit>, rule: &'static str, severity, message: String| {
        if !hits.iter().any(|h| h.line == line_no && h.rule == rule) {
            hits.push(Hit {
                rule,
                severity,
                line: line_no,
                message,
            });
        }
    };

    for (start, end) in tokens(bytes, alnum_dash_underscore) {
        let tok = &line[start..end];
        if let Some((rule, message)) = known_token(tok) {
            taken.push((start, end));
            push(hits, rule, Severity::High, message);
        }
    }

    let lower = line.to_ascii_lowercase();
    if lower.contains("aws") && lower.contains("secret") {
        for (start, end) in tokens(bytes, |b| b.is_ascii_alphanumeric() || b"+/".contains(&b)) {
            let tok = &line[start..end];
            if tok.len() == 40 && shannon(tok.as_bytes()) >= 3.5 && mixed(tok) {
                taken.push((start, end));
                push(
                    hits,
                    "aws-secret-access-key",
                    Severity::High,
                    "AWS secret access key".into(),
                );
            }
        }
    }

    if let Some((name, (start, end))) = secret_assignment(line, &lower, kind == FileKind::Config)
        && !overlaps(&taken, start, end)
    {
        taken.push((start, end));
        push(
            hits,
            "generic-secret",
            Severity::High,
            format!("hard-coded value assigned to `{name}`"),
        );
    }

    if lower.contains("data:") && lower.contains(";base64,") {
        return;
    }
    // Tokens of the base64 alphabet: `_`, `-`, `.` and `:` split them, as they separate
    // the words of identifiers, paths and versions (base64url tokens long enough to be
    // keys keep long runs between them).
    for (start, end) in tokens(bytes, |b| b.is_ascii_alphanumeric() || b"+/".contains(&b)) {
        if overlaps(&taken, start, end) {
            continue;
        }
        // The context of a hash is what precedes the whole base64url run (`sha256=` of
        // a wheel RECORD, before `…_…-…`), or the token itself (`sha512-` of SRI).
        let wide = line[..start]
            .bytes()
            .rev()
            .take_while(|b| b.is_ascii_alphanumeric() || b"+/_-".contains(b))
            .count();
        if is_random(&line[start..end], &line[..start])
            && is_random(&line[start..end], &line[..start - wide])
        {
            taken.push((start, end));
            let len = end - start;
            push(
                hits,
                "high-entropy-string",
                Severity::Medium,
                format!("high-entropy string ({len} characters)"),
            );
        }
    }
}

/// Maximal runs of bytes for which `part` holds, as byte ranges (ASCII bytes only, so
/// every range is on `char` boundaries).
fn tokens(bytes: &[u8], part: impl Fn(u8) -> bool) -> impl Iterator<Item = (usize, usize)> {
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < bytes.len() && !part(bytes[i]) {
            i += 1;
        }
        if i >= bytes.len() {
            return None;
        }
        let start = i;
        while i < bytes.len() && part(bytes[i]) {
            i += 1;
        }
        Some((start, i))
    })
}

fn overlaps(taken: &[(usize, usize)], start: usize, end: usize) -> bool {
    taken.iter().any(|&(s, e)| start < e && s < end)
}

/// A token of a known format: `(rule, message with a redacted preview)`.
fn known_token(tok: &str) -> Option<(&'static str, String)> {
    for p in PREFIXED {
        // A token may carry the prefix after other token characters only when those
        // are not letters or digits (`_ghp_…` is not a GitHub token, `x-ghp_` is).
        let Some(at) = tok.find(p.prefix) else {
            continue;
        };
        if at > 0 && tok.as_bytes()[at - 1].is_ascii_alphanumeric() {
            continue;
        }
        let body = &tok[at + p.prefix.len()..];
        let n = body.bytes().take_while(|&b| (p.body)(b)).count();
        if n >= p.min && n <= p.max && (n == body.len() || !(p.body)(body.as_bytes()[n])) {
            // Placeholders such as `ghp_xxxxxxxx…` are not secrets.
            if shannon(&body.as_bytes()[..n]) < 3.0 {
                continue;
            }
            return Some((p.rule, format!("{} ({}****)", p.what, p.prefix)));
        }
    }
    if let Some(rest) = tok.strip_prefix("xox")
        && let [kind, b'-', ..] = rest.as_bytes()
        && SLACK_KINDS.contains(kind)
    {
        let body = &rest[2..];
        if body.len() >= 10
            && body.bytes().any(|b| b.is_ascii_digit())
            && shannon(body.as_bytes()) >= 3.0
        {
            return Some((
                "slack-token",
                format!("Slack token (xox{}-****)", *kind as char),
            ));
        }
    }
    if tok.len() == 20
        && AWS_KEY_PREFIXES.iter().any(|p| tok.starts_with(p))
        && tok.bytes().all(upper_digit)
        && shannon(&tok.as_bytes()[4..]) >= 2.5
    {
        return Some((
            "aws-access-key-id",
            format!("AWS access key id ({}****)", &tok[..4]),
        ));
    }
    None
}

/// `password = "…"`, `"api_key": "…"`, `token := '…'` with a value that looks random
/// (and, when `unquoted`, `PASSWORD=…` / `password: …` without quotes): the key name
/// and the value's byte range.
fn secret_assignment<'a>(
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

/// Whether a token looks like random data rather than a word, path, hash or id.
/// `before` is the line up to the token (for context such as `h1:`).
fn is_random(tok: &str, before: &str) -> bool {
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
fn mixed(tok: &str) -> bool {
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
pub(crate) fn shannon(data: &[u8]) -> f64 {
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

    fn rules(text: &str) -> Vec<(u32, &'static str)> {
        scan_text(text, FileKind::Other)
            .iter()
            .map(|h| (h.line, h.rule))
            .collect()
    }

    // Built at run time so this file holds no token-shaped literal of its own.
    fn pem(kind: &str) -> String {
        format!("-----{} {kind}-----", "BEGIN")
    }

    fn gh() -> String {
        format!("ghp_{}", "aB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1vW3xY5")
    }

    #[test]
    fn known_formats_are_found_at_their_line() {
        let text = format!("fn main() {{}}\n// token below\nlet t = \"{}\";\n", gh());
        let hits = scan_text(&text, FileKind::Other);
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!((hits[0].line, hits[0].rule), (3, "github-token"));
        assert_eq!(hits[0].severity, Severity::High);
        assert!(hits[0].message.contains("ghp_****"));
        assert!(!hits[0].message.contains("aB3d"));

        let aws_id = format!("AKIA{}", "Q3EGRK7ZP2VNXW4Y");
        let cases = [
            (format!("key = {aws_id}"), "aws-access-key-id"),
            (
                format!(
                    "aws_secret_access_key = {}",
                    "wJalrXUtnFEMI/K7MDENG/bPxRfiCY9a8Q3bZk2L"
                ),
                "aws-secret-access-key",
            ),
            (
                format!("GITLAB={}-{}", "glpat", "Xk3v9QmZ2pL7wR4tY8nB"),
                "gitlab-token",
            ),
            (
                format!("SLACK: {}-{}", "xoxb", "1234567890-abcdefGHIJ12"),
                "slack-token",
            ),
            (
                format!("stripe {}_{}", "sk_live", "4eC39HqLyjWDarjtT1zdp7dc"),
                "stripe-secret-key",
            ),
            (
                format!("k={}{}", "AIza", "SyD3kq9Lm2Xv7Bn4Zp8Qw1Er6Ty5Ui0OpAs"),
                "google-api-key",
            ),
            (
                format!(
                    "{}_{}{}",
                    "github_pat",
                    "11ABCDEFG0123456789abc_",
                    "aZ9bY8cX7dW6eV5fU4gT3hS2iR1jQ0kP9lO8mN7nM6oL5pK4qJ3rI2sH1"
                ),
                "github-token",
            ),
            (
                format!(
                    "{}\nMIIEowIBAAKCAQEA7bq9\n-----END RSA PRIVATE KEY-----",
                    pem("RSA PRIVATE KEY")
                ),
                "private-key",
            ),
            (
                "db_password = \"Tr0ub4dor&3x\"".to_string(),
                "generic-secret",
            ),
            (
                "\"api_key\": \"q8ZtR2vLx9Wm4Kp7\"".to_string(),
                "generic-secret",
            ),
        ];
        for (text, rule) in cases {
            let got = rules(&text);
            assert_eq!(got, vec![(1, rule)], "{text}");
        }
    }

    #[test]
    fn placeholders_and_ordinary_code_are_not_secrets() {
        let text = "\
password = \"changeme\"
password = \"${DB_PASSWORD}\"
token: \"{{ secrets.TOKEN }}\"
let token = \"Please enter your token\";
password_field = \"password_confirmation\"
if token == \"abcdefgh12345\" {}
ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx
let s = ThisIsAVeryLongIdentifierName2;
path = /usr/lib/x86_64-linux-gnu/libSomething2.so
target = x86_64-unknown-linux-gnu
id = 550e8400-e29b-41d4-a716-446655440000
ID = 550E8400-E29B-41D4-A716-446655440000
commit = 3b18e512dba79e4c8300dd08aeb37f8e728b8dad
AbstractSingletonProxyFactoryBean1
<img src=\"data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==\">
";
        assert_eq!(rules(text), vec![], "{text}");
    }

    #[test]
    fn certificates_are_public_but_random_tokens_are_flagged() {
        let cert = pem("CERTIFICATE")
            + "\n\
MIIDdzCCAl+gAwIBAgIEAgAAuTANBgkqhkiG9w0BAQUFADBaMQswCQYDVQQGEwJJ\n\
RTESMBAGA1UEChMJQmFsdGltb3JlMRMwEQYDVQQLEwpDeWJlclRydXN0MSIwIAYD\n\
-----END CERTIFICATE-----\n";
        assert_eq!(rules(&cert), vec![]);
        let random = "x = \"Zq3Lw8Rt2Vn7Kp4Xm9Bc6Hj1\"\n";
        let hits = scan_text(random, FileKind::Other);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].rule, "high-entropy-string");
        assert_eq!(hits[0].severity, Severity::Medium);
        assert!(!hits[0].message.contains("Zq3L"));
    }

    #[test]
    fn many_hits_are_capped_per_file() {
        let line = "v = Zq3Lw8Rt2Vn7Kp4Xm9Bc6Hj1\n".repeat(MAX_PER_FILE * 2);
        assert_eq!(scan_text(&line, FileKind::Other).len(), MAX_PER_FILE);
    }

    #[test]
    fn unquoted_values_count_in_configuration_files_only() {
        let env = "DB_HOST=db\nDB_PASSWORD=s3cr3tP4ss!x # prod\nAPI_TOKEN=$FROM_CI\n";
        let hits = scan_text(env, FileKind::of(".env.production"));
        assert_eq!(
            hits.iter().map(|h| (h.line, h.rule)).collect::<Vec<_>>(),
            [(2, "generic-secret")]
        );
        let yaml = "db:\n  password: Tr0ub4dor&3x\n  token: ${{ secrets.T }}\n";
        assert_eq!(scan_text(yaml, FileKind::of("values.yaml")).len(), 1);
        let documented = "# password = Tr0ub4dor&3x|none\n";
        assert!(scan_text(documented, FileKind::Config).is_empty());
        let code = "password = user.Password2\ntoken = make_token(seed, 42)\n";
        assert!(scan_text(code, FileKind::of("app.py")).is_empty());
        assert_eq!(FileKind::of("Cargo.toml"), FileKind::Config);
        assert_eq!(FileKind::of("main.rs"), FileKind::Other);
    }

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
