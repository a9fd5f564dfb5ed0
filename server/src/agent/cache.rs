//! Caches, the runner's side: the key, packing the cached paths into a tar, and
//! restoring one into a workspace. Blocking (std::fs); callers use `spawn_blocking`.
//!
//! # The key
//! `sha256` over, in order: a version tag, the stage's key (its name, plus the matrix
//! values for a matrix expansion, so `test (os=linux)` and `test (os=mac)` keep
//! separate caches), every declared cache path, and the path and content hash of each
//! lock file found in the workspace: `Cargo.lock`, `package-lock.json`, `yarn.lock`,
//! `go.sum`, `poetry.lock`, `Gemfile.lock` and `requirements*.txt`, at any depth
//! (`.git` is skipped, symlinks are not followed). Changing a dependency therefore
//! starts a fresh cache; a pipeline cannot name other key files yet.
//!
//! A saved key is never overwritten (the first save wins), so a cache only has to be
//! saved by a stage that missed it.
//!
//! # Safety
//! Restoring writes only the entries under the stage's declared `cache:` paths, each
//! through [`runner::safe_path`]: names are checked, no symlink is followed, only
//! regular files and directories are created.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Lock files whose content goes into the key (plus `requirements*.txt`).
pub const LOCK_FILES: &[&str] = &[
    "Cargo.lock",
    "package-lock.json",
    "yarn.lock",
    "go.sum",
    "poetry.lock",
    "Gemfile.lock",
];

/// The walk for lock files gives up beyond this many entries or this depth, so a
/// huge checkout cannot stall a stage (the stage then runs without a cache).
const MAX_WALK_ENTRIES: usize = 500_000;
const MAX_WALK_DEPTH: usize = 64;

fn is_lock_file(name: &str) -> bool {
    LOCK_FILES.contains(&name) || (name.starts_with("requirements") && name.ends_with(".txt"))
}

/// The cache key of a stage (see the module comment), lower-case hex.
pub fn cache_key(stage_key: &str, paths: &[String], workspace: &Path) -> io::Result<String> {
    let mut locks = Vec::new();
    let mut seen = 0usize;
    find_lock_files(workspace, "", 0, &mut seen, &mut locks)?;
    locks.sort();
    let mut h = Sha256::new();
    h.update(b"slipway-cache-v1\n");
    h.update(format!("stage\0{stage_key}\n"));
    for p in paths {
        h.update(format!("path\0{p}\n"));
    }
    for rel in &locks {
        let digest = file_sha256(&workspace.join(rel))?;
        h.update(format!("file\0{rel}\0{digest}\n"));
    }
    Ok(hex::encode(h.finalize()))
}

fn find_lock_files(
    dir: &Path,
    rel: &str,
    depth: usize,
    seen: &mut usize,
    out: &mut Vec<String>,
) -> io::Result<()> {
    if depth > MAX_WALK_DEPTH {
        return Err(io::Error::other(
            "the workspace is nested too deeply to look for lock files",
        ));
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        *seen += 1;
        if *seen > MAX_WALK_ENTRIES {
            return Err(io::Error::other(
                "the workspace has too many files to look for lock files",
            ));
        }
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let child = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        // `DirEntry::file_type` does not follow symlinks.
        let ft = entry.file_type()?;
        if ft.is_dir() {
            if name != ".git" {
                find_lock_files(&entry.path(), &child, depth + 1, seen, out)?;
            }
        } else if ft.is_file() && is_lock_file(&name) {
            out.push(child);
        }
    }
    Ok(())
}

fn file_sha256(path: &Path) -> io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// A writer that hashes and counts what goes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    /// The inner writer, the sha256 (hex) and the byte count.
    pub fn finish(self) -> (W, String, u64) {
        (self.inner, hex::encode(self.hasher.finalize()), self.size)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Packs the files `names` (relative, under `root`) into a tar at `out`. Headers are
/// deterministic (no owners or times), so the same files give the same blob.
/// Returns the archive's sha256 and size.
pub fn pack(root: &Path, names: &[String], out: &Path) -> io::Result<(String, u64)> {
    let file = fs::File::create(out)?;
    let mut builder = tar::Builder::new(HashingWriter::new(io::BufWriter::new(file)));
    builder.mode(tar::HeaderMode::Deterministic);
    builder.follow_symlinks(false);
    let mut names: Vec<&String> = names.iter().collect();
    names.sort();
    for name in names {
        runner::safe_path::check_name(name).map_err(io::Error::other)?;
        builder.append_path_with_name(root.join(name), name)?;
    }
    let writer = builder.into_inner()?;
    let (inner, sha256, size) = writer.finish();
    let file = inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok((sha256, size))
}

/// What [`unpack`] wrote and left out.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Unpacked {
    /// Regular files written.
    pub files: usize,
    /// Entries outside the declared cache paths, not written.
    pub skipped: usize,
}

/// Unpacks the tar at `archive` into `dest`: only entries under the stage's declared
/// cache `paths` (the globs it saves, matched the same way), regular files and
/// directories only, each written through [`runner::safe_path`]. A cache is whatever
/// some runner uploaded under the key: nothing else it holds reaches the workspace.
pub fn unpack(archive: &Path, dest: &Path, paths: &[String]) -> io::Result<Unpacked> {
    let declared = runner::artifacts::Matcher::new(paths).map_err(io::Error::other)?;
    let file = fs::File::open(archive)?;
    let mut tar = tar::Archive::new(io::BufReader::new(file));
    let mut done = Unpacked::default();
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path: PathBuf = entry.path()?.into_owned();
        let name = path
            .to_str()
            .ok_or_else(|| io::Error::other("a cache entry's name is not UTF-8"))?
            .trim_end_matches('/')
            .to_string();
        if !declared.is_match(&name) {
            done.skipped += 1;
            continue;
        }
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mode = entry.header().mode().unwrap_or(0o644);
                let mut out = runner::safe_path::create_file_in(dest, &name, mode)?;
                io::copy(&mut entry, &mut out)?;
                done.files += 1;
            }
            tar::EntryType::Directory => runner::safe_path::create_dir_in(dest, &name)?,
            other => {
                tracing::warn!(name = %name, kind = ?other, "skipping a cache entry that is not a file or directory");
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    #[test]
    fn the_key_follows_lock_files_stage_and_paths() {
        let ws = tempfile::tempdir().unwrap();
        let w = ws.path();
        fs::create_dir_all(w.join("web/.git")).unwrap();
        fs::write(w.join("Cargo.lock"), "a").unwrap();
        fs::write(w.join("web/package-lock.json"), "b").unwrap();
        fs::write(w.join("web/.git/Cargo.lock"), "ignored").unwrap();
        fs::write(w.join("src.rs"), "code").unwrap();
        let paths = vec!["target".to_string()];
        let k1 = cache_key("build", &paths, w).unwrap();
        assert_eq!(k1.len(), 64);
        assert_eq!(k1, cache_key("build", &paths, w).unwrap());
        // Source changes do not matter, lock files do.
        fs::write(w.join("src.rs"), "other code").unwrap();
        fs::write(w.join("web/.git/Cargo.lock"), "still ignored").unwrap();
        assert_eq!(k1, cache_key("build", &paths, w).unwrap());
        fs::write(w.join("requirements-dev.txt"), "pytest").unwrap();
        let k2 = cache_key("build", &paths, w).unwrap();
        assert_ne!(k1, k2);
        fs::write(w.join("web/package-lock.json"), "c").unwrap();
        assert_ne!(k2, cache_key("build", &paths, w).unwrap());
        assert_ne!(
            cache_key("build", &paths, w).unwrap(),
            cache_key("test", &paths, w).unwrap()
        );
        assert_ne!(
            cache_key("build", &paths, w).unwrap(),
            cache_key("build", &["node_modules".to_string()], w).unwrap()
        );
    }

    #[test]
    fn packs_and_restores_without_escaping() {
        let src = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("deps/sub")).unwrap();
        fs::write(src.path().join("deps/a.txt"), "alpha").unwrap();
        fs::write(src.path().join("deps/sub/tool"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(
            src.path().join("deps/sub/tool"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let out = tempfile::tempdir().unwrap();
        let tar_path = out.path().join("cache.tar");
        let names = vec!["deps/sub/tool".to_string(), "deps/a.txt".to_string()];
        let (sha, size) = pack(src.path(), &names, &tar_path).unwrap();
        assert_eq!(size, fs::metadata(&tar_path).unwrap().len());
        assert_eq!(sha, file_sha256(&tar_path).unwrap());
        // Deterministic: the same files give the same blob.
        let again = out.path().join("again.tar");
        assert_eq!(pack(src.path(), &names, &again).unwrap().0, sha);

        let dest = tempfile::tempdir().unwrap();
        let deps = ["deps".to_string()];
        assert_eq!(
            unpack(&tar_path, dest.path(), &deps).unwrap(),
            Unpacked {
                files: 2,
                skipped: 0
            }
        );
        assert_eq!(fs::read(dest.path().join("deps/a.txt")).unwrap(), b"alpha");
        let mode = fs::metadata(dest.path().join("deps/sub/tool"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);

        // A workspace whose `deps` is a symlink out of it: the restore refuses.
        let evil = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        symlink(outside.path(), evil.path().join("deps")).unwrap();
        let err = unpack(&tar_path, evil.path(), &deps).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_crafted_archive_cannot_escape() {
        let out = tempfile::tempdir().unwrap();
        let tar_path = out.path().join("evil.tar");
        {
            let mut b = tar::Builder::new(fs::File::create(&tar_path).unwrap());
            let mut h = tar::Header::new_gnu();
            h.set_size(4);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            // `append_data` refuses `..`; write the raw name like an attacker would.
            h.as_old_mut().name[..9].copy_from_slice(b"../escape");
            h.set_cksum();
            b.append(&h, &b"evil"[..]).unwrap();
            b.finish().unwrap();
        }
        let dest = tempfile::tempdir().unwrap();
        let inner = dest.path().join("ws");
        fs::create_dir(&inner).unwrap();
        let err = unpack(&tar_path, &inner, &["**".to_string()]).unwrap_err();
        assert!(err.to_string().contains("`..`"), "{err}");
        assert!(!dest.path().join("escape").exists());
    }

    #[test]
    fn only_entries_under_the_declared_paths_are_restored() {
        let out = tempfile::tempdir().unwrap();
        let tar_path = out.path().join("cache.tar");
        {
            let mut b = tar::Builder::new(fs::File::create(&tar_path).unwrap());
            for name in [
                "deps/a.txt",
                "deps/sub/b.txt",
                "deps-not/c.txt",
                "src/main.rs",
                ".git/hooks/pre-commit",
                "target/debug/x",
            ] {
                let mut h = tar::Header::new_gnu();
                h.set_size(1);
                h.set_mode(0o644);
                h.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut h, name, &b"z"[..]).unwrap();
            }
            b.finish().unwrap();
        }
        let dest = tempfile::tempdir().unwrap();
        let paths = vec!["deps".to_string(), "target/*/x".to_string()];
        let done = unpack(&tar_path, dest.path(), &paths).unwrap();
        assert_eq!(
            done,
            Unpacked {
                files: 3,
                skipped: 3
            }
        );
        for kept in ["deps/a.txt", "deps/sub/b.txt", "target/debug/x"] {
            assert!(dest.path().join(kept).is_file(), "{kept}");
        }
        for left_out in ["deps-not", "src", ".git"] {
            assert!(!dest.path().join(left_out).exists(), "{left_out}");
        }
    }
}
