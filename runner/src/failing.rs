//! A backend that fails on demand, for testing how [`crate::run_stage`] (and later
//! the scheduler) copes with infrastructure failures at each point of a stage.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::artifacts::Artifact;
use crate::backend::{Backend, LogStream, StageHandle, StepExit, StepHandle};
use crate::error::{Error, Result};
use crate::lock::lock;
use crate::spec::{StageSpec, StepSpec};

/// Where to inject a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailPoint {
    SetupStage,
    /// `start_step` for the step with this index.
    StartStep(usize),
    /// `wait_step` for the step with this index (the step itself keeps running
    /// until the driver destroys it).
    WaitStep(usize),
    Tail,
    DestroyStep,
    CollectArtifacts,
    DestroyStage,
}

/// A call the wrapped backend received, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    SetupStage,
    StartStep(usize),
    Tail(usize),
    WaitStep(usize),
    DestroyStep(usize),
    CollectArtifacts,
    DestroyStage,
}

/// Wraps a backend and fails at the configured points with a retryable
/// [`Error::Backend`]. Failing points fail *before* delegating, except the destroy
/// points, which delegate first and then report failure: that way tests see the
/// error path without leaking real workspaces or processes.
pub struct FailingBackend {
    inner: Arc<dyn Backend>,
    points: Mutex<HashSet<FailPoint>>,
    calls: Mutex<Vec<Call>>,
    /// How long `start_step` takes before delegating: a slow image pull or a busy node.
    start_delay: Mutex<std::time::Duration>,
}

impl std::fmt::Debug for FailingBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailingBackend")
            .field("inner", &self.inner.name())
            .field("points", &self.points)
            .finish_non_exhaustive()
    }
}

impl FailingBackend {
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        FailingBackend {
            inner,
            points: Mutex::new(HashSet::new()),
            calls: Mutex::new(Vec::new()),
            start_delay: Mutex::new(std::time::Duration::ZERO),
        }
    }

    /// Makes every `start_step` take `delay` before it delegates.
    pub fn slow_start(self, delay: std::time::Duration) -> Self {
        *lock(&self.start_delay) = delay;
        self
    }

    /// Builder form of [`FailingBackend::set`].
    pub fn fail_at(self, point: FailPoint) -> Self {
        self.set(point);
        self
    }

    pub fn set(&self, point: FailPoint) {
        lock(&self.points).insert(point);
    }

    pub fn clear(&self, point: FailPoint) {
        lock(&self.points).remove(&point);
    }

    /// Every call received so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.calls).clone()
    }

    /// How many times `call` was received.
    pub fn count(&self, call: &Call) -> usize {
        self.calls().iter().filter(|c| *c == call).count()
    }

    fn record(&self, call: Call) {
        lock(&self.calls).push(call);
    }

    /// Injected failures are [`Error::Backend`], which is retryable like any
    /// infrastructure failure.
    fn check(&self, point: FailPoint, op: &'static str) -> Result<()> {
        if lock(&self.points).contains(&point) {
            Err(Error::Backend {
                op,
                message: format!("injected failure at {point:?}"),
            })
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Backend for FailingBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn setup_stage(&self, spec: &StageSpec) -> Result<StageHandle> {
        self.record(Call::SetupStage);
        self.check(FailPoint::SetupStage, "setup_stage")?;
        self.inner.setup_stage(spec).await
    }

    fn abandon_setup(&self, spec: &StageSpec) {
        self.inner.abandon_setup(spec)
    }

    async fn start_step(
        &self,
        stage: &StageHandle,
        index: usize,
        step: &StepSpec,
    ) -> Result<StepHandle> {
        self.record(Call::StartStep(index));
        self.check(FailPoint::StartStep(index), "start_step")?;
        let delay = *lock(&self.start_delay);
        tokio::time::sleep(delay).await;
        self.inner.start_step(stage, index, step).await
    }

    async fn tail_step(&self, stage: &StageHandle, step: &StepHandle) -> Result<LogStream> {
        self.record(Call::Tail(step.index));
        self.check(FailPoint::Tail, "tail_step")?;
        self.inner.tail_step(stage, step).await
    }

    async fn wait_step(&self, stage: &StageHandle, step: &StepHandle) -> Result<StepExit> {
        self.record(Call::WaitStep(step.index));
        self.check(FailPoint::WaitStep(step.index), "wait_step")?;
        self.inner.wait_step(stage, step).await
    }

    async fn destroy_step(&self, stage: &StageHandle, step: &StepHandle) -> Result<()> {
        self.record(Call::DestroyStep(step.index));
        self.inner.destroy_step(stage, step).await?;
        self.check(FailPoint::DestroyStep, "destroy_step")
    }

    async fn collect_artifacts(
        &self,
        stage: &StageHandle,
        globs: &[String],
        dest: &Path,
    ) -> Result<Vec<Artifact>> {
        self.record(Call::CollectArtifacts);
        self.check(FailPoint::CollectArtifacts, "collect_artifacts")?;
        self.inner.collect_artifacts(stage, globs, dest).await
    }

    async fn destroy_stage(&self, stage: &StageHandle) -> Result<()> {
        self.record(Call::DestroyStage);
        self.inner.destroy_stage(stage).await?;
        self.check(FailPoint::DestroyStage, "destroy_stage")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LocalBackend, RunOptions, Status, run_stage};
    use std::time::{Duration, Instant};
    use tokio_util::sync::CancellationToken;

    struct Fixture {
        base: tempfile::TempDir,
        artifacts: tempfile::TempDir,
        backend: Arc<FailingBackend>,
    }

    fn fixture(point: FailPoint) -> Fixture {
        let base = tempfile::tempdir().unwrap();
        let local = LocalBackend::new(Some(base.path().to_path_buf()));
        Fixture {
            base,
            artifacts: tempfile::tempdir().unwrap(),
            backend: Arc::new(FailingBackend::new(Arc::new(local)).fail_at(point)),
        }
    }

    fn spec() -> StageSpec {
        let mut spec = StageSpec::new("failing");
        spec.steps = vec![
            StepSpec::new("first", "echo one > a.txt"),
            // Long-running, so that a failure to wait/tail it must kill it.
            StepSpec::new("second", "echo two; sleep 300"),
            StepSpec::new("third", "true"),
        ];
        spec.artifacts = vec!["*.txt".into()];
        spec
    }

    async fn run(f: &Fixture, spec: &StageSpec) -> crate::StageOutcome {
        let (tx, _rx) = crate::event_channel(crate::DEFAULT_EVENT_BUDGET);
        let opts = RunOptions {
            artifact_dir: Some(f.artifacts.path().to_path_buf()),
            ..Default::default()
        };
        let started = Instant::now();
        let outcome = run_stage(&*f.backend, spec, opts, tx, CancellationToken::new()).await;
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "stage hung: {outcome:?}"
        );
        outcome
    }

    fn assert_cleaned(f: &Fixture) {
        assert_eq!(
            std::fs::read_dir(f.base.path()).unwrap().count(),
            0,
            "stage directory leaked"
        );
    }

    fn assert_retryable_error(outcome: &crate::StageOutcome, point: FailPoint) {
        match &outcome.status {
            Status::Error(msg) => assert!(msg.contains("injected failure"), "{msg}"),
            other => panic!("{point:?}: expected an error, got {other:?}"),
        }
    }

    #[test]
    fn injected_failures_are_retryable() {
        let local: Arc<dyn Backend> = Arc::new(LocalBackend::new(None));
        let b = FailingBackend::new(local).fail_at(FailPoint::Tail);
        let err = b.check(FailPoint::Tail, "tail_step").unwrap_err();
        assert!(err.is_retryable());
        assert!(b.check(FailPoint::SetupStage, "setup_stage").is_ok());
    }

    #[tokio::test]
    async fn setup_failure_is_a_retryable_error_and_runs_nothing() {
        let f = fixture(FailPoint::SetupStage);
        let outcome = run(&f, &spec()).await;
        assert_retryable_error(&outcome, FailPoint::SetupStage);
        assert!(outcome.steps.iter().all(|s| s.status == Status::Skipped));
        // Nothing was created, so there is nothing to destroy.
        assert_eq!(f.backend.calls(), vec![Call::SetupStage]);
        assert_cleaned(&f);
    }

    #[tokio::test]
    async fn step_level_failures_are_retryable_errors_and_still_destroy() {
        for (point, failing_step) in [
            (FailPoint::StartStep(1), 1),
            (FailPoint::WaitStep(1), 1),
            (FailPoint::Tail, 0),
        ] {
            let f = fixture(point);
            let outcome = run(&f, &spec()).await;
            assert_retryable_error(&outcome, point);
            let statuses: Vec<&Status> = outcome.steps.iter().map(|s| &s.status).collect();
            for (i, status) in statuses.iter().enumerate() {
                if i < failing_step {
                    assert_eq!(**status, Status::Success, "{point:?} step {i}");
                } else if i == failing_step {
                    assert!(matches!(status, Status::Error(_)), "{point:?} step {i}");
                } else {
                    assert_eq!(**status, Status::Skipped, "{point:?} step {i}");
                }
            }
            assert_eq!(f.backend.count(&Call::DestroyStage), 1, "{point:?}");
            assert_eq!(f.backend.count(&Call::CollectArtifacts), 0, "{point:?}");
            assert_cleaned(&f);
        }
    }

    #[tokio::test]
    async fn artifact_failure_is_a_retryable_error() {
        let f = fixture(FailPoint::CollectArtifacts);
        let mut spec = spec();
        spec.steps[1].script = "echo two".into();
        let outcome = run(&f, &spec).await;
        assert_retryable_error(&outcome, FailPoint::CollectArtifacts);
        assert!(outcome.steps.iter().all(|s| s.status == Status::Success));
        assert_eq!(f.backend.count(&Call::DestroyStage), 1);
        assert_cleaned(&f);
    }

    #[tokio::test]
    async fn a_step_timeout_counts_from_when_the_step_runs_and_the_stage_timeout_bounds_starting() {
        let base = tempfile::tempdir().unwrap();
        let local = Arc::new(LocalBackend::new(Some(base.path().to_path_buf())));
        let f = Fixture {
            base,
            artifacts: tempfile::tempdir().unwrap(),
            backend: Arc::new(FailingBackend::new(local).slow_start(Duration::from_millis(1500))),
        };
        // Starting takes longer than the step may run; the step itself is quick.
        let mut spec = StageSpec::new("slow-start");
        let mut step = StepSpec::new("quick", "echo ran");
        step.timeout = Some(Duration::from_secs(1));
        spec.steps = vec![step];
        let outcome = run(&f, &spec).await;
        assert_eq!(outcome.status, Status::Success, "{outcome:?}");

        // A stage deadline that passes while a step is still starting times it out.
        spec.timeout = Some(Duration::from_secs(1));
        let outcome = run(&f, &spec).await;
        assert_eq!(outcome.steps[0].status, Status::TimedOut, "{outcome:?}");
        assert_eq!(outcome.status, Status::TimedOut, "{outcome:?}");
        assert_cleaned(&f);
    }

    #[tokio::test]
    async fn cleanup_failures_do_not_change_the_result() {
        for point in [FailPoint::DestroyStep, FailPoint::DestroyStage] {
            let f = fixture(point);
            let mut spec = spec();
            spec.steps[1].script = "echo two".into();
            let outcome = run(&f, &spec).await;
            assert_eq!(outcome.status, Status::Success, "{point:?}");
            assert_eq!(outcome.artifacts.len(), 1);
            assert_eq!(f.backend.count(&Call::DestroyStage), 1, "{point:?}");
            assert_eq!(f.backend.count(&Call::DestroyStep(2)), 1, "{point:?}");
        }
    }
}
