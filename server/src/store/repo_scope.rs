//! Which repositories a machine token (and a runner registered with it) is for.
//!
//! Runners are scoped like GitLab's instance, group and project runners: every
//! repository (the default), the repositories of one owner, or named repositories. A
//! hook token is bound to exactly one repository. The lease query
//! ([`Store::lease_stage`](super::Store::lease_stage)) hands a runner only stages of
//! repositories in its scope, so a stage's secrets only ever go to runners allowed
//! for its repository.
//!
//! Stored as two nullable columns, `scope_owner` and `scope_repos` (a JSON array of
//! `owner/name`): both NULL means every repository.

use serde::{Deserialize, Serialize};

/// The repositories a token or runner may act for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RepoScope {
    /// Every repository.
    #[default]
    All,
    /// The repositories whose name starts with `owner/`.
    Owner(String),
    /// These repositories (`owner/name`), at least one.
    Repos(Vec<String>),
}

impl RepoScope {
    /// Whether the repository `name` (`owner/name`) is in scope.
    pub fn allows(&self, name: &str) -> bool {
        match self {
            RepoScope::All => true,
            RepoScope::Owner(owner) => name
                .split_once('/')
                .is_some_and(|(o, _)| o == owner.as_str()),
            RepoScope::Repos(repos) => repos.iter().any(|r| r == name),
        }
    }

    /// The `scope_owner` column.
    pub(crate) fn owner_column(&self) -> Option<&str> {
        match self {
            RepoScope::Owner(o) => Some(o),
            _ => None,
        }
    }

    /// The `scope_repos` column (a JSON array).
    pub(crate) fn repos_column(&self) -> Option<String> {
        match self {
            RepoScope::Repos(r) => Some(super::row::json_text(r)),
            _ => None,
        }
    }

    /// Back from the two columns.
    pub(crate) fn from_columns(owner: Option<String>, repos: Option<Vec<String>>) -> Self {
        match (owner, repos) {
            (Some(o), _) => RepoScope::Owner(o),
            (None, Some(r)) => RepoScope::Repos(r),
            (None, None) => RepoScope::All,
        }
    }
}

impl std::fmt::Display for RepoScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RepoScope::All => f.write_str("all repositories"),
            RepoScope::Owner(o) => write!(f, "the repositories of {o}"),
            RepoScope::Repos(r) => write!(f, "{}", r.join(", ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching() {
        assert!(RepoScope::All.allows("a/b"));
        let team = RepoScope::Owner("team".into());
        assert!(team.allows("team/app"));
        assert!(!team.allows("teammate/app"));
        assert!(!team.allows("other/team"));
        let named = RepoScope::Repos(vec!["a/b".into(), "c/d".into()]);
        assert!(named.allows("c/d"));
        assert!(!named.allows("a/bc"));
    }

    #[test]
    fn columns_round_trip() {
        for s in [
            RepoScope::All,
            RepoScope::Owner("x".into()),
            RepoScope::Repos(vec!["a/b".into()]),
        ] {
            let repos = s
                .repos_column()
                .map(|j| serde_json::from_str(&j).expect("json"));
            let back = RepoScope::from_columns(s.owner_column().map(str::to_owned), repos);
            assert_eq!(back, s);
        }
    }
}
