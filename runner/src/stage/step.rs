//! One step: started within the stage deadline, followed (log and exit) under its own
//! timeout and the cancel token, its remaining output drained, then released.

use std::pin::pin;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use super::driver::Driver;
use super::lines::StepLines;
use super::outcome::{StageEvent, Status, StepOutcome};
use super::race::{Raced, sleep_until_opt};
use crate::backend::{LogStream, StageHandle, StepHandle};
use crate::error::Error;
use crate::spec::StepSpec;

/// After a step ended, how long the log stream may stay silent before we stop
/// waiting for the rest of it. Output produced before the exit is normally already
/// buffered; this only bounds the wait for a stream that never closes (a process
/// that escaped the step's process group and holds the pipe).
const DRAIN_IDLE: Duration = Duration::from_secs(10);
/// Upper bound for draining after the step ended, even if output keeps coming (or
/// the receiver of the lines falls behind).
const DRAIN_MAX: Duration = Duration::from_secs(120);

impl Driver<'_> {
    pub(super) async fn run_step(
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
        lines.finish().await;

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
                // The next chunk is read only once the last one's lines are sent: a
                // receiver that is behind slows the step down (back-pressure) while
                // the deadline and the cancel token are still heard.
                tokio::select! {
                    biased;
                    _ = &mut cancelled => break End::Cancelled,
                    _ = &mut expired => break End::TimedOut,
                    r = &mut wait => break End::Exited(r),
                    () = lines.send_pending(), if lines.has_pending() => {}
                    item = stream.next(), if !stream_done && !lines.has_pending() => match item {
                        Some(Ok(chunk)) => lines.push(&chunk),
                        Some(Err(e)) => { tail_error = Some(e); stream_done = true; }
                        None => stream_done = true,
                    },
                }
            }
        };

        let mut kill_failure = None;
        if !matches!(end, End::Exited(Ok(_))) {
            // Kill it now so the last output arrives and the stream closes. Its output
            // is still read (as the receiver takes it) meanwhile: a container engine
            // may not let a step's container end before its output is read.
            let mut kill = pin!(self.destroy_step(stage, handle));
            kill_failure = loop {
                tokio::select! {
                    biased;
                    failure = &mut kill => break failure,
                    () = lines.send_pending(), if lines.has_pending() => {}
                    item = stream.next(), if !stream_done && !lines.has_pending() => match item {
                        Some(Ok(chunk)) => lines.push(&chunk),
                        Some(Err(e)) => { tail_error = Some(e); stream_done = true; }
                        None => stream_done = true,
                    },
                }
            };
        }

        // Take the rest of the output, passing it on as the receiver takes it.
        let drain_until = Instant::now() + DRAIN_MAX;
        loop {
            if lines.has_pending() {
                if tokio::time::timeout_at(drain_until, lines.send_pending())
                    .await
                    .is_err()
                {
                    tracing::warn!(stage = %self.spec.id, step = handle.index, "the step's log was not taken in time after the step; giving up on the rest");
                    lines.abandon();
                    break;
                }
                continue;
            }
            if stream_done {
                break;
            }
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
}
