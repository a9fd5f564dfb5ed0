//! Collecting artifacts from a workspace directory on the runner host.
//!
//! Globs use gitignore-like semantics: `*` stays within one path component, `**`
//! crosses them, and a glob matching a directory collects everything below it
//! (`dist` or `dist/` collects the whole tree, as pipeline authors expect from other
//! CI systems). Nothing outside the workspace is ever read: globs with `..` or an
//! absolute path are refused up front, symlinks are only collected when their
//! resolved target is inside the workspace, and the walk never follows symlinked
//! directories (no cycles, no escapes).

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A collected artifact.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Artifact {
    /// Relative to the workspace (and to the destination directory), `/`-separated.
    pub path: String,
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
}

/// Refuses globs that could name something outside the workspace.
pub(crate) fn check_glob(glob: &str) -> Result<()> {
    let refuse = |reason: &str| {
        Err(Error::Artifact {
            path: glob.to_owned(),
            reason: reason.to_owned(),
        })
    };
    if glob.trim().is_empty() {
        return refuse("empty glob");
    }
    let path = Path::new(glob);
    if path.is_absolute() {
        return refuse("absolute paths are not allowed; globs are relative to the workspace");
    }
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return refuse("`..` is not allowed; artifacts must be inside the workspace");
    }
    Ok(())
}

fn build_globs(globs: &[String]) -> Result<GlobSet> {
    let mut set = GlobSetBuilder::new();
    for g in globs {
        check_glob(g)?;
        let normalized = g.trim_start_matches("./").trim_end_matches('/');
        let glob = GlobBuilder::new(normalized)
            .literal_separator(true)
            .build()
            .map_err(|e| Error::Artifact {
                path: g.clone(),
                reason: e.to_string(),
            })?;
        set.add(glob);
    }
    set.build().map_err(|e| Error::Artifact {
        path: globs.join(", "),
        reason: e.to_string(),
    })
}

/// Checks artifact (or cache) globs without collecting anything: the same refusals
/// as [`collect`] (`..`, absolute paths, empty or malformed globs).
pub fn check_globs(globs: &[String]) -> Result<()> {
    build_globs(globs).map(|_| ())
}

/// Which collected paths a set of globs selects, with [`collect`]'s semantics: a path
/// is selected when it or one of its parent directories matches. Lets a caller that
/// collected the union of several glob lists in one pass (artifacts and cache paths)
/// tell the collected files apart again.
#[derive(Debug, Clone)]
pub struct Matcher {
    set: GlobSet,
}

impl Matcher {
    pub fn new(globs: &[String]) -> Result<Matcher> {
        Ok(Matcher {
            set: build_globs(globs)?,
        })
    }

    /// `path` is relative and `/`-separated, as in [`Artifact::path`].
    pub fn is_match(&self, path: &str) -> bool {
        let mut end = 0;
        for part in path.split('/') {
            end += part.len();
            if self.set.is_match(&path[..end]) {
                return true;
            }
            end += 1;
        }
        false
    }
}

/// Copies the files under `root` matching `globs` into `dest` (keeping relative
/// paths and permission bits) and returns them sorted by path. Blocking.
pub fn collect(root: &Path, globs: &[String], dest: &Path) -> Result<Vec<Artifact>> {
    let found = matching_files(root, globs)?;
    if found.is_empty() && !globs.is_empty() {
        tracing::warn!(globs = ?globs, "artifact globs matched no files");
    }
    let mut out = Vec::with_capacity(found.len());
    for (rel, src) in found {
        out.push(copy_hashed(&src, &dest.join(&rel), rel)?);
    }
    Ok(out)
}

/// The files under `root` matching `globs` (same rules as [`collect`]), as
/// `(relative path, file to read)` sorted by path, without copying them. Blocking.
pub(crate) fn matching_files(root: &Path, globs: &[String]) -> Result<Vec<(String, PathBuf)>> {
    let set = build_globs(globs)?;
    if globs.is_empty() {
        return Ok(Vec::new());
    }
    let root = fs::canonicalize(root)
        .map_err(|e| Error::io(format!("resolving workspace {}", root.display()), e))?;
    Ok(select(&HostTree { root }, globs, &set)?
        .into_iter()
        .collect())
}

/// What the walk needs to know of an entry of a workspace tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryKind {
    Dir,
    File,
    Symlink,
    /// A socket, FIFO or device: never collected.
    Other,
}

/// A workspace as the artifact walk sees it: the directory on this host
/// ([`HostTree`]), or a listing made elsewhere (a pod's, see
/// `kubernetes::listing`), so that both select with the very same rules.
pub(crate) trait Tree {
    /// The workspace root, canonical (no symlink in it).
    fn root(&self) -> &Path;
    /// The entries of the directory `rel_dir` (relative, `/`-separated, `""` for
    /// the root), in any order. Symlinks are entries of their own, never followed.
    fn entries(&self, rel_dir: &str) -> Result<Vec<(std::ffi::OsString, EntryKind)>>;
    /// The symlink at `rel`, fully resolved as `realpath(3)` does.
    fn resolve(&self, rel: &str) -> std::io::Result<PathBuf>;
    /// Whether `canonical` (absolute, resolved) is a regular file.
    fn is_file(&self, canonical: &Path) -> bool;
}

/// The workspace as a directory on this host.
struct HostTree {
    root: PathBuf,
}

impl Tree for HostTree {
    fn root(&self) -> &Path {
        &self.root
    }

    fn entries(&self, rel_dir: &str) -> Result<Vec<(std::ffi::OsString, EntryKind)>> {
        let dir = self.root.join(rel_dir);
        let listed: Vec<_> = fs::read_dir(&dir)
            .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        let mut entries = Vec::with_capacity(listed.len());
        for entry in listed {
            let path = entry.path();
            let ft = fs::symlink_metadata(&path)
                .map_err(|e| Error::io(format!("stat {}", path.display()), e))?
                .file_type();
            let kind = if ft.is_symlink() {
                EntryKind::Symlink
            } else if ft.is_dir() {
                EntryKind::Dir
            } else if ft.is_file() {
                EntryKind::File
            } else {
                EntryKind::Other
            };
            entries.push((entry.file_name(), kind));
        }
        Ok(entries)
    }

    fn resolve(&self, rel: &str) -> std::io::Result<PathBuf> {
        fs::canonicalize(self.root.join(rel))
    }

    fn is_file(&self, canonical: &Path) -> bool {
        canonical.is_file()
    }
}

/// The files of `tree` matching `globs`, by relative path, each with the file to
/// read: itself, or a symlink's target. Blocking for a [`HostTree`].
pub(crate) fn select(
    tree: &impl Tree,
    globs: &[String],
    set: &GlobSet,
) -> Result<BTreeMap<String, PathBuf>> {
    let mut found = BTreeMap::new();
    if !globs.is_empty() {
        walk(tree, "", false, set, &mut found)?;
    }
    Ok(found)
}

/// The glob set of `globs`, refusing what [`collect`] refuses: for [`select`].
pub(crate) fn glob_set(globs: &[String]) -> Result<GlobSet> {
    build_globs(globs)
}

fn walk(
    tree: &impl Tree,
    rel_dir: &str,
    included: bool,
    set: &GlobSet,
    found: &mut BTreeMap<String, PathBuf>,
) -> Result<()> {
    let mut entries = tree.entries(rel_dir)?;
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, kind) in entries {
        let Some(name) = name.to_str() else {
            // Artifact paths are stored and served as text.
            tracing::warn!(dir = %rel_dir, "skipping non-UTF-8 file name");
            continue;
        };
        let rel = if rel_dir.is_empty() {
            name.to_owned()
        } else {
            format!("{rel_dir}/{name}")
        };
        let matched = included || set.is_match(&rel);
        match kind {
            EntryKind::Dir => walk(tree, &rel, matched, set, found)?,
            EntryKind::File if matched => {
                let path = tree.root().join(&rel);
                found.insert(rel, path);
            }
            EntryKind::Symlink if matched => {
                let target = tree.resolve(&rel).map_err(|e| Error::Artifact {
                    path: rel.clone(),
                    reason: format!("cannot resolve symlink: {e}"),
                })?;
                if !target.starts_with(tree.root()) {
                    return Err(Error::Artifact {
                        path: rel,
                        reason: "symlink points outside the workspace".into(),
                    });
                }
                if tree.is_file(&target) {
                    found.insert(rel, target);
                } else {
                    tracing::warn!(path = %rel, "skipping symlink to a directory in artifacts");
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn copy_hashed(src: &Path, dst: &Path, rel: String) -> Result<Artifact> {
    let input =
        fs::File::open(src).map_err(|e| Error::io(format!("opening {}", src.display()), e))?;
    let mode = input
        .metadata()
        .map_err(|e| Error::io(format!("stat {}", src.display()), e))?
        .permissions();
    write_hashed(input, &src.display().to_string(), dst, mode, rel)
}

/// Writes `input` (read from `what`, for errors) to `dst` with permissions
/// `mode`, hashing as it goes: the artifact at `rel`. Creates `dst`'s parents.
/// Blocking.
pub(crate) fn write_hashed(
    mut input: impl Read,
    what: &str,
    dst: &Path,
    mode: fs::Permissions,
    rel: String,
) -> Result<Artifact> {
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
    }
    let mut output =
        fs::File::create(dst).map_err(|e| Error::io(format!("creating {}", dst.display()), e))?;
    // Hash while copying: one read of each file, constant memory.
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = input
            .read(&mut buf)
            .map_err(|e| Error::io(format!("reading {what}"), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        output
            .write_all(&buf[..n])
            .map_err(|e| Error::io(format!("writing {}", dst.display()), e))?;
        size += n as u64;
    }
    output
        .flush()
        .map_err(|e| Error::io(format!("writing {}", dst.display()), e))?;
    fs::set_permissions(dst, mode).map_err(|e| Error::io(format!("chmod {}", dst.display()), e))?;
    Ok(Artifact {
        path: rel,
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> tempfile::TempDir {
        let ws = tempfile::tempdir().unwrap();
        let p = ws.path();
        fs::create_dir_all(p.join("out/sub")).unwrap();
        fs::create_dir_all(p.join("dist/a")).unwrap();
        fs::write(p.join("out/a.txt"), "hello").unwrap();
        fs::write(p.join("out/sub/b.bin"), [0u8, 1, 2]).unwrap();
        fs::write(p.join("dist/a/c.js"), "js").unwrap();
        fs::write(p.join("top.log"), "log").unwrap();
        fs::write(p.join("skip.tmp"), "no").unwrap();
        ws
    }

    fn paths(a: &[Artifact]) -> Vec<&str> {
        a.iter().map(|a| a.path.as_str()).collect()
    }

    #[test]
    fn collects_globs_and_directories() {
        let ws = setup();
        let dest = tempfile::tempdir().unwrap();
        let got = collect(
            ws.path(),
            &[
                "out/*.txt".into(),
                "dist/".into(),
                "*.log".into(),
                "nothing/*".into(),
            ],
            dest.path(),
        )
        .unwrap();
        assert_eq!(paths(&got), vec!["dist/a/c.js", "out/a.txt", "top.log"]);
        let hello = got.iter().find(|a| a.path == "out/a.txt").unwrap();
        assert_eq!(hello.size, 5);
        assert_eq!(
            hello.sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(fs::read(dest.path().join("out/a.txt")).unwrap(), b"hello");
    }

    #[test]
    fn star_does_not_cross_directories_but_double_star_does() {
        let ws = setup();
        let dest = tempfile::tempdir().unwrap();
        let got = collect(ws.path(), &["out/*".into()], dest.path()).unwrap();
        // `out/sub` matches `out/*` and is a directory, so it is collected whole.
        assert_eq!(paths(&got), vec!["out/a.txt", "out/sub/b.bin"]);
        let got = collect(ws.path(), &["**/*.bin".into()], dest.path()).unwrap();
        assert_eq!(paths(&got), vec!["out/sub/b.bin"]);
    }

    #[test]
    fn refuses_escapes() {
        let ws = setup();
        let dest = tempfile::tempdir().unwrap();
        for bad in ["../x", "/etc/passwd", "out/../../x", ""] {
            let err = collect(ws.path(), &[bad.into()], dest.path()).unwrap_err();
            assert!(matches!(err, Error::Artifact { .. }), "{bad}: {err}");
            assert!(!err.is_retryable());
        }
        symlink("/etc/hostname", ws.path().join("leak.txt")).unwrap();
        let err = collect(ws.path(), &["*.txt".into()], dest.path()).unwrap_err();
        assert!(err.to_string().contains("outside the workspace"), "{err}");
    }

    #[test]
    fn matcher_selects_what_collect_collects() {
        let ws = setup();
        let dest = tempfile::tempdir().unwrap();
        let globs: Vec<String> = vec!["out/*".into(), "*.log".into()];
        let got = collect(ws.path(), &globs, dest.path()).unwrap();
        let m = Matcher::new(&globs).unwrap();
        for a in &got {
            assert!(m.is_match(&a.path), "{}", a.path);
        }
        assert!(!m.is_match("dist/a/c.js"));
        assert!(!m.is_match("skip.tmp"));
        assert!(check_globs(&["../x".into()]).is_err());
        assert!(check_globs(&["target/".into()]).is_ok());
    }

    #[test]
    fn symlinks_inside_the_workspace_are_collected_as_files() {
        let ws = setup();
        symlink("out/a.txt", ws.path().join("link.txt")).unwrap();
        let dest = tempfile::tempdir().unwrap();
        let got = collect(ws.path(), &["link.txt".into()], dest.path()).unwrap();
        assert_eq!(paths(&got), vec!["link.txt"]);
        assert_eq!(fs::read(dest.path().join("link.txt")).unwrap(), b"hello");
    }
}
