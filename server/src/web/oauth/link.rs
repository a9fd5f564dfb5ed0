//! The end of a link flow (a signed-in user linking their forge account from the
//! account page): the browser must still be signed in as the user who started it; the
//! store refuses an account linked to someone else, or a second one of a provider.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

use super::clients::Client;
use super::provider::ForgeUser;
use crate::daemon::state::AppState;
use crate::store::UserId;
use crate::web::session;
use crate::web::{message_page_back, store_error};

/// Where a link flow ends (the account page).
const ACCOUNT: &str = "/account";

fn back_with(status: StatusCode, title: &str, message: String) -> Response {
    message_page_back(status, title, message, ACCOUNT)
}

/// The end of a link flow (from `oauth::callback`): the browser must still be signed in
/// as `user`, who started it.
pub(super) async fn linked(
    state: &AppState,
    headers: &HeaderMap,
    user: UserId,
    client: &Client,
    forge_user: &ForgeUser,
) -> Response {
    let session = match session::cookie_token(headers) {
        Some(token) => match state.store.find_session(&token).await {
            Ok(s) => s,
            Err(e) => return store_error(e),
        },
        None => None,
    };
    let Some(session) = session.filter(|s| s.user.id == user) else {
        return back_with(
            StatusCode::FORBIDDEN,
            "Not linked",
            "This browser is no longer signed in as the user who asked for the link.".into(),
        );
    };
    let p = &client.provider;
    let me = &session.user;
    match state
        .store
        .link_oauth(
            &format!("user:{}", me.name),
            me,
            &p.name,
            &forge_user.id,
            &forge_user.login,
        )
        .await
    {
        Ok(_) => {
            tracing::info!(user = %me.name, provider = %p.name, login = %forge_user.login, "forge account linked");
            Redirect::to(&format!(
                "{ACCOUNT}?linked={}",
                crate::web::encode_component(&p.name)
            ))
            .into_response()
        }
        Err(crate::store::Error::Conflict(m)) => back_with(
            StatusCode::CONFLICT,
            "Not linked",
            format!("Not linked: {m}."),
        ),
        Err(e) => store_error(e),
    }
}
