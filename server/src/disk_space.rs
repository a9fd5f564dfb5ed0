//! Looking at the local disk: free bytes (statvfs), a probe write, and which I/O
//! errors mean "out of space" — for the log and blob stores, which map those onto 507,
//! and for `daemon::disk`'s health. Blocking: callers wrap these in `spawn_blocking`.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The probe file in a directory: written, synced and removed by each probe.
const PROBE_FILE: &str = ".slipway-write-probe";
/// Bytes a probe writes: a page, so a full filesystem refuses it.
const PROBE_BYTES: usize = 4096;

/// `ENOSPC` or `EDQUOT`: the write failed for want of space, not for a fault of its
/// own, and the same write works once there is room.
pub fn is_disk_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || e.raw_os_error().is_some_and(|c| {
            c == nix::errno::Errno::ENOSPC as i32 || c == nix::errno::Errno::EDQUOT as i32
        })
}

/// Bytes an unprivileged process may still write on `dir`'s filesystem.
#[allow(
    clippy::useless_conversion,
    reason = "fsblkcnt_t and c_ulong are u64 on 64-bit Linux only"
)]
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let s = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(u64::from(s.blocks_available()).saturating_mul(u64::from(s.fragment_size())))
}

/// Writes, syncs and removes a small file in `dir`; the error if any step fails (the
/// file is removed whatever happens).
pub fn probe_dir(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(PROBE_FILE);
    let written = (|| {
        let mut f = std::fs::File::create(&path)?;
        f.write_all(&[0u8; PROBE_BYTES])?;
        f.sync_data()
    })();
    let removed = match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    written.and(removed)
}

/// The directory of a SQLite database URL's file (`sqlite://path?…`, `sqlite:path`),
/// if it names a file: its disk is watched too.
pub fn sqlite_dir(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() || path.contains(":memory:") || url.contains("mode=memory") {
        return None;
    }
    let parent = Path::new(path).parent()?;
    Some(if parent.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        parent.to_path_buf()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_dirs() {
        assert_eq!(
            sqlite_dir("sqlite:///srv/slipway/slipway.db?mode=rwc"),
            Some(PathBuf::from("/srv/slipway"))
        );
        assert_eq!(
            sqlite_dir("sqlite://slipway-data/slipway.db?mode=rwc"),
            Some(PathBuf::from("slipway-data"))
        );
        assert_eq!(sqlite_dir("sqlite:x.db"), Some(PathBuf::from(".")));
        assert_eq!(sqlite_dir("sqlite::memory:"), None);
        assert_eq!(sqlite_dir("postgres://u@h/db"), None);
    }

    #[test]
    fn probes_leave_nothing_and_space_errors_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        probe_dir(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(free_bytes(dir.path()).unwrap() > 0);
        assert!(probe_dir(&dir.path().join("missing")).is_err());
        assert!(is_disk_full(&std::io::Error::from_raw_os_error(
            nix::errno::Errno::ENOSPC as i32
        )));
        assert!(!is_disk_full(&std::io::Error::from_raw_os_error(
            nix::errno::Errno::EACCES as i32
        )));
    }
}
