//! A tarball of a commit's tree, like `git archive --format=tar`.
//!
//! The Kubernetes backend ships sources into pods this way, so pods never hold forge
//! credentials and never talk to the forge.

use std::io::{self, Write};
use std::path::PathBuf;

use git2::{ObjectType, Tree};
use tar::{Builder, EntryType, Header};

use super::{GitError, Mirror, Result};

const MODE_BLOB_EXECUTABLE: i32 = 0o100755;
const MODE_LINK: i32 = 0o120000;
const MODE_SUBMODULE: i32 = 0o160000;

impl Mirror {
    /// Writes the tree of commit `sha` to `writer` as a tar archive with paths relative to
    /// the repository root: directories, regular files (mode 0644, or 0755 when executable in
    /// git), symlinks, and an empty directory for each submodule (as `git archive` does).
    /// Every entry's mtime is the commit time, so the same commit always gives the same bytes.
    ///
    /// Blocking, and each file is held in memory while it is written; stream `writer` to its
    /// destination rather than into a `Vec` for large repositories.
    pub fn archive<W: Write>(&self, sha: &str, writer: W) -> Result<()> {
        let commit = self.commit(sha)?;
        let sha = commit.id().to_string();
        let mtime = u64::try_from(commit.time().seconds()).unwrap_or(0);
        let tree = commit.tree()?;
        let mut builder = Builder::new(writer);
        let mut ctx = Ctx {
            mirror: self,
            builder: &mut builder,
            mtime,
        };
        let result = ctx.tree(&tree, &mut Vec::new());
        match result {
            Ok(()) => builder
                .into_inner()
                .map(drop)
                .map_err(|source| GitError::Archive { sha, source }),
            Err(Failure::Git(e)) => Err(e.into()),
            Err(Failure::Io(source)) => Err(GitError::Archive { sha, source }),
        }
    }
}

enum Failure {
    Git(git2::Error),
    Io(io::Error),
}

impl From<git2::Error> for Failure {
    fn from(e: git2::Error) -> Self {
        Failure::Git(e)
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Io(e)
    }
}

struct Ctx<'a, W: Write> {
    mirror: &'a Mirror,
    builder: &'a mut Builder<W>,
    mtime: u64,
}

impl<W: Write> Ctx<'_, W> {
    /// Writes the entries of `tree`, whose path is `prefix` (raw bytes: git paths need not be
    /// UTF-8, and the archive keeps them exactly).
    fn tree(&mut self, tree: &Tree<'_>, prefix: &mut Vec<u8>) -> Result<(), Failure> {
        for entry in tree.iter() {
            let len = prefix.len();
            if !prefix.is_empty() {
                prefix.push(b'/');
            }
            prefix.extend_from_slice(entry.name_bytes());
            let path = bytes_to_path(prefix);
            match (entry.kind(), entry.filemode()) {
                (Some(ObjectType::Tree), _) => {
                    self.directory(&path)?;
                    let subtree = self.mirror.repo.find_tree(entry.id())?;
                    self.tree(&subtree, prefix)?;
                }
                (_, MODE_SUBMODULE) => self.directory(&path)?,
                (Some(ObjectType::Blob), MODE_LINK) => {
                    let blob = self.mirror.repo.find_blob(entry.id())?;
                    let mut header = self.header(EntryType::Symlink, 0o777, 0);
                    self.builder
                        .append_link(&mut header, &path, bytes_to_path(blob.content()))?;
                }
                (Some(ObjectType::Blob), mode) => {
                    let blob = self.mirror.repo.find_blob(entry.id())?;
                    let perm = if mode == MODE_BLOB_EXECUTABLE {
                        0o755
                    } else {
                        0o644
                    };
                    let mut header = self.header(EntryType::Regular, perm, blob.size() as u64);
                    self.builder
                        .append_data(&mut header, &path, blob.content())?;
                }
                // Nothing else appears in a valid tree.
                _ => {}
            }
            prefix.truncate(len);
        }
        Ok(())
    }

    fn directory(&mut self, path: &std::path::Path) -> Result<(), Failure> {
        let mut header = self.header(EntryType::Directory, 0o755, 0);
        self.builder.append_data(&mut header, path, io::empty())?;
        Ok(())
    }

    fn header(&self, kind: EntryType, mode: u32, size: u64) -> Header {
        let mut header = Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(size);
        header.set_mtime(self.mtime);
        header.set_uid(0);
        header.set_gid(0);
        header
    }
}

#[cfg(unix)]
fn bytes_to_path(bytes: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
}

#[cfg(not(unix))]
fn bytes_to_path(bytes: &[u8]) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(bytes).into_owned())
}
