//! The end of a sign-in with a forge: the user linked to the forge account signs in
//! (unless disabled); an unlinked account is refused, or makes a user (no role) when
//! the provider's settings let it sign up. Each sign-in is in the audit log.

use axum::http::StatusCode;
use axum::response::{Redirect, Response};

use super::clients::Client;
use super::provider::ForgeUser;
use super::refused;
use crate::daemon::state::AppState;
use crate::store::Error;
use crate::web::session::{self, SESSION_TTL_MS};

pub(super) async fn sign_in(
    state: &AppState,
    client: &Client,
    forge_user: &ForgeUser,
    next: &str,
) -> Response {
    let p = &client.provider;
    let name = &p.display_name;
    let login = &forge_user.login;
    let found = match state.store.find_oauth_user(&p.name, &forge_user.id).await {
        Ok(f) => f,
        Err(e) => return crate::web::store_error(e),
    };
    let user = match found {
        Some((_, user)) if user.disabled => {
            tracing::info!(provider = %p.name, user = %user.name, "oauth sign-in refused: user disabled");
            return refused(
                StatusCode::FORBIDDEN,
                format!("The Slipway user this {name} account is linked to is disabled."),
            );
        }
        Some((_, user)) => user,
        None if p.may_sign_up(login) => match sign_up(state, client, forge_user).await {
            Ok(user) => user,
            Err(page) => return page,
        },
        None => {
            tracing::info!(provider = %p.name, %login, "oauth sign-in refused: account not linked");
            return refused(
                StatusCode::FORBIDDEN,
                format!(
                    "This {name} account ({login}) is not linked to a Slipway user. Sign in \
                     with your password and link it on your Account page, or ask an admin \
                     for an account."
                ),
            );
        }
    };
    let audited = state
        .store
        .audit_oauth_sign_in(&user, &p.name, &forge_user.id, login)
        .await;
    if let Err(e) = audited {
        return crate::web::store_error(e);
    }
    match state.store.create_session(&user, SESSION_TTL_MS).await {
        Ok((token, _)) => {
            tracing::info!(user = %user.name, provider = %p.name, "signed in with a forge");
            session::with_cookie(state, Some(&token), Redirect::to(next))
        }
        Err(e) => crate::web::store_error(e),
    }
}

/// Makes a user named after the forge login, linked to the account.
async fn sign_up(
    state: &AppState,
    client: &Client,
    forge_user: &ForgeUser,
) -> Result<crate::store::User, Response> {
    let p = &client.provider;
    let user_name = forge_user.login.to_lowercase();
    if crate::admin::people::validate_user_name(&user_name).is_err() {
        return Err(refused(
            StatusCode::FORBIDDEN,
            format!(
                "`{}` cannot be a Slipway user name (letters, digits, `.`, `_`, `-`): ask an \
                 admin for an account.",
                forge_user.login
            ),
        ));
    }
    match state
        .store
        .sign_up_oauth(&user_name, &p.name, &forge_user.id, &forge_user.login)
        .await
    {
        Ok(user) => {
            tracing::info!(user = %user.name, provider = %p.name, "user signed up with a forge");
            Ok(user)
        }
        Err(Error::Conflict(_)) => Err(refused(
            StatusCode::FORBIDDEN,
            format!(
                "A user named `{user_name}` exists already. If that is you, sign in with your \
                 password and link your {} account on your Account page.",
                p.display_name
            ),
        )),
        Err(e) => Err(crate::web::store_error(e)),
    }
}
