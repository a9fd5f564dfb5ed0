//! `slipway exec`: plan the repository's pipelines for an event and run them here on
//! the local or the Docker backend.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

pub(crate) mod engine;
mod inputs;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use pipelines::{Event, EventContext, PlanError};
use runner::Source;
use tokio_util::sync::CancellationToken;

use super::output::Output;
use super::validate;
use crate::agent::backends::{BackendKind, Opened};
use crate::cli::pipeline_files;
use crate::cli::stdio::errln;
use crate::store::RunStatus;
use engine::{ExecEvent, ExecOptions, execute};

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The repository directory.
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// The event to simulate.
    #[arg(long, value_enum, default_value_t = EventArg::Push)]
    pub event: EventArg,
    /// The branch (default: the checked-out branch). For pull_request: the target branch.
    #[arg(long)]
    pub branch: Option<String>,
    /// For pull_request: the branch the change comes from (default: the checked-out
    /// branch).
    #[arg(long)]
    pub source_branch: Option<String>,
    /// For pull_request: its number (`SLIPWAY_PR_NUMBER` in steps).
    #[arg(long, value_name = "N")]
    pub pr_number: Option<u64>,
    /// The tag, for `--event tag`.
    #[arg(long)]
    pub tag: Option<String>,
    /// Which named `on.cron` entry fired, for `--event cron`.
    #[arg(long)]
    pub cron: Option<String>,
    /// A manual parameter, `KEY=VALUE` (repeatable).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// A changed path, for `when.paths` (repeatable). Without any, path filters match.
    #[arg(long = "changed", value_name = "PATH")]
    pub changed: Vec<String>,
    /// A secret, `NAME=VALUE`, or `NAME` to read it from the environment (repeatable).
    #[arg(long = "secret", value_name = "NAME[=VALUE]")]
    pub secrets: Vec<String>,
    /// Run the committed tree of this revision (checked out with git) instead of the
    /// working tree; pipeline files are read from that commit too.
    #[arg(long)]
    pub commit: Option<String>,
    /// Only run the pipeline with this name (repeatable).
    #[arg(long = "pipeline")]
    pub pipelines: Vec<String>,
    /// How many stages may run at once (default: the number of CPUs).
    #[arg(long, short)]
    pub jobs: Option<usize>,
    /// Keep collected artifacts in this directory (default: discarded at exit).
    #[arg(long)]
    pub artifacts_dir: Option<PathBuf>,
    /// Where steps run: host processes, or containers on the Docker engine.
    #[arg(long, value_enum, default_value_t = BackendKind::Local)]
    pub backend: BackendKind,
    /// Succeed even when a stage could not run on this backend (a deploy, an image
    /// build on the local backend, a stage bound to another backend); without it such
    /// a stage makes the exit code non-zero.
    #[arg(long)]
    pub allow_skip: bool,
    /// Local backend: pass this host variable to steps (repeatable), besides
    /// RUSTUP_HOME and CARGO_HOME; SLIPWAY_LOCAL_PASS_ENV=A,B names more.
    #[arg(long = "pass-env", value_name = "NAME")]
    pub pass_env: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum EventArg {
    Push,
    /// Written as in the YAML's `on:`; `pull-request` works too.
    #[value(name = "pull_request", alias = "pull-request")]
    PullRequest,
    Tag,
    Cron,
    Manual,
}

impl From<EventArg> for Event {
    fn from(e: EventArg) -> Self {
        match e {
            EventArg::Push => Event::Push,
            EventArg::PullRequest => Event::PullRequest,
            EventArg::Tag => Event::Tag,
            EventArg::Cron => Event::Cron,
            EventArg::Manual => Event::Manual,
        }
    }
}

pub fn run(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let colour = console::colors_enabled_stderr();
    let dir = args
        .path
        .canonicalize()
        .with_context(|| format!("{}", args.path.display()))?;
    let (head_sha, head_branch) = pipeline_files::git_head(&dir);
    let (sha, files, source) = match &args.commit {
        Some(rev) => {
            let (sha, files) = pipeline_files::from_commit(&dir, rev)?;
            let source = Source::Git {
                url: dir.to_string_lossy().into_owned(),
                commit: sha.clone(),
            };
            (sha, files, source)
        }
        None => (
            head_sha.unwrap_or_else(|| "0".repeat(40)),
            pipeline_files::from_path(&dir)?,
            Source::Directory(dir.clone()),
        ),
    };
    let Ok(loaded) = validate::load(&files, colour) else {
        return Ok(ExitCode::FAILURE);
    };

    let (message, author) =
        pipeline_files::commit_message_author(&dir, args.commit.as_deref().unwrap_or("HEAD"));
    let pull_request = matches!(args.event, EventArg::PullRequest);
    let ctx = EventContext {
        event: args.event.into(),
        source_branch: pull_request
            .then(|| args.source_branch.clone().or(head_branch.clone()))
            .flatten(),
        pr_number: args.pr_number.filter(|_| pull_request),
        branch: args.branch.clone().or(head_branch),
        tag: args.tag.clone(),
        sha,
        changed_paths: (!args.changed.is_empty()).then(|| args.changed.clone()),
        params: parse_pairs(&args.params, "--param")?,
        cron: args.cron.clone(),
        repo: dir.file_name().map(|n| n.to_string_lossy().into_owned()),
        message,
        author,
        ..EventContext::default()
    };
    let mut plans = Vec::new();
    for pipeline in &loaded {
        if !args.pipelines.is_empty() && !args.pipelines.contains(&pipeline.name) {
            continue;
        }
        match pipelines::plan(pipeline, &ctx) {
            Ok(plan) => plans.push(plan),
            Err(PlanError::NotTriggered { reason }) => {
                errln!("pipeline `{}` not triggered: {reason}", pipeline.name);
            }
            Err(e) => bail!("pipeline `{}`: {e}", pipeline.name),
        }
    }
    if plans.is_empty() {
        errln!("nothing to run for this event");
        return Ok(ExitCode::SUCCESS);
    }

    let artifacts = match &args.artifacts_dir {
        Some(dir) => Artifacts::Kept(dir.clone()),
        None => Artifacts::Temporary(tempfile::tempdir()?),
    };
    let opts = ExecOptions {
        jobs: args
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        source,
        secrets: parse_secrets(&args.secrets)?,
        artifact_dir: Some(artifacts.path()),
    };
    if matches!(args.backend, BackendKind::Local) {
        ignored_by_local(&plans);
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let ok = runtime.block_on(run_plans(
        &plans,
        opts,
        (args.backend, &args.pass_env),
        colour,
        args.allow_skip,
    ))?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

enum Artifacts {
    Kept(PathBuf),
    Temporary(tempfile::TempDir),
}

impl Artifacts {
    fn path(&self) -> PathBuf {
        match self {
            Artifacts::Kept(p) => p.clone(),
            Artifacts::Temporary(t) => t.path().to_path_buf(),
        }
    }
}

/// One line per stage whose `image:` or `services:` the local backend does not use, so
/// a step that works only in its container is not a surprise.
fn ignored_by_local(plans: &[pipelines::Plan]) {
    for stage in plans.iter().flat_map(|p| &p.stages) {
        if matches!(stage.kind, pipelines::PlannedKind::Deploy { .. }) {
            continue;
        }
        let ignored: Vec<&str> = [
            stage.image.as_ref().map(|_| "`image:`"),
            (!stage.services.is_empty()).then_some("`services:`"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !ignored.is_empty() {
            errln!(
                "note: stage `{}`: the local backend ignores {} (steps run on this host; --backend docker uses them)",
                stage.id,
                ignored.join(" and ")
            );
        }
    }
}

/// Runs the plans; true when the run succeeded and, unless `allow_skip`, every stage
/// that should run could run here.
async fn run_plans(
    plans: &[pipelines::Plan],
    opts: ExecOptions,
    (backend, pass_env): (BackendKind, &[String]),
    colour: bool,
    allow_skip: bool,
) -> anyhow::Result<bool> {
    // Unique per process: `exec` never sweeps, and two of them on one engine must
    // not share a label.
    let name = format!("exec-{}-{}", crate::agent::hostname(), std::process::id());
    let backend: Arc<dyn runner::Backend> = Opened::open(
        backend,
        &name,
        None,
        &crate::agent::backends::KubeSettings::from_env(|k| std::env::var(k).ok()),
        pass_env,
    )
    .await?
    .backend();
    let cancel = CancellationToken::new();
    let on_ctrl_c = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_ctrl_c.cancel();
        }
    });
    let stage_ids: Vec<String> = plans
        .iter()
        .flat_map(|p| {
            let prefix = plans.len() > 1;
            p.stages.iter().map(move |s| {
                if prefix {
                    format!("{}/{}", p.pipeline, s.id)
                } else {
                    s.id.clone()
                }
            })
        })
        .collect();
    let mut output = Output::new(&stage_ids, colour);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ExecEvent>();
    let run = execute(backend, plans, &opts, tx, cancel);
    tokio::pin!(run);
    let mut executed = None;
    loop {
        tokio::select! {
            event = rx.recv() => match event {
                Some(event) => output.event(event),
                None => break,
            },
            result = &mut run, if executed.is_none() => executed = Some(result?),
        }
    }
    let (reports, status) = match executed {
        Some(e) => (e.reports, e.status),
        None => (Vec::new(), RunStatus::Success),
    };
    output.summary(&reports, status)?;
    let not_run = reports
        .iter()
        .filter(|r| matches!(r.result, engine::StageResult::Unsupported(_)))
        .count();
    if not_run > 0 && !allow_skip {
        errln!(
            "{not_run} stage(s) could not run on this backend (see `not run` above): failing; pass --allow-skip to accept that"
        );
        return Ok(false);
    }
    Ok(status == RunStatus::Success)
}

fn parse_pairs(pairs: &[String], flag: &str) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("{flag} `{pair}`: expected KEY=VALUE"),
        })
        .collect()
}

fn parse_secrets(args: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    args.iter()
        .map(|arg| match arg.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            Some(_) => bail!("--secret `{arg}`: expected NAME=VALUE or NAME"),
            // Reading from the environment keeps the value out of shell history and `ps`.
            None => std::env::var(arg)
                .map(|v| (arg.clone(), v))
                .with_context(|| format!("--secret {arg}: no such environment variable")),
        })
        .collect()
}
