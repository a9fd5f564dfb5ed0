//! The built-in secret rules, applied line by line to a text file.
//!
//! Two families:
//! * **Known formats** (severity `high`): token prefixes with a fixed shape (GitHub,
//!   GitLab, Slack, Stripe, Google, AWS key ids), AWS secret keys on a line that says
//!   so, private key PEM headers, and `password|secret|token|api_key = "<value>"`
//!   assignments whose value looks random (unquoted values too in `.env`, YAML, TOML,
//!   INI and properties files).
//! * **High-entropy strings** (severity `medium`): base64-ish tokens of at least
//!   [`entropy::MIN_ENTROPY_LEN`] characters whose Shannon entropy is close to that of random
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
//!
//! Here: the line scan that applies them. `known` holds the known token formats,
//! `assignment` the `key = "value"` rule, `entropy` the randomness tests, `tokens`
//! the tokenizer they share.

mod assignment;
mod entropy;
mod known;
mod tokens;

use assignment::secret_assignment;
use entropy::{is_random, mixed, shannon};
use known::{alnum_dash_underscore, known_token};
use tokens::tokens;

use crate::spec::Severity;

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

fn overlaps(taken: &[(usize, usize)], start: usize, end: usize) -> bool {
    taken.iter().any(|&(s, e)| start < e && s < end)
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
}
