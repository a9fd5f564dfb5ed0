//! Bitbucket Cloud build statuses (Atlassian's REST API reference, "Commit statuses"):
//! `POST {api}/2.0/repositories/{workspace}/{repo_slug}/commit/{sha}/statuses/build`
//! with `{key, state, name, url, description}` and `Authorization: Bearer <token>`
//! (a repository, project or workspace access token, or an OAuth access token). A
//! status with the same `key` replaces the previous one, so the context is the key.

use axum::http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

/// The URL path below the API base (`https://api.bitbucket.org`).
pub(super) fn path(workspace: &str, slug: &str, sha: &str) -> String {
    format!("/2.0/repositories/{workspace}/{slug}/commit/{sha}/statuses/build")
}

/// Reshape the common body (`state`, `description`, `target_url`) into Bitbucket's:
/// the link is `url`, the context both `key` (identity) and `name` (label).
pub(super) fn body(body: &mut Map<String, Value>, context: &str) {
    if let Some(url) = body.remove("target_url") {
        body.insert("url".into(), url);
    }
    body.insert("key".into(), context.into());
    body.insert("name".into(), context.into());
}

pub(super) fn headers(token: HeaderValue) -> Vec<(HeaderName, HeaderValue)> {
    vec![(HeaderName::from_static("authorization"), token)]
}
