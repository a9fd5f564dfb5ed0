//! The repository page's forms: trigger a run with parameters (developer), add and
//! delete secrets (admin). Each needs the session's CSRF token and the role its API
//! route needs; the work is the API's own (handlers or `admin::repos`).

use axum::Form;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::actions::csrf_refused;
use super::dashboard::find_visible;
use super::session::{self, SignedIn};
use super::{message_page, store_error};
use crate::api::auth::Caller;
use crate::api::extract::ApiPath;
use crate::api::repos::RepoPath;
use crate::daemon::state::AppState;
use crate::store::{Repo, Role};

/// The repository, if `me` may see it and has `needed` there.
async fn with_role(
    state: &AppState,
    me: &SignedIn,
    owner: &str,
    name: &str,
    needed: Role,
) -> Result<Repo, Response> {
    let repo = find_visible(state, me, owner, name).await?;
    let role = state
        .store
        .effective_role(me.session.user.id, Some(repo.id))
        .await
        .map_err(store_error)?;
    if role < Some(needed) {
        return Err(message_page(
            StatusCode::FORBIDDEN,
            "Refused",
            format!("This needs the {needed} role on {}.", repo.name),
        ));
    }
    Ok(repo)
}

#[derive(Debug, Deserialize)]
pub struct TriggerForm {
    #[serde(rename = "_csrf", default)]
    csrf: String,
    #[serde(default)]
    branch: String,
    #[serde(default)]
    params: String,
}

pub async fn trigger(
    State(state): State<AppState>,
    me: SignedIn,
    Path((owner, name)): Path<(String, String)>,
    Form(f): Form<TriggerForm>,
) -> Response {
    if !session::csrf_matches(&f.csrf, me.csrf()) {
        return csrf_refused();
    }
    if let Err(page) = with_role(&state, &me, &owner, &name, Role::Developer).await {
        return page;
    }
    let mut params = serde_json::Map::new();
    for line in f.params.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let Some((k, v)) = line.split_once('=') else {
            return message_page(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Not a parameter",
                format!("`{line}` is not KEY=VALUE."),
            );
        };
        params.insert(k.trim().to_string(), v.trim().into());
    }
    let mut body = serde_json::json!({ "params": params });
    if !f.branch.trim().is_empty() {
        body["branch"] = f.branch.trim().into();
    }
    let caller = Caller::Session {
        user: me.session.user.clone(),
        csrf: me.session.csrf.clone(),
    };
    let path = RepoPath {
        owner: owner.clone(),
        name: name.clone(),
    };
    match crate::api::trigger::trigger(
        caller,
        State(state),
        ApiPath(path),
        Bytes::from(body.to_string()),
    )
    .await
    {
        Ok((_, axum::Json(run))) => Redirect::to(&format!(
            "/repos/{}/runs/{}",
            crate::admin::repos::url_path(&format!("{owner}/{name}")),
            run.number
        ))
        .into_response(),
        Err(e) => message_page(e.status, "The run was not started", e.message),
    }
}

#[derive(Debug, Deserialize)]
pub struct SecretForm {
    #[serde(rename = "_csrf", default)]
    csrf: String,
    name: String,
    value: String,
    #[serde(default)]
    allow_pull_requests: Option<String>,
}

pub async fn add_secret(
    State(state): State<AppState>,
    me: SignedIn,
    Path((owner, name)): Path<(String, String)>,
    Form(f): Form<SecretForm>,
) -> Response {
    let value = Zeroizing::new(f.value);
    if !session::csrf_matches(&f.csrf, me.csrf()) {
        return csrf_refused();
    }
    let repo = match with_role(&state, &me, &owner, &name, Role::Admin).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    let allow = f.allow_pull_requests.as_deref() == Some("true");
    match crate::admin::repos::put_secret(&state, &repo, &f.name, value.as_bytes(), allow).await {
        Ok(_) => {
            tracing::info!(repo = %repo.name, secret = %f.name, by = %me.name(), "secret set (web)");
            Redirect::to(&format!(
                "/repos/{}#secrets",
                crate::admin::repos::url_path(&repo.name)
            ))
            .into_response()
        }
        Err(e) => message_page(
            StatusCode::UNPROCESSABLE_ENTITY,
            "The secret was not stored",
            e.to_string(),
        ),
    }
}

#[derive(Debug, Deserialize)]
pub struct CsrfOnly {
    #[serde(rename = "_csrf", default)]
    csrf: String,
}

pub async fn delete_secret(
    State(state): State<AppState>,
    me: SignedIn,
    Path((owner, name, secret)): Path<(String, String, String)>,
    Form(f): Form<CsrfOnly>,
) -> Response {
    if !session::csrf_matches(&f.csrf, me.csrf()) {
        return csrf_refused();
    }
    let repo = match with_role(&state, &me, &owner, &name, Role::Admin).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    match state.store.delete_secret(repo.id, &secret).await {
        Ok(_) => {
            tracing::info!(repo = %repo.name, secret = %secret, by = %me.name(), "secret deleted (web)");
            Redirect::to(&format!(
                "/repos/{}#secrets",
                crate::admin::repos::url_path(&repo.name)
            ))
            .into_response()
        }
        Err(e) => store_error(e),
    }
}
