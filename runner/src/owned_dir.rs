//! Scratch directories that a successor can tell are abandoned: the runner agent's
//! downloaded sources (`source-*` in its work dir) and whatever else a process keeps
//! under a shared base directory for as long as it works on something.
//!
//! Ownership is a `flock` on the directory itself, held for as long as the
//! [`OwnedDir`] lives. The kernel drops it when the process dies, however it dies, so
//! a directory whose lock [`sweep`] can take belongs to nobody and is removed — while
//! one held by another live process sharing the base directory is left alone.
//!
//! No window leaks a directory: a directory exists unlocked only between its `mkdir`
//! and its creator's `flock`. A sweep that takes it then removes it, and the creator,
//! finding its path gone (or another directory there) once it holds the lock, makes a
//! new one. A creator killed inside that window leaves a directory nobody holds, which
//! the next sweep removes like any other.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::workspace;

/// A directory under a base directory, locked by this process while the value lives
/// and removed when it is dropped.
pub struct OwnedDir {
    path: PathBuf,
    _lock: Flock<File>,
}

impl std::fmt::Debug for OwnedDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedDir")
            .field("path", &self.path)
            .finish()
    }
}

impl OwnedDir {
    /// Creates `<base>/<prefix>XXXXXX` (mode 0700) and locks it. Blocking.
    pub fn create(base: &Path, prefix: &str) -> io::Result<OwnedDir> {
        fs::create_dir_all(base)?;
        // A concurrent sweep may remove the directory before it is locked: retry.
        for _ in 0..8 {
            let path = tempfile::Builder::new()
                .prefix(prefix)
                .permissions(fs::Permissions::from_mode(0o700))
                .tempdir_in(base)?
                .keep();
            let Ok(dir) = File::open(&path) else {
                continue;
            };
            let lock = Flock::lock(dir, FlockArg::LockExclusiveNonblock)
                .map_err(|(_, e)| io::Error::from(e))?;
            // Still the directory we made, now that it is ours?
            let ours = fs::symlink_metadata(&path)
                .and_then(|at_path| Ok((at_path, lock.metadata()?)))
                .is_ok_and(|(a, b)| a.is_dir() && a.ino() == b.ino() && a.dev() == b.dev());
            if ours {
                return Ok(OwnedDir { path, _lock: lock });
            }
        }
        Err(io::Error::other(format!(
            "could not create a directory in {} that stays ours",
            base.display()
        )))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for OwnedDir {
    fn drop(&mut self) {
        // Removed while still locked: no sweep works on it meanwhile.
        if let Err(e) = workspace::remove_tree(&self.path) {
            tracing::warn!(dir = %self.path.display(), error = %e, "removing a scratch directory failed");
        }
    }
}

/// Removes every directory `<base>/<prefix>*` that no live process holds (see the
/// module comment); the directories removed. Blocking.
pub fn sweep(base: &Path, prefix: &str) -> io::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(base) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry?;
        if !entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(prefix))
        {
            continue;
        }
        // Not following symlinks: only real directories are ours.
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        let Ok(dir) = File::open(&path) else {
            continue;
        };
        let Ok(lock) = Flock::lock(dir, FlockArg::LockExclusiveNonblock) else {
            continue; // held: its owner is alive
        };
        match workspace::remove_tree(&path) {
            Ok(()) => removed.push(path),
            Err(e) => {
                tracing::warn!(dir = %path.display(), error = %e, "removing an abandoned directory failed")
            }
        }
        drop(lock);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_directory_survives_the_sweep_and_an_abandoned_one_does_not() {
        let base = tempfile::tempdir().unwrap();
        let held = OwnedDir::create(base.path(), "source-").unwrap();
        std::fs::write(held.path().join("file"), "x").unwrap();
        // What a killed process leaves: the directory, nobody holding it.
        let abandoned = base.path().join("source-dead");
        std::fs::create_dir_all(abandoned.join("src/deep")).unwrap();
        std::fs::write(abandoned.join("src/deep/file"), "y").unwrap();
        let other = base.path().join("slipway-stage");
        std::fs::create_dir(&other).unwrap();

        let removed = sweep(base.path(), "source-").unwrap();
        assert_eq!(removed, vec![abandoned.clone()]);
        assert!(!abandoned.exists());
        assert!(held.path().join("file").exists());
        assert!(other.exists(), "another prefix is not this sweep's");

        let path = held.path().to_path_buf();
        drop(held);
        assert!(!path.exists());
        assert!(sweep(base.path(), "source-").unwrap().is_empty());
    }

    #[test]
    fn a_lock_held_by_another_open_file_description_blocks_the_sweep() {
        // flock locks are per open file description: a second open in this process
        // behaves like another process.
        let base = tempfile::tempdir().unwrap();
        let held = OwnedDir::create(base.path(), "source-").unwrap();
        assert!(sweep(base.path(), "source-").unwrap().is_empty());
        assert!(held.path().exists());
    }
}
