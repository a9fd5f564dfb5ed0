//! Git repositories to run pipelines from: commits are written as exact trees (no index,
//! no working tree) with a clock that advances a minute per commit, so ids and times are
//! reproducible; `HEAD` is `refs/heads/main`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use git2::{Oid, Repository, Signature, Time};

pub const BLOB: i32 = 0o100644;
pub const EXEC: i32 = 0o100755;
pub const LINK: i32 = 0o120000;

/// A file set: path → (mode, contents).
pub type Files = BTreeMap<String, (i32, Vec<u8>)>;

/// Plain files with these texts.
pub fn files(entries: &[(&str, &str)]) -> Files {
    entries
        .iter()
        .map(|(p, c)| (p.to_string(), (BLOB, c.as_bytes().to_vec())))
        .collect()
}

/// A repository standing in for the forge's copy (or a developer's clone).
pub struct GitRepo {
    _dir: Option<tempfile::TempDir>,
    pub path: PathBuf,
    pub repo: Repository,
    clock: i64,
    author: (String, String),
}

impl GitRepo {
    /// With a working tree, in a temp dir of its own.
    pub fn new() -> GitRepo {
        let dir = tempfile::tempdir().unwrap();
        let mut git = GitRepo::init(&dir.path().join("forge"));
        git._dir = Some(dir);
        git
    }

    /// Bare, in a temp dir of its own.
    pub fn bare() -> GitRepo {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("forge.git");
        let mut git = GitRepo::wrap(&path, Repository::init_bare(&path).unwrap());
        git._dir = Some(dir);
        git
    }

    /// With a working tree, at `path` (which the caller cleans up).
    pub fn init(path: &Path) -> GitRepo {
        GitRepo::wrap(path, Repository::init(path).unwrap())
    }

    fn wrap(path: &Path, repo: Repository) -> GitRepo {
        repo.set_head("refs/heads/main").unwrap();
        GitRepo {
            _dir: None,
            path: path.to_path_buf(),
            repo,
            clock: 1_700_000_000,
            author: ("Dev".into(), "dev@example.com".into()),
        }
    }

    /// Who the following commits are by (default: Dev).
    pub fn with_author(mut self, name: &str, email: &str) -> GitRepo {
        self.author = (name.into(), email.into());
        self
    }

    pub fn url(&self) -> String {
        self.path.to_str().unwrap().to_owned()
    }

    /// Commits exactly `files` (path → text) with `parents` and points `refname` at it.
    pub fn commit(
        &mut self,
        refname: &str,
        parents: &[Oid],
        files: &[(&str, &str)],
        message: &str,
    ) -> Oid {
        self.commit_files(refname, parents, &self::files(files), message)
    }

    /// [`GitRepo::commit`] with file modes: executables, symbolic links.
    pub fn commit_files(
        &mut self,
        refname: &str,
        parents: &[Oid],
        files: &Files,
        message: &str,
    ) -> Oid {
        let tree = self.tree(files, "");
        let tree = self.repo.find_tree(tree).unwrap();
        self.clock += 60;
        let sig = self.signature(&self.author.0, &self.author.1);
        let parents: Vec<_> = parents
            .iter()
            .map(|p| self.repo.find_commit(*p).unwrap())
            .collect();
        let parents: Vec<_> = parents.iter().collect();
        let oid = self
            .repo
            .commit(None, &sig, &sig, message, &tree, &parents)
            .unwrap();
        self.repo.reference(refname, oid, true, message).unwrap();
        oid
    }

    /// An annotated tag `name` on `target`.
    pub fn tag(&self, name: &str, target: Oid) -> Oid {
        let sig = self.signature("Rel", "rel@example.com");
        let object = self.repo.find_object(target, None).unwrap();
        self.repo.tag(name, &object, &sig, "release", true).unwrap()
    }

    fn signature(&self, name: &str, email: &str) -> Signature<'static> {
        Signature::new(name, email, &Time::new(self.clock, 0)).unwrap()
    }

    fn tree(&self, files: &Files, prefix: &str) -> Oid {
        let mut builder = self.repo.treebuilder(None).unwrap();
        let mut subdirs = BTreeSet::new();
        for (path, (mode, contents)) in files {
            let Some(rest) = path.strip_prefix(prefix) else {
                continue;
            };
            match rest.split_once('/') {
                None => {
                    let blob = self.repo.blob(contents).unwrap();
                    builder.insert(rest, blob, *mode).unwrap();
                }
                Some((dir, _)) => {
                    subdirs.insert(dir.to_owned());
                }
            }
        }
        for dir in subdirs {
            let sub = self.tree(files, &format!("{prefix}{dir}/"));
            builder.insert(&dir, sub, 0o040000).unwrap();
        }
        builder.write().unwrap()
    }
}

/// A repository at `path` with `files` committed on `main`; the commit id.
pub fn commit(path: &Path, files: &[(&str, &str)]) -> String {
    GitRepo::init(path)
        .commit("refs/heads/main", &[], files, "first")
        .to_string()
}

/// The git command line in `dir` (as a developer would push), asserting success.
pub fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.name=Dev", "-c", "user.email=dev@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
