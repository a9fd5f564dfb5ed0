//! The normalized event every forge payload becomes, and the parse entry point.

use serde::{Deserialize, Serialize};

use super::{Event, ForgeKind};

/// The pull-request actions that start a run. Everything else (closed, labeled,
/// edited, approved, …) is [`Parsed::Ignored`], so this enum is exhaustive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrAction {
    Opened,
    /// New commits on the source branch (GitHub `synchronize`, Gitea/Forgejo
    /// `synchronized`, GitLab `update` with `oldrev`).
    Synchronized,
    Reopened,
}

/// Pull/merge request details. Stored with the run, hence serde.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    /// GitHub/Gitea PR number; GitLab MR `iid` (the per-project number, not the global id).
    pub number: u64,
    pub action: PrAction,
    pub source_branch: String,
    pub target_branch: String,
    pub head_sha: String,
    /// Where the source branch lives. For a deleted fork (GitHub sends `head.repo: null`)
    /// this falls back to the base repository's URL; the head commit is still fetchable
    /// there through [`ForgeEvent::git_ref`] (`refs/pull/N/head`).
    pub head_clone_url: String,
    /// The source branch lives in another repository. Fork PRs are untrusted: no
    /// secrets unless the repository opts in.
    pub fork: bool,
    /// Tip of the target branch when the event was sent, where the forge says (GitHub
    /// and Gitea `base.sha`; GitLab's webhook does not carry it).
    pub base_sha: Option<String>,
}

/// One normalized trigger, whatever forge it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgeEvent {
    /// `push`, `pull_request` or `tag`: a forge never sends the others.
    pub kind: Event,
    /// Full ref to fetch. Pushes: `refs/heads/…` / `refs/tags/…`. Pull requests: the
    /// forge's PR head ref in the *base* repository (`refs/pull/N/head`, GitLab
    /// `refs/merge-requests/N/head`), which also works for forks.
    pub git_ref: String,
    /// Branch name for pushes; for pull requests the *target* branch, so `when.branch`
    /// filters mean "PRs into main" as in Woodpecker and Drone.
    pub branch: Option<String>,
    pub tag: Option<String>,
    /// Previous tip, `None` for a newly created ref (all-zero `before`) and for PRs
    /// that carry no previous head.
    pub before: Option<String>,
    /// The commit to build (always a commit, never an annotated-tag object — see the
    /// per-forge parsers).
    pub after: String,
    /// Clone URL of the repository the webhook belongs to (the PR's base repository).
    pub clone_url: String,
    /// the forge's full path of the repository the payload is about, e.g. `owner/name` or GitLab's `path_with_namespace`
    pub repository: String,
    pub pr: Option<PullRequest>,
    /// Head commit message for pushes, title for pull requests.
    pub message: String,
    /// Login of who triggered the event (pusher / PR actor), empty when unknown; for
    /// display only (it may fall back to a display name).
    pub author: String,
    /// The account the forge says sent the event, by login only (GitHub and
    /// Gitea/Forgejo `sender.login`, GitLab `user_username` / `user.username`): what
    /// a run's `pusher` is recorded from. Never a commit's author.
    pub sender: Option<String>,
    /// Ref deletion. Deletions are [`Parsed::Ignored`] by [`parse`]; the field exists
    /// for other producers (`slipway hook`) and stored events.
    pub deleted: bool,
}

/// The result of parsing a verified delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "made once per delivery and moved straight into the run; boxing would only add an allocation"
)]
pub enum Parsed {
    /// The forge's "is this endpoint alive" probe (GitHub `ping`).
    Ping,
    /// Acknowledged (2xx) but starts nothing.
    Ignored {
        reason: String,
    },
    Event(ForgeEvent),
    /// Several refs updated by one delivery (a Bitbucket push lists every updated
    /// branch and tag in `changes[]`): one run each, as `slipway hook` makes one run
    /// per updated ref. Never empty and never a single event (that is
    /// [`Parsed::Event`]), so a delivery's run count does not depend on the forge.
    Events(Vec<ForgeEvent>),
}

/// A delivery that claims to be a handled event but cannot be understood: 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Not JSON, or JSON missing a required field / with a wrong type. The message is
    /// serde_json's, which names the field and the line/column.
    #[error("malformed {event} payload: {message}")]
    Json { event: String, message: String },
    #[error("invalid `{field}` in {event} payload: {reason}")]
    Invalid {
        event: String,
        field: &'static str,
        reason: String,
    },
    #[error("`{0}` has no webhook payload format (plain git uses `slipway hook`)")]
    Unsupported(ForgeKind),
}

// ---- helpers shared by the per-forge parsers ----

/// Deserialize `T` from a payload. The error names the path of the offending field
/// (``pull_request: missing field `head` ``), not just its last segment.
pub(super) fn from_json<'a, T: Deserialize<'a>>(
    event: &str,
    body: &'a [u8],
) -> Result<T, PayloadError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| PayloadError::Json {
        event: printable(event),
        message: e.to_string(),
    })?;
    // Trailing characters make the payload malformed even when its head parsed.
    de.end().map_err(|e| PayloadError::Json {
        event: printable(event),
        message: e.to_string(),
    })?;
    Ok(value)
}

/// The first stage of a pull-request payload: only what decides whether Slipway acts on
/// it. Ignored actions are acknowledged whatever else their payload lacks.
#[derive(Deserialize)]
pub(super) struct ActionOnly {
    pub action: String,
}

/// The first stage of a push payload: what decides whether it runs. Deletions and refs
/// that are neither branches nor tags are acknowledged without reading further.
#[derive(Deserialize)]
pub(super) struct PushHead {
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Checked (and required) by the full parse; absent here means "not a deletion".
    #[serde(default)]
    pub after: String,
    /// GitHub's flag; Gitea and GitLab mark a deletion with an all-zero `after`.
    #[serde(default)]
    pub deleted: bool,
}

impl PushHead {
    pub fn read(event: &str, body: &[u8]) -> Result<PushHead, PayloadError> {
        from_json(event, body)
    }

    /// `Some` when the push is acknowledged without a run.
    pub fn ignored(&self) -> Option<Parsed> {
        push_target(&self.git_ref, &self.after, self.deleted)
            .err()
            .map(ignored)
    }
}

/// What a push builds, or why it starts nothing (the reason it is acknowledged with):
/// deleted refs and refs that are neither branches nor tags.
pub(super) fn push_target(git_ref: &str, after: &str, deleted: bool) -> Result<RefTarget, String> {
    if deleted || is_zero_sha(after) {
        return Err(format!(
            "`{}` was deleted; deletions do not trigger runs",
            printable(git_ref)
        ));
    }
    classify_ref(git_ref)
        .ok_or_else(|| format!("`{}` is neither a branch nor a tag", printable(git_ref)))
}

impl ForgeEvent {
    /// Whether this event is about the repository registered as `name` with
    /// `clone_url`: the payload's repository path is the name (ignoring ASCII case, as
    /// GitHub, GitLab and Gitea do for owners and names), or its clone URL is the
    /// registered one (ignoring case, a trailing `/` and `.git`) — for a repository
    /// registered under another name than its path on the forge.
    pub fn is_for(&self, name: &str, clone_url: &str) -> bool {
        if !self.repository.is_empty() && self.repository.eq_ignore_ascii_case(name) {
            return true;
        }
        let (ours, theirs) = (url_key(clone_url), url_key(&self.clone_url));
        !ours.is_empty() && ours.eq_ignore_ascii_case(theirs)
    }
}

/// A clone URL without what does not change the repository it names.
fn url_key(url: &str) -> &str {
    let url = url.trim().trim_end_matches('/');
    url.strip_suffix(".git").unwrap_or(url)
}

/// Event names end up in stored reasons and error messages; keep them short and plain
/// whatever the header contained.
pub(super) fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect::<String>()
}

pub(super) fn ignored(reason: impl Into<String>) -> Parsed {
    Parsed::Ignored {
        reason: reason.into(),
    }
}

pub(super) fn unknown_event(forge: ForgeKind, event: &str) -> Parsed {
    ignored(format!(
        "{forge} event `{}` does not trigger runs",
        printable(event)
    ))
}

/// `true` for the all-zero object id forges use for "no commit" (ref created/deleted).
pub(super) fn is_zero_sha(sha: &str) -> bool {
    !sha.is_empty() && sha.bytes().all(|b| b == b'0')
}

/// A commit id must be a full SHA-1 or SHA-256 hex id: it goes into git fetches and
/// status-API URLs, so anything else is rejected here rather than trusted downstream.
pub(super) fn check_sha(event: &str, field: &'static str, sha: &str) -> Result<(), PayloadError> {
    let ok = matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(())
    } else {
        Err(PayloadError::Invalid {
            event: printable(event),
            field,
            reason: "expected a 40 or 64 digit hexadecimal commit id".into(),
        })
    }
}

/// `before` as stored: `None` for a created ref.
pub(super) fn before_of(event: &str, before: &str) -> Result<Option<String>, PayloadError> {
    if before.is_empty() || is_zero_sha(before) {
        return Ok(None);
    }
    check_sha(event, "before", before)?;
    Ok(Some(before.to_ascii_lowercase()))
}

/// What a pushed ref names.
pub(super) enum RefTarget {
    Branch(String),
    Tag(String),
}

pub(super) fn classify_ref(git_ref: &str) -> Option<RefTarget> {
    if let Some(b) = git_ref.strip_prefix("refs/heads/") {
        (!b.is_empty()).then(|| RefTarget::Branch(b.to_owned()))
    } else if let Some(t) = git_ref.strip_prefix("refs/tags/") {
        (!t.is_empty()).then(|| RefTarget::Tag(t.to_owned()))
    } else {
        None
    }
}

/// Everything the forges agree on for a push, already extracted from their payloads.
pub(super) struct PushParts<'a> {
    pub event: &'a str,
    pub git_ref: &'a str,
    pub before: &'a str,
    pub after: &'a str,
    /// The commit a tag points at, when the payload gives it separately from `after`
    /// (for annotated tags `after` is the tag object, which cannot be built or given a
    /// commit status).
    pub tag_commit: Option<&'a str>,
    pub deleted: bool,
    pub clone_url: &'a str,
    /// The payload's field name of `clone_url`, for the error when it is empty.
    pub clone_url_field: &'static str,
    pub repository: &'a str,
    /// The payload's field name of `repository`, for the error when it is empty.
    pub repository_field: &'static str,
    pub message: &'a str,
    pub author: &'a str,
    pub sender: Option<&'a str>,
}

pub(super) fn push_event(p: PushParts<'_>) -> Result<Parsed, PayloadError> {
    let target = match push_target(p.git_ref, p.after, p.deleted) {
        Ok(target) => target,
        Err(reason) => return Ok(ignored(reason)),
    };
    check_ref_name(p.event, "ref", p.git_ref)?;
    let (kind, branch, tag, after) = match target {
        RefTarget::Branch(b) => (Event::Push, Some(b), None, p.after),
        RefTarget::Tag(t) => (
            Event::Tag,
            None,
            Some(t),
            p.tag_commit.filter(|c| !c.is_empty()).unwrap_or(p.after),
        ),
    };
    check_sha(p.event, "after", after)?;
    require(p.event, p.clone_url_field, p.clone_url)?;
    require(p.event, p.repository_field, p.repository)?;
    Ok(Parsed::Event(ForgeEvent {
        kind,
        git_ref: p.git_ref.to_owned(),
        branch,
        tag,
        before: before_of(p.event, p.before)?,
        after: after.to_ascii_lowercase(),
        clone_url: p.clone_url.to_owned(),
        repository: p.repository.to_owned(),
        pr: None,
        message: p.message.to_owned(),
        author: p.author.to_owned(),
        sender: sender_login(p.sender),
        deleted: false,
    }))
}

/// A sender's login as a run records it: absent when empty.
pub(super) fn sender_login(login: Option<&str>) -> Option<String> {
    login
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
}

/// A field Slipway needs must not be empty.
pub(super) fn require(event: &str, field: &'static str, value: &str) -> Result<(), PayloadError> {
    if value.trim().is_empty() {
        return Err(PayloadError::Invalid {
            event: printable(event),
            field,
            reason: "is empty".into(),
        });
    }
    Ok(())
}

/// Branch names from a PR payload must be valid git branch names: they become
/// `when.branch` inputs and parts of git refspecs.
pub(super) fn check_branch(event: &str, field: &'static str, b: &str) -> Result<(), PayloadError> {
    if b.is_empty() {
        return Err(PayloadError::Invalid {
            event: printable(event),
            field,
            reason: "branch name is empty".into(),
        });
    }
    check_ref_name(event, field, &format!("refs/heads/{b}"))
}

/// Reject ref names git itself would refuse (`git check-ref-format`). Forges never send
/// them, and downstream code builds refspecs like `+{ref}:refs/…` from these strings,
/// where a `:` or `..` would change the meaning.
pub(super) fn check_ref_name(
    event: &str,
    field: &'static str,
    name: &str,
) -> Result<(), PayloadError> {
    let invalid = |reason: &str| PayloadError::Invalid {
        event: printable(event),
        field,
        reason: reason.to_owned(),
    };
    if name.len() > 1024 {
        return Err(invalid("ref name longer than 1024 bytes"));
    }
    if name
        .chars()
        .any(|c| c.is_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\'))
    {
        return Err(invalid("ref name contains a character git does not allow"));
    }
    if name.contains("..") || name.contains("@{") || name.ends_with('.') || name.ends_with('/') {
        return Err(invalid("ref name is not a valid git ref"));
    }
    let bad_component = name
        .split('/')
        .any(|c| c.is_empty() || c.starts_with('.') || c.ends_with(".lock"));
    if bad_component {
        return Err(invalid("ref name has an empty, hidden or .lock component"));
    }
    Ok(())
}
