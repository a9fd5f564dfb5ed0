//! The backend trait, modelled on Woodpecker's: set up a stage, start a step, tail its
//! logs, wait for its exit, destroy the step, destroy the stage. Everything a backend
//! does beyond that (timeouts, cancellation, masking, line assembly, skipping steps
//! after a failure) lives once in [`crate::run_stage`] so that every backend behaves
//! the same.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::artifacts::Artifact;
use crate::error::{Error, Result};
use crate::spec::{ImageSpec, StageSpec, StepSpec};

/// A prepared stage.
///
/// Handles are plain data rather than carrying backend objects: a Docker or
/// Kubernetes backend can put its container/pod name in `id`, a runner can persist
/// the handle and re-adopt the stage after a restart, and nothing needs downcasting.
/// Backends keep whatever live state they need in their own maps keyed by `id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StageHandle {
    /// The [`StageSpec::id`] this handle was created for.
    pub stage: String,
    /// Backend-unique name of the stage's resources (local: the stage directory name;
    /// Docker: the network/volume prefix; Kubernetes: the pod name).
    pub id: String,
    /// The workspace path on the runner host, for backends that have one (local).
    pub workspace: Option<PathBuf>,
}

/// A started step.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StepHandle {
    /// Backend-unique name (local: `<stage id>/<index>`; Docker: container name;
    /// Kubernetes: container name within the stage pod).
    pub id: String,
    /// Position of the step in [`StageSpec::steps`].
    pub index: usize,
    pub name: String,
}

/// How a step's main process ended. A non-zero exit code is a result, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepExit {
    /// The exit code; for a process killed by a signal, `128 + signal` like a shell.
    pub exit_code: i32,
    /// Whether the kernel/cgroup OOM killer ended the step (containers only).
    pub oom_killed: bool,
}

/// Which output stream a chunk or line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStreamKind {
    Stdout,
    Stderr,
}

/// Raw output as the backend read it: arbitrary bytes, not split into lines, not
/// masked. [`crate::run_stage`] assembles lines and masks secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    pub stream: LogStreamKind,
    pub bytes: Bytes,
}

/// A step's output. It ends when the step's output is closed (the step and anything
/// it left behind are gone). Items are `Err` when the log transport broke.
pub type LogStream = BoxStream<'static, Result<LogChunk>>;

/// An execution backend. Implementations: [`crate::LocalBackend`] (Docker and
/// Kubernetes follow behind the same trait). Every implementation must pass the
/// conformance suite (`runner::conformance_tests!`).
///
/// Contract:
/// - Errors are for infrastructure failures only; a failing script is a
///   [`StepExit`] with a non-zero code.
/// - `tail_step` is called at most once per step, and its stream must be consumed
///   concurrently with `wait_step`: backends may apply back-pressure, so a step whose
///   output nobody reads may block.
/// - `destroy_step` and `destroy_stage` are idempotent, kill whatever still runs,
///   and succeed for handles that are already gone.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Short name (`local`, `docker`, `kubernetes`), for logs and metrics.
    fn name(&self) -> &'static str;

    /// Whether step output keeps stdout and stderr apart. The Kubernetes pod log
    /// API merges a container's two streams (as `kubectl logs` shows them), so that
    /// backend reports every line as stdout, in order.
    fn separates_streams(&self) -> bool {
        true
    }

    /// Creates the stage's workspace (from `spec.source`) and whatever else the stage
    /// needs (network, volume, pod). On error, nothing must be left behind.
    async fn setup_stage(&self, spec: &StageSpec) -> Result<StageHandle>;

    /// The driver gave up on `spec`'s `setup_stage`, still in progress (the stage's
    /// deadline passed, or it was cancelled), and now awaits it only to destroy what it
    /// made. A set-up that is merely waiting — the Kubernetes backend waiting for
    /// ResourceQuota — should end at once with an error. Default: nothing waits.
    fn abandon_setup(&self, spec: &StageSpec) {
        let _ = spec;
    }

    /// While `setup_stage` of stage `stage_id` waits for something outside the stage
    /// (the Kubernetes backend: a used-up ResourceQuota), why; the stage driver asks
    /// while the set-up lasts and reports it. Default: nothing waits.
    fn waiting_reason(&self, stage_id: &str) -> Option<String> {
        let _ = stage_id;
        None
    }

    /// Starts step `index` in the stage. Returns once the step runs.
    async fn start_step(
        &self,
        stage: &StageHandle,
        index: usize,
        step: &StepSpec,
    ) -> Result<StepHandle>;

    /// The step's raw output, stdout and stderr interleaved in arrival order.
    async fn tail_step(&self, stage: &StageHandle, step: &StepHandle) -> Result<LogStream>;

    /// Waits for the step's main process to exit.
    async fn wait_step(&self, stage: &StageHandle, step: &StepHandle) -> Result<StepExit>;

    /// Kills the step if it still runs (its whole process tree) and releases what it
    /// holds. Idempotent.
    async fn destroy_step(&self, stage: &StageHandle, step: &StepHandle) -> Result<()>;

    /// Copies the workspace files matching `globs` into `dest`, keeping their
    /// relative paths. Paths escaping the workspace are refused.
    async fn collect_artifacts(
        &self,
        stage: &StageHandle,
        globs: &[String],
        dest: &Path,
    ) -> Result<Vec<Artifact>>;

    /// Removes everything the stage created, killing steps that still run.
    /// Idempotent.
    async fn destroy_stage(&self, stage: &StageHandle) -> Result<()>;

    /// Builds `image` from the stage's workspace and pushes it when `image.push` is
    /// set. Build output goes to `log` as it arrives. Backends that cannot build
    /// images keep this default, which refuses with a clear, non-retryable error.
    async fn build_image(
        &self,
        stage: &StageHandle,
        image: &ImageSpec,
        log: tokio::sync::mpsc::UnboundedSender<LogChunk>,
    ) -> Result<BuiltImage> {
        let _ = (stage, image, log);
        Err(Error::InvalidSpec(format!(
            "kind `image` needs the docker or kubernetes backend; the {} backend cannot build images",
            self.name()
        )))
    }
}

/// A built (and maybe pushed) image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuiltImage {
    /// The engine's image id (`sha256:…`).
    pub id: String,
    /// The pushed reference (`registry/team/app:tag`), if pushed.
    pub reference: Option<String>,
    /// The registry's manifest digest (`sha256:…`), if pushed: what deploys use.
    pub digest: Option<String>,
}
