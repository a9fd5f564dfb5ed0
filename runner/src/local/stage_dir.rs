//! A local stage's directory: its layout (see the `local` module docs) and the owner
//! lock that tells the start-up sweep the stage is alive. Blocking; async callers
//! wrap it in `spawn_blocking`.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};
use crate::spec::Source;
use crate::workspace;

/// Name prefix of stage directories under the base directory.
pub(super) const STAGE_PREFIX: &str = "slipway-";
/// Lock file in a stage directory, held by the owning backend.
pub(super) const OWNER_LOCK: &str = "owner.lock";
/// Directory of a stage holding one record per running step.
pub(super) const PIDS_DIR: &str = "pids";

/// A stage directory, locked by this process for as long as the value lives.
pub(super) struct StageDir {
    pub(super) root: PathBuf,
    /// The checkout, the steps' working directory.
    pub(super) workspace: PathBuf,
    /// The steps' `HOME`.
    pub(super) home: PathBuf,
    /// The steps' `TMPDIR`.
    pub(super) tmp: PathBuf,
    /// The steps' scripts, outside the workspace.
    pub(super) scripts: PathBuf,
    /// Records of the running steps, for the sweep.
    pub(super) pids: PathBuf,
    /// Held for the life of the stage: a sweep never touches a locked stage.
    _owner: Flock<File>,
}

impl StageDir {
    /// Creates `<base>/slipway-<stage>-XXXX/`, locks it and fills its workspace from
    /// `source`. On error, nothing is left behind.
    pub(super) fn create(base: &Path, stage: &str, source: &Source) -> Result<StageDir> {
        fs::create_dir_all(base).map_err(Error::io_with(format!("creating {}", base.display())))?;
        let root = tempfile::Builder::new()
            .prefix(&format!("{STAGE_PREFIX}{}-", sanitize(stage)))
            // Private to the runner's user: the workspace may hold checked-out code
            // and the scripts may embed resolved values.
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir_in(base)
            .map_err(Error::io_with(format!(
                "creating stage directory in {}",
                base.display()
            )))?
            .keep();
        match fill(&root, source) {
            Ok(owner) => Ok(StageDir {
                workspace: root.join("workspace"),
                home: root.join("home"),
                tmp: root.join("tmp"),
                scripts: root.join("scripts"),
                pids: root.join(PIDS_DIR),
                root,
                _owner: owner,
            }),
            Err(e) => {
                let _ = workspace::remove_tree(&root);
                Err(e)
            }
        }
    }

    /// The directory's name: the stage's id in this backend.
    pub(super) fn id(&self) -> String {
        self.root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Locks `root`, creates its sub-directories and fills the workspace.
fn fill(root: &Path, source: &Source) -> Result<Flock<File>> {
    let owner = lock_owner(root)?;
    for sub in ["workspace", "home", "tmp", "scripts", PIDS_DIR] {
        fs::create_dir(root.join(sub))
            .map_err(Error::io_with(format!("creating {}/{sub}", root.display())))?;
    }
    workspace::prepare(source, &root.join("workspace"))?;
    Ok(owner)
}

/// Turns a stage id into something safe for a directory name.
fn sanitize(id: &str) -> String {
    let s: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    if s.is_empty() { "stage".into() } else { s }
}

/// Creates `<root>/owner.lock`, locked: the lock is taken on a temporary name and
/// the file renamed into place, so a concurrent sweep never sees it unlocked.
fn lock_owner(root: &Path) -> Result<Flock<File>> {
    let tmp = root.join(format!("{OWNER_LOCK}.new"));
    let file = File::create(&tmp).map_err(Error::io_with(format!("creating {}", tmp.display())))?;
    let lock =
        Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| Error::Backend {
            op: "setup_stage",
            message: format!("locking {}: {e}", tmp.display()),
        })?;
    fs::rename(&tmp, root.join(OWNER_LOCK))
        .map_err(Error::io_with(format!("renaming {}", tmp.display())))?;
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_makes_directory_names() {
        assert_eq!(sanitize("test (features=full)"), "test--features-full-");
        assert_eq!(sanitize(""), "stage");
        assert_eq!(sanitize(&"x".repeat(100)).len(), 40);
    }
}
