//! Bitbucket Data Center (and Server) webhook payloads (`X-Event-Key`:
//! `repo:refs_changed`, `pr:opened`, `pr:from_ref_updated`, `diagnostics:ping`; every
//! other key is acknowledged and ignored).
//!
//! Field names follow Atlassian's "Event payload" page for Bitbucket Data Center and
//! the payloads Woodpecker's `bitbucketdatacenter` and drone/go-scm's `stash` drivers
//! parse.
//!
//! * A push's `changes[]` may update several refs; each becomes its own event
//!   ([`Parsed::Events`]), as `slipway hook` makes one run per updated ref.
//! * Every pull request's head is published at `refs/pull-requests/<id>/from` in the
//!   target repository, forks included, so fork pull requests are built from there.
//! * The sender is the actor's `name` (the login, unique per instance).

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::event::{
    ForgeEvent, Parsed, PayloadError, PrAction, PullRequest, PushParts, before_of, check_branch,
    check_sha, from_json, ignored, printable, push_event, require, sender_login, unknown_event,
};
use super::{Event, ForgeKind};

#[derive(Deserialize)]
struct Link {
    #[serde(default)]
    name: String,
    #[serde(default)]
    href: String,
}

#[derive(Deserialize, Default)]
struct Links {
    #[serde(default)]
    clone: Vec<Link>,
}

#[derive(Deserialize)]
struct Project {
    key: String,
}

#[derive(Deserialize)]
struct Repo {
    id: i64,
    slug: String,
    project: Project,
    #[serde(default)]
    links: Links,
}

impl Repo {
    /// `PROJECT/slug`, the path the REST API addresses a repository by.
    fn full_name(&self) -> String {
        format!("{}/{}", self.project.key, self.slug)
    }

    /// The HTTP(S) clone link (named `http` whatever the scheme), else the SSH one.
    fn clone_url(&self) -> String {
        let by_name = |n: &str| {
            self.links
                .clone
                .iter()
                .find(|l| l.name == n && !l.href.is_empty())
                .map(|l| l.href.clone())
        };
        by_name("http")
            .or_else(|| by_name("https"))
            .or_else(|| by_name("ssh"))
            .unwrap_or_default()
    }
}

#[derive(Deserialize, Default)]
struct User {
    /// The login.
    name: Option<String>,
    #[serde(rename = "displayName")]
    display_name: Option<String>,
}

impl User {
    fn display(&self) -> &str {
        self.name
            .as_deref()
            .or(self.display_name.as_deref())
            .unwrap_or("")
    }
}

#[derive(Deserialize)]
struct Change {
    #[serde(rename = "refId")]
    ref_id: Option<String>,
    #[serde(rename = "ref")]
    git_ref: Option<RefId>,
    #[serde(rename = "fromHash")]
    from_hash: String,
    #[serde(rename = "toHash")]
    to_hash: String,
    /// `ADD`, `UPDATE` or `DELETE`.
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct RefId {
    id: String,
}

#[derive(Deserialize)]
struct Commit {
    id: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct PushEvent {
    #[serde(default)]
    actor: User,
    repository: Repo,
    changes: Vec<Change>,
    /// The pushed tip with its message (Data Center 7+); absent in older payloads.
    #[serde(rename = "toCommit")]
    to_commit: Option<Commit>,
}

#[derive(Deserialize)]
struct PrRef {
    /// `refs/heads/<branch>`.
    id: String,
    #[serde(rename = "latestCommit")]
    latest_commit: String,
    repository: Repo,
}

#[derive(Deserialize)]
struct Pr {
    id: u64,
    title: String,
    #[serde(rename = "fromRef")]
    from_ref: PrRef,
    #[serde(rename = "toRef")]
    to_ref: PrRef,
}

#[derive(Deserialize)]
struct PrEvent {
    #[serde(default)]
    actor: User,
    #[serde(rename = "pullRequest")]
    pull_request: Pr,
    /// `pr:from_ref_updated` only: the source branch's previous head.
    #[serde(rename = "previousFromHash")]
    previous_from_hash: Option<String>,
}

pub(super) fn parse(event: &str, body: &[u8]) -> Result<Parsed, PayloadError> {
    match event {
        // "Test connection" in the webhook settings.
        "diagnostics:ping" => {
            from_json::<IgnoredAny>(event, body)?;
            Ok(Parsed::Ping)
        }
        "repo:refs_changed" => push(event, body),
        "pr:opened" => pull_request(event, body, PrAction::Opened),
        "pr:from_ref_updated" => pull_request(event, body, PrAction::Synchronized),
        other => Ok(unknown_event(ForgeKind::BitbucketDc, other)),
    }
}

fn push(event: &str, body: &[u8]) -> Result<Parsed, PayloadError> {
    let p: PushEvent = from_json(event, body)?;
    let clone_url = p.repository.clone_url();
    let repository = p.repository.full_name();
    let mut events = Vec::new();
    let mut reasons = Vec::new();
    for change in &p.changes {
        let git_ref = change
            .git_ref
            .as_ref()
            .map(|r| r.id.as_str())
            .or(change.ref_id.as_deref())
            .unwrap_or("");
        // The message is known only for the commit `toCommit` names.
        let message = p
            .to_commit
            .as_ref()
            .filter(|c| c.id.eq_ignore_ascii_case(&change.to_hash))
            .map_or("", |c| c.message.as_str());
        match push_event(PushParts {
            event,
            git_ref,
            before: &change.from_hash,
            after: &change.to_hash,
            // `toHash` of an annotated tag is the tag object; the planner peels it.
            tag_commit: None,
            deleted: change.kind == "DELETE",
            clone_url: &clone_url,
            repository: &repository,
            clone_url_field: "repository.links.clone",
            repository_field: "repository.project.key/slug",
            message,
            author: p.actor.display(),
            sender: p.actor.name.as_deref(),
        })? {
            Parsed::Event(e) => events.push(e),
            Parsed::Ignored { reason } => reasons.push(reason),
            Parsed::Ping | Parsed::Events(_) => {}
        }
    }
    Ok(match events.len() {
        0 if reasons.is_empty() => ignored("bitbucket-dc refs_changed without changes"),
        0 => ignored(reasons.join("; ")),
        1 => Parsed::Event(events.remove(0)),
        _ => Parsed::Events(events),
    })
}

fn branch_of<'a>(event: &str, field: &'static str, r: &'a str) -> Result<&'a str, PayloadError> {
    let b = r
        .strip_prefix("refs/heads/")
        .ok_or_else(|| PayloadError::Invalid {
            event: printable(event),
            field,
            reason: "expected a `refs/heads/…` branch ref".into(),
        })?;
    check_branch(event, field, b)?;
    Ok(b)
}

fn pull_request(event: &str, body: &[u8], action: PrAction) -> Result<Parsed, PayloadError> {
    let e: PrEvent = from_json(event, body)?;
    let pr = e.pull_request;
    check_sha(
        event,
        "pullRequest.fromRef.latestCommit",
        &pr.from_ref.latest_commit,
    )?;
    check_sha(
        event,
        "pullRequest.toRef.latestCommit",
        &pr.to_ref.latest_commit,
    )?;
    let source = branch_of(event, "pullRequest.fromRef.id", &pr.from_ref.id)?.to_owned();
    let target = branch_of(event, "pullRequest.toRef.id", &pr.to_ref.id)?.to_owned();
    let clone_url = pr.to_ref.repository.clone_url();
    if clone_url.is_empty() {
        require(event, "pullRequest.toRef.repository.links.clone", "")?;
    }
    let head_clone_url = match pr.from_ref.repository.clone_url() {
        u if u.is_empty() => clone_url.clone(),
        u => u,
    };
    let fork = pr.from_ref.repository.id != pr.to_ref.repository.id;
    let before = match (action, e.previous_from_hash.as_deref()) {
        (PrAction::Synchronized, Some(b)) => before_of(event, b)?,
        _ => None,
    };
    let head_sha = pr.from_ref.latest_commit.to_ascii_lowercase();
    Ok(Parsed::Event(ForgeEvent {
        kind: Event::PullRequest,
        // Bitbucket DC keeps every PR's head here in the target repository.
        git_ref: format!("refs/pull-requests/{}/from", pr.id),
        branch: Some(target.clone()),
        tag: None,
        before,
        after: head_sha.clone(),
        clone_url,
        repository: pr.to_ref.repository.full_name(),
        pr: Some(PullRequest {
            number: pr.id,
            action,
            source_branch: source,
            target_branch: target,
            head_sha,
            head_clone_url,
            fork,
            base_sha: Some(pr.to_ref.latest_commit.to_ascii_lowercase()),
        }),
        message: pr.title,
        author: e.actor.display().to_owned(),
        sender: sender_login(e.actor.name.as_deref()),
        deleted: false,
    }))
}
