//! Running a stage in a test: specs from scripts, every event collected.

use std::collections::BTreeMap;

use tokio_util::sync::CancellationToken;

use crate::{
    Backend, LogLine, LogStreamKind, RunOptions, StageEvent, StageOutcome, StageSpec, Status,
    StepSpec, run_stage,
};

/// A finished stage and every event it sent.
#[derive(Debug)]
pub struct Run {
    pub outcome: StageOutcome,
    pub events: Vec<StageEvent>,
}

impl Run {
    /// Lines of step `step`, in order.
    pub fn lines(&self, step: usize) -> Vec<&LogLine> {
        self.events
            .iter()
            .filter_map(|e| match e {
                StageEvent::Line(l) if l.step == step => Some(l),
                _ => None,
            })
            .collect()
    }

    /// Text of step `step`'s lines from one stream (lossy UTF-8).
    pub fn text(&self, step: usize, stream: LogStreamKind) -> Vec<String> {
        self.lines(step)
            .into_iter()
            .filter(|l| l.stream == stream)
            .map(|l| String::from_utf8_lossy(&l.bytes).into_owned())
            .collect()
    }

    pub fn stdout(&self, step: usize) -> Vec<String> {
        self.text(step, LogStreamKind::Stdout)
    }

    pub(super) fn statuses(&self) -> Vec<Status> {
        self.outcome
            .steps
            .iter()
            .map(|s| s.status.clone())
            .collect()
    }
}

/// A stage spec with one step per script.
pub fn stage(id: &str, image: &Option<String>, scripts: &[&str]) -> StageSpec {
    let mut spec = StageSpec::new(id);
    spec.image = image.clone();
    spec.steps = scripts
        .iter()
        .enumerate()
        .map(|(i, s)| StepSpec::new(format!("step{i}"), *s))
        .collect();
    spec
}

/// Runs `spec`, handing each event to `on_event` as it arrives.
pub async fn drive(
    backend: &dyn Backend,
    spec: &StageSpec,
    opts: RunOptions,
    cancel: CancellationToken,
    mut on_event: impl FnMut(StageEvent),
) -> StageOutcome {
    let (tx, mut rx) = crate::event_channel(crate::DEFAULT_EVENT_BUDGET);
    let consume = async {
        while let Some(event) = rx.recv().await {
            on_event(event);
        }
    };
    // run_stage drops the sender when it returns, which ends `consume`.
    let (outcome, ()) = tokio::join!(run_stage(backend, spec, opts, tx, cancel), consume);
    outcome
}

/// Runs `spec` and collects all events.
pub async fn run(backend: &dyn Backend, spec: &StageSpec) -> Run {
    run_with(backend, spec, RunOptions::default()).await
}

pub async fn run_with(backend: &dyn Backend, spec: &StageSpec, opts: RunOptions) -> Run {
    let mut events = Vec::new();
    let outcome = drive(backend, spec, opts, CancellationToken::new(), |e| {
        events.push(e)
    })
    .await;
    Run { outcome, events }
}

pub(super) fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
