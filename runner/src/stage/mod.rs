//! The stage driver: runs one [`StageSpec`] on any [`Backend`].
//!
//! Policy lives here, once, instead of in every backend: steps in order, stop at the
//! first step that does not succeed (the rest are `Skipped`), per-step and
//! per-stage timeouts, cancellation, line assembly and secret masking, artifacts on
//! success, and `destroy_stage` on every path.
//!
//! The stage loop is here; `step` runs one step, `kind_step` the step a stage kind
//! adds, `race` bounds backend calls by the deadline and the cancel token, `lines`
//! turns output into masked, numbered lines, `events` is the byte-bounded channel they
//! go out through, `outcome` holds what a stage reports, `waiting` reports a set-up
//! that waits (for quota) and why.

mod driver;
mod events;
mod kind_step;
mod lines;
mod outcome;
mod race;
mod step;
mod waiting;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::pin;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, StageHandle};
use crate::mask::Masker;
use crate::spec::{StageSpec, StepSpec};
use driver::Driver;
use race::Raced;

pub use events::{
    Closed, DEFAULT_EVENT_BUDGET, EventReceiver, EventSender, LINE_OVERHEAD, event_channel,
};
pub use outcome::{LogLine, StageEvent, StageOutcome, Status, StepOutcome};

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
    /// The stage's declared artifact globs, to scan the collected files they select
    /// for the stage's secret values before anything is uploaded: a stage whose
    /// artifacts hold one fails, naming the artifact and the file
    /// ([`crate::artifact_secrets`]). `None`: not scanned (the stage set
    /// `allow_secrets_in_artifacts`, or the caller does not upload).
    pub secret_scan: Option<Vec<String>>,
}

/// Runs `spec` on `backend`: set-up, steps in order (stopping at the first failing
/// step), per-step and per-stage timeouts, cancellation, masking, log line
/// assembly, artifacts (collected on success into `opts.artifact_dir` if given),
/// and always `destroy_stage`. Never fails: problems are reported in the outcome.
///
/// `events` is bounded ([`event_channel`]): while its receiver does not take the
/// lines, the step's output is not read and a fast step is slowed down. Receive
/// concurrently with the call, never only after it returns.
pub async fn run_stage(
    backend: &dyn Backend,
    spec: &StageSpec,
    opts: RunOptions,
    events: EventSender,
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

impl Driver<'_> {
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
                None => {
                    self.reporting_waits(self.backend.setup_stage(self.spec))
                        .await
                }
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
                // dropping it half-way could leak a workspace or a container. One
                // that only waits (for quota) is told to stop waiting.
                self.backend.abandon_setup(self.spec);
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
                Raced::Done(Ok(a)) => match self.secret_in(&a, dir, &opts).await {
                    Ok(None) => outcome.artifacts = a,
                    Ok(Some(found)) => {
                        stage_status = Status::Error(found.to_string());
                        retryable = false;
                    }
                    Err(e) => {
                        stage_status = Status::Error(self.mask_err(&e));
                        retryable = e.is_retryable();
                    }
                },
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

    /// A collected artifact holding a secret value, if the options ask for the scan.
    async fn secret_in(
        &self,
        collected: &[crate::Artifact],
        dir: &std::path::Path,
        opts: &RunOptions,
    ) -> crate::Result<Option<crate::artifact_secrets::SecretInArtifact>> {
        let Some(globs) = opts.secret_scan.clone() else {
            return Ok(None);
        };
        let (masker, dir, collected) = (self.masker.clone(), dir.to_path_buf(), collected.to_vec());
        tokio::task::spawn_blocking(move || {
            crate::artifact_secrets::find(&masker, &dir, &collected, &globs)
        })
        .await
        .map_err(|e| crate::Error::io("scanning artifacts for secrets", std::io::Error::other(e)))?
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn invalid_spec_and_early_cancel_run_nothing() {
        let backend = crate::LocalBackend::new(None);
        let (tx, _rx) = event_channel(DEFAULT_EVENT_BUDGET);
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
        let (tx, _rx) = event_channel(DEFAULT_EVENT_BUDGET);
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
