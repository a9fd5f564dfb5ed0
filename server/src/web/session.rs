//! Signing in to the web UI: the session cookie (`HttpOnly`, `SameSite=Lax`, `Secure`
//! when the server's public URL is https), the [`SignedIn`] extractor that sends a
//! signed-out browser to the sign-in page, and the CSRF token every form carries.

use axum::extract::FromRequestParts;
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use subtle::ConstantTimeEq;

use crate::daemon::state::AppState;
use crate::store::{Role, Session};

/// The session cookie's name.
pub const COOKIE_NAME: &str = "slipway_session";
/// The header the page's own state-changing API calls carry the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The form field forms carry it in.
pub const CSRF_FIELD: &str = "_csrf";
/// How long a session lasts.
pub const SESSION_TTL_MS: i64 = 12 * 3600 * 1000;

/// The session token in the request's cookies.
pub fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE_NAME)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Whether a presented CSRF token is the session's, in constant time.
pub fn csrf_matches(presented: &str, expected: &str) -> bool {
    !presented.is_empty()
        && presented.len() == expected.len()
        && bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

/// `Set-Cookie` for a new session (`None`: clears it).
pub fn set_cookie(state: &AppState, token: Option<&str>) -> HeaderValue {
    let secure = if state.config.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let value = match token {
        Some(t) => format!(
            "{COOKIE_NAME}={t}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
            SESSION_TTL_MS / 1000
        ),
        None => format!("{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A response that also sets (or clears) the session cookie.
pub fn with_cookie(state: &AppState, token: Option<&str>, response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    response
        .headers_mut()
        .append(SET_COOKIE, set_cookie(state, token));
    response
}

/// The signed-in person of a page request; a signed-out browser is sent to the
/// sign-in page, and back here afterwards.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub session: Session,
    /// Their global role (a role on one repository is checked where it matters).
    pub role: Option<Role>,
}

impl SignedIn {
    pub fn name(&self) -> &str {
        &self.session.user.name
    }

    pub fn csrf(&self) -> &str {
        &self.session.csrf
    }

    pub fn is_admin(&self) -> bool {
        self.role == Some(Role::Admin)
    }
}

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let to_sign_in = || {
            let next = parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            Redirect::to(&format!("/login?next={}", super::encode_component(&next))).into_response()
        };
        let Some(token) = cookie_token(&parts.headers) else {
            return Err(to_sign_in());
        };
        let session = match state.store.find_session(&token).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err(to_sign_in()),
            Err(e) => return Err(super::error_page(e.to_string())),
        };
        let role = state
            .store
            .effective_role(session.user.id, None)
            .await
            .map_err(|e| super::error_page(e.to_string()))?;
        Ok(SignedIn { session, role })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_session_cookie_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_static("a=1; slipway_session=slps_x ; b=2"),
        );
        assert_eq!(cookie_token(&h).as_deref(), Some("slps_x"));
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("slipway_session="));
        assert_eq!(cookie_token(&h), None);
    }

    #[test]
    fn csrf_needs_the_exact_token() {
        assert!(csrf_matches("abc", "abc"));
        assert!(!csrf_matches("abd", "abc"));
        assert!(!csrf_matches("", ""));
        assert!(!csrf_matches("ab", "abc"));
    }
}
