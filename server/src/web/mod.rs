//! The web UI: server-rendered pages (askama templates from `webui/templates`, compiled
//! into the binary), the embedded static assets, and sign-in. Pages read the store
//! directly and check roles as the API does; the page's own script calls the API with
//! the session cookie (and the CSRF token for anything that changes state).
//!
//! Every response carries a strict Content-Security-Policy (no inline script, nothing
//! from elsewhere), `X-Content-Type-Options: nosniff` and frame denial (`headers`).

mod account;
pub mod actions;
mod admin_pages;
mod assets;
mod dashboard;
mod env_page;
pub(crate) mod failure;
mod findings;
mod headers;
mod inbox;
mod log_page;
mod login;
pub mod oauth;
mod people_actions;
mod repo_actions;
mod repo_page;
mod rollout_actions;
mod rollout_chart;
mod rollout_panel;
mod run_page;
pub mod session;
mod view;

use askama::Template;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};

use crate::daemon::state::AppState;
pub use headers::security_headers;
use session::SignedIn;

/// The UI's routes (pages, forms, assets). Every page but sign-in and the assets needs
/// a signed-in user ([`SignedIn`]); every form needs the session's CSRF token.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(dashboard::page))
        .route("/login", get(login::form).post(login::submit))
        .route("/logout", post(login::sign_out))
        .route("/login/oauth/{provider}", get(oauth::start))
        .route("/login/oauth/{provider}/callback", get(oauth::callback))
        .route("/account", get(account::page))
        .route("/account/oauth/{provider}/link", post(account::link))
        .route("/account/oauth/{provider}/unlink", post(account::unlink))
        .route("/inbox", get(inbox::page))
        .route("/audit", get(admin_pages::audit))
        .route("/people", get(admin_pages::people))
        .route("/people/users", post(people_actions::create_user))
        .route("/people/users/{user}/role", post(people_actions::set_role))
        .route(
            "/people/users/{user}/disabled",
            post(people_actions::set_disabled),
        )
        .route(
            "/people/users/{user}/tokens",
            post(people_actions::create_user_token),
        )
        .route(
            "/people/users/{user}/tokens/{id}/revoke",
            post(people_actions::revoke_user_token),
        )
        .route("/people/tokens", post(people_actions::create_machine_token))
        .route(
            "/people/tokens/{id}/revoke",
            post(people_actions::revoke_machine_token),
        )
        .route("/repos/{owner}/{name}", get(repo_page::page))
        .route("/repos/{owner}/{name}/trigger", post(repo_actions::trigger))
        .route(
            "/repos/{owner}/{name}/secrets",
            post(repo_actions::add_secret),
        )
        .route(
            "/repos/{owner}/{name}/secrets/{secret}/delete",
            post(repo_actions::delete_secret),
        )
        .route(
            "/repos/{owner}/{name}/environments/{env}",
            get(env_page::page),
        )
        .route("/repos/{owner}/{name}/runs/{number}", get(run_page::page))
        .route(
            "/repos/{owner}/{name}/runs/{number}/logs/{stage_id}/{idx}",
            get(log_page::page),
        )
        .route(
            "/repos/{owner}/{name}/runs/{number}/vote",
            post(actions::vote),
        )
        .route(
            "/repos/{owner}/{name}/runs/{number}/cancel",
            post(actions::cancel),
        )
        .route(
            "/repos/{owner}/{name}/runs/{number}/rerun",
            post(actions::rerun),
        )
        .route(
            "/repos/{owner}/{name}/runs/{number}/rollout/promote",
            post(rollout_actions::promote),
        )
        .route(
            "/repos/{owner}/{name}/runs/{number}/rollout/abort",
            post(rollout_actions::abort),
        )
        .route(
            "/repos/{owner}/{name}/runs/{number}/rollout/retry",
            post(rollout_actions::retry),
        )
        .route("/static/{file}", get(assets::serve))
}

/// What every page's frame shows: who is signed in, their CSRF token, the admin links,
/// how many approvals wait for them, and a one-line message.
#[derive(Debug, Clone, Default)]
pub struct Chrome {
    pub user: String,
    pub csrf: String,
    pub admin: bool,
    pub inbox: usize,
    pub flash: String,
}

impl Chrome {
    pub fn of(me: &SignedIn) -> Chrome {
        Chrome {
            user: me.name().to_string(),
            csrf: me.csrf().to_string(),
            admin: me.is_admin(),
            inbox: 0,
            flash: String::new(),
        }
    }
}

/// Renders a template as a page (a template error is a 500 page, never a panic).
pub fn render(t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => error_page(format!("the page could not be rendered: {e}")),
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    chrome: Chrome,
    title: String,
    message: String,
    /// Where the page's link goes back to (`/`: the dashboard).
    back: String,
}

/// A page saying what went wrong, with its status.
pub fn message_page(status: StatusCode, title: &str, message: String) -> Response {
    message_page_back(status, title, message, "/")
}

/// A page saying what went wrong, with its status and a link back to `back` (a local
/// path: the page the form was on).
pub fn message_page_back(status: StatusCode, title: &str, message: String, back: &str) -> Response {
    let page = ErrorPage {
        chrome: Chrome::default(),
        title: title.to_string(),
        message,
        back: safe_next(back),
    };
    let mut r = render(&page);
    *r.status_mut() = status;
    r
}

/// A 500 page for a failure the user cannot fix (it is logged).
pub fn error_page(message: String) -> Response {
    tracing::warn!(error = %message, "web page failed");
    message_page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        "The server could not answer this page; the error is in its log.".into(),
    )
}

/// A page for a store error: not found is a 404, a full disk a 507 (reported to
/// `daemon::disk` like the API's), the rest a 500.
pub fn store_error(e: crate::store::Error) -> Response {
    match e {
        crate::store::Error::NotFound(what) => message_page(
            StatusCode::NOT_FOUND,
            "Not found",
            format!("No such {what}."),
        ),
        e if e.is_disk_full() => {
            let api = crate::api::error::ApiError::disk_full(
                crate::daemon::disk::Part::Database,
                "the change",
                &e,
            );
            let mut r = message_page(api.status, "The server's disk is full", api.message);
            if let Some(full) = api.disk_full {
                r.extensions_mut().insert(full);
            }
            r
        }
        e => error_page(e.to_string()),
    }
}

/// A local path to go back to after sign-in: only this site's own paths (`/x`, never
/// `//host` or a URL), so the sign-in page cannot send anyone elsewhere.
pub fn safe_next(next: &str) -> String {
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains('\\')
        && !next.chars().any(char::is_control);
    if ok {
        next.to_string()
    } else {
        "/".to_string()
    }
}

/// Percent-encodes a value for a URL's query.
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert_eq!(safe_next("/repos/a/b"), "/repos/a/b");
        for bad in [
            "//evil.example",
            "https://evil.example",
            "\\\\x",
            "/\\evil",
            "x",
        ] {
            assert_eq!(safe_next(bad), "/", "{bad}");
        }
    }
}
