//! GitHub webhook payloads (`X-GitHub-Event`: `ping`, `push`, `pull_request`, `create`).
//!
//! Field names follow GitHub's "Webhook events and payloads" reference; only the fields
//! Slipway uses are declared, serde ignores the rest.

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::event::{
    ForgeEvent, Parsed, PayloadError, PrAction, PullRequest, PushParts, before_of, check_branch,
    check_sha, from_json, ignored, missing, printable, push_event, sender_login, unknown_event,
};
use super::{Event, ForgeKind};

#[derive(Deserialize)]
struct Repo {
    id: u64,
    clone_url: String,
    /// `owner/name`.
    #[serde(default)]
    full_name: String,
}

#[derive(Deserialize)]
struct User {
    login: String,
}

#[derive(Deserialize)]
struct Pusher {
    name: String,
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
    #[serde(default)]
    deleted: bool,
    head_commit: Option<Commit>,
    repository: Repo,
    pusher: Option<Pusher>,
    sender: Option<User>,
}

#[derive(Deserialize)]
struct Branch {
    #[serde(rename = "ref")]
    git_ref: String,
    sha: String,
    /// `null` when the fork the PR came from has been deleted.
    repo: Option<Repo>,
}

#[derive(Deserialize)]
struct Pr {
    title: String,
    head: Branch,
    base: Branch,
}

#[derive(Deserialize)]
struct PrEvent {
    action: String,
    number: u64,
    pull_request: Pr,
    repository: Repo,
    sender: Option<User>,
    /// Present on `synchronize`: the previous head.
    before: Option<String>,
}

pub(super) fn parse(event: &str, body: &[u8]) -> Result<Parsed, PayloadError> {
    match event {
        "ping" => {
            // Still insist on JSON: a non-JSON "ping" is not from GitHub.
            from_json::<IgnoredAny>(event, body)?;
            Ok(Parsed::Ping)
        }
        "push" => push(event, body),
        "pull_request" => pull_request(event, body),
        // GitHub sends a `push` (ref `refs/tags/…`) for every pushed tag as well as a
        // `create`; the push carries the commit, so `create` is ignored to avoid two
        // runs per tag. (Branch `create` is likewise covered by its push.)
        "create" => {
            from_json::<IgnoredAny>(event, body)?;
            Ok(ignored(
                "github `create` is ignored: the accompanying `push` event triggers the run",
            ))
        }
        other => Ok(unknown_event(ForgeKind::Github, other)),
    }
}

fn push(event: &str, body: &[u8]) -> Result<Parsed, PayloadError> {
    let p: Push = from_json(event, body)?;
    let author = p
        .sender
        .as_ref()
        .map(|s| s.login.as_str())
        .or(p.pusher.as_ref().map(|u| u.name.as_str()))
        .unwrap_or("");
    push_event(PushParts {
        event,
        git_ref: &p.git_ref,
        before: &p.before,
        after: &p.after,
        // For an annotated tag `after` is the tag object; `head_commit` is the commit.
        tag_commit: p.head_commit.as_ref().map(|c| c.id.as_str()),
        deleted: p.deleted,
        clone_url: &p.repository.clone_url,
        repository: &p.repository.full_name,
        message: p.head_commit.as_ref().map_or("", |c| c.message.as_str()),
        author,
        sender: p.sender.as_ref().map(|s| s.login.as_str()),
    })
}

fn pull_request(event: &str, body: &[u8]) -> Result<Parsed, PayloadError> {
    let e: PrEvent = from_json(event, body)?;
    let action = match e.action.as_str() {
        "opened" => PrAction::Opened,
        "synchronize" => PrAction::Synchronized,
        "reopened" => PrAction::Reopened,
        other => {
            return Ok(ignored(format!(
                "github pull_request action `{}` does not trigger runs",
                printable(other)
            )));
        }
    };
    let pr = e.pull_request;
    check_sha(event, "pull_request.head.sha", &pr.head.sha)?;
    check_sha(event, "pull_request.base.sha", &pr.base.sha)?;
    check_branch(event, "pull_request.head.ref", &pr.head.git_ref)?;
    check_branch(event, "pull_request.base.ref", &pr.base.git_ref)?;
    if e.repository.clone_url.is_empty() {
        return Err(missing(event, "repository clone URL"));
    }
    // Compare repository ids rather than trusting `head.repo.fork`: that flag says the
    // head repository is a fork of *something*, which is also true for a same-repo PR
    // inside a repository that is itself a fork.
    let base_id = pr.base.repo.as_ref().map_or(e.repository.id, |r| r.id);
    let fork = pr.head.repo.as_ref().is_none_or(|r| r.id != base_id);
    let head_clone_url = pr
        .head
        .repo
        .as_ref()
        .map_or(e.repository.clone_url.as_str(), |r| r.clone_url.as_str())
        .to_owned();
    let before = match (action, e.before.as_deref()) {
        (PrAction::Synchronized, Some(b)) => before_of(event, b)?,
        _ => None,
    };
    Ok(Parsed::Event(ForgeEvent {
        kind: Event::PullRequest,
        git_ref: format!("refs/pull/{}/head", e.number),
        branch: Some(pr.base.git_ref.clone()),
        tag: None,
        before,
        after: pr.head.sha.to_ascii_lowercase(),
        clone_url: e.repository.clone_url,
        repository: e.repository.full_name,
        pr: Some(PullRequest {
            number: e.number,
            action,
            source_branch: pr.head.git_ref,
            target_branch: pr.base.git_ref,
            head_sha: pr.head.sha.to_ascii_lowercase(),
            head_clone_url,
            fork,
            base_sha: Some(pr.base.sha.to_ascii_lowercase()),
        }),
        message: pr.title,
        sender: sender_login(e.sender.as_ref().map(|s| s.login.as_str())),
        author: e.sender.map(|s| s.login).unwrap_or_default(),
        deleted: false,
    }))
}
