//! A repository's environments: what is live in each and what was before, their
//! deployment history, their rules (admin), and rolling one back (release manager).
//!
//! Environments are defined here, on the server, never by a pipeline: a pull request
//! cannot lower its own bar. An environment a pipeline deploys to without one being
//! defined is unprotected and listed all the same once it has a deployment.

use std::collections::BTreeSet;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;
use zeroize::Zeroizing;

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::ApiPath;
use super::repos::{RepoPath, find_repo};
use super::route_table::{Access, RouteTable};
use crate::daemon::state::AppState;
use crate::delivery::gate::{Concurrency, EnvironmentRules};
use crate::store::{Deployment, Environment, EnvironmentUpdate, PromotionKind, Repo, Role, Run};

pub fn routes() -> RouteTable {
    RouteTable::new()
        .add(Access::Role(Role::Viewer), routes!(list))
        .add(Access::Role(Role::Viewer), routes!(show))
        .add(Access::Role(Role::Admin), routes!(put))
        .add(Access::Role(Role::Admin), routes!(delete))
        .add(Access::Role(Role::ReleaseManager), routes!(rollback))
}

/// An environment in the URL.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct EnvPath {
    pub owner: String,
    pub name: String,
    /// The environment's name.
    pub env: String,
}

/// An environment: its rules (when defined on the server), what is live there and
/// what was live before it.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnvironmentView {
    pub name: String,
    /// Rules, namespace and connection, when the environment is defined (an undefined
    /// one is unprotected).
    pub environment: Option<Environment>,
    /// The latest deployment that went out and succeeded.
    pub live: Option<Deployment>,
    /// The one live before it (what `rollback` redeploys).
    pub previous: Option<Deployment>,
    /// Deployments waiting at the gate.
    pub waiting: Vec<Deployment>,
}

/// An environment with its deployment history, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnvironmentDetail {
    #[serde(flatten)]
    pub view: EnvironmentView,
    pub deployments: Vec<Deployment>,
}

/// How many deployments an environment's history shows.
const HISTORY: u32 = 50;

async fn view(state: &AppState, repo: &Repo, name: &str) -> ApiResult<EnvironmentDetail> {
    let environment = state.store.find_environment(repo.id, name).await?;
    let deployments = state
        .store
        .environment_deployments(repo.id, name, HISTORY)
        .await?;
    let mut live_ones = deployments.iter().filter(|d| d.went_live());
    let live = live_ones.next().cloned();
    let previous = live_ones.next().cloned();
    let waiting = deployments
        .iter()
        .filter(|d| d.stage_status == crate::store::StageStatus::Waiting)
        .cloned()
        .collect();
    Ok(EnvironmentDetail {
        view: EnvironmentView {
            name: name.to_string(),
            environment,
            live,
            previous,
            waiting,
        },
        deployments,
    })
}

/// A repository's environments: what is live, what was before, what waits.
#[utoipa::path(
    get, path = "/api/repos/{owner}/{name}/environments", tag = "environments",
    params(RepoPath),
    responses(
        (status = 200, description = "Defined environments and those deployed to, by name", body = Vec<EnvironmentView>),
        (status = 401), (status = 403), (status = 404)
    )
)]
pub async fn list(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<RepoPath>,
) -> ApiResult<Json<Vec<EnvironmentView>>> {
    let repo = find_repo(&state, &p.owner, &p.name).await?;
    let mut names: BTreeSet<String> = state
        .store
        .list_environments(repo.id)
        .await?
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.extend(state.store.deployed_environments(repo.id).await?);
    let mut out = Vec::new();
    for name in names {
        out.push(view(&state, &repo, &name).await?.view);
    }
    Ok(Json(out))
}

/// One environment: its rules and deployment history.
#[utoipa::path(
    get, path = "/api/repos/{owner}/{name}/environments/{env}", tag = "environments",
    params(EnvPath),
    responses(
        (status = 200, body = EnvironmentDetail),
        (status = 401), (status = 403),
        (status = 404, description = "Neither defined nor deployed to"),
    )
)]
pub async fn show(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<EnvPath>,
) -> ApiResult<Json<EnvironmentDetail>> {
    let repo = find_repo(&state, &p.owner, &p.name).await?;
    let detail = view(&state, &repo, &p.env).await?;
    if detail.view.environment.is_none() && detail.deployments.is_empty() {
        return Err(ApiError::not_found(format!(
            "{} has no environment `{}`",
            repo.name, p.env
        )));
    }
    Ok(Json(detail))
}

/// An environment's rules. Every field may be left out: it then takes its default
/// (the rules are replaced as a whole, so what is left out is not kept).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentRequest {
    /// Deployments need approvals (default false).
    #[serde(default)]
    pub protected: bool,
    /// Distinct eligible approvals a protected environment needs (1–100, default 1).
    pub required_approvals: Option<u32>,
    /// Roles (at least) whose members may approve; with `approver_users` both empty,
    /// release managers.
    #[serde(default)]
    pub approver_roles: Vec<Role>,
    /// Users who may approve whatever their role.
    #[serde(default)]
    pub approver_users: Vec<String>,
    /// Let the run's triggerer, pusher or commit author approve it (default false).
    #[serde(default)]
    pub allow_self_approval: bool,
    /// Branch patterns (`main`, `release/*`) and tag patterns (`tag:v*`) that may
    /// deploy here; empty: any.
    #[serde(default)]
    pub refs: Vec<String>,
    /// Seconds a deployment waits after reaching the gate (default 0).
    #[serde(default)]
    pub wait_timer_secs: u64,
    /// Seconds after which a request still missing approvals is rejected (default:
    /// never).
    pub approval_timeout_secs: Option<u64>,
    /// `queue` (default): a newer deployment waits for the running one; `supersede`:
    /// it replaces those still waiting at the gate.
    #[serde(default)]
    pub concurrency: Concurrency,
    /// A newer push to the branch supersedes a pending approval request (default
    /// true).
    pub supersede_on_push: Option<bool>,
    /// The namespace deploy stages deploy to (`SLIPWAY_NAMESPACE`).
    pub namespace: Option<String>,
    /// A kubeconfig for the environment's cluster, sealed at rest and given to deploy
    /// stages as the secret `SLIPWAY_KUBECONFIG`. Left out: the stored one is kept;
    /// `""`: removed (deploy stages use the runner's in-cluster credentials).
    pub kubeconfig: Option<String>,
}

/// Longest a wait timer or approval timeout may be (30 days).
const MAX_WAIT_SECS: u64 = 30 * 24 * 3600;

fn rules_of(req: &EnvironmentRequest) -> Result<EnvironmentRules, String> {
    let required = req.required_approvals.unwrap_or(1);
    if !(1..=100).contains(&required) {
        return Err(format!(
            "required_approvals must be from 1 to 100, not {required}"
        ));
    }
    for r in &req.refs {
        let pattern = r.strip_prefix("tag:").unwrap_or(r);
        if pattern.is_empty() {
            return Err(format!("`{r}` is not a branch or tag pattern"));
        }
        pipelines::check_ref_pattern(pattern)
            .map_err(|e| format!("`{r}` is not a branch or tag pattern: {e}"))?;
    }
    for u in &req.approver_users {
        crate::admin::people::validate_user_name(u).map_err(|e| e.to_string())?;
    }
    for (what, secs) in [
        ("wait_timer_secs", Some(req.wait_timer_secs)),
        ("approval_timeout_secs", req.approval_timeout_secs),
    ] {
        if secs.is_some_and(|s| s > MAX_WAIT_SECS) {
            return Err(format!("{what} may be at most {MAX_WAIT_SECS} (30 days)"));
        }
    }
    if req.approval_timeout_secs == Some(0) {
        return Err("approval_timeout_secs must be at least 1 (leave it out for none)".into());
    }
    if let Some(ns) = &req.namespace
        && !is_dns_label(ns)
    {
        return Err(format!(
            "namespace `{ns}` is not a Kubernetes namespace name (lowercase letters, digits and `-`, at most 63)"
        ));
    }
    Ok(EnvironmentRules {
        protected: req.protected,
        required_approvals: required,
        approver_roles: req.approver_roles.clone(),
        approver_users: req.approver_users.clone(),
        allow_self_approval: req.allow_self_approval,
        refs: req.refs.clone(),
        wait_timer_ms: (req.wait_timer_secs * 1000) as i64,
        approval_timeout_ms: req.approval_timeout_secs.map(|s| (s * 1000) as i64),
        concurrency: req.concurrency,
        supersede_on_push: req.supersede_on_push.unwrap_or(true),
    })
}

/// A Kubernetes namespace name (an RFC 1123 label).
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Checks an environment's name: what the YAML's `environment:` may say.
pub fn validate_env_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not an environment name: letters, digits, `-`, `_` and `.`, at most 64"
        ))
    }
}

/// Define or change an environment's rules.
#[utoipa::path(
    put, path = "/api/repos/{owner}/{name}/environments/{env}", tag = "environments",
    params(EnvPath), request_body = EnvironmentRequest,
    responses(
        (status = 200, description = "Changed", body = Environment),
        (status = 201, description = "Created", body = Environment),
        (status = 401), (status = 403), (status = 404),
        (status = 422, description = "A rule is out of range or a pattern is malformed"),
    )
)]
pub async fn put(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<EnvPath>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Environment>)> {
    let req: EnvironmentRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::unprocessable(format!("environment rules: {e}")))?;
    let repo = find_repo(&state, &p.owner, &p.name).await?;
    validate_env_name(&p.env).map_err(ApiError::unprocessable)?;
    let rules = rules_of(&req).map_err(ApiError::unprocessable)?;
    let kubeconfig_enc = req.kubeconfig.as_ref().map(|k| {
        let k = Zeroizing::new(k.clone());
        (!k.is_empty()).then(|| {
            state.secret_box.seal(
                k.as_bytes(),
                &crate::crypto::kubeconfig_aad(repo.id, &p.env),
            )
        })
    });
    let (env, created) = state
        .store
        .put_environment(
            &caller.actor(),
            &repo,
            &p.env,
            EnvironmentUpdate {
                rules,
                namespace: req.namespace.clone(),
                kubeconfig_enc,
            },
        )
        .await?;
    tracing::info!(repo = %repo.name, environment = %p.env, created, by = %caller, "environment rules set");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(env)))
}

/// Remove an environment's rules (its deployment history stays).
#[utoipa::path(
    delete, path = "/api/repos/{owner}/{name}/environments/{env}", tag = "environments",
    params(EnvPath),
    responses(
        (status = 204, description = "Rules removed; the deployment history stays"),
        (status = 401), (status = 403), (status = 404)
    )
)]
pub async fn delete(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<EnvPath>,
) -> ApiResult<StatusCode> {
    let repo = find_repo(&state, &p.owner, &p.name).await?;
    state
        .store
        .delete_environment(&caller.actor(), &repo, &p.env)
        .await?;
    tracing::info!(repo = %repo.name, environment = %p.env, by = %caller, "environment removed");
    Ok(StatusCode::NO_CONTENT)
}

/// Redeploy the version live before the current one, through the same gate.
#[utoipa::path(
    post, path = "/api/repos/{owner}/{name}/environments/{env}/rollback", tag = "environments",
    params(EnvPath),
    responses(
        (status = 201, description = "A rollback run: the version live before the current one, deployed again through the environment's gate (nothing rebuilt)", body = Run),
        (status = 401), (status = 403), (status = 404),
        (status = 409, description = "Nothing live before the current version"),
    )
)]
pub async fn rollback(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<EnvPath>,
) -> ApiResult<(StatusCode, Json<Run>)> {
    let repo = find_repo(&state, &p.owner, &p.name).await?;
    let detail = view(&state, &repo, &p.env).await?;
    let (Some(live), Some(previous)) = (&detail.view.live, &detail.view.previous) else {
        return Err(ApiError::conflict(format!(
            "environment `{}` has no earlier version to roll back to",
            p.env
        )));
    };
    let from = state.store.get_run(previous.run_id).await?;
    tracing::info!(repo = %repo.name, environment = %p.env, live = live.run_number, to = from.number, by = %caller, "rollback");
    let run = super::promotions::start(
        &state,
        &caller,
        &repo,
        &from,
        &p.env,
        PromotionKind::Rollback,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(run)))
}
