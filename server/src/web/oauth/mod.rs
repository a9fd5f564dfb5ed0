//! Signing in with a forge (OAuth2 authorization code, PKCE S256 where the forge has
//! it): `GET /login/oauth/{provider}` sends the browser to the forge with a random
//! `state`, kept in an `HttpOnly`, `SameSite=Lax` cookie scoped to `/login/oauth` and,
//! hashed, in the database with the PKCE verifier (`store::oauth`); the forge sends it
//! back to `/login/oauth/{provider}/callback`, which compares the `state` with the
//! cookie in constant time, takes the stored row (once: a replay finds nothing), swaps
//! the code for a token, reads the user, and signs in the user linked to that forge
//! account (by its stable id), or links it to the signed-in user who asked (`link`; started from `web::account`).
//! The access token is dropped once the user is read.

pub mod clients;
mod exchange;
mod link;
pub mod provider;
pub mod settings;
mod sign_in;

use axum::extract::{Path, Query, State};
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::{message_page, safe_next};
use crate::daemon::state::AppState;
use crate::store::UserId;
use crate::store::oauth::NewOAuthState;
use clients::Client;
use exchange::ExchangeError;

/// The cookie that binds a sign-in under way to the browser that started it.
pub const STATE_COOKIE: &str = "slipway_oauth";
/// How long a sign-in at the forge may take.
pub const STATE_TTL_MS: i64 = 10 * 60 * 1000;

/// `{public_url}/login/oauth/{provider}/callback`: what the forge's OAuth app must be
/// registered with.
pub fn redirect_uri(state: &AppState, provider: &str) -> String {
    format!(
        "{}/login/oauth/{provider}/callback",
        state.config.public_url
    )
}

fn state_cookie(state: &AppState, value: Option<&str>) -> HeaderValue {
    let secure = if state.config.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let (v, age) = match value {
        Some(v) => (v, STATE_TTL_MS / 1000),
        None => ("", 0),
    };
    let text = format!(
        "{STATE_COOKIE}={v}; Path=/login/oauth; HttpOnly; SameSite=Lax; Max-Age={age}{secure}"
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn cookie_state(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == STATE_COOKIE)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Starts a sign-in (or, with `link_user`, a link) at `provider`: records the state and
/// sends the browser to the forge.
pub(super) async fn begin(
    state: &AppState,
    client: &Client,
    next: &str,
    link_user: Option<UserId>,
) -> Response {
    let provider = &client.provider.name;
    let state_value = crate::crypto::generate_token("");
    let verifier = zeroize::Zeroizing::new(crate::crypto::generate_token(""));
    let stored = state
        .store
        .create_oauth_state(&NewOAuthState {
            state_hash: &crate::crypto::hash_token(&state_value),
            provider,
            code_verifier: &verifier,
            next,
            link_user,
            ttl_ms: STATE_TTL_MS,
        })
        .await;
    if let Err(e) = stored {
        return super::store_error(e);
    }
    let challenge = provider::pkce_challenge(&verifier);
    let url = match exchange::authorize_url(
        client,
        &redirect_uri(state, provider),
        &state_value,
        &challenge,
    ) {
        Ok(u) => u,
        Err(e) => return super::error_page(e.to_string()),
    };
    let mut r = Redirect::to(&url).into_response();
    r.headers_mut()
        .append(SET_COOKIE, state_cookie(state, Some(&state_value)));
    r
}

#[derive(Debug, Deserialize)]
pub struct StartQuery {
    next: Option<String>,
}

/// `GET /login/oauth/{provider}`: the sign-in button.
pub async fn start(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    Query(q): Query<StartQuery>,
) -> Response {
    let Some(client) = state.oauth.get(&provider) else {
        return unknown_provider(&provider);
    };
    let next = safe_next(q.next.as_deref().unwrap_or("/"));
    begin(&state, client, &next, None).await
}

fn unknown_provider(provider: &str) -> Response {
    message_page(
        StatusCode::NOT_FOUND,
        "Not found",
        format!(
            "No sign-in provider named `{}` is configured.",
            provider.chars().take(40).collect::<String>()
        ),
    )
}

#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// `GET /login/oauth/{provider}/callback`: where the forge sends the browser back.
/// Every answer clears the state cookie: a state is good for one try.
pub async fn callback(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let mut r = finish(&state, &provider, &headers, q).await;
    r.headers_mut()
        .append(SET_COOKIE, state_cookie(&state, None));
    r
}

fn refused(status: StatusCode, message: String) -> Response {
    message_page_login(status, "Sign-in refused", message)
}

/// A page with a link back to the sign-in page.
fn message_page_login(status: StatusCode, title: &str, message: String) -> Response {
    super::message_page_back(status, title, message, "/login")
}

async fn finish(
    state: &AppState,
    provider: &str,
    headers: &HeaderMap,
    q: CallbackQuery,
) -> Response {
    let Some(client) = state.oauth.get(provider) else {
        return unknown_provider(provider);
    };
    let name = &client.provider.display_name;
    // The state must be the one this browser was given: a callback URL made for
    // someone else (login CSRF) or a forged state stops here.
    let from_cookie = cookie_state(headers).unwrap_or_default();
    let from_query = q.state.unwrap_or_default();
    let same = !from_query.is_empty()
        && from_query.len() == from_cookie.len()
        && bool::from(from_query.as_bytes().ct_eq(from_cookie.as_bytes()));
    if !same {
        tracing::info!(%provider, "oauth callback refused: its state is not this browser's");
        return refused(
            StatusCode::FORBIDDEN,
            "This sign-in did not start in this browser (its state does not match). Start \
             again from the sign-in page."
                .into(),
        );
    }
    let taken = match state
        .store
        .take_oauth_state(&crate::crypto::hash_token(&from_query))
        .await
    {
        Ok(t) => t,
        Err(e) => return super::store_error(e),
    };
    let Some(started) = taken.filter(|s| s.provider == provider) else {
        tracing::info!(%provider, "oauth callback refused: state used, expired or unknown");
        return refused(
            StatusCode::BAD_REQUEST,
            "This sign-in was used already or has expired. Start again from the sign-in page."
                .into(),
        );
    };
    if let Some(error) = q.error {
        let error: String = error
            .chars()
            .filter(|c| !c.is_control())
            .take(100)
            .collect();
        return refused(
            StatusCode::FORBIDDEN,
            format!("{name} did not sign you in: {error}."),
        );
    }
    let Some(code) = q.code.filter(|c| !c.is_empty() && c.len() <= 2048) else {
        return refused(
            StatusCode::BAD_REQUEST,
            format!("{name} sent no authorization code."),
        );
    };
    let redirect = redirect_uri(state, provider);
    let http = state.oauth.http();
    let forge_user =
        match exchange::exchange_code(http, client, &redirect, &code, &started.code_verifier).await
        {
            Ok(token) => exchange::fetch_user(http, client, &token).await,
            Err(e) => Err(e),
        };
    let forge_user = match forge_user {
        Ok(u) => u,
        Err(ExchangeError::Refused(m)) => {
            tracing::info!(%provider, reason = %m, "oauth sign-in refused by the forge");
            return refused(StatusCode::FORBIDDEN, m);
        }
        Err(ExchangeError::Unavailable(m)) => {
            tracing::warn!(%provider, reason = %m, "oauth sign-in failed");
            return message_page_login(StatusCode::BAD_GATEWAY, "Sign-in failed", m);
        }
    };
    match started.link_user {
        Some(user) => link::linked(state, headers, user, client, &forge_user).await,
        None => sign_in::sign_in(state, client, &forge_user, &started.next).await,
    }
}
