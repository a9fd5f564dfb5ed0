//! Which repositories a new machine token is for: checked once here for both the API
//! (`POST /api/tokens`) and `slipway token create`, so both refuse the same things.
//!
//! A hook token is bound to exactly one repository (a leaked one cannot start runs
//! anywhere else). A runner token is for every repository (the default), for one owner
//! (`--owner`), or for named repositories (`--repo`, repeatable). An admin token is
//! for everything.

use super::{Error, Result};
use crate::store::{RepoScope, TokenScope};

/// The repository scope of a new `scope` token limited by `owner` and `repos`.
pub fn for_new_token(
    scope: TokenScope,
    owner: Option<&str>,
    repos: &[String],
) -> Result<RepoScope> {
    let invalid = |m: &str| Err(Error::Invalid(m.to_string()));
    for repo in repos {
        super::repos::validate_reference(repo)?;
    }
    if let Some(owner) = owner {
        // An owner is what precedes a repository's name (a GitLab group may have
        // subgroups): same rules.
        super::repos::validate_reference(&format!("{owner}/x")).map_err(|_| {
            Error::Invalid(format!(
                "owner {owner:?} is not valid: letters, digits, `.`, `_` and `-` only \
                 (`/` between a GitLab group and its subgroups)"
            ))
        })?;
    }
    match scope {
        TokenScope::Admin if owner.is_some() || !repos.is_empty() => {
            invalid("an admin token is for every repository: drop --owner and --repo")
        }
        TokenScope::Admin => Ok(RepoScope::All),
        TokenScope::Hook if owner.is_some() => invalid(
            "a hook token is bound to one repository: use --repo owner/name instead of --owner",
        ),
        TokenScope::Hook => match repos {
            [one] => Ok(RepoScope::Repos(vec![one.clone()])),
            [] => invalid(
                "a hook token must name the one repository it may trigger: --repo owner/name",
            ),
            _ => invalid("a hook token is bound to exactly one repository: give --repo once"),
        },
        TokenScope::Runner => match (owner, repos) {
            (Some(_), [_, ..]) => {
                invalid("a runner token is scoped by --owner or by --repo, not both")
            }
            (Some(o), []) => Ok(RepoScope::Owner(o.to_string())),
            (None, []) => Ok(RepoScope::All),
            (None, named) => {
                let mut named = named.to_vec();
                named.sort();
                named.dedup();
                Ok(RepoScope::Repos(named))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repos(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn hook_tokens_name_exactly_one_repository() {
        let err = for_new_token(TokenScope::Hook, None, &[]).unwrap_err();
        assert!(err.to_string().contains("--repo owner/name"), "{err}");
        assert!(for_new_token(TokenScope::Hook, None, &repos(&["a/b", "c/d"])).is_err());
        assert!(for_new_token(TokenScope::Hook, Some("a"), &[]).is_err());
        assert_eq!(
            for_new_token(TokenScope::Hook, None, &repos(&["a/b"])).unwrap(),
            RepoScope::Repos(repos(&["a/b"]))
        );
    }

    #[test]
    fn runner_tokens_are_all_owner_or_named() {
        assert_eq!(
            for_new_token(TokenScope::Runner, None, &[]).unwrap(),
            RepoScope::All
        );
        assert_eq!(
            for_new_token(TokenScope::Runner, Some("team"), &[]).unwrap(),
            RepoScope::Owner("team".into())
        );
        assert_eq!(
            for_new_token(TokenScope::Runner, None, &repos(&["c/d", "a/b", "c/d"])).unwrap(),
            RepoScope::Repos(repos(&["a/b", "c/d"]))
        );
        assert!(for_new_token(TokenScope::Runner, Some("t"), &repos(&["a/b"])).is_err());
        // A GitLab group with subgroups is an owner too (its runners serve the subgroups).
        assert_eq!(
            for_new_token(TokenScope::Runner, Some("g1/g2"), &[]).unwrap(),
            RepoScope::Owner("g1/g2".into())
        );
        assert!(for_new_token(TokenScope::Runner, Some("t x"), &[]).is_err());
        assert!(for_new_token(TokenScope::Runner, Some("t/../x"), &[]).is_err());
        assert!(for_new_token(TokenScope::Runner, None, &repos(&["nope"])).is_err());
    }

    #[test]
    fn admin_tokens_are_for_everything() {
        assert!(for_new_token(TokenScope::Admin, Some("t"), &[]).is_err());
        assert_eq!(
            for_new_token(TokenScope::Admin, None, &[]).unwrap(),
            RepoScope::All
        );
    }
}
