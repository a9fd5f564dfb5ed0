//! The step a stage kind adds after its steps, logged and timed like any step:
//! `build image` (through [`crate::Backend::build_image`], outputs `image_id`, `image`,
//! `digest`) and `scan` (a copy of the workspace through `collect_artifacts`, scanned
//! by [`crate::scan`], failing at `fail_on`).

use std::pin::pin;

use tokio::time::Instant;

use super::driver::Driver;
use super::lines::StepLines;
use super::outcome::{StageEvent, StageOutcome, Status, StepOutcome};
use super::race::Raced;
use crate::backend::{LogStreamKind, StageHandle};
use crate::error::Error;
use crate::spec::{ImageSpec, ScanSpec, StageKind};

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

impl Driver<'_> {
    /// The step a stage kind adds after the steps (`build image`, `scan`), run like a
    /// step: same events, same log, same deadline and cancel handling.
    pub(super) async fn run_kind_step(
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
                lines.say(LogStreamKind::Stderr, &message).await;
                (Status::Failure, false)
            }
            Err(KindError::Backend(e)) => {
                let message = self.mask_err(&e);
                lines.say(LogStreamKind::Stderr, &message).await;
                if e.is_retryable() {
                    (Status::Error(message), true)
                } else {
                    // A Dockerfile that does not build, refused credentials: the
                    // pipeline's problem, reported like a failing step.
                    (Status::Failure, false)
                }
            }
        };
        lines.finish().await;
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
                // As for a step: the next chunk once the last one's lines are sent.
                tokio::select! {
                    r = &mut build => break r,
                    () = lines.send_pending(), if lines.has_pending() => {}
                    Some(chunk) = rx.recv(), if !lines.has_pending() => lines.push(&chunk),
                }
            }
        };
        rx.close();
        while let Some(chunk) = rx.recv().await {
            lines.push(&chunk);
            lines.send_pending().await;
        }
        lines.send_pending().await;
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
            lines
                .say(LogStreamKind::Stdout, &format!("pushed {pinned}"))
                .await;
        } else {
            lines
                .say(LogStreamKind::Stdout, &format!("built {}", built.id))
                .await;
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
            lines
                .say(LogStreamKind::Stdout, &crate::scan::summary(f))
                .await;
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
        lines.say(LogStreamKind::Stdout, &verdict).await;
        Ok(())
    }
}
