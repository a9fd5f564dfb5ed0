//! Bitbucket Cloud webhook payloads (`X-Event-Key`: `repo:push`,
//! `pullrequest:created`, `pullrequest:updated`; every other key is acknowledged and
//! ignored).
//!
//! Field names follow Atlassian's "Event payloads" page for Bitbucket Cloud (the
//! `Repository`, `Account` and `Pull Request` common entities) and the payloads
//! Woodpecker's and drone/go-scm's Bitbucket drivers parse.
//!
//! Three things differ from the other forges:
//!
//! * **One push, several refs.** `push.changes[]` lists every branch and tag the push
//!   updated. Each change becomes its own event ([`Parsed::Events`]), as `slipway hook`
//!   makes one run per updated ref: building only the newest change would silently
//!   skip a tag pushed together with its branch (`git push --follow-tags`).
//! * **No pull-request refs.** Bitbucket Cloud does not publish `refs/pull/…`, so a
//!   pull request is fetched from its source branch (`refs/heads/<source>`) in the
//!   repository the webhook belongs to. A fork's branch is not there, and Slipway only
//!   fetches from the repository's own clone URL, so **fork pull requests are
//!   acknowledged and ignored** with that reason rather than turned into runs that
//!   could only fail.
//! * **Abbreviated commit ids.** Pull-request payloads carry 12-digit hashes
//!   (Atlassian issue BCLOUD-21201). The event keeps the abbreviation; the planner
//!   resolves it against the fetched source branch and records the full id (see
//!   `workers::planner`).
//!
//! Who sent it: Bitbucket Cloud removed `username` from payloads in 2019 (GDPR); the
//! unique, stable `account_id` is recorded as the sender — link identities as
//! `bitbucket:<account id>` — and the `nickname` (not unique) only as the display
//! author.

use serde::Deserialize;

use super::event::{
    ForgeEvent, Parsed, PayloadError, PrAction, PullRequest, PushParts, check_branch,
    check_ref_name, from_json, ignored, printable, push_event, require, sender_login,
    unknown_event,
};
use super::{Event, ForgeKind};

#[derive(Deserialize, Default)]
struct Link {
    #[serde(default)]
    href: String,
}

#[derive(Deserialize)]
struct CloneLink {
    #[serde(default)]
    name: String,
    #[serde(default)]
    href: String,
}

#[derive(Deserialize, Default)]
struct RepoLinks {
    #[serde(default)]
    html: Link,
    /// Present in REST API repository objects, usually absent from webhook payloads.
    #[serde(default)]
    clone: Vec<CloneLink>,
}

#[derive(Deserialize)]
struct Repo {
    /// `workspace/repo_slug`.
    full_name: String,
    #[serde(default)]
    uuid: String,
    #[serde(default)]
    links: RepoLinks,
}

impl Repo {
    /// The HTTPS clone URL: the `https` clone link when the payload has one, otherwise
    /// the repository's web URL plus `.git` (Bitbucket Cloud serves git at
    /// `https://bitbucket.org/<workspace>/<slug>.git`). Userinfo Bitbucket may put in
    /// a clone link is dropped.
    fn clone_url(&self) -> String {
        let url = self
            .links
            .clone
            .iter()
            .find(|l| l.name == "https")
            .map(|l| l.href.clone())
            .filter(|h| !h.is_empty())
            .or_else(|| {
                let html = self.links.html.href.trim_end_matches('/');
                (!html.is_empty()).then(|| format!("{html}.git"))
            })
            .unwrap_or_default();
        match reqwest::Url::parse(&url) {
            Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
                let _ = u.set_username("");
                let _ = u.set_password(None);
                u.to_string()
            }
            _ => url,
        }
    }
}

#[derive(Deserialize, Default)]
struct Account {
    /// Gone from Cloud payloads since 2019; still read when present.
    username: Option<String>,
    account_id: Option<String>,
    nickname: Option<String>,
    display_name: Option<String>,
}

impl Account {
    fn sender(&self) -> Option<&str> {
        self.account_id.as_deref().or(self.username.as_deref())
    }

    fn display(&self) -> &str {
        self.username
            .as_deref()
            .or(self.nickname.as_deref())
            .or(self.display_name.as_deref())
            .unwrap_or("")
    }
}

#[derive(Deserialize)]
struct Target {
    hash: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct RefState {
    /// `branch`, `tag` (annotated or not) or, in old Mercurial payloads, `bookmark`.
    #[serde(rename = "type")]
    kind: String,
    name: String,
    target: Target,
}

#[derive(Deserialize)]
struct Change {
    /// `null` when the ref was deleted.
    new: Option<RefState>,
    /// `null` when the ref was created.
    old: Option<RefState>,
}

#[derive(Deserialize)]
struct PushBody {
    changes: Vec<Change>,
}

#[derive(Deserialize)]
struct PushEvent {
    #[serde(default)]
    actor: Account,
    repository: Repo,
    push: PushBody,
}

#[derive(Deserialize)]
struct BranchName {
    name: String,
}

#[derive(Deserialize)]
struct CommitRef {
    hash: String,
}

#[derive(Deserialize)]
struct Endpoint {
    branch: BranchName,
    commit: CommitRef,
    /// `null` when the source repository (a fork) has been deleted.
    repository: Option<Repo>,
}

#[derive(Deserialize)]
struct Pr {
    id: u64,
    title: String,
    source: Endpoint,
    destination: Endpoint,
}

#[derive(Deserialize)]
struct PrEvent {
    #[serde(default)]
    actor: Account,
    pullrequest: Pr,
    repository: Repo,
}

pub(super) fn parse(event: &str, body: &[u8]) -> Result<Parsed, PayloadError> {
    match event {
        "repo:push" => push(event, body),
        "pullrequest:created" => pull_request(event, body, PrAction::Opened),
        // Bitbucket sends `updated` for new commits and for edits of the title or
        // description alike, without saying which: each one builds the current head.
        "pullrequest:updated" => pull_request(event, body, PrAction::Synchronized),
        other => Ok(unknown_event(ForgeKind::Bitbucket, other)),
    }
}

fn push(event: &str, body: &[u8]) -> Result<Parsed, PayloadError> {
    let p: PushEvent = from_json(event, body)?;
    let clone_url = p.repository.clone_url();
    let mut events = Vec::new();
    let mut reasons = Vec::new();
    for change in &p.push.changes {
        let Some(new) = &change.new else {
            let name = change.old.as_ref().map_or("a ref", |o| o.name.as_str());
            reasons.push(format!(
                "`{}` was deleted; deletions do not trigger runs",
                printable(name)
            ));
            continue;
        };
        let git_ref = match new.kind.as_str() {
            "branch" => format!("refs/heads/{}", new.name),
            "tag" | "annotated_tag" => format!("refs/tags/{}", new.name),
            other => {
                reasons.push(format!(
                    "bitbucket `{}` changes do not trigger runs",
                    printable(other)
                ));
                continue;
            }
        };
        check_ref_name(event, "push.changes.new.name", &git_ref)?;
        let before = change.old.as_ref().map_or("", |o| o.target.hash.as_str());
        // `target` of a tag is the tagged commit, annotated or not.
        match push_event(PushParts {
            event,
            git_ref: &git_ref,
            before,
            after: &new.target.hash,
            tag_commit: None,
            deleted: false,
            clone_url: &clone_url,
            repository: &p.repository.full_name,
            clone_url_field: "repository.links.html.href",
            repository_field: "repository.full_name",
            message: &new.target.message,
            author: p.actor.display(),
            sender: p.actor.sender(),
        })? {
            Parsed::Event(e) => events.push(e),
            Parsed::Ignored { reason } => reasons.push(reason),
            Parsed::Ping | Parsed::Events(_) => {}
        }
    }
    Ok(match events.len() {
        0 if reasons.is_empty() => ignored("bitbucket push without changes"),
        0 => ignored(reasons.join("; ")),
        1 => Parsed::Event(events.remove(0)),
        _ => Parsed::Events(events),
    })
}

/// A commit id as Bitbucket Cloud gives it in pull requests: at least 7 hex digits
/// (usually 12), at most a full SHA-256 id.
fn check_commitish(event: &str, field: &'static str, sha: &str) -> Result<(), PayloadError> {
    let ok = (7..=64).contains(&sha.len()) && sha.bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(())
    } else {
        Err(PayloadError::Invalid {
            event: printable(event),
            field,
            reason: "expected a (possibly abbreviated) hexadecimal commit id".into(),
        })
    }
}

fn pull_request(event: &str, body: &[u8], action: PrAction) -> Result<Parsed, PayloadError> {
    let e: PrEvent = from_json(event, body)?;
    let pr = e.pullrequest;
    check_commitish(
        event,
        "pullrequest.source.commit.hash",
        &pr.source.commit.hash,
    )?;
    check_commitish(
        event,
        "pullrequest.destination.commit.hash",
        &pr.destination.commit.hash,
    )?;
    check_branch(
        event,
        "pullrequest.source.branch.name",
        &pr.source.branch.name,
    )?;
    check_branch(
        event,
        "pullrequest.destination.branch.name",
        &pr.destination.branch.name,
    )?;
    let clone_url = e.repository.clone_url();
    if clone_url.is_empty() {
        require(event, "repository.links.html.href", "")?;
    }
    // Compare repository UUIDs (full names can be renamed); a deleted source
    // repository counts as foreign.
    let base_uuid = pr
        .destination
        .repository
        .as_ref()
        .map_or(e.repository.uuid.as_str(), |r| r.uuid.as_str());
    let fork = pr
        .source
        .repository
        .as_ref()
        .is_none_or(|r| r.uuid.is_empty() || r.uuid != base_uuid);
    if fork {
        return Ok(ignored(format!(
            "bitbucket pull request #{} comes from another repository; Bitbucket Cloud \
             has no pull-request refs to fetch a fork's commits from, so fork pull \
             requests are not built",
            pr.id
        )));
    }
    let head_sha = pr.source.commit.hash.to_ascii_lowercase();
    Ok(Parsed::Event(ForgeEvent {
        kind: Event::PullRequest,
        // No `refs/pull/…` on Bitbucket Cloud: the source branch, in this repository.
        git_ref: format!("refs/heads/{}", pr.source.branch.name),
        branch: Some(pr.destination.branch.name.clone()),
        tag: None,
        before: None,
        after: head_sha.clone(),
        clone_url: clone_url.clone(),
        repository: e.repository.full_name,
        pr: Some(PullRequest {
            number: pr.id,
            action,
            source_branch: pr.source.branch.name,
            target_branch: pr.destination.branch.name,
            head_sha,
            head_clone_url: clone_url,
            fork,
            // Abbreviated like the head; the planner fetches the target branch anyway.
            base_sha: None,
        }),
        message: pr.title,
        author: e.actor.display().to_owned(),
        sender: sender_login(e.actor.sender()),
        deleted: false,
    }))
}
