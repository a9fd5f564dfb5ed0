//! `GET /api/me`: who the presented token or session is, so a client (`slipway login`)
//! can check a token before storing it and show whom it acts as.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::auth::Caller;
use super::error::ApiResult;
use super::route_table::{Access, RouteTable};
use crate::daemon::state::AppState;
use crate::store::{RoleBinding, TokenScope};

pub fn routes() -> RouteTable {
    // Any valid token may ask who it is; what it may do is checked route by route.
    RouteTable::new().add(Access::Signed, routes!(show))
}

/// The caller: a user (through a personal token or a session) or a machine token.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    /// `user` or `token`.
    pub kind: String,
    /// The user's name, or the machine token's name.
    pub name: String,
    /// A machine token's scope (admin, runner or hook); None for a user.
    pub scope: Option<TokenScope>,
    /// A personal token's id (to revoke it); None for a session or a machine token.
    pub token_id: Option<i64>,
    /// A user's roles, global and per repository.
    pub roles: Vec<RoleBinding>,
}

/// Who the presented token is, with its roles or scope.
#[utoipa::path(
    get, path = "/api/me", tag = "users", operation_id = "me",
    responses((status = 200, body = Me), (status = 401), (status = 403, description = "A disabled user"))
)]
pub async fn show(caller: Caller, State(state): State<AppState>) -> ApiResult<Json<Me>> {
    Ok(Json(match &caller {
        Caller::Machine(t) => Me {
            kind: "token".into(),
            name: t.name.clone(),
            scope: Some(t.scope),
            token_id: Some(t.id),
            roles: Vec::new(),
        },
        Caller::User { user, token } => Me {
            kind: "user".into(),
            name: user.name.clone(),
            scope: None,
            token_id: Some(token.id),
            roles: state.store.roles_of(user.id).await?,
        },
        Caller::Session { user, .. } => Me {
            kind: "user".into(),
            name: user.name.clone(),
            scope: None,
            token_id: None,
            roles: state.store.roles_of(user.id).await?,
        },
    }))
}
