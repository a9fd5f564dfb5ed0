//! Bitbucket Data Center build statuses, through the repository-scoped builds API
//! (Atlassian's "Updating build status for commits", Data Center 7.4 and later):
//! `POST {base}/rest/api/latest/projects/{projectKey}/repos/{slug}/commits/{sha}/builds`
//! with `{key, state, name, url, description, ref}` and `Authorization: Bearer <HTTP
//! access token>`.
//!
//! Chosen over the older `POST {base}/rest/build-status/1.0/commits/{sha}`: that one
//! files the status under the bare commit id for every repository holding the commit
//! (forks included), knows only `INPROGRESS|SUCCESSFUL|FAILED`, and takes no `ref`;
//! the repository-scoped one also has `CANCELLED` and shows the status on the right
//! branch and pull request.

use axum::http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

/// The URL path below the instance's base URL (`https://host[/context]`).
pub(super) fn path(project: &str, slug: &str, sha: &str) -> String {
    format!("/rest/api/latest/projects/{project}/repos/{slug}/commits/{sha}/builds")
}

/// Reshape the common body into Bitbucket's (`url`, `key`, `name`) and add the ref the
/// run was for, so the status is attached to that branch or tag.
pub(super) fn body(body: &mut Map<String, Value>, context: &str, git_ref: Option<&str>) {
    if let Some(url) = body.remove("target_url") {
        body.insert("url".into(), url);
    }
    body.insert("key".into(), context.into());
    body.insert("name".into(), context.into());
    // A pull request's `refs/pull-requests/N/from` is not a ref the API accepts.
    if let Some(r) = git_ref.filter(|r| r.starts_with("refs/heads/") || r.starts_with("refs/tags/"))
    {
        body.insert("ref".into(), r.into());
    }
}

pub(super) fn headers(token: HeaderValue) -> Vec<(HeaderName, HeaderValue)> {
    vec![(HeaderName::from_static("authorization"), token)]
}
