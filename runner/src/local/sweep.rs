//! Start-up sweep for the local backend: what a crashed runner left behind.
//!
//! A runner killed with SIGKILL (or a server hosting the in-process runner) cannot
//! kill its steps: their process groups are orphaned and go on running, while the
//! server re-leases the stage after the lease expires — two copies of one step at
//! once. Docker runners sweep their labelled containers at start-up; this is the
//! local equivalent.
//!
//! Ownership: each stage directory holds `owner.lock`, `flock`ed by the backend that
//! created it for as long as the stage exists. The kernel drops the lock when that
//! process dies, however it dies, so a lock the sweep can take marks a stage whose
//! owner is gone — and a runner sharing the base directory with another live one
//! never sweeps the other's stages.
//!
//! Processes: each running step has a record `pids/step-<n>` = `<pid> <start time>`
//! (the leader's pid = its process group id, and its start time in clock ticks since
//! boot from `/proc/<pid>/stat`). A pid and a start time together name one process
//! for the life of the host, so a recycled pid is never mistaken for the step; on top
//! of that the process must still look like ours (`/bin/sh -e <stage>/scripts/…`, or
//! the stage's `HOME`/`TMPDIR` in its environment) before anything is signalled.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use super::stage_dir::{OWNER_LOCK, PIDS_DIR, STAGE_PREFIX};
use crate::workspace;

/// How long the sweep waits for killed processes to die.
const DEATH_WAIT: Duration = Duration::from_secs(10);

/// What [`LocalBackend::sweep`](crate::LocalBackend::sweep) found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Stage directories of dead owners, removed.
    pub removed_stages: Vec<PathBuf>,
    /// Processes killed (SIGKILL; a step's whole group where its leader was alive).
    pub killed: Vec<i32>,
    /// Recorded pids left alone: the process is not verifiably a step of ours
    /// (the pid was reused, or it no longer looks like a step).
    pub spared: Vec<i32>,
    /// Stage directories still locked by a live backend, left alone.
    pub in_use: usize,
    /// Problems that did not stop the sweep (a directory that could not be removed…).
    pub errors: Vec<String>,
}

impl SweepReport {
    /// True when the sweep found nothing to do.
    pub fn is_empty(&self) -> bool {
        self.removed_stages.is_empty()
            && self.killed.is_empty()
            && self.spared.is_empty()
            && self.errors.is_empty()
    }
}

/// The start-up sweep of `base` (blocking).
pub(crate) fn sweep(base: &Path) -> std::io::Result<SweepReport> {
    let mut report = SweepReport::default();
    let entries = match fs::read_dir(base) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if !name.as_bytes().starts_with(STAGE_PREFIX.as_bytes()) {
            continue;
        }
        let dir = entry.path();
        // Not following symlinks: only real directories are ours.
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            _ => continue,
        }
        let Ok(file) = File::open(dir.join(OWNER_LOCK)) else {
            // No lock: not a stage of this backend (or of an older version).
            continue;
        };
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                report.in_use += 1;
                continue;
            }
            Err((_, e)) => {
                report
                    .errors
                    .push(format!("locking {}: {e}", dir.join(OWNER_LOCK).display()));
                continue;
            }
        };
        sweep_stage(&dir, &mut report);
        // Removed while still holding the lock, so that no second sweeper works on it.
        match workspace::remove_tree(&dir) {
            Ok(()) => report.removed_stages.push(dir),
            Err(e) => report
                .errors
                .push(format!("removing {}: {e}", dir.display())),
        }
        drop(lock);
    }
    Ok(report)
}

/// Kills the live processes recorded in one dead owner's stage directory.
fn sweep_stage(root: &Path, report: &mut SweepReport) {
    let Ok(records) = fs::read_dir(root.join(PIDS_DIR)) else {
        return;
    };
    let mut killed = Vec::new();
    // Group members killed with their leader: waited for, not reported separately.
    let mut waited: Vec<(i32, u64)> = Vec::new();
    for record in records.flatten() {
        let Ok(text) = fs::read_to_string(record.path()) else {
            continue;
        };
        let mut fields = text.split_whitespace();
        let (Some(Ok(pid)), Some(Ok(start))) = (
            fields.next().map(str::parse::<i32>),
            fields.next().map(str::parse::<u64>),
        ) else {
            continue; // half-written record: its step never got going
        };
        if pid <= 1 {
            continue;
        }
        match proc_stat(pid) {
            // Same pid, another process: our group died and the pid was reused
            // (a pid cannot be reused while a group of that id has members).
            Some(st) if st.start_time != start => {
                report.spared.push(pid);
                continue;
            }
            Some(st) if st.state != 'Z' => {
                if st.pgrp == pid && looks_like_ours(pid, root) {
                    // The whole group at once: the leader and all its children. Note
                    // the members first, so the wait below covers them too (SIGKILL
                    // is delivered asynchronously; a child can outlive its leader
                    // by a moment).
                    let members: Vec<(i32, u64)> = group_members(pid)
                        .into_iter()
                        .filter(|m| *m != pid)
                        .filter_map(|m| proc_stat(m).map(|st| (m, st.start_time)))
                        .collect();
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                    killed.push((pid, start));
                    waited.extend(members);
                } else {
                    report.spared.push(pid);
                }
                continue;
            }
            // Leader gone or a zombie: members of its group may still run.
            _ => {}
        }
        // No leader to vouch for the group: each member must look like ours.
        for member in group_members(pid) {
            if looks_like_ours(member, root) {
                let _ = kill(Pid::from_raw(member), Signal::SIGKILL);
                if let Some(st) = proc_stat(member) {
                    killed.push((member, st.start_time));
                }
            }
        }
    }
    // SIGKILL cannot be caught, but wait until they are really gone (or zombies
    // waiting for init), so that nothing of theirs runs once the sweep returns.
    let deadline = Instant::now() + DEATH_WAIT;
    for &(pid, start) in killed.iter().chain(&waited) {
        while is_running(pid, start) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if is_running(pid, start) {
            report
                .errors
                .push(format!("process {pid} still alive after SIGKILL"));
        }
    }
    report.killed.extend(killed.into_iter().map(|(pid, _)| pid));
}

struct ProcStat {
    state: char,
    pgrp: i32,
    start_time: u64,
}

fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid pgrp …`: comm may hold spaces and parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        // Field 22 of stat(5); `fields` starts at field 3.
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// The start time of a process (clock ticks since boot), for its record.
pub(crate) fn start_time(pid: i32) -> Option<u64> {
    proc_stat(pid).map(|s| s.start_time)
}

fn is_running(pid: i32, start: u64) -> bool {
    matches!(proc_stat(pid), Some(st) if st.start_time == start && st.state != 'Z')
}

/// Live processes whose process group is `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| matches!(proc_stat(pid), Some(st) if st.pgrp == pgid && st.state != 'Z'))
        .collect()
}

/// True if `pid` is a step shell of the stage at `root` (`/bin/sh -e <root>/scripts/…`)
/// or a process started under it (the stage's `HOME` or `TMPDIR` in its environment).
fn looks_like_ours(pid: i32, root: &Path) -> bool {
    if let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) {
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.len() >= 3
            && args[0] == b"/bin/sh"
            && args[1] == b"-e"
            && Path::new(OsStr::from_bytes(args[2])).starts_with(root.join("scripts"))
        {
            return true;
        }
    }
    let Ok(environ) = fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let mut home = b"HOME=".to_vec();
    home.extend_from_slice(root.join("home").as_os_str().as_bytes());
    let mut tmp = b"TMPDIR=".to_vec();
    tmp.extend_from_slice(root.join("tmp").as_os_str().as_bytes());
    environ
        .split(|b| *b == 0)
        .any(|v| v == home.as_slice() || v == tmp.as_slice())
}
