//! What a stage reports: events while it runs, its outcome at the end (both cross the
//! runner protocol as JSON).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::artifacts::Artifact;
use crate::backend::LogStreamKind;
use crate::finding::Finding;

/// Progress of a stage, sent while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageEvent {
    StepStarted {
        stage: String,
        index: usize,
        name: String,
    },
    Line(LogLine),
    /// Before the first step: the backend waits for something outside the stage
    /// (a Kubernetes ResourceQuota), and why, masked; `None` once it no longer waits.
    /// Sent when the reason changes.
    Waiting {
        stage: String,
        reason: Option<String>,
    },
    /// Sent for every step, also for skipped ones (which get no `StepStarted`).
    StepFinished {
        stage: String,
        index: usize,
        name: String,
        outcome: StepOutcome,
    },
}

/// One line of step output, already masked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub stage: String,
    /// Step index.
    pub step: usize,
    /// 1-based, per step, counting stdout and stderr lines together.
    pub number: u64,
    pub stream: LogStreamKind,
    /// When the runner completed the line.
    pub time: SystemTime,
    /// Without the trailing newline; may be non-UTF-8; at most 64 KiB of output
    /// (longer lines arrive as several `LogLine`s).
    pub bytes: Vec<u8>,
}

/// How a step or a stage ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Success,
    /// A step exited non-zero.
    Failure,
    TimedOut,
    Cancelled,
    /// The stage could not produce a result: an infrastructure failure (retryable),
    /// or a problem with the spec itself such as a missing commit or a refused
    /// artifact path (not retryable; see
    /// [`Error::is_retryable`](crate::Error::is_retryable)). The message is masked.
    Error(String),
    /// Not run because an earlier step did not succeed.
    Skipped,
}

impl Status {
    pub fn is_success(&self) -> bool {
        matches!(self, Status::Success)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepOutcome {
    pub name: String,
    pub status: Status,
    /// `None` when the step did not exit by itself (timeout, cancel, skipped, error
    /// before it ran).
    pub exit_code: Option<i32>,
    pub oom_killed: bool,
    pub duration: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageOutcome {
    pub id: String,
    pub status: Status,
    pub steps: Vec<StepOutcome>,
    pub artifacts: Vec<Artifact>,
    /// Values later stages read as `${{ stages.<name>.outputs.<key> }}` (an image
    /// stage's `digest`, `image`).
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
    /// A scan stage's findings.
    #[serde(default)]
    pub findings: Vec<Finding>,
    /// For [`Status::Error`]: whether running the stage again could help
    /// ([`Error::is_retryable`](crate::Error::is_retryable)); a refused artifact path or
    /// a missing commit cannot.
    #[serde(default)]
    pub retryable: bool,
    pub duration: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip_through_json() {
        let outcome = StageOutcome {
            id: "test (features=full)".into(),
            status: Status::Error("boom".into()),
            steps: vec![StepOutcome {
                name: "s".into(),
                status: Status::TimedOut,
                exit_code: None,
                oom_killed: false,
                duration: Duration::from_millis(1500),
            }],
            artifacts: vec![Artifact {
                path: "out/a.txt".into(),
                size: 5,
                sha256: "00".into(),
            }],
            outputs: BTreeMap::from([("digest".into(), "sha256:00".into())]),
            findings: vec![Finding {
                tool: "slipway-secrets".into(),
                rule: "github-token".into(),
                severity: crate::Severity::High,
                path: Some("src/config.rs".into()),
                line: Some(3),
                message: "GitHub token".into(),
            }],
            retryable: false,
            duration: Duration::from_secs(2),
        };
        let json = serde_json::to_string(&outcome).unwrap();
        assert!(json.contains(r#""status":{"error":"boom"}"#), "{json}");
        assert!(json.contains(r#""status":"timed_out""#), "{json}");
        let back: StageOutcome = serde_json::from_str(&json).unwrap();
        assert_eq!(back, outcome);
    }
}
