//! Gitee webhook payloads (`X-Gitee-Event`: `Push Hook`, `Tag Push Hook`,
//! `Merge Request Hook`; every other event is acknowledged and ignored).
//!
//! Field names follow Gitee's help pages "WebHook 推送数据格式说明" (push data format)
//! and "WebHook 推送数据类型说明" (data types), and the payloads drone/go-scm's `gitee`
//! driver parses. The push and pull-request payloads are GitHub-shaped (`ref`,
//! `before`, `after`, `head_commit`, `pull_request.head/base`).
//!
//! * Gitee has no "synchronize" action: new commits on a pull request's source branch
//!   arrive as `action: update` with `action_desc: source_branch_changed`; other
//!   updates (labels, title, reviewers) are ignored.
//! * The webhook page's "test" button sends `X-Gitee-Ping: true` with sample data:
//!   answered as a ping.
//! * Pull-request heads are published at `refs/pull/<number>/head` in the target
//!   repository, forks included.

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::event::{
    ForgeEvent, Parsed, PayloadError, PrAction, PullRequest, PushParts, check_branch, check_sha,
    from_json, ignored, printable, push_event, require, sender_login, unknown_event,
};
use super::{Event, ForgeKind};

#[derive(Deserialize)]
struct Repo {
    id: i64,
    clone_url: String,
    /// `owner/name`.
    full_name: String,
}

#[derive(Deserialize)]
struct User {
    #[serde(default)]
    login: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    name: String,
}

impl User {
    fn login(&self) -> &str {
        if self.login.is_empty() {
            &self.username
        } else {
            &self.login
        }
    }

    fn display(&self) -> &str {
        match self.login() {
            "" => &self.name,
            l => l,
        }
    }
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
    pusher: Option<User>,
    sender: Option<User>,
}

#[derive(Deserialize)]
struct Branch {
    #[serde(rename = "ref")]
    git_ref: String,
    sha: String,
    repo: Repo,
}

#[derive(Deserialize)]
struct Pr {
    number: u64,
    title: String,
    head: Branch,
    base: Branch,
}

#[derive(Deserialize)]
struct PrEvent {
    action: String,
    #[serde(default)]
    action_desc: String,
    pull_request: Pr,
    repository: Repo,
    sender: Option<User>,
}

pub(super) fn parse(event: &str, body: &[u8]) -> Result<Parsed, PayloadError> {
    match event {
        // `X-Gitee-Ping: true`: the webhook page's "test" delivery (see `event_name`).
        super::verify::GITEE_PING_EVENT => {
            from_json::<IgnoredAny>(event, body)?;
            Ok(Parsed::Ping)
        }
        "Push Hook" | "Tag Push Hook" => push(event, body),
        "Merge Request Hook" => merge_request(event, body),
        other => Ok(unknown_event(ForgeKind::Gitee, other)),
    }
}

fn push(event: &str, body: &[u8]) -> Result<Parsed, PayloadError> {
    let p: Push = from_json(event, body)?;
    let author = p
        .sender
        .as_ref()
        .or(p.pusher.as_ref())
        .map_or("", User::display);
    push_event(PushParts {
        event,
        git_ref: &p.git_ref,
        before: &p.before,
        after: &p.after,
        // `head_commit` is the commit a tag points at.
        tag_commit: p.head_commit.as_ref().map(|c| c.id.as_str()),
        deleted: p.deleted,
        clone_url: &p.repository.clone_url,
        repository: &p.repository.full_name,
        clone_url_field: "repository.clone_url",
        repository_field: "repository.full_name",
        message: p.head_commit.as_ref().map_or("", |c| c.message.as_str()),
        author,
        sender: p.sender.as_ref().or(p.pusher.as_ref()).map(User::login),
    })
}

fn merge_request(event: &str, body: &[u8]) -> Result<Parsed, PayloadError> {
    let e: PrEvent = from_json(event, body)?;
    let action = match (e.action.as_str(), e.action_desc.as_str()) {
        ("open", _) => PrAction::Opened,
        ("reopen", _) => PrAction::Reopened,
        ("update", "source_branch_changed") => PrAction::Synchronized,
        ("update", desc) => {
            return Ok(ignored(format!(
                "gitee merge request update `{}` without new commits does not trigger runs",
                printable(desc)
            )));
        }
        (other, _) => {
            return Ok(ignored(format!(
                "gitee merge request action `{}` does not trigger runs",
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
        require(event, "repository.clone_url", "")?;
    }
    let fork = pr.head.repo.id != pr.base.repo.id;
    let head_sha = pr.head.sha.to_ascii_lowercase();
    Ok(Parsed::Event(ForgeEvent {
        kind: Event::PullRequest,
        git_ref: format!("refs/pull/{}/head", pr.number),
        branch: Some(pr.base.git_ref.clone()),
        tag: None,
        // The payload carries no previous head.
        before: None,
        after: head_sha.clone(),
        clone_url: e.repository.clone_url,
        repository: e.repository.full_name,
        pr: Some(PullRequest {
            number: pr.number,
            action,
            source_branch: pr.head.git_ref,
            target_branch: pr.base.git_ref,
            head_sha,
            head_clone_url: pr.head.repo.clone_url,
            fork,
            base_sha: Some(pr.base.sha.to_ascii_lowercase()),
        }),
        message: pr.title,
        author: e.sender.as_ref().map_or("", User::display).to_owned(),
        sender: sender_login(e.sender.as_ref().map(User::login)),
        deleted: false,
    }))
}
