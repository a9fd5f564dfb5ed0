//! What happened: the input to [`crate::plan`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    #[default]
    Push,
    PullRequest,
    Tag,
    Cron,
    Manual,
}

impl Event {
    pub const ALL: [Event; 5] = [
        Event::Push,
        Event::PullRequest,
        Event::Tag,
        Event::Cron,
        Event::Manual,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Event::Push => "push",
            Event::PullRequest => "pull_request",
            Event::Tag => "tag",
            Event::Cron => "cron",
            Event::Manual => "manual",
        }
    }

    pub fn from_name(s: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

impl std::str::FromStr for Event {
    type Err = UnknownEvent;
    fn from_str(s: &str) -> Result<Event, UnknownEvent> {
        Event::from_name(s).ok_or_else(|| UnknownEvent(s.to_owned()))
    }
}

/// A name that is not one of [`Event::ALL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownEvent(pub String);

impl std::fmt::Display for UnknownEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown event {:?}", self.0)
    }
}

impl std::error::Error for UnknownEvent {}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The event a run is planned for. Stored inside the [`crate::Plan`] so a re-run sees
/// exactly the same inputs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EventContext {
    pub event: Event,
    /// The pushed branch; for `pull_request` the *target* branch.
    pub branch: Option<String>,
    /// For `pull_request`: the branch the change comes from.
    pub source_branch: Option<String>,
    pub tag: Option<String>,
    pub sha: String,
    /// Paths changed by the event. `None` means unknown (e.g. a new branch, a cron run):
    /// path filters then match, like GitLab's `changes:` when no diff is available, because
    /// skipping work we cannot prove unnecessary is the riskier choice.
    pub changed_paths: Option<Vec<String>>,
    /// Manual trigger parameters. After planning, the plan's copy has defaults applied.
    pub params: BTreeMap<String, String>,
    /// For `cron`: the name of the schedule (a key of `on.cron`) that fired.
    pub cron: Option<String>,
    pub repo: Option<String>,
    pub message: Option<String>,
    pub author: Option<String>,
    /// The pull request comes from a fork: the server must not hand it secrets.
    pub fork: bool,
    /// For `pull_request`: its number on the forge.
    pub pr_number: Option<u64>,
}
