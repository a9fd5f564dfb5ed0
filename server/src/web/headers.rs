//! Security headers on every response the server sends (pages, assets, the API):
//! a Content-Security-Policy that allows only this server's own script, style and
//! connections (no inline script, no frames), no MIME sniffing, no framing, and a
//! referrer that stays on the site.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::http::header::{
    CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::middleware::Next;
use axum::response::Response;

/// The policy: everything from this origin only, scripts only from files (never
/// inline), forms only back to this origin, never inside a frame.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; font-src 'self'; form-action 'self'; \
    frame-ancestors 'none'; base-uri 'none'";

/// [`CSP`] with forms also allowed to end up at `origins` — a browser checks
/// `form-action` on every redirect a form post leads to, and the account page's
/// **Link** forms go on to the forges' authorize pages (`web::account`).
pub fn csp_with_form_targets<'a>(origins: impl Iterator<Item = &'a str>) -> String {
    let extra: String = origins.map(|o| format!(" {o}")).collect();
    CSP.replace("form-action 'self'", &format!("form-action 'self'{extra}"))
}

pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.entry(CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(CSP));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(REFERRER_POLICY)
        .or_insert(HeaderValue::from_static("same-origin"));
    response
}
