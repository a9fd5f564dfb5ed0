//! One local step: `/bin/sh -e <script>` in its own process group, the readers of
//! its output pipes, and the monitor that reaps it (see the `local` module docs).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use super::stage_dir::StageDir;
use super::sweep;
use crate::backend::{LogChunk, LogStreamKind, StepExit};
use crate::error::{Error, Result};
use crate::lock::lock;
use crate::spec::StepSpec;

/// PATH for steps when the runner itself has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Size of one pipe read.
const READ_CHUNK: usize = 64 * 1024;
/// Chunks buffered between the pipe readers and the log consumer. Bounded so that
/// a step printing faster than the consumer keeps is slowed down (back-pressure)
/// instead of filling the runner's memory.
const CHUNK_BUFFER: usize = 16;
/// How long pipe readers may keep going after a step was destroyed before they are
/// aborted (only matters when a process escaped the group and holds a pipe).
const READER_GRACE: Duration = Duration::from_secs(30);
/// How long to wait for the process to be reaped after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(30);

type ExitResult = std::result::Result<StepExit, String>;

/// A started step.
pub(super) struct LocalStep {
    pgid: Pid,
    /// True while signalling `pgid` is safe. Set to false (under the lock) once the
    /// leader has exited and the group has been killed, *before* the leader is
    /// reaped: after reaping, the pid (= pgid) may be reused by an unrelated process.
    group_alive: Arc<Mutex<bool>>,
    exit: watch::Receiver<Option<ExitResult>>,
    logs: Mutex<Option<mpsc::Receiver<Result<LogChunk>>>>,
    readers: Vec<AbortHandle>,
}

impl LocalStep {
    /// Writes step `index`'s script into the stage directory and starts it with an
    /// empty environment plus a short allow-list, then `env` and the step's own.
    pub(super) async fn spawn(
        dir: &StageDir,
        env: &BTreeMap<String, String>,
        index: usize,
        step: &StepSpec,
    ) -> Result<LocalStep> {
        let script = dir.scripts.join(format!("step-{index}.sh"));
        tokio::fs::write(&script, step.script.as_bytes())
            .await
            .map_err(Error::io_with(format!("writing {}", script.display())))?;
        tokio::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700))
            .await
            .map_err(Error::io_with(format!("chmod {}", script.display())))?;

        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-e")
            .arg(&script)
            .current_dir(&dir.workspace)
            // Start from an empty environment: the runner's own variables (database
            // URLs, forge tokens, signing keys) must never leak into user scripts.
            // Only what a shell needs to work is added back, then the stage's and
            // the step's variables (the step wins, being more specific).
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH")
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| OsString::from(DEFAULT_PATH)),
            )
            .env("HOME", &dir.home)
            .env("LANG", "C.UTF-8")
            .env("TMPDIR", &dir.tmp)
            .envs(env)
            .envs(&step.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Own process group, so the whole tree can be signalled at once.
            .process_group(0)
            // Backstop if the monitor task is dropped (runtime shutdown).
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(Error::io_with(format!(
            "spawning step {index} ({})",
            step.name
        )))?;
        let pid = child.id().ok_or_else(|| Error::Backend {
            op: "start_step",
            message: "child exited before its pid was known".into(),
        })?;
        let pgid = Pid::from_raw(pid as i32);
        // The record a start-up sweep uses to kill this step if the runner dies
        // before the step ends. Written after the spawn: a runner killed in between
        // leaves an unrecorded step behind (a window of microseconds).
        let record = dir.pids.join(format!("step-{index}"));
        if let Some(start) = sweep::start_time(pgid.as_raw()) {
            std::fs::write(&record, format!("{pgid} {start}\n"))
                .map_err(Error::io_with(format!("writing {}", record.display())))?;
        }

        let (tx, rx) = mpsc::channel(CHUNK_BUFFER);
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(
                tokio::spawn(read_pipe(out, LogStreamKind::Stdout, tx.clone())).abort_handle(),
            );
        }
        if let Some(err) = child.stderr.take() {
            readers.push(
                tokio::spawn(read_pipe(err, LogStreamKind::Stderr, tx.clone())).abort_handle(),
            );
        }
        drop(tx);

        let group_alive = Arc::new(Mutex::new(true));
        let (exit_tx, exit_rx) = watch::channel(None);
        let alive = group_alive.clone();
        tokio::spawn(async move {
            // Wait for the leader to exit WITHOUT reaping it (WNOWAIT): while it is
            // a zombie its pid cannot be reused, so killing its group is safe.
            let waited = tokio::task::spawn_blocking(move || {
                loop {
                    match waitid(Id::Pid(pgid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                        Err(Errno::EINTR) => continue,
                        other => return other,
                    }
                }
            })
            .await;
            {
                let mut alive = lock(&alive);
                if matches!(waited, Ok(Ok(_))) {
                    // Background jobs left behind would hold the pipes open.
                    let _ = killpg(pgid, Signal::SIGKILL);
                }
                *alive = false;
                // Before reaping: a record must never name a pid that may be reused.
                let _ = std::fs::remove_file(&record);
            }
            let result = match child.wait().await {
                Ok(status) => Ok(StepExit {
                    exit_code: status
                        .code()
                        .or_else(|| status.signal().map(|s| 128 + s))
                        .unwrap_or(-1),
                    oom_killed: false,
                }),
                Err(e) => Err(format!("waiting for step process: {e}")),
            };
            let _ = exit_tx.send(Some(result));
        });

        Ok(LocalStep {
            pgid,
            group_alive,
            exit: exit_rx,
            logs: Mutex::new(Some(rx)),
            readers,
        })
    }

    /// The step's output; `None` once it was taken.
    pub(super) fn take_logs(&self) -> Option<mpsc::Receiver<Result<LogChunk>>> {
        lock(&self.logs).take()
    }

    /// Waits for the main process to be reaped.
    pub(super) async fn wait(&self) -> Result<StepExit> {
        let mut rx = self.exit.clone();
        let value = rx
            .wait_for(|v| v.is_some())
            .await
            .map_err(|_| Error::Backend {
                op: "wait_step",
                message: "step monitor ended without an exit status".into(),
            })?
            .clone();
        match value {
            Some(Ok(exit)) => Ok(exit),
            Some(Err(message)) => Err(Error::Backend {
                op: "wait_step",
                message,
            }),
            None => unreachable!("wait_for returned on Some"),
        }
    }

    /// SIGTERM, `grace`, SIGKILL; returns once the main process is reaped.
    pub(super) async fn kill(&self, grace: Duration) -> Result<()> {
        if !self.exited() {
            self.signal(Signal::SIGTERM);
            if !self.wait_exit(grace).await {
                self.signal(Signal::SIGKILL);
                if !self.wait_exit(KILL_WAIT).await {
                    return Err(Error::Backend {
                        op: "destroy_step",
                        message: format!("process group {} did not exit after SIGKILL", self.pgid),
                    });
                }
            }
        }
        // The group was killed by the exit monitor; readers end at EOF. Abort them
        // later in case an escaped process holds a pipe open.
        let readers = self.readers.clone();
        tokio::spawn(async move {
            tokio::time::sleep(READER_GRACE).await;
            for r in readers {
                r.abort();
            }
        });
        Ok(())
    }

    fn signal(&self, sig: Signal) {
        let alive = lock(&self.group_alive);
        if *alive {
            // ESRCH (already gone) is fine.
            let _ = killpg(self.pgid, sig);
        }
    }

    fn exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    async fn wait_exit(&self, limit: Duration) -> bool {
        let mut rx = self.exit.clone();
        matches!(
            tokio::time::timeout(limit, rx.wait_for(|v| v.is_some())).await,
            Ok(Ok(_))
        )
    }
}

async fn read_pipe(
    mut pipe: impl AsyncRead + Unpin,
    stream: LogStreamKind,
    tx: mpsc::Sender<Result<LogChunk>>,
) {
    loop {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        match pipe.read_buf(&mut buf).await {
            Ok(0) => return,
            Ok(_) => {
                let chunk = LogChunk {
                    stream,
                    bytes: buf.freeze(),
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    // Nobody tails any more; stop reading (the step gets SIGPIPE).
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx
                    .send(Err(Error::io(format!("reading step {stream:?}"), e)))
                    .await;
                return;
            }
        }
    }
}
