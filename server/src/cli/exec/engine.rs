//! Runs planned pipelines on one backend, honouring `needs`, a job limit, retries and
//! cancellation. This is what `slipway exec` uses; it knows nothing about terminals —
//! it reports through [`ExecEvent`]s, and the CLI decides how to show them.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pipelines::{Plan, PlannedStage};
use runner::{Backend, RunOptions, Source, StageOutcome, StageSpec, Status};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::agent::stage_spec::{OnMissing, SpecError, add_stage_outputs, stage_spec};

pub struct ExecOptions {
    /// How many stages may run at once (at least 1).
    pub jobs: usize,
    /// Where each stage's workspace comes from.
    pub source: Source,
    /// Secret values by name, for stages that reference `${{ secrets.NAME }}`.
    pub secrets: BTreeMap<String, String>,
    /// Where collected artifacts go (one sub-directory per stage).
    pub artifact_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "stage `{stage}` needs secret `{secret}`: pass --secret {secret}=VALUE (or --secret {secret} to read it from the environment)"
    )]
    MissingSecret { stage: String, secret: String },
}

/// How a stage ended, from the point of view of the whole run.
#[derive(Debug, Clone)]
pub enum StageResult {
    Ran(StageOutcome),
    /// Not run: filtered by `when`, or a stage it needs did not succeed.
    Skipped(String),
    /// Not run: its kind needs a backend or service that `exec` does not have.
    Unsupported(String),
}

impl StageResult {
    pub fn succeeded(&self) -> bool {
        matches!(self, StageResult::Ran(o) if o.status == Status::Success)
    }
    /// True when this result should make the whole run fail.
    pub fn failed(&self) -> bool {
        matches!(self, StageResult::Ran(o) if o.status != Status::Success)
    }
}

#[derive(Debug, Clone)]
pub struct StageReport {
    pub id: String,
    pub result: StageResult,
    pub attempts: u32,
}

#[derive(Debug)]
pub enum ExecEvent {
    StageStarted { id: String, attempt: u32 },
    Runner(runner::StageEvent),
    StageFinished(StageReport),
}

/// A stage ready to be scheduled, with ids made unique across pipelines.
struct Node {
    id: String,
    /// The plan's stage name (`stages.<name>` in expressions).
    stage: String,
    needs: Vec<String>,
    work: Work,
}

enum Work {
    Run { spec: Box<StageSpec>, retries: u32 },
    Unsupported(String),
}

/// Runs every plan; returns one report per stage (skipped ones included), in the order
/// they finished.
pub async fn execute(
    backend: Arc<dyn Backend>,
    plans: &[Plan],
    opts: &ExecOptions,
    events: UnboundedSender<ExecEvent>,
    cancel: CancellationToken,
) -> Result<Vec<StageReport>, Error> {
    let prefix_ids = plans.len() > 1;
    let mut pending = Vec::new();
    let mut reports = Vec::new();
    for plan in plans {
        let qualify = |id: &str| {
            if prefix_ids {
                format!("{}/{id}", plan.pipeline)
            } else {
                id.to_string()
            }
        };
        for skipped in &plan.skipped {
            let report = StageReport {
                id: qualify(&skipped.id),
                result: StageResult::Skipped(skipped.reason.clone()),
                attempts: 0,
            };
            let _ = events.send(ExecEvent::StageFinished(report.clone()));
            reports.push(report);
        }
        for stage in &plan.stages {
            let id = qualify(&stage.id);
            pending.push(Node {
                stage: stage.stage.clone(),
                needs: stage.needs.iter().map(|n| qualify(n)).collect(),
                work: work_for(stage, &id, opts)?,
                id,
            });
        }
    }

    let jobs = opts.jobs.max(1);
    let mut finished: HashMap<String, bool> = HashMap::new();
    // Node id → (plan stage name, outputs) of stages that ran, for the stages that
    // need them.
    let mut names: HashMap<String, String> = HashMap::new();
    let mut outputs: HashMap<String, (String, BTreeMap<String, String>)> = HashMap::new();
    let mut running = JoinSet::new();
    let mut running_ids: HashMap<tokio::task::Id, String> = HashMap::new();
    loop {
        // Start whatever is ready, resolving stages whose needs failed as skipped.
        let mut i = 0;
        while i < pending.len() {
            let node = &pending[i];
            if !node.needs.iter().all(|n| finished.contains_key(n)) {
                i += 1;
                continue;
            }
            let blocked = node.needs.iter().find(|n| finished.get(*n) != Some(&true));
            let result = if let Some(need) = blocked {
                Some(StageResult::Skipped(format!(
                    "needs `{need}`, which did not succeed"
                )))
            } else if cancel.is_cancelled() {
                Some(StageResult::Skipped("the run was cancelled".into()))
            } else if let Work::Unsupported(reason) = &node.work {
                Some(StageResult::Unsupported(reason.clone()))
            } else if running.len() >= jobs {
                i += 1;
                continue;
            } else {
                None
            };
            let node = pending.remove(i);
            match result {
                Some(result) => {
                    let report = StageReport {
                        id: node.id.clone(),
                        result,
                        attempts: 0,
                    };
                    finished.insert(node.id, false);
                    let _ = events.send(ExecEvent::StageFinished(report.clone()));
                    reports.push(report);
                }
                None => {
                    if let Work::Run { mut spec, retries } = node.work {
                        add_stage_outputs(
                            &mut spec.env,
                            node.needs.iter().filter_map(|n| outputs.get(n)).flat_map(
                                |(name, values)| {
                                    values
                                        .iter()
                                        .map(|(k, v)| (name.as_str(), k.as_str(), v.as_str()))
                                },
                            ),
                        );
                        names.insert(node.id.clone(), node.stage.clone());
                        let handle = running.spawn(run_with_retries(
                            backend.clone(),
                            *spec,
                            retries,
                            opts.artifact_dir
                                .as_ref()
                                .map(|d| d.join(safe_dir(&node.id))),
                            events.clone(),
                            cancel.clone(),
                        ));
                        running_ids.insert(handle.id(), node.id);
                    }
                }
            }
            // Restart the scan: finishing a node may have unblocked an earlier one.
            i = 0;
        }
        let Some(joined) = running.join_next_with_id().await else {
            break;
        };
        let report = match joined {
            Ok((_, report)) => report,
            // A panicking stage task is a bug; report it rather than hang the run.
            Err(e) => StageReport {
                id: running_ids.get(&e.id()).cloned().unwrap_or_default(),
                result: StageResult::Ran(StageOutcome {
                    id: running_ids.get(&e.id()).cloned().unwrap_or_default(),
                    status: Status::Error(format!("stage task failed: {e}")),
                    steps: Vec::new(),
                    artifacts: Vec::new(),
                    outputs: Default::default(),
                    findings: Vec::new(),
                    retryable: false,
                    duration: Duration::ZERO,
                }),
                attempts: 1,
            },
        };
        finished.insert(report.id.clone(), report.result.succeeded());
        if let (StageResult::Ran(o), Some(name)) = (&report.result, names.get(&report.id)) {
            outputs.insert(report.id.clone(), (name.clone(), o.outputs.clone()));
        }
        let _ = events.send(ExecEvent::StageFinished(report.clone()));
        reports.push(report);
    }
    Ok(reports)
}

/// Runs a stage, then again while it fails and retries remain. Infrastructure errors
/// get one extra attempt even without `retry`, since they say nothing about the code.
async fn run_with_retries(
    backend: Arc<dyn Backend>,
    spec: StageSpec,
    retries: u32,
    artifact_dir: Option<PathBuf>,
    events: UnboundedSender<ExecEvent>,
    cancel: CancellationToken,
) -> StageReport {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let forward_to = events.clone();
    let forward = tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            let _ = forward_to.send(ExecEvent::Runner(event));
        }
    });
    let mut attempt = 0;
    let mut infra_retry_used = false;
    let outcome = loop {
        attempt += 1;
        let _ = events.send(ExecEvent::StageStarted {
            id: spec.id.clone(),
            attempt,
        });
        let opts = RunOptions {
            artifact_dir: artifact_dir.clone(),
            ..Default::default()
        };
        let outcome = runner::run_stage(&*backend, &spec, opts, tx.clone(), cancel.clone()).await;
        let again = match &outcome.status {
            Status::Success | Status::Cancelled | Status::Skipped => false,
            Status::Error(_) if !infra_retry_used && attempt > retries => {
                infra_retry_used = true;
                true
            }
            _ => attempt <= retries,
        };
        if !again || cancel.is_cancelled() {
            break outcome;
        }
    };
    drop(tx);
    let _ = forward.await;
    StageReport {
        id: spec.id.clone(),
        result: StageResult::Ran(outcome),
        attempts: attempt,
    }
}

fn work_for(stage: &PlannedStage, id: &str, opts: &ExecOptions) -> Result<Work, Error> {
    match stage_spec(
        stage,
        id,
        opts.source.clone(),
        &opts.secrets,
        OnMissing::Error,
    ) {
        Ok(spec) => Ok(Work::Run {
            spec: Box::new(spec),
            retries: stage.retry,
        }),
        Err(SpecError::Unsupported(reason)) => Ok(Work::Unsupported(reason)),
        Err(SpecError::MissingSecret { stage, secret }) => {
            Err(Error::MissingSecret { stage, secret })
        }
        Err(e @ SpecError::BadRegistrySecret { .. }) => Ok(Work::Unsupported(e.to_string())),
    }
}

/// A directory name for a stage id such as `test (features=full)`.
fn safe_dir(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.=".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}
