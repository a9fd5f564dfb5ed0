//! `/api/repos`: register, list, show, edit and delete repositories.
//!
//! Reading needs the viewer role, changing needs admin. Sealed fields never leave the
//! server, and the webhook secret is returned once, in the answer to the registration.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;
use zeroize::Zeroizing;

use super::auth::{Caller, visible_to};
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiPath};
use super::route_table::{Access, RouteTable};
use crate::admin::repos::{self, RepoView};
use crate::daemon::state::AppState;
use crate::store::{ForgeKind, Repo, Role};

pub fn routes() -> RouteTable {
    RouteTable::new()
        .add(Access::Role(Role::Admin), routes!(create))
        // A user with a role on some repositories only sees those.
        .add(Access::AnyRole(Role::Viewer), routes!(list))
        .add(Access::Role(Role::Viewer), routes!(show))
        .add(Access::Role(Role::Admin), routes!(update))
        .add(Access::Role(Role::Admin), routes!(remove))
}

/// A repository in the URL: `/api/repos/{owner}/{name}/…`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct RepoPath {
    /// The first segment of the repository name.
    pub owner: String,
    /// The second segment of the repository name.
    pub name: String,
}

impl RepoPath {
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }
}

/// Loads the repository named in the path (404 if there is none).
pub(crate) async fn find_repo(state: &AppState, owner: &str, name: &str) -> ApiResult<Repo> {
    Ok(state
        .store
        .get_repo_by_name(&format!("{owner}/{name}"))
        .await?)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRepo {
    /// The repository's path on its forge: `owner/name`, or a GitLab project's full
    /// path with its subgroups (`group/subgroup/project`); segments of `[A-Za-z0-9._-]`.
    pub name: String,
    pub forge: ForgeKind,
    pub clone_url: String,
    /// Default: `main`.
    #[serde(default)]
    pub default_branch: Option<String>,
    /// ForgeKind API token for commit statuses (stored encrypted, never shown again).
    #[serde(default)]
    pub forge_token: Option<String>,
    /// Whether runs may see secrets and privileged settings by default. Default: false.
    #[serde(default)]
    pub trusted: bool,
    /// The forge's API base URL for commit statuses (e.g.
    /// `https://example.com/gitlab/api/v4`). Default: the server's `forge_api_urls`
    /// entry for the clone URL's host, else derived from the clone URL.
    #[serde(default)]
    pub api_url: Option<String>,
}

/// The answer to a registration: the only time the webhook secret is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct RepoCreated {
    pub repo: RepoView,
    /// Configure it in the forge's webhook settings; it cannot be read again.
    pub webhook_secret: String,
    pub webhook_url: String,
}

/// Register a repository; answers its webhook URL and secret (shown only this once).
#[utoipa::path(
    post, path = "/api/repos", tag = "repos",
    request_body = CreateRepo,
    responses(
        (status = 201, description = "Registered; the webhook secret is shown only here", body = RepoCreated),
        (status = 401, description = "No or unknown token"),
        (status = 403, description = "Not an admin token"),
        (status = 409, description = "The name is taken"),
        (status = 422, description = "Invalid name, forge, branch or URL"),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateRepo>,
) -> ApiResult<(StatusCode, Json<RepoCreated>)> {
    let registered = repos::register(
        &state,
        repos::Registration {
            name: body.name,
            forge: body.forge,
            clone_url: body.clone_url,
            default_branch: body.default_branch,
            forge_token: body.forge_token.map(Zeroizing::new),
            trusted: body.trusted,
            api_url: body.api_url,
        },
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(RepoCreated {
            repo: RepoView::new(&registered.repo, &state.config.public_url),
            webhook_secret: registered.webhook_secret.to_string(),
            webhook_url: registered.webhook_url,
        }),
    ))
}

/// The repositories the caller can see.
#[utoipa::path(
    get, path = "/api/repos", tag = "repos",
    responses((status = 200, body = Vec<RepoView>), (status = 401), (status = 403))
)]
pub async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<RepoView>>> {
    let repos = state.store.list_repos().await?;
    let repos = visible_to(&state, &caller, Role::Viewer, repos, |r| r.id).await?;
    Ok(Json(
        repos
            .iter()
            .map(|r| RepoView::new(r, &state.config.public_url))
            .collect(),
    ))
}

/// One repository.
#[utoipa::path(
    get, path = "/api/repos/{owner}/{name}", tag = "repos", params(RepoPath),
    responses((status = 200, body = RepoView), (status = 401), (status = 403), (status = 404))
)]
pub async fn show(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<RepoPath>,
) -> ApiResult<Json<RepoView>> {
    let repo = find_repo(&state, &p.owner, &p.name).await?;
    Ok(Json(RepoView::new(&repo, &state.config.public_url)))
}

/// Fields to change; absent ones stay as they are.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRepo {
    pub default_branch: Option<String>,
    pub trusted: Option<bool>,
    /// A new forge token, or `null` to remove the stored one.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub forge_token: Option<Option<String>>,
    pub clone_url: Option<String>,
    /// A forge API base URL, or `null` to derive it again.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub api_url: Option<Option<String>>,
}

/// Tells an absent field (`None`, by `default`) from an explicit `null` (`Some(None)`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Change a repository's settings.
#[utoipa::path(
    patch, path = "/api/repos/{owner}/{name}", tag = "repos", params(RepoPath),
    request_body = UpdateRepo,
    responses((status = 200, body = RepoView), (status = 401), (status = 403), (status = 404), (status = 422))
)]
pub async fn update(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<RepoPath>,
    ApiJson(body): ApiJson<UpdateRepo>,
) -> ApiResult<Json<RepoView>> {
    let repo = repos::update(
        &state,
        &p.full_name(),
        repos::Update {
            default_branch: body.default_branch,
            trusted: body.trusted,
            forge_token: body.forge_token.map(|t| t.map(Zeroizing::new)),
            clone_url: body.clone_url,
            api_url: body.api_url,
        },
    )
    .await?;
    Ok(Json(RepoView::new(&repo, &state.config.public_url)))
}

/// Delete a repository and everything stored for it.
#[utoipa::path(
    delete, path = "/api/repos/{owner}/{name}", tag = "repos", params(RepoPath),
    responses(
        (status = 204, description = "Deleted with its runs, secrets and git mirror"),
        (status = 401), (status = 403), (status = 404)
    )
)]
pub async fn remove(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<RepoPath>,
) -> ApiResult<StatusCode> {
    repos::delete(&state, &p.full_name()).await?;
    Ok(StatusCode::NO_CONTENT)
}

impl From<crate::git::GitError> for ApiError {
    fn from(e: crate::git::GitError) -> Self {
        use crate::git::GitError as G;
        match e {
            G::InvalidRef(_) | G::InvalidSha(_) => ApiError::unprocessable(e.to_string()),
            G::Fetch { .. } => {
                tracing::warn!(error = %e, "fetch failed");
                // 503 when trying again may help (network trouble, a locked ref).
                let status = if e.is_retryable() {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::BAD_GATEWAY
                };
                // The URL in the message has its credentials masked.
                ApiError::new(status, "fetch_failed", e.to_string())
            }
            e if e.is_retryable() => ApiError::unavailable(e),
            e => ApiError::internal(e),
        }
    }
}
