//! Runs of a repository: list, show, cancel and rerun (manual triggers: `trigger`).
//!
//! Reading needs the viewer role on the repository; cancel, rerun and trigger need
//! developer. A run started with a personal token records its user (`triggered_by`).

use std::collections::HashSet;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiPath, ApiQuery};
use super::repos::{RepoPath, find_repo};
use super::route_table::{Access, RouteTable};
use crate::daemon::state::AppState;
use crate::runs::from_plan;
use crate::store::{
    NewRun, Repo, Role, Run, RunStatus, StageStatus, StageWithSteps, StoredFinding, Trigger,
};
use axum::Json;

pub fn routes() -> RouteTable {
    RouteTable::new()
        .add(Access::Role(Role::Viewer), routes!(list))
        .add(Access::Role(Role::Viewer), routes!(show))
        .add(Access::Role(Role::Viewer), routes!(findings))
        .add(Access::Role(Role::Developer), routes!(cancel))
        .add(Access::Role(Role::Developer), routes!(rerun))
}

/// A run in the URL: `/api/repos/{owner}/{name}/runs/{number}/…`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct RunPath {
    pub owner: String,
    pub name: String,
    /// The run's number within the repository (1, 2, 3 …).
    pub number: i64,
}

/// Loads the repository and the run named in the path (404 if either is missing).
pub(crate) async fn find_run(state: &AppState, p: &RunPath) -> ApiResult<(Repo, Run)> {
    let repo = find_repo(state, &p.owner, &p.name).await?;
    let run = state.store.get_run_by_number(repo.id, p.number).await?;
    Ok((repo, run))
}

/// A JSON body that may be left out entirely (then `T::default()`).
pub(super) fn optional_json<T: DeserializeOwned + Default>(body: &Bytes) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::unprocessable(e.to_string()))
}

/// Page size of run lists: default and cap.
const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size (default 20, at most 100).
    pub limit: Option<u32>,
    /// Only runs numbered below this (pass the last number of the previous page).
    pub before: Option<i64>,
    /// Only runs in this state (`running`, `failure`, …).
    pub status: Option<RunStatus>,
    /// Only runs of this branch.
    pub branch: Option<String>,
}

/// A repository's runs, newest first.
#[utoipa::path(
    get, path = "/api/repos/{owner}/{name}/runs", tag = "runs",
    params(RepoPath, ListQuery),
    responses(
        (status = 200, description = "Newest first; `plan` is left out of list entries (see the run itself)", body = Vec<Run>),
        (status = 401), (status = 403), (status = 404)
    )
)]
pub async fn list(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<RepoPath>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Vec<Run>>> {
    let repo = find_repo(&state, &p.owner, &p.name).await?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let mut runs = state
        .store
        .list_runs_where(repo.id, limit, q.before, q.status, q.branch.as_deref())
        .await?;
    for r in &mut runs {
        // Plans can be large; a page of runs should stay small.
        r.plan = None;
    }
    Ok(Json(runs))
}

/// A run with its stages, their steps and outputs. For a run in state `error`,
/// `run.error` says why and `run.diagnostics` holds the pipeline's validation
/// diagnostics, if any. Findings of scan stages: `GET …/runs/{number}/findings`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunDetail {
    pub run: Run,
    pub stages: Vec<StageWithSteps>,
    /// For a run that failed: the failing stage and step and the log lines that
    /// explain it (what the run page shows first). None otherwise.
    pub failure: Option<FailureSummary>,
}

/// Why a run failed, as the run page shows it first.
#[derive(Debug, Serialize, ToSchema)]
pub struct FailureSummary {
    /// The failing stage's key.
    pub stage: String,
    /// The failing step's name (`(before any step)` if the stage failed before one ran).
    pub step: String,
    /// The stage's reason, with the exit code.
    pub reason: String,
    /// The first error-looking lines of the step's log, ANSI colours removed.
    pub first: Vec<NumberedLine>,
    /// The last lines of the step's log, ANSI colours removed.
    pub last: Vec<NumberedLine>,
}

/// A log line with its 1-based number in the step's log.
#[derive(Debug, Serialize, ToSchema)]
pub struct NumberedLine {
    pub number: u64,
    pub text: String,
}

impl From<crate::web::failure::Failure> for FailureSummary {
    fn from(f: crate::web::failure::Failure) -> Self {
        let lines = |v: Vec<(u64, String)>| {
            v.into_iter()
                .map(|(number, text)| NumberedLine { number, text })
                .collect()
        };
        FailureSummary {
            stage: f.stage,
            step: f.step,
            reason: f.reason,
            first: lines(f.first),
            last: lines(f.last),
        }
    }
}

/// One run with its stages, steps and outputs.
#[utoipa::path(
    get, path = "/api/repos/{owner}/{name}/runs/{number}", tag = "runs", params(RunPath),
    responses((status = 200, body = RunDetail), (status = 401), (status = 403), (status = 404))
)]
pub async fn show(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<RunPath>,
) -> ApiResult<Json<RunDetail>> {
    let (repo, run) = find_run(&state, &p).await?;
    let mut stages = state.store.list_stages(run.id).await?;
    if stages.iter().any(|s| s.stage.status == StageStatus::Queued) {
        let runners = state.store.list_runners().await?;
        for s in &mut stages {
            if s.stage.status == StageStatus::Queued {
                s.unroutable =
                    crate::runs::routing::unroutable_reason(&s.stage.labels, &repo.name, &runners);
            }
        }
    }
    let failure = if matches!(run.status, RunStatus::Failure | RunStatus::Error) {
        crate::web::failure::of(&state, &stages, |_, _| String::new())
            .await
            .map(FailureSummary::from)
    } else {
        None
    };
    Ok(Json(RunDetail {
        run,
        stages,
        failure,
    }))
}

/// What a run's scan stages found.
#[utoipa::path(
    get, path = "/api/repos/{owner}/{name}/runs/{number}/findings", tag = "runs", params(RunPath),
    responses(
        (status = 200, description = "What the run's scan stages found (the built-in secret scan \
          and ingested SARIF reports), by stage; a retried stage's findings are its last attempt's. \
          Never the secret itself: the message names the rule.", body = Vec<StoredFinding>),
        (status = 401), (status = 403), (status = 404)
    )
)]
pub async fn findings(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<RunPath>,
) -> ApiResult<Json<Vec<StoredFinding>>> {
    let (_, run) = find_run(&state, &p).await?;
    Ok(Json(state.store.list_findings(run.id).await?))
}

/// Cancel a run: waiting stages are cancelled, running ones stopped.
#[utoipa::path(
    post, path = "/api/repos/{owner}/{name}/runs/{number}/cancel", tag = "runs", params(RunPath),
    responses(
        (status = 200, description = "Cancelled: waiting stages are cancelled, running ones are told to stop", body = Run),
        (status = 401), (status = 403), (status = 404),
        (status = 409, description = "The run has already finished"),
    )
)]
pub async fn cancel(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<RunPath>,
) -> ApiResult<Json<Run>> {
    let (repo, run) = find_run(&state, &p).await?;
    let reason = format!("cancelled by {}", caller.name());
    if !state.store.cancel_run(run.id, &reason).await? {
        return Err(ApiError::conflict(format!(
            "run #{} has already finished ({})",
            run.number, run.status
        )));
    }
    state.metrics.run_finished(RunStatus::Cancelled);
    // Runners of running stages hear it through their held heartbeat at once; the
    // queue may have free slots now.
    state.wake.cancel.notify_waiters();
    state.wake.queue.notify_one();
    tracing::info!(repo = %repo.name, run = run.number, by = %caller, "run cancelled");
    Ok(Json(state.store.get_run(run.id).await?))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RerunRequest {
    /// Re-run only the stages that did not succeed; the others count as succeeded.
    #[serde(default)]
    pub failed_only: bool,
}

/// Run a finished run again from its stored plan (all of it, or what failed).
#[utoipa::path(
    post, path = "/api/repos/{owner}/{name}/runs/{number}/rerun", tag = "runs", params(RunPath),
    request_body(content = Option<RerunRequest>, description = "Optional; default: the whole run"),
    responses(
        (status = 201, description = "The new run (trigger `rerun`, `rerun_of` set), planned from the stored plan; an `error` run with diagnostics if that plan needs a trusted run and the repository is no longer trusted", body = Run),
        (status = 401), (status = 403), (status = 404),
        (status = 409, description = "The run has not finished, or (failed_only) nothing failed or there is no plan"),
    )
)]
pub async fn rerun(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<RunPath>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Run>)> {
    let req: RerunRequest = optional_json(&body)?;
    let (repo, orig) = find_run(&state, &p).await?;
    if !orig.status.is_final() {
        return Err(ApiError::conflict(format!(
            "run #{} is still {}; cancel it or wait for it to finish",
            orig.number, orig.status
        )));
    }
    let new = NewRun {
        trigger: Trigger::Rerun,
        event: orig.event,
        git_ref: orig.git_ref.clone(),
        branch: orig.branch.clone(),
        tag: orig.tag.clone(),
        sha: orig.sha.clone(),
        before_sha: orig.before_sha.clone(),
        pr_number: orig.pr_number,
        source_branch: orig.source_branch.clone(),
        fork: orig.fork,
        // A rerun is trusted no more than the repository is now: trust taken away since
        // the original run is not given back.
        trusted: orig.trusted && repo.trusted,
        message: orig.message.clone(),
        author: orig.author.clone(),
        params: orig.params.clone(),
        rerun_of: Some(orig.id),
        // Whoever asked for the rerun started it; the original pusher is kept.
        triggered_by: caller.user().map(|u| u.id),
        pusher: orig.pusher.clone(),
        promotion: None,
    };
    let Some(plan) = &orig.plan else {
        // Never planned (the pipeline failed to load): nothing stored to repeat, so the
        // planner plans the same commit again (the YAML there may load now that, e.g.,
        // a fetch that failed succeeds).
        if req.failed_only {
            return Err(ApiError::conflict(format!(
                "run #{} was never planned; rerun the whole run instead",
                orig.number
            )));
        }
        let run = state.store.create_run(repo.id, new).await?;
        state.wake.planner.notify_one();
        tracing::info!(repo = %repo.name, run = run.number, of = orig.number, by = %caller, "rerun (re-plan)");
        return Ok((StatusCode::CREATED, Json(run)));
    };
    let plans = from_plan::plans_of(plan)
        .map_err(|e| ApiError::internal(format!("stored plan of run {}: {e}", orig.id)))?;
    if let Err(diags) = from_plan::check_trust(&plans, new.trusted) {
        // The stored plan asks for what this run may no longer have: an error run, as
        // the planner would make of the same YAML, never stages.
        let run = state
            .store
            .create_run_error(repo.id, new, from_plan::UNTRUSTED_REASON, Some(diags))
            .await?;
        state.metrics.run_finished(RunStatus::Error);
        tracing::info!(repo = %repo.name, run = run.number, of = orig.number, by = %caller, "rerun refused: not trusted");
        return Ok((StatusCode::CREATED, Json(run)));
    }
    let mut stages = from_plan::stages_from_plans(&plans);
    if req.failed_only {
        let old = state.store.list_stages(orig.id).await?;
        let succeeded: HashSet<&str> = old
            .iter()
            .filter(|s| s.stage.status == StageStatus::Success)
            .map(|s| s.stage.key.as_str())
            .collect();
        if old
            .iter()
            .all(|s| matches!(s.stage.status, StageStatus::Success | StageStatus::Skipped))
        {
            return Err(ApiError::conflict(format!(
                "run #{} has no failed stages; rerun the whole run instead",
                orig.number
            )));
        }
        let reason = format!("succeeded in run #{}", orig.number);
        for s in &mut stages {
            if succeeded.contains(s.key.as_str()) {
                s.succeeded = Some(reason.clone());
            }
        }
    }
    let yaml_sha256 = orig.yaml_sha256.clone().unwrap_or_default();
    // One transaction: no planner ever sees this run pending and re-plans it.
    let run = state
        .store
        .create_run_planned(repo.id, new, plan, &yaml_sha256, stages)
        .await?;
    state.wake.queue.notify_one();
    tracing::info!(
        repo = %repo.name, run = run.number, of = orig.number,
        failed_only = req.failed_only, by = %caller, "rerun"
    );
    Ok((StatusCode::CREATED, Json(run)))
}
