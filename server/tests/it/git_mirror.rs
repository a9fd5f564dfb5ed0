//! Bare mirrors against real repositories: a "forge" repository created with git2 in a
//! temporary directory, mirrored through a local path or a `file://` URL.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use git2::{Oid, Repository};
use server::git::{GitError, Mirror};

use crate::support::git::{BLOB, EXEC, Files, GitRepo, LINK, files};

fn mirror_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mirrors").join("17.git");
    (dir, path)
}

fn refs(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn first_files() -> Files {
    let mut f = files(&[
        ("README.md", "# demo\n"),
        ("src/lib.rs", "pub fn a() {}\n"),
        ("docs/old.md", "old doc\n"),
        (".slipway.yml", "stages: {root: 1}\n"),
        (".slipway/deploy.yml", "stages: {deploy: 1}\n"),
        (".slipway/lint.yaml", "stages: {lint: 1}\n"),
        (".slipway/nested/ignored.yml", "stages: {nested: 1}\n"),
        (".slipway/notes.txt", "not yaml\n"),
        (".slipway/.hidden.yml", "stages: {hidden: 1}\n"),
        ("sub/.slipway.yml", "stages: {sub: 1}\n"),
    ]);
    f.insert("run.sh".into(), (EXEC, b"#!/bin/sh\necho hi\n".to_vec()));
    f.insert("link".into(), (LINK, b"README.md".to_vec()));
    f
}

/// main: c1 → c2 (edit, rename, pipeline change) → c5; feature: c1 → c3 → c4;
/// tag v1 (annotated) on c2; refs/pull/7/head = c4.
struct History {
    forge: GitRepo,
    c1: Oid,
    c2: Oid,
    c3: Oid,
    c4: Oid,
    c5: Oid,
    tag_v1: Oid,
}

fn history() -> History {
    let mut forge = GitRepo::new();
    let f1 = first_files();
    let c1 = forge.commit_files("refs/heads/main", &[], &f1, "c1");

    let mut f2 = f1.clone();
    f2.insert(
        "src/lib.rs".into(),
        (BLOB, b"pub fn a() { b() }\n".to_vec()),
    );
    let doc = f2.remove("docs/old.md").unwrap();
    f2.insert("docs/new.md".into(), doc);
    f2.insert(
        ".slipway.yml".into(),
        (BLOB, b"stages: {root: 2}\n".to_vec()),
    );
    let c2 = forge.commit_files("refs/heads/main", &[c1], &f2, "c2");
    let tag_v1 = forge.tag("v1", c2);

    let mut f3 = f1.clone();
    f3.insert("app/x.rs".into(), (BLOB, b"x\n".to_vec()));
    let c3 = forge.commit_files("refs/heads/feature", &[c1], &f3, "c3");
    let mut f4 = f3.clone();
    f4.insert("app/y.rs".into(), (BLOB, b"y\n".to_vec()));
    let c4 = forge.commit_files("refs/heads/feature", &[c3], &f4, "c4");
    forge
        .repo
        .reference("refs/pull/7/head", c4, true, "pr")
        .unwrap();

    let mut f5 = f2.clone();
    f5.insert("README.md".into(), (BLOB, b"# demo, later\n".to_vec()));
    let c5 = forge.commit_files("refs/heads/main", &[c2], &f5, "c5");

    History {
        forge,
        c1,
        c2,
        c3,
        c4,
        c5,
        tag_v1,
    }
}

#[test]
fn open_or_init_is_idempotent_and_follows_url_changes() {
    let forge = GitRepo::new();
    let (_tmp, dir) = mirror_dir();
    let m = Mirror::open_or_init(&dir, &forge.url()).unwrap();
    assert!(m.repository().is_bare());
    assert_eq!(m.dir(), dir);
    drop(m);

    let m = Mirror::open_or_init(&dir, &forge.url()).unwrap();
    let remote = m.repository().find_remote("origin").unwrap();
    assert_eq!(remote.url().unwrap(), forge.url());
    assert_eq!(m.repository().remotes().unwrap().len(), 1);
    drop(remote);
    drop(m);

    // The repository's clone URL changed: the remote follows.
    let moved = format!("file://{}", forge.url());
    let m = Mirror::open_or_init(&dir, &moved).unwrap();
    assert_eq!(
        m.repository().find_remote("origin").unwrap().url().unwrap(),
        moved
    );

    // Cheap re-open without a URL, e.g. inside spawn_blocking.
    let reopened = Mirror::open(&dir).unwrap();
    assert_eq!(reopened.dir(), dir);

    // A non-empty directory that is not a repository is never clobbered.
    let (_tmp2, other) = mirror_dir();
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("precious.txt"), "keep me").unwrap();
    let err = Mirror::open_or_init(&other, &forge.url()).unwrap_err();
    assert!(matches!(err, GitError::Open { .. }), "{err}");
    assert!(
        err.to_string().contains(&other.display().to_string()),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(other.join("precious.txt")).unwrap(),
        "keep me"
    );
}

#[test]
fn mirror_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Mirror>();
    let h = history();
    let (_tmp, dir) = mirror_dir();
    let m = Mirror::open_or_init(&dir, &h.forge.url()).unwrap();
    let c2 = h.c2.to_string();
    let found = std::thread::spawn(move || {
        m.fetch(&refs(&["refs/heads/main"])).unwrap();
        m.has_commit(&c2).unwrap()
    })
    .join()
    .unwrap();
    assert!(found);
}

#[test]
fn fetch_is_incremental_and_force_updates() {
    let mut forge = GitRepo::new();
    let f1 = first_files();
    let c1 = forge.commit_files("refs/heads/main", &[], &f1, "c1");
    let (_tmp, dir) = mirror_dir();
    // Through a file:// URL this time.
    let m = Mirror::open_or_init(&dir, &format!("file://{}", forge.url())).unwrap();

    m.fetch(&refs(&["refs/heads/main"])).unwrap();
    assert_eq!(
        m.resolve_ref("refs/heads/main").unwrap(),
        Some(c1.to_string())
    );
    let objects_after_first = count_objects(m.repository());

    let mut f2 = f1.clone();
    f2.insert("new.txt".into(), (BLOB, b"new\n".to_vec()));
    let c2 = forge.commit_files("refs/heads/main", &[c1], &f2, "c2");
    assert!(!m.has_commit(&c2.to_string()).unwrap());

    m.fetch(&refs(&["refs/heads/main"])).unwrap();
    assert_eq!(
        m.resolve_ref("refs/heads/main").unwrap(),
        Some(c2.to_string())
    );
    assert!(m.has_commit(&c1.to_string()).unwrap(), "old commits remain");
    assert!(m.has_commit(&c2.to_string()).unwrap());
    // The second fetch brought only what was new: one commit, its root tree, one blob.
    assert_eq!(count_objects(m.repository()), objects_after_first + 3);

    // Force-push: main rewritten to a commit that does not descend from c2.
    let mut f3 = f1.clone();
    f3.insert("rewritten.txt".into(), (BLOB, b"r\n".to_vec()));
    let c3 = forge.commit_files("refs/heads/main", &[c1], &f3, "c3 (force-pushed)");
    m.fetch(&refs(&["refs/heads/main"])).unwrap();
    assert_eq!(
        m.resolve_ref("refs/heads/main").unwrap(),
        Some(c3.to_string())
    );
    assert!(
        m.has_commit(&c2.to_string()).unwrap(),
        "objects are never dropped"
    );

    // Nothing to fetch is fine.
    m.fetch(&[]).unwrap();
}

/// Objects reachable from any ref or stored at all, counted through the object database.
fn count_objects(repo: &Repository) -> usize {
    let mut n = 0;
    repo.odb()
        .unwrap()
        .foreach(|_| {
            n += 1;
            true
        })
        .unwrap();
    n
}

#[test]
fn fetch_tags_and_review_refs_into_the_same_names() {
    let h = history();
    let (_tmp, dir) = mirror_dir();
    let m = Mirror::open_or_init(&dir, &h.forge.url()).unwrap();

    m.fetch(&refs(&["refs/heads/main"])).unwrap();
    // Tags are not followed automatically.
    assert_eq!(m.resolve_ref("refs/tags/v1").unwrap(), None);

    m.fetch(&refs(&[
        "refs/tags/v1",
        "refs/pull/7/head",
        "refs/heads/feature",
    ]))
    .unwrap();
    assert_eq!(
        m.resolve_ref("refs/tags/v1").unwrap(),
        Some(h.c2.to_string())
    );
    assert_eq!(
        m.resolve_ref("refs/pull/7/head").unwrap(),
        Some(h.c4.to_string())
    );
    assert_eq!(
        m.resolve_ref("refs/heads/feature").unwrap(),
        Some(h.c4.to_string())
    );
    // An annotated tag's object id (what GitLab sends as `after`) peels to its commit.
    assert!(m.has_commit(&h.tag_v1.to_string()).unwrap());
    assert_eq!(
        m.peel_to_commit(&h.tag_v1.to_string()).unwrap(),
        h.c2.to_string()
    );
    assert_eq!(
        m.pipeline_files(&h.tag_v1.to_string()).unwrap(),
        m.pipeline_files(&h.c2.to_string()).unwrap()
    );

    // GitLab's merge request refs, too.
    h.forge
        .repo
        .reference("refs/merge-requests/3/head", h.c3, true, "mr")
        .unwrap();
    m.fetch(&refs(&["refs/merge-requests/3/head"])).unwrap();
    assert_eq!(
        m.resolve_ref("refs/merge-requests/3/head").unwrap(),
        Some(h.c3.to_string())
    );
}

#[test]
fn ref_names_from_payloads_are_validated() {
    let h = history();
    let (_tmp, dir) = mirror_dir();
    let m = Mirror::open_or_init(&dir, &h.forge.url()).unwrap();
    for bad in [
        "main",
        "refs/heads/x:refs/heads/main",
        "+refs/heads/main",
        "refs/heads/*",
        "refs/heads/../x",
    ] {
        let err = m.fetch(&refs(&[bad])).unwrap_err();
        assert!(matches!(err, GitError::InvalidRef(_)), "{bad}: {err}");
    }
    assert!(matches!(
        m.has_commit("abc").unwrap_err(),
        GitError::InvalidSha(_)
    ));
}

#[test]
fn ensure_commit_fetches_until_found_or_says_what_it_tried() {
    let h = history();
    let (_tmp, dir) = mirror_dir();
    let m = Mirror::open_or_init(&dir, &h.forge.url()).unwrap();

    // c4 is only on the feature branch: main is tried first, then feature.
    m.ensure_commit(
        &h.c4.to_string(),
        &refs(&["refs/heads/main", "refs/heads/feature"]),
    )
    .unwrap();
    assert!(m.has_commit(&h.c4.to_string()).unwrap());
    assert!(
        m.has_commit(&h.c5.to_string()).unwrap(),
        "main was fetched on the way"
    );

    // Already there: no fetch needed, so no refs needed either.
    m.ensure_commit(&h.c1.to_string(), &[]).unwrap();

    let missing = "deadbeefdeadbeefdeadbeefdeadbeefdeadbeef";
    let err = m
        .ensure_commit(missing, &refs(&["refs/heads/main", "refs/heads/gone"]))
        .unwrap_err();
    assert!(matches!(err, GitError::CommitNotFound { .. }));
    assert!(!err.is_retryable());
    assert_eq!(
        err.to_string(),
        format!(
            "commit {missing} not found after fetching refs/heads/main, refs/heads/gone from {}",
            h.forge.url()
        )
    );

    let err = m.ensure_commit(missing, &[]).unwrap_err();
    assert!(err.to_string().contains("after fetching no refs"), "{err}");
}

#[test]
fn fetching_from_an_unreachable_remote_is_a_retryable_fetch_error() {
    let (_tmp, dir) = mirror_dir();
    let gone = dir.parent().unwrap().join("no-such-forge");
    let m = Mirror::open_or_init(&dir, gone.to_str().unwrap()).unwrap();
    let err = m.fetch(&refs(&["refs/heads/main"])).unwrap_err();
    assert!(matches!(err, GitError::Fetch { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("fetching refs/heads/main from "),
        "{err}"
    );
    assert!(err.is_retryable(), "{err} {err:?}");
}

#[test]
fn pipeline_files_come_from_the_commit_tree() {
    let mut h = history();
    let (_tmp, dir) = mirror_dir();
    let m = Mirror::open_or_init(&dir, &h.forge.url()).unwrap();
    m.fetch(&refs(&["refs/heads/main"])).unwrap();

    // Later edits in the forge's working tree, committed or not, do not change what an
    // older commit says.
    std::fs::create_dir_all(h.forge.path.join(".slipway")).unwrap();
    std::fs::write(h.forge.path.join(".slipway.yml"), "EDITED IN WORKING TREE").unwrap();
    std::fs::write(h.forge.path.join(".slipway/extra.yml"), "EDITED").unwrap();
    let mut later = first_files();
    later.insert(
        ".slipway.yml".into(),
        (BLOB, b"stages: {root: 99}\n".to_vec()),
    );
    h.forge
        .commit_files("refs/heads/main", &[h.c5], &later, "later");
    m.fetch(&refs(&["refs/heads/main"])).unwrap();

    let expected_c1 = vec![
        (
            ".slipway.yml".to_string(),
            "stages: {root: 1}\n".to_string(),
        ),
        (
            ".slipway/deploy.yml".to_string(),
            "stages: {deploy: 1}\n".to_string(),
        ),
        (
            ".slipway/lint.yaml".to_string(),
            "stages: {lint: 1}\n".to_string(),
        ),
    ];
    assert_eq!(m.pipeline_files(&h.c1.to_string()).unwrap(), expected_c1);
    let c2 = m.pipeline_files(&h.c2.to_string()).unwrap();
    assert_eq!(
        c2[0],
        (
            ".slipway.yml".to_string(),
            "stages: {root: 2}\n".to_string()
        )
    );
    assert_eq!(c2.len(), 3);

    // A commit the mirror does not have (yet).
    let unfetched = h
        .forge
        .commit_files("refs/heads/unfetched", &[], &first_files(), "new");
    let err = m.pipeline_files(&unfetched.to_string()).unwrap_err();
    assert!(matches!(err, GitError::UnknownCommit(_)), "{err}");
}

#[test]
fn pipeline_file_edge_cases() {
    let mut forge = GitRepo::new();
    let none = forge.commit_files(
        "refs/heads/none",
        &[],
        &files(&[("README.md", "x")]),
        "no pipeline",
    );

    let mut bad = files(&[(".slipway.yml", "ok: 1\n")]);
    bad.insert(
        ".slipway/bad.yml".into(),
        (BLOB, b"name: caf\xe9\n".to_vec()),
    );
    let bad = forge.commit_files("refs/heads/bad", &[], &bad, "latin-1 pipeline");

    let mut link = files(&[("ci/real.yml", "a: 1\n")]);
    link.insert(".slipway.yml".into(), (LINK, b"ci/real.yml".to_vec()));
    let link = forge.commit_files("refs/heads/link", &[], &link, "symlinked pipeline");

    let big = files(&[(
        ".slipway.yaml",
        &"#".repeat(server::git::MAX_PIPELINE_FILE_BYTES + 1),
    )]);
    let big = forge.commit_files("refs/heads/big", &[], &big, "huge pipeline");

    // Executable bits do not matter; a directory named like a pipeline file is not one.
    let mut odd = files(&[(".slipway/dir.yml/inner.yml", "x: 1\n")]);
    odd.insert(".slipway.yaml".into(), (EXEC, b"exec: 1\n".to_vec()));
    let odd = forge.commit_files("refs/heads/odd", &[], &odd, "odd");

    let (_tmp, dir) = mirror_dir();
    let m = Mirror::open_or_init(&dir, &forge.url()).unwrap();
    m.fetch(&refs(&[
        "refs/heads/none",
        "refs/heads/bad",
        "refs/heads/link",
        "refs/heads/big",
        "refs/heads/odd",
    ]))
    .unwrap();

    assert_eq!(m.pipeline_files(&none.to_string()).unwrap(), vec![]);

    let err = m.pipeline_files(&bad.to_string()).unwrap_err();
    assert!(matches!(err, GitError::PipelineFile { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "pipeline file .slipway/bad.yml at commit {bad}: is not valid UTF-8 (first invalid byte at offset 9)"
        )
    );

    let err = m.pipeline_files(&link.to_string()).unwrap_err();
    assert!(
        err.to_string().contains(".slipway.yml") && err.to_string().contains("symbolic link"),
        "{err}"
    );

    let err = m.pipeline_files(&big.to_string()).unwrap_err();
    assert!(
        err.to_string().contains(".slipway.yaml") && err.to_string().contains("limited to"),
        "{err}"
    );

    assert_eq!(
        m.pipeline_files(&odd.to_string()).unwrap(),
        vec![(".slipway.yaml".to_string(), "exec: 1\n".to_string())]
    );
}

#[test]
fn changed_paths_of_a_push() {
    let h = history();
    let (_tmp, dir) = mirror_dir();
    let m = Mirror::open_or_init(&dir, &h.forge.url()).unwrap();
    m.fetch(&refs(&["refs/heads/main", "refs/heads/feature"]))
        .unwrap();
    let (c1, c2, c4, c5) = (
        h.c1.to_string(),
        h.c2.to_string(),
        h.c4.to_string(),
        h.c5.to_string(),
    );

    // Edit + rename (both names) + pipeline change.
    assert_eq!(
        m.changed_paths(Some(&c1), &c2).unwrap(),
        Some(refs(&[
            ".slipway.yml",
            "docs/new.md",
            "docs/old.md",
            "src/lib.rs"
        ]))
    );
    // A push of several commits at once.
    assert_eq!(
        m.changed_paths(Some(&c1), &c5).unwrap(),
        Some(refs(&[
            ".slipway.yml",
            "README.md",
            "docs/new.md",
            "docs/old.md",
            "src/lib.rs"
        ]))
    );
    assert_eq!(m.changed_paths(Some(&c5), &c5).unwrap(), Some(vec![]));

    // New branch: GitHub/GitLab/Gitea send 40 zeros; a hook may send nothing.
    let zeros = "0".repeat(40);
    assert_eq!(m.changed_paths(Some(&zeros), &c4).unwrap(), None);
    assert_eq!(m.changed_paths(None, &c4).unwrap(), None);
    // A `before` the mirror never saw (force-push over unknown history).
    assert_eq!(
        m.changed_paths(Some("1234567890123456789012345678901234567890"), &c4)
            .unwrap(),
        None
    );
    // A malformed `before` is a caller bug, not "everything changed".
    assert!(matches!(
        m.changed_paths(Some("zzz"), &c4),
        Err(GitError::InvalidSha(_))
    ));
}

#[test]
fn changed_paths_of_a_pull_request_use_the_merge_base() {
    let h = history();
    let (_tmp, dir) = mirror_dir();
    let m = Mirror::open_or_init(&dir, &h.forge.url()).unwrap();
    m.fetch(&refs(&["refs/heads/main", "refs/pull/7/head"]))
        .unwrap();

    // main moved on (c2: src/lib.rs, docs, .slipway.yml; c5: README.md) after the branch
    // point c1; only the pull request's own changes count.
    assert_eq!(
        m.changed_paths_merge_base(&h.c5.to_string(), &h.c4.to_string())
            .unwrap(),
        Some(refs(&["app/x.rs", "app/y.rs"]))
    );

    // Unrelated histories have no merge base.
    let mut forge = h.forge;
    let orphan = forge.commit_files(
        "refs/heads/orphan",
        &[],
        &files(&[("o.txt", "o")]),
        "orphan",
    );
    m.fetch(&refs(&["refs/heads/orphan"])).unwrap();
    assert_eq!(
        m.changed_paths_merge_base(&h.c5.to_string(), &orphan.to_string())
            .unwrap(),
        None
    );
}

#[test]
fn archive_contains_the_commit_tree() {
    let h = history();
    let (_tmp, dir) = mirror_dir();
    let m = Mirror::open_or_init(&dir, &h.forge.url()).unwrap();
    m.fetch(&refs(&["refs/heads/main"])).unwrap();

    let mut bytes = Vec::new();
    m.archive(&h.c1.to_string(), &mut bytes).unwrap();

    let mut seen = BTreeMap::new();
    let mut archive = tar::Archive::new(bytes.as_slice());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let header = entry.header().clone();
        let kind = header.entry_type();
        let mode = header.mode().unwrap();
        let link = entry
            .link_name()
            .unwrap()
            .map(|l| l.to_string_lossy().into_owned());
        let mut contents = String::new();
        entry.read_to_string(&mut contents).unwrap();
        assert_eq!(
            header.mtime().unwrap(),
            1_700_000_060,
            "{path}: commit time"
        );
        seen.insert(path, (kind, mode, link, contents));
    }

    let file = |c: &str| (tar::EntryType::Regular, 0o644, None, c.to_string());
    let dir_entry = (tar::EntryType::Directory, 0o755, None, String::new());
    let mut expected = BTreeMap::new();
    expected.insert(".slipway".to_string(), dir_entry.clone());
    expected.insert(".slipway.yml".to_string(), file("stages: {root: 1}\n"));
    expected.insert(
        ".slipway/.hidden.yml".to_string(),
        file("stages: {hidden: 1}\n"),
    );
    expected.insert(
        ".slipway/deploy.yml".to_string(),
        file("stages: {deploy: 1}\n"),
    );
    expected.insert(
        ".slipway/lint.yaml".to_string(),
        file("stages: {lint: 1}\n"),
    );
    expected.insert(".slipway/nested".to_string(), dir_entry.clone());
    expected.insert(
        ".slipway/nested/ignored.yml".to_string(),
        file("stages: {nested: 1}\n"),
    );
    expected.insert(".slipway/notes.txt".to_string(), file("not yaml\n"));
    expected.insert("README.md".to_string(), file("# demo\n"));
    expected.insert("docs".to_string(), dir_entry.clone());
    expected.insert("docs/old.md".to_string(), file("old doc\n"));
    expected.insert(
        "link".to_string(),
        (
            tar::EntryType::Symlink,
            0o777,
            Some("README.md".to_string()),
            String::new(),
        ),
    );
    expected.insert(
        "run.sh".to_string(),
        (
            tar::EntryType::Regular,
            0o755,
            None,
            "#!/bin/sh\necho hi\n".to_string(),
        ),
    );
    expected.insert("src".to_string(), dir_entry.clone());
    expected.insert("src/lib.rs".to_string(), file("pub fn a() {}\n"));
    expected.insert("sub".to_string(), dir_entry);
    expected.insert("sub/.slipway.yml".to_string(), file("stages: {sub: 1}\n"));
    assert_eq!(seen, expected);

    // Reproducible: the same commit gives the same bytes.
    let mut again = Vec::new();
    m.archive(&h.c1.to_string(), &mut again).unwrap();
    assert_eq!(bytes, again);

    // It unpacks with the tar crate's safe unpacker.
    let out = tempfile::tempdir().unwrap();
    tar::Archive::new(bytes.as_slice())
        .unpack(out.path())
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(out.path().join("src/lib.rs")).unwrap(),
        "pub fn a() {}\n"
    );
    assert!(is_executable(&out.path().join("run.sh")));
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o111 != 0
}

#[test]
fn a_credentials_hook_can_be_attached() {
    let h = history();
    let (_tmp, dir) = mirror_dir();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = calls.clone();
    let m = Mirror::open_or_init(&dir, &h.forge.url())
        .unwrap()
        .with_credentials(std::sync::Arc::new(move |_url, _user, _allowed| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            git2::Cred::userpass_plaintext("x-access-token", "t0ken")
        }));
    assert!(!format!("{m:?}").contains("t0ken"));
    m.fetch(&refs(&["refs/heads/main"])).unwrap();
    // Local transports never ask for credentials; HTTPS/SSH ones would.
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 0);
}
