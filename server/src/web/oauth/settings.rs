//! The `[oauth.<name>]` tables of the server's configuration file: one OAuth client per
//! forge people sign in with. The client secret is never written in the file: it comes
//! from an environment variable (`client_secret_env`) or a file of its own
//! (`client_secret_file`), read when the server starts (`clients`).
//!
//! ```toml
//! [oauth.github]
//! client_id = "Iv1.0123456789abcdef"
//! client_secret_env = "SLIPWAY_GITHUB_CLIENT_SECRET"
//! ```

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::provider::ProviderKind;

/// One `[oauth.<name>]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    /// github, gitlab, gitea, forgejo or bitbucket (default: the table's name, if it is
    /// one of those).
    pub kind: Option<Spanned<ProviderKind>>,
    /// What the sign-in button says after "Sign in with" (default: the forge's name).
    pub display_name: Option<Spanned<String>>,
    /// The forge's web address (default for github, gitlab and bitbucket: the public
    /// service; required for gitea and forgejo).
    pub url: Option<Spanned<String>>,
    /// The forge's API address (default: from `url`).
    pub api_url: Option<Spanned<String>>,
    pub client_id: Spanned<String>,
    /// Refused with a reason: a secret does not belong in the configuration file.
    pub client_secret: Option<Spanned<toml::Value>>,
    /// The environment variable that holds the client secret.
    pub client_secret_env: Option<Spanned<String>>,
    /// The file that holds the client secret (surrounding whitespace ignored).
    pub client_secret_file: Option<Spanned<PathBuf>>,
    /// Whether a forge account linked to no user may sign in, making a user (no role)
    /// named after its login. Default false: only linked accounts sign in.
    #[serde(default)]
    pub allow_signup: bool,
    /// With `allow_signup`: only these logins may sign up (empty: any account).
    pub signup_logins: Option<Spanned<Vec<String>>>,
}

/// Where a client secret is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

/// A configured provider, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthProvider {
    /// The table's name: in URLs (`/login/oauth/{name}`) and in the links table.
    pub name: String,
    pub kind: ProviderKind,
    pub display_name: String,
    /// Web address, no trailing slash (authorize and token endpoints).
    pub url: String,
    /// API address, no trailing slash (the user endpoint).
    pub api_url: String,
    pub client_id: String,
    pub client_secret: SecretRef,
    pub allow_signup: bool,
    /// Lower-cased.
    pub signup_logins: Vec<String>,
}

impl OAuthProvider {
    /// Whether an unlinked forge account with this login may sign up.
    pub fn may_sign_up(&self, login: &str) -> bool {
        self.allow_signup
            && (self.signup_logins.is_empty() || self.signup_logins.contains(&login.to_lowercase()))
    }
}

/// A problem in the file: where (a byte range of its text) and what.
pub type Problem = (Range<usize>, String);

/// Every `[oauth.<name>]` table checked, in name order; the first problem found.
pub fn providers(
    tables: &BTreeMap<Spanned<String>, Spanned<ProviderSettings>>,
) -> Result<Vec<OAuthProvider>, Problem> {
    tables.iter().map(|(name, t)| provider(name, t)).collect()
}

fn provider(
    name: &Spanned<String>,
    table: &Spanned<ProviderSettings>,
) -> Result<OAuthProvider, Problem> {
    let at = |s: Range<usize>, m: String| (s, format!("oauth.{}: {m}", name.get_ref()));
    let n = name.get_ref();
    let name_ok = !n.is_empty()
        && n.len() <= 32
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !name_ok {
        return Err(at(
            name.span(),
            "a provider's name is 1 to 32 lower-case letters, digits or `-` (it is part of \
             the sign-in URL)"
                .into(),
        ));
    }
    let t = table.get_ref();
    let kind = match &t.kind {
        Some(k) => *k.get_ref(),
        None => ProviderKind::from_name(n).ok_or_else(|| {
            at(
                table.span(),
                "`kind` is missing: one of github, gitlab, gitea, forgejo, bitbucket".into(),
            )
        })?,
    };
    let url = match &t.url {
        Some(u) => http_url(u).map_err(|m| at(u.span(), m))?,
        None => kind.default_url().map(str::to_string).ok_or_else(|| {
            at(
                table.span(),
                format!(
                    "`url` is missing: the address of your {} server",
                    kind.display_name()
                ),
            )
        })?,
    };
    let api_url = match &t.api_url {
        Some(u) => http_url(u).map_err(|m| at(u.span(), m))?,
        None => kind.default_api_url(&url),
    };
    let client_id = t.client_id.get_ref().trim();
    if client_id.is_empty() || client_id.len() > 200 || client_id.chars().any(char::is_control) {
        return Err(at(
            t.client_id.span(),
            "`client_id` must be 1 to 200 characters without control characters".into(),
        ));
    }
    if let Some(inline) = &t.client_secret {
        return Err(at(
            inline.span(),
            "`client_secret` is not read from the configuration file: put the secret in an \
             environment variable named by `client_secret_env`, or in a file named by \
             `client_secret_file`"
                .into(),
        ));
    }
    let client_secret = match (&t.client_secret_env, &t.client_secret_file) {
        (Some(env), None) if !env.get_ref().trim().is_empty() => {
            SecretRef::Env(env.get_ref().trim().to_string())
        }
        (None, Some(file)) if !file.get_ref().as_os_str().is_empty() => {
            SecretRef::File(file.get_ref().clone())
        }
        (Some(env), Some(_)) => {
            return Err(at(
                env.span(),
                "give `client_secret_env` or `client_secret_file`, not both".into(),
            ));
        }
        (Some(s), None) => return Err(at(s.span(), "`client_secret_env` is empty".into())),
        (None, Some(s)) => return Err(at(s.span(), "`client_secret_file` is empty".into())),
        (None, None) => {
            return Err(at(
                table.span(),
                "the client secret is missing: `client_secret_env = \"VARIABLE\"` or \
                 `client_secret_file = \"/path\"`"
                    .into(),
            ));
        }
    };
    let logins_span = t.signup_logins.as_ref().map_or(table.span(), Spanned::span);
    let signup_logins: Vec<String> = t
        .signup_logins
        .as_ref()
        .map(|l| {
            l.get_ref()
                .iter()
                .map(|l| l.trim().to_lowercase())
                .collect()
        })
        .unwrap_or_default();
    if !signup_logins.is_empty() && !t.allow_signup {
        return Err(at(
            logins_span,
            "`signup_logins` needs `allow_signup = true`".into(),
        ));
    }
    if signup_logins.iter().any(String::is_empty) {
        return Err(at(
            logins_span,
            "`signup_logins` holds an empty login".into(),
        ));
    }
    let display_name = match &t.display_name {
        Some(d) => {
            let d = d.get_ref().trim();
            if d.is_empty() || d.len() > 60 {
                return Err(at(
                    t.display_name.as_ref().map_or(table.span(), Spanned::span),
                    "`display_name` must be 1 to 60 characters".into(),
                ));
            }
            d.to_string()
        }
        None => kind.display_name().to_string(),
    };
    Ok(OAuthProvider {
        name: n.clone(),
        kind,
        display_name,
        url,
        api_url,
        client_id: client_id.to_string(),
        client_secret,
        allow_signup: t.allow_signup,
        signup_logins,
    })
}

/// An http(s) address without query or fragment, its trailing `/` dropped.
fn http_url(u: &Spanned<String>) -> Result<String, String> {
    let text = u.get_ref().trim().trim_end_matches('/');
    let parsed = reqwest::Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!("`{text}` is not an http:// or https:// address"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() || !parsed.username().is_empty() {
        return Err(format!(
            "`{text}` must be a plain address, without credentials, query or fragment"
        ));
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::config::{Config, Settings};

    const README: &str = include_str!("../../../../README.md");

    fn resolve(text: &str) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slipway.toml");
        std::fs::write(&path, text).unwrap();
        Config::resolve(Settings::default(), Some(&path)).map_err(|e| e.to_string())
    }

    /// The README's `[oauth.*]` example, as written.
    fn readme_example() -> &'static str {
        let marked = README
            .split_once("<!-- oauth-config")
            .expect("the README marks its OAuth example")
            .1;
        let block = marked.split_once("```toml\n").unwrap().1;
        block.split_once("```").unwrap().0
    }

    #[test]
    fn the_readme_example_is_a_valid_configuration() {
        let c = resolve(readme_example()).unwrap();
        assert_eq!(c.public_url, "https://ci.example.com");
        let [codeberg, github] = c.oauth.as_slice() else {
            panic!("{:?}", c.oauth)
        };
        assert_eq!(github.name, "github");
        assert_eq!(github.kind, ProviderKind::Github);
        assert_eq!(github.url, "https://github.com");
        assert_eq!(github.api_url, "https://api.github.com");
        assert_eq!(github.display_name, "GitHub");
        assert_eq!(
            github.client_secret,
            SecretRef::Env("SLIPWAY_GITHUB_CLIENT_SECRET".into())
        );
        assert!(!github.allow_signup && !github.may_sign_up("anyone"));
        assert_eq!(codeberg.kind, ProviderKind::Forgejo);
        assert_eq!(codeberg.display_name, "Codeberg");
        assert_eq!(codeberg.api_url, "https://codeberg.org");
        assert_eq!(
            codeberg.client_secret,
            SecretRef::File("/run/secrets/codeberg-oauth".into())
        );
        assert!(codeberg.may_sign_up("Ada") && !codeberg.may_sign_up("eve"));
    }

    #[test]
    fn mistakes_are_refused_with_the_line_and_column() {
        let base = "[oauth.github]\nclient_id = \"x\"\n";
        let cases: &[(String, Option<&str>, &str)] = &[
            (
                format!("{base}client_secret = \"hunter2\"\n"),
                Some("slipway.toml:3:17"),
                "is not read from the configuration file",
            ),
            (
                format!("{base}client_secret_env = \"V\"\nsignup_logins = [\"a\"]\n"),
                Some("slipway.toml:4:17"),
                "needs `allow_signup = true`",
            ),
            (
                format!("{base}client_secret_env = \"V\"\nallow_signups = true\n"),
                Some("slipway.toml:4:1"),
                "unknown field `allow_signups`",
            ),
            (
                "[oauth.github]\nkind = \"gitbucket\"\n".to_string(),
                Some("slipway.toml:2:8"),
                "unknown variant `gitbucket`",
            ),
            (
                format!("{base}client_secret_env = \"V\"\nclient_secret_file = \"/f\"\n"),
                Some("slipway.toml:3:"),
                "not both",
            ),
            (
                format!("{base}client_secret_env = \"V\"\nurl = \"ftp://x\"\n"),
                Some("slipway.toml:4:7"),
                "not an http:// or https:// address",
            ),
            (base.to_string(), None, "the client secret is missing"),
            (
                "[oauth.corp]\nclient_id = \"x\"\nclient_secret_env = \"V\"\n".into(),
                None,
                "oauth.corp: `kind` is missing",
            ),
            (
                "[oauth.gitea]\nclient_id = \"x\"\nclient_secret_env = \"V\"\n".into(),
                None,
                "`url` is missing: the address of your Gitea server",
            ),
            (
                "[oauth.GitHub]\nkind = \"github\"\nclient_id = \"x\"\nclient_secret_env = \"V\"\n"
                    .into(),
                None,
                "lower-case letters",
            ),
        ];
        for (text, at, message) in cases {
            let err = resolve(text).unwrap_err();
            assert!(err.contains(message), "{text}: {err}");
            assert!(err.contains("slipway.toml:"), "{text}: {err}");
            if let Some(at) = at {
                assert!(err.contains(at), "{text}: {err}");
            }
            assert!(!err.contains("hunter2"), "{err}");
        }
    }
}
