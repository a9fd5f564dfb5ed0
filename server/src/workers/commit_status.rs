//! Commit statuses: every run state change is reported to the repository's forge.
//!
//! The worker follows the store's event log rather than being called from the places
//! that change state, so no code path can forget to report, and a report that fails
//! (forge down) never holds up a stage. Reports for one run are sent in order; a newer
//! state for a run supersedes an older one still waiting to be sent.

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::daemon::state::{AppState, forge_token_aad};
use crate::forge::{self, CommitStatus, ForgeKind, State, StatusTarget};
use crate::store::{Run, RunId, RunStatus};

/// How far behind the newest event id to re-read: on PostgreSQL, ids are assigned at
/// insert but transactions commit out of order, so a late commit can appear below the
/// last id already seen.
const REREAD_WINDOW: i64 = 200;
const POLL: Duration = Duration::from_millis(500);
const ATTEMPTS: u32 = 4;

pub fn spawn(state: AppState) -> JoinHandle<()> {
    tokio::spawn(async move {
        // Start at the end of the log: statuses from before this process started were
        // reported by its predecessor (or are stale; a forge shows the newest anyway).
        let mut follower = Follower::starting_at(state.store.latest_event_id().await.unwrap_or(0));
        loop {
            if let Err(e) = follower.step(&state).await {
                tracing::warn!(error = %e, "status worker: reading events failed");
            }
            tokio::select! {
                _ = state.shutdown.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    })
}

/// Reads new run-level events and reports each run's newest state.
#[derive(Default)]
pub struct Follower {
    pub last: i64,
    seen: BTreeSet<i64>,
}

impl Follower {
    pub fn starting_at(last: i64) -> Self {
        Follower {
            last,
            seen: BTreeSet::new(),
        }
    }

    /// One pass over new events; returns how many reports were sent.
    pub async fn step(&mut self, state: &AppState) -> crate::store::Result<usize> {
        let from = (self.last - REREAD_WINDOW).max(0);
        let events = state.store.events_after(from, None, 1_000).await?;
        let mut newest: HashMap<RunId, RunStatus> = HashMap::new();
        for event in events {
            if !self.seen.insert(event.id) {
                continue;
            }
            self.last = self.last.max(event.id);
            if event.stage_id.is_some() {
                continue;
            }
            if let Ok(status) = RunStatus::from_str(&event.status) {
                newest.insert(event.run_id, status);
            }
        }
        // Forget ids that fell out of the window.
        let floor = self.last - REREAD_WINDOW;
        self.seen = self.seen.split_off(&floor);
        let mut sent = 0;
        for (run_id, status) in newest {
            match report_run(state, run_id, status).await {
                Ok(true) => sent += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(run = run_id, error = %e, "commit status not reported"),
            }
        }
        Ok(sent)
    }
}

/// Reports `status` for `run` to its forge. `Ok(false)` when there is nothing to
/// report to (a plain git repository, or no forge token).
pub async fn report_run(
    state: &AppState,
    run_id: RunId,
    status: RunStatus,
) -> anyhow::Result<bool> {
    let run = state.store.get_run(run_id).await?;
    let repo = state.store.get_repo(run.repo_id).await?;
    if !repo.forge.has_status_api() {
        // Plain git has no API; Gitee's API v5 has no commit-status endpoint. Nothing
        // is wrong, there is just nowhere to report to.
        if repo.forge != ForgeKind::Git {
            tracing::debug!(repo = %repo.name, forge = %repo.forge, run = run_id, "forge has no commit status API; status not reported");
        }
        return Ok(false);
    }
    let (kind, Some(token_enc)) = (repo.forge, &repo.forge_token_enc) else {
        return Ok(false);
    };
    if run.sha.len() < 40 {
        // A Bitbucket Cloud pull request's abbreviated head, until the planner has
        // resolved it: statuses need the full id.
        tracing::debug!(repo = %repo.name, run = run_id, "commit id not resolved yet; status not reported");
        return Ok(false);
    }
    let token = state
        .secret_box
        .open(token_enc, &forge_token_aad(&repo.name))
        .map_err(|e| anyhow::anyhow!("forge token of {} cannot be opened: {e}", repo.name))?;
    let token = String::from_utf8(token.to_vec())?;
    let api_base = repo
        .api_url
        .clone()
        .or_else(|| forge::api_base_for(kind, &repo.clone_url))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no forge API known for {}; set the repository's api_url",
                repo.name
            )
        })?;
    // Slipway's repository names are the forge's `owner/name` unless the URL says more
    // (GitLab subgroups).
    let repo_path =
        forge::repo_path_for(kind, &repo.clone_url).unwrap_or_else(|| repo.name.clone());
    let target = StatusTarget {
        kind,
        api_base,
        repo_path,
        token,
    };
    let commit_status = CommitStatus {
        sha: run.sha.clone(),
        state: forge_state(status),
        context: "slipway".into(),
        description: describe(&run, status),
        target_url: Some(format!(
            "{}/repos/{}/runs/{}",
            state.config.public_url, repo.name, run.number
        )),
        git_ref: Some(run.git_ref.clone()),
    };
    let mut delay = Duration::from_millis(500);
    for attempt in 1..=ATTEMPTS {
        match state.status.report(&target, &commit_status).await {
            Ok(()) => return Ok(true),
            Err(e) if e.is_retryable() && attempt < ATTEMPTS => {
                tracing::info!(run = run_id, attempt, error = %e, "commit status retry");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(false)
}

fn forge_state(status: RunStatus) -> State {
    match status {
        RunStatus::Pending => State::Pending,
        RunStatus::Running => State::Running,
        RunStatus::Success => State::Success,
        RunStatus::Failure => State::Failure,
        RunStatus::Error => State::Error,
        RunStatus::Cancelled => State::Cancelled,
    }
}

fn describe(run: &Run, status: RunStatus) -> String {
    match status {
        RunStatus::Pending => format!("run #{} is queued", run.number),
        RunStatus::Running => format!("run #{} is running", run.number),
        RunStatus::Success => format!("run #{} passed", run.number),
        RunStatus::Failure => format!("run #{} failed", run.number),
        RunStatus::Cancelled => format!("run #{} was cancelled", run.number),
        RunStatus::Error => match &run.error {
            Some(e) => format!("run #{}: {e}", run.number),
            None => format!("run #{} errored", run.number),
        },
    }
}
