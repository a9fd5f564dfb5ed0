//! Machine API tokens (admin, runner, hook): create (shown once), list, delete. Admin
//! only; runner tokens may be limited to an owner's or named repositories and a hook
//! token is bound to one repository ([`token_scope`]); each creation and deletion is in the audit log. Personal tokens: `api::users`.
//!
//! Tokens are 256-bit random strings; the store keeps only their SHA-256
//! (`crypto::hash_token`), so a database leak yields nothing that authenticates.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;
use zeroize::Zeroizing;

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiPath};
use super::route_table::{Access, RouteTable};
use crate::admin::token_scope;
use crate::daemon::state::AppState;
use crate::store::{ApiToken, RepoScope, Role, Store, TokenScope, audit};

pub fn routes() -> RouteTable {
    RouteTable::new()
        .add(Access::Role(Role::Admin), routes!(create))
        .add(Access::Role(Role::Admin), routes!(list))
        .add(Access::Role(Role::Admin), routes!(remove))
}

/// The prefix of every token, so secret scanners can recognise leaked ones.
pub const TOKEN_PREFIX: &str = "slp_";

/// Creates a token for every repository and returns it in clear, the only time it
/// exists outside the caller; the audit log names the server itself as its maker
/// ([`create_token_as`] names one and limits it to repositories). A hook token made
/// here is bound to no repository, so the hook endpoint refuses it.
pub async fn create_token(
    store: &Store,
    name: &str,
    scope: TokenScope,
) -> Result<(ApiToken, Zeroizing<String>), ApiError> {
    store_token(store, audit::SYSTEM, name, scope, &RepoScope::All).await
}

/// A token on behalf of `actor` (as the audit log names it), for the repositories
/// `owner` and `repos` name (checked by [`token_scope::for_new_token`]: a hook token
/// names exactly one). Shared by the API and `slipway token create`.
pub async fn create_token_as(
    store: &Store,
    actor: &str,
    name: &str,
    scope: TokenScope,
    owner: Option<&str>,
    repos: &[String],
) -> Result<(ApiToken, Zeroizing<String>), ApiError> {
    let limit = token_scope::for_new_token(scope, owner, repos)?;
    store_token(store, actor, name, scope, &limit).await
}

async fn store_token(
    store: &Store,
    actor: &str,
    name: &str,
    scope: TokenScope,
    repos: &RepoScope,
) -> Result<(ApiToken, Zeroizing<String>), ApiError> {
    let name = crate::admin::people::token_name(name)?;
    let token = Zeroizing::new(crate::crypto::generate_token(TOKEN_PREFIX));
    let stored = store
        .create_scoped_token_by(
            actor,
            name,
            &crate::crypto::hash_token(&token),
            scope,
            repos,
        )
        .await?;
    tracing::info!(token = %stored.name, id = stored.id, scope = %scope, repos = %repos, "API token created");
    Ok((stored, token))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    pub scope: TokenScope,
    /// Runner tokens: only the repositories of this owner.
    #[serde(default)]
    pub owner: Option<String>,
    /// Runner tokens: only these repositories (`owner/name`); hook tokens: exactly one.
    #[serde(default)]
    pub repos: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TokenCreated {
    #[serde(flatten)]
    pub info: ApiToken,
    /// Shown only here: it cannot be read again.
    pub token: String,
}

/// Create a machine token (admin, runner or hook); shown only this once.
#[utoipa::path(
    post, path = "/api/tokens", tag = "tokens", request_body = CreateToken,
    responses(
        (status = 201, description = "Created; the token is shown only here", body = TokenCreated),
        (status = 401), (status = 403), (status = 422)
    )
)]
pub async fn create(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateToken>,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    let (info, token) = create_token_as(
        &state.store,
        &caller.actor(),
        &body.name,
        body.scope,
        body.owner.as_deref(),
        &body.repos,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            info,
            token: token.to_string(),
        }),
    ))
}

/// Machine tokens (never the tokens themselves).
#[utoipa::path(
    get, path = "/api/tokens", tag = "tokens",
    responses((status = 200, description = "Oldest first; never the tokens themselves", body = Vec<ApiToken>), (status = 401), (status = 403))
)]
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<Vec<ApiToken>>> {
    Ok(Json(state.store.list_tokens().await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TokenPath {
    pub id: i64,
}

/// Revoke a machine token.
#[utoipa::path(
    delete, path = "/api/tokens/{id}", tag = "tokens", params(TokenPath),
    responses((status = 204, description = "Revoked at once"), (status = 401), (status = 403), (status = 404))
)]
pub async fn remove(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<TokenPath>,
) -> ApiResult<StatusCode> {
    if !state.store.delete_token_by(&caller.actor(), p.id).await? {
        return Err(ApiError::not_found(format!("no token with id {}", p.id)));
    }
    tracing::info!(id = p.id, by = %caller, "API token deleted");
    Ok(StatusCode::NO_CONTENT)
}
