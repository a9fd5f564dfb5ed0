//! Sign-in and sign-out. A wrong name and a wrong password get the same answer; the
//! password check (argon2id) runs off the async threads. A sign-in form posted from
//! another site is refused (its `Origin` is not this server's).

use askama::Template;
use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::session::{self, SESSION_TTL_MS, SignedIn};
use super::{Chrome, render, safe_next};
use crate::daemon::state::AppState;

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    chrome: Chrome,
    next: String,
    name: String,
    error: String,
    /// "Sign in with …" buttons, one per configured forge (`oauth`).
    forges: Vec<ForgeButton>,
}

pub struct ForgeButton {
    pub href: String,
    pub label: String,
}

/// A link per configured provider to `/login/oauth/{name}`, carrying `next`.
fn forge_buttons(state: &AppState, next: &str) -> Vec<ForgeButton> {
    state
        .oauth
        .all()
        .map(|p| ForgeButton {
            href: format!(
                "/login/oauth/{}?next={}",
                p.name,
                super::encode_component(next)
            ),
            label: format!("Sign in with {}", p.display_name),
        })
        .collect()
}

#[derive(Debug, Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

pub async fn form(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Response {
    let next = safe_next(q.next.as_deref().unwrap_or("/"));
    if let Some(token) = session::cookie_token(&headers)
        && let Ok(Some(_)) = state.store.find_session(&token).await
    {
        return Redirect::to(&next).into_response();
    }
    render(&LoginPage {
        chrome: Chrome::default(),
        forges: forge_buttons(&state, &next),
        next,
        name: String::new(),
        error: String::new(),
    })
}

#[derive(Debug, Deserialize)]
pub struct SignIn {
    name: String,
    password: String,
    #[serde(default)]
    next: String,
}

/// Whether a form post came from this server's own pages: a browser sends `Origin` on
/// every cross-site POST, and it must name the host the request was sent to.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get("origin").and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let origin_host = origin
        .split_once("://")
        .map_or(origin, |(_, rest)| rest)
        .trim_end_matches('/');
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

pub async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<SignIn>,
) -> Response {
    if !same_origin(&headers) {
        return super::message_page(
            StatusCode::FORBIDDEN,
            "Refused",
            "This sign-in form was posted from another site.".into(),
        );
    }
    let next = safe_next(if f.next.is_empty() { "/" } else { &f.next });
    let found = match state.store.user_password_hash(&f.name).await {
        Ok(found) => found,
        Err(e) => return super::error_page(e.to_string()),
    };
    let password = zeroize::Zeroizing::new(f.password);
    let user = match found {
        Some((user, hash)) if !user.disabled => {
            let ok = tokio::task::spawn_blocking(move || {
                crate::crypto::verify_password(password.as_str(), &hash)
            })
            .await
            .unwrap_or(false);
            ok.then_some(user)
        }
        _ => {
            // The same work as for a real user, so timing does not tell who exists.
            tokio::task::spawn_blocking(move || {
                crate::crypto::verify_password(password.as_str(), dummy_hash())
            })
            .await
            .ok();
            None
        }
    };
    let Some(user) = user else {
        tracing::info!(name = %f.name, "sign-in refused");
        let mut page = render(&LoginPage {
            chrome: Chrome::default(),
            forges: forge_buttons(&state, &next),
            next,
            name: f.name,
            error: "Wrong name or password.".into(),
        });
        *page.status_mut() = StatusCode::UNAUTHORIZED;
        return page;
    };
    match state.store.create_session(&user, SESSION_TTL_MS).await {
        Ok((token, _)) => {
            tracing::info!(user = %user.name, "signed in");
            session::with_cookie(&state, Some(&token), Redirect::to(&next))
        }
        Err(e) => super::error_page(e.to_string()),
    }
}

/// An argon2id hash of nothing anyone knows, checked when the name is unknown.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        crate::crypto::hash_password(&crate::crypto::generate_token("")).unwrap_or_default()
    })
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(rename = "_csrf", default)]
    csrf: String,
}

pub async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    me: SignedIn,
    Form(f): Form<CsrfForm>,
) -> Response {
    if !session::csrf_matches(&f.csrf, me.csrf()) {
        return super::actions::csrf_refused();
    }
    if let Some(token) = session::cookie_token(&headers)
        && let Err(e) = state.store.delete_session(&token).await
    {
        return super::error_page(e.to_string());
    }
    session::with_cookie(&state, None, Redirect::to("/login"))
}
