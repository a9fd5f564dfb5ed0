//! The README's quick start, end to end: a real server process, a real bare git
//! repository with the `slipway hook` post-receive hook, a `git push`, and the run
//! planned, executed by the in-process runner and readable through the API.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::process::{Killed, Processes, free_port, slipway_bin, wait_exit};

#[test]
fn a_git_push_runs_the_example_pipeline() {
    let work = tempfile::tempdir().unwrap();
    // A free port for the server (the script needs it before the server starts).
    let port = free_port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("SLIPWAY", slipway_bin())
        .env("SLIPWAY_QUICKSTART_DIR", work.path())
        .env("SLIPWAY_QUICKSTART_PORT", port.to_string())
        .env_remove("SLIPWAY_QUICKSTART_KEEP")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let log = std::fs::read_to_string(work.path().join("server.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}\nserver log:\n{log}"
    );
    assert!(stdout.contains("refs/heads/main → run #1"), "{stdout}");
    for stage in [
        "lint",
        "test (shell_mode=strict)",
        "test (shell_mode=relaxed)",
        "package",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(stage))
            .unwrap_or_else(|| panic!("no line for {stage}:\n{stdout}"));
        assert!(line.contains("success"), "{line}");
    }
    assert!(stdout.contains("built for main at "), "{stdout}");
    assert!(stdout.trim_end().ends_with("run #1: success"), "{stdout}");
    // Tokens printed by the CLI never reach the server's log.
    assert!(
        !log.contains("slp_"),
        "a token reached the server log:\n{log}"
    );
}

/// With the port already answered by another Slipway server, the quick start stops at
/// once and says why, instead of registering and pushing against a server it did not
/// start (and then waiting minutes for a run that never comes).
#[test]
fn a_port_held_by_another_server_stops_the_quick_start_at_once() {
    let mut other = Processes::new();
    other.start_server("other");
    let work = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart.sh");
    let mut child = Killed::spawn(
        Command::new("bash")
            .arg(&script)
            .env("SLIPWAY", slipway_bin())
            .env("SLIPWAY_QUICKSTART_DIR", work.path())
            .env("SLIPWAY_QUICKSTART_PORT", other.port.to_string())
            .env_remove("SLIPWAY_QUICKSTART_KEEP")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    // Fast: the server it starts cannot bind the port and exits; nothing else is tried.
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains(&format!("is port {} taken", other.port)),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(!stdout.contains("git push"), "{stdout}");
    // The other server saw nothing of it: no repository, no hook call.
    assert_eq!(other.cli(&["repo", "list"]), "");
    assert!(other.exited("other").is_none(), "{}", other.logs());
}
