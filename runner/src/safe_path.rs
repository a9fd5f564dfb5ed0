//! Writing files into a directory by a name that came from elsewhere (an artifact
//! uploaded by another stage, an entry of a cache tar) without ever landing outside
//! that directory.
//!
//! A name is checked as text first ([`check_name`]: relative, `/`-separated, no `..`,
//! `.` or empty components, no backslash or NUL). Then, because the directory holds
//! a checked-out commit that may contain symlinks, every parent component is looked
//! at with `symlink_metadata` and a symlink is refused rather than followed; the file
//! itself is created with `O_NOFOLLOW` and `create_new`, after removing a regular
//! file of the same name. Nothing else writes to the directory meanwhile (this runs
//! before the stage's steps start), so the checks cannot be raced.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Longest accepted name, in bytes (a path, not just a file name).
pub const MAX_NAME_BYTES: usize = 1024;

/// Why a name is refused, or `Ok` for a safe relative path.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!("the name is longer than {MAX_NAME_BYTES} bytes"));
    }
    if name.contains('\0') {
        return Err("the name contains a NUL byte".into());
    }
    if name.contains('\\') {
        return Err("the name contains a backslash; use `/` between components".into());
    }
    if name.starts_with('/') {
        return Err("absolute paths are not allowed; names are relative to the workspace".into());
    }
    for part in name.split('/') {
        match part {
            "" => return Err("the name has an empty component (`//` or a trailing `/`)".into()),
            "." => return Err("the name has a `.` component".into()),
            ".." => return Err("`..` is not allowed; names must stay inside the workspace".into()),
            _ => {}
        }
    }
    Ok(())
}

fn refused(name: &str, why: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("refusing to write `{name}`: {why}"),
    )
}

/// Creates (or finds) the parent directories of `name` under `root`, refusing to go
/// through a symlink or a non-directory. Returns the path of the final component.
fn parents(root: &Path, name: &str) -> io::Result<PathBuf> {
    check_name(name).map_err(|why| refused(name, why))?;
    let parts: Vec<&str> = name.split('/').collect();
    let mut dir = root.to_path_buf();
    for part in &parts[..parts.len() - 1] {
        dir.push(part);
        match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(refused(
                    name,
                    format!(
                        "`{}` is a symlink",
                        dir.strip_prefix(root).unwrap_or(&dir).display()
                    ),
                ));
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(refused(
                    name,
                    format!(
                        "`{}` is not a directory",
                        dir.strip_prefix(root).unwrap_or(&dir).display()
                    ),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new().mode(0o755).create(&dir)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(root.join(name))
}

/// Creates the file `name` under `root` for writing, with permission bits `mode`.
/// An existing regular file of that name is replaced; a symlink or a directory there
/// is refused.
pub fn create_file_in(root: &Path, name: &str, mode: u32) -> io::Result<fs::File> {
    let path = parents(root, name)?;
    match fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(refused(name, "a symlink of that name exists"));
        }
        Ok(meta) if meta.is_dir() => return Err(refused(name, "a directory of that name exists")),
        Ok(_) => fs::remove_file(&path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & 0o777)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(&path)
}

/// Creates the directory `name` (and its parents) under `root`; an existing
/// directory is fine, a symlink anywhere on the way is refused.
pub fn create_dir_in(root: &Path, name: &str) -> io::Result<()> {
    let path = parents(root, name)?;
    match fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_symlink() => Err(refused(name, "it is a symlink")),
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(refused(name, "a file of that name exists")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new().mode(0o755).create(&path)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::{PermissionsExt, symlink};

    #[test]
    fn names_that_could_escape_are_refused() {
        for good in ["a", "out/a.txt", "dist/x/y.js", ".hidden", "a..b"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("/etc/passwd", "absolute"),
            ("../../etc/passwd", "`..`"),
            ("out/../../x", "`..`"),
            ("a//b", "empty component"),
            ("a/", "empty component"),
            ("./a", "`.`"),
            ("a\\b", "backslash"),
            ("a\0b", "NUL"),
        ] {
            let err = check_name(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        assert!(check_name(&"a".repeat(MAX_NAME_BYTES + 1)).is_err());
    }

    #[test]
    fn files_are_created_replaced_and_never_written_through_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let r = root.path();
        let mut f = create_file_in(r, "out/sub/a.txt", 0o755).unwrap();
        f.write_all(b"one").unwrap();
        drop(f);
        let meta = fs::metadata(r.join("out/sub/a.txt")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
        // A regular file is replaced.
        create_file_in(r, "out/sub/a.txt", 0o644)
            .unwrap()
            .write_all(b"two")
            .unwrap();
        assert_eq!(fs::read(r.join("out/sub/a.txt")).unwrap(), b"two");

        // A symlinked parent directory pointing outside is refused.
        symlink(outside.path(), r.join("link")).unwrap();
        let err = create_file_in(r, "link/x.txt", 0o644).unwrap_err();
        assert!(err.to_string().contains("`link` is a symlink"), "{err}");
        assert!(create_dir_in(r, "link/sub").is_err());
        // A symlink as the file itself is refused, not followed.
        let target = outside.path().join("victim");
        fs::write(&target, "keep").unwrap();
        symlink(&target, r.join("file-link")).unwrap();
        let err = create_file_in(r, "file-link", 0o644).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(fs::read(&target).unwrap(), b"keep");
        assert!(fs::read_dir(outside.path()).unwrap().count() == 1);
        // A file where a directory is needed.
        assert!(create_file_in(r, "out/sub/a.txt/b", 0o644).is_err());
        assert!(create_file_in(r, "../escape", 0o644).is_err());
        create_dir_in(r, "d/e").unwrap();
        assert!(r.join("d/e").is_dir());
    }
}
