//! Commit statuses: every run's state changes are reported to the repository's forge.
//!
//! The worker follows the store's event log rather than being called from the places
//! that change state, so no code path can forget to report, and a report that fails
//! (forge down) never holds up a stage. Reports for one run are sent in order; a newer
//! state for a run supersedes an older one still waiting to be sent.
//!
//! One status per pipeline and event, named `slipway/<pipeline>/<event>` (as Woodpecker
//! names one per workflow): a commit pushed to a branch with an open pull request gets a
//! push run and a pull-request run, and neither overwrites the other's status. A run
//! that ended before it had any stage (a pipeline that does not load) reports one
//! status, `slipway/<event>`, so the error is visible where the commit is.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::daemon::state::{AppState, forge_token_aad};
use crate::forge::{CommitStatus, ForgeKind, State, StatusTarget};
use crate::store::{Repo, Run, RunId, RunStatus, StageStatus};

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

/// Reads new events and reports the state of each pipeline of the runs they touch.
#[derive(Default)]
pub struct Follower {
    pub last: i64,
    seen: BTreeSet<i64>,
    /// The state last reported per run and status context, so that a stage event that
    /// does not change a pipeline's state sends nothing. A run's entries go when all
    /// its statuses are final.
    reported: HashMap<RunId, BTreeMap<String, State>>,
}

impl Follower {
    pub fn starting_at(last: i64) -> Self {
        Follower {
            last,
            ..Follower::default()
        }
    }

    /// One pass over new events; returns how many statuses were sent.
    pub async fn step(&mut self, state: &AppState) -> crate::store::Result<usize> {
        let from = (self.last - REREAD_WINDOW).max(0);
        let events = state.store.events_after(from, None, 1_000).await?;
        let mut touched = BTreeSet::new();
        for event in events {
            if !self.seen.insert(event.id) {
                continue;
            }
            self.last = self.last.max(event.id);
            touched.insert(event.run_id);
        }
        // Forget ids that fell out of the window.
        let floor = self.last - REREAD_WINDOW;
        self.seen = self.seen.split_off(&floor);
        let mut sent = 0;
        for run_id in touched {
            let reported = self.reported.entry(run_id).or_default();
            match report_run(state, run_id, reported).await {
                Ok(n) => sent += n,
                Err(e) => tracing::warn!(run = run_id, error = %e, "commit status not reported"),
            }
            // Done (or nothing to report yet): later events of the run are re-read
            // from the store anyway.
            if reported.values().all(|s| s.is_final()) {
                self.reported.remove(&run_id);
            }
        }
        Ok(sent)
    }
}

/// Reports each pipeline's state of `run` to its forge, skipping contexts whose state
/// is already in `reported` (and recording what it sends there). Returns how many
/// statuses were sent: 0 for a plain git repository or one without a forge token.
pub async fn report_run(
    state: &AppState,
    run_id: RunId,
    reported: &mut BTreeMap<String, State>,
) -> anyhow::Result<usize> {
    let run = state.store.get_run(run_id).await?;
    let repo = state.store.get_repo(run.repo_id).await?;
    if run.sha.len() < 40 {
        // A Bitbucket Cloud pull request's abbreviated head, until the planner has
        // resolved it: statuses need the full id.
        tracing::debug!(repo = %repo.name, run = run_id, "commit id not resolved yet; status not reported");
        return Ok(0);
    }
    let Some(target) = status_target(state, &repo)? else {
        return Ok(0);
    };
    let stages = state.store.list_stages(run.id).await?;
    let stages: Vec<StageState> = stages
        .iter()
        .map(|s| StageState {
            pipeline: &s.stage.pipeline,
            key: &s.stage.key,
            status: s.stage.status,
        })
        .collect();
    let target_url = format!(
        "{}/repos/{}/runs/{}",
        state.config.public_url.trim_end_matches('/'),
        crate::admin::repos::url_path(&repo.name),
        run.number
    );
    let mut sent = 0;
    for status in pipeline_statuses(&run, &stages) {
        if reported.get(&status.context) == Some(&status.state) {
            continue;
        }
        let commit_status = CommitStatus {
            sha: run.sha.clone(),
            state: status.state,
            context: status.context.clone(),
            description: status.description,
            target_url: Some(target_url.clone()),
            git_ref: status_ref(&run, repo.forge),
        };
        send(state, &target, &commit_status).await?;
        reported.insert(status.context, status.state);
        sent += 1;
    }
    Ok(sent)
}

/// Where `repo`'s statuses go, or `None` when there is nowhere to send them.
fn status_target(state: &AppState, repo: &Repo) -> anyhow::Result<Option<StatusTarget>> {
    if !repo.forge.has_status_api() {
        // Plain git has no API; Gitee's API v5 has no commit-status endpoint. Nothing
        // is wrong, there is just nowhere to report to.
        if repo.forge != ForgeKind::Git {
            tracing::debug!(repo = %repo.name, forge = %repo.forge, "forge has no commit status API; status not reported");
        }
        return Ok(None);
    }
    let (kind, Some(token_enc)) = (repo.forge, &repo.forge_token_enc) else {
        return Ok(None);
    };
    let token = state
        .secret_box
        .open(token_enc, &forge_token_aad(&repo.name))
        .map_err(|e| anyhow::anyhow!("forge token of {} cannot be opened: {e}", repo.name))?;
    let token = String::from_utf8(token.to_vec())?;
    let api_base = crate::admin::repos::api_base(&state.config, repo).ok_or_else(|| {
        anyhow::anyhow!(
            "no forge API known for {}; set the repository's api_url",
            repo.name
        )
    })?;
    Ok(Some(StatusTarget {
        kind,
        api_base,
        // A repository is registered under its path on the forge (GitLab's with every
        // subgroup), whatever host or port its clone URL names.
        repo_path: repo.name.clone(),
        token,
    }))
}

async fn send(
    state: &AppState,
    target: &StatusTarget,
    status: &CommitStatus,
) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        match state.status.report(target, status).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retryable() && attempt < ATTEMPTS => {
                tracing::info!(context = %status.context, attempt, error = %e, "commit status retry");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The branch or tag a status is for: its name for GitLab's `ref` (with
/// `refs/heads/main` it would start a separate external pipeline instead of joining
/// the branch's), the full ref for Bitbucket Data Center's. For a pull request, the
/// source branch, where the commit is.
fn status_ref(run: &Run, forge: ForgeKind) -> Option<String> {
    let tag = run.tag.is_some() || run.git_ref.starts_with("refs/tags/");
    let name = if run.source_branch.is_some() {
        run.source_branch.clone()
    } else if let Some(name) = run.tag.clone().or_else(|| run.branch.clone()) {
        Some(name)
    } else {
        ["refs/heads/", "refs/tags/"]
            .iter()
            .find_map(|prefix| run.git_ref.strip_prefix(prefix))
            .map(str::to_owned)
    }?;
    Some(match forge {
        ForgeKind::BitbucketDc if tag && run.source_branch.is_none() => format!("refs/tags/{name}"),
        ForgeKind::BitbucketDc => format!("refs/heads/{name}"),
        _ => name,
    })
}

/// What the statuses are computed from, of one stage.
#[derive(Debug, Clone, Copy)]
pub struct StageState<'a> {
    pub pipeline: &'a str,
    pub key: &'a str,
    pub status: StageStatus,
}

/// One status to show on the commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineStatus {
    pub context: String,
    pub state: State,
    pub description: String,
}

/// The status of each pipeline of `run`, in name order; for a run that ended without
/// stages, one status for the run. Nothing for a run still being planned: its
/// pipelines are not known yet, and a placeholder context would stay pending forever.
pub fn pipeline_statuses(run: &Run, stages: &[StageState]) -> Vec<PipelineStatus> {
    let event = run.event.as_str();
    if stages.is_empty() {
        if !run.status.is_final() {
            return Vec::new();
        }
        return vec![PipelineStatus {
            context: format!("slipway/{event}"),
            state: forge_state(run.status),
            description: describe_run(run),
        }];
    }
    let mut by_pipeline: BTreeMap<&str, Vec<&StageState>> = BTreeMap::new();
    for stage in stages {
        by_pipeline.entry(stage.pipeline).or_default().push(stage);
    }
    by_pipeline
        .into_iter()
        .map(|(pipeline, stages)| {
            let state = pipeline_state(run.status, &stages);
            let name = if pipeline.is_empty() {
                "default"
            } else {
                pipeline
            };
            PipelineStatus {
                context: format!("slipway/{name}/{event}"),
                state,
                description: describe_pipeline(run, name, state, &stages),
            }
        })
        .collect()
}

/// A pipeline is done when its stages are; before that it is pending until one of its
/// stages starts. A run that ended while stages were still waiting (cancelled, or an
/// error) gives its own final state to the pipeline.
fn pipeline_state(run: RunStatus, stages: &[&StageState]) -> State {
    let has = |wanted: &[StageStatus]| stages.iter().any(|s| wanted.contains(&s.status));
    if stages.iter().all(|s| s.status.is_final()) {
        if has(&[StageStatus::Failure, StageStatus::TimedOut]) {
            State::Failure
        } else if has(&[StageStatus::Error]) {
            State::Error
        } else if has(&[StageStatus::Cancelled]) {
            State::Cancelled
        } else {
            State::Success
        }
    } else if run.is_final() {
        forge_state(run)
    } else if stages
        .iter()
        .any(|s| s.status == StageStatus::Running || s.status.is_final())
    {
        State::Running
    } else {
        State::Pending
    }
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

fn describe_pipeline(run: &Run, pipeline: &str, state: State, stages: &[&StageState]) -> String {
    let n = run.number;
    let failed: Vec<&str> = stages
        .iter()
        .filter(|s| {
            matches!(
                s.status,
                StageStatus::Failure | StageStatus::TimedOut | StageStatus::Error
            )
        })
        .map(|s| s.key.strip_prefix(&format!("{pipeline}/")).unwrap_or(s.key))
        .collect();
    match state {
        State::Pending => format!("run #{n}: {pipeline} is queued"),
        State::Running => format!("run #{n}: {pipeline} is running"),
        State::Success => format!("run #{n}: {pipeline} passed"),
        State::Cancelled => format!("run #{n}: {pipeline} was cancelled"),
        State::Failure | State::Error if !failed.is_empty() => {
            format!("run #{n}: {pipeline} failed at {}", failed.join(", "))
        }
        State::Failure | State::Error => match &run.error {
            Some(e) => format!("run #{n}: {e}"),
            None => format!("run #{n}: {pipeline} failed"),
        },
    }
}

fn describe_run(run: &Run) -> String {
    let n = run.number;
    match run.status {
        RunStatus::Pending => format!("run #{n} is queued"),
        RunStatus::Running => format!("run #{n} is running"),
        RunStatus::Success => format!("run #{n}: nothing to run"),
        RunStatus::Failure => format!("run #{n} failed"),
        RunStatus::Cancelled => format!("run #{n} was cancelled"),
        RunStatus::Error => match &run.error {
            Some(e) => format!("run #{n}: {e}"),
            None => format!("run #{n} errored"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Event, Trigger};

    fn run(status: RunStatus, event: Event) -> Run {
        Run {
            id: 1,
            repo_id: 1,
            number: 7,
            status,
            trigger: Trigger::Webhook,
            event,
            git_ref: "refs/heads/main".into(),
            branch: Some("main".into()),
            tag: None,
            sha: "0".repeat(40),
            before_sha: None,
            pr_number: None,
            source_branch: None,
            fork: false,
            trusted: true,
            message: String::new(),
            author: String::new(),
            params: serde_json::Value::Null,
            plan: None,
            yaml_sha256: None,
            diagnostics: None,
            error: None,
            rerun_of: None,
            triggered_by: None,
            pusher: None,
            promotion: None,
            blocked: false,
            created_at: 0,
            started_at: None,
            finished_at: None,
        }
    }

    fn stage(
        pipeline: &'static str,
        key: &'static str,
        status: StageStatus,
    ) -> StageState<'static> {
        StageState {
            pipeline,
            key,
            status,
        }
    }

    fn states(run: &Run, stages: &[StageState]) -> Vec<(String, State)> {
        pipeline_statuses(run, stages)
            .into_iter()
            .map(|s| (s.context, s.state))
            .collect()
    }

    #[test]
    fn each_pipeline_has_its_own_context_and_state() {
        use StageStatus::*;
        let r = run(RunStatus::Running, Event::Push);
        let stages = [
            stage("build", "build/compile", Success),
            stage("build", "build/test", Running),
            stage("lint", "lint/fmt", Queued),
            stage("docs", "docs/site", Failure),
            stage("docs", "docs/links", Skipped),
        ];
        assert_eq!(
            states(&r, &stages),
            [
                ("slipway/build/push".to_string(), State::Running),
                ("slipway/docs/push".to_string(), State::Failure),
                ("slipway/lint/push".to_string(), State::Pending),
            ]
        );
        let docs = &pipeline_statuses(&r, &stages)[1];
        assert_eq!(docs.description, "run #7: docs failed at site");
    }

    #[test]
    fn the_event_is_part_of_the_context() {
        let stages = [stage("ci", "ci/test", StageStatus::Success)];
        let push = states(&run(RunStatus::Success, Event::Push), &stages);
        let pr = states(&run(RunStatus::Success, Event::PullRequest), &stages);
        assert_eq!(push[0].0, "slipway/ci/push");
        assert_eq!(pr[0].0, "slipway/ci/pull_request");
    }

    #[test]
    fn final_states_rank_failure_then_error_then_cancelled() {
        use StageStatus::*;
        let r = run(RunStatus::Failure, Event::Push);
        let one = |stages: &[StageState]| states(&r, stages)[0].1;
        assert_eq!(
            one(&[stage("p", "a", TimedOut), stage("p", "b", Error)]),
            State::Failure
        );
        assert_eq!(
            one(&[stage("p", "a", Cancelled), stage("p", "b", Error)]),
            State::Error
        );
        assert_eq!(
            one(&[stage("p", "a", Cancelled), stage("p", "b", Success)]),
            State::Cancelled
        );
        assert_eq!(
            one(&[stage("p", "a", Skipped), stage("p", "b", Success)]),
            State::Success
        );
    }

    #[test]
    fn a_run_that_ended_early_ends_its_waiting_pipelines() {
        let r = run(RunStatus::Cancelled, Event::Push);
        let stages = [stage("ci", "ci/deploy", StageStatus::Waiting)];
        assert_eq!(states(&r, &stages)[0].1, State::Cancelled);
    }

    #[test]
    fn runs_without_stages_report_only_once_they_end() {
        assert!(states(&run(RunStatus::Pending, Event::Push), &[]).is_empty());
        let mut failed = run(RunStatus::Error, Event::Tag);
        failed.error = Some(".slipway.yml:3:5: unknown key `stpes`".into());
        let s = pipeline_statuses(&failed, &[]);
        assert_eq!(s[0].context, "slipway/tag");
        assert_eq!(s[0].state, State::Error);
        assert!(s[0].description.contains("unknown key"), "{:?}", s[0]);
    }

    #[test]
    fn gitlab_refs_are_branch_or_tag_names() {
        let mut r = run(RunStatus::Success, Event::Push);
        assert_eq!(status_ref(&r, ForgeKind::Gitlab).as_deref(), Some("main"));
        r.branch = None;
        r.git_ref = "refs/tags/v1.0".into();
        assert_eq!(status_ref(&r, ForgeKind::Gitlab).as_deref(), Some("v1.0"));
        r.tag = Some("v1.0".into());
        assert_eq!(status_ref(&r, ForgeKind::Gitlab).as_deref(), Some("v1.0"));
        // A merge request's pipeline is its source branch's.
        r.git_ref = "refs/merge-requests/3/head".into();
        r.tag = None;
        r.branch = Some("main".into());
        r.source_branch = Some("feature".into());
        assert_eq!(
            status_ref(&r, ForgeKind::Gitlab).as_deref(),
            Some("feature")
        );
        // Bitbucket Data Center takes the full ref.
        assert_eq!(
            status_ref(&r, ForgeKind::BitbucketDc).as_deref(),
            Some("refs/heads/feature")
        );
        r.source_branch = None;
        r.tag = Some("v2".into());
        assert_eq!(
            status_ref(&r, ForgeKind::BitbucketDc).as_deref(),
            Some("refs/tags/v2")
        );
    }
}
