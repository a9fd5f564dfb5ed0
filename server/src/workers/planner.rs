//! The planner worker: turns `pending` runs into planned runs with stages.
//!
//! For each pending run, oldest first: fetch the commit into the repository's bare
//! mirror, read the pipeline files from the commit's tree, validate them, compute the
//! changed paths (push: `before..sha`; pull request: merge base of the target branch
//! and the head), plan every pipeline for the run's event, and store the plans and the
//! stages in one transaction ([`Store::set_run_planned`](crate::store::Store::set_run_planned)).
//!
//! # Outcomes
//! * **Planned**: the run becomes `running` with its stages; the queue is woken.
//! * **Nothing triggered** (every pipeline's `on:` rejects the event): the run is
//!   planned with no stages, which the store finishes as `success`, and the reasons
//!   ("no pipeline triggered: default: on.push.branches: …") are recorded in the run's
//!   `error` column via [`Store::set_run_note`](crate::store::Store::set_run_note), so the
//!   API can answer "why didn't my pipeline run?". A push is never silently dropped.
//!   A manual run is the exception: somebody asked for it, so planning nothing makes it
//!   an error run with the same reasons (the trigger API refuses it before that).
//! * **Error run** (`error` status, reason in `error`, diagnostics for validation
//!   failures): no pipeline file, invalid YAML, a parameter error, a stage asking for a
//!   service account in a run that is not trusted
//!   ([`check_trust`](crate::runs::from_plan::check_trust)), a commit that cannot be found, a
//!   permanent git error.
//! * **Deferred**: a transient git error (network, a locked ref) leaves the run
//!   `pending`; the worker retries it with exponential backoff (2 s, 4 s, … up to 5 min) and turns it
//!   into an error run after [`MAX_GIT_ATTEMPTS`]. A git error while the data disk is
//!   under its reserve is deferred the same way, and while the server's storage cannot
//!   be written (`daemon::disk`) nothing is planned at all: a full disk leaves runs
//!   `pending`, never turns them into error runs.
//!
//! # Reserved parameters
//! Runs created by the engine carry routing information in `params`, under keys that
//! start with `__` and are removed before planning:
//! * [`PARAM_CRON`] (`__cron`): the `on.cron` schedule that fired (the
//!   [`pipelines::EventContext::cron`] of a cron run);
//! * [`PARAM_PIPELINE`] (`__pipeline`): plan only this pipeline (a schedule belongs to
//!   one pipeline; two pipelines may both have a `nightly` schedule).
//!
//! # Auto-cancel
//! With `auto_cancel` on, once a push or pull-request run is planned with at least one
//! stage to run, older unfinished runs of the same branch (pushes) or of the same pull
//! request are cancelled ("superseded by run #N"). A newer run that plans nothing (a
//! docs-only push filtered by `paths`) cancels nothing: the older run may be the only
//! one testing the code change.
//!
//! # Crash safety
//! Planning writes once, at the end, in one transaction; a crash before leaves the run
//! `pending` and the worker, which also runs at start, plans it again. Two replicas
//! planning the same run is harmless: the second `set_run_planned` is a `Conflict`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

use crate::daemon::state::AppState;
use crate::git::{CredentialsFn, GitError, Mirror};
use crate::store::{self, Event, Repo, RepoId, Run, RunId};

/// Params key naming the cron schedule that created a run.
pub const PARAM_CRON: &str = "__cron";
/// Params key restricting planning to one pipeline.
pub const PARAM_PIPELINE: &str = "__pipeline";

/// Pending runs read per step.
const BATCH: u32 = 200;
/// Repositories planned at once (runs of one repository are planned in order, one at a
/// time, so that auto-cancel sees them in push order and fetches never overlap).
const REPO_CONCURRENCY: usize = 4;
/// How often the worker looks for pending runs when nobody wakes it.
const POLL: Duration = Duration::from_secs(5);
/// Transient git failures tolerated per run before it becomes an error run.
pub const MAX_GIT_ATTEMPTS: u32 = 8;
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often to look again while the server's storage cannot be written.
const STORAGE_WAIT: Duration = Duration::from_secs(1);

/// Starts the planner loop: plans whatever is pending at once (a crash mid-planning is
/// resumed here), then whenever woken through `state.wake.planner`, and every few
/// seconds regardless.
pub fn spawn(state: AppState) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut planner = Planner::default();
        loop {
            let notified = state.wake.planner.notified();
            tokio::pin!(notified);
            // Register before looking, so a wake-up during the step is not lost.
            notified.as_mut().enable();
            let wait = if state.disk.unwritable().is_some() {
                // Planning fetches into the data dir and ends in a write: wait for
                // the disk rather than fail runs for it.
                STORAGE_WAIT
            } else {
                match planner.step(&state).await {
                    Ok(report) if report.full_batch => Duration::ZERO,
                    Ok(_) => planner.next_retry_in().map_or(POLL, |d| d.min(POLL)),
                    Err(e) => {
                        tracing::warn!(error = %e, "planner: reading pending runs failed");
                        POLL
                    }
                }
            };
            if wait.is_zero() {
                if state.shutdown.is_cancelled() {
                    break;
                }
                continue;
            }
            tokio::select! {
                _ = state.shutdown.cancelled() => break,
                _ = &mut notified => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        tracing::debug!("planner stopped");
    })
}

/// Plans every pending run once (no backoff memory: a transient git failure leaves the
/// run pending and counts as `deferred`). The step function tests drive directly.
pub async fn plan_pending(state: &AppState) -> store::Result<StepReport> {
    Planner::default().step(state).await
}

/// What one [`Planner::step`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepReport {
    /// Runs planned (with or without stages).
    pub planned: usize,
    /// Runs that became `error`.
    pub errored: usize,
    /// Runs left `pending` after a transient failure.
    pub deferred: usize,
    /// Runs someone else finished meanwhile (cancelled, planned by another replica).
    pub gone: usize,
    /// The step read a full batch: more may be waiting.
    pub full_batch: bool,
}

/// The planner with its memory of transient failures (for backoff).
pub struct Planner {
    backoff: HashMap<RunId, Backoff>,
    /// The first retry delay; each further failure doubles it, up to [`MAX_BACKOFF`].
    base_delay: Duration,
}

impl Default for Planner {
    fn default() -> Self {
        Planner::with_backoff(Duration::from_secs(2))
    }
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    attempts: u32,
    next: Instant,
}

/// How planning one run ended.
#[derive(Debug)]
enum Outcome {
    Planned,
    Errored,
    /// Transient: leave pending, try again later.
    Retry(String),
    Gone,
}

impl Planner {
    /// A planner whose first retry after a transient failure waits `base_delay` (tests
    /// use zero to walk through the retries at once).
    pub fn with_backoff(base_delay: Duration) -> Planner {
        Planner {
            backoff: HashMap::new(),
            base_delay,
        }
    }

    /// Plans the pending runs not waiting out a backoff.
    pub async fn step(&mut self, state: &AppState) -> store::Result<StepReport> {
        let runs = state.store.pending_runs(BATCH).await?;
        let mut report = StepReport {
            full_batch: runs.len() == BATCH as usize,
            ..StepReport::default()
        };
        let now = Instant::now();
        self.backoff
            .retain(|id, _| runs.iter().any(|r| r.id == *id));
        // Group by repository, keeping the oldest-first order inside each group.
        let mut groups: Vec<(RepoId, Vec<Run>)> = Vec::new();
        for run in runs {
            if self.backoff.get(&run.id).is_some_and(|b| b.next > now) {
                continue;
            }
            match groups.iter_mut().find(|(r, _)| *r == run.repo_id) {
                Some((_, g)) => g.push(run),
                None => groups.push((run.repo_id, vec![run])),
            }
        }
        let backoff = &self.backoff;
        let results: Vec<Vec<(RunId, Outcome)>> = futures::stream::iter(groups)
            .map(|(_, group)| async move {
                let mut out = Vec::new();
                for run in group {
                    let attempts = backoff.get(&run.id).map_or(0, |b| b.attempts);
                    let outcome = plan_run(state, &run, attempts + 1).await;
                    let transient = matches!(outcome, Outcome::Retry(_));
                    out.push((run.id, outcome));
                    if transient {
                        // The repository is unreachable: its later runs would fail the
                        // same way. They stay pending for the next step.
                        break;
                    }
                }
                out
            })
            .buffer_unordered(REPO_CONCURRENCY)
            .collect()
            .await;
        for (id, outcome) in results.into_iter().flatten() {
            match outcome {
                Outcome::Planned => {
                    report.planned += 1;
                    self.backoff.remove(&id);
                }
                Outcome::Errored => {
                    report.errored += 1;
                    self.backoff.remove(&id);
                }
                Outcome::Gone => {
                    report.gone += 1;
                    self.backoff.remove(&id);
                }
                Outcome::Retry(reason) => {
                    report.deferred += 1;
                    let attempts = self.backoff.get(&id).map_or(0, |b| b.attempts) + 1;
                    let delay = self
                        .base_delay
                        .saturating_mul(1u32 << (attempts - 1).min(16))
                        .min(MAX_BACKOFF);
                    tracing::info!(run = id, attempts, retry_in_s = delay.as_secs(), %reason, "planning deferred");
                    self.backoff.insert(
                        id,
                        Backoff {
                            attempts,
                            next: Instant::now() + delay,
                        },
                    );
                }
            }
        }
        Ok(report)
    }

    /// How long until the earliest deferred run may be retried.
    pub fn next_retry_in(&self) -> Option<Duration> {
        let now = Instant::now();
        self.backoff
            .values()
            .map(|b| b.next.saturating_duration_since(now))
            .min()
    }
}

/// What the planner needs from git for one run.
struct Commit {
    /// The commit id (an annotated tag peeled to its commit).
    sha: String,
    files: Vec<(String, String)>,
    changed_paths: Option<Vec<String>>,
}

async fn plan_run(state: &AppState, run: &Run, attempt: u32) -> Outcome {
    let repo = match state.store.get_repo(run.repo_id).await {
        Ok(r) => r,
        Err(store::Error::NotFound(_)) => return Outcome::Gone,
        Err(e) => return Outcome::Retry(e.to_string()),
    };
    let commit = match read_commit(state, &repo, run).await {
        Ok(c) => c,
        Err(e) if e.is_retryable() && attempt < MAX_GIT_ATTEMPTS => {
            return Outcome::Retry(e.to_string());
        }
        Err(e) if e.is_retryable() => {
            return fail(
                state,
                run,
                &format!("git failed {attempt} times, giving up: {e}"),
                None,
            )
            .await;
        }
        // Git says only "failed to write": a data disk out of room is why, not the
        // repository, and it passes.
        Err(e) if short_of_space(state).await => {
            return Outcome::Retry(format!("the data disk is out of space: {e}"));
        }
        Err(e) => return fail(state, run, &e.to_string(), None).await,
    };
    // An abbreviated id (Bitbucket Cloud pull requests) becomes the full one before
    // anything else reads the run: runners check it out, statuses are set on it.
    let resolved;
    let run = if run.sha.len() < 40 && run.sha != commit.sha {
        if let Err(e) = state
            .store
            .resolve_run_sha(run.id, &run.sha, &commit.sha)
            .await
        {
            return Outcome::Retry(e.to_string());
        }
        resolved = Run {
            sha: commit.sha.clone(),
            ..run.clone()
        };
        &resolved
    } else {
        run
    };
    if commit.files.is_empty() {
        let msg = format!(
            "no pipeline file (.slipway.yml or .slipway/*.yml) at {}",
            commit.sha
        );
        return fail(state, run, &msg, None).await;
    }
    let pipelines = match pipelines::load(&commit.files) {
        Ok(p) => p,
        Err(diags) => {
            let diags = serde_json::to_value(&diags).unwrap_or(Value::Null);
            return fail(state, run, "pipeline validation failed", Some(diags)).await;
        }
    };
    let (ctx, only) = event_context(&repo, run, &commit);
    let mut plans = Vec::new();
    let mut not_triggered = Vec::new();
    for p in &pipelines {
        if only.as_deref().is_some_and(|o| o != p.name) {
            continue;
        }
        match pipelines::plan(p, &ctx) {
            Ok(plan) => plans.push(plan),
            Err(pipelines::PlanError::NotTriggered { reason }) => {
                not_triggered.push(format!("{}: {reason}", p.name));
            }
            Err(e) => {
                return fail(state, run, &format!("pipeline `{}`: {e}", p.name), None).await;
            }
        }
    }
    if let Some(o) = &only
        && !pipelines.iter().any(|p| &p.name == o)
    {
        not_triggered.push(format!("no pipeline named `{o}` at {}", commit.sha));
    }
    if run.event == Event::Manual && plans.is_empty() {
        // Someone asked for this run: "success, nothing ran" would be a lie. The trigger
        // API refuses such a request up front (`runs::manual`); this is the last line.
        let msg = format!(
            "nothing to run: no pipeline takes manual runs ({})",
            not_triggered.join("; ")
        );
        return fail(state, run, &msg, None).await;
    }
    if let Err(diags) = crate::runs::from_plan::check_trust(&plans, run.trusted) {
        return fail(
            state,
            run,
            crate::runs::from_plan::UNTRUSTED_REASON,
            Some(diags),
        )
        .await;
    }
    let stages = crate::runs::from_plan::stages_from_plans(&plans);
    let runnable = stages.iter().any(|s| s.skip.is_none());
    let plan_json = serde_json::to_value(&plans).unwrap_or(Value::Null);
    let yaml_sha256 = yaml_digest(&commit.files);
    match state
        .store
        .set_run_planned(run.id, &plan_json, &yaml_sha256, stages)
        .await
    {
        // Nothing to run: the store finished it at once.
        Ok(planned) if planned.status.is_final() => state.metrics.run_finished(planned.status),
        Ok(_) => {}
        Err(store::Error::Conflict(_) | store::Error::NotFound(_)) => return Outcome::Gone,
        Err(store::Error::Invalid(msg)) => {
            return fail(state, run, &format!("invalid plan: {msg}"), None).await;
        }
        Err(e) if e.is_retryable() => return Outcome::Retry(e.to_string()),
        Err(e) => {
            tracing::error!(run = run.id, error = %e, "storing the plan failed");
            return Outcome::Retry(e.to_string());
        }
    }
    if plans.is_empty() {
        let note = format!("no pipeline triggered: {}", not_triggered.join("; "));
        if let Err(e) = state.store.set_run_note(run.id, &note).await {
            tracing::warn!(run = run.id, error = %e, "recording why nothing ran failed");
        }
    }
    tracing::info!(
        repo = %repo.name,
        run = run.number,
        pipelines = plans.len(),
        sha = %commit.sha,
        "run planned"
    );
    state.wake.queue.notify_waiters();
    if runnable && state.config.auto_cancel {
        auto_cancel(state, &repo, run).await;
    }
    if run.event == Event::Push {
        // Approvals are for what was pushed last: older pending requests of the branch
        // give way (where the environment says so, the default).
        match state.store.supersede_gates_on_push(run).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(repo = %repo.name, run = run.number, superseded = n, "superseded pending approval requests")
            }
            Err(e) => {
                tracing::warn!(repo = %repo.name, run = run.number, error = %e, "superseding approval requests failed")
            }
        }
    }
    Outcome::Planned
}

/// Whether the data disk has less than its reserve free (`min_free_disk_bytes`).
async fn short_of_space(state: &AppState) -> bool {
    let dir = state.config.data_dir.clone();
    let free = tokio::task::spawn_blocking(move || crate::disk_space::free_bytes(&dir)).await;
    matches!(free, Ok(Ok(free)) if free < state.disk.min_free.max(1))
}

async fn fail(state: &AppState, run: &Run, reason: &str, diagnostics: Option<Value>) -> Outcome {
    match state.store.set_run_error(run.id, reason, diagnostics).await {
        Ok(_) => {
            state.metrics.run_finished(store::RunStatus::Error);
            tracing::info!(run = run.id, number = run.number, %reason, "run failed to plan");
            Outcome::Errored
        }
        Err(store::Error::Conflict(_) | store::Error::NotFound(_)) => Outcome::Gone,
        Err(e) => Outcome::Retry(e.to_string()),
    }
}

/// Cancels the older unfinished runs this one supersedes (see the module comment).
async fn auto_cancel(state: &AppState, repo: &Repo, run: &Run) {
    let cancelled = match (run.event, &run.branch, run.pr_number) {
        (Event::Push, Some(branch), _) => state
            .store
            .supersede(repo.id, branch, run.event, run.id)
            .await
            .map(|ids| ids.len()),
        (Event::PullRequest, _, Some(pr)) => {
            // `supersede` keys on the branch, which for a pull request is the target:
            // two pull requests into main must not cancel each other. Key on the number.
            let reason = format!("superseded by run #{}", run.number);
            match state.store.list_runs(repo.id, 100, Some(run.number)).await {
                Ok(older) => {
                    let mut n = 0;
                    for r in older.iter().filter(|r| {
                        r.event == Event::PullRequest
                            && r.pr_number == Some(pr)
                            && !r.status.is_final()
                    }) {
                        match state.store.cancel_run(r.id, &reason).await {
                            Ok(true) => n += 1,
                            Ok(false) => {}
                            Err(e) => tracing::warn!(run = r.id, error = %e, "auto-cancel failed"),
                        }
                    }
                    Ok(n)
                }
                Err(e) => Err(e),
            }
        }
        _ => return,
    };
    match cancelled {
        Ok(0) => {}
        Ok(n) => {
            for _ in 0..n {
                state.metrics.run_finished(store::RunStatus::Cancelled);
            }
            tracing::info!(repo = %repo.name, run = run.number, cancelled = n, "superseded older runs");
            state.wake.queue.notify_waiters();
            state.wake.cancel.notify_waiters();
        }
        Err(e) => tracing::warn!(run = run.id, error = %e, "auto-cancel failed"),
    }
}

/// The event the pipelines are planned for, and the one pipeline to plan (if the run
/// names one through [`PARAM_PIPELINE`]).
fn event_context(
    repo: &Repo,
    run: &Run,
    commit: &Commit,
) -> (pipelines::EventContext, Option<String>) {
    let mut params = BTreeMap::new();
    let (mut cron, mut only) = (None, None);
    if let Value::Object(map) = &run.params {
        for (k, v) in map {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            match k.as_str() {
                PARAM_CRON => cron = Some(text),
                PARAM_PIPELINE => only = Some(text),
                _ => {
                    params.insert(k.clone(), text);
                }
            }
        }
    }
    let ctx = pipelines::EventContext {
        event: run.event,
        branch: run.branch.clone(),
        source_branch: run.source_branch.clone(),
        pr_number: run.pr_number.and_then(|n| u64::try_from(n).ok()),
        tag: run.tag.clone(),
        sha: commit.sha.clone(),
        changed_paths: commit.changed_paths.clone(),
        params,
        cron,
        repo: Some(repo.name.clone()),
        message: (!run.message.is_empty()).then(|| run.message.clone()),
        author: (!run.author.is_empty()).then(|| run.author.clone()),
        fork: run.fork,
    };
    (ctx, only)
}

/// sha256 of the pipeline files' texts concatenated in path order: for the usual single
/// file, exactly that file's digest (`sha256sum .slipway.yml`).
fn yaml_digest(files: &[(String, String)]) -> String {
    let mut h = Sha256::new();
    for (_, text) in files {
        h.update(text.as_bytes());
    }
    hex::encode(h.finalize())
}

async fn read_commit(state: &AppState, repo: &Repo, run: &Run) -> Result<Commit, GitError> {
    let dir = state.mirror_dir(repo.id);
    let clone_url = repo.clone_url.clone();
    let credentials = crate::admin::repos::fetch_credentials(state, repo);
    let run = run.clone();
    let _guard = crate::git::lock_mirror(&dir).await;
    tokio::task::spawn_blocking(move || read_commit_blocking(&dir, &clone_url, credentials, &run))
        .await
        .unwrap_or_else(|e| {
            Err(GitError::Git(git2::Error::from_str(&format!(
                "reading the commit panicked: {e}"
            ))))
        })
}

fn read_commit_blocking(
    dir: &Path,
    clone_url: &str,
    credentials: Option<Arc<CredentialsFn>>,
    run: &Run,
) -> Result<Commit, GitError> {
    let mut mirror = Mirror::open_or_init(dir, clone_url)?;
    if let Some(c) = credentials {
        mirror = mirror.with_credentials(c);
    }
    // A pull request needs the target branch's current tip for the merge base, so it is
    // fetched every time; everything else is fetched only when the commit is missing.
    let target = match (run.event, &run.branch) {
        (Event::PullRequest, Some(b)) => Some(format!("refs/heads/{b}")),
        _ => None,
    };
    if let Some(t) = &target {
        mirror.fetch(std::slice::from_ref(t))?;
    }
    // Bitbucket Cloud pull requests name their head by an abbreviation: resolve it
    // against the source branch the run builds (plan_run records the full id).
    let wanted = if run.sha.len() < 40 {
        mirror.resolve_abbreviated(&run.sha, &run.git_ref)?
    } else {
        run.sha.clone()
    };
    mirror.ensure_commit(&wanted, std::slice::from_ref(&run.git_ref))?;
    let sha = mirror.peel_to_commit(&wanted)?;
    let files = mirror.pipeline_files(&sha)?;
    let changed_paths = if files.is_empty() {
        None
    } else {
        match run.event {
            Event::Push => mirror.changed_paths(run.before_sha.as_deref(), &sha)?,
            Event::PullRequest => match target.as_deref().map(|t| mirror.resolve_ref(t)) {
                Some(Ok(Some(base))) => mirror.changed_paths_merge_base(&base, &sha)?,
                Some(Err(e)) => return Err(e),
                _ => None,
            },
            _ => None,
        }
    };
    Ok(Commit {
        sha,
        files,
        changed_paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_file_digest_is_the_files_digest() {
        let files = vec![(".slipway.yml".to_string(), "stages: {}\n".to_string())];
        assert_eq!(
            yaml_digest(&files),
            hex::encode(Sha256::digest(b"stages: {}\n"))
        );
    }
}
