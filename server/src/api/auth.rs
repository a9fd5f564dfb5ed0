//! Who is calling, and whether they may: the check the route table puts in front of
//! every route that is not public ([`guard`]), so no handler can forget it.
//!
//! A caller presents a bearer token: a machine token (scope admin, runner or hook) or a
//! user's personal token (`slpu_…`), which acts with that user's roles. Tokens are random
//! and high-entropy, so the store keeps only their SHA-256 and a lookup by hash is both
//! fast and safe. A handler that needs to know who called takes [`Caller`].

use axum::extract::{FromRequestParts, RawPathParams, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, ApiResult};
use crate::admin::people::USER_TOKEN_PREFIX;
use crate::crypto::hash_token;
use crate::daemon::state::AppState;
use crate::store::{self, ApiToken, RepoId, Role, TokenScope, User, UserToken};

/// What a caller must present to use a route, declared once per route in the route
/// table, which puts [`guard`] in front of the route to enforce it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token. Every use says why in a comment.
    Public,
    /// A user with at least this role on the route's repository ([`RepoIn`]; the higher
    /// of their global role and their role there), or globally when the path names
    /// none; or an admin token.
    Role(Role),
    /// A user with at least this role globally or on any one repository (or an admin
    /// token), for a list the handler cuts down to what the caller may see
    /// ([`visible_to`]).
    AnyRole(Role),
    /// The user the path names (`{user}`), or an admin (user or token): a user's own
    /// tokens.
    SelfOrAdmin,
    /// A runner token (an admin token too).
    Runner,
    /// A post-receive hook token (an admin token too).
    Hook,
    /// Any valid token or session, whatever it may do elsewhere: for "who am I".
    Signed,
}

impl Access {
    /// The machine token scope that passes (admin passes everywhere); `None` for a
    /// public route.
    pub fn scope(self) -> Option<TokenScope> {
        match self {
            Access::Public => None,
            Access::Role(_) | Access::AnyRole(_) | Access::SelfOrAdmin | Access::Signed => {
                Some(TokenScope::Admin)
            }
            Access::Runner => Some(TokenScope::Runner),
            Access::Hook => Some(TokenScope::Hook),
        }
    }
}

/// Who made a request, as the route's check established.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A machine token (admin, runner, hook).
    Machine(ApiToken),
    /// A person, through one of their personal tokens.
    User { user: User, token: UserToken },
    /// A person signed in to the web UI (the session cookie); state-changing requests
    /// must carry the session's CSRF token.
    Session { user: User, csrf: String },
}

impl Caller {
    /// The caller as the audit log names it: `user:<name>` or `token:<name>`.
    pub fn actor(&self) -> String {
        match self {
            Caller::Machine(t) => format!("token:{}", t.name),
            Caller::User { user, .. } | Caller::Session { user, .. } => {
                format!("user:{}", user.name)
            }
        }
    }

    /// The token's name (machine) or the user's name (personal), for messages.
    pub fn name(&self) -> &str {
        match self {
            Caller::Machine(t) => &t.name,
            Caller::User { user, .. } | Caller::Session { user, .. } => &user.name,
        }
    }

    /// The user behind a personal token.
    pub fn user(&self) -> Option<&User> {
        match self {
            Caller::Machine(_) => None,
            Caller::User { user, .. } | Caller::Session { user, .. } => Some(user),
        }
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.actor())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::internal("a public route asked who called"))
    }
}

/// Where a route's repository is named, read off its path template: the role a user
/// needs is checked on that repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoIn {
    /// Nowhere: roles are checked globally.
    Nowhere,
    /// `/api/repos/{owner}/{name}/…`.
    Path,
    /// `/api/runs/{id}/…`: the run's repository.
    Run,
    /// `/api/artifacts/{id}/…`: the repository of the artifact's run.
    Artifact,
}

impl RepoIn {
    pub fn of(template: &str) -> RepoIn {
        if template.starts_with("/api/repos/{owner}/{name}") {
            RepoIn::Path
        } else if template.starts_with("/api/runs/{id}") {
            RepoIn::Run
        } else if template.starts_with("/api/artifacts/{id}") {
            RepoIn::Artifact
        } else {
            RepoIn::Nowhere
        }
    }
}

/// The middleware every guarded route runs behind: establishes the [`Caller`], checks
/// it against the route's [`Access`], and hands it to the handler.
pub async fn guard(
    state: AppState,
    access: Access,
    repo_in: RepoIn,
    req: Request,
    next: Next,
) -> Response {
    if access == Access::Public {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let caller = match identify(&state, &parts).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = permit(&state, access, repo_in, &caller, &mut parts).await {
        return e.into_response();
    }
    parts.extensions.insert(caller);
    next.run(Request::from_parts(parts, body)).await
}

/// The caller behind the request's bearer token — or, without one, the web UI's
/// session cookie: 401 without a known one, 403 for a disabled user or a
/// state-changing request from a session without its CSRF token.
async fn identify(state: &AppState, parts: &Parts) -> ApiResult<Caller> {
    let Some(header) = parts.headers.get(AUTHORIZATION) else {
        return identify_session(state, parts).await;
    };
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer <token>"))?;
    let unknown = || ApiError::unauthorized("unknown token");
    if token.starts_with(USER_TOKEN_PREFIX) {
        let (token, user) = state
            .store
            .find_user_token_by_hash(&hash_token(token))
            .await?
            .ok_or_else(unknown)?;
        if user.disabled {
            return Err(ApiError::forbidden(format!(
                "user `{}` is disabled; an admin can enable them again",
                user.name
            )));
        }
        return Ok(Caller::User { user, token });
    }
    let found = state
        .store
        .find_token_by_hash(&hash_token(token))
        .await?
        .ok_or_else(unknown)?;
    Ok(Caller::Machine(found))
}

/// The signed-in user of a web UI session, for the page's own API calls (log lines,
/// live events, votes). A request that changes something must carry the session's
/// CSRF token in `X-CSRF-Token`, so another site cannot make the browser act.
async fn identify_session(state: &AppState, parts: &Parts) -> ApiResult<Caller> {
    let missing = || ApiError::unauthorized("missing Authorization: Bearer <token>");
    let token = crate::web::session::cookie_token(&parts.headers).ok_or_else(missing)?;
    let session = state
        .store
        .find_session(&token)
        .await?
        .ok_or_else(|| ApiError::unauthorized("the session has ended; sign in again"))?;
    let safe = matches!(parts.method.as_str(), "GET" | "HEAD" | "OPTIONS");
    if !safe {
        let sent = parts
            .headers
            .get(crate::web::session::CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !crate::web::session::csrf_matches(sent, &session.csrf) {
            return Err(ApiError::forbidden(
                "missing or wrong CSRF token (X-CSRF-Token)",
            ));
        }
    }
    Ok(Caller::Session {
        user: session.user,
        csrf: session.csrf,
    })
}

/// Whether `caller` may use a route of this access (403 with the reason if not).
async fn permit(
    state: &AppState,
    access: Access,
    repo_in: RepoIn,
    caller: &Caller,
    parts: &mut Parts,
) -> ApiResult<()> {
    if access == Access::Signed {
        return Ok(());
    }
    let user = match caller {
        Caller::Machine(token) => {
            let needed = access.scope().unwrap_or(TokenScope::Admin);
            if token.scope == needed || token.scope == TokenScope::Admin {
                return Ok(());
            }
            return Err(ApiError::forbidden(format!(
                "this token has scope `{}`; `{needed}` is needed",
                token.scope
            )));
        }
        Caller::User { user, .. } | Caller::Session { user, .. } => user,
    };
    match access {
        Access::Public | Access::Signed => Ok(()),
        Access::Runner | Access::Hook => Err(ApiError::forbidden(format!(
            "a personal token cannot be used here: this route needs a `{}` token",
            access.scope().unwrap_or(TokenScope::Admin)
        ))),
        Access::Role(needed) => {
            let repo = repo_of(state, repo_in, parts).await?;
            let has = state
                .store
                .effective_role(user.id, repo.as_ref().map(|r| r.0))
                .await?;
            if has >= Some(needed) {
                return Ok(());
            }
            let place = repo.map_or("globally".to_string(), |(_, name)| format!("on {name}"));
            let is = has.map_or("has no role".to_string(), |r| format!("is {r}"));
            Err(ApiError::forbidden(format!(
                "user `{}` {is} {place}; this needs {needed}",
                user.name
            )))
        }
        Access::AnyRole(needed) => {
            let best = state
                .store
                .roles_of(user.id)
                .await?
                .into_iter()
                .map(|b| b.role)
                .max();
            if best >= Some(needed) {
                return Ok(());
            }
            Err(ApiError::forbidden(format!(
                "user `{}` is not {needed} anywhere; this needs {needed} globally or on a \
                 repository",
                user.name
            )))
        }
        Access::SelfOrAdmin => {
            let params = path_params(parts).await?;
            let named = params.iter().find(|(k, _)| k == "user").map(|(_, v)| v);
            if named == Some(&user.name)
                || state.store.effective_role(user.id, None).await? == Some(Role::Admin)
            {
                return Ok(());
            }
            Err(ApiError::forbidden(format!(
                "only that user or an admin may do this; `{}` is neither",
                user.name
            )))
        }
    }
}

async fn path_params(parts: &mut Parts) -> ApiResult<Vec<(String, String)>> {
    let params = RawPathParams::from_request_parts(parts, &())
        .await
        .map_err(|e| ApiError::bad_request(e.body_text()))?;
    Ok(params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// The repository the path names (id and name), if it exists: a role on a repository
/// that does not exist counts for nothing, so only global roles apply (and the handler
/// answers 404).
async fn repo_of(
    state: &AppState,
    repo_in: RepoIn,
    parts: &mut Parts,
) -> ApiResult<Option<(RepoId, String)>> {
    if repo_in == RepoIn::Nowhere {
        return Ok(None);
    }
    let params = path_params(parts).await?;
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    };
    let id = || param("id").parse::<i64>().ok();
    let found = match repo_in {
        RepoIn::Nowhere => return Ok(None),
        RepoIn::Path => {
            let name = format!("{}/{}", param("owner"), param("name"));
            state.store.get_repo_by_name(&name).await
        }
        RepoIn::Run => match id() {
            Some(id) => match state.store.get_run(id).await {
                Ok(run) => state.store.get_repo(run.repo_id).await,
                Err(e) => Err(e),
            },
            None => return Ok(None),
        },
        RepoIn::Artifact => match id() {
            Some(id) => match state.store.get_artifact(id).await {
                Ok(a) => match state.store.get_run(a.run_id).await {
                    Ok(run) => state.store.get_repo(run.repo_id).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
            None => return Ok(None),
        },
    };
    match found {
        Ok(repo) => Ok(Some((repo.id, repo.name))),
        Err(store::Error::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Of `repos`, those `caller` may see with `role`: every one for a machine token (only
/// an admin token gets this far) or a user with the role globally; else the ones the
/// user has the role on.
pub async fn visible_to<T>(
    state: &AppState,
    caller: &Caller,
    role: Role,
    repos: Vec<T>,
    repo_id: impl Fn(&T) -> RepoId,
) -> ApiResult<Vec<T>> {
    let Some(user) = caller.user() else {
        return Ok(repos);
    };
    let bindings = state.store.roles_of(user.id).await?;
    let global = bindings
        .iter()
        .filter(|b| b.repo_id.is_none())
        .map(|b| b.role)
        .max();
    if global >= Some(role) {
        return Ok(repos);
    }
    Ok(repos
        .into_iter()
        .filter(|r| {
            bindings
                .iter()
                .any(|b| b.repo_id == Some(repo_id(r)) && b.role >= role)
        })
        .collect())
}
