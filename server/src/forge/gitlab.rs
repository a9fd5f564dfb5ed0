//! GitLab webhook payloads (`X-Gitlab-Event`: `Push Hook`, `Tag Push Hook`,
//! `Merge Request Hook`, and `System Hook` carrying any of those).
//!
//! Field names follow GitLab's "Webhook events" reference.

use serde::Deserialize;

use super::event::{
    ForgeEvent, Parsed, PayloadError, PrAction, PullRequest, PushParts, before_of, check_branch,
    check_sha, from_json, ignored, missing, printable, push_event, sender_login, unknown_event,
};
use super::{Event, ForgeKind};

#[derive(Deserialize)]
struct Project {
    git_http_url: String,
    /// `group/subgroup/project`.
    #[serde(default)]
    path_with_namespace: String,
}

#[derive(Deserialize)]
struct Commit {
    id: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct Push {
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    /// The commit at the ref's tip; `null` on deletion. For annotated tags `after` is
    /// the tag object and this is the commit.
    checkout_sha: Option<String>,
    user_username: Option<String>,
    user_name: Option<String>,
    project: Project,
    #[serde(default)]
    commits: Vec<Commit>,
}

#[derive(Deserialize)]
struct User {
    username: String,
}

#[derive(Deserialize)]
struct MrAttributes {
    iid: u64,
    title: String,
    source_branch: String,
    target_branch: String,
    source_project_id: Option<u64>,
    target_project_id: u64,
    action: Option<String>,
    /// Only present when the update pushed new code.
    oldrev: Option<String>,
    last_commit: Commit,
    /// `null` when the source project has been deleted.
    source: Option<Project>,
}

#[derive(Deserialize)]
struct MergeRequest {
    user: Option<User>,
    project: Project,
    object_attributes: MrAttributes,
}

#[derive(Deserialize)]
struct Kind {
    object_kind: String,
}

pub(super) fn parse(event: &str, body: &[u8]) -> Result<Parsed, PayloadError> {
    match event {
        "Push Hook" | "Tag Push Hook" => push(event, body),
        "Merge Request Hook" => merge_request(event, body),
        // System hooks (instance-wide) reuse the project payloads under one header
        // name; dispatch on the body's `object_kind` instead.
        "System Hook" => {
            let k: Kind = from_json(event, body)?;
            match k.object_kind.as_str() {
                "push" | "tag_push" => push(event, body),
                "merge_request" => merge_request(event, body),
                other => Ok(ignored(format!(
                    "gitlab system hook `{}` does not trigger runs",
                    printable(other)
                ))),
            }
        }
        other => Ok(unknown_event(ForgeKind::Gitlab, other)),
    }
}

fn push(event: &str, body: &[u8]) -> Result<Parsed, PayloadError> {
    let p: Push = from_json(event, body)?;
    // The head commit is the one whose id is the new tip; GitLab lists at most 20
    // commits, oldest first, so fall back to the last one.
    let tip = p.checkout_sha.as_deref().unwrap_or(&p.after);
    let message = p
        .commits
        .iter()
        .find(|c| c.id == tip)
        .or(p.commits.last())
        .map_or("", |c| c.message.as_str());
    let author = p
        .user_username
        .as_deref()
        .or(p.user_name.as_deref())
        .unwrap_or("");
    push_event(PushParts {
        event,
        git_ref: &p.git_ref,
        before: &p.before,
        after: &p.after,
        tag_commit: p.checkout_sha.as_deref(),
        deleted: false,
        clone_url: &p.project.git_http_url,
        repository: &p.project.path_with_namespace,
        message,
        author,
        sender: p.user_username.as_deref(),
    })
}

fn merge_request(event: &str, body: &[u8]) -> Result<Parsed, PayloadError> {
    let mr: MergeRequest = from_json(event, body)?;
    let a = mr.object_attributes;
    let oldrev = a.oldrev.as_deref().filter(|r| !r.is_empty());
    let action = match (a.action.as_deref().unwrap_or(""), oldrev) {
        ("open", _) => PrAction::Opened,
        ("reopen", _) => PrAction::Reopened,
        ("update", Some(_)) => PrAction::Synchronized,
        ("update", None) => {
            return Ok(ignored(
                "gitlab merge request update without new commits (title, labels, …) does not trigger runs",
            ));
        }
        (other, _) => {
            return Ok(ignored(format!(
                "gitlab merge request action `{}` does not trigger runs",
                printable(other)
            )));
        }
    };
    check_sha(event, "object_attributes.last_commit.id", &a.last_commit.id)?;
    check_branch(event, "object_attributes.source_branch", &a.source_branch)?;
    check_branch(event, "object_attributes.target_branch", &a.target_branch)?;
    if mr.project.git_http_url.is_empty() {
        return Err(missing(event, "project git_http_url"));
    }
    let before = match oldrev {
        Some(r) => before_of(event, r)?,
        None => None,
    };
    // A missing source project id means the source project was deleted: treat it as
    // foreign (untrusted), never as the target project.
    let fork = a.source_project_id != Some(a.target_project_id);
    let head_clone_url = a
        .source
        .as_ref()
        .map_or(mr.project.git_http_url.as_str(), |s| {
            s.git_http_url.as_str()
        })
        .to_owned();
    let head_sha = a.last_commit.id.to_ascii_lowercase();
    Ok(Parsed::Event(ForgeEvent {
        kind: Event::PullRequest,
        // GitLab keeps every MR head at this ref in the target project, forks included.
        git_ref: format!("refs/merge-requests/{}/head", a.iid),
        branch: Some(a.target_branch.clone()),
        tag: None,
        before,
        after: head_sha.clone(),
        clone_url: mr.project.git_http_url,
        repository: mr.project.path_with_namespace,
        pr: Some(PullRequest {
            number: a.iid,
            action,
            source_branch: a.source_branch,
            target_branch: a.target_branch,
            head_sha,
            head_clone_url,
            fork,
            base_sha: None,
        }),
        message: a.title,
        sender: sender_login(mr.user.as_ref().map(|u| u.username.as_str())),
        author: mr.user.map(|u| u.username).unwrap_or_default(),
        deleted: false,
    }))
}
