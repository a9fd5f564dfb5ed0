//! The state of one stage run, shared by the stage loop, the steps and the kind step,
//! and what they all do alike: report a skipped step, release a step or the stage,
//! mask an error, send an event.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::events::EventSender;
use super::outcome::{StageEvent, Status, StepOutcome};
use crate::backend::{Backend, StageHandle, StepHandle};
use crate::error::Error;
use crate::mask::Masker;
use crate::spec::{StageSpec, StepSpec};

/// Upper bound for `destroy_stage`, so a hung backend cannot hang the runner.
const DESTROY_LIMIT: Duration = Duration::from_secs(300);

pub(super) struct Driver<'a> {
    pub(super) backend: &'a dyn Backend,
    pub(super) spec: &'a StageSpec,
    pub(super) masker: Masker,
    pub(super) events: EventSender,
    pub(super) cancel: CancellationToken,
    pub(super) stage_deadline: Option<Instant>,
}

/// An error, masked, with whether it is worth retrying.
pub(super) struct Failure {
    pub(super) message: String,
    pub(super) retryable: bool,
}

impl Driver<'_> {
    pub(super) fn skip(&self, index: usize, step: &StepSpec) -> StepOutcome {
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
    pub(super) async fn destroy_stage(&self, handle: &StageHandle) {
        match tokio::time::timeout(DESTROY_LIMIT, self.backend.destroy_stage(handle)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(stage = %self.spec.id, error = %self.mask_err(&e), "destroy_stage failed")
            }
            Err(_) => tracing::error!(stage = %self.spec.id, "destroy_stage timed out"),
        }
    }

    pub(super) async fn destroy_step(
        &self,
        stage: &StageHandle,
        step: &StepHandle,
    ) -> Option<Failure> {
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

    pub(super) fn mask_err(&self, e: &Error) -> String {
        self.masker.mask_str(&e.to_string())
    }

    /// Sends a step's start or end, at once (outside the channel's byte budget,
    /// which is for output). A receiver that went away (UI closed) must not stop the
    /// stage.
    pub(super) fn send(&self, event: StageEvent) {
        let _ = self.events.send_now(event);
    }
}
