//! Gitea and Forgejo webhook payloads (`X-Gitea-Event` / `X-Forgejo-Event`: `push`,
//! `pull_request`, `create`).
//!
//! Forgejo is a Gitea fork and sends the same payloads; field names follow Gitea's
//! `modules/structs` (`PushPayload`, `PullRequestPayload`, `PRBranchInfo`).

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::event::{
    ForgeEvent, Parsed, PayloadError, PrAction, PullRequest, PushParts, check_branch, check_sha,
    from_json, ignored, missing, printable, push_event, sender_login, unknown_event,
};
use super::{Event, ForgeKind};

#[derive(Deserialize)]
struct Repo {
    clone_url: String,
    /// `owner/name`.
    #[serde(default)]
    full_name: String,
}

#[derive(Deserialize)]
struct User {
    #[serde(default)]
    login: String,
    #[serde(default)]
    username: String,
}

impl User {
    fn name(&self) -> &str {
        if self.login.is_empty() {
            &self.username
        } else {
            &self.login
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
    repo_id: i64,
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
}

pub(super) fn parse(kind: ForgeKind, event: &str, body: &[u8]) -> Result<Parsed, PayloadError> {
    match event {
        "push" => push(event, body),
        // Gitea sends `pull_request` for opened/synchronized/reopened alike (the action
        // is in the body; the finer `X-Gitea-Event-Type` is not needed).
        "pull_request" => pull_request(kind, event, body),
        // Like GitHub, Gitea/Forgejo send a `push` for every new tag or branch besides
        // the `create`; only the push triggers a run so a tag does not run twice.
        "create" => {
            from_json::<IgnoredAny>(event, body)?;
            Ok(ignored(format!(
                "{kind} `create` is ignored: the accompanying `push` event triggers the run"
            )))
        }
        other => Ok(unknown_event(kind, other)),
    }
}

fn push(event: &str, body: &[u8]) -> Result<Parsed, PayloadError> {
    let p: Push = from_json(event, body)?;
    let author = p
        .sender
        .as_ref()
        .or(p.pusher.as_ref())
        .map_or("", User::name);
    push_event(PushParts {
        event,
        git_ref: &p.git_ref,
        before: &p.before,
        after: &p.after,
        // For annotated tags `after` is the tag object; Gitea resolves `head_commit` to
        // the tagged commit.
        tag_commit: p.head_commit.as_ref().map(|c| c.id.as_str()),
        // Gitea has no `deleted` flag; a deletion has an all-zero `after`.
        deleted: false,
        clone_url: &p.repository.clone_url,
        repository: &p.repository.full_name,
        message: p.head_commit.as_ref().map_or("", |c| c.message.as_str()),
        author,
        sender: p.sender.as_ref().map(User::name),
    })
}

fn pull_request(kind: ForgeKind, event: &str, body: &[u8]) -> Result<Parsed, PayloadError> {
    let e: PrEvent = from_json(event, body)?;
    let action = match e.action.as_str() {
        "opened" => PrAction::Opened,
        // Gitea spells it with a "d", unlike GitHub's `synchronize`.
        "synchronized" => PrAction::Synchronized,
        "reopened" => PrAction::Reopened,
        other => {
            return Ok(ignored(format!(
                "{kind} pull_request action `{}` does not trigger runs",
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
    let fork = pr.head.repo_id != pr.base.repo_id;
    let head_clone_url = pr
        .head
        .repo
        .as_ref()
        .map_or(e.repository.clone_url.as_str(), |r| r.clone_url.as_str())
        .to_owned();
    Ok(Parsed::Event(ForgeEvent {
        kind: Event::PullRequest,
        // Gitea and Forgejo keep every PR head at `refs/pull/N/head` in the base repo.
        git_ref: format!("refs/pull/{}/head", e.number),
        branch: Some(pr.base.git_ref.clone()),
        tag: None,
        // The payload carries no previous head for `synchronized`.
        before: None,
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
        author: e
            .sender
            .as_ref()
            .map(|s| s.name().to_owned())
            .unwrap_or_default(),
        sender: sender_login(e.sender.as_ref().map(User::name)),
        deleted: false,
    }))
}
