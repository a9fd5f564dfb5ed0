//! Cases: the workspace from a git repository or a directory.

use std::sync::Arc;

use super::harness::{run, stage};
use crate::{Backend, Source, Status};

fn commit_file(
    repo: &git2::Repository,
    parent: Option<&git2::Commit<'_>>,
    files: &[(&str, &str)],
    update_ref: Option<&str>,
) -> git2::Oid {
    let sig = git2::Signature::now("Slipway Test", "test@example.com").unwrap();
    let mut builder = repo.treebuilder(None).unwrap();
    for (name, content) in files {
        let blob = repo.blob(content.as_bytes()).unwrap();
        builder.insert(name, blob, 0o100644).unwrap();
    }
    let tree = repo.find_tree(builder.write().unwrap()).unwrap();
    let parents: Vec<&git2::Commit<'_>> = parent.into_iter().collect();
    repo.commit(update_ref, &sig, &sig, "test commit", &tree, &parents)
        .unwrap()
}

/// The workspace is a clone of a git repository at the requested commit (a sha, a
/// revision like `HEAD`, or a commit only reachable from a non-branch ref); a
/// missing commit is a clear, non-retryable error.
pub async fn git_source(backend: Arc<dyn Backend>, image: Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let repo = git2::Repository::init(dir.path()).unwrap();
    let first = commit_file(&repo, None, &[("a.txt", "one\n")], Some("HEAD"));
    let first_commit = repo.find_commit(first).unwrap();
    let second = commit_file(
        &repo,
        Some(&first_commit),
        &[("a.txt", "two\n")],
        Some("HEAD"),
    );
    let pr = commit_file(
        &repo,
        Some(&first_commit),
        &[("a.txt", "pull\n")],
        Some("refs/pull/1/head"),
    );
    let url = dir.path().to_str().unwrap().to_owned();

    for (commit, want) in [
        (first.to_string(), "one"),
        ("HEAD".to_string(), "two"),
        (second.to_string()[..12].to_string(), "two"),
        (pr.to_string(), "pull"),
    ] {
        let mut spec = stage("git", &image, &["cat a.txt"]);
        spec.source = Source::Git {
            url: url.clone(),
            commit: commit.clone(),
        };
        let r = run(&*backend, &spec).await;
        assert_eq!(
            r.outcome.status,
            Status::Success,
            "{commit}: {:?}",
            r.outcome
        );
        assert_eq!(r.stdout(0), vec![want], "checkout of {commit}");
    }

    let missing = "0123456789abcdef0123456789abcdef01234567";
    let mut spec = stage("git-missing", &image, &["true"]);
    spec.source = Source::Git {
        url,
        commit: missing.into(),
    };
    let r = run(&*backend, &spec).await;
    match &r.outcome.status {
        Status::Error(msg) => assert!(msg.contains(missing), "{msg}"),
        other => panic!("expected an error for a missing commit, got {other:?}"),
    }
    assert_eq!(r.statuses(), vec![Status::Skipped]);
}

/// A directory source is copied with permissions and symlinks (as symlinks), and
/// `.git` is included.
pub async fn directory_source(backend: Arc<dyn Backend>, image: Option<String>) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("bin")).unwrap();
    std::fs::create_dir_all(p.join(".git")).unwrap();
    std::fs::write(p.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
    std::fs::write(
        p.join("bin/hello.sh"),
        "#!/bin/sh\necho hello from script\n",
    )
    .unwrap();
    std::fs::set_permissions(
        p.join("bin/hello.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("bin/hello.sh", p.join("link")).unwrap();

    let mut spec = stage(
        "directory",
        &image,
        &["./bin/hello.sh\ntest -L link\n./link\ntest -f .git/HEAD"],
    );
    spec.source = Source::Directory(p.to_path_buf());
    let r = run(&*backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Success, "{:?}", r.events);
    assert_eq!(r.stdout(0), vec!["hello from script", "hello from script"]);
}
