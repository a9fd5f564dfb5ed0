//! The forges one signs in with, and what each one's OAuth2 authorization-code flow
//! looks like: where the authorize, token and user endpoints are, the scope that only
//! reads who the user is, whether PKCE is supported, how the client authenticates at
//! the token endpoint, and which field of the user is the stable id. Pure: no I/O.
//!
//! From the forges' own documentation:
//! - GitHub: "Authorizing OAuth apps", web application flow
//!   (docs.github.com/en/apps/oauth-apps/building-oauth-apps/authorizing-oauth-apps):
//!   `GET {web}/login/oauth/authorize`, `POST {web}/login/oauth/access_token` with
//!   `client_id`, `client_secret`, `code`, `redirect_uri` (`Accept: application/json`
//!   for a JSON answer, which is 200 with an `error` field on failure); PKCE S256 since
//!   the 2025-07-14 changelog "PKCE support for OAuth and GitHub App authentication".
//!   "Scopes for OAuth apps": no scope grants read-only access to public information,
//!   which is all `GET /user` needs. The REST API is `api.github.com` (GitHub
//!   Enterprise Server: `{web}/api/v3`) and wants a `User-Agent`.
//! - GitLab: "OAuth 2.0 identity provider API" (docs.gitlab.com/api/oauth2):
//!   `GET {web}/oauth/authorize` with `response_type=code`, `scope=read_user`, PKCE
//!   S256; `POST {web}/oauth/token` with `client_id`, `client_secret`, `code`,
//!   `grant_type=authorization_code`, `redirect_uri`, `code_verifier`;
//!   `GET {web}/api/v4/user` gives `id` and `username`.
//! - Gitea and Forgejo: "OAuth2 provider" (docs.gitea.com/development/oauth2-provider,
//!   forgejo.org/docs/latest/user/oauth2-provider):
//!   `/login/oauth/authorize`, `/login/oauth/access_token`, PKCE (RFC 7636) supported;
//!   scope `read:user`; `GET {web}/api/v1/user` gives `id` and `login`.
//! - Bitbucket Cloud: "OAuth 2.0" (developer.atlassian.com/cloud/bitbucket/oauth-2):
//!   `https://bitbucket.org/site/oauth2/authorize?client_id=…&response_type=code`, the
//!   code swapped at `/site/oauth2/access_token` with the client id and secret as HTTP
//!   Basic credentials and `grant_type=authorization_code`; scopes are the consumer's
//!   (it needs `account`), and PKCE is not documented, so none is sent. The user is
//!   `GET https://api.bitbucket.org/2.0/user` ("Get current user"); its stable id is
//!   `uuid` (usernames went away, "Bitbucket API changes for GDPR"; `nickname` is the
//!   human-readable name).

use serde::Deserialize;
use serde_json::Value;

/// A forge Slipway can sign people in with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Github,
    Gitlab,
    Gitea,
    Forgejo,
    Bitbucket,
}

/// How the client proves itself at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form body.
    Form,
    /// HTTP Basic with the client id and secret (Bitbucket).
    Basic,
}

/// Who the forge says signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgeUser {
    /// The stable id (numeric id, Bitbucket's uuid): what a link is found by.
    pub id: String,
    /// The login (GitHub/Gitea `login`, GitLab `username`, Bitbucket `nickname`).
    pub login: String,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 5] = [
        ProviderKind::Github,
        ProviderKind::Gitlab,
        ProviderKind::Gitea,
        ProviderKind::Forgejo,
        ProviderKind::Bitbucket,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Github => "github",
            ProviderKind::Gitlab => "gitlab",
            ProviderKind::Gitea => "gitea",
            ProviderKind::Forgejo => "forgejo",
            ProviderKind::Bitbucket => "bitbucket",
        }
    }

    pub fn from_name(name: &str) -> Option<ProviderKind> {
        ProviderKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// What the sign-in button calls it.
    pub fn display_name(self) -> &'static str {
        match self {
            ProviderKind::Github => "GitHub",
            ProviderKind::Gitlab => "GitLab",
            ProviderKind::Gitea => "Gitea",
            ProviderKind::Forgejo => "Forgejo",
            ProviderKind::Bitbucket => "Bitbucket",
        }
    }

    /// The web address of the public service; None for self-hosted-only forges.
    pub fn default_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::Github => Some("https://github.com"),
            ProviderKind::Gitlab => Some("https://gitlab.com"),
            ProviderKind::Bitbucket => Some("https://bitbucket.org"),
            ProviderKind::Gitea | ProviderKind::Forgejo => None,
        }
    }

    /// The API's base for a forge at `url` (no trailing slash).
    pub fn default_api_url(self, url: &str) -> String {
        match self {
            ProviderKind::Github if url == "https://github.com" => "https://api.github.com".into(),
            ProviderKind::Github => format!("{url}/api/v3"),
            ProviderKind::Bitbucket if url == "https://bitbucket.org" => {
                "https://api.bitbucket.org".into()
            }
            _ => url.to_string(),
        }
    }

    /// The authorize endpoint's path on the web URL.
    pub fn authorize_path(self) -> &'static str {
        match self {
            ProviderKind::Github | ProviderKind::Gitea | ProviderKind::Forgejo => {
                "/login/oauth/authorize"
            }
            ProviderKind::Gitlab => "/oauth/authorize",
            ProviderKind::Bitbucket => "/site/oauth2/authorize",
        }
    }

    /// The token endpoint's path on the web URL.
    pub fn token_path(self) -> &'static str {
        match self {
            ProviderKind::Github | ProviderKind::Gitea | ProviderKind::Forgejo => {
                "/login/oauth/access_token"
            }
            ProviderKind::Gitlab => "/oauth/token",
            ProviderKind::Bitbucket => "/site/oauth2/access_token",
        }
    }

    /// The signed-in user's endpoint, on the API URL.
    pub fn user_path(self) -> &'static str {
        match self {
            ProviderKind::Github => "/user",
            ProviderKind::Gitlab => "/api/v4/user",
            ProviderKind::Gitea | ProviderKind::Forgejo => "/api/v1/user",
            ProviderKind::Bitbucket => "/2.0/user",
        }
    }

    /// The least scope that reads the user (None: send no `scope`).
    pub fn scope(self) -> Option<&'static str> {
        match self {
            ProviderKind::Github | ProviderKind::Bitbucket => None,
            ProviderKind::Gitlab => Some("read_user"),
            ProviderKind::Gitea | ProviderKind::Forgejo => Some("read:user"),
        }
    }

    pub fn supports_pkce(self) -> bool {
        self != ProviderKind::Bitbucket
    }

    pub fn client_auth(self) -> ClientAuth {
        match self {
            ProviderKind::Bitbucket => ClientAuth::Basic,
            _ => ClientAuth::Form,
        }
    }

    /// The user from the user endpoint's JSON answer, or what is missing from it.
    pub fn parse_user(self, v: &Value) -> Result<ForgeUser, String> {
        let (id_field, login_fields): (&str, &[&str]) = match self {
            ProviderKind::Github | ProviderKind::Gitea | ProviderKind::Forgejo => {
                ("id", &["login"])
            }
            ProviderKind::Gitlab => ("id", &["username"]),
            ProviderKind::Bitbucket => ("uuid", &["nickname", "username", "display_name"]),
        };
        let id = match &v[id_field] {
            Value::Number(n) if n.as_u64().is_some_and(|n| n > 0) => n.to_string(),
            Value::String(s) if !s.trim().is_empty() && s.len() <= 200 => s.trim().to_string(),
            _ => return Err(format!("the user has no `{id_field}`")),
        };
        let login = login_fields
            .iter()
            .find_map(|f| v[*f].as_str().map(str::trim).filter(|s| !s.is_empty()))
            .ok_or_else(|| format!("the user has no `{}`", login_fields[0]))?;
        if login.len() > 255 || login.chars().any(char::is_control) {
            return Err("the user's login is too long or holds control characters".into());
        }
        Ok(ForgeUser {
            id,
            login: login.to_string(),
        })
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The PKCE S256 challenge of a verifier (RFC 7636 §4.2): BASE64URL(SHA256(verifier)),
/// unpadded.
pub fn pkce_challenge(verifier: &str) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pkce_matches_the_rfc_example() {
        // RFC 7636, Appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn users_are_found_by_their_stable_id() {
        let gh = ProviderKind::Github
            .parse_user(&json!({"id": 583231, "login": "octocat"}))
            .unwrap();
        assert_eq!((gh.id.as_str(), gh.login.as_str()), ("583231", "octocat"));
        let gl = ProviderKind::Gitlab
            .parse_user(&json!({"id": 1, "username": "john_smith", "login": "nope"}))
            .unwrap();
        assert_eq!(gl.login, "john_smith");
        let bb = ProviderKind::Bitbucket
            .parse_user(&json!({"uuid": "{a-b}", "nickname": "ev", "username": "old"}))
            .unwrap();
        assert_eq!((bb.id.as_str(), bb.login.as_str()), ("{a-b}", "ev"));
        for bad in [
            json!({"login": "octocat"}),
            json!({"id": 0, "login": "x"}),
            json!({"id": -3, "login": "x"}),
            json!({"id": 1}),
            json!({"id": 1, "login": "a\u{7}"}),
            json!("nope"),
        ] {
            assert!(ProviderKind::Github.parse_user(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn public_services_have_their_api_hosts() {
        assert_eq!(
            ProviderKind::Github.default_api_url("https://github.com"),
            "https://api.github.com"
        );
        assert_eq!(
            ProviderKind::Github.default_api_url("https://ghe.example.com"),
            "https://ghe.example.com/api/v3"
        );
        assert_eq!(
            ProviderKind::Bitbucket.default_api_url("https://bitbucket.org"),
            "https://api.bitbucket.org"
        );
        assert_eq!(
            ProviderKind::Gitlab.default_api_url("https://gitlab.com"),
            "https://gitlab.com"
        );
    }
}
