//! The signed-in person's own page: the forge accounts they sign in with, one per
//! configured provider, with **Link** (a CSRF-checked form that starts the forge's
//! sign-in for linking: `oauth`) and **Unlink**. A link goes to whoever started it: the
//! callback checks that the browser is still signed in as that user. The page's
//! Content-Security-Policy lets its forms go on to the configured forges (`headers`).

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_SECURITY_POLICY;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::actions::csrf_refused;
use super::session::{self, SignedIn};
use super::view::ago;
use super::{Chrome, message_page_back, render, store_error};
use crate::daemon::state::AppState;

const ACCOUNT: &str = "/account";

pub struct ProviderRow {
    pub name: String,
    pub display: String,
    /// The linked account's login, empty when none is linked.
    pub login: String,
    pub linked: String,
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    chrome: Chrome,
    providers: Vec<ProviderRow>,
}

#[derive(Debug, Default, Deserialize)]
pub struct AccountQuery {
    #[serde(default)]
    linked: String,
    #[serde(default)]
    unlinked: String,
}

pub async fn page(
    State(state): State<AppState>,
    me: SignedIn,
    Query(q): Query<AccountQuery>,
) -> Response {
    let links = match state.store.oauth_links_of(me.session.user.id).await {
        Ok(l) => l,
        Err(e) => return store_error(e),
    };
    let now = state.store.now_ms();
    let providers = state
        .oauth
        .all()
        .map(|p| {
            let link = links.iter().find(|l| l.provider == p.name);
            ProviderRow {
                name: p.name.clone(),
                display: p.display_name.clone(),
                login: link.map(|l| l.login.clone()).unwrap_or_default(),
                linked: link.map(|l| ago(l.created_at, now)).unwrap_or_default(),
            }
        })
        .collect();
    let mut chrome = Chrome::of(&me);
    let display = |name: &str| {
        state
            .oauth
            .get(name)
            .map(|c| c.provider.display_name.clone())
    };
    if let Some(d) = display(&q.linked) {
        chrome.flash = format!("Your {d} account is linked: you can sign in with it.");
    } else if let Some(d) = display(&q.unlinked) {
        chrome.flash = format!("Your {d} account is unlinked.");
    }
    let mut page = render(&AccountPage { chrome, providers });
    // The Link forms lead (through redirects) to the forges' authorize pages.
    let origins: Vec<String> = state
        .oauth
        .all()
        .filter_map(|p| reqwest::Url::parse(&p.url).ok())
        .map(|u| u.origin().ascii_serialization())
        .collect();
    let csp = super::headers::csp_with_form_targets(origins.iter().map(String::as_str));
    if let Ok(v) = HeaderValue::from_str(&csp) {
        page.headers_mut().insert(CONTENT_SECURITY_POLICY, v);
    }
    page
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(rename = "_csrf", default)]
    csrf: String,
}

fn back_with(status: StatusCode, title: &str, message: String) -> Response {
    message_page_back(status, title, message, ACCOUNT)
}

/// `POST /account/oauth/{provider}/link`: off to the forge to link an account.
pub async fn link(
    State(state): State<AppState>,
    me: SignedIn,
    Path(provider): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    if !session::csrf_matches(&f.csrf, me.csrf()) {
        return csrf_refused();
    }
    let Some(client) = state.oauth.get(&provider) else {
        return back_with(
            StatusCode::NOT_FOUND,
            "Not found",
            "No such sign-in provider.".into(),
        );
    };
    super::oauth::begin(&state, client, ACCOUNT, Some(me.session.user.id)).await
}

/// `POST /account/oauth/{provider}/unlink`. A user made by signing in with a forge has
/// no password: unlinking their only account would lock them out, so it is refused.
pub async fn unlink(
    State(state): State<AppState>,
    me: SignedIn,
    Path(provider): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    if !session::csrf_matches(&f.csrf, me.csrf()) {
        return csrf_refused();
    }
    let user = &me.session.user;
    let has_password = match state.store.user_password_hash(&user.name).await {
        Ok(found) => found.is_some_and(|(_, h)| h != crate::store::oauth::NO_PASSWORD),
        Err(e) => return store_error(e),
    };
    let links = match state.store.oauth_links_of(user.id).await {
        Ok(l) => l,
        Err(e) => return store_error(e),
    };
    if !has_password && links.len() <= 1 {
        return back_with(
            StatusCode::CONFLICT,
            "Not unlinked",
            "You have no password: this account is how you sign in. Link another one first.".into(),
        );
    }
    match state
        .store
        .unlink_oauth(&format!("user:{}", user.name), user, &provider)
        .await
    {
        Ok(true) => Redirect::to(&format!(
            "{ACCOUNT}?unlinked={}",
            super::encode_component(&provider)
        ))
        .into_response(),
        Ok(false) => back_with(
            StatusCode::NOT_FOUND,
            "Not linked",
            "You have no account of that provider linked.".into(),
        ),
        Err(e) => store_error(e),
    }
}
