//! Runs planned pipelines on one backend, honouring `needs`, a job limit, retries and
//! cancellation. This is what `slipway exec` uses; it knows nothing about terminals —
//! it reports through [`ExecEvent`]s, and the CLI decides how to show them.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pipelines::{Plan, PlannedKind, PlannedStage};
use runner::{Backend, RunOptions, Source, StageOutcome, StageSpec, Status};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::inputs::{self, Input};
use crate::agent::stage_spec::{
    OnMissing, RunInfo, SpecError, add_run_info, add_stage_outputs, stage_spec,
};
use crate::runs::reconcile::{StageView, reconcile};
use crate::store::{RunStatus, StageStatus};

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
    /// Not run: filtered by `when`, a stage it needs did not succeed, or the run was
    /// cancelled first.
    Skipped(String),
    /// Not run: its kind needs a backend or service that `exec` does not have.
    Unsupported(String),
}

impl StageResult {
    /// True when the stage ran and did not succeed.
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

/// A stage of the run, with ids made unique across pipelines.
struct Node {
    id: String,
    /// The plan's stage name (`stages.<name>` in expressions).
    stage: String,
    needs: Vec<String>,
    /// Taken when the stage starts.
    work: Option<Work>,
    status: StageStatus,
}

enum Work {
    Run { spec: Box<StageSpec>, retries: u32 },
    Unsupported(String),
}

/// What [`execute`] did: one report per stage, and the run's status from them.
#[derive(Debug)]
pub struct Executed {
    /// In the order the stages finished (skipped ones included).
    pub reports: Vec<StageReport>,
    pub status: RunStatus,
}

/// Runs every plan. Which stage may start, which is skipped and how the run ends
/// follow [`reconcile`], the rules the server applies to its stage rows.
pub async fn execute(
    backend: Arc<dyn Backend>,
    plans: &[Plan],
    opts: &ExecOptions,
    events: UnboundedSender<ExecEvent>,
    cancel: CancellationToken,
) -> Result<Executed, Error> {
    let prefix_ids = plans.len() > 1;
    let mut nodes = Vec::new();
    let mut reports = Vec::new();
    let mut report = |report: StageReport| {
        let _ = events.send(ExecEvent::StageFinished(report.clone()));
        reports.push(report);
    };
    for plan in plans {
        let qualify = |id: &str| {
            if prefix_ids {
                format!("{}/{id}", plan.pipeline)
            } else {
                id.to_string()
            }
        };
        for skipped in &plan.skipped {
            report(StageReport {
                id: qualify(&skipped.id),
                result: StageResult::Skipped(skipped.reason.clone()),
                attempts: 0,
            });
        }
        for stage in &plan.stages {
            let id = qualify(&stage.id);
            nodes.push(Node {
                stage: stage.stage.clone(),
                needs: stage.needs.iter().map(|n| qualify(n)).collect(),
                work: Some(work_for(stage, &id, opts, backend.name())?),
                id,
                status: StageStatus::Waiting,
            });
        }
    }

    let jobs = opts.jobs.max(1);
    // Node id → (plan stage name, outputs) of stages that ran, for the stages that
    // need them.
    let mut outputs: HashMap<String, (String, BTreeMap<String, String>)> = HashMap::new();
    // Node id → the artifacts it collected (where they are kept, what was recorded),
    // placed into the workspaces of the stages that need it.
    let mut collected: HashMap<String, (PathBuf, Vec<runner::Artifact>)> = HashMap::new();
    let mut running = JoinSet::new();
    // Task → node index.
    let mut running_nodes: HashMap<tokio::task::Id, usize> = HashMap::new();
    let mut run_status = None;
    loop {
        // Apply the rules until they derive nothing more, starting queued stages as
        // jobs allow; a stage whose kind `exec` cannot run ends at once.
        loop {
            let run = if cancel.is_cancelled() {
                RunStatus::Cancelled
            } else {
                RunStatus::Running
            };
            let changes = reconcile(run, &views(&nodes));
            run_status = changes.run.or(run_status);
            let mut settled = changes.stages.is_empty();
            for c in changes.stages {
                let node = &mut nodes[c.stage];
                node.status = c.status;
                if c.status.is_final() {
                    report(StageReport {
                        id: node.id.clone(),
                        result: StageResult::Skipped(c.reason.unwrap_or_default()),
                        attempts: 0,
                    });
                }
            }
            for (i, node) in nodes.iter_mut().enumerate() {
                if node.status != StageStatus::Queued {
                    continue;
                }
                match node.work.take() {
                    Some(Work::Unsupported(reason)) => {
                        node.status = StageStatus::Skipped;
                        settled = false;
                        report(StageReport {
                            id: node.id.clone(),
                            result: StageResult::Unsupported(reason),
                            attempts: 0,
                        });
                    }
                    Some(Work::Run { mut spec, retries }) if running.len() < jobs => {
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
                        let inputs: Vec<Input> = node
                            .needs
                            .iter()
                            .filter_map(|n| collected.get(n).map(|c| (n, c)))
                            .flat_map(|(n, (dir, artifacts))| {
                                artifacts.iter().map(|a| Input {
                                    stage: n.clone(),
                                    dir: dir.clone(),
                                    artifact: a.clone(),
                                })
                            })
                            .collect();
                        let handle = running.spawn(run_with_retries(
                            backend.clone(),
                            *spec,
                            retries,
                            inputs,
                            opts.artifact_dir
                                .as_ref()
                                .map(|d| d.join(safe_dir(&node.id))),
                            events.clone(),
                            cancel.clone(),
                        ));
                        running_nodes.insert(handle.id(), i);
                        node.status = StageStatus::Running;
                    }
                    work => node.work = work,
                }
            }
            if settled {
                break;
            }
        }
        let Some(joined) = running.join_next_with_id().await else {
            break;
        };
        let (i, result) = match joined {
            Ok((task, report)) => (running_nodes[&task], report),
            // A panicking stage task is a bug; report it rather than hang the run.
            Err(e) => {
                let i = running_nodes[&e.id()];
                let result = ended_early(&nodes[i].id, format!("stage task failed: {e}"));
                (i, result)
            }
        };
        let node = &mut nodes[i];
        node.status = stage_status(&result.result);
        if let StageResult::Ran(o) = &result.result {
            outputs.insert(node.id.clone(), (node.stage.clone(), o.outputs.clone()));
            if let Some(dir) = &opts.artifact_dir
                && o.status == Status::Success
            {
                let kept = dir.join(safe_dir(&node.id));
                collected.insert(node.id.clone(), (kept, o.artifacts.clone()));
            }
        }
        report(result);
    }
    // Without a final status from the rules the run was cancelled before it ended.
    let status = run_status.unwrap_or(RunStatus::Cancelled);
    Ok(Executed { reports, status })
}

fn views(nodes: &[Node]) -> Vec<StageView<'_>> {
    nodes
        .iter()
        .map(|n| StageView {
            key: &n.id,
            status: n.status,
            needs: &n.needs,
            gate: None,
        })
        .collect()
}

/// How a finished stage counts for the rules.
fn stage_status(result: &StageResult) -> StageStatus {
    match result {
        StageResult::Ran(o) => match o.status {
            Status::Success => StageStatus::Success,
            Status::Failure => StageStatus::Failure,
            Status::TimedOut => StageStatus::TimedOut,
            Status::Cancelled => StageStatus::Cancelled,
            // A stage that ran never ends skipped; if it did, it did not succeed.
            Status::Error(_) | Status::Skipped => StageStatus::Error,
        },
        StageResult::Skipped(_) | StageResult::Unsupported(_) => StageStatus::Skipped,
    }
}

/// Runs a stage, then again while it fails and retries remain. Infrastructure errors
/// get one extra attempt even without `retry`, since they say nothing about the code.
/// With `inputs`, every attempt starts from the source with those artifacts placed.
async fn run_with_retries(
    backend: Arc<dyn Backend>,
    mut spec: StageSpec,
    retries: u32,
    inputs: Vec<Input>,
    artifact_dir: Option<PathBuf>,
    events: UnboundedSender<ExecEvent>,
    cancel: CancellationToken,
) -> StageReport {
    let _prepared = if inputs.is_empty() {
        None
    } else {
        let source = spec.source.clone();
        let prepared = tokio::task::spawn_blocking(move || inputs::prepare(&source, &inputs))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        match prepared {
            Ok(p) => {
                spec.source = p.source();
                Some(p)
            }
            Err(why) => return ended_early(&spec.id, why),
        }
    };
    let (tx, mut rx) = runner::event_channel(runner::DEFAULT_EVENT_BUDGET);
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

/// The report of a stage that ended without running: its inputs could not be
/// placed, or its task failed.
fn ended_early(id: &str, why: String) -> StageReport {
    StageReport {
        id: id.to_string(),
        result: StageResult::Ran(StageOutcome {
            id: id.to_string(),
            status: Status::Error(why),
            steps: Vec::new(),
            artifacts: Vec::new(),
            outputs: Default::default(),
            findings: Vec::new(),
            retryable: false,
            duration: Duration::ZERO,
        }),
        attempts: 0,
    }
}

/// What to do with `stage` on the backend named `backend`. A stage that cannot run
/// here is decided before its secrets are looked at, so none is asked for in vain.
fn work_for(
    stage: &PlannedStage,
    id: &str,
    opts: &ExecOptions,
    backend: &str,
) -> Result<Work, Error> {
    if let PlannedKind::Deploy { environment, .. } = &stage.kind {
        // Deployments go out from the server, through the environment's gate and with
        // its credentials; a laptop never deploys by accident.
        return Ok(Work::Unsupported(format!(
            "deploys to `{environment}`, which only the server does (through the environment's gate)"
        )));
    }
    // The backend a runner must have for it (`runs_on: backend:…`, or docker for an
    // image build), as the server routes it.
    let bound = crate::runs::routing::stage_labels(stage)
        .into_iter()
        .find_map(|l| {
            l.strip_prefix(pipelines::BACKEND_LABEL_PREFIX)
                .map(str::to_string)
        });
    if let Some(wanted) = bound.filter(|b| b != backend) {
        let why = match stage.kind {
            PlannedKind::Image { .. } => "builds an image",
            _ => "is bound to it by `runs_on`",
        };
        return Ok(Work::Unsupported(format!(
            "needs the {wanted} backend ({why}); this is the {backend} backend: pass --backend {wanted}"
        )));
    }
    match stage_spec(
        stage,
        id,
        opts.source.clone(),
        &opts.secrets,
        OnMissing::Error,
    ) {
        Ok(mut spec) => {
            add_run_info(&mut spec.env, &RunInfo::local());
            Ok(Work::Run {
                spec: Box::new(spec),
                retries: stage.retry,
            })
        }
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use pipelines::EventContext;
    use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

    use super::*;

    fn plan(yaml: &str) -> Plan {
        let pipeline = pipelines::parse(".slipway.yml", yaml).unwrap();
        let ctx = EventContext {
            branch: Some("main".into()),
            ..EventContext::default()
        };
        pipelines::plan(&pipeline, &ctx).unwrap()
    }

    /// Starts `execute` on the local backend, in work dirs under `dir`.
    fn start(
        yaml: &str,
        dir: &Path,
        cancel: CancellationToken,
    ) -> (
        tokio::task::JoinHandle<Result<Executed, Error>>,
        UnboundedReceiver<ExecEvent>,
    ) {
        let plans = [plan(yaml)];
        let source = dir.join("source");
        std::fs::create_dir_all(&source).unwrap();
        let opts = ExecOptions {
            jobs: 4,
            source: Source::Directory(source),
            secrets: BTreeMap::new(),
            artifact_dir: None,
        };
        let backend: Arc<dyn Backend> = Arc::new(runner::LocalBackend::new(Some(dir.join("work"))));
        let (tx, rx) = unbounded_channel();
        let run = tokio::spawn(async move { execute(backend, &plans, &opts, tx, cancel).await });
        (run, rx)
    }

    fn report<'a>(executed: &'a Executed, id: &str) -> &'a StageReport {
        executed.reports.iter().find(|r| r.id == id).unwrap()
    }

    fn reason(report: &StageReport) -> &str {
        match &report.result {
            StageResult::Skipped(why) => why,
            other => panic!("{} not skipped: {other:?}", report.id),
        }
    }

    /// `after` needs a stage that fails and one that only ends once `after` has been
    /// reported: the skip must not wait for every need to finish.
    #[tokio::test]
    async fn a_stage_is_skipped_as_soon_as_a_need_fails() {
        let dir = tempfile::tempdir().unwrap();
        let go = dir.path().join("go");
        let yaml = format!(
            "stages:\n  broken:\n    steps: [ {{ run: exit 3 }} ]\n  slow:\n    steps:\n      \
             - run: while [ ! -f '{}' ]; do sleep 0.05; done\n  after:\n    needs: [broken, slow]\n    \
             steps: [ {{ run: echo never }} ]\n",
            go.display()
        );
        let (run, mut events) = start(&yaml, dir.path(), CancellationToken::new());
        let seen = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(event) = events.recv().await {
                if let ExecEvent::StageFinished(r) = event {
                    assert_ne!(r.id, "slow", "`after` was not skipped before `slow` ended");
                    if r.id == "after" {
                        std::fs::write(&go, "").unwrap();
                        return;
                    }
                }
            }
        })
        .await;
        assert!(seen.is_ok(), "`after` waited for `slow`");
        let executed = run.await.unwrap().unwrap();
        assert_eq!(
            reason(report(&executed, "after")),
            "needs `broken`, which is failure"
        );
        assert!(!report(&executed, "slow").result.failed());
        assert_eq!(executed.status, RunStatus::Failure);
    }

    /// Cancelling the run cancels at once what has not started, even a stage whose
    /// need is still running, and the run ends `cancelled`.
    #[tokio::test]
    async fn a_cancelled_run_cancels_what_has_not_started() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = "stages:\n  slow:\n    steps: [ { run: sleep 60 } ]\n  after:\n    \
                    needs: [slow]\n    steps: [ { run: echo never } ]\n";
        let cancel = CancellationToken::new();
        let (run, mut events) = start(yaml, dir.path(), cancel.clone());
        while let Some(event) = events.recv().await {
            if let ExecEvent::Runner(runner::StageEvent::StepStarted { .. }) = event {
                cancel.cancel();
                break;
            }
        }
        let executed = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("the run ends once cancelled")
            .unwrap()
            .unwrap();
        assert_eq!(reason(report(&executed, "after")), "run cancelled");
        assert!(report(&executed, "slow").result.failed());
        assert_eq!(executed.status, RunStatus::Cancelled);
    }
}
