//! People: users, their roles, personal tokens and linked forge identities. The one
//! implementation behind `/api/users/…` and `slipway user …` / `slipway token create
//! --user`; the store writes each change's audit entry in the change's transaction.

use serde::Serialize;
use zeroize::Zeroizing;

use super::{Error, Result};
use crate::crypto::{self, MIN_PASSWORD_CHARS};
use crate::store::{self, ForgeKind, Role, RoleBinding, Store, User, UserToken};

/// The prefix of personal tokens, told apart from machine tokens (`slp_`) without a
/// lookup; both start with `slp` for secret scanners.
pub const USER_TOKEN_PREFIX: &str = "slpu_";
/// Longest user name accepted.
pub const MAX_USER_NAME: usize = 64;
/// Longest password accepted (argon2 takes any length; this bounds the work).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Longest forge login or email accepted in an identity.
pub const MAX_LOGIN: usize = 255;

/// A user name: 1 to 64 of `[A-Za-z0-9._-]`, starting with a letter or digit (it
/// appears in URLs, audit subjects and `user:<name>` actors).
pub fn validate_user_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_USER_NAME
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "invalid user name {name:?}: 1 to {MAX_USER_NAME} letters, digits, `.`, `_` or `-`, \
             starting with a letter or digit"
        )))
    }
}

/// A password long enough ([`MIN_PASSWORD_CHARS`]) and not absurdly long.
pub fn check_password(password: &str) -> Result<()> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(Error::Invalid(format!(
            "the password is too short: at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::Invalid(format!(
            "the password is too long: at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(())
}

/// A token's name, trimmed: 1 to 100 characters without control characters.
pub fn token_name(name: &str) -> Result<&str> {
    let name = name.trim();
    if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
        return Err(Error::Invalid(
            "a token name must be 1 to 100 characters without control characters".into(),
        ));
    }
    Ok(name)
}

/// A forge login as stored and compared: forges treat logins (and email addresses)
/// without regard to case, so they are kept in lower case.
pub fn normalise_login(login: &str) -> String {
    login.trim().to_lowercase()
}

/// `github:alice`, `gitlab:alice`, `gitea:alice`, `forgejo:alice`, `bitbucket:<account
/// id>`, `bitbucket-dc:alice`, `gitee:alice` or `git:<email>`.
pub fn parse_identity(s: &str) -> Result<(ForgeKind, String)> {
    let invalid = |why: &str| {
        Error::Invalid(format!(
            "invalid identity {:?}: {why} (expected `github:LOGIN`, `gitlab:LOGIN`, \
             `gitea:LOGIN`, `forgejo:LOGIN`, `bitbucket:ACCOUNT_ID`, `bitbucket-dc:LOGIN`, \
             `gitee:LOGIN` or `git:EMAIL`)",
            s.chars().take(100).collect::<String>()
        ))
    };
    let (forge, login) = s.split_once(':').ok_or_else(|| invalid("no `:`"))?;
    let forge: ForgeKind = forge.parse().map_err(|_| invalid("unknown forge"))?;
    let login = normalise_login(login);
    if login.is_empty() || login.len() > MAX_LOGIN {
        return Err(invalid("the login is empty or too long"));
    }
    if login.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("the login holds a space or a control character"));
    }
    if forge == ForgeKind::Git {
        let email = login
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty());
        if !email {
            return Err(invalid("plain git identities are email addresses"));
        }
    }
    Ok((forge, login))
}

/// A user as the API and the CLI show them: their roles and linked identities, never a
/// password hash or a token.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UserDetail {
    #[serde(flatten)]
    pub user: User,
    pub roles: Vec<RoleBinding>,
    /// `github:alice`, `git:alice@example.com` …
    pub identities: Vec<String>,
}

pub async fn detail(store: &Store, user: User) -> Result<UserDetail> {
    let roles = store.roles_of(user.id).await?;
    let identities = store
        .identities_of(user.id)
        .await?
        .into_iter()
        .map(|i| format!("{}:{}", i.forge, i.login))
        .collect();
    Ok(UserDetail {
        user,
        roles,
        identities,
    })
}

/// Creates a user with an argon2id hash of `password`, and gives them `role` (on
/// `repo`, or globally) if one is given.
pub async fn add_user(
    store: &Store,
    actor: &str,
    name: &str,
    password: Zeroizing<String>,
    role: Option<(Role, Option<&str>)>,
) -> Result<User> {
    validate_user_name(name)?;
    check_password(&password)?;
    // Resolve the repository before anything is written: a typo creates nothing.
    let repo = match role.and_then(|(_, r)| r) {
        Some(r) => Some(store.get_repo_by_name(r).await?),
        None => None,
    };
    // Deliberately slow (memory-hard): off the async threads.
    let hash = tokio::task::spawn_blocking(move || crypto::hash_password(&password))
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
        .map_err(|e| Error::Internal(e.to_string()))?;
    let role = role.map(|(role, _)| (role, repo.as_ref()));
    let user = store.create_user(actor, name, &hash, role).await?;
    tracing::info!(user = %user.name, by = %actor, "user created");
    Ok(user)
}

/// Gives a user `role` (None: takes it away) on the repository named `repo`, or
/// globally. Returns the role they had there.
pub async fn set_role(
    store: &Store,
    actor: &str,
    user: &User,
    repo: Option<&str>,
    role: Option<Role>,
) -> Result<Option<Role>> {
    let repo = match repo {
        Some(r) => Some(store.get_repo_by_name(r).await?),
        None => None,
    };
    let before = store.set_role(actor, user, repo.as_ref(), role).await?;
    tracing::info!(user = %user.name, repo = ?repo.map(|r| r.name), role = ?role, by = %actor, "role changed");
    Ok(before)
}

/// Creates a personal token of `user` and returns it in clear, the only time it exists
/// outside the caller.
pub async fn create_personal_token(
    store: &Store,
    actor: &str,
    user: &User,
    name: &str,
) -> Result<(UserToken, Zeroizing<String>)> {
    let name = token_name(name)?;
    let token = Zeroizing::new(crypto::generate_token(USER_TOKEN_PREFIX));
    let stored = store
        .create_user_token(actor, user, name, &crypto::hash_token(&token))
        .await?;
    tracing::info!(user = %user.name, token = %stored.name, id = stored.id, by = %actor, "personal token created");
    Ok((stored, token))
}

/// Links `identity` (`github:alice` …) to `user`.
pub async fn link(store: &Store, actor: &str, user: &User, identity: &str) -> Result<String> {
    let (forge, login) = parse_identity(identity)?;
    store.link_identity(actor, user, forge, &login).await?;
    tracing::info!(user = %user.name, %forge, %login, by = %actor, "identity linked");
    Ok(format!("{forge}:{login}"))
}

/// Unlinks `identity` from `user`; `NotFound` if it was not linked to them.
pub async fn unlink(store: &Store, actor: &str, user: &User, identity: &str) -> Result<()> {
    let (forge, login) = parse_identity(identity)?;
    if !store.unlink_identity(actor, user, forge, &login).await? {
        return Err(store::Error::NotFound(format!(
            "{forge}:{login} is not linked to `{}`",
            user.name
        ))
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_a_known_forge_and_a_login() {
        assert_eq!(
            parse_identity("github:Alice").unwrap(),
            (ForgeKind::Github, "alice".to_string())
        );
        assert_eq!(
            parse_identity("git:Ada@Example.com").unwrap(),
            (ForgeKind::Git, "ada@example.com".to_string())
        );
        assert_eq!(parse_identity("forgejo:bob").unwrap().0, ForgeKind::Forgejo);
        for bad in [
            "alice",
            "svn:alice",
            "github:",
            "github:a b",
            "git:alice",
            "git:@x",
            "gitlab:a\u{7}",
        ] {
            assert!(parse_identity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_and_passwords_are_checked() {
        validate_user_name("alice.b-c_9").unwrap();
        for bad in ["", "-alice", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(validate_user_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_password(&"x".repeat(MIN_PASSWORD_CHARS - 1)).is_err());
        check_password(&"x".repeat(MIN_PASSWORD_CHARS)).unwrap();
        assert!(check_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
    }
}
