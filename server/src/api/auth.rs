//! Bearer-token authentication. Tokens are random and high-entropy, so the store keeps
//! only their SHA-256 and a lookup by hash is both fast and safe.
//!
//! A handler takes the extractor of the access its route declares in the route table
//! ([`super::route_table::Access`]); `api::tests` checks every route against it.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::error::ApiError;
use crate::crypto::hash_token;
use crate::daemon::state::AppState;
use crate::store::{ApiToken, TokenScope};

/// Looks up the bearer token of a request and checks it grants `scope` (an admin token
/// grants every scope).
pub async fn require(
    state: &AppState,
    parts: &Parts,
    scope: TokenScope,
) -> Result<ApiToken, ApiError> {
    let header = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer <token>"))?;
    let found = state
        .store
        .find_token_by_hash(&hash_token(token))
        .await?
        .ok_or_else(|| ApiError::unauthorized("unknown token"))?;
    if found.scope != scope && found.scope != TokenScope::Admin {
        return Err(ApiError::forbidden(format!(
            "this token has scope `{}`; `{scope}` is needed",
            found.scope
        )));
    }
    Ok(found)
}

macro_rules! scoped_extractor {
    ($(#[$meta:meta])* $name:ident, $scope:expr) => {
        $(#[$meta])*
        pub struct $name(pub ApiToken);

        impl FromRequestParts<AppState> for $name {
            type Rejection = ApiError;
            async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
                require(state, parts, $scope).await.map($name)
            }
        }
    };
}

scoped_extractor!(
    /// A request made with an admin token.
    Admin,
    TokenScope::Admin
);
scoped_extractor!(
    /// A request made by a runner (or an admin).
    RunnerAuth,
    TokenScope::Runner
);
scoped_extractor!(
    /// A request made by a post-receive hook (or an admin).
    HookAuth,
    TokenScope::Hook
);
