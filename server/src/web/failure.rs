//! The failure up front: for a run that failed, the failing stage and step and the
//! log lines that explain it — the first lines that look like errors and the last
//! lines before it ended — each linked into the log, so nobody scrolls a huge log to
//! find why.
//!
//! Finding those lines reads up to [`SCAN_LINES`] of the log; a failed run's page is
//! viewed again and again (and its live part re-fetched on every event), so the lines
//! are kept in a [`FailureCache`](crate::logs::failure_cache::FailureCache) keyed by the step and its log's line count: a log
//! that grew (a live step) is read again, an ended one never.

use std::sync::Arc;

use crate::daemon::state::AppState;
use crate::logs::StepKey;
use crate::logs::failure_cache::Lines;
use crate::store::{StageStatus, StageWithSteps, StepStatus};

/// What the run page shows first when a run failed.
#[derive(Debug, Clone)]
pub struct Failure {
    pub stage: String,
    pub step: String,
    pub reason: String,
    /// The step's log page.
    pub log: String,
    /// (line number, text) of the first error-looking lines.
    pub first: Vec<(u64, String)>,
    /// (line number, text) of the last lines.
    pub last: Vec<(u64, String)>,
}

/// Error-looking lines shown, and how far into a log they are looked for (a bound on
/// the work one page view does, whatever the log's size).
const FIRST: usize = 5;
const SCAN_LINES: u64 = 200_000;
const LAST: usize = 12;

/// Words that mark a line as explaining a failure, lowercase.
const MARKERS: [&str; 9] = [
    "error",
    "failed",
    "failure",
    "fatal",
    "panicked",
    "exception",
    "traceback",
    "denied",
    "not found",
];

fn looks_like_error(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    MARKERS.iter().any(|m| lower.contains(m))
}

/// Text without ANSI escape sequences.
pub fn plain(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

fn failed_stage(s: &StageWithSteps) -> bool {
    matches!(
        s.stage.status,
        StageStatus::Failure | StageStatus::Error | StageStatus::TimedOut
    )
}

/// The failure of a run with these stages (`None` if none failed). `log_url` makes a
/// step's log page URL from (stage id, step index).
pub async fn of(
    state: &AppState,
    stages: &[StageWithSteps],
    log_url: impl Fn(i64, i64) -> String,
) -> Option<Failure> {
    let mut failed: Vec<&StageWithSteps> = stages.iter().filter(|s| failed_stage(s)).collect();
    failed.sort_by_key(|s| s.stage.finished_at.unwrap_or(i64::MAX));
    let stage = failed
        .iter()
        .find(|s| s.steps.iter().any(|st| failed_step(st.status)))
        .or(failed.first())?;
    let reason = stage
        .stage
        .reason
        .clone()
        .unwrap_or_else(|| stage.stage.status.to_string());
    let Some(step) = stage.steps.iter().find(|st| failed_step(st.status)) else {
        return Some(Failure {
            stage: stage.stage.key.clone(),
            step: "(before any step)".into(),
            reason,
            log: String::new(),
            first: Vec::new(),
            last: Vec::new(),
        });
    };
    let key = StepKey {
        run: stage.stage.run_id,
        stage: stage.stage.id,
        step: u32::try_from(step.idx).ok()?,
    };
    let logs = state.clone();
    let lines = tokio::task::spawn_blocking(move || {
        let count = logs.logs.count(key).unwrap_or(0);
        if let Some(hit) = logs.failures.get(key, count) {
            return hit;
        }
        // A log that could not be read shows what was read, and is not kept.
        let mut whole = true;
        let mut first = Vec::new();
        let mut from = 1;
        while first.len() < FIRST && from <= SCAN_LINES {
            let lines = logs.logs.read(key, from, 5_000).unwrap_or_else(|_| {
                whole = false;
                Vec::new()
            });
            let Some(end) = lines.last().map(|l| l.number) else {
                break;
            };
            for l in lines {
                let text = plain(&l.bytes);
                if first.len() < FIRST && looks_like_error(&text) {
                    first.push((l.number, text));
                }
            }
            from = end + 1;
        }
        let last: Vec<(u64, String)> = logs
            .logs
            .tail(key, LAST)
            .unwrap_or_else(|_| {
                whole = false;
                Vec::new()
            })
            .into_iter()
            .map(|l| (l.number, plain(&l.bytes)))
            .collect();
        let lines = Arc::new(Lines { first, last });
        if whole {
            logs.failures.put(key, count, lines.clone());
        }
        lines
    })
    .await
    .ok()?;
    // The stage's reason usually names the exit code already.
    let exit = match step.exit_code {
        Some(c) if !reason.contains(&format!("code {c}")) => format!(" (exit code {c})"),
        _ => String::new(),
    };
    Some(Failure {
        stage: stage.stage.key.clone(),
        step: step.name.clone(),
        reason: format!("{reason}{exit}"),
        log: log_url(stage.stage.id, step.idx),
        first: lines.first.clone(),
        last: lines.last.clone(),
    })
}

fn failed_step(s: StepStatus) -> bool {
    matches!(
        s,
        StepStatus::Failure | StepStatus::Error | StepStatus::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_is_stripped_and_errors_are_recognised() {
        assert_eq!(plain(b"\x1b[31mERROR\x1b[0m: boom"), "ERROR: boom");
        assert!(looks_like_error("npm ERR! Test failed"));
        assert!(looks_like_error("thread 'main' panicked at src/lib.rs"));
        assert!(!looks_like_error("compiling 12 crates"));
    }
}
