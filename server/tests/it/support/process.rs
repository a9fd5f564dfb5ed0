//! The real `slipway` binary: commands, `slipway server` and `slipway runner` processes
//! with their logs, killed when the test ends however it ends.

use std::fmt::Display;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::poll::{TimedOut, eventually_blocking, poll_until, poll_until_blocking};

/// The `slipway` binary under test. `SLIPWAY_TEST_BIN` overrides Cargo's path: with a
/// target directory shared between branches, another build can replace the binary
/// between this crate's build and the test run. Outside the server package (the
/// `tests` crate includes this file) it is the one of the same build.
pub fn slipway_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SLIPWAY_TEST_BIN") {
        return PathBuf::from(p);
    }
    if let Some(p) = option_env!("CARGO_BIN_EXE_slipway") {
        return p.into();
    }
    // A test executable is in target/<profile>/deps, a bench binary beside `slipway`.
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe.parent().expect("the executable's directory");
    [dir.join("slipway"), dir.join("../slipway")]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "no slipway binary beside {}: build it first (`cargo build -p server --bin \
                 slipway`; `cargo nextest run --workspace` does) or set SLIPWAY_TEST_BIN",
                exe.display()
            )
        })
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

/// A free port on 127.0.0.1, for a process that must be told its address up front.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `slipway` processes of one test: a temp dir holding the data dir and every
/// process's log (`<name>.log`), a port for the server, the environment they share.
pub struct Processes {
    pub dir: tempfile::TempDir,
    pub port: u16,
    env: Vec<(String, String)>,
    children: Vec<(String, Killed)>,
    started: Vec<String>,
}

impl Default for Processes {
    fn default() -> Self {
        Self::new()
    }
}

impl Processes {
    pub fn new() -> Processes {
        Processes {
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            env: Vec::new(),
            children: Vec::new(),
            started: Vec::new(),
        }
    }

    /// A variable every command gets (`SLIPWAY_HEARTBEAT_TIMEOUT`, …).
    pub fn env(mut self, key: &str, value: &str) -> Processes {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    /// `slipway` on the data dir and port, logging at `info`.
    pub fn command(&self) -> Command {
        let mut cmd = slipway();
        cmd.env("SLIPWAY_DATA_DIR", self.data())
            .env("SLIPWAY_LISTEN", self.addr().to_string())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// `slipway <args>`, which must succeed; its stdout, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        self.cli_with_input(args, "")
    }

    /// [`Processes::cli`] with `input` on stdin.
    pub fn cli_with_input(&self, args: &[&str], input: &str) -> String {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "slipway {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// Starts `cmd` as `name`, its output appended to `<name>.log` (a restart under the
    /// same name keeps the first run's log).
    pub fn spawn(&mut self, name: &str, mut cmd: Command) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(name))
            .unwrap();
        let child = Killed::spawn(cmd.stdout(log.try_clone().unwrap()).stderr(log));
        self.children.push((name.to_string(), child));
        if !self.started.iter().any(|n| n == name) {
            self.started.push(name.to_string());
        }
    }

    /// `slipway server` as `name`, not waiting for it.
    pub fn spawn_server(&mut self, name: &str) {
        let mut cmd = self.command();
        cmd.arg("server");
        self.spawn(name, cmd);
    }

    /// `slipway server` as `name`, once it answers `/readyz`.
    pub fn start_server(&mut self, name: &str) {
        self.spawn_server(name);
        self.wait_ready(name);
    }

    /// [`Processes::start_server`] with at most `nofile` open files (soft and hard
    /// limit, set by `ulimit -n` in a shell that then becomes the server).
    pub fn start_server_with_fd_limit(&mut self, name: &str, nofile: u64) {
        let server = self.command();
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" server"))
            .arg(server.get_program())
            .stdin(Stdio::null());
        for (k, v) in server.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        self.spawn(name, cmd);
        self.wait_ready(name);
    }

    /// The process id of the process started as `name`.
    pub fn pid(&mut self, name: &str) -> u32 {
        self.child(name).id()
    }

    /// Waits until the server started as `name` answers `/readyz` (or panics with its
    /// log if it exits first).
    fn wait_ready(&mut self, name: &str) {
        let addr = self.addr();
        let child = self.child(name);
        // Done when ready, or when it exited (the inner error).
        let started = poll_until_blocking(Duration::from_secs(60), || {
            match child.try_wait().unwrap() {
                Some(status) => Ok(Err(status)),
                None => ready(addr).map(Ok),
            }
        });
        match started {
            Ok(Ok(())) => {}
            Ok(Err(status)) => panic!("{name} exited: {status}\n{}", self.logs()),
            Err(t) => self.timed_out(&format!("{name} to be ready"), t),
        }
    }

    /// `slipway runner` as `name` against this server, working in `work-<name>`.
    pub fn start_runner(&mut self, name: &str, token: &str, args: &[&str]) {
        let mut cmd = runner(&self.url("/"), name, &self.work_dir(name), token);
        cmd.args(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.spawn(name, cmd);
    }

    pub fn work_dir(&self, runner: &str) -> PathBuf {
        self.dir.path().join(format!("work-{runner}"))
    }

    /// The exit status of the process started as `name`, if it has exited.
    pub fn exited(&mut self, name: &str) -> Option<ExitStatus> {
        self.child(name).try_wait().unwrap()
    }

    /// SIGKILLs the process started as `name`.
    pub fn kill(&mut self, name: &str) {
        let i = self.index(name);
        let (_, mut child) = self.children.remove(i);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn child(&mut self, name: &str) -> &mut Child {
        let i = self.index(name);
        &mut self.children[i].1
    }

    fn index(&self, name: &str) -> usize {
        self.children
            .iter()
            .position(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no process {name}"))
    }

    /// `GET /api/repos/team/app/runs/{number}` with `token`: `{"run": …, "stages": […]}`.
    pub async fn run_detail(&self, token: &str, repo: &str, number: i64) -> Result<Value, String> {
        let r = reqwest::Client::new()
            .get(self.url(&format!("/api/repos/{repo}/runs/{number}")))
            .bearer_auth(token)
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("run {number}: {}", r.status()));
        }
        r.json().await.map_err(|e| e.to_string())
    }

    /// Waits (bounded) until run `number` of `repo` has ended; its detail.
    pub async fn wait_run_end(
        &self,
        token: &str,
        repo: &str,
        number: i64,
        within: Duration,
    ) -> Value {
        self.wait(&format!("run {number} to end"), within, || async {
            let detail = self.run_detail(token, repo, number).await?;
            match detail["run"]["status"].as_str() {
                Some("success" | "failure" | "error" | "cancelled") => Ok(detail),
                other => Err(format!("run {number} is {other:?}")),
            }
        })
        .await
    }

    /// Reports a push of `sha` to `git_ref` of `repo` (`owner/name`) through the
    /// plain-git hook endpoint with `hook` (a hook token), again until the server
    /// accepts it: across restarts a delivery cut off is sent again, as a pusher re-runs
    /// git's hook.
    pub async fn hook_push_until_accepted(&self, hook: &str, repo: &str, sha: &str, git_ref: &str) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let body = serde_json::json!({ "updates": [{
            "old": "0".repeat(40), "new": sha, "ref": git_ref
        }] });
        self.wait(
            "the hook to be accepted",
            Duration::from_secs(30),
            || async {
                let r = client
                    .post(self.url(&format!("/hooks/git/{repo}")))
                    .bearer_auth(hook)
                    .json(&body)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if r.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("{}", r.status()))
                }
            },
        )
        .await
    }

    /// The text log of step `idx` of stage `key` in run `number` of `repo`.
    pub async fn step_log(
        &self,
        token: &str,
        repo: &str,
        number: i64,
        key: &str,
        idx: usize,
    ) -> String {
        let detail = self.run_detail(token, repo, number).await.unwrap();
        let stage = detail["stages"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["key"] == key))
            .unwrap_or_else(|| panic!("no stage {key} in {detail}"));
        let url = self.url(&format!(
            "/api/repos/{repo}/runs/{number}/stages/{}/steps/{idx}/logs.txt",
            stage["id"]
        ));
        reqwest::Client::new()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits (bounded) for `check`; a timeout shows its last answer and every log.
    pub async fn wait<T, S, F, Fut>(&self, what: &str, within: Duration, check: F) -> T
    where
        S: Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, S>>,
    {
        poll_until(within, check)
            .await
            .unwrap_or_else(|t| self.timed_out(what, t))
    }

    /// [`Processes::wait`] for plain `#[test]`s.
    pub fn wait_blocking<T, S, F>(&self, what: &str, within: Duration, check: F) -> T
    where
        S: Display,
        F: FnMut() -> Result<T, S>,
    {
        poll_until_blocking(within, check).unwrap_or_else(|t| self.timed_out(what, t))
    }

    fn timed_out<S: Display>(&self, what: &str, t: TimedOut<S>) -> ! {
        panic!(
            "timed out waiting for {what} ({:.1?}): {}\n{}",
            t.after,
            t.state,
            self.logs()
        )
    }

    /// Every log of every process started, for failure messages.
    pub fn logs(&self) -> String {
        self.started
            .iter()
            .map(|n| {
                let text = std::fs::read_to_string(self.log_path(n)).unwrap_or_default();
                format!("--- {n} log:\n{text}")
            })
            .collect()
    }
}

/// Whether a server answers `GET /readyz` with 200 (a bare HTTP/1.1 request: this runs
/// in plain `#[test]`s and inside runtimes alike).
fn ready(addr: SocketAddr) -> Result<(), String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    if answer.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!("not ready: {answer:?}"))
    }
}

/// `VmHWM` (peak) and `VmRSS` of process `pid`, in bytes.
pub fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            * 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}
