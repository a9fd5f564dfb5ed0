//! The local backend: steps are child processes on the runner host.
//!
//! Layout of a stage (`<base>/slipway-<id>-XXXX/`, mode 0700 so other users of the
//! host cannot read the workspace or the scripts):
//! - `workspace/` — the checkout, the steps' working directory, shared by all steps;
//! - `home/`, `tmp/` — `HOME` and `TMPDIR`, so tools do not write caches into the
//!   runner user's real home or leave litter in the shared `/tmp`;
//! - `scripts/` — each step's script, outside the workspace so that a step (or an
//!   artifact glob like `**`) never sees or ships it;
//! - `owner.lock` — `flock`ed by the backend for the life of the stage, and
//!   `pids/step-<n>` — a record of each running step's process group: together they
//!   let [`LocalBackend::sweep`] find and kill the steps of a runner that crashed
//!   (see the `sweep` module).
//!
//! Process handling: each step is `/bin/sh -e <script>` in its own process group,
//! so that a timeout or a cancel can kill the whole tree (`make` → `cc` →
//! `sleep 300 &`) with one `killpg`. When the step's main process exits, whatever
//! is left in its group is killed too: a forgotten background job would otherwise
//! keep the output pipes open, and the log tail (which ends at EOF) would never
//! end. Processes that leave the group themselves (`setsid`, daemons) escape this;
//! only a cgroup or a container catches those, which is what the Docker and
//! Kubernetes backends are for.
//!
//! `oom_killed` is always false here: without a per-step cgroup the runner cannot
//! tell an OOM kill from any other SIGKILL (the exit code shows `137` either way).

mod sweep;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use crate::artifacts::Artifact;
use crate::backend::{
    Backend, LogChunk, LogStream, LogStreamKind, StageHandle, StepExit, StepHandle,
};
use crate::error::{Error, Result};
use crate::spec::{StageSpec, StepSpec};
use crate::workspace;
use sweep::{OWNER_LOCK, PIDS_DIR, STAGE_PREFIX};

pub use sweep::SweepReport;

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

/// Runs steps as local processes. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct LocalBackend {
    inner: Arc<Inner>,
}

struct Inner {
    base_dir: Option<PathBuf>,
    kill_grace: Duration,
    stages: Mutex<HashMap<String, Arc<LocalStage>>>,
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackend")
            .field("base_dir", &self.inner.base_dir)
            .field("kill_grace", &self.inner.kill_grace)
            .finish_non_exhaustive()
    }
}

struct LocalStage {
    root: PathBuf,
    workspace: PathBuf,
    home: PathBuf,
    tmp: PathBuf,
    scripts: PathBuf,
    pids: PathBuf,
    env: BTreeMap<String, String>,
    steps: Mutex<HashMap<String, Arc<LocalStep>>>,
    /// Held for the life of the stage: a sweep never touches a locked stage.
    _owner: nix::fcntl::Flock<std::fs::File>,
}

struct LocalStep {
    pgid: Pid,
    /// True while signalling `pgid` is safe. Set to false (under the lock) once the
    /// leader has exited and the group has been killed, *before* the leader is
    /// reaped: after reaping, the pid (= pgid) may be reused by an unrelated process.
    group_alive: Arc<Mutex<bool>>,
    exit: watch::Receiver<Option<std::result::Result<StepExit, String>>>,
    logs: Mutex<Option<mpsc::Receiver<Result<LogChunk>>>>,
    readers: Vec<AbortHandle>,
}

impl LocalStep {
    fn signal(&self, sig: Signal) {
        let alive = self.group_alive.lock().expect("lock poisoned");
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

impl LocalBackend {
    /// Workspaces go under `base_dir`, or the system temp dir when `None`.
    /// A relative `base_dir` is made absolute against the current directory (steps
    /// run in their workspace, so their script paths must not be relative).
    pub fn new(base_dir: Option<PathBuf>) -> Self {
        let base_dir = base_dir.map(|d| std::path::absolute(&d).unwrap_or(d));
        LocalBackend {
            inner: Arc::new(Inner {
                base_dir,
                kill_grace: Duration::from_secs(2),
                stages: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Time between SIGTERM and SIGKILL when a step is killed (default 2 s): enough
    /// for a well-behaved tool to clean up, short enough that a cancel feels instant.
    /// A builder method: the returned backend does not share stages with `self`.
    pub fn with_kill_grace(self, grace: Duration) -> Self {
        let inner = Inner {
            base_dir: self.inner.base_dir.clone(),
            kill_grace: grace,
            stages: Mutex::new(HashMap::new()),
        };
        LocalBackend {
            inner: Arc::new(inner),
        }
    }

    fn base(&self) -> PathBuf {
        self.inner
            .base_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir)
    }

    /// Cleans up after a runner that died without destroying its stages (SIGKILL,
    /// power loss): kills the still-running steps recorded in stage directories under
    /// the base directory whose owning backend is gone, then removes those
    /// directories. Call it at start-up, before running anything: otherwise an
    /// orphaned step could still be running when the server re-runs its stage.
    ///
    /// Safe with other live runners sharing the base directory (their stages are
    /// locked and skipped) and against recycled pids (a process is only signalled if
    /// its pid *and* start time match the record and it still looks like a step).
    pub async fn sweep(&self) -> Result<SweepReport> {
        let base = self.base();
        let dir = base.clone();
        tokio::task::spawn_blocking(move || sweep::sweep(&dir))
            .await
            .map_err(|e| Error::Backend {
                op: "sweep",
                message: e.to_string(),
            })?
            .map_err(io_err(format!("sweeping {}", base.display())))
    }

    fn stage(&self, handle: &StageHandle) -> Result<Arc<LocalStage>> {
        self.inner
            .stages
            .lock()
            .expect("lock poisoned")
            .get(&handle.id)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                kind: "stage",
                id: handle.id.clone(),
            })
    }

    fn step(&self, stage: &LocalStage, handle: &StepHandle) -> Result<Arc<LocalStep>> {
        stage
            .steps
            .lock()
            .expect("lock poisoned")
            .get(&handle.id)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                kind: "step",
                id: handle.id.clone(),
            })
    }

    /// SIGTERM, grace period, SIGKILL; returns once the main process is reaped.
    async fn kill_step(&self, step: &LocalStep) -> Result<()> {
        if !step.exited() {
            step.signal(Signal::SIGTERM);
            if !step.wait_exit(self.inner.kill_grace).await {
                step.signal(Signal::SIGKILL);
                if !step.wait_exit(KILL_WAIT).await {
                    return Err(Error::Backend {
                        op: "destroy_step",
                        message: format!("process group {} did not exit after SIGKILL", step.pgid),
                    });
                }
            }
        }
        // The group was killed by the exit monitor; readers end at EOF. Abort them
        // later in case an escaped process holds a pipe open.
        let readers = step.readers.clone();
        tokio::spawn(async move {
            tokio::time::sleep(READER_GRACE).await;
            for r in readers {
                r.abort();
            }
        });
        Ok(())
    }
}

/// Turns a stage id into something safe for a directory name.
fn sanitize(id: &str) -> String {
    let s: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    if s.is_empty() { "stage".into() } else { s }
}

/// Creates `<root>/owner.lock`, locked: the lock is taken on a temporary name and
/// the file renamed into place, so a concurrent sweep never sees it unlocked.
fn lock_owner(root: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let tmp = root.join(format!("{OWNER_LOCK}.new"));
    let file =
        std::fs::File::create(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, e)| Error::Backend {
            op: "setup_stage",
            message: format!("locking {}: {e}", tmp.display()),
        },
    )?;
    std::fs::rename(&tmp, root.join(OWNER_LOCK))
        .map_err(io_err(format!("renaming {}", tmp.display())))?;
    Ok(lock)
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |e| Error::io(context, e)
}

#[async_trait]
impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn setup_stage(&self, spec: &StageSpec) -> Result<StageHandle> {
        spec.validate()?;
        let base = self.base();
        let prefix = format!("{STAGE_PREFIX}{}-", sanitize(&spec.id));
        let source = spec.source.clone();
        // All blocking: directory creation, then clone or copy.
        type Owner = nix::fcntl::Flock<std::fs::File>;
        let (root, owner) = tokio::task::spawn_blocking(move || -> Result<(PathBuf, Owner)> {
            std::fs::create_dir_all(&base)
                .map_err(io_err(format!("creating {}", base.display())))?;
            let root = tempfile::Builder::new()
                .prefix(&prefix)
                // Private to the runner's user: the workspace may hold checked-out
                // code and the scripts may embed resolved values.
                .permissions(std::fs::Permissions::from_mode(0o700))
                .tempdir_in(&base)
                .map_err(io_err(format!(
                    "creating stage directory in {}",
                    base.display()
                )))?
                .keep();
            let filled = (|| {
                let owner = lock_owner(&root)?;
                for sub in ["workspace", "home", "tmp", "scripts", PIDS_DIR] {
                    std::fs::create_dir(root.join(sub))
                        .map_err(io_err(format!("creating {}/{sub}", root.display())))?;
                }
                workspace::prepare(&source, &root.join("workspace"))?;
                Ok(owner)
            })();
            match filled {
                Ok(owner) => Ok((root, owner)),
                Err(e) => {
                    // Leave nothing behind on failure (trait contract).
                    let _ = workspace::remove_tree(&root);
                    Err(e)
                }
            }
        })
        .await
        .map_err(|e| Error::Backend {
            op: "setup_stage",
            message: e.to_string(),
        })??;

        let id = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stage = LocalStage {
            workspace: root.join("workspace"),
            home: root.join("home"),
            tmp: root.join("tmp"),
            scripts: root.join("scripts"),
            pids: root.join(PIDS_DIR),
            root,
            env: spec.env.clone(),
            steps: Mutex::new(HashMap::new()),
            _owner: owner,
        };
        let handle = StageHandle {
            stage: spec.id.clone(),
            id: id.clone(),
            workspace: Some(stage.workspace.clone()),
        };
        self.inner
            .stages
            .lock()
            .expect("lock poisoned")
            .insert(id, Arc::new(stage));
        Ok(handle)
    }

    async fn start_step(
        &self,
        stage_handle: &StageHandle,
        index: usize,
        step: &StepSpec,
    ) -> Result<StepHandle> {
        let stage = self.stage(stage_handle)?;
        let script = stage.scripts.join(format!("step-{index}.sh"));
        tokio::fs::write(&script, step.script.as_bytes())
            .await
            .map_err(io_err(format!("writing {}", script.display())))?;
        tokio::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700))
            .await
            .map_err(io_err(format!("chmod {}", script.display())))?;

        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-e")
            .arg(&script)
            .current_dir(&stage.workspace)
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
            .env("HOME", &stage.home)
            .env("LANG", "C.UTF-8")
            .env("TMPDIR", &stage.tmp)
            .envs(&stage.env)
            .envs(&step.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Own process group, so the whole tree can be signalled at once.
            .process_group(0)
            // Backstop if the monitor task is dropped (runtime shutdown).
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(io_err(format!("spawning step {index} ({})", step.name)))?;
        let pid = child.id().ok_or_else(|| Error::Backend {
            op: "start_step",
            message: "child exited before its pid was known".into(),
        })?;
        let pgid = Pid::from_raw(pid as i32);
        // The record a start-up sweep uses to kill this step if the runner dies
        // before the step ends. Written after the spawn: a runner killed in between
        // leaves an unrecorded step behind (a window of microseconds).
        let record = stage.pids.join(format!("step-{index}"));
        if let Some(start) = sweep::start_time(pgid.as_raw()) {
            std::fs::write(&record, format!("{pgid} {start}\n"))
                .map_err(io_err(format!("writing {}", record.display())))?;
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
                let mut alive = alive.lock().expect("lock poisoned");
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

        let handle = StepHandle {
            id: format!("{}/{index}", stage_handle.id),
            index,
            name: step.name.clone(),
        };
        let local = LocalStep {
            pgid,
            group_alive,
            exit: exit_rx,
            logs: Mutex::new(Some(rx)),
            readers,
        };
        stage
            .steps
            .lock()
            .expect("lock poisoned")
            .insert(handle.id.clone(), Arc::new(local));
        Ok(handle)
    }

    async fn tail_step(&self, stage: &StageHandle, step: &StepHandle) -> Result<LogStream> {
        let stage = self.stage(stage)?;
        let local = self.step(&stage, step)?;
        let mut rx = local
            .logs
            .lock()
            .expect("lock poisoned")
            .take()
            .ok_or_else(|| {
                Error::InvalidState(format!("step {} is already being tailed", step.id))
            })?;
        Ok(Box::pin(futures::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
        })))
    }

    async fn wait_step(&self, stage: &StageHandle, step: &StepHandle) -> Result<StepExit> {
        let stage = self.stage(stage)?;
        let local = self.step(&stage, step)?;
        let mut rx = local.exit.clone();
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

    async fn destroy_step(&self, stage: &StageHandle, step: &StepHandle) -> Result<()> {
        let Ok(stage) = self.stage(stage) else {
            return Ok(());
        };
        let Ok(local) = self.step(&stage, step) else {
            return Ok(());
        };
        self.kill_step(&local).await?;
        stage.steps.lock().expect("lock poisoned").remove(&step.id);
        Ok(())
    }

    async fn collect_artifacts(
        &self,
        stage: &StageHandle,
        globs: &[String],
        dest: &Path,
    ) -> Result<Vec<Artifact>> {
        let stage = self.stage(stage)?;
        let root = stage.workspace.clone();
        let globs = globs.to_vec();
        let dest = dest.to_path_buf();
        tokio::task::spawn_blocking(move || crate::artifacts::collect(&root, &globs, &dest))
            .await
            .map_err(|e| Error::Backend {
                op: "collect_artifacts",
                message: e.to_string(),
            })?
    }

    async fn destroy_stage(&self, handle: &StageHandle) -> Result<()> {
        let Ok(stage) = self.stage(handle) else {
            return Ok(());
        };
        let steps: Vec<(String, Arc<LocalStep>)> = stage
            .steps
            .lock()
            .expect("lock poisoned")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (id, step) in steps {
            self.kill_step(&step).await?;
            stage.steps.lock().expect("lock poisoned").remove(&id);
        }
        let root = stage.root.clone();
        tokio::task::spawn_blocking(move || workspace::remove_tree(&root))
            .await
            .map_err(|e| Error::Backend {
                op: "destroy_stage",
                message: e.to_string(),
            })?
            .map_err(io_err(format!("removing {}", stage.root.display())))?;
        // Forget the stage only once its directory is gone, so a failed removal
        // can be retried by calling destroy_stage again.
        self.inner
            .stages
            .lock()
            .expect("lock poisoned")
            .remove(&handle.id);
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_makes_directory_names() {
        assert_eq!(sanitize("test (features=full)"), "test--features-full-");
        assert_eq!(sanitize(""), "stage");
        assert_eq!(sanitize(&"x".repeat(100)).len(), 40);
    }

    #[tokio::test]
    async fn stage_directory_is_private_and_removed() {
        let base = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(Some(base.path().to_path_buf()));
        let handle = backend.setup_stage(&StageSpec::new("s")).await.unwrap();
        let ws = handle.workspace.clone().unwrap();
        let root = ws.parent().unwrap().to_path_buf();
        let mode = std::fs::metadata(&root).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "stage dir must be private: {mode:o}");
        backend.destroy_stage(&handle).await.unwrap();
        assert!(!root.exists());
        // Idempotent.
        backend.destroy_stage(&handle).await.unwrap();
    }

    fn alive(pid: i32) -> bool {
        // Gone, or a zombie nobody reaped yet, counts as dead.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => {
                let rest = &stat[stat.rfind(')').unwrap() + 1..];
                !rest.trim_start().starts_with('Z')
            }
            Err(_) => false,
        }
    }

    async fn wait_for_file(path: &Path) -> String {
        for _ in 0..500 {
            if let Ok(text) = std::fs::read_to_string(path)
                && text.ends_with('\n')
            {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{} never written", path.display());
    }

    /// A runner that dies without destroying its stage: a new backend on the same
    /// base dir kills the orphaned step (and its children) and removes the stage.
    #[tokio::test]
    async fn sweep_kills_the_steps_of_a_dead_backend() {
        let base = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let pids = out.path().join("pids");
        let crashed = LocalBackend::new(Some(base.path().to_path_buf()));
        let stage = crashed.setup_stage(&StageSpec::new("s")).await.unwrap();
        let mut spec = StepSpec::new("sleeper", "");
        spec.script = format!("sleep 300 &\necho $$ $! > {}\nwait\n", pids.display());
        let step = crashed.start_step(&stage, 0, &spec).await.unwrap();
        let text = wait_for_file(&pids).await;
        let (shell, child): (i32, i32) = {
            let mut it = text.split_whitespace().map(|p| p.parse().unwrap());
            (it.next().unwrap(), it.next().unwrap())
        };
        assert!(alive(shell) && alive(child));
        let root = stage
            .workspace
            .clone()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf();
        assert!(root.join(PIDS_DIR).join("step-0").exists());

        // A live owner's stage is left alone.
        let other = LocalBackend::new(Some(base.path().to_path_buf()));
        let report = other.sweep().await.unwrap();
        assert_eq!(report.in_use, 1, "{report:?}");
        assert!(report.killed.is_empty() && report.removed_stages.is_empty());
        assert!(alive(shell) && alive(child));

        // The crash: the backend goes away without destroy_step/destroy_stage.
        drop((crashed, stage, step));
        let report = other.sweep().await.unwrap();
        assert_eq!(report.killed, vec![shell], "{report:?}");
        assert_eq!(report.removed_stages, vec![root.clone()]);
        assert!(
            report.spared.is_empty() && report.errors.is_empty(),
            "{report:?}"
        );
        assert!(!alive(shell), "the step shell survived the sweep");
        assert!(
            !alive(child),
            "the step's background job survived the sweep"
        );
        assert!(!root.exists());
        // Nothing left to do the second time.
        assert!(other.sweep().await.unwrap().is_empty());
    }

    /// A record naming a process that is not ours (a reused pid) never gets it killed,
    /// even with the right start time; nor with a wrong one.
    #[tokio::test]
    async fn sweep_spares_unrelated_processes() {
        let base = tempfile::tempdir().unwrap();
        use std::os::unix::process::CommandExt;
        let mut stranger = std::process::Command::new("sleep")
            .arg("300")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = stranger.id() as i32;
        let start = sweep::start_time(pid).unwrap();
        for (name, recorded) in [("a", start), ("b", start + 1)] {
            let root = base.path().join(format!("{STAGE_PREFIX}{name}"));
            std::fs::create_dir_all(root.join(PIDS_DIR)).unwrap();
            std::fs::write(root.join(OWNER_LOCK), "").unwrap();
            std::fs::write(
                root.join(PIDS_DIR).join("step-0"),
                format!("{pid} {recorded}\n"),
            )
            .unwrap();
        }
        // Not a stage (no owner lock): never touched.
        let foreign = base.path().join(format!("{STAGE_PREFIX}foreign"));
        std::fs::create_dir(&foreign).unwrap();

        let backend = LocalBackend::new(Some(base.path().to_path_buf()));
        let report = backend.sweep().await.unwrap();
        assert!(report.killed.is_empty(), "{report:?}");
        assert_eq!(report.spared, vec![pid, pid]);
        assert_eq!(report.removed_stages.len(), 2);
        assert!(alive(pid), "an unrelated process was killed");
        assert!(foreign.exists());
        stranger.kill().unwrap();
        stranger.wait().unwrap();
    }

    #[tokio::test]
    async fn steps_are_recorded_while_they_run() {
        let base = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(Some(base.path().to_path_buf()));
        let stage = backend.setup_stage(&StageSpec::new("s")).await.unwrap();
        let root = stage
            .workspace
            .clone()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf();
        let step = backend
            .start_step(&stage, 0, &StepSpec::new("quick", "true"))
            .await
            .unwrap();
        assert_eq!(backend.wait_step(&stage, &step).await.unwrap().exit_code, 0);
        // The monitor removes the record before publishing the exit.
        assert!(!root.join(PIDS_DIR).join("step-0").exists());
        backend.destroy_stage(&stage).await.unwrap();
        assert!(!root.exists());
    }

    #[tokio::test]
    async fn failed_setup_leaves_nothing_behind() {
        let base = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(Some(base.path().to_path_buf()));
        let mut spec = StageSpec::new("s");
        spec.source = crate::Source::Directory(base.path().join("does-not-exist"));
        assert!(backend.setup_stage(&spec).await.is_err());
        assert_eq!(std::fs::read_dir(base.path()).unwrap().count(), 0);
    }
}
