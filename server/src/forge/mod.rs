//! Forge adapters: everything Slipway knows about GitHub, GitLab, Gitea, Forgejo,
//! Bitbucket Cloud, Bitbucket Data Center and Gitee.
//!
//! Three jobs, in the order a webhook meets them:
//!
//! 1. [`open`] checks the request's signature or token on the **bytes the forge
//!    signed** ([`verify`]: the raw body; for Gitea/Forgejo form deliveries the decoded
//!    `payload` field, see [`form`]), in constant time, before the JSON parser sees a
//!    byte (a parser is attack surface; an unauthenticated caller must not reach it),
//!    and returns the JSON payload — the body, or a form body's `payload` field.
//! 2. [`delivery_id`] / [`event_name`] read the request metadata the webhook handler
//!    needs for de-duplication and dispatch, and [`parse`] turns a payload into one
//!    normalized [`ForgeEvent`] — or says, with a reason, why the delivery is
//!    acknowledged and ignored. Each parser first reads only what decides that (the
//!    event's `action`, a push's ref), so an ignored action is acknowledged whatever
//!    else its payload lacks, and only then the fields the event needs.
//! 3. [`StatusReporter`] reports a run's state back to the forge's commit-status API.
//!
//! The plain-git kind ([`ForgeKind::Git`]) has no webhook format and no status API: a
//! post-receive hook (`slipway hook`) authenticates with an API token instead, so
//! [`verify`] and [`parse`] refuse it explicitly rather than silently succeeding.
//!
//! Nothing here logs a secret, a signature or a token; errors carry header *names* and
//! reasons, never values.

mod bitbucket;
mod bitbucket_dc;
mod event;
pub mod form;
mod gitea;
mod gitee;
mod github;
mod gitlab;
mod status;
mod status_bitbucket;
mod status_bitbucket_dc;
mod verify;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use event::{ForgeEvent, Parsed, PayloadError, PrAction, PullRequest};
pub use pipelines::Event;
pub use status::{
    CommitStatus, State, StatusError, StatusReporter, StatusTarget, api_base_for, check_api_base,
    clone_host, description_limit,
};
pub use verify::{
    DeliveryError, GITEE_MAX_SKEW, VerifyError, delivery_id, delivery_id_with_body, event_name,
    open, verify, verify_at,
};

/// Which kind of forge a repository lives on. Stored with the repository and used in
/// the webhook URL (`/hooks/{forge}/{repo}`), hence the lowercase serde form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ForgeKind {
    Github,
    Gitlab,
    Gitea,
    Forgejo,
    /// Bitbucket Cloud (bitbucket.org).
    Bitbucket,
    /// Bitbucket Data Center (formerly Bitbucket Server), self-hosted.
    #[serde(rename = "bitbucket-dc")]
    BitbucketDc,
    Gitee,
    /// A plain git server calling `slipway hook` from a post-receive hook.
    Git,
}

impl ForgeKind {
    pub const ALL: [ForgeKind; 8] = [
        ForgeKind::Github,
        ForgeKind::Gitlab,
        ForgeKind::Gitea,
        ForgeKind::Forgejo,
        ForgeKind::Bitbucket,
        ForgeKind::BitbucketDc,
        ForgeKind::Gitee,
        ForgeKind::Git,
    ];

    /// Whether Slipway can report commit statuses to this forge. Plain git has no API;
    /// Gitee's API v5 has no commit-status endpoint (drone/go-scm's Gitee driver
    /// answers `ErrNotSupported` for the same reason).
    pub fn has_status_api(self) -> bool {
        !matches!(self, ForgeKind::Git | ForgeKind::Gitee)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ForgeKind::Github => "github",
            ForgeKind::Gitlab => "gitlab",
            ForgeKind::Gitea => "gitea",
            ForgeKind::Forgejo => "forgejo",
            ForgeKind::Bitbucket => "bitbucket",
            ForgeKind::BitbucketDc => "bitbucket-dc",
            ForgeKind::Gitee => "gitee",
            ForgeKind::Git => "git",
        }
    }
}

impl fmt::Display for ForgeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The forge name in a URL or config file was not one Slipway knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown forge `{0}` (expected one of: github, gitlab, gitea, forgejo, bitbucket, bitbucket-dc, gitee, git)"
)]
pub struct UnknownForge(pub String);

impl FromStr for ForgeKind {
    type Err = UnknownForge;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Case-insensitive because the value comes from URLs and config files typed by
        // people; the canonical (Display/serde) form stays lowercase.
        ForgeKind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                // Bound what we echo back: the input may be an arbitrary URL segment.
                UnknownForge(s.chars().take(32).collect())
            })
    }
}

/// Parse a **verified** delivery into a normalized event.
///
/// `event_name` is the forge's event header ([`event_name`]). Never panics, on
/// any input: payloads are untrusted even after verification (a leaked secret, a buggy
/// forge), and a panic in the handler would turn a bad payload into a 500.
pub fn parse(kind: ForgeKind, event_name: &str, body: &[u8]) -> Result<Parsed, PayloadError> {
    let event_name = event_name.trim();
    match kind {
        ForgeKind::Github => github::parse(event_name, body),
        ForgeKind::Gitlab => gitlab::parse(event_name, body),
        ForgeKind::Gitea | ForgeKind::Forgejo => gitea::parse(kind, event_name, body),
        ForgeKind::Bitbucket => bitbucket::parse(event_name, body),
        ForgeKind::BitbucketDc => bitbucket_dc::parse(event_name, body),
        ForgeKind::Gitee => gitee::parse(event_name, body),
        ForgeKind::Git => Err(PayloadError::Unsupported(kind)),
    }
}
