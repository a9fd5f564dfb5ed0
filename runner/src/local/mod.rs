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

mod host_env;
mod stage_dir;
mod step;
mod sweep;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::artifacts::Artifact;
use crate::backend::{Backend, LogStream, StageHandle, StepExit, StepHandle};
use crate::error::{Error, Result};
use crate::registry::Registry;
use crate::spec::{StageSpec, StepSpec};
use crate::workspace;
use stage_dir::StageDir;
use step::LocalStep;

pub use host_env::{TOOLCHAIN_VARS, host_env};
pub use sweep::SweepReport;

/// Runs steps as local processes. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct LocalBackend {
    inner: Arc<Inner>,
}

struct Inner {
    base_dir: Option<PathBuf>,
    kill_grace: Duration,
    /// Host variables every step gets (see [`host_env`]); the stage's own win.
    host_env: BTreeMap<String, String>,
    stages: Registry<LocalStage>,
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackend")
            .field("base_dir", &self.inner.base_dir)
            .field("kill_grace", &self.inner.kill_grace)
            .field("stages", &self.inner.stages)
            .finish_non_exhaustive()
    }
}

struct LocalStage {
    dir: StageDir,
    env: BTreeMap<String, String>,
    steps: Registry<LocalStep>,
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
                host_env: BTreeMap::new(),
                stages: Registry::new("stage"),
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
            host_env: self.inner.host_env.clone(),
            stages: Registry::new("stage"),
        };
        LocalBackend {
            inner: Arc::new(inner),
        }
    }

    /// Host variables every step gets, under its own (usually [`host_env`]). A
    /// builder method: the returned backend does not share stages with `self`.
    pub fn with_host_env(self, env: BTreeMap<String, String>) -> Self {
        let inner = Inner {
            base_dir: self.inner.base_dir.clone(),
            kill_grace: self.inner.kill_grace,
            host_env: env,
            stages: Registry::new("stage"),
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
            .map_err(Error::io_with(format!("sweeping {}", base.display())))
    }

    fn stage(&self, handle: &StageHandle) -> Result<Arc<LocalStage>> {
        self.inner.stages.get(&handle.id)
    }
}

#[async_trait]
impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn setup_stage(&self, spec: &StageSpec) -> Result<StageHandle> {
        spec.validate()?;
        let base = self.base();
        let (id, source) = (spec.id.clone(), spec.source.clone());
        // All blocking: directory creation, then clone or copy.
        let dir = tokio::task::spawn_blocking(move || StageDir::create(&base, &id, &source))
            .await
            .map_err(|e| Error::Backend {
                op: "setup_stage",
                message: e.to_string(),
            })??;
        let id = dir.id();
        let handle = StageHandle {
            stage: spec.id.clone(),
            id: id.clone(),
            workspace: Some(dir.workspace.clone()),
        };
        let mut env = self.inner.host_env.clone();
        env.extend(spec.env.clone());
        let stage = LocalStage {
            dir,
            env,
            steps: Registry::new("step"),
        };
        self.inner.stages.insert(id, stage);
        Ok(handle)
    }

    async fn start_step(
        &self,
        stage_handle: &StageHandle,
        index: usize,
        step: &StepSpec,
    ) -> Result<StepHandle> {
        let stage = self.stage(stage_handle)?;
        let local = LocalStep::spawn(&stage.dir, &stage.env, index, step).await?;
        let handle = StepHandle {
            id: format!("{}/{index}", stage_handle.id),
            index,
            name: step.name.clone(),
        };
        stage.steps.insert(handle.id.clone(), local);
        Ok(handle)
    }

    async fn tail_step(&self, stage: &StageHandle, step: &StepHandle) -> Result<LogStream> {
        let stage = self.stage(stage)?;
        let mut rx = stage.steps.get(&step.id)?.take_logs().ok_or_else(|| {
            Error::InvalidState(format!("step {} is already being tailed", step.id))
        })?;
        Ok(Box::pin(futures::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
        })))
    }

    async fn wait_step(&self, stage: &StageHandle, step: &StepHandle) -> Result<StepExit> {
        let stage = self.stage(stage)?;
        stage.steps.get(&step.id)?.wait().await
    }

    async fn destroy_step(&self, stage: &StageHandle, step: &StepHandle) -> Result<()> {
        let Ok(stage) = self.stage(stage) else {
            return Ok(());
        };
        let Ok(local) = stage.steps.get(&step.id) else {
            return Ok(());
        };
        local.kill(self.inner.kill_grace).await?;
        stage.steps.remove(&step.id);
        Ok(())
    }

    async fn collect_artifacts(
        &self,
        stage: &StageHandle,
        globs: &[String],
        dest: &Path,
    ) -> Result<Vec<Artifact>> {
        let stage = self.stage(stage)?;
        let root = stage.dir.workspace.clone();
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
        // Each step leaves the registry once killed: a failed kill can be retried.
        for (id, step) in stage.steps.entries() {
            step.kill(self.inner.kill_grace).await?;
            stage.steps.remove(&id);
        }
        let root = stage.dir.root.clone();
        tokio::task::spawn_blocking(move || workspace::remove_tree(&root))
            .await
            .map_err(|e| Error::Backend {
                op: "destroy_stage",
                message: e.to_string(),
            })?
            .map_err(Error::io_with(format!(
                "removing {}",
                stage.dir.root.display()
            )))?;
        // Forget the stage only once its directory is gone, so a failed removal
        // can be retried by calling destroy_stage again.
        self.inner.stages.remove(&handle.id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::stage_dir::{OWNER_LOCK, PIDS_DIR, STAGE_PREFIX};
    use super::*;

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
