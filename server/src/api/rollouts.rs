//! A deploy stage's rollout: its state, steps and measurements for anyone who can see
//! the repository; promote, abort and retry for those with the environment's release
//! permission — a release manager (or admin) on the repository, or a user the
//! environment names as an approver. Every decision, and every refusal, is audited.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::ApiPath;
use super::route_table::{Access, RouteTable};
use super::runs::{RunPath, find_run};
use crate::daemon::state::AppState;
use crate::store::audit::action;
use crate::store::rollouts::{Measurement, PromoteRequest, RolloutRecord};
use crate::store::{NewAudit, PromotionKind, Repo, Role, Run, Stage, TokenScope};

pub fn routes() -> RouteTable {
    RouteTable::new()
        .add(Access::Role(Role::Viewer), routes!(show))
        // Anyone who can see the repository may ask; the handler decides, so that a
        // refusal is audited too.
        .add(Access::Role(Role::Viewer), routes!(promote))
        .add(Access::Role(Role::Viewer), routes!(abort))
        .add(Access::Role(Role::Viewer), routes!(retry))
}

/// A stage of a run in the URL (its key, URL-encoded: `deploy-prod`, `ci%2Fdeploy`).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct StagePath {
    pub owner: String,
    pub name: String,
    pub number: i64,
    pub stage: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RolloutView {
    pub rollout: RolloutRecord,
    /// The strategy's steps, described; `rollout.step` indexes them.
    pub steps: Vec<String>,
    pub measurements: Vec<Measurement>,
}

async fn find(state: &AppState, p: &StagePath) -> ApiResult<(Repo, Run, Stage, RolloutRecord)> {
    let (repo, run) = find_run(
        state,
        &RunPath {
            owner: p.owner.clone(),
            name: p.name.clone(),
            number: p.number,
        },
    )
    .await?;
    let stage = state
        .store
        .list_stages(run.id)
        .await?
        .into_iter()
        .map(|s| s.stage)
        .find(|s| s.key == p.stage)
        .ok_or_else(|| {
            ApiError::not_found(format!("run #{} has no stage `{}`", run.number, p.stage))
        })?;
    let rollout = state
        .store
        .rollout_of_stage(stage.id)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "stage `{}` of run #{} has no rollout (yet)",
                p.stage, run.number
            ))
        })?;
    Ok((repo, run, stage, rollout))
}

/// A rollout's state, steps and measurements.
#[utoipa::path(
    get, path = "/api/repos/{owner}/{name}/runs/{number}/stages/{stage}/rollout", tag = "rollouts",
    params(StagePath),
    responses((status = 200, body = RolloutView), (status = 401), (status = 403), (status = 404))
)]
pub async fn show(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<StagePath>,
) -> ApiResult<Json<RolloutView>> {
    let (_, _, _, rollout) = find(&state, &p).await?;
    let measurements = state.store.measurements(rollout.id).await?;
    Ok(Json(RolloutView {
        steps: crate::rollout::driver::describe_steps(&rollout),
        measurements,
        rollout,
    }))
}

/// Whether `caller` may move a rollout to `env` on: an admin token, a release manager
/// (or admin) on the repository, or a user the environment names as an approver. The
/// one check: these handlers make it, and the run page asks it before showing the
/// buttons.
pub async fn may_release(
    state: &AppState,
    caller: &Caller,
    repo: &Repo,
    env: &str,
) -> crate::store::Result<bool> {
    let user = match caller {
        Caller::Machine(t) => return Ok(t.scope == TokenScope::Admin),
        Caller::User { user, .. } | Caller::Session { user, .. } => user,
    };
    if state.store.effective_role(user.id, Some(repo.id)).await? >= Some(Role::ReleaseManager) {
        return Ok(true);
    }
    let env = state.store.find_environment(repo.id, env).await?;
    Ok(env.is_some_and(|e| e.rules.approver_users.iter().any(|u| u == &user.name)))
}

/// Who [`may_release`] lets move rollouts to `env` on, in words (`approvers`: the
/// users the environment names).
pub fn who_may_release(repo: &Repo, env: &str, approvers: &[String]) -> String {
    let mut s = format!("a release manager on {} (or an admin)", repo.name);
    if !approvers.is_empty() {
        s.push_str(&format!(
            ", or an approver of environment {env} ({})",
            approvers.join(", ")
        ));
    }
    s
}

/// Checks the caller's release permission, auditing a refusal.
async fn check(
    state: &AppState,
    caller: &Caller,
    repo: &Repo,
    run: &Run,
    r: &RolloutRecord,
    what: &str,
) -> ApiResult<()> {
    if may_release(state, caller, repo, &r.environment).await? {
        return Ok(());
    }
    let why = format!(
        "{} may not {what} rollouts to `{}`: that takes a release manager or an approver of the environment",
        caller.name(),
        r.environment
    );
    let entry = NewAudit::new(&caller.actor(), action::ROLLOUT_REFUSED, subject(run, r))
        .repo(Some(repo.id))
        .detail(json!({ "request": what, "environment": r.environment, "reason": why }));
    state.store.append_audit(&entry).await?;
    Err(ApiError::forbidden(why))
}

fn subject(run: &Run, r: &RolloutRecord) -> String {
    format!("run:{}:stage:{}", run.id, r.stage_id)
}

async fn audit(
    state: &AppState,
    caller: &Caller,
    repo: &Repo,
    run: &Run,
    r: &RolloutRecord,
    what: &str,
    detail: serde_json::Value,
) -> ApiResult<()> {
    let entry = NewAudit::new(&caller.actor(), what, subject(run, r))
        .repo(Some(repo.id))
        .detail(detail);
    state.store.append_audit(&entry).await?;
    Ok(())
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteBody {
    /// Skip every remaining step (pauses, analyses, weights): the new version
    /// everywhere now.
    #[serde(default)]
    pub full: bool,
}

/// Move a rollout past its pause (or inconclusive analysis), or all the way.
#[utoipa::path(
    post, path = "/api/repos/{owner}/{name}/runs/{number}/stages/{stage}/rollout/promote", tag = "rollouts",
    params(StagePath), request_body = PromoteBody,
    responses(
        (status = 202, description = "Taken; the controller acts on its next tick"),
        (status = 401), (status = 403, description = "No release permission for the environment (audited)"),
        (status = 404), (status = 409, description = "The rollout has ended"),
    )
)]
pub async fn promote(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<StagePath>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let req: PromoteBody = if body.is_empty() {
        PromoteBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::unprocessable(format!("promote: {e}")))?
    };
    let (repo, run, _, r) = find(&state, &p).await?;
    check(&state, &caller, &repo, &run, &r, "promote").await?;
    let kind = if req.full {
        PromoteRequest::Full
    } else {
        PromoteRequest::Step
    };
    if !state.store.request_promote(r.stage_id, kind).await? {
        return Err(ApiError::conflict(format!(
            "the rollout has ended ({})",
            r.phase.as_str()
        )));
    }
    audit(
        &state,
        &caller,
        &repo,
        &run,
        &r,
        action::ROLLOUT_PROMOTE,
        json!({
            "environment": r.environment, "full": req.full, "step": r.step,
        }),
    )
    .await?;
    Ok(StatusCode::ACCEPTED)
}

/// Roll back now: traffic to stable, the new version removed, the stage failed.
#[utoipa::path(
    post, path = "/api/repos/{owner}/{name}/runs/{number}/stages/{stage}/rollout/abort", tag = "rollouts",
    params(StagePath),
    responses(
        (status = 202, description = "Taken; the controller rolls back on its next tick"),
        (status = 401), (status = 403, description = "No release permission for the environment (audited)"),
        (status = 404), (status = 409, description = "The rollout has ended"),
    )
)]
pub async fn abort(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<StagePath>,
) -> ApiResult<StatusCode> {
    let (repo, run, _, r) = find(&state, &p).await?;
    check(&state, &caller, &repo, &run, &r, "abort").await?;
    if !state
        .store
        .request_abort(r.stage_id, &caller.actor())
        .await?
    {
        return Err(ApiError::conflict(format!(
            "the rollout has ended ({})",
            r.phase.as_str()
        )));
    }
    audit(
        &state,
        &caller,
        &repo,
        &run,
        &r,
        action::ROLLOUT_ABORT,
        json!({
            "environment": r.environment, "step": r.step,
        }),
    )
    .await?;
    Ok(StatusCode::ACCEPTED)
}

/// Roll the same version out again after a rollback: a promotion of the run to the
/// stage's environment (through its gate; the same image digest, nothing rebuilt).
#[utoipa::path(
    post, path = "/api/repos/{owner}/{name}/runs/{number}/stages/{stage}/rollout/retry", tag = "rollouts",
    params(StagePath),
    responses(
        (status = 201, description = "The new run", body = Run),
        (status = 401), (status = 403, description = "No release permission for the environment (audited)"),
        (status = 404), (status = 409, description = "The rollout has not ended, or the run cannot be promoted"),
    )
)]
pub async fn retry(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<StagePath>,
) -> ApiResult<(StatusCode, Json<Run>)> {
    let (repo, run, _, r) = find(&state, &p).await?;
    check(&state, &caller, &repo, &run, &r, "retry").await?;
    if !r.phase.is_final() {
        return Err(ApiError::conflict(format!(
            "the rollout is still {}; abort it first",
            r.phase.as_str()
        )));
    }
    let new = super::promotions::start(
        &state,
        &caller,
        &repo,
        &run,
        &r.environment,
        PromotionKind::Promote,
    )
    .await?;
    audit(
        &state,
        &caller,
        &repo,
        &run,
        &r,
        action::ROLLOUT_RETRY,
        json!({
            "environment": r.environment, "new_run": new.number,
        }),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(new)))
}
