//! Tar archives in and out of the workspace volume.
//!
//! In: the prepared source tree is tarred with symlinks stored as symlinks (never
//! followed, so a link to `/etc` ships a link, not the host's files), every entry
//! owned by the step user so that a non-root step can write its workspace.
//!
//! Out: archives the engine sends back are written to a host directory without
//! trusting them: names with `..` or an absolute path are refused, nothing is
//! written through a symlink (a `link -> /etc` entry followed by `link/passwd`
//! would otherwise write to the host), and only permission bits are kept (no
//! setuid, no ownership).

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// Owner given to every entry of an archive uploaded into the workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u64,
    pub gid: u64,
}

/// Writes a tar of `src` (may be `None`: an empty workspace) to `out`, every entry
/// under the directory entry `root` (e.g. `workspace`), plus directory entries for
/// `extra_dirs` (relative, e.g. the step working directory) so they exist and
/// belong to `owner` before any step runs. Blocking.
///
/// The root is a named entry rather than `.` because the engine skips `.` when
/// extracting: uploaded at `/` instead, `workspace/` gets the owner and mode like
/// any other directory, so a non-root step can write the top of its workspace.
pub fn tar_tree(
    src: Option<&Path>,
    root: &Path,
    owner: Owner,
    extra_dirs: &[String],
    out: impl Write,
) -> Result<()> {
    let mut b = builder(out);
    append_tree(&mut b, src, root, true, owner, extra_dirs)?;
    finish(b)
}

/// A tar builder that stores symlinks as symlinks.
pub fn builder<W: Write>(out: W) -> tar::Builder<W> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    b
}

/// Ends the archive and flushes `out`.
pub fn finish<W: Write>(b: tar::Builder<W>) -> Result<()> {
    b.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(|e| Error::io("writing workspace archive", e))
}

/// [`tar_tree`]'s entries, appended to `b`. Without `root_entry` the directory
/// `root` itself gets no entry: for extracting by an unprivileged `tar` into a
/// directory it does not own (a pod's emptyDir), which could not chmod it.
pub fn append_tree<W: Write>(
    b: &mut tar::Builder<W>,
    src: Option<&Path>,
    root: &Path,
    root_entry: bool,
    owner: Owner,
    extra_dirs: &[String],
) -> Result<()> {
    if root_entry {
        let root_mode = match src {
            Some(src) => fs::symlink_metadata(src)
                .map_err(|e| Error::io(format!("stat {}", src.display()), e))?
                .permissions()
                .mode(),
            None => 0o755,
        };
        append_dir(b, root, root_mode, owner)?;
    }
    if let Some(src) = src {
        walk(b, src, root, owner)?;
    }
    for dir in extra_dirs {
        let mut path = PathBuf::new();
        for c in Path::new(dir).components() {
            if let Component::Normal(c) = c {
                path.push(c);
                if src.is_none_or(|s| !s.join(&path).exists()) {
                    append_dir(b, &root.join(&path), 0o755, owner)?;
                }
            }
        }
    }
    Ok(())
}

/// Appends one regular file with `content`.
pub fn append_file<W: Write>(
    b: &mut tar::Builder<W>,
    path: &Path,
    content: &[u8],
    mode: u32,
    owner: Owner,
) -> Result<()> {
    let mut h = header(tar::EntryType::Regular, mode, owner);
    h.set_size(content.len() as u64);
    b.append_data(&mut h, path, content)
        .map_err(|e| Error::io(format!("archiving {}", path.display()), e))
}

/// Calls `f` with the directory holding `source`'s files (`None` for an empty
/// source): the directory itself, or a fresh checkout of a git source, removed
/// afterwards. Blocking.
pub fn with_source_dir<T>(
    source: &crate::spec::Source,
    f: impl FnOnce(Option<&Path>) -> Result<T>,
) -> Result<T> {
    use crate::spec::Source;
    match source {
        Source::Empty => f(None),
        Source::Directory(dir) => {
            let meta = fs::symlink_metadata(dir)
                .map_err(|e| Error::io(format!("reading source directory {}", dir.display()), e))?;
            if !meta.is_dir() {
                return Err(Error::InvalidSpec(format!(
                    "source {} is not a directory",
                    dir.display()
                )));
            }
            f(Some(dir))
        }
        Source::Git { .. } => {
            let checkout = tempfile::tempdir()
                .map_err(|e| Error::io("creating a temp dir for the checkout", e))?;
            crate::workspace::prepare(source, checkout.path())?;
            let r = f(Some(checkout.path()));
            // Git makes read-only object files; the helper removes them anyway.
            let _ = crate::workspace::remove_tree(checkout.path());
            r
        }
    }
}

fn append_dir<W: Write>(
    b: &mut tar::Builder<W>,
    path: &Path,
    mode: u32,
    owner: Owner,
) -> Result<()> {
    let mut h = header(tar::EntryType::Directory, mode, owner);
    b.append_data(&mut h, path, io::empty())
        .map_err(|e| Error::io(format!("archiving {}", path.display()), e))
}

fn header(kind: tar::EntryType, mode: u32, owner: Owner) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode & 0o7777);
    h.set_uid(owner.uid);
    h.set_gid(owner.gid);
    h.set_size(0);
    h.set_mtime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default(),
    );
    h
}

fn walk<W: Write>(b: &mut tar::Builder<W>, dir: &Path, rel: &Path, owner: Owner) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?
        .collect::<io::Result<_>>()
        .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = rel.join(entry.file_name());
        let meta = fs::symlink_metadata(&path)
            .map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
        let mode = meta.permissions().mode();
        let ft = meta.file_type();
        let err = |e| Error::io(format!("archiving {}", path.display()), e);
        if ft.is_symlink() {
            let target = fs::read_link(&path)
                .map_err(|e| Error::io(format!("readlink {}", path.display()), e))?;
            let mut h = header(tar::EntryType::Symlink, 0o777, owner);
            b.append_link(&mut h, &name, &target).map_err(err)?;
        } else if ft.is_dir() {
            append_dir(b, &name, mode, owner)?;
            walk(b, &path, &name, owner)?;
        } else if ft.is_file() {
            let file = fs::File::open(&path)
                .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
            let mut h = header(tar::EntryType::Regular, mode, owner);
            h.set_size(meta.len());
            // `take`: a file growing while we read must not corrupt the archive.
            b.append_data(&mut h, &name, file.take(meta.len()))
                .map_err(err)?;
        } else {
            tracing::debug!(path = %path.display(), "skipping special file in source");
        }
    }
    Ok(())
}

/// A tar holding one file (the step script), in memory.
pub fn single_file(dir: &str, name: &str, content: &[u8], mode: u32) -> Result<Vec<u8>> {
    let owner = Owner { uid: 0, gid: 0 };
    let mut b = tar::Builder::new(Vec::new());
    append_dir(&mut b, Path::new(dir), 0o755, owner)?;
    let mut h = header(tar::EntryType::Regular, mode, owner);
    h.set_size(content.len() as u64);
    b.append_data(&mut h, Path::new(dir).join(name), content)
        .map_err(|e| Error::io("archiving the step script", e))?;
    b.into_inner()
        .map_err(|e| Error::io("archiving the step script", e))
}

/// Extracts `archive` into `dest` (an existing, empty directory) without letting
/// it write anywhere else. Blocking.
pub fn extract_safe(archive: impl Read, dest: &Path) -> Result<()> {
    let mut ar = tar::Archive::new(archive);
    let entries = ar
        .entries()
        .map_err(|e| Error::io("reading workspace archive", e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| Error::io("reading workspace archive", e))?;
        let raw = entry
            .path()
            .map_err(|e| Error::io("reading workspace archive", e))?
            .into_owned();
        let Some(rel) = checked_relative(&raw)? else {
            continue; // `.` itself
        };
        let target = dest.join(&rel);
        let parent = target.parent().unwrap_or(dest);
        make_dirs_no_symlinks(dest, parent)?;
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let kind = entry.header().entry_type();
        let io_err = |e| Error::io(format!("extracting {}", rel.display()), e);
        match kind {
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => return Err(refused(&rel, "a directory entry replaces a file")),
                    Err(_) => fs::create_dir(&target).map_err(io_err)?,
                }
                // Owner-writable so later entries can be written into it.
                fs::set_permissions(&target, fs::Permissions::from_mode(mode | 0o700))
                    .map_err(io_err)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                remove_non_dir(&target, &rel)?;
                let mut out = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&target)
                    .map_err(io_err)?;
                io::copy(&mut entry, &mut out).map_err(io_err)?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(io_err)?
                    .ok_or_else(|| refused(&rel, "symlink without a target"))?
                    .into_owned();
                remove_non_dir(&target, &rel)?;
                // Created as-is; whoever reads the tree decides whether to follow
                // it (artifact collection refuses links leaving the workspace).
                symlink(&link, &target).map_err(io_err)?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(io_err)?
                    .ok_or_else(|| refused(&rel, "hard link without a target"))?
                    .into_owned();
                let Some(src_rel) = checked_relative(&link)? else {
                    return Err(refused(&rel, "hard link to the root"));
                };
                let src = dest.join(&src_rel);
                let meta = fs::symlink_metadata(&src).map_err(io_err)?;
                if !meta.is_file() {
                    return Err(refused(&rel, "hard link to something not a regular file"));
                }
                remove_non_dir(&target, &rel)?;
                fs::hard_link(&src, &target).map_err(io_err)?;
            }
            // Devices, FIFOs, extended headers handled by `tar` itself: skipped.
            _ => {}
        }
    }
    Ok(())
}

/// The entry name as a relative path of normal components (a leading `./` is
/// dropped); `None` for the root itself; an error for `..` or absolute names.
fn checked_relative(raw: &Path) -> Result<Option<PathBuf>> {
    let mut rel = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(c) => rel.push(c),
            Component::CurDir => {}
            Component::ParentDir => return Err(refused(raw, "`..` in an archive entry")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(refused(raw, "absolute archive entry"));
            }
        }
    }
    Ok((!rel.as_os_str().is_empty()).then_some(rel))
}

/// Creates `dir` (inside `root`) and its parents, refusing to traverse symlinks.
fn make_dirs_no_symlinks(root: &Path, dir: &Path) -> Result<()> {
    let rel = dir.strip_prefix(root).unwrap_or(Path::new(""));
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(refused(rel, "path goes through a symlink or a file")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&cur)
                .map_err(|e| Error::io(format!("creating {}", cur.display()), e))?,
            Err(e) => return Err(Error::io(format!("stat {}", cur.display()), e)),
        }
    }
    Ok(())
}

/// Makes room for a file or link: an existing file or symlink is removed (never
/// followed); an existing directory is an error.
fn remove_non_dir(target: &Path, rel: &Path) -> Result<()> {
    match fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => Err(refused(rel, "a file entry replaces a directory")),
        Ok(_) => fs::remove_file(target)
            .map_err(|e| Error::io(format!("replacing {}", target.display()), e)),
        Err(_) => Ok(()),
    }
}

fn refused(path: &Path, reason: &str) -> Error {
    Error::Artifact {
        path: path.display().to_string(),
        reason: format!("refused while extracting the workspace: {reason}"),
    }
}

/// Extracts a workspace tar (at `tar_path`, inside `scratch`) safely and copies the
/// files matching `globs` into `dest`: how container backends collect artifacts
/// once they have the workspace as a tar. Runs off the async runtime; removes
/// `scratch` afterwards.
pub async fn collect_from_tar(
    scratch: tempfile::TempDir,
    tar_path: PathBuf,
    globs: &[String],
    dest: &Path,
) -> Result<Vec<crate::artifacts::Artifact>> {
    let globs = globs.to_vec();
    let dest = dest.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let root: PathBuf = scratch.path().join("workspace");
        fs::create_dir(&root).map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
        let file = fs::File::open(&tar_path)
            .map_err(|e| Error::io(format!("opening {}", tar_path.display()), e))?;
        extract_safe(io::BufReader::new(file), &root)?;
        let r = crate::artifacts::collect(&root, &globs, &dest);
        let _ = crate::workspace::remove_tree(scratch.path());
        r
    })
    .await
    .map_err(|e| Error::Backend {
        op: "collect_artifacts",
        message: e.to_string(),
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            // set_path refuses `..`; write the raw name to test the extractor.
            let field = &mut h.as_old_mut().name;
            field[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn round_trip_keeps_symlinks_and_modes() {
        let src = tempfile::tempdir().unwrap();
        fs::create_dir(src.path().join("bin")).unwrap();
        fs::write(src.path().join("bin/x.sh"), "echo").unwrap();
        fs::set_permissions(
            src.path().join("bin/x.sh"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        symlink("/etc/passwd", src.path().join("out")).unwrap();
        let mut buf = Vec::new();
        tar_tree(
            Some(src.path()),
            Path::new("ws"),
            Owner { uid: 7, gid: 8 },
            &["sub/dir".into()],
            &mut buf,
        )
        .unwrap();
        let mut ar = tar::Archive::new(&buf[..]);
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            assert_eq!(
                (e.header().uid().unwrap(), e.header().gid().unwrap()),
                (7, 8)
            );
        }
        let dest = tempfile::tempdir().unwrap();
        extract_safe(&buf[..], dest.path()).unwrap();
        let ws = dest.path().join("ws");
        let mode = fs::metadata(ws.join("bin/x.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            fs::read_link(ws.join("out")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert!(ws.join("sub/dir").is_dir());
    }

    #[test]
    fn extraction_refuses_escapes() {
        use tar::EntryType::*;
        let cases: Vec<Vec<u8>> = vec![
            tar_with(&[("../evil", Regular, b"x", None)]),
            tar_with(&[("/abs", Regular, b"x", None)]),
            tar_with(&[("a/../../evil", Regular, b"x", None)]),
            // A symlink to a directory outside, then a file "through" it.
            tar_with(&[
                ("link", Symlink, b"", Some("/tmp")),
                ("link/evil", Regular, b"x", None),
            ]),
            tar_with(&[("h", Link, b"", Some("../../etc/passwd"))]),
        ];
        for (i, archive) in cases.iter().enumerate() {
            let outer = tempfile::tempdir().unwrap();
            let dest = outer.path().join("d");
            fs::create_dir(&dest).unwrap();
            let err = extract_safe(&archive[..], &dest).unwrap_err();
            assert!(matches!(err, Error::Artifact { .. }), "case {i}: {err}");
            assert!(!outer.path().join("evil").exists(), "case {i}");
        }
        assert!(!Path::new("/tmp/evil").exists());
    }

    #[test]
    fn single_file_archive() {
        let t = single_file(".slipway", "step.sh", b"echo hi\n", 0o444).unwrap();
        let dest = tempfile::tempdir().unwrap();
        extract_safe(&t[..], dest.path()).unwrap();
        assert_eq!(
            fs::read(dest.path().join(".slipway/step.sh")).unwrap(),
            b"echo hi\n"
        );
    }
}
