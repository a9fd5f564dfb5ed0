//! The stage driver: runs one [`StageSpec`] on any [`Backend`].
//!
//! Policy lives here, once, instead of in every backend: steps in order, stop at the
//! first step that does not succeed (the rest are `Skipped`), per-step and
//! per-stage timeouts, cancellation, line assembly and secret masking, artifacts on
//! success, and `destroy_stage` on every path.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::pin;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::artifacts::Artifact;
use crate::backend::{Backend, LogChunk, LogStream, LogStreamKind, StageHandle, StepHandle};
use crate::error::Error;
use crate::finding::Finding;
use crate::log::LineAssembler;
use crate::mask::Masker;
use crate::spec::{ImageSpec, ScanSpec, StageKind, StageSpec, StepSpec};

/// After a step ended, how long the log stream may stay silent before we stop
/// waiting for the rest of it. Output produced before the exit is normally already
/// buffered; this only bounds the wait for a stream that never closes (a process
/// that escaped the step's process group and holds the pipe).
const DRAIN_IDLE: Duration = Duration::from_secs(10);
/// Upper bound for draining after the step ended, even if output keeps coming.
const DRAIN_MAX: Duration = Duration::from_secs(120);
/// Upper bound for `destroy_stage`, so a hung backend cannot hang the runner.
const DESTROY_LIMIT: Duration = Duration::from_secs(300);

/// Options for [`run_stage`].
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Where to copy the stage's artifacts after all steps succeeded. `None`: do
    /// not collect.
    pub artifact_dir: Option<PathBuf>,
    /// A stage an earlier runner process set up and left running (a restart), to
    /// take over instead of setting one up: steps that already ran report their
    /// exit and their whole log again, the running one is followed to its end.
    /// Backends that support it say how to get one (Kubernetes: `adoptable`).
    pub adopt: Option<StageHandle>,
}

/// Progress of a stage, sent while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageEvent {
    StepStarted {
        stage: String,
        index: usize,
        name: String,
    },
    Line(LogLine),
    /// Sent for every step, also for skipped ones (which get no `StepStarted`).
    StepFinished {
        stage: String,
        index: usize,
        name: String,
        outcome: StepOutcome,
    },
}

/// One line of step output, already masked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub stage: String,
    /// Step index.
    pub step: usize,
    /// 1-based, per step, counting stdout and stderr lines together.
    pub number: u64,
    pub stream: LogStreamKind,
    /// When the runner completed the line.
    pub time: SystemTime,
    /// Without the trailing newline; may be non-UTF-8; at most 64 KiB of output
    /// (longer lines arrive as several `LogLine`s).
    pub bytes: Vec<u8>,
}

/// How a step or a stage ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Success,
    /// A step exited non-zero.
    Failure,
    TimedOut,
    Cancelled,
    /// The stage could not produce a result: an infrastructure failure (retryable),
    /// or a problem with the spec itself such as a missing commit or a refused
    /// artifact path (not retryable; see [`Error::is_retryable`]). The message is
    /// masked.
    Error(String),
    /// Not run because an earlier step did not succeed.
    Skipped,
}

impl Status {
    pub fn is_success(&self) -> bool {
        matches!(self, Status::Success)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepOutcome {
    pub name: String,
    pub status: Status,
    /// `None` when the step did not exit by itself (timeout, cancel, skipped, error
    /// before it ran).
    pub exit_code: Option<i32>,
    pub oom_killed: bool,
    pub duration: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageOutcome {
    pub id: String,
    pub status: Status,
    pub steps: Vec<StepOutcome>,
    pub artifacts: Vec<Artifact>,
    /// Values later stages read as `${{ stages.<name>.outputs.<key> }}` (an image
    /// stage's `digest`, `image`).
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
    /// A scan stage's findings.
    #[serde(default)]
    pub findings: Vec<Finding>,
    /// For [`Status::Error`]: whether running the stage again could help
    /// ([`Error::is_retryable`]); a refused artifact path or a missing commit cannot.
    #[serde(default)]
    pub retryable: bool,
    pub duration: Duration,
}

/// Runs `spec` on `backend`: set-up, steps in order (stopping at the first failing
/// step), per-step and per-stage timeouts, cancellation, masking, log line
/// assembly, artifacts (collected on success into `opts.artifact_dir` if given),
/// and always `destroy_stage`. Never fails: problems are reported in the outcome.
pub async fn run_stage(
    backend: &dyn Backend,
    spec: &StageSpec,
    opts: RunOptions,
    events: UnboundedSender<StageEvent>,
    cancel: CancellationToken,
) -> StageOutcome {
    let start = Instant::now();
    tracing::info!(stage = %spec.id, backend = backend.name(), "stage starting");
    let driver = Driver {
        backend,
        spec,
        masker: Masker::new(&spec.secrets),
        events,
        cancel,
        stage_deadline: spec.timeout.map(|t| start + t),
    };
    let (mut outcome, retryable) = driver.run(opts).await;
    outcome.duration = start.elapsed();
    outcome.retryable = retryable;
    tracing::info!(stage = %spec.id, status = ?outcome.status, retryable, duration = ?outcome.duration, "stage finished");
    outcome
}

struct Driver<'a> {
    backend: &'a dyn Backend,
    spec: &'a StageSpec,
    masker: Masker,
    events: UnboundedSender<StageEvent>,
    cancel: CancellationToken,
    stage_deadline: Option<Instant>,
}

/// Which of a backend call, the deadline or the cancel token came first.
enum Raced<T> {
    Done(T),
    TimedOut,
    Cancelled,
}

/// Why a stage kind's step did not succeed.
enum KindError {
    /// Timed out or cancelled.
    Interrupted(Status),
    /// The pipeline's fault (findings at `fail_on`): a failure, with a message for
    /// the log.
    Failed(String),
    /// The backend refused or broke; retryable or not as the error says.
    Backend(Error),
}

/// `registry/team/app:tag` → `registry/team/app` (a port's `:` is kept).
fn strip_tag(reference: &str) -> &str {
    let reference = reference.split('@').next().unwrap_or(reference);
    match reference.rfind(':') {
        Some(i) if !reference[i..].contains('/') => &reference[..i],
        _ => reference,
    }
}

/// An error, masked, with whether it is worth retrying.
struct Failure {
    message: String,
    retryable: bool,
}

impl<'a> Driver<'a> {
    /// The outcome, and for `Status::Error` whether a retry could help.
    async fn run(&self, opts: RunOptions) -> (StageOutcome, bool) {
        let mut retryable = false;
        let mut outcome = StageOutcome {
            id: self.spec.id.clone(),
            status: Status::Success,
            steps: Vec::new(),
            artifacts: Vec::new(),
            outputs: BTreeMap::new(),
            findings: Vec::new(),
            retryable: false,
            duration: Duration::ZERO,
        };
        if let Err(e) = self.spec.validate() {
            return self.abort_before_steps(outcome, Status::Error(self.mask_err(&e)), false);
        }
        if self.cancel.is_cancelled() {
            return self.abort_before_steps(outcome, Status::Cancelled, false);
        }

        let setup = async {
            match &opts.adopt {
                Some(h) => Ok(h.clone()),
                None => self.backend.setup_stage(self.spec).await,
            }
        };
        let mut setup = pin!(setup);
        let handle = match self.race(setup.as_mut(), self.stage_deadline).await {
            Raced::Done(Ok(h)) => h,
            Raced::Done(Err(e)) => {
                let status = Status::Error(self.mask_err(&e));
                return self.abort_before_steps(outcome, status, e.is_retryable());
            }
            interrupted => {
                // Let the set-up finish so that what it created can be destroyed;
                // dropping it half-way could leak a workspace or a container.
                if let Ok(h) = setup.await {
                    self.destroy_stage(&h).await;
                }
                let status = match interrupted {
                    Raced::TimedOut => Status::TimedOut,
                    _ => Status::Cancelled,
                };
                return self.abort_before_steps(outcome, status, false);
            }
        };

        let mut stage_status = Status::Success;
        for (index, step) in self.spec.steps.iter().enumerate() {
            if stage_status == Status::Success {
                if self.cancel.is_cancelled() {
                    stage_status = Status::Cancelled;
                } else if self.stage_deadline.is_some_and(|d| Instant::now() >= d) {
                    stage_status = Status::TimedOut;
                }
            }
            if stage_status != Status::Success {
                outcome.steps.push(self.skip(index, step));
                continue;
            }
            let (step_outcome, step_retryable) = self.run_step(&handle, index, step).await;
            if step_outcome.status != Status::Success {
                stage_status = step_outcome.status.clone();
                retryable = step_retryable;
            }
            outcome.steps.push(step_outcome);
        }

        if stage_status == Status::Success && self.spec.kind.step_name().is_some() {
            let (step_outcome, step_retryable) = self.run_kind_step(&handle, &mut outcome).await;
            if step_outcome.status != Status::Success {
                stage_status = step_outcome.status.clone();
                retryable = step_retryable;
            }
            outcome.steps.push(step_outcome);
        } else if let Some(name) = self.spec.kind.step_name() {
            // Reported like any step after a failure, so step lists match the plan.
            let index = self.spec.steps.len();
            outcome
                .steps
                .push(self.skip(index, &StepSpec::new(name, "")));
        }

        if stage_status == Status::Success
            && !self.spec.artifacts.is_empty()
            && let Some(dir) = &opts.artifact_dir
        {
            let collect = self
                .backend
                .collect_artifacts(&handle, &self.spec.artifacts, dir);
            match self.race(collect, self.stage_deadline).await {
                Raced::Done(Ok(a)) => outcome.artifacts = a,
                Raced::Done(Err(e)) => {
                    stage_status = Status::Error(self.mask_err(&e));
                    retryable = e.is_retryable();
                }
                Raced::TimedOut => stage_status = Status::TimedOut,
                Raced::Cancelled => stage_status = Status::Cancelled,
            }
        }

        self.destroy_stage(&handle).await;
        let retryable = retryable && matches!(stage_status, Status::Error(_));
        outcome.status = stage_status;
        (outcome, retryable)
    }

    /// The step a stage kind adds after the steps (`build image`, `scan`), run like a
    /// step: same events, same log, same deadline and cancel handling.
    async fn run_kind_step(
        &self,
        handle: &StageHandle,
        outcome: &mut StageOutcome,
    ) -> (StepOutcome, bool) {
        let index = self.spec.steps.len();
        let name = self.spec.kind.step_name().unwrap_or_default().to_string();
        let started = Instant::now();
        self.send(StageEvent::StepStarted {
            stage: self.spec.id.clone(),
            index,
            name: name.clone(),
        });
        let mut lines = StepLines::new(self.spec.id.clone(), index, &self.masker, &self.events);
        let result = match &self.spec.kind {
            StageKind::Run => Ok(()),
            StageKind::Image(image) => self.build_image(handle, image, outcome, &mut lines).await,
            StageKind::Scan(scan) => self.scan(handle, scan, outcome, &mut lines).await,
        };
        let (status, retryable) = match result {
            Ok(()) => (Status::Success, false),
            Err(KindError::Interrupted(status)) => (status, false),
            Err(KindError::Failed(message)) => {
                lines.say(LogStreamKind::Stderr, &message);
                (Status::Failure, false)
            }
            Err(KindError::Backend(e)) => {
                let message = self.mask_err(&e);
                lines.say(LogStreamKind::Stderr, &message);
                if e.is_retryable() {
                    (Status::Error(message), true)
                } else {
                    // A Dockerfile that does not build, refused credentials: the
                    // pipeline's problem, reported like a failing step.
                    (Status::Failure, false)
                }
            }
        };
        lines.finish();
        let step = StepOutcome {
            name: name.clone(),
            exit_code: match status {
                Status::Success => Some(0),
                Status::Failure => Some(1),
                _ => None,
            },
            status,
            oom_killed: false,
            duration: started.elapsed(),
        };
        tracing::info!(stage = %self.spec.id, step = index, status = ?step.status, "step finished");
        self.send(StageEvent::StepFinished {
            stage: self.spec.id.clone(),
            index,
            name,
            outcome: step.clone(),
        });
        (step, retryable)
    }

    /// Builds (and pushes) the image, streaming the engine's output into the log.
    async fn build_image(
        &self,
        handle: &StageHandle,
        image: &ImageSpec,
        outcome: &mut StageOutcome,
        lines: &mut StepLines<'_>,
    ) -> Result<(), KindError> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let built = {
            let build = self.race(
                self.backend.build_image(handle, image, tx),
                self.stage_deadline,
            );
            let mut build = pin!(build);
            loop {
                tokio::select! {
                    r = &mut build => break r,
                    Some(chunk) = rx.recv() => lines.push(&chunk),
                }
            }
        };
        while let Ok(chunk) = rx.try_recv() {
            lines.push(&chunk);
        }
        let built = match built {
            Raced::Done(r) => r.map_err(KindError::Backend)?,
            Raced::TimedOut => return Err(KindError::Interrupted(Status::TimedOut)),
            Raced::Cancelled => return Err(KindError::Interrupted(Status::Cancelled)),
        };
        outcome.outputs.insert("image_id".into(), built.id.clone());
        if let Some(reference) = &built.reference {
            outcome.outputs.insert("image".into(), reference.clone());
        }
        if let Some(digest) = &built.digest {
            outcome.outputs.insert("digest".into(), digest.clone());
            let pinned = match &built.reference {
                Some(r) => format!("{}@{digest}", strip_tag(r)),
                None => digest.clone(),
            };
            lines.say(LogStreamKind::Stdout, &format!("pushed {pinned}"));
        } else {
            lines.say(LogStreamKind::Stdout, &format!("built {}", built.id));
        }
        Ok(())
    }

    /// Scans a copy of the workspace (built-in secret scan + the steps' SARIF reports)
    /// and fails when a finding reaches `fail_on`.
    async fn scan(
        &self,
        handle: &StageHandle,
        scan: &ScanSpec,
        outcome: &mut StageOutcome,
        lines: &mut StepLines<'_>,
    ) -> Result<(), KindError> {
        // Through collect_artifacts, so the scan works the same on every backend.
        let copy = tempfile::tempdir()
            .map_err(|e| KindError::Backend(Error::io("creating a scan directory", e)))?;
        let everything = ["**".to_string()];
        let collect = self
            .backend
            .collect_artifacts(handle, &everything, copy.path());
        match self.race(collect, self.stage_deadline).await {
            Raced::Done(r) => r.map_err(KindError::Backend)?,
            Raced::TimedOut => return Err(KindError::Interrupted(Status::TimedOut)),
            Raced::Cancelled => return Err(KindError::Interrupted(Status::Cancelled)),
        };
        let root = copy.path().to_path_buf();
        let spec = scan.clone();
        let scanned =
            tokio::task::spawn_blocking(move || crate::scan::scan_workspace(&root, &spec));
        let findings = match self.race(scanned, self.stage_deadline).await {
            Raced::Done(Ok(r)) => r.map_err(KindError::Backend)?,
            Raced::Done(Err(join)) => {
                return Err(KindError::Backend(Error::Backend {
                    op: "scan",
                    message: join.to_string(),
                }));
            }
            Raced::TimedOut => return Err(KindError::Interrupted(Status::TimedOut)),
            Raced::Cancelled => return Err(KindError::Interrupted(Status::Cancelled)),
        };
        for f in &findings {
            lines.say(LogStreamKind::Stdout, &crate::scan::summary(f));
        }
        let failure = crate::scan::failure_reason(&findings, scan.fail_on);
        outcome.findings = findings;
        if let Some(reason) = failure {
            return Err(KindError::Failed(reason));
        }
        let verdict = match outcome.findings.len() {
            0 => "scan: no findings".to_string(),
            n => format!("scan: {n} finding(s), none at or above fail_on"),
        };
        lines.say(LogStreamKind::Stdout, &verdict);
        Ok(())
    }

    /// The outcome when no step could run: every step skipped.
    fn abort_before_steps(
        &self,
        mut outcome: StageOutcome,
        status: Status,
        retryable: bool,
    ) -> (StageOutcome, bool) {
        outcome.steps = self
            .spec
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| self.skip(i, s))
            .collect();
        if let Some(name) = self.spec.kind.step_name() {
            let index = self.spec.steps.len();
            outcome
                .steps
                .push(self.skip(index, &StepSpec::new(name, "")));
        }
        outcome.status = status;
        (outcome, retryable)
    }

    fn skip(&self, index: usize, step: &StepSpec) -> StepOutcome {
        let outcome = StepOutcome {
            name: step.name.clone(),
            status: Status::Skipped,
            exit_code: None,
            oom_killed: false,
            duration: Duration::ZERO,
        };
        self.send(StageEvent::StepFinished {
            stage: self.spec.id.clone(),
            index,
            name: step.name.clone(),
            outcome: outcome.clone(),
        });
        outcome
    }

    /// Cleanup failures are logged, not reported as the stage's status: the steps'
    /// result is valid, and turning a finished deploy into a retryable error would
    /// run it twice.
    async fn destroy_stage(&self, handle: &StageHandle) {
        match tokio::time::timeout(DESTROY_LIMIT, self.backend.destroy_stage(handle)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(stage = %self.spec.id, error = %self.mask_err(&e), "destroy_stage failed")
            }
            Err(_) => tracing::error!(stage = %self.spec.id, "destroy_stage timed out"),
        }
    }

    async fn destroy_step(&self, stage: &StageHandle, step: &StepHandle) -> Option<Failure> {
        match self.backend.destroy_step(stage, step).await {
            Ok(()) => None,
            Err(e) => {
                let message = self.mask_err(&e);
                tracing::error!(stage = %self.spec.id, step = step.index, error = %message, "destroy_step failed");
                Some(Failure {
                    message,
                    retryable: e.is_retryable(),
                })
            }
        }
    }

    async fn run_step(
        &self,
        stage: &StageHandle,
        index: usize,
        step: &StepSpec,
    ) -> (StepOutcome, bool) {
        let started = Instant::now();
        self.send(StageEvent::StepStarted {
            stage: self.spec.id.clone(),
            index,
            name: step.name.clone(),
        });
        let mut lines = StepLines::new(self.spec.id.clone(), index, &self.masker, &self.events);

        // Starting is bounded by the stage deadline (and the backend's own pull and
        // scheduling limits); the step's timeout counts from when it runs, as in Tekton,
        // so that pulling or starting its container on a busy node does not use it up.
        let (status, exit, retryable) = match self
            .race(
                self.backend.start_step(stage, index, step),
                self.stage_deadline,
            )
            .await
        {
            Raced::Done(Ok(handle)) => {
                let deadline = match (
                    self.stage_deadline,
                    step.timeout.map(|t| Instant::now() + t),
                ) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let r = self.supervise(stage, &handle, deadline, &mut lines).await;
                // Always release the step (kills stragglers, removes containers).
                // A failure here after the step finished is cleanup, not result.
                self.destroy_step(stage, &handle).await;
                r
            }
            Raced::Done(Err(e)) => (Status::Error(self.mask_err(&e)), None, e.is_retryable()),
            // The half-started step is cleaned up by destroy_stage.
            Raced::TimedOut => (Status::TimedOut, None, false),
            Raced::Cancelled => (Status::Cancelled, None, false),
        };
        lines.finish();

        let outcome = StepOutcome {
            name: step.name.clone(),
            status,
            exit_code: exit.map(|e| e.exit_code),
            oom_killed: exit.is_some_and(|e| e.oom_killed),
            duration: started.elapsed(),
        };
        tracing::info!(stage = %self.spec.id, step = index, status = ?outcome.status, exit_code = ?outcome.exit_code, "step finished");
        self.send(StageEvent::StepFinished {
            stage: self.spec.id.clone(),
            index,
            name: step.name.clone(),
            outcome: outcome.clone(),
        });
        (outcome, retryable)
    }

    /// Tails and waits for a started step, enforcing the deadline and the cancel
    /// token. Returns the step's status, its exit (if it exited by itself) and
    /// whether an error is retryable.
    async fn supervise(
        &self,
        stage: &StageHandle,
        handle: &StepHandle,
        deadline: Option<Instant>,
        lines: &mut StepLines<'_>,
    ) -> (Status, Option<crate::StepExit>, bool) {
        let mut stream: LogStream = match self.backend.tail_step(stage, handle).await {
            Ok(s) => s,
            Err(e) => {
                // Without logs the run is not worth keeping: stop the step.
                self.destroy_step(stage, handle).await;
                return (Status::Error(self.mask_err(&e)), None, e.is_retryable());
            }
        };
        let mut tail_error: Option<Error> = None;
        let mut stream_done = false;

        enum End {
            Exited(crate::Result<crate::StepExit>),
            TimedOut,
            Cancelled,
        }
        let end = {
            let mut wait = pin!(self.backend.wait_step(stage, handle));
            let mut expired = pin!(sleep_until_opt(deadline));
            let mut cancelled = pin!(self.cancel.cancelled());
            loop {
                tokio::select! {
                    biased;
                    _ = &mut cancelled => break End::Cancelled,
                    _ = &mut expired => break End::TimedOut,
                    r = &mut wait => break End::Exited(r),
                    item = stream.next(), if !stream_done => match item {
                        Some(Ok(chunk)) => lines.push(&chunk),
                        Some(Err(e)) => { tail_error = Some(e); stream_done = true; }
                        None => stream_done = true,
                    },
                }
            }
        };

        let mut kill_failure = None;
        if !matches!(end, End::Exited(Ok(_))) {
            // Kill it now so the last output arrives and the stream closes.
            kill_failure = self.destroy_step(stage, handle).await;
        }

        // Take the rest of the output.
        let drain_until = Instant::now() + DRAIN_MAX;
        while !stream_done {
            let idle_limit = (Instant::now() + DRAIN_IDLE).min(drain_until);
            match tokio::time::timeout_at(idle_limit, stream.next()).await {
                Ok(Some(Ok(chunk))) => lines.push(&chunk),
                Ok(Some(Err(e))) => {
                    tail_error = Some(e);
                    stream_done = true;
                }
                Ok(None) => stream_done = true,
                Err(_) => {
                    tracing::warn!(stage = %self.spec.id, step = handle.index, "log stream did not end after the step; giving up on the rest");
                    break;
                }
            }
        }

        match end {
            End::Exited(Ok(exit)) => match tail_error {
                Some(e) => (
                    Status::Error(format!("log stream failed: {}", self.mask_err(&e))),
                    Some(exit),
                    e.is_retryable(),
                ),
                None if exit.exit_code == 0 => (Status::Success, Some(exit), false),
                None => (Status::Failure, Some(exit), false),
            },
            End::Exited(Err(e)) => (Status::Error(self.mask_err(&e)), None, e.is_retryable()),
            End::TimedOut | End::Cancelled if kill_failure.is_some() => {
                // The step may still be running: that is an infrastructure problem.
                let f = kill_failure.expect("checked");
                (Status::Error(f.message), None, f.retryable)
            }
            End::TimedOut => (Status::TimedOut, None, false),
            End::Cancelled => (Status::Cancelled, None, false),
        }
    }

    /// Runs `fut` unless the deadline passes or the stage is cancelled first.
    async fn race<F: Future>(&self, fut: F, deadline: Option<Instant>) -> Raced<F::Output> {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Raced::Cancelled,
            _ = sleep_until_opt(deadline) => Raced::TimedOut,
            r = fut => Raced::Done(r),
        }
    }

    fn mask_err(&self, e: &Error) -> String {
        self.masker.mask_str(&e.to_string())
    }

    fn send(&self, event: StageEvent) {
        // A receiver that went away (UI closed) must not stop the stage.
        let _ = self.events.send(event);
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Line assembly for one step: one assembler per stream (so stdout and stderr
/// lines never mix), one line counter for both.
struct StepLines<'a> {
    stage: String,
    step: usize,
    number: u64,
    stdout: LineAssembler,
    stderr: LineAssembler,
    events: &'a UnboundedSender<StageEvent>,
}

impl<'a> StepLines<'a> {
    fn new(
        stage: String,
        step: usize,
        masker: &Masker,
        events: &'a UnboundedSender<StageEvent>,
    ) -> Self {
        StepLines {
            stage,
            step,
            number: 0,
            stdout: masker.lines(),
            stderr: masker.lines(),
            events,
        }
    }

    fn push(&mut self, chunk: &LogChunk) {
        let StepLines {
            stage,
            step,
            number,
            stdout,
            stderr,
            events,
        } = self;
        let asm = match chunk.stream {
            LogStreamKind::Stdout => stdout,
            LogStreamKind::Stderr => stderr,
        };
        asm.push(&chunk.bytes, &mut |bytes| {
            *number += 1;
            let _ = events.send(StageEvent::Line(LogLine {
                stage: stage.clone(),
                step: *step,
                number: *number,
                stream: chunk.stream,
                time: SystemTime::now(),
                bytes,
            }));
        });
    }

    /// A whole line of the runner's own (a build result, a finding), masked like
    /// any output.
    fn say(&mut self, stream: LogStreamKind, text: &str) {
        self.push(&LogChunk {
            stream,
            bytes: format!("{text}\n").into_bytes().into(),
        });
    }

    fn finish(&mut self) {
        for kind in [LogStreamKind::Stdout, LogStreamKind::Stderr] {
            let StepLines {
                stage,
                step,
                number,
                stdout,
                stderr,
                events,
            } = self;
            let asm = match kind {
                LogStreamKind::Stdout => stdout,
                LogStreamKind::Stderr => stderr,
            };
            asm.finish(&mut |bytes| {
                *number += 1;
                let _ = events.send(StageEvent::Line(LogLine {
                    stage: stage.clone(),
                    step: *step,
                    number: *number,
                    stream: kind,
                    time: SystemTime::now(),
                    bytes,
                }));
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip_through_json() {
        let outcome = StageOutcome {
            id: "test (features=full)".into(),
            status: Status::Error("boom".into()),
            steps: vec![StepOutcome {
                name: "s".into(),
                status: Status::TimedOut,
                exit_code: None,
                oom_killed: false,
                duration: Duration::from_millis(1500),
            }],
            artifacts: vec![Artifact {
                path: "out/a.txt".into(),
                size: 5,
                sha256: "00".into(),
            }],
            outputs: BTreeMap::from([("digest".into(), "sha256:00".into())]),
            findings: vec![Finding {
                tool: "slipway-secrets".into(),
                rule: "github-token".into(),
                severity: crate::Severity::High,
                path: Some("src/config.rs".into()),
                line: Some(3),
                message: "GitHub token".into(),
            }],
            retryable: false,
            duration: Duration::from_secs(2),
        };
        let json = serde_json::to_string(&outcome).unwrap();
        assert!(json.contains(r#""status":{"error":"boom"}"#), "{json}");
        assert!(json.contains(r#""status":"timed_out""#), "{json}");
        let back: StageOutcome = serde_json::from_str(&json).unwrap();
        assert_eq!(back, outcome);
    }

    #[tokio::test]
    async fn invalid_spec_and_early_cancel_run_nothing() {
        let backend = crate::LocalBackend::new(None);
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let mut spec = StageSpec::new("bad");
        spec.steps.push(StepSpec::new("s", "true"));
        spec.env.insert("A=B".into(), "x".into());
        let out = run_stage(
            &backend,
            &spec,
            RunOptions::default(),
            tx.clone(),
            CancellationToken::new(),
        )
        .await;
        assert!(matches!(out.status, Status::Error(_)));
        assert_eq!(out.steps[0].status, Status::Skipped);

        spec.env.clear();
        let cancel = CancellationToken::new();
        cancel.cancel();
        let out = run_stage(&backend, &spec, RunOptions::default(), tx, cancel).await;
        assert_eq!(out.status, Status::Cancelled);
        assert_eq!(out.steps[0].status, Status::Skipped);
    }

    #[tokio::test]
    async fn error_messages_are_masked() {
        let backend = crate::LocalBackend::new(None);
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let mut spec = StageSpec::new("masked-error");
        spec.secrets = vec!["hunter2hunter2".into()];
        spec.source = crate::Source::Git {
            url: "/nonexistent/hunter2hunter2/repo".into(),
            commit: "HEAD".into(),
        };
        let out = run_stage(
            &backend,
            &spec,
            RunOptions::default(),
            tx,
            CancellationToken::new(),
        )
        .await;
        match out.status {
            Status::Error(msg) => {
                assert!(!msg.contains("hunter2hunter2"), "{msg}");
                assert!(msg.contains("********"), "{msg}");
            }
            other => panic!("expected error, got {other:?}"),
        }
    }
}
