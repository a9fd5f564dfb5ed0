//! Registering and editing repositories: the one implementation behind
//! `POST /api/repos`, `PATCH /api/repos/{owner}/{name}` and `slipway repo add`.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use zeroize::Zeroizing;

use super::{Error, Result};
use crate::daemon::state::{self, AppState};
use crate::git::CredentialsFn;
use crate::store::{self, ForgeKind, NewRepo, Repo};

/// Longest repository name accepted.
pub const MAX_NAME_LEN: usize = 200;
/// Longest clone URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// What `register` needs.
pub struct Registration {
    pub name: String,
    pub forge: ForgeKind,
    pub clone_url: String,
    /// `None`: `main`.
    pub default_branch: Option<String>,
    /// The forge API token for commit statuses; sealed before it is stored.
    pub forge_token: Option<Zeroizing<String>>,
    pub trusted: bool,
    /// The forge's API base URL for commit statuses, where it cannot be derived from the
    /// clone URL ([`api_base`]).
    pub api_url: Option<String>,
}

/// A registered repository and its webhook secret, which is shown to the caller this
/// once and afterwards only exists sealed in the database.
pub struct Registered {
    pub repo: Repo,
    pub webhook_secret: Zeroizing<String>,
    pub webhook_url: String,
}

impl fmt::Debug for Registered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registered")
            .field("repo", &self.repo.name)
            .field("webhook_secret", &"<redacted>")
            .field("webhook_url", &self.webhook_url)
            .finish()
    }
}

/// A repository as the API shows it: never a sealed field, and the clone URL with any
/// embedded credentials masked.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RepoView {
    pub id: i64,
    /// `owner/name`.
    pub name: String,
    pub forge: ForgeKind,
    pub clone_url: String,
    pub default_branch: String,
    pub trusted: bool,
    /// Whether a forge token for commit statuses is stored (the token is never shown).
    pub has_forge_token: bool,
    /// The forge API base URL set for this repository, if any.
    pub api_url: Option<String>,
    /// Where the forge should deliver webhooks.
    pub webhook_url: String,
    pub created_at: i64,
}

impl RepoView {
    pub fn new(repo: &Repo, public_url: &str) -> RepoView {
        RepoView {
            id: repo.id,
            name: repo.name.clone(),
            forge: repo.forge,
            clone_url: crate::git::redact_url(&repo.clone_url),
            default_branch: repo.default_branch.clone(),
            trusted: repo.trusted,
            has_forge_token: repo.forge_token_enc.is_some(),
            api_url: repo.api_url.clone(),
            webhook_url: webhook_url(public_url, repo.forge, &repo.name),
            created_at: repo.created_at,
        }
    }
}

/// `{public_url}/hooks/{forge}/{owner}/{name}` (a GitLab project in subgroups keeps
/// its whole path: the route takes the rest of the URL).
pub fn webhook_url(public_url: &str, forge: ForgeKind, name: &str) -> String {
    format!("{}/hooks/{forge}/{name}", public_url.trim_end_matches('/'))
}

/// Most segments a GitLab project path has: GitLab nests subgroups 20 deep.
pub const MAX_GITLAB_DEPTH: usize = 21;

/// The repository's path on its forge: `owner/name`, or for GitLab the project's full
/// path with its subgroups (`group/subgroup/project`). Each segment of
/// `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn validate_name(name: &str, forge: ForgeKind) -> Result<(), Error> {
    let expected = if forge == ForgeKind::Gitlab {
        "`group/project` or `group/subgroup/…/project`"
    } else {
        "`owner/name`"
    };
    let bad = |why: &str| {
        Err(Error::Invalid(format!(
            "repository name {name:?} {why}; expected {expected} made of letters, digits, `.`, `_` and `-`"
        )))
    };
    if name.len() > MAX_NAME_LEN {
        return bad("is too long");
    }
    let segments: Vec<&str> = name.split('/').collect();
    match segments.len() {
        1 => return bad("has no `/`"),
        2 => {}
        n if forge == ForgeKind::Gitlab && n <= MAX_GITLAB_DEPTH => {}
        _ if forge == ForgeKind::Gitlab => return bad("has too many subgroups"),
        _ => return bad("has more than one `/` (only GitLab has subgroups)"),
    }
    for segment in segments {
        if segment.is_empty() || segment == "." || segment == ".." {
            return bad("has an empty or dot-only segment");
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return bad("has a character that is not allowed");
        }
    }
    Ok(())
}

/// A branch name as git accepts it under `refs/heads/`.
pub fn validate_branch(branch: &str) -> Result<(), Error> {
    if branch.is_empty()
        || !git2::Reference::is_valid_name(&format!("refs/heads/{branch}"))
        || branch.starts_with('-')
    {
        return Err(Error::Invalid(format!(
            "{branch:?} is not a valid branch name"
        )));
    }
    Ok(())
}

/// Not empty, not absurdly long, no whitespace or control characters, and a scheme
/// git knows (or a local path).
pub fn validate_clone_url(url: &str) -> Result<(), Error> {
    let ok = !url.is_empty()
        && url.len() <= MAX_URL_LEN
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
        && !url.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(
            "clone_url must be a URL or path without spaces or control characters".into(),
        ))
    }
}

/// A forge API base URL ([`crate::forge::check_api_base`]).
pub fn validate_api_url(url: &str) -> Result<(), Error> {
    crate::forge::check_api_base(url).map_err(Error::Invalid)
}

/// Where the forge's API is for `repo`: its own `api_url`, else the server's
/// `forge_api_urls` entry for its clone URL's host, else derived from the clone URL
/// and the repository's path ([`crate::forge::api_base_for`]).
pub fn api_base(config: &crate::daemon::config::Config, repo: &Repo) -> Option<String> {
    if let Some(url) = &repo.api_url {
        return Some(url.trim_end_matches('/').to_owned());
    }
    let configured = crate::forge::clone_host(&repo.clone_url).and_then(|host| {
        config
            .forge_api_urls
            .iter()
            .find(|(h, _)| h.eq_ignore_ascii_case(&host))
            .map(|(_, url)| url.trim_end_matches('/').to_owned())
    });
    configured.or_else(|| crate::forge::api_base_for(repo.forge, &repo.clone_url, &repo.name))
}

/// The repository's name as it goes into a URL whose route takes `{owner}/{name}`:
/// every `/` but the last is encoded, so a GitLab project in subgroups stays two
/// segments (`g1/g2/app` → `g1%2Fg2/app`). Names hold no other character that needs
/// encoding ([`validate_name`]).
pub fn url_path(name: &str) -> String {
    match name.rsplit_once('/') {
        Some((owner, last)) => format!("{}/{last}", owner.replace('/', "%2F")),
        None => name.to_owned(),
    }
}

/// A name that may be a registered repository's, whatever its forge: what a command
/// naming an existing repository checks before asking for it.
pub fn validate_reference(name: &str) -> Result<(), Error> {
    validate_name(name, ForgeKind::Gitlab)
}

fn seal_forge_token(state: &AppState, repo_name: &str, token: &str) -> Result<Vec<u8>, Error> {
    if token.is_empty() {
        return Err(Error::Invalid("forge_token must not be empty".into()));
    }
    Ok(state
        .secret_box
        .seal(token.as_bytes(), &state::forge_token_aad(repo_name)))
}

/// Validates, generates the webhook secret, seals it (and the forge token) and stores
/// the repository.
pub async fn register(state: &AppState, reg: Registration) -> Result<Registered, Error> {
    validate_name(&reg.name, reg.forge)?;
    validate_clone_url(&reg.clone_url)?;
    if let Some(url) = &reg.api_url {
        validate_api_url(url)?;
    }
    let default_branch = reg.default_branch.unwrap_or_else(|| "main".to_string());
    validate_branch(&default_branch)?;
    let forge_token_enc = reg
        .forge_token
        .as_deref()
        .map(|t| seal_forge_token(state, &reg.name, t))
        .transpose()?;
    let webhook_secret = Zeroizing::new(crate::crypto::generate_webhook_secret());
    let webhook_secret_enc = state.secret_box.seal(
        webhook_secret.as_bytes(),
        &state::webhook_secret_aad(&reg.name),
    );
    let repo = state
        .store
        .create_repo(NewRepo {
            api_url: reg.api_url,
            name: reg.name,
            forge: reg.forge,
            clone_url: reg.clone_url,
            default_branch,
            webhook_secret_enc,
            forge_token_enc,
            trusted: reg.trusted,
        })
        .await?;
    tracing::info!(repo = %repo.name, forge = %repo.forge, id = repo.id, "repository registered");
    let webhook_url = webhook_url(&state.config.public_url, repo.forge, &repo.name);
    Ok(Registered {
        repo,
        webhook_secret,
        webhook_url,
    })
}

/// Changes to a repository; `None` leaves a field alone.
#[derive(Default)]
pub struct Update {
    pub default_branch: Option<String>,
    pub trusted: Option<bool>,
    /// `Some(None)` removes the stored token.
    pub forge_token: Option<Option<Zeroizing<String>>>,
    pub clone_url: Option<String>,
    /// `Some(None)` goes back to the API base derived from the clone URL.
    pub api_url: Option<Option<String>>,
}

/// Applies `update` to the repository named `name`.
pub async fn update(state: &AppState, name: &str, update: Update) -> Result<Repo, Error> {
    let mut repo = state.store.get_repo_by_name(name).await?;
    if let Some(branch) = update.default_branch {
        validate_branch(&branch)?;
        repo.default_branch = branch;
    }
    if let Some(url) = update.clone_url {
        validate_clone_url(&url)?;
        repo.clone_url = url;
    }
    if let Some(trusted) = update.trusted {
        repo.trusted = trusted;
    }
    if let Some(api_url) = update.api_url {
        if let Some(url) = &api_url {
            validate_api_url(url)?;
        }
        repo.api_url = api_url;
    }
    if let Some(token) = update.forge_token {
        repo.forge_token_enc = token
            .as_deref()
            .map(|t| seal_forge_token(state, &repo.name, t))
            .transpose()?;
    }
    let repo = state.store.update_repo(&repo).await?;
    tracing::info!(repo = %repo.name, "repository updated");
    Ok(repo)
}

/// Deletes a repository, everything stored for it, and its mirror. `NotFound` if
/// there is none.
pub async fn delete(state: &AppState, name: &str) -> Result<(), Error> {
    let repo = state.store.get_repo_by_name(name).await?;
    if !state.store.delete_repo(repo.id).await? {
        return Err(store::Error::NotFound(format!("repository {name:?}")).into());
    }
    let mirror = state.mirror_dir(repo.id);
    let removed = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&mirror) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
        _ => Ok(()),
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    if let Err(error) = removed {
        // The rows are gone; a leftover mirror only costs disk.
        tracing::warn!(repo = %name, %error, "could not remove the mirror");
    }
    tracing::info!(repo = %name, "repository deleted");
    Ok(())
}

/// Valid environment variable names: `[A-Za-z_][A-Za-z0-9_]*`, at most 128 bytes.
pub fn validate_secret_name(name: &str) -> Result<(), Error> {
    let mut bytes = name.bytes();
    let ok = name.len() <= 128
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "secret name {name:?} is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)"
        )))
    }
}

/// Largest secret value accepted.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;
/// Shortest secret value accepted: the shortest value the log masker masks
/// ([`runner::mask::MIN_PATTERN_LEN`]); a shorter secret would leak into logs unmasked.
pub const MIN_SECRET_BYTES: usize = runner::mask::MIN_PATTERN_LEN;

/// A value the log masker can hide: not empty, at least [`MIN_SECRET_BYTES`], not only
/// whitespace, at most [`MAX_SECRET_BYTES`].
pub fn validate_secret_value(value: &[u8]) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::Invalid("a secret value must not be empty".into()));
    }
    if value.len() < MIN_SECRET_BYTES || value.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::Invalid(format!(
            "a secret value must be at least {MIN_SECRET_BYTES} bytes and not only whitespace: \
             a shorter one cannot be masked in logs (masking it would hide ordinary text too)"
        )));
    }
    if value.len() > MAX_SECRET_BYTES {
        return Err(Error::Invalid(format!(
            "a secret value may be at most {MAX_SECRET_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Seals and stores a secret; `true` if it was new. Shared by the API and the CLI.
pub async fn put_secret(
    state: &AppState,
    repo: &Repo,
    name: &str,
    value: &[u8],
    allow_pull_requests: bool,
) -> Result<bool, Error> {
    validate_secret_name(name)?;
    validate_secret_value(value)?;
    let existed = state
        .store
        .list_secrets(repo.id)
        .await?
        .iter()
        .any(|s| s.name == name);
    let sealed = state
        .secret_box
        .seal(value, &crate::crypto::secret_aad(repo.id, name));
    state
        .store
        .put_secret(repo.id, name, &sealed, allow_pull_requests)
        .await?;
    tracing::info!(repo = %repo.name, secret = name, "secret stored");
    Ok(!existed)
}

/// Credentials for fetching the repository into its mirror: its forge token, when one is
/// stored, as HTTPS basic auth (the user names are what each forge documents for tokens).
pub fn mirror_credentials(
    state: &AppState,
    repo: &Repo,
) -> Result<Option<Arc<crate::git::CredentialsFn>>, Error> {
    let Some(sealed) = &repo.forge_token_enc else {
        return Ok(None);
    };
    let token = state
        .secret_box
        .open(sealed, &state::forge_token_aad(&repo.name))
        .map_err(|e| Error::Internal(format!("forge token of {}: {e}", repo.name)))?;
    let token = Zeroizing::new(String::from_utf8_lossy(&token).into_owned());
    let forge = repo.forge;
    Ok(Some(Arc::new(
        move |_url: &str, user: Option<&str>, allowed: git2::CredentialType| {
            if allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT) {
                git2::Cred::userpass_plaintext(token_user(forge, user), &token)
            } else {
                Err(git2::Error::from_str(
                    "the forge token only works over HTTPS",
                ))
            }
        },
    )))
}

/// Fetch credentials from the repository's forge token, if it has one, for the
/// planner's and cron's fetches (a token that cannot be opened is logged, and the
/// fetch goes without). Forges differ in the user name they expect next to a token.
pub fn fetch_credentials(state: &AppState, repo: &Repo) -> Option<Arc<CredentialsFn>> {
    let sealed = repo.forge_token_enc.as_ref()?;
    let token = match state
        .secret_box
        .open(sealed, &state::forge_token_aad(&repo.name))
    {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(repo = %repo.name, error = %e, "cannot open the forge token; fetching without credentials");
            return None;
        }
    };
    let token = zeroize::Zeroizing::new(String::from_utf8_lossy(&token).into_owned());
    let forge = repo.forge;
    Some(Arc::new(move |_url: &str, user: Option<&str>, _allowed| {
        match forge {
            // Gitea/Forgejo accept the token as the user name.
            ForgeKind::Gitea | ForgeKind::Forgejo => {
                git2::Cred::userpass_plaintext(&token, "x-oauth-basic")
            }
            _ => git2::Cred::userpass_plaintext(token_user(forge, user), &token),
        }
    }))
}

/// The user name to send next to a forge token over HTTPS basic auth, when the clone
/// URL names none (`user` is the one it names):
///
/// * GitHub: `x-access-token` (installation and fine-grained tokens).
/// * Bitbucket Cloud: `x-token-auth`, what Atlassian documents for repository, project
///   and workspace access tokens ("Using access tokens": `git clone
///   https://x-token-auth:{token}@bitbucket.org/…`).
/// * Bitbucket Data Center: a personal HTTP access token is a password for its owner,
///   so put that user in the clone URL (`https://ci-bot@host/scm/…`). Project and
///   repository tokens only work as `Bearer` headers, which git's basic auth cannot
///   send; `x-token-auth` is only the fallback.
/// * GitLab, Gitea's mirror fetches and Gitee: `oauth2`.
pub fn token_user(forge: ForgeKind, user: Option<&str>) -> &str {
    match (forge, user.filter(|u| !u.is_empty())) {
        (_, Some(u)) => u,
        (ForgeKind::Github, None) => "x-access-token",
        (ForgeKind::Bitbucket | ForgeKind::BitbucketDc, None) => "x-token-auth",
        (_, None) => "oauth2",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for forge in ForgeKind::ALL {
            for ok in ["a/b", "team/app", "My.Org/re_po-1", "a/.github"] {
                assert!(validate_name(ok, forge).is_ok(), "{ok}");
            }
            for bad in [
                "", "a", "/b", "a/", "a/..", "./b", "a b/c", "a/b\n", "ä/b", "a/b?x", "a//b",
            ] {
                assert!(validate_name(bad, forge).is_err(), "{bad:?}");
            }
            assert!(validate_name(&format!("a/{}", "x".repeat(MAX_NAME_LEN)), forge).is_err());
        }
        // Only GitLab has subgroups, up to 20 deep.
        assert!(validate_name("g1/g2/project", ForgeKind::Gitlab).is_ok());
        assert!(validate_name("g1/g2/project", ForgeKind::Github).is_err());
        let deep = vec!["g"; MAX_GITLAB_DEPTH + 1].join("/");
        assert!(validate_name(&deep, ForgeKind::Gitlab).is_err());
        assert!(validate_name("g1/../p", ForgeKind::Gitlab).is_err());
    }

    #[test]
    fn url_paths_keep_two_segments() {
        assert_eq!(url_path("team/app"), "team/app");
        assert_eq!(url_path("g1/g2/app"), "g1%2Fg2/app");
    }

    #[test]
    fn secret_names() {
        for ok in ["A", "_X", "REGISTRY_AUTH", "a1"] {
            assert!(validate_secret_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "A=B", "É"] {
            assert!(validate_secret_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn branches_and_urls() {
        assert!(validate_branch("main").is_ok());
        assert!(validate_branch("release/1.2").is_ok());
        for bad in ["", "a..b", "a b", "-x", "a:b", "x.lock"] {
            assert!(validate_branch(bad).is_err(), "{bad:?}");
        }
        assert!(validate_clone_url("https://example.com/a/b.git").is_ok());
        assert!(validate_clone_url("/srv/git/a.git").is_ok());
        assert!(validate_clone_url("").is_err());
        assert!(validate_clone_url("--upload-pack=x").is_err());
        assert!(validate_clone_url("a b").is_err());
    }

    #[test]
    fn webhook_urls() {
        assert_eq!(
            webhook_url("http://ci.example/", ForgeKind::Gitlab, "team/app"),
            "http://ci.example/hooks/gitlab/team/app"
        );
    }
}
