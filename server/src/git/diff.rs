//! Paths changed by a push or a pull request, for `when.paths` filters.

use std::collections::BTreeSet;

use git2::{DiffOptions, Oid};

use super::{GitError, Mirror, Result, parse_sha};

impl Mirror {
    /// Paths that differ between the trees of `before` and `after` (a push's old and new
    /// tips), sorted and de-duplicated. A renamed file contributes both its old and new path,
    /// so a filter on either matches.
    ///
    /// `None` means "unknown — treat every path as changed" (as GitLab does): `before` is
    /// absent, all zeros (a new branch or tag), or not in the mirror (e.g. the branch was
    /// force-pushed from a history we never fetched). `after` must be in the mirror.
    ///
    /// Paths are `/`-separated; the rare non-UTF-8 path is converted lossily (U+FFFD), which
    /// is enough for glob filters.
    pub fn changed_paths(&self, before: Option<&str>, after: &str) -> Result<Option<Vec<String>>> {
        let after = self.commit(after)?;
        let Some(before) = before else {
            return Ok(None);
        };
        let before_oid = parse_sha(before)?;
        if before_oid.is_zero() {
            return Ok(None);
        }
        let before = match self.repo.find_object(before_oid, None) {
            Ok(object) => object.peel_to_commit()?,
            Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        self.diff_trees(before.tree_id(), after.tree_id()).map(Some)
    }

    /// Paths a pull request changes: the diff between the merge base of `base` (the target
    /// branch's tip) and `head` (the pull request's tip), and `head` — what the forge shows in
    /// "Files changed". Changes that landed on the target branch after the pull request
    /// was opened are not included. Both commits must be in the mirror (ensure both).
    ///
    /// `None` when the two histories share no commit (match everything).
    pub fn changed_paths_merge_base(&self, base: &str, head: &str) -> Result<Option<Vec<String>>> {
        let base = self.commit(base)?;
        let head = self.commit(head)?;
        let merge_base = match self.repo.merge_base(base.id(), head.id()) {
            Ok(oid) => self.repo.find_commit(oid)?,
            Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        self.diff_trees(merge_base.tree_id(), head.tree_id())
            .map(Some)
    }

    fn diff_trees(&self, old: Oid, new: Oid) -> Result<Vec<String>> {
        let old = self.repo.find_tree(old)?;
        let new = self.repo.find_tree(new)?;
        // No rename detection on purpose: without it a rename is a deletion of the old path
        // plus an addition of the new one, which is exactly "both paths changed", and it
        // avoids comparing blob contents (slow on large pushes).
        let mut options = DiffOptions::new();
        options.ignore_submodules(false);
        let diff = self
            .repo
            .diff_tree_to_tree(Some(&old), Some(&new), Some(&mut options))
            .map_err(GitError::Git)?;
        let mut paths = BTreeSet::new();
        for delta in diff.deltas() {
            for file in [delta.old_file(), delta.new_file()] {
                if let Some(path) = file.path_bytes() {
                    paths.insert(String::from_utf8_lossy(path).into_owned());
                }
            }
        }
        Ok(paths.into_iter().collect())
    }
}
