//! A small filesystem a test can fill: a `tmpfs` of a fixed size mounted on a
//! directory (the tests run as root), filled by a filler file until `ENOSPC`, emptied
//! again by removing it, and unmounted when the guard drops — a failing test included
//! (`umount`, then a lazy `umount -l` if something still holds it).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs; unmounted on drop.
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` on `dir` (created if missing). Panics with the reason
    /// if it cannot (`mount` needs root, or CAP_SYS_ADMIN).
    pub fn mount(dir: &Path, bytes: u64) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes},mode=0755"))
            .arg("tmpfs")
            .arg(dir)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs on {} failed (these tests need root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            dir: dir.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn filler(&self) -> PathBuf {
        self.dir.join("filler")
    }

    /// Bytes free for unprivileged writes.
    pub fn free(&self) -> u64 {
        let s = nix::sys::statvfs::statvfs(&self.dir).unwrap();
        s.blocks_available() as u64 * s.fragment_size() as u64
    }

    /// Writes the filler until the filesystem is full; the bytes it took.
    pub fn fill(&self) -> u64 {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.filler())
            .unwrap();
        let chunk = vec![0x5a_u8; 64 * 1024];
        let mut written = 0u64;
        // Smaller and smaller writes, so not even a page is left.
        for size in [chunk.len(), 4096, 512, 1] {
            loop {
                match f.write(&chunk[..size]) {
                    Ok(0) => break,
                    Ok(n) => written += n as u64,
                    Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32) => break,
                    Err(e) => panic!("filling {}: {e}", self.dir.display()),
                }
            }
        }
        written
    }

    /// Removes the filler: the space is back.
    pub fn empty(&self) {
        match std::fs::remove_file(self.filler()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("removing the filler: {e}"),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // A process of the test may still hold a file there: detach it now, the
            // kernel frees it once the last holder is gone.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}
