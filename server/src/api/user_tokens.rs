//! Personal API tokens, `/api/users/{user}/tokens`: they act as their user, with the
//! user's roles. A user manages their own; an admin anyone's. Created (shown once) and
//! revoked tokens are in the audit log.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiPath};
use super::route_table::{Access, RouteTable};
use super::users::{UserPath, find_user};
use crate::daemon::state::AppState;
use crate::store::UserToken;

pub fn routes() -> RouteTable {
    RouteTable::new()
        .add(Access::SelfOrAdmin, routes!(create))
        .add(Access::SelfOrAdmin, routes!(list))
        .add(Access::SelfOrAdmin, routes!(revoke))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserToken {
    /// What it is for (`laptop`, `release script` …).
    pub name: String,
}

#[derive(Serialize, ToSchema)]
pub struct UserTokenCreated {
    #[serde(flatten)]
    pub info: UserToken,
    /// Shown only here: it cannot be read again.
    pub token: String,
}

/// Create a personal token for a user; shown only this once.
#[utoipa::path(
    post, path = "/api/users/{user}/tokens", tag = "users", operation_id = "create_token", params(UserPath),
    request_body = CreateUserToken,
    responses(
        (status = 201, description = "Created; the token is shown only here", body = UserTokenCreated),
        (status = 401), (status = 403), (status = 404), (status = 422)
    )
)]
pub async fn create(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<UserPath>,
    ApiJson(body): ApiJson<CreateUserToken>,
) -> ApiResult<(StatusCode, Json<UserTokenCreated>)> {
    let user = find_user(&state, &p.user).await?;
    let (info, token) = crate::admin::people::create_personal_token(
        &state.store,
        &caller.actor(),
        &user,
        &body.name,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(UserTokenCreated {
            info,
            token: token.to_string(),
        }),
    ))
}

/// A user's personal tokens (never the tokens themselves).
#[utoipa::path(
    get, path = "/api/users/{user}/tokens", tag = "users", operation_id = "list_tokens", params(UserPath),
    responses((status = 200, description = "Oldest first; never the tokens themselves", body = Vec<UserToken>), (status = 401), (status = 403), (status = 404))
)]
pub async fn list(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<UserPath>,
) -> ApiResult<Json<Vec<UserToken>>> {
    let user = find_user(&state, &p.user).await?;
    Ok(Json(state.store.list_user_tokens(user.id).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct UserTokenPath {
    pub user: String,
    /// The token's id.
    pub id: i64,
}

/// Revoke a user's personal token.
#[utoipa::path(
    delete, path = "/api/users/{user}/tokens/{id}", tag = "users", operation_id = "revoke_token", params(UserTokenPath),
    responses((status = 204, description = "Revoked at once"), (status = 401), (status = 403), (status = 404))
)]
pub async fn revoke(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<UserTokenPath>,
) -> ApiResult<StatusCode> {
    let user = find_user(&state, &p.user).await?;
    if !state
        .store
        .delete_user_token(&caller.actor(), &user, p.id)
        .await?
    {
        return Err(ApiError::not_found(format!(
            "`{}` has no token with id {}",
            user.name, p.id
        )));
    }
    tracing::info!(user = %user.name, id = p.id, by = %caller, "personal token revoked");
    Ok(StatusCode::NO_CONTENT)
}
