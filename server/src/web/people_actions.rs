//! The people page's forms (admin): add a user with a role, change or take away a role,
//! disable or enable a user, create and revoke personal and machine tokens. Each needs
//! the session's CSRF token and the admin role — what the API's routes for them need —
//! and the work is the API's own handlers (`api::users`, `api::user_tokens`,
//! `api::tokens`), called as the signed-in person: one set of rules (a name, a password
//! long enough, never leaving the server without an enabled admin) and one audit entry,
//! naming `user:<them>`, whichever way a change is made. A new token is shown once, on
//! a page that is not stored (`Cache-Control: no-store`).

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::header::CACHE_CONTROL;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::actions::{caller, csrf_refused};
use super::admin_pages::admin_only;
use super::session::{self, SignedIn};
use super::{Chrome, message_page_back, render};
use crate::api::error::ApiError;
use crate::api::extract::{ApiJson, ApiPath, ApiQuery};
use crate::api::tokens::{CreateToken, TokenPath};
use crate::api::user_tokens::{CreateUserToken, UserTokenPath};
use crate::api::users::{CreateUser, RoleQuery, SetRole, UpdateUser, UserPath};
use crate::daemon::state::AppState;
use crate::store::{Role, TokenScope};

/// Where every form goes back to.
const PEOPLE: &str = "/people";

/// The CSRF token and the admin role, checked before anything else.
fn refused(me: &SignedIn, csrf: &str) -> Option<Response> {
    if !session::csrf_matches(csrf, me.csrf()) {
        return Some(csrf_refused());
    }
    admin_only(me)
}

/// An API refusal as a page that links back to the people page.
fn not_done(title: &str, e: ApiError) -> Response {
    message_page_back(e.status, title, e.message, PEOPLE)
}

fn invalid(title: &str, message: String) -> Response {
    message_page_back(StatusCode::UNPROCESSABLE_ENTITY, title, message, PEOPLE)
}

/// Back to the people page, at `anchor`.
fn back(anchor: &str) -> Response {
    Redirect::to(&format!("{PEOPLE}#{anchor}")).into_response()
}

/// `""` → none; a role's name → the role.
fn role_field(s: &str) -> Result<Option<Role>, String> {
    match s.trim() {
        "" | "none" => Ok(None),
        r => r
            .parse::<Role>()
            .map(Some)
            .map_err(|_| format!("`{r}` is not a role")),
    }
}

/// An optional `owner/name` field.
fn repo_field(s: &str) -> Option<String> {
    Some(s.trim().to_string()).filter(|s| !s.is_empty())
}

#[derive(Deserialize)]
pub struct NewUserForm {
    #[serde(rename = "_csrf", default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    repo: String,
}

pub async fn create_user(
    State(state): State<AppState>,
    me: SignedIn,
    Form(f): Form<NewUserForm>,
) -> Response {
    let password = Zeroizing::new(f.password);
    if let Some(r) = refused(&me, &f.csrf) {
        return r;
    }
    let role = match role_field(&f.role) {
        Ok(r) => r,
        Err(e) => return invalid("The user was not added", e),
    };
    let body = CreateUser {
        name: f.name.trim().to_string(),
        password: password.to_string(),
        role,
        repo: repo_field(&f.repo),
    };
    match crate::api::users::create(caller(&me), State(state), ApiJson(body)).await {
        Ok((_, axum::Json(user))) => back(&format!("user-{}", user.user.name)),
        Err(e) => not_done("The user was not added", e),
    }
}

#[derive(Deserialize)]
pub struct RoleForm {
    #[serde(rename = "_csrf", default)]
    csrf: String,
    /// A role, or `none` to take the role there away.
    #[serde(default)]
    role: String,
    #[serde(default)]
    repo: String,
}

pub async fn set_role(
    State(state): State<AppState>,
    me: SignedIn,
    Path(user): Path<String>,
    Form(f): Form<RoleForm>,
) -> Response {
    if let Some(r) = refused(&me, &f.csrf) {
        return r;
    }
    let title = "The role was not changed";
    let repo = repo_field(&f.repo);
    let anchor = format!("user-{user}");
    let done = match role_field(&f.role) {
        Ok(Some(role)) => {
            crate::api::users::set_role(
                caller(&me),
                State(state),
                ApiPath(UserPath { user }),
                ApiJson(SetRole { role, repo }),
            )
            .await
        }
        Ok(None) => {
            crate::api::users::remove_role(
                caller(&me),
                State(state),
                ApiPath(UserPath { user }),
                ApiQuery(RoleQuery { repo }),
            )
            .await
        }
        Err(e) => return invalid(title, e),
    };
    match done {
        Ok(_) => back(&anchor),
        Err(e) => not_done(title, e),
    }
}

#[derive(Deserialize)]
pub struct DisableForm {
    #[serde(rename = "_csrf", default)]
    csrf: String,
    /// `true` to disable, `false` to enable again.
    #[serde(default)]
    disabled: String,
}

pub async fn set_disabled(
    State(state): State<AppState>,
    me: SignedIn,
    Path(user): Path<String>,
    Form(f): Form<DisableForm>,
) -> Response {
    if let Some(r) = refused(&me, &f.csrf) {
        return r;
    }
    let anchor = format!("user-{user}");
    let body = UpdateUser {
        disabled: Some(f.disabled == "true"),
    };
    match crate::api::users::update(
        caller(&me),
        State(state),
        ApiPath(UserPath { user }),
        ApiJson(body),
    )
    .await
    {
        Ok(_) => back(&anchor),
        Err(e) => not_done("The user was not changed", e),
    }
}

#[derive(Deserialize)]
pub struct TokenForm {
    #[serde(rename = "_csrf", default)]
    csrf: String,
    #[serde(default)]
    name: String,
    /// A machine token's scope.
    #[serde(default)]
    scope: String,
    /// A runner token: only this owner's repositories (empty: not limited by owner).
    #[serde(default)]
    owner: String,
    /// Runner and hook tokens: these repositories, separated by spaces or commas.
    #[serde(default)]
    repos: String,
}

#[derive(Template)]
#[template(path = "token_created.html")]
struct TokenCreatedPage {
    chrome: Chrome,
    /// Whose: `alice` for a personal token, `admin`/`runner`/`hook` scope for a machine one.
    owner: String,
    name: String,
    token: Zeroizing<String>,
}

/// The new token, this once; never stored by the browser or a proxy.
fn show_once(me: &SignedIn, owner: String, name: String, token: Zeroizing<String>) -> Response {
    let mut r = render(&TokenCreatedPage {
        chrome: Chrome::of(me),
        owner,
        name,
        token,
    });
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub async fn create_user_token(
    State(state): State<AppState>,
    me: SignedIn,
    Path(user): Path<String>,
    Form(f): Form<TokenForm>,
) -> Response {
    if let Some(r) = refused(&me, &f.csrf) {
        return r;
    }
    let owner = user.clone();
    match crate::api::user_tokens::create(
        caller(&me),
        State(state),
        ApiPath(UserPath { user }),
        ApiJson(CreateUserToken { name: f.name }),
    )
    .await
    {
        Ok((_, axum::Json(created))) => show_once(
            &me,
            format!("personal token of {owner}"),
            created.info.name,
            Zeroizing::new(created.token),
        ),
        Err(e) => not_done("The token was not created", e),
    }
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(rename = "_csrf", default)]
    csrf: String,
}

pub async fn revoke_user_token(
    State(state): State<AppState>,
    me: SignedIn,
    Path((user, id)): Path<(String, i64)>,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Some(r) = refused(&me, &f.csrf) {
        return r;
    }
    let anchor = format!("user-{user}");
    match crate::api::user_tokens::revoke(
        caller(&me),
        State(state),
        ApiPath(UserTokenPath { user, id }),
    )
    .await
    {
        Ok(_) => back(&anchor),
        Err(e) => not_done("The token was not revoked", e),
    }
}

pub async fn create_machine_token(
    State(state): State<AppState>,
    me: SignedIn,
    Form(f): Form<TokenForm>,
) -> Response {
    if let Some(r) = refused(&me, &f.csrf) {
        return r;
    }
    let Ok(scope) = f.scope.parse::<TokenScope>() else {
        return invalid(
            "The token was not created",
            format!("`{}` is not a scope (admin, runner or hook)", f.scope),
        );
    };
    match crate::api::tokens::create(
        caller(&me),
        State(state),
        ApiJson(CreateToken {
            name: f.name,
            scope,
            owner: Some(f.owner.trim().to_string()).filter(|o| !o.is_empty()),
            repos: f
                .repos
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|r| !r.is_empty())
                .map(str::to_string)
                .collect(),
        }),
    )
    .await
    {
        Ok((_, axum::Json(created))) => show_once(
            &me,
            format!("{scope} machine token"),
            created.info.name,
            Zeroizing::new(created.token),
        ),
        Err(e) => not_done("The token was not created", e),
    }
}

pub async fn revoke_machine_token(
    State(state): State<AppState>,
    me: SignedIn,
    Path(id): Path<i64>,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Some(r) = refused(&me, &f.csrf) {
        return r;
    }
    match crate::api::tokens::remove(caller(&me), State(state), ApiPath(TokenPath { id })).await {
        Ok(_) => back("tokens"),
        Err(e) => not_done("The token was not revoked", e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_fields_are_a_role_or_none() {
        assert_eq!(
            role_field("release-manager"),
            Ok(Some(Role::ReleaseManager))
        );
        assert_eq!(role_field(" none "), Ok(None));
        assert_eq!(role_field(""), Ok(None));
        assert!(role_field("root").is_err());
        assert_eq!(repo_field("  "), None);
        assert_eq!(repo_field(" team/app "), Some("team/app".into()));
    }
}
