//! The real `slipway` binary: commands and `slipway runner` processes, killed when the
//! test ends however it ends.

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::poll::eventually_blocking;

/// The `slipway` binary under test. `SLIPWAY_TEST_BIN` overrides Cargo's path: with a
/// target directory shared between branches, another build can replace the binary
/// between this crate's build and the test run.
pub fn slipway_bin() -> PathBuf {
    std::env::var_os("SLIPWAY_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_slipway").into())
}

/// `slipway` without the test's own `SLIPWAY_*` settings, and without colours.
pub fn slipway() -> Command {
    let mut cmd = Command::new(slipway_bin());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SLIPWAY_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("NO_COLOR", "1").env_remove("CLICOLOR_FORCE");
    cmd
}

/// `slipway runner` for `server`, named `name`, working in `work_dir`, with `token`.
pub fn runner(server: &str, name: &str, work_dir: &Path, token: &str) -> Command {
    std::fs::create_dir_all(work_dir).unwrap();
    let mut cmd = slipway();
    cmd.args(["runner", "--server", server, "--name", name])
        .arg("--work-dir")
        .arg(work_dir)
        .env("SLIPWAY_RUNNER_TOKEN", token)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    cmd
}

/// A child process that is killed when dropped.
pub struct Killed(pub Child);

impl Killed {
    pub fn spawn(cmd: &mut Command) -> Killed {
        Killed(cmd.spawn().unwrap())
    }
}

impl Deref for Killed {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for Killed {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (bounded) for `child` to exit.
pub fn wait_exit(child: &mut Child, within: Duration) -> ExitStatus {
    eventually_blocking("the process to exit", within, || {
        child.try_wait().unwrap().ok_or("still running")
    })
}
