//! `/api/users`: people, their roles and their linked forge identities. Admin only,
//! except that users may read themselves. Every change is in the audit log.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;
use zeroize::Zeroizing;

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::route_table::{Access, RouteTable};
use crate::admin::people::{self, UserDetail};
use crate::daemon::state::AppState;
use crate::store::{Role, User};

pub fn routes() -> RouteTable {
    RouteTable::new()
        .add(Access::Role(Role::Admin), routes!(list))
        .add(Access::Role(Role::Admin), routes!(create))
        .add(Access::SelfOrAdmin, routes!(show))
        .add(Access::Role(Role::Admin), routes!(update))
        .add(Access::Role(Role::Admin), routes!(set_role))
        .add(Access::Role(Role::Admin), routes!(remove_role))
        .add(Access::Role(Role::Admin), routes!(link))
        .add(Access::Role(Role::Admin), routes!(unlink))
}

/// A user in the URL: `/api/users/{user}/…`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct UserPath {
    /// The user's name.
    pub user: String,
}

/// Loads the user named in the path (404 if there is none).
pub(crate) async fn find_user(state: &AppState, name: &str) -> ApiResult<User> {
    Ok(state.store.get_user_by_name(name).await?)
}

async fn detail(state: &AppState, user: User) -> ApiResult<Json<UserDetail>> {
    Ok(Json(people::detail(&state.store, user).await?))
}

/// Users with their roles and linked identities.
#[utoipa::path(
    get, path = "/api/users", tag = "users",
    responses((status = 200, description = "By name", body = Vec<UserDetail>), (status = 401), (status = 403))
)]
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<Vec<UserDetail>>> {
    let mut out = Vec::new();
    for user in state.store.list_users().await? {
        out.push(people::detail(&state.store, user).await?);
    }
    Ok(Json(out))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub name: String,
    /// At least 12 characters; stored as an argon2id hash, never shown.
    pub password: String,
    /// A first role.
    pub role: Option<Role>,
    /// The repository (`owner/name`) the role is on; default: global.
    pub repo: Option<String>,
}

impl std::fmt::Debug for CreateUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateUser")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .field("role", &self.role)
            .field("repo", &self.repo)
            .finish()
    }
}

/// Add a user.
#[utoipa::path(
    post, path = "/api/users", tag = "users", request_body = CreateUser,
    responses(
        (status = 201, body = UserDetail),
        (status = 401), (status = 403),
        (status = 404, description = "No such repository"),
        (status = 409, description = "The name is taken"),
        (status = 422, description = "Invalid name, short password, or a repository without a role"),
    )
)]
pub async fn create(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateUser>,
) -> ApiResult<(StatusCode, Json<UserDetail>)> {
    let password = Zeroizing::new(body.password);
    if body.repo.is_some() && body.role.is_none() {
        return Err(ApiError::unprocessable("`repo` needs a `role`"));
    }
    let role = body.role.map(|r| (r, body.repo.as_deref()));
    let user = people::add_user(&state.store, &caller.actor(), &body.name, password, role).await?;
    Ok((StatusCode::CREATED, detail(&state, user).await?))
}

/// One user with their roles and linked identities.
#[utoipa::path(
    get, path = "/api/users/{user}", tag = "users", params(UserPath),
    responses((status = 200, body = UserDetail), (status = 401), (status = 403), (status = 404))
)]
pub async fn show(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<UserPath>,
) -> ApiResult<Json<UserDetail>> {
    let user = find_user(&state, &p.user).await?;
    detail(&state, user).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// A disabled user's tokens are refused (403) until they are enabled again.
    pub disabled: Option<bool>,
}

/// Change a user: password, disabled.
#[utoipa::path(
    patch, path = "/api/users/{user}", tag = "users", params(UserPath), request_body = UpdateUser,
    responses(
        (status = 200, body = UserDetail), (status = 401), (status = 403), (status = 404),
        (status = 409, description = "They are the last enabled admin"), (status = 422)
    )
)]
pub async fn update(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<UserPath>,
    ApiJson(body): ApiJson<UpdateUser>,
) -> ApiResult<Json<UserDetail>> {
    let mut user = find_user(&state, &p.user).await?;
    if let Some(disabled) = body.disabled {
        user = state
            .store
            .set_user_disabled(&caller.actor(), user.id, disabled)
            .await?;
        tracing::info!(user = %user.name, disabled, by = %caller, "user updated");
    }
    detail(&state, user).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRole {
    pub role: Role,
    /// The repository (`owner/name`); default: the global role.
    pub repo: Option<String>,
}

/// Give a user a role, globally or on a repository.
#[utoipa::path(
    put, path = "/api/users/{user}/roles", tag = "users", params(UserPath), request_body = SetRole,
    responses(
        (status = 200, description = "The role replaces the one the user had there", body = UserDetail),
        (status = 401), (status = 403), (status = 404),
        (status = 409, description = "It would take the admin role from the last enabled admin"),
        (status = 422)
    )
)]
pub async fn set_role(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<UserPath>,
    ApiJson(body): ApiJson<SetRole>,
) -> ApiResult<Json<UserDetail>> {
    let user = find_user(&state, &p.user).await?;
    people::set_role(
        &state.store,
        &caller.actor(),
        &user,
        body.repo.as_deref(),
        Some(body.role),
    )
    .await?;
    detail(&state, user).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RoleQuery {
    /// The repository (`owner/name`) whose role to remove; default: the global role.
    pub repo: Option<String>,
}

/// Take a role from a user.
#[utoipa::path(
    delete, path = "/api/users/{user}/roles", tag = "users", params(UserPath, RoleQuery),
    responses(
        (status = 200, body = UserDetail),
        (status = 401), (status = 403),
        (status = 404, description = "No such user or repository, or no role there"),
        (status = 409, description = "It would take the admin role from the last enabled admin"),
    )
)]
pub async fn remove_role(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<UserPath>,
    ApiQuery(q): ApiQuery<RoleQuery>,
) -> ApiResult<Json<UserDetail>> {
    let user = find_user(&state, &p.user).await?;
    people::set_role(
        &state.store,
        &caller.actor(),
        &user,
        q.repo.as_deref(),
        None,
    )
    .await?;
    detail(&state, user).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkIdentity {
    /// `github:LOGIN`, `gitlab:LOGIN`, `gitea:LOGIN`, `forgejo:LOGIN`,
    /// `bitbucket:ACCOUNT_ID`, `bitbucket-dc:LOGIN`, `gitee:LOGIN` or `git:EMAIL`.
    pub identity: String,
}

/// Link a forge identity (`github:alice`, `git:<email>`) to a user.
#[utoipa::path(
    post, path = "/api/users/{user}/identities", tag = "users", params(UserPath),
    request_body = LinkIdentity,
    responses(
        (status = 201, description = "Linked: runs this account pushes name it as their pusher", body = UserDetail),
        (status = 401), (status = 403), (status = 404),
        (status = 409, description = "The account is linked to a user already"),
        (status = 422, description = "Not a known forge and login"),
    )
)]
pub async fn link(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<UserPath>,
    ApiJson(body): ApiJson<LinkIdentity>,
) -> ApiResult<(StatusCode, Json<UserDetail>)> {
    let user = find_user(&state, &p.user).await?;
    people::link(&state.store, &caller.actor(), &user, &body.identity).await?;
    Ok((StatusCode::CREATED, detail(&state, user).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct IdentityPath {
    pub user: String,
    /// `github:alice`, `git:alice@example.com` …
    pub identity: String,
}

/// Unlink a forge identity from a user.
#[utoipa::path(
    delete, path = "/api/users/{user}/identities/{identity}", tag = "users", params(IdentityPath),
    responses((status = 204), (status = 401), (status = 403), (status = 404), (status = 422))
)]
pub async fn unlink(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<IdentityPath>,
) -> ApiResult<StatusCode> {
    let user = find_user(&state, &p.user).await?;
    people::unlink(&state.store, &caller.actor(), &user, &p.identity).await?;
    Ok(StatusCode::NO_CONTENT)
}
