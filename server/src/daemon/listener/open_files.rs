//! The process's open-file limit, which every connection counts against.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors kept free of connections for everything else the server opens: the
/// database, log and blob files, git mirrors, the in-process runner's steps.
pub(super) const RESERVED: u64 = 256;

/// The fewest connections the limit is ever lowered to.
const FLOOR: usize = 16;

/// Raises the soft open-file limit to the hard one (capped at 2^20), as servers and the
/// Go runtime do; the soft limit in force afterwards (`None` if it cannot be read).
pub(super) fn raise() -> Option<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    let want = hard.min(1 << 20);
    if soft < want && setrlimit(Resource::RLIMIT_NOFILE, want, hard).is_ok() {
        return Some(want);
    }
    Some(soft)
}

/// The connection limit that fits in `open_files` with [`RESERVED`] left over.
pub(super) fn fit(configured: usize, open_files: Option<u64>) -> usize {
    match open_files {
        Some(files) => {
            let room = usize::try_from(files.saturating_sub(RESERVED)).unwrap_or(usize::MAX);
            configured.min(room.max(FLOOR))
        }
        None => configured,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_leaves_room_for_other_files() {
        assert_eq!(fit(1024, Some(1024)), 768);
        assert_eq!(fit(1024, Some(65_536)), 1024);
        assert_eq!(fit(100, Some(1024)), 100);
        assert_eq!(fit(1024, Some(100)), FLOOR);
        assert_eq!(fit(1024, None), 1024);
    }
}
