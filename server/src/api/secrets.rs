//! Per-repository secrets: set, list (names and settings only), delete.
//!
//! No endpoint ever returns a value: values are sealed with the repository id and the
//! secret's name as associated data on the way in, and only the runner opens them.
//! Setting and deleting need admin; the names are for developers.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;
use zeroize::Zeroizing;

use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiPath};
use super::repos::{RepoPath, find_repo};
use super::route_table::{Access, RouteTable};
use crate::daemon::state::AppState;
use crate::store::{Role, SecretMeta};

pub fn routes() -> RouteTable {
    RouteTable::new()
        .add(Access::Role(Role::Admin), routes!(set))
        .add(Access::Role(Role::Developer), routes!(list))
        .add(Access::Role(Role::Admin), routes!(remove))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SecretPath {
    pub owner: String,
    pub name: String,
    /// The secret's name: an environment variable name (`[A-Za-z_][A-Za-z0-9_]*`).
    pub secret: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSecret {
    /// The value: 4 bytes to 64 KiB, not only whitespace (a shorter value cannot be
    /// masked in logs). Never returned by any endpoint.
    pub value: String,
    /// Whether pull requests from forks may see it. Default: false.
    #[serde(default)]
    pub allow_pull_requests: bool,
}

impl std::fmt::Debug for SetSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetSecret")
            .field("value", &"<redacted>")
            .field("allow_pull_requests", &self.allow_pull_requests)
            .finish()
    }
}

/// Set a secret (its value is never returned).
#[utoipa::path(
    put, path = "/api/repos/{owner}/{name}/secrets/{secret}", tag = "secrets",
    params(SecretPath), request_body = SetSecret,
    responses(
        (status = 201, description = "Created (metadata only)", body = SecretMeta),
        (status = 200, description = "Replaced (metadata only)", body = SecretMeta),
        (status = 401), (status = 403), (status = 404),
        (status = 422, description = "Invalid name, or a value that is too short to be masked in logs (under 4 bytes, or only whitespace) or too large"),
    )
)]
pub async fn set(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<SecretPath>,
    ApiJson(body): ApiJson<SetSecret>,
) -> ApiResult<(StatusCode, Json<SecretMeta>)> {
    let value = Zeroizing::new(body.value);
    let repo = find_repo(&state, &p.owner, &p.name).await?;
    let created = crate::admin::repos::put_secret(
        &state,
        &repo,
        &p.secret,
        value.as_bytes(),
        body.allow_pull_requests,
    )
    .await?;
    let meta = state
        .store
        .list_secrets(repo.id)
        .await?
        .into_iter()
        .find(|s| s.name == p.secret)
        .ok_or_else(|| ApiError::internal("secret vanished right after it was stored"))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(meta)))
}

/// A repository's secret names and settings, never values.
#[utoipa::path(
    get, path = "/api/repos/{owner}/{name}/secrets", tag = "secrets", params(RepoPath),
    responses(
        (status = 200, description = "Names and settings, by name; never values", body = Vec<SecretMeta>),
        (status = 401), (status = 403), (status = 404)
    )
)]
pub async fn list(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<RepoPath>,
) -> ApiResult<Json<Vec<SecretMeta>>> {
    let repo = find_repo(&state, &p.owner, &p.name).await?;
    Ok(Json(state.store.list_secrets(repo.id).await?))
}

/// Delete a secret.
#[utoipa::path(
    delete, path = "/api/repos/{owner}/{name}/secrets/{secret}", tag = "secrets",
    params(SecretPath),
    responses((status = 204), (status = 401), (status = 403), (status = 404))
)]
pub async fn remove(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<SecretPath>,
) -> ApiResult<StatusCode> {
    let repo = find_repo(&state, &p.owner, &p.name).await?;
    if !state.store.delete_secret(repo.id, &p.secret).await? {
        return Err(ApiError::not_found(format!(
            "repository {} has no secret {:?}",
            repo.name, p.secret
        )));
    }
    tracing::info!(repo = %repo.name, secret = %p.secret, "secret deleted");
    Ok(StatusCode::NO_CONTENT)
}
