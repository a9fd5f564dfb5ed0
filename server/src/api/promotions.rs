//! Promotion without rebuild: a finished run's results deployed to one environment by
//! a new run that reruns only the stages deploying there, through that environment's
//! gate, and carries every stage they need over as it succeeded (artifacts, pushed
//! image digests and outputs by record; nothing is built again). A rollback
//! (`environments::rollback`) is the same for the run live before the current one.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::ApiPath;
use super::route_table::{Access, RouteTable};
use super::runs::{RunPath, find_run};
use crate::daemon::state::AppState;
use crate::delivery::promotion;
use crate::runs::from_plan;
use crate::store::audit::action;
use crate::store::{NewAudit, NewRun, Promotion, PromotionKind, Repo, Role, Run, Trigger};

pub fn routes() -> RouteTable {
    RouteTable::new().add(Access::Role(Role::ReleaseManager), routes!(promote))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    /// The environment to deploy the run's results to.
    pub environment: String,
}

/// Deploy a finished run's results to an environment, without rebuilding.
#[utoipa::path(
    post, path = "/api/repos/{owner}/{name}/runs/{number}/promote", tag = "environments",
    params(RunPath), request_body = PromoteRequest,
    responses(
        (status = 201, description = "The promotion run (`promotion` set): the stages deploying to the environment, waiting at its gate; the stages they need carried over from the run", body = Run),
        (status = 401), (status = 403), (status = 404),
        (status = 409, description = "The run has not finished, was never planned, does not deploy there, or a stage it needs did not succeed"),
    )
)]
pub async fn promote(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<RunPath>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Run>)> {
    let req: PromoteRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::unprocessable(format!("promotion: {e}")))?;
    let (repo, orig) = find_run(&state, &p).await?;
    let run = start(
        &state,
        &caller,
        &repo,
        &orig,
        &req.environment,
        PromotionKind::Promote,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(run)))
}

/// Starts a promotion (or rollback) run deploying `orig`'s results to `environment`.
pub(crate) async fn start(
    state: &AppState,
    caller: &Caller,
    repo: &Repo,
    orig: &Run,
    environment: &str,
    kind: PromotionKind,
) -> ApiResult<Run> {
    if !orig.status.is_final() {
        return Err(ApiError::conflict(format!(
            "run #{} is still {}; promote it once it has finished",
            orig.number, orig.status
        )));
    }
    let Some(plan) = &orig.plan else {
        return Err(ApiError::conflict(format!(
            "run #{} was never planned, so it has nothing to promote",
            orig.number
        )));
    };
    let plans = from_plan::plans_of(plan)
        .map_err(|e| ApiError::internal(format!("stored plan of run {}: {e}", orig.id)))?;
    // Trust is what the repository gives now, as for a rerun.
    let trusted = orig.trusted && repo.trusted;
    if from_plan::check_trust(&plans, trusted).is_err() {
        return Err(ApiError::conflict(format!(
            "run #{}'s plan needs a trusted run, and {} is no longer trusted",
            orig.number, repo.name
        )));
    }
    let original = state.store.list_stages(orig.id).await?;
    let original: Vec<_> = original.into_iter().map(|s| s.stage).collect();
    let stages = promotion::promotion_stages(
        orig.number,
        from_plan::stages_from_plans(&plans),
        &original,
        environment,
    )
    .map_err(ApiError::conflict)?;
    let new = NewRun {
        trigger: Trigger::Manual,
        event: orig.event,
        git_ref: orig.git_ref.clone(),
        branch: orig.branch.clone(),
        tag: orig.tag.clone(),
        sha: orig.sha.clone(),
        before_sha: orig.before_sha.clone(),
        pr_number: orig.pr_number,
        source_branch: orig.source_branch.clone(),
        fork: orig.fork,
        trusted,
        message: orig.message.clone(),
        author: orig.author.clone(),
        params: orig.params.clone(),
        rerun_of: None,
        triggered_by: caller.user().map(|u| u.id),
        // Who pushed the commit still may not approve its deployment.
        pusher: orig.pusher.clone(),
        promotion: Some(Promotion {
            kind,
            from: orig.id,
            from_number: orig.number,
            environment: environment.to_string(),
        }),
    };
    let what = match kind {
        PromotionKind::Promote => action::PROMOTE,
        PromotionKind::Rollback => action::ROLLBACK,
    };
    let audit = NewAudit::new(&caller.actor(), what, format!("environment:{environment}"))
        .repo(Some(repo.id))
        .detail(json!({
            "repo": repo.name, "from_run": orig.number, "sha": orig.sha,
        }));
    let yaml_sha256 = orig.yaml_sha256.clone().unwrap_or_default();
    let run = state
        .store
        .create_run_planned_audited(repo.id, new, plan, &yaml_sha256, stages, Some(&audit))
        .await?;
    state.wake.queue.notify_one();
    tracing::info!(
        repo = %repo.name, run = run.number, from = orig.number, environment,
        kind = kind.as_str(), by = %caller, "promotion"
    );
    Ok(run)
}
