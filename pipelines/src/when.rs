//! Glob filters for branches, tags and paths.

use globset::{Glob, GlobBuilder};

use crate::model::Filter;

/// `*` does not cross `/` (so `release/*` does not match `release/a/b`); `**` does.
fn glob(pattern: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(pattern).literal_separator(true).build()
}

pub(crate) fn check_glob(pattern: &str) -> Result<(), String> {
    glob(pattern).map(|_| ()).map_err(|e| e.kind().to_string())
}

/// Checks a branch or tag pattern as the server's environment rules use them (same
/// syntax as `when` filters): `Err` says why it is not a pattern.
pub fn check_ref_pattern(pattern: &str) -> Result<(), String> {
    check_glob(pattern)
}

/// Whether a branch or tag name matches a pattern (`*` stops at `/`, `**` does not).
pub fn ref_matches(pattern: &str, name: &str) -> bool {
    glob_matches(pattern, name)
}

fn glob_matches(pattern: &str, text: &str) -> bool {
    // Patterns were validated by `parse`; a pattern that still fails matches nothing.
    glob(pattern).is_ok_and(|g| g.compile_matcher().is_match(text))
}

/// Why a value was rejected by a filter, or `None` if it passes.
pub(crate) fn filter_rejects(filter: &Filter, value: &str) -> Option<String> {
    if !filter.include.is_empty() && !filter.include.iter().any(|p| glob_matches(p, value)) {
        return Some(format!(
            "`{value}` does not match {}",
            filter.include.join(", ")
        ));
    }
    if let Some(p) = filter.exclude.iter().find(|p| glob_matches(p, value)) {
        return Some(format!("`{value}` is excluded by {p}"));
    }
    None
}

/// True if any changed path passes the filter; unknown changes (`None`) always pass.
pub(crate) fn paths_match(filter: &Filter, changed: Option<&[String]>) -> bool {
    match changed {
        None => true,
        Some(paths) => paths.iter().any(|p| filter_rejects(filter, p).is_none()),
    }
}

pub(crate) fn describe(filter: &Filter) -> String {
    let mut s = if filter.include.is_empty() {
        "**".to_string()
    } else {
        filter.include.join(", ")
    };
    if !filter.exclude.is_empty() {
        s.push_str(&format!(" (excluding {})", filter.exclude.join(", ")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(include: &[&str], exclude: &[&str]) -> Filter {
        Filter {
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn branch_globs() {
        let filter = f(&["main", "release/*"], &[]);
        assert_eq!(filter_rejects(&filter, "main"), None);
        assert_eq!(filter_rejects(&filter, "release/1.0"), None);
        assert_eq!(
            filter_rejects(&filter, "release/1.0/x").as_deref(),
            Some("`release/1.0/x` does not match main, release/*")
        );
        let filter = f(&[], &["wip/**"]);
        assert_eq!(filter_rejects(&filter, "main"), None);
        assert!(filter_rejects(&filter, "wip/a/b").is_some());
    }

    #[test]
    fn paths() {
        let filter = f(&["src/**"], &["src/**/*.md"]);
        let changed = |ps: &[&str]| ps.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(paths_match(&filter, None));
        assert!(paths_match(&filter, Some(&changed(&["src/a/b.rs"]))));
        assert!(!paths_match(
            &filter,
            Some(&changed(&["src/a/README.md", "docs/x"]))
        ));
        assert!(!paths_match(&filter, Some(&[])));
    }

    #[test]
    fn bad_glob() {
        assert!(check_glob("src/[").is_err());
        assert!(check_glob("src/{a,b").is_err());
        assert!(check_glob("src/**").is_ok());
    }
}
