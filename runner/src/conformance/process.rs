//! Processes a step leaves behind, found through /proc: what the kill cases check.

use std::path::Path;
use std::time::{Duration, Instant};

/// How a step identifies a process it started: its pid as the step sees it, and
/// the step's PID namespace (`pid:[4026531836]`). The pair names the process on
/// any backend whose steps run on this host's kernel: the local backend (the
/// namespace is the test's own) and containers (their own namespace, whose pids
/// the host sees under other numbers). A step prints it with [`PRINT_GRANDCHILD`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessRef {
    pub pid: u32,
    pub pid_ns: String,
}

/// Shell that prints the last background job as a [`ProcessRef`] line.
pub const PRINT_GRANDCHILD: &str = "echo grandchild=$! $(readlink /proc/self/ns/pid)";

impl ProcessRef {
    /// Parses the `grandchild=<pid> <pid namespace>` line a step printed.
    pub fn from_lines(lines: &[String]) -> ProcessRef {
        let line = lines
            .iter()
            .find_map(|l| l.strip_prefix("grandchild="))
            .unwrap_or_else(|| panic!("step did not print its grandchild: {lines:?}"));
        let (pid, ns) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("grandchild line without a namespace: {line:?}"));
        ProcessRef {
            pid: pid.trim().parse().expect("grandchild pid"),
            pid_ns: ns.trim().to_owned(),
        }
    }

    /// Whether the process still runs `sleep`. Zombies count as dead: they are
    /// gone as far as resources go, and reaping them is the job of whatever PID 1
    /// they have. Scans the host's /proc for a process in the namespace whose
    /// innermost pid (the last `NSpid` field) matches.
    pub fn sleep_alive(&self) -> bool {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return false;
        };
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(host_pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let base = Path::new("/proc").join(host_pid);
            let Ok(ns) = std::fs::read_link(base.join("ns/pid")) else {
                continue;
            };
            if ns.to_string_lossy() != self.pid_ns {
                continue;
            }
            let Ok(status) = std::fs::read_to_string(base.join("status")) else {
                continue;
            };
            let inner = status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|v| v.split_whitespace().last())
                .and_then(|p| p.parse::<u32>().ok());
            if inner != Some(self.pid) {
                continue;
            }
            let state = status
                .lines()
                .find_map(|l| l.strip_prefix("State:"))
                .and_then(|v| v.trim_start().chars().next());
            if matches!(state, Some('Z') | Some('X')) {
                return false;
            }
            // A reused pid running something else is not our grandchild.
            let cmdline = std::fs::read(base.join("cmdline")).unwrap_or_default();
            return cmdline.windows(5).any(|w| w == b"sleep");
        }
        false
    }
}

/// Checks that the grandchild a step printed (see [`ProcessRef`]) is gone.
pub(super) async fn assert_grandchild_gone(run_lines: &[String]) {
    let grandchild = ProcessRef::from_lines(run_lines);
    // SIGKILL delivery is asynchronous; give the kernel a moment.
    let until = Instant::now() + Duration::from_secs(20);
    while grandchild.sleep_alive() {
        assert!(
            Instant::now() < until,
            "grandchild process {grandchild:?} survived the step"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
