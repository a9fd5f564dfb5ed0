//! Filling a workspace directory from a [`Source`], and removing it again.
//!
//! Everything here is blocking (git2, std::fs); async callers wrap it in
//! `spawn_blocking`. Other backends reuse it: Docker/Kubernetes prepare the same
//! directory on the runner host and copy it into their volume.

use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use git2::build::{CheckoutBuilder, CloneLocal, RepoBuilder};
use git2::{ErrorCode, FetchOptions, Oid, Repository};

use crate::error::{Error, Result};
use crate::spec::Source;

/// Fills `dir` (which must exist and be empty) from `source`.
pub fn prepare(source: &Source, dir: &Path) -> Result<()> {
    match source {
        Source::Empty => Ok(()),
        Source::Directory(src) => copy_dir(src, dir),
        Source::Git { url, commit } => checkout(url, commit, dir),
    }
}

/// Recursive copy that keeps permission bits (scripts stay executable) and copies
/// symlinks as symlinks. Symlinks are never followed, so a link pointing outside
/// the source tree cannot make us copy (or loop over) the rest of the disk. Sockets,
/// FIFOs and device nodes are skipped: reading a FIFO would block forever.
pub fn copy_dir(src: &Path, dst: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(src)
        .map_err(|e| Error::io(format!("reading source directory {}", src.display()), e))?;
    if !meta.is_dir() {
        return Err(Error::InvalidSpec(format!(
            "source {} is not a directory",
            src.display()
        )));
    }
    copy_tree(src, dst)
}

fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let entries =
        fs::read_dir(src).map_err(|e| Error::io(format!("listing {}", src.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("listing {}", src.display()), e))?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let meta = fs::symlink_metadata(&from)
            .map_err(|e| Error::io(format!("stat {}", from.display()), e))?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(&from)
                .map_err(|e| Error::io(format!("readlink {}", from.display()), e))?;
            symlink(&target, &to)
                .map_err(|e| Error::io(format!("creating symlink {}", to.display()), e))?;
        } else if ft.is_dir() {
            fs::create_dir(&to).map_err(|e| Error::io(format!("creating {}", to.display()), e))?;
            copy_tree(&from, &to)?;
            // Set the mode after filling it, in case it is read-only.
            fs::set_permissions(&to, meta.permissions())
                .map_err(|e| Error::io(format!("chmod {}", to.display()), e))?;
        } else if ft.is_file() {
            // `fs::copy` copies the permission bits too.
            fs::copy(&from, &to).map_err(|e| {
                Error::io(format!("copying {} to {}", from.display(), to.display()), e)
            })?;
        } else {
            tracing::debug!(path = %from.display(), "skipping special file in source directory");
        }
    }
    Ok(())
}

/// Clones `url` into `dir` and checks out `commit` detached.
///
/// Local clones copy objects instead of hard-linking them: a step runs as the same
/// user as the runner and could otherwise rewrite objects of the server's mirror.
pub fn checkout(url: &str, commit: &str, dir: &Path) -> Result<()> {
    let shown = redact_url(url);
    let mut builder = RepoBuilder::new();
    builder.clone_local(CloneLocal::NoLinks);
    // The default branch's checkout would be thrown away right after; skip it.
    let mut co = CheckoutBuilder::new();
    co.dry_run();
    builder.with_checkout(co);
    let repo = builder
        .clone(url, dir)
        .map_err(|e| Error::git(format!("clone of {shown}"), e))?;

    let oid = match resolve(&repo, commit) {
        Some(oid) => oid,
        None => {
            // Not reachable from a branch or tag (e.g. a pull-request head): fetch
            // every ref the remote has and try again.
            let mut remote = repo
                .find_remote("origin")
                .map_err(|e| Error::git("finding remote origin", e))?;
            let mut fo = FetchOptions::new();
            fo.download_tags(git2::AutotagOption::All);
            remote
                .fetch(&["+refs/*:refs/remotes/slipway-all/*"], Some(&mut fo), None)
                .map_err(|e| Error::git(format!("fetch from {shown}"), e))?;
            // A sha that no ref points at: ask for it directly (servers that allow
            // fetching reachable/any sha honour this; others simply fail).
            if resolve(&repo, commit).is_none() && Oid::from_str(commit).is_ok() {
                let _ = remote.fetch(&[commit], Some(&mut FetchOptions::new()), None);
            }
            resolve(&repo, commit).ok_or_else(|| Error::CommitNotFound {
                url: shown.clone(),
                commit: commit.to_owned(),
            })?
        }
    };
    let object = repo
        .find_object(oid, None)
        .map_err(|e| Error::git(format!("reading {commit}"), e))?;
    repo.checkout_tree(&object, Some(CheckoutBuilder::new().force()))
        .map_err(|e| Error::git(format!("checkout of {commit}"), e))?;
    repo.set_head_detached(oid)
        .map_err(|e| Error::git(format!("detaching HEAD at {commit}"), e))?;
    Ok(())
}

/// Resolves `rev` to a commit id, also trying `origin/<rev>` since a fresh clone
/// only has the default branch as a local branch.
fn resolve(repo: &Repository, rev: &str) -> Option<Oid> {
    let peel = |spec: &str| -> Option<Oid> {
        match repo.revparse_single(spec) {
            Ok(obj) => obj.peel_to_commit().ok().map(|c| c.id()),
            Err(e) if e.code() == ErrorCode::NotFound || e.code() == ErrorCode::Ambiguous => None,
            Err(_) => None,
        }
    };
    peel(rev).or_else(|| peel(&format!("origin/{rev}")))
}

/// Hides credentials in a URL (`https://user:token@host/…` → `https://***@host/…`)
/// so they never end up in an error message.
pub fn redact_url(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            return format!("{}://***@{}", &url[..scheme_end], &rest[at + 1..]);
        }
    }
    url.to_owned()
}

/// `remove_dir_all` that also copes with read-only directories (Go's module cache,
/// `chmod -R a-w` in a step): a non-root runner cannot delete entries from them.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(first) => {
            make_writable(path);
            fs::remove_dir_all(path).or_else(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    tracing::debug!(error = %first, "first removal attempt failed");
                    Err(e)
                }
            })
        }
    }
}

fn make_writable(path: &Path) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mut perms = meta.permissions();
    perms.set_mode(perms.mode() | 0o700);
    let _ = fs::set_permissions(path, perms);
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten() {
            make_writable(&entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn commit(repo: &Repository, content: &str, update_ref: Option<&str>) -> Oid {
        let sig = git2::Signature::now("t", "t@example.com").unwrap();
        let mut tb = repo.treebuilder(None).unwrap();
        tb.insert("f.txt", repo.blob(content.as_bytes()).unwrap(), 0o100644)
            .unwrap();
        let tree = repo.find_tree(tb.write().unwrap()).unwrap();
        let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        repo.commit(update_ref, &sig, &sig, "m", &tree, &parents)
            .unwrap()
    }

    #[test]
    fn checkout_is_detached_and_clean() {
        let src = tempfile::tempdir().unwrap();
        let repo = Repository::init(src.path()).unwrap();
        let first = commit(&repo, "one", Some("HEAD"));
        commit(&repo, "two", Some("HEAD"));
        let dst = tempfile::tempdir().unwrap();
        checkout(src.path().to_str().unwrap(), &first.to_string(), dst.path()).unwrap();
        let clone = Repository::open(dst.path()).unwrap();
        assert!(clone.head_detached().unwrap());
        assert_eq!(clone.head().unwrap().target(), Some(first));
        assert!(
            clone.statuses(None).unwrap().is_empty(),
            "worktree must be clean"
        );
        assert_eq!(fs::read_to_string(dst.path().join("f.txt")).unwrap(), "one");
    }

    #[test]
    fn missing_commit_is_a_clear_error() {
        let src = tempfile::tempdir().unwrap();
        let repo = Repository::init(src.path()).unwrap();
        commit(&repo, "one", Some("HEAD"));
        let dst = tempfile::tempdir().unwrap();
        let err = checkout(src.path().to_str().unwrap(), "no-such-branch", dst.path()).unwrap_err();
        assert!(matches!(err, Error::CommitNotFound { .. }), "{err}");
        assert!(err.to_string().contains("no-such-branch"));
        assert!(!err.is_retryable());
    }

    #[test]
    fn redacts_credentials() {
        assert_eq!(
            redact_url("https://user:tok@example.com/a/b.git"),
            "https://***@example.com/a/b.git"
        );
        assert_eq!(redact_url("/srv/git/repo.git"), "/srv/git/repo.git");
        assert_eq!(
            redact_url("https://example.com/a@b"),
            "https://example.com/a@b"
        );
    }

    #[test]
    fn copy_keeps_modes_and_symlinks() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        fs::create_dir(src.path().join("bin")).unwrap();
        fs::write(src.path().join("bin/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(
            src.path().join("bin/run.sh"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        symlink("/etc/hostname", src.path().join("outside")).unwrap();
        symlink("bin/run.sh", src.path().join("inside")).unwrap();
        copy_dir(src.path(), dst.path()).unwrap();
        let mode = fs::metadata(dst.path().join("bin/run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            fs::read_link(dst.path().join("outside")).unwrap(),
            Path::new("/etc/hostname")
        );
        assert_eq!(
            fs::read_link(dst.path().join("inside")).unwrap(),
            Path::new("bin/run.sh")
        );
    }

    #[test]
    fn remove_tree_handles_read_only_dirs_and_missing_paths() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ws");
        fs::create_dir_all(root.join("ro/sub")).unwrap();
        fs::write(root.join("ro/sub/f"), "x").unwrap();
        fs::set_permissions(root.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
        remove_tree(&root).unwrap();
        assert!(!root.exists());
        remove_tree(&root).unwrap();
    }
}
