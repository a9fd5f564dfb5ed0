//! The allow-list, `.slipway/scan-allow` in the workspace: findings of the built-in
//! secret scan that are known and accepted (test fixtures, documented example keys).
//!
//! One entry per line; blank lines and lines starting with `#` are ignored, and so is
//! anything after ` #` on a line. An entry is one of:
//!
//! ```text
//! # a path glob, relative to the workspace (same rules as artifact globs: `*` stays in
//! # one directory, `**` crosses them, a directory covers everything below it)
//! tests/fixtures/
//! docs/**/*.md
//! # one line of one file
//! src/config.rs:3
//! # a rule everywhere (rule ids: github-token, gitlab-token, slack-token,
//! # stripe-secret-key, google-api-key, aws-access-key-id, aws-secret-access-key,
//! # private-key, generic-secret, high-entropy-string)
//! rule:high-entropy-string
//! ```
//!
//! The file applies to the built-in scan only: a SARIF report is the scanner's own
//! verdict, configured in that scanner.

use std::path::Path;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};
use crate::finding::Finding;

/// Where the allow-list lives, relative to the workspace.
pub const ALLOW_FILE: &str = ".slipway/scan-allow";
/// A longer file is refused rather than read without bound.
const MAX_BYTES: u64 = 1024 * 1024;

/// The parsed allow-list.
#[derive(Debug, Default)]
pub struct AllowList {
    globs: Option<GlobSet>,
    lines: Vec<(String, u32)>,
    rules: Vec<String>,
}

impl AllowList {
    /// Reads `.slipway/scan-allow` under `root`; no file means an empty list. A
    /// malformed entry is an error naming the file and line.
    pub fn load(root: &Path) -> Result<AllowList> {
        let path = root.join(ALLOW_FILE);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(AllowList::default()),
            Err(e) => return Err(Error::io(format!("reading {ALLOW_FILE}"), e)),
        };
        if !meta.is_file() {
            return Err(bad(0, "must be a regular file (symlinks are not followed)"));
        }
        if meta.len() > MAX_BYTES {
            return Err(bad(0, &format!("larger than {MAX_BYTES} bytes")));
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::io(format!("reading {ALLOW_FILE}"), e))?;
        AllowList::parse(&text)
    }

    pub fn parse(text: &str) -> Result<AllowList> {
        let mut list = AllowList::default();
        let mut globs = GlobSetBuilder::new();
        let mut any_glob = false;
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let entry = match raw.find(" #") {
                Some(at) => &raw[..at],
                None => raw,
            }
            .trim();
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            if let Some(rule) = entry.strip_prefix("rule:") {
                let rule = rule.trim();
                if rule.is_empty() {
                    return Err(bad(n, "`rule:` needs a rule id"));
                }
                list.rules.push(rule.to_owned());
                continue;
            }
            let entry = entry.trim_start_matches("./");
            if let Some((path, line)) = entry.rsplit_once(':')
                && !line.is_empty()
                && line.bytes().all(|b| b.is_ascii_digit())
            {
                let line: u32 = line
                    .parse()
                    .ok()
                    .filter(|l| *l > 0)
                    .ok_or_else(|| bad(n, "line numbers start at 1"))?;
                if path.is_empty() {
                    return Err(bad(n, "`path:line` needs a path"));
                }
                list.lines.push((path.to_owned(), line));
                continue;
            }
            crate::artifacts::check_glob(entry).map_err(|e| bad(n, &e.to_string()))?;
            let glob = GlobBuilder::new(entry.trim_end_matches('/'))
                .literal_separator(true)
                .build()
                .map_err(|e| bad(n, &e.to_string()))?;
            globs.add(glob);
            any_glob = true;
        }
        if any_glob {
            list.globs = Some(globs.build().map_err(|e| bad(0, &e.to_string()))?);
        }
        Ok(list)
    }

    /// Whether the list accepts `finding`.
    pub fn allows(&self, finding: &Finding) -> bool {
        if self.rules.contains(&finding.rule) {
            return true;
        }
        let Some(path) = &finding.path else {
            return false;
        };
        if let Some(line) = finding.line
            && self.lines.iter().any(|(p, l)| p == path && *l == line)
        {
            return true;
        }
        // A glob naming a directory covers everything below it.
        self.globs.as_ref().is_some_and(|set| {
            let mut prefix = Some(path.as_str());
            while let Some(p) = prefix {
                if set.is_match(p) {
                    return true;
                }
                prefix = p.rsplit_once('/').map(|(dir, _)| dir);
            }
            false
        })
    }
}

fn bad(line: usize, reason: &str) -> Error {
    Error::Scan {
        path: if line == 0 {
            ALLOW_FILE.to_owned()
        } else {
            format!("{ALLOW_FILE}:{line}")
        },
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Severity;

    fn finding(rule: &str, path: &str, line: u32) -> Finding {
        Finding {
            tool: "slipway-secrets".into(),
            rule: rule.into(),
            severity: Severity::High,
            path: Some(path.into()),
            line: Some(line),
            message: "m".into(),
        }
    }

    #[test]
    fn entries_of_each_kind() {
        let list = AllowList::parse(
            "# accepted\n\ntests/fixtures/ # fixture keys\ndocs/**/*.md\n./src/config.rs:3\nrule:high-entropy-string\n",
        )
        .unwrap();
        assert!(list.allows(&finding("github-token", "tests/fixtures/a/b.txt", 1)));
        assert!(list.allows(&finding("github-token", "docs/x/y/z.md", 9)));
        assert!(list.allows(&finding("github-token", "src/config.rs", 3)));
        assert!(!list.allows(&finding("github-token", "src/config.rs", 4)));
        assert!(list.allows(&finding("high-entropy-string", "src/main.rs", 4)));
        assert!(!list.allows(&finding("github-token", "src/main.rs", 4)));
        assert!(!list.allows(&finding("github-token", "tests/fixtures_more/x", 1)));
    }

    #[test]
    fn bad_entries_name_their_line() {
        for (text, line) in [
            ("ok\nrule:\n", 2),
            ("src/a.rs:0\n", 1),
            ("# c\n\n../outside\n", 3),
            ("/etc/passwd\n", 1),
            ("a[\n", 1),
        ] {
            let err = AllowList::parse(text).unwrap_err().to_string();
            assert!(
                err.contains(&format!("{ALLOW_FILE}:{line}")),
                "{text:?}: {err}"
            );
        }
    }
}
