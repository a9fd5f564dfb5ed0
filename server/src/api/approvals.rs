//! Approval gates from the people's side: approve or reject a deploy stage waiting at
//! its environment's gate, a run's deployments with their votes, and the inbox — what
//! is waiting, and whether the caller may approve it (with the reason when not).
//!
//! Voting needs a person (a personal token) who can see the repository; who may
//! actually approve is the gate's rule ([`crate::delivery::gate::may_vote`]), checked by
//! the store in the vote's transaction, and every refusal is on the audit record.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::auth::{Caller, visible_to};
use super::error::{ApiError, ApiResult};
use super::extract::ApiPath;
use super::route_table::{Access, RouteTable};
use super::runs::{RunPath, find_run};
use crate::daemon::state::AppState;
use crate::delivery::gate::Voter;
use crate::store::{Decision, Deployment, NewVote, Role};

pub fn routes() -> RouteTable {
    RouteTable::new()
        .add(Access::Role(Role::Viewer), routes!(run_deployments))
        .add(Access::Role(Role::Viewer), routes!(approve))
        .add(Access::Role(Role::Viewer), routes!(reject))
        .add(Access::AnyRole(Role::Viewer), routes!(inbox))
}

/// The deployments a run's deploy stages asked for: gate state, rules and votes.
#[utoipa::path(
    get, path = "/api/repos/{owner}/{name}/runs/{number}/deployments", tag = "environments",
    params(RunPath),
    responses(
        (status = 200, description = "The run's deploy stages that reached their gate, with rules, state and votes", body = Vec<Deployment>),
        (status = 401), (status = 403), (status = 404)
    )
)]
pub async fn run_deployments(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<RunPath>,
) -> ApiResult<Json<Vec<Deployment>>> {
    let (_, run) = find_run(&state, &p).await?;
    Ok(Json(state.store.run_deployments(run.id).await?))
}

/// A decision on a deploy stage waiting at its gate.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoteRequest {
    /// The deploy stage's key, as the run lists it (e.g. `production`).
    pub stage: String,
    /// Why (kept in the deployment's record and the audit log).
    #[serde(default)]
    pub comment: String,
    /// The commit the voter reviewed (full or abbreviated): refused if the deployment
    /// is of another.
    pub sha: Option<String>,
}

/// Longest comment kept.
const MAX_COMMENT: usize = 2000;

async fn vote(
    caller: Caller,
    state: AppState,
    p: RunPath,
    body: Bytes,
    decision: Decision,
) -> ApiResult<Json<Deployment>> {
    let req: VoteRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::unprocessable(format!("vote: {e}")))?;
    if req.comment.len() > MAX_COMMENT {
        return Err(ApiError::unprocessable(format!(
            "comment is longer than {MAX_COMMENT} bytes"
        )));
    }
    let Some(user) = caller.user() else {
        return Err(ApiError::forbidden(
            "approvals are given by people: use a personal token (`slipway token create --user NAME`)",
        ));
    };
    let (repo, run) = find_run(&state, &p).await?;
    let role = state.store.effective_role(user.id, Some(repo.id)).await?;
    let d = state
        .store
        .vote(
            run.id,
            &req.stage,
            NewVote {
                voter: user,
                role,
                decision,
                comment: &req.comment,
                sha: req.sha.as_deref(),
            },
        )
        .await;
    match &d {
        Ok(d) => tracing::info!(
            repo = %repo.name, run = run.number, stage = %req.stage, decision = decision.as_str(),
            state = d.state.as_str(), by = %caller, "vote"
        ),
        Err(e) => tracing::info!(
            repo = %repo.name, run = run.number, stage = %req.stage, decision = decision.as_str(),
            by = %caller, error = %e, "vote refused"
        ),
    }
    let d = d?;
    // A stage that passed its gate is queued: runners may take it now.
    state.wake.queue.notify_waiters();
    Ok(Json(d))
}

/// Approve a deploy stage waiting at its environment's gate.
#[utoipa::path(
    post, path = "/api/repos/{owner}/{name}/runs/{number}/approve", tag = "environments",
    params(RunPath), request_body = VoteRequest,
    responses(
        (status = 200, description = "The vote counted; the deployment as it is now (approved once enough eligible people approved)", body = Deployment),
        (status = 401),
        (status = 403, description = "Not counted, with the reason (not eligible, self-approval, voted already, superseded, timed out …); on the audit record"),
        (status = 404), (status = 409, description = "The stage is not waiting for approval"),
    )
)]
pub async fn approve(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<RunPath>,
    body: Bytes,
) -> ApiResult<Json<Deployment>> {
    vote(caller, state, p, body, Decision::Approve).await
}

/// Reject a deploy stage waiting at its environment's gate: the stage fails.
#[utoipa::path(
    post, path = "/api/repos/{owner}/{name}/runs/{number}/reject", tag = "environments",
    params(RunPath), request_body = VoteRequest,
    responses(
        (status = 200, description = "Rejected: the deploy stage fails", body = Deployment),
        (status = 401),
        (status = 403, description = "Not counted, with the reason; on the audit record"),
        (status = 404), (status = 409, description = "The stage is not waiting for approval"),
    )
)]
pub async fn reject(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<RunPath>,
    body: Bytes,
) -> ApiResult<Json<Deployment>> {
    vote(caller, state, p, body, Decision::Reject).await
}

/// A deployment waiting for approvals, and whether the caller may approve it.
#[derive(Debug, Serialize, ToSchema)]
pub struct InboxItem {
    /// `owner/name`.
    pub repo: String,
    pub deployment: Deployment,
    /// Approvals so far.
    pub approvals: usize,
    pub can_approve: bool,
    /// Why the caller may not approve (not eligible, their own run, voted already).
    pub reason: Option<String>,
}

/// Deployments waiting for approval that the caller can see, and whether they may approve each.
#[utoipa::path(
    get, path = "/api/inbox", tag = "environments",
    responses(
        (status = 200, description = "Deployments waiting for approvals in the repositories the caller can see, oldest first", body = Vec<InboxItem>),
        (status = 401), (status = 403)
    )
)]
pub async fn inbox(
    caller: Caller,
    State(state): State<AppState>,
) -> ApiResult<Json<Vec<InboxItem>>> {
    let pending = state.store.pending_deployments().await?;
    let pending = visible_to(&state, &caller, Role::Viewer, pending, |d| d.repo_id).await?;
    let mut out = Vec::with_capacity(pending.len());
    for d in pending {
        let repo = state.store.get_repo(d.repo_id).await?;
        let run = state.store.get_run(d.run_id).await?;
        let reason = match caller.user() {
            None => Some("approvals are given by people, not machine tokens".to_string()),
            Some(user) => {
                let role = state.store.effective_role(user.id, Some(repo.id)).await?;
                let people = state.store.run_people(&run).await?;
                let voter = Voter {
                    id: user.id,
                    name: &user.name,
                    role,
                };
                d.why_not(voter, &people)
            }
        };
        out.push(InboxItem {
            repo: repo.name,
            approvals: d
                .votes
                .iter()
                .filter(|v| v.decision == Decision::Approve)
                .count(),
            can_approve: reason.is_none(),
            reason,
            deployment: d,
        });
    }
    Ok(Json(out))
}
