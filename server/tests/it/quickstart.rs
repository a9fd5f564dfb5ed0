//! The README's quick start, end to end: a real server process, a real bare git
//! repository with the `slipway hook` post-receive hook, a `git push`, and the run
//! planned, executed by the in-process runner and readable through the API.

use std::path::Path;
use std::process::Command;

use crate::support::process::{free_port, slipway_bin};

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
