//! Tokens of a known format: fixed prefixes (GitHub, GitLab, Stripe, Google), Slack
//! tokens, AWS access key ids.

use super::entropy::shannon;

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
pub(super) fn alnum_dash_underscore(b: u8) -> bool {
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
/// A token of a known format: `(rule, message with a redacted preview)`.
pub(super) fn known_token(tok: &str) -> Option<(&'static str, String)> {
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
